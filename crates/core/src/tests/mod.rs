//! Tests of the core that need its internals: the discrete-event simulation
//! and the property tests built on it, and the engine tests on paused time.

// Tests read tokio's clock (virtual under `start_paused`) to set up and check
// timings; the rule against clock reads is for the core's own code.
#![allow(clippy::disallowed_methods)]

use crate::ports::Clock;

mod engine;
mod quota_props;
mod replica_props;
mod scheduler_props;
mod sim;
mod tokio_clock;
