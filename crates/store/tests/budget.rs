//! The shared rate budget (issue 14) on real databases: the merge rule of
//! the row (a decrease always applies, a stale increase never), members and
//! their demand, the lease, pauses by the database clock, and leaving.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::connect;
use runnel_core::{BudgetReport, BudgetView, RateBudget, RateKey, ReplicaId, SharedRate};
use runnel_store::DatabaseKind;
use runnel_store::testing::with_temp_db;

const LEASE: Duration = Duration::from_secs(60);

fn key() -> RateKey {
    RateKey::new("sim", "model")
}

fn rate(r: f64) -> SharedRate {
    SharedRate {
        rate_rps: r,
        good_rps: r * 0.9,
        last_429_rps: Some(r * 1.1),
        learned_from: "estimated".into(),
        token_rate_tps: None,
    }
}

fn report(demand: u64, based_on: i64, proposal: Option<f64>, decreased: bool) -> BudgetReport {
    BudgetReport {
        key: key(),
        demand,
        based_on,
        proposal: proposal.map(rate),
        decreased,
        paused_ms: 0,
    }
}

fn only(views: Vec<BudgetView>) -> BudgetView {
    assert_eq!(views.len(), 1, "{views:?}");
    views.into_iter().next().unwrap()
}

async fn rows_merge_reports_and_count_live_members(kind: DatabaseKind) {
    with_temp_db(kind, async |temp| {
        let db = connect(temp.url()).await;
        let (a, b) = (ReplicaId::new("replica-a"), ReplicaId::new("replica-b"));

        // A proposes first: the row is created at version 1.
        let v = only(
            db.sync(&a, LEASE, &[report(30, 0, Some(20.0), false)])
                .await
                .unwrap(),
        );
        assert_eq!((v.version, v.members, v.total_demand), (1, 1, 30));
        assert_eq!(v.rate, Some(rate(20.0)));

        // B joins with nothing to propose: it reads the row; two members.
        let v = only(
            db.sync(&b, LEASE, &[report(10, 0, None, false)])
                .await
                .unwrap(),
        );
        assert_eq!((v.version, v.members, v.total_demand), (1, 2, 40));
        assert_eq!(v.rate.unwrap().rate_rps, 20.0);

        // A rises on the current version: applies.
        let v = only(
            db.sync(&a, LEASE, &[report(30, 1, Some(24.0), false)])
                .await
                .unwrap(),
        );
        assert_eq!((v.version, v.rate.unwrap().rate_rps), (2, 24.0));

        // B rises on the stale version 1: dropped, B reads A's rate.
        let v = only(
            db.sync(&b, LEASE, &[report(10, 1, Some(26.0), false)])
                .await
                .unwrap(),
        );
        assert_eq!((v.version, v.rate.unwrap().rate_rps), (2, 24.0));

        // B saw a 429 (a decrease) on the stale version: applies anyway.
        let v = only(
            db.sync(&b, LEASE, &[report(10, 1, Some(12.0), true)])
                .await
                .unwrap(),
        );
        assert_eq!((v.version, v.rate.unwrap()), (3, rate(12.0)));

        // A decrease that is not below the row changes nothing.
        let v = only(
            db.sync(&a, LEASE, &[report(30, 2, Some(18.0), true)])
                .await
                .unwrap(),
        );
        assert_eq!((v.version, v.rate.unwrap().rate_rps), (3, 12.0));

        // With a zero lease B's report is too old to count: A is alone.
        let v = only(
            db.sync(&a, Duration::ZERO, &[report(30, 3, None, false)])
                .await
                .unwrap(),
        );
        assert_eq!((v.members, v.total_demand), (1, 30));

        // A pause is kept by the database clock and reaches everyone.
        let mut paused = report(30, 3, None, false);
        paused.paused_ms = 60_000;
        let v = only(db.sync(&a, LEASE, &[paused]).await.unwrap());
        assert!((55_000..=60_000).contains(&v.paused_ms), "{}", v.paused_ms);
        let v = only(
            db.sync(&b, LEASE, &[report(10, 3, None, false)])
                .await
                .unwrap(),
        );
        assert!((55_000..=60_000).contains(&v.paused_ms), "{}", v.paused_ms);

        // A leaves: B is alone at once.
        db.leave(&a).await.unwrap();
        let v = only(
            db.sync(&b, LEASE, &[report(10, 3, None, false)])
                .await
                .unwrap(),
        );
        assert_eq!((v.members, v.total_demand), (1, 10));
    })
    .await;
}

async fn several_keys_sync_in_one_call_and_unknown_keys_have_no_row(kind: DatabaseKind) {
    with_temp_db(kind, async |temp| {
        let db = connect(temp.url()).await;
        let a = ReplicaId::new("replica-a");
        let other = RateKey::new("other", "model");
        let mut second = report(5, 0, None, false);
        second.key = other.clone();
        let views = db
            .sync(&a, LEASE, &[report(3, 0, Some(7.0), false), second])
            .await
            .unwrap();
        assert_eq!(views.len(), 2);
        let mine = views.iter().find(|v| v.key == key()).unwrap();
        assert_eq!(mine.rate.as_ref().unwrap().rate_rps, 7.0);
        let unknown = views.iter().find(|v| v.key == other).unwrap();
        assert_eq!(
            (unknown.version, unknown.rate.as_ref(), unknown.total_demand),
            (0, None, 5)
        );
        assert!(db.sync(&a, LEASE, &[]).await.unwrap().is_empty());
    })
    .await;
}

on_both_databases!(
    rows_merge_reports_and_count_live_members,
    several_keys_sync_in_one_call_and_unknown_keys_have_no_row,
);
