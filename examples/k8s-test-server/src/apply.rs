//! Server-side apply, simplified (README): each field manager's last applied configuration is
//! remembered, less the fields others have taken since; fields it stops applying and no other
//! manager owns are pruned. Without `force`, an apply that would change a field another
//! manager owns (an applier, or an updater: `write.rs` tracks what each update changed) is a
//! 409 naming each field ([`apply_conflict`]); with it, the applier takes them. Associative
//! lists (`list_keys.rs`) are merged, owned and pruned item by item, as structured-merge-diff
//! does (`field_sets.rs`); other lists are one field. The applied configuration is checked as the
//! real field manager and patch handler check it ([`check_applied`]).

use crate::error::ApiError;
use crate::field_errors::go_quote;
use crate::field_sets;
use crate::list_keys::{self, Lists, PathElement};
use crate::resources::ResourceType;
use crate::store::{ObjKey, State, Store, meta_mut, meta_str};
use crate::write::{
    WriteOpts, apply_identity, apply_owned, comparable, entry_identity, version_set_error,
    version_set_on_create,
};
use serde_json::{Value, json};
use std::sync::MutexGuard;

impl Store {
    /// Server-side apply: creates the object, or merges the applied configuration into the
    /// live one, pruning the fields this manager applied last time, no longer does and no
    /// other manager owns. Without `opts.force`, changing a field another manager owns is a
    /// 409 conflict. The flag says whether it was created.
    pub(crate) fn server_side_apply(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        name: &str,
        mut patch_body: Value,
        opts: &WriteOpts,
    ) -> Result<(Value, bool), ApiError> {
        let manager = opts.manager.clone().ok_or_else(|| {
            ApiError::new(422, "Invalid", "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch")
        })?;
        if !patch_body.is_object() {
            return Err(ApiError::bad_request("apply patch must be an object"));
        }
        let current = self.get_obj(rt, version, ns, name);
        // The status subresource never creates: `StatusREST.Update` passes
        // forceAllowCreate=false and the store answers 404 before it looks at the body.
        if opts.status
            && let Err(e) = &current
        {
            return Err(e.clone());
        }
        let lists = self.lock().lists(rt, version);
        check_applied(rt, version, ns, name, &lists, &patch_body, current.is_ok())?;
        // An explicit `managedFields: null` passed the check; it is not a field to apply.
        if let Some(m) = patch_body
            .get_mut("metadata")
            .and_then(Value::as_object_mut)
        {
            m.remove("managedFields");
        }
        let key = ObjKey::new(rt, ns, name);
        let mut applied = patch_body.clone();
        if let Some(m) = applied.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        let apply = Apply {
            rt,
            version,
            ns,
            key,
            identity: apply_identity(&manager, opts.status),
            manager,
            applied,
            opts,
        };
        match current {
            Err(e) if e.code == 404 => {
                if !opts.dry_run && version_set_on_create(&patch_body) {
                    return Err(version_set_error());
                }
                let mut obj = patch_body;
                meta_mut(&mut obj).insert("name".into(), json!(name));
                let checked = WriteOpts {
                    manager: None,
                    dry_run: true,
                    ..opts.clone()
                };
                let created = self.create_obj(rt, version, ns, obj, &checked)?;
                return Ok((self.finish_apply(apply, created, None)?, true));
            }
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        let mut st = self.lock();
        let old = st
            .objects
            .get(&apply.key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        let live = Store::render(rt, version, &old);
        let others = other_owners(&st, &apply.key, &apply.identity);
        // The field manager runs before the store's resourceVersion check
        // (`patch.go` `applyPatch`, then `GuaranteedUpdate`): conflicts come first.
        if !opts.force {
            let mine = applied_fields(rt, opts, &apply.applied);
            let found: Vec<(String, Vec<PathElement>)> = others
                .iter()
                .flat_map(|(who, owned)| {
                    field_sets::conflicts(&lists, &mine, &live, owned)
                        .into_iter()
                        .map(|p| (who.clone(), p))
                })
                .collect();
            if !found.is_empty() {
                return Err(apply_conflict(&found));
            }
        }
        // A resourceVersion in the applied configuration is a precondition, as for every
        // patch (the apiserver stores the merged object through a conditional update).
        if let Some(want) = meta_str(&patch_body, "resourceVersion")
            && Some(want) != meta_str(&live, "resourceVersion")
        {
            return Err(ApiError::conflict(&rt.group, &rt.plural, name));
        }
        let mut new = live;
        if let Some(prev) = st
            .applied
            .get(&(apply.key.clone(), apply.identity.clone()))
            .cloned()
        {
            // What another manager owns too stays when this one stops applying it.
            let mut only_mine = prev;
            for (_, owned) in &others {
                field_sets::disown_taken(&lists, &mut only_mine, owned);
            }
            field_sets::prune_removed(&lists, &mut new, &only_mine, &apply.applied);
        }
        field_sets::apply_merge(&lists, &mut new, &apply.applied);
        if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        let without_manager = WriteOpts {
            manager: None,
            ..opts.clone()
        };
        let merged = self.merge_update(&mut st, rt, version, &old, new, &without_manager)?;
        // An apply that changes no field still writes the object when it makes its manager
        // a new owner: the managedFields change is a change (only that entry is new).
        let new_owner = !old
            .pointer("/metadata/managedFields")
            .and_then(Value::as_array)
            .is_some_and(|es| es.iter().any(|e| entry_identity(e) == apply.identity))
            && field_sets::owns_anything(&applied_fields(rt, opts, &apply.applied));
        if comparable(&merged) == comparable(&old) && !new_owner {
            if !opts.dry_run {
                st.applied
                    .insert((apply.key, apply.identity), apply.applied);
            }
            return Ok((Store::render(rt, version, &old), false));
        }
        if !opts.dry_run {
            // Forced: the others lose the fields this apply changed (without force there
            // are none).
            for ((k, m), owned) in st.applied.iter_mut() {
                if *k == apply.key && *m != apply.identity {
                    field_sets::disown_changed(&lists, owned, &merged);
                }
            }
            for ((k, _), owned) in st.updated.iter_mut() {
                if *k == apply.key {
                    field_sets::disown_changed(&lists, owned, &merged);
                }
            }
        }
        Ok((self.finish_apply(apply, merged, Some((st, old)))?, false))
    }

    /// The tail both apply branches share: the manager's `Apply` entry, the dry-run stop, the
    /// write (a create, or a commit over `old` under the caller's lock), and remembering what
    /// this manager applied.
    fn finish_apply(
        &self,
        apply: Apply<'_>,
        mut obj: Value,
        update: Option<(MutexGuard<'_, State>, Value)>,
    ) -> Result<Value, ApiError> {
        let Apply {
            rt,
            version,
            ns,
            key,
            manager,
            identity,
            applied,
            opts,
        } = apply;
        self.record_manager(
            &mut obj,
            Some(&manager),
            "Apply",
            &rt.api_version(version),
            opts.status,
        );
        if opts.dry_run {
            return Ok(obj);
        }
        match update {
            None => {
                let create = WriteOpts {
                    manager: None,
                    raw: false,
                    ..opts.clone()
                };
                // create_obj keeps managedFields from the body, and keeps the entry only if
                // what was applied owns something: it must know what that is first.
                let record = (key, identity);
                self.lock().applied.insert(record.clone(), applied);
                let out = self.create_obj(rt, version, ns, obj, &create);
                if out.is_err() {
                    self.lock().applied.remove(&record);
                }
                out
            }
            Some((mut st, old)) => {
                st.applied.insert((key.clone(), identity), applied);
                Store::drop_empty_managers(&mut st, rt, &key, &mut obj);
                Ok(self.commit_update(&mut st, key, obj, old))
            }
        }
    }
}

/// One server-side apply request, as the two apply branches share it.
struct Apply<'a> {
    rt: &'a ResourceType,
    version: &'a str,
    ns: Option<&'a str>,
    key: ObjKey,
    manager: String,
    /// Its managedFields identity ([`apply_identity`]): what its applied configuration is
    /// remembered under.
    identity: String,
    /// The applied configuration, without resourceVersion, remembered per identity.
    applied: Value,
    opts: &'a WriteOpts,
}

/// Every manager of the object at `key` but the applier `identity` (its Update entries and
/// its other subresource's apply included: they are other identities), by identity, with the
/// fields each owns.
fn other_owners(st: &State, key: &ObjKey, identity: &str) -> Vec<(String, Value)> {
    let mut out: Vec<(String, Value)> = st
        .applied
        .iter()
        .filter(|((k, m), _)| k == key && m != identity)
        .map(|((_, m), owned)| (m.clone(), owned.clone()))
        .chain(
            st.updated
                .iter()
                .filter(|((k, _), _)| k == key)
                .map(|((_, id), owned)| (id.clone(), owned.clone())),
        )
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The fields an apply sets, as the conflict check compares them: no stripped metadata, and
/// of a type with a status subresource only what the endpoint writes (the main resource
/// resets status, `/status` everything else).
fn applied_fields(rt: &ResourceType, opts: &WriteOpts, applied: &Value) -> Value {
    apply_owned(rt, opts.status, applied)
}

/// How a conflict names a manager (`printManager`, `managedfields/internal/conflict.go`):
/// `"kubectl" using v1` for an Update identity, the quoted name for an applier.
pub(crate) fn print_manager(identity: &str) -> String {
    let Ok(e) = serde_json::from_str::<Value>(identity) else {
        return go_quote(identity);
    };
    let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("");
    let mut out = go_quote(s("manager"));
    if !s("subresource").is_empty() {
        out = format!("{out} with subresource {}", go_quote(s("subresource")));
    }
    if s("operation") == "Update" {
        out = format!("{out} using {}", s("apiVersion"));
    }
    out
}

/// The 409 of a non-forced apply that would change fields other managers own, worded as
/// `NewConflictError` (`apimachinery/pkg/util/managedfields/internal/conflict.go`) and
/// `errors.NewApplyConflict`: one cause per field (`FieldManagerConflict`, `conflict with
/// "mgr"`, `.spec.ports[port=15443,protocol="TCP"].targetPort`, the path as
/// structured-merge-diff's `fieldpath.Path.String` prints it), the message listing them by
/// manager. `found` is sorted by manager identity, then path.
fn apply_conflict(found: &[(String, Vec<PathElement>)]) -> ApiError {
    let path = |p: &[PathElement]| p.iter().map(ToString::to_string).collect::<String>();
    let causes: Vec<Value> = found
        .iter()
        .map(|(who, p)| {
            json!({"reason": "FieldManagerConflict",
                "message": format!("conflict with {}", print_manager(who)),
                "field": path(p)})
        })
        .collect();
    let message = match found {
        [(who, p)] => format!(
            "Apply failed with 1 conflict: conflict with {}: {}",
            print_manager(who),
            path(p)
        ),
        _ => {
            let mut lines = Vec::new();
            let mut last: Option<&str> = None;
            for (who, p) in found {
                if last != Some(who.as_str()) {
                    lines.push(format!("conflicts with {}:", print_manager(who)));
                    last = Some(who);
                }
                lines.push(format!("- {}", path(p)));
            }
            format!(
                "Apply failed with {} conflicts: {}",
                found.len(),
                lines.join("\n")
            )
        }
    };
    ApiError {
        details: Some(json!({ "causes": causes })),
        ..ApiError::new(409, "Conflict", message)
    }
}

/// The error of an applied configuration whose associative lists have an item without its
/// key fields, or two with the same key: structured-merge-diff's typed conversion refuses it
/// (duplicates are allowed only in live objects), and the field manager wraps that plain error
/// (`managedfields/internal/structuredmerge.go`, `Apply`: `failed to create typed patch
/// object (<namespace>/<name>; <group>/<version>, Kind=<kind>): ...`, `objectGVKNN`), which the
/// API server answers as a 500 with no reason (`ErrorToAPIStatus` on an error that is not a
/// Status; the log in kubernetes/kubernetes#121575, the 500 in
/// fabric8io/kubernetes-client#6927).
fn untyped_apply(
    lists: &Lists,
    body: &Value,
    group: &str,
    version: &str,
    kind: &str,
) -> Option<ApiError> {
    let errs = list_keys::check_keys(lists, body);
    let detail = match errs.as_slice() {
        [] => return None,
        [one] => one.clone(),
        many => format!("errors:\n  {}", many.join("\n  ")),
    };
    let ns = meta_str(body, "namespace").unwrap_or("");
    let name = meta_str(body, "name").unwrap_or("");
    Some(ApiError::new(
        500,
        "",
        format!(
            "failed to create typed patch object ({ns}/{name}; {group}/{version}, Kind={kind}): {detail}"
        ),
    ))
}

/// The checks the real server makes of an applied configuration, in its order: the field
/// manager's type check (`managedfields/internal/versioncheck.go`, the outermost manager of
/// `NewDefaultFieldManager`: apiVersion and kind must be the URL's), `metadata.managedFields`
/// absent and the associative lists' keys ([`untyped_apply`], both `structuredmerge.go`
/// `Apply`), then the patch handler's
/// `EnsureObjectNamespaceMatchesRequestNamespace` and `checkName`
/// (`apiserver/pkg/endpoints/handlers/patch.go` `applyPatch`). `exists`: an update, where a
/// missing name is the live object's; on create the applied configuration must name it.
fn check_applied(
    rt: &ResourceType,
    version: &str,
    ns: Option<&str>,
    name: &str,
    lists: &Lists,
    body: &Value,
    exists: bool,
) -> Result<(), ApiError> {
    let api_version = body.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = body.get("kind").and_then(Value::as_str).unwrap_or("");
    // `schema.ParseGroupVersion`: "v1" is the core group; more than one '/' is no version
    // at all, and the unstructured object then reports an empty kind too.
    let (group, ver, kind) = match api_version.split('/').collect::<Vec<_>>()[..] {
        [v] => ("", v, kind),
        [g, v] => (g, v, kind),
        _ => ("", "", ""),
    };
    if (group, ver, kind) != (rt.group.as_str(), version, rt.kind.as_str()) {
        return Err(ApiError::bad_request(format!(
            "invalid object type: {group}/{ver}, Kind={kind}"
        )));
    }
    if body
        .pointer("/metadata/managedFields")
        .is_some_and(|m| !m.is_null())
    {
        return Err(ApiError::bad_request("metadata.managedFields must be nil"));
    }
    if let Some(e) = untyped_apply(lists, body, group, ver, kind) {
        return Err(e);
    }
    if rt.namespaced
        && let (Some(b), Some(u)) = (meta_str(body, "namespace"), ns)
        && !b.is_empty()
        && b != u
    {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let body_name = meta_str(body, "name");
    if let Some(n) = body_name.or(if exists { None } else { Some("") })
        && n != name
    {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({n}) does not match the name on the URL ({name})"
        )));
    }
    Ok(())
}
