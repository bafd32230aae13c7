//! Tests of the shared budget: properties of the pure functions, and a
//! simulated cluster of replicas around an in-memory model of the store's
//! rows (merge rule, member leases on a manual clock).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use runnel_core::{
    Acquire, Advisor as _, BudgetReport, BudgetView, Observation, OutcomeClass, RateKey, SharedRate,
};

use super::*;
use crate::{AdvisorConfig, ProviderLimits};

fn rate(r: f64) -> SharedRate {
    SharedRate {
        rate_rps: r,
        good_rps: r,
        last_429_rps: None,
        learned_from: "estimated".into(),
        token_rate_tps: None,
    }
}

fn report(based_on: i64, proposal: Option<f64>, decreased: bool) -> BudgetReport {
    BudgetReport {
        key: RateKey::new("p", "m"),
        demand: 1,
        based_on,
        proposal: proposal.map(rate),
        decreased,
        paused_ms: 0,
    }
}

proptest! {
    #[test]
    fn shares_add_up_to_at_most_one_and_follow_demand(
        demands in prop::collection::vec(0u64..1000, 1..12),
        min_share in 0.0f64..0.2,
    ) {
        let total: u64 = demands.iter().sum();
        let n = u32::try_from(demands.len()).unwrap();
        let shares: Vec<f64> = demands.iter().map(|&d| share_of(d, total, n, min_share)).collect();
        let sum: f64 = shares.iter().sum();
        prop_assert!(sum <= 1.0 + 1e-9, "sum {sum}");
        for (&d, &s) in demands.iter().zip(&shares) {
            prop_assert!(s > 0.0 || min_share == 0.0 && d == 0);
            let ideal = if total == 0 { 1.0 / f64::from(n) } else { d as f64 / total as f64 };
            // Off by at most the floors the other members get.
            let floor = min_share.min(1.0 / f64::from(n));
            prop_assert!((s - ideal).abs() <= f64::from(n) * floor + 1e-9, "share {s} ideal {ideal}");
        }
    }

    #[test]
    fn a_fallback_share_never_exceeds_an_even_split(
        last in 0.0f64..=1.0,
        members in 1u32..10,
        since_ms in 0u64..100_000,
    ) {
        let even = 1.0 / f64::from(members);
        let lease = Duration::from_secs(5);
        let s = fallback_share(last, members, Duration::from_millis(since_ms), lease);
        prop_assert!(s <= even + 1e-12);
        prop_assert!(s >= last.min(even) - 1e-12);
    }

    #[test]
    fn merge_applies_decreases_always_and_increases_only_on_the_current_version(
        version in 0i64..5,
        based_on in 0i64..5,
        row_rate in 1.0f64..100.0,
        proposed in 1.0f64..100.0,
        decreased: bool,
    ) {
        let current = rate(row_rate);
        let r = report(based_on, Some(proposed), decreased);
        let merged = merge(Some((version, &current)), &r);
        if based_on == version {
            let (v, row) = merged.unwrap();
            prop_assert_eq!(v, version + 1);
            prop_assert_eq!(row.rate_rps, proposed);
        } else if decreased && proposed < row_rate {
            prop_assert_eq!(merged.unwrap().1.rate_rps, proposed);
        } else {
            prop_assert!(merged.is_none(), "a stale proposal changed the row");
        }
    }
}

#[test]
fn a_replica_with_nothing_new_changes_nothing() {
    assert_eq!(merge(Some((3, &rate(10.0))), &report(3, None, false)), None);
    assert_eq!(
        merge(None, &report(0, Some(5.0), false)),
        Some((1, rate(5.0)))
    );
}

#[test]
fn config_is_validated_naming_the_key() {
    BudgetConfig::default().validate().unwrap();
    let c = BudgetConfig {
        sync_interval: Duration::from_secs(2),
        ..BudgetConfig::default()
    };
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("budget.sync_interval")
    );
    let c = BudgetConfig {
        lease: Duration::from_millis(600),
        ..BudgetConfig::default()
    };
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("budget.lease")
    );
    let c = BudgetConfig {
        min_share: 1.5,
        ..BudgetConfig::default()
    };
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("budget.min_share")
    );
}

/// The store's rows, in memory: one row per key merged with [`merge`], and
/// members with the time of their last report, live for `lease`.
#[derive(Default)]
struct Rows {
    rows: BTreeMap<RateKey, (i64, SharedRate)>,
    paused_until: BTreeMap<RateKey, Instant>,
    members: BTreeMap<(RateKey, usize), (u64, Instant)>,
}

