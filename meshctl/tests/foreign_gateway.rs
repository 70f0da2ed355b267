//! Another installer's east-west gateway under the gateway's names: `join` and `gateway
//! install` refuse it before any change and say how to remove it (Helm, istioctl, kubectl),
//! where a forced apply would have merged the two gateways; an Istio Gateway
//! `cross-network-gateway` made from Istio's samples is used as it is, and unjoin leaves it.
//! Through the real binary, against two TEST API servers.

mod common;

use common::runs::{says, succeeds};
use common::*;
use k8s_test_server::TestApiServer;
use serde_json::{Value, json};

const NS: &str = "istio-system";
const NAME: &str = "istio-eastwestgateway";

/// The labels and annotations Istio's gateway Helm chart puts on its objects (release
/// `istio-eastwestgateway` in `istio-system`).
fn helm_meta() -> Value {
    json!({"name": NAME, "namespace": NS,
        "labels": {"app": NAME, "istio": "eastwestgateway", "app.kubernetes.io/managed-by": "Helm",
            "helm.sh/chart": "gateway-1.28.0"},
        "annotations": {"meta.helm.sh/release-name": NAME, "meta.helm.sh/release-namespace": NS}})
}

/// The Deployment of Istio's Envoy east-west gateway as its Helm chart installs it.
fn helm_deployment() -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": helm_meta(),
        "spec": {"selector": {"matchLabels": {"app": NAME, "istio": "eastwestgateway"}},
            "template": {"metadata": {"labels": {"app": NAME, "istio": "eastwestgateway"}},
                "spec": {"containers": [{"name": "istio-proxy", "image": "auto"}]}}}})
}

/// Another client creates `obj` in `s` just before the first `verb` request on `resource`
/// reaches it.
fn created_before(s: &TestApiServer, verb: &str, resource: &str, obj: Value) {
    let store = s.store().clone();
    s.faults()
        .interleave(verb, resource, move || drop(store.create(obj).unwrap()));
}

/// Istio's Envoy east-west gateway as its Helm chart installs it: Deployment and Service.
fn helm_gateway(s: &TestApiServer) {
    s.store()
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}))
        .unwrap();
    s.store().create(helm_deployment()).unwrap();
    s.store()
        .create(
            json!({"apiVersion": "v1", "kind": "Service", "metadata": helm_meta(),
            "spec": {"type": "LoadBalancer", "selector": {"app": NAME, "istio": "eastwestgateway"},
                "ports": [{"name": "tls", "port": 15443, "targetPort": 15443}]}}),
        )
        .unwrap();
}

