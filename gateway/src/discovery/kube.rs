//! Discovery from the Kubernetes API: Services, EndpointSlices, Pod labels (metadata only)
//! and, when Istio's CRD is served, DestinationRules.
//!
//! One kube-runtime watcher per type (per namespace with `--namespace`), each with
//! `default_backoff`, projects objects to the routing fields as they arrive
//! ([`kube_model`](super::kube_model)) and sends them to one task that owns the model. That
//! task rebuilds the route table at most every [`MIN_REBUILD_INTERVAL`] and publishes it.
//! The first table is published only after every watch has listed once, and only then does
//! the gateway report ready. Watch errors back off and re-list; meanwhile the last table keeps
//! serving and `gateway_discovery_route_table_stale_seconds` counts the seconds since the
//! watches were last known healthy.

use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ::kube::api::{Api, ApiResource, DynamicObject, ListParams};
use ::kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use ::kube::core::PartialObjectMeta;
use ::kube::runtime::WatchStreamExt;
use ::kube::runtime::watcher::{self, Event};
use ::kube::{Client, Resource};
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Publisher;
use super::kube_model::{
    self as model, DrInfo, Model, ObjKey, PodLabels, SliceInfo, SvcInfo, Update,
};
use crate::config::KubeOptions;

/// Shortest time between two published tables under a burst of events.
pub const MIN_REBUILD_INTERVAL: Duration = Duration::from_millis(100);
/// Wait after the first event of a burst so that events sent together build one table.
const SETTLE: Duration = Duration::from_millis(5);
/// How often staleness is updated and failing watches are probed.
const HEALTH_TICK: Duration = Duration::from_secs(1);
/// Bound on the start-up reachability check and on each probe.
const REACH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: PathBuf,
        source: KubeconfigError,
    },
    #[error("kubeconfig {path}: no context {context:?} (contexts: {available})")]
    NoContext {
        path: String,
        context: String,
        available: String,
    },
    #[error("kubeconfig (KUBECONFIG or ~/.kube/config): {0}")]
    DefaultKubeconfig(KubeconfigError),
    #[error(
        "no Kubernetes configuration: not in a cluster ({in_cluster}) and no kubeconfig ({kubeconfig}); pass --kubeconfig or --endpoints"
    )]
    NoConfig {
        in_cluster: String,
        kubeconfig: KubeconfigError,
    },
    #[error("creating the Kubernetes client: {0}")]
    Client(#[source] ::kube::Error),
    #[error("Kubernetes API server {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
}

/// Builds the client from `--kubeconfig`/`--context`, else in-cluster, else `KUBECONFIG`
/// (or `~/.kube/config`), and checks that the API server answers.
pub async fn client(opts: &KubeOptions) -> Result<Client, KubeError> {
    let kco = KubeConfigOptions {
        context: opts.context.clone(),
        ..Default::default()
    };
    let config = match &opts.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|source| KubeError::Kubeconfig {
                path: path.clone(),
                source,
            })?;
            check_context(&kc, opts.context.as_deref(), &path.display().to_string())?;
            ::kube::Config::from_custom_kubeconfig(kc, &kco)
                .await
                .map_err(|source| KubeError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?
        }
        None if opts.context.is_some() => {
            if let Ok(kc) = Kubeconfig::read() {
                check_context(&kc, opts.context.as_deref(), "KUBECONFIG")?;
            }
            ::kube::Config::from_kubeconfig(&kco)
                .await
                .map_err(KubeError::DefaultKubeconfig)?
        }
        None => match ::kube::Config::incluster() {
            Ok(c) => c,
            Err(in_cluster) => {
                ::kube::Config::from_kubeconfig(&kco)
                    .await
                    .map_err(|kubeconfig| KubeError::NoConfig {
                        in_cluster: in_cluster.to_string(),
                        kubeconfig,
                    })?
            }
        },
    };
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(KubeError::Client)?;
    match tokio::time::timeout(REACH_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(v)) => {
            tracing::info!(%url, version = %v.git_version, "Kubernetes API server reachable")
        }
        Ok(Err(e)) => {
            return Err(KubeError::Unreachable {
                url,
                reason: error_chain(&e),
            });
        }
        Err(_) => {
            return Err(KubeError::Unreachable {
                url,
                reason: format!("no answer within {REACH_TIMEOUT:?}"),
            });
        }
    }
    Ok(client)
}

