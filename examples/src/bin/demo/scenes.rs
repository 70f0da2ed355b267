//! The demo's scenes, in the order they run. Each prints its header, does its part and
//! records its checks on [`Demo`]; an `Err` means the demo itself could not go on.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;
use examples::workload;
use testkit::mesh::{self, CATALOG, SIMPLE_BACKEND, WEBAPP};
use testkit::mtls::Identity;

use crate::harness::{Demo, Proc, header, http_get, metric, metrics, opened, wait_listening};
use crate::{
    BACKEND_EAST_POD, BACKEND_WEST_POD, CATALOG_POD, EAST_GW, EAST_GW_ADMIN, EAST_GW_HBONE,
    GATEWAY_NS, GATEWAY_SA,
};

/// East's long-running processes; killed when dropped.
pub struct East {
    pub catalog: Proc,
    /// Only kept running: it answers the failover calls of scene 4.
    pub _backend_east: Proc,
    pub backend_west: Proc,
    pub gateway: Proc,
}

/// Scene 1: Common trust: `meshctl certs` makes one root and a CA per cluster, then workload
/// certificates (and east gateway's own, for HBONE); plus a rogue root for scene 5.
pub fn trust(d: &mut Demo) -> Result<()> {
    let w = d.work.clone();
    let p = |rel: &str| w.join(rel).to_string_lossy().into_owned();
    header(
        1,
        "Common trust: one root, one intermediate CA per cluster (meshctl certs)",
    );
    let clusters = format!("{},{}", mesh::WEST_CLUSTER, mesh::EAST_CLUSTER);
    d.run(
        "meshctl",
        &[
            "certs",
            "init",
            "--clusters",
            &clusters,
            "--out",
            &p("certs"),
        ],
    )?;
    let verify = d.run(
        "meshctl",
        &[
            "certs",
            "verify",
            &p(&format!("certs/{}", mesh::WEST_CLUSTER)),
            &p(&format!("certs/{}", mesh::EAST_CLUSTER)),
        ],
    );
    d.check(
        "both cluster bundles verify and share one root",
        verify.is_ok(),
    );
    for (cluster, sa, dir) in [
        (mesh::EAST_CLUSTER, CATALOG, "east/catalog"),
        (mesh::EAST_CLUSTER, SIMPLE_BACKEND, "east/simple-backend"),
        (mesh::WEST_CLUSTER, WEBAPP, "west/webapp"),
        (mesh::WEST_CLUSTER, SIMPLE_BACKEND, "west/simple-backend"),
        // Catalog's waypoint (scene 8).
        (
            mesh::EAST_CLUSTER,
            crate::waypoint::WAYPOINT,
            "east/waypoint",
        ),
    ] {
        d.run(
            "meshctl",
            &[
                "certs",
                "workload",
                "--ca",
                &p(&format!("certs/{cluster}")),
                "-n",
                mesh::NAMESPACE,
                "-s",
                sa,
                "--out",
                &p(dir),
            ],
        )?;
    }
    // The gateway terminates HBONE's outer mTLS: it needs its own workload certificate.
    d.run(
        "meshctl",
        &[
            "certs",
            "workload",
            "--ca",
            &p(&format!("certs/{}", mesh::EAST_CLUSTER)),
            "-n",
            GATEWAY_NS,
            "-s",
            GATEWAY_SA,
            "--out",
            &p("east/istio-eastwestgateway"),
        ],
    )?;
    // Mallory's certificate comes from a different root: same names, no shared trust.
    d.run(
        "meshctl",
        &[
            "certs",
            "init",
            "--clusters",
            "rogue-cluster",
            "--out",
            &p("rogue"),
        ],
    )?;
    d.run(
        "meshctl",
        &[
            "certs",
            "workload",
            "--ca",
            &p("rogue/rogue-cluster"),
            "-n",
            mesh::NAMESPACE,
            "-s",
            WEBAPP,
            "--out",
            &p("rogue/webapp"),
        ],
    )?;
    Ok(())
}

