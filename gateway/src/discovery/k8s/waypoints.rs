//! Which waypoint a Service's tunnels go to, as istiod decides (istio/istio
//! `pilot/pkg/serviceregistry/kube/controller/ambient/waypoints.go`): pure functions of the
//! projected Gateways, Services and Namespaces.
//!
//! - A waypoint is a Gateway (`gateway.networking.k8s.io/v1`, any class) with
//!   `status.addresses`, which its controller sets once the waypoint has a ready pod
//!   (`WaypointsCollection`). A Gateway without them is not ready: a Service bound to it has
//!   no waypoint, and its tunnels go straight to its endpoints.
//! - Its address: the first `Hostname` in `status.addresses` (istiod prefers hostnames), else
//!   the first `IPAddress`, which names the Service with that cluster IP (`getGatewayAddress`).
//! - It takes Service traffic when its `istio.io/waypoint-for` label, else its
//!   GatewayClass's, else the default (`service`) is `service` or `all`.
//! - Its HBONE listener (port 15008, protocol `HBONE`) says from which namespaces it may be
//!   used: `allowedRoutes.namespaces.from` `Same` (the default, also with no such listener),
//!   `All`, or `Selector` over the Namespace's labels (`makeAllowedRoutes`); the listener an
//!   inbound binding names comes first ([`INBOUND_BINDING_ANNOTATION`]).
//! - A Service's own `istio.io/use-waypoint` decides, checked against the Service's
//!   namespace; else its Namespace's, checked against that Namespace
//!   (`fetchWaypointForTarget`). A waypoint's own Service has none (`fetchWaypointForService`).

use std::borrow::Cow;
use std::net::IpAddr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{ClusterResourceScope, NamespaceResourceScope};
use kube::Resource;
use serde::Deserialize;
use serde_json::Value;

use super::ambient::{NamespaceScope, ServiceScope, UseWaypoint};
use crate::routes::Labels;

pub const WAYPOINT_FOR_LABEL: &str = "istio.io/waypoint-for";
/// How a waypoint's own ztunnel hands it traffic, on its Gateway or else its GatewayClass:
/// `NONE` or `PROXY`, optionally `/<port>`. It picks the listener whose `allowedRoutes`
/// count (`makeInboundBinding`, `findBoundListener`).
pub const INBOUND_BINDING_ANNOTATION: &str = "ambient.istio.io/waypoint-inbound-binding";
/// The protocol of a sandwiched waypoint's PROXY listener
/// (`constants.WaypointSandwichListenerProxyProtocol`).
const PROXY_LISTENER_PROTOCOL: &str = "istio.io/PROXY";

/// A Gateway API Gateway, kept loose: spec and status as JSON, so one odd object cannot fail
/// the watch's whole list; [`project_gateway`] reads what it needs.
#[derive(Debug, Clone, Deserialize)]
pub struct GatewayObject {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Value,
    #[serde(default)]
    pub status: Value,
}

impl Resource for GatewayObject {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Gateway".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "gateway.networking.k8s.io".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "gateways".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A GatewayClass: only its labels are read ([`project_gateway_class`]).
#[derive(Debug, Clone, Deserialize)]
pub struct GatewayClassObject {
    pub metadata: ObjectMeta,
}

impl Resource for GatewayClassObject {
    type DynamicType = ();
    type Scope = ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "GatewayClass".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "gateway.networking.k8s.io".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "gatewayclasses".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// A GatewayClass's `istio.io/waypoint-for`, the default for its Gateways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassInfo {
    pub waypoint_for: Option<Box<str>>,
    /// Its [`INBOUND_BINDING_ANNOTATION`], the default for its Gateways.
    pub inbound_binding: Option<Box<str>>,
}

pub fn project_gateway_class(class: &GatewayClassObject) -> Option<ClassInfo> {
    Some(ClassInfo {
        waypoint_for: waypoint_for(&class.metadata),
        inbound_binding: inbound_binding(&class.metadata),
    })
}

fn inbound_binding(meta: &ObjectMeta) -> Option<Box<str>> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(INBOUND_BINDING_ANNOTATION))
        .map(|v| Box::from(v.as_str()))
}

fn waypoint_for(meta: &ObjectMeta) -> Option<Box<str>> {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(WAYPOINT_FOR_LABEL))
        .map(|v| Box::from(v.as_str()))
}

/// Where a waypoint is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaypointAddress {
    Hostname(String),
    Ip(IpAddr),
}

/// Which namespaces may use a waypoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedFrom {
    Same,
    All,
    /// `None`: a selector that does not parse, which matches no namespace.
    Selector(Option<Selector>),
}

