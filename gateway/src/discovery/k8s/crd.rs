//! The life of an optional watched type, served only while its CRD is installed: Istio's
//! DestinationRules (subsets) and PeerAuthentications (which sidecars take 15443), and Gateway
//! API Gateways (waypoints) and GatewayClasses (their default traffic type), and Istio's
//! WorkloadEntries and ServiceEntries (VMs). Each is found at start or
//! by polling every `--crd-recheck` interval, watched while served, and let go when its CRD
//! is deleted (its watch gets 404) or it may not be read (403): what it gave the table goes,
//! staleness is not affected, and polling starts again. A type is started only while the
//! gateway may both list and watch it: a Role that grants `list` alone would otherwise let
//! what the type gives come with each start and go with its watch's 403, every recheck.
//!
//! Each time a type is (re)started its watches get a new generation, so messages from the
//! watches of a deleted CRD can never touch the model of its successor.

use std::time::Duration;

use futures::StreamExt;

use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject};

use super::client::{REACH_TIMEOUT, error_chain};
use super::peer_auth;
use super::probe::{Kind, Probe, WatchedApi, is_forbidden, list_and_watch, probes};
use super::project;
use super::watch::{self, Msg, Watches, apis, dyn_apis, spawn_watches};
use super::waypoints::{GatewayClassObject, GatewayObject, project_gateway, project_gateway_class};
use super::{service_entry, workload_entry};

/// An optional type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Crd {
    DestinationRule,
    PeerAuthentication,
    Gateway,
    GatewayClass,
    WorkloadEntry,
    ServiceEntry,
}

impl Crd {
    pub const ALL: [Crd; 6] = [
        Crd::DestinationRule,
        Crd::PeerAuthentication,
        Crd::Gateway,
        Crd::GatewayClass,
        Crd::WorkloadEntry,
        Crd::ServiceEntry,
    ];

    pub fn kind(self) -> Kind {
        match self {
            Crd::DestinationRule => Kind::DestinationRule,
            Crd::PeerAuthentication => Kind::PeerAuthentication,
            Crd::Gateway => Kind::Gateway,
            Crd::GatewayClass => Kind::GatewayClass,
            Crd::WorkloadEntry => Kind::WorkloadEntry,
            Crd::ServiceEntry => Kind::ServiceEntry,
        }
    }

    fn group(self) -> &'static str {
        match self {
            Crd::DestinationRule | Crd::WorkloadEntry | Crd::ServiceEntry => "networking.istio.io",
            Crd::PeerAuthentication => "security.istio.io",
            Crd::Gateway | Crd::GatewayClass => "gateway.networking.k8s.io",
        }
    }

    /// What the table lacks while the type may not be read: as [`Crd::without`], except
    /// for Gateways and GatewayClasses, which may exist unseen. A Service whose waypoint
    /// cannot be judged is then refused rather than sent around it (its policy would be
    /// skipped).
    pub fn unreadable(self) -> &'static str {
        match self {
            Crd::Gateway => {
                "waypoints cannot be seen: tunnels to services bound to one are refused (503) rather than sent around it"
            }
            Crd::GatewayClass => {
                "waypoints take Service traffic unless their own istio.io/waypoint-for says otherwise, and a class's inbound binding is not read: a service whose waypoint's listeners refuse it, which its class could allow, is refused (503) rather than sent around it"
            }
            Crd::PeerAuthentication => {
                "PeerAuthentications cannot be seen: a sidecar whose mTLS one disables still takes 15443 connections, which it then cannot accept"
            }
            Crd::DestinationRule => self.without(),
            Crd::WorkloadEntry => {
                "WorkloadEntries cannot be seen: Services that select VMs are served by their pods only"
            }
            Crd::ServiceEntry => {
                "ServiceEntries cannot be seen: their hosts are refused as no_route"
            }
        }
    }

    /// What the type's watches are for, as their start is logged.
    fn watched_for(self) -> &'static str {
        match self {
            Crd::DestinationRule => "DestinationRules for subsets",
            Crd::PeerAuthentication => "PeerAuthentications for mTLS modes",
            Crd::Gateway => "Gateways (gateway.networking.k8s.io/v1) for waypoints",
            Crd::GatewayClass => "GatewayClasses for their waypoints' traffic type",
            Crd::WorkloadEntry => "WorkloadEntries for the Services that select them",
            Crd::ServiceEntry => "ServiceEntries (MESH_INTERNAL, STATIC or NONE) for their hosts",
        }
    }

    /// What the table lacks while the type is not served.
    pub fn without(self) -> &'static str {
        match self {
            Crd::DestinationRule => "only the empty subset routes",
            Crd::PeerAuthentication => "no PeerAuthentication disables a sidecar's mTLS",
            Crd::Gateway => {
                "no waypoints: tunnels to services bound to one go straight to their endpoints"
            }
            Crd::GatewayClass => {
                "waypoints take Service traffic unless their own istio.io/waypoint-for says otherwise (a class's label is not read)"
            }
            Crd::WorkloadEntry => "Services are served by their pods only",
            Crd::ServiceEntry => "no ServiceEntry host is routed",
        }
    }
}

