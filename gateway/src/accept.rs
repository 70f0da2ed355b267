//! The accept loop both listeners (15443 and 15008) run, and its failures, counted and
//! logged without flooding: when descriptors run out, the loop retries every few
//! milliseconds and each retry fails the same way. The first failure is logged at once, then
//! at most one summary per [`SUMMARY_EVERY`], and one line when accepting works again.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::local_error;
use crate::metrics::KindLabels;
use crate::sockets;

pub const SUMMARY_EVERY: Duration = Duration::from_secs(5);

/// Pause after a failed accept (EMFILE and friends) instead of spinning on it.
const RETRY_AFTER: Duration = Duration::from_millis(20);

/// Most connections taken from the backlog once stopped: more than Linux queues on one
/// listener ([`sockets::BACKLOG`], itself capped by `net.core.somaxconn`).
const BACKLOG_TAKEN_MAX: usize = sockets::BACKLOG as usize + 1;

/// Accepts on `listener` until `stop` is cancelled and hands each connection to `on_accept`,
/// which must not block (it spawns), with its peer in canonical form (an IPv4 client of a
/// dual-stack socket as `a.b.c.d`). Failures are counted in `errors` by kind.
///
/// Once stopped, it takes what the backlog holds without waiting for more (see
/// [`take_backlog`]) and hands those connections over as any other: the caller then closes
/// the listener, which would reset each connection still queued, whose client completed its
/// handshake and may have sent its hello already.
pub async fn accept_until(
    listener: &TcpListener,
    stop: &CancellationToken,
    errors: Family<KindLabels, Counter>,
    mut on_accept: impl FnMut(TcpStream, SocketAddr),
) {
    let mut errors = AcceptErrors::new(errors);
    // One stop waiter for the whole loop: a new `cancelled()` per accept would add and
    // remove a waiter, two locks, per connection.
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut stopped => {
                let taken = take_backlog(listener, &mut errors, &mut on_accept);
                if taken > 0 {
                    info!(taken, "stopped accepting: took the connections already queued");
                }
                return;
            }
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, peer)) => {
                errors.succeeded();
                on_accept(stream, sockets::canonical(peer));
            }
            Err(e) => {
                errors.failed(&e);
                tokio::time::sleep(RETRY_AFTER).await;
            }
        }
    }
}

/// Non-blocking accepts until the backlog is empty (`EAGAIN`), an accept fails, or
/// [`BACKLOG_TAKEN_MAX`]: the connections queued when the listener stops, which closing it
/// would reset. Returns how many were handed to `on_accept`.
fn take_backlog(
    listener: &TcpListener,
    errors: &mut AcceptErrors,
    on_accept: &mut impl FnMut(TcpStream, SocketAddr),
) -> usize {
    let socket = socket2::SockRef::from(listener);
    let mut taken = 0;
    for _ in 0..BACKLOG_TAKEN_MAX {
        // The listening socket is non-blocking (tokio's), so this never waits.
        let accepted = socket.accept().and_then(|(s, addr)| {
            s.set_nonblocking(true)?;
            let stream = TcpStream::from_std(s.into())?;
            let peer = match addr.as_socket() {
                Some(peer) => peer,
                None => stream.peer_addr()?,
            };
            Ok((stream, peer))
        });
        match accepted {
            Ok((stream, peer)) => {
                errors.succeeded();
                on_accept(stream, sockets::canonical(peer));
                taken += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // That one client gave up while queued; the others are still there.
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => errors.failed(&e),
            Err(e) => {
                // Out of descriptors, most likely: what is left is reset as the listener closes.
                errors.failed(&e);
                break;
            }
        }
    }
    taken
}

/// The accept loop's failure streak. Owned by the loop, so no locking.
struct AcceptErrors {
    counter: Family<KindLabels, Counter>,
    /// Start of the current streak of failures, and its length.
    streak: Option<(Instant, u64)>,
    last_log: Instant,
    since_log: u64,
}

impl AcceptErrors {
    fn new(counter: Family<KindLabels, Counter>) -> Self {
        AcceptErrors {
            counter,
            streak: None,
            last_log: Instant::now(),
            since_log: 0,
        }
    }

    fn failed(&mut self, e: &io::Error) {
        let kind = local_error::classify(e).map_or("other", |k| k.as_str());
        self.counter.get_or_create(&KindLabels { kind }).inc();
        let now = Instant::now();
        match &mut self.streak {
            None => {
                self.streak = Some((now, 1));
                self.last_log = now;
                self.since_log = 0;
                warn!(error = %e, kind, "accept failed; retrying, further failures are summarized");
            }
            Some((_, n)) => {
                *n += 1;
                self.since_log += 1;
                if now.duration_since(self.last_log) >= SUMMARY_EVERY {
                    warn!(error = %e, kind, errors = self.since_log, total = *n, "accept still failing");
                    self.last_log = now;
                    self.since_log = 0;
                }
            }
        }
    }

    fn succeeded(&mut self) {
        if let Some((since, n)) = self.streak.take() {
            info!(
                errors = n,
                failing_ms = since.elapsed().as_millis() as u64,
                "accept recovered"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_failure_by_kind_and_resets_on_success() {
        let family = Family::<KindLabels, Counter>::default();
        let mut errs = AcceptErrors::new(family.clone());
        let emfile = io::Error::from_raw_os_error(rustix::io::Errno::MFILE.raw_os_error());
        for _ in 0..100 {
            errs.failed(&emfile);
        }
        errs.failed(&io::ErrorKind::ConnectionAborted.into());
        let count = |kind| family.get_or_create(&KindLabels { kind }).get();
        assert_eq!(count("out_of_descriptors"), 100);
        assert_eq!(count("other"), 1);
        assert_eq!(errs.streak.map(|(_, n)| n), Some(101));
        errs.succeeded();
        assert!(errs.streak.is_none());
    }
}
