//! The command line: `runnel serve | migrate | config | sim | demo | run`.
//! Exit status: 0 on success, 1 on failure, 2 for invalid configuration or
//! arguments.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::{ConfigError, LogFormat, Overrides, RunnelConfig};
use crate::runtime::Runtime;

/// runnel runs LLM experiments in the background: every example of a dataset
/// through a task model, every output through LLM judges, every result into a
/// database as it arrives.
#[derive(Debug, Parser)]
#[command(name = "runnel", version, propagate_version = true)]
pub struct Cli {
    /// Configuration file (default: ./runnel.toml when it exists). Values
    /// from RUNNEL_… environment variables (nested keys joined with `__`, e.g.
    /// RUNNEL_SCHEDULER__MAX_CONCURRENCY=50) and from flags override it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log line format.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags shared by commands that open the database.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// Database URL: sqlite://FILE (the default, sqlite://runnel.db) or
    /// postgres://USER@HOST/DB.
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API and run experiments until Ctrl-C or SIGTERM (then
    /// drain in-flight calls and hand the experiments over).
    Serve {
        /// Address to listen on (default 127.0.0.1:8080).
        #[arg(long, value_name = "ADDR")]
        bind: Option<std::net::SocketAddr>,
        /// This replica's stable identity (default: kept beside a SQLite file;
        /// random per process on PostgreSQL).
        #[arg(long, value_name = "ID")]
        replica_id: Option<String>,
        /// Database selection.
        #[command(flatten)]
        db: DbArgs,
    },
    /// Apply the database migrations embedded in this binary and exit.
    Migrate {
        /// Database selection.
        #[command(flatten)]
        db: DbArgs,
    },
    /// Print the effective configuration (secrets masked) and exit.
    Config {
        /// Print the built-in defaults instead.
        #[arg(long)]
        defaults: bool,
    },
    /// Serve the simulated LLM provider (OpenAI- and Anthropic-compatible)
    /// until Ctrl-C.
    Sim(Box<runnel_sim::Args>),
}

/// Parses the arguments and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(config) = e.downcast_ref::<ConfigError>() {
                eprintln!("error: {config}");
                return ExitCode::from(2);
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(cli: &Cli, overrides: Overrides) -> Result<RunnelConfig, ConfigError> {
    RunnelConfig::load(
        cli.config.as_deref(),
        &Overrides {
            log_format: cli.log_format,
            ..overrides
        },
    )
}

/// Runs one command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Serve {
            bind,
            replica_id,
            db,
        } => {
            let config = load(
                &cli,
                Overrides {
                    bind: *bind,
                    database_url: db.database_url.clone(),
                    replica_id: replica_id.clone(),
                    log_format: None,
                },
            )?;
            serve(config).await
        }
        Command::Migrate { db } => {
            let config = load(
                &cli,
                Overrides {
                    database_url: db.database_url.clone(),
                    ..Overrides::default()
                },
            )?;
            let version = runnel_store::migrate(&config.database.url)
                .await
                .context("migrating the database")?;
            println!(
                "{} is at migration {version}",
                runnel_store::redact_url(&config.database.url)
            );
            Ok(())
        }
        Command::Config { defaults } => {
            if *defaults {
                print!("{}", RunnelConfig::defaults_toml());
            } else {
                let config = load(&cli, Overrides::default())?;
                print!("{}", config.to_masked_toml());
            }
            Ok(())
        }
        Command::Sim(args) => runnel_sim::run((**args).clone())
            .await
            .context("running the simulated provider"),
    }
}

/// `runnel serve`.
pub async fn serve(config: RunnelConfig) -> anyhow::Result<()> {
    let tracer = crate::telemetry::init_tracing(&config)?;
    let bind = config.server.bind;
    let runtime = Runtime::start(config).await?;
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("listening on {bind}"))?;
    tracing::info!(address = %listener.local_addr().unwrap_or(bind), "serving the API");
    let app = crate::api::app(runtime.state.clone());
    let bus = runtime.state.bus.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            // Open event streams would hold the graceful shutdown (and the
            // release of this replica's claims) until their experiments end.
            bus.close();
        })
        .await
        .context("serving the API")?;
    tracing::info!("shutting down");
    runtime.shutdown().await;
    if let Some(tracer) = tracer {
        let _ = tracer.shutdown();
    }
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}
