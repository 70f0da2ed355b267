//! Kubernetes discovery, wired: [`KubeSource::start`] connects, starts the watches and the
//! rebuild task. Sources: Services, EndpointSlices, Pod and Namespace metadata (labels, and
//! the sidecar annotation; `ambient` says why) and, when their CRDs are served, Istio's
//! DestinationRules (subsets), PeerAuthentications (mTLS modes), WorkloadEntries and
//! ServiceEntries (VMs), and Gateway API Gateways and GatewayClasses (waypoints).
//!
//! One kube-runtime watcher per type (per namespace with `--namespace`) projects objects to
//! the routing fields as they arrive (`project`) and sends them to one task that owns the
//! model (`task`). That task rebuilds the route table at most every
//! [`MIN_REBUILD_INTERVAL`] and publishes it. The first table is published only after every
//! watch has listed once, and only then does the gateway report ready. Failed watches retry
//! as `retry` says (a 410 re-lists at once); meanwhile the last table keeps serving and
//! `gateway_discovery_route_table_stale_seconds` counts the seconds until every watch is
//! current again (`health`). The DestinationRule and Gateway CRDs may come and go (`crd`).
//!
//! One concern per file, imports flowing down this list (no cycles):
//! - `client`: kubeconfig and context loading, the reachability check, [`KubeError`];
//! - `overload`: the few request retries a 429/503/504 gets before the watch hears of it;
//! - `probe`: the watched `Kind`s and a cheap list per watch, which tells when a failing
//!   watch can work again (the design review put probes in `watch`; on their own they keep
//!   `watch` to the watch plumbing and under ~250 lines);
//! - `ambient`: Istio's rules for which endpoints are reached over HBONE (pure functions);
//! - `augment`: the labels istiod adds to an endpoint's before matching rules (pure
//!   functions);
//! - `waypoints`: Istio's rules for which waypoint a Service's tunnels go to (pure
//!   functions), and the loosely typed Gateway they read;
//! - `project`: objects reduced to routing fields; `cache`: a reflector store of them;
//! - `workload_entry`: WorkloadEntries as endpoints of the Services selecting them;
//!   `service_entry`: the ServiceEntries a gateway serves (pure functions);
//! - `retry`, `health`: what a failing watch does next, and when the table is stale;
//! - `watch`: `spawn_watches::<K>`, one generic helper for every watched type;
//! - `crd`: finding, watching and losing the optional CRDs (their detection and re-polling
//!   stay here rather than in `watch`: one file for a CRD's whole life);
//! - `dr_scope`: istiod's rules for which DestinationRules the gateway sees (pure functions);
//! - `peer_auth`: istiod's PeerAuthentication composition, for which sidecars take 15443
//!   (pure functions);
//! - `specs`: the model turned into route specs (a Service's endpoints in `specs::endpoints`,
//!   its waypoint in `specs::bindings`), and `entry_routes` the ServiceEntries' (each an
//!   `impl Model` of its own); `task`: the rebuild task.

mod ambient;
mod augment;
mod cache;
mod client;
mod crd;
mod dr_scope;
mod entry_routes;
mod health;
mod overload;
mod peer_auth;
mod probe;
mod project;
mod retry;
mod service_entry;
mod specs;
mod task;
mod watch;
mod waypoints;
mod workload_entry;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::PartialObjectMeta;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use client::KubeError;
pub use project::SERVICE_NAME_LABEL;
pub use task::MIN_REBUILD_INTERVAL;

use super::Publisher;
use crate::config::KubeOptions;
use client::client;
use crd::{Crd, CrdWatch};
use probe::{Kind, WatchedApi};
use specs::Model;
use task::ModelTask;
use watch::{Msg, Watches, apis, every, spawn_watches};

/// A running Kubernetes source. Its tasks stop when `stop` is cancelled.
pub struct KubeSource {
    synced: Arc<AtomicBool>,
}

