//! Field managers as kube-apiserver keeps them, over real HTTPS with kube-rs clients:
//! server-side apply conflicts (409 naming each field and its manager) unless forced, force
//! taking ownership, the same value shared, writes without `fieldManager` recorded under the
//! User-Agent's manager, and the RBAC escalation check before validation on a patch.

mod common;

use common::{obj, role_and_binding, server_with, service_account_client, started, status_code};
use hyper::header::{HeaderValue, USER_AGENT};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_test_server::TestApiServer;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, core::Status};
use serde_json::{Value, json};

const KUBECTL_UA: &str = "kubectl/v1.31.0 (linux/amd64) kubernetes/abc1234";

/// An admin client of `server` that sends `User-Agent: ua` (kube-rs sends none of its own).
async fn client_with_user_agent(server: &TestApiServer, ua: &str) -> Client {
    common::init();
    let kc = Kubeconfig::from_yaml(&server.kubeconfig(server.cluster_name())).unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    cfg.headers
        .push((USER_AGENT, HeaderValue::from_str(ua).unwrap()));
    Client::try_from(cfg).unwrap()
}

fn cm(data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": data})
}

async fn apply(
    cms: &Api<ConfigMap>,
    manager: &str,
    force: bool,
    data: Value,
) -> kube::Result<ConfigMap> {
    let mut pp = PatchParams::apply(manager);
    pp.force = force;
    cms.patch("cfg", &pp, &Patch::Apply(cm(data))).await
}

/// The Status of a failed request, which must be `code`.
fn status(r: kube::Result<ConfigMap>, code: u16) -> Status {
    match r {
        Err(kube::Error::Api(s)) if s.code == code => *s,
        other => panic!("expected a {code}, got {other:?}"),
    }
}

/// Each cause of a conflict Status as (reason, message, field).
fn causes(s: &Status) -> Vec<(String, String, String)> {
    s.details
        .as_ref()
        .expect("details")
        .causes
        .iter()
        .map(|c| (c.reason.clone(), c.message.clone(), c.field.clone()))
        .collect()
}

fn conflict(manager: &str, field: &str) -> (String, String, String) {
    (
        "FieldManagerConflict".into(),
        format!("conflict with {manager}"),
        field.into(),
    )
}

async fn data(cms: &Api<ConfigMap>) -> Value {
    json!(cms.get("cfg").await.unwrap().data)
}

/// Fails without the conflict check: every apply here succeeded and changed the field.
#[tokio::test]
async fn an_apply_changing_another_managers_field_is_a_409_naming_each_field() {
    let (_server, admin) = started("conflict").await;
    let cms: Api<ConfigMap> = Api::namespaced(admin, "default");
    apply(
        &cms,
        "other-manager",
        false,
        json!({"foo": "a", "keep": "k"}),
    )
    .await
    .unwrap();

    let s = status(
        apply(&cms, "meshctl", false, json!({"foo": "b"})).await,
        409,
    );
    assert_eq!(s.reason, "Conflict");
    assert_eq!(
        s.message,
        "Apply failed with 1 conflict: conflict with \"other-manager\": .data.foo"
    );
    assert_eq!(causes(&s), [conflict("\"other-manager\"", ".data.foo")]);
    assert_eq!(data(&cms).await, json!({"foo": "a", "keep": "k"}));

    // An updater owns what it changed: its name, apiVersion and the fields, by manager.
    let edit = PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..PatchParams::default()
    };
    cms.patch("cfg", &edit, &Patch::Merge(json!({"data": {"bar": "x"}})))
        .await
        .unwrap();
    let s = status(
        apply(
            &cms,
            "meshctl",
            false,
            json!({"foo": "b", "bar": "y", "new": "n"}),
        )
        .await,
        409,
    );
    assert_eq!(
        s.message,
        "Apply failed with 2 conflicts: conflicts with \"kubectl-edit\" using v1:\n- .data.bar\n\
         conflicts with \"other-manager\":\n- .data.foo"
    );
    assert_eq!(
        causes(&s),
        [
            conflict("\"kubectl-edit\" using v1", ".data.bar"),
            conflict("\"other-manager\"", ".data.foo"),
        ]
    );
    assert_eq!(
        data(&cms).await,
        json!({"foo": "a", "keep": "k", "bar": "x"})
    );
    // A dry run conflicts too.
    let dry = PatchParams::apply("meshctl").dry_run();
    let e = cms
        .patch("cfg", &dry, &Patch::Apply(cm(json!({"foo": "b"}))))
        .await
        .unwrap_err();
    assert_eq!(status_code(&e), Some(409));
}

