#![forbid(unsafe_code)]
//! The local two-cluster demo: west's webapp calls east's catalog through east's east-west
//! gateway, with mutual TLS end to end and identities checked on both sides. Then failover
//! and a trust failure. Loopback only; no Kubernetes, no root. Exits 0 only if every check
//! behaved as expected.
//!
//! Addresses stand for the two networks: 127.0.10.x is west's pod network, 127.0.20.x is
//! east's, and 127.0.100.20 is east gateway's load-balancer address.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use examples::mtls::Identity;
use examples::workload;

const CATALOG_HOST: &str = "catalog.istioinaction.svc.cluster.local";
const BACKEND_HOST: &str = "simple-backend.istioinaction.svc.cluster.local";
const CATALOG_ID: &str = "spiffe://cluster.local/ns/istioinaction/sa/catalog";
const WEBAPP_ID: &str = "spiffe://cluster.local/ns/istioinaction/sa/webapp";
const BACKEND_ID: &str = "spiffe://cluster.local/ns/istioinaction/sa/simple-backend";

const EAST_GW: &str = "127.0.100.20:15443";
const EAST_GW_ADMIN: &str = "127.0.100.20:15021";
const CATALOG_POD: &str = "127.0.20.8:3000";
const BACKEND_EAST_POD: &str = "127.0.20.9:8080";
const BACKEND_WEST_POD: &str = "127.0.10.9:8080";

fn sni(port: u16, host: &str) -> String {
    format!("outbound_.{port}_._.{host}")
}

struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Demo {
    bin: PathBuf,
    work: PathBuf,
    checks: Vec<(String, bool)>,
}

impl Demo {
    fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// Runs a CLI step the way a user would, echoing the command.
    fn run(&self, tool: &str, args: &[&str]) -> Result<String> {
        let shown: Vec<String> = args
            .iter()
            .map(|a| a.replace(self.work.to_str().unwrap_or(""), "$WORK"))
            .collect();
        println!("  $ {tool} {}", shown.join(" "));
        let out = Command::new(self.tool(tool))
            .args(args)
            .output()
            .with_context(|| format!("running {tool}"))?;
        if !out.status.success() {
            bail!(
                "{tool} failed:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn spawn(&self, name: &str, tool: &str, args: &[&str]) -> Result<Proc> {
        let log = self.work.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(self.tool(tool))
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            name: name.into(),
            child,
            log,
        })
    }

    fn check(&mut self, what: &str, ok: bool) {
        println!("  {} {what}", if ok { "✔" } else { "✘" });
        self.checks.push((what.into(), ok));
    }
}

fn header(n: u32, title: &str) {
    println!("\n━━ {n}. {title}");
}

/// Waits until `addr` accepts TCP, or the process dies, or 10 s pass.
fn wait_listening(p: &mut Proc, addr: &str) -> Result<()> {
    let addr: SocketAddr = addr.parse()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(status) = p.child.try_wait()? {
            let log = std::fs::read_to_string(&p.log).unwrap_or_default();
            bail!(
                "{} exited ({status}) before listening on {addr}:\n{log}",
                p.name
            );
        }
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "{} did not listen on {addr} within 10 s (log: {})",
        p.name,
        p.log.display()
    )
}

async fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: gateway\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await??;
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((
        code,
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default(),
    ))
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|r| r.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0) as u64
}

async fn metrics() -> Result<String> {
    Ok(http_get(EAST_GW_ADMIN, "/metrics").await?.1)
}

fn opened(m: &str, host: &str) -> u64 {
    metric(
        m,
        &format!(
            "gateway_connections_opened_total{{sni=\"{}\"}}",
            sni(80, host)
        ),
    )
}

