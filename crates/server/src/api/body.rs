//! Reading request bodies and queries into typed values, with errors that
//! name the offending field (`task.messages[0].role`) and the right status:
//! 400 for malformed or invalid input, 413 above the body limit, 415 for a
//! content type the endpoint does not read.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::state::AppState;

/// A JSON body (`application/json`, `…+json`, or no content type).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

/// What kind of body a request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// JSON (also when no content type is given).
    Json,
    /// Newline-delimited JSON (`application/x-ndjson`, `application/jsonl`).
    Ndjson,
}

/// Reads the content type; 415 for anything but JSON or NDJSON.
pub fn body_kind(parts_headers: &axum::http::HeaderMap) -> Result<BodyKind, ApiError> {
    let Some(value) = parts_headers.get(header::CONTENT_TYPE) else {
        return Ok(BodyKind::Json);
    };
    let text = value
        .to_str()
        .map_err(|_| ApiError::UnsupportedMediaType("unreadable Content-Type header".into()))?;
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        // curl's `-d` sends this type by default; the body is still JSON.
        "application/json" | "" | "application/x-www-form-urlencoded" | "text/plain" => {
            Ok(BodyKind::Json)
        }
        t if t.ends_with("+json") => Ok(BodyKind::Json),
        "application/x-ndjson"
        | "application/ndjson"
        | "application/jsonl"
        | "application/jsonlines" => Ok(BodyKind::Ndjson),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type `{other}` is not supported; send application/json"
        ))),
    }
}

/// Reads the whole body, mapping the body limit (`limit` bytes, enforced by
/// the router's `DefaultBodyLimit`) to 413.
pub async fn read_bytes(req: Request, limit: usize) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, &()).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge { limit }
        } else {
            ApiError::BadRequest(format!("could not read the request body: {rejection}"))
        }
    })
}

/// Parses JSON, naming the field that failed (`examples[2].input`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest(format!(
            "the {what} is empty; send a JSON object"
        )));
    }
    // Every body and line this reads is an object. serde's derived structs
    // also accept an array of their fields in order (`[[]]` is an append of
    // nothing); the API does not take positional bodies.
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() {
        let shape = match first {
            Some(b'[') => "an array",
            Some(b'"') => "a string",
            Some(b'n') => "null",
            Some(b't' | b'f') => "a boolean",
            _ => "a number",
        };
        return Err(ApiError::BadRequest(format!(
            "the {what} must be a JSON object, not {shape}"
        )));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() || inner.is_io() {
            ApiError::BadRequest(format!("the {what} is not valid JSON: {inner}"))
        } else if path == "." {
            ApiError::BadRequest(format!("the {what} has the wrong shape: {inner}"))
        } else {
            ApiError::invalid(path, inner.to_string())
        }
    })?;
    Ok(value)
}

impl<T> FromRequest<AppState> for JsonBody<T>
where
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        if body_kind(req.headers())? != BodyKind::Json {
            return Err(ApiError::UnsupportedMediaType(
                "this endpoint reads application/json".into(),
            ));
        }
        let bytes = read_bytes(req, state.config.server.body_limit_bytes).await?;
        parse_json(&bytes, "request body").map(JsonBody)
    }
}

/// The `{id}` of a path, as text. A path axum cannot decode (a
/// percent-encoded id that is not UTF-8) is a 400 problem document, not
/// axum's plain-text rejection.
#[derive(Debug)]
pub struct PathId(pub String);

impl<S> FromRequestParts<S> for PathId
where
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(id)| PathId(id))
            .map_err(|rejection| {
                ApiError::BadRequest(format!(
                    "the request path is invalid: {}",
                    rejection.body_text()
                ))
            })
    }
}

/// A query string, rejecting unknown parameters with a 400 naming them.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        serde_urlencoded_like(query).map(Query)
    }
}

/// Decodes `a=1&b=two` into `T` through a JSON object of strings (every
/// query field is text; handlers parse numbers themselves and name the
/// parameter when they fail).
fn serde_urlencoded_like<T: DeserializeOwned>(query: &str) -> Result<T, ApiError> {
    let mut map = serde_json::Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key)
            .ok_or_else(|| ApiError::BadRequest("the query string is not valid UTF-8".into()))?;
        let value = percent_decode(value)
            .ok_or_else(|| ApiError::BadRequest("the query string is not valid UTF-8".into()))?;
        if value.is_empty() {
            continue;
        }
        map.insert(key, serde_json::Value::String(value));
    }
    serde_json::from_value(serde_json::Value::Object(map)).map_err(|e| {
        let text = e.to_string();
        let field = text
            .split('`')
            .nth(1)
            .map(str::to_owned)
            .unwrap_or_else(|| "query".into());
        ApiError::invalid(field, format!("invalid query parameter: {text}"))
    })
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b'%' => return None,
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        #[allow(dead_code)]
        n: u32,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        items: Vec<Inner>,
    }

    #[test]
    fn json_errors_name_the_field_or_say_it_is_malformed() {
        let err = parse_json::<Outer>(br#"{"items": [{"n": 1}, {"n": "x"}]}"#, "body").unwrap_err();
        assert!(
            matches!(err, ApiError::Validation { ref field, .. } if field == "items[1].n"),
            "{err:?}"
        );
        let err = parse_json::<Outer>(br#"{"items": [{"n": 1}], "extra": 1}"#, "body").unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
        let err = parse_json::<Outer>(br#"{"items": ["#, "body").unwrap_err();
        assert!(matches!(err, ApiError::BadRequest(_)), "{err:?}");
        let err = parse_json::<Outer>(b"\xff\xfe", "body").unwrap_err();
        assert!(matches!(err, ApiError::BadRequest(_)), "{err:?}");
        let err = parse_json::<Outer>(b"  ", "body").unwrap_err();
        assert!(matches!(err, ApiError::BadRequest(_)), "{err:?}");
    }

    /// Regression: serde's derived structs take an array of their fields in
    /// order, so `[[]]` was accepted as `{"items": []}`.
    #[test]
    fn bodies_must_be_objects_not_positional_arrays() {
        for body in [
            &b"[[]]"[..],
            b" [[{\"n\": 1}]]",
            b"5",
            b"\"x\"",
            b"null",
            b"true",
        ] {
            let err = parse_json::<Outer>(body, "body").unwrap_err();
            assert!(
                matches!(&err, ApiError::BadRequest(m) if m.contains("must be a JSON object")),
                "{err:?}"
            );
        }
        let ok = parse_json::<Outer>(b" \n{\"items\": []}", "body").unwrap();
        assert!(ok.items.is_empty());
    }

    #[test]
    fn queries_decode_and_reject_unknown_parameters() {
        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Q {
            name: Option<String>,
        }
        let q: Q = serde_urlencoded_like("name=a%20b+c").unwrap();
        assert_eq!(q.name.as_deref(), Some("a b c"));
        let err = serde_urlencoded_like::<Q>("nmae=x").unwrap_err();
        assert!(
            matches!(err, ApiError::Validation { ref field, .. } if field == "nmae"),
            "{err:?}"
        );
        assert!(serde_urlencoded_like::<Q>("name=%zz").is_err());
        assert!(serde_urlencoded_like::<Q>("name=%").is_err());
        assert!(serde_urlencoded_like::<Q>("name=%ff").is_err());
    }
}