impl KubeSource {
    /// Connects (failing on configuration errors or an unreachable server) and starts the
    /// watches. The table is published once every watch has listed.
    pub async fn start(
        opts: &KubeOptions,
        zone: Option<Arc<str>>,
        publisher: Publisher,
        stop: CancellationToken,
    ) -> Result<KubeSource, KubeError> {
        let client = client(opts).await?;
        // In a pod, its service account's namespace; else the kubeconfig context's.
        let gateway_namespace = client.default_namespace().to_string();
        let namespaces = opts.namespaces.clone();
        let streams = namespaces.len().max(1);
        let domain = opts.cluster_domain.clone();
        tracing::info!(
            namespaces = %namespaces_field(&namespaces),
            cluster_domain = %domain,
            gateway_namespace = %gateway_namespace,
            "watching Kubernetes Services, EndpointSlices, Pods and Namespaces"
        );
        let (tx, rx) = mpsc::channel(1024);
        let watches = Watches {
            tx,
            wake: Arc::default(),
            stop: stop.clone(),
        };
        let mut probes = Vec::new();
        let rule_ns = rule_namespaces(&namespaces, &opts.root_namespace, &gateway_namespace);
        let crds = Crd::ALL.map(|crd| CrdWatch {
            crd,
            client: client.clone(),
            namespaces: namespaces.clone(),
            rule_namespaces: rule_ns.clone(),
            domain: domain.clone(),
            recheck: opts.crd_recheck,
            watches: watches.clone(),
        });

        let mut model = Model::new(streams);
        model.watched_namespaces = namespaces.clone();
        model.cluster_id = opts.cluster_id.as_str().into();
        model.gateway_namespace = gateway_namespace.as_str().into();
        model.root_namespace = opts.root_namespace.as_str().into();
        model.node_name = opts.node_name.as_deref().map(Box::from);
        // The CRD checks come first (on the connection the reachability check opened), and
        // the first table waits for their watches, so a cluster with Istio never publishes a
        // table without its subsets or waypoints.
        for watch in &crds {
            let served = crd::served(&client, watch.crd).await;
            let forbidden = match &served {
                Some(ar) => watch.forbidden(ar).await,
                None => None,
            };
            if let Some(e) = forbidden {
                crd::warn_forbidden(watch.crd.kind(), &e);
                if let Some(flag) = model.forbidden_flag(watch.crd) {
                    *flag = true;
                }
                tokio::spawn(watch.clone().poll(0, true));
                continue;
            }
            match served {
                Some(ar) => {
                    let p = watch.start(&ar, 0).await;
                    model.crd_started(watch.crd, p.len());
                    probes.extend(p);
                }
                None => {
                    tracing::info!(
                        resource = watch.crd.kind().resource(),
                        recheck = ?opts.crd_recheck,
                        "CRD not served: {}",
                        watch.crd.without()
                    );
                    tokio::spawn(watch.clone().poll(0, false));
                }
            }
        }
        let services = apis::<Service>(&client, &namespaces);
        probes.extend(probe::probes(&services, WatchedApi::Service));
        spawn_watches(
            &watches,
            Kind::Service,
            (0, every(&services)),
            project::project_service,
            Msg::Service,
            None,
        );
        let slices = apis::<EndpointSlice>(&client, &namespaces);
        probes.extend(probe::probes(&slices, WatchedApi::EndpointSlice));
        let slices = every(&slices);
        let interner = project::Interner::default();
        let slice_interner = interner.clone();
        spawn_watches(
            &watches,
            Kind::EndpointSlice,
            (0, slices),
            move |s: &EndpointSlice| project::project_slice(s, &slice_interner),
            Msg::Slice,
            None,
        );
        let pods = apis::<PartialObjectMeta<Pod>>(&client, &namespaces);
        probes.extend(probe::probes(&pods, WatchedApi::Pod));
        spawn_watches(
            &watches,
            Kind::Pod,
            (0, every(&pods)),
            move |p: &PartialObjectMeta<Pod>| project::project_pod(p, &interner),
            Msg::Pod,
            None,
        );
        let namespace_watches = watch::namespace_watches(&client, &namespaces);
        let apis: Vec<_> = namespace_watches.iter().map(|(a, _)| a.clone()).collect();
        probes.extend(probe::probes(&apis, WatchedApi::Namespace));
        spawn_watches(
            &watches,
            Kind::Namespace,
            (0, namespace_watches),
            project::project_namespace,
            Msg::Namespace,
            None,
        );
        drop(watches);

        let locality = task::Locality {
            zone,
            pod_ip: opts.pod_ip,
        };
        let task = ModelTask::new(model, domain, locality, publisher, probes, crds);
        let synced = task.synced();
        tokio::spawn(task.run(rx, stop));
        Ok(KubeSource { synced })
    }

    /// True once the first full table has been published.
    pub fn synced(&self) -> Arc<AtomicBool> {
        self.synced.clone()
    }
}

/// Where Istio's rules are watched: every namespace, or with `--namespace` those and the
/// root and the gateway's own namespace, where istiod reads a gateway's rules whatever
/// services it routes (mesh-wide PeerAuthentications, root and gateway DestinationRules).
fn rule_namespaces(namespaces: &[String], root: &str, gateway: &str) -> Vec<String> {
    let mut out = namespaces.to_vec();
    if !out.is_empty() {
        for ns in [root, gateway] {
            if !out.iter().any(|n| n == ns) {
                out.push(ns.to_string());
            }
        }
    }
    out
}

/// The watched namespaces as a plain log value, as `--namespace` takes them: `shop,web`, or
/// `*` for every namespace (none given). Not `all`: that is a valid namespace name.
fn namespaces_field(namespaces: &[String]) -> String {
    if namespaces.is_empty() {
        "*".into()
    } else {
        namespaces.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::{namespaces_field, rule_namespaces};

    #[test]
    fn rules_are_also_read_in_the_root_and_the_gateways_namespace() {
        assert!(rule_namespaces(&[], "istio-system", "gw").is_empty());
        let shop = ["shop".to_string()];
        assert_eq!(
            rule_namespaces(&shop, "istio-system", "gw"),
            ["shop", "istio-system", "gw"]
        );
        let both = ["istio-system".to_string(), "shop".to_string()];
        assert_eq!(
            rule_namespaces(&both, "istio-system", "istio-system"),
            ["istio-system", "shop"]
        );
    }

    #[test]
    fn the_namespaces_field_is_a_plain_list() {
        assert_eq!(namespaces_field(&[]), "*");
        assert_eq!(namespaces_field(&["shop".into()]), "shop");
        assert_eq!(namespaces_field(&["shop".into(), "all".into()]), "shop,all");
    }
}
