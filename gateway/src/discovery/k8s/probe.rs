//! Probes: a cheap `list?limit=1`, then the start of a watch, on a failing watch's type tell
//! when it can work again. The watch counts as much as the list: a Role may grant `list`
//! without `watch`, and a watch that fails after each list that works would never recover.
//!
//! [`Kind`] names the watched types, and [`WatchedApi`] holds a typed `Api` for each, so a
//! probe is plain data: the task matches on the type instead of calling a boxed closure.

use std::fmt::Debug;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;
use kube::api::{Api, DynamicObject, ListParams, WatchParams};
use kube::core::PartialObjectMeta;
use serde::de::DeserializeOwned;

use super::client::REACH_TIMEOUT;
use super::crd::Crd;
use super::waypoints::{GatewayClassObject, GatewayObject};

/// A watched type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum Kind {
    Service,
    EndpointSlice,
    Pod,
    Namespace,
    DestinationRule,
    PeerAuthentication,
    Gateway,
    GatewayClass,
    WorkloadEntry,
    ServiceEntry,
}

impl Kind {
    /// The resource as RBAC names it.
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices.discovery.k8s.io",
            Kind::Pod => "pods",
            Kind::Namespace => "namespaces",
            Kind::DestinationRule => "destinationrules.networking.istio.io",
            Kind::PeerAuthentication => "peerauthentications.security.istio.io",
            Kind::Gateway => "gateways.gateway.networking.k8s.io",
            Kind::GatewayClass => "gatewayclasses.gateway.networking.k8s.io",
            Kind::WorkloadEntry => "workloadentries.networking.istio.io",
            Kind::ServiceEntry => "serviceentries.networking.istio.io",
        }
    }

    /// What the table lacks while an optional type may not be read.
    pub fn unreadable(self) -> &'static str {
        match self {
            Kind::Gateway => Crd::Gateway.unreadable(),
            Kind::GatewayClass => Crd::GatewayClass.unreadable(),
            Kind::PeerAuthentication => Crd::PeerAuthentication.unreadable(),
            Kind::WorkloadEntry => Crd::WorkloadEntry.unreadable(),
            Kind::ServiceEntry => Crd::ServiceEntry.unreadable(),
            _ => Crd::DestinationRule.unreadable(),
        }
    }
}

/// The `Api` of one watch (one type, in one namespace or in all).
#[derive(Clone)]
pub(super) enum WatchedApi {
    Service(Api<Service>),
    EndpointSlice(Api<EndpointSlice>),
    Pod(Api<PartialObjectMeta<Pod>>),
    Namespace(Api<PartialObjectMeta<Namespace>>),
    /// A type known at run time (Istio's): which one it is.
    Dynamic(Kind, Api<DynamicObject>),
    Gateway(Api<GatewayObject>),
    GatewayClass(Api<GatewayClassObject>),
}

impl WatchedApi {
    pub fn kind(&self) -> Kind {
        match self {
            WatchedApi::Service(_) => Kind::Service,
            WatchedApi::EndpointSlice(_) => Kind::EndpointSlice,
            WatchedApi::Pod(_) => Kind::Pod,
            WatchedApi::Namespace(_) => Kind::Namespace,
            WatchedApi::Dynamic(kind, _) => *kind,
            WatchedApi::Gateway(_) => Kind::Gateway,
            WatchedApi::GatewayClass(_) => Kind::GatewayClass,
        }
    }
}

/// The probe of watch number `stream` of its type.
#[derive(Clone)]
pub(super) struct Probe {
    pub stream: usize,
    api: WatchedApi,
}

impl Probe {
    /// The probe of watch number `stream` of `api`'s type.
    pub fn new(stream: usize, api: WatchedApi) -> Probe {
        Probe { stream, api }
    }

    pub fn kind(&self) -> Kind {
        self.api.kind()
    }

    /// Whether the API server answers [`list_and_watch`] for this watch's type.
    pub async fn answers(&self) -> bool {
        self.read().await.is_ok()
    }

    /// [`list_and_watch`] of this watch's type.
    pub async fn read(&self) -> Result<(), Option<kube::Error>> {
        match &self.api {
            WatchedApi::Service(api) => list_and_watch(api).await,
            WatchedApi::EndpointSlice(api) => list_and_watch(api).await,
            WatchedApi::Pod(api) => list_and_watch(api).await,
            WatchedApi::Namespace(api) => list_and_watch(api).await,
            WatchedApi::Dynamic(_, api) => list_and_watch(api).await,
            WatchedApi::Gateway(api) => list_and_watch(api).await,
            WatchedApi::GatewayClass(api) => list_and_watch(api).await,
        }
    }
}

/// One probe per watch, numbered as the watches are; `watched` names the type of the `Api`s
/// (`WatchedApi::Service`, or `|api| WatchedApi::Dynamic(kind, api)` for one known at run time).
pub(super) fn probes<A: Clone>(apis: &[A], watched: impl Fn(A) -> WatchedApi) -> Vec<Probe> {
    apis.iter()
        .enumerate()
        .map(|(stream, api)| Probe::new(stream, watched(api.clone())))
        .collect()
}

/// Lists one item of `api`'s type, then starts a watch from that list's resourceVersion and
/// lets it go once the API server has accepted it (its headers came; a 403 comes before
/// them), all within [`REACH_TIMEOUT`]: `Err(None)` when the API server did not answer in
/// time, `Err(Some(_))` with its error otherwise.
pub(super) async fn list_and_watch<K>(api: &Api<K>) -> Result<(), Option<kube::Error>>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let read = async {
        let list = api.list_metadata(&ListParams::default().limit(1)).await?;
        // "0" (any version, from the server's cache) should a server give none: an empty
        // one would start the watch with every object of the type.
        let version = list
            .metadata
            .resource_version
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "0".into());
        // The server ends it after a second should the connection outlive the drop.
        let wp = WatchParams::default().timeout(1);
        api.watch_metadata(&wp, &version).await.map(drop)
    };
    match tokio::time::timeout(REACH_TIMEOUT, read).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Some(e)),
        Err(_) => Err(None),
    }
}

/// Whether `e` is the API server's 403 Forbidden.
pub(super) fn is_forbidden(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 403)
}
