//! Property tests of the circuit breaker state machine: whatever the order
//! of asks, outcomes and time, it keeps the rules of DESIGN §5.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use proptest::prelude::*;
use runnel_advisor::{Breaker, BreakerState, Gate, Transition};
use runnel_core::OutcomeClass;

const THRESHOLD: u32 = 3;
const COOLDOWN: Duration = Duration::from_secs(30);
const PROBE_TIMEOUT: Duration = Duration::from_secs(100);

#[derive(Clone, Debug)]
enum Op {
    Advance(u64),
    Ask,
    Record(OutcomeClass),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let class = prop_oneof![
        3 => Just(OutcomeClass::Transient),
        2 => Just(OutcomeClass::Success),
        1 => Just(OutcomeClass::RateLimited),
        1 => Just(OutcomeClass::QuotaExhausted),
        1 => Just(OutcomeClass::Permanent),
    ];
    prop::collection::vec(
        prop_oneof![
            2 => (0u64..60_000).prop_map(Op::Advance),
            3 => Just(Op::Ask),
            4 => class.prop_map(Op::Record),
        ],
        1..300,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_breaker_keeps_its_rules(ops in ops()) {
        let t0 = Instant::now();
        let mut b = Breaker::new(THRESHOLD, COOLDOWN, PROBE_TIMEOUT);
        let mut now = t0;
        // Transient outcomes recorded while closed since the last success.
        let mut streak = 0u32;
        // When calls may flow again after the breaker (re)opened.
        let mut open_until: Option<Instant> = None;
        let mut open_since: Option<Instant> = None;
        // The outstanding probe, while one is out.
        let mut probe_deadline: Option<Instant> = None;
        // A probe was let through since the breaker last (re)opened.
        let mut half_open = false;
        let mut trips = 0;
        for op in ops {
            match op {
                Op::Advance(ms) => now += Duration::from_millis(ms),
                Op::Ask => {
                    let gate = b.check(now);
                    match gate {
                        Gate::Pass => {
                            prop_assert!(open_since.is_none(), "passes only while closed");
                        }
                        Gate::Probe { open_since: s } => {
                            prop_assert_eq!(Some(s), open_since);
                            prop_assert!(open_until.is_some_and(|u| now >= u), "no probe during the cooldown");
                            prop_assert!(probe_deadline.is_none_or(|d| now >= d), "one probe at a time");
                            probe_deadline = Some(now + PROBE_TIMEOUT);
                            half_open = true;
                        }
                        Gate::Blocked { until, open_since: s } => {
                            prop_assert_eq!(Some(s), open_since);
                            prop_assert!(until > now);
                            let expected = match probe_deadline {
                                Some(d) if half_open => d,
                                _ => open_until.unwrap(),
                            };
                            prop_assert_eq!(until, expected, "waits end exactly when the breaker would let a call through");
                        }
                    }
                    b.on_permit(now);
                }
                Op::Record(class) => {
                    let transition = b.record(class, now);
                    match transition {
                        Some(Transition::Opened) => {
                            prop_assert_eq!(class, OutcomeClass::Transient);
                            prop_assert!(open_since.is_none());
                            prop_assert_eq!(streak + 1, THRESHOLD, "opens on exactly the threshold-th consecutive transient failure");
                            open_since = Some(now);
                            open_until = Some(now + COOLDOWN);
                            probe_deadline = None;
                            half_open = false;
                            trips += 1;
                            streak = 0;
                        }
                        Some(Transition::Reopened) => {
                            prop_assert_eq!(class, OutcomeClass::Transient);
                            prop_assert!(half_open, "only a half-open breaker re-opens");
                            open_until = Some(now + COOLDOWN);
                            probe_deadline = None;
                            half_open = false;
                        }
                        Some(Transition::Closed) => {
                            prop_assert_eq!(class, OutcomeClass::Success);
                            prop_assert!(half_open, "only a half-open breaker closes");
                            open_since = None;
                            open_until = None;
                            probe_deadline = None;
                            half_open = false;
                            streak = 0;
                        }
                        None => {
                            if open_since.is_none() {
                                match class {
                                    OutcomeClass::Success => streak = 0,
                                    OutcomeClass::Transient => streak += 1,
                                    // Rate limited, quota exhausted and
                                    // permanent never count and never reset.
                                    OutcomeClass::RateLimited
                                    | OutcomeClass::QuotaExhausted
                                    | OutcomeClass::Permanent => {}
                                }
                                prop_assert!(streak < THRESHOLD);
                            } else if half_open {
                                // An outcome that decides nothing frees the probe.
                                prop_assert!(matches!(class, OutcomeClass::RateLimited | OutcomeClass::QuotaExhausted | OutcomeClass::Permanent));
                                probe_deadline = None;
                            }
                            // Open without a probe let through: outcomes of
                            // calls sent before the trip change nothing.
                        }
                    }
                }
            }
            prop_assert_eq!(b.open_since(), open_since);
            prop_assert_eq!(b.trips(), trips);
            prop_assert_eq!(b.failures(), if open_since.is_none() { streak } else { 0 });
            let state = b.state(now);
            match open_until {
                None => prop_assert_eq!(state, BreakerState::Closed),
                Some(u) if now < u => prop_assert_eq!(state, BreakerState::Open),
                Some(_) => prop_assert_eq!(state, BreakerState::HalfOpen),
            }
        }
    }
}

#[test]
fn a_threshold_of_one_opens_on_the_first_transient_failure() {
    let t0 = Instant::now();
    let mut b = Breaker::new(1, COOLDOWN, PROBE_TIMEOUT);
    assert_eq!(b.record(OutcomeClass::RateLimited, t0), None);
    assert_eq!(b.record(OutcomeClass::Permanent, t0), None);
    assert_eq!(
        b.record(OutcomeClass::Transient, t0),
        Some(Transition::Opened)
    );
}
