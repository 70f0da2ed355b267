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
use crate::cost::{Cost, CostArgs, Meter, process_ticks};
use crate::{Target, check_loopback, parse_duration};

/// A stream the load runs over. `unread` says where bytes not yet read by the load are, for
/// the message of a stalled connection: in the kernel's receive queue (the client missed
/// them), or nowhere (they were never sent).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {
    fn unread(&mut self) -> String {
        String::new()
    }
}

impl Io for TcpStream {
    fn unread(&mut self) -> String {
        receive_queue(self)
    }
}

impl Io for tokio_rustls::client::TlsStream<TcpStream> {
    fn unread(&mut self) -> String {
        let (tcp, tls) = self.get_mut();
        let mut plain = [0u8; 1];
        let held = match std::io::Read::read(&mut tls.reader(), &mut plain) {
            Ok(0) => "EOF".to_string(),
            Ok(_) => "plaintext".to_string(),
            Err(e) => e.kind().to_string(),
        };
        format!("{}, rustls reader: {held}", receive_queue(tcp))
    }
}

impl Io for testkit::hbone::Tunnel {}
impl Io for tokio::io::DuplexStream {}

fn receive_queue(tcp: &TcpStream) -> String {
    match rustix::io::ioctl_fionread(tcp) {
        Ok(n) => format!("{n} B unread in the kernel's receive queue"),
        Err(e) => format!("receive queue unknown ({e})"),
    }
}

/// How long one stage of a connection (connect, handshake, a write, a read) may take before
/// it fails naming itself: a stall then says where it was.
const STAGE_LIMIT: Duration = Duration::from_secs(10);
/// The bound on one whole connection of a connection-rate run, above the stages' own.
const CONN_LIMIT: Duration = Duration::from_secs(60);

/// `f` within [`STAGE_LIMIT`]; its errors, and its timeout, are prefixed with `what`.
pub(crate) async fn stage<T>(what: &str, f: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    match tokio::time::timeout(STAGE_LIMIT, f).await {
        Ok(r) => r.map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}"))),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what}: nothing for {} s", STAGE_LIMIT.as_secs()),
        )),
    }
}

/// How a client reaches its target: TCP connect, TCP_NODELAY, then TLS unless `--plain`.
#[derive(Clone)]
pub(crate) struct Dialer {
    t: Target,
    tls: Option<TlsConnector>,
    name: rustls_pki_types::ServerName<'static>,
}

impl Dialer {
    pub(crate) fn new(t: &Target) -> Result<Dialer> {
        check_loopback(&t.target)?;
        let tls = if t.plain {
            None
        } else {
            Some(TlsConnector::from(crate::tls::client_config(&t.tls.certs)?))
        };
        Ok(Dialer {
            t: t.clone(),
            tls,
            name: testkit::mtls::sni_server_name(&t.tls.sni)?,
        })
    }

    async fn dial(&self) -> io::Result<Box<dyn Io>> {
        let s = stage("tcp connect", TcpStream::connect(self.t.target)).await?;
        s.set_nodelay(true)?;
        match &self.tls {
            None => Ok(Box::new(s)),
            Some(c) => Ok(Box::new(
                stage("tls handshake", c.connect(self.name.clone(), s)).await?,
            )),
        }
    }

    /// Dial and send the protocol header.
    pub(crate) async fn open(&self, op: u8, n: u64) -> io::Result<Box<dyn Io>> {
        let mut s = self.dial().await?;
        let mut hdr = [0u8; 9];
        hdr[0] = op;
        hdr[1..].copy_from_slice(&n.to_be_bytes());
        stage("protocol header", s.write_all(&hdr)).await?;
        Ok(s)
    }
}

pub(crate) fn hist() -> Histogram<u64> {
    // 1 µs .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| Histogram::new(3).unwrap())
}

pub(crate) fn us(d: Duration) -> u64 {
    d.as_micros().clamp(1, 60_000_000) as u64
}

