//! Bytes the gateway queues toward an HBONE client that stops reading: one outer connection's
//! tunnels share a budget ([`gateway::hbone::queued::BUDGET`]), so a client with wide-open
//! windows that never reads makes the gateway hold the budget, not a send buffer per tunnel.
//! Real TLS, the real h2 client, real sockets on loopback; the memory figure is the gateway
//! binary's RSS: the bytes the sources manage to write say little, as the kernel's socket
//! buffers of 100 upstream connections took 380 MiB of them. Sources stand in for destination
//! ztunnels that write fast: each waits for one byte from its tunnel, sends an 8-byte id, then
//! pseudo-random data, and records its SHA-256, so the client checks every tunnel byte for byte.
//! (g) is the other direction: what clients send to endpoints that do not read is bounded by
//! the connection window the gateway advertises.

mod common;
mod hbone_support;

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::{Method, Request, StatusCode};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use gateway::hbone::queued::BUDGET;
use hbone_support::{TIMEOUT, hbone_yaml, pki};

const SVC: &str = common::CATALOG;
const ACTIVE: &str =
    "gateway_hbone_tunnels_active{authority=\"catalog.istioinaction.svc.cluster.local:80\"}";

/// `--hbone-max-streams`' default: a pooled ztunnel connection carries up to 100 tunnels.
const STREAMS: usize = 100;

fn ip(last: u8) -> IpAddr {
    [127, 0, 0, last].into()
}

fn sha256() -> Box<dyn rustls::crypto::hash::Context> {
    rustls::crypto::aws_lc_rs::default_provider()
        .cipher_suites
        .iter()
        .find_map(|s| s.tls13())
        .expect("a TLS 1.3 suite")
        .common
        .hash_provider
        .start()
}

/// What one source sent: its bytes after the id, and their SHA-256.
type Sent = HashMap<u64, (u64, Vec<u8>)>;

/// Destination stand-ins that write fast once their tunnel says go.
struct Sources {
    addr: std::net::SocketAddr,
    /// Bytes all sources have written so far (taken by the kernel).
    written: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
    sent: Arc<Mutex<Sent>>,
    task: JoinHandle<()>,
}

impl Drop for Sources {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sources {
    /// Each connection sends `size` bytes after its id, then closes its write side.
    async fn start(ip: IpAddr, size: u64) -> Sources {
        Self::start_writing(ip, size, 64 * 1024, Duration::ZERO).await
    }

    /// As [`Sources::start`], `piece` bytes per write, each its own segment (`TCP_NODELAY`),
    /// with `pause` after each.
    async fn start_writing(ip: IpAddr, size: u64, piece: usize, pause: Duration) -> Sources {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let written = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let sent = Arc::new(Mutex::new(Sent::new()));
        let (w, a, s) = (written.clone(), accepted.clone(), sent.clone());
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let id = a.fetch_add(1, Ordering::SeqCst);
                let _ = conn.set_nodelay(true);
                tokio::spawn(source(conn, id, (size, piece, pause), w.clone(), s.clone()));
            }
        });
        Sources {
            addr,
            written,
            accepted,
            sent,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst) as usize
    }

    fn written(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }
}

async fn source(
    mut s: TcpStream,
    id: u64,
    (size, piece, pause): (u64, usize, Duration),
    written: Arc<AtomicU64>,
    sent: Arc<Mutex<Sent>>,
) {
    let mut go = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(60), s.read_exact(&mut go)).await {
        Ok(Ok(_)) => {}
        _ => return,
    }
    if s.write_all(&id.to_be_bytes()).await.is_err() {
        return;
    }
    // One block per source, its first 8 bytes the block's number: no two blocks alike.
    let mut block = vec![0u8; 64 * 1024];
    let mut x = id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for chunk in block.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let mut hash = sha256();
    let (mut left, mut at, mut n) = (size, 0usize, 0u64);
    while left > 0 {
        if at == 0 {
            block[..8].copy_from_slice(&n.to_le_bytes());
            n += 1;
        }
        let k = (left as usize).min(piece).min(block.len() - at);
        let part = &block[at..at + k];
        if s.write_all(part).await.is_err() {
            return;
        }
        hash.update(part);
        written.fetch_add(k as u64, Ordering::SeqCst);
        left -= k as u64;
        at = (at + k) % block.len();
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    let _ = s.shutdown().await;
    sent.lock()
        .unwrap()
        .insert(id, (size, hash.finish().as_ref().to_vec()));
    // Held open until the gateway closes: the tunnel ends by the client's reading, not ours.
    let _ = s.read(&mut go).await;
}

