//! Reading reply bodies with a size cap, and driving a streaming decoder
//! over Server-Sent Events (`eventsource-stream` over the body's bytes).
//! Both are generic over the byte stream so tests can feed them any split.

use std::pin::pin;

use eventsource_stream::{EventStreamError, Eventsource};
use futures::{Stream, StreamExt};
use runnel_core::{ChunkSink, Protocol};

use crate::classify::Fault;
use crate::wire::{Completion, Step};
use crate::{anthropic, gemini, openai};

/// The streaming decoder of one protocol.
#[derive(Debug)]
pub(crate) enum Decoder {
    /// OpenAI Chat Completions chunks.
    OpenAi(openai::Decoder),
    /// Anthropic Messages events.
    Anthropic(anthropic::Decoder),
    /// Gemini `streamGenerateContent` chunks.
    Gemini(gemini::Decoder),
}

impl Decoder {
    pub(crate) fn new(protocol: Protocol) -> Self {
        match protocol {
            Protocol::OpenAiChat => Decoder::OpenAi(openai::Decoder::default()),
            Protocol::AnthropicMessages => Decoder::Anthropic(anthropic::Decoder::default()),
            Protocol::GeminiGenerate => Decoder::Gemini(gemini::Decoder::default()),
        }
    }

    fn event(&mut self, name: &str, data: &str, sink: &mut dyn FnMut(&str)) -> Result<Step, Fault> {
        match self {
            Decoder::OpenAi(d) => d.event(data, sink),
            Decoder::Anthropic(d) => d.event(name, data, sink),
            Decoder::Gemini(d) => d.event(data, sink),
        }
    }

    fn finish(self, done: bool) -> Result<Completion, Fault> {
        match self {
            Decoder::OpenAi(d) => d.finish(done),
            Decoder::Anthropic(d) => d.finish(done),
            Decoder::Gemini(d) => d.finish(),
        }
    }
}

/// Why reading bytes stopped early.
#[derive(Debug)]
enum Cut<E> {
    /// The transport failed.
    Transport(E),
    /// More than the cap arrived.
    TooLarge,
}

/// The fault for a reply larger than `max` bytes.
pub(crate) fn too_large(max: u64) -> Fault {
    Fault::permanent(format!(
        "reply is larger than max_response_bytes ({max} bytes)"
    ))
}

/// Reads at most `max` bytes of a body. Returns the bytes and whether the
/// body had more; a transport error is returned with what was read so far.
pub(crate) async fn read_capped<S, B, E>(bytes: S, max: u64) -> (Vec<u8>, bool, Option<E>)
where
    S: Stream<Item = Result<B, E>>,
    B: AsRef<[u8]>,
{
    let mut bytes = pin!(bytes);
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    let mut body = Vec::new();
    while let Some(chunk) = bytes.next().await {
        match chunk {
            Ok(chunk) => {
                let chunk = chunk.as_ref();
                let room = limit - body.len();
                if chunk.len() > room {
                    body.extend_from_slice(&chunk[..room]);
                    return (body, true, None);
                }
                body.extend_from_slice(chunk);
            }
            Err(e) => return (body, false, Some(e)),
        }
    }
    (body, false, None)
}

