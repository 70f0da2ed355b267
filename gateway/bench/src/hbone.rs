//! HBONE scenarios: the client side of ztunnel (testkit's [`ClientZtunnel`]) against the
//! gateway's HBONE listener (15008) or a destination ztunnel (`hbone-destination`), with the
//! bench protocol inside each tunnel. `--double` runs ztunnel's double HBONE: a second TLS
//! handshake and CONNECT inside the outer tunnel, end to end to a destination ztunnel behind
//! the gateway. Results have the JSON shape of the plain scenarios in `client.rs`.
//!
//! - `hbone-connrate`: each attempt a new outer connection (TCP + TLS + h2) and a tunnel.
//! - `hbone-pooled`: each attempt a new tunnel on a pooled outer connection (ztunnel's case).
//! - `hbone-rr`: closed-loop request/response (64 B) inside long-lived tunnels.
//! - `hbone-throughput`: bulk inside tunnels, download then upload.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::{Value, json};
use testkit::hbone::{ClientZtunnel, DestinationZtunnel, HboneError, OuterConn};
use testkit::mtls::Identity;
use tokio::io::AsyncWriteExt;

use crate::backend::{OP_DOWN, OP_ECHO, OP_UP};
use crate::client::{
    BulkTotal, Io, OneConn, Pace, Window, bulk, conn_loop, echo_64, merge, rr_loop,
};
use crate::cost::CostArgs;
use crate::{check_loopback, parse_duration};

/// What every HBONE client mode needs to reach a target.
#[derive(Args, Clone, Debug)]
pub struct HboneTarget {
    /// The gateway's HBONE listener or a `hbone-destination`; must be in 127.0.0.0/8.
    #[arg(long)]
    pub target: SocketAddr,
    /// `:authority` of each CONNECT: `<service FQDN>:<service port>`.
    #[arg(long, default_value = "bench.default.svc.cluster.local:80")]
    pub authority: String,
    /// Directory written by `certs`: the client's workload certificate and the root it trusts.
    #[arg(long)]
    pub certs: PathBuf,
    /// SPIFFE ids the outer server may present (repeatable; default any under the root).
    #[arg(long)]
    pub server_id: Vec<String>,
    /// Double HBONE: TLS + CONNECT again inside each outer tunnel (through the gateway).
    #[arg(long)]
    pub double: bool,
    /// SPIFFE ids the inner (destination) server may present with `--double`.
    #[arg(long)]
    pub inner_server_id: Vec<String>,
    /// Outer connections the pooled scenarios share (ztunnel pools one per peer).
    #[arg(long, default_value_t = 1)]
    pub outer: usize,
    /// Label stored in the result.
    #[arg(long, default_value = "target")]
    pub name: String,
}

/// An HBONE client (the outer connection, and the inner one with `--double`) for one target.
pub(crate) struct Dialer {
    t: HboneTarget,
    outer: ClientZtunnel,
    inner: ClientZtunnel,
}

fn io_err(e: HboneError) -> io::Error {
    io::Error::other(e)
}

impl Dialer {
    pub(crate) fn new(t: &HboneTarget) -> Result<Arc<Dialer>> {
        check_loopback(&t.target)?;
        let id = Identity::load_dir(&t.certs)
            .with_context(|| format!("loading certificates from {}", t.certs.display()))?;
        Ok(Arc::new(Dialer {
            t: t.clone(),
            outer: ClientZtunnel::from_identity(&id, &t.server_id)?,
            inner: ClientZtunnel::from_identity(&id, &t.inner_server_id)?,
        }))
    }

    async fn connect(&self) -> io::Result<OuterConn> {
        self.outer.connect(self.t.target).await.map_err(io_err)
    }

    /// `outer.max(1)` outer connections, opened up front.
    async fn pool(&self) -> Result<Vec<OuterConn>> {
        let mut pool = Vec::new();
        for _ in 0..self.t.outer.max(1) {
            pool.push(self.connect().await.context("outer connection")?);
        }
        Ok(pool)
    }

