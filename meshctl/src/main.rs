#![forbid(unsafe_code)]
//! `meshctl`: the federation CLI. `main` only parses arguments and dispatches; each
//! subcommand lives in its own module with an `Args` type and a `run` function.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cacerts;
mod certs;

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
    /// Print the `cacerts` Secret (YAML) for a cluster bundle directory.
    Cacerts(cacerts::CacertsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Certs(args) => certs::run(args),
        Command::Cacerts(args) => cacerts::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
