//! The `/debug/routes` view: its query (`host=`, `limit=`) and the JSON it shows of a route
//! table and its endpoints' live state.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::clock;
use crate::dr_conn::Lb;
use crate::routes::{Labels, Route, RouteTable};
use crate::sni_name::SniName;

/// The JSON served on `/debug/routes`: the routes of `table` that pass `filter`, sorted for stable
/// output. Filtering comes before building, so a narrow query on a large table is cheap.
pub fn view(table: &RouteTable, filter: &DebugFilter) -> DebugView {
    let now = clock::now_ms();
    let host_wanted = |host: &str| {
        filter
            .host
            .as_ref()
            .is_none_or(|h| host.contains(h.as_str()))
    };
    let wanted = |r: &&Route| host_wanted(&r.host);
    // (route, classic): a route reached only over HBONE shows no classic endpoints.
    let mut matched: Vec<(&Route, bool)> = table
        .routes()
        .filter(wanted)
        .map(|r| (r, true))
        .chain(table.hbone_only_routes().filter(wanted).map(|r| (r, false)))
        .collect();
    matched.sort_by(|(a, _), (b, _)| (&a.host, a.port).cmp(&(&b.host, b.port)));
    let matched_routes = matched.len();
    matched.truncate(filter.limit.unwrap_or(usize::MAX));
    let endpoint = |e: &crate::routes::Endpoint| DebugEndpoint {
        address: e.state.addr.to_string(),
        ready: e.ready,
        mtls: None,
        mtls_off: None,
        labels: (*e.labels).clone(),
        zone: e.zone.as_deref().map(str::to_owned),
        weight: e.weight,
        ready_for_ms: match e.state.ready_since() {
            0 => None,
            since => Some(now.saturating_sub(since)),
        },
        active_connections: e.state.active(),
        consecutive_failures: e.state.health.consecutive_failures(),
        ejected: e.state.health.is_ejected(now),
        ejected_for_ms: e.state.health.ejected_for_ms(now),
    };
    let routes = matched
        .into_iter()
        .map(|(r, classic)| DebugRoute {
            hbone_endpoints: table
                .lookup_hbone(&r.host, r.port)
                .map(|h| h.endpoints.iter().map(endpoint).collect())
                .unwrap_or_default(),
            waypoint: table
                .lookup_hbone(&r.host, r.port)
                .and_then(|h| h.waypoint.as_deref().map(str::to_owned)),
            canary: table
                .lookup_hbone(&r.host, r.port)
                .and_then(|h| h.canary.as_ref())
                .map(|c| DebugCanary {
                    host: c.host.to_string(),
                    weight: c.weight,
                }),
            policy: policy(r, ""),
            subset_policies: (r.subsets.keys())
                .filter(|name| {
                    r.settings(name) != r.settings("")
                        || r.preferred_zone(name) != r.preferred_zone("")
                        || r.open_connections(name).is_some()
                })
                .map(|name| (name.clone(), policy(r, name)))
                .collect(),
            idle_timeout_ms: (r.conn.idle_timeout()).map(|d| d.as_millis() as u64),
            max_connection_duration_ms: (r.conn.max_duration()).map(|d| d.as_millis() as u64),
            sni: SniName::new(r.port, "", r.host.as_str()).to_string(),
            host: r.host.clone(),
            port: r.port,
            subsets: (*r.subsets).clone(),
            endpoints: if classic {
                // A DestinationRule's mode for the port decides over each endpoint's mark,
                // as in routing (a subset's own mode may differ: its candidates show it).
                let by_rule = r.tls.for_route(r.port, "");
                let classic = |e: &crate::routes::Endpoint| DebugEndpoint {
                    mtls: Some(by_rule.unwrap_or(e.mtls)),
                    mtls_off: match (by_rule, e.mtls, e.mtls_disabled) {
                        (Some(true), ..) | (None, true, _) => None,
                        (Some(false), ..) => Some(MTLS_OFF_BY_RULE),
                        (None, false, true) => Some(MTLS_OFF_BY_POLICY),
                        (None, false, false) => Some(MTLS_OFF_NO_LABEL),
                    },
                    ..endpoint(e)
                };
                r.endpoints.iter().map(classic).collect()
            } else {
                Vec::new()
            },
        })
        .collect::<Vec<_>>();
    let left_out = table
        .left_out
        .iter()
        .filter(|l| host_wanted(&l.host))
        .map(|l| DebugLeftOut {
            sni: SniName::new(l.port, "", l.host.as_str()).to_string(),
            endpoint: l.endpoint.to_string(),
        })
        .collect();
    let sni_too_long = table
        .too_long
        .iter()
        .filter(|l| host_wanted(&l.host))
        .map(|l| DebugTooLong {
            sni: SniName::new(l.port, l.subset.as_str(), l.host.as_str()).to_string(),
            bytes: l.len,
        })
        .collect();
    DebugView {
        generation: table.generation,
        total_routes: table.len() + table.hbone_only_routes().count(),
        matched_routes,
        truncated: routes.len() < matched_routes,
        routes,
        left_out,
        sni_too_long,
    }
}

