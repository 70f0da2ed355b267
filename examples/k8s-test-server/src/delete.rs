//! Deletes, as the generic registry's `Store.Delete` makes them
//! (`apiserver/pkg/registry/generic/registry/store.go`): an object with `metadata.finalizers`
//! is only marked (`markAsDeleting`: `deletionTimestamp`, `deletionGracePeriodSeconds: 0`, a
//! MODIFIED event) and goes when a write empties its finalizers (`ShouldDeleteDuringUpdate`,
//! a DELETED event); anything else goes at once (no graceful deletion). With the cascades the
//! real cluster performs at once or soon after: a Namespace's objects (the namespace
//! controller; the namespace stays `Terminating` until they and its own finalizers are gone),
//! a ServiceAccount's token Secrets, and a CRD's custom objects (its `customresourcecleanup`
//! finalizer).

use crate::error::ApiError;
use crate::resources::{self, ResourceType};
use crate::store::{EventType, ObjKey, State, Store, meta_mut, meta_str};
use serde_json::{Value, json};

/// Whether `obj` has finalizers left.
pub(crate) fn has_finalizers(obj: &Value) -> bool {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
}

fn is_namespace(key: &ObjKey) -> bool {
    key.group.is_empty() && key.resource == "namespaces"
}

/// `ShouldDeleteDuringUpdate`: a write that leaves no finalizers on an object whose deletion
/// was asked for (a `deletionTimestamp`, a grace period of 0 or none) deletes it.
pub(crate) fn finalized(old: &Value, new: &Value) -> bool {
    !has_finalizers(new)
        && old.pointer("/metadata/deletionTimestamp").is_some()
        && old
            .pointer("/metadata/deletionGracePeriodSeconds")
            .is_none_or(|g| g.as_i64() == Some(0))
}

/// A DELETE's preconditions, checked and answered as kube-apiserver's `rest.BeforeDelete`
/// does, before anything is written: the uid first, then the resourceVersion, each a
/// Conflict qualified by the Kind (it passes `gvk.Kind` as the resource).
fn check_preconditions(
    rt: &ResourceType,
    obj: &Value,
    pre_rv: Option<&str>,
    pre_uid: Option<&str>,
) -> Result<(), ApiError> {
    let name = meta_str(obj, "name").unwrap_or_default();
    let conflict = |why: String| ApiError::conflict_because(&rt.group, &rt.kind, name, &why);
    let uid = meta_str(obj, "uid").unwrap_or_default();
    if let Some(want) = pre_uid.filter(|p| *p != uid) {
        return Err(conflict(format!(
            "the UID in the precondition ({want}) does not match the UID in record ({uid}). \
             The object might have been deleted and then recreated"
        )));
    }
    let rv = meta_str(obj, "resourceVersion").unwrap_or_default();
    if let Some(want) = pre_rv.filter(|p| *p != rv) {
        return Err(conflict(format!(
            "the ResourceVersion in the precondition ({want}) does not match the \
             ResourceVersion in record ({rv}). The object might have been modified"
        )));
    }
    Ok(())
}

