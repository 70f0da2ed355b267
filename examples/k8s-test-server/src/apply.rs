//! Server-side apply, simplified (README): each field manager's last applied configuration is
//! remembered; fields it stops applying are pruned; there are no conflicts.

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
        patch_body: Value,
        opts: &WriteOpts,
    ) -> Result<(Value, bool), ApiError> {
        let current = self.get_obj(rt, version, ns, name);
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
