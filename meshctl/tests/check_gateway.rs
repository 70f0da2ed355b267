//! `check` judges the gateway Service as istiod reads it (`getGatewayDetails`,
//! `isNodePortGatewayService`): by its network label, the port it advertises, and for a
//! NodePort Service the `traffic.istio.io/nodeSelector` annotation and the nodes' ExternalIP
//! addresses. Each case here passed before (found by an audit session, 2026-12-06).

mod common;

use common::*;
use serde_json::json;

const SCOPE: &str = "cluster west";
const ADDRESS: &str = "gateway Service has an external address";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_port_gateway_is_judged_by_the_nodes_istiod_would_use() {
    let m = mesh().await;
    m.join(&["--service-type", "node-port"]).await;
    for s in [&m.west, &m.east] {
        gateway_pod(s, "gw-1", true);
    }
    let svc = gateway_service(&m.west);
    assert_eq!(
        svc["metadata"]["annotations"]["traffic.istio.io/nodeSelector"], "{}",
        "join's NodePort Service carries the annotation istiod needs: {svc:#}"
    );
    // A kind node: an InternalIP only.
    let node = |name: &str, addresses: serde_json::Value| {
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
            "status": {"addresses": addresses}})
    };
    m.west
        .store()
        .apply(node(
            "kind-control-plane",
            json!([{"type": "InternalIP", "address": "172.18.0.2"}]),
        ))
        .unwrap();
    let (code, items) = check_json(m.kc(), &[], false).await;
    assert_eq!(code, 1, "{}", item(&items, SCOPE, ADDRESS));
    let i = item(&items, SCOPE, ADDRESS);
    assert_eq!(i["status"], "fail", "{i}");
    assert!(
        i["detail"]
            .as_str()
            .unwrap()
            .contains("has an ExternalIP address"),
        "{i}"
    );
    assert!(i["hint"].as_str().unwrap().contains("LoadBalancer"), "{i}");
    // A node with an ExternalIP: istiod advertises it.
    m.west
        .store()
        .apply(node(
            "n1",
            json!([{"type": "ExternalIP", "address": "203.0.113.5"}]),
        ))
        .unwrap();
    let (_, items) = check_json(m.kc(), &[], false).await;
    let i = item(&items, SCOPE, ADDRESS);
    assert_eq!(i["status"], "pass", "{i}");
    assert!(i["detail"].as_str().unwrap().contains("203.0.113.5"), "{i}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_service_without_its_label_or_port_fails() {
    let m = joined_ready_mesh().await;
    let mut svc = gateway_service(&m.west);
    svc["metadata"]["labels"]
        .as_object_mut()
        .unwrap()
        .remove("topology.istio.io/network");
    svc["spec"]["ports"][1]["targetPort"] = json!(15021);
    m.west.store().apply(svc).unwrap();
    let (code, items) = check_json(m.kc(), &[], false).await;
    assert_eq!(code, 1);
    let i = item(&items, SCOPE, "network label");
    assert_eq!(i["status"], "fail", "{i}");
    let i = item(&items, SCOPE, "gateway Service forwards the gateway port");
    assert_eq!(i["status"], "fail", "{i}");
    assert!(
        i["detail"].as_str().unwrap().contains("target port 15021"),
        "{i}"
    );
    // join puts both back.
    m.join(&[]).await;
    let (_, items) = check_json(m.kc(), &[], false).await;
    for name in ["network label", "gateway Service forwards the gateway port"] {
        assert_eq!(item(&items, SCOPE, name)["status"], "pass", "{name}");
    }
}

/// `-o yaml` is the JSON document as YAML (before, it printed the text checklist).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_yaml_is_the_document() {
    let m = joined_ready_mesh().await;
    let out = meshctl(&check_args(m.kc(), &["-o", "yaml"])).await;
    assert!(out.status.success(), "{}", text(&out));
    let doc: serde_json::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ok"], true);
    assert!(doc["checks"].as_array().unwrap().len() > 20, "{doc}");
    let plain = meshctl(&check_args(m.kc(), &[])).await;
    assert!(String::from_utf8_lossy(&plain.stdout).contains("✔"));
}

