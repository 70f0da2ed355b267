//! Bytes both ways between an HBONE stream and the upstream TCP connection, unchanged, with
//! half-close: the client's END_STREAM becomes a write shutdown upstream, the upstream's FIN
//! becomes END_STREAM. Flow control is end to end: received capacity is released only once
//! written upstream, and upstream is read only as fast as the client's window opens and the
//! connection's queue toward the client has room ([`super::queued`]).

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use h2::{Reason, RecvStream, SendStream};
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;

use super::queued::Queue;
use crate::clock;
use crate::idle::{Next, Quiet};

/// Largest read from upstream per DATA frame batch.
pub const READ_CHUNK: usize = 64 * 1024;

/// Reads smaller than this are copied out of the tunnel's buffer before they are queued.
const COPY_BELOW: usize = 4 * 1024;

/// How a tunnel ended: the `outcome` label and the access log's `outcome`.
#[derive(Debug)]
pub enum End {
    /// Both directions finished (END_STREAM and FIN).
    Closed,
    /// The client reset the stream: CANCEL is how ztunnel ends a tunnel normally (`closed`),
    /// another code is a `client_error`.
    Reset(Reason),
    Idle,
    /// The DestinationRule's `maxConnectionDuration` passed ([`run`]'s `deadline`).
    MaxDuration,
    DrainDeadline,
    /// The client's connection failed, or a stream error.
    ClientError(h2::Error),
    UpstreamError(std::io::Error),
}

impl End {
    pub const OUTCOMES: [&'static str; 6] = [
        "closed",
        "idle_timeout",
        "max_duration",
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
            End::MaxDuration => "max_duration",
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

/// Runs until both directions end, either side fails, nothing moves for `idle`, or the
/// `deadline` passes (a DestinationRule's `maxConnectionDuration`). A tunnel that ended
/// cleanly waits for its last bytes to leave the connection's queue (or for the client to
/// reset it); one that did not resets its stream, so what it queued is dropped and its
/// budget given back either way.
pub async fn run(
    recv: RecvStream,
    mut send: SendStream<Bytes>,
    upstream: TcpStream,
    idle: Duration,
    deadline: Option<tokio::time::Instant>,
    p: &Progress,
    queue: &Queue,
) -> End {
    let stream = u32::from(send.stream_id());
    let _queued = Queued(queue, stream);
    let (ur, uw) = upstream.into_split();
    let end = {
        let to_client = to_client(ur, &mut send, p, queue, stream);
        let both = async { tokio::try_join!(to_upstream(recv, uw, p), to_client) };
        tokio::select! {
            r = both => match r {
                Ok(_) => End::Closed,
                Err(Fail::Reset(r)) => End::Reset(r),
                Err(Fail::Client(e)) => End::ClientError(e),
                Err(Fail::Upstream(e)) => End::UpstreamError(e),
            },
            _ = p.idle(idle) => End::Idle,
            _ = until(deadline) => End::MaxDuration,
        }
    };
    if matches!(end, End::Closed) {
        // A reset now (ztunnel's CANCEL when its app left) drops what is still queued.
        let flushed = async {
            tokio::select! {
                _ = poll_fn(|cx| queue.poll_flushed(stream, cx)) => {}
                _ = poll_fn(|cx| send.poll_reset(cx)) => {}
            }
        };
        tokio::select! {
            _ = flushed => return end,
            _ = p.idle(idle) => {}
        }
    }
    // Already reset by the client or h2, this does nothing; else h2 drops what the stream
    // has queued (dropping `send` would not once both sides sent END_STREAM).
    send.send_reset(Reason::CANCEL);
    end
}

/// Passes at `deadline`, or never. Boxed: only tunnels under a limit pay for its timer.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => Box::pin(tokio::time::sleep_until(d)).await,
        None => std::future::pending().await,
    }
}

/// Gives the connection's budget back for whatever the tunnel still has queued when it ends,
/// also when its future is dropped (the drain's deadline).
struct Queued<'a>(&'a Queue, u32);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.close(self.1);
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

/// Upstream to client, one read at a time: once upstream has bytes, the client's window
/// for them, then the connection's budget, then the read, so a tunnel that waits holds
/// nothing of the budget and an idle one not even a buffer.
async fn to_client(
    mut ur: tokio::net::tcp::OwnedReadHalf,
    send: &mut SendStream<Bytes>,
    p: &Progress,
    queue: &Queue,
    stream: u32,
) -> Result<(), Fail> {
    let mut buf = BytesMut::new();
    loop {
        // Biased, here and for the budget: while bytes flow, the reset is not looked at (a
        // lock of h2's) per read; `poll_capacity` and `send_data` report it.
        let ready = tokio::select! {
            biased;
            r = ur.ready(Interest::READABLE) => r.map_err(Fail::Upstream)?,
            reset = poll_fn(|cx| send.poll_reset(cx)) => return Err(reset_fail(reset)),
        };
        // The upstream's FIN with nothing before it ends the stream without waiting for a
        // window it does not need.
        if ready.is_read_closed() && ur.peek(&mut [0u8]).await.map_err(Fail::Upstream)? == 0 {
            return send.send_data(Bytes::new(), true).map_err(Fail::Client);
        }
        let granted = window(send, queue, stream).await?;
        let want = granted.min(READ_CHUNK);
        if buf.capacity() < want {
            buf = BytesMut::with_capacity(want);
        }
        // The read may keep its whole buffer allocated while queued: that is what it takes.
        let taken = tokio::select! {
            biased;
            t = queue.take(buf.capacity()) => t,
            reset = poll_fn(|cx| send.poll_reset(cx)) => return Err(reset_fail(reset)),
        };
        let n = match ur.try_read_buf(&mut (&mut buf).limit(want)) {
            Ok(n) => n,
            // Readiness was stale: the budget goes back, and the wait starts again.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(Fail::Upstream(e)),
        };
        if n == 0 {
            drop(taken);
            return send.send_data(Bytes::new(), true).map_err(Fail::Client);
        }
        // A small read is copied out, so that a trickle does not keep a buffer per few bytes;
        // a larger one goes as it is (no copy on the bulk path) and holds its buffer.
        let (chunk, kept) = if n < COPY_BELOW {
            let c = Bytes::copy_from_slice(&buf);
            buf.clear();
            (c, n)
        } else {
            let kept = buf.capacity();
            (buf.split().freeze(), kept)
        };
        queue.hand(stream, taken, n, kept);
        send.send_data(chunk, false).map_err(Fail::Client)?;
        p.add_received(n);
    }
}

/// The client's window for the next read: a full read's, or whatever there is once h2 has
/// sent all the stream queued. While bytes of the stream are still queued, waiting for a
/// full read's window costs nothing (h2 has bytes to send) and keeps reads large: read to fit
/// each small return of window, a stream would settle into small reads and frames.
async fn window(send: &mut SendStream<Bytes>, queue: &Queue, stream: u32) -> Result<usize, Fail> {
    send.reserve_capacity(READ_CHUNK);
    loop {
        // Window already assigned counts: `poll_capacity` only reports increases.
        let c = send.capacity();
        if c >= READ_CHUNK || (c > 0 && !queue.has_queued(stream)) {
            return Ok(c);
        }
        tokio::select! {
            biased;
            r = poll_fn(|cx| send.poll_capacity(cx)) => match r {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(Fail::Client(e)),
                None => return Err(reset_fail(poll_fn(|cx| send.poll_reset(cx)).await)),
            },
            _ = poll_fn(|cx| queue.poll_flushed(stream, cx)), if c > 0 => {}
        }
    }
}
