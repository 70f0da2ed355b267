//! The connection settings of a DestinationRule that istiod applies to the SNI-DNAT clusters
//! of its passthrough gateway (`buildOutboundSniDnatClusters` in
//! `pilot/pkg/networking/core/cluster.go`, then `applyTrafficPolicy`, which leaves out TLS
//! there): `connectionPool.tcp` (`connectTimeout`, `maxConnections`, `tcpKeepalive`),
//! `outlierDetection` and `loadBalancer`, per port and subset, and the top-level
//! `connectionPool.tcp.idleTimeout` and `maxConnectionDuration`, which its TCP proxies take
//! (`buildOutboundNetworkFiltersWithSingleDestination`). Sans-IO: parsed from the rule's
//! JSON, resolved per `(port, subset)` at publish.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::outlier::Outlier;
use crate::warmup::{self, Warmup};

/// One `trafficPolicy`'s (or one `portLevelSettings` entry's) settings the gateway applies.
/// Each is a group istiod replaces whole when a subset sets it (`mergeTrafficPolicy`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ConnSettings {
    /// `connectionPool`, when the policy has one.
    pub pool: Option<Pool>,
    /// `outlierDetection` as Envoy reads what istiod writes; `None` without one.
    pub outlier: Option<Outlier>,
    /// `loadBalancer`, when the policy has one.
    pub lb: Option<Lb>,
    /// Its `localityLbSetting.enabled: false`: no locality failover, which istiod otherwise
    /// applies wherever the policy has `outlierDetection` (the mesh's default setting is on).
    pub locality_off: bool,
    /// Its `warmup` (or `warmupDurationSecs`), where the balancer is one Envoy slows new
    /// endpoints in for (round robin, least request).
    pub warmup: Option<Warmup>,
}

/// A `connectionPool`'s TCP settings the gateway applies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Pool {
    /// `connectTimeout`; `None` where unset (the gateway's `--connect-timeout` then, where
    /// istiod writes the mesh's default).
    pub connect_timeout: Option<Duration>,
    /// `maxConnections`: Envoy's circuit breaker on the cluster's upstream connections
    /// (`applyConnectionPool`; unset or 0 is istiod's `math.MaxUint32`, no limit).
    pub max_connections: Option<u32>,
    /// `tcpKeepalive`, for the upstream sockets (`applyTCPKeepalive`).
    pub keepalive: Option<Keepalive>,
}

/// `tcpKeepalive` as istiod writes it for Envoy: each field in whole seconds, set on the
/// upstream socket only where given (Envoy's `buildTcpKeepaliveOptions`), with keepalive on
/// either way. The gateway's own values (60 s, 10 s, the kernel's count) stand for unset
/// ones where Envoy leaves the kernel's (7,200 s, 75 s, 9).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Keepalive {
    pub time: Option<Duration>,
    pub interval: Option<Duration>,
    pub probes: Option<u32>,
}

/// `loadBalancer` as Envoy balances what istiod writes (`applyLoadBalancer`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Lb {
    /// `LEAST_REQUEST`, `LEAST_CONN`, `UNSPECIFIED`, or a `loadBalancer` without `simple` or
    /// `consistentHash` (istiod's default): the gateway's pick, by weight where weights
    /// differ.
    #[default]
    LeastRequest,
    /// `ROUND_ROBIN`: in turn, by weight where weights differ.
    RoundRobin,
    /// `RANDOM`: uniformly, weights ignored (Envoy's random balancer ignores them).
    Random,
    /// `consistentHash.useSourceIp`: the client's address picks the endpoint, so it keeps
    /// the same one while the endpoints do (Envoy's ring hash with the TCP proxy's
    /// `hash_policy.source_ip`; weights count).
    SourceIpHash,
}

impl Lb {
    /// Its name in `/debug/routes`: Istio's `simple` value, or `SOURCE_IP_HASH`.
    pub fn as_str(self) -> &'static str {
        match self {
            Lb::LeastRequest => "LEAST_REQUEST",
            Lb::RoundRobin => "ROUND_ROBIN",
            Lb::Random => "RANDOM",
            Lb::SourceIpHash => "SOURCE_IP_HASH",
        }
    }
}

impl ConnSettings {
    pub fn connect_timeout(&self) -> Option<Duration> {
        self.pool.as_ref()?.connect_timeout
    }

    pub fn max_connections(&self) -> Option<u32> {
        self.pool.as_ref()?.max_connections
    }

    pub fn keepalive(&self) -> Option<&Keepalive> {
        self.pool.as_ref()?.keepalive.as_ref()
    }

    /// Whether Envoy would prefer the gateway's locality for this cluster: locality failover
    /// is on (the mesh's default) and the policy has `outlierDetection`, without which
    /// istiod applies none (`applyLocalityFailover`).
    pub fn prefers_locality(&self) -> bool {
        self.outlier.is_some() && !self.locality_off
    }
}

