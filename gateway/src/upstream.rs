//! Connecting to an endpoint of a cluster: its DestinationRule's connection limit, the
//! gateway's zone first (for a service that prefers close endpoints, or by the share Envoy's
//! priority load keeps there under locality failover), panic mode, retries across endpoints,
//! and the connect outcomes fed to outlier detection. The pick within a set is
//! [`crate::balance`]'s.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use rand::Rng;
use smallvec::SmallVec;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use crate::balance::{Way, pick_heeding};
use crate::breaker::Held;
use crate::clock;
use crate::config::Config;
use crate::dr_conn::ConnSettings;
use crate::endpoint::EndpointState;
use crate::local_error;
use crate::metrics::ProxyMetrics;
use crate::outlier;
use crate::reject::Reject;
use crate::routes::{Candidates, LookupError, Route};
use crate::sockets;

/// A connected upstream: the socket, its endpoint, and its place under the cluster's
/// connection limit where a DestinationRule sets one (held as long as the connection).
pub struct Connected {
    pub stream: TcpStream,
    pub ep: Arc<EndpointState>,
    pub held: Option<Held>,
}

/// Connects to a ready endpoint of `route`'s `subset`, trying up to `connect_attempts`
/// different endpoints (safe: nothing has been forwarded yet). Each attempt's outcome feeds
/// outlier detection, except failures of the gateway's own resources, which say nothing
/// about the endpoint. `client`: the address a source-IP hash balances by.
pub async fn connect(
    route: &Route,
    subset: &str,
    client: Option<IpAddr>,
    cfg: &Config,
    metrics: &ProxyMetrics,
) -> Result<Connected, Reject> {
    let candidates = match route.candidates_near(subset) {
        Ok(c) => c,
        Err(LookupError::NoRoute) => return Err(Reject::NoRoute),
        Err(LookupError::NoHealthyEndpoint) => return Err(Reject::NoHealthyEndpoint),
    };
    // A DestinationRule's settings for the port and subset, else the gateway's flags.
    let rule = candidates.conn;
    // Envoy checks the limit before it picks an endpoint; over it the client is closed.
    let held = match (
        rule.and_then(ConnSettings::max_connections),
        candidates.open,
    ) {
        (Some(max), Some(open)) => {
            let held = Held::take(open, max);
            if held.is_none() {
                debug!(
                    max,
                    "the DestinationRule's maxConnections are open; closing"
                );
            }
            Some(held.ok_or(Reject::UpstreamOverflow)?)
        }
        _ => None,
    };
    let connect_timeout = rule.and_then(|c| c.connect_timeout());
    let connect_timeout = connect_timeout.unwrap_or(cfg.connect_timeout);
    let outlier = rule
        .and_then(|c| c.outlier.as_ref())
        .unwrap_or(&cfg.outlier);
    let panic = outlier.min_health_percent > 0 && in_panic(route, candidates.all, outlier);
    let way = Way {
        lb: rule.and_then(|c| c.lb).unwrap_or_default(),
        turn: candidates.turn,
        client,
        far_first: candidates.spill && !stays_near(route, candidates),
        warmup: rule.and_then(|c| c.warmup),
    };
    let split = !(candidates.near.is_empty() && candidates.far.is_empty());
    // On the stack for the usual few attempts: no allocation per connection.
    let mut tried: SmallVec<[SocketAddr; 4]> = SmallVec::new();
    let mut local = false;
    for attempt in 1..=cfg.connect_attempts {
        let last = attempt == cfg.connect_attempts;
        let Some((ep, near)) = choose_with(route, candidates, &tried, last, panic, way) else {
            break;
        };
        if split && !near {
            metrics.zone_spills.inc();
        }
        tried.push(ep.addr);
        let t = Instant::now();
        match tokio::time::timeout(connect_timeout, TcpStream::connect(ep.addr)).await {
            Ok(Ok(stream)) => {
                metrics.connect_seconds.observe(t.elapsed().as_secs_f64());
                ep.health.on_success();
                match rule.and_then(ConnSettings::keepalive) {
                    None => sockets::set_options(&stream),
                    Some(k) => sockets::set_options_probing(&stream, k.time, k.interval, k.probes),
                }
                return Ok(Connected { stream, ep, held });
            }
            Ok(Err(e)) if local_error::classify(&e).is_some() => {
                // Not the endpoint's fault: no failure streak, no ejection. Debug only:
                // under exhaustion this happens on every connection.
                debug!(upstream = %ep.addr, error = %e, "connect failed locally");
                local = true;
                continue;
            }
            Ok(Err(e)) => debug!(upstream = %ep.addr, error = %e, "connect failed"),
            Err(_) => debug!(upstream = %ep.addr, "connect timed out"),
        }
        metrics.connect_failures.inc();
        // The budget's base is what Envoy's cluster holds: the route's (or subset's) ready
        // endpoints that take the connection, not those it never dials.
        let service = candidates
            .all
            .iter()
            .map(|&i| &route.endpoints[i].state.health);
        if let Some(d) = outlier::on_failure(&ep.health, service, outlier) {
            metrics.ejections.inc();
            warn!(upstream = %ep.addr, ejected_for = ?d, "endpoint ejected after consecutive connect failures");
        }
    }
    Err(if local {
        Reject::LocalResource
    } else if tried.is_empty() {
        Reject::NoHealthyEndpoint
    } else {
        Reject::ConnectFailed
    })
}