fn check_context(kc: &Kubeconfig, context: Option<&str>, path: &str) -> Result<(), KubeError> {
    let Some(ctx) = context else { return Ok(()) };
    if kc.contexts.iter().any(|c| c.name == ctx) {
        return Ok(());
    }
    Err(KubeError::NoContext {
        path: path.into(),
        context: ctx.into(),
        available: kc
            .contexts
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Service,
    EndpointSlice,
    Pod,
    DestinationRule,
}

enum Msg {
    Service(usize, Update<SvcInfo>),
    Slice(usize, Update<SliceInfo>),
    Pod(usize, Update<PodLabels>),
    Rule(usize, Update<DrInfo>),
    /// The DestinationRule CRD is served; its watches start after this message.
    RulesStarted(Vec<Probe>),
    WatchError(Kind, usize),
}

/// A cheap `list?limit=1` on a watched type: tells when a failing watch can work again.
#[derive(Clone)]
struct Probe {
    kind: Kind,
    stream: usize,
    run: Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>,
}

fn probe<K>(kind: Kind, stream: usize, api: Api<K>) -> Probe
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    Probe {
        kind,
        stream,
        run: Arc::new(move || {
            let api = api.clone();
            Box::pin(async move {
                let lp = ListParams::default().limit(1);
                matches!(
                    tokio::time::timeout(REACH_TIMEOUT, api.list_metadata(&lp)).await,
                    Ok(Ok(_))
                )
            })
        }),
    }
}

fn apis<K>(client: &Client, namespaces: &[String]) -> Vec<Api<K>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    }
}

fn dyn_apis(client: &Client, namespaces: &[String], ar: &ApiResource) -> Vec<Api<DynamicObject>> {
    if namespaces.is_empty() {
        vec![Api::all_with(client.clone(), ar)]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced_with(client.clone(), ns, ar))
            .collect()
    }
}

fn obj_key<K: Resource>(o: &K) -> Option<ObjKey> {
    let m = o.meta();
    model::key(m.namespace.as_deref(), m.name.as_deref())
}

enum EvKind {
    Initial,
    Live,
}

/// Drives one watch: backs off on errors, projects every object, forwards to the model task.
#[allow(clippy::too_many_arguments)]
async fn pump<K, T, S>(
    events: S,
    kind: Kind,
    stream: usize,
    project: impl Fn(&K) -> Option<T> + Send,
    wrap: fn(usize, Update<T>) -> Msg,
    tx: mpsc::Sender<Msg>,
    stop: CancellationToken,
) where
    K: Resource + Send,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send,
{
    let mut events = std::pin::pin!(events.default_backoff());
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            n = events.next() => n,
        };
        let msg = match next {
            None => return,
            Some(Err(e)) => {
                tracing::warn!(?kind, stream, error = %error_chain(&e), "watch failed; backing off and retrying");
                Msg::WatchError(kind, stream)
            }
            Some(Ok(ev)) => {
                let ev_kind = match ev {
                    Event::InitApply(_) => EvKind::Initial,
                    _ => EvKind::Live,
                };
                let update = match ev {
                    Event::Init => Update::Init,
                    Event::InitDone => Update::InitDone,
                    Event::InitApply(o) | Event::Apply(o) => {
                        let initial = matches!(ev_kind, EvKind::Initial);
                        let Some(key) = obj_key(&o) else { continue };
                        Update::Apply {
                            obj: project(&o),
                            key,
                            initial,
                        }
                    }
                    Event::Delete(o) => {
                        let Some(key) = obj_key(&o) else { continue };
                        Update::Delete(key)
                    }
                };
                wrap(stream, update)
            }
        };
        if tx.send(msg).await.is_err() {
            return;
        }
    }
}

