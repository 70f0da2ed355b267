//! One descriptor that each admin listener (status, admin) keeps in reserve, so that kubelet
//! probes and load-balancer health checks are still answered when the data path has taken
//! every descriptor `RLIMIT_NOFILE` allows. Without it, accepts on the status port fail with
//! EMFILE like every other, and the pod is restarted or pulled from the balancer for an
//! overload it could have reported.
//!
//! The design, decided here:
//! - The spare is a duplicate of the listener's own socket, not `/dev/null` (nginx, libev)
//!   or `/` (libuv): it needs no file system (distroless, read-only root) and pins no other
//!   kernel object. Only EMFILE, the per-process limit, uses it (`local_error::classify`
//!   groups it with ENFILE): closing a duplicate frees a descriptor slot, not a system-wide
//!   file, so it would not help against ENFILE.
//! - On EMFILE the listener closes the spare and calls `accept4` at once, with no await in
//!   between, and serves that one connection (one request, no keep-alive, a short head
//!   timeout; kubelet probes are one request per connection too, `DisableKeepAlives`, in
//!   kubernetes/kubernetes `pkg/probe/http/http.go`). While it is out, further EMFILE accepts
//!   wait and retry as before.
//! - When that connection ends its descriptor becomes the spare again: `dup3` puts a
//!   duplicate of the listener in its place, which closes the socket without the slot ever
//!   being free, so the data path cannot take it on the way back. (Closing the socket and
//!   opening a new spare lost the slot to the data path's next retry in every test run.)
//! - The spare and a connection served on it end with the accept loop, so the listening
//!   socket is not kept open past it.
//! - What remains: the slot is free between `close` and `accept4`, two syscalls on one
//!   thread; a descriptor another thread opens in those microseconds (the data path retries
//!   its accepts every 20 ms) takes it. The reserve is then missing and is taken again at the
//!   first descriptor that frees, checked at every accept and retry. One connection at a
//!   time is served this way; a client that holds it (up to the head timeout) delays probes.

use std::future::poll_fn;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rustix::io::{DupFlags, Errno, dup3};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use super::limits::ListenerLabels;

/// Descriptors the admin listeners hold in reserve: one each, admin and status.
pub const SPARES: u64 = 2;

/// The request head of a connection served on the reserve must arrive within this (a
/// probe's comes with the handshake), so that an idle client gives the reserve back soon.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// At most one warning per this while the reserve is in use.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Whether `e` is the per-process descriptor limit (EMFILE), the one the reserve works for.
pub fn is_emfile(e: &io::Error) -> bool {
    e.raw_os_error() == Some(Errno::MFILE.raw_os_error())
}

/// `gateway_admin_reserved_accepts_total{listener}`.
#[derive(Clone, Default)]
pub struct ReserveMetrics {
    used: Family<ListenerLabels, Counter>,
}

impl ReserveMetrics {
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = ReserveMetrics::default();
        registry.sub_registry_with_prefix("admin").register(
            "reserved_accepts",
            "Admin and status connections served on the listener's reserved descriptor \
             while the process was out of descriptors (EMFILE)",
            m.used.clone(),
        );
        m
    }
}

enum Spare {
    /// Ready to be closed for one accept.
    Held(OwnedFd),
    /// A connection holds the slot and puts the spare back when it ends.
    Lent,
    /// Lost to another thread, or not put back: taken again when a descriptor frees.
    Missing,
}

/// One listener's reserve, owned by its accept loop.
pub struct Reserve {
    listener: Arc<TcpListener>,
    spare: Arc<Mutex<Spare>>,
    name: &'static str,
    used: Counter,
    last_log: Option<Instant>,
    since_log: u64,
}

fn lock(spare: &Mutex<Spare>) -> MutexGuard<'_, Spare> {
    spare.lock().unwrap_or_else(|e| e.into_inner())
}

impl Reserve {
    /// Takes the spare for `listener` (named `name` in metrics and logs).
    pub fn new(listener: Arc<TcpListener>, name: &'static str, metrics: &ReserveMetrics) -> Self {
        let mut r = Reserve {
            listener,
            spare: Arc::new(Mutex::new(Spare::Missing)),
            name,
            used: metrics
                .used
                .get_or_create(&ListenerLabels { listener: name })
                .clone(),
            last_log: None,
            since_log: 0,
        };
        r.refill();
        r
    }

    /// Takes the spare again if it is missing; a no-op (one lock) otherwise.
    pub fn refill(&mut self) {
        let mut spare = lock(&self.spare);
        if matches!(*spare, Spare::Missing)
            && let Ok(fd) = self.listener.as_fd().try_clone_to_owned()
        {
            *spare = Spare::Held(fd);
        }
    }

