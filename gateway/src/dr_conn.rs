//! The connection settings of a DestinationRule that istiod applies to the SNI-DNAT clusters
//! of its passthrough gateway (`buildOutboundSniDnatClusters` in
//! `pilot/pkg/networking/core/cluster.go`, then `applyTrafficPolicy`, which leaves out TLS
//! there): `connectionPool.tcp.connectTimeout` and `outlierDetection`, per port and subset,
//! and the top-level `connectionPool.tcp.idleTimeout`, which its TCP proxies take
//! (`buildOutboundNetworkFiltersWithSingleDestination`). Sans-IO: parsed from the rule's
//! JSON, resolved per `(port, subset)` at publish.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::outlier::Outlier;

/// One `trafficPolicy`'s (or one `portLevelSettings` entry's) settings the gateway applies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ConnSettings {
    /// `connectionPool.tcp.connectTimeout`; `None` also when `connectionPool` is set without
    /// it (the gateway's `--connect-timeout` then, where istiod writes the mesh's default).
    pub connect_timeout: Option<Duration>,
    /// The policy has a `connectionPool`: a subset's replaces the rule's whole, so the rule's
    /// `connectTimeout` does not reach a subset that sets a pool without one.
    pub pool: bool,
    /// `outlierDetection` as Envoy reads what istiod writes; `None` without one.
    pub outlier: Option<Outlier>,
}

/// Envoy's idle timeout of 0: none. A century stands for it, so the timer arithmetic stays
/// plain (tokio caps a sleep that long at its wheel's reach and sleeps again).
pub const NO_IDLE_TIMEOUT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A `trafficPolicy`: its own settings, its `portLevelSettings` by port number, and its
/// `connectionPool.tcp.idleTimeout` (`0s` is [`NO_IDLE_TIMEOUT`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PolicyConn {
    pub base: ConnSettings,
    pub ports: BTreeMap<u16, ConnSettings>,
    pub idle_timeout: Option<Duration>,
}

/// A host's merged DestinationRule: the rule's `trafficPolicy`, and each subset's own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct DrConn {
    pub service: PolicyConn,
    pub subsets: BTreeMap<String, PolicyConn>,
}

impl PolicyConn {
    /// istiod's `GetPortLevelTrafficPolicy`: an entry for the port replaces the policy's
    /// settings whole, unset fields included (they do not inherit).
    fn at(&self, port: u16) -> &ConnSettings {
        self.ports.get(&port).unwrap_or(&self.base)
    }
}

impl DrConn {
    /// The settings of the cluster for `(port, subset)` (`""`: the whole service), as
    /// istiod's `MergeSubsetTrafficPolicy` builds a subset's policy: the subset's port-level
    /// entry for the port replaces everything; else each field the subset's policy sets
    /// replaces the rule's (for the port); else the rule's.
    pub fn for_route(&self, port: u16, subset: &str) -> ConnSettings {
        let rule = self.service.at(port);
        let Some(own) = self.subsets.get(subset).filter(|_| !subset.is_empty()) else {
            return rule.clone();
        };
        if let Some(entry) = own.ports.get(&port) {
            return entry.clone();
        }
        ConnSettings {
            connect_timeout: match own.base.pool {
                true => own.base.connect_timeout,
                false => rule.connect_timeout,
            },
            pool: own.base.pool || rule.pool,
            outlier: own.base.outlier.clone().or_else(|| rule.outlier.clone()),
        }
    }

    /// The idle timeout of every port and subset of the host: the rule's top-level one, the
    /// only one istiod gives the TCP proxy (`buildOutboundNetworkFiltersWithSingleDestination`).
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.service.idle_timeout
    }

    pub fn is_empty(&self) -> bool {
        *self == DrConn::default()
    }
}

