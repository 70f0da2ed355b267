//! Which Kubernetes endpoints the gateway reaches over HBONE, as Istio decides (pure
//! functions of projected labels; `project` reads them, `specs` applies them).
//!
//! - The Service is global: label `istio.io/global: "true"`, the scope the ambient profile's
//!   `meshConfig.serviceScopeConfigs` selects (istio/istio
//!   `manifests/charts/base/files/profile-ambient.yaml`; matched in
//!   `pilot/pkg/serviceregistry/ambient/services.go` `matchServiceScope`). Only global
//!   services are exposed (`ambientindex.go` `AllLocalNetworkGlobalServices`).
//! - Bound to a waypoint or not: `waypoints` decides, from the labels read here.
//! - The endpoint's Pod is captured by ztunnel, as istio-cni decides
//!   (`cni/pkg/util/podutil.go` `PodRedirectionEnabled`): its Namespace or the Pod itself is
//!   labelled `istio.io/dataplane-mode=ambient`; a Pod labelled `none` opts out; a Pod with an
//!   injected sidecar (annotation `sidecar.istio.io/status`, `podHasSidecar`) is never
//!   captured and stays reachable through 15443 only.
//!
//! Such an endpoint is dialed on `podIP:15008`, the port Istio's gateway overrides every
//! ambient endpoint to (`cluster_waypoint.go` `buildForwardInnerConnect`).

use std::collections::BTreeMap;

pub use crate::discovery::file::format::HBONE_DEFAULT_PORT as HBONE_PORT;

pub const GLOBAL_LABEL: &str = "istio.io/global";
pub const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";
pub const USE_WAYPOINT_NAMESPACE_LABEL: &str = "istio.io/use-waypoint-namespace";
/// A second waypoint that takes a share of a Service's tunnels (Istio 1.31, alpha), with its
/// namespace and, as an annotation, its share in percent.
pub const USE_WAYPOINT_CANARY_LABEL: &str = "istio.io/use-waypoint-canary";
pub const USE_WAYPOINT_CANARY_NAMESPACE_LABEL: &str = "istio.io/use-waypoint-canary-namespace";
pub const CANARY_WEIGHT_ANNOTATION: &str = "istio.io/use-waypoint-canary-weight";
/// Set by istiod on the objects it deploys for a Gateway; [`MESH_CONTROLLER`] on a waypoint's.
pub const GATEWAY_MANAGED_LABEL: &str = "gateway.istio.io/managed";
pub const MESH_CONTROLLER: &str = "istio.io-mesh-controller";
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
/// Set by Istio's sidecar injector on every Pod it injected.
pub const SIDECAR_STATUS_ANNOTATION: &str = "sidecar.istio.io/status";

type Labels = BTreeMap<String, String>;

/// What an object's `istio.io/use-waypoint` label says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum UseWaypoint {
    /// No label: the namespace's label decides (for a Service).
    #[default]
    Unset,
    /// `none`: no waypoint, whatever the namespace says.
    OptedOut,
    /// Any other value names a waypoint: a Gateway of that name, in the namespace that
    /// `istio.io/use-waypoint-namespace` names, else the object's own (`getUseWaypoint`).
    Bound {
        name: Box<str>,
        namespace: Option<Box<str>>,
    },
}

impl UseWaypoint {
    pub fn of(labels: Option<&Labels>) -> Self {
        let get = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
        match get(USE_WAYPOINT_LABEL) {
            None => UseWaypoint::Unset,
            Some("none") => UseWaypoint::OptedOut,
            Some(name) => UseWaypoint::Bound {
                name: name.into(),
                namespace: get(USE_WAYPOINT_NAMESPACE_LABEL).map(Box::from),
            },
        }
    }
}

/// What an object says of a canary waypoint: its `istio.io/use-waypoint-canary` label (`""`
/// and `none` say no canary) and its weight annotation as written; `waypoints` judges them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CanaryLabels {
    pub waypoint: UseWaypoint,
    pub weight: Option<Box<str>>,
}

impl CanaryLabels {
    pub fn of(labels: Option<&Labels>, annotations: Option<&Labels>) -> Self {
        let get = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
        let waypoint = match get(USE_WAYPOINT_CANARY_LABEL) {
            None => UseWaypoint::Unset,
            Some("" | "none") => UseWaypoint::OptedOut,
            Some(name) => UseWaypoint::Bound {
                name: name.into(),
                namespace: get(USE_WAYPOINT_CANARY_NAMESPACE_LABEL).map(Box::from),
            },
        };
        let weight = annotations
            .and_then(|a| a.get(CANARY_WEIGHT_ANNOTATION))
            .map(|w| Box::from(w.as_str()));
        CanaryLabels { waypoint, weight }
    }
}

/// A Service's ambient fields.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceScope {
    pub global: bool,
    pub waypoint: UseWaypoint,
    pub canary: CanaryLabels,
    /// A waypoint's own Service (`gateway.istio.io/managed: istio.io-mesh-controller`),
    /// which never has a waypoint (`fetchWaypointForService`).
    pub is_waypoint: bool,
}

impl ServiceScope {
    pub fn of(labels: Option<&Labels>, annotations: Option<&Labels>) -> Self {
        let get = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
        ServiceScope {
            global: get(GLOBAL_LABEL) == Some("true"),
            waypoint: UseWaypoint::of(labels),
            canary: CanaryLabels::of(labels, annotations),
            is_waypoint: get(GATEWAY_MANAGED_LABEL) == Some(MESH_CONTROLLER),
        }
    }
}