/// Which routes `/debug/routes` shows.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DebugFilter {
    /// Keep routes whose host contains this (lowercase) text.
    pub host: Option<String>,
    /// Keep at most this many routes, the first in (host, port) order.
    pub limit: Option<usize>,
}

#[derive(Debug, Serialize)]
pub struct DebugView {
    pub generation: u64,
    /// Routes in the table (classic, and HBONE-only ones).
    pub total_routes: usize,
    /// Routes that passed the host filter.
    pub matched_routes: usize,
    /// True when `limit` left some matched routes out.
    pub truncated: bool,
    pub routes: Vec<DebugRoute>,
    /// Endpoints never dialed on 15443 because they are at a passthrough port (matching the
    /// host filter; not limited).
    pub left_out: Vec<DebugLeftOut>,
    /// SNI names of routes and subsets longer than any TLS client sends (matching the host
    /// filter; not limited): unreachable through 15443, reachable over HBONE.
    pub sni_too_long: Vec<DebugTooLong>,
}

#[derive(Debug, Serialize)]
pub struct DebugTooLong {
    pub sni: String,
    pub bytes: usize,
}

#[derive(Debug, Serialize)]
pub struct DebugLeftOut {
    pub sni: String,
    pub endpoint: String,
}

#[derive(Debug, Serialize)]
pub struct DebugRoute {
    pub sni: String,
    pub host: String,
    pub port: u16,
    pub subsets: BTreeMap<String, Labels>,
    pub endpoints: Vec<DebugEndpoint>,
    /// The endpoints an HBONE CONNECT to `host:port` dials (`ip:hbone port`); empty when
    /// the route is not reachable over HBONE.
    pub hbone_endpoints: Vec<DebugEndpoint>,
    /// The waypoint host a tunnel not sent by a waypoint goes to (its classic route at
    /// 15008); `hbone_endpoints` take only tunnels a waypoint sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waypoint: Option<String>,
    /// The canary waypoint that takes `weight` percent of those tunnels.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary: Option<DebugCanary>,
    /// The whole route's settings (`""`), in place.
    #[serde(flatten)]
    pub policy: DebugPolicy,
    /// Each subset's where they differ from the whole route's, or where it counts its own
    /// connections against a limit.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub subset_policies: BTreeMap<String, DebugPolicy>,
    /// The DestinationRule's idle timeout where it sets one; `--idle-timeout` otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_timeout_ms: Option<u64>,
    /// The DestinationRule's `maxConnectionDuration`, where it sets one: none otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connection_duration_ms: Option<u64>,
}

/// A route's or a subset's zone preference and DestinationRule settings.
#[derive(Debug, Serialize)]
pub struct DebugPolicy {
    /// The gateway's zone, when the service prefers close endpoints or its DestinationRule
    /// turns on locality failover: those in it are dialed first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prefer_zone: Option<String>,
    /// The zone is preferred by the rule's locality failover (a share spills as the zone's
    /// healthy share falls), not by the service's `trafficDistribution`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub locality_failover: bool,
    /// The DestinationRule's connect timeout where it sets one; `--connect-timeout`
    /// otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
    /// The DestinationRule's outlier detection where it sets one; the `--outlier-*` flags
    /// otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<DebugOutlier>,
    /// The DestinationRule's `maxConnections` where it sets one, and the connections
    /// counted against it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_connections: Option<u32>,
    /// The DestinationRule's `tcpKeepalive` where it sets one (unset fields: the gateway's
    /// 60 s, 10 s and the kernel's count).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_keepalive: Option<DebugKeepalive>,
    /// The DestinationRule's balancer where it sets one (`LEAST_REQUEST`, `ROUND_ROBIN`,
    /// `RANDOM`, `SOURCE_IP_HASH`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<&'static str>,
    /// The DestinationRule's slow start for endpoints that have just become ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warmup: Option<DebugWarmup>,
}

