//! Waypoint bindings judged on the model: the waypoint (and canary) a global Service's
//! tunnels go to, and why the gateway cannot see one (`--namespace`, a 403 on Gateways or
//! GatewayClasses), for routing and for the log.

use std::collections::HashMap;
use std::net::IpAddr;

use super::{Model, namespace_key, service_host};
use crate::discovery::k8s::ambient::{self, NamespaceScope};
use crate::discovery::k8s::project::SvcInfo;
use crate::discovery::k8s::waypoints::{self, WaypointAddress, WaypointInfo};
use crate::routes::Canary;

/// Why a waypoint cannot be seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Blind {
    /// Its namespace is not among `--namespace`.
    NotWatched,
    /// The gateway may not read Gateways (403).
    Forbidden,
    /// Its listeners' rules refuse the Service's namespace, but its GatewayClass, which
    /// may not be read (403), could name another listener that allows it.
    ClassForbidden,
}

/// Why a Service's canary waypoint takes none of its tunnels; all of them then go to its
/// waypoint, as istiod falls back (and reports on the Service's `istio.io/WaypointBound`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CanaryUnused {
    /// The weight annotation is not a whole number from 0 to 100 (`CanaryInvalidWeight`).
    InvalidWeight(Box<str>),
    /// It names the waypoint itself (`CanarySameAsPrimary`).
    SameAsPrimary,
    /// No such Gateway is ready, or it does not take this Service (its listeners' rules, or
    /// its `istio.io/waypoint-for`).
    NotUsable,
    /// The gateway cannot see it.
    Unseen(Blind),
}

impl Model {
    /// The host of the waypoint a global Service's tunnels go to, if it has one, and what
    /// becomes of its canary. `by_ip` maps cluster IPs to hosts, for a waypoint whose status
    /// gives only an IP.
    pub(super) fn waypoints_of(
        &self,
        ns: &str,
        svc: &SvcInfo,
        namespace: Option<&NamespaceScope>,
        by_ip: &HashMap<IpAddr, String>,
    ) -> Option<(String, Result<Option<Canary>, CanaryUnused>)> {
        let b = waypoints::binding(ns, &svc.scope, namespace)?;
        // Without a usable address the tunnels have nowhere to go: `ns/name` is no route's
        // host, so they are answered 503, and `/debug/routes` shows which waypoint it is.
        // So too for a waypoint the gateway cannot judge: sending the tunnels around it
        // would skip its policy.
        if self.blind_to(ns, &b).is_some() {
            return Some((b.key(), Ok(None)));
        }
        let w = self.resolve(ns, &b)?;
        let Some(host) = host_of(w, by_ip) else {
            return Some((b.key(), Ok(None)));
        };
        let canary = self.canary_of(ns, svc, namespace, &b, by_ip);
        Some((host, canary))
    }

    /// The canary of a Service in `ns` whose waypoint binding `primary` resolved: `Ok(None)`
    /// when none is named or its weight is 0.
    fn canary_of(
        &self,
        ns: &str,
        svc: &SvcInfo,
        namespace: Option<&NamespaceScope>,
        primary: &waypoints::Binding,
        by_ip: &HashMap<IpAddr, String>,
    ) -> Result<Option<Canary>, CanaryUnused> {
        let Some((b, raw)) = waypoints::canary_binding(ns, &svc.scope, namespace) else {
            return Ok(None);
        };
        let weight = waypoints::canary_weight(raw)
            .ok_or_else(|| CanaryUnused::InvalidWeight(raw.unwrap_or_default().into()))?;
        if (b.namespace, b.name) == (primary.namespace, primary.name) {
            return Err(CanaryUnused::SameAsPrimary);
        }
        if let Some(why) = self.blind_to(ns, &b) {
            return Err(CanaryUnused::Unseen(why));
        }
        let w = self.resolve(ns, &b).ok_or(CanaryUnused::NotUsable)?;
        let host = host_of(w, by_ip).ok_or(CanaryUnused::NotUsable)?;
        Ok((weight > 0).then(|| Canary {
            host: host.into(),
            weight,
        }))
    }

    /// Cluster IPs to Service hosts, when some waypoint's status gives only an IP.
    pub(super) fn hosts_by_ip(&self, domain: &str) -> HashMap<IpAddr, String> {
        match &self.waypoints {
            Some(w)
                if w.iter()
                    .any(|(_, w)| matches!(w.address, Some(WaypointAddress::Ip(_)))) =>
            {
                let services = self.services.iter();
                services
                    .flat_map(|((ns, name), s)| {
                        let host = service_host(name, ns, domain);
                        s.cluster_ips.iter().map(move |ip| (*ip, host.clone()))
                    })
                    .collect()
            }
            _ => HashMap::new(),
        }
    }

