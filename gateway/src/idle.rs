//! The idle timeout's rule, shared by forwarded connections ([`crate::forward`]) and HBONE
//! tunnels ([`crate::hbone`]); sans-IO.
//!
//! Bytes moving only set a flag: reading the clock on every read cost two clock readings per
//! request (`gateway/PERFORMANCE.md` change 22). A timer fires every [`CHECKS`]th of the
//! timeout; a firing that finds the flag set clears it and takes its own time as the start of
//! the quiet (no earlier than the last byte). So a connection ends no sooner than the timeout
//! after its last byte, and at most a [`CHECKS`]th of it later.

use std::time::Duration;

/// Checks per timeout: a connection ends at most an eighth of the timeout late, and an active
/// one costs a timer firing every eighth of it (7.5 minutes with the default hour).
pub const CHECKS: u32 = 8;

/// What the timer does after a firing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Idle for the whole timeout: end.
    Idle,
    /// Fire again after this many milliseconds.
    CheckIn(u64),
}

/// One connection's idle timeout and the state between firings.
#[derive(Debug, Clone, Copy)]
pub struct Quiet {
    idle_ms: u64,
    /// When the quiet began, in [`crate::clock::now_ms`] milliseconds (no earlier than the
    /// last byte; 0 before the first firing).
    since: u64,
}

impl Quiet {
    pub fn new(idle: Duration) -> Self {
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX).max(1);
        Quiet { idle_ms, since: 0 }
    }

    fn check_ms(&self) -> u64 {
        (self.idle_ms / u64::from(CHECKS)).max(1)
    }

    /// The timer's first wait.
    pub fn first_check(&self) -> Duration {
        Duration::from_millis(self.check_ms())
    }

    /// A firing at `now` (ms); `moved`: bytes moved since the previous firing (or since the
    /// start, for the first).
    pub fn fired(&mut self, now: u64, moved: bool) -> Next {
        let (idle_ms, check) = (self.idle_ms, self.check_ms());
        if moved {
            self.since = now;
        } else if self.since == 0 {
            // The first firing, and nothing moved: the start was at least one check ago.
            self.since = now.saturating_sub(check).max(1);
        }
        let deadline = self.since.saturating_add(idle_ms);
        if now >= deadline {
            Next::Idle
        } else {
            Next::CheckIn((deadline - now).min(check))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Drives the timer over `moves` (ms since the start, sorted) from a start at `start`,
    /// as the forwarder does: the first firing one check after the start. Returns when it
    /// ended.
    fn ends_at(start: u64, moves: &[u64], idle_ms: u64) -> u64 {
        let mut q = Quiet::new(Duration::from_millis(idle_ms));
        let mut now = start + q.first_check().as_millis() as u64;
        let mut seen = 0;
        for _ in 0..100_000 {
            let before = moves.iter().filter(|&&m| start + m <= now).count();
            let moved = before > seen;
            seen = before;
            match q.fired(now, moved) {
                Next::Idle => return now,
                Next::CheckIn(ms) => now += ms,
            }
        }
        panic!("no end after 100,000 firings");
    }

    #[test]
    fn silent_from_the_start_ends_after_the_timeout() {
        let end = ends_at(1_000, &[], 800);
        assert!((1_800..=1_900).contains(&end), "{end}");
    }

    #[test]
    fn a_firing_with_bytes_restarts_the_quiet() {
        let mut q = Quiet::new(Duration::from_millis(800));
        assert_eq!(q.fired(1_100, true), Next::CheckIn(100));
        assert_eq!(q.fired(1_200, false), Next::CheckIn(100));
        assert_eq!(q.fired(1_850, false), Next::CheckIn(50));
        assert_eq!(q.fired(1_900, false), Next::Idle);
    }

    proptest! {
        /// Never before the timeout after the last byte; at most one check (an eighth of
        /// it, at least 1 ms) after.
        #[test]
        fn ends_between_the_timeout_and_an_eighth_more(
            start in 1u64..1_000_000,
            idle_ms in 1u64..100_000,
            mut moves in proptest::collection::vec(0u64..300_000, 0..20),
        ) {
            moves.sort_unstable();
            let end = ends_at(start, &moves, idle_ms);
            // The last byte of the connection's life: moves after its end never happen.
            let last = moves.iter().map(|m| start + m).filter(|&m| m <= end).max().unwrap_or(start);
            let check = (idle_ms / u64::from(CHECKS)).max(1);
            prop_assert!(end >= last + idle_ms, "end {end}, last byte {last}");
            prop_assert!(end <= last + idle_ms + check, "end {end}, last byte {last}");
        }
    }
}
