//! The fair-share property of the shared rate budget (issue 14) on
//! PostgreSQL: three replicas (each its own pool, advisor and sync state)
//! share one key through the real store; each takes every permit its
//! advisor gives, on a simulated clock in 1 ms steps, and syncs every
//! `budget.sync_interval`. While all run, each replica's throughput is
//! within 10 % of its demand share of the key's limit, and the total stays
//! within the limit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use runnel_advisor::{Advisor, AdvisorConfig, BudgetConfig, BudgetSync, ProviderLimits};
use runnel_core::{
    Acquire, Advisor as _, Observation, OutcomeClass, RateBudget, RateKey, ReplicaId,
};
use runnel_store::testing::with_temp_db;
use runnel_store::{DatabaseKind, Db, StoreConfig};

/// The key's limit: 30 requests per second.
const RPM: u64 = 1800;

struct Replica {
    id: ReplicaId,
    db: Db,
    advisor: Advisor,
    sync: BudgetSync,
    demand: u64,
}

fn key() -> RateKey {
    RateKey::new("sim", "model")
}

async fn replica(url: &str, name: &str, demand: u64) -> Replica {
    let mut config = AdvisorConfig::default();
    config.providers.insert(
        "sim".into(),
        ProviderLimits {
            rpm: Some(RPM),
            ..ProviderLimits::default()
        },
    );
    Replica {
        id: ReplicaId::new(name),
        db: Db::connect(&StoreConfig::for_url(url)).await.unwrap(),
        advisor: Advisor::new(config).unwrap(),
        sync: BudgetSync::new(BudgetConfig::default()),
        demand,
    }
}

async fn sync(r: &mut Replica, now: Instant) {
    let demand = HashMap::from([(key(), r.demand)]);
    let reports = r.sync.reports(&r.advisor, &demand, now);
    let views =
        r.db.sync(&r.id, r.sync.config().lease, &reports)
            .await
            .unwrap();
    r.sync.apply(&r.advisor, &reports, &views, now);
}

/// `secs` simulated seconds; returns the permits of each replica.
async fn run(replicas: &mut [Replica], t0: &mut Instant, secs: u64) -> Vec<u64> {
    let interval = u64::try_from(BudgetConfig::default().sync_interval.as_millis()).unwrap();
    let mut permits = vec![0; replicas.len()];
    for step in 0..secs * 1000 {
        let now = *t0 + Duration::from_millis(step);
        if step % interval == 0 {
            for r in replicas.iter_mut() {
                sync(r, now).await;
            }
        }
        for (i, r) in replicas.iter().enumerate() {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_replica_gets_its_demand_share_of_the_key_on_postgres() {
    with_temp_db(DatabaseKind::Postgres, async |temp| {
        let mut replicas = vec![
            replica(temp.url(), "replica-a", 50).await,
            replica(temp.url(), "replica-b", 100).await,
            replica(temp.url(), "replica-c", 250).await,
        ];
        let mut t = Instant::now();
        // Everyone joins and learns the others' demand.
        run(&mut replicas, &mut t, 2).await;
        let secs = 20;
        let permits = run(&mut replicas, &mut t, secs).await;
        let limit = RPM as f64 / 60.0 * secs as f64;
        let total: u64 = permits.iter().sum();
        assert!(total as f64 <= limit * 1.01, "{permits:?} over {limit}");
        assert!(
            total as f64 >= limit * 0.95,
            "{permits:?} far under {limit}"
        );
        let demand: u64 = replicas.iter().map(|r| r.demand).sum();
        for (r, p) in replicas.iter().zip(&permits) {
            let expected = limit * r.demand as f64 / demand as f64;
            assert!(
                (*p as f64 - expected).abs() <= 0.1 * expected,
                "{}: {p} permits, expected {expected:.0} ({permits:?})",
                r.id
            );
        }

        // Demand shifts: c runs dry, a grows. Within a sync the shares follow.
        replicas[0].demand = 300;
        replicas[2].demand = 0;
        run(&mut replicas, &mut t, 1).await;
        let permits = run(&mut replicas, &mut t, secs).await;
        let (a, b, c) = (permits[0] as f64, permits[1] as f64, permits[2] as f64);
        assert!((a / limit - 0.75).abs() < 0.075 * 1.0, "{permits:?}");
        assert!((b / limit - 0.25).abs() < 0.025 + 0.02, "{permits:?}");
        assert!(
            c / limit <= 0.02 + 1e-9,
            "a replica without demand keeps only the floor: {permits:?}"
        );
        for r in replicas {
            r.db.close().await;
        }
    })
    .await;
}
