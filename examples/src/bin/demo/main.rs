#![forbid(unsafe_code)]
//! The local two-cluster demo: west's webapp calls east's catalog through east's east-west
//! gateway, with mutual TLS end to end and identities checked on both sides. Then failover,
//! a trust failure, a refusal, ambient (HBONE on 15008 of the same gateway process), a
//! waypoint and a drain. Loopback only; no Kubernetes, no root. Exits 0 only if every check behaved as
//! expected.
//!
//! Addresses stand for the two networks: 127.0.10.x is west's pod network, 127.0.20.x is
//! east's, and 127.0.100.20 is east gateway's load-balancer address.
//!
//! `harness.rs` runs the binaries and records checks; `scenes.rs` holds one function per
//! scene, called in order by [`run`]; `ambient.rs` is the HBONE scene, `waypoint.rs` the
//! waypoint one.

mod ambient;
mod harness;
mod scenes;
mod waypoint;

use anyhow::{Context, Result, bail};
use testkit::mesh::WEBAPP;
use testkit::mtls::Identity;

use harness::Demo;

const EAST_GW: &str = "127.0.100.20:15443";
const EAST_GW_ADMIN: &str = "127.0.100.20:15021";
const CATALOG_POD: &str = "127.0.20.8:3000";
const BACKEND_EAST_POD: &str = "127.0.20.9:8080";
const BACKEND_WEST_POD: &str = "127.0.10.9:8080";
/// The gateway's HBONE listener on the same address, and catalog's pod address on Istio's
/// HBONE port, where its node's ztunnel listens.
const EAST_GW_HBONE: &str = "127.0.100.20:15008";
const CATALOG_HBONE: &str = "127.0.20.8:15008";
/// The gateway's identity: `spiffe://cluster.local/ns/istio-system/sa/istio-eastwestgateway`,
/// as ztunnels expect of a gateway named by `meshctl join --ambient`.
const GATEWAY_NS: &str = "istio-system";
const GATEWAY_SA: &str = "istio-eastwestgateway";

async fn run(d: &mut Demo) -> Result<()> {
    scenes::trust(d)?;
    let mut east = scenes::start_east(d).await?;
    let webapp = Identity::load_dir(&d.work.join("west").join(WEBAPP))?;
    scenes::call(d, &webapp).await?;
    scenes::failover(d, &webapp, &mut east.backend_west).await?;
    scenes::foreign_root(d, &east.catalog).await?;
    scenes::refusal(d, &webapp).await?;
    let gateway_log = east.gateway.log.clone();
    let catalog_zt = ambient::ambient(d, &webapp, &gateway_log).await?;
    waypoint::waypoint(d, &webapp, &catalog_zt, &gateway_log).await?;
    scenes::drain(d, &mut east.gateway).await?;
    Ok(())
}

fn main() -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let keep = examples::stage::keep_flag(
        "demo",
        "The local two-cluster demo: west and east on loopback, classic and ambient, no Kubernetes.",
    );
    let bin = std::env::current_exe()?
        .parent()
        .context("locating the binaries directory")?
        .to_path_buf();
    for tool in ["gateway", "meshctl", "mesh-workload"] {
        if !bin.join(tool).exists() {
            bail!(
                "{} not found next to the demo; build with: cargo build --release -p gateway -p meshctl -p examples",
                bin.join(tool).display()
            );
        }
    }
    let work = std::env::temp_dir().join(format!("meshfed-demo-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    println!(
        "Local two-cluster demo: west and east on loopback (work dir {})",
        work.display()
    );
    let mut demo = Demo {
        bin,
        work: work.clone(),
        checks: vec![],
    };
    let rt = tokio::runtime::Runtime::new()?;
    let result = rt.block_on(examples::stage::until_interrupted(run(&mut demo)));
    examples::stage::conclude(&demo.checks, result, &work, keep)
}
