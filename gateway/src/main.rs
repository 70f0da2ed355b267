#![forbid(unsafe_code)]
//! `gateway`: Istio-compatible east-west gateway.

use std::io::IsTerminal;

use clap::FromArgMatches;
use clap::parser::ValueSource;
use gateway::config::{self, Args, LogFormat};
use gateway::{app, fd_limit, pipes, runtime};
use tracing_subscriber::EnvFilter;

// tokio allocates every task cell and I/O registration 128-byte aligned, which
// glibc serves on its slow memalign path; mimalloc takes about 10 % off the
// instructions per connection (gateway/PERFORMANCE.md, change 15).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The log filter without `RUST_LOG`. notify logs a watch of a removed directory it could not
/// remove (info and warn) though the gateway has already set its watches again.
const DEFAULT_LOG: &str = "info,notify=error";

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line, each cause once, no backtrace: the message names the fix.
            eprintln!("error: {}", error_text(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, leaving out a cause whose text the message before it
/// already holds (errors here often repeat their source in their own message).
fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn run() -> anyhow::Result<()> {
    // One crypto provider per process, chosen here (kube's client has none by itself).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // A `GATEWAY_*` variable set but empty counts as unset (logged once logging is on).
    let (mut command, empty_env) = config::command();
    let matches = command.clone().get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let defaulted = |id: &str| matches.value_source(id) == Some(ValueSource::DefaultValue);
    let defaulted = fd_limit::Defaulted {
        max_connections: defaulted("max_connections"),
        max_undecided: defaulted("max_undecided"),
        hbone_max_connections: defaulted("hbone_max_connections"),
        hbone_max_tunnels: defaulted("hbone_max_tunnels"),
    };
    if let Err(msg) = args.check() {
        command
            .error(clap::error::ErrorKind::ArgumentConflict, msg)
            .exit();
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Plain => builder.init(),
    }
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    let tokio_env = std::env::var(runtime::TOKIO_ENV).ok();
    let workers = runtime::checked_workers(args.workers, tokio_env.as_deref(), available)
        .unwrap_or_else(|msg| {
            command
                .error(clap::error::ErrorKind::InvalidValue, msg)
                .exit()
        });
    // The runtime, then SIGHUP taken over, before anything slow (the first read of a large
    // endpoints file, the first Kubernetes sync): until then its default action would end the
    // process, as a config reloader or logrotate sends it at any time.
    let rt = runtime::build(workers)?;
    let hangup = {
        let _in_runtime = rt.enter();
        app::hangup()
    };
    if !empty_env.is_empty() {
        tracing::info!(
            variables = %empty_env.join(","),
            "environment variables set but empty are taken as unset"
        );
    }
    let mut cfg = args.into_config();
    let limit = fd_limit::raise();
    let plan = fd_limit::plan(limit.soft(), &fd_limit::Limits::of(&cfg), defaulted);
    plan.limits.apply(&mut cfg);
    pipes::set_max(plan.pipes);
    tracing::info!(config = ?cfg, workers, splice_pipes = plan.pipes, "starting gateway");
    match limit {
        fd_limit::Raised::Already(_) => {}
        fd_limit::Raised::To { from, to } => {
            tracing::info!(from, to, "descriptor limit raised to the hard limit")
        }
        fd_limit::Raised::Refused { soft, wanted } => {
            tracing::warn!(soft, wanted, "could not raise the descriptor limit")
        }
    }
    for msg in plan.lowered.iter().chain(&plan.short) {
        tracing::warn!("{msg}");
    }
    rt.block_on(async {
        let bound = app::build_with(cfg, hangup).await?;
        let outcome = bound.wait_termination().await?;
        tracing::info!(forced = outcome.forced, "gateway stopped");
        anyhow::Ok(())
    })
}
