//! The budget of undecided connections: accepted, still sending their PROXY header or
//! ClientHello. They are cheap to open and slow to finish (slowloris), so they get their own
//! limits, in count and in buffered bytes, apart from `--max-connections`. When a limit is
//! reached the *oldest* undecided connection is shed: a flood then only evicts itself, while
//! a client that sends its whole hello at once is decided long before its turn comes. The
//! admin and status listeners bound their connections with the same budget, bytes unbounded.

use std::collections::BTreeMap;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use prometheus_client::metrics::gauge::Gauge;

pub struct Undecided {
    max_count: usize,
    max_bytes: usize,
    count: Gauge,
    bytes: Gauge,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// By admission order: the first entry is the oldest.
    waiting: BTreeMap<u64, Entry>,
    bytes: usize,
    next: u64,
}

/// A connection still in the budget. Being shed is leaving the map; the task waiting in
/// [`Ticket::shed`] is woken through `waker` (no token or waiter list per connection).
struct Entry {
    bytes: usize,
    waker: Option<Waker>,
    /// The peer `accept` returned, kept here rather than in the connection's future (which
    /// every forwarded connection keeps) or asked again with `getpeername`.
    peer: Option<SocketAddr>,
}

impl State {
    /// Sheds the oldest connection: it leaves the budget now, and its task closes it.
    fn shed_oldest(&mut self) {
        if let Some((_, e)) = self.waiting.pop_first() {
            self.bytes -= e.bytes;
            if let Some(w) = e.waker {
                w.wake();
            }
        }
    }
}

impl Undecided {
    /// `count` and `bytes` are the gauges this budget keeps current.
    pub fn new(max_count: usize, max_bytes: usize, count: Gauge, bytes: Gauge) -> Self {
        Undecided {
            max_count: max_count.max(1),
            max_bytes,
            count,
            bytes,
            state: Mutex::default(),
        }
    }

    /// Admits a new connection, shedding the oldest ones if the count is at its limit.
    pub fn admit(self: &Arc<Self>) -> Ticket {
        self.admit_from(None)
    }