#[derive(Debug, Serialize)]
pub struct DebugWarmup {
    pub duration_ms: u64,
    pub minimum_percent: f64,
    pub aggression: f64,
}

/// `subset`'s (`""`: the whole route's) [`DebugPolicy`].
fn policy(r: &Route, subset: &str) -> DebugPolicy {
    let settings = r.settings(subset);
    let zone = r.preferred_zone(subset);
    DebugPolicy {
        prefer_zone: zone.map(|(z, _)| z.to_owned()),
        locality_failover: zone.is_some_and(|(_, spill)| spill),
        connect_timeout_ms: (settings.and_then(|c| c.connect_timeout()))
            .map(|d| d.as_millis() as u64),
        outlier_detection: (settings.and_then(|c| c.outlier.as_ref())).map(|o| DebugOutlier {
            consecutive_failures: o.consecutive_failures,
            base_ejection_ms: o.base_ejection.as_millis() as u64,
            max_ejection_ms: o.max_ejection.as_millis() as u64,
            max_ejection_percent: o.max_ejection_percent,
            min_health_percent: o.min_health_percent,
        }),
        max_connections: settings.and_then(|c| c.max_connections()),
        open_connections: r.open_connections(subset),
        tcp_keepalive: (settings.and_then(|c| c.keepalive())).map(|k| DebugKeepalive {
            time_s: k.time.map(|d| d.as_secs()),
            interval_s: k.interval.map(|d| d.as_secs()),
            probes: k.probes,
        }),
        load_balancer: (settings.and_then(|c| c.lb)).map(Lb::as_str),
        warmup: (settings.and_then(|c| c.warmup)).map(|w| DebugWarmup {
            duration_ms: w.window().as_millis() as u64,
            minimum_percent: w.min_percent(),
            aggression: w.aggression(),
        }),
    }
}

#[derive(Debug, Serialize)]
pub struct DebugKeepalive {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_s: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub probes: Option<u32>,
}

#[derive(Debug, Serialize)]
pub struct DebugOutlier {
    pub consecutive_failures: u32,
    pub base_ejection_ms: u64,
    pub max_ejection_ms: u64,
    pub max_ejection_percent: u8,
    pub min_health_percent: u8,
}

#[derive(Debug, Serialize)]
pub struct DebugCanary {
    pub host: String,
    pub weight: u8,
}

/// A classic endpoint is not an Istio mTLS workload: it has no Pod (or none seen yet), or its
/// Pod lacks `security.istio.io/tlsMode: istio`.
pub const MTLS_OFF_NO_LABEL: &str = "no Pod labelled security.istio.io/tlsMode: istio";
/// A PeerAuthentication disables mTLS on the endpoint's port.
pub const MTLS_OFF_BY_POLICY: &str = "a PeerAuthentication disables mTLS on its port";
/// The route's DestinationRule sets a TLS mode other than ISTIO_MUTUAL for the port.
pub const MTLS_OFF_BY_RULE: &str =
    "the DestinationRule's TLS mode for this port is not ISTIO_MUTUAL";

#[derive(Debug, Serialize)]
pub struct DebugEndpoint {
    pub address: String,
    pub ready: bool,
    /// Whether a classic endpoint takes 15443 connections for the whole route: the
    /// DestinationRule's TLS mode for the port when it sets one, else the endpoint's own
    /// [`crate::routes::Endpoint::mtls`]; absent on HBONE endpoints.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtls: Option<bool>,
    /// Why `mtls` is false: [`MTLS_OFF_NO_LABEL`], [`MTLS_OFF_BY_POLICY`] or
    /// [`MTLS_OFF_BY_RULE`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtls_off: Option<&'static str>,
    pub labels: Labels,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The load-balancing weight, shown when it is not 1.
    #[serde(skip_serializing_if = "is_one")]
    pub weight: u32,
    /// How long it has been ready, as a DestinationRule's warmup counts; absent while not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ready_for_ms: Option<u64>,
    pub active_connections: usize,
    pub consecutive_failures: u32,
    pub ejected: bool,
    pub ejected_for_ms: u64,
}

