//! Finalizers as the generic registry keeps them (`registry/generic/registry/store.go`): a
//! delete only marks an object that has some (`deletionTimestamp`, grace period 0, MODIFIED,
//! a 200 with the object), no new ones may be added while it is being deleted, and the write
//! that takes the last one off deletes it (DELETED). A Namespace being terminated refuses new
//! content with the NamespaceLifecycle 403. With `load_balancer_cleanup_finalizer`, the cloud
//! controller's finalizer holds LoadBalancer Services.

mod common;

use common::{obj, server_with};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use k8s_test_server::{Options, StoreConfig, TestApiServer};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::{Value, json};
use std::time::Duration;

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

fn held_cm(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "finalizers": ["example.com/hold"]},
        "data": {"a": "1"}})
}

fn merge(v: Value) -> Patch<Value> {
    Patch::Merge(v)
}

/// The message of a failed request, which must be `code`.
fn failed<T: std::fmt::Debug>(r: kube::Result<T>, code: u16) -> String {
    match r {
        Err(kube::Error::Api(s)) if s.code == code => s.message,
        other => panic!("expected a {code}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_delete_only_marks_an_object_with_finalizers_until_they_are_gone() {
    let (server, client) = server_with("fin-cm", [namespace("mesh"), held_cm("mesh", "c")]).await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "mesh");
    let rv = server.store().resource_version().to_string();
    let mut events = cms
        .watch(&WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    // The next event of "c" (the namespace controller adds `kube-root-ca.crt` meanwhile).
    let mut next = async || loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), events.try_next())
            .await
            .expect("an event within 5 s")
            .unwrap()
            .expect("the watch goes on");
        let name = match &ev {
            WatchEvent::Added(c) | WatchEvent::Modified(c) | WatchEvent::Deleted(c) => {
                c.metadata.name.clone()
            }
            _ => None,
        };
        if name.as_deref() == Some("c") {
            return ev;
        }
    };

    let marked = cms.delete("c", &DeleteParams::default()).await.unwrap();
    let marked = marked
        .left()
        .expect("the object, not a Status: it is still there");
    let deleting = marked.metadata.deletion_timestamp.clone().expect("marked");
    assert_eq!(marked.metadata.deletion_grace_period_seconds, Some(0));
    assert!(
        matches!(next().await, WatchEvent::Modified(c) if c.metadata.deletion_timestamp.is_some())
    );
    let still = cms.get("c").await.unwrap();
    assert_eq!(still.metadata.deletion_timestamp, Some(deleting.clone()));
    // Deleting again changes nothing.
    let again = cms.delete("c", &DeleteParams::default()).await.unwrap();
    let again = again.left().unwrap();
    assert_eq!(
        again.metadata.resource_version,
        still.metadata.resource_version
    );

    // No new finalizers while it is being deleted; other changes are fine, and the deletion
    // timestamp stays.
    let add = merge(json!({"metadata": {"finalizers": ["example.com/hold", "example.com/new"]}}));
    assert_eq!(
        failed(cms.patch("c", &PatchParams::default(), &add).await, 422),
        r#"ConfigMap "c" is invalid: metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{"example.com/new"}"#
    );
    let changed = cms
        .patch(
            "c",
            &PatchParams::default(),
            &merge(json!({"data": {"a": "2"}})),
        )
        .await
        .unwrap();
    assert_eq!(changed.metadata.deletion_timestamp, Some(deleting));
    let ev = next().await;
    assert!(matches!(ev, WatchEvent::Modified(_)), "{ev:?}");

    // Taking the last finalizer off deletes it; the answer is the object as last stored.
    let last = cms
        .patch(
            "c",
            &PatchParams::default(),
            &merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    assert_eq!(last.data.unwrap()["a"], "2");
    assert!(matches!(next().await, WatchEvent::Deleted(_)));
    assert_eq!(
        failed(cms.get("c").await, 404),
        r#"configmaps "c" not found"#
    );
}

#[tokio::test]
async fn a_deletion_timestamp_cannot_be_set_by_an_update() {
    let (_server, client) = server_with(
        "fin-immutable",
        [
            namespace("mesh"),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "d", "namespace": "mesh"}}),
        ],
    )
    .await;
    let cms: Api<ConfigMap> = Api::namespaced(client, "mesh");
    let set = merge(json!({"metadata": {"deletionTimestamp": "2026-01-02T03:04:05Z"}}));
    assert_eq!(
        failed(cms.patch("d", &PatchParams::default(), &set).await, 422),
        "ConfigMap \"d\" is invalid: metadata.deletionTimestamp: Invalid value: 2026-01-02 03:04:05 +0000 UTC: field is immutable"
    );
}

