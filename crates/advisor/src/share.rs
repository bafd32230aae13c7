//! One rate budget per key across all replicas (DESIGN §6), the sans-I/O
//! part: what a replica reports to the shared row, how the row merges
//! reports, how a replica's share of the key's rate follows from demand, and
//! what a replica does while the database does not answer.
//!
//! The row of a key holds the *whole* key's learned rate (every replica's
//! controller learns in whole-key rates); each replica's buckets run at
//! `rate × share`, where
//!
//! ```text
//! share = floor + (1 − members · floor) · my demand / total demand
//! floor = min(min_share, 1 / members)
//! ```
//!
//! over the live members (a report younger than the lease), so the shares of
//! one consistent view add up to exactly 1 and a replica with no ready job
//! still gets `floor` to start with. With no demand anywhere every member gets
//! `1 / members`.
//!
//! Merging ([`merge`], implemented in SQL by the store): a replica proposes
//! only what it learned since it last read the row. A proposal made on the
//! current version applies, up or down; a decrease (a 429, a lower header)
//! applies whatever the version, if it is below the row; a stale increase is
//! dropped and the replica takes the row instead. So a 429 seen by one
//! replica lowers the rate for all, and a rise learned by one is used by all,
//! one replica's rise per version.
//!
//! [`BudgetSync`] keeps one replica's side: the versions read, what was
//! adopted, the shares, and the fallback while syncs fail.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use runnel_core::config::duration;
use runnel_core::{BudgetReport, BudgetView, RateKey, SharedRate};
use serde::{Deserialize, Serialize};

use crate::error::AdvisorError;
use crate::key::{KeySnapshot, LearnedFrom};
use crate::learn::Learned;
use crate::{Advisor, AdvisorSnapshot};

/// The key under which every replica reports its presence (demand 0, no
/// rate) each sync, so the number of live replicas is known before any key
/// is used and a new key starts at `1 / replicas` instead of the whole rate.
/// A real key always contains `|`, so it cannot collide.
pub const PRESENCE_KEY: &str = "*";

/// Settings of the shared budget (`[budget]` in `runnel.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BudgetConfig {
    /// How often a replica syncs with the shared rows (one transaction for
    /// all its keys): at most 1 s, so shares follow demand within a second.
    /// Default 500 ms.
    #[serde(with = "duration")]
    pub sync_interval: Duration,
    /// A member whose last sync is older than this (database clock) no
    /// longer counts: a dead or frozen replica's share returns to the others
    /// after it. Default 5 s.
    #[serde(with = "duration")]
    pub lease: Duration,
    /// The smallest share a live member gets (before dividing by members),
    /// so a replica with no ready job can still start one. Default 0.02.
    pub min_share: f64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            sync_interval: Duration::from_millis(500),
            lease: Duration::from_secs(5),
            min_share: 0.02,
        }
    }
}

impl BudgetConfig {
    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), AdvisorError> {
        let bad = |key: &str, message: &str| {
            Err(AdvisorError::Config {
                key: format!("budget.{key}"),
                message: message.to_owned(),
            })
        };
        if self.sync_interval.is_zero() || self.sync_interval > Duration::from_secs(1) {
            return bad("sync_interval", "must be more than 0 and at most 1 s");
        }
        if self.lease < self.sync_interval * 2 {
            return bad("lease", "must be at least twice budget.sync_interval");
        }
        if !(0.0..=1.0).contains(&self.min_share) {
            return bad("min_share", "must be between 0 and 1");
        }
        Ok(())
    }
}

/// This replica's share of a key's rate: `my` of `total` demand over
/// `members` live members (see the module documentation).
pub fn share_of(my: u64, total: u64, members: u32, min_share: f64) -> f64 {
    let n = f64::from(members.max(1));
    let even = 1.0 / n;
    if total == 0 {
        return even;
    }
    let floor = min_share.clamp(0.0, 1.0).min(even);
    let part = my.min(total) as f64 / total as f64;
    floor + (1.0 - n * floor) * part
}

