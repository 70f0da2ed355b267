//! Writes: create, update, patch (merge, JSON; server-side apply is in `apply.rs`) and delete,
//! each ending in one [`Store::commit`], with the field managers recorded in `managedFields`
//! and the fields each owns tracked for apply conflicts ([`Store::own_update`]).
//! Defaulting is in `defaults.rs`; controllers react to the committed events on their own
//! (`controllers.rs`).

use crate::defaults;
use crate::error::ApiError;
use crate::field_sets;
use crate::list_keys::Lists;
use crate::patch;
use crate::resources::ResourceType;
use crate::store::{EventType, ObjKey, State, Store, meta_mut, meta_str};
use crate::util;
use crate::validation;
use serde_json::{Map, Value, json};

/// Options of one write.
#[derive(Clone, Debug, Default)]
pub(crate) struct WriteOpts {
    pub dry_run: bool,
    pub manager: Option<String>,
    /// Write to the `status` subresource.
    pub status: bool,
    /// Direct store access: keep status as given, no resourceVersion precondition.
    pub raw: bool,
    /// Server-side apply: take the fields other managers own instead of a 409 conflict.
    pub force: bool,
    /// Compute the object up to what the real server's `UpdatedObject` returns, without
    /// validating it (only with `dry_run`): the RBAC escalation check sees that object
    /// before validation does (`handlers.rs`).
    pub unvalidated: bool,
}

/// The managedFields identity of an Update manager, as `BuildManagerIdentifier`
/// (`apimachinery/pkg/util/managedfields/internal/managedfields.go`) encodes it: the JSON of
/// the entry without time and fields, in Go's field order; an empty manager is omitted.
pub(crate) fn update_identity(manager: &str, api_version: &str, status: bool) -> String {
    let q = |s: &str| Value::String(s.to_string()).to_string();
    let mut id = String::from("{");
    if !manager.is_empty() {
        id.push_str(&format!("\"manager\":{},", q(manager)));
    }
    id.push_str(&format!(
        "\"operation\":\"Update\",\"apiVersion\":{}",
        q(api_version)
    ));
    if status {
        id.push_str(",\"subresource\":\"status\"");
    }
    id.push('}');
    id
}

/// The managedFields identity of an applier (`BuildManagerIdentifier`,
/// `managedfields/internal/managedfields.go`: no apiVersion, the subresource included), as
/// Go's JSON encoder orders the entry's fields: a `/status` apply is another manager than the
/// same name's main-resource apply.
pub(crate) fn apply_identity(manager: &str, status: bool) -> String {
    let subresource = if status {
        ",\"subresource\":\"status\""
    } else {
        ""
    };
    format!(
        "{{\"manager\":{},\"operation\":\"Apply\"{subresource}}}",
        Value::String(manager.to_string())
    )
}

/// The fields an applied configuration sets, as its manager owns them: no stripped metadata,
/// and of a type with a status subresource only what the endpoint writes (the main resource
/// resets status, `/status` everything else).
pub(crate) fn apply_owned(rt: &ResourceType, status: bool, applied: &Value) -> Value {
    let mut fields = owned_part(applied);
    if rt.status {
        if status {
            fields = json!({"status": fields.get("status").cloned().unwrap_or(json!({}))});
        } else if let Some(m) = fields.as_object_mut() {
            m.remove("status");
        }
    }
    fields
}

/// The managers whose managedFields entries a write leaves out: they lose what they owned.
/// The real field manager takes a request's own managedFields as the object's
/// (`fieldmanager.go` `Update`: "allow directly updating managed fields"), so a client can
/// drop an entry, as kubectl's `csaupgrade` drops a client-side apply's. A write that leaves
/// managedFields as they were, or sends none or `[]` (the live ones are kept), leaves none
/// out; `[{}]` resets them all. The TEST SERVER takes only removals: an entry it did not
/// write is refused.
pub(crate) fn managers_left_out(old: &Value, body: &Value) -> Result<Vec<String>, ApiError> {
    let entries = |o: &Value| {
        o.pointer("/metadata/managedFields")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let (before, after) = (entries(old), entries(body));
    let ids = |l: &[Value]| -> Vec<String> { l.iter().map(entry_identity).collect() };
    let before_ids = ids(&before);
    if after.is_empty() || after == before {
        return Ok(Vec::new());
    }
    if after
        .iter()
        .all(|e| e.as_object().is_some_and(|m| m.is_empty()))
    {
        return Ok(before_ids);
    }
    let after_ids = ids(&after);
    if let Some(new_id) = after_ids.iter().find(|id| !before_ids.contains(id)) {
        return Err(ApiError::internal(format!(
            "the TEST SERVER takes a managedFields write only to remove entries; \
             {new_id:?} is not one of the object's"
        )));
    }
    Ok(before_ids
        .into_iter()
        .filter(|id| !after_ids.contains(id))
        .collect())
}

/// The identity (`apply_identity`, `update_identity`) of a managedFields entry.
pub(crate) fn entry_identity(e: &Value) -> String {
    let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("");
    let status = s("subresource") == "status";
    if s("operation") == "Apply" {
        apply_identity(s("manager"), status)
    } else {
        update_identity(s("manager"), s("apiVersion"), status)
    }
}

/// The part of an object field managers own: without what `stripmeta.go` strips from every
/// manager's set (apiVersion, kind and the server-set metadata).
pub(crate) fn owned_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
    }
    let mut no_meta = false;
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "name",
            "namespace",
            "creationTimestamp",
            "selfLink",
            "uid",
            "clusterName",
            "generation",
            "managedFields",
            "resourceVersion",
        ] {
            m.remove(k);
        }
        no_meta = m.is_empty();
    }
    if no_meta && let Some(top) = o.as_object_mut() {
        top.remove("metadata");
    }
    o
}

