//! A hostile peer on 15008: a valid mesh client certificate, then HTTP/2 written by hand
//! (rapid reset, CONTINUATION and control-frame floods, a reader that never reads) to check
//! that dials, memory and connection lifetime stay bounded. Loopback only; every loop is
//! bounded in count and time.

mod common;
mod hbone_support;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use hbone_support::{App, AppMode, TIMEOUT, hbone_yaml, pki};

const SVC: &str = common::CATALOG;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const CANCEL: u32 = 0x8;
const FLOW_CONTROL_ERROR: u32 = 0x3;
const FRAME_SIZE_ERROR: u32 = 0x6;
const ENHANCE_YOUR_CALM: u32 = 0xb;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK integer with an `n`-bit prefix (RFC 7541 §5.1).
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128 + 128) as u8);
        v /= 128;
    }
    out.push(v as u8);
}

/// A literal header without indexing, its name from the static table, value not Huffman.
fn hpack_literal(out: &mut Vec<u8>, name_index: usize, value: &[u8]) {
    hpack_int(out, 0x00, 4, name_index);
    hpack_int(out, 0x00, 7, value.len());
    out.extend_from_slice(value);
}

/// `:method CONNECT` and `:authority`, as ztunnel sends them (no `:scheme`, no `:path`).
fn connect_block(authority: &str) -> Vec<u8> {
    let mut b = Vec::new();
    hpack_literal(&mut b, 2, b"CONNECT");
    hpack_literal(&mut b, 1, authority.as_bytes());
    b
}

fn settings(params: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in params {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &p)
}

fn window_update(stream: u32, inc: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &inc.to_be_bytes())
}

