//! RBAC escalation prevention, as kube-apiserver's RBAC storage enforces it: a user who may
//! write roles and bindings still may not grant what it does not hold, unless it has
//! `escalate` (roles) or `bind` (bindings). Every write path is checked: create, update,
//! merge and JSON patch, server-side apply, dry runs.

mod common;

use common::{obj, role_and_binding, server_with, service_account_client, status_code};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_test_server::TestApiServer;
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const RBAC: &str = "rbac.authorization.k8s.io/v1";

/// ServiceAccount `team/maker`, the writer in these tests.
const MAKER: (&str, &str) = ("team", "maker");

/// A server where ServiceAccount `team/maker` may write every RBAC object and list
/// Services (cluster-wide), and get ConfigMaps in `team` (a RoleBinding); its client.
async fn server_with_maker(name: &str) -> (TestApiServer, Client) {
    let maker_rules = json!([
        {"apiGroups": ["rbac.authorization.k8s.io"],
         "resources": ["clusterroles", "roles", "clusterrolebindings", "rolebindings"],
         "verbs": ["get", "create", "update", "patch"]},
        {"apiGroups": [""], "resources": ["services"], "verbs": ["list"]}]);
    let cm_rules = json!([{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]);
    let objects = [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "maker", "namespace": "team"}}),
    ]
    .into_iter()
    .chain(role_and_binding(None, "maker", maker_rules, MAKER))
    .chain(role_and_binding(Some("team"), "cm", cm_rules, MAKER));
    let (server, admin) = server_with(name, objects).await;
    let maker = service_account_client(&server, &admin, MAKER.0, MAKER.1).await;
    (server, maker)
}

/// Grants the maker the ClusterRole `name` with `rules` (stored without HTTP).
fn grant_maker(server: &TestApiServer, name: &str, rules: Value) {
    for o in role_and_binding(None, name, rules, MAKER) {
        server.store().create(o).unwrap();
    }
}

fn forbidden_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 403 && s.reason == "Forbidden" => s.message.clone(),
        other => panic!("expected a 403 Forbidden, got {other:?}"),
    }
}

const MAKER_IS: &str = "user \"system:serviceaccount:team:maker\" (groups=[\"system:serviceaccounts\" \
     \"system:serviceaccounts:team\" \"system:authenticated\"]) is attempting to grant RBAC \
     permissions not currently held:\n";

