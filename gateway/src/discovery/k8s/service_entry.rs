//! Istio's ServiceEntries, as far as an east-west gateway serves them: a `MESH_INTERNAL`
//! entry with `STATIC` or `NONE` resolution is a service per host, in its namespace, whose
//! endpoints are the WorkloadEntries its `workloadSelector` selects, else its inline
//! `endpoints` (`convertServices`, `convertServiceEntryToInstances` and
//! `convertWorkloadInstanceToInstances` in istiod's `serviceentry/conversion.go`). Pure
//! functions of the projected objects; `entry_routes` builds the routes.
//!
//! Not served, by decision (`gateway/WORKLOAD_ENTRIES.md`): `MESH_EXTERNAL` entries (istiod
//! builds no SNI cluster for them on a gateway) and DNS resolution (the gateway would resolve
//! names it dials) are kept, as they can own a host (`entry_routes`) and the log names the
//! latter; wildcard hosts and Pods a selector names (the gateway watches Pods' metadata only,
//! without their addresses) are left out.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::DynamicObject;
use serde_json::Value;

use super::project::{Selector, TRAFFIC_DISTRIBUTION_ANNOTATION, prefers_close};
use super::workload_entry::{WeInfo, workload};

/// What a ServiceEntry contributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeInfo {
    /// `spec.hosts`, lower-cased; wildcards left out.
    pub hosts: Box<[Box<str>]>,
    pub ports: Box<[SePort]>,
    /// `spec.endpoints` with an IP address.
    pub endpoints: Box<[WeInfo]>,
    /// `spec.workloadSelector.labels`; selects WorkloadEntries in the entry's namespace.
    pub selector: Option<Selector>,
    /// `spec.exportTo`; `None` when empty (every namespace).
    pub export_to: Option<Box<[Box<str>]>>,
    /// `creationTimestamp`: of two entries for one host, the oldest serves it.
    pub created: Option<Time>,
    /// Istio's `networking.istio.io/traffic-distribution` annotation asks for the gateway's
    /// zone first (`convertServices` reads it, as for a Service).
    pub prefer_close: bool,
    pub resolution: Resolution,
    /// `location: MESH_EXTERNAL` (the default): kept, as such an entry can still own a host.
    pub external: bool,
}

/// `spec.resolution`, as far as the gateway tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// `NONE` (the default).
    None,
    Static,
    /// `DNS`, `DNS_ROUND_ROBIN`, `DYNAMIC_DNS`: the gateway does not resolve names it dials.
    Dns,
}

impl SeInfo {
    /// Whether the gateway serves the entry's hosts (when it owns them): mesh-internal, and
    /// not resolved by DNS.
    pub fn served(&self) -> bool {
        !self.external && self.resolution != Resolution::Dns
    }
}

/// A ServiceEntry port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SePort {
    pub number: u16,
    pub name: Box<str>,
    /// `targetPort`, when set and not zero.
    pub target: Option<u16>,
}

impl SePort {
    /// The port dialed on `w` for this port (`convertWorkloadInstanceToInstances`): the
    /// workload's port of this port's name, else the target port, else the number.
    pub fn on(&self, w: &WeInfo) -> u16 {
        (w.port_named(&self.name))
            .or(self.target)
            .unwrap_or(self.number)
    }
}

