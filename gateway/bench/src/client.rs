//! Load generator modes. Each is bounded by a count and a time limit.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;

use crate::backend::{OP_DOWN, OP_ECHO, OP_UP};
use crate::{Target, check_loopback, parse_duration};

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// How a client reaches its target: TCP connect, TCP_NODELAY, then TLS unless `--plain`.
#[derive(Clone)]
struct Dialer {
    t: Target,
    tls: Option<TlsConnector>,
    name: rustls_pki_types::ServerName<'static>,
}

impl Dialer {
    fn new(t: &Target) -> Result<Dialer> {
        check_loopback(&t.target)?;
        let tls = if t.plain {
            None
        } else {
            Some(TlsConnector::from(crate::tls::client_config(&t.certs)?))
        };
        Ok(Dialer {
            t: t.clone(),
            tls,
            name: testkit::mtls::sni_server_name(&t.sni)?,
        })
    }

    async fn dial(&self) -> io::Result<Box<dyn Io>> {
        let s = TcpStream::connect(self.t.target).await?;
        s.set_nodelay(true)?;
        match &self.tls {
            None => Ok(Box::new(s)),
            Some(c) => Ok(Box::new(c.connect(self.name.clone(), s).await?)),
        }
    }

    /// Dial and send the protocol header.
    async fn open(&self, op: u8, n: u64) -> io::Result<Box<dyn Io>> {
        let mut s = self.dial().await?;
        let mut hdr = [0u8; 9];
        hdr[0] = op;
        hdr[1..].copy_from_slice(&n.to_be_bytes());
        s.write_all(&hdr).await?;
        Ok(s)
    }
}

fn hist() -> Histogram<u64> {
    // 1 µs .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| Histogram::new(3).unwrap())
}

fn us(d: Duration) -> u64 {
    d.as_micros().clamp(1, 60_000_000) as u64
}

fn pcts(h: &Histogram<u64>) -> Value {
    json!({
        "count": h.len(),
        "p50_us": h.value_at_quantile(0.50),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
    })
}

/// Counts errors and keeps the first message for the result.
#[derive(Default)]
struct Errors {
    n: AtomicU64,
    first: std::sync::Mutex<Option<String>>,
}

impl Errors {
    fn add(&self, e: &dyn std::fmt::Display) {
        if self.n.fetch_add(1, Ordering::Relaxed) == 0
            && let Ok(mut f) = self.first.lock()
        {
            *f = Some(e.to_string());
        }
    }
    fn json(&self) -> Value {
        let first = self.first.lock().ok().and_then(|f| f.clone());
        json!({"errors": self.n.load(Ordering::Relaxed), "first_error": first})
    }
}

pub(crate) fn merge(into: &mut Value, from: Value) {
    if let (Some(a), Value::Object(b)) = (into.as_object_mut(), from) {
        a.extend(b);
    }
}

// ---------------------------------------------------------------------------------------

