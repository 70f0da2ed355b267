//! The object store of one simulated cluster: JSON objects keyed by
//! (group, resource, namespace, name), one global resourceVersion counter, the event history
//! that watches and controllers follow, and the signal they wait on. Reads are in `read.rs`,
//! writes in `write.rs`, admission defaulting in `defaults.rs`, controllers in
//! `controllers.rs`.

use crate::clock::Clock;
use crate::error::ApiError;
use crate::list_keys::Lists;
use crate::resources::{self, ResourceType};
use crate::util;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// Where an object lives. `namespace` is empty for cluster-scoped objects.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjKey {
    pub group: String,
    pub resource: String,
    pub namespace: String,
    pub name: String,
}

impl ObjKey {
    pub fn new(rt: &ResourceType, ns: Option<&str>, name: &str) -> Self {
        ObjKey {
            group: rt.group.clone(),
            resource: rt.plural.clone(),
            namespace: if rt.namespaced {
                ns.unwrap_or("").to_string()
            } else {
                String::new()
            },
            name: name.to_string(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One change, kept for watches.
#[derive(Debug)]
pub struct HistEvent {
    pub rv: u64,
    pub etype: EventType,
    pub key: ObjKey,
    pub obj: Value,
    pub prev: Option<Value>,
}

/// What watchers wait on: the latest resourceVersion and the expiry epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Signal {
    pub rv: u64,
    pub epoch: u64,
}

/// Tunables of the store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Events kept for watches; older resourceVersions get 410 Gone.
    pub history_limit: usize,
    /// Delay of the (asynchronous) token and namespace controllers.
    pub controller_delay: Duration,
    /// Smallest `spec.expirationSeconds` a TokenRequest may ask for (real: 600).
    pub min_token_expiration_seconds: i64,
    /// `--service-account-max-token-expiration`: a TokenRequest asking for longer gets this
    /// lifetime instead (the real server also sends a Warning header, not modelled). `None`:
    /// no cap, the real default.
    pub max_token_expiration_seconds: Option<i64>,
    /// Accept loopback addresses (127.0.0.0/8, ::1) in EndpointSlices and Endpoints. A real
    /// API server refuses them; only tests whose backends listen on loopback set this.
    pub allow_loopback_endpoint_addresses: bool,
    /// The cluster's IP families, primary first: `["IPv4"]` (single-stack, kind's default),
    /// `["IPv6"]`, or both for a dual-stack cluster. Services are defaulted and checked
    /// against them (`ip_families.rs`).
    pub ip_families: &'static [&'static str],
    /// Act as the cloud service controller does for finalizers: put
    /// `service.kubernetes.io/load-balancer-cleanup` on every LoadBalancer Service not being
    /// deleted (`controllers.rs`). Deleting such a Service then only marks it, until a write
    /// takes the finalizer off (the test's part: no load balancer is deleted here). Off by
    /// default, as a cluster without a cloud controller (kind) has no such finalizer.
    pub load_balancer_cleanup_finalizer: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            history_limit: 100_000,
            controller_delay: Duration::from_millis(50),
            min_token_expiration_seconds: 600,
            max_token_expiration_seconds: None,
            allow_loopback_endpoint_addresses: false,
            ip_families: &["IPv4"],
            load_balancer_cleanup_finalizer: false,
        }
    }
}

pub(crate) struct State {
    pub objects: BTreeMap<ObjKey, Value>,
    pub rv: u64,
    pub history: VecDeque<Arc<HistEvent>>,
    /// Watches from a resourceVersion below this get 410 Gone.
    pub compacted: u64,
    /// Watches answered with 410 Gone (too old resourceVersion), for tests to assert on.
    pub expired_answers: u64,
    pub epoch: u64,
    /// What each applier of an object (keyed by its managedFields identity, the subresource
    /// included: `apply.rs` `apply_identity`) last applied with server-side apply.
    pub applied: HashMap<(ObjKey, String), Value>,
    /// The fields each Update-operation field manager (keyed by its managedFields identity)
    /// of an object owns, with the values it set (`write.rs`).
    pub updated: HashMap<(ObjKey, String), Value>,
    /// Allocators of Service clusterIPs and nodePorts.
    pub next_ip: u32,
    pub next_node_port: u32,
}

impl State {
    /// The entry of `spec.versions` for `version` in the CRD that defines `rt`, a custom
    /// resource.
    pub(crate) fn crd_version(&self, rt: &ResourceType, version: &str) -> Option<&Value> {
        let start = ObjKey {
            group: "apiextensions.k8s.io".into(),
            resource: "customresourcedefinitions".into(),
            namespace: String::new(),
            name: String::new(),
        };
        self.objects
            .range(start..)
            .take_while(|(k, _)| {
                k.group == "apiextensions.k8s.io" && k.resource == "customresourcedefinitions"
            })
            .map(|(_, crd)| crd)
            .find(|crd| {
                crd.pointer("/spec/group").and_then(Value::as_str) == Some(rt.group.as_str())
                    && crd.pointer("/spec/names/plural").and_then(Value::as_str)
                        == Some(rt.plural.as_str())
            })?
            .pointer("/spec/versions")?
            .as_array()?
            .iter()
            .find(|v| v.get("name").and_then(Value::as_str) == Some(version))
    }