/// The Istio Gateway `cross-network-gateway` in `s`, if any.
fn cross_network_gateway(s: &TestApiServer) -> Option<Value> {
    s.store().get(
        "networking.istio.io/v1",
        "Gateway",
        Some(NS),
        "cross-network-gateway",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_and_gateway_install_refuse_a_helm_installed_gateway_before_any_change() {
    let m = mesh().await;
    helm_gateway(&m.west);
    // After the namespace controller's own objects in the new namespace.
    let before = m.settled_snapshots().await;
    let refusal = "west: Deployment istio-system/istio-eastwestgateway, Service \
                   istio-system/istio-eastwestgateway already exist and were not made by meshctl \
                   (Deployment istio-system/istio-eastwestgateway: it has no label \
                   app.kubernetes.io/managed-by=meshctl): another east-west gateway is \
                   installed there under the same name";
    let remove = "Remove it first (it is Helm release istio-eastwestgateway: helm uninstall \
                  istio-eastwestgateway -n istio-system), then run the same command again";
    let out = m.fails(&m.join_args(&[])).await;
    says(&out, &[refusal, remove, "nothing was changed"]);
    let out = m.fails(&m.join_args(&["--dry-run"])).await;
    says(&out, &[refusal, remove]);
    let out = m.fails(&gateway_install_args(m.kc(), &[])).await;
    says(&out, &[refusal, remove, "Nothing was changed"]);
    let out = m.fails(&gateway_install_args(m.kc(), &["--dry-run"])).await;
    says(&out, &[refusal]);
    assert_eq!(
        (snapshot(&m.west), snapshot(&m.east)),
        before,
        "nothing written"
    );
    let d = gateway_deployment(&m.west);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["name"],
        "istio-proxy"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Once Helm's gateway is gone, join installs meshctl's.
    for kind in [("apps/v1", "Deployment"), ("v1", "Service")] {
        m.west
            .store()
            .delete(kind.0, kind.1, Some(NS), NAME)
            .unwrap();
    }
    m.join(&[]).await;
    let d = gateway_deployment(&m.west);
    assert_eq!(
        d["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "meshctl"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["name"],
        "gateway"
    );
    // And a second join is not refused by its own gateway.
    m.join(&[]).await;
}

/// An older meshctl applied over Helm's gateway and took its managed-by label: Helm's
/// release annotations still say whose it is, so it is refused too; one made by hand
/// (`kubectl expose`, nothing to go by) is named with the kubectl command that removes it,
/// and one istioctl installed with istioctl's way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_relabelled_made_by_hand_or_by_istioctl_is_refused_with_its_own_remedy() {
    let m = mesh().await;
    helm_gateway(&m.west);
    for kind in [("apps/v1", "Deployment"), ("v1", "Service")] {
        let mut o = m.west.store().get(kind.0, kind.1, Some(NS), NAME).unwrap();
        o["metadata"]["labels"]["app.kubernetes.io/managed-by"] = json!("meshctl");
        m.west.store().apply(o).unwrap();
    }
    let out = m.fails(&gateway_install_args(m.kc(), &[])).await;
    says(
        &out,
        &[
            "its annotation meta.helm.sh/release-name=istio-eastwestgateway says another \
             installer made it",
            "helm uninstall istio-eastwestgateway -n istio-system",
        ],
    );

    let m = mesh().await;
    m.east
        .store()
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}))
        .unwrap();
    m.east
        .store()
        .create(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": NAME, "namespace": NS},
            "spec": {"ports": [{"port": 15443}]}}))
        .unwrap();
    m.east
        .store()
        .create(
            json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
            "metadata": {"name": NAME, "namespace": NS,
                "labels": {"operator.istio.io/component": "IngressGateways"}},
            "spec": {"minAvailable": 1}}),
        )
        .unwrap();
    let before = settled_snapshot(&m.west).await;
    let out = m.fails(&m.join_args(&[])).await;
    says(
        &out,
        &[
            "east: Service istio-system/istio-eastwestgateway, PodDisruptionBudget \
             istio-system/istio-eastwestgateway already exist",
            "kubectl --context east -n istio-system delete service/istio-eastwestgateway \
             poddisruptionbudget/istio-eastwestgateway",
        ],
    );
    assert_eq!(
        snapshot(&m.west),
        before,
        "west untouched: east refused in the preflight"
    );
    m.east
        .store()
        .delete("v1", "Service", Some(NS), NAME)
        .unwrap();
    let out = m.fails(&m.join_args(&[])).await;
    says(
        &out,
        &[
            "east: PodDisruptionBudget istio-system/istio-eastwestgateway already exists and \
             was not made by meshctl",
            "istioctl installed it: take it out of the IstioOperator's \
             components.ingressGateways and run istioctl install again",
        ],
    );
}

/// Istio's samples (`expose-services.yaml`) make `cross-network-gateway` with the same
/// job: join `--expose-services` uses it as it is and unjoin leaves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_istio_gateway_from_istios_samples_is_used_as_it_is_and_unjoin_leaves_it() {
    let m = mesh().await;
    let sample = json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
        "metadata": {"name": "cross-network-gateway", "namespace": NS},
        "spec": {"selector": {"istio": "eastwestgateway"}, "servers": [{
            "port": {"number": 15443, "name": "tls", "protocol": "TLS"},
            "tls": {"mode": "AUTO_PASSTHROUGH"}, "hosts": ["*.local"]}]}});
    m.west.install_istio_gateway_crd();
    m.east.install_istio_gateway_crd();
    m.west
        .store()
        .apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}))
        .unwrap();
    m.west.store().create(sample).unwrap();
    let rv = || cross_network_gateway(&m.west).map(|g| g["metadata"]["resourceVersion"].clone());
    let before = rv();
    let out = succeeds(&m.join_args(&["--expose-services"])).await;
    says(
        &out,
        &[
            "west: Istio Gateway istio-system/cross-network-gateway exists and was not created \
           by meshctl (it has no label app.kubernetes.io/managed-by=meshctl): it is used as it \
           is, not changed, and unjoin leaves it in place",
        ],
    );
    assert_eq!(rv(), before, "not written");
    // east had none: join made it there.
    let east = cross_network_gateway(&m.east).unwrap();
    assert_eq!(
        east["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "meshctl"
    );
    succeeds(&m.unjoin_args(&[])).await;
    assert_eq!(rv(), before, "left by unjoin");
    assert!(cross_network_gateway(&m.east).is_none());
}