#[derive(Args, Debug)]
pub struct ConnrateArgs {
    #[command(flatten)]
    pub t: Target,
    /// Connections in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Upper bound on connections, whatever the duration.
    #[arg(long, default_value_t = 2_000_000)]
    pub max_conns: u64,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// Each connection: TCP connect, TLS handshake through the proxy, 64-byte request echoed
/// back, close_notify + FIN. Counts completed connections per second.
pub async fn connrate(a: ConnrateArgs) -> Result<Value> {
    let d = Arc::new(Dialer::new(&a.t)?);
    let one: OneConn = Arc::new(move || {
        let d = d.clone();
        Box::pin(async move { one_conn(&d).await })
    });
    let mut v = json!({"mode": "connrate", "name": a.t.name});
    merge(
        &mut v,
        conn_loop(a.concurrency, a.duration, a.max_conns, one).await?,
    );
    Ok(v)
}

/// One complete connection (or tunnel) of a connection-rate scenario.
pub(crate) type OneConn = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<()>> + Send>>
        + Send
        + Sync,
>;

/// Runs `one` from `concurrency` tasks until `duration` or `max` attempts; the count, rate
/// and time of completed ones, and errors.
pub(crate) async fn conn_loop(
    concurrency: usize,
    duration: Duration,
    max: u64,
    one: OneConn,
) -> Result<Value> {
    let started = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Errors::default());
    let t0 = Instant::now();
    let deadline = t0 + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (one, started, errors) = (one.clone(), started.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = hist();
            let mut ok = 0u64;
            while Instant::now() < deadline && started.fetch_add(1, Ordering::Relaxed) < max {
                let c0 = Instant::now();
                match tokio::time::timeout(Duration::from_secs(10), one()).await {
                    Ok(Ok(())) => {
                        ok += 1;
                        let _ = h.record(us(c0.elapsed()));
                    }
                    Ok(Err(e)) => {
                        errors.add(&e);
                        // Do not spin on a refused port.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(e) => errors.add(&e),
                }
            }
            (ok, h)
        }));
    }
    let mut ok = 0;
    let mut h = hist();
    for t in tasks {
        let (n, th) = t.await?;
        ok += n;
        h.add(th).ok();
    }
    let secs = t0.elapsed().as_secs_f64();
    let mut v = json!({
        "concurrency": concurrency,
        "seconds": secs, "connections": ok, "conn_per_s": ok as f64 / secs,
        "conn_time": pcts(&h),
    });
    merge(&mut v, errors.json());
    Ok(v)
}

async fn one_conn(d: &Dialer) -> io::Result<()> {
    echo_64(d.open(OP_ECHO, 0).await?).await
}

/// 64 bytes echoed back, then a write shutdown.
pub(crate) async fn echo_64(mut s: Box<dyn Io>) -> io::Result<()> {
    let msg = [7u8; 64];
    s.write_all(&msg).await?;
    let mut back = [0u8; 64];
    s.read_exact(&mut back).await?;
    if back != msg {
        return Err(io::Error::other("echo mismatch"));
    }
    s.shutdown().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------

#[derive(Args, Debug)]
pub struct LatencyArgs {
    #[command(flatten)]
    pub t: Target,
    /// Persistent connections.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Total requests per second over all connections (paced, open loop per connection).
    #[arg(long, default_value_t = 4000)]
    pub rate: u64,
    /// Request and response size in bytes.
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Not recorded: lets caches, allocators and CPU frequency settle.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// Each connection sends a request every `connections / rate` seconds and waits for the
/// echo. Latency runs from the *scheduled* send time to the end of the response, so a stall
/// counts against every request it delays (no coordinated omission).
pub async fn latency(a: LatencyArgs) -> Result<Value> {
    let d = Arc::new(Dialer::new(&a.t)?);
    let mut conns = Vec::new();
    for _ in 0..a.connections.max(1) {
        conns.push(d.open(OP_ECHO, 0).await.context("connect")?);
    }
    let mut v = json!({"mode": "latency", "name": a.t.name});
    merge(
        &mut v,
        paced_echo(conns, a.rate, a.size, a.duration, a.warmup).await?,
    );
    Ok(v)
}

/// The paced request/response loop of [`latency`] over streams already opened in echo mode.
pub(crate) async fn paced_echo(
    conns: Vec<Box<dyn Io>>,
    rate: u64,
    size: usize,
    duration: Duration,
    warmup: Duration,
) -> Result<Value> {
    let n = conns.len().max(1);
    let period = Duration::from_secs_f64(n as f64 / rate.max(1) as f64);
    let errors = Arc::new(Errors::default());
    let t0 = Instant::now();
    let record_from = t0 + warmup;
    let deadline = record_from + duration;
    let mut tasks = Vec::new();
    for (i, mut s) in conns.into_iter().enumerate() {
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = hist();
            let msg = vec![1u8; size];
            let mut back = vec![0u8; size];
            // Spread the connections over one period.
            let start = tokio::time::Instant::now() + period.mul_f64(i as f64 / n as f64);
            let mut tick = tokio::time::interval_at(start, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            loop {
                let planned = tick.tick().await.into_std();
                if planned >= deadline {
                    break;
                }
                let r = async {
                    s.write_all(&msg).await?;
                    s.read_exact(&mut back).await?;
                    io::Result::Ok(())
                };
                match tokio::time::timeout(Duration::from_secs(10), r).await {
                    Ok(Ok(())) => {
                        if planned >= record_from {
                            let _ = h.record(us(planned.elapsed()));
                        }
                    }
                    Ok(Err(e)) => {
                        errors.add(&e);
                        break;
                    }
                    Err(e) => {
                        errors.add(&e);
                        break;
                    }
                }
            }
            let _ = s.shutdown().await;
            h
        }));
    }
    let mut h = hist();
    for t in tasks {
        h.add(t.await?).ok();
    }
    let mut v = json!({
        "connections": n, "rate": rate,
        "size": size, "seconds": duration.as_secs_f64(),
        "achieved_rps": h.len() as f64 / duration.as_secs_f64(),
        "latency": pcts(&h),
    });
    merge(&mut v, errors.json());
    Ok(v)
}