fn rst(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

/// What the gateway sent, as the reader task saw it.
#[derive(Default)]
struct Seen {
    /// (type, flags, stream) of every frame.
    frames: Vec<(u8, u8, u32)>,
    goaway: Option<u32>,
    /// The connection ended (EOF or error).
    closed: bool,
}

/// A client speaking raw HTTP/2 over mTLS with the mesh client certificate.
struct Raw {
    w: WriteHalf<TlsStream<TcpStream>>,
    /// Kept unread when `reading` is off, so the gateway's writes back up.
    _r: Option<ReadHalf<TlsStream<TcpStream>>>,
    seen: Arc<Mutex<Seen>>,
}

impl Raw {
    /// mTLS, the preface and `first_settings`; with `reading`, a task records every frame.
    async fn connect(addr: SocketAddr, first_settings: &[(u16, u32)], reading: bool) -> Raw {
        Raw::connect_as(addr, &pki().client, first_settings, reading).await
    }

    /// As [`Raw::connect`], with the workload certificate `cert`.
    async fn connect_as(
        addr: SocketAddr,
        cert: &pki::WorkloadCert,
        first_settings: &[(u16, u32)],
        reading: bool,
    ) -> Raw {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::IpAddress(IpAddr::from([127, 0, 0, 1]).into());
        let cfg = hbone_support::client_tls(Some(cert), &pki().gateway.spiffe_id);
        let tls = tokio::time::timeout(TIMEOUT, TlsConnector::from(cfg).connect(name, tcp))
            .await
            .unwrap()
            .unwrap();
        let (r, mut w) = tokio::io::split(tls);
        let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        hello.extend(settings(first_settings));
        w.write_all(&hello).await.unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let r = if reading {
            tokio::spawn(read_frames(r, seen.clone()));
            None
        } else {
            Some(r)
        };
        Raw { w, _r: r, seen }
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.w.write_all(bytes).await?;
        self.w.flush().await
    }

    /// A CONNECT to `authority` on stream `id`.
    async fn connect_to(&mut self, id: u32, authority: &str) {
        let headers = frame(HEADERS, END_HEADERS, id, &connect_block(authority));
        self.send(&headers).await.unwrap();
    }

    /// A tunnel to the catalog on stream 1, once the gateway has answered it.
    async fn open_tunnel(&mut self) {
        self.connect_to(1, &authority()).await;
        hbone_support::eventually("200", || self.count(HEADERS) == 1).await;
    }

    fn goaway(&self) -> Option<u32> {
        self.seen.lock().unwrap().goaway
    }

    fn closed(&self) -> bool {
        self.seen.lock().unwrap().closed
    }

    fn count(&self, kind: u8) -> usize {
        let s = self.seen.lock().unwrap();
        s.frames.iter().filter(|f| f.0 == kind).count()
    }

    /// Waits (bounded) until the gateway has closed the connection.
    async fn wait_closed(&self) {
        let end = Instant::now() + TIMEOUT;
        while !self.closed() {
            assert!(Instant::now() < end, "the gateway kept the connection open");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn read_frames(mut r: ReadHalf<TlsStream<TcpStream>>, seen: Arc<Mutex<Seen>>) {
    let mut head = [0u8; 9];
    loop {
        if r.read_exact(&mut head).await.is_err() {
            break;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        if r.read_exact(&mut payload).await.is_err() {
            break;
        }
        let mut s = seen.lock().unwrap();
        s.frames.push((head[3], head[4], stream));
        if head[3] == GOAWAY && len >= 8 {
            s.goaway = Some(u32::from_be_bytes([
                payload[4], payload[5], payload[6], payload[7],
            ]));
        }
    }
    seen.lock().unwrap().closed = true;
}

/// An echo app standing in for the destination ztunnel, and a gateway routing to it.
async fn app_and_gateway(
    ip: [u8; 4],
    tweak: impl FnOnce(&mut gateway::config::Config),
) -> (App, hbone_support::HboneGw) {
    hbone_support::catalog_behind_gateway(ip, tweak).await
}

fn authority() -> String {
    format!("{SVC}:80")
}

/// Paced rapid reset on `c`: CONNECT, then CANCEL it with the next CONNECT a moment later,
/// until the gateway sends GOAWAY or closes (at most 600 pairs, bounded in time). Returns
/// the CONNECTs sent.
async fn paced_rapid_reset(c: &mut Raw) -> u32 {
    let block = connect_block(&authority());
    let start = Instant::now();
    let mut sent = 0u32;
    for i in 0..600u32 {
        if c.goaway().is_some() || c.closed() || start.elapsed() > TIMEOUT {
            break;
        }
        let id = 1 + 2 * i;
        let mut b = frame(HEADERS, END_HEADERS, id, &block);
        if i > 0 {
            b.extend(rst(id - 2, CANCEL));
        }
        if c.send(&b).await.is_err() {
            break;
        }
        sent += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    sent
}

/// Rapid reset (CVE-2023-44487), paced so that h2 has accepted each stream before its
/// RST_STREAM arrives (h2's own pending-accept limit never sees it): CONNECT, then CANCEL a
/// moment later, hundreds of times. Each reset stream must not become a dial, and the
/// connection is ended with GOAWAY ENHANCE_YOUR_CALM and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_rapid_reset_is_cut_off() {
    let (app, gw) = app_and_gateway([127, 0, 0, 80], |_| {}).await;
    let mut c = Raw::connect(gw.hbone, &[], true).await;
    let start = Instant::now();
    let sent = paced_rapid_reset(&mut c).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dials = app.accepted();
    eprintln!(
        "{sent} CONNECT+RST pairs in {:?}: {dials} dials, GOAWAY {:?}, {} HEADERS answered",
        start.elapsed(),
        c.goaway(),
        c.count(HEADERS)
    );
    assert_eq!(c.goaway(), Some(ENHANCE_YOUR_CALM));
    c.wait_closed().await;
    assert!(sent < 200, "{sent} pairs before GOAWAY");
    assert!(dials <= 110, "{dials} dials for {sent} reset streams");
    assert_eq!(gw.refused("enhance_your_calm").await, 1.0);
}

/// One paced rapid-reset run on a new connection as `cert`: the CONNECTs sent and the dials
/// they cost at `app`, once the gateway has closed the connection with ENHANCE_YOUR_CALM.
async fn cut_run(gw: &hbone_support::HboneGw, app: &App, cert: &pki::WorkloadCert) -> (u32, usize) {
    let before = app.accepted();
    let mut c = Raw::connect_as(gw.hbone, cert, &[], true).await;
    let sent = paced_rapid_reset(&mut c).await;
    c.wait_closed().await;
    // Dials already under way when the GOAWAY went out still land.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(c.goaway(), Some(ENHANCE_YOUR_CALM), "{sent} pairs sent");
    (sent, app.accepted() - before)
}

/// An identity whose connection was cut by the premature-reset rule cools: reconnecting
/// buys about 10 wasted dials, not another 100, while a different identity (the catalog
/// workload's certificate) still gets the full threshold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnecting_after_a_cut_is_cut_sooner() {
    let (app, gw) = app_and_gateway([127, 0, 0, 90], |_| {}).await;
    let first = cut_run(&gw, &app, &pki().client).await;
    let again = cut_run(&gw, &app, &pki().client).await;
    let other = cut_run(&gw, &app, &pki().destination).await;
    eprintln!("(pairs, dials): first {first:?}, reconnect {again:?}, other identity {other:?}");
    assert!(
        first.0 >= 100,
        "the first connection had the full threshold: {first:?}"
    );
    assert!(
        again.0 < 50,
        "the reconnect was cut at the lower threshold: {again:?}"
    );
    assert!(again.1 <= 20, "{} dials on the reconnect", again.1);
    assert!(
        other.0 >= 100,
        "another identity keeps the full threshold: {other:?}"
    );
    assert_eq!(gw.refused("enhance_your_calm").await, 3.0);
    assert_eq!(gw.metric("gateway_hbone_cooling_cuts_total").await, 1.0);
}

/// Connections opened before their identity's first cut (to dodge the rule by opening many
/// at once) look the identity up again after a cut: each is cut after about 10 pairs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_of_a_cut_identity_are_cut_sooner() {
    let (app, gw) = app_and_gateway([127, 0, 0, 91], |_| {}).await;
    let mut parallel = Vec::new();
    for _ in 0..3 {
        parallel.push(Raw::connect(gw.hbone, &[], true).await);
    }
    let first = cut_run(&gw, &app, &pki().client).await;
    let mut runs = Vec::new();
    for mut c in parallel {
        let before = app.accepted();
        let sent = paced_rapid_reset(&mut c).await;
        c.wait_closed().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(c.goaway(), Some(ENHANCE_YOUR_CALM));
        runs.push((sent, app.accepted() - before));
    }
    eprintln!("(pairs, dials): first {first:?}, opened before it {runs:?}");
    assert!(first.0 >= 100, "{first:?}");
    for r in &runs {
        assert!(
            r.0 < 50 && r.1 <= 20,
            "an open connection kept the full threshold: {r:?}"
        );
    }
    assert_eq!(gw.metric("gateway_hbone_cooling_cuts_total").await, 3.0);
}

/// Rapid reset in small batches: ten CONNECT + RST_STREAM pairs per write, under h2's limit
/// of 20 reset streams waiting to be accepted, so h2 hands each to the gateway already
/// reset. None may dial; the connection is cut off as above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_rapid_reset_dials_nothing() {
    let (app, gw) = app_and_gateway([127, 0, 0, 81], |_| {}).await;
    let mut c = Raw::connect(gw.hbone, &[], true).await;
    let block = connect_block(&authority());
    let start = Instant::now();
    let mut sent = 0u32;
    for batch in 0..100u32 {
        if c.goaway().is_some() || c.closed() || start.elapsed() > TIMEOUT {
            break;
        }
        let mut b = Vec::new();
        for i in 0..10 {
            let id = 1 + 2 * (batch * 10 + i);
            b.extend(frame(HEADERS, END_HEADERS, id, &block));
            b.extend(rst(id, CANCEL));
        }
        if c.send(&b).await.is_err() {
            break;
        }
        sent += 10;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dials = app.accepted();
    eprintln!(
        "{sent} CONNECT+RST pairs in batches of 10: {dials} dials, GOAWAY {:?}, {} HEADERS answered",
        c.goaway(),
        c.count(HEADERS)
    );
    assert_eq!(dials, 0);
    assert_eq!(c.goaway(), Some(ENHANCE_YOUR_CALM));
    c.wait_closed().await;
    assert_eq!(gw.refused("enhance_your_calm").await, 1.0);
}

/// A listener whose accept queue is full: SYNs to it are dropped, so a dial hangs until
/// `--connect-timeout` (a black-holed endpoint, on loopback). Returns the listener and the
/// connections that fill its queue.
async fn black_hole(ip: [u8; 4]) -> (tokio::net::TcpListener, Vec<TcpStream>, SocketAddr) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind((IpAddr::from(ip), 0).into()).unwrap();
    let l = sock.listen(0).unwrap();
    let addr = l.local_addr().unwrap();
    let mut fill = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => fill.push(s),
            _ => return (l, fill, addr),
        }
    }
    panic!("the accept queue of {addr} never filled");
}