/// Opens and closes a client's reading of its socket: closed, the h2 client and rustls read
/// nothing, so the gateway's writes back up as with a client that stopped reading.
#[derive(Default)]
struct Gate {
    closed: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Gate {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    fn open(&self) {
        self.closed.store(false, Ordering::SeqCst);
        if let Some(w) = self.waker.lock().unwrap().take() {
            w.wake();
        }
    }
}

struct Gated<T> {
    io: T,
    gate: Arc<Gate>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Gated<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.gate.closed.load(Ordering::SeqCst) {
            *self.gate.waker.lock().unwrap() = Some(cx.waker().clone());
            if self.gate.closed.load(Ordering::SeqCst) {
                return Poll::Pending;
            }
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Gated<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A client ztunnel with every window at its maximum (2^31-1), as a client that wants all it
/// can get, whose reading the gate controls.
struct Client {
    send: SendRequest<Bytes>,
    gate: Arc<Gate>,
    conn: JoinHandle<Result<(), h2::Error>>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

async fn client(addr: std::net::SocketAddr) -> Client {
    common::init();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = ServerName::IpAddress(IpAddr::from([127, 0, 0, 1]).into());
    let cfg = hbone_support::client_tls(Some(&pki().client), &pki().gateway.spiffe_id);
    let tls = tokio::time::timeout(TIMEOUT, TlsConnector::from(cfg).connect(name, tcp))
        .await
        .expect("TLS in time")
        .unwrap();
    let gate = Arc::new(Gate::default());
    let io = Gated {
        io: tls,
        gate: gate.clone(),
    };
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(0x7fff_ffff)
        .initial_connection_window_size(0x7fff_ffff)
        .max_frame_size(1 << 20)
        .max_concurrent_reset_streams(1000)
        .handshake::<_, Bytes>(io)
        .await
        .unwrap();
    Client {
        send,
        gate,
        conn: tokio::spawn(conn),
    }
}

/// `n` tunnels to the service, each answered 200.
async fn tunnels(c: &Client, n: usize) -> Vec<(SendStream<Bytes>, RecvStream)> {
    let mut pending = Vec::new();
    for _ in 0..n {
        let uri = http::Uri::builder()
            .authority(format!("{SVC}:80"))
            .build()
            .unwrap();
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri(uri)
            .body(())
            .unwrap();
        let mut send = tokio::time::timeout(TIMEOUT, c.send.clone().ready())
            .await
            .expect("a stream place in time")
            .unwrap();
        pending.push(send.send_request(req, false).unwrap());
    }
    let mut open = Vec::new();
    for (resp, tx) in pending {
        let resp = tokio::time::timeout(TIMEOUT, resp)
            .await
            .expect("answer in time")
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        open.push((tx, resp.into_body()));
    }
    open
}

/// Sends each tunnel its source's go byte, and END_STREAM: from here the client only reads.
fn go(tunnels: &mut [(SendStream<Bytes>, RecvStream)]) {
    for (tx, _) in tunnels.iter_mut() {
        tx.send_data(Bytes::from_static(b"g"), true).unwrap();
    }
}

/// Reads a tunnel to its end: the source's id, the bytes after it and their SHA-256.
async fn drain(mut rx: RecvStream) -> Result<(u64, u64, Vec<u8>), h2::Error> {
    let mut id = Vec::with_capacity(8);
    let mut hash = sha256();
    let mut len = 0u64;
    while let Some(d) = rx.data().await {
        let d = d?;
        let _ = rx.flow_control().release_capacity(d.len());
        let take = (8 - id.len()).min(d.len());
        id.extend_from_slice(&d[..take]);
        hash.update(&d[take..]);
        len += (d.len() - take) as u64;
    }
    let id = u64::from_be_bytes(id.try_into().expect("an 8-byte id"));
    Ok((id, len, hash.finish().as_ref().to_vec()))
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Waits until `f` stops growing (by more than `slack`) for a second, at most `limit`, or
/// until it passes `stop`.
async fn steady(limit: Duration, slack: u64, stop: u64, mut f: impl FnMut() -> u64) -> u64 {
    let start = Instant::now();
    let (mut last, mut since) = (f(), Instant::now());
    while start.elapsed() < limit && since.elapsed() < Duration::from_secs(1) && last <= stop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = f();
        if now > last + slack {
            (last, since) = (now, Instant::now());
        }
    }
    f()
}

/// The stalled client, on the gateway binary: `streams` tunnels to `sources` opened, then
/// reading stops and every source starts writing. Returns the gateway's RSS growth in KiB
/// once it stops growing (or passes `stop_kib`), and the client, its tunnels and the
/// sources to carry on with.
async fn stalled(
    sources: Sources,
    streams: usize,
    stop_kib: u64,
) -> (
    hbone_support::HboneProcess,
    Sources,
    Client,
    Vec<(SendStream<Bytes>, RecvStream)>,
    u64,
) {
    let yaml = hbone_yaml(&[(SVC, &[(sources.addr.ip(), sources.addr.port())])]);
    let h = hbone_support::hbone_process(&yaml, &[], "warn,gateway=info").await;
    let pid = h.gw.child.id();
    let c = client(h.hbone).await;
    let mut open = tunnels(&c, streams).await;
    hbone_support::eventually("every tunnel dialled", || sources.accepted() == streams).await;
    // The baseline has every tunnel open: what grows after it is what the gateway queues.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = rss_kib(pid);
    c.gate.close();
    go(&mut open);
    let limit = Duration::from_secs(20);
    let stop = base.saturating_add(stop_kib);
    steady(limit, 0, u64::MAX, || sources.written()).await;
    let grown = steady(limit, 256, stop, || rss_kib(pid))
        .await
        .saturating_sub(base);
    eprintln!(
        "{streams} tunnels of a client that stopped reading: gateway RSS +{grown} KiB \
         ({} KiB per tunnel); sources wrote {} KiB, the gateway and the kernel's buffers hold it \
         all (budget {} KiB)",
        grown / streams as u64,
        sources.written() >> 10,
        BUDGET >> 10
    );
    (h, sources, c, open, grown)
}

/// Slack over the budget in the stalled gateway's RSS growth: its TLS record buffer (64 KiB),
/// each tunnel's read buffer and bookkeeping as bytes first move, allocator rounding. With
/// the budget, 100 stalled tunnels grew the gateway by 3.7 to 4.6 MiB; with a send buffer
/// per tunnel and nothing per connection, by 26 to 29 MiB.
const RSS_SLACK_KIB: u64 = 4 << 10;

/// (a) A client that stops reading, with 100 tunnels whose sources write fast: the gateway
/// holds about the connection's budget, not 100 send buffers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_costs_the_budget_not_a_buffer_per_tunnel() {
    let sources = Sources::start(ip(121), 64 << 20).await;
    let bound = (BUDGET as u64 >> 10) + RSS_SLACK_KIB;
    let (_h, _sources, _c, _open, grown) = stalled(sources, STREAMS, 4 * bound).await;
    assert!(
        grown < bound,
        "the gateway's RSS grew {grown} KiB for one stalled connection, over the budget's {} KiB and {RSS_SLACK_KIB} KiB of slack",
        BUDGET >> 10
    );
}

/// (e) Sources that trickle, a few bytes a millisecond, to a client that stopped reading:
/// each read is a few bytes, and what the gateway keeps per queued read (its buffer, h2's
/// frame) must count, or a budget of bytes would hold a page or more per byte read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_trickling_sources_cost_the_budget_too() {
    const TUNNELS: usize = 32;
    let pause = Duration::from_millis(1);
    let sources = Sources::start_writing(ip(125), 64 * 1500, 64, pause).await;
    let bound = (BUDGET as u64 >> 10) + RSS_SLACK_KIB;
    let (_h, _sources, _c, _open, grown) = stalled(sources, TUNNELS, 4 * bound).await;
    assert!(
        grown < bound,
        "the gateway's RSS grew {grown} KiB for {TUNNELS} trickling tunnels"
    );
}

/// (b) Once the stalled client reads again, every tunnel's bytes arrive complete and
/// unchanged, and none is starved: all finish within a bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_after_the_stall_every_tunnel_arrives_whole() {
    const SIZE: u64 = 2 << 20;
    let sources = Sources::start(ip(122), SIZE).await;
    let (_h, sources, c, open, _) = stalled(sources, STREAMS, u64::MAX).await;
    let start = Instant::now();
    c.gate.open();
    let readers: Vec<_> = open
        .into_iter()
        .map(|(tx, rx)| {
            tokio::spawn(async move {
                let _tx = tx;
                let r = tokio::time::timeout(Duration::from_secs(90), drain(rx)).await;
                (r, start.elapsed())
            })
        })
        .collect();
    let mut seen = Vec::new();
    let mut slowest = Duration::ZERO;
    for r in readers {
        let (r, took) = r.await.unwrap();
        let (id, len, digest) = r.expect("a tunnel starved").expect("tunnel read");
        slowest = slowest.max(took);
        let sent = sources.sent.lock().unwrap().get(&id).cloned();
        let (want_len, want) = sent.expect("its source finished");
        assert_eq!(len, want_len, "tunnel {id}: length");
        assert_eq!(len, SIZE);
        assert!(
            digest == want,
            "tunnel {id}: bytes differ from what its source sent"
        );
        seen.push(id);
    }
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len(), STREAMS, "each tunnel reached its own source");
    eprintln!(
        "{STREAMS} tunnels × {} KiB delivered byte-exact {:?} after the client read again",
        SIZE >> 10,
        slowest
    );
}

