//! Discovery from the Kubernetes API: Services, EndpointSlices, Pod labels (metadata only)
//! and, when Istio's CRD is served, DestinationRules.
//!
//! One kube-runtime watcher per type (per namespace with `--namespace`) projects objects to
//! the routing fields as they arrive ([`kube_model`](super::kube_model)) and sends them to one
//! task that owns the model. That task rebuilds the route table at most every
//! [`MIN_REBUILD_INTERVAL`] and publishes it. The first table is published only after every
//! watch has listed once, and only then does the gateway report ready. Failed watches retry
//! as [`kube_retry`](super::kube_retry) says (a 410 re-lists at once); meanwhile the last
//! table keeps serving and `gateway_discovery_route_table_stale_seconds` counts the seconds
//! until every watch is current again ([`kube_health`](super::kube_health)). The
//! DestinationRule CRD may come and go ([`kube_crd`](super::kube_crd)).

use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ::kube::api::{Api, ApiResource, DynamicObject, ListParams};
use ::kube::config::{KubeConfigOptions, Kubeconfig};
use ::kube::core::PartialObjectMeta;
use ::kube::runtime::watcher::{self, Event};
use ::kube::{Client, Resource};
use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::Publisher;
use super::kube_crd::{self, Rules};
use super::kube_health::{Health, Recovered};
use super::kube_model::{
    self as model, DrInfo, Model, ObjKey, PodLabels, SliceInfo, SvcInfo, Update,
};
use super::kube_retry::{self, Failure};
use crate::config::KubeOptions;

/// Shortest time between two published tables under a burst of events.
pub const MIN_REBUILD_INTERVAL: Duration = Duration::from_millis(100);
/// Wait after the first event of a burst so that events sent together build one table.
const SETTLE: Duration = Duration::from_millis(5);
/// How often staleness is updated and failing watches are probed.
const HEALTH_TICK: Duration = Duration::from_secs(1);
/// Bound on the start-up reachability check and on each probe.
pub(super) const REACH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why Kubernetes discovery could not start. Each message carries its whole cause chain
/// (deduplicated), so no variant has a `source`: printed with its causes, nothing repeats.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("Kubernetes discovery: kubeconfig {path}: {reason}")]
    Kubeconfig { path: PathBuf, reason: String },
    #[error(
        "Kubernetes discovery: kubeconfig {path}: no context {context:?} (contexts: {available})"
    )]
    NoContext {
        path: String,
        context: String,
        available: String,
    },
    #[error("Kubernetes discovery: kubeconfig (KUBECONFIG or ~/.kube/config): {0}")]
    DefaultKubeconfig(String),
    #[error(
        "Kubernetes discovery: no Kubernetes configuration: not in a cluster ({in_cluster}) and no kubeconfig ({kubeconfig}); pass --kubeconfig or --endpoints"
    )]
    NoConfig {
        in_cluster: String,
        kubeconfig: String,
    },
    #[error("Kubernetes discovery: creating the Kubernetes client: {0}")]
    Client(String),
    #[error("Kubernetes discovery: Kubernetes API server {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error(
        "Kubernetes discovery: the Kubernetes API server {url} refused the credential (401 Unauthorized) of {credential}: fix: {fix}"
    )]
    CredentialRefused {
        url: String,
        credential: String,
        fix: &'static str,
    },
}

