//! Quota exhaustion is not a rate limit (DESIGN §6, issue 12 item 3): the
//! learned rate stays, the breaker does not count it, the key waits on its
//! quota until the stated time or the probe interval, and one probe decides.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use proptest::prelude::*;
use runnel_advisor::{Advisor, AdvisorConfig, BreakerState};
use runnel_core::{Acquire, Advisor as _, Observation, OutcomeClass, RateKey, WaitReason};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn quota(retry_after: Option<Duration>) -> Observation {
    Observation {
        retry_after,
        ..Observation::of(OutcomeClass::QuotaExhausted)
    }
}

fn advisor() -> (Advisor, RateKey, Instant) {
    let advisor = Advisor::new(AdvisorConfig::default()).unwrap();
    (
        advisor,
        RateKey::new("openai", "gpt-4o-mini"),
        Instant::now(),
    )
}

#[test]
fn a_quota_error_keeps_the_rate_and_the_breaker_and_waits_until_the_stated_time() {
    let (advisor, key, t0) = advisor();
    assert_eq!(advisor.try_acquire(&key, None, t0), Acquire::Permit);
    let rate = advisor.key_metrics(&key, t0).unwrap().rate_rps;
    // Many quota answers: no rate cut, no breaker trip.
    for _ in 0..20 {
        advisor.record(&key, &quota(Some(secs(3600))), t0);
    }
    let m = advisor.key_metrics(&key, t0).unwrap();
    assert_eq!(
        m.rate_rps, rate,
        "quota exhaustion never cuts the learned rate"
    );
    assert_eq!(m.counters.decreases, 0);
    assert_eq!(m.breaker, BreakerState::Closed);
    assert_eq!(m.counters.quota_exhausted, 20);
    let back = t0 + secs(3600);
    assert_eq!(m.quota_wait_until, Some(back));
    assert_eq!(
        advisor.try_acquire(&key, None, t0 + secs(3599)),
        Acquire::Wait {
            until: back,
            reason: WaitReason::Quota { until: Some(back) }
        }
    );
    // At the stated time one probe goes; the next waits for its outcome.
    assert_eq!(advisor.try_acquire(&key, None, back), Acquire::Permit);
    assert!(matches!(
        advisor.try_acquire(&key, None, back + secs(2)),
        Acquire::Wait {
            reason: WaitReason::Quota { .. },
            ..
        }
    ));
    // The probe succeeds: the quota is back and calls flow at the old rate.
    advisor.record(
        &key,
        &Observation::of(OutcomeClass::Success),
        back + secs(2),
    );
    assert_eq!(
        advisor.try_acquire(&key, None, back + secs(2)),
        Acquire::Permit
    );
    let m = advisor.key_metrics(&key, back + secs(2)).unwrap();
    assert_eq!(m.quota_wait_until, None);
    assert_eq!(m.rate_rps, rate);
}

#[test]
fn an_unknown_return_is_probed_every_quota_probe_interval() {
    let (advisor, key, t0) = advisor();
    let probe = advisor.config().quota_probe_interval;
    assert_eq!(probe, secs(300));
    assert_eq!(advisor.try_acquire(&key, None, t0), Acquire::Permit);
    advisor.record(&key, &quota(None), t0);
    assert_eq!(
        advisor.try_acquire(&key, None, t0 + secs(1)),
        Acquire::Wait {
            until: t0 + probe,
            reason: WaitReason::Quota { until: None }
        }
    );
    // The probe finds the quota still used up: another interval.
    let t1 = t0 + probe;
    assert_eq!(advisor.try_acquire(&key, None, t1), Acquire::Permit);
    advisor.record(&key, &quota(None), t1 + secs(1));
    assert_eq!(
        advisor.try_acquire(&key, None, t1 + secs(2)),
        Acquire::Wait {
            until: t1 + secs(1) + probe,
            reason: WaitReason::Quota { until: None }
        }
    );
    assert_eq!(
        advisor.key_metrics(&key, t1).unwrap().counters.waits_quota,
        2
    );
}

proptest! {
    /// Whatever mix of quota answers comes back, a key waiting on quota
    /// lets its next call (the probe) through exactly when the stated wait,
    /// or else the probe interval, has passed — never before — and never
    /// cuts its rate or opens its breaker.
    #[test]
    fn a_key_waiting_on_quota_sends_one_probe_per_interval(
        waits in proptest::collection::vec(proptest::option::of(1u64..2000), 1..30),
    ) {
        let (advisor, key, t0) = advisor();
        let probe = advisor.config().quota_probe_interval;
        prop_assert_eq!(advisor.try_acquire(&key, None, t0), Acquire::Permit);
        let rate = advisor.key_metrics(&key, t0).unwrap().rate_rps;
        let mut now = t0;
        for wait in waits {
            let wait = wait.map(secs);
            advisor.record(&key, &quota(wait), now);
            let due = now + wait.unwrap_or(probe);
            // Ask every 10 s until a permit: it must come exactly at `due`
            // (rounded up to the step), never before.
            loop {
                now += secs(10);
                match advisor.try_acquire(&key, None, now) {
                    Acquire::Permit => {
                        prop_assert!(now >= due, "a permit {:?} before the quota's time", due - now);
                        prop_assert!(now < due + secs(10));
                        break;
                    }
                    Acquire::Wait { until, reason } => {
                        prop_assert_eq!(until, due);
                        let is_quota = matches!(reason, WaitReason::Quota { .. });
                        prop_assert!(is_quota, "{:?}", reason);
                    }
                }
            }
        }
        let m = advisor.key_metrics(&key, now).unwrap();
        prop_assert_eq!(m.rate_rps, rate);
        prop_assert_eq!(m.breaker, BreakerState::Closed);
    }
}
