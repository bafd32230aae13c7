//! The simulator's notion of time: how long since it started.
//!
//! Rate-limit buckets, outage windows and the per-second histogram read this
//! clock, never the system clock directly, so tests can step it exactly with
//! a [`ManualClock`] instead of sleeping. Latency and streaming pace are real
//! waits (`tokio::time::sleep`) whatever the clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Where the simulator's time comes from.
#[derive(Clone, Debug)]
pub struct SimClock(Source);

#[derive(Clone, Debug)]
enum Source {
    /// Tokio's clock (the system's monotonic clock, or tokio's paused clock
    /// in a test with `start_paused`), measured from this instant.
    Tokio(tokio::time::Instant),
    /// Time that moves only when a test advances it.
    Manual(ManualClock),
}

impl SimClock {
    /// Real time, starting now.
    pub fn system() -> Self {
        SimClock(Source::Tokio(tokio::time::Instant::now()))
    }

    /// Time since the clock started.
    pub fn elapsed(&self) -> Duration {
        match &self.0 {
            Source::Tokio(start) => start.elapsed(),
            Source::Manual(manual) => manual.elapsed(),
        }
    }
}

impl From<ManualClock> for SimClock {
    fn from(manual: ManualClock) -> Self {
        SimClock(Source::Manual(manual))
    }
}

/// A clock that starts at zero and moves only by [`ManualClock::advance`].
/// Clones share the same time, so a test keeps one clone and gives the other
/// to [`crate::Sim::start_with_clock`].
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    nanos: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves time forward by `by` (saturating after about 584 years).
    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        // fetch_update cannot fail: the closure always returns Some.
        let _ = self
            .nanos
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_add(by))
            });
    }

    /// Time since the clock started.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_advanced_and_clones_share_it() {
        let manual = ManualClock::new();
        let clock = SimClock::from(manual.clone());
        assert_eq!(clock.elapsed(), Duration::ZERO);
        manual.advance(Duration::from_millis(1500));
        assert_eq!(clock.elapsed(), Duration::from_millis(1500));
        manual.advance(Duration::MAX);
        assert_eq!(clock.elapsed(), Duration::from_nanos(u64::MAX));
    }

    #[tokio::test(start_paused = true)]
    async fn system_clock_follows_tokio_time() {
        let clock = SimClock::system();
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(clock.elapsed(), Duration::from_secs(3));
    }
}