    /// [`Undecided::admit`], keeping the peer's address for [`Ticket::peer`].
    pub fn admit_from(self: &Arc<Self>, peer: Option<SocketAddr>) -> Ticket {
        let mut s = self.lock();
        while s.waiting.len() >= self.max_count {
            s.shed_oldest();
        }
        let id = s.next;
        s.next += 1;
        s.waiting.insert(
            id,
            Entry {
                bytes: 0,
                waker: None,
                peer,
            },
        );
        self.publish(&s);
        Ticket {
            id,
            budget: self.clone(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent under every early exit, so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, s: &State) {
        self.count.set(s.waiting.len() as i64);
        self.bytes.set(s.bytes as i64);
    }
}

/// One undecided connection's place in the budget; dropping it (once decided or closed)
/// gives the place back. Two words: it sits in every connection task.
pub struct Ticket {
    id: u64,
    budget: Arc<Undecided>,
}

impl Ticket {
    /// Completes when this connection has been shed (at once if it already was).
    pub async fn shed(&self) {
        poll_fn(|cx| {
            let mut s = self.budget.lock();
            let Some(e) = s.waiting.get_mut(&self.id) else {
                return Poll::Ready(());
            };
            match &mut e.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// Whether this connection has been shed.
    pub fn is_shed(&self) -> bool {
        !self.budget.lock().waiting.contains_key(&self.id)
    }

    /// The peer given to [`Undecided::admit_from`]; `None` once shed.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.budget.lock().waiting.get(&self.id)?.peer
    }

    /// Records that the connection now buffers `n` bytes, shedding the oldest connections
    /// (this one included, if it is the oldest) while the total is over the limit. Returns
    /// false when this connection has been shed.
    pub fn buffered(&self, n: usize) -> bool {
        let b = &self.budget;
        let mut s = b.lock();
        let Some(e) = s.waiting.get_mut(&self.id) else {
            return false;
        };
        let old = std::mem::replace(&mut e.bytes, n);
        s.bytes = s.bytes - old + n;
        while s.bytes > b.max_bytes {
            s.shed_oldest();
        }
        b.publish(&s);
        s.waiting.contains_key(&self.id)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let b = &self.budget;
        let mut s = b.lock();
        if let Some(e) = s.waiting.remove(&self.id) {
            s.bytes -= e.bytes;
            b.publish(&s);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(count: usize, bytes: usize) -> Arc<Undecided> {
        Arc::new(Undecided::new(
            count,
            bytes,
            Gauge::default(),
            Gauge::default(),
        ))
    }

    fn is_shed(t: &Ticket) -> bool {
        !t.budget.lock().waiting.contains_key(&t.id)
    }

    #[test]
    fn full_count_sheds_the_oldest() {
        let b = budget(3, 1 << 20);
        let t: Vec<Ticket> = (0..5).map(|_| b.admit()).collect();
        let shed: Vec<bool> = t.iter().map(is_shed).collect();
        assert_eq!(shed, [true, true, false, false, false]);
        // Shed ones are told so.
        let now = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(now);
        assert!(
            std::pin::pin!(t[0].shed())
                .as_mut()
                .poll(&mut cx)
                .is_ready()
        );
        assert!(
            std::pin::pin!(t[4].shed())
                .as_mut()
                .poll(&mut cx)
                .is_pending()
        );
        assert_eq!(b.count.get(), 3);
        // A shed ticket no longer counts, and cannot come back by buffering.
        assert!(!t[0].buffered(10));
        assert_eq!(b.bytes.get(), 0);
    }

    /// A task waiting in `shed` is woken when it is shed, by count or by bytes, and only then.
    #[test]
    fn a_waiting_task_is_woken_when_shed() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        #[derive(Default)]
        struct Count(AtomicUsize);
        impl std::task::Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        for by_bytes in [false, true] {
            let b = budget(2, 1000);
            let first = b.admit();
            assert!(first.buffered(600));
            let woken = Arc::new(Count::default());
            let waker = std::task::Waker::from(woken.clone());
            let mut cx = std::task::Context::from_waker(&waker);
            let mut shed = std::pin::pin!(first.shed());
            assert!(shed.as_mut().poll(&mut cx).is_pending());
            let second = b.admit();
            assert!(second.buffered(300));
            assert_eq!(woken.0.load(Ordering::SeqCst), 0, "woken before being shed");
            // Over the byte limit, or a third connection over the count: the first goes.
            let _third = if by_bytes {
                assert!(second.buffered(500));
                None
            } else {
                Some(b.admit())
            };
            assert_eq!(woken.0.load(Ordering::SeqCst), 1, "by bytes: {by_bytes}");
            assert!(shed.as_mut().poll(&mut cx).is_ready());
        }
    }

    /// The peer from `accept` is kept while the connection is undecided, and gone once shed.
    #[test]
    fn the_peer_waits_in_the_ticket() {
        let b = budget(1, 1000);
        let peer: SocketAddr = "127.0.0.9:4242".parse().unwrap();
        let t = b.admit_from(Some(peer));
        assert_eq!(t.peer(), Some(peer));
        let _next = b.admit();
        assert_eq!(t.peer(), None, "shed");
    }

    #[test]
    fn byte_limit_sheds_the_oldest_even_the_caller() {
        let b = budget(100, 1000);
        let t: Vec<Ticket> = (0..3).map(|_| b.admit()).collect();
        assert!(t[0].buffered(400));
        assert!(t[1].buffered(400));
        // 1,100 bytes: the oldest goes.
        assert!(t[2].buffered(300));
        assert!(is_shed(&t[0]) && !is_shed(&t[1]));
        assert_eq!(b.bytes.get(), 700);
        // The oldest left growing past the limit sheds itself.
        assert!(!t[1].buffered(800));
        assert_eq!((b.count.get(), b.bytes.get()), (1, 300));
    }

    #[test]
    fn dropping_gives_the_place_back() {
        let b = budget(2, 1000);
        let t1 = b.admit();
        assert!(t1.buffered(500));
        let t2 = b.admit();
        drop(t1);
        assert_eq!((b.count.get(), b.bytes.get()), (1, 0));
        let t3 = b.admit();
        assert!(!is_shed(&t2) && !is_shed(&t3));
        drop((t2, t3));
        assert_eq!(b.count.get(), 0);
    }
}
