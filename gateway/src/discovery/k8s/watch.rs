//! The watches: one kube-runtime watcher per type and namespace, pumped into the model
//! task as projected [`Update`]s and retried as [`retry`] says.

use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::ambient::NamespaceScope;
use super::cache::Update;
use super::client::error_chain;
use super::crd::{Crd, Gone};
use super::peer_auth::PaInfo;
use super::probe::{Kind, Probe};
use super::project::{self, DrInfo, ObjKey, PodInfo, SliceInfo, SvcInfo};
use super::retry::{self, Failure};
use super::service_entry::SeInfo;
use super::waypoints::{ClassInfo, WaypointInfo};
use super::workload_entry::WeInfo;

/// What the watches (and the CRD poll) tell the rebuild task.
#[derive(Clone)]
pub(super) enum Msg {
    Service(usize, Update<SvcInfo>),
    Slice(usize, Update<SliceInfo>),
    Pod(usize, Update<PodInfo>),
    Namespace(usize, Update<NamespaceScope>),
    /// An update of the rules of one generation (generations: see the `crd` module); boxed, as
    /// a rule's settings would size every message.
    Rule(u64, usize, Box<Update<DrInfo>>),
    /// An update of the PeerAuthentications of one generation.
    PeerAuth(u64, usize, Update<PaInfo>),
    /// An update of the waypoints (Gateways) of one generation.
    Waypoint(u64, usize, Update<WaypointInfo>),
    /// An update of the GatewayClasses of one generation.
    GatewayClass(u64, usize, Update<ClassInfo>),
    /// An update of the WorkloadEntries of one generation.
    WorkloadEntry(u64, usize, Update<WeInfo>),
    /// An update of the ServiceEntries of one generation.
    ServiceEntry(u64, usize, Update<SeInfo>),
    /// An optional type is served; its watches start after this message.
    CrdStarted(Crd, u64, Vec<Probe>),
    /// A rule namespace left out for a 403 may be read now: its watch (the probe's stream)
    /// starts after this message.
    RuleStreamAdded(Crd, u64, Probe),
    /// An optional type is no longer served, or may not be read.
    CrdGone(Crd, u64, Gone),
    WatchError(Kind, usize),
    /// A failed watch retries after its back-off (a resume, or a list).
    Retrying(Kind, usize),
}

/// One `Api` per `--namespace`, or one for all namespaces.
pub(super) fn apis<K>(client: &Client, namespaces: &[String]) -> Vec<Api<K>>
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

/// The Namespace watches: one per `--namespace`, each selecting that Namespace by name, or
/// one for all. Namespaces are cluster-scoped, so every watch uses the cluster-wide `Api`.
pub(super) fn namespace_watches(
    client: &Client,
    namespaces: &[String],
) -> Vec<Selected<PartialObjectMeta<Namespace>>> {
    let all = Api::all(client.clone());
    if namespaces.is_empty() {
        vec![(all, None)]
    } else {
        namespaces
            .iter()
            .map(|ns| (all.clone(), Some(format!("metadata.name={ns}"))))
            .collect()
    }
}

/// [`apis`] for a type known at run time (the DestinationRule and PeerAuthentication CRDs, in
/// their preferred versions).
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
    project::key(m.namespace.as_deref(), m.name.as_deref())
}

/// What every watch shares with the model task: its inbox, the wake-up a successful probe
/// sends, and the stop.
#[derive(Clone)]
pub(super) struct Watches {
    pub tx: mpsc::Sender<Msg>,
    pub wake: Arc<Wake>,
    pub stop: CancellationToken,
}

/// Wakes failing watches out of their back-off, each only when the probe of its own type
/// (and namespace) answered: a watch refused 403 must not retry every time another type's
/// API answers again.
#[derive(Default)]
pub(super) struct Wake {
    notify: Notify,
    answered: std::sync::Mutex<HashSet<(Kind, usize)>>,
}

impl Wake {
    /// The probes of `watches` answered: those of them waiting retry now.
    pub fn answered(&self, watches: impl IntoIterator<Item = (Kind, usize)>) {
        self.lock().extend(watches);
        self.notify.notify_waiters();
    }

