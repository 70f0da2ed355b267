//! `--hbone-max-connections`: places for established outer connections on 15008.
//!
//! A connection takes a place once its client has authenticated (mTLS done) and keeps it
//! until it closes. When every place is taken, the connection idle longest (no tunnel open)
//! gives its place up: ztunnel pools connections and keeps unused ones for minutes, so a
//! full table is often mostly idle, and closing an idle one costs its owner a reconnect on
//! next use while refusing the newcomer fails a request now. Only an authenticated newcomer
//! may shed, so a bare TCP flood cannot evict the mesh's connections. With no idle connection
//! the newcomer is refused, and the listener refuses at accept, before any TLS work, while
//! that stays so.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// The places, and the connections that could give theirs up.
pub struct Places {
    permits: Arc<Semaphore>,
    state: Mutex<State>,
    /// Idle connections closed to make room.
    shed: Counter,
}

#[derive(Default)]
struct State {
    /// Connections with no tunnel open, by when they became idle: the first is idle longest.
    idle: BTreeMap<u64, Arc<Slot>>,
    next: u64,
}

const NOT_IDLE: u64 = u64::MAX;

/// One connection's bookkeeping. Its fields change only under [`Places::state`], so the
/// idle map and the tunnel counts always agree; the atomics let the connection read its
/// tunnel count without the lock.
struct Slot {
    open: AtomicUsize,
    /// Its key in the idle map, or [`NOT_IDLE`].
    idle_key: AtomicU64,
    /// Shed, or closing: no tunnel may open on it any more.
    leaving: AtomicBool,
    shed: Notify,
}

impl Places {
    pub fn new(max: usize, shed: Counter) -> Arc<Places> {
        Arc::new(Places {
            // Clamped: Semaphore panics above MAX_PERMITS.
            permits: Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))),
            state: Mutex::default(),
            shed,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change keeps the state consistent, so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when a newcomer could get no place: all taken and none idle. Checked at accept,
    /// so such a connection costs no TLS handshake.
    pub fn full_of_busy(&self) -> bool {
        self.permits.available_permits() == 0 && self.lock().idle.is_empty()
    }

    /// A place for an authenticated connection: a free one, else the one the longest-idle
    /// connection gives up (waiting up to `wait` for it to close); `None` when all are busy.
    pub async fn take(self: &Arc<Self>, wait: Duration) -> Option<Place> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                if !self.shed_longest_idle() {
                    return None;
                }
                // Permits go to waiters first, in order, so each newcomer that shed one
                // gets one.
                tokio::time::timeout(wait, self.permits.clone().acquire_owned())
                    .await
                    .ok()?
                    .ok()?
            }
        };
        Some(Place {
            places: self.clone(),
            slot: Arc::new(Slot {
                open: AtomicUsize::new(0),
                idle_key: AtomicU64::new(NOT_IDLE),
                leaving: AtomicBool::new(false),
                shed: Notify::new(),
            }),
            _permit: permit,
        })
    }

    fn shed_longest_idle(&self) -> bool {
        let mut s = self.lock();
        let Some((_, slot)) = s.idle.pop_first() else {
            return false;
        };
        slot.idle_key.store(NOT_IDLE, Ordering::Relaxed);
        slot.leaving.store(true, Ordering::Relaxed);
        // A stored permit: the connection sees it even if not waiting yet.
        slot.shed.notify_one();
        self.shed.inc();
        true
    }

    fn make_idle(s: &mut State, slot: &Arc<Slot>) {
        let key = s.next;
        s.next += 1;
        slot.idle_key.store(key, Ordering::Relaxed);
        s.idle.insert(key, slot.clone());
    }

    fn unmark_idle(s: &mut State, slot: &Slot) {
        let key = slot.idle_key.swap(NOT_IDLE, Ordering::Relaxed);
        if key != NOT_IDLE {
            s.idle.remove(&key);
        }
    }
}

/// An established connection's place; given back when dropped.
pub struct Place {
    places: Arc<Places>,
    slot: Arc<Slot>,
    _permit: OwnedSemaphorePermit,
}

impl Place {
    /// The connection is serving (HTTP/2 up) and has no tunnel yet: it may be shed.
    pub fn ready(&self) {
        let mut s = self.places.lock();
        if !self.slot.leaving.load(Ordering::Relaxed) && self.slot.open.load(Ordering::Relaxed) == 0
        {
            Places::make_idle(&mut s, &self.slot);
        }
    }

    /// A tunnel on this connection, or `None` if the connection was shed a moment ago.
    pub fn tunnel(&self) -> Option<Tunnel> {
        let mut s = self.places.lock();
        if self.slot.leaving.load(Ordering::Relaxed) {
            return None;
        }
        if self.slot.open.fetch_add(1, Ordering::Relaxed) == 0 {
            Places::unmark_idle(&mut s, &self.slot);
        }
        Some(Tunnel {
            places: self.places.clone(),
            slot: self.slot.clone(),
        })
    }

    /// Tunnels open on this connection now.
    pub fn open_tunnels(&self) -> usize {
        self.slot.open.load(Ordering::Relaxed)
    }

    /// Completes once this connection has been chosen to give its place up.
    pub async fn shed(&self) {
        self.slot.shed.notified().await
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        // Out of the idle map before the permit (a field, dropped after this) is given back.
        let mut s = self.places.lock();
        self.slot.leaving.store(true, Ordering::Relaxed);
        Places::unmark_idle(&mut s, &self.slot);
    }
}

/// One open tunnel; the connection is idle again once its last tunnel is dropped.
pub struct Tunnel {
    places: Arc<Places>,
    slot: Arc<Slot>,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        let mut s = self.places.lock();
        let was = self.slot.open.fetch_sub(1, Ordering::Relaxed);
        if was == 1 && !self.slot.leaving.load(Ordering::Relaxed) {
            Places::make_idle(&mut s, &self.slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(50);

    #[tokio::test]
    async fn a_free_place_then_the_longest_idle_then_none() {
        let shed = Counter::default();
        let places = Places::new(2, shed.clone());
        let a = places.take(WAIT).await.unwrap();
        let b = places.take(WAIT).await.unwrap();
        // Neither is serving yet: nothing to shed.
        assert!(places.full_of_busy());
        assert!(places.take(WAIT).await.is_none());
        b.ready();
        a.ready();
        assert!(!places.full_of_busy());
        // b went idle first: it is shed, and its place is the newcomer's once it closes.
        let newcomer = tokio::spawn({
            let places = places.clone();
            async move { places.take(Duration::from_secs(5)).await }
        });
        tokio::time::timeout(Duration::from_secs(5), b.shed())
            .await
            .expect("b shed");
        assert!(b.tunnel().is_none(), "no tunnel on a shed connection");
        drop(b);
        let _newcomer = newcomer.await.unwrap().expect("b's place");
        assert_eq!(shed.get(), 1);
        // a carries a tunnel: not idle, so nothing can be shed now.
        let t = a.tunnel().unwrap();
        assert_eq!(a.open_tunnels(), 1);
        assert!(places.full_of_busy());
        assert!(places.take(WAIT).await.is_none());
        drop(t);
        assert!(!places.full_of_busy(), "idle again once its tunnel closed");
    }

    #[tokio::test]
    async fn a_closed_connection_leaves_no_idle_entry() {
        let places = Places::new(1, Counter::default());
        let a = places.take(WAIT).await.unwrap();
        a.ready();
        let t = a.tunnel().unwrap();
        drop(a);
        // A tunnel outliving its connection must not make it idle again.
        drop(t);
        assert!(places.lock().idle.is_empty());
        assert!(places.take(WAIT).await.is_some());
    }
}