async fn run(d: &mut Demo) -> Result<()> {
    let w = d.work.clone();
    let p = |rel: &str| w.join(rel).to_string_lossy().into_owned();

    header(
        1,
        "Common trust: one root, one intermediate CA per cluster (meshctl certs)",
    );
    d.run(
        "meshctl",
        &[
            "certs",
            "init",
            "--clusters",
            "west-cluster,east-cluster",
            "--out",
            &p("certs"),
        ],
    )?;
    let verify = d.run(
        "meshctl",
        &[
            "certs",
            "verify",
            &p("certs/west-cluster"),
            &p("certs/east-cluster"),
        ],
    );
    d.check(
        "both cluster bundles verify and share one root",
        verify.is_ok(),
    );
    for (cluster, ns_sa, dir) in [
        ("east-cluster", ("istioinaction", "catalog"), "east/catalog"),
        (
            "east-cluster",
            ("istioinaction", "simple-backend"),
            "east/simple-backend",
        ),
        ("west-cluster", ("istioinaction", "webapp"), "west/webapp"),
        (
            "west-cluster",
            ("istioinaction", "simple-backend"),
            "west/simple-backend",
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
                ns_sa.0,
                "-s",
                ns_sa.1,
                "--out",
                &p(dir),
            ],
        )?;
    }
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
            "istioinaction",
            "-s",
            "webapp",
            "--out",
            &p("rogue/webapp"),
        ],
    )?;

    header(
        2,
        "East: workloads on east's pod network, and east's east-west gateway",
    );
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
            WEBAPP_ID,
        ],
    )?;
    let mut be_east = d.spawn(
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
    let mut be_west = d.spawn(
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
    wait_listening(&mut catalog, CATALOG_POD)?;
    wait_listening(&mut be_east, BACKEND_EAST_POD)?;
    wait_listening(&mut be_west, BACKEND_WEST_POD)?;
    println!("  catalog              {CATALOG_POD}  ({CATALOG_ID}, east-cluster CA)");
    println!("  simple-backend-east  {BACKEND_EAST_POD}  ({BACKEND_ID}, east-cluster CA)");
    println!("  simple-backend-west  {BACKEND_WEST_POD}  ({BACKEND_ID}, west-cluster CA)");
    let eps = format!(
        "services:\n  - host: {CATALOG_HOST}\n    ports: [{{port: 80, targetPort: 3000}}]\n    endpoints: [{{address: 127.0.20.8}}]\n  - host: {BACKEND_HOST}\n    ports: [{{port: 80, targetPort: 8080}}]\n    endpoints: [{{address: 127.0.20.9}}]\n"
    );
    std::fs::write(w.join("east-endpoints.yaml"), &eps)?;
    println!("  east gateway route table (east-endpoints.yaml):");
    for l in eps.lines() {
        println!("    | {l}");
    }
    let mut gw = d.spawn(
        "east-gateway",
        "gateway",
        &[
            "--listen",
            EAST_GW,
            "--admin",
            EAST_GW_ADMIN,
            "--endpoints",
            &p("east-endpoints.yaml"),
            "--drain-grace",
            "200ms",
            "--drain-timeout",
            "2s",
        ],
    )?;
    // Probe the admin port, not 15443: a bare TCP probe there would count as a rejection.
    wait_listening(&mut gw, EAST_GW_ADMIN)?;
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
        "  $ gateway --listen {EAST_GW} --admin {EAST_GW_ADMIN} --endpoints east-endpoints.yaml"
    );
    d.check(
        &format!("east gateway ready (GET {EAST_GW_ADMIN}/healthz/ready -> {ready})"),
        ready == 200,
    );

    header(
        3,
        "webapp (west) calls catalog (east) through east's gateway",
    );
    let webapp = Identity::load_dir(&w.join("west/webapp"))?;
    let gw_addr: SocketAddr = EAST_GW.parse()?;
    let catalog_sni = sni(80, CATALOG_HOST);
    println!("  webapp  {WEBAPP_ID}  (west-cluster CA)");
    println!("    │  mTLS  SNI {catalog_sni}");
    println!("    │        ALPN istio-peer-exchange, istio");
    println!("    ▼");
    println!(
        "  east-gateway {EAST_GW}: reads the SNI, never terminates TLS, splices to {CATALOG_POD}"
    );
    println!("    ▼");
    match workload::call(
        &webapp,
        gw_addr,
        &catalog_sni,
        Some(CATALOG_ID),
        "GET /items",
    )
    .await
    {
        Ok(r) => {
            println!("  catalog {CATALOG_POD}");
            println!(
                "  webapp verified the server: {} (expected {CATALOG_ID})",
                r.server_id
            );
            println!("  catalog verified the caller: reply {:?}", r.reply);
            println!("  negotiated ALPN: {}", r.alpn.as_deref().unwrap_or("-"));
            d.check(
                "webapp checked catalog's SPIFFE identity",
                r.server_id == CATALOG_ID,
            );
            d.check(
                "catalog checked webapp's SPIFFE identity",
                r.reply.contains(&format!("(caller {WEBAPP_ID})")),
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
        opened(&m, CATALOG_HOST) == 1,
    );

    header(
        4,
        "Failover: simple-backend runs in both clusters; west's instance fails",
    );
    let backend_sni = sni(80, BACKEND_HOST);
    let mut served = Vec::new();
    // The caller's policy is a sidecar's locality failover: local endpoint first, then the
    // remote network's gateway.
    for i in 1..=6 {
        if i == 4 {
            println!("  (stopping simple-backend-west)");
            let _ = be_west.child.kill();
            let _ = be_west.child.wait();
        }
        let local = workload::call(
            &webapp,
            BACKEND_WEST_POD.parse()?,
            &backend_sni,
            Some(BACKEND_ID),
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
                        &webapp,
                        gw_addr,
                        &backend_sni,
                        Some(BACKEND_ID),
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
        opened(&m, BACKEND_HOST) == 3,
    );

    header(
        5,
        "Trust: a client whose certificate comes from another root",
    );
    let rogue_dir = w.join("rogue/webapp");
    // Mallory trusts the real mesh root (so she would accept catalog), but her own
    // certificate chains to a different root.
    let mallory = Identity::from_pems(
        &std::fs::read_to_string(rogue_dir.join("cert-chain.pem"))?,
        &std::fs::read_to_string(rogue_dir.join("key.pem"))?,
        &std::fs::read_to_string(w.join("certs/root-cert.pem"))?,
    )?;
    let before = opened(&metrics().await?, CATALOG_HOST);
    let r = workload::call(
        &mallory,
        gw_addr,
        &catalog_sni,
        Some(CATALOG_ID),
        "GET /items",
    )
    .await;
    let after = opened(&metrics().await?, CATALOG_HOST);
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

    header(6, "The gateway refuses what it cannot route");
    let unknown = sni(80, "payments.istioinaction.svc.cluster.local");
    let r = workload::call(&webapp, gw_addr, &unknown, None, "GET /").await;
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

    header(7, "Graceful stop: SIGTERM drains the gateway");
    let pid = gw.child.id().to_string();
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
        if let Some(s) = gw.child.try_wait()? {
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
    drop((catalog, be_east, be_west));
    Ok(())
}

fn main() -> Result<()> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let keep = std::env::args().any(|a| a == "--keep");
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
    let result = rt.block_on(run(&mut demo));
    let failed: Vec<_> = demo
        .checks
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(w, _)| w.clone())
        .collect();
    println!(
        "\n━━ Result: {} of {} checks passed",
        demo.checks.len() - failed.len(),
        demo.checks.len()
    );
    if !keep && result.is_ok() && failed.is_empty() {
        let _ = std::fs::remove_dir_all(&work);
    } else {
        println!(
            "work dir kept for inspection: {} (logs: *.log)",
            work.display()
        );
    }
    result?;
    if !failed.is_empty() {
        bail!("{} check(s) failed: {}", failed.len(), failed.join("; "));
    }
    Ok(())
}
