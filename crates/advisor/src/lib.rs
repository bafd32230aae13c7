//! # runnel-advisor
//!
//! Decides, without ever blocking, whether a call for a given rate-limit key
//! may start now — and learns each provider's real limit from what the
//! provider says. It implements the `Advisor` port of `runnel-core`
//! (DESIGN §5, §6):
//!
//! - one [`TokenBucket`] per key (`provider|scope`), created on first use and
//!   shared by every experiment using the key, with a small burst (about one
//!   second) so an idle key never releases a wall of requests;
//! - starting rates per provider kind ([`KindDefault`]), and explicit `rpm` /
//!   `tpm` limits per provider entry ([`ProviderLimits`]) that no 60-second
//!   window ever exceeds;
//! - learning ([`RateController`], one per paced dimension — requests, and
//!   tokens once they matter): the provider's headers, in any dialect, are
//!   evidence — [`Refill`] derives the refill rate the rate jumps up to, and
//!   `remaining` running low pulls it back — otherwise slow start, a
//!   multiplicative decrease on 429 (once per window) and growth back
//!   towards the last good rate; `retry-after` and "remaining = 0" pause the
//!   key; a 429 whose body names the token limit lowers the token rate;
//! - a [`Breaker`] per key: closed → open after `threshold` consecutive
//!   transient failures, one probe after the cooldown, and `open_since` so the
//!   engine can give up on an experiment;
//! - quota exhaustion is not a rate limit: a key whose quota, credit or spend
//!   cap is used up keeps its learned rate and its breaker, and waits
//!   ([`WaitReason::Quota`](runnel_core::WaitReason::Quota)) until the time the
//!   provider stated or `quota_probe_interval`, then one probe call checks;
//! - [`AdvisorSnapshot`] to persist what was learned, and [`KeyMetrics`] for
//!   the server to export.
//!
//! `try_acquire` answers [`Acquire::Permit`](runnel_core::Acquire::Permit) or
//! `Wait { until, reason }`, where `until` is the exact earliest instant at
//! which asking again can succeed, so the caller can sleep until then instead
//! of polling.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use runnel_advisor::{Advisor, AdvisorConfig, ProviderLimits};
//! use runnel_core::{Acquire, Advisor as _, Observation, OutcomeClass, RateKey};
//!
//! let mut config = AdvisorConfig::default();
//! config.providers.insert(
//!     "openai".into(),
//!     ProviderLimits { rpm: Some(120), ..ProviderLimits::default() },
//! );
//! let advisor = Advisor::new(config)?;
//! let key = RateKey::new("openai", "gpt-4o-mini");
//! let now = Instant::now();
//! // 120 RPM with a one-second burst: two calls at once, then a wait.
//! assert_eq!(advisor.try_acquire(&key, None, now), Acquire::Permit);
//! assert_eq!(advisor.try_acquire(&key, None, now), Acquire::Permit);
//! let Acquire::Wait { until, .. } = advisor.try_acquire(&key, None, now) else { panic!() };
//! assert!(until > now && until <= now + Duration::from_secs(1));
//! advisor.record(&key, &Observation::of(OutcomeClass::Success), now);
//! # Ok::<(), runnel_advisor::AdvisorError>(())
//! ```
//!
//! **Architecture invariant:** this crate depends on `runnel-core` (for the
//! port and shared types), serde, thiserror and tracing only. It does no I/O, reads no
//! clock (every time-dependent call takes `now`), never sleeps, and knows
//! nothing of HTTP, databases or metric exporters — the provider adapter
//! parses headers into `RateLimitHeaders`, the store persists snapshots, the
//! server exports metrics. It must not depend on `runnel-store`,
//! `runnel-providers` or `runnel-server`.

mod advisor;
pub mod breaker;
pub mod bucket;
pub mod config;
mod error;
mod key;
pub mod learn;
mod quota;
pub mod share;

pub use advisor::{Advisor, AdvisorSnapshot};
pub use breaker::{Breaker, BreakerSnapshot, BreakerState, Gate, Transition};
pub use bucket::TokenBucket;
pub use config::{AdvisorConfig, KindDefault, ProviderLimits, ResolvedLimits};
pub use error::AdvisorError;
pub use key::{Counters, KeyMetrics, KeySnapshot, KeyState, LearnedFrom, Recorded};
pub use learn::{Learned, Learning, RateController, Refill, Source};
pub use share::{BudgetConfig, BudgetMode, BudgetSync, KeyBudget};
