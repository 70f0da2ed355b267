//! An endpoints file's `traffic_policy`: the part of a DestinationRule's `trafficPolicy` the
//! gateway applies (`dr_conn`), written as in the rule (camelCase keys, Go durations), for a
//! service and for each of its subsets. Strict where the rule's reading is lenient: a field
//! the gateway does not apply, or a value it cannot read, is refused with its place, as a
//! file is written for this gateway alone.

use serde::{Deserialize, Serialize};

use crate::dr_conn::{self, PolicyConn};

/// A `trafficPolicy`, or one `portLevelSettings` entry without its port.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FilePolicy {
    #[serde(skip_serializing_if = "Option::is_none")]
    connection_pool: Option<FilePool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outlier_detection: Option<FileOutlier>,
    #[serde(skip_serializing_if = "Option::is_none")]
    load_balancer: Option<FileLb>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    port_level_settings: Vec<FilePortPolicy>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FilePortPolicy {
    port: FilePortNumber,
    #[serde(skip_serializing_if = "Option::is_none")]
    connection_pool: Option<FilePool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outlier_detection: Option<FileOutlier>,
    #[serde(skip_serializing_if = "Option::is_none")]
    load_balancer: Option<FileLb>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FilePortNumber {
    number: u16,
}

/// `connectionPool`: only `tcp` (a passthrough gateway has no HTTP to pool).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FilePool {
    #[serde(skip_serializing_if = "Option::is_none")]
    tcp: Option<FileTcp>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileTcp {
    #[serde(skip_serializing_if = "Option::is_none")]
    connect_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connections: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tcp_keepalive: Option<FileKeepalive>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_connection_duration: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileKeepalive {
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    probes: Option<u32>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileOutlier {
    #[serde(
        rename = "consecutive5xxErrors",
        skip_serializing_if = "Option::is_none"
    )]
    consecutive_5xx_errors: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    consecutive_gateway_errors: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    consecutive_local_origin_failures: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    split_external_local_origin_errors: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    base_ejection_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_ejection_percent: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    min_health_percent: Option<u32>,
    /// Accepted as in a rule, and not needed: connect failures eject at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileLb {
    #[serde(skip_serializing_if = "Option::is_none")]
    simple: Option<String>,
    /// Only `useSourceIp`: a header, cookie or query parameter hashes nothing over TCP.
    #[serde(skip_serializing_if = "Option::is_none")]
    consistent_hash: Option<FileHash>,
    /// Only `enabled`.
    #[serde(skip_serializing_if = "Option::is_none")]
    locality_lb_setting: Option<FileLocality>,
    /// The older form of `warmup`: only the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    warmup_duration_secs: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warmup: Option<FileWarmup>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileWarmup {
    duration: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    minimum_percent: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aggression: Option<f64>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileHash {
    use_source_ip: bool,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileLocality {
    enabled: bool,
}

/// The balancers a file may name (`PASSTHROUGH` would name the gateway itself).
const SIMPLE: &[&str] = &[
    "LEAST_REQUEST",
    "LEAST_CONN",
    "ROUND_ROBIN",
    "RANDOM",
    "UNSPECIFIED",
];

impl FilePolicy {
    /// Checks the values and reads the policy as a rule's (`dr_conn::policy_conn`). `at`
    /// names its place for errors; `subset`: a subset's, where the two per-service
    /// timeouts do not apply.
    pub fn read(&self, at: &str, subset: bool) -> Result<PolicyConn, String> {
        self.check(at, subset)?;
        let json = serde_json::to_value(self).map_err(|e| format!("{at}: {e}"))?;
        Ok(dr_conn::policy_conn(Some(&json)))
    }

    /// `subset`: the per-service timeouts are refused here too, as on every port entry.
    fn check(&self, at: &str, subset: bool) -> Result<(), String> {
        check_parts(
            at,
            self.connection_pool.as_ref(),
            self.outlier_detection.as_ref(),
            self.load_balancer.as_ref(),
            subset,
        )?;
        let mut ports = std::collections::BTreeSet::new();
        for (i, p) in self.port_level_settings.iter().enumerate() {
            let at = format!("{at}.portLevelSettings[{i}]");
            if p.port.number == 0 || !ports.insert(p.port.number) {
                return Err(format!(
                    "{at}: port.number {} is 0 or listed twice",
                    p.port.number
                ));
            }
            let parts = (&p.connection_pool, &p.outlier_detection, &p.load_balancer);
            check_parts(
                &at,
                parts.0.as_ref(),
                parts.1.as_ref(),
                parts.2.as_ref(),
                true,
            )?;
        }
        Ok(())
    }
}

fn check_parts(
    at: &str,
    pool: Option<&FilePool>,
    outlier: Option<&FileOutlier>,
    lb: Option<&FileLb>,
    not_top: bool,
) -> Result<(), String> {
    if let Some(tcp) = pool.and_then(|p| p.tcp.as_ref()) {
        let at = format!("{at}.connectionPool.tcp");
        duration(&at, "connectTimeout", tcp.connect_timeout.as_deref())?;
        duration(&at, "idleTimeout", tcp.idle_timeout.as_deref())?;
        duration(
            &at,
            "maxConnectionDuration",
            tcp.max_connection_duration.as_deref(),
        )?;
        if not_top && (tcp.idle_timeout.is_some() || tcp.max_connection_duration.is_some()) {
            return Err(format!(
                "{at}: idleTimeout and maxConnectionDuration apply to the whole service, as \
                 istiod reads only a DestinationRule's top-level ones: move them to the \
                 service's traffic_policy"
            ));
        }
        if tcp.max_connections == Some(0) {
            return Err(format!(
                "{at}.maxConnections: 0 is no limit in a rule; leave it out for none"
            ));
        }
        if let Some(k) = &tcp.tcp_keepalive {
            let at = format!("{at}.tcpKeepalive");
            for (key, value) in [("time", &k.time), ("interval", &k.interval)] {
                let d = duration(&at, key, value.as_deref())?;
                if d.is_some_and(|d| d.as_secs() == 0) {
                    return Err(format!("{at}.{key}: at least 1s (set in whole seconds)"));
                }
            }
        }
    }
    if let Some(o) = outlier {
        let at = format!("{at}.outlierDetection");
        duration(&at, "baseEjectionTime", o.base_ejection_time.as_deref())?;
        duration(&at, "interval", o.interval.as_deref())?;
        for (key, value) in [
            ("maxEjectionPercent", o.max_ejection_percent),
            ("minHealthPercent", o.min_health_percent),
        ] {
            if value.is_some_and(|v| v > 100) {
                return Err(format!("{at}.{key}: a percentage, 0 to 100"));
            }
        }
    }
    if let Some(simple) = lb.and_then(|l| l.simple.as_deref()) {
        if !SIMPLE.contains(&simple) {
            return Err(format!(
                "{at}.loadBalancer.simple: {} is not one of {} (PASSTHROUGH would dial the \
                 gateway itself)",
                super::format::excerpt(simple),
                SIMPLE.join(", ")
            ));
        }
        if lb.is_some_and(|l| l.consistent_hash.is_some()) {
            return Err(format!(
                "{at}.loadBalancer: simple and consistentHash are exclusive, as in a rule"
            ));
        }
    }
    if let Some(l) = lb {
        check_warmup(&format!("{at}.loadBalancer"), l)?;
    }
    Ok(())
}

/// A balancer's warmup, as Istio's validation checks a rule's (a window of at least 1 ms,
/// `minimumPercent` 0 to 100, `aggression` at least 1), and only where Envoy has a slow
/// start (round robin, least request).
fn check_warmup(at: &str, l: &FileLb) -> Result<(), String> {
    let window = match (&l.warmup, &l.warmup_duration_secs) {
        (None, None) => return Ok(()),
        (Some(_), Some(_)) => {
            return Err(format!(
                "{at}: warmup and warmupDurationSecs both set; keep warmup (the older field \
                 is its duration alone)"
            ));
        }
        (Some(w), None) => ("warmup.duration", w.duration.as_str()),
        (None, Some(d)) => ("warmupDurationSecs", d.as_str()),
    };
    let d = duration(at, window.0, Some(window.1))?;
    if d.is_some_and(|d| d < std::time::Duration::from_millis(1)) {
        return Err(format!("{at}.{}: at least 1ms", window.0));
    }
    if let Some(w) = &l.warmup {
        if w.minimum_percent
            .is_some_and(|p| !(0.0..=100.0).contains(&p))
        {
            return Err(format!(
                "{at}.warmup.minimumPercent: a percentage, 0 to 100"
            ));
        }
        if w.aggression.is_some_and(|a| !(a >= 1.0 && a.is_finite())) {
            return Err(format!(
                "{at}.warmup.aggression: at least 1 (1 is linear; more sends more sooner)"
            ));
        }
    }
    // The balancer as a rule's is read: the same rule decides for both.
    let json = serde_json::to_value(l).map_err(|e| format!("{at}: {e}"))?;
    if !dr_conn::has_slow_start(&json) {
        return Err(format!(
            "{at}: a warmup applies to ROUND_ROBIN and LEAST_REQUEST (the default) only, as \
             Envoy's slow start does; drop it or the other balancer"
        ));
    }
    Ok(())
}

/// A Go duration (`300ms`, `5s`, `1m30s`), as a rule's are read; `None` when left out.
fn duration(
    at: &str,
    key: &str,
    value: Option<&str>,
) -> Result<Option<std::time::Duration>, String> {
    let Some(v) = value else { return Ok(None) };
    dr_conn::go_duration(v).map(Some).ok_or_else(|| {
        format!(
            "{at}.{key}: {} is not a duration (Go's form: 300ms, 5s, 1m30s)",
            super::format::excerpt(v)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn read(yaml: &str, subset: bool) -> Result<PolicyConn, String> {
        let p: FilePolicy = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        p.read("services[0].traffic_policy", subset)
    }

    #[test]
    fn a_policy_reads_as_the_same_rule_would() {
        let yaml = concat!(
            "connectionPool: {tcp: {connectTimeout: 2s, maxConnections: 50, idleTimeout: 1h,\n",
            "  maxConnectionDuration: 24h, tcpKeepalive: {time: 300s, probes: 3}}}\n",
            "outlierDetection: {consecutive5xxErrors: 2, baseEjectionTime: 1m, maxEjectionPercent: 50}\n",
            "loadBalancer: {simple: ROUND_ROBIN}\n",
            "portLevelSettings: [{port: {number: 9090}, loadBalancer: {consistentHash: {useSourceIp: true}}}]\n",
        );
        let p = read(yaml, false).unwrap();
        assert_eq!(p.base.connect_timeout(), Some(Duration::from_secs(2)));
        assert_eq!(p.base.max_connections(), Some(50));
        assert_eq!(p.base.keepalive().unwrap().probes, Some(3));
        assert_eq!(p.idle_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(p.max_duration, Some(Duration::from_secs(86_400)));
        assert_eq!(p.base.outlier.as_ref().unwrap().consecutive_failures, 2);
        assert_eq!(p.base.lb, Some(dr_conn::Lb::RoundRobin));
        assert_eq!(p.ports[&9090].lb, Some(dr_conn::Lb::SourceIpHash));
        let warm = |yaml: &str| read(yaml, true).unwrap().base.warmup.unwrap();
        let w = warm("loadBalancer: {warmup: {duration: 45s, minimumPercent: 5, aggression: 1.5}}");
        assert_eq!(w.window(), Duration::from_secs(45));
        assert_eq!((w.min_percent(), w.aggression()), (5.0, 1.5));
        let w = warm("loadBalancer: {simple: ROUND_ROBIN, warmupDurationSecs: 2m}");
        assert_eq!(
            (w.window(), w.min_percent()),
            (Duration::from_secs(120), 10.0)
        );
    }

    #[test]
    fn what_it_cannot_apply_or_read_is_refused_by_its_place() {
        for (yaml, subset, says) in [
            ("connectionPool: {http: {}}", false, "unknown field `http`"),
            ("tls: {mode: DISABLE}", false, "unknown field `tls`"),
            (
                "connectionPool: {tcp: {connectTimeout: 5 s}}",
                false,
                "connectionPool.tcp.connectTimeout: \"5 s\" is not a duration",
            ),
            (
                "connectionPool: {tcp: {maxConnections: 0}}",
                false,
                "maxConnections: 0 is no limit",
            ),
            (
                "connectionPool: {tcp: {maxConnections: -1}}",
                false,
                "expected u32",
            ),
            (
                "connectionPool: {tcp: {tcpKeepalive: {time: 500ms}}}",
                false,
                "tcpKeepalive.time: at least 1s",
            ),
            (
                "connectionPool: {tcp: {idleTimeout: 1m}}",
                true,
                "apply to the whole service",
            ),
            (
                "portLevelSettings: [{port: {number: 80}, connectionPool: {tcp: {maxConnectionDuration: 1m}}}]",
                false,
                "portLevelSettings[0].connectionPool.tcp: idleTimeout",
            ),
            (
                "portLevelSettings: [{port: {number: 80}}, {port: {number: 80}}]",
                false,
                "listed twice",
            ),
            (
                "outlierDetection: {maxEjectionPercent: 101}",
                false,
                "a percentage",
            ),
            (
                "loadBalancer: {simple: PASSTHROUGH}",
                false,
                "would dial the gateway itself",
            ),
            (
                "loadBalancer: {consistentHash: {httpHeaderName: x}}",
                false,
                "unknown field `httpHeaderName`",
            ),
            (
                "loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}",
                false,
                "exclusive",
            ),
            (
                "loadBalancer: {warmup: {minimumPercent: 20}}",
                false,
                "missing field `duration`",
            ),
            (
                "loadBalancer: {warmup: {duration: 500us}}",
                false,
                "loadBalancer.warmup.duration: at least 1ms",
            ),
            (
                "loadBalancer: {warmupDurationSecs: soon}",
                false,
                "loadBalancer.warmupDurationSecs: \"soon\" is not a duration",
            ),
            (
                "loadBalancer: {warmup: {duration: 1m, minimumPercent: 150}}",
                false,
                "minimumPercent: a percentage",
            ),
            (
                "loadBalancer: {warmup: {duration: 1m, aggression: 0.5}}",
                false,
                "aggression: at least 1",
            ),
            (
                "loadBalancer: {warmup: {duration: 1m}, warmupDurationSecs: 1m}",
                false,
                "both set",
            ),
            (
                "loadBalancer: {simple: RANDOM, warmupDurationSecs: 1m}",
                false,
                "ROUND_ROBIN and LEAST_REQUEST (the default) only",
            ),
            (
                "loadBalancer: {consistentHash: {useSourceIp: true}, warmup: {duration: 1m}}",
                false,
                "ROUND_ROBIN and LEAST_REQUEST (the default) only",
            ),
        ] {
            let err = read(yaml, subset).unwrap_err();
            assert!(err.contains(says), "{yaml}: {err}");
        }
        // The same timeouts are fine at the top of a service's policy.
        assert!(read("connectionPool: {tcp: {idleTimeout: 1m}}", false).is_ok());
    }
}