/// The share to use while syncs fail, `since_ok` after the last good one:
/// at most an even split among the members last seen (so if every replica
/// loses the database at once the shares still add up to 1), and one that
/// was below it climbs towards it with the lease as time constant (the
/// others stop counting this replica's demand after the lease).
pub fn fallback_share(last: f64, members: u32, since_ok: Duration, lease: Duration) -> f64 {
    let even = 1.0 / f64::from(members.max(1));
    if last >= even {
        return even;
    }
    let t = since_ok.as_secs_f64() / lease.as_secs_f64().max(1e-3);
    last + (even - last) * (1.0 - (-t).exp())
}

/// The merge rule of a key's row (the store implements it in SQL; this is
/// its specification, used by tests). `row` is `(version, rate)`; returns
/// the row after `report`, or `None` if the report changes nothing.
pub fn merge(row: Option<(i64, &SharedRate)>, report: &BudgetReport) -> Option<(i64, SharedRate)> {
    let proposal = report.proposal.as_ref()?;
    let Some((version, current)) = row else {
        return Some((1, proposal.clone()));
    };
    let on_current = report.based_on == version;
    let take_rate = on_current || (report.decreased && proposal.rate_rps < current.rate_rps);
    let take_tokens = proposal.token_rate_tps.is_some()
        && (on_current
            || current.token_rate_tps.is_none()
            || proposal.token_rate_tps < current.token_rate_tps);
    if !take_rate && !take_tokens {
        return None;
    }
    let mut next = if take_rate {
        proposal.clone()
    } else {
        current.clone()
    };
    next.token_rate_tps = if take_tokens {
        proposal.token_rate_tps
    } else {
        current.token_rate_tps
    };
    Some((version + 1, next))
}

/// The persisted name of a learning source.
pub fn learned_from_str(from: LearnedFrom) -> &'static str {
    match from {
        LearnedFrom::Nothing => "nothing",
        LearnedFrom::Estimated => "estimated",
        LearnedFrom::Confirmed => "confirmed",
        LearnedFrom::Headers => "headers",
    }
}

/// A learning source from its persisted name (unknown: nothing learned).
pub fn learned_from_name(name: &str) -> LearnedFrom {
    match name {
        "estimated" => LearnedFrom::Estimated,
        "confirmed" => LearnedFrom::Confirmed,
        "headers" => LearnedFrom::Headers,
        _ => LearnedFrom::Nothing,
    }
}

/// What a replica's snapshot of a key says, in the row's form.
fn shared_rate(snap: &KeySnapshot) -> Option<SharedRate> {
    let rate = snap.rate_rps?;
    Some(SharedRate {
        rate_rps: rate,
        good_rps: snap.last_good_rps.unwrap_or(rate),
        last_429_rps: snap.last_429_rps,
        learned_from: learned_from_str(snap.learned_from).to_owned(),
        token_rate_tps: snap.token_rate_tps,
    })
}

/// Whether the shared budget is in use or a replica falls back on its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetMode {
    /// No sync has answered yet.
    #[default]
    Starting,
    /// The last sync answered.
    Shared,
    /// Syncs fail: conservative local shares ([`fallback_share`]).
    Fallback,
}

/// One key as this replica last saw it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KeyBudget {
    /// The row version read last.
    pub version: i64,
    /// The whole key's request rate in the row, per second.
    pub cluster_rps: Option<f64>,
    /// This replica's share of it.
    pub share: f64,
    /// Live members last seen.
    pub members: u32,
    /// Total demand of the live members last seen.
    pub total_demand: u64,
    /// This replica's demand last reported.
    pub demand: u64,
    /// The learned state as adopted (compared with the next snapshot to see
    /// whether anything was learned locally).
    #[serde(skip)]
    adopted: Option<SharedRate>,
    /// This replica's successes per second on the key, averaged.
    #[serde(skip)]
    goodput: Goodput,
}

/// Successes per second of this replica on one key, an exponential average
/// over the syncs (from the advisor's success counter).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Goodput {
    last: Option<(Instant, u64)>,
    rate: Option<f64>,
    /// The average before the last sample: a 429 found at a sync fell in
    /// the last interval, whose successes the cut already thinned.
    before: Option<f64>,
}

