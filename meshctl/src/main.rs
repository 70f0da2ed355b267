#![forbid(unsafe_code)]
//! `meshctl`: the federation CLI. `main` only parses arguments and dispatches.
//!
//! Where each concern lives (data flows down this list; nothing imports upwards):
//! - `cmd/<command>.rs`: one module per subcommand, its clap `Args` and its `run`. A command
//!   validates its flags, calls `mesh` and `kube`, and prints. No command imports another.
//! - `cmd/check/`: gather, then decide. `gather.rs` makes the API calls and returns plain
//!   `facts.rs` (typed k8s_openapi objects); `rules/` judges them with pure functions (no
//!   `async`, unit-tested with hand-built facts) into `report.rs` items; `mod.rs` sequences the
//!   two and prints the report.
//! - `mesh/`: the mesh's objects and the steps that apply them, shared by several commands:
//!   the `cacerts` Secret, istiod's namespace, the east-west gateway, the remote secret (its
//!   shape in `remote_secret.rs`, minting its credential in `reader.rs`), the reader role and
//!   the `istio-remote` Gateways that announce peer networks to ztunnels (`ambient.rs`).
//! - `cli.rs`: flags declared once and flattened into commands (`--kubeconfig`/`--context`,
//!   `-n`, `--dry-run`/`-o`, `--force`/`--show-secrets`, the gateway and remote-secret groups)
//!   and `CONTEXT=VALUE` parsing; `UsageError`, a wrong flag found after parsing, which
//!   exits 2 like clap's own usage errors (every other failure exits 1).
//! - `cmd/credentials/`: `status`, `refresh` and `cronjob` for the remote secrets'
//!   credentials (reading them is `mesh/credentials.rs`).
//! - `istio.rs`: every Istio and Kubernetes name meshctl depends on (labels, annotations,
//!   Secret names, gateway names and ports, managed-by), defined once.
//! - `kube/`: plumbing with no mesh knowledge: kubeconfig reading (`config.rs`, and
//!   `parse.rs`, whose errors never quote the text), one cluster's get/list/apply/delete
//!   (`api.rs`), failed-request meaning (`errors.rs`), name formats (`names.rs`), printing
//!   with private keys redacted (`render.rs`, `redact.rs`).
//!
//! So a command reads flags (`cli`) → builds objects (`mesh`, with names from `istio`) →
//! applies or reads them through `kube` → prints through `kube::render` or `check`'s report.
//!
//! Differences from the layout proposed in design/review-2026-12.md: shared builders got
//! their own `mesh/` folder rather than `istio.rs` or `kube/` (they are mesh objects, not
//! names or plumbing); `check`'s facts sit in their own leaf module so that `gather` and
//! `rules` never import `check/mod.rs` (which imports them), and its rules are three files
//! (cluster, pair, mesh) to stay a few hundred lines each.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;
mod cmd;
mod istio;
mod kube;
mod mesh;

use cmd::{cacerts, certs, check, credentials, gateway, join, label, remote_secret, rotate};

#[derive(Debug, Parser)]
#[command(
    name = "meshctl",
    version,
    about = "Multi-cluster mesh federation tool"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, verify and inspect the shared-trust certificates (root, per-cluster CAs, workloads).
    Certs(certs::CertsArgs),
    /// `cacerts DIR` prints the `cacerts` Secret; `cacerts apply DIR` applies it to a cluster.
    Cacerts(cacerts::CacertsArgs),
    /// Print the Secret another cluster's istiod uses to read this cluster (istioctl's shape).
    CreateRemoteSecret(remote_secret::CreateRemoteSecretArgs),
    /// Label istiod's namespace with the cluster's network (topology.istio.io/network).
    LabelNetwork(label::LabelNetworkArgs),
    /// Print or install the east-west gateway.
    Gateway(gateway::GatewayArgs),
    /// Join clusters into one multi-network mesh: cacerts, networks, gateways, remote secrets.
    Join(join::JoinArgs),
    /// Remove everything `join` created (objects labelled app.kubernetes.io/managed-by=meshctl).
    Unjoin(join::UnjoinArgs),
    /// Rotate the root of every cluster in three steps: prepare, activate, finish.
    Rotate(rotate::RotateArgs),
    /// Check that clusters are joined: per cluster and per pair, with a hint per failure
    /// (`-o text`, the default, is the readable checklist; `-o json|yaml` are for machines).
    Check(check::CheckArgs),
    /// Remote secrets' credentials: status (expiry), refresh (re-issue expiring tokens), cronjob.
    Credentials(credentials::CredentialsArgs),
}

fn main() -> ExitCode {
    kube::init_crypto();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Certs(args) => certs::run(args),
        Command::Cacerts(args) => cacerts::run(args),
        Command::CreateRemoteSecret(args) => remote_secret::run(args),
        Command::LabelNetwork(args) => label::run(args),
        Command::Gateway(args) => gateway::run(args),
        Command::Join(args) => join::run_join(args),
        Command::Unjoin(args) => join::run_unjoin(args),
        Command::Rotate(args) => rotate::run(args),
        Command::Check(args) => check::run(args),
        Command::Credentials(args) => credentials::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            exit_code(&e)
        }
    }
}

/// 2 for a usage error (`cli::UsageError`: a flag's value or combination is wrong), as clap
/// exits for the usage errors it finds; 1 for any other failure.
fn exit_code(e: &anyhow::Error) -> ExitCode {
    if e.chain().any(|c| c.is::<cli::UsageError>()) {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

/// An error and its causes on one line, leaving out a cause whose text the message before it
/// already ends with (an I/O error wrapped with its own text would print twice).
fn error_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