/// A running Kubernetes source. Its tasks stop when `stop` is cancelled.
pub struct KubeSource {
    synced: Arc<AtomicBool>,
}

impl KubeSource {
    /// Connects (failing on configuration errors or an unreachable server) and starts the
    /// watches. The table is published once every watch has listed.
    pub async fn start(
        opts: &KubeOptions,
        publisher: Publisher,
        stop: CancellationToken,
    ) -> Result<KubeSource, KubeError> {
        let client = client(opts).await?;
        let namespaces = opts.namespaces.clone();
        let streams = namespaces.len().max(1);
        let domain = opts.cluster_domain.clone();
        let (tx, rx) = mpsc::channel(1024);
        let mut probes = Vec::new();
        let wc = || watcher::Config::default().any_semantic();

        let mut model = Model::new(streams);
        // The CRD check comes first (on the connection the reachability check opened), and
        // the first table waits for the rules, so a cluster with Istio never publishes a
        // table without its subsets.
        let rules = match destination_rule_resource(&client).await {
            Some(ar) => {
                let (p, m) = start_rules(&client, &namespaces, &ar, &domain, &tx, &stop);
                probes.extend(p);
                m
            }
            None => {
                tracing::info!(
                    recheck = ?opts.crd_recheck,
                    "DestinationRule CRD (networking.istio.io) not served: only the empty subset routes"
                );
                tokio::spawn(recheck_crd(
                    client.clone(),
                    namespaces.clone(),
                    domain.clone(),
                    opts.crd_recheck,
                    tx.clone(),
                    stop.clone(),
                ));
                None
            }
        };
        for (i, api) in apis::<Service>(&client, &namespaces)
            .into_iter()
            .enumerate()
        {
            probes.push(probe(Kind::Service, i, api.clone()));
            tokio::spawn(pump(
                watcher::watcher(api, wc()),
                Kind::Service,
                i,
                model::project_service,
                Msg::Service,
                tx.clone(),
                stop.clone(),
            ));
        }
        for (i, api) in apis::<EndpointSlice>(&client, &namespaces)
            .into_iter()
            .enumerate()
        {
            probes.push(probe(Kind::EndpointSlice, i, api.clone()));
            tokio::spawn(pump(
                watcher::watcher(api, wc()),
                Kind::EndpointSlice,
                i,
                model::project_slice,
                Msg::Slice,
                tx.clone(),
                stop.clone(),
            ));
        }
        let interner = model::Interner::default();
        for (i, api) in apis::<PartialObjectMeta<Pod>>(&client, &namespaces)
            .into_iter()
            .enumerate()
        {
            probes.push(probe(Kind::Pod, i, api.clone()));
            tokio::spawn(pump(
                watcher::watcher(api, wc()),
                Kind::Pod,
                i,
                {
                    let interner = interner.clone();
                    move |p: &PartialObjectMeta<Pod>| model::project_pod(p, &interner)
                },
                Msg::Pod,
                tx.clone(),
                stop.clone(),
            ));
        }

        model.rules = rules;
        drop(tx);

        let synced = Arc::new(AtomicBool::new(false));
        let task = ModelTask {
            model,
            domain,
            streams,
            publisher,
            synced: synced.clone(),
            probes,
            unhealthy: Vec::new(),
            unhealthy_since: None,
            probing: false,
        };
        tokio::spawn(task.run(rx, stop));
        Ok(KubeSource { synced })
    }

    /// True once the first full table has been published.
    pub fn synced(&self) -> Arc<AtomicBool> {
        self.synced.clone()
    }
}

