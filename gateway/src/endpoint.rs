//! One upstream address's live state, shared by every table that lists it: active
//! connections (for least-connections balancing) and health (for outlier detection).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::outlier::Health;

/// Live, shared state of one upstream address. Kept across route-table publishes by
/// address, so a reload neither resets health nor loses connection counts.
#[derive(Debug)]
pub struct EndpointState {
    pub addr: SocketAddr,
    active: AtomicUsize,
    pub health: Health,
}

impl EndpointState {
    pub fn new(addr: SocketAddr) -> Self {
        EndpointState {
            addr,
            active: AtomicUsize::new(0),
            health: Health::default(),
        }
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
}