pub(crate) fn pcts(h: &Histogram<u64>) -> Value {
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
pub(crate) struct Errors {
    n: AtomicU64,
    first: std::sync::Mutex<Option<String>>,
}

impl Errors {
    pub(crate) fn add(&self, e: &dyn std::fmt::Display) {
        if self.n.fetch_add(1, Ordering::Relaxed) == 0
            && let Ok(mut f) = self.first.lock()
        {
            *f = Some(e.to_string());
        }
    }
    pub(crate) fn json(&self) -> Value {
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

/// How a connection-rate scenario runs: how many at once, for how long, at most how many.
#[derive(Args, Debug, Clone)]
pub struct Pace {
    /// Connections (HBONE: attempts, each a new tunnel) in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Upper bound on connections (attempts), whatever the duration.
    #[arg(long, default_value_t = 2_000_000)]
    pub max_conns: u64,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
}

#[derive(Args, Debug)]
pub struct ConnrateArgs {
    #[command(flatten)]
    pub t: Target,
    #[command(flatten)]
    pub pace: Pace,
    #[command(flatten)]
    pub cost: CostArgs,
}

/// Each connection: TCP connect, TLS handshake through the proxy, 64-byte request echoed
/// back, close_notify + FIN. Counts completed connections per second.
pub async fn connrate(a: ConnrateArgs) -> Result<Value> {
    let d = Arc::new(Dialer::new(&a.t)?);
    let one: OneConn = Arc::new(move || {
        let d = d.clone();
        Box::pin(async move { echo_64(d.open(OP_ECHO, 0).await?).await })
    });
    let mut v = json!({"mode": "connrate", "name": a.t.name});
    merge(&mut v, conn_loop(&a.pace, one, &a.cost).await?);
    Ok(v)
}

/// One complete connection (or tunnel) of a connection-rate scenario.
pub(crate) type OneConn = Arc<
    dyn Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<()>> + Send>>
        + Send
        + Sync,
>;

/// Runs `one` from `concurrency` tasks until `duration` or `max_conns` attempts: the count,
/// rate and time of completed ones, the proxy's cost per completed one, and errors.
pub(crate) async fn conn_loop(pace: &Pace, one: OneConn, cost: &CostArgs) -> Result<Value> {
    let errors = Arc::new(Errors::default());
    let t = conn_turn(pace, one, cost, &errors).await?;
    Ok(conn_result(
        pace.concurrency,
        t.secs,
        t.ok,
        &t.hist,
        Some(&t.cost),
        &errors,
    ))
}

/// Per second, 0 for an empty window.
fn per_s(n: u64, secs: f64) -> f64 {
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

/// A connection-rate result's fields: `ok` connections completed in `secs`, their times,
/// the proxy's cost (if read) per connection, and the errors.
pub(crate) fn conn_result(
    concurrency: usize,
    secs: f64,
    ok: u64,
    h: &Histogram<u64>,
    cost: Option<&Cost>,
    errors: &Errors,
) -> Value {
    let mut v = json!({
        "concurrency": concurrency,
        "seconds": secs, "connections": ok, "conn_per_s": per_s(ok, secs),
        "conn_time": pcts(h),
    });
    if let Some(c) = cost {
        merge(&mut v, c.json("", "us_per_conn", ok as f64, 1e6));
    }
    merge(&mut v, errors.json());
    v
}

/// A closed-loop result's fields: `requests` round trips on `connections` streams of
/// `size`-byte requests in `secs`, their times, the proxy's cost (if read) per request, and
/// the errors.
pub(crate) fn rr_result(
    (connections, size): (usize, usize),
    secs: f64,
    requests: u64,
    h: &Histogram<u64>,
    cost: Option<&Cost>,
    errors: &Errors,
) -> Value {
    let mut v = json!({
        "connections": connections, "size": size,
        "seconds": secs, "requests": requests, "rps": per_s(requests, secs),
        "latency": pcts(h),
    });
    if let Some(c) = cost {
        merge(&mut v, c.json("", "us_per_req", requests as f64, 1e6));
    }
    merge(&mut v, errors.json());
    v
}

/// One closed-loop round trip: `msg` out and as many bytes back, within 10 s.
pub(crate) async fn round_trip(s: &mut Box<dyn Io>, msg: &[u8], back: &mut [u8]) -> io::Result<()> {
    let rt = async {
        s.write_all(msg).await?;
        s.read_exact(back).await?;
        io::Result::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), rt)
        .await
        .map_err(|e| io::Error::new(io::ErrorKind::TimedOut, e))?
}

/// What one run of [`conn_turn`] did.
pub(crate) struct ConnTurn {
    pub ok: u64,
    pub hist: Histogram<u64>,
    pub secs: f64,
    pub cost: Cost,
}

/// The work of [`conn_loop`], with errors counted into `errors`. The cost is read after the
/// last connection has ended, so none of this turn's work falls into a later window.
pub(crate) async fn conn_turn(
    pace: &Pace,
    one: OneConn,
    cost: &CostArgs,
    errors: &Arc<Errors>,
) -> Result<ConnTurn> {
    let (concurrency, duration, max) = (pace.concurrency, pace.duration, pace.max_conns);
    let started = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let meter = Meter::start(cost);
    let deadline = t0 + duration;
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (one, started, errors) = (one.clone(), started.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = hist();
            let mut ok = 0u64;
            while Instant::now() < deadline && started.fetch_add(1, Ordering::Relaxed) < max {
                let c0 = Instant::now();
                match tokio::time::timeout(CONN_LIMIT, one()).await {
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
    Ok(ConnTurn {
        ok,
        hist: h,
        secs,
        cost: meter.stop(),
    })
}

/// 64 bytes echoed back, then a write shutdown. A stalled read says how much of the echo
/// came and where the rest is ([`Io::unread`]).
pub(crate) async fn echo_64(s: Box<dyn Io>) -> io::Result<()> {
    echo_64_within(s, STAGE_LIMIT).await
}

async fn echo_64_within(mut s: Box<dyn Io>, limit: Duration) -> io::Result<()> {
    let msg = [7u8; 64];
    stage("64 B request", s.write_all(&msg)).await?;
    let mut back = [0u8; 64];
    let mut got = 0;
    let read = tokio::time::timeout(limit, async {
        while got < back.len() {
            match s.read(&mut back[got..]).await? {
                0 => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                n => got += n,
            }
        }
        io::Result::Ok(())
    })
    .await;
    match read {
        Ok(r) => r.map_err(|e| io::Error::new(e.kind(), format!("64 B echo: {e}")))?,
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("64 B echo: {got} B came in {limit:?}; {}", s.unread()),
            ));
        }
    }
    if back != msg {
        return Err(io::Error::other("echo mismatch"));
    }
    stage("close_notify and FIN", s.shutdown()).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------

#[derive(Args, Debug)]
pub struct RrArgs {
    #[command(flatten)]
    pub t: Target,
    /// Persistent connections, each a closed loop: send, wait for the echo, send again.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    #[command(flatten)]
    pub window: Window,
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[command(flatten)]
    pub cost: CostArgs,
}

/// Request/response on persistent connections as fast as each connection's round trip
/// allows. Counts requests and the proxy's cost in the measured window (after the warm-up)
/// and records each measured request's round trip.
pub async fn rr(a: RrArgs) -> Result<Value> {
    let d = Arc::new(Dialer::new(&a.t)?);
    let mut conns = Vec::new();
    for _ in 0..a.connections.max(1) {
        conns.push(d.open(OP_ECHO, 0).await.context("connect")?);
    }
    let mut v = json!({"mode": "rr", "name": a.t.name});
    merge(&mut v, rr_loop(conns, &a.window, &a.cost).await?);
    Ok(v)
}

/// The measured part of an `rr` scenario (plain and HBONE).
#[derive(Args, Debug)]
pub struct Window {
    /// Request and response size in bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Not measured: lets caches, allocators and CPU frequency settle.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Upper bound on requests over all streams, whatever the duration.
    #[arg(long, default_value_t = 50_000_000)]
    pub max_requests: u64,
}

/// Closed-loop echo of `w.size` bytes on every stream in `conns` (connections or tunnels)
/// through the warm-up and the measured window.
pub(crate) async fn rr_loop(conns: Vec<Box<dyn Io>>, w: &Window, cost: &CostArgs) -> Result<Value> {
    let n = conns.len();
    let errors = Arc::new(Errors::default());
    let done = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for mut s in conns {
        let (errors, done, measuring, stop) = (
            errors.clone(),
            done.clone(),
            measuring.clone(),
            stop.clone(),
        );
        let (size, max) = (w.size, w.max_requests);
        tasks.push(tokio::spawn(async move {
            let mut h = hist();
            let msg = vec![1u8; size];
            let mut back = vec![0u8; size];
            while !stop.load(Ordering::Relaxed) && done.load(Ordering::Relaxed) < max {
                let t0 = Instant::now();
                let counted = measuring.load(Ordering::Relaxed);
                if let Err(e) = round_trip(&mut s, &msg, &mut back).await {
                    errors.add(&e);
                    break;
                }
                done.fetch_add(1, Ordering::Relaxed);
                if counted {
                    let _ = h.record(us(t0.elapsed()));
                }
            }
            let _ = s.shutdown().await;
            h
        }));
    }
    tokio::time::sleep(w.warmup).await;
    let n0 = done.load(Ordering::Relaxed);
    let meter = Meter::start(cost);
    let t0 = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(w.duration).await;
    measuring.store(false, Ordering::Relaxed);
    let requests = done.load(Ordering::Relaxed) - n0;
    let spent = meter.stop();
    let secs = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut h = hist();
    for t in tasks {
        h.add(t.await?).ok();
    }
    Ok(rr_result(
        (n, w.size),
        secs,
        requests,
        &h,
        Some(&spent),
        &errors,
    ))
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
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    #[command(flatten)]
    pub cost: CostArgs,
}

/// Download (backend to client) for `duration`, then upload for `duration`.
pub async fn throughput(a: ThroughputArgs) -> Result<Value> {
    let d = Arc::new(Dialer::new(&a.t)?);
    let mut v = json!({"mode": "throughput", "name": a.t.name, "connections": a.connections});
    let mut total = BulkTotal::default();
    for op in [OP_DOWN, OP_UP] {
        let mut conns = Vec::new();
        for _ in 0..a.connections.max(1) {
            conns.push(d.open(op, a.bytes).await.context("connect")?);
        }
        let one = bulk(op, conns, a.duration, a.bytes, &a.cost).await?;
        merge(&mut v, total.add(one));
    }
    merge(&mut v, total.json());
    Ok(v)
}

/// One direction of a bulk scenario.
pub(crate) struct Bulk {
    json: Value,
    moved: u64,
    secs: f64,
    spent: Cost,
}

/// Both directions together: the proxy's cost per GB over everything moved.
#[derive(Default)]
pub(crate) struct BulkTotal {
    bytes: u64,
    secs: f64,
    core_s: Option<f64>,
    proc_s: Option<f64>,
    load_s: Option<f64>,
}

impl BulkTotal {
    pub(crate) fn add(&mut self, b: Bulk) -> Value {
        let first = self.bytes == 0 && self.core_s.is_none() && self.proc_s.is_none();
        let plus = |t: Option<f64>, x: Option<f64>| if first { x } else { Some(t? + x?) };
        self.core_s = plus(self.core_s, b.spent.core_s);
        self.proc_s = plus(self.proc_s, b.spent.proc_s);
        self.load_s = plus(self.load_s, b.spent.load_s);
        self.bytes += b.moved;
        self.secs += b.secs;
        b.json
    }

    pub(crate) fn json(&self) -> Value {
        let total = Cost {
            core_s: self.core_s,
            proc_s: self.proc_s,
            user_s: None,
            steal_s: None,
            core_sampled_s: None,
            load_s: self.load_s,
        };
        let mut v = total.json("", "s_per_gb", self.bytes as f64 / 1e9, 1.0);
        let rate = (self.secs > 0.0).then(|| self.bytes as f64 / 1e6 / self.secs);
        merge(&mut v, json!({ "mb_per_s": rate }));
        v
    }
}

/// One direction over streams already opened with `op` (`OP_DOWN` or `OP_UP`): bytes, MB/s
/// and the proxy's cost per GB, keyed `down_*` or `up_*`.
pub(crate) async fn bulk(
    op: u8,
    conns: Vec<Box<dyn Io>>,
    duration: Duration,
    bytes: u64,
    cost: &CostArgs,
) -> Result<Bulk> {
    let label = if op == OP_DOWN { "down" } else { "up" };
    let meter = Meter::start(cost);
    let self0 = process_ticks(&[std::process::id()]);
    let t0 = Instant::now();
    let deadline = t0 + duration;
    let mut tasks = Vec::new();
    for mut s in conns {
        let limit = bytes;
        tasks.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut moved = 0u64;
            // The clock is checked here too: `timeout_at` polls the read first and never
            // sees the deadline while every read completes at once (a fast enough proxy).
            while moved < limit && Instant::now() < deadline {
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
    let spent = meter.stop();
    let me = process_ticks(&[std::process::id()]).saturating_sub(self0) as f64 / 100.0;
    let mut json = json!({
        format!("{label}_bytes"): moved,
        format!("{label}_seconds"): secs,
        format!("{label}_mb_per_s"): moved as f64 / 1e6 / secs,
        format!("{label}_client_cpu_s"): me,
    });
    merge(
        &mut json,
        spent.json(&format!("{label}_"), "s_per_gb", moved as f64 / 1e9, 1.0),
    );
    Ok(Bulk {
        json,
        moved,
        secs,
        spent,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A stalled echo names the stage, how much came and what the kernel still holds.
    #[tokio::test]
    async fn a_stalled_echo_says_where_the_bytes_are() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (mut peer, _) = l.accept().await.unwrap();
        let server = tokio::spawn(async move {
            let mut req = [0u8; 64];
            peer.read_exact(&mut req).await.unwrap();
            peer.write_all(&req[..10]).await.unwrap();
            // Held open, answering no more, until the client gives up.
            let mut rest = [0u8; 1];
            let _ = peer.read(&mut rest).await;
        });
        let e = echo_64_within(Box::new(c), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let msg = e.to_string();
        assert!(msg.starts_with("64 B echo: 10 B came in 300ms;"), "{msg}");
        assert!(
            msg.contains("0 B unread in the kernel's receive queue"),
            "{msg}"
        );
        server.abort();
    }
}