/// Why an optional type's watches ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gone {
    /// 404: its CRD is not served (deleted).
    NotServed,
    /// 403: the gateway may not read it.
    Forbidden,
}

impl Gone {
    /// What the table lacks meanwhile.
    pub fn lacks(self, crd: Crd) -> &'static str {
        match self {
            Gone::NotServed => crd.without(),
            Gone::Forbidden => crd.unreadable(),
        }
    }
}

/// Whether an optional type is served.
pub(super) enum Served {
    Yes(ApiResource),
    /// Its CRD is not installed (or serves no version read here).
    No,
    /// The API server did not say (a timeout or another error).
    Unknown,
}

impl Served {
    fn resource(self) -> Option<ApiResource> {
        match self {
            Served::Yes(ar) => Some(ar),
            Served::No | Served::Unknown => None,
        }
    }
}

/// The served resource of `crd`, as [`served_or_why`], or `None` without it.
pub(super) async fn served(client: &Client, crd: Crd) -> Option<ApiResource> {
    served_or_why(client, crd).await.resource()
}

/// Whether `crd` is served, and its resource when it is. DestinationRules and
/// PeerAuthentications are read in the preferred version; Gateways and GatewayClasses in `v1`
/// (Gateway API v1.0 and later), which [`GatewayObject`] and [`GatewayClassObject`] are.
pub(super) async fn served_or_why(client: &Client, crd: Crd) -> Served {
    let group = match tokio::time::timeout(
        REACH_TIMEOUT,
        kube::discovery::group(client, crd.group()),
    )
    .await
    {
        Ok(Ok(g)) => g,
        Ok(Err(kube::Error::Discovery(_))) => return Served::No,
        Ok(Err(kube::Error::Api(s))) if s.code == 404 => return Served::No,
        Ok(Err(e)) => {
            tracing::warn!(?crd, error = %error_chain(&e), "checking for the CRD failed; will retry");
            return Served::Unknown;
        }
        Err(_) => return Served::Unknown,
    };
    let found = match crd {
        Crd::DestinationRule => group.recommended_kind("DestinationRule").map(|(ar, _)| ar),
        Crd::PeerAuthentication => group
            .recommended_kind("PeerAuthentication")
            .map(|(ar, _)| ar),
        Crd::WorkloadEntry => group.recommended_kind("WorkloadEntry").map(|(ar, _)| ar),
        Crd::ServiceEntry => group.recommended_kind("ServiceEntry").map(|(ar, _)| ar),
        Crd::Gateway | Crd::GatewayClass => {
            let kind = if crd == Crd::Gateway {
                "Gateway"
            } else {
                "GatewayClass"
            };
            group
                .versioned_resources("v1")
                .into_iter()
                .find(|(ar, _)| ar.kind == kind)
                .map(|(ar, _)| ar)
        }
    };
    found.map_or(Served::No, Served::Yes)
}

