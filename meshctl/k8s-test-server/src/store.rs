//! The object store of one simulated cluster: JSON objects keyed by
//! (group, resource, namespace, name), one global resourceVersion counter, an event history
//! for watches, and the few controllers a test needs (token, namespace defaults).

use crate::auth::{Identity, TokenRecord};
use crate::clock::Clock;
use crate::error::ApiError;
use crate::patch;
use crate::resources::{self, ResourceType};
use crate::selectors::{FieldSelector, LabelSelector};
use crate::util;
use crate::validation;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
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
    /// Accept loopback addresses (127.0.0.0/8, ::1) in EndpointSlices and Endpoints. A real
    /// API server refuses them; only tests whose backends listen on loopback set this.
    pub allow_loopback_endpoint_addresses: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            history_limit: 100_000,
            controller_delay: Duration::from_millis(50),
            min_token_expiration_seconds: 600,
            allow_loopback_endpoint_addresses: false,
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
    pub tokens: HashMap<String, TokenRecord>,
    applied: HashMap<(ObjKey, String), Value>,
    next_ip: u32,
    next_node_port: u32,
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

/// Options of one write.
#[derive(Clone, Debug, Default)]
pub(crate) struct WriteOpts {
    pub dry_run: bool,
    pub manager: Option<String>,
    /// Write to the `status` subresource.
    pub status: bool,
    /// Direct store access: keep status as given, no resourceVersion precondition.
    pub raw: bool,
}

/// How a PATCH body is interpreted.
#[derive(Clone, Debug)]
pub(crate) enum PatchKind {
    Merge,
    Json,
    /// Server-side apply; `force` is accepted, conflicts are never reported (README).
    Apply,
}

/// The store of one test cluster. Cheap to clone (shared).
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("resource_version", &self.resource_version())
            .finish()
    }
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn meta_mut(obj: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"].as_object_mut().expect("metadata object")
}

/// The object without the fields that change on every write (for no-op detection).
fn comparable(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        m.remove("managedFields");
    }
    o
}

/// Everything except metadata and status: changes here bump `metadata.generation`.
fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            m.remove(k);
        }
    }
    o
}

impl Store {
    pub(crate) fn new(ca_pem: String, admin_token: String, config: StoreConfig) -> Store {
        let (signal, _) = watch::channel(Signal::default());
        let store = Store {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    objects: BTreeMap::new(),
                    rv: 0,
                    history: VecDeque::new(),
                    compacted: 0,
                    expired_answers: 0,
                    epoch: 0,
                    tokens: HashMap::new(),
                    applied: HashMap::new(),
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
        };
        store.seed();
        store
    }