/// Fails without the conflict check and ownership transfer: the loser's re-apply succeeded
/// and its stopping to apply the field removed it.
#[tokio::test]
async fn force_takes_ownership_of_the_conflicting_fields() {
    let (_server, admin) = started("force").await;
    let cms: Api<ConfigMap> = Api::namespaced(admin, "default");
    apply(
        &cms,
        "other-manager",
        false,
        json!({"foo": "a", "keep": "k"}),
    )
    .await
    .unwrap();
    apply(&cms, "meshctl", true, json!({"foo": "b"}))
        .await
        .unwrap();
    assert_eq!(data(&cms).await, json!({"foo": "b", "keep": "k"}));

    // The field is meshctl's alone now: the other manager's value conflicts with it ...
    let s = status(
        apply(
            &cms,
            "other-manager",
            false,
            json!({"foo": "a", "keep": "k"}),
        )
        .await,
        409,
    );
    assert_eq!(
        s.message,
        "Apply failed with 1 conflict: conflict with \"meshctl\": .data.foo"
    );
    // ... meshctl changes it without force ...
    apply(&cms, "meshctl", false, json!({"foo": "c"}))
        .await
        .unwrap();
    // ... and the other manager no longer applying it leaves it (not its field any more).
    apply(&cms, "other-manager", false, json!({"keep": "k"}))
        .await
        .unwrap();
    assert_eq!(data(&cms).await, json!({"foo": "c", "keep": "k"}));
}

/// Fails without shared ownership: the second applier's same value conflicted, or the first
/// one stopping removed the field the second still applies, or the third saw one owner.
#[tokio::test]
async fn the_same_value_is_shared_and_stays_while_one_owner_applies_it() {
    let (_server, admin) = started("shared").await;
    let cms: Api<ConfigMap> = Api::namespaced(admin, "default");
    apply(&cms, "a", false, json!({"foo": "1"})).await.unwrap();
    apply(&cms, "b", false, json!({"foo": "1"})).await.unwrap();

    let s = status(apply(&cms, "c", false, json!({"foo": "2"})).await, 409);
    assert_eq!(
        s.message,
        "Apply failed with 2 conflicts: conflicts with \"a\":\n- .data.foo\n\
         conflicts with \"b\":\n- .data.foo"
    );

    apply(&cms, "a", false, json!({"other": "x"}))
        .await
        .unwrap();
    assert_eq!(data(&cms).await, json!({"foo": "1", "other": "x"}));
    apply(&cms, "b", false, json!({})).await.unwrap();
    assert_eq!(data(&cms).await, json!({"other": "x"}));
}

fn entries(o: &ConfigMap) -> Vec<(String, String, String)> {
    o.metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|e| {
            (
                e.manager.clone().unwrap_or_default(),
                e.operation.clone().unwrap_or_default(),
                e.api_version.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// Fails without the User-Agent fallback: the writes were recorded under no manager, and
/// meshctl's apply over kubectl's field succeeded without force.
#[tokio::test]
async fn writes_without_a_field_manager_belong_to_the_user_agents_manager() {
    let (server, admin) = started("useragent").await;
    let kubectl: Api<ConfigMap> =
        Api::namespaced(client_with_user_agent(&server, KUBECTL_UA).await, "default");
    let created = kubectl
        .create(&PostParams::default(), &obj(cm(json!({"foo": "a"}))))
        .await
        .unwrap();
    assert_eq!(
        entries(&created),
        [("kubectl".into(), "Update".into(), "v1".into())]
    );

    // A patch by another tool, no slash in its User-Agent: the whole of it.
    let tool: Api<ConfigMap> = Api::namespaced(
        client_with_user_agent(&server, "label-tool").await,
        "default",
    );
    let patched = tool
        .patch(
            "cfg",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"bar": "b"}})),
        )
        .await
        .unwrap();
    assert!(
        entries(&patched).contains(&("label-tool".into(), "Update".into(), "v1".into())),
        "{:?}",
        entries(&patched)
    );
    // An explicit fieldManager wins over the User-Agent.
    let named = PatchParams {
        field_manager: Some("named".into()),
        ..PatchParams::default()
    };
    let patched = tool
        .patch("cfg", &named, &Patch::Merge(json!({"data": {"baz": "c"}})))
        .await
        .unwrap();
    assert!(entries(&patched).iter().any(|e| e.0 == "named"));

    // meshctl applying another value to kubectl's field conflicts, as on a real cluster.
    let cms: Api<ConfigMap> = Api::namespaced(admin, "default");
    let s = status(
        apply(&cms, "meshctl", false, json!({"foo": "m"})).await,
        409,
    );
    assert_eq!(
        s.message,
        "Apply failed with 1 conflict: conflict with \"kubectl\" using v1: .data.foo"
    );
    apply(&cms, "meshctl", true, json!({"foo": "m"}))
        .await
        .unwrap();
    assert_eq!(data(&cms).await["foo"], "m");
}