/// Whether a connection stays in the gateway's zone under a DestinationRule's locality
/// failover, as Envoy shares load between the zone's priority level and the rest's
/// (`recalculatePerPriorityState`, `distributeLoad`): a level's health is
/// `min(100, 1.4 × its share of endpoints not ejected)` (the default overprovisioning factor,
/// which istiod leaves), the zone takes its health in percent and the rest the remainder,
/// both scaled up when their sum is under 100. So the zone keeps everything while at least 5
/// of 7 of its endpoints are not ejected; with all ejected everywhere, the zone.
fn stays_near(route: &Route, candidates: Candidates<'_>) -> bool {
    let now = clock::now_ms();
    let health = |set: &[usize]| {
        let healthy = healthy(route, set, now);
        (140 * healthy).checked_div(set.len()).unwrap_or(0).min(100)
    };
    let near = health(candidates.near);
    if near == 100 {
        return true;
    }
    let total = (near + health(candidates.far)).min(100);
    let load = match total {
        0 => 100,
        total => near * 100 / total,
    };
    load >= 100 || rand::rng().random_range(0..100) < load
}

/// Picks an endpoint, and says whether it is in the gateway's zone. For a service that
/// prefers the zone ([`Candidates`]), one there while any can be dialed (neither ejected nor
/// tried), then another, as Istio's locality failover does; but the `last` attempt of a
/// connection whose earlier ones failed goes out of the zone first, so endpoints of a zone
/// that all fail cost a connection at most its other attempts, not the connection itself
/// (outlier detection ejects at most `--outlier-max-percent` of a service). `None` when no
/// candidate is left.
pub fn choose(
    route: &Route,
    candidates: Candidates<'_>,
    tried: &[SocketAddr],
    last: bool,
) -> Option<(Arc<EndpointState>, bool)> {
    choose_with(route, candidates, tried, last, false, Way::default())
}

/// Whether fewer of `candidates` than a DestinationRule's `minHealthPercent` are healthy (not
/// ejected): Envoy's panic mode (`healthy_panic_threshold`, which istiod sets from it), in
/// which it balances across every host, ejected or not.
fn in_panic(route: &Route, candidates: &[usize], outlier: &crate::outlier::Outlier) -> bool {
    let healthy = healthy(route, candidates, clock::now_ms());
    healthy * 100 < usize::from(outlier.min_health_percent) * candidates.len()
}

/// How many of `set` (indices into `route.endpoints`) are not ejected at `now`: the healthy
/// count behind Envoy's panic threshold and its priority load alike.
fn healthy(route: &Route, set: &[usize], now: u64) -> usize {
    (set.iter())
        .filter(|&&i| !route.endpoints[i].state.health.is_ejected(now))
        .count()
}