    /// A tunnel on `outer` (and, with `--double`, the inner one inside it), with the bench
    /// protocol header sent.
    async fn open(&self, outer: &OuterConn, op: u8, n: u64) -> io::Result<Box<dyn Io>> {
        let t = outer
            .connect_tunnel(&self.t.authority)
            .await
            .map_err(io_err)?;
        let mut s: Box<dyn Io> = if self.t.double {
            // One inner TLS/h2 connection per tunnel, never pooled (as ztunnel does). Its
            // h2 connection lives as long as the stream does.
            let inner = self.inner.connect_over(t).await.map_err(io_err)?;
            Box::new(
                inner
                    .connect_tunnel(&self.t.authority)
                    .await
                    .map_err(io_err)?,
            )
        } else {
            Box::new(t)
        };
        let mut hdr = [0u8; 9];
        hdr[0] = op;
        hdr[1..].copy_from_slice(&n.to_be_bytes());
        s.write_all(&hdr).await?;
        Ok(s)
    }

    fn describe(&self, mode: &str) -> Value {
        json!({"mode": mode, "name": self.t.name, "double": self.t.double,
               "authority": self.t.authority})
    }
}

#[derive(Args, Debug)]
pub struct ConnrateArgs {
    #[command(flatten)]
    pub t: HboneTarget,
    #[command(flatten)]
    pub pace: Pace,
    #[command(flatten)]
    pub cost: CostArgs,
}

/// One attempt of `hbone-connrate`: a new outer connection, a tunnel, 64 B echoed.
pub(crate) fn new_outer(d: &Arc<Dialer>) -> OneConn {
    let d = d.clone();
    Arc::new(move || {
        let d = d.clone();
        Box::pin(async move {
            let outer = d.connect().await?;
            echo_64(d.open(&outer, OP_ECHO, 0).await?).await
        })
    })
}

/// One attempt of `hbone-pooled`: a new tunnel on one of the pooled outer connections (in
/// turn), 64 B echoed.
pub(crate) async fn new_tunnel(d: &Arc<Dialer>) -> Result<OneConn> {
    let pool = Arc::new(d.pool().await?);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let d = d.clone();
    Ok(Arc::new(move || {
        let (d, pool, next) = (d.clone(), pool.clone(), next.clone());
        Box::pin(async move {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % pool.len();
            echo_64(d.open(&pool[i], OP_ECHO, 0).await?).await
        })
    }))
}

/// `n` long-lived echo tunnels over the pooled outer connections (`hbone-rr`).
pub(crate) async fn echo_tunnels(d: &Dialer, n: usize) -> Result<(Vec<Box<dyn Io>>, usize)> {
    let pool = d.pool().await?;
    let mut tunnels = Vec::new();
    for i in 0..n.max(1) {
        let outer = &pool[i % pool.len()];
        tunnels.push(d.open(outer, OP_ECHO, 0).await.context("tunnel")?);
    }
    Ok((tunnels, pool.len()))
}

/// New outer connection + tunnel + 64 B echoed, per attempt.
pub async fn connrate(a: ConnrateArgs) -> Result<Value> {
    let d = Dialer::new(&a.t)?;
    let mut v = d.describe("hbone-connrate");
    merge(&mut v, conn_loop(&a.pace, new_outer(&d), &a.cost).await?);
    Ok(v)
}

/// New tunnel on a pooled outer connection + 64 B echoed, per attempt.
pub async fn pooled(a: ConnrateArgs) -> Result<Value> {
    let d = Dialer::new(&a.t)?;
    let one = new_tunnel(&d).await?;
    let mut v = d.describe("hbone-pooled");
    merge(&mut v, json!({"outer_connections": a.t.outer.max(1)}));
    merge(&mut v, conn_loop(&a.pace, one, &a.cost).await?);
    Ok(v)
}

#[derive(Args, Debug)]
pub struct RrArgs {
    #[command(flatten)]
    pub t: HboneTarget,
    /// Long-lived tunnels, spread over the pooled outer connections; each a closed loop.
    #[arg(long, default_value_t = 32)]
    pub tunnels: usize,
    #[command(flatten)]
    pub window: Window,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[command(flatten)]
    pub cost: CostArgs,
}

/// Closed-loop request/response inside tunnels, as the plain `rr` scenario.
pub async fn rr(a: RrArgs) -> Result<Value> {
    let d = Dialer::new(&a.t)?;
    let (tunnels, outer) = echo_tunnels(&d, a.tunnels).await?;
    let mut v = d.describe("hbone-rr");
    merge(&mut v, json!({"outer_connections": outer}));
    merge(&mut v, rr_loop(tunnels, &a.window, &a.cost).await?);
    Ok(v)
}

