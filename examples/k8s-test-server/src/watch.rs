//! Watch streams: newline-delimited JSON events (ADDED, MODIFIED, DELETED, BOOKMARK, ERROR)
//! from the store's history, with 410 Gone for compacted resourceVersions.

use crate::error::ApiError;
use crate::resources::ResourceType;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{EventType, HistEvent, Store};
use bytes::Bytes;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// A watch request, parsed.
pub(crate) struct WatchRequest {
    pub rt: ResourceType,
    pub version: String,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// `None` for "" or "0": start with the current state as ADDED events.
    pub resource_version: Option<u64>,
    pub send_initial_events: bool,
    pub bookmarks: bool,
    pub timeout: Duration,
    pub bookmark_interval: Duration,
    pub meta_only: bool,
}

impl WatchRequest {
    fn matches(&self, ev_ns: &str, obj: &Value) -> bool {
        self.namespace.as_deref().is_none_or(|n| n == ev_ns)
            && self.labels.matches(obj)
            && self.fields.matches(obj)
    }

    fn render(&self, obj: &Value) -> Value {
        let mut o = obj.clone();
        if self.meta_only {
            return json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": o["metadata"].take()});
        }
        o["apiVersion"] = json!(self.rt.api_version(&self.version));
        o["kind"] = json!(self.rt.kind);
        o
    }

    fn line(&self, etype: &str, obj: Value) -> Bytes {
        let mut s = json!({"type": etype, "object": obj}).to_string();
        s.push('\n');
        Bytes::from(s)
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let api_version = if self.meta_only {
            "meta.k8s.io/v1".to_string()
        } else {
            self.rt.api_version(&self.version)
        };
        let kind = if self.meta_only {
            "PartialObjectMetadata"
        } else {
            self.rt.kind.as_str()
        };
        self.line(
            "BOOKMARK",
            json!({"kind": kind, "apiVersion": api_version, "metadata": meta}),
        )
    }

    /// The event (if any) this watcher sees for a change, honouring selectors: an object that
    /// stops matching is DELETED for this watcher, one that starts matching is ADDED.
    fn translate(&self, ev: &HistEvent) -> Option<Bytes> {
        if ev.key.group != self.rt.group || ev.key.resource != self.rt.plural {
            return None;
        }
        let now = self.matches(&ev.key.namespace, &ev.obj);
        let before = ev
            .prev
            .as_ref()
            .is_some_and(|p| self.matches(&ev.key.namespace, p));
        let etype = match ev.etype {
            EventType::Added if now => "ADDED",
            EventType::Modified if now && before => "MODIFIED",
            EventType::Modified if now => "ADDED",
            EventType::Modified if before => "DELETED",
            EventType::Deleted if now => "DELETED",
            _ => return None,
        };
        Some(self.line(etype, self.render(&ev.obj)))
    }
}

fn error_line(e: &ApiError) -> Bytes {
    let mut s = json!({"type": "ERROR", "object": e.to_status()}).to_string();
    s.push('\n');
    Bytes::from(s)
}

/// The real `--min-request-timeout` default.
const MIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(1800);

/// A watch's timeout as kube-apiserver picks it (`endpoints/handlers/get.go`): the client's
/// `timeoutSeconds`, else (or for 0) the minimum request timeout times a random factor in
/// [1, 2), which spreads the re-watches of many clients.
pub(crate) fn timeout(timeout_seconds: Option<&str>) -> Duration {
    match timeout_seconds.and_then(|t| t.parse::<u64>().ok()) {
        Some(t) if t > 0 => Duration::from_secs(t),
        _ => MIN_REQUEST_TIMEOUT.mul_f64(1.0 + rand::random::<f64>()),
    }
}

/// Starts a watch; the receiver yields the chunks of the response body. The stream ends at
/// the timeout (or when `end` changes, the test control for it), on server shutdown, or
/// after an ERROR event.
pub(crate) fn start(
    store: Store,
    req: WatchRequest,
    mut shutdown: watch::Receiver<bool>,
    mut end: watch::Receiver<u64>,
) -> mpsc::Receiver<Bytes> {
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    // Only ends requested after this watch started count.
    end.borrow_and_update();
    tokio::spawn(async move {
        let mut signal = store.subscribe();
        let deadline = tokio::time::Instant::now() + req.timeout;
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::now() + req.bookmark_interval,
            req.bookmark_interval,
        );
        // Initial state, under one lock, so nothing is missed between snapshot and stream.
        let (mut cursor, epoch, initial) = {
            let mut st = store.lock();
            let mut out = Vec::new();
            match req.resource_version {
                None => {
                    for (k, o) in st.objects.iter() {
                        if k.group == req.rt.group
                            && k.resource == req.rt.plural
                            && req.matches(&k.namespace, o)
                        {
                            out.push(req.line("ADDED", req.render(o)));
                        }
                    }
                    if req.send_initial_events && req.bookmarks {
                        out.push(req.bookmark(st.rv, true));
                    }
                }
                Some(rv) if rv < st.compacted => {
                    st.expired_answers += 1;
                    out.push(error_line(&ApiError::expired(rv, st.compacted)))
                }
                Some(_) => {}
            }
            (req.resource_version.unwrap_or(st.rv), st.epoch, out)
        };
        let errored = req.resource_version.is_some_and(|_| !initial.is_empty());
        for chunk in initial {
            if tx.send(chunk).await.is_err() {
                return;
            }
        }
        if errored {
            return;
        }
        loop {
            let (events, gone): (Vec<Arc<HistEvent>>, Option<ApiError>) = {
                let mut st = store.lock();
                if st.epoch != epoch || cursor < st.compacted {
                    st.expired_answers += 1;
                    (Vec::new(), Some(ApiError::expired(cursor, st.compacted)))
                } else {
                    let start = st.history.partition_point(|e| e.rv <= cursor);
                    let evs: Vec<_> = st.history.range(start..).cloned().collect();
                    (evs, None)
                }
            };
            if let Some(e) = gone {
                let _ = tx.send(error_line(&e)).await;
                return;
            }
            // A deleted CRD takes its storage with it: the type's open watches end.
            let crd_deleted = events.iter().any(|e| {
                e.etype == EventType::Deleted
                    && e.key.group == "apiextensions.k8s.io"
                    && e.key.resource == "customresourcedefinitions"
            });
            for ev in events {
                cursor = ev.rv;
                if let Some(line) = req.translate(&ev)
                    && tx.send(line).await.is_err()
                {
                    return;
                }
            }
            if crd_deleted
                && store
                    .resolve(&req.rt.group, &req.version, &req.rt.plural)
                    .is_none()
            {
                return;
            }
            tokio::select! {
                changed = signal.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(deadline) => return,
                _ = ticker.tick(), if req.bookmarks => {
                    if tx.send(req.bookmark(cursor, false)).await.is_err() {
                        return;
                    }
                }
                _ = shutdown.changed() => return,
                _ = end.changed() => return,
                _ = tx.closed() => return,
            }
        }
    });
    rx
}
