//! Istio's WorkloadEntries (VMs, bare metal) as endpoints of the Kubernetes Services that
//! select them, as istiod's Kubernetes registry takes them (`WorkloadInstanceHandler`,
//! `serviceInstanceFromWorkloadInstance` in `pilot/pkg/serviceregistry/kube/controller`, with
//! the entry converted by `convertWorkloadEntryToWorkloadInstance` in `serviceentry`). Pure
//! functions of the projected objects; `specs` joins them to Services.
//!
//! Decided here (`gateway/WORKLOAD_ENTRIES.md`): an entry on another network than the
//! cluster's is left out (the gateway dials only its own network; istiod would send it to that
//! network's gateway). A ServiceEntry's inline endpoints are read as entries too
//! ([`workload`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use kube::api::DynamicObject;
use serde_json::Value;

use super::augment::{
    Augment, CLUSTER_LABEL, NETWORK_LABEL, REGION_LABEL, SUBZONE_LABEL, ZONE_LABEL, locality_label,
};
use super::project::{PodLabels, TLS_MODE_LABEL, TargetPort, pod_label};

/// The annotation that makes an entry's `Healthy` condition count (istiod's
/// `status.WorkloadEntryHealthCheckAnnotation`): set by the VM's agent when it health-checks.
pub const HEALTH_CHECKS_ANNOTATION: &str = "proxy.istio.io/health-checks-enabled";

/// What a WorkloadEntry contributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeInfo {
    pub address: IpAddr,
    /// `spec.labels` with `metadata.labels` over them (istiod's `ConvertWorkloadEntry`),
    /// sorted by key.
    pub labels: PodLabels,
    /// `spec.ports`: port name to the entry's port; zero and out-of-range values left out.
    pub ports: Box<[(Box<str>, u16)]>,
    /// `spec.network`; `None` when empty (the cluster's).
    pub network: Option<Box<str>>,
    /// `region`, `zone`, `subzone` of `spec.locality`, else of the locality labels.
    pub locality: [Option<Arc<str>>; 3],
    /// Istio mTLS: the `security.istio.io/tlsMode` label, else `istio` with a service account.
    pub mtls: bool,
    /// `spec.weight`, 1 when unset, zero or not a `uint32` (istiod's `GetLoadBalancingWeight`
    /// reads zero as 1; the CRD's schema refuses the rest).
    pub weight: u32,
}

impl WeInfo {
    /// The entry's port for a Service port, as istiod's `serviceInstanceFromWorkloadInstance`:
    /// a numeric target port is overridden by the entry's port of the Service port's name;
    /// a named one is the entry's port of that name, and without it the entry does not serve
    /// that Service port (`None`).
    pub fn port_for(&self, svc_port_name: Option<&str>, target: &TargetPort) -> Option<u16> {
        match target {
            TargetPort::Number(n) => Some(
                svc_port_name
                    .and_then(|name| self.port_named(name))
                    .unwrap_or(*n),
            ),
            TargetPort::Name(name) => self.port_named(name),
        }
    }

    /// The entry's port of this name (`spec.ports`).
    pub fn port_named(&self, name: &str) -> Option<u16> {
        (self.ports.iter())
            .find(|(n, _)| &**n == name)
            .map(|&(_, p)| p)
    }

    /// The entry's label as istiod matches Service selectors, subsets and PeerAuthentication
    /// selectors against it (`AugmentLabels` with the entry's locality and network, no node):
    /// its own, the locality's parts over them, the cluster's ID, and its network (else the
    /// cluster's) where it names none.
    pub fn label<'a>(&'a self, key: &str, add: &Augment<'a>) -> Option<&'a str> {
        let own = || pod_label(&self.labels, key);
        match key {
            CLUSTER_LABEL => Some(add.cluster),
            REGION_LABEL => self.locality[0].as_deref().or_else(own),
            ZONE_LABEL => self.locality[1].as_deref().or_else(own),
            SUBZONE_LABEL => self.locality[2].as_deref().or_else(own),
            NETWORK_LABEL => own()
                .filter(|n| !n.is_empty())
                .or(self.network.as_deref())
                .or(add.network),
            _ => own(),
        }
    }

    /// Whether a Service selector (sorted pairs, non-empty) selects the entry.
    pub fn selected_by(&self, selector: &[(Box<str>, Box<str>)], add: &Augment<'_>) -> bool {
        !selector.is_empty()
            && selector
                .iter()
                .all(|(k, v)| self.label(k, add) == Some(&**v))
    }
}