impl Rows {
    fn sync(
        &mut self,
        replica: usize,
        lease: Duration,
        reports: &[BudgetReport],
        now: Instant,
    ) -> Vec<BudgetView> {
        let mut views = Vec::new();
        for r in reports {
            self.members
                .insert((r.key.clone(), replica), (r.demand, now));
            let row = self.rows.get(&r.key).map(|(v, s)| (*v, s));
            if let Some(next) = merge(row, r) {
                self.rows.insert(r.key.clone(), next);
            }
            if r.paused_ms > 0 {
                let until = now + Duration::from_millis(r.paused_ms);
                let p = self.paused_until.entry(r.key.clone()).or_insert(until);
                *p = (*p).max(until);
            }
            let live: Vec<u64> = self
                .members
                .iter()
                .filter(|((k, _), (_, seen))| *k == r.key && now.duration_since(*seen) < lease)
                .map(|(_, (d, _))| *d)
                .collect();
            let row = self.rows.get(&r.key);
            views.push(BudgetView {
                key: r.key.clone(),
                version: row.map_or(0, |(v, _)| *v),
                rate: row.map(|(_, s)| s.clone()),
                paused_ms: self.paused_until.get(&r.key).map_or(0, |p| {
                    u64::try_from(p.saturating_duration_since(now).as_millis()).unwrap()
                }),
                total_demand: live.iter().sum(),
                members: u32::try_from(live.len()).unwrap(),
            });
        }
        views
    }
}

struct Replica {
    advisor: Advisor,
    sync: BudgetSync,
    demand: u64,
    alive: bool,
}

fn key() -> RateKey {
    RateKey::new("sim", "m")
}

fn replica(rpm: Option<u64>, demand: u64) -> Replica {
    let mut config = AdvisorConfig::default();
    config.providers.insert(
        "sim".into(),
        ProviderLimits {
            rpm,
            initial_rps: Some(30.0),
            ..ProviderLimits::default()
        },
    );
    Replica {
        advisor: Advisor::new(config).unwrap(),
        sync: BudgetSync::new(BudgetConfig::default()),
        demand,
        alive: true,
    }
}

fn tick(rows: &mut Rows, replicas: &mut [Replica], now: Instant) {
    for (i, r) in replicas.iter_mut().enumerate().filter(|(_, r)| r.alive) {
        let demand = HashMap::from([(key(), r.demand)]);
        let reports = r.sync.reports(&r.advisor, &demand, now);
        let views = rows.sync(i, r.sync.config().lease, &reports, now);
        r.sync.apply(&r.advisor, &reports, &views, now);
    }
}

/// Runs `secs` seconds in 1 ms steps: every replica takes every permit it
/// gets; syncs every `sync_interval`. Returns the permits per replica.
fn run(rows: &mut Rows, replicas: &mut [Replica], t0: &mut Instant, secs: u64) -> Vec<u64> {
    let mut permits = vec![0; replicas.len()];
    let interval = BudgetConfig::default().sync_interval;
    let steps = secs * 1000;
    for step in 0..steps {
        let now = *t0 + Duration::from_millis(step);
        if step % u64::try_from(interval.as_millis()).unwrap() == 0 {
            tick(rows, replicas, now);
        }
        for (i, r) in replicas.iter().enumerate().filter(|(_, r)| r.alive) {
            while r.advisor.try_acquire(&key(), None, now) == Acquire::Permit {
                permits[i] += 1;
                r.advisor
                    .record(&key(), &Observation::of(OutcomeClass::Success), now);
            }
        }
    }
    *t0 += Duration::from_secs(secs);
    permits
}

#[test]
fn replicas_share_an_explicit_limit_in_proportion_to_demand() {
    let mut rows = Rows::default();
    let mut replicas = vec![
        replica(Some(1800), 100),
        replica(Some(1800), 200),
        replica(Some(1800), 300),
    ];
    let mut t = Instant::now();
    run(&mut rows, &mut replicas, &mut t, 3);
    let permits = run(&mut rows, &mut replicas, &mut t, 20);
    let total: u64 = permits.iter().sum();
    // 30 per second in all (the limit, less a rounding of the burst).
    assert!((560..=610).contains(&total), "{permits:?}");
    for (p, w) in permits.iter().zip([1.0, 2.0, 3.0]) {
        let expected = 600.0 * w / 6.0;
        assert!(
            (*p as f64 - expected).abs() <= 0.1 * expected,
            "{permits:?}"
        );
    }
}

#[test]
fn a_dead_replicas_share_returns_after_the_lease() {
    let mut rows = Rows::default();
    let mut replicas = vec![
        replica(Some(1800), 100),
        replica(Some(1800), 100),
        replica(Some(1800), 100),
    ];
    let mut t = Instant::now();
    run(&mut rows, &mut replicas, &mut t, 3);
    replicas[2].alive = false;
    let lease = BudgetConfig::default().lease;
    // Within the lease the survivors keep their thirds...
    let during = run(&mut rows, &mut replicas, &mut t, lease.as_secs() - 1);
    assert!(
        during[0] + during[1] <= 2 * 10 * (lease.as_secs() - 1) + 4,
        "{during:?}"
    );
    // ...after it (and one sync) they use the whole rate.
    run(&mut rows, &mut replicas, &mut t, 2);
    let after = run(&mut rows, &mut replicas, &mut t, 10);
    let survivors = after[0] + after[1];
    assert!(survivors >= 285, "{after:?}");
    let shares: f64 = replicas[..2]
        .iter()
        .map(|r| r.advisor.share(&key()).unwrap())
        .sum();
    assert!((shares - 1.0).abs() < 1e-9, "{shares}");
}

