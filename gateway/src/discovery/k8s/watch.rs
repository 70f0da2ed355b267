//! The watches: one kube-runtime watcher per type and namespace, pumped into the model
//! task as projected [`Update`]s, and the probes that tell when a failing watch can work.

use std::fmt::Debug;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::{Stream, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::cache::Update;
use super::client::{REACH_TIMEOUT, error_chain};
use super::project::{self, DrInfo, ObjKey, PodLabels, SliceInfo, SvcInfo};
use super::retry::{self, Failure};

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
    /// An update of the rules of one generation (see [`crd`](super::crd)).
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
    pub kind: Kind,
    pub stream: usize,
    pub run: Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>,
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

/// Why a watch's pump returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    Stopped,
    /// The type is not served (404): only DestinationRules, whose CRD may be deleted.
    NotServed,
}

/// Drives one watch: projects every object and forwards it to the model task; on errors,
/// tells the task and retries as [`retry`] says, waking early when `wake` is notified
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
    let mut backoff = retry::Backoff::default();
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