    /// What a fresh cluster has: the standard namespaces and the RBAC roles that let every
    /// authenticated user use discovery and self-subject access reviews.
    fn seed(&self) {
        let objs = [
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}}),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-public"}}),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-node-lease"}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": "cluster-admin", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
                "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, {"nonResourceURLs": ["*"], "verbs": ["*"]}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": "cluster-admin", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:masters"}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": "system:discovery", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
                "rules": [{"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*", "/readyz", "/version", "/version/"], "verbs": ["get"]}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": "system:discovery", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:discovery"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:authenticated"}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": "system:basic-user", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
                "rules": [{"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]},
                          {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                "metadata": {"name": "system:basic-user", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:basic-user"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:authenticated"}]}),
        ];
        for o in objs {
            self.create(o).expect("seed object");
        }
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            self.namespace_defaults(ns);
        }
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

    fn now(&self) -> String {
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

    fn resolve_obj(&self, obj: &Value) -> Result<(ResourceType, String), ApiError> {
        let av = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        self.resolve_kind(av, kind)
    }

    // ---- direct (non-HTTP) access for tests ----------------------------------------------

    /// Creates an object as the API would (defaulting, status rules, controllers).
    pub fn create(&self, obj: Value) -> Result<Value, ApiError> {
        let (rt, v) = self.resolve_obj(&obj)?;
        let ns = meta_str(&obj, "namespace").map(str::to_string);
        self.create_obj(&rt, &v, ns.as_deref(), obj, &WriteOpts::default())
    }

    /// Creates or replaces an object verbatim, status included (test setup: e.g. a Service's
    /// load-balancer address or a Deployment's ready replicas).
    pub fn apply(&self, obj: Value) -> Result<Value, ApiError> {
        let (rt, v) = self.resolve_obj(&obj)?;
        let ns = meta_str(&obj, "namespace").map(str::to_string);
        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
        let raw = WriteOpts {
            raw: true,
            ..Default::default()
        };
        if self.get_obj(&rt, &v, ns.as_deref(), &name).is_ok() {
            self.update_obj(&rt, &v, ns.as_deref(), &name, obj, &raw)
        } else {
            self.create_obj(&rt, &v, ns.as_deref(), obj, &raw)
        }
    }

    /// One object, or `None`.
    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let (rt, v) = self.resolve_kind(api_version, kind).ok()?;
        self.get_obj(&rt, &v, namespace, name).ok()
    }

    /// All objects of a kind, in one namespace or (with `None`) all of them.
    pub fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        let Ok((rt, v)) = self.resolve_kind(api_version, kind) else {
            return Vec::new();
        };
        self.list_objs(
            &rt,
            &v,
            namespace,
            &LabelSelector::default(),
            &FieldSelector::default(),
            None,
            None,
        )
        .map(|l| l.items)
        .unwrap_or_default()
    }

    /// Deletes an object; returns what was deleted.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let (rt, v) = self.resolve_kind(api_version, kind)?;
        self.delete_obj(&rt, &v, namespace, name, &WriteOpts::default(), None, None)
    }

    // ---- API operations ------------------------------------------------------------------

    fn render(rt: &ResourceType, version: &str, obj: &Value) -> Value {
        let mut o = obj.clone();
        o["apiVersion"] = json!(rt.api_version(version));
        o["kind"] = json!(rt.kind);
        o
    }

    fn commit(
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

    fn record_manager(
        &self,
        obj: &mut Value,
        manager: Option<&str>,
        operation: &str,
        api_version: &str,
        subresource: bool,
    ) {
        let Some(manager) = manager else { return };
        let entry = {
            let mut e = json!({"manager": manager, "operation": operation, "apiVersion": api_version,
                "time": self.now(), "fieldsType": "FieldsV1", "fieldsV1": {}});
            if subresource {
                e["subresource"] = json!("status");
            }
            e
        };
        let m = meta_mut(obj);
        let list = m.entry("managedFields").or_insert_with(|| json!([]));
        if let Some(a) = list.as_array_mut() {
            a.retain(|e| !(e["manager"] == manager && e["operation"] == operation));
            a.push(entry);
        }
    }

    pub(crate) fn get_obj(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let st = self.lock();
        st.objects
            .get(&ObjKey::new(rt, ns, name))
            .map(|o| Self::render(rt, version, o))
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn list_objs(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        labels: &LabelSelector,
        fields: &FieldSelector,
        limit: Option<usize>,
        cont: Option<&str>,
    ) -> Result<ListResult, ApiError> {
        let st = self.lock();
        let ns = if rt.namespaced { ns } else { None };
        let (list_rv, after) = match cont {
            Some(c) if !c.is_empty() => {
                let raw = util::b64_decode(c)
                    .and_then(|b| String::from_utf8(b).ok())
                    .unwrap_or_default();
                let (rv, key) = raw
                    .split_once('|')
                    .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
                let rv: u64 = rv
                    .parse()
                    .map_err(|_| ApiError::bad_request("continue key is not valid"))?;
                (rv, Some(key.to_string()))
            }
            _ => (st.rv, None),
        };
        let start = ObjKey {
            group: rt.group.clone(),
            resource: rt.plural.clone(),
            namespace: ns.unwrap_or("").into(),
            name: String::new(),
        };
        let mut items = Vec::new();
        let mut next = None;
        let mut remaining = 0usize;
        for (k, o) in st.objects.range(start..) {
            if k.group != rt.group
                || k.resource != rt.plural
                || ns.is_some_and(|n| n != k.namespace)
            {
                break;
            }
            if let Some(a) = after.as_deref() {
                let (ans, aname) = a.split_once('/').unwrap_or(("", a));
                if (k.namespace.as_str(), k.name.as_str()) <= (ans, aname) {
                    continue;
                }
            }
            if !labels.matches(o) || !fields.matches(o) {
                continue;
            }
            if limit.is_some_and(|l| l > 0 && items.len() >= l) {
                if next.is_none() {
                    let last: &Value = items.last().expect("limit > 0");
                    let lk = format!(
                        "{}/{}",
                        meta_str(last, "namespace").unwrap_or(""),
                        meta_str(last, "name").unwrap_or("")
                    );
                    next = Some(util::b64(format!("{list_rv}|{lk}").as_bytes()));
                }
                remaining += 1;
                continue;
            }
            items.push(Self::render(rt, version, o));
        }
        Ok(ListResult {
            items,
            resource_version: list_rv,
            continue_token: next,
            remaining,
        })
    }

    pub(crate) fn create_obj(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        mut obj: Value,
        opts: &WriteOpts,
    ) -> Result<Value, ApiError> {
        if !obj.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request must be a JSON object",
            ));
        }
        if let Some(k) = obj.get("kind").and_then(Value::as_str)
            && !k.is_empty()
            && k != rt.kind
        {
            return Err(ApiError::bad_request(format!(
                "the kind of the object ({k}) does not match the resource ({})",
                rt.kind
            )));
        }
        let body_ns = meta_str(&obj, "namespace").map(str::to_string);
        let ns = if rt.namespaced {
            let ns = ns
                .map(str::to_string)
                .or(body_ns.clone())
                .unwrap_or_else(|| "default".into());
            if body_ns.as_ref().is_some_and(|b| *b != ns) {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
            meta_mut(&mut obj).insert("namespace".into(), json!(ns));
            Some(ns)
        } else {
            meta_mut(&mut obj).remove("namespace");
            None
        };
        let name = match meta_str(&obj, "name") {
            Some(n) => n.to_string(),
            None => match meta_str(&obj, "generateName") {
                Some(g) => format!("{g}{}", util::random_suffix(5)),
                None => {
                    return Err(ApiError::invalid(
                        &rt.group,
                        &rt.kind,
                        "",
                        "metadata.name",
                        "FieldValueRequired",
                        "Required value: name or generateName is required",
                    ));
                }
            },
        };
        let mut st = self.lock();
        if let Some(ns) = &ns
            && !st.objects.contains_key(&ObjKey {
                group: String::new(),
                resource: "namespaces".into(),
                namespace: String::new(),
                name: ns.clone(),
            })
        {
            return Err(ApiError::not_found("", "namespaces", ns));
        }
        let key = ObjKey::new(rt, ns.as_deref(), &name);
        if st.objects.contains_key(&key) {
            return Err(ApiError::already_exists(&rt.group, &rt.plural, &name));
        }
        obj["apiVersion"] = json!(rt.api_version(version));
        obj["kind"] = json!(rt.kind);
        {
            let now = self.now();
            let has_spec = obj.get("spec").is_some();
            let m = meta_mut(&mut obj);
            m.insert("name".into(), json!(name));
            m.insert("uid".into(), json!(util::uuid()));
            m.insert("creationTimestamp".into(), json!(now));
            m.remove("resourceVersion");
            m.remove("deletionTimestamp");
            if has_spec || rt.custom {
                m.insert("generation".into(), json!(1));
            }
        }
        if rt.status
            && !opts.raw
            && let Some(o) = obj.as_object_mut()
        {
            o.remove("status");
        }
        self.default_object(&mut st, rt, &mut obj, None)?;
        let op = if opts.raw {
            None
        } else {
            opts.manager.as_deref()
        };
        self.record_manager(&mut obj, op, "Update", &rt.api_version(version), false);
        if opts.dry_run {
            return Ok(obj);
        }
        let out = self.commit(&mut st, EventType::Added, key, obj, None);
        drop(st);
        self.after_create(rt, ns.as_deref(), &name, &out);
        Ok(out)
    }

    pub(crate) fn update_obj(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        name: &str,
        body: Value,
        opts: &WriteOpts,
    ) -> Result<Value, ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request must be a JSON object",
            ));
        }
        if let Some(n) = meta_str(&body, "name")
            && n != name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )));
        }
        if rt.namespaced
            && let (Some(b), Some(u)) = (meta_str(&body, "namespace"), ns)
            && b != u
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let mut st = self.lock();
        let key = ObjKey::new(rt, ns, name);
        let old = st
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        if !opts.raw
            && let Some(want) = meta_str(&body, "resourceVersion")
            && Some(want) != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::conflict(&rt.group, &rt.plural, name));
        }
        let new = self.merge_update(&mut st, rt, version, &old, body, opts)?;
        if comparable(&new) == comparable(&old) {
            return Ok(Self::render(rt, version, &old));
        }
        if opts.dry_run {
            return Ok(new);
        }
        Ok(self.commit(&mut st, EventType::Modified, key, new, Some(old)))
    }

    /// Builds the object an update stores: immutable metadata kept, status rules applied,
    /// generation bumped on spec changes, type defaults.
    fn merge_update(
        &self,
        st: &mut State,
        rt: &ResourceType,
        version: &str,
        old: &Value,
        body: Value,
        opts: &WriteOpts,
    ) -> Result<Value, ApiError> {
        let mut new = if opts.status && rt.status {
            let mut n = old.clone();
            n["status"] = body.get("status").cloned().unwrap_or(Value::Null);
            if n["status"].is_null() {
                n.as_object_mut().expect("object").remove("status");
            }
            n
        } else {
            let mut n = body;
            if rt.status && !opts.raw {
                match old.get("status") {
                    Some(s) => n["status"] = s.clone(),
                    None => {
                        n.as_object_mut().expect("object").remove("status");
                    }
                }
            }
            n
        };
        new["apiVersion"] = json!(rt.api_version(version));
        new["kind"] = json!(rt.kind);
        let old_meta = old.get("metadata").cloned().unwrap_or(json!({}));
        {
            let m = meta_mut(&mut new);
            for k in [
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
            ] {
                match old_meta.get(k) {
                    Some(v) => m.insert(k.into(), v.clone()),
                    None => m.remove(k),
                };
            }
            m.insert(
                "resourceVersion".into(),
                old_meta
                    .get("resourceVersion")
                    .cloned()
                    .unwrap_or(json!("")),
            );
            if !m.contains_key("managedFields")
                && let Some(mf) = old_meta.get("managedFields")
            {
                m.insert("managedFields".into(), mf.clone());
            }
            match old_meta.get("generation") {
                Some(g) => m.insert("generation".into(), g.clone()),
                None => m.remove("generation"),
            };
        }
        self.default_object(st, rt, &mut new, Some(old))?;
        if spec_part(&new) != spec_part(old)
            && let Some(g) = old_meta.get("generation").and_then(Value::as_i64)
        {
            meta_mut(&mut new).insert("generation".into(), json!(g + 1));
        }
        if comparable(&new) != comparable(old) {
            let op = if opts.raw {
                None
            } else {
                opts.manager.as_deref()
            };
            self.record_manager(
                &mut new,
                op,
                "Update",
                &rt.api_version(version),
                opts.status,
            );
        }
        Ok(new)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn patch_obj(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        name: &str,
        kind: PatchKind,
        patch_body: Value,
        opts: &WriteOpts,
    ) -> Result<(Value, bool), ApiError> {
        let current = self.get_obj(rt, version, ns, name);
        match kind {
            PatchKind::Apply => {
                let manager = opts.manager.clone().ok_or_else(|| {
                    ApiError::new(422, "Invalid", "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch")
                })?;
                if !patch_body.is_object() {
                    return Err(ApiError::bad_request("apply patch must be an object"));
                }
                if let Some(n) = meta_str(&patch_body, "name")
                    && n != name
                {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({n}) does not match the name on the URL ({name})"
                    )));
                }
                let key = ObjKey::new(rt, ns, name);
                let mut applied = patch_body.clone();
                if let Some(m) = applied.get_mut("metadata").and_then(Value::as_object_mut) {
                    m.remove("resourceVersion");
                }
                match current {
                    Err(e) if e.code == 404 => {
                        let mut obj = patch_body;
                        meta_mut(&mut obj).insert("name".into(), json!(name));
                        let create_opts = WriteOpts {
                            manager: None,
                            ..opts.clone()
                        };
                        let mut created = self.create_obj(
                            rt,
                            version,
                            ns,
                            obj,
                            &WriteOpts {
                                dry_run: true,
                                ..create_opts.clone()
                            },
                        )?;
                        self.record_manager(
                            &mut created,
                            Some(&manager),
                            "Apply",
                            &rt.api_version(version),
                            opts.status,
                        );
                        if opts.dry_run {
                            return Ok((created, true));
                        }
                        let out = self.create_obj(
                            rt,
                            version,
                            ns,
                            created,
                            &WriteOpts {
                                raw: false,
                                ..create_opts
                            },
                        )?;
                        // create_obj keeps managedFields from the body; remember what this manager applied.
                        self.lock().applied.insert((key, manager), applied);
                        Ok((out, true))
                    }
                    Err(e) => Err(e),
                    Ok(live) => {
                        let prev = self
                            .lock()
                            .applied
                            .get(&(key.clone(), manager.clone()))
                            .cloned();
                        let mut new = live.clone();
                        if let Some(prev) = &prev {
                            patch::prune_removed(&mut new, prev, &applied);
                        }
                        patch::apply_merge(&mut new, &applied);
                        if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
                            m.remove("resourceVersion");
                        }
                        let mut st = self.lock();
                        let old = st
                            .objects
                            .get(&key)
                            .cloned()
                            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
                        let mut merged = self.merge_update(
                            &mut st,
                            rt,
                            version,
                            &old,
                            new,
                            &WriteOpts {
                                manager: None,
                                ..opts.clone()
                            },
                        )?;
                        if comparable(&merged) == comparable(&old) {
                            st.applied.insert((key, manager), applied);
                            return Ok((Self::render(rt, version, &old), false));
                        }
                        self.record_manager(
                            &mut merged,
                            Some(&manager),
                            "Apply",
                            &rt.api_version(version),
                            opts.status,
                        );
                        if opts.dry_run {
                            return Ok((merged, false));
                        }
                        st.applied.insert((key.clone(), manager), applied);
                        Ok((
                            self.commit(&mut st, EventType::Modified, key, merged, Some(old)),
                            false,
                        ))
                    }
                }
            }
            PatchKind::Merge | PatchKind::Json => {
                let mut doc = current?;
                let rv_before = meta_str(&doc, "resourceVersion").map(str::to_string);
                match kind {
                    PatchKind::Json => patch::json_patch(&mut doc, &patch_body)?,
                    _ => patch::merge_patch(&mut doc, &patch_body),
                }
                // A resourceVersion in the patch is a precondition; otherwise the patch applies
                // to whatever is current.
                if meta_str(&doc, "resourceVersion").map(str::to_string) == rv_before
                    && let Some(m) = doc.get_mut("metadata").and_then(Value::as_object_mut)
                {
                    m.remove("resourceVersion");
                }
                Ok((self.update_obj(rt, version, ns, name, doc, opts)?, false))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn delete_obj(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        name: &str,
        opts: &WriteOpts,
        pre_rv: Option<&str>,
        pre_uid: Option<&str>,
    ) -> Result<Value, ApiError> {
        let mut st = self.lock();
        let key = ObjKey::new(rt, ns, name);
        let old = st
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        if pre_rv.is_some_and(|p| Some(p) != meta_str(&old, "resourceVersion"))
            || pre_uid.is_some_and(|p| Some(p) != meta_str(&old, "uid"))
        {
            return Err(ApiError::conflict(&rt.group, &rt.plural, name));
        }
        let mut gone = Self::render(rt, version, &old);
        if rt.group.is_empty() && rt.plural == "namespaces" {
            gone["status"] = json!({"phase": "Terminating"});
            meta_mut(&mut gone).insert("deletionTimestamp".into(), json!(self.now()));
        }
        if opts.dry_run {
            return Ok(gone);
        }
        let mut cascade: Vec<ObjKey> = Vec::new();
        if rt.group.is_empty() && rt.plural == "namespaces" {
            cascade = st
                .objects
                .keys()
                .filter(|k| k.namespace == name)
                .cloned()
                .collect();
        }
        if rt.group.is_empty() && rt.plural == "serviceaccounts" {
            cascade = st
                .objects
                .iter()
                .filter(|(k, o)| {
                    k.group.is_empty()
                        && k.resource == "secrets"
                        && k.namespace == key.namespace
                        && o["type"] == "kubernetes.io/service-account-token"
                        && o.pointer("/metadata/annotations/kubernetes.io~1service-account.name")
                            .and_then(Value::as_str)
                            == Some(name)
                })
                .map(|(k, _)| k.clone())
                .collect();
        }
        // A CRD's `customresourcecleanup` finalizer deletes its objects before the CRD goes
        // (watchers see DELETED for each); open watches of the type then end (watch.rs).
        if rt.group == "apiextensions.k8s.io"
            && rt.plural == "customresourcedefinitions"
            && let Some(crt) = resources::from_crd(&old)
        {
            cascade = st
                .objects
                .keys()
                .filter(|k| k.group == crt.group && k.resource == crt.plural)
                .cloned()
                .collect();
        }
        for k in cascade {
            if let Some(o) = st.objects.get(&k).cloned() {
                self.commit(&mut st, EventType::Deleted, k, o.clone(), Some(o));
            }
        }
        let out = self.commit(&mut st, EventType::Deleted, key, gone, Some(old));
        Ok(out)
    }

    // ---- defaulting and controllers ------------------------------------------------------

    /// Per-type defaulting and validation that the real API server does synchronously.
    fn default_object(
        &self,
        st: &mut State,
        rt: &ResourceType,
        obj: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        let name = meta_str(obj, "name").unwrap_or("").to_string();
        match (rt.group.as_str(), rt.plural.as_str()) {
            ("", "secrets") => {
                if let Some(Value::Object(sd)) =
                    obj.as_object_mut().and_then(|o| o.remove("stringData"))
                {
                    if !obj.get("data").is_some_and(Value::is_object) {
                        obj["data"] = json!({});
                    }
                    for (k, v) in sd {
                        obj["data"][k] = json!(util::b64(v.as_str().unwrap_or("").as_bytes()));
                    }
                }
                if let Some(Value::Object(d)) = obj.get("data") {
                    for (k, v) in d {
                        if v.as_str().and_then(util::b64_decode).is_none() {
                            return Err(ApiError::bad_request(format!(
                                "Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data at key {k:?}"
                            )));
                        }
                    }
                }
                if obj.get("type").is_none() {
                    obj["type"] = json!("Opaque");
                }
                if obj["type"] == "kubernetes.io/service-account-token"
                    && obj
                        .pointer("/metadata/annotations/kubernetes.io~1service-account.name")
                        .is_none()
                {
                    return Err(ApiError::invalid(
                        "",
                        "Secret",
                        &name,
                        "metadata.annotations[kubernetes.io/service-account.name]",
                        "FieldValueRequired",
                        "Required value",
                    ));
                }
            }
            ("", "namespaces") => {
                if old.is_none() {
                    obj["status"] = json!({"phase": "Active"});
                    obj["spec"] = json!({"finalizers": ["kubernetes"]});
                }
                let labels = meta_mut(obj).entry("labels").or_insert_with(|| json!({}));
                labels["kubernetes.io/metadata.name"] = json!(name);
            }
            ("", "pods") if old.is_none() && obj.get("status").is_none() => {
                obj["status"] = json!({"phase": "Pending"});
            }
            ("", "services") => self.default_service(st, obj, old),
            ("discovery.k8s.io", "endpointslices") => validation::endpoint_slice(
                obj,
                self.shared.config.allow_loopback_endpoint_addresses,
            )?,
            ("", "endpoints") => {
                validation::endpoints(obj, self.shared.config.allow_loopback_endpoint_addresses)?
            }
            ("apiextensions.k8s.io", "customresourcedefinitions") => {
                let Some(crt) = resources::from_crd(obj) else {
                    return Err(ApiError::invalid(
                        rt.group.as_str(),
                        "CustomResourceDefinition",
                        &name,
                        "spec",
                        "FieldValueInvalid",
                        "Invalid value: group, names and at least one served version are required",
                    ));
                };
                if name != format!("{}.{}", crt.plural, crt.group) {
                    return Err(ApiError::invalid(
                        rt.group.as_str(),
                        "CustomResourceDefinition",
                        &name,
                        "metadata.name",
                        "FieldValueInvalid",
                        "Invalid value: must be spec.names.plural+\".\"+spec.group",
                    ));
                }
                let now = self.now();
                obj["status"] = json!({
                    "acceptedNames": obj["spec"]["names"].clone(),
                    "conditions": [
                        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
                        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
                    ],
                    "storedVersions": obj["spec"]["versions"].as_array().map(|vs| vs.iter().filter(|v| v["storage"] == true).map(|v| v["name"].clone()).collect::<Vec<_>>()).unwrap_or_default(),
                });
            }
            _ => {}
        }
        Ok(())
    }

    fn default_service(&self, st: &mut State, obj: &mut Value, old: Option<&Value>) {
        if !obj.get("spec").is_some_and(Value::is_object) {
            obj["spec"] = json!({});
        }
        let spec = &mut obj["spec"];
        if spec.get("type").is_none() {
            spec["type"] = json!("ClusterIP");
        }
        let ty = spec["type"].as_str().unwrap_or("ClusterIP").to_string();
        if spec.get("sessionAffinity").is_none() {
            spec["sessionAffinity"] = json!("None");
        }
        if ty != "ExternalName" {
            if spec
                .get("clusterIP")
                .and_then(Value::as_str)
                .is_none_or(str::is_empty)
            {
                let ip = old
                    .and_then(|o| o.pointer("/spec/clusterIP"))
                    .cloned()
                    .unwrap_or_else(|| {
                        st.next_ip += 1;
                        json!(format!(
                            "10.96.{}.{}",
                            (st.next_ip >> 8) & 255,
                            st.next_ip & 255
                        ))
                    });
                spec["clusterIP"] = ip;
            }
            spec["clusterIPs"] = json!([spec["clusterIP"].clone()]);
            spec["ipFamilies"] = json!(["IPv4"]);
            spec["ipFamilyPolicy"] = json!("SingleStack");
            spec["internalTrafficPolicy"] = spec
                .get("internalTrafficPolicy")
                .cloned()
                .unwrap_or(json!("Cluster"));
        }
        let node_ports = ty == "NodePort" || ty == "LoadBalancer";
        if node_ports && spec.get("externalTrafficPolicy").is_none() {
            spec["externalTrafficPolicy"] = json!("Cluster");
        }
        let old_ports = old
            .and_then(|o| o.pointer("/spec/ports"))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports {
                if p.get("protocol").is_none() {
                    p["protocol"] = json!("TCP");
                }
                if p.get("targetPort").is_none() {
                    p["targetPort"] = p["port"].clone();
                }
                if node_ports && p.get("nodePort").is_none() {
                    let prev = old_ports
                        .iter()
                        .find(|o| o["port"] == p["port"] && o["protocol"] == p["protocol"])
                        .and_then(|o| o.get("nodePort"))
                        .cloned();
                    p["nodePort"] = prev.unwrap_or_else(|| {
                        st.next_node_port += 1;
                        json!(st.next_node_port)
                    });
                }
            }
        }
        if ty == "LoadBalancer" && old.is_none() && obj.get("status").is_none() {
            obj["status"] = json!({"loadBalancer": {}});
        }
    }

    fn after_create(&self, rt: &ResourceType, ns: Option<&str>, name: &str, obj: &Value) {
        match (rt.group.as_str(), rt.plural.as_str()) {
            ("", "secrets") if obj["type"] == "kubernetes.io/service-account-token" => {
                let (ns, name) = (ns.unwrap_or("").to_string(), name.to_string());
                self.later(move |s| s.fill_token_secret(&ns, &name));
            }
            ("", "namespaces") => {
                let name = name.to_string();
                self.later(move |s| s.namespace_defaults(&name));
            }
            _ => {}
        }
    }

    /// Runs a controller step after the configured delay on a background task (or right away
    /// when there is no tokio runtime), like the real cluster's asynchronous controllers.
    fn later(&self, f: impl FnOnce(&Store) + Send + 'static) {
        let delay = self.shared.config.controller_delay;
        match tokio::runtime::Handle::try_current() {
            Ok(h) if !delay.is_zero() => {
                let s = self.clone();
                h.spawn(async move {
                    tokio::time::sleep(delay).await;
                    f(&s);
                });
            }
            _ => f(self),
        }
    }

    /// The namespace controller's defaults: a `default` ServiceAccount and the
    /// `kube-root-ca.crt` ConfigMap.
    fn namespace_defaults(&self, ns: &str) {
        let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}});
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "kube-root-ca.crt", "namespace": ns, "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
            "data": {"ca.crt": self.ca_pem()}});
        for o in [sa, cm] {
            // The namespace may be gone again, or the object may exist: both are fine.
            let _ = self.create(o);
        }
    }

    /// The token controller: fills a `kubernetes.io/service-account-token` Secret, or deletes
    /// it when its ServiceAccount does not exist.
    fn fill_token_secret(&self, ns: &str, name: &str) {
        let mut st = self.lock();
        let key = ObjKey {
            group: String::new(),
            resource: "secrets".into(),
            namespace: ns.into(),
            name: name.into(),
        };
        let Some(secret) = st.objects.get(&key).cloned() else {
            return;
        };
        if secret.pointer("/data/token").is_some() {
            return;
        }
        let sa_name = secret
            .pointer("/metadata/annotations/kubernetes.io~1service-account.name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let sa_key = ObjKey {
            group: String::new(),
            resource: "serviceaccounts".into(),
            namespace: ns.into(),
            name: sa_name.clone(),
        };
        let Some(sa) = st.objects.get(&sa_key).cloned() else {
            self.commit(
                &mut st,
                EventType::Deleted,
                key,
                secret.clone(),
                Some(secret),
            );
            return;
        };
        let sa_uid = meta_str(&sa, "uid").unwrap_or("").to_string();
        let token = crate::auth::legacy_token(ns, &sa_name, &sa_uid, name);
        st.tokens.insert(
            token.clone(),
            TokenRecord {
                namespace: ns.into(),
                service_account: sa_name,
                sa_uid: sa_uid.clone(),
                expires: None,
                secret: Some(name.into()),
            },
        );
        let mut new = secret.clone();
        meta_mut(&mut new)
            .entry("annotations")
            .or_insert_with(|| json!({}))["kubernetes.io/service-account.uid"] = json!(sa_uid);
        if !new.get("data").is_some_and(Value::is_object) {
            new["data"] = json!({});
        }
        new["data"]["token"] = json!(util::b64(token.as_bytes()));
        new["data"]["ca.crt"] = json!(util::b64(self.ca_pem().as_bytes()));
        new["data"]["namespace"] = json!(util::b64(ns.as_bytes()));
        self.commit(&mut st, EventType::Modified, key, new, Some(secret));
    }

    /// Looks up the identity of a bearer token (admin, Secret token or TokenRequest token).
    pub fn authenticate(&self, token: &str) -> Option<Identity> {
        crate::auth::authenticate(self, token)
    }
}

/// One page of a list.
pub(crate) struct ListResult {
    pub items: Vec<Value>,
    pub resource_version: u64,
    pub continue_token: Option<String>,
    pub remaining: usize,
}
