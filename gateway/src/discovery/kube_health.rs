//! Which Kubernetes watches are known to be current, and since when the route table may be
//! stale (`gateway_discovery_route_table_stale_seconds`).
//!
//! A watch that failed is current again only when it has completed a fresh list, delivered
//! a live event, or resumed: a resumed watch reports nothing until the next change, so a
//! resume counts once the API server answered a probe for that type and the watch then
//! reported no error for [`RESUME_GRACE`]. The API server refuses a too-old resume (410) as
//! the first event of the watch, well within that grace. Reconnecting alone proves nothing:
//! the re-list after a 410 may still be running.

use std::collections::HashSet;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How long a resumed watch must stay free of errors after a successful probe.
pub const RESUME_GRACE: Duration = Duration::from_millis(500);

/// Health of a set of watches, identified by `W` (kind and stream).
#[derive(Debug)]
pub struct Health<W> {
    /// Watches whose last word was an error.
    failing: Vec<W>,
    /// Since when at least one watch has been failing.
    since: Option<Instant>,
    /// Watches between `Init` and `InitDone` of a (re-)list.
    listing: HashSet<W>,
    /// Failing watches whose API answered a probe: current at the instant, if no error first.
    resuming: Vec<(W, Instant)>,
}

impl<W> Default for Health<W> {
    fn default() -> Self {
        Health {
            failing: Vec::new(),
            since: None,
            listing: HashSet::new(),
            resuming: Vec::new(),
        }
    }
}

/// Whether an update made every watch current again (staleness ends).
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recovered(pub bool);

impl<W: Copy + Eq + Hash> Health<W> {
    pub fn failed(&mut self, w: W, now: Instant) {
        if !self.failing.contains(&w) {
            self.failing.push(w);
        }
        self.resuming.retain(|(r, _)| *r != w);
        self.since.get_or_insert(now);
    }

    /// A (re-)list started: the watch is not current until it completes.
    pub fn list_started(&mut self, w: W) {
        self.listing.insert(w);
    }

    /// A list completed: the watch is current.
    pub fn listed(&mut self, w: W) -> Recovered {
        self.listing.remove(&w);
        self.current(w)
    }

    /// A live event arrived: the watch works (unless it is still listing).
    pub fn delivered(&mut self, w: W) -> Recovered {
        if self.listing.contains(&w) {
            return Recovered(false);
        }
        self.current(w)
    }

    /// A probe of a failing watch's type succeeded: the API server answers again.
    pub fn answered(&mut self, w: W, now: Instant) {
        if self.failing.contains(&w) && !self.resuming.iter().any(|(r, _)| *r == w) {
            self.resuming.push((w, now + RESUME_GRACE));
        }
    }

    /// Resumes that stayed free of errors for the grace period count as current.
    pub fn tick(&mut self, now: Instant) -> Recovered {
        let due: Vec<W> = self
            .resuming
            .iter()
            .filter(|(w, at)| *at <= now && !self.listing.contains(w))
            .map(|(w, _)| *w)
            .collect();
        let mut recovered = Recovered(false);
        for w in due {
            if self.current(w).0 {
                recovered = Recovered(true);
            }
        }
        recovered
    }

    /// The watch no longer exists (its CRD is gone): it neither fails nor lists.
    pub fn forget(&mut self, keep: impl Fn(&W) -> bool) -> Recovered {
        self.listing.retain(&keep);
        self.resuming.retain(|(w, _)| keep(w));
        let was_failing = !self.failing.is_empty();
        self.failing.retain(&keep);
        Recovered(was_failing && self.settle())
    }

    /// Failing watches not already waiting out a resume: those worth probing.
    pub fn to_probe(&self) -> Vec<W> {
        self.failing
            .iter()
            .filter(|w| !self.resuming.iter().any(|(r, _)| r == *w))
            .copied()
            .collect()
    }

    pub fn stale_seconds(&self, now: Instant) -> u64 {
        self.since
            .map_or(0, |t| now.saturating_duration_since(t).as_secs())
    }

    fn current(&mut self, w: W) -> Recovered {
        self.resuming.retain(|(r, _)| *r != w);
        let before = self.failing.len();
        self.failing.retain(|f| *f != w);
        Recovered(self.failing.len() < before && self.settle())
    }

    /// Ends staleness when nothing fails; returns whether it ended now.
    fn settle(&mut self) -> bool {
        self.failing.is_empty() && self.since.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnecting_is_not_enough_a_relist_must_complete() {
        let t0 = Instant::now();
        let mut h = Health::default();
        h.failed(1, t0);
        h.failed(2, t0);
        assert_eq!(h.stale_seconds(t0 + Duration::from_secs(3)), 3);
        // The server answers; watch 1 is told 410 and re-lists.
        h.answered(1, t0);
        h.answered(2, t0);
        h.failed(1, t0);
        h.list_started(1);
        assert_eq!(h.delivered(1), Recovered(false), "a list in progress");
        assert_eq!(
            h.tick(t0 + RESUME_GRACE),
            Recovered(false),
            "1 still listing"
        );
        assert_eq!(h.stale_seconds(t0 + Duration::from_secs(4)), 4);
        assert_eq!(h.listed(1), Recovered(true));
        assert_eq!(h.stale_seconds(t0 + Duration::from_secs(5)), 0);
    }

    #[test]
    fn a_quiet_resume_counts_after_the_grace_unless_it_errs() {
        let t0 = Instant::now();
        let mut h = Health::default();
        h.failed("svc", t0);
        h.answered("svc", t0);
        assert!(h.to_probe().is_empty());
        assert_eq!(h.tick(t0 + RESUME_GRACE / 2), Recovered(false));
        h.failed("svc", t0 + RESUME_GRACE / 2);
        assert_eq!(h.tick(t0 + RESUME_GRACE * 2), Recovered(false));
        assert_eq!(h.to_probe(), vec!["svc"]);
        h.answered("svc", t0 + RESUME_GRACE * 2);
        assert_eq!(h.tick(t0 + RESUME_GRACE * 3), Recovered(true));
        assert_eq!(h.stale_seconds(t0 + RESUME_GRACE * 3), 0);
    }

    #[test]
    fn a_forgotten_watch_does_not_keep_the_table_stale() {
        let t0 = Instant::now();
        let mut h = Health::default();
        h.failed(("dr", 0), t0);
        assert_eq!(h.forget(|w| w.0 != "dr"), Recovered(true));
        assert_eq!(h.stale_seconds(t0 + Duration::from_secs(9)), 0);
        h.failed(("svc", 0), t0);
        assert_eq!(h.forget(|w| w.0 != "dr"), Recovered(false));
        assert_eq!(h.stale_seconds(t0 + Duration::from_secs(9)), 9);
    }
}