/// (c) One bulk tunnel (a ztunnel client's windows) carries 64 MiB byte-exact through a budget
/// that is a sixteenth of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_a_bulk_tunnel_arrives_whole() {
    const SIZE: u64 = 64 << 20;
    let sources = Sources::start(ip(123), SIZE).await;
    let yaml = hbone_yaml(&[(SVC, &[(sources.addr.ip(), sources.addr.port())])]);
    let gw = hbone_support::gateway(&yaml, |_| {}).await;
    let mut o = hbone_support::outer(gw.hbone, Some(&pki().client))
        .await
        .unwrap();
    let (status, io) = hbone_support::connect(&mut o, &format!("{SVC}:80"))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let (mut tx, rx) = io.unwrap();
    tx.send_data(Bytes::from_static(b"g"), true).unwrap();
    let start = Instant::now();
    let (id, len, digest) = tokio::time::timeout(Duration::from_secs(60), drain(rx))
        .await
        .expect("bulk in time")
        .unwrap();
    let took = start.elapsed();
    let (want_len, want) = sources.sent.lock().unwrap()[&id].clone();
    assert_eq!((len, want_len), (SIZE, SIZE));
    assert!(digest == want, "bytes differ from what the source sent");
    eprintln!(
        "one tunnel: {} MiB in {took:?} ({:.0} MB/s)",
        SIZE >> 20,
        SIZE as f64 / took.as_secs_f64() / 1e6
    );
    // The tunnel ends once its last bytes have left the queue, its budget back.
    gw.wait_metric(ACTIVE, 0.0).await;
    gw.wait_metric("gateway_hbone_queued_bytes", 0.0).await;
}

