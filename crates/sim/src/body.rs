//! The response body type: a whole body, or a sequence of events sent with
//! a pause between them that may end in a simulated connection reset.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use crate::stats::InFlight;

/// A response body.
#[derive(Debug)]
pub(crate) enum SimBody {
    /// All at once (taken when sent).
    Full(Option<Bytes>),
    /// Piece by piece.
    Events(Events),
}

impl SimBody {
    /// A whole body.
    pub(crate) fn full(bytes: impl Into<Bytes>) -> Self {
        SimBody::Full(Some(bytes.into()))
    }
}

/// Events sent in order with `delay` between two of them. With
/// `fail_after: Some(n)`, after `n` events the body fails (which makes the
/// server abort the connection) — but first it yields once, so the server
/// flushes what was already sent.
#[derive(Debug)]
pub(crate) struct Events {
    events: VecDeque<Bytes>,
    delay: Duration,
    fail_after: Option<usize>,
    sent: usize,
    yielded: bool,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Keeps the request counted as in flight until the body is done.
    _in_flight: Option<InFlight>,
}

impl Events {
    /// A body of `events` with `delay` before each one after the first.
    pub(crate) fn new(events: Vec<Bytes>, delay: Duration, in_flight: Option<InFlight>) -> Self {
        Events {
            events: events.into(),
            delay,
            fail_after: None,
            sent: 0,
            yielded: false,
            sleep: None,
            _in_flight: in_flight,
        }
    }

    /// Fails the body after `n` events.
    pub(crate) fn fail_after(mut self, n: usize) -> Self {
        self.fail_after = Some(n);
        self
    }
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let events = match self.get_mut() {
            SimBody::Full(bytes) => return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            SimBody::Events(events) => events,
        };
        if events.fail_after == Some(events.sent) {
            if !events.yielded {
                events.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            return Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "simulated connection reset",
            ))));
        }
        if events.events.is_empty() {
            return Poll::Ready(None);
        }
        if events.sent > 0 && !events.delay.is_zero() {
            let delay = events.delay;
            let sleep = events
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(delay)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            events.sleep = None;
        }
        events.sent += 1;
        Poll::Ready(events.events.pop_front().map(|e| Ok(Frame::data(e))))
    }

    fn is_end_stream(&self) -> bool {
        match self {
            SimBody::Full(bytes) => bytes.is_none(),
            SimBody::Events(events) => events.events.is_empty() && events.fail_after.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            SimBody::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            SimBody::Full(None) => SizeHint::with_exact(0),
            SimBody::Events(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn events_come_in_order_with_the_delay_between() {
        let start = tokio::time::Instant::now();
        let body = SimBody::Events(Events::new(
            vec![Bytes::from("a"), Bytes::from("b"), Bytes::from("c")],
            Duration::from_millis(100),
            None,
        ));
        let all = body.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], b"abc");
        assert_eq!(start.elapsed(), Duration::from_millis(200));
    }

    #[test]
    fn the_body_holds_its_request_in_flight_until_dropped() {
        let stats = std::sync::Arc::new(crate::stats::Stats::default());
        let body = SimBody::Events(Events::new(Vec::new(), Duration::ZERO, Some(stats.enter())));
        assert_eq!(stats.snapshot(Duration::ZERO).concurrency.current, 1);
        drop(body);
        assert_eq!(stats.snapshot(Duration::ZERO).concurrency.current, 0);
    }

    proptest::proptest! {
        /// Whatever the number of events and the failure point, the events
        /// before it arrive in order, then the body fails exactly when asked
        /// to (and otherwise ends cleanly).
        #[test]
        fn events_arrive_in_order_until_the_failure(
            n in 0usize..20,
            fail in proptest::option::of(0usize..20),
        ) {
            let fail = fail.filter(|f| *f <= n);
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
            let (got, failed, ended) = runtime.block_on(async {
                let events = (0..n).map(|i| Bytes::from(i.to_string())).collect();
                let mut events = Events::new(events, Duration::ZERO, None);
                if let Some(f) = fail {
                    events = events.fail_after(f);
                }
                let mut body = SimBody::Events(events);
                let mut got = Vec::new();
                let mut failed = false;
                while let Some(frame) = body.frame().await {
                    match frame {
                        Ok(frame) => got.push(frame.into_data().unwrap()),
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    }
                }
                (got, failed, body.is_end_stream())
            });
            let want: Vec<Bytes> = (0..fail.unwrap_or(n)).map(|i| Bytes::from(i.to_string())).collect();
            proptest::prop_assert_eq!(got, want);
            proptest::prop_assert_eq!(failed, fail.is_some());
            proptest::prop_assert_eq!(ended, fail.is_none());
        }
    }

    #[tokio::test]
    async fn failing_body_sends_its_events_then_errors() {
        let mut body = SimBody::Events(
            Events::new(
                vec![Bytes::from("a"), Bytes::from("b")],
                Duration::ZERO,
                None,
            )
            .fail_after(1),
        );
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "a");
        let err = body.frame().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    }
}
