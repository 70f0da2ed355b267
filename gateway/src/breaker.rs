//! A DestinationRule's `maxConnections`: Envoy's circuit breaker on a cluster's upstream
//! connections, checked before an endpoint is picked and held from the connect to the close
//! (`tcp_proxy.cc`, `establishUpstreamConnection`: over it, the client is closed at once,
//! `upstream_cx_overflow`, no retry). A cluster here is one `(host, port, subset)`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

/// A cluster's connections: counted while their [`Held`] lives.
pub type Open = Arc<AtomicU32>;

/// One connection counted against its cluster's limit; uncounted on drop.
#[derive(Debug)]
pub struct Held(Open);

impl Held {
    /// Counts a connection, unless `max` are already open.
    pub fn take(open: &Open, max: u32) -> Option<Held> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .ok()
        .map(|_| Held(open.clone()))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_are_held_and_a_drop_frees_a_place() {
        let open = Open::default();
        let mut held: Vec<Held> = (0..5).filter_map(|_| Held::take(&open, 3)).collect();
        assert_eq!(held.len(), 3);
        assert_eq!(open.load(Ordering::Relaxed), 3);
        assert!(Held::take(&open, 3).is_none(), "a refusal counts nothing");
        assert_eq!(open.load(Ordering::Relaxed), 3);
        held.pop();
        assert_eq!(open.load(Ordering::Relaxed), 2);
        assert!(Held::take(&open, 3).is_some());
    }

    /// Two threads racing for the last places never take more than the limit.
    #[test]
    fn racing_takers_never_pass_the_limit() {
        let open = Open::default();
        let held = std::thread::scope(|s| {
            let takers: Vec<_> = (0..2)
                .map(|_| {
                    s.spawn(|| {
                        (0..1_000)
                            .filter_map(|_| Held::take(&open, 700))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            // Every taker's places are still held when they are counted.
            let held: Vec<Vec<Held>> = takers.into_iter().map(|t| t.join().unwrap()).collect();
            held.iter().map(Vec::len).sum::<usize>()
        });
        assert_eq!(held, 700);
        assert_eq!(open.load(Ordering::Relaxed), 0, "all given back");
    }
}
