//! The controllers a test cluster needs, run the way kube-controller-manager runs them: from
//! the store's change feed, after the write that triggers them, never inside it.
//! - token controller: fills `kubernetes.io/service-account-token` Secrets (`token`, `ca.crt`,
//!   `namespace`, the `service-account.uid` annotation), or deletes one whose ServiceAccount
//!   is missing;
//! - namespace defaults (the serviceaccounts controller and root-CA publisher): the `default`
//!   ServiceAccount and the `kube-root-ca.crt` ConfigMap in every new namespace;
//! - with `StoreConfig::load_balancer_cleanup_finalizer`, the cloud service controller's
//!   `service.kubernetes.io/load-balancer-cleanup` finalizer on LoadBalancer Services.
//!
//! Each reconcile reads the current object, so a late or repeated event does no harm; when the
//! history was compacted past the controllers' cursor they re-list, as an informer does.

use crate::auth::{self, TokenRecord, Tokens};
use crate::store::{Changes, EventType, HistEvent, ObjKey, Store, meta_mut, meta_str};
use crate::util;
use crate::write::{PatchKind, WriteOpts};
use serde_json::{Value, json};

const TOKEN_SECRET_TYPE: &str = "kubernetes.io/service-account-token";

/// Catches up with everything already stored (so a new cluster's namespaces have their
/// defaults when this returns), then follows the change feed on a background task, each
/// batch `controller_delay` after the first write that woke it. The task ends with the store.
pub(crate) fn start(store: &Store, tokens: Tokens) {
    // Subscribed first: a write during the catch-up wakes the task.
    let mut signal = store.subscribe();
    let mut cursor = catch_up(store, &tokens, 0, u64::MAX);
    let weak = store.downgrade();
    tokio::spawn(async move {
        // `changed` fails once the store (which owns the sender) is gone.
        while signal.changed().await.is_ok() {
            let Some((delay, upto)) = weak
                .upgrade()
                .map(|s| (s.config().controller_delay, s.resource_version()))
            else {
                return;
            };
            tokio::time::sleep(delay).await;
            let Some(store) = weak.upgrade() else { return };
            cursor = catch_up(&store, &tokens, cursor, upto);
        }
    });
}

/// Reconciles the events in `(cursor, upto]` and returns the new cursor; after a compaction,
/// reconciles every object instead.
fn catch_up(store: &Store, tokens: &Tokens, cursor: u64, upto: u64) -> u64 {
    match store.changes_after(cursor) {
        Changes::Events(events) => {
            let mut cursor = cursor;
            for ev in events.iter().take_while(|e| e.rv <= upto) {
                react(store, tokens, ev);
                cursor = ev.rv;
            }
            cursor
        }
        Changes::Gone => relist(store, tokens),
    }
}

fn react(store: &Store, tokens: &Tokens, ev: &HistEvent) {
    if ev.etype == EventType::Deleted || !ev.key.group.is_empty() {
        return;
    }
    if ev.key.resource == "services" {
        add_load_balancer_finalizer(store, &ev.key.namespace, &ev.key.name);
    }
    if ev.etype != EventType::Added {
        return;
    }
    match ev.key.resource.as_str() {
        "namespaces" => namespace_defaults(store, &ev.key.name),
        "secrets" if ev.obj["type"] == TOKEN_SECRET_TYPE => {
            fill_token_secret(store, tokens, &ev.key.namespace, &ev.key.name)
        }
        _ => {}
    }
}

/// Reconciles every namespace and token Secret; returns the resourceVersion it listed at.
fn relist(store: &Store, tokens: &Tokens) -> u64 {
    let (rv, keys): (u64, Vec<ObjKey>) = {
        let st = store.lock();
        let keys = st
            .objects
            .iter()
            .filter(|(k, o)| {
                k.group.is_empty()
                    && (k.resource == "namespaces"
                        || k.resource == "services"
                        || (k.resource == "secrets" && o["type"] == TOKEN_SECRET_TYPE))
            })
            .map(|(k, _)| k.clone())
            .collect();
        (st.rv, keys)
    };
    for k in keys {
        match k.resource.as_str() {
            "namespaces" => namespace_defaults(store, &k.name),
            "services" => add_load_balancer_finalizer(store, &k.namespace, &k.name),
            _ => fill_token_secret(store, tokens, &k.namespace, &k.name),
        }
    }
    rv
}

