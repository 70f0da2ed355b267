//! Server-side apply, simplified (README): each field manager's last applied configuration is
//! remembered; fields it stops applying are pruned; there are no conflicts. The applied
//! configuration is checked as the real field manager and patch handler check it
//! ([`check_applied`]).

use crate::error::ApiError;
use crate::patch;
use crate::resources::ResourceType;
use crate::store::{EventType, ObjKey, State, Store, meta_mut, meta_str};
use crate::write::{WriteOpts, comparable};
use serde_json::{Value, json};
use std::sync::MutexGuard;

impl Store {
    /// Server-side apply (`force` is accepted, conflicts are never reported): creates the
    /// object, or merges the applied configuration into the live one, pruning the fields this
    /// manager applied last time and no longer does. The flag says whether it was created.
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
        check_applied(rt, version, ns, name, &patch_body, current.is_ok())?;
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
            manager,
            applied,
            opts,
        };
        let live = match current {
            Err(e) if e.code == 404 => {
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
            Ok(live) => live,
        };
        // A resourceVersion in the applied configuration is a precondition, as for every
        // patch (the apiserver stores the merged object through a conditional update).
        if let Some(want) = meta_str(&patch_body, "resourceVersion")
            && Some(want) != meta_str(&live, "resourceVersion")
        {
            return Err(ApiError::conflict(&rt.group, &rt.plural, name));
        }
        let prev = self
            .lock()
            .applied
            .get(&(apply.key.clone(), apply.manager.clone()))
            .cloned();
        let mut new = live;
        if let Some(prev) = &prev {
            patch::prune_removed(&mut new, prev, &apply.applied);
        }
        patch::apply_merge(&mut new, &apply.applied);
        if let Some(m) = new.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        let mut st = self.lock();
        let old = st
            .objects
            .get(&apply.key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        let without_manager = WriteOpts {
            manager: None,
            ..opts.clone()
        };
        let merged = self.merge_update(&mut st, rt, version, &old, new, &without_manager)?;
        if !opts.dry_run {
            // What this manager applies is its own now too, changed or not.
            for ((k, m), other) in st.applied.iter_mut() {
                if *k == apply.key && *m != apply.manager {
                    patch::disown_taken(other, &apply.applied);
                }
            }
        }
        if comparable(&merged) == comparable(&old) {
            st.applied.insert((apply.key, apply.manager), apply.applied);
            return Ok((Store::render(rt, version, &old), false));
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
                // create_obj keeps managedFields from the body.
                let out = self.create_obj(rt, version, ns, obj, &create)?;
                self.lock().applied.insert((key, manager), applied);
                Ok(out)
            }
            Some((mut st, old)) => {
                st.applied.insert((key.clone(), manager), applied);
                Ok(self.commit(&mut st, EventType::Modified, key, obj, Some(old)))
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
    /// The applied configuration, without resourceVersion, remembered per manager.
    applied: Value,
    opts: &'a WriteOpts,
}

/// The checks the real server makes of an applied configuration, in its order: the field
/// manager's type check (`managedfields/internal/versioncheck.go`, the outermost manager of
/// `NewDefaultFieldManager`: apiVersion and kind must be the URL's), `metadata.managedFields`
/// absent (`structuredmerge.go` `Apply`), then the patch handler's
/// `EnsureObjectNamespaceMatchesRequestNamespace` and `checkName`
/// (`apiserver/pkg/endpoints/handlers/patch.go` `applyPatch`). `exists`: an update, where a
/// missing name is the live object's; on create the applied configuration must name it.
fn check_applied(
    rt: &ResourceType,
    version: &str,
    ns: Option<&str>,
    name: &str,
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