/// The served DestinationRule resource (preferred version), or `None` without the CRD.
async fn destination_rule_resource(client: &Client) -> Option<ApiResource> {
    let group = match tokio::time::timeout(
        REACH_TIMEOUT,
        ::kube::discovery::group(client, "networking.istio.io"),
    )
    .await
    {
        Ok(Ok(g)) => g,
        Ok(Err(::kube::Error::Discovery(_))) => return None,
        Ok(Err(e)) => {
            tracing::warn!(error = %error_chain(&e), "checking for the DestinationRule CRD failed; will retry");
            return None;
        }
        Err(_) => return None,
    };
    group.recommended_kind("DestinationRule").map(|(ar, _)| ar)
}

/// Starts the DestinationRule watches; returns their probes and (for the start-up path)
/// the model part to install.
fn start_rules(
    client: &Client,
    namespaces: &[String],
    ar: &ApiResource,
    domain: &str,
    tx: &mpsc::Sender<Msg>,
    stop: &CancellationToken,
) -> (Vec<Probe>, Option<model::Watched<DrInfo>>) {
    tracing::info!(version = %ar.version, "watching DestinationRules for subsets");
    let apis = dyn_apis(client, namespaces, ar);
    let mut probes = Vec::new();
    for (i, api) in apis.iter().enumerate() {
        probes.push(probe(Kind::DestinationRule, i, api.clone()));
        let domain = domain.to_string();
        tokio::spawn(pump(
            watcher::watcher(api.clone(), watcher::Config::default().any_semantic()),
            Kind::DestinationRule,
            i,
            move |dr: &DynamicObject| model::project_destination_rule(dr, &domain),
            Msg::Rule,
            tx.clone(),
            stop.clone(),
        ));
    }
    (probes, Some(model::Watched::new(apis.len())))
}

/// Looks for the DestinationRule CRD every `every` until it is served (Istio installed
/// after the gateway started), then starts its watches.
async fn recheck_crd(
    client: Client,
    namespaces: Vec<String>,
    domain: String,
    every: Duration,
    tx: mpsc::Sender<Msg>,
    stop: CancellationToken,
) {
    let every = every.max(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Some(ar) = destination_rule_resource(&client).await {
            // The model learns about the rules before their first event arrives.
            let probes: Vec<Probe> = dyn_apis(&client, &namespaces, &ar)
                .into_iter()
                .enumerate()
                .map(|(i, api)| probe(Kind::DestinationRule, i, api))
                .collect();
            if tx.send(Msg::RulesStarted(probes)).await.is_err() {
                return;
            }
            start_rules(&client, &namespaces, &ar, &domain, &tx, &stop);
            return;
        }
    }
}

struct ModelTask {
    model: Model,
    domain: String,
    /// Watches per type: one per namespace, or one for all.
    streams: usize,
    publisher: Publisher,
    synced: Arc<AtomicBool>,
    probes: Vec<Probe>,
    /// (kind, stream) whose last word was an error.
    unhealthy: Vec<(Kind, usize)>,
    unhealthy_since: Option<Instant>,
    probing: bool,
}