/// Envoy's idle timeout of 0: none. A century stands for it, so the timer arithmetic stays
/// plain (tokio caps a sleep that long at its wheel's reach and sleeps again).
pub const NO_IDLE_TIMEOUT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A `trafficPolicy`: its own settings, its `portLevelSettings` by port number, and its
/// `connectionPool.tcp.idleTimeout` (`0s` is [`NO_IDLE_TIMEOUT`]) and
/// `maxConnectionDuration` (`0s` or unset: none).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PolicyConn {
    pub base: ConnSettings,
    pub ports: BTreeMap<u16, ConnSettings>,
    pub idle_timeout: Option<Duration>,
    pub max_duration: Option<Duration>,
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
        let own = &own.base;
        // `localityLbSetting` is part of the `loadBalancer` group.
        let balancer = if own.lb.is_some() { own } else { rule };
        ConnSettings {
            pool: own.pool.clone().or_else(|| rule.pool.clone()),
            outlier: own.outlier.clone().or_else(|| rule.outlier.clone()),
            lb: balancer.lb,
            locality_off: balancer.locality_off,
            warmup: balancer.warmup,
        }
    }

    /// The idle timeout of every port and subset of the host: the rule's top-level one, the
    /// only one istiod gives the TCP proxy (`buildOutboundNetworkFiltersWithSingleDestination`).
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.service.idle_timeout
    }

    /// The longest a connection to any port and subset of the host lasts: the rule's
    /// top-level `maxConnectionDuration`, the only one istiod gives the TCP proxy
    /// (`MaxDownstreamConnectionDuration`), which closes both sides when it passes.
    pub fn max_duration(&self) -> Option<Duration> {
        self.service.max_duration
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
    let max_duration = tcp_duration(p, "maxConnectionDuration").filter(|d| !d.is_zero());
    PolicyConn {
        base: settings(p),
        ports,
        idle_timeout,
        max_duration,
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
    let outlier = p
        .get("outlierDetection")
        .filter(|o| o.is_object())
        .map(outlier);
    let balancer = p.get("loadBalancer").filter(|l| l.is_object());
    let locality = balancer.and_then(|l| l.get("localityLbSetting"));
    let read = balancer.map(|l| (l, lb(l)));
    ConnSettings {
        pool: p
            .get("connectionPool")
            .filter(|c| c.is_object())
            .map(|_| pool(p)),
        outlier,
        lb: read.map(|(_, lb)| lb),
        locality_off: locality.and_then(|l| l.get("enabled")) == Some(&Value::Bool(false)),
        warmup: read.and_then(|(l, lb)| warmup(l, lb)),
    }
}

/// Whether a `loadBalancer` (whose [`lb`] is `balancer`) has Envoy's slow start: round
/// robin and least request do; `RANDOM`, the hashes and `PASSTHROUGH` (an original
/// destination cluster) do not.
fn slow_starts(l: &Value, balancer: Lb) -> bool {
    let passthrough = l.get("simple").and_then(Value::as_str) == Some("PASSTHROUGH");
    !passthrough && matches!(balancer, Lb::RoundRobin | Lb::LeastRequest)
}

/// [`slow_starts`] for a `loadBalancer` object read on its own (the endpoints file's check).
pub fn has_slow_start(l: &Value) -> bool {
    slow_starts(l, lb(l))
}

/// A `loadBalancer`'s slow start as istiod writes it (`applyRoundRobinLoadBalancer`,
/// `applyLeastRequestLoadBalancer`): `warmup` over `warmupDurationSecs`, Envoy's and Istio's
/// defaults for the floor (10 %) and aggression (1); only for round robin and least request
/// (the default), as `RANDOM` and the hashes have no slow start. `None` without a window of
/// at least 1 ms. `balancer`: the object's [`lb`].
fn warmup(l: &Value, balancer: Lb) -> Option<Warmup> {
    if !slow_starts(l, balancer) {
        return None;
    }
    let window = |v: &Value| v.as_str().and_then(go_duration);
    if let Some(w) = l.get("warmup").filter(|w| w.is_object()) {
        let number =
            |key: &str, default: f64| w.get(key).and_then(Value::as_f64).unwrap_or(default);
        return Warmup::new(
            window(w.get("duration")?)?,
            number("minimumPercent", warmup::MIN_PERCENT),
            number("aggression", 1.0),
        );
    }
    Warmup::new(
        window(l.get("warmupDurationSecs")?)?,
        warmup::MIN_PERCENT,
        1.0,
    )
}

fn pool(p: &Value) -> Pool {
    let tcp = (p.get("connectionPool")).and_then(|c| c.get("tcp"));
    let keepalive = tcp
        .and_then(|t| t.get("tcpKeepalive"))
        .filter(|k| k.is_object());
    // Whole seconds, as istiod writes them; under a second would be 0, which the kernel
    // refuses, so such a field is left unset.
    let secs = |k: &Value, key: &str| {
        let d = k.get(key).and_then(Value::as_str).and_then(go_duration)?;
        Some(Duration::from_secs(d.as_secs().min(u64::from(u32::MAX)))).filter(|d| !d.is_zero())
    };
    let count = |v: Option<&Value>| {
        v.and_then(Value::as_u64)
            .filter(|&n| n > 0)
            .map(|n| n.min(u64::from(u32::MAX)) as u32)
    };
    Pool {
        connect_timeout: tcp_duration(p, "connectTimeout")
            .filter(|d| *d >= Duration::from_millis(1)),
        max_connections: count(tcp.and_then(|t| t.get("maxConnections"))),
        keepalive: keepalive.map(|k| Keepalive {
            time: secs(k, "time"),
            interval: secs(k, "interval"),
            probes: count(k.get("probes")),
        }),
    }
}

/// A `loadBalancer` object. `PASSTHROUGH` (Envoy's original destination, which behind a
/// passthrough gateway names the gateway itself) is read as the default; a consistent hash
/// on anything but the source address hashes nothing over TCP, where Envoy's ring then
/// picks at random.
fn lb(l: &Value) -> Lb {
    if let Some(hash) = l.get("consistentHash").filter(|h| h.is_object()) {
        return match hash.get("useSourceIp") {
            Some(Value::Bool(true)) => Lb::SourceIpHash,
            _ => Lb::Random,
        };
    }
    match l.get("simple").and_then(Value::as_str) {
        Some("ROUND_ROBIN") => Lb::RoundRobin,
        Some("RANDOM") => Lb::Random,
        _ => Lb::LeastRequest,
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

    /// The pool's limit, keepalive and lifetime, and the balancer, as istiod writes them;
    /// a subset that sets only `loadBalancer` keeps the rule's pool (groups replace whole).
    #[test]
    fn pool_limits_keepalive_lifetime_and_balancer_are_read_as_istiod_writes_them() {
        let p = policy_conn(Some(&json!({
            "connectionPool": {"tcp": {"maxConnections": 100, "maxConnectionDuration": "1h",
                "tcpKeepalive": {"time": "90s", "interval": "1500ms", "probes": 0}}},
            "loadBalancer": {"simple": "ROUND_ROBIN"}})));
        let pool = p.base.pool.clone().unwrap();
        assert_eq!(pool.max_connections, Some(100));
        assert_eq!(pool.connect_timeout, None);
        let k = pool.keepalive.unwrap();
        assert_eq!(k.time, Some(Duration::from_secs(90)));
        assert_eq!(k.interval, Some(Duration::from_secs(1)), "whole seconds");
        assert_eq!(k.probes, None, "0 probes is unset");
        assert_eq!(p.max_duration, Some(Duration::from_secs(3600)));
        assert_eq!(p.base.lb, Some(Lb::RoundRobin));
        // Under a second is 0 s, which the kernel refuses: unset. 0 connections: no limit.
        let odd = policy_conn(Some(
            &json!({"connectionPool": {"tcp": {"maxConnections": 0,
            "maxConnectionDuration": "0s", "tcpKeepalive": {"time": "500ms"}}}}),
        ));
        assert_eq!(odd.base.max_connections(), None);
        assert_eq!(odd.base.keepalive().unwrap().time, None);
        assert_eq!(odd.max_duration, None);
        let lb = |l: Value| policy_conn(Some(&json!({"loadBalancer": l}))).base.lb;
        assert_eq!(lb(json!({"simple": "RANDOM"})), Some(Lb::Random));
        assert_eq!(lb(json!({"simple": "LEAST_CONN"})), Some(Lb::LeastRequest));
        assert_eq!(lb(json!({"simple": "PASSTHROUGH"})), Some(Lb::LeastRequest));
        assert_eq!(lb(json!({"localityLbSetting": {}})), Some(Lb::LeastRequest));
        let hash = |h: Value| lb(json!({"consistentHash": h}));
        assert_eq!(hash(json!({"useSourceIp": true})), Some(Lb::SourceIpHash));
        assert_eq!(hash(json!({"httpHeaderName": "x-user"})), Some(Lb::Random));
        assert_eq!(policy_conn(Some(&json!({}))).base.lb, None);
        // A subset with only a balancer keeps the rule's pool; one with a pool, its own.
        let dr = DrConn {
            service: p,
            subsets: BTreeMap::from([
                (
                    "v1".into(),
                    policy_conn(Some(&json!({"loadBalancer": {"simple": "RANDOM"}}))),
                ),
                (
                    "v2".into(),
                    policy_conn(Some(&json!({"connectionPool": {"http": {}}}))),
                ),
            ]),
        };
        let v1 = dr.for_route(80, "v1");
        assert_eq!(v1.lb, Some(Lb::Random));
        assert_eq!(v1.max_connections(), Some(100));
        let v2 = dr.for_route(80, "v2");
        assert_eq!(v2.lb, Some(Lb::RoundRobin));
        assert_eq!(v2.max_connections(), None, "its pool has no tcp settings");
        assert_eq!(dr.max_duration(), Some(Duration::from_secs(3600)));
    }

    /// `warmup` over `warmupDurationSecs`, with Istio's defaults; none where the balancer
    /// has no slow start; a subset's balancer brings its own (or none).
    #[test]
    fn warmup_is_read_as_istiod_writes_slow_start() {
        let warm = |l: Value| policy_conn(Some(&json!({"loadBalancer": l}))).base.warmup;
        let old = warm(json!({"warmupDurationSecs": "30s"})).unwrap();
        assert_eq!(old.window(), Duration::from_secs(30));
        assert_eq!((old.min_percent(), old.aggression()), (10.0, 1.0));
        let new = warm(json!({"simple": "ROUND_ROBIN", "warmupDurationSecs": "30s",
            "warmup": {"duration": "1m", "minimumPercent": 25.5, "aggression": 2}}))
        .unwrap();
        assert_eq!(new.window(), Duration::from_secs(60), "warmup wins");
        assert_eq!((new.min_percent(), new.aggression()), (25.5, 2.0));
        let bare = warm(json!({"simple": "LEAST_REQUEST", "warmup": {"duration": "10s"}}));
        assert_eq!(bare.unwrap().min_percent(), 10.0);
        for l in [
            json!({"simple": "RANDOM", "warmupDurationSecs": "30s"}),
            json!({"simple": "PASSTHROUGH", "warmupDurationSecs": "30s"}),
            json!({"consistentHash": {"useSourceIp": true}, "warmupDurationSecs": "30s"}),
            json!({"warmup": {"minimumPercent": 50}}),
            json!({"warmup": {"duration": "500us"}}),
            json!({"warmupDurationSecs": "soon"}),
        ] {
            assert_eq!(warm(l.clone()), None, "{l}");
        }
        let dr = DrConn {
            service: policy_conn(Some(
                &json!({"loadBalancer": {"warmupDurationSecs": "30s"}}),
            )),
            subsets: BTreeMap::from([
                (
                    "v1".into(),
                    policy_conn(Some(&json!({"loadBalancer": {"simple": "ROUND_ROBIN"}}))),
                ),
                (
                    "v2".into(),
                    policy_conn(Some(&json!({"connectionPool": {}}))),
                ),
            ]),
        };
        assert_eq!(
            dr.for_route(80, "v1").warmup,
            None,
            "the subset's balancer, whole"
        );
        assert_eq!(dr.for_route(80, "v2").warmup, Some(old));
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
        assert_eq!(at(80, "").connect_timeout(), secs(5));
        assert_eq!(at(80, "").outlier.unwrap().consecutive_failures, 2);
        // The rule's entry for 9090 replaces both its settings: no outlier detection there.
        assert_eq!(at(9090, "").connect_timeout(), secs(7));
        assert_eq!(at(9090, "").outlier, None);
        // v1 sets its own timeout and keeps the rule's outlier detection...
        assert_eq!(at(80, "v1").connect_timeout(), secs(1));
        assert_eq!(at(80, "v1").outlier.unwrap().consecutive_failures, 2);
        // A subset's `connectionPool` replaces the rule's whole: without a timeout, none.
        let mut pooled = dr.clone();
        pooled.subsets.insert(
            "v3".into(),
            policy_conn(Some(
                &json!({"connectionPool": {"tcp": {"maxConnections": 9}}}),
            )),
        );
        assert_eq!(pooled.for_route(80, "v3").connect_timeout(), None);
        assert_eq!(pooled.for_route(80, "v3").outlier, at(80, "").outlier);
        // ...over the rule's entry for 9090 too, which gives it no outlier detection there.
        assert_eq!(at(9090, "v1").connect_timeout(), secs(1));
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
            assert_eq!(idle.for_route(port, subset).connect_timeout(), None);
        }
        let never = policy_conn(Some(
            &json!({"connectionPool": {"tcp": {"idleTimeout": "0s"}}}),
        ));
        assert_eq!(never.idle_timeout, Some(NO_IDLE_TIMEOUT));
        // Too short a timeout is no timeout (Istio's validation: at least 1 ms).
        let short = policy_conn(Some(
            &json!({"connectionPool": {"tcp": {"connectTimeout": "0"}}}),
        ));
        assert_eq!(short.base.connect_timeout(), None);
    }
}
