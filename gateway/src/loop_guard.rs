//! Routing loops on 15443. The gateway replays each ClientHello unchanged, so a hello routed
//! to a gateway's passthrough listener (this one, a replica, a peer gateway) arrives again
//! with the same client random. A TLS client draws a fresh random for every connection, so
//! a random already held by an open connection of this process means the hello went round:
//! the newcomer is refused (`loop`), and the chain ends after one hop per gateway instead
//! of running until descriptors are gone. Every cycle passes through some process twice,
//! so the check catches cycles through any number of gateways, on any ports.

use std::collections::HashSet;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Mutex;

/// The randoms of the hellos this process is forwarding, each kept as a keyed 64-bit hash
/// (SipHash with a per-process random key): a client cannot pick randoms that collide with
/// others' or that crowd one bucket, and each open connection keeps 8 bytes instead of 32.
#[derive(Default)]
pub struct InFlight {
    key: RandomState,
    held: Mutex<HashSet<u64, BuildHasherDefault<Prehashed>>>,
}

impl InFlight {
    /// Marks `random` as in flight and returns its mark, or `None` when an open connection
    /// already holds it (a loop). Give the mark back with [`leave`](Self::leave).
    pub fn enter(&self, random: &[u8; 32]) -> Option<u64> {
        let mark = self.key.hash_one(random);
        self.lock().insert(mark).then_some(mark)
    }

    /// The connection holding `mark` ended.
    pub fn leave(&self, mark: u64) {
        self.lock().remove(&mark);
    }

    /// How many connections hold a mark.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<u64, BuildHasherDefault<Prehashed>>> {
        // The set stays consistent across a panic (each operation is one call).
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The set's hasher: its keys are already keyed hashes, so they are used as they are.
#[derive(Default)]
pub struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `u64` keys are hashed here; fold anything else rather than lose it.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_random_held_open_is_refused_until_its_connection_ends() {
        let f = InFlight::default();
        let (a, b) = ([1; 32], [2; 32]);
        let mark = f.enter(&a).expect("first arrival");
        assert_eq!(f.enter(&a), None, "the same hello again while open: a loop");
        let other = f.enter(&b).expect("another hello");
        assert_ne!(mark, other);
        assert_eq!(f.len(), 2);
        f.leave(mark);
        // Its connection ended: the random is free again (a later retry is no loop).
        let again = f.enter(&a).expect("after leave");
        f.leave(again);
        f.leave(other);
        assert!(f.is_empty());
    }

    #[test]
    fn marks_are_keyed_per_process() {
        // Two sets (two processes) mark the same random differently, so a client cannot
        // compute the marks others' randoms get.
        let (x, y) = (InFlight::default(), InFlight::default());
        assert_ne!(x.key.hash_one([9u8; 32]), y.key.hash_one([9u8; 32]));
    }
}
