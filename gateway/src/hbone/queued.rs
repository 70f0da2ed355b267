//! Bytes queued toward one client: an outer connection's tunnels share one budget.
//!
//! h2 bounds what it queues per stream (`max_send_buffer_size`, [`super::listener::SEND_BUFFER`])
//! but not per connection, and a client may open its windows to 2^31-1 and then not read: at
//! 100 streams that was 32 MiB held per connection. Now a tunnel takes its connection's
//! budget before it reads its upstream, and gets it back as the bytes are written to the
//! connection ([`super::metered`] sees the DATA frames go out) or dropped with a reset stream.
//! A tunnel whose connection's budget is spent stops reading its upstream (TCP pushes back on
//! the endpoint) until the client reads; waiters are served first come first served, and a
//! tunnel asks only once its upstream has bytes and its client's window has room, so idle
//! tunnels and tunnels the client does not read hold none of it.
//!
//! The budget counts memory, not only bytes: a queued read keeps its buffer allocated and a
//! frame in h2's queue, so each costs at least [`CHUNK_COST`] and, unless it was copied out,
//! its whole buffer. A trickling upstream (a few bytes per read) thus cannot turn the budget
//! into thousands of frames each holding a 64 KiB buffer.
//!
//! No process-wide cap: with one, a few connections whose clients stop reading would spend
//! it and freeze the downloads of every other client of the gateway, trading memory for an
//! outage of the whole listener. The bound per process is `--hbone-max-connections` ×
//! (`--hbone-connection-queue-kib`, [`BUDGET`] by default, + rustls's 64 KiB of TLS records) toward clients, and each tunnel's own read
//! buffer (at most 64 KiB), beside the kernel's socket buffers of the same connections, which
//! no user-space cap bounds (the kernel's `tcp_mem` does); lower `--hbone-max-connections` to
//! lower it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{Semaphore, SemaphorePermit};

use super::splice::READ_CHUNK;

/// What one outer connection's queue toward its client may hold: bytes read from its
/// tunnels' upstreams and not yet written to its TLS connection, with their buffers and
/// frames. ztunnel's own h2 server queues up to 400 KiB per stream with no cap per
/// connection (80 MiB at its 200 streams); one bulk tunnel runs at full speed on
/// [`super::listener::SEND_BUFFER`] + one read (320 KiB), so 4 MiB keeps twelve tunnels
/// streaming at once while a stalled connection costs an eighth of 32 MiB.
pub const BUDGET: usize = 4 << 20;

/// What each queued read costs beside its buffer: h2 keeps a frame for it in the
/// connection's send queue (a slab entry of a few hundred bytes, as h2's frame type holds a
/// HEADERS frame's header map inline; the slab grows by doubling) and the allocator rounds.
/// A full read pays 1.6 % more; 4 MiB of one-byte reads would otherwise be four million
/// frames.
pub const CHUNK_COST: usize = 1024;

type Streams = HashMap<u32, Stream, foldhash::fast::RandomState>;

/// One outer connection's queue toward its client.
pub struct Queue {
    /// Budget not taken.
    free: Semaphore,
    /// What each stream has handed to h2 and not yet seen written.
    streams: Mutex<Streams>,
    /// Across connections: bytes queued now.
    queued: Gauge,
    /// Across connections: times a tunnel waited for its connection's budget.
    waits: Counter,
}

#[derive(Default)]
struct Stream {
    /// Each read handed to h2, oldest first (h2 writes a stream's DATA in the order it was
    /// handed): its bytes not yet written, and the rest of the budget it holds until its
    /// last byte is (its buffer beyond its bytes, and [`CHUNK_COST`]).
    chunks: VecDeque<(usize, usize)>,
    /// The tunnel waiting for its last bytes to go out.
    flushed: Option<Waker>,
}

/// Budget taken for one read, before its bytes are handed to h2; given back when dropped.
pub struct Taken<'a>(SemaphorePermit<'a>);