/// The entry as the gateway needs it, or `None` for one that is no endpoint of a Kubernetes
/// Service: an address that is not an IP (DNS ServiceEntries only, in istiod), or one whose
/// health checks are on and whose `Healthy` condition is not `True` (istiod's `isHealthy`
/// drops it; a new entry counts as unhealthy until its first probe).
pub fn project_workload_entry(we: &DynamicObject) -> Option<WeInfo> {
    let health_checked = we
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(HEALTH_CHECKS_ANNOTATION))
        .is_some_and(|v| go_parse_bool(v) == Some(true));
    if health_checked && !healthy(we.data.get("status")) {
        return None;
    }
    workload(we.data.get("spec")?, we.metadata.labels.as_ref())
}

/// A WorkloadEntry's spec, or a ServiceEntry's inline endpoint (the same message), with
/// `over` (the entry's metadata labels) over its labels; `None` unless its address is an IP.
pub fn workload(spec: &Value, over: Option<&BTreeMap<String, String>>) -> Option<WeInfo> {
    let address: IpAddr = spec.get("address")?.as_str()?.trim().parse().ok()?;
    let mut merged: BTreeMap<&str, &str> = (spec.get("labels").and_then(Value::as_object))
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
        .collect();
    merged.extend(
        over.into_iter()
            .flatten()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    let labels: PodLabels = (merged.into_iter())
        .map(|(k, v)| (Arc::from(k), Arc::from(v)))
        .collect();
    let ports = spec
        .get("ports")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(name, p)| {
            let p = u16::try_from(p.as_u64()?).ok().filter(|&p| p != 0)?;
            Some((Box::from(name.as_str()), p))
        })
        .collect();
    let str_of = |k: &str| {
        spec.get(k)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    // istiod's `SanitizeLocalityLabel`: the label's parts are separated by dots.
    let locality: Option<String> = str_of("locality")
        .map(str::to_owned)
        .or_else(|| locality_label(&labels).map(|l| l.replace('.', "/")));
    let mut parts = [None, None, None];
    if let Some(l) = locality {
        for (slot, part) in parts.iter_mut().zip(l.split('/')) {
            *slot = (!part.is_empty()).then(|| Arc::from(part));
        }
    }
    let mtls = match pod_label(&labels, TLS_MODE_LABEL) {
        Some(mode) => mode == "istio",
        None => str_of("serviceAccount").is_some(),
    };
    Some(WeInfo {
        address: address.to_canonical(),
        network: str_of("network").map(Box::from),
        labels,
        ports,
        locality: parts,
        mtls,
        weight: (spec.get("weight").and_then(Value::as_u64))
            .and_then(|w| u32::try_from(w).ok())
            .filter(|&w| w != 0)
            .unwrap_or(1),
    })
}

/// Whether `status.conditions` holds `Healthy` with status `True`.
fn healthy(status: Option<&Value>) -> bool {
    status
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Healthy" && c["status"] == "True")
}

/// Go's `strconv.ParseBool`, as istiod reads the health-checks annotation.
fn go_parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(meta: Value, spec: Value, status: Value) -> Option<WeInfo> {
        let mut metadata = json!({"name": "vm", "namespace": "shop"});
        metadata
            .as_object_mut()
            .unwrap()
            .extend(meta.as_object().unwrap().clone());
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
            "metadata": metadata, "spec": spec, "status": status,
        }))
        .unwrap();
        project_workload_entry(&obj)
    }

    const ADD: Augment<'static> = Augment {
        cluster: "c1",
        network: Some("net1"),
    };

    /// Labels merge with metadata's winning; the TLS mode follows the label, else the
    /// service account; the locality's parts and the network augment the labels.
    #[test]
    fn an_entry_is_projected_as_istiod_converts_it() {
        let we = entry(
            json!({"labels": {"version": "v2"}}),
            json!({"address": "10.1.0.7", "labels": {"app": "vm", "version": "v1"},
                "serviceAccount": "vm-sa", "locality": "eu/eu-1/rack-3",
                "ports": {"http": 8080, "zero": 0, "huge": 70000}, "weight": 25}),
            json!({}),
        )
        .unwrap();
        assert_eq!(we.address, "10.1.0.7".parse::<IpAddr>().unwrap());
        assert_eq!(we.label("version", &ADD), Some("v2"));
        assert_eq!(we.label("app", &ADD), Some("vm"));
        assert!(we.mtls);
        assert_eq!(&*we.ports, &[(Box::from("http"), 8080)]);
        assert_eq!(we.label(ZONE_LABEL, &ADD), Some("eu-1"));
        assert_eq!(we.label(SUBZONE_LABEL, &ADD), Some("rack-3"));
        assert_eq!(we.label(CLUSTER_LABEL, &ADD), Some("c1"));
        assert_eq!(we.label(NETWORK_LABEL, &ADD), Some("net1"));
        assert_eq!(we.weight, 25);

        let plain = entry(
            json!({}),
            json!({"address": "10.1.0.8", "labels": {"istio-locality": "us.us-2"},
                "network": "vpc"}),
            json!({}),
        )
        .unwrap();
        assert!(!plain.mtls, "no service account, no label: disabled");
        assert_eq!(plain.weight, 1, "unset");
        for weight in [json!(0), json!(-2), json!(4_294_967_296u64), json!("3")] {
            let spec = json!({"address": "10.1.0.8", "weight": weight});
            assert_eq!(
                entry(json!({}), spec, json!({})).unwrap().weight,
                1,
                "{weight}"
            );
        }
        assert_eq!(plain.label(ZONE_LABEL, &ADD), Some("us-2"));
        assert_eq!(plain.label(NETWORK_LABEL, &ADD), Some("vpc"));
        let labelled = entry(
            json!({}),
            json!({"address": "10.1.0.9", "serviceAccount": "sa",
                "labels": {TLS_MODE_LABEL: "disabled"}}),
            json!({}),
        )
        .unwrap();
        assert!(!labelled.mtls, "the label decides over the service account");
    }

    /// Hostnames are for DNS ServiceEntries; with health checks on, only a `Healthy: True`
    /// entry counts, and without the annotation its condition does not matter.
    #[test]
    fn hostnames_and_unhealthy_entries_are_no_endpoints() {
        let spec = json!({"address": "10.1.0.7"});
        assert!(entry(json!({}), json!({"address": "vm.example.com"}), json!({})).is_none());
        let checked = json!({"annotations": {HEALTH_CHECKS_ANNOTATION: "true"}});
        let ok = json!({"conditions": [{"type": "Healthy", "status": "True"}]});
        let bad = json!({"conditions": [{"type": "Healthy", "status": "False"}]});
        assert!(entry(checked.clone(), spec.clone(), json!({})).is_none());
        assert!(entry(checked.clone(), spec.clone(), bad.clone()).is_none());
        assert!(entry(checked, spec.clone(), ok).is_some());
        assert!(entry(json!({}), spec.clone(), bad.clone()).is_some());
        let not_bool = json!({"annotations": {HEALTH_CHECKS_ANNOTATION: "yes"}});
        assert!(
            entry(not_bool, spec, bad).is_some(),
            "Go's ParseBool refuses `yes`"
        );
    }

    /// istiod's `serviceInstanceFromWorkloadInstance`.
    #[test]
    fn the_port_follows_the_services_target_port() {
        let we = entry(
            json!({}),
            json!({"address": "10.1.0.7", "ports": {"http": 8080, "admin": 9000}}),
            json!({}),
        )
        .unwrap();
        let num = TargetPort::Number(3000);
        assert_eq!(we.port_for(Some("http"), &num), Some(8080));
        assert_eq!(we.port_for(Some("grpc"), &num), Some(3000));
        assert_eq!(we.port_for(None, &num), Some(3000));
        assert_eq!(
            we.port_for(Some("x"), &TargetPort::Name("admin".into())),
            Some(9000)
        );
        assert_eq!(
            we.port_for(Some("x"), &TargetPort::Name("web".into())),
            None
        );
    }

    #[test]
    fn a_selector_must_be_non_empty_and_contained() {
        let we = entry(
            json!({}),
            json!({"address": "10.1.0.7", "labels": {"app": "vm", "tier": "db"}}),
            json!({}),
        )
        .unwrap();
        let sel = |pairs: &[(&str, &str)]| -> Vec<(Box<str>, Box<str>)> {
            pairs.iter().map(|&(k, v)| (k.into(), v.into())).collect()
        };
        assert!(we.selected_by(&sel(&[("app", "vm")]), &ADD));
        assert!(!we.selected_by(&sel(&[("app", "vm"), ("x", "y")]), &ADD));
        assert!(!we.selected_by(&sel(&[]), &ADD));
        assert!(we.selected_by(&sel(&[(CLUSTER_LABEL, "c1"), ("app", "vm")]), &ADD));
    }
}
