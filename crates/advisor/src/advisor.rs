//! [`Advisor`]: one [`KeyState`] per rate-limit key behind a lock, created
//! on first use, implementing the `runnel_core::Advisor` port.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use runnel_core::{Acquire, Observation, RateKey};
use serde::{Deserialize, Serialize};

use crate::breaker::Transition;
use crate::config::AdvisorConfig;
use crate::error::AdvisorError;
use crate::key::{KeyMetrics, KeySnapshot, KeyState};
use crate::learn::Learned;

/// Rate limits and circuit breakers per rate-limit key (DESIGN §5, §6).
///
/// Thread-safe and non-blocking in the sense the engine needs: every call
/// holds a lock for a few hundred nanoseconds of arithmetic, never awaits,
/// never sleeps and never reads a clock (`now` is always a parameter).
#[derive(Debug)]
pub struct Advisor {
    config: AdvisorConfig,
    keys: RwLock<HashMap<RateKey, Mutex<KeyState>>>,
    /// The share a new key starts with (`f64` bits): 1 / the live replicas
    /// last seen by the shared budget ([`crate::share`]), 1 without one.
    default_share: AtomicU64,
}

impl Advisor {
    /// An advisor with `config`, which is validated first.
    pub fn new(config: AdvisorConfig) -> Result<Self, AdvisorError> {
        config.validate()?;
        Ok(Self {
            config,
            keys: RwLock::new(HashMap::new()),
            default_share: AtomicU64::new(1.0_f64.to_bits()),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AdvisorConfig {
        &self.config
    }

    /// Runs `f` on the state of `key`, creating it (as of `now`) on first use.
    fn with_key<T>(&self, key: &RateKey, now: Instant, f: impl FnOnce(&mut KeyState) -> T) -> T {
        {
            let map = self.keys.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(state) = map.get(key) {
                return f(&mut lock(state));
            }
        }
        let mut map = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        let state = map.entry(key.clone()).or_insert_with(|| {
            let limits = self.config.resolve(key.provider());
            let mut state = KeyState::new(&self.config, limits, now);
            let share = f64::from_bits(self.default_share.load(Ordering::Relaxed));
            state.set_share(share, now);
            Mutex::new(state)
        });
        f(state.get_mut().unwrap_or_else(PoisonError::into_inner))
    }

    /// Per-key figures as of `now`, ordered by key text.
    pub fn metrics(&self, now: Instant) -> BTreeMap<String, KeyMetrics> {
        let map = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        map.iter()
            .map(|(k, s)| (k.as_str().to_owned(), lock(s).metrics(now)))
            .collect()
    }

    /// The figures of one key, if it has been used.
    pub fn key_metrics(&self, key: &RateKey, now: Instant) -> Option<KeyMetrics> {
        let map = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        map.get(key).map(|s| lock(s).metrics(now))
    }

    /// What the request-rate learning of `key` knows, if the key has been
    /// used and is limited: its current rate, last good rate, the rate of
    /// the last 429 and where the estimate came from. For a caller that
    /// shares a key's rate across processes — each replica reports this into
    /// a shared budget and gets a share back through
    /// [`adopt_rate`](Self::adopt_rate).
    pub fn learned_rate(&self, key: &RateKey) -> Option<Learned> {
        let map = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        map.get(key).and_then(|s| lock(s).learned_rate())
    }

    /// Sets the request rate of `key` to `rps` as of `now` (creating the
    /// key if needed), within `min_rps` and any explicit `rpm`. Learning goes
    /// on from there: replies with headroom raise it, 429s lower it, so a
    /// caller that keeps a budget adopts periodically and reads
    /// [`learned_rate`](Self::learned_rate) back in between.
    pub fn adopt_rate(&self, key: &RateKey, rps: f64, now: Instant) {
        self.with_key(key, now, |s| s.adopt_rate(rps, now));
    }

    /// The learned state of every key as of `now`, for persistence.
    pub fn snapshot(&self, now: Instant) -> AdvisorSnapshot {
        let map = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        AdvisorSnapshot {
            keys: map
                .iter()
                .map(|(k, s)| (k.as_str().to_owned(), lock(s).snapshot(now)))
                .collect(),
        }
    }

    /// Restores learned state as of `now`, so a restart starts warm. Every
    /// entry is checked first; if one is unusable nothing is restored and the
    /// error names it. Limits of the current configuration still apply.
    pub fn restore(&self, snapshot: &AdvisorSnapshot, now: Instant) -> Result<(), AdvisorError> {
        for (key, snap) in &snapshot.keys {
            snap.validate(key)?;
        }
        for (key, snap) in &snapshot.keys {
            self.with_key(&RateKey::from_raw(key.as_str()), now, |s| {
                s.restore(snap, now);
            });
        }
        Ok(())
    }
}

impl Advisor {
    /// The share of its rate a key not used yet starts with.
    pub fn set_default_share(&self, share: f64) {
        self.default_share.store(
            share.clamp(f64::MIN_POSITIVE, 1.0).to_bits(),
            Ordering::Relaxed,
        );
    }

    /// Runs `key`'s buckets at `share` of its rate (see [`crate::share`]).
    pub fn set_share(&self, key: &RateKey, share: f64, now: Instant) {
        self.with_key(key, now, |s| s.set_share(share, now));
    }

    /// The share of `key`, if it has been used.
    pub fn share(&self, key: &RateKey) -> Option<f64> {
        let map = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        map.get(key).map(|s| lock(s).share())
    }

    /// Takes the shared budget's view of `key` (learned state, token rate,
    /// pause) and its `share`; returns the key's state afterwards.
    pub fn adopt(
        &self,
        key: &RateKey,
        learned: Option<&Learned>,
        token_rate: Option<f64>,
        paused_for: Duration,
        share: f64,
        now: Instant,
    ) -> KeySnapshot {
        self.with_key(key, now, |s| {
            s.adopt(learned, token_rate, paused_for, now);
            s.set_share(share, now);
            s.snapshot(now)
        })
    }
}

/// Locks one key. A poisoned lock is taken over: the state is plain numbers
/// that every method leaves consistent, and no method panics.
fn lock(state: &Mutex<KeyState>) -> MutexGuard<'_, KeyState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl runnel_core::Advisor for Advisor {
    fn try_acquire(&self, key: &RateKey, tokens: Option<u64>, now: Instant) -> Acquire {
        self.with_key(key, now, |s| s.try_acquire(tokens, now))
    }

    fn record(&self, key: &RateKey, observation: &Observation, now: Instant) {
        let effect = self.with_key(key, now, |s| s.record(observation, now));
        match effect.breaker {
            Some(Transition::Opened) => {
                tracing::warn!(key = %key, "circuit breaker opened after consecutive transient failures");
            }
            Some(Transition::Reopened) => {
                tracing::warn!(key = %key, "circuit breaker probe failed; open again");
            }
            Some(Transition::Closed) => {
                tracing::info!(key = %key, "circuit breaker probe succeeded; closed");
            }
            None => {}
        }
        if let Some(rate) = effect.decreased_to {
            tracing::debug!(key = %key, rate_rps = rate, "rate limited; request rate decreased");
        }
    }
}

/// The learned state of every key, keyed by key text (`provider|scope`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdvisorSnapshot {
    /// One entry per key.
    pub keys: BTreeMap<String, KeySnapshot>,
}