/// [`choose`], heeding ejections unless in `panic` ([`in_panic`]), the `way` it says.
fn choose_with(
    route: &Route,
    candidates: Candidates<'_>,
    tried: &[SocketAddr],
    last: bool,
    panic: bool,
    way: Way<'_>,
) -> Option<(Arc<EndpointState>, bool)> {
    let pick = |set: &[usize]| pick_heeding(route, set, tried, !panic, way);
    let Candidates { near, far, all, .. } = candidates;
    if near.is_empty() && far.is_empty() {
        return pick(all).map(|ep| (ep, false));
    }
    let near_first = (!last || tried.is_empty()) && !way.far_first;
    let order = if near_first {
        [(near, true), (far, false)]
    } else {
        [(far, false), (near, true)]
    };
    order
        .into_iter()
        .find_map(|(set, in_zone)| Some((pick(set)?, in_zone)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::tests::{service, table, zoned};
    use crate::routes::Routes;

    /// `connect` applies a rule's `tcpKeepalive` to the upstream socket, the gateway's own
    /// values where the rule leaves a field unset; and refuses past `maxConnections`.
    #[tokio::test]
    async fn connect_sets_the_rules_keepalive_and_heeds_its_limit() {
        use crate::dr_conn::{DrConn, policy_conn};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut spec = service(1, |_| None, false);
        spec.endpoints[0].address = addr.ip();
        spec.endpoints[0].ports = [(80, addr.port())].into();
        let pool = serde_json::json!({"connectionPool": {"tcp": {"maxConnections": 1,
            "tcpKeepalive": {"time": "120s", "probes": 4}}}});
        spec.conn = Arc::new(DrConn {
            service: policy_conn(Some(&pool)),
            ..Default::default()
        });
        let t = Routes::new().publish(&[spec]);
        let r = t.lookup("a.local", 80).unwrap();
        let cfg = Config::default();
        let mut reg = prometheus_client::registry::Registry::default();
        let m = ProxyMetrics::new(&mut reg);
        let held = connect(r, "", None, &cfg, &m).await.unwrap();
        let s = socket2::SockRef::from(&held.stream);
        assert!(s.keepalive().unwrap());
        assert_eq!(
            s.tcp_keepalive_time().unwrap(),
            std::time::Duration::from_secs(120)
        );
        assert_eq!(
            s.tcp_keepalive_interval().unwrap(),
            std::time::Duration::from_secs(10)
        );
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 4);
        assert!(s.tcp_nodelay().unwrap());
        assert_eq!(r.open_connections(""), Some(1));
        let over = connect(r, "", None, &cfg, &m).await.err();
        assert_eq!(over, Some(Reject::UpstreamOverflow));
        drop(held);
        assert_eq!(r.open_connections(""), Some(0));
        assert!(connect(r, "", None, &cfg, &m).await.is_ok());
    }

    /// A rule's `outlierDetection` turns on locality failover where the gateway knows its
    /// zone (off with `localityLbSetting.enabled: false`; the service's own `PreferClose`
    /// keeps its no-spill rule); the zone keeps the share Envoy's priority load gives it.
    #[test]
    fn a_rules_locality_failover_keeps_envoys_share_in_the_zone() {
        use crate::dr_conn::{DrConn, policy_conn};
        let with = |policy: serde_json::Value, prefer: bool, zone: Option<&str>| {
            let mut spec = service(4, |i| Some(if i <= 3 { "a" } else { "b" }), prefer);
            spec.conn = Arc::new(DrConn {
                service: policy_conn(Some(&policy)),
                ..Default::default()
            });
            Routes::new().publish_in(&[spec], zone.map(Arc::from).as_ref())
        };
        let od = serde_json::json!({"outlierDetection": {}});
        let t = with(od.clone(), false, Some("a"));
        let r = t.lookup("a.local", 80).unwrap();
        assert_eq!(r.preferred_zone(""), Some(("a", true)));
        let c = r.candidates_near("").unwrap();
        assert!(c.spill);
        assert_eq!((c.near.len(), c.far.len()), (3, 1));
        let share = |n: u32| (0..n).filter(|_| stays_near(r, c)).count() as f64 / f64::from(n);
        assert_eq!(share(1_000), 1.0, "all healthy: the zone keeps all");
        // One of three ejected: 1.4 × 2/3 = 93 %.
        r.endpoints[c.near[0]]
            .state
            .health
            .eject(clock::now_ms(), 60_000, 60_000);
        let kept = share(20_000);
        assert!((kept - 0.93).abs() < 0.02, "{kept}");
        // All three: the far one takes everything; with it ejected too, the zone again.
        for &i in &c.near[1..] {
            r.endpoints[i]
                .state
                .health
                .eject(clock::now_ms(), 60_000, 60_000);
        }
        assert_eq!(share(1_000), 0.0);
        r.endpoints[c.far[0]]
            .state
            .health
            .eject(clock::now_ms(), 60_000, 60_000);
        assert_eq!(share(1_000), 1.0);
        // No detection, failover off, or no zone known: no preference.
        let off = serde_json::json!({"outlierDetection": {},
            "loadBalancer": {"localityLbSetting": {"enabled": false}}});
        for (policy, zone) in [
            (serde_json::json!({}), Some("a")),
            (off, Some("a")),
            (od.clone(), None),
        ] {
            let t = with(policy.clone(), false, zone);
            assert_eq!(
                t.lookup("a.local", 80).unwrap().preferred_zone(""),
                None,
                "{policy} {zone:?}"
            );
        }
        // The service's own ask: the zone, without spilling.
        let t = with(od, true, Some("a"));
        assert_eq!(
            t.lookup("a.local", 80).unwrap().preferred_zone(""),
            Some(("a", false))
        );
    }

    /// A DestinationRule's `minHealthPercent` (Envoy's panic threshold): with fewer of a
    /// route's endpoints healthy than that share, ejected ones are chosen again; at or above
    /// it (and with 0, the default), only the healthy.
    #[test]
    fn below_the_min_health_share_ejected_endpoints_are_chosen_again() {
        let t = table(4);
        let r = t.lookup("a.local", 80).unwrap();
        let c = r.candidates_near("").unwrap();
        let st = |i: usize| &r.endpoints[c.all[i]].state;
        for i in 1..4 {
            st(i).health.eject(clock::now_ms(), 60_000, 60_000);
        }
        let mut outlier = crate::outlier::Outlier {
            min_health_percent: 50,
            ..Default::default()
        };
        assert!(in_panic(r, c.all, &outlier), "1 of 4 healthy is under 50 %");
        let seen: std::collections::BTreeSet<SocketAddr> = (0..200)
            .map(|_| {
                choose_with(r, c, &[], false, true, Way::default())
                    .unwrap()
                    .0
                    .addr
            })
            .collect();
        assert_eq!(seen.len(), 4, "{seen:?}");
        outlier.min_health_percent = 25;
        assert!(!in_panic(r, c.all, &outlier), "25 % is not under 25 %");
        for _ in 0..50 {
            assert_eq!(
                choose_with(r, c, &[], false, false, Way::default())
                    .unwrap()
                    .0
                    .addr,
                st(0).addr
            );
        }
    }

    #[test]
    fn the_gateways_zone_first_and_the_rest_only_when_none_there_can_be_dialed() {
        // 10.0.0.1 and .2 in zone a, .3 and .4 in zone b.
        let zone_of = |i: u8| Some(if i <= 2 { "a" } else { "b" });
        let t = zoned(4, zone_of, true, Some("a"));
        let r = t.lookup("a.local", 80).unwrap();
        let c = r.candidates_near("").unwrap();
        assert_eq!((c.near.len(), c.all.len()), (2, 4));
        let chosen = |tried: &[SocketAddr]| {
            let (ep, near) = choose(r, c, tried, false)?;
            let ip = ep.addr.ip().to_string();
            assert_eq!(near, ip == "10.0.0.1" || ip == "10.0.0.2", "{ip}");
            Some(ip)
        };
        for _ in 0..50 {
            let ip = chosen(&[]).unwrap();
            assert!(ip == "10.0.0.1" || ip == "10.0.0.2", "{ip}");
        }
        // One of zone a tried: the other; both: zone b; everything: none.
        let a: Vec<SocketAddr> = ["10.0.0.1:80", "10.0.0.2:80"]
            .map(|a| a.parse().unwrap())
            .into();
        for _ in 0..20 {
            assert_eq!(chosen(&a[..1]).unwrap(), "10.0.0.2");
            let ip = chosen(&a).unwrap();
            assert!(ip == "10.0.0.3" || ip == "10.0.0.4", "{ip}");
        }
        // A connection's last attempt after a failed one leaves the zone first: zone a's
        // endpoints, were they all failing, cost it only its other attempts. A last attempt
        // with nothing tried (a single one) stays in the zone.
        for _ in 0..20 {
            let (ep, near) = choose(r, c, &a[..1], true).unwrap();
            let ip = ep.addr.ip().to_string();
            assert!(!near && (ip == "10.0.0.3" || ip == "10.0.0.4"), "{ip}");
            assert!(choose(r, c, &[], true).unwrap().1);
        }
        // Zone b all tried too: back in zone a for the last attempt.
        let b: Vec<SocketAddr> = ["10.0.0.1:80", "10.0.0.3:80", "10.0.0.4:80"]
            .map(|a| a.parse().unwrap())
            .into();
        let (ep, near) = choose(r, c, &b, true).unwrap();
        assert!(near && ep.addr.ip().to_string() == "10.0.0.2");
        // Ejected counts as unusable, like tried.
        r.endpoints[c.near[0]]
            .state
            .health
            .eject(clock::now_ms(), 60_000, 60_000);
        r.endpoints[c.near[1]]
            .state
            .health
            .eject(clock::now_ms(), 60_000, 60_000);
        let ip = chosen(&[]).unwrap();
        assert!(ip == "10.0.0.3" || ip == "10.0.0.4", "{ip}");
        let all: Vec<SocketAddr> = (1..=4)
            .map(|i| format!("10.0.0.{i}:80").parse().unwrap())
            .collect();
        assert!(chosen(&all).is_none());
    }

    #[test]
    fn no_preference_without_the_services_ask_or_the_gateways_zone() {
        let zone_of = |i: u8| Some(if i == 1 { "a" } else { "b" });
        for (prefer, zone) in [(false, Some("a")), (true, None), (true, Some("c"))] {
            let t = zoned(3, zone_of, prefer, zone);
            let r = t.lookup("a.local", 80).unwrap();
            let c = r.candidates_near("").unwrap();
            assert!(c.near.is_empty(), "{prefer} {zone:?}");
            let seen: std::collections::BTreeSet<_> = (0..200)
                .map(|_| choose(r, c, &[], false).unwrap().0.addr)
                .collect();
            assert_eq!(seen.len(), 3, "{prefer} {zone:?}: every endpoint chosen");
        }
    }
}