/// What starting and polling for one optional type needs.
#[derive(Clone)]
pub(super) struct CrdWatch {
    pub crd: Crd,
    pub client: Client,
    pub namespaces: Vec<String>,
    /// Where Istio's rules (DestinationRules, PeerAuthentications) are watched: `namespaces`
    /// and, when those are limited, the root and the gateway's own namespace too.
    pub rule_namespaces: Vec<String>,
    pub domain: String,
    pub recheck: Duration,
    pub watches: Watches,
}

impl CrdWatch {
    /// The 403 of the first of the type's watches outside the added rule namespaces (those
    /// in `--namespace`, or the one of all) that the gateway may not list and watch, if any.
    pub async fn forbidden(&self, ar: &ApiResource) -> Option<kube::Error> {
        let probes = self.probes(ar, &self.namespaces);
        // A few at a time, in order: each probe's watch, let go unread, costs its connection.
        let mut reads = futures::stream::iter(probes)
            .map(|p| async move { p.read().await })
            .buffered(4);
        while let Some(read) = reads.next().await {
            if let Err(Some(e)) = read
                && is_forbidden(&e)
            {
                return Some(e);
            }
        }
        None
    }

    /// The probes of the type's watches: Istio's rules in `rule_namespaces`, Gateways,
    /// WorkloadEntries and ServiceEntries in `--namespace`, GatewayClasses cluster-wide (one watch of every class,
    /// whatever `--namespace` says).
    fn probes(&self, ar: &ApiResource, rule_namespaces: &[String]) -> Vec<Probe> {
        let client = &self.client;
        match self.crd {
            Crd::DestinationRule | Crd::PeerAuthentication => {
                let kind = self.crd.kind();
                probes(&dyn_apis(client, rule_namespaces, ar), |api| {
                    WatchedApi::Dynamic(kind, api)
                })
            }
            Crd::WorkloadEntry | Crd::ServiceEntry => {
                let kind = self.crd.kind();
                probes(&dyn_apis(client, &self.namespaces, ar), |api| {
                    WatchedApi::Dynamic(kind, api)
                })
            }
            Crd::Gateway => probes(
                &apis::<GatewayObject>(client, &self.namespaces),
                WatchedApi::Gateway,
            ),
            Crd::GatewayClass => probes(
                &[Api::<GatewayClassObject>::all(client.clone())],
                WatchedApi::GatewayClass,
            ),
        }
    }

    /// Starts generation `generation` of the type's watches; returns their probes.
    pub async fn start(&self, ar: &ApiResource, generation: u64) -> Vec<Probe> {
        let (probes, spawn) = self.prepare(ar, generation).await;
        spawn();
        probes
    }

    /// Where Istio's rules of type `ar` are watched: [`CrdWatch::rule_namespaces`], less the
    /// namespaces added to `--namespace` that the gateway may not list and watch (a
    /// per-namespace Role that leaves them out), which come second. A 403 on any watch of a type stops all of
    /// them, so one such namespace would cost every rule; it is left out instead, named with
    /// its grant, until [`CrdWatch::widen`] finds it readable.
    async fn readable_rule_namespaces(&self, ar: &ApiResource) -> (Vec<String>, Vec<String>) {
        let mut out = self.namespaces.clone();
        let mut left_out = Vec::new();
        let added = self
            .rule_namespaces
            .iter()
            .filter(|n| !self.namespaces.contains(n));
        for ns in added {
            match self.read_rules_in(ns, ar).await.1 {
                Err(Some(e)) if is_forbidden(&e) => {
                    tracing::warn!(
                        namespace = %ns,
                        resource = self.crd.kind().resource(),
                        recheck = ?self.recheck,
                        "the gateway may not list or watch {} in namespace {ns} (403 Forbidden), where istiod reads rules for every proxy: they are not seen; grant list and watch on them there (checked again every recheck)",
                        self.crd.kind().resource()
                    );
                    left_out.push(ns.clone());
                }
                _ => out.push(ns.clone()),
            }
        }
        (out, left_out)
    }

    /// The `Api` of the rules of type `ar` in namespace `ns`, and whether the gateway may list
    /// and watch them there.
    async fn read_rules_in(
        &self,
        ns: &str,
        ar: &ApiResource,
    ) -> (Api<DynamicObject>, Result<(), Option<kube::Error>>) {
        let api = Api::namespaced_with(self.client.clone(), ns, ar);
        let read = list_and_watch(&api).await;
        (api, read)
    }

