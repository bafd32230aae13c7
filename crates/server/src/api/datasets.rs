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

/// Reads NDJSON examples: one JSON object per line, blank lines skipped. An
/// error names the line.
fn ndjson_examples(bytes: &[u8]) -> Result<Vec<ExampleIn>, ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ApiError::BadRequest(format!("the body is not valid UTF-8: {e}")))?;
    let mut examples = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let index = examples.len();
        let example = parse_json::<ExampleIn>(line.as_bytes(), "line").map_err(|e| match e {
            ApiError::Validation { field, detail } => ApiError::invalid(
                format!("examples[{index}].{field}"),
                format!("line {}: {detail}", n + 1),
            ),
            other => ApiError::invalid(
                format!("examples[{index}]"),
                format!("line {}: {other}", n + 1),
            ),
        })?;
        examples.push(example);
    }
    Ok(examples)
}

/// Reads the examples of a create or append body, in either form.
async fn read_examples(
    state: &AppState,
    request: Request,
) -> Result<(BodyKind, Option<String>, Vec<ExampleIn>), ApiError> {
    let kind = body_kind(request.headers())?;
    let bytes = read_bytes(request, state.config.server.body_limit_bytes).await?;
    match kind {
        BodyKind::Ndjson => Ok((kind, None, ndjson_examples(&bytes)?)),
        BodyKind::Json => {
            let body: CreateDataset = parse_json(&bytes, "request body")?;
            Ok((kind, Some(body.name), body.examples))
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
    let (kind, body_name, examples) = read_examples(&state, request).await?;
    let name = match (kind, body_name, query.name) {
        (BodyKind::Json, Some(name), _) => validate::name("name", &name)?,
        (_, _, Some(name)) => validate::name("name", &name)?,
        (_, _, None) => {
            return Err(ApiError::invalid(
                "name",
                "an NDJSON body needs the dataset name in the query (?name=)",
            ));
        }
    };
    let examples = validate::examples(examples, "examples")?;
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
    let kind = body_kind(request.headers())?;
    let bytes = read_bytes(request, state.config.server.body_limit_bytes).await?;
    let examples = match kind {
        BodyKind::Ndjson => ndjson_examples(&bytes)?,
        BodyKind::Json => parse_json::<AppendExamples>(&bytes, "request body")?.examples,
    };
    let examples = validate::examples(examples, "examples")?;
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
        let err = ndjson_examples(b"{\"input\": {}}\n{\"input\": {}, \"x\": 1}\n").unwrap_err();
        let ApiError::Validation { field, detail } = err else {
            panic!("expected a validation error")
        };
        assert!(field.starts_with("examples[1]"), "{field}");
        assert!(detail.starts_with("line 2:"), "{detail}");
        let err = ndjson_examples(b"{\"input\": {}}\nnot json\n").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }
}
