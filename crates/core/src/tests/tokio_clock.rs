//! tokio's clock behind the `Clock` port, for the core's own tests, its
//! benchmark and its example (they include this file with `#[path]`): virtual
//! under `start_paused`. The production adapter is the server's
//! `runtime::TokioClock`; neither can live in the core's library code, which
//! reads no clock (DESIGN §2, checked by `core-purity`).

use std::future::Future;
use std::time::Instant;

// The including module imports the port (`crate::ports::Clock` inside the
// crate, `runnel_core::ports::Clock` outside it).
use super::Clock;

/// tokio's clock (virtual under `start_paused`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn sleep_until(&self, deadline: Instant) -> impl Future<Output = ()> + Send {
        tokio::time::sleep_until(tokio::time::Instant::from_std(deadline))
    }
}
