//! Istio's ServiceEntries, as far as an east-west gateway serves them: a `MESH_INTERNAL`
//! entry with `STATIC` or `NONE` resolution is a service per host, in its namespace, whose
//! endpoints are its inline `endpoints` or the WorkloadEntries its `workloadSelector` selects
//! (`convertServices`, `convertServiceEntryToInstances` and
//! `convertWorkloadInstanceToInstances` in istiod's `serviceentry/conversion.go`). Pure
//! functions of the projected objects; `specs` builds the routes.
//!
//! Left out, by decision (`gateway/WORKLOAD_ENTRIES.md`): `MESH_EXTERNAL` entries (istiod
//! builds no SNI cluster for them on a gateway), DNS resolution (the gateway would resolve
//! names it dials; such entries are kept, unrouted, for the log), wildcard hosts, and Pods a selector names (the gateway watches Pods'
//! metadata only, without their addresses).

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
    /// Resolved by DNS (`DNS`, `DNS_ROUND_ROBIN`, `DYNAMIC_DNS`): kept only so the log can
    /// say why its hosts get no route.
    pub by_dns: bool,
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
        w.ports
            .iter()
            .find(|(n, _)| **n == *self.name)
            .map(|&(_, p)| p)
            .or(self.target)
            .unwrap_or(self.number)
    }
}

/// The entry as the gateway serves it, or `None` for one it does not (see the module).
pub fn project_service_entry(se: &DynamicObject) -> Option<SeInfo> {
    let spec = se.data.get("spec")?;
    let str_of = |k: &str| spec.get(k).and_then(Value::as_str).unwrap_or_default();
    if str_of("location") != "MESH_INTERNAL" {
        return None;
    }
    let by_dns = match str_of("resolution") {
        "" | "NONE" | "STATIC" => false,
        "DNS" | "DNS_ROUND_ROBIN" | "DYNAMIC_DNS" => true,
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
        .map(|e| e.iter().filter_map(Value::as_str).map(Box::from).collect());
    Some(SeInfo {
        hosts,
        ports,
        endpoints,
        selector,
        export_to,
        created: se.metadata.creation_timestamp.clone(),
        prefer_close: prefers_close(None, annotation),
        by_dns,
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

    /// Only mesh-internal entries with static or no resolution; wildcard hosts and UDP ports
    /// are left out, and an entry left with no host or no port is none.
    #[test]
    fn only_what_a_gateway_serves_is_kept() {
        let se = entry(internal(json!({}))).unwrap();
        assert_eq!(&*se.hosts, &[Box::from("db.mesh.local")]);
        assert_eq!(se.ports.len(), 1);
        assert!(entry(internal(json!({"location": "MESH_EXTERNAL"}))).is_none());
        let mut external = internal(json!({}));
        external.as_object_mut().unwrap().remove("location");
        assert!(entry(external).is_none(), "MESH_EXTERNAL is the default");
        assert!(
            entry(internal(json!({"resolution": "DNS"})))
                .unwrap()
                .by_dns
        );
        assert!(entry(internal(json!({"resolution": "SOMETHING"}))).is_none());
        assert!(entry(internal(json!({"resolution": "NONE"}))).is_some());
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
