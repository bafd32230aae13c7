//! The command line: [`Args`] (embedded as `runnel sim …` and
//! `cargo xtask sim …`), turned into a [`SimConfig`], and [`run`], which
//! serves until Ctrl-C.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::config::{
    Algorithm, Dialect, Distribution, OutageMode, OutageWindow, QuotaStyle, SimConfig,
};
use crate::error::Error;
use crate::server::Sim;

/// Where the command line listens when neither `--listen` nor the config
/// file says: a fixed port, so a demo's provider URL can be written down.
pub const DEFAULT_CLI_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8090);

/// Command-line options of the simulator. Every flag overrides the same
/// key of `--config`; what neither sets keeps its `SimConfig` default.
#[derive(clap::Args, Clone, Debug, Default, PartialEq)]
pub struct Args {
    /// JSON file with a SimConfig (all keys optional).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8090].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Seed of the fault and latency draws.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Answer requests without an API key with 401.
    #[arg(long)]
    pub require_key: bool,
    /// Requests per second allowed per key.
    #[arg(long, value_name = "N")]
    pub rps: Option<f64>,
    /// Requests per minute allowed per key.
    #[arg(long, value_name = "N")]
    pub rpm: Option<f64>,
    /// Tokens per minute allowed per key.
    #[arg(long, value_name = "N")]
    pub tpm: Option<f64>,
    /// Bucket capacity as refill time, e.g. "1s" (the default) or "60s".
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
    pub burst: Option<Duration>,
    /// Separate limits per key and model.
    #[arg(long)]
    pub per_model: bool,
    /// Bare 429s, and no rate-limit headers at all (the same as `--dialect none`).
    #[arg(long)]
    pub headerless: bool,
    /// Which provider's rate-limit headers and 429s to imitate [default: openai].
    #[arg(long, value_enum)]
    pub dialect: Option<Dialect>,
    /// How rps, rpm and tpm are enforced [default: bucket].
    #[arg(long, value_enum)]
    pub algorithm: Option<Algorithm>,
    /// Window of the fixed_window and sliding_window algorithms, e.g. "10s" (the default).
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
    pub window: Option<Duration>,
    /// Requests per day allowed per key (fixed days from the start).
    #[arg(long, value_name = "N")]
    pub rpd: Option<f64>,
    /// Share in [0, 1) of every limit used by a hidden second client.
    #[arg(long, value_name = "SHARE")]
    pub hidden_share: Option<f64>,
    /// Answer every request of a key with quota exhaustion after this many admitted.
    #[arg(long, value_name = "N")]
    pub quota_after: Option<u64>,
    /// How quota exhaustion is answered [default: openai].
    #[arg(long, value_enum)]
    pub quota_style: Option<QuotaStyle>,
    /// Base latency before each response, e.g. "200ms".
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
    pub latency: Option<Duration>,
    /// Spread of the latency, e.g. "50ms".
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
    pub jitter: Option<Duration>,
    /// How the spread is drawn.
    #[arg(long, value_enum)]
    pub distribution: Option<Distribution>,
    /// Pause between two streamed events, e.g. "20ms".
    #[arg(long, value_name = "DURATION", value_parser = crate::duration::parse)]
    pub stream_delay: Option<Duration>,
    /// Share of requests answered 500/502/503.
    #[arg(long, value_name = "RATE")]
    pub server_error_rate: Option<f64>,
    /// Share of requests answered 529 overloaded.
    #[arg(long, value_name = "RATE")]
    pub overloaded_rate: Option<f64>,
    /// Share of requests whose connection is reset.
    #[arg(long, value_name = "RATE")]
    pub reset_rate: Option<f64>,
    /// Share of requests answered with a malformed body or event.
    #[arg(long, value_name = "RATE")]
    pub malformed_rate: Option<f64>,
    /// A scheduled outage, "START..END" after start, e.g. "30s..45s" (repeatable).
    #[arg(long, value_name = "START..END", value_parser = parse_window)]
    pub outage: Vec<OutageWindow>,
    /// How requests fail during an outage.
    #[arg(long, value_enum)]
    pub outage_mode: Option<OutageMode>,
    /// Start with the outage switched on (switch it off with POST /admin/config).
    #[arg(long)]
    pub outage_now: bool,
    /// Share of arithmetic questions answered wrongly.
    #[arg(long, value_name = "RATE")]
    pub wrong_rate: Option<f64>,
    /// Length of free-text replies in tokens.
    #[arg(long, value_name = "N")]
    pub text_tokens: Option<u32>,
}

/// Reads `"30s..45s"`.
fn parse_window(text: &str) -> Result<OutageWindow, String> {
    let (start, end) = text.split_once("..").ok_or_else(|| {
        format!("`{text}` is not an outage window (write START..END, e.g. 30s..45s)")
    })?;
    let window = OutageWindow {
        start: crate::duration::parse(start)?,
        end: crate::duration::parse(end)?,
    };
    if window.start >= window.end {
        return Err(format!("outage window `{text}` ends before it starts"));
    }
    Ok(window)
}