/// A CONNECT whose dial hangs (black-holed endpoint) and that the client resets: the dial
/// is dropped at once and gives its `--hbone-max-tunnels` place back, instead of holding it
/// until `--connect-timeout` (and counting a connect failure against the endpoint).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_cancels_a_hanging_dial() {
    let live = App::start("catalog-1", [127, 0, 0, 82].into(), 0, AppMode::Echo)
        .await
        .unwrap();
    let (_l, _fill, hole) = black_hole([127, 0, 0, 83]).await;
    let dark = "dark.istioinaction.svc.cluster.local";
    let yaml = hbone_yaml(&[
        (SVC, &[(live.addr.ip(), live.addr.port())]),
        (dark, &[(hole.ip(), hole.port())]),
    ]);
    let gw = hbone_support::gateway(&yaml, |c| {
        c.connect_timeout = Duration::from_secs(3);
        c.hbone_max_tunnels = 1;
    })
    .await;
    let mut c = Raw::connect(gw.hbone, &[], true).await;
    c.connect_to(1, &format!("{dark}:80")).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(c.count(HEADERS), 0, "the dial should still hang");
    c.send(&rst(1, CANCEL)).await.unwrap();
    let t = Instant::now();
    // The only tunnel place is free again well before the 3 s connect timeout.
    let mut o = hbone_support::outer(gw.hbone, Some(&pki().client))
        .await
        .unwrap();
    let mut status = None;
    while t.elapsed() < Duration::from_secs(2) {
        let (s, io) = hbone_support::connect(&mut o, &authority()).await.unwrap();
        if s == http::StatusCode::OK {
            status = Some((s, t.elapsed()));
            drop(io);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("tunnel after the reset: {status:?}");
    assert!(
        status.is_some(),
        "the reset dial kept the only tunnel place"
    );
    assert_eq!(
        gw.metric("gateway_upstream_connect_failures_total").await,
        0.0
    );
}

/// CONTINUATION flood (CVE-2024-27316): HEADERS without END_HEADERS, then CONTINUATION frames
/// without end, empty or carrying a header value far over the header list limit. The
/// connection ends after a few frames with GOAWAY, nothing is dialed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_is_cut_off() {
    let (app, gw) = app_and_gateway([127, 0, 0, 84], |_| {}).await;
    for big in [false, true] {
        let mut c = Raw::connect(gw.hbone, &[], true).await;
        let mut block = connect_block(&authority());
        let filler = vec![b'a'; 16 * 1024];
        if big {
            // A literal `x-pad` header declaring a 64 MiB value.
            block.push(0x00);
            hpack_int(&mut block, 0, 7, 5);
            block.extend_from_slice(b"x-pad");
            hpack_int(&mut block, 0, 7, 64 << 20);
        }
        c.send(&frame(HEADERS, 0, 1, &block)).await.unwrap();
        let start = Instant::now();
        let mut bytes = 0usize;
        for _ in 0..100_000 {
            if c.closed() || start.elapsed() > TIMEOUT {
                break;
            }
            let payload: &[u8] = if big { &filler } else { &[] };
            if c.send(&frame(CONTINUATION, 0, 1, payload)).await.is_err() {
                break;
            }
            bytes += 9 + payload.len();
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        c.wait_closed().await;
        eprintln!(
            "CONTINUATION flood (value {big}): closed after {bytes} bytes, {:?}, GOAWAY {:?}",
            start.elapsed(),
            c.goaway()
        );
        assert!(c.goaway().is_some());
        assert!(bytes < 512 * 1024, "{bytes} bytes of CONTINUATION taken");
    }
    assert_eq!(app.accepted(), 0);
    assert!(gw.refused("enhance_your_calm").await >= 1.0);
}

/// A CONNECT whose header list is over MAX_HEADER_LIST (16 KiB) is answered 431 by h2 with
/// no dial; hundreds of them cost the gateway a small answer each (the client pays 20 KiB
/// per stream) and the connection goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_dial_nothing() {
    let (app, gw) = app_and_gateway([127, 0, 0, 85], |_| {}).await;
    let mut c = Raw::connect(gw.hbone, &[], true).await;
    let mut big = connect_block(&authority());
    big.push(0x00);
    hpack_int(&mut big, 0, 7, 5);
    big.extend_from_slice(b"x-pad");
    hpack_literal_value(&mut big, &[b'a'; 20 * 1024]);
    let n = 300u32;
    for i in 0..n {
        c.send(&frame(HEADERS, END_HEADERS, 1 + 2 * i, &big))
            .await
            .unwrap();
    }
    let last = 1 + 2 * n;
    c.connect_to(last, &authority()).await;
    hbone_support::eventually("all answered", || c.count(HEADERS) == n as usize + 1).await;
    assert_eq!(app.accepted(), 1, "only the normal CONNECT dials");
    assert!(!c.closed());
}

