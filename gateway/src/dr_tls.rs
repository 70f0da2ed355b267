//! Which endpoints of a classic (15443) route istiod's passthrough gateway would send to
//! (`EndpointsWithMTLSFilter`, `mtlsChecker.checkMtlsEnabled` in
//! `pilot/pkg/xds/endpoints/mtls_checker.go`): when the host's DestinationRule sets a TLS mode
//! for the route's port and subset, it decides for every endpoint (ISTIO_MUTUAL: all of them;
//! any other mode: none); otherwise each endpoint's own mark (its Pod's
//! `security.istio.io/tlsMode: istio`, [`crate::routes::EndpointSpec::mtls`]). Sans-IO.

use std::collections::BTreeMap;

/// The TLS modes a host's DestinationRule sets, each `true` for ISTIO_MUTUAL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct DrTls {
    /// The rule's `trafficPolicy`: it decides the whole route (subset `""`).
    pub service: PolicyTls,
    /// Each subset's own `trafficPolicy` (not the rule's: istiod reads only the subset's).
    pub subsets: BTreeMap<String, PolicyTls>,
}

/// One `trafficPolicy`'s TLS: its `tls.mode`, and `portLevelSettings[].tls.mode` by port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PolicyTls {
    pub mode: Option<bool>,
    pub ports: BTreeMap<u16, bool>,
}

impl PolicyTls {
    /// A port's own setting, else the policy's (`trafficPolicyTLSModeForPort`).
    fn for_port(&self, port: u16) -> Option<bool> {
        self.ports.get(&port).copied().or(self.mode)
    }

    pub fn is_empty(&self) -> bool {
        self.mode.is_none() && self.ports.is_empty()
    }
}

impl DrTls {
    /// Whether the rule makes every endpoint of `(port, subset)` an mTLS one (`Some(true)`),
    /// none (`Some(false)`), or leaves it to each endpoint (`None`).
    pub fn for_route(&self, port: u16, subset: &str) -> Option<bool> {
        if subset.is_empty() {
            self.service.for_port(port)
        } else {
            self.subsets.get(subset)?.for_port(port)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.service.is_empty() && self.subsets.values().all(PolicyTls::is_empty)
    }
}

/// A `trafficPolicy` object's TLS as istiod reads it: a `tls` object without `mode` is
/// DISABLE (the field's zero value); port-level settings without `tls` inherit.
pub fn policy_tls(policy: Option<&serde_json::Value>) -> PolicyTls {
    let Some(p) = policy else {
        return PolicyTls::default();
    };
    let mutual =
        |tls: &serde_json::Value| tls.get("mode").and_then(|m| m.as_str()) == Some("ISTIO_MUTUAL");
    let mode = p.get("tls").filter(|t| t.is_object()).map(mutual);
    let ports = p
        .get("portLevelSettings")
        .and_then(|s| s.as_array())
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let tls = s.get("tls").filter(|t| t.is_object())?;
            let port = s.get("port")?.get("number")?.as_u64()?;
            Some((u16::try_from(port).ok()?, mutual(tls)))
        })
        .collect();
    PolicyTls { mode, ports }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn modes_are_read_as_istiod_reads_them() {
        let p = policy_tls(Some(&json!({"tls": {"mode": "ISTIO_MUTUAL"},
            "portLevelSettings": [{"port": {"number": 8080}, "tls": {"mode": "SIMPLE"}},
                {"port": {"number": 9090}, "loadBalancer": {}}]})));
        assert_eq!(p.for_port(80), Some(true));
        assert_eq!(p.for_port(8080), Some(false));
        assert_eq!(
            p.for_port(9090),
            Some(true),
            "a port-level setting without tls inherits"
        );
        // `tls: {}` is DISABLE; no `tls` leaves it to the endpoints.
        assert_eq!(
            policy_tls(Some(&json!({"tls": {}}))).for_port(80),
            Some(false)
        );
        assert_eq!(
            policy_tls(Some(&json!({"connectionPool": {}}))).for_port(80),
            None
        );
        assert_eq!(policy_tls(None).for_port(80), None);
    }

    #[test]
    fn a_subset_reads_its_own_policy_only() {
        let dr = DrTls {
            service: policy_tls(Some(&json!({"tls": {"mode": "DISABLE"}}))),
            subsets: BTreeMap::from([
                ("v1".into(), PolicyTls::default()),
                (
                    "v2".into(),
                    policy_tls(Some(&json!({"tls": {"mode": "ISTIO_MUTUAL"}}))),
                ),
            ]),
        };
        assert_eq!(dr.for_route(80, ""), Some(false));
        assert_eq!(
            dr.for_route(80, "v1"),
            None,
            "the rule's policy is not the subset's"
        );
        assert_eq!(dr.for_route(80, "v2"), Some(true));
        assert_eq!(dr.for_route(80, "v3"), None);
    }
}
