//! Field selectors as the real server converts them per kind (`ConvertFieldLabel`): each
//! kind accepts only its own labels, and any other is a 400 worded as its conversion function
//! words it, for lists and watches alike.

mod common;

use common::server_with;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, WatchParams};
use serde_json::json;

fn names<K: kube::Resource>(items: &[K]) -> Vec<String> {
    items
        .iter()
        .map(|o| o.meta().name.clone().unwrap())
        .collect()
}

/// The message of the 400 a selector gets.
async fn refused<K>(api: &Api<K>, selector: &str) -> String
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.list(&ListParams::default().fields(selector)).await {
        Err(kube::Error::Api(s)) if s.code == 400 => {
            assert_eq!(s.reason, "BadRequest");
            s.message
        }
        other => panic!("{selector}: expected a 400, got {other:?}"),
    }
}

#[tokio::test]
async fn each_kind_accepts_only_its_field_labels() {
    let crd = json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                "selectableFields": [{"jsonPath": ".spec.color"}]}]}});
    let (_server, client) = server_with(
        "field-selectors",
        [
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "mesh"}}),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lb", "namespace": "mesh"},
                "spec": {"type": "LoadBalancer", "selector": {"a": "b"}, "ports": [{"port": 15443}]}}),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ip", "namespace": "mesh"},
                "spec": {"selector": {"a": "b"}, "ports": [{"port": 80}]}}),
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "mesh"},
                "type": "Opaque"}),
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "mesh"},
                "data": {"x": "1"}}),
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "mesh"},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]}}),
            crd,
            json!({"apiVersion": "example.com/v1", "kind": "Widget",
                "metadata": {"name": "red", "namespace": "mesh"}, "spec": {"color": "red"}}),
            json!({"apiVersion": "example.com/v1", "kind": "Widget",
                "metadata": {"name": "blue", "namespace": "mesh"}, "spec": {"color": "blue"}}),
        ],
    )
    .await;
    let services: Api<Service> = Api::namespaced(client.clone(), "mesh");
    let lbs = services
        .list(&ListParams::default().fields("spec.type=LoadBalancer"))
        .await
        .unwrap();
    assert_eq!(names(&lbs.items), ["lb"]);
    assert_eq!(
        refused(&services, "spec.ports=x").await,
        "field label not supported: spec.ports"
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "mesh");
    let opaque = secrets
        .list(&ListParams::default().fields("type=Opaque"))
        .await
        .unwrap();
    assert!(names(&opaque.items).contains(&"s".to_string()));
    // A kind without a conversion function of its own: name and namespace only.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "mesh");
    assert_eq!(
        refused(&cms, "metadata.name=c,data.x=1").await,
        r#""data.x" is not a known field selector: only "metadata.name", "metadata.namespace""#
    );
    // A Namespace has no `metadata.namespace` label.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    assert_eq!(
        refused(&namespaces, "metadata.namespace=mesh").await,
        "field label not supported: metadata.namespace"
    );
    // `spec.host` is a Pod's old name for `spec.nodeName`.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "mesh");
    let on_n1 = pods
        .list(&ListParams::default().fields("spec.host=n1"))
        .await
        .unwrap();
    assert_eq!(names(&on_n1.items), ["p"]);
    // A custom resource: its CRD's selectableFields.
    let gvk = GroupVersionKind::gvk("example.com", "v1", "Widget");
    let widgets: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "mesh",
        &ApiResource::from_gvk_with_plural(&gvk, "widgets"),
    );
    let red = widgets
        .list(&ListParams::default().fields("spec.color=red"))
        .await
        .unwrap();
    assert_eq!(names(&red.items), ["red"]);
    assert_eq!(
        refused(&widgets, "spec.size=1").await,
        "field label not supported: spec.size"
    );
    // Watches are refused alike.
    let err = services
        .watch(&WatchParams::default().fields("spec.selector=x"), "0")
        .await
        .err()
        .expect("a watch with an unsupported field label is refused");
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 400
            && s.message == "field label not supported: spec.selector"),
        "{err:?}"
    );
}