fn hpack_literal_value(out: &mut Vec<u8>, value: &[u8]) {
    hpack_int(out, 0x00, 7, value.len());
    out.extend_from_slice(value);
}

/// WINDOW_UPDATE past 2^31-1 ends the connection (FLOW_CONTROL_ERROR), so does a frame
/// longer than the MAX_FRAME the gateway advertised (FRAME_SIZE_ERROR, before its payload is
/// buffered), and DATA past a stream's 4 MiB window, into an endpoint that reads nothing,
/// resets that stream: what the gateway buffers for it is bounded by the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_overflow_and_oversized_frames() {
    let (_stalled, gw) =
        hbone_support::app_behind_gateway("stalled", AppMode::Stall, [127, 0, 0, 86], |_| {}).await;
    let mut c = Raw::connect(gw.hbone, &[], true).await;
    c.send(&window_update(0, 0x7fff_ffff)).await.unwrap();
    c.wait_closed().await;
    assert_eq!(c.goaway(), Some(FLOW_CONTROL_ERROR));

    let mut c = Raw::connect(gw.hbone, &[], true).await;
    let mut head = frame(DATA, 0, 1, &[]);
    head[..3].copy_from_slice(&(2u32 << 20).to_be_bytes()[1..]);
    // A little of the payload, in the same TLS record: the gateway refuses on the header
    // alone, and unread records left in its socket at the close would turn the FIN into a
    // reset that can overtake the GOAWAY. The write may still fail if it closes first.
    head.extend(vec![0u8; 1024]);
    let _ = c.send(&head).await;
    c.wait_closed().await;
    assert_eq!(c.goaway(), Some(FRAME_SIZE_ERROR));

    let mut c = Raw::connect(gw.hbone, &[], true).await;
    c.open_tunnel().await;
    let chunk = frame(DATA, 0, 1, &vec![0u8; 1 << 20]);
    let mut sent = 0;
    // Far past the window plus what the kernel's buffers absorb upstream.
    while sent < 32 && c.count(RST_STREAM) == 0 && !c.closed() {
        match tokio::time::timeout(Duration::from_secs(2), c.send(&chunk)).await {
            Ok(Ok(())) => sent += 1,
            _ => break,
        }
    }
    hbone_support::eventually("stream reset", || c.count(RST_STREAM) > 0).await;
    eprintln!("stream reset after {sent} MiB of DATA into a stalled endpoint");
    assert!(!c.closed(), "a stream error, not a connection error");
    assert_eq!(gw.refused("h2_error").await, 2.0);
}