/// A `trafficPolicy` object as istiod reads its connection settings.
pub fn policy_conn(policy: Option<&Value>) -> PolicyConn {
    let Some(p) = policy else {
        return PolicyConn::default();
    };
    let ports = (p.get("portLevelSettings").and_then(Value::as_array))
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let port = s.get("port")?.get("number")?.as_u64()?;
            Some((u16::try_from(port).ok()?, settings(s)))
        })
        .collect();
    let idle_timeout = tcp_duration(p, "idleTimeout").map(|d| match d {
        Duration::ZERO => NO_IDLE_TIMEOUT,
        d => d.min(NO_IDLE_TIMEOUT),
    });
    PolicyConn {
        base: settings(p),
        ports,
        idle_timeout,
    }
}

/// `connectionPool.tcp.<key>` of a policy, as a duration.
fn tcp_duration(p: &Value, key: &str) -> Option<Duration> {
    (p.get("connectionPool"))
        .and_then(|c| c.get("tcp"))
        .and_then(|t| t.get(key))
        .and_then(Value::as_str)
        .and_then(go_duration)
}

fn settings(p: &Value) -> ConnSettings {
    let connect_timeout =
        tcp_duration(p, "connectTimeout").filter(|d| *d >= Duration::from_millis(1));
    let outlier = p
        .get("outlierDetection")
        .filter(|o| o.is_object())
        .map(outlier);
    ConnSettings {
        connect_timeout,
        pool: p.get("connectionPool").is_some_and(Value::is_object),
        outlier,
    }
}

/// Envoy's defaults where istiod writes nothing (`outlier_detection_impl.h`).
const ENVOY_CONSECUTIVE: u32 = 5;
const ENVOY_BASE_EJECTION: Duration = Duration::from_secs(30);
const ENVOY_MAX_EJECTION: Duration = Duration::from_secs(300);
const ENVOY_MAX_EJECTION_PERCENT: u8 = 10;

/// An `outlierDetection` as Envoy's TCP proxy applies what istiod writes
/// (`applyOutlierDetection`). A failed or timed-out connect is a local-origin failure: with
/// `splitExternalLocalOriginErrors` only `consecutiveLocalOriginFailures` counts it (default
/// 5); without, Envoy reads it as a 503 or 504, so both `consecutive5xxErrors` (default 5, 0
/// turns it off) and `consecutiveGatewayErrors` (off unless above 0) count it, and the lower
/// enabled one ejects. Ejections last `baseEjectionTime` (30 s) times the ejections in a row,
/// up to 300 s or the base; `maxEjectionPercent` (10) bounds a service's ejected share with
/// no host ejected past it (`DetectorImpl::ejectHost`); `minHealthPercent` (0, off) is the
/// healthy share under which ejections are ignored (istiod's `healthy_panic_threshold`).
fn outlier(o: &Value) -> Outlier {
    let count = |k: &str| {
        o.get(k)
            .and_then(Value::as_u64)
            .map(|v| v.min(u64::from(u32::MAX)) as u32)
    };
    let consecutive_failures =
        if o.get("splitExternalLocalOriginErrors") == Some(&Value::Bool(true)) {
            count("consecutiveLocalOriginFailures")
                .filter(|&v| v > 0)
                .unwrap_or(ENVOY_CONSECUTIVE)
        } else {
            let five = count("consecutive5xxErrors").unwrap_or(ENVOY_CONSECUTIVE);
            let gateway = count("consecutiveGatewayErrors").unwrap_or(0);
            [five, gateway]
                .into_iter()
                .filter(|&v| v > 0)
                .min()
                .unwrap_or(0)
        };
    let base_ejection = (o.get("baseEjectionTime").and_then(Value::as_str))
        .and_then(go_duration)
        .filter(|d| *d >= Duration::from_millis(1))
        .unwrap_or(ENVOY_BASE_EJECTION);
    let max_ejection_percent = count("maxEjectionPercent")
        .filter(|&v| v > 0)
        .map_or(ENVOY_MAX_EJECTION_PERCENT, |v| v.min(100) as u8);
    Outlier {
        consecutive_failures,
        base_ejection,
        max_ejection: ENVOY_MAX_EJECTION.max(base_ejection),
        max_ejection_percent,
        eject_one_regardless: false,
        min_health_percent: count("minHealthPercent").map_or(0, |v| v.min(100) as u8),
    }
}

