//! Bytes both ways between an HBONE stream and the upstream TCP connection, unchanged, with
//! half-close: the client's END_STREAM becomes a write shutdown upstream, the upstream's FIN
//! becomes END_STREAM. Flow control is end to end: received capacity is released only once
//! written upstream, and upstream is read only as fast as the client's window opens.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::clock;
use crate::idle::{Next, Quiet};

/// Largest read from upstream per DATA frame batch.
pub const READ_CHUNK: usize = 64 * 1024;

/// How a tunnel ended: the `outcome` label and the access log's `outcome`.
#[derive(Debug)]
pub enum End {
    /// Both directions finished (END_STREAM and FIN).
    Closed,
    /// The client reset the stream: CANCEL is how ztunnel ends a tunnel normally (`closed`),
    /// another code is a `client_error`.
    Reset(Reason),
    Idle,
    DrainDeadline,
    /// The client's connection failed, or a stream error.
    ClientError(h2::Error),
    UpstreamError(std::io::Error),
}

impl End {
    pub const OUTCOMES: [&'static str; 5] = [
        "closed",
        "idle_timeout",
        "drain_deadline",
        "client_error",
        "upstream_error",
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::Reset(r) if *r == Reason::CANCEL => "closed",
            End::Reset(_) => "client_error",
            End::Idle => "idle_timeout",
            End::DrainDeadline => "drain_deadline",
            End::ClientError(_) => "client_error",
            End::UpstreamError(_) => "upstream_error",
        }
    }
}

/// Bytes each way so far (for the access log), and whether any moved since the idle timer
/// last fired ([`crate::idle`]: a flag, not a clock reading per chunk).
pub struct Progress {
    sent: Counter,
    received: Counter,
    sent_total: AtomicU64,
    received_total: AtomicU64,
    moved: AtomicBool,
}

impl Progress {
    pub fn new(sent: Counter, received: Counter) -> Self {
        Progress {
            sent,
            received,
            sent_total: AtomicU64::new(0),
            received_total: AtomicU64::new(0),
            moved: AtomicBool::new(false),
        }
    }

    fn add_sent(&self, n: usize) {
        self.sent.inc_by(n as u64);
        self.sent_total.fetch_add(n as u64, Ordering::Relaxed);
        self.moved.store(true, Ordering::Relaxed);
    }

    fn add_received(&self, n: usize) {
        self.received.inc_by(n as u64);
        self.received_total.fetch_add(n as u64, Ordering::Relaxed);
        self.moved.store(true, Ordering::Relaxed);
    }

    /// (client to upstream, upstream to client)
    pub fn totals(&self) -> (u64, u64) {
        (
            self.sent_total.load(Ordering::Relaxed),
            self.received_total.load(Ordering::Relaxed),
        )
    }

    async fn idle(&self, idle: Duration) {
        let mut quiet = Quiet::new(idle);
        let mut wait = quiet.first_check();
        // Bounded by the timeout itself: at most CHECKS firings without bytes moving.
        loop {
            tokio::time::sleep(wait).await;
            let moved = self.moved.swap(false, Ordering::Relaxed);
            match quiet.fired(clock::now_ms(), moved) {
                Next::Idle => return,
                Next::CheckIn(ms) => wait = Duration::from_millis(ms),
            }
        }
    }
}

enum Fail {
    /// RST_STREAM from the client.
    Reset(Reason),
    Client(h2::Error),
    Upstream(std::io::Error),
}

/// Runs until both directions end, either side fails, or nothing moves for `idle`.
pub async fn run(
    recv: RecvStream,
    send: SendStream<Bytes>,
    upstream: TcpStream,
    idle: Duration,
    p: &Progress,
) -> End {
    let (ur, uw) = upstream.into_split();
    let both = async { tokio::try_join!(to_upstream(recv, uw, p), to_client(ur, send, p)) };
    tokio::select! {
        r = both => match r {
            Ok(_) => End::Closed,
            Err(Fail::Reset(r)) => End::Reset(r),
            Err(Fail::Client(e)) => End::ClientError(e),
            Err(Fail::Upstream(e)) => End::UpstreamError(e),
        },
        _ = p.idle(idle) => End::Idle,
    }
}

fn client_fail(e: h2::Error) -> Fail {
    match e.reason() {
        Some(r) if e.is_reset() && e.is_remote() => Fail::Reset(r),
        _ => Fail::Client(e),
    }
}

fn reset_fail(reset: Result<Reason, h2::Error>) -> Fail {
    match reset {
        Ok(r) => Fail::Reset(r),
        Err(e) => client_fail(e),
    }
}

async fn to_upstream(
    mut recv: RecvStream,
    mut uw: tokio::net::tcp::OwnedWriteHalf,
    p: &Progress,
) -> Result<(), Fail> {
    while let Some(data) = recv.data().await {
        let data = data.map_err(client_fail)?;
        uw.write_all(&data).await.map_err(Fail::Upstream)?;
        p.add_sent(data.len());
        // Released only now: the client's window tracks what upstream actually took.
        let _ = recv.flow_control().release_capacity(data.len());
    }
    // A reset after DATA shows up here too: `data()` ends, `trailers` tells.
    if let Err(e) = recv.trailers().await {
        return Err(client_fail(e));
    }
    uw.shutdown().await.map_err(Fail::Upstream)
}

async fn to_client(
    mut ur: tokio::net::tcp::OwnedReadHalf,
    mut send: SendStream<Bytes>,
    p: &Progress,
) -> Result<(), Fail> {
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        buf.reserve(READ_CHUNK);
        let n = tokio::select! {
            r = ur.read_buf(&mut buf) => r.map_err(Fail::Upstream)?,
            reset = poll_fn(|cx| send.poll_reset(cx)) => return Err(reset_fail(reset)),
        };
        if n == 0 {
            return send.send_data(Bytes::new(), true).map_err(Fail::Client);
        }
        let mut chunk = buf.split().freeze();
        while !chunk.is_empty() {
            send.reserve_capacity(chunk.len());
            let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(c)) => c,
                Some(Err(e)) => return Err(Fail::Client(e)),
                None => return Err(reset_fail(poll_fn(|cx| send.poll_reset(cx)).await)),
            };
            if granted == 0 {
                continue;
            }
            let part = chunk.split_to(granted.min(chunk.len()));
            let len = part.len();
            send.send_data(part, false).map_err(Fail::Client)?;
            p.add_received(len);
        }
    }
}