/// Fails without the PatchOptions check: the merge patch with `force` succeeded.
#[tokio::test]
async fn force_on_a_non_apply_patch_is_invalid() {
    let (server, admin) = started("forcepatch").await;
    let mut stored = cm(json!({"foo": "a"}));
    stored["metadata"]["namespace"] = json!("default");
    server.store().create(stored).unwrap();
    for force in ["true", "false"] {
        let req = hyper::Request::builder()
            .method("PATCH")
            .uri(format!(
                "/api/v1/namespaces/default/configmaps/cfg?force={force}"
            ))
            .header("Content-Type", "application/merge-patch+json")
            .body(br#"{"data": {"foo": "b"}}"#.to_vec())
            .unwrap();
        let e = admin.request::<ConfigMap>(req).await.unwrap_err();
        match e {
            kube::Error::Api(s) => {
                assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
                assert_eq!(
                    s.message,
                    "PatchOptions.meta.k8s.io \"\" is invalid: force: Forbidden: may not be specified for non-apply patch"
                );
            }
            other => panic!("expected a 422, got {other:?}"),
        }
    }
    let cms: Api<ConfigMap> = Api::namespaced(admin, "default");
    assert_eq!(data(&cms).await, json!({"foo": "a"}));
}

/// Fails with the check after validation: these patches were 422.
#[tokio::test]
async fn an_invalid_patch_that_escalates_is_forbidden_first() {
    const MAKER: (&str, &str) = ("team", "maker");
    let rules = json!([
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"],
         "verbs": ["get", "create", "update", "patch"]},
        {"apiGroups": [""], "resources": ["services"], "verbs": ["list"]}]);
    let objects = [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "maker", "namespace": "team"}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "svc"},
            "rules": [{"apiGroups": [""], "resources": ["services"], "verbs": ["list"]}]}),
    ]
    .into_iter()
    .chain(role_and_binding(None, "maker", rules, MAKER));
    let (server, admin) = server_with("escalate", objects).await;
    let maker = service_account_client(&server, &admin, MAKER.0, MAKER.1).await;

    // Grants everything and carries an invalid label value.
    let bad = json!({"metadata": {"labels": {"a": "not valid!"}},
        "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]});
    let as_maker: Api<ClusterRole> = Api::all(maker);
    let e = as_maker
        .patch("svc", &PatchParams::default(), &Patch::Merge(&bad))
        .await
        .unwrap_err();
    assert_eq!(status_code(&e), Some(403), "{e}");
    let mut applied = bad.clone();
    applied["apiVersion"] = json!("rbac.authorization.k8s.io/v1");
    applied["kind"] = json!("ClusterRole");
    applied["metadata"]["name"] = json!("svc");
    let e = as_maker
        .patch(
            "svc",
            &PatchParams::apply("maker").force(),
            &Patch::Apply(&applied),
        )
        .await
        .unwrap_err();
    assert_eq!(status_code(&e), Some(403), "{e}");
    // An apply that would create the role is checked the same way.
    applied["metadata"]["name"] = json!("new");
    let e = as_maker
        .patch(
            "new",
            &PatchParams::apply("maker").force(),
            &Patch::Apply(&applied),
        )
        .await
        .unwrap_err();
    assert_eq!(status_code(&e), Some(403), "{e}");

    // The patch is invalid indeed: for an admin, whom the check lets through, it is a 422.
    let as_admin: Api<ClusterRole> = Api::all(admin);
    let e = as_admin
        .patch("svc", &PatchParams::default(), &Patch::Merge(&bad))
        .await
        .unwrap_err();
    assert_eq!(status_code(&e), Some(422), "{e}");
}
