//! What one client may hold on the admin and status listeners. The status port is the one a
//! load balancer exposes and the kubelet probes, and its descriptors come from the same limit
//! as the data path's, so an unbounded number of idle or stalled connections there would
//! take both down. Each listener keeps at most [`Limits::max_connections`]; a new connection
//! beyond it closes the **oldest** (it is the undecided budget of 15443, without a byte limit), so a flood evicts
//! itself while a probe, served within a millisecond of its accept, gets its answer. Each
//! connection is also bounded in time: the request head within `header_read`, a response
//! write that makes no progress for `write_stall` is cut, and every connection is asked to
//! close after `lifetime` and cut `grace` later.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::undecided::Undecided;

/// Connections each admin listener (admin, status) keeps at most.
pub const MAX_CONNECTIONS: usize = 256;

/// Largest request head (request line and headers) read; hyper's default is about 400 KiB,
/// which every slowloris connection could make the gateway hold.
pub const MAX_HEAD: usize = 16 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_read: Duration,
    pub write_stall: Duration,
    pub lifetime: Duration,
    pub grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Probes, scrapes and balancer health checks need a handful; the rest is headroom
            // so that a flood's newest connections cannot evict a probe before it is served.
            max_connections: MAX_CONNECTIONS,
            header_read: Duration::from_secs(10),
            write_stall: Duration::from_secs(10),
            lifetime: Duration::from_secs(60),
            grace: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CutLabels {
    pub listener: &'static str,
    /// `shed`, `header_timeout`, `idle`, `write_stall`, `lifetime` or `bad_request`.
    pub reason: &'static str,
}

/// The admin listeners' own counters (`gateway_admin_*`).
#[derive(Clone, Default)]
pub struct AdminMetrics {
    pub open: Family<ListenerLabels, Gauge>,
    pub cut: Family<CutLabels, Counter>,
}

impl AdminMetrics {
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = AdminMetrics::default();
        let r = registry.sub_registry_with_prefix("admin");
        r.register(
            "connections",
            "Open connections on the admin and status listeners",
            m.open.clone(),
        );
        r.register(
            "connections_cut",
            "Admin and status connections closed by the gateway, by reason",
            m.cut.clone(),
        );
        m
    }

    pub fn cut(&self, listener: &'static str, reason: &'static str) {
        self.cut
            .get_or_create(&CutLabels { listener, reason })
            .inc();
    }
}

/// One listener's open connections: the budget of 15443's undecided connections, without
/// its byte limit. At `max`, a new connection sheds the oldest ([`crate::undecided::Ticket::shed`] fires).
pub fn conns(max: usize, listener: &'static str, metrics: &AdminMetrics) -> Arc<Undecided> {
    let open = metrics
        .open
        .get_or_create(&ListenerLabels { listener })
        .clone();
    Arc::new(Undecided::new(max, usize::MAX, open, Gauge::default()))
}

/// A stream whose writes fail with `TimedOut` once one has waited `stall` without progress:
/// a client that pipelines requests and never reads the answers (or reads a large response
/// not at all) would otherwise keep its connection, and a large-response permit, forever.
/// It also tells whether bytes arrived since the last write, i.e. whether a request head
/// is under way, for naming a header timeout.
pub struct StallGuard<T> {
    io: T,
    stall: Duration,
    /// Armed while a write is pending; reset by any progress.
    timer: Option<Pin<Box<Sleep>>>,
    head_started: Arc<AtomicBool>,
}

impl<T> StallGuard<T> {
    pub fn new(io: T, stall: Duration) -> Self {
        StallGuard {
            io,
            stall,
            timer: None,
            head_started: Arc::default(),
        }
    }

    /// Set while bytes have been read and nothing written since.
    pub fn head_started(&self) -> Arc<AtomicBool> {
        self.head_started.clone()
    }

    fn wrote(&self, polled: &Poll<io::Result<usize>>) {
        if matches!(polled, Poll::Ready(Ok(n)) if *n > 0) {
            self.head_started.store(false, Ordering::Relaxed);
        }
    }

    /// After a write poll: a ready one disarms, a pending one arms (once) and checks.
    fn check<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.timer = None;
            return polled;
        }
        let stall = self.stall;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + stall)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "admin client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Whether `e` came from a [`StallGuard`].
pub fn is_write_stall(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::TimedOut)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

impl<T: AsyncRead + Unpin> AsyncRead for StallGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.head_started.store(true, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(&polled);
        self.check(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(&polled);
        self.check(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.check(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_shutdown(cx);
        self.check(cx, polled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_oldest_connection_is_shed_and_places_come_back() {
        let metrics = AdminMetrics::default();
        let conns = conns(2, "status", &metrics);
        let gauge = || {
            metrics
                .open
                .get_or_create(&ListenerLabels { listener: "status" })
                .get()
        };
        let first = conns.admit();
        let second = conns.admit();
        assert_eq!(gauge(), 2);
        let third = conns.admit();
        assert!(first.is_shed(), "the oldest goes");
        assert!(!second.is_shed() && !third.is_shed());
        first.shed().await;
        drop(first);
        assert_eq!(gauge(), 2);
        drop(second);
        assert_eq!(gauge(), 1);
        let fourth = conns.admit();
        assert!(!third.is_shed(), "a free place sheds nobody");
        drop((third, fourth));
        assert_eq!(gauge(), 0);
    }

    #[tokio::test]
    async fn a_write_that_makes_no_progress_times_out() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut guarded = StallGuard::new(a, Duration::from_millis(100));
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // Progress keeps it alive past the stall time, in total.
        let started = Instant::now();
        for _ in 0..5 {
            guarded.write_all(&[1; 64]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(40)).await;
            let mut buf = [0; 64];
            b.read_exact(&mut buf).await.unwrap();
        }
        assert!(started.elapsed() >= Duration::from_millis(200));
        // Nobody reads: the next write fails after the stall time.
        guarded.write_all(&[1; 64]).await.unwrap();
        let err = guarded.write_all(&[1; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(is_write_stall(&err));
    }
}