    /// The global Services whose canary waypoint takes none of their tunnels, as `(service
    /// host, canary namespace/name, why)`, for the log.
    pub fn unused_canaries(&self, domain: &str) -> Vec<(String, String, CanaryUnused)> {
        let mut out = Vec::new();
        let named = |c: &ambient::CanaryLabels| c != &ambient::CanaryLabels::default();
        let any = self.services.iter().any(|(_, s)| named(&s.scope.canary))
            || self.namespaces.iter().any(|(_, n)| named(&n.canary));
        if !any {
            return out;
        }
        let by_ip = self.hosts_by_ip(domain);
        for ((ns, name), svc) in self.services.iter() {
            if !svc.scope.global || svc.ports.is_empty() {
                continue;
            }
            let namespace = self.namespaces.get(&namespace_key(ns));
            let Some((_, Err(why))) = self.waypoints_of(ns, svc, namespace, &by_ip) else {
                continue;
            };
            let Some((canary, _)) = waypoints::canary_binding(ns, &svc.scope, namespace) else {
                continue;
            };
            let host = service_host(name, ns, domain);
            out.push((host, canary.key(), why));
        }
        out.sort();
        out
    }

    /// The ready waypoint (Gateway) `ns/name`, if any.
    fn waypoint(&self, ns: &str, name: &str) -> Option<&WaypointInfo> {
        self.waypoints.as_ref()?.get(&(ns.into(), name.into()))
    }

    /// GatewayClasses may exist but not be read (403): their defaults are unknown.
    fn classes_unread(&self) -> bool {
        self.gateway_classes.is_none() && self.gateway_classes_forbidden
    }

    /// The ready waypoint binding `b` of a Service in `ns` names, if it takes it.
    fn resolve(&self, ns: &str, b: &waypoints::Binding) -> Option<&WaypointInfo> {
        let class_of = |class: &str| {
            let classes = self.gateway_classes.as_ref()?;
            classes.get(&("".into(), class.into()))
        };
        b.resolve(ns, |n, name| self.waypoint(n, name), class_of)
    }

    /// Why the gateway cannot judge binding `b` of a Service in `ns`, if it cannot. Without
    /// the Gateway CRD there are no waypoints to judge.
    fn blind_to(&self, ns: &str, b: &waypoints::Binding) -> Option<Blind> {
        if self.waypoints.is_none() {
            return self.gateways_forbidden.then_some(Blind::Forbidden);
        }
        let watched = self.watched_namespaces.is_empty()
            || self.watched_namespaces.iter().any(|w| w == b.namespace);
        if !watched {
            return Some(Blind::NotWatched);
        }
        let might = || {
            self.resolve(ns, b).is_none()
                && b.class_might_allow(ns, |n, name| self.waypoint(n, name))
        };
        (self.classes_unread() && might()).then_some(Blind::ClassForbidden)
    }

    /// The global Services bound to a waypoint the gateway cannot see, as `(service host,
    /// waypoint namespace/name, why)`: their tunnels are refused, and the log says why.
    pub fn unseen_waypoints(&self, domain: &str) -> Vec<(String, String, Blind)> {
        let mut out = Vec::new();
        let may_be_blind = match &self.waypoints {
            None => self.gateways_forbidden,
            Some(_) => !self.watched_namespaces.is_empty() || self.classes_unread(),
        };
        if !may_be_blind {
            return out;
        }
        for ((ns, name), svc) in self.services.iter() {
            if !svc.scope.global || svc.ports.is_empty() {
                continue;
            }
            let namespace = self.namespaces.get(&namespace_key(ns));
            let Some(b) = waypoints::binding(ns, &svc.scope, namespace) else {
                continue;
            };
            if let Some(why) = self.blind_to(ns, &b) {
                let host = service_host(name, ns, domain);
                out.push((host, b.key(), why));
            }
        }
        out.sort();
        out
    }
}

/// The host a waypoint is reached at: its hostname, or the Service with its cluster IP.
fn host_of(w: &WaypointInfo, by_ip: &HashMap<IpAddr, String>) -> Option<String> {
    match &w.address {
        Some(WaypointAddress::Hostname(h)) => Some(h.clone()),
        Some(WaypointAddress::Ip(ip)) => by_ip.get(ip).cloned(),
        None => None,
    }
}