/// Empty DATA frames (CVE-2019-9518) on an open tunnel: h2 allows 100 per connection, then
/// GOAWAY ENHANCE_YOUR_CALM, counted as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_data_flood_is_cut_off() {
    let (_app, gw) = app_and_gateway([127, 0, 0, 87], |_| {}).await;
    let mut c = Raw::connect(gw.hbone, &[], true).await;
    c.open_tunnel().await;
    let empty = frame(DATA, 0, 1, &[]);
    let mut n = 0;
    while n < 10_000 && !c.closed() {
        if c.send(&empty.repeat(50)).await.is_err() {
            break;
        }
        n += 50;
    }
    c.wait_closed().await;
    eprintln!("{n} empty DATA frames sent, GOAWAY {:?}", c.goaway());
    assert_eq!(c.goaway(), Some(ENHANCE_YOUR_CALM));
    assert_eq!(gw.refused("enhance_your_calm").await, 1.0);
    assert_eq!(gw.refused("h2_error").await, 0.0);
}

/// A client that floods PING and SETTINGS and never reads an answer: the gateway stops
/// reading once its answers back up. Once idle, the GOAWAY it cannot deliver must not keep
/// the connection open forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_flood_without_reading_is_closed() {
    let (_app, gw) = app_and_gateway([127, 0, 0, 88], |c| {
        c.hbone_idle_timeout = Duration::from_millis(300);
    })
    .await;
    let mut c = Raw::connect(gw.hbone, &[], false).await;
    let mut burst = Vec::new();
    for i in 0..1000u64 {
        burst.extend(frame(PING, 0, 0, &i.to_be_bytes()));
        burst.extend(settings(&[(0x3, 100)]));
    }
    let start = Instant::now();
    let mut written = 0usize;
    // Writes block once the gateway stops reading: bounded by count and by time.
    for _ in 0..2000 {
        match tokio::time::timeout(Duration::from_millis(500), c.send(&burst)).await {
            Ok(Ok(())) => written += burst.len(),
            _ => break,
        }
    }
    eprintln!(
        "control flood: {written} bytes taken in {:?} before the gateway stopped reading",
        start.elapsed()
    );
    assert!(
        written < 64 << 20,
        "the gateway kept reading: {written} bytes"
    );
    gw.wait_metric("gateway_hbone_connections_active", 0.0)
        .await;
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Zero-window stall: a client that opens its flow-control windows wide (INITIAL_WINDOW_SIZE
/// and the connection window at 2^31-1) and then never reads, on 50 tunnels whose upstreams
/// send as fast as they can. The gateway (the real binary) may hold only the connection's
/// queue toward its client (4 MiB, shared by the tunnels): its RSS growth is measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_window_reader_holds_bounded_memory() {
    const STREAMS: u32 = 50;
    let app = App::start("flood", [127, 0, 0, 89].into(), 0, AppMode::Flood)
        .await
        .unwrap();
    let yaml = hbone_yaml(&[(SVC, &[(app.addr.ip(), app.addr.port())])]);
    let h = hbone_support::hbone_process(&yaml, &[], "warn,gateway=info").await;
    let (p, hbone) = (&h.gw, h.hbone);
    let pid = p.child.id();

    let mut c = Raw::connect(hbone, &[(0x4, 0x7fff_ffff)], false).await;
    c.send(&window_update(0, 0x7fff_ffff - 65_535))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let base = rss_kib(pid);
    let block = connect_block(&authority());
    for i in 0..STREAMS {
        c.send(&frame(HEADERS, END_HEADERS, 1 + 2 * i, &block))
            .await
            .unwrap();
    }
    // Until every tunnel's upstream is dialed and RSS stops growing for a second, at most
    // 20 s (on a loaded machine the dials may trail a pause in growth).
    let start = Instant::now();
    let (mut last, mut steady) = (base, Instant::now());
    let settled = |steady: Instant| {
        app.accepted() == STREAMS as usize && steady.elapsed() >= Duration::from_secs(1)
    };
    while start.elapsed() < Duration::from_secs(20) && !settled(steady) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = rss_kib(pid);
        if now > last + 256 {
            (last, steady) = (now, Instant::now());
        }
    }
    let grown = rss_kib(pid).saturating_sub(base);
    eprintln!(
        "{STREAMS} stalled tunnels, {} upstream connections: gateway RSS +{} KiB ({} KiB per tunnel) after {:?}",
        app.accepted(),
        grown,
        grown / STREAMS as u64,
        start.elapsed()
    );
    assert_eq!(app.accepted(), STREAMS as usize);
    // The connection's 4 MiB queue, plus the tunnels' bookkeeping and the allocator's
    // slack (measured: about 5 MiB; before the shared queue, 17 MiB).
    assert!(
        grown < 8 * 1024,
        "RSS grew {grown} KiB for {STREAMS} stalled tunnels"
    );
}