#[test]
fn a_429_at_one_replica_lowers_the_rate_of_all_and_a_stale_rise_is_dropped() {
    let mut rows = Rows::default();
    let mut replicas = vec![replica(None, 10), replica(None, 10)];
    let mut t = Instant::now();
    tick(&mut rows, &mut replicas, t);
    let before = replicas[1]
        .advisor
        .key_metrics(&key(), t)
        .unwrap()
        .rate_rps
        .unwrap();
    // Replica 0 sees a 429 and cuts the whole key's rate.
    assert_eq!(
        replicas[0].advisor.try_acquire(&key(), None, t),
        Acquire::Permit
    );
    replicas[0]
        .advisor
        .record(&key(), &Observation::of(OutcomeClass::RateLimited), t);
    let cut = replicas[0]
        .advisor
        .key_metrics(&key(), t)
        .unwrap()
        .rate_rps
        .unwrap();
    assert!(cut < before);
    t += Duration::from_millis(500);
    tick(&mut rows, &mut replicas, t);
    let other = replicas[1]
        .advisor
        .key_metrics(&key(), t)
        .unwrap()
        .rate_rps
        .unwrap();
    assert_eq!(other, cut, "replica 1 took the decrease");
    assert_eq!(rows.rows[&key()].1.rate_rps, cut);
}

#[test]
fn a_failing_sync_falls_back_to_at_most_an_even_split() {
    let mut rows = Rows::default();
    let mut replicas = vec![replica(Some(1800), 300), replica(Some(1800), 100)];
    let t = Instant::now();
    tick(&mut rows, &mut replicas, t);
    tick(&mut rows, &mut replicas, t + Duration::from_millis(500));
    let big = &mut replicas[0];
    assert!((big.advisor.share(&key()).unwrap() - 0.745).abs() < 0.01);
    big.sync.failed(&big.advisor, t + Duration::from_secs(1));
    assert_eq!(big.sync.mode(), BudgetMode::Fallback);
    assert_eq!(big.advisor.share(&key()), Some(0.5));
}

#[test]
fn a_new_key_starts_at_one_share_per_live_replica() {
    let mut rows = Rows::default();
    let mut replicas = [replica(Some(1800), 0), replica(Some(1800), 0)];
    let t = Instant::now();
    // Presence only: no key used yet.
    for (i, r) in replicas.iter_mut().enumerate() {
        let reports = r.sync.reports(&r.advisor, &HashMap::new(), t);
        assert_eq!(reports.len(), 1);
        let views = rows.sync(i, r.sync.config().lease, &reports, t);
        r.sync.apply(&r.advisor, &reports, &views, t);
    }
    assert_eq!(replicas[1].sync.replicas(), 2);
    replicas[1].advisor.try_acquire(&key(), None, t);
    assert_eq!(replicas[1].advisor.share(&key()), Some(0.5));
}

#[test]
fn a_429_re_estimates_the_last_good_rate_from_the_whole_keys_goodput() {
    let mut rows = Rows::default();
    let mut replicas = vec![
        replica(Some(1800), 100),
        replica(Some(1800), 100),
        replica(Some(1800), 100),
    ];
    let mut t = Instant::now();
    run(&mut rows, &mut replicas, &mut t, 10);
    let r0 = replicas[0]
        .advisor
        .key_metrics(&key(), t)
        .unwrap()
        .rate_rps
        .unwrap();
    replicas[0]
        .advisor
        .record(&key(), &Observation::of(OutcomeClass::RateLimited), t);
    // Alone, replica 0 measured a third of the key's successes: its own
    // estimate is the floor, half the rate that drew the 429.
    let local = replicas[0].advisor.key_metrics(&key(), t).unwrap();
    assert!(local.last_good_rps.unwrap() < 0.55 * r0, "{local:?}");
    t += Duration::from_millis(500);
    tick(&mut rows, &mut replicas, t);
    let row = &rows.rows[&key()].1;
    assert!(row.rate_rps < 0.55 * r0, "the cut applies: {row:?}");
    assert!(row.good_rps > 0.9 * r0, "the key's goodput: {row:?}");
    let other = replicas[2].advisor.key_metrics(&key(), t).unwrap();
    assert_eq!(other.rate_rps, Some(row.rate_rps));
}
