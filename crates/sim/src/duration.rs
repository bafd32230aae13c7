//! Durations in the simulator's settings and flags: runnel's one duration
//! syntax (`"250ms"`, `"30s"`, `"5m"`, `"1h"`, `"20us"` or a number of
//! seconds), from `runnel_core::duration`, so `runnel sim` and the server's
//! own configuration accept exactly the same texts.

pub use runnel_core::duration::{deserialize, format, parse, serialize};
