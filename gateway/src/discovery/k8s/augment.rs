//! The labels istiod adds to every endpoint's before matching DestinationRule subsets and
//! PeerAuthentication selectors against them (`AugmentLabels` in
//! `pilot/pkg/serviceregistry/util/label`, as `NewEndpointBuilder` calls it). Pure functions.

use super::project::{PodLabels, SliceEndpoint, pod_label};

/// What istiod adds to every endpoint's labels that is not the endpoint's own.
pub struct Augment<'a> {
    /// `--cluster-id`.
    pub cluster: &'a str,
    /// The root namespace's `topology.istio.io/network` (istiod reads its own namespace's,
    /// the same one in a default install).
    pub network: Option<&'a str>,
}

/// An endpoint's label as istiod matches subsets and PeerAuthentication selectors against it
/// (`AugmentLabels` in `pilot/pkg/serviceregistry/util/label`): its Pod's, with the cluster's
/// ID, its node, its locality (the Pod's `topology.istio.io/locality` or `istio-locality`
/// label when it has one, else its Node's: of those only the zone is known here, from the
/// slice) and, when the Pod names none, the network of the cluster (Istio's documented
/// per-cluster subsets select on `topology.istio.io/cluster`). An endpoint without a Pod gets
/// only the cluster and the network. A Node's region and subzone are not read.
pub fn endpoint_label<'a>(
    key: &str,
    pod: Option<&'a PodLabels>,
    e: &'a SliceEndpoint,
    add: &Augment<'a>,
) -> Option<&'a str> {
    // Without a Pod istiod adds no locality and no node (`NewEndpointBuilder(c, nil)`).
    let Some(pod) = pod else {
        return match key {
            CLUSTER_LABEL => Some(add.cluster),
            NETWORK_LABEL => add.network,
            _ => None,
        };
    };
    let own = || pod_label(pod, key);
    // An empty one falls back to the Node's locality (`getPodLocality`).
    let locality = locality_label(pod);
    // `region.zone.subzone`; an empty part adds nothing.
    let part = |i: usize| {
        locality
            .and_then(|l| l.split('.').nth(i))
            .filter(|p| !p.is_empty())
    };
    match key {
        CLUSTER_LABEL => Some(add.cluster),
        REGION_LABEL => part(0).or_else(own),
        ZONE_LABEL if locality.is_some() => part(1).or_else(own),
        ZONE_LABEL => e.zone.as_deref().or_else(own),
        SUBZONE_LABEL => part(2).or_else(own),
        HOSTNAME_LABEL => e.node.as_deref().or_else(own),
        NETWORK_LABEL => own().filter(|n| !n.is_empty()).or(add.network),
        _ => own(),
    }
}

/// The locality a workload's labels give, `region.zone.subzone` (a label cannot hold `/`):
/// istiod's `GetLocalityLabel`, the new label when present (even empty), else the old; `None`
/// when empty.
pub fn locality_label(labels: &PodLabels) -> Option<&str> {
    pod_label(labels, TOPOLOGY_LOCALITY_LABEL)
        .or_else(|| pod_label(labels, LOCALITY_LABEL))
        .filter(|l| !l.is_empty())
}

pub const CLUSTER_LABEL: &str = "topology.istio.io/cluster";
pub const NETWORK_LABEL: &str = "topology.istio.io/network";
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";
const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// A Pod's own locality, `region.zone.subzone`, over its Node's (istiod's `getPodLocality`);
/// Istio 1.29's name for it, read first, then the older one.
const TOPOLOGY_LOCALITY_LABEL: &str = "topology.istio.io/locality";
const LOCALITY_LABEL: &str = "istio-locality";

#[cfg(test)]
mod tests {
    use super::super::project::{Interner, project_pod};
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use kube::core::PartialObjectMeta;
    use serde_json::json;

    /// `AugmentLabels` as istiod calls it: a Pod's `istio-locality` gives its region, zone and
    /// subzone over its Node's (the slice's zone) and its own labels; the cluster's network
    /// is added where the Pod names none.
    #[test]
    fn locality_and_network_are_added_as_istiod_adds_them() {
        let interner = Interner::default();
        let pod = |labels: serde_json::Value| {
            let meta: PartialObjectMeta<Pod> = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "PartialObjectMetadata",
                "metadata": {"name": "p", "namespace": "shop", "labels": labels}}))
            .unwrap();
            project_pod(&meta, &interner).unwrap().labels
        };
        let e = SliceEndpoint {
            address: "10.0.0.9".parse().unwrap(),
            ready: true,
            pod: Some("p".into()),
            zone: Some("zone-a".into()),
            node: Some("node-9".into()),
        };
        let add = Augment {
            cluster: "west",
            network: Some("west-network"),
        };
        let located = pod(
            json!({"istio-locality": "r1.zone-b.sz", "topology.kubernetes.io/zone": "own",
            "topology.kubernetes.io/region": "own"}),
        );
        let get = |p: &PodLabels, k: &str| endpoint_label(k, Some(p), &e, &add).map(str::to_string);
        assert_eq!(get(&located, REGION_LABEL).as_deref(), Some("r1"));
        assert_eq!(get(&located, ZONE_LABEL).as_deref(), Some("zone-b"));
        assert_eq!(get(&located, SUBZONE_LABEL).as_deref(), Some("sz"));
        assert_eq!(
            get(&located, NETWORK_LABEL).as_deref(),
            Some("west-network")
        );
        assert_eq!(get(&located, CLUSTER_LABEL).as_deref(), Some("west"));
        // An empty part adds nothing: the Pod's own label stays.
        let region_only =
            pod(json!({"istio-locality": "r2", "topology.kubernetes.io/zone": "own"}));
        assert_eq!(get(&region_only, ZONE_LABEL).as_deref(), Some("own"));
        assert_eq!(get(&region_only, SUBZONE_LABEL), None);
        // Without it, the Node's zone (the slice's); a Pod's own network wins.
        let plain = pod(json!({"topology.istio.io/network": "pod-net",
            "topology.kubernetes.io/region": "own"}));
        assert_eq!(get(&plain, ZONE_LABEL).as_deref(), Some("zone-a"));
        assert_eq!(get(&plain, REGION_LABEL).as_deref(), Some("own"));
        assert_eq!(get(&plain, NETWORK_LABEL).as_deref(), Some("pod-net"));
        assert_eq!(get(&plain, HOSTNAME_LABEL).as_deref(), Some("node-9"));
        // Istio 1.29's label goes first; an empty one falls back to the Node's zone.
        let both = pod(json!({"topology.istio.io/locality": "r3.z3", "istio-locality": "r9.z9"}));
        assert_eq!(get(&both, REGION_LABEL).as_deref(), Some("r3"));
        assert_eq!(get(&both, ZONE_LABEL).as_deref(), Some("z3"));
        let empty = pod(json!({"istio-locality": ""}));
        assert_eq!(get(&empty, ZONE_LABEL).as_deref(), Some("zone-a"));
        // Without a Pod: the cluster and the network only.
        let none = |k: &str| endpoint_label(k, None, &e, &add);
        assert_eq!(none(ZONE_LABEL), None);
        assert_eq!(none(HOSTNAME_LABEL), None);
        assert_eq!(none(CLUSTER_LABEL), Some("west"));
        assert_eq!(none(NETWORK_LABEL), Some("west-network"));
    }
}
