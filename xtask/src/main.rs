//! `cargo xtask` — project automation that needs nothing but cargo.
//!
//! - `cargo xtask test [--full] [-- <cargo test args>]`: makes sure PostgreSQL
//!   is running (starting or installing it if needed), points
//!   `RUNNEL_TEST_POSTGRES_URL` at it, and runs the whole test suite.
//! - `cargo xtask bench [NAME…] [--quick] [--json] [--runs N] [--check[=independent]]`:
//!   runs benchmarks (release build). Crate benchmarks: `core`, `advisor`,
//!   `call_overhead`, `sim`, `store` (which needs PostgreSQL, started like
//!   `test` does); end-to-end scenarios `S1` … `S11` (see `bench/mod.rs` and
//!   BENCHMARKS.md). No names: all of them. `--check` fails the command
//!   when a goal is missed.
//! - `cargo xtask sim [OPTIONS]`: serves the simulated LLM provider until Ctrl-C.
//! - `cargo xtask migrate [--database-url URL]`: applies the embedded migrations.
//! - `cargo xtask chaos [--quick] [--seed N] [TEST…]`: the reliability and
//!   security suite (release build): replica chaos, database faults, provider
//!   faults, hostile input, security, stop/resume storm (see `chaos/mod.rs`
//!   and RELIABILITY.md). No names: all of them.

mod bench;
mod chaos;
mod duplicates;
mod harness;
mod postgres;

use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "runnel project automation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every test of the workspace against SQLite and a local PostgreSQL
    /// (started, or installed and started, when it is not running).
    Test {
        /// Run the heavy suites at full size instead of the CI size.
        #[arg(long)]
        full: bool,
        /// Extra arguments for `cargo test` (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Serve the simulated LLM provider (Ctrl-C stops it).
    Sim(Box<runnel_sim::Args>),
    /// Apply the database migrations embedded in runnel (SQLite or PostgreSQL).
    Migrate {
        /// The database (default sqlite://runnel.db).
        #[arg(long, value_name = "URL", default_value = "sqlite://runnel.db")]
        database_url: String,
    },
    /// Run benchmarks in release mode and print their figures: crate
    /// benchmarks (core, advisor, call_overhead, sim) and end-to-end
    /// scenarios (S1 … S11, each writing target/bench/<S>.json).
    Bench {
        /// Which benchmarks (default: all).
        names: Vec<String>,
        /// Smaller sizes and one run per scenario (checks that they run;
        /// with --check, also their goals).
        #[arg(long)]
        quick: bool,
        /// Also print machine-readable JSON.
        #[arg(long)]
        json: bool,
        /// Runs per scenario (default 3, or 1 with --quick).
        #[arg(long, value_name = "N")]
        runs: Option<usize>,
        /// Exit non-zero when a goal is missed: `--check` (or `--check=all`)
        /// every goal; `--check=independent` only the goals that do not
        /// depend on the machine's speed (429 shares, calls per result,
        /// duplicates, outcomes), as CI runs it.
        #[arg(long, value_name = "WHICH", num_args = 0..=1, require_equals = true,
              default_missing_value = "all")]
        check: Option<bench::report::Check>,
    },
    /// Run the reliability and security suite (release build): replicas
    /// killed, databases restarted, providers failing, hostile input,
    /// leaked secrets, stop/resume storms. Exits non-zero on any failure.
    Chaos {
        /// Which tests: replicas, database, provider, hostile, security,
        /// storm (default: all).
        tests: Vec<String>,
        /// CI sizes (replica chaos 30 s instead of 2 min, smaller datasets).
        #[arg(long)]
        quick: bool,
        /// Seed of every random choice (default: from the clock; printed).
        #[arg(long, value_name = "N")]
        seed: Option<u64>,
    },
}

