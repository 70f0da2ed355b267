//! Probes: a cheap `list?limit=1` on a failing watch's type tells when it can work again.
//!
//! [`Kind`] names the watched types, and [`WatchedApi`] holds a typed `Api` for each, so a
//! probe is plain data: the task matches on the type instead of calling a boxed closure.

use std::fmt::Debug;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;
use kube::api::{Api, DynamicObject, ListParams};
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
        }
    }

    /// What the table lacks while an optional type may not be read.
    pub fn unreadable(self) -> &'static str {
        match self {
            Kind::Gateway => Crd::Gateway.unreadable(),
            Kind::GatewayClass => Crd::GatewayClass.unreadable(),
            Kind::PeerAuthentication => Crd::PeerAuthentication.unreadable(),
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
    /// A type known at run time (DestinationRules, PeerAuthentications): which one it is.
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
    pub fn kind(&self) -> Kind {
        self.api.kind()
    }

    /// Whether the API server answers a one-item list of this watch's type within
    /// [`REACH_TIMEOUT`].
    pub async fn answers(&self) -> bool {
        match &self.api {
            WatchedApi::Service(api) => lists(api).await,
            WatchedApi::EndpointSlice(api) => lists(api).await,
            WatchedApi::Pod(api) => lists(api).await,
            WatchedApi::Namespace(api) => lists(api).await,
            WatchedApi::Dynamic(_, api) => lists(api).await,
            WatchedApi::Gateway(api) => lists(api).await,
            WatchedApi::GatewayClass(api) => lists(api).await,
        }
    }
}

/// One probe per watch, numbered as the watches are; `watched` names the type of the `Api`s
/// (`WatchedApi::Service`, or `|api| WatchedApi::Dynamic(kind, api)` for one known at run time).
pub(super) fn probes<A: Clone>(apis: &[A], watched: impl Fn(A) -> WatchedApi) -> Vec<Probe> {
    apis.iter()
        .enumerate()
        .map(|(stream, api)| Probe {
            stream,
            api: watched(api.clone()),
        })
        .collect()
}

/// Lists one item of `api`'s type: `Err(None)` when the API server did not answer within
/// [`REACH_TIMEOUT`], `Err(Some(_))` with its error otherwise.
pub(super) async fn list_one<K>(api: &Api<K>) -> Result<(), Option<kube::Error>>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let lp = ListParams::default().limit(1);
    match tokio::time::timeout(REACH_TIMEOUT, api.list_metadata(&lp)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(Some(e)),
        Err(_) => Err(None),
    }
}

async fn lists<K>(api: &Api<K>) -> bool
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    list_one(api).await.is_ok()
}
