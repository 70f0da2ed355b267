//! Which Kubernetes watches are known to be current, and since when the route table may be
//! stale (`gateway_discovery_route_table_stale_seconds`).
//!
//! A watch that failed is current again only when it has completed a fresh list, delivered
//! a live event, or resumed: a resumed watch reports nothing until the next change, so a
//! resume counts once the API server answered a probe for that type, the watch retried, and
//! from the later of the two it reported no error for [`RESUME_GRACE`]. The API server
//! refuses a too-old resume (410) as the first event of the watch, well within that grace.
//! Reconnecting alone proves nothing: the re-list after a 410 may still be running.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::time::{Duration, Instant};

use super::cache::Update;

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
    /// Failing watches whose API answered a probe since their last error, and when.
    answered: HashMap<W, Instant>,
    /// Failing watches that retried since their last error, and when.
    retried: HashMap<W, Instant>,
}

impl<W> Default for Health<W> {
    fn default() -> Self {
        Health {
            failing: Vec::new(),
            since: None,
            listing: HashSet::new(),
            answered: HashMap::new(),
            retried: HashMap::new(),
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
        self.answered.remove(&w);
        self.retried.remove(&w);
        self.since.get_or_insert(now);
    }

    /// What an update of watch `w` says about its health.
    pub fn observed<T>(&mut self, w: W, update: &Update<T>) -> Recovered {
        match update {
            Update::Init => {
                self.list_started(w);
                Recovered(false)
            }
            Update::Apply { initial: true, .. } => Recovered(false),
            Update::InitDone => self.listed(w),
            Update::Apply { .. } | Update::Delete(_) => self.delivered(w),
        }
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
        if self.failing.contains(&w) {
            self.answered.entry(w).or_insert(now);
        }
    }

    /// A failing watch retries (after its back-off, or woken because the server answers).
    pub fn retried(&mut self, w: W, now: Instant) {
        if self.failing.contains(&w) {
            self.retried.insert(w, now);
        }
    }

    /// Resumes that stayed free of errors for the grace period count as current.
    pub fn tick(&mut self, now: Instant) -> Recovered {
        let due: Vec<W> = self
            .failing
            .iter()
            .filter(|w| !self.listing.contains(w))
            .filter(|w| match (self.answered.get(w), self.retried.get(w)) {
                (Some(a), Some(r)) => (*a).max(*r) + RESUME_GRACE <= now,
                _ => false,
            })
            .copied()
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
        self.answered.retain(|w, _| keep(w));
        self.retried.retain(|w, _| keep(w));
        let was_failing = !self.failing.is_empty();
        self.failing.retain(&keep);
        Recovered(was_failing && self.settle())
    }

    /// Failing watches whose API server has not answered since their last error.
    pub fn to_probe(&self) -> Vec<W> {
        self.failing
            .iter()
            .filter(|w| !self.answered.contains_key(w))
            .copied()
            .collect()
    }

    pub fn stale_seconds(&self, now: Instant) -> u64 {
        self.since
            .map_or(0, |t| now.saturating_duration_since(t).as_secs())
    }

    fn current(&mut self, w: W) -> Recovered {
        self.answered.remove(&w);
        self.retried.remove(&w);
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
        // The server answers; both retry: 2 resumes quietly, 1 is told 410 and re-lists.
        h.answered(1, t0);
        h.answered(2, t0);
        h.retried(1, t0);
        h.retried(2, t0);
        h.failed(1, t0);
        h.list_started(1);
        assert_eq!(h.delivered(1), Recovered(false), "a list in progress");
        assert_eq!(
            h.tick(t0 + RESUME_GRACE),
            Recovered(false),
            "2 resumed, 1 still listing"
        );
        assert_eq!(h.stale_seconds(t0 + Duration::from_secs(4)), 4);
        assert_eq!(h.listed(1), Recovered(true));
        assert_eq!(h.stale_seconds(t0 + Duration::from_secs(5)), 0);
    }

    #[test]
    fn a_quiet_resume_counts_after_the_grace_unless_it_errs() {
        let t0 = Instant::now();
        let g = RESUME_GRACE;
        let mut h = Health::default();
        h.failed("svc", t0);
        h.answered("svc", t0);
        assert!(h.to_probe().is_empty());
        // The server answers, but the watch has not retried yet: not current.
        assert_eq!(h.tick(t0 + g * 2), Recovered(false));
        h.retried("svc", t0 + g * 2);
        assert_eq!(h.tick(t0 + g * 2 + g / 2), Recovered(false));
        h.failed("svc", t0 + g * 2 + g / 2);
        assert_eq!(h.tick(t0 + g * 4), Recovered(false));
        assert_eq!(h.to_probe(), vec!["svc"]);
        // A retry before the answer counts from the answer.
        h.retried("svc", t0 + g * 4);
        h.answered("svc", t0 + g * 5);
        assert_eq!(h.tick(t0 + g * 5 + g / 2), Recovered(false));
        assert_eq!(h.tick(t0 + g * 6), Recovered(true));
        assert_eq!(h.stale_seconds(t0 + g * 6), 0);
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
