//! `/v1/datasets`: create (JSON or NDJSON), append examples, list, get.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::StatusCode;

use super::body::{BodyKind, PathId, Query, body_kind, parse_json, read_bytes};
use super::error::{ApiError, Problem};
use super::types::{
    AppendExamples, CreateDataset, DatasetOut, DatasetQuery, ExampleCount, ExampleIn,
};
use super::validate;
use crate::state::AppState;
use runnel_store::NewExample;

/// Reads and checks NDJSON examples: one JSON object per line, blank lines
/// skipped. Every error names its line: a line that is not UTF-8, not JSON,
/// of the wrong shape, or an example that fails validation.
fn ndjson_examples(bytes: &[u8]) -> Result<Vec<NewExample>, ApiError> {
    let mut examples = Vec::new();
    for (n, line) in bytes.split(|b| *b == b'\n').enumerate() {
        let number = n + 1;
        let index = examples.len();
        let line = std::str::from_utf8(line).map_err(|e| {
            ApiError::invalid(
                format!("examples[{index}]"),
                format!("line {number}: not valid UTF-8 ({e})"),
            )
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let at_line = |e: ApiError| match e {
            ApiError::Validation { field, detail } => {
                let field = if field.starts_with("examples[") {
                    field
                } else {
                    format!("examples[{index}].{field}")
                };
                ApiError::invalid(field, format!("line {number}: {detail}"))
            }
            other => ApiError::invalid(
                format!("examples[{index}]"),
                format!("line {number}: {other}"),
            ),
        };
        let example = parse_json::<ExampleIn>(line.as_bytes(), "line").map_err(at_line)?;
        let example = validate::example(example, &format!("examples[{index}]")).map_err(at_line)?;
        examples.push(example);
    }
    Ok(examples)
}

/// Reads the examples of a create or append body, in either form, checked.
/// Returns the name of a JSON create body too (NDJSON bodies carry none).
async fn read_examples(
    state: &AppState,
    request: Request,
    append: bool,
) -> Result<(Option<String>, Vec<NewExample>), ApiError> {
    let kind = body_kind(request.headers())?;
    let bytes = read_bytes(request, state.config.server.body_limit_bytes).await?;
    match kind {
        BodyKind::Ndjson => Ok((None, ndjson_examples(&bytes)?)),
        BodyKind::Json if append => {
            let body: AppendExamples = parse_json(&bytes, "request body")?;
            Ok((None, validate::examples(body.examples, "examples")?))
        }
        BodyKind::Json => {
            let body: CreateDataset = parse_json(&bytes, "request body")?;
            let examples = validate::examples(body.examples, "examples")?;
            Ok((Some(body.name), examples))
        }
    }
}

/// Create a dataset.
///
/// JSON (`{"name", "examples": [...]}`) or NDJSON (one example per line, name
/// in `?name=`). Nothing is stored when any example is invalid.
#[utoipa::path(post, path = "/v1/datasets", tag = "datasets",
    params(DatasetQuery),
    request_body(content = CreateDataset, description = "JSON form; NDJSON (application/x-ndjson) carries one ExampleIn per line"),
    responses(
        (status = 201, body = DatasetOut),
        (status = 400, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    Query(query): Query<DatasetQuery>,
    request: Request,
) -> Result<(StatusCode, Json<DatasetOut>), ApiError> {
    let (body_name, examples) = read_examples(&state, request, false).await?;
    // A JSON body names the dataset itself; an NDJSON one needs `?name=`.
    let Some(name) = body_name.or(query.name) else {
        return Err(ApiError::invalid(
            "name",
            "an NDJSON body needs the dataset name in the query (?name=)",
        ));
    };
    let name = validate::name("name", &name)?;
    let info = state.db.create_dataset(&name, &examples).await?;
    Ok((StatusCode::CREATED, Json(info.into())))
}

/// Append examples to a dataset (same two body forms).
#[utoipa::path(post, path = "/v1/datasets/{id}/examples", tag = "datasets",
    params(("id" = String, Path, description = "Dataset id")),
    request_body(content = AppendExamples, description = "JSON form; NDJSON carries one ExampleIn per line"),
    responses(
        (status = 200, body = ExampleCount),
        (status = 400, body = Problem), (status = 404, body = Problem), (status = 413, body = Problem)))]
pub async fn append(
    State(state): State<AppState>,
    PathId(id): PathId,
    request: Request,
) -> Result<Json<ExampleCount>, ApiError> {
    let id = validate::dataset_id(&id)?;
    let (_, examples) = read_examples(&state, request, true).await?;
    let example_count = state.db.append_examples(id, &examples).await?;
    Ok(Json(ExampleCount { example_count }))
}

/// List datasets, oldest first.
#[utoipa::path(get, path = "/v1/datasets", tag = "datasets",
    responses((status = 200, body = Vec<DatasetOut>)))]
pub async fn list(State(state): State<AppState>) -> Result<Json<Vec<DatasetOut>>, ApiError> {
    let datasets = state.db.datasets().await?;
    Ok(Json(datasets.into_iter().map(Into::into).collect()))
}

/// Get one dataset.
#[utoipa::path(get, path = "/v1/datasets/{id}", tag = "datasets",
    params(("id" = String, Path, description = "Dataset id")),
    responses((status = 200, body = DatasetOut), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<DatasetOut>, ApiError> {
    let id = validate::dataset_id(&id)?;
    Ok(Json(state.db.dataset(id).await?.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_errors_name_the_line_and_field() {
        let ok = ndjson_examples(b"{\"input\": {\"a\": 1}}\n\n{\"input\": {\"a\": 2}}\n").unwrap();
        assert_eq!(ok.len(), 2);
        let ok = ndjson_examples(b"{\"input\": {}}\r\n{\"input\": {}}").unwrap();
        assert_eq!(ok.len(), 2, "CRLF and a last line without a newline");
        let err = ndjson_examples(b"{\"input\": {}}\n{\"input\": {}, \"x\": 1}\n").unwrap_err();
        let ApiError::Validation { field, detail } = err else {
            panic!("expected a validation error")
        };
        assert!(field.starts_with("examples[1]"), "{field}");
        assert!(detail.starts_with("line 2:"), "{detail}");
        let err = ndjson_examples(b"{\"input\": {}}\nnot json\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    /// Regression: a line that is valid JSON but not a valid example, and a
    /// line that is not UTF-8, were reported without their line number.
    #[test]
    fn every_kind_of_bad_line_is_named() {
        let good = "{\"input\": {\"a\": 1}}\n";
        let bad: [&[u8]; 6] = [
            b"{\"input\": [1, 2]}",
            b"{\"input\": {}, \"metadata\": 7}",
            b"[1, 2, 3]",
            b"{\"input\": {\"q\": \"\xff\xfe\"}}",
            b"\xc3\x28",
            b"{\"input\": {\"q\": 1}",
        ];
        for line in bad {
            let mut body = good.repeat(4).into_bytes();
            body.extend_from_slice(line);
            body.push(b'\n');
            body.extend_from_slice(good.as_bytes());
            let err = ndjson_examples(&body).unwrap_err();
            let ApiError::Validation { field, detail } = &err else {
                panic!("{err:?}")
            };
            assert!(detail.starts_with("line 5:"), "{detail}");
            assert!(field.starts_with("examples[4]"), "{field}");
        }
    }
}