/// A gateway installed by an older meshctl keeps its ClusterRole; a type read since (here
/// PeerAuthentications) is then unreadable to it. `check` asks the API server (one
/// SubjectAccessReview per read) and warns with the patch that adds it to the role; it passes
/// once another binding grants it (to the account's group), or once the patch's rules are in;
/// without the role's binding it fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_gateway_role_is_warned_about_with_the_patch() {
    const CHECK: &str = "gateway may read what it watches";
    let m = joined_ready_mesh().await;
    let (code, items) = check_json(m.kc(), &[], false).await;
    assert_eq!(code, 0, "{items:?}");
    assert_eq!(item(&items, SCOPE, CHECK)["status"], "pass");
    let store = m.west.store();
    let rbac = "rbac.authorization.k8s.io/v1";
    let name = "meshctl-eastwestgateway-istio-system";
    let mut role = store.get(rbac, "ClusterRole", None, name).unwrap();
    let rules = role["rules"].as_array_mut().unwrap();
    let before = rules.len();
    rules.retain(|r| r["apiGroups"][0] != "security.istio.io");
    assert_eq!(rules.len(), before - 1, "{role}");
    store.apply(role.clone()).unwrap();
    let (code, items) = check_json(m.kc(), &[], false).await;
    assert_eq!(code, 0, "a warning, not a failure: {items:?}");
    let i = item(&items, SCOPE, CHECK);
    assert_eq!(i["status"], "warn", "{i}");
    assert!(
        i["detail"]
            .as_str()
            .unwrap()
            .contains("peerauthentications.security.istio.io"),
        "{i}"
    );
    // The API server's answer counts every binding: a grant by another role is enough.
    let extra = |kind: &str| {
        let mut o = json!({"apiVersion": rbac, "kind": kind, "metadata": {"name": "extra-pa"}});
        if kind == "ClusterRole" {
            o["rules"] = json!([{"apiGroups": ["security.istio.io"],
                "resources": ["peerauthentications"], "verbs": ["list", "watch"]}]);
        } else {
            o["roleRef"] = json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "extra-pa"});
            o["subjects"] = json!([{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io",
                "name": "system:serviceaccounts:istio-system"}]);
        }
        o
    };
    store.apply(extra("ClusterRole")).unwrap();
    store.apply(extra("ClusterRoleBinding")).unwrap();
    let (_, items) = check_json(m.kc(), &[], false).await;
    assert_eq!(item(&items, SCOPE, CHECK)["status"], "pass");
    store
        .delete(rbac, "ClusterRoleBinding", None, "extra-pa")
        .unwrap();
    // The hint's patch, applied as the API server applies a JSON patch's adds.
    let hint = i["hint"].as_str().unwrap();
    let patch = hint
        .split_once("-p '")
        .and_then(|(_, p)| p.strip_suffix('\''))
        .unwrap_or_else(|| panic!("no -p '…' in {hint}"));
    let ops: serde_json::Value = serde_json::from_str(patch).unwrap();
    for op in ops.as_array().unwrap() {
        assert_eq!(
            (&op["op"], &op["path"]),
            (&json!("add"), &json!("/rules/-"))
        );
        role["rules"]
            .as_array_mut()
            .unwrap()
            .push(op["value"].clone());
    }
    store.apply(role).unwrap();
    let (code, items) = check_json(m.kc(), &[], false).await;
    assert_eq!(code, 0, "{items:?}");
    assert_eq!(item(&items, SCOPE, CHECK)["status"], "pass");
    assert_eq!(item(&items, "cluster east", CHECK)["status"], "pass");
    // Without its binding the role reaches nobody: a failure, with the binding to create.
    store
        .delete(rbac, "ClusterRoleBinding", None, name)
        .unwrap();
    let (code, items) = check_json(m.kc(), &[], false).await;
    assert_eq!(code, 1, "{items:?}");
    let i = item(&items, SCOPE, CHECK);
    assert_eq!(i["status"], "fail", "{i}");
    assert!(
        i["hint"].as_str().unwrap().contains(&format!(
            "create clusterrolebinding {name} --clusterrole={name} --serviceaccount=istio-system:istio-eastwestgateway"
        )),
        "{i}"
    );
}