/// What another installer does between meshctl's check of a name and its write there is met
/// by the write itself: a create fails once the name is taken and an apply once meshctl's
/// object changed, and the object is judged again. Helm's Deployment made in between is
/// refused (not merged into meshctl's), Helm's service account made in between is used as
/// it is (not relabelled), and meshctl's own Deployment taken into a Helm release in between
/// is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_another_installer_writes_between_check_and_write_is_judged_again() {
    let m = mesh().await;
    created_before(&m.west, "create", "deployments", helm_deployment());
    let out = m.fails(&gateway_install_args(m.kc(), &[])).await;
    assert_eq!(m.west.faults().interleaved_pending(), 0, "the create ran");
    says(
        &out,
        &[
            "Deployment istio-system/istio-eastwestgateway already exists and was not made by \
             meshctl",
            "helm uninstall istio-eastwestgateway -n istio-system",
            "interrupted: applied",
            "remove the other gateway as said above, then run the same command again",
        ],
    );
    let d = gateway_deployment(&m.west);
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 1, "not merged: {d}");
    assert_eq!(containers[0]["name"], "istio-proxy");
    assert_eq!(
        d["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "Helm"
    );

    // Helm's service account, made just before meshctl creates its own.
    let m = mesh().await;
    let helm_sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": helm_meta()});
    created_before(&m.west, "create", "serviceaccounts", helm_sa);
    let out = succeeds(&gateway_install_args(m.kc(), &[])).await;
    assert_eq!(m.west.faults().interleaved_pending(), 0, "the create ran");
    says(
        &out,
        &[
            "service account istio-system/istio-eastwestgateway exists and was not created by meshctl",
        ],
    );
    let sa = m
        .west
        .store()
        .get("v1", "ServiceAccount", Some(NS), NAME)
        .unwrap();
    assert_eq!(
        sa["metadata"]["labels"]["app.kubernetes.io/managed-by"], "Helm",
        "{sa}"
    );
    assert!(
        sa["metadata"]["annotations"]["meshctl.io/created-by"].is_null(),
        "{sa}"
    );
    assert_eq!(
        gateway_deployment(&m.west)["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "meshctl"
    );

    // meshctl's Deployment, taken into a Helm release just before meshctl applies it again.
    let store = m.west.store().clone();
    m.west.faults().interleave("patch", "deployments", move || {
        let mut d = store.get("apps/v1", "Deployment", Some(NS), NAME).unwrap();
        d["metadata"]["annotations"]["meta.helm.sh/release-name"] = json!(NAME);
        store.apply(d).unwrap();
    });
    let out = m.fails(&gateway_install_args(m.kc(), &[])).await;
    assert_eq!(m.west.faults().interleaved_pending(), 0, "the change ran");
    says(
        &out,
        &[
            "its annotation meta.helm.sh/release-name=istio-eastwestgateway says another \
             installer made it",
            "interrupted: applied",
        ],
    );
}

/// A controller's status update between meshctl's create of the Deployment and its apply on
/// the created version: the apply races, the Deployment is judged again (meshctl's) and
/// applied at its new version, so meshctl is its apply owner and the next run changes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_update_after_the_create_still_leaves_meshctl_the_apply_owner() {
    let m = mesh().await;
    let store = m.west.store().clone();
    m.west.faults().interleave("patch", "deployments", move || {
        let mut d = store.get("apps/v1", "Deployment", Some(NS), NAME).unwrap();
        d["status"] = json!({"observedGeneration": 1, "replicas": 1});
        store.apply(d).unwrap();
    });
    succeeds(&gateway_install_args(m.kc(), &[])).await;
    assert_eq!(m.west.faults().interleaved_pending(), 0, "the update ran");
    let d = gateway_deployment(&m.west);
    let applied = d["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["manager"] == "meshctl" && e["operation"] == "Apply");
    assert!(
        applied,
        "meshctl applies it: {}",
        d["metadata"]["managedFields"]
    );
    let rv = d["metadata"]["resourceVersion"].clone();
    succeeds(&gateway_install_args(m.kc(), &[])).await;
    assert_eq!(
        gateway_deployment(&m.west)["metadata"]["resourceVersion"],
        rv,
        "a second install changes nothing"
    );
}
