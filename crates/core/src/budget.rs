//! The shared rate budget port (DESIGN §6, "one budget per key across all
//! replicas"): what every replica knows about a rate-limit key is one row in
//! the database, and each replica's bucket gets a share of the key's rate in
//! proportion to its demand. This module holds only the wire types and the
//! port; the decisions (what to report, the share, the fallback) are in
//! `runnel_advisor::share`, the storage in `runnel-store`.

use std::future::Future;
use std::time::Duration;

use crate::error::Error;
use crate::ids::{RateKey, ReplicaId};

/// What has been learned about a key's rate, as the cluster row holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct SharedRate {
    /// The key's whole request rate (all replicas together), per second.
    pub rate_rps: f64,
    /// The last good rate (the estimate of the provider's limit).
    pub good_rps: f64,
    /// The rate that drew the last 429, if any.
    pub last_429_rps: Option<f64>,
    /// Where the last good rate came from (`nothing`, `estimated`,
    /// `confirmed`, `headers`).
    pub learned_from: String,
    /// The key's whole token rate per second, when one is known.
    pub token_rate_tps: Option<f64>,
}

/// One replica's report about one key for one sync.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetReport {
    /// The rate-limit key.
    pub key: RateKey,
    /// Jobs this replica has ready for the key.
    pub demand: u64,
    /// The row version this replica last read (0: none).
    pub based_on: i64,
    /// What this replica learned since it last read the row, if anything.
    /// `None`: nothing new, only demand and presence are reported.
    pub proposal: Option<SharedRate>,
    /// The proposal is a decrease of what was read (a 429, a lower header):
    /// it applies even if the row changed since.
    pub decreased: bool,
    /// A pause the provider asked for, still to run, in milliseconds (0: none).
    pub paused_ms: u64,
}

/// The cluster's view of one key after a sync.
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetView {
    /// The rate-limit key.
    pub key: RateKey,
    /// The row version (0 when there is no row yet).
    pub version: i64,
    /// The shared learned rate; `None` while no replica has proposed one.
    pub rate: Option<SharedRate>,
    /// The pause still to run, in milliseconds, by the database clock.
    pub paused_ms: u64,
    /// Total demand of the live members, this replica included.
    pub total_demand: u64,
    /// Live members (replicas whose report is younger than the lease), this
    /// replica included.
    pub members: u32,
}

/// Where the shared budget is kept (implemented by `runnel-store` on SQLite
/// and PostgreSQL; a single process is simply the only member).
pub trait RateBudget: Send + Sync + 'static {
    /// Records this replica's `reports` (demand, heartbeat, learned changes)
    /// and returns the view of every reported key, in one transaction. A
    /// member whose last report is older than `lease` (by the database
    /// clock) no longer counts.
    fn sync(
        &self,
        replica: &ReplicaId,
        lease: Duration,
        reports: &[BudgetReport],
    ) -> impl Future<Output = Result<Vec<BudgetView>, Error>> + Send;

    /// Removes this replica from every key (graceful shutdown), so its share
    /// returns to the others at once instead of after the lease.
    fn leave(&self, replica: &ReplicaId) -> impl Future<Output = Result<(), Error>> + Send;
}