#[derive(Args, Debug)]
pub struct ThroughputArgs {
    #[command(flatten)]
    pub t: HboneTarget,
    #[arg(long, default_value_t = 1)]
    pub tunnels: usize,
    /// Per direction.
    #[arg(long, default_value = "4s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Upper bound per tunnel and direction.
    #[arg(long, default_value_t = 64 << 30)]
    pub bytes: u64,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[command(flatten)]
    pub cost: CostArgs,
}

/// Bulk inside tunnels: download for `duration`, then upload.
pub async fn throughput(a: ThroughputArgs) -> Result<Value> {
    let d = Dialer::new(&a.t)?;
    let pool = d.pool().await?;
    let mut v = d.describe("hbone-throughput");
    merge(
        &mut v,
        json!({"connections": a.tunnels.max(1), "outer_connections": pool.len()}),
    );
    let mut total = BulkTotal::default();
    for op in [OP_DOWN, OP_UP] {
        let mut tunnels = Vec::new();
        for i in 0..a.tunnels.max(1) {
            let outer = &pool[i % pool.len()];
            tunnels.push(d.open(outer, op, a.bytes).await.context("tunnel")?);
        }
        let one = bulk(op, tunnels, a.duration, a.bytes, &a.cost).await?;
        merge(&mut v, total.add(one));
    }
    merge(&mut v, total.json());
    Ok(v)
}

#[derive(Args, Debug)]
pub struct DestinationArgs {
    /// HBONE listener (loopback only), e.g. the `podIP:15008` a gateway route points at.
    #[arg(long)]
    pub listen: SocketAddr,
    /// Directory written by `certs`: the destination's workload certificate and root.
    #[arg(long)]
    pub certs: PathBuf,
    /// The app every tunnel is forwarded to: a `backend --plain-listen` address.
    #[arg(long)]
    pub app: SocketAddr,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// A destination ztunnel (testkit's double) in front of a plain backend, until killed.
pub async fn destination(a: DestinationArgs) -> Result<()> {
    check_loopback(&a.listen)?;
    check_loopback(&a.app)?;
    let id = Identity::load_dir(&a.certs)
        .with_context(|| format!("loading certificates from {}", a.certs.display()))?;
    let config = testkit::hbone::tls::server_config(&id)?;
    let d = DestinationZtunnel::start_with(config, a.listen, a.app).await?;
    eprintln!("hbone-destination: listening on {} -> {}", d.addr(), a.app);
    std::future::pending::<()>().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// Test certificates written to `certs`, and the bench backend started with them: its
    /// plain (non-TLS) address, once it listens.
    async fn backend(certs: &std::path::Path) -> SocketAddr {
        crate::tls::write_certs(certs).unwrap();
        let plain = testkit::net::free_addr(Ipv4Addr::LOCALHOST).unwrap();
        tokio::spawn(crate::backend::run(crate::backend::BackendArgs {
            listen: testkit::net::free_addr(Ipv4Addr::LOCALHOST).unwrap(),
            plain_listen: Some(plain),
            certs: certs.to_path_buf(),
            threads: 1,
        }));
        testkit::wait::eventually("the backend listens", Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(plain).await.is_ok()
        })
        .await;
        plain
    }

    /// A plain backend, a destination ztunnel in front of it and another as the outer hop,
    /// all in process; every scenario runs briefly, single and double, without errors.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_hbone_scenario_runs_single_and_double() {
        let certs = std::env::temp_dir().join(format!("sni-bench-hbone-{}", std::process::id()));
        let plain = backend(&certs).await;
        let id = Identity::load_dir(&certs).unwrap();
        let dest = DestinationZtunnel::start(&id, plain).await.unwrap();
        let hop = DestinationZtunnel::start(&id, dest.addr()).await.unwrap();