    /// The probes of the watches, and what starts them.
    async fn prepare(
        &self,
        ar: &ApiResource,
        generation: u64,
    ) -> (Vec<Probe>, impl FnOnce() + use<>) {
        let gone = Some((self.crd, generation));
        // The generation's own stop: a 404 or 403 on any of its watches ends all of them.
        let watches = Watches {
            stop: self.watches.stop.child_token(),
            ..self.watches.clone()
        };
        let (client, namespaces) = (self.client.clone(), self.namespaces.clone());
        let (rule_namespaces, left_out) = match self.crd {
            Crd::DestinationRule | Crd::PeerAuthentication => {
                self.readable_rule_namespaces(ar).await
            }
            Crd::Gateway | Crd::GatewayClass | Crd::WorkloadEntry | Crd::ServiceEntry => {
                (Vec::new(), Vec::new())
            }
        };
        let probes = self.probes(ar, &rule_namespaces);
        let (crd, domain, ar) = (self.crd, self.domain.clone(), ar.clone());
        let widen = (!left_out.is_empty()).then(|| {
            let this = CrdWatch {
                watches: watches.clone(),
                ..self.clone()
            };
            this.widen(ar.clone(), generation, left_out, probes.len())
        });
        let spawn = move || {
            match crd {
                Crd::DestinationRule | Crd::PeerAuthentication => {
                    let namespaces = super::namespaces_field(&rule_namespaces);
                    tracing::info!(version = %ar.version, %namespaces, "watching {}", crd.watched_for());
                    let rules = (0, watch::every(&dyn_apis(&client, &rule_namespaces, &ar)));
                    spawn_istio_watches(&watches, crd, generation, &domain, rules);
                }
                Crd::WorkloadEntry | Crd::ServiceEntry => {
                    tracing::info!(version = %ar.version, "watching {}", crd.watched_for());
                    let entries = (0, watch::every(&dyn_apis(&client, &namespaces, &ar)));
                    spawn_istio_watches(&watches, crd, generation, &domain, entries);
                }
                Crd::Gateway => {
                    tracing::info!("watching {}", crd.watched_for());
                    spawn_watches(
                        &watches,
                        crd.kind(),
                        (
                            0,
                            watch::every(&apis::<GatewayObject>(&client, &namespaces)),
                        ),
                        project_gateway,
                        move |stream, update| Msg::Waypoint(generation, stream, update),
                        gone,
                    );
                }
                Crd::GatewayClass => {
                    tracing::info!("watching {}", crd.watched_for());
                    spawn_watches(
                        &watches,
                        crd.kind(),
                        (
                            0,
                            watch::every(&[Api::<GatewayClassObject>::all(client.clone())]),
                        ),
                        project_gateway_class,
                        move |stream, update| Msg::GatewayClass(generation, stream, update),
                        gone,
                    );
                }
            }
            if let Some(widen) = widen {
                tokio::spawn(widen);
            }
        };
        (probes, spawn)
    }

