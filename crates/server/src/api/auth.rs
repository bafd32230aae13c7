//! Bearer API keys for `/v1` (API.md, Auth). Keys are compared in constant
//! time: every configured key is compared in full, whatever matches.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::state::AppState;

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// Whether `presented` is one of `keys`, checking all of them.
pub fn key_matches(keys: &[String], presented: &str) -> bool {
    keys.iter().fold(false, |found, key| {
        constant_time_eq(key.as_bytes(), presented.as_bytes()) | found
    })
}

/// Rejects `/v1` requests without a configured key (when keys are set).
pub async fn require_key(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let keys = &state.config.auth.api_keys;
    if keys.is_empty() {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match presented {
        Some(key) if key_matches(keys, key) => next.run(request).await,
        _ => ApiError::Unauthorized.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comparison_is_exact() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        let keys = vec!["first-key-123".to_owned(), "second-key-456".to_owned()];
        assert!(key_matches(&keys, "second-key-456"));
        assert!(!key_matches(&keys, "second-key-45"));
    }
}