        for (target, double) in [(dest.addr(), false), (hop.addr(), true)] {
            let t = HboneTarget {
                target,
                authority: "bench.default.svc.cluster.local:80".into(),
                certs: certs.clone(),
                server_id: vec![],
                double,
                inner_server_id: vec![],
                outer: 1,
                name: "test".into(),
            };
            let short = Duration::from_millis(300);
            let rate = || ConnrateArgs {
                t: t.clone(),
                pace: Pace {
                    concurrency: 2,
                    duration: short,
                    max_conns: 50,
                    threads: 1,
                },
                cost: CostArgs::default(),
            };
            let c = connrate(rate()).await.unwrap();
            assert!(c["connections"].as_u64().unwrap() > 0, "{c}");
            assert_eq!(c["errors"], 0, "{c}");
            let p = pooled(rate()).await.unwrap();
            assert!(p["connections"].as_u64().unwrap() > 0, "{p}");
            assert_eq!(p["errors"], 0, "{p}");
            let l = rr(RrArgs {
                t: t.clone(),
                tunnels: 3,
                window: Window {
                    size: 64,
                    duration: short,
                    warmup: Duration::ZERO,
                    max_requests: 10_000,
                },
                threads: 1,
                cost: CostArgs::default(),
            })
            .await
            .unwrap();
            assert!(l["latency"]["count"].as_u64().unwrap() > 0, "{l}");
            assert_eq!(l["errors"], 0, "{l}");
            // The byte count ends the run, not the clock: 16 MiB through two hops of a debug
            // build can take longer than `short` on a loaded machine (a CI run cut it 9 bytes
            // short once).
            let b = throughput(ThroughputArgs {
                t,
                tunnels: 2,
                duration: Duration::from_secs(60),
                bytes: 4 << 20,
                threads: 1,
                cost: CostArgs::default(),
            })
            .await
            .unwrap();
            assert_eq!(b["down_bytes"], 2 * (4u64 << 20), "{b}");
            assert_eq!(b["up_bytes"], 2 * (4u64 << 20), "{b}");
        }
        assert!(dest.requests() > 0 && hop.requests() > 0);
        let _ = std::fs::remove_dir_all(&certs);
    }

    /// `interleaved` with the HBONE scenarios: two hops in front of one destination take
    /// turns (double HBONE through each), each target's file holds only its own attempts,
    /// and both get some without errors.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn interleaved_hbone_turns_reach_each_target() {
        use crate::interleaved::{InterleavedArgs, Scenario, run};
        let dir = std::env::temp_dir().join(format!("sni-bench-hbone-il-{}", std::process::id()));
        let certs = dir.join("certs");
        let plain = backend(&certs).await;
        let id = Identity::load_dir(&certs).unwrap();
        let dest = DestinationZtunnel::start(&id, plain).await.unwrap();
        let a = DestinationZtunnel::start(&id, dest.addr()).await.unwrap();
        let b = DestinationZtunnel::start(&id, dest.addr()).await.unwrap();
        for (scenario, prefix) in [
            (Scenario::HboneConnrate, "new"),
            (Scenario::HbonePooled, "pooled"),
            (Scenario::HboneRr, "rr"),
        ] {
            let args = InterleavedArgs {
                scenario,
                at: vec![("a".into(), a.addr()), ("b".into(), b.addr())],
                pids: vec![],
                tls: crate::Tls {
                    sni: String::new(),
                    certs: certs.clone(),
                },
                size: 64,
                connections: 2,
                authority: "bench.default.svc.cluster.local:80".into(),
                double: true,
                concurrency: 2,
                duration: Duration::from_millis(200),
                warmup: Duration::ZERO,
                slice: Duration::from_millis(50),
                max_work: 10_000,
                proxy_core: None,
                out_dir: dir.clone(),
                prefix: prefix.into(),
                threads: 1,
            };
            let (ra, rb) = (a.requests(), b.requests());
            run(args).await.unwrap();
            for (name, hop, before) in [("a", &a, ra), ("b", &b, rb)] {
                let f = dir.join(format!("{prefix}-{name}.json"));
                let v: Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
                assert_eq!(v["mode"], scenario.mode(), "{v}");
                assert_eq!(v["errors"], 0, "{v}");
                let done = v["connections"]
                    .as_u64()
                    .or(v["requests"].as_u64())
                    .unwrap();
                assert!(done > 0, "{v}");
                assert!(hop.requests() > before, "{prefix}: {name} got tunnels");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