    /// Every `recheck` while generation `generation` runs, lists and watches each rule
    /// namespace left out for a 403 again; one that answers gets its watch as stream `next`
    /// (and on), the task told first, so a grant made after the start needs no restart.
    async fn widen(
        self,
        ar: ApiResource,
        generation: u64,
        mut left_out: Vec<String>,
        mut next: usize,
    ) {
        let every = self.recheck.max(Duration::from_millis(100));
        let kind = self.crd.kind();
        while !left_out.is_empty() {
            tokio::select! {
                _ = self.watches.stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let mut still = Vec::new();
            for ns in left_out {
                let (api, read) = self.read_rules_in(&ns, &ar).await;
                if read.is_err() {
                    still.push(ns);
                    continue;
                }
                let probe = Probe::new(next, WatchedApi::Dynamic(kind, api.clone()));
                let added = Msg::RuleStreamAdded(self.crd, generation, probe);
                if self.watches.tx.send(added).await.is_err() {
                    return;
                }
                tracing::info!(namespace = %ns, "namespace {ns} may be read now: watching {} there too", self.crd.watched_for());
                spawn_istio_watches(
                    &self.watches,
                    self.crd,
                    generation,
                    &self.domain,
                    (next, vec![(api, None)]),
                );
                next += 1;
            }
            left_out = still;
        }
    }

    /// Looks for the CRD every `recheck` until it is served (installed, or restored, after
    /// the gateway started) and may be listed and watched, then starts generation
    /// `generation`. A 403 is warned about unless `forbidden` says that was done, and the
    /// task told, so that waypoints are refused rather than bypassed meanwhile; the CRD
    /// deleted after that, the task is told so too (no waypoint can exist then).
    pub async fn poll(self, generation: u64, mut forbidden: bool) {
        let every = self.recheck.max(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = self.watches.stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            let ar = match served_or_why(&self.client, self.crd).await {
                Served::Yes(ar) => ar,
                Served::No if forbidden => {
                    forbidden = false;
                    tracing::info!(
                        resource = self.crd.kind().resource(),
                        "CRD no longer served: {}",
                        self.crd.without()
                    );
                    let gone = Msg::CrdGone(self.crd, generation, Gone::NotServed);
                    if self.watches.tx.send(gone).await.is_err() {
                        return;
                    }
                    continue;
                }
                // Unknown: whatever the task was told holds until the server says.
                Served::No | Served::Unknown => continue,
            };
            if let Some(e) = self.forbidden(&ar).await {
                if !forbidden {
                    forbidden = true;
                    warn_forbidden(self.crd.kind(), &e);
                    let gone = Msg::CrdGone(self.crd, generation, Gone::Forbidden);
                    if self.watches.tx.send(gone).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            // The model learns about the type before its first event arrives.
            let (probes, spawn) = self.prepare(&ar, generation).await;
            let started = Msg::CrdStarted(self.crd, generation, probes);
            if self.watches.tx.send(started).await.is_err() {
                return;
            }
            spawn();
            return;
        }
    }
}

/// The warning for an optional type the gateway may not read: what the table lacks, and the
/// grant.
pub(super) fn warn_forbidden(kind: Kind, e: &dyn std::error::Error) {
    tracing::warn!(?kind, resource = kind.resource(), error = %error_chain(e), "the gateway may not read {0} (403 Forbidden): {1}; grant list and watch on {0} to its service account (`meshctl gateway install` creates that ClusterRole)", kind.resource(), kind.unreadable());
}

/// The watches of one of Istio's types (DestinationRules, PeerAuthentications,
/// WorkloadEntries, ServiceEntries) of one generation, numbered from `first`.
fn spawn_istio_watches(
    watches: &Watches,
    crd: Crd,
    generation: u64,
    domain: &str,
    rules: (usize, Vec<watch::Selected<DynamicObject>>),
) {
    let gone = Some((crd, generation));
    match crd {
        Crd::DestinationRule => {
            let domain = domain.to_string();
            spawn_watches(
                watches,
                crd.kind(),
                rules,
                move |dr: &DynamicObject| project::project_destination_rule(dr, &domain),
                move |stream, update| Msg::Rule(generation, stream, Box::new(update)),
                gone,
            );
        }
        Crd::PeerAuthentication => spawn_watches(
            watches,
            crd.kind(),
            rules,
            peer_auth::project_peer_authentication,
            move |stream, update| Msg::PeerAuth(generation, stream, update),
            gone,
        ),
        Crd::WorkloadEntry => spawn_watches(
            watches,
            crd.kind(),
            rules,
            workload_entry::project_workload_entry,
            move |stream, update| Msg::WorkloadEntry(generation, stream, update),
            gone,
        ),
        Crd::ServiceEntry => spawn_watches(
            watches,
            crd.kind(),
            rules,
            service_entry::project_service_entry,
            move |stream, update| Msg::ServiceEntry(generation, stream, update),
            gone,
        ),
        Crd::Gateway | Crd::GatewayClass => {}
    }
}