/// A ready waypoint (a Gateway with `status.addresses`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaypointInfo {
    /// `None` when no address parses: bound Services' tunnels then have nowhere to go.
    pub address: Option<WaypointAddress>,
    /// Its own `istio.io/waypoint-for`, which overrides its class's.
    pub waypoint_for: Option<Box<str>>,
    /// `spec.gatewayClassName`.
    pub class: Box<str>,
    /// Its own [`INBOUND_BINDING_ANNOTATION`], which overrides its class's.
    pub inbound_binding: Option<Box<str>>,
    pub listeners: Vec<Listener>,
}

/// A listener of a waypoint's Gateway, as far as `allowedRoutes` needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub port: Option<u32>,
    pub protocol: Box<str>,
    pub allowed: AllowedFrom,
}

/// A Gateway as a waypoint; `None` while it has no `status.addresses` (not ready).
pub fn project_gateway(gw: &GatewayObject) -> Option<WaypointInfo> {
    let addresses = gw.status.get("addresses")?.as_array()?;
    if addresses.is_empty() {
        return None;
    }
    let of_type = |ty: &'static str| {
        addresses
            .iter()
            .filter(move |a| a.get("type").and_then(Value::as_str) == Some(ty))
            .filter_map(|a| a.get("value")?.as_str())
    };
    let address = of_type("Hostname")
        .map(|h| h.trim().trim_end_matches('.').to_ascii_lowercase())
        .find(|h| !h.is_empty())
        .map(WaypointAddress::Hostname)
        .or_else(|| {
            of_type("IPAddress")
                .find_map(|ip| ip.trim().parse::<IpAddr>().ok())
                .map(|ip| WaypointAddress::Ip(ip.to_canonical()))
        });
    let class = gw.spec.get("gatewayClassName").and_then(Value::as_str);
    let listeners = gw
        .spec
        .get("listeners")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|l| Listener {
            port: l
                .get("port")
                .and_then(Value::as_u64)
                .and_then(|p| u32::try_from(p).ok()),
            protocol: l
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .into(),
            allowed: allowed_from(l),
        })
        .collect();
    Some(WaypointInfo {
        address,
        waypoint_for: waypoint_for(&gw.metadata),
        class: class.unwrap_or_default().into(),
        inbound_binding: inbound_binding(&gw.metadata),
        listeners,
    })
}

fn allowed_from(listener: &Value) -> AllowedFrom {
    let Some(ns) = listener.pointer("/allowedRoutes/namespaces") else {
        return AllowedFrom::Same;
    };
    match ns.get("from").and_then(Value::as_str) {
        Some("All") => AllowedFrom::All,
        Some("Selector") => AllowedFrom::Selector(ns.get("selector").and_then(Selector::parse)),
        _ => AllowedFrom::Same,
    }
}

/// A parsed [`INBOUND_BINDING_ANNOTATION`]: the port (0 when none is given) and whether the
/// protocol is `PROXY` (else `NONE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InboundBinding {
    port: u32,
    proxy: bool,
}

impl InboundBinding {
    /// `makeInboundBinding`: `None` for a value it refuses (another protocol, more than one
    /// `/`). A port that is not a number is 0 there, and one too large the largest `u32`
    /// (Go's `ParseUint`), which no listener has.
    fn parse(v: &str) -> Option<InboundBinding> {
        let mut parts = v.split('/');
        let proxy = match parts.next()? {
            "NONE" => false,
            "PROXY" => true,
            _ => return None,
        };
        let port = match parts.next() {
            None => 0,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse().unwrap_or(u32::MAX)
            }
            Some(_) => 0,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(InboundBinding { port, proxy })
    }

    /// `findBoundListener`: the listener at its port, else for `PROXY` without a port the
    /// first `istio.io/PROXY` listener.
    fn listener<'l>(&self, listeners: &'l [Listener]) -> Option<&'l Listener> {
        if self.port != 0 {
            return listeners.iter().find(|l| l.port == Some(self.port));
        }
        if !self.proxy {
            return None;
        }
        listeners
            .iter()
            .find(|l| &*l.protocol == PROXY_LISTENER_PROTOCOL)
    }
}