/// A TLS handshake that stalls half-way (a ClientHello's first bytes, then nothing), or an
/// HTTP/2 preface that never comes after the handshake: both are closed at
/// `--detect-timeout` and counted `timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshake_and_preface_time_out() {
    let gw = hbone_support::gateway(&hbone_yaml(&[]), |c| {
        c.detect_timeout = Duration::from_millis(300);
    })
    .await;
    let mut half = TcpStream::connect(gw.hbone).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    let tcp = TcpStream::connect(gw.hbone).await.unwrap();
    let name = ServerName::IpAddress(IpAddr::from([127, 0, 0, 1]).into());
    let cfg = hbone_support::client_tls(Some(&pki().client), &pki().gateway.spiffe_id);
    let mut tls = TlsConnector::from(cfg).connect(name, tcp).await.unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, half.read_to_end(&mut buf))
        .await
        .expect("the stalled handshake is closed");
    let _ = tokio::time::timeout(TIMEOUT, tls.read_to_end(&mut buf))
        .await
        .expect("the connection without a preface is closed");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    gw.wait_metric("gateway_hbone_refused_total{reason=\"timeout\"}", 2.0)
        .await;
}

/// ztunnel's and Istio's gateway's keepalive: a PING every `--hbone-keepalive`; a client that
/// answers none (a stuck process whose kernel still acknowledges, which TCP keepalive does not
/// find) is closed after twice that, its tunnel too, counted `keepalive_timeout`. Before, the
/// gateway sent no PING and such a connection stayed for as long as its tunnel did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_answers_no_ping_is_closed() {
    let (_app, gw) = app_and_gateway([127, 0, 0, 89], |c| {
        c.hbone_keepalive = Duration::from_millis(200);
    })
    .await;
    let mut c = Raw::connect(gw.hbone, &[], true).await;
    c.open_tunnel().await;
    let start = Instant::now();
    c.wait_closed().await;
    let took = start.elapsed();
    let pings = c
        .seen
        .lock()
        .unwrap()
        .frames
        .iter()
        .filter(|f| f.0 == PING && f.1 == 0)
        .count();
    assert!(pings >= 1, "the gateway sent no PING");
    assert!(took >= Duration::from_millis(300), "closed after {took:?}");
    assert_eq!(gw.refused("keepalive_timeout").await, 1.0);
}