/// (d) Tunnels reset while their bytes are queued (before and after both sides' END_STREAM)
/// give their share of the budget back: after three rounds of a budget's worth each, the
/// gauge is back at zero and a new tunnel on the same connection still carries its bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_reset_tunnels_give_their_bytes_back() {
    const PER_ROUND: usize = 24;
    const SIZE: u64 = 1 << 20;
    let sources = Sources::start(ip(124), SIZE).await;
    let yaml = hbone_yaml(&[(SVC, &[(sources.addr.ip(), sources.addr.port())])]);
    let gw = hbone_support::gateway(&yaml, |_| {}).await;
    let c = client(gw.hbone).await;
    for round in 0..3 {
        let mut open = tunnels(&c, PER_ROUND).await;
        c.gate.close();
        go(&mut open);
        // The sources write 24 MiB, six budgets: until the budget and the kernel's buffers
        // are full.
        steady(Duration::from_secs(10), 0, u64::MAX, || sources.written()).await;
        let queued = gw.metric("gateway_hbone_queued_bytes").await;
        assert!(
            queued > 0.0 && queued <= BUDGET as f64,
            "round {round}: queued {queued}"
        );
        for (tx, _) in open.iter_mut() {
            tx.send_reset(h2::Reason::CANCEL);
        }
        drop(open);
        c.gate.open();
        gw.wait_metric("gateway_hbone_queued_bytes", 0.0).await;
        gw.wait_metric(ACTIVE, 0.0).await;
    }
    let mut last = tunnels(&c, 4).await;
    go(&mut last);
    for (tx, rx) in last {
        let _tx = tx;
        let (id, len, digest) = tokio::time::timeout(TIMEOUT, drain(rx))
            .await
            .expect("a new tunnel moves after the resets")
            .unwrap();
        let (want_len, want) = sources.sent.lock().unwrap()[&id].clone();
        assert_eq!(len, want_len);
        assert!(digest == want);
    }
    gw.wait_metric("gateway_hbone_queued_bytes", 0.0).await;
}