/// A Namespace's ambient fields: its `dataplane-mode` enables capture, its `use-waypoint`
/// binds its Services, and its labels are what a waypoint's `allowedRoutes` selector sees.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NamespaceScope {
    pub ambient: bool,
    pub waypoint: UseWaypoint,
    pub canary: CanaryLabels,
    pub labels: Labels,
}

impl NamespaceScope {
    pub fn of(labels: Option<&Labels>, annotations: Option<&Labels>) -> Self {
        NamespaceScope {
            ambient: labels
                .and_then(|l| l.get(DATAPLANE_MODE_LABEL))
                .map(String::as_str)
                == Some("ambient"),
            waypoint: UseWaypoint::of(labels),
            canary: CanaryLabels::of(labels, annotations),
            labels: labels.cloned().unwrap_or_default(),
        }
    }
}

/// Whether ztunnel captures a Pod with this `istio.io/dataplane-mode` label, with or without
/// an injected sidecar (`ns`: its Namespace, `None` when not seen).
pub fn pod_captured(mode: Option<&str>, sidecar: bool, ns: Option<&NamespaceScope>) -> bool {
    let enabled = mode == Some("ambient") || ns.is_some_and(|n| n.ambient);
    enabled && !sidecar && mode != Some("none")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn ns(kv: &[(&str, &str)]) -> NamespaceScope {
        NamespaceScope::of(Some(&labels(kv)), None)
    }

    #[test]
    fn labels_read_as_istiod_reads_them() {
        let svc = |kv: &[(&str, &str)]| ServiceScope::of(Some(&labels(kv)), None);
        assert!(svc(&[("istio.io/global", "true")]).global);
        assert!(
            !svc(&[("istio.io/global", "True")]).global,
            "the profile selects exactly \"true\""
        );
        assert_eq!(ServiceScope::of(None, None), ServiceScope::default());
        assert_eq!(
            svc(&[("istio.io/use-waypoint", "none")]).waypoint,
            UseWaypoint::OptedOut
        );
        assert_eq!(
            svc(&[
                ("istio.io/use-waypoint", "wp"),
                ("istio.io/use-waypoint-namespace", "infra")
            ])
            .waypoint,
            UseWaypoint::Bound {
                name: "wp".into(),
                namespace: Some("infra".into())
            }
        );
        assert_eq!(
            ns(&[("istio.io/use-waypoint", "wp")]).waypoint,
            UseWaypoint::Bound {
                name: "wp".into(),
                namespace: None
            }
        );
        assert!(svc(&[("gateway.istio.io/managed", "istio.io-mesh-controller")]).is_waypoint);
        assert!(!svc(&[("gateway.istio.io/managed", "istio.io-gateway-controller")]).is_waypoint);
        assert_eq!(
            ns(&[("team", "a")]).labels.get("team").map(String::as_str),
            Some("a")
        );
    }

    /// istiod's `TestGetUseWaypointCanary` cases for one object: empty and `none` name no
    /// canary; the namespace label, if any, goes with the name.
    #[test]
    fn canary_labels_read_as_istiod_reads_them() {
        let canary = |kv: &[(&str, &str)]| CanaryLabels::of(Some(&labels(kv)), None).waypoint;
        assert_eq!(canary(&[]), UseWaypoint::Unset);
        for no in ["", "none"] {
            assert_eq!(
                canary(&[("istio.io/use-waypoint-canary", no)]),
                UseWaypoint::OptedOut
            );
        }
        assert_eq!(
            canary(&[("istio.io/use-waypoint-canary", "wp")]),
            UseWaypoint::Bound {
                name: "wp".into(),
                namespace: None
            }
        );
        assert_eq!(
            canary(&[
                ("istio.io/use-waypoint-canary", "wp"),
                ("istio.io/use-waypoint-canary-namespace", "other")
            ]),
            UseWaypoint::Bound {
                name: "wp".into(),
                namespace: Some("other".into())
            }
        );
        let weight = labels(&[("istio.io/use-waypoint-canary-weight", "20")]);
        assert_eq!(
            CanaryLabels::of(None, Some(&weight)).weight.as_deref(),
            Some("20")
        );
    }

    #[test]
    fn pods_captured_as_istio_cni_decides() {
        let (amb, none) = (Some("ambient"), Some("none"));
        let ambient_ns = ns(&[("istio.io/dataplane-mode", "ambient")]);
        assert!(pod_captured(amb, false, None));
        assert!(!pod_captured(none, false, None));
        assert!(!pod_captured(Some("Ambient"), false, None));
        assert!(!pod_captured(None, false, None));
        assert!(
            pod_captured(None, false, Some(&ambient_ns)),
            "the namespace enables"
        );
        assert!(
            !pod_captured(none, false, Some(&ambient_ns)),
            "none opts out"
        );
        assert!(!pod_captured(amb, true, None), "sidecar pods never");
        assert!(!pod_captured(None, true, Some(&ambient_ns)));
        let none_ns = ns(&[("istio.io/dataplane-mode", "none")]);
        assert!(!pod_captured(None, false, Some(&none_ns)));
        assert!(
            pod_captured(amb, false, Some(&none_ns)),
            "the pod's own label enables"
        );
    }
}
