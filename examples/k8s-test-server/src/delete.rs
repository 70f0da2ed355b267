//! Deletes, which are immediate (no finalizers, no graceful deletion), with the cascades
//! the real cluster performs at once or soon after: a Namespace's objects, a ServiceAccount's
//! token Secrets, and a CRD's custom objects (its `customresourcecleanup` finalizer).

use crate::error::ApiError;
use crate::resources::{self, ResourceType};
use crate::store::{EventType, ObjKey, Store, meta_mut, meta_str};
use crate::write::WriteOpts;
use serde_json::{Value, json};

impl Store {
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
        let mut gone = Store::render(rt, version, &old);
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
}
