//! Server-side apply takes a list's type from the object's kind: a custom resource's from its
//! CRD's `openAPIV3Schema` (`x-kubernetes-list-type`, `x-kubernetes-list-map-keys`), atomic
//! where it declares none, never from a built-in kind that has a list at the same path (a
//! Service's `spec.ports`).

mod common;

use common::server_with;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use serde_json::{Value, json};

const NS: &str = "istio-system";

fn namespace() -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
}

/// A namespaced `networking.istio.io/v1` CRD whose schema is `spec`.
fn crd(plural: &str, kind: &str, spec: Value) -> Value {
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.networking.istio.io")},
        "spec": {"group": "networking.istio.io", "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.to_lowercase(), "kind": kind,
                "listKind": format!("{kind}List")},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                    "spec": spec}}}}]}})
}

fn api(client: &kube::Client, kind: &str, plural: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("networking.istio.io", "v1", kind);
    Api::namespaced_with(
        client.clone(),
        NS,
        &ApiResource::from_gvk_with_plural(&gvk, plural),
    )
}

fn apply_as(manager: &str) -> PatchParams {
    PatchParams::apply(manager).force()
}

#[tokio::test]
async fn a_custom_resources_spec_ports_are_not_a_services() {
    // Istio's ServiceEntry CRD declares no list type for `spec.ports`: atomic.
    let schema = json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true});
    let (_server, client) = server_with(
        "crd-lists-atomic",
        [namespace(), crd("serviceentries", "ServiceEntry", schema)],
    )
    .await;
    let entries = api(&client, "ServiceEntry", "serviceentries");
    let entry = |ports: Value| {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry",
            "metadata": {"name": "remote", "namespace": NS},
            "spec": {"hosts": ["remote.example"], "resolution": "DNS", "ports": ports}})
    };
    let tls = json!({"number": 443, "name": "tls", "protocol": "TLS"});
    let applied = entries
        .patch(
            "remote",
            &apply_as("meshctl"),
            &Patch::Apply(entry(json!([tls]))),
        )
        .await
        .expect("a ServiceEntry's ports have no `port` key: the real server accepts them");
    assert_eq!(applied.data["spec"]["ports"], json!([tls]));
    // Atomic: another manager's apply replaces the list whole.
    let http = json!({"number": 80, "name": "http", "protocol": "HTTP"});
    let applied = entries
        .patch(
            "remote",
            &apply_as("other"),
            &Patch::Apply(entry(json!([http]))),
        )
        .await
        .unwrap();
    assert_eq!(applied.data["spec"]["ports"], json!([http]));
}

#[tokio::test]
async fn a_custom_resources_map_list_is_merged_by_its_declared_keys() {
    let spec = json!({"type": "object", "properties": {"servers": {"type": "array",
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
        "items": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string"}, "port": {"type": "integer"}}}}}});
    let (_server, client) = server_with(
        "crd-lists-map",
        [namespace(), crd("listeners", "Listener", spec)],
    )
    .await;
    let listeners = api(&client, "Listener", "listeners");
    let listener = |servers: Value| {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "Listener",
            "metadata": {"name": "l", "namespace": NS}, "spec": {"servers": servers}})
    };
    let a = json!({"name": "a", "port": 1});
    let b = json!({"name": "b", "port": 2});
    listeners
        .patch("l", &apply_as("one"), &Patch::Apply(listener(json!([a]))))
        .await
        .unwrap();
    let merged = listeners
        .patch("l", &apply_as("two"), &Patch::Apply(listener(json!([b]))))
        .await
        .unwrap();
    assert_eq!(
        merged.data["spec"]["servers"],
        json!([a, b]),
        "merged by name"
    );
    // An item without its declared key is the field manager's 500, as for built-ins.
    let err = listeners
        .patch(
            "l",
            &apply_as("one"),
            &Patch::Apply(listener(json!([{"port": 3}]))),
        )
        .await
        .unwrap_err();
    let kube::Error::Api(status) = err else {
        panic!("an API error")
    };
    assert_eq!(status.code, 500);
    assert!(
        status.message.contains(
            r#".spec.servers: element 0: associative list with keys has an element that omits key field "name""#
        ),
        "{}",
        status.message
    );
}