/// How a PATCH body other than server-side apply (`apply.rs`) is interpreted.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PatchKind {
    /// JSON merge patch, also used for strategic merge patch (README).
    Merge,
    Json,
}

/// The object without the fields that change on every write (for no-op detection).
pub(crate) fn comparable(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
        m.remove("managedFields");
    }
    o
}

/// `generateName` plus 5 random characters, the prefix cut to 58 bytes so that a valid
/// prefix gives a name within 63 (apiserver `SimpleNameGenerator`).
fn generate_name(prefix: &str) -> String {
    let mut cut = prefix.len().min(58);
    while !prefix.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{}", &prefix[..cut], util::random_suffix(5))
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

/// The Service fields its storage allocates or fills in (`beginCreate` and `beginUpdate` in
/// `pkg/registry/core/service/storage/storage.go`) after the field manager has seen the
/// request: a write's manager owns them only as its request set them. Node ports are
/// allocated inside `spec.ports` items; an update that adds a port owns its allocated
/// `nodePort` here.
const SERVICE_ALLOCATED: [&str; 4] = ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"];

/// The allocated Service fields a request body (as sent, or patched) sets; `None` for
/// other types.
fn requested_allocations(rt: &ResourceType, body: &Value) -> Option<Map<String, Value>> {
    (rt.group.is_empty() && rt.plural == "services").then(|| {
        SERVICE_ALLOCATED
            .iter()
            .filter_map(|k| Some((k.to_string(), body.get("spec")?.get(*k)?.clone())))
            .collect()
    })
}

/// The stored object with its allocated Service fields as the request had them: what the
/// field manager saw.
fn as_requested(stored: &Value, requested: Option<&Map<String, Value>>) -> Value {
    let mut o = stored.clone();
    if let Some(req) = requested
        && let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut)
    {
        for k in SERVICE_ALLOCATED {
            match req.get(k) {
                Some(v) => spec.insert(k.to_string(), v.clone()),
                None => spec.remove(k),
            };
        }
    }
    o
}

impl Store {
    // ---- direct (non-HTTP) writes for tests ------------------------------------------------

    /// Creates an object as the API would (defaulting, validation, status rules, controllers).
    pub fn create(&self, obj: Value) -> Result<Value, ApiError> {
        let (rt, v) = self.resolve_obj(&obj)?;
        let ns = meta_str(&obj, "namespace").map(str::to_string);
        self.create_obj(&rt, &v, ns.as_deref(), obj, &WriteOpts::default())
    }

    /// Creates or replaces an object verbatim, status included (test setup: e.g. a Service's
    /// load-balancer address or a Deployment's ready replicas). Still defaulted and validated
    /// as a create: a real cluster never holds an invalid object; only update-only rules
    /// (immutable fields) are skipped.
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

