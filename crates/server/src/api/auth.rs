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
    compare(a, b, &mut |_| {})
}

/// The comparison, reporting every byte position it examines to `visit`
/// (a no-op in production; tests count the positions to check that the
/// path taken does not depend on where, or whether, the inputs differ).
/// Every position up to the longer length is examined and folded into one
/// accumulator; nothing returns early, and `black_box` keeps the optimiser
/// from introducing an early exit.
fn compare(a: &[u8], b: &[u8], visit: &mut dyn FnMut(usize)) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        visit(i);
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff = std::hint::black_box(diff | usize::from(x ^ y));
    }
    diff == 0
}

/// Whether `presented` is one of `keys`, checking all of them.
pub fn key_matches(keys: &[String], presented: &str) -> bool {
    matches_visiting(keys, presented, &mut |_, _| {})
}

/// [`key_matches`], reporting each (key index, byte position) examined.
fn matches_visiting(keys: &[String], presented: &str, visit: &mut dyn FnMut(usize, usize)) -> bool {
    keys.iter().enumerate().fold(false, |found, (k, key)| {
        compare(key.as_bytes(), presented.as_bytes(), &mut |i| visit(k, i)) | found
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

    /// The code path does not depend on the secret: for a key of length n,
    /// every candidate of length n is examined at exactly the positions
    /// 0..n, in order, whether it matches, differs in its first byte or
    /// differs in its last — and every configured key is examined, whichever
    /// one matches.
    #[test]
    fn the_comparison_path_does_not_depend_on_where_inputs_differ() {
        let key = b"0123456789abcdef";
        let mut candidates: Vec<Vec<u8>> = vec![key.to_vec()];
        for at in 0..key.len() {
            let mut c = key.to_vec();
            c[at] ^= 0x20;
            candidates.push(c);
        }
        candidates.push(vec![0u8; key.len()]);
        for c in &candidates {
            let mut seen = Vec::new();
            let equal = compare(key, c, &mut |i| seen.push(i));
            assert_eq!(equal, c.as_slice() == key);
            assert_eq!(seen, (0..key.len()).collect::<Vec<_>>(), "{c:?}");
        }
        // Shorter and longer candidates are examined to the longer length.
        let mut seen = 0;
        assert!(!compare(key, b"0123", &mut |_| seen += 1));
        assert_eq!(seen, key.len());

        let keys: Vec<String> = ["first-key-123", "second-key-456", "third-key-7890"]
            .map(str::to_owned)
            .to_vec();
        let path = |presented: &str| {
            let mut seen = Vec::new();
            let found = matches_visiting(&keys, presented, &mut |k, i| seen.push((k, i)));
            (found, seen)
        };
        let (found_first, first) = path("first-key-123");
        let (found_last, last) = path("third-key-7890");
        let (found_none, none) = path("nobody-at-all");
        assert!(found_first && found_last && !found_none);
        let keys_visited = |seen: &[(usize, usize)]| {
            let mut k: Vec<usize> = seen.iter().map(|(k, _)| *k).collect();
            k.dedup();
            k
        };
        for seen in [&first, &last, &none] {
            assert_eq!(keys_visited(seen), [0, 1, 2]);
        }
        // Same length presented: the very same positions.
        assert_eq!(first.len(), none.len());
    }
}