    /// Where the lists of `rt`'s objects (written as `version`) are declared: a built-in
    /// kind's tables, or the `openAPIV3Schema` of the custom resource's CRD for that version.
    pub(crate) fn lists(&self, rt: &ResourceType, version: &str) -> Lists {
        if !rt.custom {
            return Lists::builtin(&rt.group, &rt.kind);
        }
        let schema = self
            .crd_version(rt, version)
            .and_then(|v| v.pointer("/schema/openAPIV3Schema").cloned());
        Lists::Custom(schema.map(Arc::new))
    }

    /// The field labels a custom resource's CRD makes selectable for `version`
    /// (`selectableFields`, each `jsonPath` without its leading dot).
    pub(crate) fn selectable_fields(&self, rt: &ResourceType, version: &str) -> Vec<String> {
        self.crd_version(rt, version)
            .and_then(|v| v.get("selectableFields")?.as_array())
            .into_iter()
            .flatten()
            .filter_map(|f| f.get("jsonPath")?.as_str())
            .map(|p| p.trim_start_matches('.').to_string())
            .collect()
    }

    /// The objects of one resource (in namespace `ns`, or all) as they were at revision `rev`,
    /// which must not be below `compacted`: the current objects with every later change
    /// undone. Each event keeps the object it replaced (`prev`, `None` for a create), so the
    /// first event after `rev` for a key tells what the key held at `rev`; keys no event
    /// touched since are as they are now. This is what etcd serves for a read at `rev`.
    pub(crate) fn objects_at<'a>(
        &'a self,
        group: &str,
        resource: &str,
        ns: Option<&str>,
        rev: u64,
    ) -> BTreeMap<&'a ObjKey, &'a Value> {
        let ours = |k: &ObjKey| {
            k.group == group && k.resource == resource && ns.is_none_or(|n| n == k.namespace)
        };
        let start = ObjKey {
            group: group.to_string(),
            resource: resource.to_string(),
            namespace: ns.unwrap_or("").to_string(),
            name: String::new(),
        };
        let mut out: BTreeMap<&ObjKey, &Value> = self
            .objects
            .range(start..)
            .take_while(|(k, _)| ours(k))
            .collect();
        let first_later = self.history.partition_point(|e| e.rv <= rev);
        let mut undone = std::collections::HashSet::new();
        for e in self.history.range(first_later..) {
            if !ours(&e.key) || !undone.insert(&e.key) {
                continue;
            }
            match &e.prev {
                Some(p) => out.insert(&e.key, p),
                None => out.remove(&e.key),
            };
        }
        out
    }
}

struct Shared {
    state: Mutex<State>,
    signal: watch::Sender<Signal>,
    clock: Clock,
    ca_pem: String,
    admin_token: String,
    config: StoreConfig,
    builtins: Vec<ResourceType>,
}

/// The store of one test cluster. Cheap to clone (shared).
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

/// A store handle that does not keep the store alive (for background controllers).
#[derive(Clone)]
pub(crate) struct WeakStore(Weak<Shared>);

impl WeakStore {
    pub fn upgrade(&self) -> Option<Store> {
        self.0.upgrade().map(|shared| Store { shared })
    }
}

/// What changed after a resourceVersion, for controllers that follow the store.
pub(crate) enum Changes {
    Events(Vec<Arc<HistEvent>>),
    /// The history no longer reaches back that far: re-list.
    Gone,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("resource_version", &self.resource_version())
            .finish()
    }
}

pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

pub(crate) fn meta_mut(obj: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"].as_object_mut().expect("metadata object")
}