/// (f) `--hbone-connection-queue-kib` sets the queue: at 512 KiB, a stalled connection
/// whose sources write six default budgets queues at most 512 KiB, and its tunnels wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_the_queue_is_the_configured_size() {
    const QUEUE: usize = 512 << 10;
    let sources = Sources::start(ip(126), 1 << 20).await;
    let yaml = hbone_yaml(&[(SVC, &[(sources.addr.ip(), sources.addr.port())])]);
    let gw = hbone_support::gateway(&yaml, |c| c.hbone_connection_queue = QUEUE).await;
    let c = client(gw.hbone).await;
    let mut open = tunnels(&c, 24).await;
    c.gate.close();
    go(&mut open);
    steady(Duration::from_secs(10), 0, u64::MAX, || sources.written()).await;
    let queued = gw.metric("gateway_hbone_queued_bytes").await;
    assert!(
        queued > 0.0 && queued <= QUEUE as f64,
        "queued {queued} with a queue of {QUEUE}"
    );
    assert!(gw.metric("gateway_hbone_queue_waits_total").await > 0.0);
    for (tx, _) in open.iter_mut() {
        tx.send_reset(h2::Reason::CANCEL);
    }
    drop(open);
    c.gate.open();
    gw.wait_metric("gateway_hbone_queued_bytes", 0.0).await;
}

/// What each sink read: its length and SHA-256.
type Got = Vec<(u64, Vec<u8>)>;

/// Endpoints that take their tunnels' bytes only once told to: each hashes what it reads to
/// its EOF. Their receive buffers are small, so what they do not take backs up into the
/// gateway soon.
struct Sinks {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicU64>,
    open: Arc<tokio::sync::Notify>,
    got: Arc<Mutex<Got>>,
    task: JoinHandle<()>,
}

impl Drop for Sinks {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sinks {
    async fn start(ip: IpAddr) -> Sinks {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.bind((ip, 0).into()).unwrap();
        let listener = socket.listen(128).unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let open = Arc::new(tokio::sync::Notify::new());
        let got = Arc::new(Mutex::new(Vec::new()));
        let (a, o, g) = (accepted.clone(), open.clone(), got.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                a.fetch_add(1, Ordering::SeqCst);
                let (o, g) = (o.clone(), g.clone());
                tokio::spawn(async move {
                    o.notified().await;
                    let (mut hash, mut len, mut buf) = (sha256(), 0u64, vec![0u8; 64 * 1024]);
                    let read = async {
                        loop {
                            match conn.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    hash.update(&buf[..n]);
                                    len += n as u64;
                                }
                            }
                        }
                    };
                    if tokio::time::timeout(Duration::from_secs(60), read)
                        .await
                        .is_ok()
                    {
                        g.lock()
                            .unwrap()
                            .push((len, hash.finish().as_ref().to_vec()));
                    }
                });
            }
        });
        Sinks {
            addr,
            accepted,
            open,
            got,
            task,
        }
    }
}

