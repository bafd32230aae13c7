//! Pieces shared by the three adapters: the interpreted reply, URL joining,
//! JSON helpers, and the interface of the streaming decoders.

use reqwest::Url;
use runnel_core::{OutcomeClass, Usage};
use serde_json::Value;

use crate::classify::Fault;
use crate::redact::truncate;

/// How much of a malformed body or event is quoted in an error. Not a
/// setting: the whole message is cut to `calls.max_error_chars`, the one
/// knob for error length; this only keeps room for the explanation.
const SNIPPET_CHARS: usize = 200;

/// A reply's text and token usage, as an adapter read it.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Completion {
    /// The model's text.
    pub(crate) text: String,
    /// Token usage, when the provider reported it.
    pub(crate) usage: Option<Usage>,
}

/// Whether a stream should keep being read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Read the next event.
    More,
    /// The terminal event arrived; stop reading.
    Done,
}

/// What a streaming decoder has gathered so far.
#[derive(Debug, Default)]
pub(crate) struct Accumulator {
    /// The text so far.
    pub(crate) text: String,
    /// The latest usage report.
    pub(crate) usage: Option<Usage>,
    /// Whether the reply said it was complete (a finish reason).
    pub(crate) finished: bool,
}

impl Accumulator {
    /// Appends a text delta and hands it to `sink`.
    pub(crate) fn push(&mut self, delta: &str, sink: &mut dyn FnMut(&str)) {
        if !delta.is_empty() {
            sink(delta);
            self.text.push_str(delta);
        }
    }

    /// The reply, if the stream was complete: its terminal event arrived
    /// (`done`) or the reply said it was finished.
    pub(crate) fn finish(self, done: bool) -> Result<Completion, Fault> {
        if done || self.finished {
            Ok(Completion {
                text: self.text,
                usage: self.usage,
            })
        } else {
            Err(truncated(self.text.chars().count()))
        }
    }
}

/// `base` with `segments` appended to its path (each percent-encoded as a
/// path segment, so a model name cannot change the URL's shape).
pub(crate) fn join(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    // Only http(s) URLs reach here (checked when the registry is built), and
    // those can always be a base, so the `Err` arm cannot happen.
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty();
        path.extend(segments);
    }
    url
}

/// Parses a JSON body; the error quotes its start.
pub(crate) fn parse_json(body: &[u8], what: &str) -> Result<Value, Fault> {
    serde_json::from_slice(body).map_err(|e| {
        Fault::permanent(format!(
            "unparsable {what}: {e}; received: {:?}",
            truncate(&String::from_utf8_lossy(body), SNIPPET_CHARS)
        ))
    })
}

/// Parses a stream event's JSON data; a malformed event is transient (a
/// proxy or a broken connection can cut an event in two).
pub(crate) fn parse_event(data: &str) -> Result<Value, Fault> {
    serde_json::from_str(data).map_err(|e| {
        Fault::transient(format!(
            "malformed stream event: {e}; received: {:?}",
            truncate(data, SNIPPET_CHARS)
        ))
    })
}

/// A non-negative integer field, wherever it is.
pub(crate) fn u64_at(v: &Value, pointer: &str) -> Option<u64> {
    v.pointer(pointer).and_then(Value::as_u64)
}

/// The fault for a stream that ended without its terminal event.
fn truncated(received_chars: usize) -> Fault {
    Fault::transient(format!(
        "truncated stream: it ended without its final event after {received_chars} characters of text"
    ))
}

/// The fault for an `{"error": …}` object that arrived where a reply was
/// expected (inside a 2xx body or a stream).
pub(crate) fn embedded_error(body: &Value, otherwise: OutcomeClass) -> Option<Fault> {
    let message = crate::classify::error_message(body)?;
    body.get("error").map(|_| {
        crate::classify::classify_error_text(format!("provider error: {message}"), otherwise)
    })
}

/// A `stop` parameter (a string or a list) as a list of strings.
pub(crate) fn stop_list(v: Value) -> Value {
    match v {
        Value::String(s) => Value::Array(vec![Value::String(s)]),
        other => other,
    }
}

/// Messages from `(role, content)` pairs, for tests.
#[cfg(test)]
pub(crate) fn messages(pairs: &[(&str, &str)]) -> Vec<runnel_core::Message> {
    pairs
        .iter()
        .map(|(role, content)| runnel_core::Message {
            role: (*role).to_owned(),
            content: (*content).to_owned(),
        })
        .collect()
}

/// Checks that `parse` fails on each body with the class and a message
/// containing the fragment, for tests.
#[cfg(test)]
pub(crate) fn check_failures(
    parse: fn(&[u8]) -> Result<Completion, Fault>,
    cases: &[(&str, OutcomeClass, &str)],
) {
    for (body, class, fragment) in cases {
        let fault = parse(body.as_bytes()).expect_err(body);
        assert_eq!(fault.class, *class, "{body}");
        assert!(
            fault.message.contains(fragment),
            "{body}: {}",
            fault.message
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joining_encodes_segments_and_keeps_the_base_path() {
        let base = Url::parse("http://127.0.0.1:9/v1/").unwrap();
        assert_eq!(
            join(&base, &["chat", "completions"]).as_str(),
            "http://127.0.0.1:9/v1/chat/completions"
        );
        let base = Url::parse("http://127.0.0.1:9/v1beta").unwrap();
        assert_eq!(
            join(&base, &["models", "a/b?c#d:generateContent"]).as_str(),
            "http://127.0.0.1:9/v1beta/models/a%2Fb%3Fc%23d:generateContent"
        );
    }
}
