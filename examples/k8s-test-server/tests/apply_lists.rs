//! Server-side apply of associative lists as kube-apiserver's structured-merge-diff does it,
//! over real HTTPS with kube-rs clients: a Service's `spec.ports` (keys port, protocol) and a
//! container's `env` (key name) are merged item by item, so what another manager added
//! survives meshctl's forced re-apply, meshctl dropping one of its own items removes only
//! that item, and a conflict names the item (`.spec.ports[port=15443,protocol="TCP"].targetPort`).
//! Atomic lists (a ClusterRole's `rules`) are still one field, and duplicate keys in an
//! applied configuration are the field manager's 500.

mod common;

use common::{obj, server_with};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Api, Patch, PatchParams};
use kube::core::Status;
use serde_json::{Value, json};

const NS: &str = "mesh";

fn namespace() -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
}

/// The gateway Service as meshctl renders it, with these `ports`.
fn service(ports: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "gw", "namespace": NS},
        "spec": {"type": "LoadBalancer", "selector": {"app": "gw"}, "ports": ports}})
}

fn tls_port() -> Value {
    json!({"name": "tls", "port": 15443, "targetPort": 15443, "protocol": "TCP"})
}

fn status_port() -> Value {
    json!({"name": "status-port", "port": 15021, "targetPort": 15021, "protocol": "TCP"})
}

/// The gateway Deployment as meshctl renders it, its container with this `env`.
fn deployment(env: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "gw", "namespace": NS},
        "spec": {"selector": {"matchLabels": {"app": "gw"}},
            "template": {"metadata": {"labels": {"app": "gw"}},
                "spec": {"containers": [{"name": "gateway", "image": "gw:1", "env": env,
                    "ports": [{"name": "tls", "containerPort": 15443, "protocol": "TCP"}]}]}}}})
}

fn meshctl(force: bool) -> PatchParams {
    let mut pp = PatchParams::apply("meshctl");
    pp.force = force;
    pp
}

/// A JSON patch (RFC 6902) under field manager `kubectl`: an Update, as `kubectl patch` is.
async fn kubectl_json_patch<K>(api: &Api<K>, ops: Value) -> K
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let pp = PatchParams {
        field_manager: Some("kubectl".into()),
        ..PatchParams::default()
    };
    let patch: Patch<Value> = Patch::Json(obj(ops));
    api.patch("gw", &pp, &patch).await.unwrap()
}

/// The `port` of each of the Service's ports, in order.
fn port_numbers(svc: &Service) -> Vec<i32> {
    let spec = svc.spec.as_ref().expect("spec");
    spec.ports.iter().flatten().map(|p| p.port).collect()
}

/// Each env var of the Deployment's first container as (name, value).
fn env(d: &Deployment) -> Vec<(String, String)> {
    let pod = d.spec.template.spec.as_ref().unwrap();
    pod.containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| (e.name.clone(), e.value.clone().unwrap_or_default()))
        .collect()
}

fn var(name: &str, value: &str) -> (String, String) {
    (name.into(), value.into())
}

/// The Status of a refused request, which must have `code`.
fn refused<T: std::fmt::Debug>(r: kube::Result<T>, code: u16) -> Status {
    match r {
        Err(kube::Error::Api(s)) if s.code == code => *s,
        other => panic!("expected a {code}, got {other:?}"),
    }
}

