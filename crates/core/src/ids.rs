//! Identifiers shared by every crate: experiments, datasets, examples, runs,
//! evaluators, replicas, epochs and rate-limit keys.
//!
//! Experiments and datasets are named by UUIDs (they are created through the
//! API and may come from any replica); examples, runs and evaluators are
//! database row numbers, which keeps the keyset pagination of DESIGN §3 cheap.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

macro_rules! row_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// Identity of an experiment (a UUID, assigned when it is created).
    ExperimentId
);
uuid_id!(
    /// Identity of a dataset (a UUID, assigned when it is created).
    DatasetId
);
row_id!(
    /// Identity of one example of a dataset (a database row number).
    ExampleId
);
row_id!(
    /// Identity of one task run (a database row number).
    RunId
);
row_id!(
    /// Identity of one evaluator attached to an experiment (a database row number).
    EvaluatorId
);

/// The fencing token of a claim: incremented on every successful claim of an
/// experiment, and carried by every write made under that claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Epoch(pub i64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Identity of one server process (configured, kept beside a SQLite file, or
/// random per process).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReplicaId(Arc<str>);

impl ReplicaId {
    /// Wraps a replica name.
    pub fn new(name: impl Into<Arc<str>>) -> Self {
        Self(name.into())
    }

    /// The replica name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The identity of one provider quota (DESIGN §6): every job with the same key
/// shares one token bucket and one circuit breaker, across all experiments.
///
/// A key is written `provider|scope`: `provider` is the name of the
/// `[providers.*]` entry whose limits apply, `scope` is what the provider
/// meters (a model, a deployment, an account). Keys are computed by the provider
/// adapter and never contain a credential (at most a short hash of one).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RateKey(Arc<str>);

impl RateKey {
    /// Builds the key of `scope` under provider entry `provider`. A `|` in
    /// `provider` is replaced, so that [`RateKey::provider`] reads it back.
    pub fn new(provider: &str, scope: &str) -> Self {
        Self(format!("{}|{scope}", provider.replace('|', "_")).into())
    }

    /// Wraps a key text that is already in `provider|scope` form (for example
    /// one read back from the database).
    pub fn from_raw(text: impl Into<Arc<str>>) -> Self {
        Self(text.into())
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The provider entry whose limits apply to this key.
    pub fn provider(&self) -> &str {
        self.0.split('|').next().unwrap_or_default()
    }

    /// The metered scope within the provider.
    pub fn scope(&self) -> &str {
        self.0.split_once('|').map(|(_, s)| s).unwrap_or_default()
    }
}

impl fmt::Display for RateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The statement "replica `replica` owns experiment `experiment` under epoch
/// `epoch`". Every write made for the experiment carries its claim; the store
/// accepts it only while no later claim exists (DESIGN §4, fencing).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Claim {
    /// The claimed experiment.
    pub experiment: ExperimentId,
    /// The replica holding the claim.
    pub replica: ReplicaId,
    /// The fencing token of this claim.
    pub epoch: Epoch,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_json_as_plain_values() {
        let id = ExperimentId(Uuid::from_u128(7));
        let text = serde_json::to_string(&id).unwrap();
        assert_eq!(text, "\"00000000-0000-0000-0000-000000000007\"");
        assert_eq!(serde_json::from_str::<ExperimentId>(&text).unwrap(), id);
        assert_eq!(serde_json::to_string(&RunId(42)).unwrap(), "42");
        let key = RateKey::new("open|ai", "gpt-4o|x");
        assert_eq!(key.as_str(), "open_ai|gpt-4o|x");
        assert_eq!(key.provider(), "open_ai");
        assert_eq!(key.scope(), "gpt-4o|x");
        assert_eq!(serde_json::to_string(&key).unwrap(), "\"open_ai|gpt-4o|x\"");
        assert_eq!(
            "00000000-0000-0000-0000-000000000007"
                .parse::<ExperimentId>()
                .unwrap(),
            id
        );
    }
}
