//! Passive outlier detection: an endpoint's failure streak and ejection, and the policy that
//! ejects it (threshold, growing ejection time, a per-service budget).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::clock;

/// Passive outlier detection settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Outlier {
    /// Consecutive connect failures that eject an endpoint (0 disables ejection).
    pub consecutive_failures: u32,
    /// First ejection time; the n-th ejection in a row lasts n times as long.
    pub base_ejection: Duration,
    /// Upper bound for one ejection.
    pub max_ejection: Duration,
    /// At most this share (percent) of a service's endpoints is ejected at once.
    pub max_ejection_percent: u8,
    /// One endpoint may be ejected even where the share allows none (the `--outlier-*`
    /// flags' rule; a DestinationRule's `outlierDetection` follows Envoy, which does not).
    pub eject_one_regardless: bool,
    /// Below this share (percent) of healthy (not ejected) endpoints, connections ignore
    /// ejections (Envoy's panic mode, from a DestinationRule's `minHealthPercent`); 0 never.
    pub min_health_percent: u8,
}

impl Default for Outlier {
    fn default() -> Self {
        Outlier {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
            eject_one_regardless: true,
            min_health_percent: 0,
        }
    }
}

/// The health half of an endpoint's live state: failure streak and ejection.
#[derive(Debug, Default)]
pub struct Health {
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    /// Milliseconds on [`clock::now_ms`] until which the endpoint is ejected; 0 when not.
    ejected_until_ms: AtomicU64,
}

impl Health {
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.is_ejected_at(|| now_ms)
    }

    /// [`Health::is_ejected`] reading the time only for an endpoint ejected at some point:
    /// a connection's pick and success then read no clock while all is well.
    pub fn is_ejected_at(&self, now_ms: impl FnOnce() -> u64) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && until > now_ms()
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    pub fn ejected_for_ms(&self, now_ms: u64) -> u64 {
        self.ejected_until_ms
            .load(Ordering::Relaxed)
            .saturating_sub(now_ms)
    }

    /// Records a successful connect: the failure streak ends.
    pub fn on_success(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        // A success after an ejection ends the streak that makes ejections grow.
        if self.ejections.load(Ordering::Relaxed) != 0 && !self.is_ejected(clock::now_ms()) {
            self.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// Records a failed connect; returns the new failure streak.
    fn record_failure(&self) -> u32 {
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Ejects until `now + base * n` where n counts ejections without a success in between.
    pub(crate) fn eject(&self, now_ms: u64, base_ms: u64, max_ms: u64) -> u64 {
        let n = self.ejections.fetch_add(1, Ordering::Relaxed) as u64 + 1;
        let dur = base_ms.saturating_mul(n).min(max_ms.max(base_ms));
        self.ejected_until_ms.store(now_ms + dur, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        dur
    }
}

/// Serializes ejection decisions, so a service's budget holds across workers.
static DECISIONS: Mutex<()> = Mutex::new(());

/// Records a connect failure of `health`; ejects the endpoint when its streak reaches the
/// threshold and the budget of its `service` (the health of all its endpoints) allows.
/// Returns the ejection time if it was ejected.
pub fn on_failure<'a>(
    health: &Health,
    service: impl ExactSizeIterator<Item = &'a Health>,
    cfg: &Outlier,
) -> Option<Duration> {
    let streak = health.record_failure();
    if cfg.consecutive_failures == 0 || streak < cfg.consecutive_failures {
        return None;
    }
    // Workers fail at once (a service going down fails everywhere): counting the ejected and
    // ejecting is one step, or two could each see room for one and leave the service none.
    // Only failures at the threshold take the lock.
    let _decision = DECISIONS.lock().unwrap_or_else(|e| e.into_inner());
    let now = clock::now_ms();
    if health.is_ejected(now) {
        return None;
    }
    let total = service.len();
    let ejected = service.filter(|h| h.is_ejected(now)).count();
    // Floor of the share, but (by the flags' rule) at least one: a single bad endpoint of a
    // small service still gets skipped instead of costing every caller a connect timeout.
    let share = total * cfg.max_ejection_percent as usize / 100;
    let budget = if cfg.eject_one_regardless {
        share.max(1)
    } else {
        share
    };
    if cfg.max_ejection_percent == 0 || ejected >= budget {
        return None;
    }
    let ms = health.eject(
        now,
        cfg.base_ejection.as_millis() as u64,
        cfg.max_ejection.as_millis() as u64,
    );
    Some(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_grows_and_resets() {
        let h = Health::default();
        assert_eq!(h.eject(1000, 100, 10_000), 100);
        assert!(h.is_ejected(1050));
        assert!(!h.is_ejected(1100));
        assert_eq!(h.eject(2000, 100, 10_000), 200);
        assert_eq!(h.eject(3000, 100, 250), 250);
        // success after the ejection expired resets the multiplier
        h.ejected_until_ms.store(0, Ordering::Relaxed);
        h.on_success();
        assert_eq!(h.eject(4000, 100, 10_000), 100);
    }

    #[test]
    fn ejection_budget() {
        let eps: Vec<Health> = (0..4).map(|_| Health::default()).collect();
        let cfg = Outlier {
            consecutive_failures: 2,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(60),
            max_ejection_percent: 50,
            eject_one_regardless: true,
            min_health_percent: 0,
        };
        let fail = |i: usize| on_failure(&eps[i], eps.iter(), &cfg);
        assert!(fail(0).is_none());
        assert_eq!(fail(0), Some(Duration::from_secs(10)));
        fail(1);
        assert!(fail(1).is_some());
        // 50% of 4 are ejected: the third stays in.
        fail(2);
        assert!(fail(2).is_none());
        assert!(!eps[2].is_ejected(clock::now_ms()));
        // 10 % of 4 is none: one anyway by the flags' rule, none as Envoy has it.
        for (one_regardless, ejected) in [(true, true), (false, false)] {
            let eps: Vec<Health> = (0..4).map(|_| Health::default()).collect();
            let cfg = Outlier {
                max_ejection_percent: 10,
                eject_one_regardless: one_regardless,
                ..cfg.clone()
            };
            on_failure(&eps[0], eps.iter(), &cfg);
            assert_eq!(on_failure(&eps[0], eps.iter(), &cfg).is_some(), ejected);
        }
    }

    /// Two workers whose connects fail at the same moment on the two endpoints of a service
    /// that may lose one: one is ejected, never both (the budget is checked and taken as one
    /// step), round after round.
    #[test]
    fn the_budget_holds_when_workers_fail_at_once() {
        const ROUNDS: usize = 20_000;
        let cfg = Outlier {
            consecutive_failures: 1,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(60),
            max_ejection_percent: 50,
            eject_one_regardless: true,
            min_health_percent: 0,
        };
        let services: Vec<[Health; 2]> = (0..ROUNDS).map(|_| Default::default()).collect();
        let start = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            for worker in 0..2 {
                let (services, start, cfg) = (&services, &start, &cfg);
                s.spawn(move || {
                    for service in services {
                        start.wait();
                        on_failure(&service[worker], service.iter(), cfg);
                    }
                });
            }
        });
        let now = clock::now_ms();
        let both = services
            .iter()
            .filter(|s| s.iter().all(|h| h.is_ejected(now)))
            .count();
        let one = services
            .iter()
            .filter(|s| s.iter().filter(|h| h.is_ejected(now)).count() == 1)
            .count();
        assert_eq!(
            (both, one),
            (0, ROUNDS),
            "rounds with both ejected, with one"
        );
    }
}