/// A duration as Istio reads the rule's (Go's `time.ParseDuration`, which its JSON decoding
/// of `google.protobuf.Duration` uses): decimal numbers with a unit each, `ns`, `us`, `µs`,
/// `ms`, `s`, `m` or `h` (`1m30s`, `1.5s`, `300ms`), or `0`. `None` for anything else, a
/// negative one, or one past `u64` nanoseconds.
pub fn go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s.is_empty() {
        return None;
    }
    let mut rest = s;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(digits);
        let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() && frac.is_empty() || frac.contains('.') {
            return None;
        }
        let unit_len = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_len);
        let nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().ok()?
        };
        let mut part = whole.checked_mul(nanos)?;
        // The fraction's digits, as far as they reach a nanosecond.
        let mut scale = nanos;
        for d in frac.bytes().take(20) {
            scale /= 10;
            part += u128::from(d - b'0') * scale;
        }
        total = total.checked_add(part)?;
        rest = next;
    }
    let nanos = u64::try_from(total).ok()?;
    Some(Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn go_durations() {
        for (s, want) in [
            ("0", Some(Duration::ZERO)),
            ("30s", Some(Duration::from_secs(30))),
            ("1m30s", Some(Duration::from_secs(90))),
            ("1.5s", Some(Duration::from_millis(1500))),
            (".5s", Some(Duration::from_millis(500))),
            ("300ms", Some(Duration::from_millis(300))),
            ("2h", Some(Duration::from_secs(7200))),
            ("10us", Some(Duration::from_micros(10))),
            ("10µs", Some(Duration::from_micros(10))),
            ("+5s", Some(Duration::from_secs(5))),
            ("1", None),
            ("", None),
            ("s", None),
            ("-5s", None),
            ("5 s", None),
            ("5sec", None),
            ("1.2.3s", None),
            ("99999999999999h", None),
        ] {
            assert_eq!(go_duration(s), want, "{s:?}");
        }
    }

    #[test]
    fn outlier_detection_is_read_as_envoy_applies_what_istiod_writes() {
        let read = |o: Value| {
            policy_conn(Some(&json!({"outlierDetection": o})))
                .base
                .outlier
        };
        let empty = read(json!({})).unwrap();
        assert_eq!(
            empty,
            Outlier {
                consecutive_failures: 5,
                base_ejection: Duration::from_secs(30),
                max_ejection: Duration::from_secs(300),
                max_ejection_percent: 10,
                eject_one_regardless: false,
                min_health_percent: 0,
            }
        );
        let set = read(
            json!({"consecutive5xxErrors": 7, "consecutiveGatewayErrors": 3,
            "baseEjectionTime": "10m", "maxEjectionPercent": 100}),
        )
        .unwrap();
        assert_eq!(
            set.consecutive_failures, 3,
            "the lower enabled count ejects"
        );
        assert_eq!(set.base_ejection, Duration::from_secs(600));
        assert_eq!(
            set.max_ejection,
            Duration::from_secs(600),
            "at least the base"
        );
        assert_eq!(set.max_ejection_percent, 100);
        let panic = read(json!({"minHealthPercent": 50})).unwrap();
        assert_eq!(panic.min_health_percent, 50);
        let off = read(json!({"consecutive5xxErrors": 0})).unwrap();
        assert_eq!(
            off.consecutive_failures, 0,
            "5xx off, gateway errors unset: none"
        );
        let split = read(json!({"splitExternalLocalOriginErrors": true,
            "consecutive5xxErrors": 2, "consecutiveLocalOriginFailures": 4}))
        .unwrap();
        assert_eq!(
            split.consecutive_failures, 4,
            "connect failures are local-origin"
        );
        let bad = read(json!({"baseEjectionTime": "soon", "maxEjectionPercent": 250})).unwrap();
        assert_eq!(bad.base_ejection, Duration::from_secs(30));
        assert_eq!(bad.max_ejection_percent, 100);
        assert_eq!(read(json!(null)), None);
    }

    /// A subset's port-level entry replaces everything; a subset's field replaces the rule's
    /// for the port; the rule's port-level entry replaces its own settings whole.
    #[test]
    fn settings_merge_as_istiod_merges_a_subsets_policy() {
        let secs = |s| Some(Duration::from_secs(s));
        let dr = DrConn {
            service: policy_conn(Some(&json!({
            "connectionPool": {"tcp": {"connectTimeout": "5s"}},
            "outlierDetection": {"consecutive5xxErrors": 2},
            "portLevelSettings": [
                {"port": {"number": 9090}, "connectionPool": {"tcp": {"connectTimeout": "7s"}}}
            ]}))),
            subsets: BTreeMap::from([
                (
                    "v1".into(),
                    policy_conn(Some(&json!({
                        "connectionPool": {"tcp": {"connectTimeout": "1s"}},
                        "portLevelSettings": [{"port": {"number": 8080}}]}))),
                ),
                ("v2".into(), PolicyConn::default()),
            ]),
        };
        let at = |port, subset| dr.for_route(port, subset);
        assert_eq!(at(80, "").connect_timeout, secs(5));
        assert_eq!(at(80, "").outlier.unwrap().consecutive_failures, 2);
        // The rule's entry for 9090 replaces both its settings: no outlier detection there.
        assert_eq!(at(9090, "").connect_timeout, secs(7));
        assert_eq!(at(9090, "").outlier, None);
        // v1 sets its own timeout and keeps the rule's outlier detection...
        assert_eq!(at(80, "v1").connect_timeout, secs(1));
        assert_eq!(at(80, "v1").outlier.unwrap().consecutive_failures, 2);
        // A subset's `connectionPool` replaces the rule's whole: without a timeout, none.
        let mut pooled = dr.clone();
        pooled.subsets.insert(
            "v3".into(),
            policy_conn(Some(
                &json!({"connectionPool": {"tcp": {"maxConnections": 9}}}),
            )),
        );
        assert_eq!(pooled.for_route(80, "v3").connect_timeout, None);
        assert_eq!(pooled.for_route(80, "v3").outlier, at(80, "").outlier);
        // ...over the rule's entry for 9090 too, which gives it no outlier detection there.
        assert_eq!(at(9090, "v1").connect_timeout, secs(1));
        assert_eq!(at(9090, "v1").outlier, None);
        // Its own empty entry for 8080 replaces everything.
        assert_eq!(at(8080, "v1"), ConnSettings::default());
        // A subset without a policy, or an unknown one: the rule's.
        assert_eq!(at(80, "v2"), at(80, ""));
        assert_eq!(at(80, "v9"), at(80, ""));
        // The idle timeout is the rule's top-level one on every port and subset.
        let idle = DrConn {
            service: policy_conn(Some(&json!({
                "connectionPool": {"tcp": {"idleTimeout": "24h"}},
                "portLevelSettings": [{"port": {"number": 9090},
                    "connectionPool": {"tcp": {"idleTimeout": "1s"}}}]}))),
            subsets: BTreeMap::from([(
                "v1".into(),
                policy_conn(Some(
                    &json!({"connectionPool": {"tcp": {"idleTimeout": "2s"}}}),
                )),
            )]),
        };
        // The port-level and subset settings above set other ones, which count nowhere.
        assert_eq!(idle.idle_timeout(), secs(86_400));
        for (port, subset) in [(80, ""), (9090, ""), (80, "v1"), (9090, "v1")] {
            assert_eq!(idle.for_route(port, subset).connect_timeout, None);
        }
        let never = policy_conn(Some(
            &json!({"connectionPool": {"tcp": {"idleTimeout": "0s"}}}),
        ));
        assert_eq!(never.idle_timeout, Some(NO_IDLE_TIMEOUT));
        // Too short a timeout is no timeout (Istio's validation: at least 1 ms).
        let short = policy_conn(Some(
            &json!({"connectionPool": {"tcp": {"connectTimeout": "0"}}}),
        ));
        assert_eq!(short.base.connect_timeout, None);
    }
}
