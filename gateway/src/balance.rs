//! Endpoint choice: least connections by power of two choices, plus passive outlier detection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use crate::clock;
use crate::routes::{Endpoint, EndpointState};

/// Passive outlier detection settings.
#[derive(Debug, Clone)]
pub struct Outlier {
    /// Consecutive connect failures that eject an endpoint (0 disables ejection).
    pub consecutive_failures: u32,
    /// First ejection time; the n-th ejection in a row lasts n times as long.
    pub base_ejection: Duration,
    /// Upper bound for one ejection.
    pub max_ejection: Duration,
    /// At most this share (percent) of a service's endpoints is ejected at once.
    pub max_ejection_percent: u8,
}

impl Default for Outlier {
    fn default() -> Self {
        Outlier {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
        }
    }
}

/// Picks among `candidates` those neither ejected nor in `tried`, by two random choices and
/// the fewer active connections. `None` means every candidate is ejected or tried.
pub fn pick(candidates: &[&Endpoint], tried: &[SocketAddr]) -> Option<Arc<EndpointState>> {
    let now = clock::now_ms();
    let usable: Vec<&Arc<EndpointState>> = candidates
        .iter()
        .map(|e| &e.state)
        .filter(|s| !s.is_ejected(now) && !tried.contains(&s.addr))
        .collect();
    match usable.len() {
        0 => None,
        1 => Some(usable[0].clone()),
        n => {
            let mut rng = rand::rng();
            let a = rng.random_range(0..n);
            let mut b = rng.random_range(0..n - 1);
            if b >= a {
                b += 1;
            }
            let (x, y) = (usable[a], usable[b]);
            Some(if y.active() < x.active() { y } else { x }.clone())
        }
    }
}

/// Records a connect failure; ejects the endpoint when its streak reaches the threshold and
/// the service's ejection budget allows. Returns the ejection time if it was ejected.
pub fn on_failure(state: &EndpointState, service: &[Endpoint], cfg: &Outlier) -> Option<Duration> {
    let streak = state.record_failure();
    if cfg.consecutive_failures == 0 || streak < cfg.consecutive_failures {
        return None;
    }
    let now = clock::now_ms();
    if state.is_ejected(now) {
        return None;
    }
    let ejected = service.iter().filter(|e| e.state.is_ejected(now)).count();
    // Floor of the share, but at least one: a single bad endpoint of a small service still
    // gets skipped instead of costing every caller a connect timeout.
    let budget = (service.len() * cfg.max_ejection_percent as usize / 100).max(1);
    if cfg.max_ejection_percent == 0 || ejected >= budget {
        return None;
    }
    let ms = state.eject(
        now,
        cfg.base_ejection.as_millis() as u64,
        cfg.max_ejection.as_millis() as u64,
    );
    Some(Duration::from_millis(ms))
}

pub fn on_success(state: &EndpointState) {
    state.record_success();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{EndpointSpec, Routes, ServiceSpec};

    fn table(n: u8) -> Arc<crate::routes::RouteTable> {
        let routes = Routes::new();
        routes.publish(&[ServiceSpec {
            host: "a.local".into(),
            ports: vec![80],
            subsets: Default::default(),
            endpoints: (1..=n)
                .map(|i| EndpointSpec {
                    address: format!("10.0.0.{i}").parse().unwrap(),
                    ports: [(80, 80)].into(),
                    labels: Default::default(),
                    ready: true,
                })
                .collect(),
        }])
    }

    #[test]
    fn p2c_prefers_fewer_connections() {
        let t = table(2);
        let r = t.lookup("a.local", 80).unwrap();
        let c = r.candidates("").unwrap();
        let busy: Vec<_> = (0..10).map(|_| c[0].state.track()).collect();
        // With two candidates both are always sampled, so the idle one always wins.
        for _ in 0..50 {
            assert_eq!(pick(&c, &[]).unwrap().addr, c[1].state.addr);
        }
        drop(busy);
    }

    #[test]
    fn pick_skips_tried_and_ejected() {
        let t = table(3);
        let r = t.lookup("a.local", 80).unwrap();
        let c = r.candidates("").unwrap();
        let tried = [c[0].state.addr];
        for _ in 0..20 {
            assert_ne!(pick(&c, &tried).unwrap().addr, c[0].state.addr);
        }
        c[1].state.eject(clock::now_ms(), 60_000, 60_000);
        for _ in 0..20 {
            assert_eq!(pick(&c, &tried).unwrap().addr, c[2].state.addr);
        }
        assert!(pick(&c, &[c[0].state.addr, c[2].state.addr]).is_none());
    }

    #[test]
    fn ejection_budget() {
        let t = table(4);
        let r = t.lookup("a.local", 80).unwrap();
        let cfg = Outlier {
            consecutive_failures: 2,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(60),
            max_ejection_percent: 50,
        };
        let eps = &r.endpoints;
        assert!(on_failure(&eps[0].state, eps, &cfg).is_none());
        assert_eq!(
            on_failure(&eps[0].state, eps, &cfg),
            Some(Duration::from_secs(10))
        );
        on_failure(&eps[1].state, eps, &cfg);
        assert!(on_failure(&eps[1].state, eps, &cfg).is_some());
        // 50% of 4 are ejected: the third stays in.
        on_failure(&eps[2].state, eps, &cfg);
        assert!(on_failure(&eps[2].state, eps, &cfg).is_none());
        assert!(!eps[2].state.is_ejected(clock::now_ms()));
    }
}