/// Crate benchmarks: (name, package, bench target).
const CRATE_BENCHES: &[(&str, &str, &str)] = &[
    ("core", "runnel-core", "core"),
    ("advisor", "runnel-advisor", "advisor"),
    ("call_overhead", "runnel-providers", "call_overhead"),
    ("sim", "runnel-sim", "throughput"),
    ("store", "runnel-store", "store"),
];

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Test { full, args } => test(full, &args),
        Cmd::Bench {
            names,
            quick,
            json,
            runs,
            check,
        } => bench(
            &names,
            &bench::Options {
                quick,
                json,
                runs,
                check,
            },
        ),
        Cmd::Sim(args) => runnel_sim::run_blocking(*args).map_err(Into::into),
        Cmd::Migrate { database_url } => migrate(&database_url),
        Cmd::Chaos { tests, quick, seed } => {
            if !chaos::run(&chaos::Options { quick, seed, tests })? {
                bail!("some chaos tests failed (see above and target/chaos/*.json)");
            }
            Ok(())
        }
    }
}

/// `cargo xtask migrate`: applies the embedded migrations.
fn migrate(url: &str) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let version = runtime
        .block_on(runnel_store::migrate(url))
        .with_context(|| format!("migrating {}", runnel_store::redact_url(url)))?;
    println!(
        "{} is at migration {version}",
        runnel_store::redact_url(url)
    );
    Ok(())
}

fn bench(names: &[String], options: &bench::Options) -> Result<()> {
    let (quick, json, runs) = (options.quick, options.json, options.runs);
    let mut scenarios = Vec::new();
    let mut crates = Vec::new();
    for name in names {
        if let Some(spec) = bench::find(name) {
            scenarios.push(spec);
        } else if let Some(entry) = CRATE_BENCHES.iter().find(|(n, _, _)| n == name) {
            crates.push(entry);
        } else {
            let known: Vec<&str> = CRATE_BENCHES
                .iter()
                .map(|(n, _, _)| *n)
                .chain(bench::SCENARIOS.iter().map(|s| s.id))
                .collect();
            bail!("unknown benchmark `{name}` (known: {})", known.join(", "));
        }
    }
    if names.is_empty() {
        crates = CRATE_BENCHES.iter().collect();
        scenarios = bench::SCENARIOS.to_vec();
    }
    if runs == Some(0) {
        bail!("--runs must be at least 1");
    }
    for (name, package, target) in crates {
        let mut cmd = Command::new(cargo());
        cmd.args(["bench", "--quiet", "-p", package, "--bench", target, "--"]);
        if *name == "store" {
            cmd.env("RUNNEL_TEST_POSTGRES_URL", postgres::ensure_running()?);
        }
        if quick {
            // Benchmarks without a --quick flag of their own read these
            // (the simulator's: runs and seconds per run).
            cmd.arg("--quick")
                .env("BENCH_RUNS", "1")
                .env("BENCH_SECONDS", "1");
        }
        if json {
            cmd.arg("--json");
        }
        let status = cmd
            .status()
            .with_context(|| format!("running benchmark {name}"))?;
        if !status.success() {
            bail!("benchmark {name} failed ({status})");
        }
    }
    let outcome = bench::run(&scenarios, options)?;
    if !outcome.all_ran {
        bail!("some scenario runs failed (see above and target/bench/*.json)");
    }
    if !outcome.missed.is_empty() {
        bail!(
            "--check: {} goal(s) missed: {}",
            outcome.missed.len(),
            outcome.missed.join("; ")
        );
    }
    Ok(())
}

fn test(full: bool, args: &[String]) -> Result<()> {
    let url = postgres::ensure_running()?;
    eprintln!("xtask: PostgreSQL for tests at {url}");
    let mut cmd = Command::new(cargo());
    cmd.args(["test", "--workspace", "--all-targets"])
        .args(args)
        .env("RUNNEL_TEST_POSTGRES_URL", &url);
    if full {
        cmd.env("RUNNEL_TEST_FULL", "1");
    }
    let status = cmd.status().context("running cargo test")?;
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    // Doc examples are part of the contract of each crate (`--all-targets`
    // does not run them).
    let status = Command::new(cargo())
        .args(["test", "--workspace", "--doc"])
        .env("RUNNEL_TEST_POSTGRES_URL", &url)
        .status()
        .context("running cargo test --doc")?;
    if !status.success() {
        bail!("cargo test --doc failed ({status})");
    }
    Ok(())
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}
