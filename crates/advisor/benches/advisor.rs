//! `try_acquire` + `record` throughput on one thread with 100 keys.
//!
//! Run with `cargo bench -p runnel-advisor --bench advisor`. Prints, for each
//! scenario, calls per second (each `try_acquire` and each `record` is one
//! call): the median of 7 runs and the min–max, next to a baseline measured
//! in the same run — a `Mutex<HashMap<RateKey, u64>>` increment per call,
//! the floor of any per-key state behind a lock.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use runnel_advisor::{Advisor, AdvisorConfig, ProviderLimits};
use runnel_core::{Acquire, Advisor as _, Observation, OutcomeClass, RateKey};

const KEYS: usize = 100;

/// `cargo bench` passes `--bench`; `cargo test --all-targets` runs this
/// binary without it, and then a small smoke run checks that it works.
fn measuring() -> bool {
    static MEASURING: OnceLock<bool> = OnceLock::new();
    *MEASURING.get_or_init(|| std::env::args().any(|a| a == "--bench"))
}

/// Calls per run.
fn calls() -> usize {
    if measuring() { 4_000_000 } else { 20_000 }
}

/// Runs per figure.
fn runs() -> usize {
    if measuring() { 7 } else { 1 }
}

fn keys(provider: &str) -> Vec<RateKey> {
    (0..KEYS)
        .map(|i| RateKey::new(provider, &format!("model-{i}")))
        .collect()
}

/// Calls per second of `f`, which makes `calls()` calls.
fn measure(mut f: impl FnMut() -> u64) -> (f64, f64, f64) {
    let runs = runs();
    let mut rates: Vec<f64> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            black_box(f());
            calls() as f64 / start.elapsed().as_secs_f64()
        })
        .collect();
    rates.sort_by(f64::total_cmp);
    (rates[runs / 2], rates[0], rates[runs - 1])
}

fn report(name: &str, (median, min, max): (f64, f64, f64)) {
    println!(
        "{name:<44} {:>7.2} M calls/s (min {:.2}, max {:.2})",
        median / 1e6,
        min / 1e6,
        max / 1e6
    );
}

/// Every call is permitted (an explicit limit far above the call rate), and
/// every permit is followed by a `record` of a success: the full hot path.
fn permit_path() -> u64 {
    let mut config = AdvisorConfig::default();
    config.providers.insert(
        "fast".into(),
        ProviderLimits {
            rpm: Some(6_000_000_000),
            ..ProviderLimits::default()
        },
    );
    let advisor = Advisor::new(config).expect("valid config");
    let keys = keys("fast");
    let origin = Instant::now();
    let ok = Observation::of(OutcomeClass::Success);
    let mut permits = 0;
    let mut i = 0;
    let calls = calls();
    while i < calls {
        let key = &keys[i % KEYS];
        let now = origin + Duration::from_micros(i as u64);
        if advisor.try_acquire(key, None, now) == Acquire::Permit {
            permits += 1;
            advisor.record(key, &ok, now);
            i += 1;
        }
        i += 1;
    }
    permits
}

/// Learned rates of the default kind (1 request per second per key) asked
/// far more often: almost every call is a wait.
fn wait_path() -> u64 {
    let advisor = Advisor::new(AdvisorConfig::default()).expect("valid config");
    let keys = keys("default");
    let origin = Instant::now();
    let mut waits = 0;
    for i in 0..calls() {
        let now = origin + Duration::from_micros(i as u64);
        if let Acquire::Wait { .. } = advisor.try_acquire(&keys[i % KEYS], None, now) {
            waits += 1;
        }
    }
    waits
}

fn baseline() -> u64 {
    let map: Mutex<HashMap<RateKey, u64>> =
        Mutex::new(keys("base").into_iter().map(|k| (k, 0)).collect());
    let keys = keys("base");
    let mut sum = 0;
    for i in 0..calls() {
        let mut guard = map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(v) = guard.get_mut(&keys[i % KEYS]) {
            *v += 1;
            sum += *v;
        }
    }
    sum
}

fn main() {
    if !measuring() {
        println!("runnel-advisor bench: smoke run (use `cargo bench` for figures)");
    }
    println!(
        "runnel-advisor: {} calls per run over {KEYS} keys, one thread, median of {} runs",
        calls(),
        runs()
    );
    println!("(shared 2-core machine with other builds running: figures are noisy)");
    report("baseline: Mutex<HashMap> increment", measure(baseline));
    report(
        "try_acquire (permit) + record (success)",
        measure(permit_path),
    );
    report("try_acquire (wait)", measure(wait_path));
}