/// Scene 2: East: the workloads on east's pod network (and west's simple-backend), then east's
/// gateway with a file route table (catalog's endpoint also speaks HBONE), serving 15443 and
/// 15008, awaited until ready.
pub async fn start_east(d: &mut Demo) -> Result<East> {
    let w = d.work.clone();
    let p = |rel: &str| w.join(rel).to_string_lossy().into_owned();
    let (catalog_id, backend_id) = (mesh::spiffe_id(CATALOG), mesh::spiffe_id(SIMPLE_BACKEND));
    header(
        2,
        "East: workloads on east's pod network, and east's east-west gateway",
    );
    let webapp_id = mesh::spiffe_id(WEBAPP);
    let mut catalog = d.spawn(
        "catalog",
        "mesh-workload",
        &[
            "serve",
            "--certs",
            &p("east/catalog"),
            "--listen",
            CATALOG_POD,
            "--name",
            "catalog",
            "--allow-peer",
            &webapp_id,
        ],
    )?;
    let mut backend_east = d.spawn(
        "simple-backend-east",
        "mesh-workload",
        &[
            "serve",
            "--certs",
            &p("east/simple-backend"),
            "--listen",
            BACKEND_EAST_POD,
            "--name",
            "simple-backend-east",
        ],
    )?;
    let mut backend_west = d.spawn(
        "simple-backend-west",
        "mesh-workload",
        &[
            "serve",
            "--certs",
            &p("west/simple-backend"),
            "--listen",
            BACKEND_WEST_POD,
            "--name",
            "simple-backend-west",
        ],
    )?;
    wait_listening(&mut catalog, CATALOG_POD.parse()?)?;
    wait_listening(&mut backend_east, BACKEND_EAST_POD.parse()?)?;
    wait_listening(&mut backend_west, BACKEND_WEST_POD.parse()?)?;
    println!("  catalog              {CATALOG_POD}  ({catalog_id}, east-cluster CA)");
    println!("  simple-backend-east  {BACKEND_EAST_POD}  ({backend_id}, east-cluster CA)");
    println!("  simple-backend-west  {BACKEND_WEST_POD}  ({backend_id}, west-cluster CA)");
    let (catalog_host, backend_host) = (mesh::host(CATALOG), mesh::host(SIMPLE_BACKEND));
    let eps = format!(
        "services:\n  - host: {catalog_host}\n    ports: [{{port: 80, targetPort: 3000}}]\n    endpoints: [{{address: 127.0.20.8, hbone: true}}]\n    traffic_policy: {{connectionPool: {{tcp: {{maxConnections: 1000}}}}, loadBalancer: {{simple: ROUND_ROBIN}}}}\n  - host: {backend_host}\n    ports: [{{port: 80, targetPort: 8080}}]\n    endpoints: [{{address: 127.0.20.9}}]\n"
    );
    std::fs::write(d.work.join("east-endpoints.yaml"), &eps)?;
    println!("  east gateway route table (east-endpoints.yaml):");
    for l in eps.lines() {
        println!("    | {l}");
    }
    let mut gateway = d.spawn(
        "east-gateway",
        "gateway",
        &[
            "--listen",
            EAST_GW,
            "--admin",
            EAST_GW_ADMIN,
            "--endpoints",
            &p("east-endpoints.yaml"),
            "--hbone-listen",
            EAST_GW_HBONE,
            "--hbone-certs",
            &p("east/istio-eastwestgateway"),
            "--drain-grace",
            "200ms",
            "--drain-timeout",
            "2s",
        ],
    )?;
    // Probe the admin port, not 15443: a bare TCP probe there would count as a rejection.
    wait_listening(&mut gateway, EAST_GW_ADMIN.parse()?)?;
    let mut ready = 0;
    for _ in 0..100 {
        ready = http_get(EAST_GW_ADMIN, "/healthz/ready")
            .await
            .map(|r| r.0)
            .unwrap_or(0);
        if ready == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "  $ gateway --listen {EAST_GW} --admin {EAST_GW_ADMIN} --endpoints east-endpoints.yaml \\\n      --hbone-listen {EAST_GW_HBONE} --hbone-certs east/istio-eastwestgateway"
    );
    d.check(
        &format!("east gateway ready (GET {EAST_GW_ADMIN}/healthz/ready -> {ready})"),
        ready == 200,
    );
    // The file's DestinationRule-style policy is read as a rule's would be.
    let routes = http_get(EAST_GW_ADMIN, &format!("/debug/routes?host={catalog_host}"))
        .await
        .map(|r| r.1)
        .unwrap_or_default();
    let applied = routes.contains(r#""max_connections": 1000"#)
        && routes.contains(r#""load_balancer": "ROUND_ROBIN""#);
    d.check(
        "catalog's traffic_policy applied (GET /debug/routes: max_connections 1000, ROUND_ROBIN)",
        applied,
    );
    Ok(East {
        catalog,
        _backend_east: backend_east,
        backend_west,
        gateway,
    })
}

/// Scene 3: The cross-cluster call: webapp (west) reaches catalog (east) only through east's
/// gateway, which splices without terminating TLS; both ends check identities.
pub async fn call(d: &mut Demo, webapp: &Identity) -> Result<()> {
    header(
        3,
        "webapp (west) calls catalog (east) through east's gateway",
    );
    let (catalog_id, webapp_id) = (mesh::spiffe_id(CATALOG), mesh::spiffe_id(WEBAPP));
    let gw_addr: SocketAddr = EAST_GW.parse()?;
    let catalog_sni = mesh::outbound(80, CATALOG);
    println!("  webapp  {webapp_id}  (west-cluster CA)");
    println!("    │  mTLS  SNI {catalog_sni}");
    println!("    │        ALPN istio-peer-exchange, istio");
    println!("    ▼");
    println!(
        "  east-gateway {EAST_GW}: reads the SNI, never terminates TLS, splices to {CATALOG_POD}"
    );
    println!("    ▼");
    match workload::call(
        webapp,
        gw_addr,
        &catalog_sni,
        Some(&catalog_id),
        "GET /items",
    )
    .await
    {
        Ok(r) => {
            println!("  catalog {CATALOG_POD}");
            println!(
                "  webapp verified the server: {} (expected {catalog_id})",
                r.server_id
            );
            println!("  catalog verified the caller: reply {:?}", r.reply);
            println!("  negotiated ALPN: {}", r.alpn.as_deref().unwrap_or("-"));
            d.check(
                "webapp checked catalog's SPIFFE identity",
                r.server_id == catalog_id,
            );
            d.check(
                "catalog checked webapp's SPIFFE identity",
                r.reply.contains(&format!("(caller {webapp_id})")),
            );
        }
        Err(e) => d.check(&format!("cross-cluster call failed: {e}"), false),
    }
    let m = metrics().await?;
    println!("  gateway counters for {catalog_sni}:");
    for series in [
        "connections_opened_total",
        "sent_bytes_total",
        "received_bytes_total",
    ] {
        println!(
            "    gateway_{series} = {}",
            metric(&m, &format!("gateway_{series}{{sni=\"{catalog_sni}\"}}"))
        );
    }
    d.check(
        "the call went through east's gateway (1 connection counted)",
        opened(&m, &mesh::host(CATALOG)) == 1,
    );
    Ok(())
}

/// Scene 4: Locality failover: the caller tries west's simple-backend first, and east's through
/// the gateway once west's instance is stopped.
pub async fn failover(d: &mut Demo, webapp: &Identity, backend_west: &mut Proc) -> Result<()> {
    header(
        4,
        "Failover: simple-backend runs in both clusters; west's instance fails",
    );
    let gw_addr: SocketAddr = EAST_GW.parse()?;
    let backend_id = mesh::spiffe_id(SIMPLE_BACKEND);
    let backend_sni = mesh::outbound(80, SIMPLE_BACKEND);
    let mut served = Vec::new();
    // The caller's policy is a sidecar's locality failover: local endpoint first, then the
    // remote network's gateway.
    for i in 1..=6 {
        if i == 4 {
            println!("  (stopping simple-backend-west)");
            backend_west.child.kill();
        }
        let local = workload::call(
            webapp,
            BACKEND_WEST_POD.parse()?,
            &backend_sni,
            Some(&backend_id),
            &format!("call {i}"),
        )
        .await;
        let (path, r) = match local {
            Ok(r) => ("local", Ok(r)),
            Err(e) => {
                println!(
                    "    call {i}: local endpoint failed ({e}); failing over to east's gateway"
                );
                (
                    "via east gateway",
                    workload::call(
                        webapp,
                        gw_addr,
                        &backend_sni,
                        Some(&backend_id),
                        &format!("call {i}"),
                    )
                    .await,
                )
            }
        };
        match r {
            Ok(r) => {
                println!("    call {i}: {path:17} -> {}", r.reply);
                served.push(r.reply.split(':').next().unwrap_or("").to_string());
            }
            Err(e) => {
                println!("    call {i}: failed: {e}");
                served.push(String::new());
            }
        }
    }
    d.check(
        "calls 1-3 served by simple-backend-west",
        served[..3].iter().all(|s| s == "simple-backend-west"),
    );
    d.check(
        "calls 4-6 served by simple-backend-east through the gateway",
        served[3..].iter().all(|s| s == "simple-backend-east"),
    );
    let m = metrics().await?;
    d.check(
        "gateway counted 3 simple-backend connections",
        opened(&m, &mesh::host(SIMPLE_BACKEND)) == 3,
    );
    Ok(())
}

/// Scene 5: A foreign root: the gateway passes the bytes (it does not judge trust), catalog
/// refuses the handshake and logs it.
pub async fn foreign_root(d: &mut Demo, catalog: &Proc) -> Result<()> {
    header(
        5,
        "Trust: a client whose certificate comes from another root",
    );
    let gw_addr: SocketAddr = EAST_GW.parse()?;
    let (catalog_host, catalog_id) = (mesh::host(CATALOG), mesh::spiffe_id(CATALOG));
    let rogue_dir = d.work.join("rogue/webapp");
    // Mallory trusts the real mesh root (so she would accept catalog), but her own
    // certificate chains to a different root.
    let mallory = Identity::from_pems(
        &std::fs::read_to_string(rogue_dir.join("cert-chain.pem"))?,
        &std::fs::read_to_string(rogue_dir.join("key.pem"))?,
        &std::fs::read_to_string(d.work.join("certs/root-cert.pem"))?,
    )?;
    let before = opened(&metrics().await?, &catalog_host);
    let r = workload::call(
        &mallory,
        gw_addr,
        &mesh::outbound(80, CATALOG),
        Some(&catalog_id),
        "GET /items",
    )
    .await;
    let after = opened(&metrics().await?, &catalog_host);
    match &r {
        Ok(r) => println!("  unexpected success: {}", r.reply),
        Err(e) => println!("  mallory's call failed: {e}"),
    }
    d.check(
        "catalog refused the certificate from another root",
        r.is_err(),
    );
    d.check(
        "the gateway passed the bytes (it does not judge trust)",
        after == before + 1,
    );
    let catalog_log = std::fs::read_to_string(&catalog.log).unwrap_or_default();
    let refusal = catalog_log
        .lines()
        .rev()
        .find(|l| l.contains("refused TLS"))
        .unwrap_or("")
        .to_string();
    println!("  catalog's log: {refusal}");
    d.check("catalog logged the refused handshake", !refusal.is_empty());
    Ok(())
}

/// Scene 6: An SNI the gateway has no route for: closed and counted as `no_route`.
pub async fn refusal(d: &mut Demo, webapp: &Identity) -> Result<()> {
    header(6, "The gateway refuses what it cannot route");
    let gw_addr: SocketAddr = EAST_GW.parse()?;
    let unknown = mesh::outbound(80, "payments");
    let r = workload::call(webapp, gw_addr, &unknown, None, "GET /").await;
    let m = metrics().await?;
    let no_route = metric(
        &m,
        "gateway_connections_rejected_total{reason=\"no_route\"}",
    );
    println!(
        "  SNI {unknown}: {}",
        r.as_ref()
            .err()
            .map(String::as_str)
            .unwrap_or("connected?!")
    );
    d.check(
        "unknown service closed and counted as no_route",
        r.is_err() && no_route == 1,
    );
    println!("  rejections by reason:");
    for l in m
        .lines()
        .filter(|l| l.starts_with("gateway_connections_rejected_total{") && !l.ends_with(" 0"))
    {
        println!("    {l}");
    }
    Ok(())
}

/// Scene 9: SIGTERM: readiness fails during the drain grace, then the gateway exits 0.
pub async fn drain(d: &mut Demo, gateway: &mut Proc) -> Result<()> {
    header(9, "Graceful stop: SIGTERM drains the gateway");
    let pid = gateway.child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status()?;
    tokio::time::sleep(Duration::from_millis(60)).await;
    let during = http_get(EAST_GW_ADMIN, "/healthz/ready")
        .await
        .map(|r| r.0)
        .unwrap_or(0);
    d.check(
        &format!("readiness fails while draining ({during})"),
        during == 503,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = gateway.child.try_wait()? {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    d.check(
        "gateway exited 0 after the drain",
        status.is_some_and(|s| s.success()),
    );
    Ok(())
}