impl Store {
    /// Deletes an object; returns it as deleted, or as marked for deletion while finalizers
    /// remain.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let (rt, v) = self.resolve_kind(api_version, kind)?;
        self.delete_obj(&rt, &v, namespace, name, false, None, None)
            .map(|(obj, _)| obj)
    }

    /// Deletes an object, or marks it for deletion while it has finalizers; the flag says
    /// whether it is gone.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn delete_obj(
        &self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        name: &str,
        dry_run: bool,
        pre_rv: Option<&str>,
        pre_uid: Option<&str>,
    ) -> Result<(Value, bool), ApiError> {
        let mut st = self.lock();
        let key = ObjKey::new(rt, ns, name);
        let old = st
            .objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&rt.group, &rt.plural, name))?;
        check_preconditions(rt, &old, pre_rv, pre_uid)?;
        let old = Store::render(rt, version, &old);
        Ok(self.delete_locked(&mut st, key, old, dry_run))
    }

    /// `markAsDeleting`, plus a Namespace's `Terminating` phase (namespace storage `Delete`):
    /// the object as its deletion leaves it while it waits for finalizers.
    fn marked_for_deletion(&self, obj: &Value, namespace: bool) -> Value {
        let mut marked = obj.clone();
        let first = obj.pointer("/metadata/deletionTimestamp").is_none();
        let m = meta_mut(&mut marked);
        if first {
            m.insert("deletionTimestamp".into(), json!(self.now()));
            if let Some(g) = m
                .get("generation")
                .and_then(Value::as_i64)
                .filter(|g| *g > 0)
            {
                m.insert("generation".into(), json!(g + 1));
            }
        }
        if namespace {
            marked["status"]["phase"] = json!("Terminating");
        } else {
            m.insert("deletionGracePeriodSeconds".into(), json!(0));
        }
        marked
    }

    /// Deletes the object at `key` (stored as `old`) under the lock: marks it while it has
    /// finalizers (a Namespace also while objects remain in it), else removes it with its
    /// cascade. Returns the object and whether it is gone.
    fn delete_locked(
        &self,
        st: &mut State,
        key: ObjKey,
        old: Value,
        dry_run: bool,
    ) -> (Value, bool) {
        let namespace = is_namespace(&key);
        if !has_finalizers(&old) && !namespace {
            if dry_run {
                return (old, true);
            }
            return (self.remove(st, key, old.clone(), old), true);
        }
        let marked = self.marked_for_deletion(&old, namespace);
        if dry_run {
            return (marked, !has_finalizers(&old));
        }
        if namespace {
            // The namespace controller deletes what is in it; objects with finalizers stay.
            let content: Vec<ObjKey> = st
                .objects
                .keys()
                .filter(|k| k.namespace == key.name)
                .cloned()
                .collect();
            for k in content {
                if let Some(o) = st.objects.get(&k).cloned() {
                    self.delete_locked(st, k, o, false);
                }
            }
            if !has_finalizers(&old) && !st.objects.keys().any(|k| k.namespace == key.name) {
                return (self.remove(st, key, marked, old), true);
            }
        }
        if marked == old {
            // Already being deleted: nothing to write (`GuaranteedUpdate` skips a no-op).
            return (old, false);
        }
        let out = self.commit(st, EventType::Modified, key, marked, Some(old));
        (out, false)
    }

    /// Removes the object at `key` (last stored as `prev`), its event carrying `obj`, with
    /// the cascades that go with it; then a terminating namespace it was the last object of.
    pub(crate) fn remove(&self, st: &mut State, key: ObjKey, obj: Value, prev: Value) -> Value {
        let mut cascade: Vec<ObjKey> = Vec::new();
        if key.group.is_empty() && key.resource == "serviceaccounts" {
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
                            == Some(key.name.as_str())
                })
                .map(|(k, _)| k.clone())
                .collect();
        }
        // A CRD's `customresourcecleanup` finalizer deletes its objects before the CRD goes
        // (watchers see DELETED for each); open watches of the type then end (watch.rs).
        if key.group == "apiextensions.k8s.io"
            && key.resource == "customresourcedefinitions"
            && let Some(crt) = resources::from_crd(&prev)
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
                self.commit(st, EventType::Deleted, k, o.clone(), Some(o));
            }
        }
        let ns = key.namespace.clone();
        let out = self.commit(st, EventType::Deleted, key, obj, Some(prev));
        if !ns.is_empty() {
            self.reap_namespace(st, &ns);
        }
        out
    }

    /// The namespace controller's last step: a terminating namespace with no objects and no
    /// finalizers left goes.
    fn reap_namespace(&self, st: &mut State, ns: &str) {
        let key = ObjKey {
            group: String::new(),
            resource: "namespaces".into(),
            namespace: String::new(),
            name: ns.to_string(),
        };
        let Some(n) = st.objects.get(&key).cloned() else {
            return;
        };
        if n.pointer("/metadata/deletionTimestamp").is_some()
            && !has_finalizers(&n)
            && !st.objects.keys().any(|k| k.namespace == ns)
        {
            self.commit(st, EventType::Deleted, key, n.clone(), Some(n));
        }
    }

    /// Stores an update of the object at `key` from `old` to `new`: a MODIFIED event, or,
    /// when it empties the finalizers of an object being deleted, its deletion
    /// (`deleteWithoutFinalizers`: the DELETED event and the answer carry the object as last
    /// stored). A Namespace goes only once nothing is left in it.
    pub(crate) fn commit_update(
        &self,
        st: &mut State,
        key: ObjKey,
        new: Value,
        old: Value,
    ) -> Value {
        let emptied = finalized(&old, &new);
        if emptied && !is_namespace(&key) {
            return self.remove(st, key, old.clone(), old);
        }
        let ns = is_namespace(&key).then(|| key.name.clone());
        let out = self.commit(st, EventType::Modified, key, new, Some(old));
        if let Some(ns) = ns.filter(|_| emptied) {
            self.reap_namespace(st, &ns);
        }
        out
    }
}