impl Store {
    pub(crate) fn new(ca_pem: String, admin_token: String, config: StoreConfig) -> Store {
        let (signal, _) = watch::channel(Signal::default());
        Store {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    objects: BTreeMap::new(),
                    rv: 0,
                    history: VecDeque::new(),
                    compacted: 0,
                    expired_answers: 0,
                    epoch: 0,
                    applied: HashMap::new(),
                    updated: HashMap::new(),
                    next_ip: 10,
                    next_node_port: 30000,
                }),
                signal,
                clock: Clock::default(),
                ca_pem,
                admin_token,
                config,
                builtins: resources::builtins(),
            }),
        }
    }

    pub(crate) fn downgrade(&self) -> WeakStore {
        WeakStore(Arc::downgrade(&self.shared))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().expect("store lock poisoned")
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Signal> {
        self.shared.signal.subscribe()
    }

    /// The server clock (inject time for token expiry).
    pub fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    pub fn ca_pem(&self) -> &str {
        &self.shared.ca_pem
    }

    pub fn admin_token(&self) -> &str {
        &self.shared.admin_token
    }

    pub(crate) fn config(&self) -> &StoreConfig {
        &self.shared.config
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.lock().rv
    }

    pub(crate) fn now(&self) -> String {
        util::rfc3339(self.clock().now())
    }

    // ---- resource types ------------------------------------------------------------------

    fn types_locked(&self, st: &State) -> Vec<ResourceType> {
        let mut v = self.shared.builtins.clone();
        let start = ObjKey {
            group: "apiextensions.k8s.io".into(),
            resource: "customresourcedefinitions".into(),
            namespace: String::new(),
            name: String::new(),
        };
        for (k, crd) in st.objects.range(start..) {
            if k.group != "apiextensions.k8s.io" || k.resource != "customresourcedefinitions" {
                break;
            }
            if let Some(rt) = resources::from_crd(crd)
                && !v
                    .iter()
                    .any(|b| b.group == rt.group && b.plural == rt.plural)
            {
                v.push(rt);
            }
        }
        v
    }

    /// All served resource types: built-ins plus those defined by stored CRDs.
    pub fn resource_types(&self) -> Vec<ResourceType> {
        let st = self.lock();
        self.types_locked(&st)
    }

    /// The type served at `/apis/<group>/<version>/<plural>` (or `/api/v1/<plural>`).
    pub fn resolve(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.resource_types()
            .into_iter()
            .find(|r| r.group == group && r.plural == plural && r.serves(version))
    }

    /// The type and version for an object's `apiVersion` and `kind`.
    pub fn resolve_kind(
        &self,
        api_version: &str,
        kind: &str,
    ) -> Result<(ResourceType, String), ApiError> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        self.resource_types()
            .into_iter()
            .find(|r| r.group == group && r.kind == kind && r.serves(version))
            .map(|r| (r, version.to_string()))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "no kind \"{kind}\" is registered for version \"{api_version}\""
                ))
            })
    }

    pub(crate) fn resolve_obj(&self, obj: &Value) -> Result<(ResourceType, String), ApiError> {
        let av = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        self.resolve_kind(av, kind)
    }

    // ---- history --------------------------------------------------------------------------

    pub(crate) fn render(rt: &ResourceType, version: &str, obj: &Value) -> Value {
        let mut o = obj.clone();
        o["apiVersion"] = json!(rt.api_version(version));
        o["kind"] = json!(rt.kind);
        o
    }

    /// Stores one change: bumps the resourceVersion, records the event for watches and
    /// controllers, and wakes them.
    pub(crate) fn commit(
        &self,
        st: &mut State,
        etype: EventType,
        key: ObjKey,
        mut obj: Value,
        prev: Option<Value>,
    ) -> Value {
        st.rv += 1;
        meta_mut(&mut obj).insert("resourceVersion".into(), json!(st.rv.to_string()));
        match etype {
            EventType::Deleted => {
                st.objects.remove(&key);
                st.applied.retain(|(k, _), _| *k != key);
                st.updated.retain(|(k, _), _| *k != key);
            }
            _ => {
                st.objects.insert(key.clone(), obj.clone());
            }
        }
        st.history.push_back(Arc::new(HistEvent {
            rv: st.rv,
            etype,
            key,
            obj: obj.clone(),
            prev,
        }));
        while st.history.len() > self.shared.config.history_limit {
            if let Some(e) = st.history.pop_front() {
                st.compacted = e.rv;
            }
        }
        self.shared.signal.send_replace(Signal {
            rv: st.rv,
            epoch: st.epoch,
        });
        obj
    }

    /// Compacts the history: open watches end with a 410 Gone ERROR event and
    /// watches from any older resourceVersion get 410 Gone.
    pub fn expire_watches(&self) {
        let mut st = self.lock();
        st.history.clear();
        st.compacted = st.rv;
        st.epoch += 1;
        self.shared.signal.send_replace(Signal {
            rv: st.rv,
            epoch: st.epoch,
        });
    }

    /// What a restarted API server's watch cache looks like: it starts from a fresh list at
    /// the current resourceVersion, so every watch resumed from an older one gets 410 Gone.
    pub(crate) fn restart_watch_cache(&self) {
        let mut st = self.lock();
        st.history.clear();
        st.compacted = st.rv;
        self.shared.signal.send_replace(Signal {
            rv: st.rv,
            epoch: st.epoch,
        });
    }

    /// How many watches were answered with 410 Gone (a too old resourceVersion).
    pub fn expired_watch_answers(&self) -> u64 {
        self.lock().expired_answers
    }

    /// The events after `cursor`, or [`Changes::Gone`] when the history was compacted past it.
    pub(crate) fn changes_after(&self, cursor: u64) -> Changes {
        let st = self.lock();
        if cursor < st.compacted {
            return Changes::Gone;
        }
        let start = st.history.partition_point(|e| e.rv <= cursor);
        Changes::Events(st.history.range(start..).cloned().collect())
    }
}