#[tokio::test]
async fn a_terminating_namespace_refuses_new_content_and_goes_with_its_last_object() {
    let (_server, client) = server_with(
        "fin-namespace",
        [namespace("doomed"), held_cm("doomed", "held")],
    )
    .await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    let ns = namespaces.get("doomed").await.expect("kept by its content");
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Terminating"));
    assert!(ns.metadata.deletion_timestamp.is_some());
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "doomed");
    let fresh: ConfigMap = obj(json!({"metadata": {"name": "fresh"}}));
    let err = cms
        .create(&PostParams::default(), &fresh)
        .await
        .unwrap_err();
    let kube::Error::Api(s) = err else {
        panic!("an API error")
    };
    assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
    assert_eq!(
        s.message,
        r#"configmaps "fresh" is forbidden: unable to create new content in namespace doomed because it is being terminated"#
    );
    let cause = &s.details.unwrap().causes[0];
    assert_eq!(
        (
            cause.reason.as_str(),
            cause.message.as_str(),
            cause.field.as_str()
        ),
        (
            "NamespaceTerminating",
            "namespace doomed is being terminated",
            "metadata.namespace"
        )
    );
    // Only the held object is left; taking its finalizer off ends the namespace too.
    let left: Vec<String> = cms
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|c| c.metadata.name.unwrap())
        .collect();
    assert_eq!(left, ["held"]);
    cms.patch(
        "held",
        &PatchParams::default(),
        &merge(json!({"metadata": {"finalizers": []}})),
    )
    .await
    .unwrap();
    assert_eq!(
        failed(namespaces.get("doomed").await, 404),
        r#"namespaces "doomed" not found"#
    );
}

#[tokio::test]
async fn the_cloud_controllers_finalizer_holds_a_load_balancer_service() {
    common::init();
    let mut opts = Options::new("fin-lb");
    opts.store = StoreConfig {
        load_balancer_cleanup_finalizer: true,
        controller_delay: Duration::from_millis(10),
        ..StoreConfig::default()
    };
    let server = TestApiServer::start_with(opts).await.unwrap();
    server.store().create(namespace("mesh")).unwrap();
    let client = common::admin_client(&server).await;
    let services: Api<Service> = Api::namespaced(client, "mesh");
    let svc = |name: &str, ty: &str| -> Service {
        obj(
            json!({"metadata": {"name": name}, "spec": {"type": ty, "selector": {"app": "gw"},
            "ports": [{"name": "tls", "port": 15443}]}}),
        )
    };
    let pp = PostParams::default();
    services
        .create(&pp, &svc("gw", "LoadBalancer"))
        .await
        .unwrap();
    services
        .create(&pp, &svc("internal", "ClusterIP"))
        .await
        .unwrap();
    let held = testkit::wait::eventually_some(
        "the cloud controller's finalizer",
        Duration::from_secs(5),
        || async {
            let s = services.get("gw").await.ok()?;
            s.metadata
                .finalizers
                .clone()
                .filter(|f| !f.is_empty())
                .map(|f| (s, f))
        },
    )
    .await;
    assert_eq!(held.1, ["service.kubernetes.io/load-balancer-cleanup"]);
    let managers: Vec<String> = held
        .0
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| e.manager)
        .collect();
    assert!(
        managers.contains(&"cloud-controller-manager".to_string()),
        "{managers:?}"
    );
    services
        .delete("gw", &DeleteParams::default())
        .await
        .unwrap();
    let marked = services.get("gw").await.expect("held by the finalizer");
    assert!(marked.metadata.deletion_timestamp.is_some());
    // The test plays the cloud controller's cleanup: a plain patch takes the finalizer off.
    services
        .patch(
            "gw",
            &PatchParams::default(),
            &merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    assert_eq!(
        failed(services.get("gw").await, 404),
        r#"services "gw" not found"#
    );
    // A ClusterIP Service never gets it.
    let internal = services.get("internal").await.unwrap();
    assert_eq!(internal.metadata.finalizers, None);
}