/// The `default` ServiceAccount and the `kube-root-ca.crt` ConfigMap of a namespace.
fn namespace_defaults(store: &Store, ns: &str) {
    let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}});
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "kube-root-ca.crt", "namespace": ns, "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
        "data": {"ca.crt": store.ca_pem()}});
    for o in [sa, cm] {
        // The namespace may be gone again, or the object may exist: both are fine.
        let _ = store.create(o);
    }
}

/// The finalizer the cloud service controller puts on a LoadBalancer Service before it
/// creates the load balancer (`k8s.io/cloud-provider/controllers/service`, `addFinalizer`).
pub(crate) const LOAD_BALANCER_CLEANUP: &str = "service.kubernetes.io/load-balancer-cleanup";

/// The cloud service controller's step for one Service, with
/// `load_balancer_cleanup_finalizer`: a LoadBalancer Service not being deleted gets
/// [`LOAD_BALANCER_CLEANUP`] (again, if a write took it off), by a merge patch of its
/// finalizers under the manager `cloud-controller-manager`. It deletes no load balancer:
/// taking the finalizer off a deleted Service (which then goes) is the test's to do.
fn add_load_balancer_finalizer(store: &Store, ns: &str, name: &str) {
    if !store.config().load_balancer_cleanup_finalizer {
        return;
    }
    let Ok((rt, v)) = store.resolve_kind("v1", "Service") else {
        return;
    };
    let Ok(svc) = store.get_obj(&rt, &v, Some(ns), name) else {
        return;
    };
    let mut finalizers: Vec<Value> = svc
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if svc.pointer("/spec/type") != Some(&json!("LoadBalancer"))
        || svc.pointer("/metadata/deletionTimestamp").is_some()
        || finalizers.contains(&json!(LOAD_BALANCER_CLEANUP))
    {
        return;
    }
    finalizers.push(json!(LOAD_BALANCER_CLEANUP));
    let patch = json!({"metadata": {"finalizers": finalizers,
        "resourceVersion": meta_str(&svc, "resourceVersion")}});
    let opts = WriteOpts {
        manager: Some("cloud-controller-manager".into()),
        ..WriteOpts::default()
    };
    // A conflict means a newer write, whose event brings this step back.
    let _ = store.patch_obj(&rt, &v, Some(ns), name, PatchKind::Merge, patch, &opts);
}

/// The token controller's step for one Secret: fill it, or delete it when its
/// ServiceAccount does not exist.
fn fill_token_secret(store: &Store, tokens: &Tokens, ns: &str, name: &str) {
    let mut st = store.lock();
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
        store.commit(
            &mut st,
            EventType::Deleted,
            key,
            secret.clone(),
            Some(secret),
        );
        return;
    };
    let sa_uid = meta_str(&sa, "uid").unwrap_or("").to_string();
    let token = auth::legacy_token(ns, &sa_name, &sa_uid, name);
    // Known before the Secret shows it, so a client that reads the token can use it.
    tokens.insert(
        token.clone(),
        TokenRecord {
            namespace: ns.into(),
            service_account: sa_name,
            sa_uid: sa_uid.clone(),
            expires: None,
            secret: Some(name.into()),
            audiences: Vec::new(),
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
    new["data"]["ca.crt"] = json!(util::b64(store.ca_pem().as_bytes()));
    new["data"]["namespace"] = json!(util::b64(ns.as_bytes()));
    store.commit(&mut st, EventType::Modified, key, new, Some(secret));
}
