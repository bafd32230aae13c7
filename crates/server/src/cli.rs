//! The command line: `runnel serve | migrate | config | sim | demo | run`.
//! Exit status: 0 on success, 1 on failure, 2 for invalid configuration or
//! arguments (and a bad `runnel run` file), 3 when `runnel run` finished
//! with failed runs, 130 when `runnel run` was interrupted.

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
#[command(
    name = "runnel",
    version,
    propagate_version = true,
    after_help = "Start here:
  runnel demo          the whole system with a simulated provider, no set-up
  runnel serve         the HTTP API on 127.0.0.1:8080 (SQLite file runnel.db)
  runnel run FILE      one experiment from a file, with a summary
  runnel config        the effective configuration ('--defaults' for the reference)

Configuration: built-in defaults < runnel.toml < RUNNEL_SECTION__KEY
environment variables < flags. Exit status: 0 ok, 1 error, 2 invalid
configuration or arguments."
)]
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
    ///
    /// Experiments keep running when clients disconnect; a restarted server
    /// (or, on PostgreSQL, another replica) picks up where this one stopped.
    /// Provider entries come from the configuration's [providers.NAME]
    /// tables; the database is migrated at start.
    #[command(after_help = "Examples:
  runnel serve
  runnel serve --bind 127.0.0.1:9000 --database-url sqlite://experiments.db
  RUNNEL_DATABASE__URL=postgres://postgres@127.0.0.1/runnel runnel serve --replica-id a")]
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
    ///
    /// `serve`, `run` and `demo` migrate at start too (database.auto_migrate,
    /// default true); use this when that is switched off.
    #[command(after_help = "Example:
  runnel migrate --database-url postgres://postgres@127.0.0.1:5432/runnel")]
    Migrate {
        /// Database selection.
        #[command(flatten)]
        db: DbArgs,
    },
    /// Print the effective configuration (secrets masked) and exit.
    ///
    /// The output is valid runnel.toml: every key with its value after
    /// defaults, runnel.toml, RUNNEL_… variables and flags are applied.
    #[command(after_help = "Examples:
  runnel config --defaults > runnel.toml    # every key with its default
  RUNNEL_SCHEDULER__MAX_CONCURRENCY=50 runnel config")]
    Config {
        /// Print the built-in defaults instead.
        #[arg(long)]
        defaults: bool,
    },
    /// Serve the simulated LLM provider (OpenAI- and Anthropic-compatible)
    /// until Ctrl-C.
    ///
    /// Real rate limits per key (and model) in the header dialects of real
    /// providers (--dialect), as buckets or windows (--algorithm), with
    /// per-day limits, a hidden client sharing the key and quota exhaustion;
    /// latency, seeded faults and outages, deterministic replies (arithmetic
    /// answers, judge labels).
    /// Point a provider entry at it with kind = "openai_compatible" and
    /// base_url = "http://127.0.0.1:8090/v1".
    #[command(after_help = "Examples:
  runnel sim --rps 20 --per-model --latency 50ms
  runnel sim --rpm 600 --headerless --server-error-rate 0.05 --outage 30s..45s
  runnel sim --rps 20 --rpd 14400 --tpm 6000 --dialect daily
  runnel sim --rps 10 --dialect remaining --algorithm sliding_window --window 10s --hidden-share 0.3
  runnel sim --rpm 600 --quota-after 1000 --quota-style gemini")]
    Sim(Box<runnel_sim::Args>),
    /// Show runnel working, with nothing installed and no network: a
    /// simulated provider with a rate limit, a fresh SQLite file, 300
    /// arithmetic questions, one LLM judge, live progress and a summary;
    /// then the HTTP API keeps serving until Ctrl-C.
    ///
    /// The simulator runs in this process on a free loopback port and stays
    /// configured as provider `sim`, so the API can be tried against it.
    /// The database file (default ./runnel-demo.db) is deleted and created
    /// afresh at every start.
    Demo(Box<crate::demo::DemoArgs>),
    /// Run one experiment from a file, in this process, against the
    /// configured database; print a summary and exit.
    ///
    /// The file (TOML or JSON) names a dataset file (JSON lines or CSV) and
    /// gives the task and evaluators as in POST /v1/experiments, plus
    /// optional provider entries. A bad dataset line is reported with its
    /// number and nothing is stored.
    Run(crate::oneshot::RunArgs),
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
            if let Some(run) = e.downcast_ref::<crate::oneshot::RunError>() {
                eprintln!("error: {run}");
                return ExitCode::from(run.exit_code());
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
        Command::Demo(args) => {
            crate::demo::run((**args).clone(), cli.config.as_deref(), cli.log_format).await
        }
        Command::Run(args) => {
            crate::oneshot::run(args.clone(), cli.config.as_deref(), cli.log_format).await
        }
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
