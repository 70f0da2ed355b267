#![forbid(unsafe_code)]
//! `rotation-demo`: a staged root rotation (`meshctl rotate prepare|activate|finish`) across
//! three clusters, shown end to end. The clusters are Kubernetes API TEST SERVERS in this
//! process (in memory, loopback); every `meshctl` command runs as its own process, as a user
//! would run it; after each step `meshctl check` shows each cluster's stage, and workloads
//! with certificates of the old and the new root call each other over real mTLS through a
//! gateway process. Exits non-zero if any expectation fails. No Kubernetes, no root.
//!
//! `harness.rs` runs the binaries and records checks; `clusters.rs` holds the test servers;
//! `calls.rs` the gateway and the mTLS calls; `stages.rs` one function per scene.

mod calls;
mod clusters;
mod harness;
mod stages;

use anyhow::{Context, Result};

use clusters::{Clusters, NAMES};
use harness::{Demo, private_dir};
use stages::Rotation;

async fn run(d: &mut Demo) -> Result<()> {
    let clusters = Clusters::start(&d.work.join("kube")).await?;
    println!(
        "  export KUBECONFIG={}",
        d.kubeconfig.replace(&*d.work.to_string_lossy(), "$WORK")
    );
    let mut r = Rotation {
        clusters,
        gateway: None,
    };
    r.trust(d)?;
    r.dry_run(d)?;
    r.interrupted(d)?;
    r.prepared(d)?;
    r.activated(d)?;
    r.finished(d)?;
    Ok(())
}

fn main() -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let keep = examples::stage::keep_flag(
        "rotation-demo",
        "Rotating the mesh's root CA under traffic, on loopback (README, \"Rotating trust\").",
    );
    let bin = std::env::current_exe()?
        .parent()
        .context("locating the binaries directory")?
        .to_path_buf();
    stages::require_bins(&bin)?;
    let work = std::env::temp_dir().join(format!("meshfed-rotation-demo-{}", std::process::id()));
    private_dir(&work)?;
    println!(
        "Root rotation across three clusters ({}) on loopback (work dir {})",
        NAMES.join(", "),
        work.display()
    );
    let kubeconfig = std::env::join_paths(
        NAMES
            .iter()
            .map(|n| work.join("kube").join(format!("{n}.kubeconfig"))),
    )?
    .to_string_lossy()
    .into_owned();
    let mut demo = Demo {
        bin,
        work: work.clone(),
        kubeconfig,
        checks: vec![],
    };
    // Multi-threaded: the test servers answer on worker threads while a meshctl process runs.
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(examples::stage::until_interrupted(run(&mut demo)));
    examples::stage::conclude(&demo.checks, result, &work, keep)
}
