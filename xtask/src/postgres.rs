//! Finding, starting or installing the PostgreSQL the tests use.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Returns a PostgreSQL URL that accepts connections, starting the local
/// cluster (or installing it from Debian's packages) when needed.
pub(crate) fn ensure_running() -> Result<String> {
    let url = std::env::var("RUNNEL_TEST_POSTGRES_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned());
    let addr = host_port(&url).with_context(|| format!("cannot read host and port from {url}"))?;
    if reachable(&addr) {
        return Ok(url);
    }
    if !Path::new("/etc/postgresql").exists() {
        eprintln!("xtask: PostgreSQL is not installed; installing it from Debian's packages");
        run("apt-get", &["update", "-q"])?;
        run("apt-get", &["install", "-y", "-q", "postgresql"])?;
    }
    for version in std::fs::read_dir("/etc/postgresql").context("reading /etc/postgresql")? {
        let version = version?.file_name().to_string_lossy().into_owned();
        eprintln!("xtask: starting PostgreSQL {version}");
        // A cluster that is already starting makes this fail; readiness below decides.
        let _ = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &version, "main", "start"])
            .status();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if reachable(&addr) {
            return Ok(url);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    bail!(
        "PostgreSQL does not accept connections at {addr} after starting it; \
         the PostgreSQL tests cannot run (set RUNNEL_TEST_POSTGRES_URL to a reachable server)"
    )
}

fn host_port(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit('@').next()?;
    Some(if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    })
}

fn reachable(addr: &str) -> bool {
    let Ok(mut addrs) = addr.to_socket_addrs() else {
        return false;
    };
    addrs.any(|a| TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok())
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let status = Command::new(program)
        .args(args)
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("{program} {} failed ({status})", args.join(" "));
    }
    Ok(())
}
