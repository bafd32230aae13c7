//! `cargo xtask` — project automation that needs nothing but cargo.
//!
//! - `cargo xtask test [--full] [-- <cargo test args>]`: makes sure PostgreSQL
//!   is running (starting or installing it if needed), points
//!   `RUNNEL_TEST_POSTGRES_URL` at it, and runs the whole test suite.

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
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Test { full, args } => test(full, &args),
    }
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
