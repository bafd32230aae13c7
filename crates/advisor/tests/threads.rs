//! Many threads and tasks asking at once never get more than the limit, and
//! a half-open breaker lets exactly one of them probe.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use runnel_advisor::{Advisor, AdvisorConfig, ProviderLimits};
use runnel_core::{Acquire, Advisor as _, Observation, OutcomeClass, RateKey, WaitReason};

fn limited(rpm: u64) -> Advisor {
    let mut config = AdvisorConfig::default();
    config.providers.insert(
        "p".into(),
        ProviderLimits {
            rpm: Some(rpm),
            ..ProviderLimits::default()
        },
    );
    Advisor::new(config).unwrap()
}

/// The most permits in any window `[t, t + window)`.
fn most_in_window(times: &mut [u64], window: u64) -> usize {
    times.sort_unstable();
    let mut end = 0;
    let mut most = 0;
    for start in 0..times.len() {
        while end < times.len() && times[end] < times[start] + window {
            end += 1;
        }
        most = most.max(end - start);
    }
    most
}

#[test]
fn many_threads_asking_at_once_never_over_grant() {
    // 600 RPM: 10 per second, a burst of 10.
    let advisor = limited(600);
    let key = RateKey::new("p", "m");
    let origin = Instant::now();
    // Virtual time shared by every thread: each ask moves it 100 µs on.
    let clock = AtomicU64::new(0);
    let threads = 8;
    let barrier = Barrier::new(threads);
    let mut permits: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    let mut mine = Vec::new();
                    for _ in 0..25_000 {
                        let t = clock.fetch_add(100_000, Ordering::SeqCst);
                        let now = origin + Duration::from_nanos(t);
                        if advisor.try_acquire(&key, None, now) == Acquire::Permit {
                            mine.push(t);
                            advisor.record(&key, &Observation::of(OutcomeClass::Success), now);
                        }
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    let elapsed = clock.load(Ordering::SeqCst) as f64 / 1e9;
    // 200 000 asks over 20 virtual seconds: at most 10/s plus the burst
    // (and never more than 600 in a minute), and not much less either.
    assert!(elapsed >= 19.9);
    let granted = permits.len() as f64;
    assert!(
        granted <= 10.0 * elapsed + 10.0,
        "{granted} permits in {elapsed} s"
    );
    assert!(granted >= 9.0 * elapsed, "{granted} permits in {elapsed} s");
    assert!(most_in_window(&mut permits, 1_000_000_000) <= 20);
}

#[test]
fn a_half_open_breaker_lets_exactly_one_of_many_threads_probe() {
    let advisor = Advisor::new(AdvisorConfig::default()).unwrap();
    let key = RateKey::new("p", "m");
    let t0 = Instant::now();
    for _ in 0..5 {
        advisor.record(&key, &Observation::of(OutcomeClass::Transient), t0);
    }
    // The cooldown (30 s) has passed; 16 threads ask 1000 times each, at the
    // same instant.
    let now = t0 + Duration::from_secs(30);
    let threads = 16;
    let barrier = Barrier::new(threads);
    let permits: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    barrier.wait();
                    (0..1000)
                        .filter(|_| advisor.try_acquire(&key, None, now) == Acquire::Permit)
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(permits, 1);
    assert_eq!(
        advisor.try_acquire(&key, None, now),
        Acquire::Wait {
            until: now + AdvisorConfig::default().probe_timeout,
            reason: WaitReason::BreakerOpen { open_since: t0 },
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_tasks_asking_at_once_never_over_grant() {
    // 60 RPM: one per second, a burst of one.
    let advisor = Arc::new(limited(60));
    let key = RateKey::new("p", "m");
    let origin = Instant::now();
    let clock = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (advisor, key, clock) = (advisor.clone(), key.clone(), clock.clone());
            tokio::spawn(async move {
                let mut mine = Vec::new();
                for _ in 0..500 {
                    // 1 ms of virtual time per ask: 32 s in all.
                    let t = clock.fetch_add(1_000_000, Ordering::SeqCst);
                    if advisor.try_acquire(&key, None, origin + Duration::from_nanos(t))
                        == Acquire::Permit
                    {
                        mine.push(t);
                    }
                    tokio::task::yield_now().await;
                }
                mine
            })
        })
        .collect();
    let mut permits = Vec::new();
    for task in tasks {
        permits.extend(task.await.unwrap());
    }
    let elapsed = clock.load(Ordering::SeqCst) as f64 / 1e9;
    assert!(
        permits.len() as f64 <= elapsed + 1.0,
        "{} in {elapsed} s",
        permits.len()
    );
    assert!(
        permits.len() as f64 >= elapsed - 1.0,
        "{} in {elapsed} s",
        permits.len()
    );
    assert!(most_in_window(&mut permits, 1_000_000_000) <= 1);
}