/// Fails with lists as one atomic field: meshctl's forced re-apply replaced `spec.ports` and
/// the container list whole, dropping the port kubectl added and the env var another applier
/// added (and that applier's partial container had no image: a 422).
#[tokio::test]
async fn another_managers_port_and_env_var_survive_meshctls_forced_reapply() {
    let (_server, admin) = server_with("keep-others", [namespace()]).await;
    let services: Api<Service> = Api::namespaced(admin.clone(), NS);
    let deployments: Api<Deployment> = Api::namespaced(admin, NS);
    let svc = service(json!([status_port(), tls_port()]));
    let dep = deployment(json!([{"name": "MESH", "value": "1"}]));
    services
        .patch("gw", &meshctl(true), &Patch::Apply(&svc))
        .await
        .unwrap();
    deployments
        .patch("gw", &meshctl(true), &Patch::Apply(&dep))
        .await
        .unwrap();

    // `kubectl patch` adds a port; another tool applies one env var to the same container.
    kubectl_json_patch(
        &services,
        json!([{"op": "add", "path": "/spec/ports/-",
            "value": {"name": "extra", "port": 8443, "targetPort": 8443, "protocol": "TCP"}}]),
    )
    .await;
    let tool = json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "gw", "namespace": NS},
        "spec": {"template": {"spec": {"containers": [{"name": "gateway",
            "env": [{"name": "TOOL", "value": "on"}]}]}}}});
    let after_tool = deployments
        .patch("gw", &PatchParams::apply("tool"), &Patch::Apply(&tool))
        .await
        .unwrap();
    assert_eq!(env(&after_tool), [var("MESH", "1"), var("TOOL", "on")]);

    // meshctl re-applies exactly what it applied before, forced.
    let svc_after = services
        .patch("gw", &meshctl(true), &Patch::Apply(&svc))
        .await
        .unwrap();
    assert_eq!(port_numbers(&svc_after), [15021, 15443, 8443]);
    let dep_after = deployments
        .patch("gw", &meshctl(true), &Patch::Apply(&dep))
        .await
        .unwrap();
    assert_eq!(env(&dep_after), [var("MESH", "1"), var("TOOL", "on")]);
    let pod = dep_after.spec.template.spec.unwrap();
    assert_eq!(pod.containers[0].image.as_deref(), Some("gw:1"));
}

/// Fails with lists as one atomic field: the re-apply without the status port replaced the
/// ports with meshctl's one, dropping kubectl's too (and the env list with MESH alone).
#[tokio::test]
async fn meshctl_dropping_one_of_its_items_removes_only_that_item() {
    let (_server, admin) = server_with("drop-own", [namespace()]).await;
    let services: Api<Service> = Api::namespaced(admin.clone(), NS);
    let deployments: Api<Deployment> = Api::namespaced(admin, NS);
    services
        .patch(
            "gw",
            &meshctl(true),
            &Patch::Apply(service(json!([status_port(), tls_port()]))),
        )
        .await
        .unwrap();
    let two_vars = json!([{"name": "MESH", "value": "1"}, {"name": "OLD", "value": "x"}]);
    deployments
        .patch("gw", &meshctl(true), &Patch::Apply(deployment(two_vars)))
        .await
        .unwrap();
    kubectl_json_patch(
        &services,
        json!([{"op": "add", "path": "/spec/ports/-",
            "value": {"name": "extra", "port": 8443, "protocol": "TCP"}}]),
    )
    .await;
    kubectl_json_patch(
        &deployments,
        json!([{"op": "add", "path": "/spec/template/spec/containers/0/env/-",
            "value": {"name": "KUBECTL", "value": "k"}}]),
    )
    .await;

    // meshctl stops applying the status port and the OLD variable (no protocol on the
    // port now: its key defaults to TCP, so it is the same port).
    let svc = services
        .patch(
            "gw",
            &meshctl(true),
            &Patch::Apply(service(
                json!([{"name": "tls", "port": 15443, "targetPort": 15443}]),
            )),
        )
        .await
        .unwrap();
    assert_eq!(port_numbers(&svc), [15443, 8443]);
    let dep = deployments
        .patch(
            "gw",
            &meshctl(true),
            &Patch::Apply(deployment(json!([{"name": "MESH", "value": "1"}]))),
        )
        .await
        .unwrap();
    assert_eq!(env(&dep), [var("MESH", "1"), var("KUBECTL", "k")]);
}