impl Goodput {
    /// Adds a reading; `tau` is the averaging time, the controller's own
    /// (`advisor.goodput_window`).
    fn sample(&mut self, now: Instant, successes: u64, tau: f64) {
        if let Some((t, n)) = self.last {
            let dt = now.saturating_duration_since(t).as_secs_f64();
            if dt > 0.0 {
                let r = successes.saturating_sub(n) as f64 / dt;
                let w = 1.0 - (-dt / tau.max(1.0e-3)).exp();
                self.before = self.rate;
                self.rate = Some(self.rate.map_or(r, |old| old + w * (r - old)));
            }
        }
        self.last = Some((now, successes));
    }
}

/// A decrease learned here, with the last good rate re-estimated from the
/// whole key's goodput. The controller measured only this replica's
/// successes, about `share` of the key's, so its estimate sits at its
/// floor (`decrease_factor` of the rate that drew the 429) and the key would
/// crawl back; `goodput / share` is what the key carried.
/// `margin` is the controller's (`advisor.margin`): the last good rate sits
/// that fraction below the goodput measured at a 429.
fn cluster_good(
    local: &mut SharedRate,
    goodput: Option<f64>,
    share: f64,
    decrease_factor: f64,
    margin: f64,
) {
    let (Some(bad), Some(g)) = (local.last_429_rps, goodput) else {
        return;
    };
    if share >= 1.0 || local.learned_from == "headers" || share <= 0.0 {
        return;
    }
    let good = (g / share).clamp(bad * decrease_factor, bad) * (1.0 - margin);
    if good > local.good_rps {
        local.good_rps = good;
    }
}

/// One replica's side of the shared budget, without I/O: build the reports,
/// apply the views, fall back when a sync fails.
#[derive(Clone, Debug)]
pub struct BudgetSync {
    config: BudgetConfig,
    keys: BTreeMap<RateKey, KeyBudget>,
    mode: BudgetMode,
    last_ok: Option<Instant>,
    replicas: u32,
    failures: u64,
}

impl BudgetSync {
    /// A fresh sync state.
    pub fn new(config: BudgetConfig) -> Self {
        Self {
            config,
            keys: BTreeMap::new(),
            mode: BudgetMode::Starting,
            last_ok: None,
            replicas: 1,
            failures: 0,
        }
    }

    /// The settings.
    pub fn config(&self) -> &BudgetConfig {
        &self.config
    }

    /// The reports of one sync as of `now`: every key the advisor has a
    /// rate for or the scheduler has demand for, plus presence.
    pub fn reports(
        &mut self,
        advisor: &Advisor,
        demand: &HashMap<RateKey, u64>,
        now: Instant,
    ) -> Vec<BudgetReport> {
        let snapshot: AdvisorSnapshot = advisor.snapshot(now);
        let metrics = advisor.metrics(now);
        let decrease_factor = advisor.config().decrease_factor;
        let margin = advisor.config().margin;
        let tau = advisor.config().goodput_window.as_secs_f64();
        let mut reports = BTreeMap::new();
        for (key, snap) in &snapshot.keys {
            let Some(mut local) = shared_rate(snap) else {
                continue; // Unlimited: nothing to share.
            };
            let key = RateKey::from_raw(key.as_str());
            let known = self.keys.get_mut(&key);
            let goodput = known.map(|k| {
                if let Some(m) = metrics.get(key.as_str()) {
                    k.goodput.sample(now, m.counters.successes, tau);
                }
                let g = match (k.goodput.before, k.goodput.rate) {
                    (Some(b), Some(r)) => Some(b.max(r)),
                    (b, r) => r.or(b),
                };
                (g, k.share)
            });
            let known = self.keys.get(&key);
            let adopted = known.and_then(|k| k.adopted.as_ref());
            let (proposal, decreased) = match adopted {
                Some(a) if *a == local => (None, false),
                Some(a) => {
                    let lower = local.rate_rps < a.rate_rps
                        || matches!((local.token_rate_tps, a.token_rate_tps), (Some(l), Some(a)) if l < a);
                    if local.rate_rps < a.rate_rps
                        && let Some((g, share)) = goodput
                    {
                        cluster_good(&mut local, g, share, decrease_factor, margin);
                    }
                    (Some(local), lower)
                }
                None => (Some(local), false),
            };
            reports.insert(
                key.clone(),
                BudgetReport {
                    demand: demand.get(&key).copied().unwrap_or(0),
                    based_on: known.map_or(0, |k| k.version),
                    key,
                    proposal,
                    decreased,
                    paused_ms: snap.paused_for_ms,
                },
            );
        }
        for (key, &d) in demand {
            reports.entry(key.clone()).or_insert_with(|| BudgetReport {
                key: key.clone(),
                demand: d,
                based_on: self.keys.get(key).map_or(0, |k| k.version),
                proposal: None,
                decreased: false,
                paused_ms: 0,
            });
        }
        let presence = RateKey::from_raw(PRESENCE_KEY);
        reports.insert(
            presence.clone(),
            BudgetReport {
                key: presence,
                demand: 0,
                based_on: 0,
                proposal: None,
                decreased: false,
                paused_ms: 0,
            },
        );
        reports.into_values().collect()
    }

