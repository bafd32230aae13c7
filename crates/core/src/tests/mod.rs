//! Tests of the core that need its internals: the discrete-event simulation
//! and the property tests built on it, and the engine tests on paused time.

mod engine;
mod scheduler_props;
mod sim;
