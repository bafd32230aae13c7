//! Removal of credentials from text. Every error message that leaves this
//! crate passes through [`redact`]: it removes the configured key values and
//! anything shaped like an API key or a bearer token, wherever the text came
//! from (a provider's error body, an HTTP library's error, a header echo).

/// What a removed credential is replaced with.
pub const REDACTED: &str = "[REDACTED]";

/// Words after which a value (following `:` or `=`) is taken for a secret.
const KEY_WORDS: &[&str] = &[
    "api-key",
    "api_key",
    "apikey",
    "x-api-key",
    "x-goog-api-key",
    "key",
    "token",
    "access_token",
    "secret",
    "client_secret",
    "password",
    "authorization",
];

/// Authorization schemes after which the next word is a credential.
const SCHEMES: &[&str] = &["bearer", "basic"];

/// Prefixes of well-known API key formats (OpenAI, Anthropic, Groq, xAI,
/// Google, Fireworks, Cerebras, Hugging Face, GitHub, GitLab, AWS).
const KEY_PREFIXES: &[&str] = &[
    "sk-",
    "sk_",
    "rk_",
    "gsk_",
    "xai-",
    "AIza",
    "fw_",
    "csk-",
    "hf_",
    "ghp_",
    "github_pat_",
    "glpat-",
    "AKIA",
];

/// Returns `text` with every occurrence of each of `secrets` (values shorter
/// than 4 bytes are ignored: they cannot be told apart from ordinary text)
/// and every key-shaped or token-shaped word replaced by [`REDACTED`].
///
/// Key-shaped: a word of at least 20 characters with a well-known key prefix
/// (`sk-`, `AIza`, `gsk_`, …), or of at least 32 letters, digits, `-`, `_`
/// mixing letters and digits. Token-shaped: the value after `Bearer` or
/// `Basic`, or after `key`, `api-key`, `token`, `authorization`, … followed
/// by `:` or `=`, when it is at least 8 characters long.
///
/// ```
/// use runnel_providers::redact::redact;
/// let text = "bad key sk-proj-abcdefghijklmnopqrstuvwx (Authorization: Bearer abc.def.ghi)";
/// assert_eq!(redact(text, &[]), "bad key [REDACTED] (Authorization: Bearer [REDACTED])");
/// assert_eq!(redact("echo: hunter2-key", &["hunter2-key"]), "echo: [REDACTED]");
/// ```
pub fn redact(text: &str, secrets: &[&str]) -> String {
    let mut owned: Option<String> = None;
    let mut sorted: Vec<&str> = secrets
        .iter()
        .map(|s| s.trim())
        .filter(|s| s.len() >= 4)
        .collect();
    // Longest first, so that a secret containing another is removed whole.
    sorted.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for secret in sorted {
        let current = owned.as_deref().unwrap_or(text);
        if current.contains(secret) {
            owned = Some(current.replace(secret, REDACTED));
        }
    }
    scrub(owned.as_deref().unwrap_or(text))
}

/// Redacts, then cuts the result to at most `max_chars` characters (ending
/// in `…` when cut). Redaction comes first so a cut cannot hide a key's shape.
pub fn clean(text: &str, secrets: &[&str], max_chars: usize) -> String {
    truncate(&redact(text, secrets), max_chars)
}

/// Cuts `text` to at most `max_chars` characters, ending in `…` when cut.
pub fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        None => text.to_owned(),
        Some(_) => {
            let keep = max_chars.saturating_sub(1);
            let end = text.char_indices().nth(keep).map_or(text.len(), |(i, _)| i);
            format!("{}…", &text[..end])
        }
    }
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

fn ends_value(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '"' | '\'' | ',' | ';' | '&' | ')' | '}' | ']' | '<' | '>'
        )
}

fn looks_like_key(word: &str) -> bool {
    let long_with_prefix = word.len() >= 20 && KEY_PREFIXES.iter().any(|p| word.starts_with(p));
    let long_mixed = word.len() >= 32
        && word.bytes().any(|b| b.is_ascii_digit())
        && word.bytes().any(|b| b.is_ascii_alphabetic());
    long_with_prefix || long_mixed
}

/// Length in bytes of the run at the start of `s` whose chars satisfy `keep`.
fn run_len(s: &str, keep: impl Fn(char) -> bool) -> usize {
    s.char_indices()
        .find(|&(_, c)| !keep(c))
        .map_or(s.len(), |(i, _)| i)
}

