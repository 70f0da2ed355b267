//! A DestinationRule's warmup (`loadBalancer.warmup`, or the older `warmupDurationSecs`):
//! Envoy's slow start, which istiod sets on round-robin and least-request clusters
//! (`setWarmup`, `setSlowStartConfig`). For `window` after an endpoint became ready its
//! weight is scaled by `max(min_share, (age / window) ^ (1 / aggression))`, the age at
//! least 1 ms (`applySlowStartFactor` in Envoy's `load_balancer_impl.cc`). Sans-IO: ages
//! are read from the millisecond clock by the caller.

use std::hash::{Hash, Hasher};
use std::time::Duration;

/// Envoy's `min_weight_percent` where istiod writes none (`warmupDurationSecs`) and Istio's
/// default for `warmup.minimumPercent`.
pub const MIN_PERCENT: f64 = 10.0;

/// One cluster's slow start.
#[derive(Debug, Clone, Copy)]
pub struct Warmup {
    window_ms: u64,
    /// `minimumPercent` / 100: the floor of the factor, so a new endpoint is never starved.
    min_share: f64,
    /// `aggression` (1: linear; more: faster at first).
    aggression: f64,
}

impl Warmup {
    /// `None` for a window under 1 ms, which Istio refuses and Envoy reads as no slow start.
    /// A `min_percent` outside 0 to 100 is held to it; an `aggression` that is not above 0
    /// is 1, as Envoy reads it.
    pub fn new(window: Duration, min_percent: f64, aggression: f64) -> Option<Self> {
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        let min_percent = if min_percent.is_nan() {
            MIN_PERCENT
        } else {
            min_percent.clamp(0.0, 100.0)
        };
        let aggression = if aggression > 0.0 && aggression.is_finite() {
            aggression
        } else {
            1.0
        };
        (window_ms >= 1).then_some(Warmup {
            window_ms,
            min_share: min_percent / 100.0,
            aggression,
        })
    }

    pub fn window(&self) -> Duration {
        Duration::from_millis(self.window_ms)
    }

    pub fn min_percent(&self) -> f64 {
        self.min_share * 100.0
    }

    pub fn aggression(&self) -> f64 {
        self.aggression
    }

    /// Whether an endpoint ready since `since` (0: not ready) is still warming at `now`.
    pub fn warming(&self, since: u64, now: u64) -> bool {
        since != 0 && now.saturating_sub(since) < self.window_ms
    }

    /// The factor on the weight of an endpoint ready since `since` at `now`: 1 once the
    /// window has passed (or for an endpoint with no readiness stamp).
    pub fn factor(&self, since: u64, now: u64) -> f64 {
        if !self.warming(since, now) {
            return 1.0;
        }
        let age = now.saturating_sub(since).max(1);
        let time = age as f64 / self.window_ms as f64;
        let f = if self.aggression == 1.0 {
            time
        } else {
            time.powf(1.0 / self.aggression)
        };
        f.max(self.min_share)
    }
}

// Compared and hashed by value, as the rest of a rule's settings are (a changed rule makes a
// new table); the floats are never NaN (`new`).
impl PartialEq for Warmup {
    fn eq(&self, other: &Self) -> bool {
        self.window_ms == other.window_ms
            && self.min_share.to_bits() == other.min_share.to_bits()
            && self.aggression.to_bits() == other.aggression.to_bits()
    }
}

impl Eq for Warmup {}

impl Hash for Warmup {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.window_ms.hash(state);
        self.min_share.to_bits().hash(state);
        self.aggression.to_bits().hash(state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(ms: u64, min: f64, aggression: f64) -> Warmup {
        Warmup::new(Duration::from_millis(ms), min, aggression).unwrap()
    }

    #[test]
    fn the_factor_grows_with_age_from_its_floor_to_one() {
        let lin = w(10_000, MIN_PERCENT, 1.0);
        let since = 1_000;
        // The first milliseconds sit on the floor.
        assert_eq!(lin.factor(since, since), 0.1);
        assert_eq!(lin.factor(since, since + 500), 0.1);
        assert!((lin.factor(since, since + 2_500) - 0.25).abs() < 1e-9);
        assert!((lin.factor(since, since + 9_999) - 0.9999).abs() < 1e-9);
        assert_eq!(lin.factor(since, since + 10_000), 1.0);
        assert!(!lin.warming(since, since + 10_000));
        // More aggression, faster at first: (1/4)^(1/2).
        let fast = w(10_000, MIN_PERCENT, 2.0);
        assert!((fast.factor(since, since + 2_500) - 0.5).abs() < 1e-9);
        // No floor: a just-ready endpoint takes almost nothing (age counts from 1 ms).
        let bare = w(10_000, 0.0, 1.0);
        assert!((bare.factor(since, since) - 0.0001).abs() < 1e-12);
        // Not ready, or never stamped: unscaled.
        assert_eq!(lin.factor(0, 5), 1.0);
        // A clock read before the stamp (another thread's) is age 0, not a wrap.
        assert_eq!(lin.factor(since, since - 1), 0.1);
    }

    #[test]
    fn values_istio_refuses_are_read_as_envoy_reads_them() {
        assert_eq!(Warmup::new(Duration::from_micros(999), 10.0, 1.0), None);
        let odd = Warmup::new(Duration::from_secs(1), 150.0, 0.0).unwrap();
        assert_eq!(odd.min_percent(), 100.0);
        assert_eq!(odd.aggression(), 1.0);
        let nan = Warmup::new(Duration::from_secs(1), f64::NAN, f64::NAN).unwrap();
        assert_eq!((nan.min_percent(), nan.aggression()), (MIN_PERCENT, 1.0));
        assert_eq!(
            Warmup::new(Duration::from_secs(1), -5.0, 1.0)
                .unwrap()
                .min_percent(),
            0.0
        );
    }
}