    /// After an accept failed with EMFILE: frees the spare's slot and accepts into it.
    /// `None` when the spare is out, nothing is waiting, or another thread took the slot.
    pub async fn accept(&mut self) -> Option<Reserved> {
        {
            // One lock: a connection ending meanwhile may put the spare back.
            let mut spare = lock(&self.spare);
            match std::mem::replace(&mut *spare, Spare::Lent) {
                Spare::Held(fd) => drop(fd),
                other => {
                    *spare = other;
                    return None;
                }
            }
        }
        // Polled once, right now: the freed slot must not wait for the next wakeup.
        let listener = self.listener.clone();
        match poll_fn(|cx| Poll::Ready(listener.poll_accept(cx))).await {
            Poll::Ready(Ok((stream, _))) => {
                self.used();
                Some(Reserved {
                    stream: Some(stream),
                    listener,
                    spare: self.spare.clone(),
                })
            }
            Poll::Ready(Err(e)) => {
                tracing::debug!(listener = self.name, error = %e, "reserved descriptor lost");
                *lock(&self.spare) = Spare::Missing;
                self.refill();
                None
            }
            Poll::Pending => {
                *lock(&self.spare) = Spare::Missing;
                self.refill();
                None
            }
        }
    }

    fn used(&mut self) {
        self.used.inc();
        self.since_log += 1;
        let now = Instant::now();
        if self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= LOG_EVERY)
        {
            tracing::warn!(
                listener = self.name,
                connections = self.since_log,
                "out of descriptors (EMFILE): served on the listener's reserved descriptor, one \
                 connection at a time; raise the descriptor limit (LimitNOFILE=, ulimit -Hn) or \
                 lower the connection limits"
            );
            self.last_log = Some(now);
            self.since_log = 0;
        }
    }
}

/// A connection accepted on the reserve; its descriptor becomes the spare again on drop.
pub struct Reserved {
    /// `None` only during drop.
    stream: Option<TcpStream>,
    listener: Arc<TcpListener>,
    spare: Arc<Mutex<Spare>>,
}

impl Reserved {
    fn stream(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        match &mut self.stream {
            Some(s) => Ok(Pin::new(s)),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        let back = self.stream.take().and_then(|s| {
            let mut fd = OwnedFd::from(s.into_std().ok()?);
            // Replaces the socket (closing it) while the slot stays this process's.
            dup3(&*self.listener, &mut fd, DupFlags::CLOEXEC).ok()?;
            Some(fd)
        });
        *lock(&self.spare) = match back {
            Some(fd) => Spare::Held(fd),
            None => Spare::Missing,
        };
    }
}

impl AsyncRead for Reserved {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => s.poll_read(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

impl AsyncWrite for Reserved {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.stream() {
            Ok(s) => s.poll_write(cx, buf),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => s.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.stream() {
            Ok(s) => s.poll_shutdown(cx),
            Err(e) => Poll::Ready(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn held_addr(r: &Reserve) -> Option<std::net::SocketAddr> {
        match &*lock(&r.spare) {
            Spare::Held(fd) => rustix::net::getsockname(fd)
                .ok()
                .and_then(|a| std::net::SocketAddr::try_from(a).ok()),
            _ => None,
        }
    }

    /// The reserve accepts into the spare's slot, and when the connection ends the slot
    /// holds a duplicate of the listener again while the client sees its connection close.
    #[tokio::test]
    async fn the_slot_goes_to_one_connection_and_comes_back() {
        let listener = Arc::new(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let addr = listener.local_addr().unwrap();
        let metrics = ReserveMetrics::default();
        let mut reserve = Reserve::new(listener, "status", &metrics);
        assert_eq!(held_addr(&reserve), Some(addr));

        let mut client = TcpStream::connect(addr).await.unwrap();
        // Until the reactor has seen the connection, the one poll may find nothing.
        let mut reserved = None;
        for _ in 0..100 {
            reserved = reserve.accept().await;
            if reserved.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let reserved = reserved.expect("the queued connection was never accepted");
        assert!(matches!(*lock(&reserve.spare), Spare::Lent));
        // While lent, the reserve serves nobody else.
        assert!(reserve.accept().await.is_none());
        assert!(matches!(*lock(&reserve.spare), Spare::Lent));

        drop(reserved);
        assert_eq!(held_addr(&reserve), Some(addr));
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(2), client.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "the client's connection stayed open: {read:?}"
        );
        let used = metrics
            .used
            .get_or_create(&ListenerLabels { listener: "status" });
        assert_eq!(used.get(), 1);
    }

    #[test]
    fn only_the_process_limit_uses_the_reserve() {
        let os = |e: Errno| io::Error::from_raw_os_error(e.raw_os_error());
        assert!(is_emfile(&os(Errno::MFILE)));
        assert!(!is_emfile(&os(Errno::NFILE)));
        assert!(!is_emfile(&os(Errno::CONNABORTED)));
        assert!(!is_emfile(&io::ErrorKind::Other.into()));
    }
}
