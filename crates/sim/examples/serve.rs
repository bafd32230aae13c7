//! Embeds the simulator's command line in a program of one's own, the way
//! `runnel sim` and `cargo xtask sim` do:
//! `cargo run -p runnel-sim --example serve -- --rpm 60 --latency 200ms`
//! (Ctrl-C stops it and prints the stats).

use clap::Parser;

/// A program whose only command is the simulator.
#[derive(Parser)]
#[command(about = "Serve the runnel LLM provider simulator")]
struct Cli {
    #[command(flatten)]
    sim: runnel_sim::Args,
}

fn main() -> Result<(), runnel_sim::Error> {
    runnel_sim::run_blocking(Cli::parse().sim)
}