/// Fails without the check: every one of these writes succeeded.
#[tokio::test]
async fn a_role_granting_rules_the_writer_lacks_is_forbidden_on_every_write_path() {
    let (server, maker) = server_with_maker("roles").await;
    let roles: Api<ClusterRole> = Api::all(maker.clone());
    let pp = PostParams::default();
    let reader = json!({"apiVersion": RBAC, "kind": "ClusterRole", "metadata": {"name": "reader"},
        "rules": [{"apiGroups": [""], "resources": ["services", "nodes"], "verbs": ["list", "watch"]}]});

    // Rules the maker holds: allowed.
    let held = json!({"apiVersion": RBAC, "kind": "ClusterRole", "metadata": {"name": "svc"},
        "rules": [{"apiGroups": [""], "resources": ["services"], "verbs": ["list"]}]});
    roles.create(&pp, &obj(held)).await.unwrap();

    // Create: the real message, naming each missing rule.
    let err = roles.create(&pp, &obj(reader.clone())).await.unwrap_err();
    assert_eq!(
        forbidden_message(&err),
        format!(
            "clusterroles.rbac.authorization.k8s.io \"reader\" is forbidden: {MAKER_IS}\
             {{APIGroups:[\"\"], Resources:[\"nodes\"], Verbs:[\"list\" \"watch\"]}}\n\
             {{APIGroups:[\"\"], Resources:[\"services\"], Verbs:[\"watch\"]}}"
        )
    );
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    assert_eq!(
        status_code(&roles.create(&dry, &obj(reader.clone())).await.unwrap_err()),
        Some(403)
    );

    // Update, merge patch, JSON patch, apply (over an existing role and as a create).
    let mut replaced = roles.get("svc").await.unwrap();
    replaced.rules = obj(json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]));
    let err = roles.replace("svc", &pp, &replaced).await.unwrap_err();
    assert!(
        forbidden_message(&err)
            .ends_with("{APIGroups:[\"\"], Resources:[\"secrets\"], Verbs:[\"get\"]}")
    );
    let merge =
        Patch::Merge(json!({"rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}));
    let err = roles
        .patch("svc", &PatchParams::default(), &merge)
        .await
        .unwrap_err();
    assert!(
        forbidden_message(&err)
            .starts_with("clusterroles.rbac.authorization.k8s.io \"svc\" is forbidden")
    );
    let json_patch: Patch<Value> = Patch::Json(obj(json!([
        {"op": "add", "path": "/rules/0/verbs/-", "value": "delete"}])));
    let err = roles
        .patch("svc", &PatchParams::default(), &json_patch)
        .await
        .unwrap_err();
    assert!(forbidden_message(&err).ends_with("Verbs:[\"delete\"]}"));
    let apply = PatchParams::apply("maker").force();
    let err = roles
        .patch("reader", &apply, &Patch::Apply(&reader))
        .await
        .unwrap_err();
    assert_eq!(status_code(&err), Some(403));
    let mut svc_more = reader.clone();
    svc_more["metadata"]["name"] = json!("svc");
    let err = roles
        .patch("svc", &apply, &Patch::Apply(&svc_more))
        .await
        .unwrap_err();
    assert_eq!(status_code(&err), Some(403));

    // Nothing was stored; a change that grants nothing new is allowed.
    assert!(
        server
            .store()
            .get(RBAC, "ClusterRole", None, "reader")
            .is_none()
    );
    let svc = server
        .store()
        .get(RBAC, "ClusterRole", None, "svc")
        .unwrap();
    assert_eq!(
        svc["rules"],
        json!([{"apiGroups": [""], "resources": ["services"], "verbs": ["list"]}])
    );
    let label = Patch::Merge(json!({"metadata": {"labels": {"a": "b"}}}));
    roles
        .patch("svc", &PatchParams::default(), &label)
        .await
        .unwrap();

    // `escalate` on clusterroles lifts the check.
    grant_maker(
        &server,
        "escalate",
        json!([{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"],
            "verbs": ["escalate"]}]),
    );
    roles.create(&pp, &obj(reader)).await.unwrap();
}

/// A Role is checked against what the writer holds in the Role's namespace.
#[tokio::test]
async fn a_role_is_checked_against_the_rules_held_in_its_namespace() {
    let (_server, maker) = server_with_maker("ns-roles").await;
    let pp = PostParams::default();
    let role = |ns: &str, resource: &str| {
        obj::<Role>(json!({"metadata": {"name": "r", "namespace": ns},
            "rules": [{"apiGroups": [""], "resources": [resource], "verbs": ["get"]}]}))
    };
    Api::<Role>::namespaced(maker.clone(), "team")
        .create(&pp, &role("team", "configmaps"))
        .await
        .unwrap();
    for (ns, resource) in [("other", "configmaps"), ("team", "secrets")] {
        let err = Api::<Role>::namespaced(maker.clone(), ns)
            .create(&pp, &role(ns, resource))
            .await
            .unwrap_err();
        assert!(
            forbidden_message(&err)
                .starts_with("roles.rbac.authorization.k8s.io \"r\" is forbidden"),
            "{err:?}"
        );
    }
}

/// Fails without the check: the maker bound itself to cluster-admin.
#[tokio::test]
async fn a_binding_needs_the_roles_rules_or_bind_on_the_role() {
    let (server, maker) = server_with_maker("bindings").await;
    let pp = PostParams::default();
    let crbs: Api<ClusterRoleBinding> = Api::all(maker.clone());
    let binding = |name: &str, role: &str| {
        obj::<ClusterRoleBinding>(json!({"metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": "maker", "namespace": "team"}]}))
    };
    let err = crbs
        .create(&pp, &binding("me-admin", "cluster-admin"))
        .await
        .unwrap_err();
    assert_eq!(
        forbidden_message(&err),
        format!(
            "clusterrolebindings.rbac.authorization.k8s.io \"me-admin\" is forbidden: {MAKER_IS}\
             {{APIGroups:[\"*\"], Resources:[\"*\"], Verbs:[\"*\"]}}\n\
             {{NonResourceURLs:[\"*\"], Verbs:[\"*\"]}}"
        )
    );
    // A binding to a role whose rules the maker holds is fine; to a missing role, a 404.
    crbs.create(&pp, &binding("me-maker", "maker"))
        .await
        .unwrap();
    let err = crbs
        .create(&pp, &binding("me-nothing", "missing"))
        .await
        .unwrap_err();
    assert_eq!(status_code(&err), Some(404));
    // A RoleBinding is checked in its namespace: the maker holds `cm` only in `team`.
    let rb = |ns: &str| {
        obj::<RoleBinding>(json!({"metadata": {"name": "cm2", "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cm-reader"},
            "subjects": [{"kind": "User", "name": "someone"}]}))
    };
    server
        .store()
        .create(
            json!({"apiVersion": RBAC, "kind": "ClusterRole", "metadata": {"name": "cm-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}),
        )
        .unwrap();
    Api::<RoleBinding>::namespaced(maker.clone(), "team")
        .create(&pp, &rb("team"))
        .await
        .unwrap();
    let err = Api::<RoleBinding>::namespaced(maker.clone(), "other")
        .create(&pp, &rb("other"))
        .await
        .unwrap_err();
    assert_eq!(status_code(&err), Some(403));

    // `bind` on that one ClusterRole lifts the check for bindings to it.
    grant_maker(
        &server,
        "bind-admin",
        json!([{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"],
            "resourceNames": ["cluster-admin"], "verbs": ["bind"]}]),
    );
    crbs.create(&pp, &binding("me-admin", "cluster-admin"))
        .await
        .unwrap();
}
