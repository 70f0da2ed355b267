//! Which Kubernetes endpoints the gateway reaches over HBONE, as Istio's own east-west
//! gateway decides (pure functions of labels; `specs` applies them).
//!
//! - The Service is global: label `istio.io/global: "true"`, the scope the ambient profile's
//!   `meshConfig.serviceScopeConfigs` selects (istio/istio
//!   `manifests/charts/base/files/profile-ambient.yaml`; matched in
//!   `pilot/pkg/serviceregistry/ambient/services.go` `matchServiceScope`). Only global
//!   services are exposed (`ambientindex.go` `AllLocalNetworkGlobalServices`).
//! - The Service is not bound to a waypoint (`istio.io/use-waypoint` absent or `none`):
//!   Istio's gateway would dial the waypoint instead (`listener_waypoint.go`
//!   `buildWaypointInternal`); this gateway does not yet, so such services stay classic-only.
//! - The endpoint's Pod is captured by ambient: its label `istio.io/dataplane-mode` is
//!   `ambient` (istio/istio `cni/pkg/util/podutil.go` `PodRedirectionEnabled`: the pod or its
//!   namespace matches, and a pod labelled otherwise, e.g. `none`, opts out). Namespaces are
//!   not watched yet, so a pod captured only through its namespace's label is classic-only.
//!
//! Such an endpoint is dialed on `podIP:15008`, the port Istio's gateway overrides every
//! ambient endpoint to (`cluster_waypoint.go` `buildForwardInnerConnect`).

use std::collections::BTreeMap;

use super::project::{PodLabels, pod_label};
pub use crate::discovery::file::format::HBONE_DEFAULT_PORT as HBONE_PORT;

pub const GLOBAL_LABEL: &str = "istio.io/global";
pub const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";

/// A Service's labels say its ambient endpoints are exposed over HBONE.
pub fn service_exposed_over_hbone(labels: Option<&BTreeMap<String, String>>) -> bool {
    let Some(labels) = labels else {
        return false;
    };
    let global = labels.get(GLOBAL_LABEL).map(String::as_str) == Some("true");
    let waypoint = labels
        .get(USE_WAYPOINT_LABEL)
        .is_some_and(|w| !w.is_empty() && w != "none");
    if global && waypoint {
        tracing::debug!("global service bound to a waypoint: classic only (waypoints not dialed)");
    }
    global && !waypoint
}

/// A Pod's labels say ztunnel captures it.
pub fn pod_captured(labels: &PodLabels) -> bool {
    pod_label(labels, DATAPLANE_MODE_LABEL) == Some("ambient")
}

#[cfg(test)]
mod tests {
    use super::super::project::{Interner, project_pod};
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use kube::core::PartialObjectMeta;
    use serde_json::json;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_global_services_without_a_waypoint() {
        let yes = |kv: &[(&str, &str)]| service_exposed_over_hbone(Some(&labels(kv)));
        assert!(yes(&[("istio.io/global", "true")]));
        assert!(yes(&[
            ("istio.io/global", "true"),
            ("istio.io/use-waypoint", "none")
        ]));
        assert!(
            !yes(&[("istio.io/global", "True")]),
            "the profile selects exactly \"true\""
        );
        assert!(!yes(&[("istio.io/global", "false")]));
        assert!(!yes(&[("app", "catalog")]));
        assert!(!yes(&[
            ("istio.io/global", "true"),
            ("istio.io/use-waypoint", "wp")
        ]));
        assert!(!service_exposed_over_hbone(None));
    }

    #[test]
    fn pods_captured_by_their_dataplane_mode_label() {
        let captured = |kv: &[(&str, &str)]| {
            let meta: PartialObjectMeta<Pod> = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "PartialObjectMetadata",
                "metadata": {"name": "p", "namespace": "shop", "labels": labels(kv)}
            }))
            .unwrap();
            project_pod(&meta, &Interner::default()).is_some_and(|l| pod_captured(&l))
        };
        assert!(captured(&[
            ("istio.io/dataplane-mode", "ambient"),
            ("app", "a")
        ]));
        assert!(!captured(&[("istio.io/dataplane-mode", "none")]));
        assert!(!captured(&[("app", "a")]));
        assert!(!captured(&[]));
    }
}