/// A Kubernetes label selector: `matchLabels` and `matchExpressions`, all of which must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    labels: Vec<(String, String)>,
    expressions: Vec<(String, Op, Vec<String>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl Selector {
    /// `None` for what `LabelSelectorAsSelector` refuses (an unknown operator, `In` with no
    /// values, `Exists` with some).
    fn parse(v: &Value) -> Option<Selector> {
        let labels = match v.get("matchLabels") {
            None | Some(Value::Null) => Vec::new(),
            Some(m) => m
                .as_object()?
                .iter()
                .map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect::<Option<_>>()?,
        };
        let mut expressions = Vec::new();
        for e in v
            .get("matchExpressions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = e.get("key")?.as_str()?.to_owned();
            let values: Vec<String> = match e.get("values") {
                None | Some(Value::Null) => Vec::new(),
                Some(vs) => vs
                    .as_array()?
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<_>>()?,
            };
            let op = match e.get("operator")?.as_str()? {
                "In" => Op::In,
                "NotIn" => Op::NotIn,
                "Exists" => Op::Exists,
                "DoesNotExist" => Op::DoesNotExist,
                _ => return None,
            };
            let wants_values = matches!(op, Op::In | Op::NotIn);
            if wants_values == values.is_empty() {
                return None;
            }
            expressions.push((key, op, values));
        }
        Some(Selector {
            labels,
            expressions,
        })
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.expressions.iter().all(|(k, op, values)| {
                let got = labels.get(k);
                match op {
                    Op::In => got.is_some_and(|g| values.contains(g)),
                    Op::NotIn => got.is_none_or(|g| !values.contains(g)),
                    Op::Exists => got.is_some(),
                    Op::DoesNotExist => got.is_none(),
                }
            })
    }
}

impl WaypointInfo {
    /// Whether it takes Service traffic: its own `istio.io/waypoint-for`, else its class's
    /// (`class_for`), else `service`, must be `service` or `all` (`WaypointsCollection`).
    fn takes_services(&self, class_for: Option<&str>) -> bool {
        let traffic = self
            .waypoint_for
            .as_deref()
            .or(class_for)
            .unwrap_or("service");
        matches!(traffic, "service" | "all")
    }

    /// Which namespaces may use it (`makeAllowedRoutes`): the `allowedRoutes` of the
    /// listener its inbound binding names (its own, else its class's `class_binding`), else
    /// of its HBONE listener at 15008, else `Same`.
    fn allowed(&self, class_binding: Option<&str>) -> &AllowedFrom {
        static SAME: AllowedFrom = AllowedFrom::Same;
        let binding = self.inbound_binding.as_deref().or(class_binding);
        binding
            .and_then(InboundBinding::parse)
            .and_then(|b| b.listener(&self.listeners))
            .or_else(|| {
                self.listeners
                    .iter()
                    .find(|l| &*l.protocol == "HBONE" && l.port == Some(15008))
            })
            .map_or(&SAME, |l| &l.allowed)
    }

    /// Whether a target in `namespace` (its labels `ns_labels`; `None` when not seen) may use
    /// this waypoint, which lives in `own_ns` (its class's inbound binding `class_binding`).
    fn allows(
        &self,
        own_ns: &str,
        namespace: &str,
        ns_labels: Option<&Labels>,
        class_binding: Option<&str>,
    ) -> bool {
        self.allowed(class_binding)
            .admits(own_ns, namespace, ns_labels)
    }
}

impl AllowedFrom {
    /// Whether a target in `namespace` (its labels `ns_labels`; `None` when not seen) may use
    /// a waypoint in `own_ns` that this rule guards.
    fn admits(&self, own_ns: &str, namespace: &str, ns_labels: Option<&Labels>) -> bool {
        match self {
            AllowedFrom::All => true,
            AllowedFrom::Same => own_ns == namespace,
            AllowedFrom::Selector(s) => s
                .as_ref()
                .is_some_and(|s| s.matches(ns_labels.unwrap_or(&Labels::new()))),
        }
    }
}

/// The waypoint a Service is bound to, by name: what its labels say, before anything is
/// known of the waypoint itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding<'a> {
    /// The waypoint's namespace.
    pub namespace: &'a str,
    pub name: &'a str,
    /// The labels of the Service's Namespace (`None` when not seen), which a waypoint's
    /// `allowedRoutes` selector is matched against.
    from: Option<&'a Labels>,
}

/// Where a Service's waypoint binding comes from.
enum BoundBy<'a> {
    /// Its own `istio.io/use-waypoint`.
    Service,
    /// Its Namespace's.
    Namespace(&'a NamespaceScope),
}