impl Args {
    /// The configuration these options describe: the file (if any), then
    /// every flag given, checked.
    pub fn to_config(&self) -> Result<SimConfig, Error> {
        let (mut config, file_sets_listen) = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigFile {
                    path: path.clone(),
                    source,
                })?;
                let doc: serde_json::Value = serde_json::from_str(&text)
                    .map_err(|e| Error::Document(format!("{}: {e}", path.display())))?;
                let sets_listen = doc.get("listen").is_some();
                let config: SimConfig = serde_json::from_value(doc)
                    .map_err(|e| Error::Document(format!("{}: {e}", path.display())))?;
                (config, sets_listen)
            }
            None => (SimConfig::default(), false),
        };
        config.listen = match self.listen {
            Some(addr) => addr,
            None if file_sets_listen => config.listen,
            None => DEFAULT_CLI_LISTEN,
        };
        let set = |target: &mut Option<f64>, value: Option<f64>| {
            if value.is_some() {
                *target = value;
            }
        };
        set(&mut config.limits.rps, self.rps);
        set(&mut config.limits.rpm, self.rpm);
        set(&mut config.limits.tpm, self.tpm);
        config.seed = self.seed.unwrap_or(config.seed);
        config.require_key |= self.require_key;
        config.limits.per_model |= self.per_model;
        config.limits.headerless |= self.headerless;
        let limits = &mut config.limits;
        limits.burst = self.burst.unwrap_or(limits.burst);
        limits.dialect = self.dialect.unwrap_or(limits.dialect);
        limits.algorithm = self.algorithm.unwrap_or(limits.algorithm);
        limits.window = self.window.unwrap_or(limits.window);
        set(&mut limits.rpd, self.rpd);
        limits.hidden_share = self.hidden_share.unwrap_or(limits.hidden_share);
        if self.quota_after.is_some() {
            limits.quota_after = self.quota_after;
        }
        limits.quota_style = self.quota_style.unwrap_or(limits.quota_style);
        let latency = &mut config.latency;
        latency.base = self.latency.unwrap_or(latency.base);
        latency.jitter = self.jitter.unwrap_or(latency.jitter);
        latency.distribution = self.distribution.unwrap_or(latency.distribution);
        latency.stream_chunk_delay = self.stream_delay.unwrap_or(latency.stream_chunk_delay);
        let faults = &mut config.faults;
        faults.server_error_rate = self.server_error_rate.unwrap_or(faults.server_error_rate);
        faults.overloaded_rate = self.overloaded_rate.unwrap_or(faults.overloaded_rate);
        faults.reset_rate = self.reset_rate.unwrap_or(faults.reset_rate);
        faults.malformed_rate = self.malformed_rate.unwrap_or(faults.malformed_rate);
        config.outage.windows.extend(self.outage.iter().copied());
        config.outage.mode = self.outage_mode.unwrap_or(config.outage.mode);
        config.outage.active |= self.outage_now;
        config.replies.wrong_rate = self.wrong_rate.unwrap_or(config.replies.wrong_rate);
        if self.text_tokens.is_some() {
            config.replies.text_tokens = self.text_tokens;
        }
        config.validate()?;
        Ok(config)
    }
}

/// Serves with `args` until Ctrl-C, printing the address at start and the
/// stats at the end. Needs a Tokio runtime with I/O and time enabled.
pub async fn run(args: Args) -> Result<(), Error> {
    let config = args.to_config()?;
    let sim = Sim::start(config).await?;
    let url = sim.url();
    println!("runnel sim listening on {url}");
    println!("  OpenAI:    POST {url}/v1/chat/completions");
    println!("  Anthropic: POST {url}/v1/messages");
    println!("  stats:     GET  {url}/stats   admin: POST {url}/admin/config, {url}/admin/reset");
    let waited = tokio::signal::ctrl_c().await;
    let stats = sim.stats();
    sim.shutdown().await;
    waited.map_err(Error::Signal)?;
    println!(
        "runnel sim stopped: {} requests ({} ok, {} rate limited of which {} quota exhausted, {} 5xx, {} 529, {} reset, {} malformed, {} refused), peak concurrency {}, {} repeated successes, {} hidden requests",
        stats.requests,
        stats.classes.ok,
        stats.classes.rate_limited,
        stats.quota_exhausted,
        stats.classes.server_error,
        stats.classes.overloaded,
        stats.classes.reset,
        stats.classes.malformed,
        stats.classes.refused,
        stats.concurrency.peak,
        stats.repeated_successes,
        stats.hidden,
    );
    Ok(())
}