/// The entry as the gateway reads it, or `None` for one it cannot (no host it could route, no
/// port, or a location or resolution istiod would refuse). Entries it does not serve
/// ([`SeInfo::served`]) are kept: they still own their hosts, and their endpoints still join
/// another entry's of their namespace and host.
pub fn project_service_entry(se: &DynamicObject) -> Option<SeInfo> {
    let spec = se.data.get("spec")?;
    let str_of = |k: &str| spec.get(k).and_then(Value::as_str).unwrap_or_default();
    let resolution = match str_of("resolution") {
        "" | "NONE" => Resolution::None,
        "STATIC" => Resolution::Static,
        "DNS" | "DNS_ROUND_ROBIN" | "DYNAMIC_DNS" => Resolution::Dns,
        _ => return None,
    };
    let external = match str_of("location") {
        "" | "MESH_EXTERNAL" => true,
        "MESH_INTERNAL" => false,
        _ => return None,
    };
    let hosts: Box<[Box<str>]> = spec
        .get("hosts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|h| !h.contains('*'))
        .map(|h| Box::from(h.to_ascii_lowercase()))
        .collect();
    let ports: Box<[SePort]> = spec
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|p| {
            !p["protocol"]
                .as_str()
                .is_some_and(|p| p.eq_ignore_ascii_case("UDP"))
        })
        .filter_map(|p| {
            let number = u16::try_from(p.get("number")?.as_u64()?)
                .ok()
                .filter(|&n| n != 0)?;
            let target = p
                .get("targetPort")
                .and_then(Value::as_u64)
                .and_then(|t| u16::try_from(t).ok())
                .filter(|&t| t != 0);
            let name = p.get("name").and_then(Value::as_str).unwrap_or_default();
            Some(SePort {
                number,
                name: name.into(),
                target,
            })
        })
        .collect();
    if hosts.is_empty() || ports.is_empty() {
        return None;
    }
    let endpoints = spec
        .get("endpoints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| workload(e, None))
        .collect();
    let selector = spec
        .get("workloadSelector")
        .and_then(|s| s.get("labels"))
        .and_then(Value::as_object)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut pairs: Vec<(Box<str>, Box<str>)> = l
                .iter()
                .filter_map(|(k, v)| Some((Box::from(k.as_str()), Box::from(v.as_str()?))))
                .collect();
            pairs.sort();
            pairs.into()
        });
    let annotation = (se.metadata.annotations.as_ref())
        .and_then(|a| a.get(TRAFFIC_DISTRIBUTION_ANNOTATION))
        .map(String::as_str);
    let export_to = spec
        .get("exportTo")
        .and_then(Value::as_array)
        .filter(|e| !e.is_empty())
        .map(|e| {
            // A set, as istiod compares it (`canMergeServices`).
            let mut to: Vec<Box<str>> = e.iter().filter_map(Value::as_str).map(Box::from).collect();
            to.sort_unstable();
            to.dedup();
            to.into()
        });
    Some(SeInfo {
        hosts,
        ports,
        endpoints,
        selector,
        export_to,
        created: se.metadata.creation_timestamp.clone(),
        prefer_close: prefers_close(None, annotation),
        resolution,
        external,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(spec: Value) -> Option<SeInfo> {
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": "db", "namespace": "shop"}, "spec": spec,
        }))
        .unwrap();
        project_service_entry(&obj)
    }

    fn internal(extra: Value) -> Value {
        let mut spec = json!({"hosts": ["DB.mesh.local", "*.wild.local"],
            "location": "MESH_INTERNAL", "resolution": "STATIC",
            "ports": [{"number": 5432, "name": "pg", "protocol": "TCP"},
                      {"number": 53, "name": "dns", "protocol": "UDP"}]});
        spec.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        spec
    }

    /// Mesh-internal entries with static or no resolution are served; external (the default
    /// location) and DNS-resolved ones are kept but not served; wildcard hosts and UDP ports
    /// are left out, and an entry left with no host or no port, or with a location or
    /// resolution istiod refuses, is none.
    #[test]
    fn what_a_gateway_serves_and_what_it_keeps() {
        let se = entry(internal(json!({}))).unwrap();
        assert_eq!(&*se.hosts, &[Box::from("db.mesh.local")]);
        assert_eq!(se.ports.len(), 1);
        assert!(se.served());
        let external = entry(internal(json!({"location": "MESH_EXTERNAL"}))).unwrap();
        assert!(external.external && !external.served());
        let mut default = internal(json!({}));
        default.as_object_mut().unwrap().remove("location");
        assert!(
            !entry(default).unwrap().served(),
            "MESH_EXTERNAL is the default"
        );
        let dns = entry(internal(json!({"resolution": "DNS"}))).unwrap();
        assert!(dns.resolution == Resolution::Dns && !dns.served());
        assert!(entry(internal(json!({"resolution": "SOMETHING"}))).is_none());
        assert!(entry(internal(json!({"location": "ELSEWHERE"}))).is_none());
        let none = entry(internal(json!({"resolution": "NONE"}))).unwrap();
        assert!(none.resolution == Resolution::None && none.served());
        assert!(entry(internal(json!({"hosts": ["*.local"]}))).is_none());
    }

    /// Inline endpoints are workloads: an IP, its own ports; the port dialed is the
    /// endpoint's port of the port's name, else the target port, else the number.
    #[test]
    fn inline_endpoints_and_their_ports() {
        let se = entry(internal(json!({
            "ports": [{"number": 5432, "name": "pg", "targetPort": 6432},
                      {"number": 9000, "name": "admin"}],
            "endpoints": [{"address": "10.2.0.1", "ports": {"pg": 7000}, "serviceAccount": "db"},
                          {"address": "db-1.example.com"},
                          {"address": "10.2.0.2"}],
            "workloadSelector": {"labels": {"app": "db"}}})))
        .unwrap();
        assert_eq!(se.endpoints.len(), 2, "a hostname is no static endpoint");
        let (a, b) = (&se.endpoints[0], &se.endpoints[1]);
        assert!(a.mtls && !b.mtls);
        assert_eq!(se.ports[0].on(a), 7000);
        assert_eq!(se.ports[0].on(b), 6432);
        assert_eq!(se.ports[1].on(a), 9000);
        assert_eq!(
            se.selector.as_deref(),
            Some(&[(Box::from("app"), Box::from("db"))][..])
        );
    }
}