/// Where the waypoint binding of Service `svc` (its Namespace `ns_scope`, `None` when not
/// seen) comes from: its own label, else its Namespace's; `None` for a waypoint's own
/// Service and for one opted out or bound by neither.
fn bound_by<'a>(svc: &ServiceScope, ns_scope: Option<&'a NamespaceScope>) -> Option<BoundBy<'a>> {
    if svc.is_waypoint {
        return None;
    }
    match &svc.waypoint {
        UseWaypoint::OptedOut => None,
        UseWaypoint::Bound { .. } => Some(BoundBy::Service),
        UseWaypoint::Unset => ns_scope
            .filter(|n| matches!(n.waypoint, UseWaypoint::Bound { .. }))
            .map(BoundBy::Namespace),
    }
}

/// The binding of the Service `svc` in namespace `ns` (its Namespace `ns_scope`, `None` when
/// not seen): its own `istio.io/use-waypoint` label, else its Namespace's; `None` for a
/// waypoint's own Service and for one opted out or bound by neither.
pub fn binding<'a>(
    ns: &'a str,
    svc: &'a ServiceScope,
    ns_scope: Option<&'a NamespaceScope>,
) -> Option<Binding<'a>> {
    let label = match bound_by(svc, ns_scope)? {
        BoundBy::Service => &svc.waypoint,
        BoundBy::Namespace(n) => &n.waypoint,
    };
    Binding::named(ns, label, ns_scope)
}

/// The canary waypoint a Service names (Istio 1.31, alpha), with its weight annotation as
/// written: from the object its waypoint binding came from. A Service that names its own
/// waypoint names its own canary; one that takes its Namespace's waypoint takes the
/// Namespace's canary, its own label and annotation overriding the Namespace's
/// (`getUseWaypointCanary`, `getCanaryWeight`). `None`: no canary named.
pub fn canary_binding<'a>(
    ns: &'a str,
    svc: &'a ServiceScope,
    ns_scope: Option<&'a NamespaceScope>,
) -> Option<(Binding<'a>, Option<&'a str>)> {
    let own = &svc.canary;
    let (label, weight) = match bound_by(svc, ns_scope)? {
        BoundBy::Service => (&own.waypoint, own.weight.as_deref()),
        BoundBy::Namespace(n) => {
            let label = match &own.waypoint {
                UseWaypoint::Unset => &n.canary.waypoint,
                label => label,
            };
            (label, own.weight.as_deref().or(n.canary.weight.as_deref()))
        }
    };
    Some((Binding::named(ns, label, ns_scope)?, weight))
}

/// A canary's weight annotation, as istiod reads it (`getCanaryWeight`): absent is 0, else a
/// whole number from 0 to 100 (Go's `strconv.Atoi`: an optional sign, then digits); `None`
/// for anything else, which leaves the canary unused (`CanaryInvalidWeight`).
pub fn canary_weight(raw: Option<&str>) -> Option<u8> {
    let Some(raw) = raw else { return Some(0) };
    let n: i64 = raw.parse().ok()?;
    u8::try_from(n).ok().filter(|w| *w <= 100)
}

