//! Byte forwarding between the client and the upstream, both directions, until both end.
//!
//! Each direction waits for readiness and reads into a stack buffer, so an idle connection
//! holds no userspace buffer at all; only bytes the peer cannot take yet are kept on the
//! heap. A FIN one way becomes a write shutdown the other way and the reverse direction goes
//! on (half-close), which TLS close_notify and request/response protocols rely on.

use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use socket2::SockRef;
use tokio::net::TcpStream;

use crate::clock;

const CHUNK: usize = 16 * 1024;

/// How forwarding ended.
#[derive(Debug)]
pub enum End {
    /// Both directions saw EOF and were shut down in turn.
    Done,
    /// No byte either way for the idle timeout.
    Idle,
    /// A socket error (reset, broken pipe) on either side; both were closed.
    Error(io::Error),
}

impl End {
    pub fn as_str(&self) -> &'static str {
        match self {
            End::Done => "ok",
            End::Idle => "idle_timeout",
            End::Error(_) => "error",
        }
    }
}

/// Live byte counts of one connection, updated as bytes move.
pub struct Progress {
    pub sent: Counter,
    pub received: Counter,
    sent_total: AtomicU64,
    received_total: AtomicU64,
}

impl Progress {
    pub fn new(sent: Counter, received: Counter) -> Self {
        Progress {
            sent,
            received,
            sent_total: AtomicU64::new(0),
            received_total: AtomicU64::new(0),
        }
    }

    /// Counts bytes sent upstream outside the copy loop (the replayed ClientHello).
    pub fn add_sent(&self, n: u64) {
        self.sent.inc_by(n);
        self.sent_total.fetch_add(n, Ordering::Relaxed);
    }

    /// (client to upstream, upstream to client) so far.
    pub fn totals(&self) -> (u64, u64) {
        (
            self.sent_total.load(Ordering::Relaxed),
            self.received_total.load(Ordering::Relaxed),
        )
    }
}

/// Copies `client <-> upstream` until both directions are done, the idle timeout passes, or
/// an error occurs.
pub async fn run(client: &TcpStream, upstream: &TcpStream, idle: Duration, p: &Progress) -> End {
    let last = AtomicU64::new(clock::now_ms());
    let up = one_way(client, upstream, &p.sent, &p.sent_total, &last);
    let down = one_way(upstream, client, &p.received, &p.received_total, &last);
    tokio::select! {
        r = async { tokio::try_join!(up, down) } => match r {
            Ok(_) => End::Done,
            Err(e) => End::Error(e),
        },
        _ = idle_watch(&last, idle) => End::Idle,
    }
}

async fn one_way(
    src: &TcpStream,
    dst: &TcpStream,
    counter: &Counter,
    total: &AtomicU64,
    last: &AtomicU64,
) -> io::Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    loop {
        src.readable().await?;
        // The buffer lives only between awaits, so it is not part of the task's state.
        let got = {
            let mut buf = [0u8; CHUNK];
            match src.try_read(&mut buf) {
                Ok(0) => None,
                Ok(n) => {
                    let written = match dst.try_write(&buf[..n]) {
                        Ok(w) => w,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
                        Err(e) => return Err(e),
                    };
                    if written < n {
                        pending.extend_from_slice(&buf[written..n]);
                    }
                    Some(n)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        let Some(n) = got else {
            // EOF: pass the FIN on and let the other direction finish.
            match SockRef::from(dst).shutdown(Shutdown::Write) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return Ok(()),
                Err(e) => return Err(e),
            }
        };
        last.store(clock::now_ms(), Ordering::Relaxed);
        counter.inc_by(n as u64);
        total.fetch_add(n as u64, Ordering::Relaxed);
        while !pending.is_empty() {
            dst.writable().await?;
            match dst.try_write(&pending) {
                Ok(w) => {
                    pending.drain(..w);
                    last.store(clock::now_ms(), Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        if pending.capacity() > CHUNK {
            pending = Vec::new();
        }
    }
}

async fn idle_watch(last: &AtomicU64, idle: Duration) {
    let idle_ms = idle.as_millis().max(1) as u64;
    loop {
        let deadline = last.load(Ordering::Relaxed) + idle_ms;
        let now = clock::now_ms();
        if now >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(deadline - now)).await;
    }
}