// ---------------------------------------------------------------------------------------

#[derive(Args, Debug)]
pub struct ThroughputArgs {
    #[command(flatten)]
    pub t: Target,
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Per direction.
    #[arg(long, default_value = "4s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Upper bound per connection and direction.
    #[arg(long, default_value_t = 64 << 30)]
    pub bytes: u64,
    /// Processes whose CPU time (utime+stime) to report per GB moved (e.g. the proxy).
    #[arg(long, value_delimiter = ',')]
    pub cpu_pid: Vec<u32>,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// Download (backend to client) for `duration`, then upload for `duration`.
pub async fn throughput(a: ThroughputArgs) -> Result<Value> {
    let d = Arc::new(Dialer::new(&a.t)?);
    let mut v = json!({"mode": "throughput", "name": a.t.name, "connections": a.connections});
    for op in [OP_DOWN, OP_UP] {
        let mut conns = Vec::new();
        for _ in 0..a.connections.max(1) {
            conns.push(d.open(op, a.bytes).await.context("connect")?);
        }
        merge(
            &mut v,
            bulk(op, conns, a.duration, a.bytes, &a.cpu_pid).await?,
        );
    }
    Ok(v)
}

/// One direction of [`throughput`] over streams already opened with `op` (`OP_DOWN` or
/// `OP_UP`): bytes, MB/s, and CPU of `cpu_pid` per GB, keyed `down_*` or `up_*`.
pub(crate) async fn bulk(
    op: u8,
    conns: Vec<Box<dyn Io>>,
    duration: Duration,
    bytes: u64,
    cpu_pid: &[u32],
) -> Result<Value> {
    let label = if op == OP_DOWN { "down" } else { "up" };
    let cpu0 = cpu_ticks(cpu_pid);
    let self0 = cpu_ticks(&[std::process::id()]);
    let t0 = Instant::now();
    let deadline = t0 + duration;
    let mut tasks = Vec::new();
    for mut s in conns {
        let limit = bytes;
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut moved = 0u64;
            while moved < limit {
                let step = async {
                    if op == OP_DOWN {
                        s.read(&mut buf).await
                    } else {
                        let k = (limit - moved).min(buf.len() as u64) as usize;
                        s.write(&buf[..k]).await
                    }
                };
                match tokio::time::timeout_at(deadline.into(), step).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(k)) => moved += k as u64,
                }
            }
            moved
        }));
    }
    let mut moved = 0u64;
    for t in tasks {
        moved += t.await?;
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (cpu_ticks(cpu_pid) - cpu0) as f64 / TICKS;
    let me = (cpu_ticks(&[std::process::id()]) - self0) as f64 / TICKS;
    let gb = moved as f64 / 1e9;
    Ok(json!({
        format!("{label}_bytes"): moved,
        format!("{label}_seconds"): secs,
        format!("{label}_mb_per_s"): moved as f64 / 1e6 / secs,
        format!("{label}_proxy_cpu_s"): cpu,
        format!("{label}_proxy_cpu_s_per_gb"): if gb > 0.0 { cpu / gb } else { 0.0 },
        format!("{label}_client_cpu_s"): me,
    }))
}