fn scrub(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let rest = &text[i..];
        let word_len = run_len(rest, is_word_char);
        if word_len == 0 {
            // Not a word character: copy one char. `rest` is non-empty here.
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            i += c.len_utf8();
            continue;
        }
        let word = &rest[..word_len];
        let lower = word.to_ascii_lowercase();
        let after = &rest[word_len..];
        let (sep_len, sep_ok) = if SCHEMES.contains(&lower.as_str()) {
            let n = run_len(after, |c| c == ' ' || c == '\t');
            (n, n > 0)
        } else if KEY_WORDS.contains(&lower.as_str()) {
            let n = run_len(after, |c| matches!(c, ':' | '=' | ' ' | '\t' | '"' | '\''));
            (n, after[..n].contains([':', '=']))
        } else {
            (0, false)
        };
        if sep_ok {
            let value = &after[sep_len..];
            let value_len = run_len(value, |c| !ends_value(c));
            let value_text = &value[..value_len];
            if value_text.chars().count() >= 8 && !value_text.starts_with(REDACTED) {
                out.push_str(word);
                out.push_str(&after[..sep_len]);
                out.push_str(REDACTED);
                i += word_len + sep_len + value_len;
                continue;
            }
        }
        out.push_str(if looks_like_key(word) { REDACTED } else { word });
        i += word_len;
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn removes_configured_secrets_anywhere() {
        assert_eq!(
            redact("x-my-secret-valuex", &["my-secret-value"]),
            "x-[REDACTED]x"
        );
        // A secret that contains another is removed whole.
        assert_eq!(redact("abcdefgh", &["abcd", "abcdefgh"]), REDACTED);
        // Too short to tell apart from ordinary text.
        assert_eq!(redact("a b c", &["a"]), "a b c");
    }

    #[test]
    fn removes_key_and_token_shapes() {
        let cases = [
            (
                "Incorrect API key provided: sk-ant-api03-AAAAAAAAAAAAAAAAAAAAAAAA.",
                "Incorrect API key provided: [REDACTED].",
            ),
            (
                "key=AIzaSyD-1234567890abcdefghijklmno&x=1",
                "key=[REDACTED]&x=1",
            ),
            (
                r#"{"api_key": "whatever-it-is", "model": "gpt-4o"}"#,
                r#"{"api_key": "[REDACTED]", "model": "gpt-4o"}"#,
            ),
            (
                "authorization: Basic dXNlcjpwYXNzd29yZA==",
                "authorization: Basic [REDACTED]",
            ),
            (
                "azure key 0123456789abcdef0123456789abcdef here",
                "azure key [REDACTED] here",
            ),
            ("x-api-key: 12345678", "x-api-key: [REDACTED]"),
        ];
        for (input, expected) in cases {
            assert_eq!(redact(input, &[]), expected, "{input}");
        }
    }

    #[test]
    fn keeps_ordinary_text() {
        for text in [
            "error sending request for url (http://127.0.0.1:4000/v1/chat/completions)",
            "model gpt-4o-mini-2024-07-18 does not exist",
            "max_tokens: 4096 is too large; token limit exceeded",
            "Rate limit reached for requests; key: short",
            "Überlastet — bitte später erneut versuchen",
        ] {
            assert_eq!(redact(text, &[]), text);
        }
    }

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("héllo", 10), "héllo");
        assert_eq!(truncate("héllo", 3), "hé…");
        assert_eq!(truncate("héllo", 0), "…");
        assert_eq!(
            clean("sk-abcdefghijklmnopqrstuvwxyz tail", &[], 12),
            "[REDACTED] …"
        );
    }

    proptest! {
        #[test]
        fn a_planted_secret_never_survives(
            before in ".{0,40}",
            after in ".{0,40}",
            secret in "[A-Za-z0-9_.+/=-]{4,60}",
        ) {
            // The marker itself cannot be hidden behind itself.
            prop_assume!(!REDACTED.contains(secret.as_str()));
            let text = format!("{before}{secret}{after}");
            let out = redact(&text, &[secret.as_str()]);
            prop_assert!(!out.contains(secret.as_str()), "{out}");
        }

        #[test]
        fn never_panics_and_is_idempotent(text in ".{0,200}") {
            let once = redact(&text, &[]);
            prop_assert_eq!(redact(&once, &[]), once.clone());
            let _ = clean(&text, &[], 17);
        }
    }
}