impl<'a> Binding<'a> {
    /// The waypoint `label` names for a Service in `ns` (its Namespace `ns_scope`): a Gateway
    /// of that name in the namespace its `-namespace` label names, else in `ns`.
    fn named(
        ns: &'a str,
        label: &'a UseWaypoint,
        ns_scope: Option<&'a NamespaceScope>,
    ) -> Option<Binding<'a>> {
        let UseWaypoint::Bound { name, namespace } = label else {
            return None;
        };
        Some(Binding {
            namespace: namespace.as_deref().unwrap_or(ns),
            name,
            from: ns_scope.map(|n| &n.labels),
        })
    }

    /// The waypoint named, looked up by `(namespace, name)` with `find`, if it is ready,
    /// allows the Service's namespace `ns` and takes Service traffic (its class's
    /// `istio.io/waypoint-for` and inbound binding from its class, by `class_of`). `None`:
    /// istiod ignores the binding.
    pub fn resolve<'w, 'c>(
        &self,
        ns: &str,
        find: impl Fn(&str, &str) -> Option<&'w WaypointInfo>,
        class_of: impl Fn(&str) -> Option<&'c ClassInfo>,
    ) -> Option<&'w WaypointInfo> {
        let w = find(self.namespace, self.name)?;
        let class = class_of(&w.class);
        let class_binding = class.and_then(|c| c.inbound_binding.as_deref());
        let usable = w.allows(self.namespace, ns, self.from, class_binding)
            && w.takes_services(class.and_then(|c| c.waypoint_for.as_deref()));
        usable.then_some(w)
    }

    /// Whether, its GatewayClass unknown, the waypoint named might still take this binding
    /// where [`Binding::resolve`] found it did not: it has no inbound binding of its own, so
    /// its class's could name another listener, and one of its listeners allows namespace
    /// `ns`.
    pub fn class_might_allow<'w>(
        &self,
        ns: &str,
        find: impl Fn(&str, &str) -> Option<&'w WaypointInfo>,
    ) -> bool {
        find(self.namespace, self.name).is_some_and(|w| {
            w.inbound_binding.is_none()
                && w.takes_services(None)
                && (w.listeners.iter()).any(|l| l.allowed.admits(self.namespace, ns, self.from))
        })
    }

    /// `namespace/name`, as `/debug/routes` and the logs show an unresolved waypoint.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn gateway(labels: Value, spec: Value, status: Value) -> GatewayObject {
        serde_json::from_value(json!({
            "metadata": {"name": "wp", "namespace": "infra", "labels": labels},
            "spec": spec, "status": status
        }))
        .unwrap()
    }

    fn hbone(allowed: Value) -> Value {
        json!({"gatewayClassName": "istio-waypoint", "listeners": [
            {"name": "mesh", "port": 15008, "protocol": "HBONE", "allowedRoutes": allowed}]})
    }

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_gateway_is_a_waypoint_once_it_has_addresses() {
        let host = json!({"addresses": [
            {"type": "IPAddress", "value": "10.96.0.9"},
            {"type": "Hostname", "value": "WP.infra.svc.cluster.local."}]});
        let w = project_gateway(&gateway(json!({}), hbone(json!(null)), host)).unwrap();
        assert_eq!(
            w.address,
            Some(WaypointAddress::Hostname(
                "wp.infra.svc.cluster.local".into()
            )),
            "a hostname is preferred"
        );
        assert_eq!(
            (w.waypoint_for.as_deref(), &*w.class),
            (None, "istio-waypoint")
        );
        assert_eq!(w.allowed(None), &AllowedFrom::Same);
        let ip = json!({"addresses": [{"type": "IPAddress", "value": "10.96.0.9"}]});
        let w = project_gateway(&gateway(json!({}), json!({}), ip)).unwrap();
        assert_eq!(
            w.address,
            Some(WaypointAddress::Ip("10.96.0.9".parse().unwrap()))
        );
        let junk = json!({"addresses": [{"type": "IPAddress", "value": "ten"}]});
        assert_eq!(
            project_gateway(&gateway(json!({}), json!({}), junk))
                .unwrap()
                .address,
            None
        );
        for not_ready in [json!(null), json!({}), json!({"addresses": []})] {
            assert_eq!(
                project_gateway(&gateway(json!({}), json!({}), not_ready)),
                None
            );
        }
        let status = json!({"addresses": [{"type": "Hostname", "value": "wp.infra"}]});
        // The Gateway's label, else its class's, else `service`.
        for (own, class, services) in [
            (None, None, true),
            (Some("service"), Some("workload"), true),
            (Some("all"), None, true),
            (Some("workload"), Some("all"), false),
            (Some("none"), None, false),
            (None, Some("workload"), false),
            (None, Some("all"), true),
            (Some("Service"), None, false),
        ] {
            let labels = own.map_or(json!({}), |v| json!({"istio.io/waypoint-for": v}));
            let w = project_gateway(&gateway(labels, json!({}), status.clone())).unwrap();
            assert_eq!(w.takes_services(class), services, "{own:?} {class:?}");
        }
        let class: GatewayClassObject = serde_json::from_value(json!({"metadata": {
            "name": "custom", "labels": {"istio.io/waypoint-for": "workload"}},
            "spec": {"controllerName": "example.com/waypoints"}}))
        .unwrap();
        assert_eq!(
            project_gateway_class(&class)
                .unwrap()
                .waypoint_for
                .as_deref(),
            Some("workload")
        );
        for (allowed, want) in [
            (json!({"namespaces": {"from": "All"}}), AllowedFrom::All),
            (json!({"namespaces": {"from": "Same"}}), AllowedFrom::Same),
            (json!({"namespaces": {}}), AllowedFrom::Same),
            (
                json!({"namespaces": {"from": "Selector", "selector": {"matchExpressions": [{"key": "a", "operator": "Sometimes"}]}}}),
                AllowedFrom::Selector(None),
            ),
        ] {
            let g = gateway(json!({}), hbone(allowed.clone()), status.clone());
            assert_eq!(
                project_gateway(&g).unwrap().allowed(None),
                &want,
                "{allowed}"
            );
        }
        // Only the HBONE listener at 15008 counts.
        let other = json!({"listeners": [{"port": 80, "protocol": "HTTP", "allowedRoutes": {"namespaces": {"from": "All"}}}]});
        let g = gateway(json!({}), other, status);
        assert_eq!(
            project_gateway(&g).unwrap().allowed(None),
            &AllowedFrom::Same
        );
    }

    /// istiod's `TestMakeAllowedRoutes` cases, and the class's binding as the default.
    #[test]
    fn the_inbound_binding_picks_the_listener_whose_allowed_routes_count() {
        let status = json!({"addresses": [{"type": "Hostname", "value": "wp.infra"}]});
        let waypoint = |binding: Option<&str>, listeners: Value| {
            let mut g = gateway(json!({}), json!({"listeners": listeners}), status.clone());
            if let Some(b) = binding {
                g.metadata.annotations =
                    Some([(INBOUND_BINDING_ANNOTATION.to_string(), b.to_string())].into());
            }
            project_gateway(&g).unwrap()
        };
        let from = |from: &str| json!({"namespaces": {"from": from}});
        let proxy = |port: u16, allowed: Value| json!({"name": format!("p{port}"), "protocol": "istio.io/PROXY", "port": port, "allowedRoutes": allowed});
        let hbone_all = json!({"protocol": "HBONE", "port": 15008, "allowedRoutes": from("All")});
        let cases = [
            (None, json!([]), AllowedFrom::Same),
            (
                None,
                json!([{"protocol": "HBONE", "port": 15008}]),
                AllowedFrom::Same,
            ),
            (None, json!([hbone_all.clone()]), AllowedFrom::All),
            (
                Some("PROXY/15088"),
                json!([proxy(15088, json!(null))]),
                AllowedFrom::Same,
            ),
            (
                Some("PROXY/15088"),
                json!([proxy(15089, from("Same")), proxy(15088, from("All"))]),
                AllowedFrom::All,
            ),
            (
                Some("PROXY"),
                json!([proxy(15015, from("All"))]),
                AllowedFrom::All,
            ),
            // No listener bound: the HBONE one.
            (
                Some("PROXY/15090"),
                json!([proxy(15088, from("Same")), hbone_all.clone()]),
                AllowedFrom::All,
            ),
            (
                Some("NONE"),
                json!([proxy(15088, from("Same")), hbone_all.clone()]),
                AllowedFrom::All,
            ),
            (
                Some("NONE/15088"),
                json!([proxy(15088, from("Same")), hbone_all.clone()]),
                AllowedFrom::Same,
            ),
            // Refused values are no binding.
            (
                Some("HBONE/15088"),
                json!([proxy(15088, from("Same")), hbone_all.clone()]),
                AllowedFrom::All,
            ),
            (
                Some("PROXY/15088/x"),
                json!([proxy(15088, from("Same")), hbone_all.clone()]),
                AllowedFrom::All,
            ),
            // A port that is not a number is 0: PROXY then takes the first PROXY listener.
            (
                Some("PROXY/x"),
                json!([proxy(15088, from("All"))]),
                AllowedFrom::All,
            ),
            (
                Some("PROXY/+15088"),
                json!([proxy(15088, from("All"))]),
                AllowedFrom::All,
            ),
        ];
        for (binding, listeners, want) in cases {
            let w = waypoint(binding, listeners.clone());
            assert_eq!(w.allowed(None), &want, "{binding:?} {listeners}");
        }
        // The class's binding, unless the Gateway has its own.
        let listeners = json!([proxy(15088, from("All")), {"protocol": "HBONE", "port": 15008}]);
        let w = waypoint(None, listeners.clone());
        assert_eq!(w.allowed(None), &AllowedFrom::Same);
        assert_eq!(w.allowed(Some("PROXY/15088")), &AllowedFrom::All);
        let w = waypoint(Some("NONE"), listeners);
        assert_eq!(w.allowed(Some("PROXY/15088")), &AllowedFrom::Same);
        let class: GatewayClassObject = serde_json::from_value(json!({"metadata": {
            "name": "sandwiched", "annotations": {INBOUND_BINDING_ANNOTATION: "PROXY/15088"}},
            "spec": {"controllerName": "example.com/waypoints"}}))
        .unwrap();
        let class = project_gateway_class(&class).unwrap();
        assert_eq!(class.inbound_binding.as_deref(), Some("PROXY/15088"));
    }

    #[test]
    fn selectors_match_as_kubernetes_does() {
        let s = Selector::parse(&json!({
            "matchLabels": {"team": "a"},
            "matchExpressions": [
                {"key": "env", "operator": "In", "values": ["prod", "stage"]},
                {"key": "legacy", "operator": "DoesNotExist"},
                {"key": "tier", "operator": "NotIn", "values": ["db"]},
                {"key": "mesh", "operator": "Exists"}]
        }))
        .unwrap();
        let base = [("team", "a"), ("env", "prod"), ("mesh", "")];
        assert!(s.matches(&labels(&base)));
        assert!(!s.matches(&labels(&[("team", "b"), ("env", "prod"), ("mesh", "")])));
        assert!(!s.matches(&labels(&[("team", "a"), ("env", "dev"), ("mesh", "")])));
        assert!(!s.matches(&labels(&[("team", "a"), ("env", "prod")])));
        let mut with = labels(&base);
        with.insert("legacy".into(), "x".into());
        assert!(!s.matches(&with));
        with.remove("legacy");
        with.insert("tier".into(), "db".into());
        assert!(!s.matches(&with));
        assert!(
            Selector::parse(&json!({})).unwrap().matches(&Labels::new()),
            "empty: everything"
        );
        for bad in [
            json!({"matchExpressions": [{"key": "a", "operator": "In"}]}),
            json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}),
            json!({"matchLabels": {"a": 1}}),
        ] {
            assert_eq!(Selector::parse(&bad), None, "{bad}");
        }
    }

    #[test]
    fn a_service_finds_its_waypoint_as_istiod_does() {
        let ready = |allowed| WaypointInfo {
            address: Some(WaypointAddress::Hostname(
                "wp.infra.svc.cluster.local".into(),
            )),
            waypoint_for: None,
            class: "istio-waypoint".into(),
            inbound_binding: None,
            listeners: vec![Listener {
                port: Some(15008),
                protocol: "HBONE".into(),
                allowed,
            }],
        };
        let same = ready(AllowedFrom::Same);
        let all = ready(AllowedFrom::All);
        let team_a = ready(AllowedFrom::Selector(Selector::parse(
            &json!({"matchLabels": {"team": "a"}}),
        )));
        let workload_only = WaypointInfo {
            waypoint_for: Some("workload".into()),
            ..all.clone()
        };
        let workload_class = WaypointInfo {
            class: "workloads".into(),
            ..same.clone()
        };
        let find = |ns: &str, name: &str| match (ns, name) {
            ("shop", "same") => Some(&same),
            ("infra", "all") => Some(&all),
            ("infra", "team-a") => Some(&team_a),
            ("shop", "workload") => Some(&workload_only),
            ("shop", "by-class") => Some(&workload_class),
            _ => None,
        };
        let workloads = ClassInfo {
            waypoint_for: Some("workload".into()),
            inbound_binding: None,
        };
        let class_for = |class: &str| (class == "workloads").then_some(&workloads);
        let svc = |kv: &[(&str, &str)]| ServiceScope::of(Some(&labels(kv)), None);
        let ns = |kv: &[(&str, &str)]| NamespaceScope::of(Some(&labels(kv)), None);
        let of = |s: &ServiceScope, n: Option<&NamespaceScope>| {
            binding("shop", s, n)
                .filter(|b| b.resolve("shop", find, class_for).is_some())
                .map(|b| b.key())
        };
        let uw = "istio.io/use-waypoint";
        let uwn = "istio.io/use-waypoint-namespace";
        assert_eq!(
            of(&svc(&[(uw, "same")]), None).as_deref(),
            Some("shop/same")
        );
        assert_eq!(
            of(&svc(&[(uw, "missing")]), None),
            None,
            "not ready: direct"
        );
        assert_eq!(
            of(&svc(&[(uw, "workload")]), None),
            None,
            "no service traffic"
        );
        assert_eq!(
            of(&svc(&[(uw, "by-class")]), None),
            None,
            "its class takes workloads only"
        );
        assert_eq!(
            of(&svc(&[(uw, "all"), (uwn, "infra")]), None).as_deref(),
            Some("infra/all")
        );
        assert_eq!(
            of(&svc(&[(uw, "same"), (uwn, "infra")]), None),
            None,
            "no such Gateway in infra"
        );
        // Selector: the Service's namespace labels decide.
        let team = ns(&[("team", "a")]);
        let bound = svc(&[(uw, "team-a"), (uwn, "infra")]);
        assert_eq!(of(&bound, Some(&team)).as_deref(), Some("infra/team-a"));
        assert_eq!(of(&bound, Some(&ns(&[("team", "b")]))), None, "denied");
        assert_eq!(of(&bound, None), None, "unknown namespace: no labels");
        // The namespace binds its Services; a Service's `none` or own label wins.
        let ns_bound = ns(&[(uw, "same")]);
        assert_eq!(of(&svc(&[]), Some(&ns_bound)).as_deref(), Some("shop/same"));
        assert_eq!(of(&svc(&[(uw, "none")]), Some(&ns_bound)), None);
        assert_eq!(
            of(&svc(&[(uw, "all"), (uwn, "infra")]), Some(&ns_bound)).as_deref(),
            Some("infra/all")
        );
        assert_eq!(of(&svc(&[]), Some(&ns(&[(uw, "none")]))), None);
        let cross = ns(&[(uw, "team-a"), (uwn, "infra"), ("team", "a")]);
        assert_eq!(of(&svc(&[]), Some(&cross)).as_deref(), Some("infra/team-a"));
        // A waypoint's own Service never has one.
        let own = svc(&[
            (uw, "same"),
            ("gateway.istio.io/managed", "istio.io-mesh-controller"),
        ]);
        assert_eq!(of(&own, None), None);
    }

    /// istiod's `TestGetCanaryWeight` cases, and the sign `strconv.Atoi` takes.
    #[test]
    fn canary_weights_read_as_istiod_reads_them() {
        assert_eq!(canary_weight(None), Some(0), "absent is 0");
        for (raw, want) in [("0", 0), ("42", 42), ("100", 100), ("+7", 7), ("-0", 0)] {
            assert_eq!(canary_weight(Some(raw)), Some(want), "{raw}");
        }
        for raw in [
            "abc",
            "-1",
            "101",
            "",
            " 5",
            "5%",
            "0x10",
            "1e2",
            "99999999999999999999",
        ] {
            assert_eq!(canary_weight(Some(raw)), None, "{raw:?}");
        }
    }

    /// The canary comes from the object the waypoint came from: a Service naming its own
    /// waypoint ignores its Namespace's canary; one taking its Namespace's waypoint takes the
    /// Namespace's canary and weight, its own label and annotation first.
    #[test]
    fn the_canary_comes_from_where_the_waypoint_came_from() {
        let meta = |kv: &[(&str, &str)]| {
            let (anns, lbls): (Vec<_>, Vec<_>) =
                kv.iter().partition(|(k, _)| k.ends_with("-weight"));
            (labels(&lbls), labels(&anns))
        };
        let svc = |kv: &[(&str, &str)]| {
            let (l, a) = meta(kv);
            ServiceScope::of(Some(&l), Some(&a))
        };
        let ns = |kv: &[(&str, &str)]| {
            let (l, a) = meta(kv);
            NamespaceScope::of(Some(&l), Some(&a))
        };
        let of = |s: &ServiceScope, n: Option<&NamespaceScope>| {
            canary_binding("shop", s, n).map(|(b, w)| (b.key(), w.map(str::to_owned)))
        };
        let (uw, c, cn, w) = (
            "istio.io/use-waypoint",
            "istio.io/use-waypoint-canary",
            "istio.io/use-waypoint-canary-namespace",
            "istio.io/use-waypoint-canary-weight",
        );
        let own = svc(&[(uw, "wp"), (c, "wp2"), (w, "20")]);
        assert_eq!(of(&own, None), Some(("shop/wp2".into(), Some("20".into()))));
        assert_eq!(
            of(&svc(&[(c, "wp2")]), None),
            None,
            "no waypoint, no canary"
        );
        let ns_canary = ns(&[(uw, "wp"), (c, "ns-wp"), (cn, "infra"), (w, "30")]);
        assert_eq!(
            of(&svc(&[(uw, "own")]), Some(&ns_canary)),
            None,
            "its own waypoint: the namespace's canary is not its"
        );
        assert_eq!(
            of(&svc(&[]), Some(&ns_canary)),
            Some(("infra/ns-wp".into(), Some("30".into()))),
            "inherited with the waypoint"
        );
        assert_eq!(
            of(&svc(&[(c, "mine"), (w, "42")]), Some(&ns_canary)),
            Some(("shop/mine".into(), Some("42".into()))),
            "the object's label and weight first"
        );
        assert_eq!(
            of(&svc(&[(w, "42")]), Some(&ns_canary)),
            Some(("infra/ns-wp".into(), Some("42".into())))
        );
        assert_eq!(of(&svc(&[(c, "none")]), Some(&ns_canary)), None);
        assert_eq!(
            of(&svc(&[]), Some(&ns(&[(c, "ns-wp")]))),
            None,
            "a namespace canary without a namespace waypoint"
        );
        assert_eq!(of(&svc(&[(uw, "none"), (c, "x")]), Some(&ns_canary)), None);
    }
}