fn is_one(w: &u32) -> bool {
    *w == 1
}

/// Parses the `/debug/routes` query: `host=` (a substring of the host, any case) and
/// `limit=N`, each at most once.
pub(super) fn debug_filter(query: Option<&str>) -> Result<DebugFilter, String> {
    let mut filter = DebugFilter::default();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "host" if filter.host.is_none() => {
                let ok = !value.is_empty()
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
                if !ok {
                    return Err(format!(
                        "host={value:?}: give part of a host name (letters, digits, '.', '-')"
                    ));
                }
                filter.host = Some(value.to_ascii_lowercase());
            }
            "limit" if filter.limit.is_none() => {
                let n = value.parse().map_err(|_| {
                    format!("limit={value:?}: give the number of routes to show, e.g. limit=10")
                })?;
                filter.limit = Some(n);
            }
            "host" | "limit" => return Err(format!("{key}= given twice; give it once")),
            _ => {
                return Err(format!(
                    "unknown parameter {key:?}; /debug/routes takes host= and limit="
                ));
            }
        }
    }
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{EndpointSpec, Routes, ServiceSpec};
    use crate::sni_name;

    #[test]
    fn names_parse_back_and_the_filter_applies() {
        let spec = |host: &str| ServiceSpec {
            host: host.into(),
            ports: vec![80, 9080],
            subsets: Default::default(),
            waypoint: None,
            canary: None,
            endpoints: vec![EndpointSpec {
                address: "10.0.0.1".parse().unwrap(),
                ports: [(80, 8080)].into(),
                labels: Default::default(),
                ready: true,
                hbone_port: None,
                zone: None,
                mtls: true,
                mtls_disabled: Vec::new(),
                weight: 1,
            }],
            prefer_close: false,
            tls: Default::default(),
            conn: Default::default(),
        };
        let t = Routes::new().publish(&[spec("b.local"), spec("a.local")]);
        let v = view(&t, &DebugFilter::default());
        let names: Vec<&str> = v.routes.iter().map(|r| r.sni.as_str()).collect();
        assert_eq!(
            names,
            [
                "outbound_.80_._.a.local",
                "outbound_.9080_._.a.local",
                "outbound_.80_._.b.local",
                "outbound_.9080_._.b.local"
            ]
        );
        for r in &v.routes {
            let name = sni_name::parse(&r.sni).unwrap();
            assert_eq!((name.port, name.host.as_str()), (r.port, r.host.as_str()));
        }
        assert_eq!(v.routes[0].endpoints[0].address, "10.0.0.1:8080");
        let filter = debug_filter(Some("host=B.&limit=1")).unwrap();
        let v = view(&t, &filter);
        let shown: Vec<&str> = v.routes.iter().map(|r| r.sni.as_str()).collect();
        assert_eq!(shown, ["outbound_.80_._.b.local"]);
        assert_eq!(
            (v.total_routes, v.matched_routes, v.truncated),
            (4, 2, true)
        );
        assert!(debug_filter(Some("limit=x")).is_err());
        // A route whose classic endpoints were all left out (at 15443) is still shown with
        // its HBONE endpoints, and no classic ones.
        let mut gw = spec("gw.local");
        gw.ports = vec![15443];
        gw.endpoints[0].ports = [(15443, 15443)].into();
        gw.endpoints[0].hbone_port = Some(15008);
        let t = Routes::new().publish(&[gw, spec("a.local")]);
        let v = view(&t, &debug_filter(Some("host=gw")).unwrap());
        assert_eq!((v.total_routes, v.matched_routes), (3, 1));
        let r = &v.routes[0];
        assert_eq!(r.sni, "outbound_.15443_._.gw.local");
        assert!(r.endpoints.is_empty());
        assert_eq!(r.hbone_endpoints[0].address, "10.0.0.1:15008");
        assert_eq!(v.left_out[0].endpoint, "10.0.0.1:15443");
        assert!(debug_filter(Some("host=a&host=b")).is_err());
    }
}
