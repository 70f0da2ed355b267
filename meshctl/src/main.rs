#![forbid(unsafe_code)]
//! `meshctl`: the federation CLI. `main` only parses arguments and dispatches; each
//! subcommand lives in its own module with an `Args` type and a `run` function.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cacerts;
mod certs;
mod check;
mod gateway_manifest;
mod join;
mod kube_client;
mod label;
mod redact;
mod reader_rules;
mod remote_secret;

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
    Gateway(gateway_manifest::GatewayArgs),
    /// Join clusters into one multi-network mesh: cacerts, networks, gateways, remote secrets.
    Join(join::JoinArgs),
    /// Remove everything `join` created (objects labelled app.kubernetes.io/managed-by=meshctl).
    Unjoin(join::UnjoinArgs),
    /// Check that clusters are joined: per cluster and per pair, with a hint per failure.
    Check(check::CheckArgs),
}

fn main() -> ExitCode {
    kube_client::init_crypto();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Certs(args) => certs::run(args),
        Command::Cacerts(args) => cacerts::run(args),
        Command::CreateRemoteSecret(args) => remote_secret::run(args),
        Command::LabelNetwork(args) => label::run(args),
        Command::Gateway(args) => gateway_manifest::run(args),
        Command::Join(args) => join::run_join(args),
        Command::Unjoin(args) => join::run_unjoin(args),
        Command::Check(args) => check::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