/// Reads a Server-Sent Events body through `decoder`, sending text to
/// `sink` as it arrives. Stops at the terminal event; a stream that ends
/// without it is a transient "truncated stream"; more than `max` bytes is
/// permanent; a transport error becomes `transport(e)`.
pub(crate) async fn read_events<S, B, E>(
    bytes: S,
    max: u64,
    mut decoder: Decoder,
    sink: Option<&ChunkSink>,
    transport: impl Fn(E) -> Fault,
) -> Result<Completion, Fault>
where
    S: Stream<Item = Result<B, E>>,
    B: AsRef<[u8]>,
{
    let mut total: u64 = 0;
    let capped = bytes.map(|chunk| match chunk {
        Ok(b) => {
            total = total.saturating_add(b.as_ref().len() as u64);
            if total > max {
                Err(Cut::TooLarge)
            } else {
                Ok(b)
            }
        }
        Err(e) => Err(Cut::Transport(e)),
    });
    let mut events = pin!(capped.eventsource());
    let mut done = false;
    while let Some(event) = events.next().await {
        match event {
            Ok(event) => {
                let mut forward = |text: &str| {
                    if let Some(sink) = sink {
                        sink(text);
                    }
                };
                if decoder.event(&event.event, &event.data, &mut forward)? == Step::Done {
                    done = true;
                    break;
                }
            }
            Err(EventStreamError::Transport(Cut::TooLarge)) => return Err(too_large(max)),
            Err(EventStreamError::Transport(Cut::Transport(e))) => return Err(transport(e)),
            Err(EventStreamError::Utf8(e)) => {
                return Err(Fault::transient(format!(
                    "malformed stream: not UTF-8 text: {e}"
                )));
            }
            Err(EventStreamError::Parser(e)) => {
                return Err(Fault::transient(format!("malformed stream: {e}")));
            }
        }
    }
    decoder.finish(done)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use futures::stream;
    use proptest::prelude::*;
    use runnel_core::OutcomeClass;

    use super::*;

    const OPENAI: &str = "data: {\"choices\":[{\"delta\":{\"content\":\"Hé\"}}]}\n\n\
        : keep-alive comment\n\n\
        data: {\"choices\":[{\"delta\":{\"content\":\"llo\"},\"finish_reason\":\"stop\"}]}\n\n\
        data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}\n\n\
        data: [DONE]\n\n";

    const ANTHROPIC: &str = "event: message_start\r\n\
        data: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\r\n\r\n\
        event: content_block_delta\r\n\
        data: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hé\"}}\r\n\r\n\
        event: content_block_delta\r\n\
        data: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"llo\"}}\r\n\r\n\
        event: message_stop\r\n\
        data: {\"type\":\"message_stop\"}\r\n\r\n";

    const GEMINI: &str = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hé\"}]}}]}\n\n\
        data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"llo\"}]},\"finishReason\":\"STOP\"}]}\n\n";

    /// Feeds `body` split at `cuts` (byte offsets, any order) and collects
    /// the outcome and the chunks sent to the sink.
    fn run(
        protocol: Protocol,
        body: &[u8],
        cuts: &[usize],
        max: u64,
    ) -> (Result<Completion, Fault>, String) {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
        points.push(0);
        points.push(body.len());
        points.sort_unstable();
        points.dedup();
        let pieces: Vec<Result<Vec<u8>, String>> = points
            .windows(2)
            .map(|w| Ok(body[w[0]..w[1]].to_vec()))
            .collect();
        let seen = Arc::new(Mutex::new(String::new()));
        let seen2 = Arc::clone(&seen);
        let sink: ChunkSink = Arc::new(move |t: &str| seen2.lock().unwrap().push_str(t));
        let result = futures::executor::block_on(read_events(
            stream::iter(pieces),
            max,
            Decoder::new(protocol),
            Some(&sink),
            Fault::transient,
        ));
        let text = seen.lock().unwrap().clone();
        (result, text)
    }

    #[test]
    fn every_protocol_streams_to_completion() {
        for (protocol, body) in [
            (Protocol::OpenAiChat, OPENAI),
            (Protocol::AnthropicMessages, ANTHROPIC),
            (Protocol::GeminiGenerate, GEMINI),
        ] {
            let (result, seen) = run(protocol, body.as_bytes(), &[], 1 << 20);
            assert_eq!(
                result.map(|c| c.text),
                Ok("Héllo".to_owned()),
                "{protocol:?}"
            );
            assert_eq!(seen, "Héllo");
        }
    }

    #[test]
    fn cut_streams_are_truncated_and_big_ones_too_large() {
        for (protocol, body) in [
            (Protocol::OpenAiChat, OPENAI),
            (Protocol::AnthropicMessages, ANTHROPIC),
            (Protocol::GeminiGenerate, GEMINI),
        ] {
            let half = &body.as_bytes()[..body.len() / 2];
            let (result, _) = run(protocol, half, &[7], 1 << 20);
            let fault = result.unwrap_err();
            assert_eq!(fault.class, OutcomeClass::Transient, "{protocol:?}");
            assert!(
                fault.message.starts_with("truncated stream"),
                "{}",
                fault.message
            );
            let (result, _) = run(protocol, body.as_bytes(), &[], 40);
            assert_eq!(result.unwrap_err(), too_large(40));
        }
    }

    #[test]
    fn transport_errors_and_malformed_events_are_transient() {
        let pieces: Vec<Result<&[u8], String>> = vec![
            Ok(b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n"),
            Err("connection reset by peer".to_owned()),
        ];
        let result = futures::executor::block_on(read_events(
            stream::iter(pieces),
            1 << 20,
            Decoder::new(Protocol::OpenAiChat),
            None,
            Fault::transient,
        ));
        assert_eq!(result, Err(Fault::transient("connection reset by peer")));
        let (result, _) = run(
            Protocol::OpenAiChat,
            b"data: {\"choices\": [\n\n",
            &[],
            1 << 20,
        );
        let fault = result.unwrap_err();
        assert_eq!(fault.class, OutcomeClass::Transient);
        assert!(
            fault.message.starts_with("malformed stream event"),
            "{}",
            fault.message
        );
        let (result, _) = run(Protocol::OpenAiChat, b"data: \xff\xfe\n\n", &[], 1 << 20);
        assert_eq!(result.unwrap_err().class, OutcomeClass::Transient);
    }

    #[test]
    fn capped_reads_stop_at_the_cap() {
        let pieces: Vec<Result<&[u8], ()>> = vec![Ok(b"abc"), Ok(b"defg")];
        let (body, more, err) = futures::executor::block_on(read_capped(stream::iter(pieces), 5));
        assert_eq!((body.as_slice(), more, err), (&b"abcde"[..], true, None));
        let pieces: Vec<Result<&[u8], ()>> = vec![Ok(b"abc"), Err(())];
        let (body, more, err) = futures::executor::block_on(read_capped(stream::iter(pieces), 5));
        assert_eq!((body.as_slice(), more, err), (&b"abc"[..], false, Some(())));
    }

    proptest! {
        /// The decoders are state machines fed by an arbitrary split of the
        /// byte stream: however the bytes are cut, the result is the same.
        #[test]
        fn any_split_of_the_bytes_gives_the_same_reply(
            cuts in prop::collection::vec(any::<usize>(), 0..12),
            which in 0usize..3,
        ) {
            let (protocol, body) = [
                (Protocol::OpenAiChat, OPENAI),
                (Protocol::AnthropicMessages, ANTHROPIC),
                (Protocol::GeminiGenerate, GEMINI),
            ][which];
            let (result, seen) = run(protocol, body.as_bytes(), &cuts, 1 << 20);
            prop_assert_eq!(result.map(|c| c.text), Ok("Héllo".to_owned()));
            prop_assert_eq!(seen, "Héllo");
        }

        /// Any prefix of a stream ends in a reply or a classified fault, never a panic.
        #[test]
        fn any_prefix_ends_cleanly(len in 0usize..600, which in 0usize..3) {
            let (protocol, body) = [
                (Protocol::OpenAiChat, OPENAI),
                (Protocol::AnthropicMessages, ANTHROPIC),
                (Protocol::GeminiGenerate, GEMINI),
            ][which];
            let body = body.as_bytes();
            let (result, _) = run(protocol, &body[..len.min(body.len())], &[len / 2], 1 << 20);
            if let Err(fault) = result {
                prop_assert_ne!(fault.class, OutcomeClass::Success);
            }
        }
    }
}