/// Fails with lists as one atomic field: the conflict named the whole `.spec.ports`, and the
/// apply leaving `targetPort` out conflicted too.
#[tokio::test]
async fn a_non_forced_apply_changing_another_managers_target_port_is_a_409_naming_the_item() {
    let (_server, admin) = server_with("port-conflict", [namespace()]).await;
    let services: Api<Service> = Api::namespaced(admin, NS);
    let svc = service(json!([status_port(), tls_port()]));
    services
        .patch("gw", &meshctl(true), &Patch::Apply(&svc))
        .await
        .unwrap();
    kubectl_json_patch(
        &services,
        json!([{"op": "replace", "path": "/spec/ports/1/targetPort", "value": 9443}]),
    )
    .await;

    let s = refused(
        services
            .patch("gw", &meshctl(false), &Patch::Apply(&svc))
            .await,
        409,
    );
    let field = r#".spec.ports[port=15443,protocol="TCP"].targetPort"#;
    assert_eq!(
        s.message,
        format!(r#"Apply failed with 1 conflict: conflict with "kubectl" using v1: {field}"#)
    );
    let causes: Vec<(String, String, String)> = s
        .details
        .expect("details")
        .causes
        .into_iter()
        .map(|c| (c.reason, c.message, c.field))
        .collect();
    assert_eq!(
        causes,
        [(
            "FieldManagerConflict".to_string(),
            r#"conflict with "kubectl" using v1"#.to_string(),
            field.to_string()
        )]
    );

    // The item's other fields are meshctl's still: applying them without the target port
    // conflicts with nobody.
    let without_target = service(json!([status_port(),
        {"name": "tls", "port": 15443, "protocol": "TCP"}]));
    let kept = services
        .patch("gw", &meshctl(false), &Patch::Apply(&without_target))
        .await
        .unwrap();
    let ports = kept.spec.unwrap().ports.unwrap();
    assert_eq!(
        serde_json::to_value(&ports[1].target_port).unwrap(),
        json!(9443)
    );
    // Forced, meshctl takes the target port back.
    let forced = services
        .patch("gw", &meshctl(true), &Patch::Apply(&svc))
        .await
        .unwrap();
    let ports = forced.spec.unwrap().ports.unwrap();
    assert_eq!(
        serde_json::to_value(&ports[1].target_port).unwrap(),
        json!(15443)
    );
}

/// Passes with lists as one atomic field too: it guards against merging a list Kubernetes
/// declares atomic (`rules` has no list type: schemaconv makes it atomic). It fails when
/// `rules` is put in the table (checked by doing so).
#[tokio::test]
async fn an_atomic_list_is_still_replaced_whole_and_conflicts_as_one_field() {
    let (_server, admin) = server_with("atomic", []).await;
    let roles: Api<ClusterRole> = Api::all(admin);
    let role = |rules: Value| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "gw"}, "rules": rules})
    };
    let get = json!({"apiGroups": [""], "resources": ["services"], "verbs": ["get"]});
    let list = json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]});
    let watch = json!({"apiGroups": [""], "resources": ["endpoints"], "verbs": ["watch"]});
    let mine = role(json!([get, list]));
    roles
        .patch("gw", &meshctl(true), &Patch::Apply(&mine))
        .await
        .unwrap();
    kubectl_json_patch(
        &roles,
        json!([{"op": "add", "path": "/rules/-", "value": watch}]),
    )
    .await;

    let s = refused(
        roles
            .patch("gw", &meshctl(false), &Patch::Apply(&mine))
            .await,
        409,
    );
    assert_eq!(
        s.message,
        r#"Apply failed with 1 conflict: conflict with "kubectl" using rbac.authorization.k8s.io/v1: .rules"#
    );
    let forced = roles
        .patch("gw", &meshctl(true), &Patch::Apply(&mine))
        .await
        .unwrap();
    assert_eq!(
        serde_json::to_value(forced.rules.unwrap()).unwrap(),
        json!([get, list])
    );
}

/// Fails without the key check: the duplicate env var was stored (201).
#[tokio::test]
async fn duplicate_keys_in_an_applied_configuration_are_the_field_managers_500() {
    let (_server, admin) = server_with("duplicates", [namespace()]).await;
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), NS);
    let dup = deployment(json!([{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]));
    let s = refused(
        deployments
            .patch("gw", &meshctl(true), &Patch::Apply(&dup))
            .await,
        500,
    );
    assert_eq!(
        s.message,
        r#"failed to create typed patch object (mesh/gw; apps/v1, Kind=Deployment): .spec.template.spec.containers[name="gateway"].env: duplicate entries for key [name="A"]"#
    );
    assert!(deployments.get_opt("gw").await.unwrap().is_none());

    // Several at once are listed; a port without its key field is one too.
    let services: Api<Service> = Api::namespaced(admin, NS);
    let bad = service(json!([tls_port(), tls_port(), {"name": "x", "targetPort": 1}]));
    let s = refused(
        services
            .patch("gw", &meshctl(true), &Patch::Apply(&bad))
            .await,
        500,
    );
    assert_eq!(
        s.message,
        "failed to create typed patch object (mesh/gw; /v1, Kind=Service): errors:\n  \
         .spec.ports: duplicate entries for key [port=15443,protocol=\"TCP\"]\n  \
         .spec.ports: element 2: associative list with keys has an element that omits key \
         field \"port\" (and doesn't have default value)"
    );
}