impl Queue {
    pub fn new(budget: usize, queued: Gauge, waits: Counter) -> Queue {
        // At least one read and its cost; Semaphore panics above MAX_PERMITS.
        let budget = budget.clamp(READ_CHUNK + CHUNK_COST, Semaphore::MAX_PERMITS);
        Queue {
            free: Semaphore::new(budget),
            streams: Mutex::default(),
            queued,
            waits,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Streams> {
        // Every change leaves the map consistent, so a poisoned lock is usable.
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Budget for a read into a buffer of `buffer` bytes (at most [`READ_CHUNK`]) and its
    /// [`CHUNK_COST`], waiting in line while the connection's queue is full.
    pub async fn take(&self, buffer: usize) -> Taken<'_> {
        let want = (buffer.clamp(1, READ_CHUNK) + CHUNK_COST) as u32;
        if let Ok(p) = self.free.try_acquire_many(want) {
            return Taken(p);
        }
        self.waits.inc();
        match self.free.acquire_many(want).await {
            Ok(p) => Taken(p),
            // Never closed.
            Err(_) => std::future::pending().await,
        }
    }

    /// A read of `n` bytes (`n` > 0) was handed to h2 for `stream`, keeping `kept` bytes of
    /// buffer allocated (`n` if it was copied out); what it does not hold of `taken` goes
    /// back.
    pub fn hand(&self, stream: u32, taken: Taken<'_>, n: usize, kept: usize) {
        let taken_n = taken.0.num_permits();
        taken.0.forget();
        // `take` gave the buffer and the cost: what the read holds is what it gives back.
        let hold = (kept.max(n) + CHUNK_COST).min(taken_n);
        let n = n.min(hold);
        if taken_n > hold {
            self.free.add_permits(taken_n - hold);
        }
        {
            let mut streams = self.lock();
            let s = streams.entry(stream).or_default();
            s.chunks.push_back((n, hold - n));
        }
        self.queued.inc_by(n as i64);
    }

    /// `n` bytes of `stream`'s DATA were written to the connection.
    pub fn written(&self, stream: u32, mut n: usize) {
        let (budget, bytes) = {
            let mut streams = self.lock();
            // None once the tunnel has ended: what it had queued was given back then.
            let Some(s) = streams.get_mut(&stream) else {
                return;
            };
            let (mut budget, mut bytes) = (0, 0);
            while n > 0 {
                let Some((left, rest)) = s.chunks.front_mut() else {
                    break;
                };
                let d = n.min(*left);
                *left -= d;
                n -= d;
                bytes += d;
                budget += d;
                if *left == 0 {
                    budget += *rest;
                    s.chunks.pop_front();
                }
            }
            if s.chunks.is_empty()
                && let Some(w) = s.flushed.take()
            {
                w.wake();
            }
            (budget, bytes)
        };
        self.give_back(budget, bytes);
    }

    /// Whether `stream` has bytes queued.
    pub fn has_queued(&self, stream: u32) -> bool {
        self.lock()
            .get(&stream)
            .is_some_and(|s| !s.chunks.is_empty())
    }

    /// Ready once nothing of `stream` is queued.
    pub fn poll_flushed(&self, stream: u32, cx: &mut Context<'_>) -> Poll<()> {
        let mut streams = self.lock();
        match streams.get_mut(&stream) {
            Some(s) if !s.chunks.is_empty() => {
                s.flushed = Some(cx.waker().clone());
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }

    /// The tunnel on `stream` ended: what it still has queued was written, or dropped with
    /// the stream's reset. Bytes of it written later are not counted again.
    pub fn close(&self, stream: u32) {
        let left = {
            let mut streams = self.lock();
            let left = streams.remove(&stream);
            // A pooled connection idles for minutes: it keeps no table sized for a burst.
            if streams.is_empty() && streams.capacity() > 8 {
                *streams = Streams::default();
            }
            left
        };
        if let Some(s) = left {
            let bytes = s.chunks.iter().map(|(left, _)| left).sum();
            let held = s.chunks.iter().map(|(left, rest)| left + rest).sum();
            self.give_back(held, bytes);
        }
    }

    fn give_back(&self, budget: usize, bytes: usize) {
        if budget > 0 {
            self.free.add_permits(budget);
        }
        if bytes > 0 {
            self.queued.dec_by(bytes as i64);
        }
    }

    /// Budget not taken now.
    #[cfg(test)]
    pub(super) fn free(&self) -> usize {
        self.free.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::time::Duration;

    const C: usize = CHUNK_COST;
    /// Room for two full reads.
    const B: usize = 2 * (READ_CHUNK + C);

    fn queue() -> (Queue, Gauge, Counter) {
        let (g, c) = (Gauge::default(), Counter::default());
        (Queue::new(B, g.clone(), c.clone()), g, c)
    }

    #[tokio::test]
    async fn bytes_come_back_as_written_or_when_the_tunnel_ends() {
        let (q, g, waits) = queue();
        let t = q.take(READ_CHUNK).await;
        // A small read copied out of its buffer holds its bytes and its cost.
        q.hand(1, t, 1000, 1000);
        assert_eq!(
            q.free(),
            B - 1000 - C,
            "the rest of the take goes back at once"
        );
        assert_eq!(g.get(), 1000);
        let t = q.take(READ_CHUNK).await;
        q.hand(3, t, READ_CHUNK, READ_CHUNK);
        // Not room for another full read: the next taker waits in line.
        let waiter = q.take(READ_CHUNK);
        tokio::pin!(waiter);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut waiter)
                .await
                .is_err()
        );
        assert_eq!(waits.get(), 1);
        // Stream 1's read written whole: its bytes and its cost come back.
        q.written(1, 1000);
        let t = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap();
        drop(t);
        assert_eq!(q.free(), B - READ_CHUNK - C);
        // Stream 3 ends with its read half written (a reset dropped the rest): all of it comes
        // back, and a late write of its bytes counts nothing twice.
        q.written(3, READ_CHUNK / 2);
        assert_eq!(
            q.free(),
            B - READ_CHUNK / 2 - C,
            "the cost stays until the read is out"
        );
        q.close(3);
        q.written(3, READ_CHUNK / 2);
        assert_eq!((q.free(), g.get()), (B, 0));
    }

    #[tokio::test]
    async fn a_read_holds_its_buffer_and_a_frame() {
        let (q, g, _) = queue();
        // One-byte reads copied out: the budget holds B / (1 + C) of them, not B.
        let mut n = 0;
        while q.free() >= READ_CHUNK + C {
            let t = q.take(READ_CHUNK).await;
            q.hand(5, t, 1, 1);
            n += 1;
        }
        assert_eq!(n, (B - READ_CHUNK - C) / (1 + C) + 1);
        assert_eq!(g.get(), n as i64);
        // Written across reads, each whole read gives its cost back.
        q.written(5, 3);
        assert_eq!(q.free(), B - (n - 3) * (1 + C));
        q.close(5);
        assert_eq!((q.free(), g.get()), (B, 0));
        // A 100-byte read left in its 64 KiB buffer holds the buffer until written.
        let t = q.take(READ_CHUNK).await;
        q.hand(7, t, 100, READ_CHUNK);
        assert_eq!((q.free(), g.get()), (B - READ_CHUNK - C, 100));
        q.written(7, 100);
        assert_eq!((q.free(), g.get()), (B, 0));
    }

    #[tokio::test]
    async fn a_tunnel_learns_when_its_last_bytes_left() {
        let (q, _, _) = queue();
        assert!(
            poll_fn(|cx| Poll::Ready(q.poll_flushed(7, cx)))
                .await
                .is_ready()
        );
        let t = q.take(10).await;
        q.hand(7, t, 10, 10);
        assert!(q.has_queued(7));
        let flushed = poll_fn(|cx| q.poll_flushed(7, cx));
        tokio::pin!(flushed);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut flushed)
                .await
                .is_err()
        );
        q.written(7, 4);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), &mut flushed)
                .await
                .is_err()
        );
        q.written(7, 6);
        tokio::time::timeout(Duration::from_secs(5), flushed)
            .await
            .unwrap();
        assert!(!q.has_queued(7));
        q.close(7);
        assert_eq!(q.free(), B);
    }
}