/// Builds the client from `--kubeconfig`/`--context`, else in-cluster, else `KUBECONFIG`
/// (or `~/.kube/config`), and checks that the API server answers.
pub async fn client(opts: &KubeOptions) -> Result<Client, KubeError> {
    let kco = KubeConfigOptions {
        context: opts.context.clone(),
        ..Default::default()
    };
    let config =
        match &opts.kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path).map_err(|e| KubeError::Kubeconfig {
                    path: path.clone(),
                    reason: error_chain(&e),
                })?;
                check_context(&kc, opts.context.as_deref(), &path.display().to_string())?;
                ::kube::Config::from_custom_kubeconfig(kc, &kco)
                    .await
                    .map_err(|e| KubeError::Kubeconfig {
                        path: path.clone(),
                        reason: error_chain(&e),
                    })?
            }
            None if opts.context.is_some() => {
                if let Ok(kc) = Kubeconfig::read() {
                    check_context(&kc, opts.context.as_deref(), "KUBECONFIG")?;
                }
                ::kube::Config::from_kubeconfig(&kco)
                    .await
                    .map_err(|e| KubeError::DefaultKubeconfig(error_chain(&e)))?
            }
            None => match ::kube::Config::incluster() {
                Ok(c) => c,
                Err(in_cluster) => ::kube::Config::from_kubeconfig(&kco).await.map_err(|e| {
                    KubeError::NoConfig {
                        in_cluster: error_chain(&in_cluster),
                        kubeconfig: error_chain(&e),
                    }
                })?,
            },
        };
    let url = config.cluster_url.to_string();
    let client = Client::try_from(config).map_err(|e| KubeError::Client(error_chain(&e)))?;
    match tokio::time::timeout(REACH_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(v)) => {
            tracing::info!(%url, version = %v.git_version, "Kubernetes API server reachable")
        }
        Ok(Err(::kube::Error::Api(s))) if s.code == 401 => {
            let (credential, fix) = credential_source(opts);
            return Err(KubeError::CredentialRefused {
                url,
                credential,
                fix,
            });
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

/// Where the refused credential came from, and how to fix it.
fn credential_source(opts: &KubeOptions) -> (String, &'static str) {
    let context = opts
        .context
        .as_deref()
        .map_or("the current context".to_string(), |c| {
            format!("context {c:?}")
        });
    let in_kubeconfig = "renew that user's token or client certificate in the kubeconfig, or pass --kubeconfig/--context for a user the cluster accepts";
    match &opts.kubeconfig {
        Some(path) => (
            format!("the user of {context} in kubeconfig {}", path.display()),
            in_kubeconfig,
        ),
        None if opts.context.is_some() => (
            format!("the user of {context} in KUBECONFIG (or ~/.kube/config)"),
            in_kubeconfig,
        ),
        None => (
            "the in-cluster ServiceAccount token (or the current context of KUBECONFIG)".into(),
            "check that the pod's ServiceAccount still exists and its token (/var/run/secrets/kubernetes.io/serviceaccount/token) is current, or pass --kubeconfig",
        ),
    }
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

/// An error and its causes on one line, each cause once (kube's errors often repeat their
/// source in their own message).
pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
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
pub(super) enum Kind {
    Service,
    EndpointSlice,
    Pod,
    DestinationRule,
}

pub(super) enum Msg {
    Service(usize, Update<SvcInfo>),
    Slice(usize, Update<SliceInfo>),
    Pod(usize, Update<PodLabels>),
    /// An update of the rules of one generation (see [`kube_crd`]).
    Rule(u64, usize, Update<DrInfo>),
    /// The DestinationRule CRD is served; its watches start after this message.
    RulesStarted(u64, Vec<Probe>),
    /// The DestinationRule CRD is no longer served.
    RulesGone(u64),
    WatchError(Kind, usize),
    /// A failed watch retries after its back-off (a resume, or a list).
    Retrying(Kind, usize),
}

/// A cheap `list?limit=1` on a watched type: tells when a failing watch can work again.
#[derive(Clone)]
pub(super) struct Probe {
    kind: Kind,
    stream: usize,
    run: Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>,
}

pub(super) fn probe<K>(kind: Kind, stream: usize, api: Api<K>) -> Probe
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

pub(super) fn dyn_apis(
    client: &Client,
    namespaces: &[String],
    ar: &ApiResource,
) -> Vec<Api<DynamicObject>> {
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

/// Why a watch's pump returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    Stopped,
    /// The type is not served (404): only DestinationRules, whose CRD may be deleted.
    NotServed,
}

/// Drives one watch: projects every object and forwards it to the model task; on errors,
/// tells the task and retries as [`kube_retry`] says, waking early when `wake` is notified
/// (a probe found the API server answering again).
#[allow(clippy::too_many_arguments)]
pub(super) async fn pump<K, T, S>(
    events: S,
    kind: Kind,
    stream: usize,
    project: impl Fn(&K) -> Option<T> + Send,
    wrap: impl Fn(usize, Update<T>) -> Msg + Send,
    tx: mpsc::Sender<Msg>,
    wake: Arc<Notify>,
    stop: CancellationToken,
) -> Ended
where
    K: Resource + Send,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send,
{
    let mut events = std::pin::pin!(events);
    let mut backoff = kube_retry::Backoff::default();
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return Ended::Stopped,
            n = events.next() => n,
        };
        let ev = match next {
            None => return Ended::Stopped,
            Some(Ok(ev)) => ev,
            Some(Err(e)) => {
                let failure = kube_retry::classify(&e);
                if failure == Failure::NotServed && kind == Kind::DestinationRule {
                    tracing::info!(error = %error_chain(&e), "DestinationRule CRD no longer served; its watch stops");
                    return Ended::NotServed;
                }
                // Registered before the task hears of the error, so no wake-up is missed.
                let mut woken = std::pin::pin!(wake.notified());
                woken.as_mut().enable();
                if tx.send(Msg::WatchError(kind, stream)).await.is_err() {
                    return Ended::Stopped;
                }
                match backoff.delay(failure) {
                    None => {
                        // The watcher re-lists on its next poll; the list shows its health.
                        tracing::info!(?kind, stream, error = %error_chain(&e), "resourceVersion too old (410 Gone); re-listing now");
                    }
                    Some(delay) => {
                        tracing::warn!(?kind, stream, error = %error_chain(&e), ?delay, "watch failed; retrying after the delay or as soon as the API server answers");
                        tokio::select! {
                            _ = stop.cancelled() => return Ended::Stopped,
                            _ = tokio::time::sleep(delay) => {}
                            _ = woken => {}
                        }
                        if tx.send(Msg::Retrying(kind, stream)).await.is_err() {
                            return Ended::Stopped;
                        }
                    }
                }
                continue;
            }
        };
        backoff.reset();
        let update = match ev {
            Event::Init => Update::Init,
            Event::InitDone => Update::InitDone,
            Event::InitApply(o) => {
                let Some(key) = obj_key(&o) else { continue };
                Update::Apply {
                    obj: project(&o),
                    key,
                    initial: true,
                }
            }
            Event::Apply(o) => {
                let Some(key) = obj_key(&o) else { continue };
                Update::Apply {
                    obj: project(&o),
                    key,
                    initial: false,
                }
            }
            Event::Delete(o) => {
                let Some(key) = obj_key(&o) else { continue };
                Update::Delete(key)
            }
        };
        if tx.send(wrap(stream, update)).await.is_err() {
            return Ended::Stopped;
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
        let wake = Arc::new(Notify::new());
        let mut probes = Vec::new();
        let wc = || watcher::Config::default().any_semantic();
        let rules = Rules {
            client: client.clone(),
            namespaces: namespaces.clone(),
            domain: domain.clone(),
            recheck: opts.crd_recheck,
            tx: tx.clone(),
            wake: wake.clone(),
            stop: stop.clone(),
        };

        let mut model = Model::new(streams);
        // The CRD check comes first (on the connection the reachability check opened), and
        // the first table waits for the rules, so a cluster with Istio never publishes a
        // table without its subsets.
        match kube_crd::destination_rule_resource(&client).await {
            Some(ar) => {
                let p = rules.start(&ar, 0);
                model.rules = Some(model::Watched::new(p.len()));
                probes.extend(p);
            }
            None => {
                tracing::info!(
                    recheck = ?opts.crd_recheck,
                    "DestinationRule CRD (networking.istio.io) not served: only the empty subset routes"
                );
                tokio::spawn(rules.clone().poll(0));
            }
        }
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
                wake.clone(),
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
                wake.clone(),
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
                wake.clone(),
                stop.clone(),
            ));
        }
        drop(tx);

        let synced = Arc::new(AtomicBool::new(false));
        let task = ModelTask {
            model,
            domain,
            publisher,
            synced: synced.clone(),
            probes,
            health: Health::default(),
            probing: false,
            rules,
            rules_generation: 0,
        };
        tokio::spawn(task.run(rx, stop));
        Ok(KubeSource { synced })
    }

    /// True once the first full table has been published.
    pub fn synced(&self) -> Arc<AtomicBool> {
        self.synced.clone()
    }
}