impl ModelTask {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>, stop: CancellationToken) {
        let (probe_tx, mut probe_rx) = mpsc::channel::<Vec<(Kind, usize)>>(1);
        let mut rebuild_at: Option<tokio::time::Instant> = None;
        let mut last_publish: Option<tokio::time::Instant> = None;
        let mut tick = tokio::time::interval(HEALTH_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let sleep_until = rebuild_at;
            tokio::select! {
                _ = stop.cancelled() => return,
                msg = rx.recv() => {
                    // All senders gone only when every watch ended (stop): nothing more to do.
                    let Some(msg) = msg else { return };
                    if self.apply(msg) && self.model.synced() && rebuild_at.is_none() {
                        let now = tokio::time::Instant::now();
                        let earliest = last_publish.map_or(now, |t| t + MIN_REBUILD_INTERVAL);
                        rebuild_at = Some(earliest.max(now + SETTLE));
                    }
                }
                _ = async { tokio::time::sleep_until(sleep_until.expect("guarded")).await }, if sleep_until.is_some() => {
                    rebuild_at = None;
                    last_publish = Some(tokio::time::Instant::now());
                    self.publish();
                }
                _ = tick.tick() => self.health_tick(&probe_tx),
                ok = probe_rx.recv() => {
                    self.probing = false;
                    for (kind, stream) in ok.into_iter().flatten() {
                        self.mark_healthy(kind, stream);
                    }
                }
            }
        }
    }

    /// Applies one message; returns whether the table may need rebuilding.
    fn apply(&mut self, msg: Msg) -> bool {
        let m = &mut self.model;
        let (kind, stream, changed) = match msg {
            Msg::Service(i, u) => (Kind::Service, i, apply_to(&mut m.services, i, u)),
            Msg::Slice(i, u) => (Kind::EndpointSlice, i, apply_to(&mut m.slices, i, u)),
            Msg::Pod(i, u) => (Kind::Pod, i, apply_to(&mut m.pods, i, u)),
            Msg::Rule(i, u) => {
                let rules = m
                    .rules
                    .get_or_insert_with(|| model::Watched::new(self.streams));
                (Kind::DestinationRule, i, apply_to(rules, i, u))
            }
            Msg::RulesStarted(probes) => {
                m.rules = Some(model::Watched::new(probes.len()));
                self.probes.extend(probes);
                return false;
            }
            Msg::WatchError(kind, stream) => {
                if !self.unhealthy.contains(&(kind, stream)) {
                    self.unhealthy.push((kind, stream));
                }
                self.unhealthy_since.get_or_insert_with(Instant::now);
                return false;
            }
        };
        self.mark_healthy(kind, stream);
        changed
    }

    fn mark_healthy(&mut self, kind: Kind, stream: usize) {
        self.unhealthy.retain(|&u| u != (kind, stream));
        if self.unhealthy.is_empty() && self.unhealthy_since.take().is_some() {
            self.publisher.metrics().stale_seconds.set(0);
            tracing::info!("Kubernetes watches healthy again");
        }
    }

    fn health_tick(&mut self, probe_tx: &mpsc::Sender<Vec<(Kind, usize)>>) {
        let stale = self.unhealthy_since.map_or(0, |t| t.elapsed().as_secs());
        self.publisher.metrics().stale_seconds.set(stale as i64);
        if self.unhealthy.is_empty() || self.probing {
            return;
        }
        // A watch resumed from its last resourceVersion reports nothing until the next
        // change, so recovery is confirmed by listing the failing types.
        let probes: Vec<Probe> = self
            .probes
            .iter()
            .filter(|p| self.unhealthy.contains(&(p.kind, p.stream)))
            .cloned()
            .collect();
        self.probing = true;
        let tx = probe_tx.clone();
        tokio::spawn(async move {
            let mut ok = Vec::new();
            for p in probes {
                if (p.run)().await {
                    ok.push((p.kind, p.stream));
                }
            }
            let _ = tx.send(ok).await;
        });
    }

    fn publish(&mut self) {
        let started = Instant::now();
        let specs = self.model.specs(&self.domain);
        let built = started.elapsed();
        let table = self.publisher.publish("kubernetes", &specs);
        tracing::debug!(
            generation = table.generation,
            services = specs.len(),
            build_ms = built.as_secs_f64() * 1e3,
            total_ms = started.elapsed().as_secs_f64() * 1e3,
            "kubernetes route table rebuilt"
        );
        if !self.synced.swap(true, Ordering::SeqCst) {
            tracing::info!(
                services = self.model.services.len(),
                slices = self.model.slices.len(),
                pods = self.model.pods.len(),
                destination_rules = self.model.rules.as_ref().map(|r| r.len()),
                "first Kubernetes sync complete; ready"
            );
        }
    }
}

fn apply_to<T: PartialEq>(w: &mut model::Watched<T>, stream: usize, u: Update<T>) -> bool {
    match w.streams.get_mut(stream) {
        Some(c) => c.apply(u),
        None => false,
    }
}
