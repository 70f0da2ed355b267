//! `sni-bench`: load generator, TLS backend and forwarding experiment for comparing the
//! gateway with HAProxy and nginx on loopback. See `gateway/bench/README.md`.
//!
//! Every client mode is bounded by a count and a time limit, and refuses targets outside
//! 127.0.0.0/8. Results are printed as one JSON object on stdout; `report` turns a directory
//! of them into the markdown table.

mod backend;
mod client;
mod cost;
mod hbone;
mod interleaved;
mod report;
mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(about = "SNI proxy benchmark: load generator, TLS backend, forwarders, report")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a test PKI (cert-chain.pem, key.pem, root-cert.pem) into a directory.
    Certs {
        #[arg(long)]
        dir: PathBuf,
    },
    /// TLS (and optionally plain TCP) backend speaking the bench protocol.
    Backend(backend::BackendArgs),
    /// New TLS connections per second: handshake, one small request/response, close.
    Connrate(client::ConnrateArgs),
    /// Closed-loop request/response over persistent connections: requests, proxy cost, latency.
    Rr(client::RrArgs),
    /// `rr`, `connrate` or an HBONE scenario through several targets in turns, so that a
    /// change of the host's state falls on all alike; one result file per target, in that
    /// mode's shape.
    Interleaved(interleaved::InterleavedArgs),
    /// Bulk transfer, download then upload; MB/s.
    Throughput(client::ThroughputArgs),
    /// Open many idle connections and measure the proxy's resident memory per connection.
    Idle(client::IdleArgs),
    /// HBONE: a new outer connection (mTLS + h2) and tunnel per attempt, 64 B echoed.
    HboneConnrate(hbone::ConnrateArgs),
    /// HBONE: a new tunnel on a pooled outer connection per attempt, 64 B echoed.
    HbonePooled(hbone::ConnrateArgs),
    /// HBONE: closed-loop 64 B request/response inside long-lived tunnels.
    HboneRr(hbone::RrArgs),
    /// HBONE: bulk inside tunnels, download then upload; MB/s.
    HboneThroughput(hbone::ThroughputArgs),
    /// A destination ztunnel (HBONE server on a pod's 15008) in front of a plain backend.
    HboneDestination(hbone::DestinationArgs),
    /// Render result JSON files of one run as a markdown table.
    Report(report::ReportArgs),
    /// Print the percentage of a result's measured window the hypervisor stole from the
    /// proxy's core (0 when the result has no steal figure), then `retry` when that is over
    /// the limit above which run.sh measures the window again, else `ok`.
    StealShare { file: PathBuf },
    /// Print the percentage of `--window` that core `--core` was busy, counted as the cost
    /// figures are (the window less the core's idle, iowait and steal time).
    CoreBusy {
        #[arg(long)]
        core: usize,
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        window: Duration,
    },
}

/// What a client's TLS needs: the name it asks for and the root it trusts.
#[derive(Args, Clone, Debug)]
pub struct Tls {
    /// SNI sent in the ClientHello.
    #[arg(
        long,
        default_value = "outbound_.80_._.bench.default.svc.cluster.local"
    )]
    pub sni: String,
    /// Directory written by `certs` (the client trusts its root).
    #[arg(long)]
    pub certs: PathBuf,
}

/// What every client mode needs to reach a target.
#[derive(Args, Clone, Debug)]
pub struct Target {
    /// Address of the proxy (or of the backend for `direct`); must be in 127.0.0.0/8.
    #[arg(long)]
    pub target: SocketAddr,
    #[command(flatten)]
    pub tls: Tls,
    /// Plain TCP instead of TLS (splice experiment only).
    #[arg(long)]
    pub plain: bool,
    /// Label stored in the result.
    #[arg(long, default_value = "target")]
    pub name: String,
}

pub fn parse_duration(s: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(s)
}

/// Refuses anything outside loopback: this tool must never send traffic off the machine.
pub fn check_loopback(addr: &SocketAddr) -> Result<()> {
    match addr {
        SocketAddr::V4(a) if a.ip().octets()[0] == 127 => Ok(()),
        _ => bail!("{addr} is not in 127.0.0.0/8; sni-bench only talks to loopback"),
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Certs { dir } => tls::write_certs(&dir),
        Cmd::Report(a) => report::run(&a),
        Cmd::StealShare { file } => {
            let read = std::fs::read(&file).map_err(anyhow::Error::from);
            let v: serde_json::Value = read
                .and_then(|b| Ok(serde_json::from_slice(&b)?))
                .with_context(|| format!("{}: not a result file", file.display()))?;
            let pct = report::steal_share(&v) * 100.0;
            let verdict = if report::disturbed(&v) { "retry" } else { "ok" };
            println!("{pct:.1} {verdict}");
            Ok(())
        }
        Cmd::CoreBusy { core, window } => {
            let share = cost::busy_share(core, window)
                .with_context(|| format!("/proc/stat has no line for cpu{core}"))?;
            println!("{:.0}", share * 100.0);
            Ok(())
        }
        Cmd::Backend(a) => runtime(a.threads)?.block_on(backend::run(a)),
        Cmd::Connrate(a) => print(runtime(a.pace.threads)?.block_on(client::connrate(a))?),
        Cmd::Rr(a) => print(runtime(a.threads)?.block_on(client::rr(a))?),
        Cmd::Interleaved(a) => print(runtime(a.threads)?.block_on(interleaved::run(a))?),
        Cmd::Throughput(a) => print(runtime(a.threads)?.block_on(client::throughput(a))?),
        Cmd::Idle(a) => print(runtime(a.threads)?.block_on(client::idle(a))?),
        Cmd::HboneConnrate(a) => print(runtime(a.pace.threads)?.block_on(hbone::connrate(a))?),
        Cmd::HbonePooled(a) => print(runtime(a.pace.threads)?.block_on(hbone::pooled(a))?),
        Cmd::HboneRr(a) => print(runtime(a.threads)?.block_on(hbone::rr(a))?),
        Cmd::HboneThroughput(a) => print(runtime(a.threads)?.block_on(hbone::throughput(a))?),
        Cmd::HboneDestination(a) => runtime(a.threads)?.block_on(hbone::destination(a)),
    }
}

fn runtime(threads: usize) -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?)
}

fn print(v: serde_json::Value) -> Result<()> {
    println!("{v}");
    Ok(())
}