    pub(crate) fn record_manager(
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
            // `manager` is omitempty: a write with neither fieldManager nor User-Agent.
            if manager.is_empty()
                && let Some(m) = e.as_object_mut()
            {
                m.remove("manager");
            }
            e
        };
        // One entry per identity: an applier's is its name (and subresource), an updater's
        // also its apiVersion (`BuildManagerIdentifier`).
        let same = |e: &Value| {
            e.get("manager").and_then(Value::as_str).unwrap_or("") == manager
                && e["operation"] == operation
                && e.get("subresource") == entry.get("subresource")
                && (operation != "Update" || e["apiVersion"] == api_version)
        };
        let m = meta_mut(obj);
        let list = m.entry("managedFields").or_insert_with(|| json!([]));
        if let Some(a) = list.as_array_mut() {
            a.retain(|e| !same(e));
            a.push(entry);
        }
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
        // No name: validation refuses it with the other errors, as the real server does.
        let name = match (meta_str(&obj, "name"), meta_str(&obj, "generateName")) {
            (Some(n), _) => n.to_string(),
            (None, Some(g)) => generate_name(g),
            (None, None) => String::new(),
        };
        // The storage refuses it before it looks for the name, not in a dry run.
        let version_set = !opts.raw && !opts.dry_run && version_set_on_create(&obj);
        let mut st = self.lock();
        if let Some(ns) = &ns {
            let ns_key = ObjKey {
                group: String::new(),
                resource: "namespaces".into(),
                namespace: String::new(),
                name: ns.clone(),
            };
            let Some(namespace) = st.objects.get(&ns_key) else {
                return Err(ApiError::not_found("", "namespaces", ns));
            };
            // NamespaceLifecycle admission, before validation.
            if namespace.pointer("/status/phase") == Some(&json!("Terminating")) {
                let shown = meta_str(&obj, "name").or(meta_str(&obj, "generateName"));
                return Err(ApiError::namespace_terminating(
                    &rt.group,
                    &rt.plural,
                    shown.unwrap_or(""),
                    ns,
                ));
            }
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
        let requested = requested_allocations(rt, &obj);
        defaults::default_object(self, &mut st, rt, &mut obj, None)?;
        let loopback = self.config().allow_loopback_endpoint_addresses;
        if !opts.unvalidated {
            validation::validate(rt, &obj, None, loopback)?;
        }
        if version_set {
            return Err(version_set_error());
        }
        // The real server validates before its storage finds the name taken.
        let key = ObjKey::new(rt, ns.as_deref(), &name);
        if st.objects.contains_key(&key) {
            return Err(ApiError::already_exists(&rt.group, &rt.plural, &name));
        }
        let op = if opts.raw {
            None
        } else {
            opts.manager.as_deref()
        };
        self.record_manager(&mut obj, op, "Update", &rt.api_version(version), false);
        if opts.dry_run {
            return Ok(obj);
        }
        let updater = op.map(|m| update_identity(m, &rt.api_version(version), false));
        let seen = as_requested(&obj, requested.as_ref());
        let lists = st.lists(rt, version);
        Store::own_update(&mut st, &lists, &key, None, &obj, &seen, updater);
        Store::drop_empty_managers(&mut st, rt, &key, &mut obj);
        Ok(self.commit(&mut st, EventType::Added, key, obj, None))
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
        let requested = requested_allocations(rt, &body);
        let left_out = if opts.raw {
            Vec::new()
        } else {
            managers_left_out(&old, &body)?
        };
        let new = self.merge_update(&mut st, rt, version, &old, body, opts)?;
        if comparable(&new) == comparable(&old) && left_out.is_empty() {
            return Ok(Store::render(rt, version, &old));
        }
        if opts.dry_run {
            return Ok(new);
        }
        st.applied
            .retain(|(k, id), _| *k != key || !left_out.contains(id));
        st.updated
            .retain(|(k, id), _| *k != key || !left_out.contains(id));
        let updater = match (opts.raw, opts.manager.as_deref()) {
            (false, Some(m)) => Some(update_identity(m, &rt.api_version(version), opts.status)),
            _ => None,
        };
        let seen = as_requested(&new, requested.as_ref());
        let lists = st.lists(rt, version);
        Store::own_update(&mut st, &lists, &key, Some(&old), &new, &seen, updater);
        let mut new = new;
        Store::drop_empty_managers(&mut st, rt, &key, &mut new);
        Ok(self.commit_update(&mut st, key, new, old))
    }

    /// Field ownership after a write of `new` over `old` (`None`: a create): every manager
    /// loses the fields whose value it set is gone, and `updater` (an Update identity) owns
    /// what the write added or changed as the field manager `saw` it, as the real field
    /// manager's update moves them (`managedfields/internal/managedfieldsupdater.go`,
    /// `structuredmerge.go` `Update`). An update is its own managedFields entry, even under
    /// an applier's name.
    pub(crate) fn own_update(
        st: &mut State,
        lists: &Lists,
        key: &ObjKey,
        old: Option<&Value>,
        new: &Value,
        saw: &Value,
        updater: Option<String>,
    ) {
        for ((k, _), owned) in st.applied.iter_mut().chain(st.updated.iter_mut()) {
            if k == key {
                field_sets::disown_changed(lists, owned, new);
            }
        }
        let old = old.map(owned_part);
        if let Some(id) = updater
            && let Some(c) = field_sets::changed(lists, old.as_ref(), &owned_part(saw))
        {
            let mine = st
                .updated
                .entry((key.clone(), id))
                .or_insert_with(|| json!({}));
            field_sets::apply_merge(lists, mine, &c);
        }
    }