    /// A sync answered: every key takes the row's learned state and its
    /// share. `reports` are the ones sent (for this replica's demand).
    pub fn apply(
        &mut self,
        advisor: &Advisor,
        reports: &[BudgetReport],
        views: &[BudgetView],
        now: Instant,
    ) {
        self.mode = BudgetMode::Shared;
        self.last_ok = Some(now);
        let demand: HashMap<&RateKey, u64> = reports.iter().map(|r| (&r.key, r.demand)).collect();
        for view in views {
            if view.key.as_str() == PRESENCE_KEY {
                self.replicas = view.members.max(1);
                advisor.set_default_share(1.0 / f64::from(self.replicas));
                continue;
            }
            let my = demand.get(&view.key).copied().unwrap_or(0);
            let share = share_of(my, view.total_demand, view.members, self.config.min_share);
            let learned = view.rate.as_ref().map(|r| Learned {
                rate: r.rate_rps,
                good: r.good_rps,
                last_429: r.last_429_rps,
                source: learned_from_name(&r.learned_from).into(),
            });
            let token_rate = view.rate.as_ref().and_then(|r| r.token_rate_tps);
            let paused = Duration::from_millis(view.paused_ms);
            let after = advisor.adopt(&view.key, learned.as_ref(), token_rate, paused, share, now);
            let goodput = self
                .keys
                .get(&view.key)
                .map_or_else(Goodput::default, |k| k.goodput);
            self.keys.insert(
                view.key.clone(),
                KeyBudget {
                    version: view.version,
                    cluster_rps: view.rate.as_ref().map(|r| r.rate_rps),
                    share,
                    members: view.members,
                    total_demand: view.total_demand,
                    demand: my,
                    adopted: shared_rate(&after),
                    goodput,
                },
            );
        }
    }

    /// A sync failed: every key falls back to a conservative share.
    pub fn failed(&mut self, advisor: &Advisor, now: Instant) {
        self.failures += 1;
        if self.mode == BudgetMode::Starting {
            // Never synced: keep the default (the whole rate on one process,
            // which is what it would have without a shared budget).
            return;
        }
        self.mode = BudgetMode::Fallback;
        let since = self
            .last_ok
            .map_or(Duration::MAX, |t| now.saturating_duration_since(t));
        for (key, k) in &mut self.keys {
            k.share = fallback_share(k.share, k.members, since, self.config.lease);
            advisor.set_share(key, k.share, now);
        }
    }

    /// The current mode.
    pub fn mode(&self) -> BudgetMode {
        self.mode
    }

    /// Syncs that failed so far.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// Live replicas seen at the last sync.
    pub fn replicas(&self) -> u32 {
        self.replicas
    }

    /// When the last sync answered.
    pub fn last_ok(&self) -> Option<Instant> {
        self.last_ok
    }

    /// Every key as last seen.
    pub fn keys(&self) -> &BTreeMap<RateKey, KeyBudget> {
        &self.keys
    }
}

#[cfg(test)]
mod tests;
