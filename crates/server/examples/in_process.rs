//! Embeds a whole runnel replica in a program of one's own: a simulated
//! provider, a SQLite file in a temporary folder, the engine, and one
//! experiment created through the same validation and lifecycle code as the
//! HTTP API, followed to the end, then summarised from the database.
//!
//! `cargo run -p runnel-server --example in_process`

use runnel_server::api::types::CreateExperiment;
use runnel_server::api::validate;
use runnel_server::follow::{self, Display, Tally};
use runnel_server::{RunnelConfig, Runtime, demo, summary};
use runnel_sim::{Sim, SimConfig};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // A provider: the simulator on a free loopback port, 50 requests/s.
    let mut sim_config = SimConfig::default();
    sim_config.limits.rps = Some(50.0);
    let sim = Sim::start(sim_config).await?;

    // The configuration a runnel.toml would hold, with that provider.
    let dir = std::env::temp_dir().join(format!("runnel-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let config = RunnelConfig::from_toml(&format!(
        r#"
        [database]
        url = "sqlite://{}"
        [providers.sim]
        kind = "openai_compatible"
        base_url = "{}/v1"
        initial_rps = 20
        "#,
        dir.join("example.db").display(),
        sim.url()
    ))?;
    let runtime = Runtime::start(config).await?;
    let state = &runtime.state;

    // A dataset and an experiment, checked as the API checks them.
    let examples = validate::examples(demo::dataset(40, 1), "examples")?;
    let dataset = state.db.create_dataset("example", &examples).await?;
    let request: CreateExperiment =
        serde_json::from_value(demo::experiment_body(&dataset.id.to_string()))?;
    let (experiment, _) = validate::experiment(state, request).await?;

    // Start it and follow its events until it completes.
    let mut launched = follow::launch(state, &experiment).await?;
    let mut tally = Tally::default();
    let end = follow::follow(
        &mut launched,
        &mut tally,
        &runtime.advisor,
        &mut Display::Quiet,
        std::future::pending(),
    )
    .await;
    println!("ended: {end:?}");
    let summary =
        summary::collect(&state.db, launched.id, &tally, launched.started.elapsed()).await?;
    print!("{}", summary.render());

    runtime.shutdown().await;
    sim.shutdown().await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
