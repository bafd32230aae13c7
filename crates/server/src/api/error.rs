//! The API's error type and its RFC 9457 `application/problem+json` form.
//! Bad input is always a 4xx naming what is wrong; a 500 means a bug, is
//! logged, and never carries internal details to the client.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use runnel_store::StoreError;
use serde::Serialize;
use utoipa::ToSchema;

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the kind.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What happened, for a person.
    pub detail: String,
    /// The offending request field, for validation errors (`task.provider`,
    /// `examples[3].input`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// Everything an API call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field of the request is invalid.
    #[error("{detail}")]
    Validation {
        /// The field, in the request's spelling.
        field: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The request is malformed as a whole (not JSON, truncated, bad query).
    #[error("{0}")]
    BadRequest(String),
    /// The named resource does not exist.
    #[error("{what} {id} not found")]
    NotFound {
        /// `dataset`, `experiment`.
        what: &'static str,
        /// Its id as given.
        id: String,
    },
    /// The request conflicts with the current state (a stop/resume inside
    /// the cooldown sets `retry_after`).
    #[error("{detail}")]
    Conflict {
        /// What conflicts.
        detail: String,
        /// When to try again, if known.
        retry_after: Option<Duration>,
    },
    /// The body is larger than the configured limit.
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The path exists but does not take the request's method.
    #[error("this path does not accept that method")]
    MethodNotAllowed,
    /// The body's content type is not one the endpoint reads.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Missing or wrong API key.
    #[error("a valid API key is required (Authorization: Bearer <key>)")]
    Unauthorized,
    /// The database is unreachable; retry later.
    #[error("the database is unavailable; try again shortly")]
    Unavailable(String),
    /// A bug. The text is logged, not sent.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// A validation error of `field`.
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self::Validation {
            field: field.into(),
            detail: detail.into(),
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::Validation { .. } | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            ApiError::Validation { .. } => "validation",
            ApiError::BadRequest(_) => "bad-request",
            ApiError::NotFound { .. } => "not-found",
            ApiError::Conflict { .. } => "conflict",
            ApiError::PayloadTooLarge { .. } => "payload-too-large",
            ApiError::MethodNotAllowed => "method-not-allowed",
            ApiError::UnsupportedMediaType(_) => "unsupported-media-type",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// The problem document of this error.
    pub fn problem(&self) -> Problem {
        let status = self.status();
        Problem {
            kind: format!("urn:runnel:problem:{}", self.slug()),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
            field: match self {
                ApiError::Validation { field, .. } => Some(field.clone()),
                _ => None,
            },
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => ApiError::Unavailable(m),
            StoreError::ExperimentNotFound(id) => ApiError::NotFound {
                what: "experiment",
                id: id.to_string(),
            },
            StoreError::DatasetNotFound(id) => ApiError::NotFound {
                what: "dataset",
                id: id.to_string(),
            },
            StoreError::Invalid { field, message } => ApiError::invalid(field, message),
            StoreError::Conflict(m) => ApiError::Conflict {
                detail: m,
                retry_after: None,
            },
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(detail) => {
                tracing::error!(%detail, "internal error serving a request")
            }
            ApiError::Unavailable(detail) => tracing::warn!(%detail, "database unavailable"),
            _ => {}
        }
        let problem = self.problem();
        let status = self.status();
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        match &self {
            ApiError::Conflict {
                retry_after: Some(wait),
                ..
            } => {
                // Whole seconds, rounded up, at least one.
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                if let Ok(v) = HeaderValue::from_str(&secs.max(1).to_string()) {
                    headers.insert(header::RETRY_AFTER, v);
                }
            }
            ApiError::Unauthorized => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            ApiError::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cooldown_conflicts_carry_retry_after_rounded_up() {
        let response = ApiError::Conflict {
            detail: "cooldown".into(),
            retry_after: Some(Duration::from_millis(2100)),
        }
        .into_response();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(response.headers()[header::RETRY_AFTER], "3");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }

    #[test]
    fn internal_errors_do_not_leak_details() {
        let problem = ApiError::Internal("secret table name".into()).problem();
        assert_eq!(problem.detail, "internal error");
        assert_eq!(problem.status, 500);
    }

    #[test]
    fn method_not_allowed_is_a_problem_document() {
        let problem = ApiError::MethodNotAllowed.problem();
        assert_eq!(
            serde_json::to_value(&problem).unwrap(),
            serde_json::json!({
                "type": "urn:runnel:problem:method-not-allowed",
                "title": "Method Not Allowed",
                "status": 405,
                "detail": "this path does not accept that method",
            })
        );
        let response = ApiError::MethodNotAllowed.into_response();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }

    #[test]
    fn validation_problems_name_the_field() {
        let problem = ApiError::invalid("task.provider", "unknown provider `x`").problem();
        assert_eq!(problem.field.as_deref(), Some("task.provider"));
        assert_eq!(problem.status, 400);
        assert_eq!(problem.kind, "urn:runnel:problem:validation");
    }
}