    /// Drops the managedFields entries of `obj` (at `key`) whose manager owns nothing, and
    /// their records, as structured-merge-diff's updater does after every update and apply
    /// (`merge/update.go`: managers with an empty set are deleted); no entries left, no
    /// `managedFields`. An entry with no record of what it owns (an update that only removed
    /// fields) owns nothing.
    pub(crate) fn drop_empty_managers(
        st: &mut State,
        rt: &ResourceType,
        key: &ObjKey,
        obj: &mut Value,
    ) {
        let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
            return;
        };
        let Some(entries) = m.get_mut("managedFields").and_then(Value::as_array_mut) else {
            return;
        };
        let mut dropped = Vec::new();
        entries.retain(|e| {
            let id = entry_identity(e);
            let k = (key.clone(), id.clone());
            let owns = if e["operation"] == "Apply" {
                let status = e.get("subresource").and_then(Value::as_str) == Some("status");
                st.applied
                    .get(&k)
                    .is_some_and(|a| field_sets::owns_anything(&apply_owned(rt, status, a)))
            } else {
                st.updated.get(&k).is_some_and(field_sets::owns_anything)
            };
            if !owns {
                dropped.push(id);
            }
            owns
        });
        if entries.is_empty() {
            m.remove("managedFields");
        }
        // A record without an entry stays: an apply that changed nothing remembers what it
        // applied without writing its entry (README).
        st.applied
            .retain(|(k, id), _| k != key || !dropped.contains(id));
        st.updated
            .retain(|(k, id), _| k != key || !dropped.contains(id));
    }

    /// Builds the object an update stores: immutable metadata kept, status rules applied,
    /// generation bumped on spec changes, type defaults.
    pub(crate) fn merge_update(
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
            for k in ["name", "namespace", "uid", "creationTimestamp"] {
                match old_meta.get(k) {
                    Some(v) => m.insert(k.into(), v.clone()),
                    None => m.remove(k),
                };
            }
            // `rest.BeforeUpdate`: an update never removes or changes a deletion timestamp,
            // nor removes a deletion grace period; one that sets either where there was none
            // is refused as immutable (`meta_validation::object_meta_update`). A raw replace
            // keeps them as they were.
            for k in ["deletionTimestamp", "deletionGracePeriodSeconds"] {
                match old_meta.get(k) {
                    Some(v) if k == "deletionTimestamp" || !m.contains_key(k) || opts.raw => {
                        m.insert(k.into(), v.clone());
                    }
                    None if opts.raw => {
                        m.remove(k);
                    }
                    _ => {}
                }
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
        defaults::default_object(self, st, rt, &mut new, Some(old))?;
        // A raw replace (test setup) need only be an object a cluster could hold: it is
        // validated as a create, without the update-only (immutability) rules.
        let transition = if opts.raw { None } else { Some(old) };
        let loopback = self.config().allow_loopback_endpoint_addresses;
        if !opts.unvalidated {
            validation::validate(rt, &new, transition, loopback)?;
        }
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

    /// A merge or JSON PATCH of an existing object.
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
    ) -> Result<Value, ApiError> {
        let mut doc = self.get_obj(rt, version, ns, name)?;
        let rv_before = meta_str(&doc, "resourceVersion").map(str::to_string);
        match kind {
            PatchKind::Json => patch::json_patch(&mut doc, &patch_body)?,
            PatchKind::Merge => patch::merge_patch(&mut doc, &patch_body),
        }
        // A resourceVersion in the patch is a precondition; otherwise the patch applies
        // to whatever is current.
        if meta_str(&doc, "resourceVersion").map(str::to_string) == rv_before
            && let Some(m) = doc.get_mut("metadata").and_then(Value::as_object_mut)
        {
            m.remove("resourceVersion");
        }
        self.update_obj(rt, version, ns, name, doc, opts)
    }
}

/// Whether `obj` carries a resourceVersion a create refuses: one that parses as a non-zero
/// number (k8s.io/apiserver `storage/etcd3/store.go` `Create` checks
/// `versioner.ObjectResourceVersion`, which fails, and so lets pass, one that does not parse).
pub(crate) fn version_set_on_create(obj: &Value) -> bool {
    meta_str(obj, "resourceVersion")
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|v| v != 0)
}

/// The answer to a create carrying a resourceVersion: `storage.ErrResourceVersionSetOnCreate`
/// is no API status error, so the handler answers 500 with its text and no reason. A
/// server-side apply that creates the object meets it too.
pub(crate) fn version_set_error() -> ApiError {
    ApiError::new(
        500,
        "",
        "resourceVersion should not be set on objects to be created",
    )
}