/// A client that answers its PINGs keeps its connection and tunnel through many periods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_answers_pings_keeps_its_connection() {
    // Half a second (a PONG may take a second on a loaded CI machine), five periods.
    let (_app, gw) = app_and_gateway([127, 0, 0, 90], |c| {
        c.hbone_keepalive = Duration::from_millis(500);
    })
    .await;
    let (_o, mut tx, mut rx) = hbone_support::greeted_tunnel(gw.hbone).await;
    tokio::time::sleep(Duration::from_millis(2600)).await;
    hbone_support::send_all(&mut tx, bytes::Bytes::from_static(b"still here"), true).await;
    let got = tokio::time::timeout(TIMEOUT, hbone_support::read_to_end(&mut rx, usize::MAX))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"still hereeof after 10 bytes\n");
    assert_eq!(gw.refused("keepalive_timeout").await, 0.0);
}

/// h2 sends the drain's last GOAWAY once the client answers the PING that came with the
/// first; a client that never does gets no new tunnel past a second's grace (REFUSED_STREAM,
/// nothing dialed), where before every new stream was served until the deadline. The tunnel
/// open at the deadline is counted `drain_deadline`, never `client_error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_streams_past_the_drains_grace_are_refused() {
    let (app, mut gw) = app_and_gateway([127, 0, 0, 91], |c| {
        c.drain_grace = Duration::from_millis(100);
        c.drain_timeout = Duration::from_millis(2500);
    })
    .await;
    let mut c = Raw::connect(gw.hbone, &[], true).await;
    c.open_tunnel().await;
    let bound = gw.gw.bound.take().unwrap();
    let hbone_metrics = bound.hbone_metrics.clone();
    let drain = tokio::spawn(bound.drain());
    hbone_support::eventually("GOAWAY", || c.goaway().is_some()).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    c.connect_to(3, &authority()).await;
    hbone_support::eventually("RST_STREAM on stream 3", || {
        c.seen
            .lock()
            .unwrap()
            .frames
            .iter()
            .any(|f| f.0 == RST_STREAM && f.2 == 3)
    })
    .await;
    let answered_3 = c
        .seen
        .lock()
        .unwrap()
        .frames
        .iter()
        .any(|f| f.0 == HEADERS && f.2 == 3);
    assert!(!answered_3, "stream 3 was answered");
    assert_eq!(app.accepted(), 1, "a stream past the grace was dialed");
    let out = tokio::time::timeout(TIMEOUT, drain).await.unwrap().unwrap();
    // The connection's task and its tunnel's.
    assert_eq!(out.forced, 2, "{out:?}");
    let m = hbone_metrics.expect("HBONE metrics");
    let closed = |outcome: &'static str| {
        let labels = gateway::hbone::metrics::TunnelCloseLabels {
            authority: authority(),
            outcome,
        };
        m.tunnels_closed.get_or_create(&labels).get()
    };
    assert_eq!(closed("drain_deadline"), 1);
    assert_eq!(closed("client_error"), 0);
}