/// Sends `size` bytes of `block` repeated, as fast as the gateway's windows let it, then
/// END_STREAM; counts what the windows let through in `sent`.
async fn upload(mut tx: SendStream<Bytes>, block: Bytes, size: u64, sent: Arc<AtomicU64>) {
    let mut left = size;
    while left > 0 {
        tx.reserve_capacity(block.len().min(left as usize));
        let cap = std::future::poll_fn(|cx| tx.poll_capacity(cx));
        let n = match tokio::time::timeout(Duration::from_secs(60), cap).await {
            Ok(Some(Ok(n))) if n > 0 => n,
            Ok(Some(Ok(_))) => continue,
            _ => return,
        };
        let n = n.min(left as usize);
        left -= n as u64;
        tx.send_data(block.slice(..n), left == 0).unwrap();
        sent.fetch_add(n as u64, Ordering::SeqCst);
    }
}

/// (g) `--hbone-connection-window-kib` bounds what clients may send that endpoints have not
/// taken: 8 tunnels to endpoints that do not read grow the gateway by about the 1 MiB window
/// (with the default, 16 MiB: four tunnels' 4 MiB windows); once the endpoints read, every
/// tunnel's bytes arrive whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g_the_connection_window_bounds_bytes_toward_endpoints() {
    const TUNNELS: usize = 8;
    const SIZE: u64 = 8 << 20;
    const WINDOW_KIB: u64 = 1024;
    let sinks = Sinks::start(ip(127)).await;
    let yaml = hbone_yaml(&[(SVC, &[(sinks.addr.ip(), sinks.addr.port())])]);
    let window = WINDOW_KIB.to_string();
    let args = ["--hbone-connection-window-kib", window.as_str()];
    let h = hbone_support::hbone_process(&yaml, &args, "warn,gateway=info").await;
    let pid = h.gw.child.id();
    let c = client(h.hbone).await;
    let open = tunnels(&c, TUNNELS).await;
    hbone_support::eventually("every tunnel dialled", || {
        sinks.accepted.load(Ordering::SeqCst) == TUNNELS as u64
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = rss_kib(pid);
    let block = Bytes::from(
        (0..64 * 1024)
            .map(|i| (i * 7 + 3) as u8)
            .collect::<Vec<u8>>(),
    );
    let mut want = sha256();
    for _ in 0..SIZE / block.len() as u64 {
        want.update(&block);
    }
    let want = want.finish().as_ref().to_vec();
    let sent = Arc::new(AtomicU64::new(0));
    let mut keep = Vec::new();
    for (tx, rx) in open {
        keep.push(rx);
        tokio::spawn(upload(tx, block.clone(), SIZE, sent.clone()));
    }
    let limit = Duration::from_secs(20);
    steady(limit, 0, u64::MAX, || sent.load(Ordering::SeqCst)).await;
    let grown = steady(limit, 256, u64::MAX, || rss_kib(pid))
        .await
        .saturating_sub(base);
    eprintln!(
        "{TUNNELS} tunnels to endpoints that do not read: the client sent {} KiB, the gateway \
         grew {grown} KiB (window {WINDOW_KIB} KiB; the rest sits in the kernel's buffers)",
        sent.load(Ordering::SeqCst) >> 10
    );
    assert!(
        sent.load(Ordering::SeqCst) > WINDOW_KIB << 10,
        "the window filled"
    );
    assert!(
        grown < WINDOW_KIB + RSS_SLACK_KIB,
        "the gateway grew {grown} KiB with a {WINDOW_KIB} KiB connection window"
    );
    sinks.open.notify_waiters();
    hbone_support::eventually("every endpoint read its tunnel to its end", || {
        sinks.got.lock().unwrap().len() == TUNNELS
    })
    .await;
    for (len, digest) in sinks.got.lock().unwrap().iter() {
        assert_eq!(*len, SIZE);
        assert!(*digest == want, "bytes differ from what the client sent");
    }
    drop(keep);
}
