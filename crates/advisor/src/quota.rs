//! Waiting on a used-up quota (DESIGN §6): a key whose provider answered
//! that its quota, credit or spend cap is used up is not rate limited — its
//! learned rate stays, its breaker does not count it — but no call goes
//! until the quota is back. The wait ends at the time the provider stated
//! (`retry_after`), or after `quota_probe_interval` when it stated none;
//! then one probe call checks, and its success ends the wait.
//!
//! ```text
//!   (none) ──quota exhausted──▶ WAITING(next probe = now + retry_after | probe interval)
//!     ▲                           │ next probe reached: one permit (the probe),
//!     │ success, or a plain 429   │ the next waits for its outcome or probe_timeout
//!     └───────────────────────────┘ quota exhausted again: WAITING with a new time
//! ```

use std::time::{Duration, Instant};

use runnel_core::{OutcomeClass, WaitReason};

use crate::bucket::later;

/// The quota wait of one key, while it lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QuotaWait {
    /// No permit before this instant: the stated return of the quota, the
    /// next probe, or — while a probe is out — when it counts as lost.
    next_probe: Instant,
    /// When the provider said the quota comes back, if it said.
    back_at: Option<Instant>,
    /// Whether a probe is out.
    probing: bool,
}

impl QuotaWait {
    /// The wait that starts when a call reports its quota used up at `now`.
    pub(crate) fn begin(now: Instant, retry_after: Option<Duration>, probe: Duration) -> Self {
        Self {
            next_probe: later(now, retry_after.unwrap_or(probe)),
            back_at: retry_after.map(|d| later(now, d)),
            probing: false,
        }
    }

    /// `Err` with the wait's end and reason while no call may go; `Ok`
    /// when the next permit would be the probe.
    pub(crate) fn check(&self, now: Instant) -> Result<(), (Instant, WaitReason)> {
        if now < self.next_probe {
            Err((
                self.next_probe,
                WaitReason::Quota {
                    until: self.back_at,
                },
            ))
        } else {
            Ok(())
        }
    }

    /// A permit was granted at `now` after [`check`](Self::check) said yes:
    /// it is the probe, out until its outcome or `probe_timeout`.
    pub(crate) fn on_permit(&mut self, now: Instant, probe_timeout: Duration) {
        self.probing = true;
        self.next_probe = later(now, probe_timeout);
    }

    /// An outcome other than a quota exhaustion arrived at `now`: whether
    /// the wait is over. A success (or a plain 429: the quota is back, the
    /// rate is what binds now) ends it; a transient or permanent failure of
    /// the probe says nothing about the quota, so another probe may go.
    pub(crate) fn on_outcome(&mut self, class: OutcomeClass, now: Instant) -> bool {
        match class {
            OutcomeClass::Success | OutcomeClass::RateLimited => true,
            OutcomeClass::Transient | OutcomeClass::Permanent => {
                if self.probing {
                    self.probing = false;
                    self.next_probe = now;
                }
                false
            }
            OutcomeClass::QuotaExhausted => false,
        }
    }

    /// The end of the current wait (for metrics).
    pub(crate) fn next_probe(&self) -> Instant {
        self.next_probe
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROBE: Duration = Duration::from_secs(300);
    const PROBE_TIMEOUT: Duration = Duration::from_secs(150);

    #[test]
    fn a_stated_return_is_waited_for_then_one_probe_goes() {
        let t0 = Instant::now();
        let w = QuotaWait::begin(t0, Some(Duration::from_secs(3600)), PROBE);
        let back = t0 + Duration::from_secs(3600);
        assert_eq!(
            w.check(t0 + Duration::from_secs(3599)),
            Err((back, WaitReason::Quota { until: Some(back) }))
        );
        let mut w = w;
        assert_eq!(w.check(back), Ok(()));
        w.on_permit(back, PROBE_TIMEOUT);
        assert!(w.check(back + Duration::from_secs(1)).is_err());
        // A lost probe is replaced after the probe timeout.
        assert_eq!(w.check(back + PROBE_TIMEOUT), Ok(()));
    }

    #[test]
    fn an_unknown_return_is_probed_every_interval() {
        let t0 = Instant::now();
        let w = QuotaWait::begin(t0, None, PROBE);
        assert_eq!(
            w.check(t0),
            Err((t0 + PROBE, WaitReason::Quota { until: None }))
        );
        assert_eq!(w.check(t0 + PROBE), Ok(()));
    }

    #[test]
    fn success_ends_the_wait_and_a_failed_probe_lets_another_go() {
        let t0 = Instant::now();
        let mut w = QuotaWait::begin(t0, None, PROBE);
        w.on_permit(t0 + PROBE, PROBE_TIMEOUT);
        assert!(!w.on_outcome(OutcomeClass::Transient, t0 + PROBE));
        assert_eq!(w.check(t0 + PROBE), Ok(()));
        assert!(!w.on_outcome(OutcomeClass::Permanent, t0 + PROBE));
        assert!(w.on_outcome(OutcomeClass::Success, t0 + PROBE));
        assert!(w.on_outcome(OutcomeClass::RateLimited, t0 + PROBE));
    }
}
