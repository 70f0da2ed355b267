//! Which Kubernetes endpoints the gateway reaches over HBONE, as Istio decides (pure
//! functions of projected labels; `project` reads them, `specs` applies them).
//!
//! - The Service is global: label `istio.io/global: "true"`, the scope the ambient profile's
//!   `meshConfig.serviceScopeConfigs` selects (istio/istio
//!   `manifests/charts/base/files/profile-ambient.yaml`; matched in
//!   `pilot/pkg/serviceregistry/ambient/services.go` `matchServiceScope`). Only global
//!   services are exposed (`ambientindex.go` `AllLocalNetworkGlobalServices`).
//! - Bound to a waypoint or not. Istio reads `istio.io/use-waypoint` on the Service first
//!   (`none` opts out, even of its namespace's waypoint), then on its Namespace, which binds
//!   every Service in it (`pilot/pkg/serviceregistry/kube/controller/ambient/waypoints.go`
//!   `fetchWaypointForTarget`, `getUseWaypoint`). Istio's gateway sends a bound Service's
//!   tunnels to its waypoint, except those a waypoint sent (`x-istio-source: waypoint`),
//!   which go straight to the Service (`listener_waypoint.go` `buildWaypointInternal`). This
//!   gateway does not dial waypoints: a bound Service's endpoints take only the tunnels a
//!   waypoint sent.
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
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
/// Set by Istio's sidecar injector on every Pod it injected.
pub const SIDECAR_STATUS_ANNOTATION: &str = "sidecar.istio.io/status";

type Labels = BTreeMap<String, String>;

/// What an object's `istio.io/use-waypoint` label says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UseWaypoint {
    /// No label: the namespace's label decides (for a Service).
    #[default]
    Unset,
    /// `none`: no waypoint, whatever the namespace says.
    OptedOut,
    /// Any other value names a waypoint.
    Bound,
}

impl UseWaypoint {
    pub fn of(labels: Option<&Labels>) -> Self {
        match labels
            .and_then(|l| l.get(USE_WAYPOINT_LABEL))
            .map(String::as_str)
        {
            None => UseWaypoint::Unset,
            Some("none") => UseWaypoint::OptedOut,
            Some(_) => UseWaypoint::Bound,
        }
    }
}

/// A Service's ambient fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ServiceScope {
    pub global: bool,
    pub waypoint: UseWaypoint,
}

impl ServiceScope {
    pub fn of(labels: Option<&Labels>) -> Self {
        ServiceScope {
            global: labels.and_then(|l| l.get(GLOBAL_LABEL)).map(String::as_str) == Some("true"),
            waypoint: UseWaypoint::of(labels),
        }
    }
}

/// A Namespace's ambient fields: its `dataplane-mode` enables capture, its `use-waypoint`
/// binds its Services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NamespaceScope {
    pub ambient: bool,
    pub waypoint: UseWaypoint,
}

impl NamespaceScope {
    pub fn of(labels: Option<&Labels>) -> Self {
        NamespaceScope {
            ambient: labels
                .and_then(|l| l.get(DATAPLANE_MODE_LABEL))
                .map(String::as_str)
                == Some("ambient"),
            waypoint: UseWaypoint::of(labels),
        }
    }
}

/// Which tunnels a Service's ambient endpoints take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// None: not a global service.
    Hidden,
    /// Every tunnel.
    Open,
    /// Only those a waypoint sent: the Service is bound to one.
    FromWaypoints,
}

/// Which tunnels a Service's ambient endpoints take over HBONE (`ns`: its Namespace, `None`
/// when not seen, as Istio treats a namespace it does not know).
pub fn service_exposure(svc: ServiceScope, ns: Option<&NamespaceScope>) -> Exposure {
    let bound = match svc.waypoint {
        UseWaypoint::Bound => true,
        UseWaypoint::OptedOut => false,
        UseWaypoint::Unset => ns.is_some_and(|n| n.waypoint == UseWaypoint::Bound),
    };
    match (svc.global, bound) {
        (false, _) => Exposure::Hidden,
        (true, false) => Exposure::Open,
        (true, true) => Exposure::FromWaypoints,
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
        NamespaceScope::of(Some(&labels(kv)))
    }

    #[test]
    fn global_services_open_or_bound_to_a_waypoint() {
        let of = |kv: &[(&str, &str)], n: Option<&NamespaceScope>| {
            service_exposure(ServiceScope::of(Some(&labels(kv))), n)
        };
        let g = ("istio.io/global", "true");
        assert_eq!(of(&[g], None), Exposure::Open);
        assert_eq!(
            of(&[g, ("istio.io/use-waypoint", "none")], None),
            Exposure::Open
        );
        assert_eq!(
            of(&[("istio.io/global", "True")], None),
            Exposure::Hidden,
            "the profile selects exactly \"true\""
        );
        assert_eq!(of(&[("istio.io/global", "false")], None), Exposure::Hidden);
        assert_eq!(of(&[("app", "catalog")], None), Exposure::Hidden);
        assert_eq!(
            of(&[g, ("istio.io/use-waypoint", "wp")], None),
            Exposure::FromWaypoints
        );
        assert_eq!(
            of(&[("istio.io/use-waypoint", "wp")], None),
            Exposure::Hidden,
            "bound but not global"
        );
        assert_eq!(
            service_exposure(ServiceScope::of(None), None),
            Exposure::Hidden
        );
        // The namespace's waypoint binds its services; a service's `none` overrides it.
        let wp = ns(&[("istio.io/use-waypoint", "wp")]);
        assert_eq!(of(&[g], Some(&wp)), Exposure::FromWaypoints);
        assert_eq!(
            of(&[g, ("istio.io/use-waypoint", "none")], Some(&wp)),
            Exposure::Open
        );
        assert_eq!(
            of(&[g], Some(&ns(&[("istio.io/use-waypoint", "none")]))),
            Exposure::Open
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