/// USER_HZ: 100 on every Linux architecture this runs on.
const TICKS: f64 = 100.0;

/// utime + stime of the processes, in clock ticks (all threads).
fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| {
            let rest = s.rsplit_once(") ")?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            // Fields 14 and 15 of stat(5); `rest` starts at field 3.
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

// ---------------------------------------------------------------------------------------

#[derive(Args, Debug)]
pub struct IdleArgs {
    #[command(flatten)]
    pub t: Target,
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Handshakes in flight while opening.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Processes whose VmRSS to sum (the proxy: all its worker processes).
    #[arg(long, value_delimiter = ',', required = true)]
    pub pid: Vec<u32>,
    /// Wait after the last connection opened before reading RSS again.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub settle: Duration,
    /// Give up opening after this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub open_timeout: Duration,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

/// Opens `connections` TLS connections, each with one 1-byte echo so the proxy has
/// connected upstream and moved data both ways, then holds them idle and reads the proxy's
/// resident memory.
pub async fn idle(a: IdleArgs) -> Result<Value> {
    let d = Arc::new(Dialer::new(&a.t)?);
    let before = rss_kib(&a.pid)?;
    let errors = Arc::new(Errors::default());
    let sem = Arc::new(Semaphore::new(a.concurrency.max(1)));
    let t0 = Instant::now();
    let deadline = t0 + a.open_timeout;
    let mut tasks = Vec::with_capacity(a.connections);
    for _ in 0..a.connections {
        let permit = sem.clone().acquire_owned().await?;
        if Instant::now() >= deadline {
            break;
        }
        let (d, errors) = (d.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let r = async {
                let mut s = d.open(OP_ECHO, 0).await?;
                s.write_all(b"x").await?;
                let mut b = [0u8; 1];
                s.read_exact(&mut b).await?;
                io::Result::Ok(s)
            };
            match tokio::time::timeout(Duration::from_secs(10), r).await {
                Ok(Ok(s)) => Some(s),
                Ok(Err(e)) => {
                    errors.add(&e);
                    None
                }
                Err(e) => {
                    errors.add(&e);
                    None
                }
            }
        }));
    }
    let mut held = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Some(s) = t.await? {
            held.push(s);
        }
    }
    let open_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(a.settle).await;
    let after = rss_kib(&a.pid)?;
    let n = held.len();
    if n == 0 {
        bail!("no connection could be opened: {}", errors.json());
    }
    let delta = after.saturating_sub(before) * 1024;
    let mut v = json!({
        "mode": "idle", "name": a.t.name, "requested": a.connections, "open": n,
        "open_seconds": open_secs, "rss_before_kib": before, "rss_after_kib": after,
        "bytes_per_conn": delta as f64 / n as f64,
    });
    merge(&mut v, errors.json());
    drop(held);
    Ok(v)
}

/// Sum of VmRSS over the processes, in KiB.
fn rss_kib(pids: &[u32]) -> Result<u64> {
    let mut sum = 0;
    for p in pids {
        let s = std::fs::read_to_string(format!("/proc/{p}/status"))
            .with_context(|| format!("reading /proc/{p}/status"))?;
        let line = s
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .with_context(|| format!("no VmRSS for {p}"))?;
        sum += line
            .split_whitespace()
            .nth(1)
            .and_then(|x| x.parse::<u64>().ok())
            .with_context(|| format!("bad VmRSS line {line:?}"))?;
    }
    Ok(sum)
}