/// [`run`] on a runtime of its own, for a synchronous `main` such as xtask's.
pub fn run_blocking(args: Args) -> Result<(), Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?
        .block_on(run(args))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(line: &[&str]) -> Result<SimConfig, String> {
        let cli = Cli::try_parse_from(std::iter::once("sim").chain(line.iter().copied()))
            .map_err(|e| e.to_string())?;
        cli.args.to_config().map_err(|e| e.to_string())
    }

    #[test]
    fn flags_become_config() {
        let config = parse(&[
            "--rpm",
            "60",
            "--tpm",
            "1000",
            "--burst",
            "2s",
            "--per-model",
            "--headerless",
            "--latency",
            "200ms",
            "--jitter",
            "50ms",
            "--distribution",
            "normal",
            "--stream-delay",
            "10ms",
            "--server-error-rate",
            "0.1",
            "--reset-rate",
            "0.05",
            "--outage",
            "30s..45s",
            "--outage-mode",
            "503",
            "--wrong-rate",
            "0.2",
            "--text-tokens",
            "12",
            "--seed",
            "7",
        ])
        .unwrap();
        assert_eq!(config.listen, DEFAULT_CLI_LISTEN);
        assert_eq!(config.limits.rpm, Some(60.0));
        assert_eq!(config.limits.tpm, Some(1000.0));
        assert_eq!(config.limits.burst, Duration::from_secs(2));
        assert!(config.limits.per_model && config.limits.headerless);
        assert_eq!(config.latency.base, Duration::from_millis(200));
        assert_eq!(config.latency.distribution, Distribution::Normal);
        assert_eq!(config.faults.reset_rate, 0.05);
        assert_eq!(
            config.outage.windows,
            vec![OutageWindow {
                start: Duration::from_secs(30),
                end: Duration::from_secs(45)
            }]
        );
        assert_eq!(config.outage.mode, OutageMode::Unavailable);
        assert_eq!(config.replies.text_tokens, Some(12));
        assert_eq!(config.seed, 7);
    }

    #[test]
    fn dialect_flags_become_config() {
        let config = parse(&[
            "--rps",
            "20",
            "--dialect",
            "daily",
            "--algorithm",
            "sliding_window",
            "--window",
            "1s",
            "--rpd",
            "14400",
            "--hidden-share",
            "0.3",
            "--quota-after",
            "100",
            "--quota-style",
            "long_retry",
        ])
        .unwrap();
        let limits = &config.limits;
        assert_eq!(limits.dialect, Dialect::Daily);
        assert_eq!(limits.algorithm, Algorithm::SlidingWindow);
        assert_eq!(limits.window, Duration::from_secs(1));
        assert_eq!(limits.rpd, Some(14400.0));
        assert_eq!(limits.hidden_share, 0.3);
        assert_eq!(limits.quota_after, Some(100));
        assert_eq!(limits.quota_style, QuotaStyle::LongRetry);
        for (flag, want) in [
            ("openai", Dialect::OpenAi),
            ("bucket", Dialect::Bucket),
            ("remaining", Dialect::Remaining),
            ("anthropic", Dialect::Anthropic),
            ("together", Dialect::Together),
            ("none", Dialect::None),
        ] {
            assert_eq!(parse(&["--dialect", flag]).unwrap().limits.dialect, want);
        }
        let config = parse(&["--algorithm", "fixed_window", "--quota-style", "gemini"]).unwrap();
        assert_eq!(config.limits.algorithm, Algorithm::FixedWindow);
        assert_eq!(config.limits.quota_style, QuotaStyle::Gemini);
    }

    #[test]
    fn bad_dialect_flags_are_named() {
        let err = parse(&["--hidden-share", "1"]).unwrap_err();
        assert!(err.contains("limits.hidden_share"), "{err}");
        let err = parse(&["--window", "0s"]).unwrap_err();
        assert!(err.contains("limits.window"), "{err}");
        let err = parse(&["--rpd", "0"]).unwrap_err();
        assert!(err.contains("limits.rpd"), "{err}");
        let err = parse(&["--dialect", "groq"]).unwrap_err();
        assert!(err.contains("groq") && err.contains("daily"), "{err}");
    }

    #[test]
    fn bad_flags_are_named() {
        let err = parse(&["--outage", "45s..30s"]).unwrap_err();
        assert!(err.contains("ends before it starts"), "{err}");
        let err = parse(&["--reset-rate", "2"]).unwrap_err();
        assert!(err.contains("faults.reset_rate"), "{err}");
        let err = parse(&["--latency", "soon"]).unwrap_err();
        assert!(err.contains("soon"), "{err}");
    }

    #[test]
    fn file_then_flags() {
        let dir = std::env::temp_dir().join(format!("runnel-sim-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sim.json");
        std::fs::write(
            &path,
            r#"{"listen": "127.0.0.1:0", "limits": {"rps": 3, "rpm": 100}}"#,
        )
        .unwrap();
        let file = path.to_str().unwrap();
        let config = parse(&["--config", file, "--rpm", "50"]).unwrap();
        assert_eq!(config.listen.port(), 0, "the file's address is kept");
        assert_eq!(config.limits.rps, Some(3.0));
        assert_eq!(config.limits.rpm, Some(50.0));
        std::fs::write(&path, r#"{"limitz": {}}"#).unwrap();
        let err = parse(&["--config", file]).unwrap_err();
        assert!(err.contains("limitz") && err.contains("sim.json"), "{err}");
        let err = parse(&["--config", "/nonexistent/sim.json"]).unwrap_err();
        assert!(err.contains("/nonexistent/sim.json"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