struct ModelTask {
    model: Model,
    domain: String,
    publisher: Publisher,
    synced: Arc<AtomicBool>,
    probes: Vec<Probe>,
    health: Health<(Kind, usize)>,
    probing: bool,
    /// Restarts the CRD poll when the DestinationRule CRD goes away.
    rules: Rules,
    /// The generation of the rules in the model (or being polled for).
    rules_generation: u64,
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
                    // The task holds a sender (for the CRD poll): this ends only at stop.
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
                    let ok = ok.unwrap_or_default();
                    if !ok.is_empty() {
                        // The API server answers: failing watches retry now, not after
                        // their back-off.
                        self.rules.wake.notify_waiters();
                    }
                    let now = Instant::now();
                    for w in ok {
                        self.health.answered(w, now);
                    }
                }
            }
        }
    }

    /// Applies one message; returns whether the table may need rebuilding.
    fn apply(&mut self, msg: Msg) -> bool {
        let (m, h) = (&mut self.model, &mut self.health);
        let (recovered, changed) = match msg {
            Msg::Service(i, u) => (
                h.observed((Kind::Service, i), &u),
                apply_to(&mut m.services, i, u),
            ),
            Msg::Slice(i, u) => (
                h.observed((Kind::EndpointSlice, i), &u),
                apply_to(&mut m.slices, i, u),
            ),
            Msg::Pod(i, u) => (h.observed((Kind::Pod, i), &u), apply_to(&mut m.pods, i, u)),
            Msg::Rule(generation, i, u) => {
                // Late messages from the watches of a deleted CRD are dropped.
                let Some(rules) = m
                    .rules
                    .as_mut()
                    .filter(|_| generation == self.rules_generation)
                else {
                    return false;
                };
                (
                    h.observed((Kind::DestinationRule, i), &u),
                    apply_to(rules, i, u),
                )
            }
            Msg::RulesStarted(generation, probes) => {
                if generation == self.rules_generation {
                    m.rules = Some(model::Watched::new(probes.len()));
                    self.probes.extend(probes);
                }
                return false;
            }
            Msg::RulesGone(generation) => return self.rules_gone(generation),
            Msg::WatchError(kind, stream) => {
                h.failed((kind, stream), Instant::now());
                return false;
            }
            Msg::Retrying(kind, stream) => {
                h.retried((kind, stream), Instant::now());
                return false;
            }
        };
        self.on_recovered(recovered);
        changed
    }

    /// The DestinationRule CRD was deleted: its subsets go, its watches no longer count
    /// for staleness, and the CRD poll starts again for the next generation.
    fn rules_gone(&mut self, generation: u64) -> bool {
        if generation != self.rules_generation || self.model.rules.is_none() {
            return false;
        }
        self.model.rules = None;
        self.probes.retain(|p| p.kind != Kind::DestinationRule);
        let recovered = self.health.forget(|w| w.0 != Kind::DestinationRule);
        self.on_recovered(recovered);
        self.rules_generation += 1;
        tracing::info!(
            recheck = ?self.rules.recheck,
            "DestinationRule CRD deleted: subset routes removed; polling for its return"
        );
        tokio::spawn(self.rules.clone().poll(self.rules_generation));
        true
    }

    fn on_recovered(&self, recovered: Recovered) {
        if recovered.0 {
            self.publisher.metrics().stale_seconds.set(0);
            tracing::info!("Kubernetes watches current again");
        }
    }

    fn health_tick(&mut self, probe_tx: &mpsc::Sender<Vec<(Kind, usize)>>) {
        let now = Instant::now();
        let recovered = self.health.tick(now);
        self.on_recovered(recovered);
        let stale = self.health.stale_seconds(now);
        self.publisher.metrics().stale_seconds.set(stale as i64);
        let failing = self.health.to_probe();
        if failing.is_empty() || self.probing {
            return;
        }
        // Probing tells when the API server answers again: failing watches are woken
        // to retry, and a watch that resumed without an error is current again.
        let probes: Vec<Probe> = self
            .probes
            .iter()
            .filter(|p| failing.contains(&(p.kind, p.stream)))
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
