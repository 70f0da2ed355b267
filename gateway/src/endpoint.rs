//! One upstream address's live state, shared by every table that lists it: active
//! connections (for least-connections balancing), health (for outlier detection) and
//! since when it is ready (for a DestinationRule's warmup).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::outlier::Health;

/// Live, shared state of one upstream address. Kept across route-table publishes by
/// address, so a reload neither resets health nor loses connection counts.
#[derive(Debug)]
pub struct EndpointState {
    pub addr: SocketAddr,
    active: AtomicUsize,
    pub health: Health,
    /// [`crate::clock::now_ms`] of the first table that listed it ready since it last was
    /// not (or not listed at all); 0 while not ready.
    ready_since: AtomicU64,
}

impl EndpointState {
    pub fn new(addr: SocketAddr) -> Self {
        EndpointState {
            addr,
            active: AtomicUsize::new(0),
            health: Health::default(),
            ready_since: AtomicU64::new(0),
        }
    }

    /// When it became ready (0: it is not), as [`Routes::publish`](crate::routes::Routes)
    /// last marked it.
    pub fn ready_since(&self) -> u64 {
        self.ready_since.load(Ordering::Relaxed)
    }

    /// Ready in the table being published: stamped `now` unless it already was ready, as
    /// Envoy stamps a host when its balancer first sees it healthy.
    pub fn mark_ready(&self, now: u64) {
        let _ = (self.ready_since).compare_exchange(
            0,
            now.max(1),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Not ready, or listed by no route, in the table being published: the next time it is
    /// ready it warms up again, as a host Envoy's cluster lost and got back.
    pub fn mark_not_ready(&self) {
        self.ready_since.store(0, Ordering::Relaxed);
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Counts one connection against this endpoint until the guard drops.
    pub fn track(self: &Arc<Self>) -> ActiveGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }
}

/// One active connection to an endpoint, counted until dropped.
pub struct ActiveGuard(Arc<EndpointState>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_counts_while_alive() {
        let st = Arc::new(EndpointState::new("127.0.0.1:1".parse().unwrap()));
        let a = st.track();
        let b = st.track();
        assert_eq!(st.active(), 2);
        drop(a);
        assert_eq!(st.active(), 1);
        drop(b);
        assert_eq!(st.active(), 0);
    }

    #[test]
    fn ready_keeps_its_first_stamp_until_not_ready() {
        let st = EndpointState::new("127.0.0.1:1".parse().unwrap());
        assert_eq!(st.ready_since(), 0);
        st.mark_ready(100);
        st.mark_ready(200);
        assert_eq!(st.ready_since(), 100);
        st.mark_not_ready();
        assert_eq!(st.ready_since(), 0);
        st.mark_ready(300);
        assert_eq!(st.ready_since(), 300);
    }
}