    /// Whether `watch`'s probe answered since the last call, forgetting that it did.
    fn take(&self, watch: (Kind, usize)) -> bool {
        self.lock().remove(&watch)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<(Kind, usize)>> {
        self.answered.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One watch: its `Api` and, for a cluster-scoped type watched for some names only, a field
/// selector (`metadata.name=<ns>`).
pub(super) type Selected<K> = (Api<K>, Option<String>);

/// A watch of every object of each `Api`.
pub(super) fn every<K: Clone>(apis: &[Api<K>]) -> Vec<Selected<K>> {
    apis.iter().map(|api| (api.clone(), None)).collect()
}

/// Starts one watch of type `kind` per entry (one per namespace, or one for all), numbered
/// from `first` as [`probes`](super::probe::probes) numbers their probes. Each projects its
/// objects with `project` and sends them as `wrap(stream, update)`.
///
/// A type that may stop being served (a CRD) passes `gone`, its type and generation, and a
/// `to` whose stop is that generation's own: when one of its watches gets a 404 or a 403,
/// every watch of the generation stops and the task is sent [`Msg::CrdGone`] saying which.
pub(super) fn spawn_watches<K, T, P, W>(
    to: &Watches,
    kind: Kind,
    (first, watches): (usize, Vec<Selected<K>>),
    project: P,
    wrap: W,
    gone: Option<(Crd, u64)>,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    T: Send + 'static,
    P: Fn(&K) -> Option<T> + Clone + Send + 'static,
    W: Fn(usize, Update<T>) -> Msg + Clone + Send + 'static,
{
    let these = to.clone();
    for (stream, (api, fields)) in (first..).zip(watches) {
        let mut config = watcher::Config::default().any_semantic();
        if let Some(fields) = &fields {
            config = config.fields(fields);
        }
        let events = watcher::watcher(api, config);
        let (to, project, wrap, gone) = (these.clone(), project.clone(), wrap.clone(), gone);
        tokio::spawn(async move {
            let ended = pump(events, kind, stream, project, wrap, gone.is_some(), &to).await;
            if let (Ended::Gone(why), Some((crd, generation))) = (ended, gone) {
                to.stop.cancel();
                let _ = to.tx.send(Msg::CrdGone(crd, generation, why)).await;
            }
        });
    }
}

/// Why a watch's pump returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    Stopped,
    /// The type is not served (404) or may not be read (403), and `may_go` said it may
    /// stop being served.
    Gone(Gone),
}

/// Drives one watch: projects every object and forwards it to the model task; on errors,
/// tells the task and retries as [`retry`] says, waking early when its own probe found the
/// API server answering again ([`Wake`]).
async fn pump<K, T, S>(
    events: S,
    kind: Kind,
    stream: usize,
    project: impl Fn(&K) -> Option<T> + Send,
    wrap: impl Fn(usize, Update<T>) -> Msg + Send,
    may_go: bool,
    to: &Watches,
) -> Ended
where
    K: Resource + Send,
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send,
{
    let Watches { tx, wake, stop } = to;
    let mut events = std::pin::pin!(events);
    let mut backoff = retry::Backoff::default();
    // A 403 is logged as an error once, until the watch works again.
    let mut told_forbidden = false;
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return Ended::Stopped,
            n = events.next() => n,
        };
        let ev = match next {
            None => return Ended::Stopped,
            Some(Ok(ev)) => ev,
            Some(Err(e)) => {
                let failure = retry::classify(&e);
                if failure == Failure::NotServed && may_go {
                    tracing::info!(?kind, error = %error_chain(&e), "type no longer served (404; a deleted CRD); its watches stop");
                    return Ended::Gone(Gone::NotServed);
                }
                if failure == Failure::Forbidden && may_go {
                    // Optional, as an unserved CRD is: routes go on without what it gives.
                    super::crd::warn_forbidden(kind, &e);
                    return Ended::Gone(Gone::Forbidden);
                }
                if failure == Failure::Forbidden && !told_forbidden {
                    told_forbidden = true;
                    tracing::error!(?kind, stream, resource = kind.resource(), error = %error_chain(&e), "the gateway may not list or watch {} (403 Forbidden), so it cannot become ready: grant list and watch on it to the gateway's service account (`meshctl gateway install` creates that ClusterRole); retrying with back-off", kind.resource());
                }
                // Registered before the task hears of the error, so no wake-up is missed; an
                // answer left from an earlier failure's probes is dropped (one that lands
                // between this and the registration can still cut this back-off short once).
                wake.take((kind, stream));
                let mut woken = std::pin::pin!(wake.notify.notified());
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
                        if failure == Failure::Forbidden {
                            tracing::debug!(
                                ?kind,
                                stream,
                                ?delay,
                                "403 Forbidden; retrying after the delay"
                            );
                        } else {
                            tracing::warn!(?kind, stream, error = %error_chain(&e), ?delay, "watch failed; retrying after the delay or as soon as the API server answers");
                        }
                        let until = tokio::time::Instant::now() + delay;
                        loop {
                            tokio::select! {
                                _ = stop.cancelled() => return Ended::Stopped,
                                _ = tokio::time::sleep_until(until) => break,
                                _ = woken.as_mut() => {
                                    // Registered again before looking, so no wake-up is lost.
                                    woken.set(wake.notify.notified());
                                    woken.as_mut().enable();
                                    if wake.take((kind, stream)) {
                                        break;
                                    }
                                }
                            }
                        }
                        if tx.send(Msg::Retrying(kind, stream)).await.is_err() {
                            return Ended::Stopped;
                        }
                    }
                }
                continue;
            }
        };
        // `Init` starts every list attempt, a failing one too, and a page of a list can
        // come before a failing page: only a finished list or a watch event shows the
        // watch works, so only they reset the back-off.
        if matches!(ev, Event::InitDone | Event::Apply(_) | Event::Delete(_)) {
            backoff.reset();
            told_forbidden = false;
        }
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
