//! The TEST SERVER refuses, over HTTP with a real kube-rs client, the workload, RBAC and
//! server-side-apply writes a real API server refuses (the kinds meshctl writes), with the
//! real status codes and messages.

mod common;

use common::{obj, started, status_code};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// The code and message of a refused write.
fn refused<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> (u16, String) {
    match r {
        Err(kube::Error::Api(s)) => (s.code, s.message),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn deployment(selector: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "gw", "namespace": "default"},
        "spec": {"selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": {"app": "gw", "istio": "eastwestgateway"}},
                "spec": {"containers": [{"name": "gateway", "image": "gw:1"}]}}}})
}

#[tokio::test]
async fn deployments_need_a_matching_selector_that_never_changes() {
    let (_server, client) = started("deploy").await;
    let deps: Api<Deployment> = Api::default_namespaced(client);
    let ssa = PatchParams::apply("meshctl").force();

    let e = refused(
        deps.create(
            &PostParams::default(),
            &obj(deployment(json!({"app": "other"}))),
        )
        .await,
    );
    assert_eq!(
        e,
        (
            422,
            "Deployment.apps \"gw\" is invalid: spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"gw\", \"istio\":\"eastwestgateway\"}: `selector` does not match template `labels`".into()
        )
    );
    let mut no_image = deployment(json!({"app": "gw"}));
    no_image["spec"]["template"]["spec"]["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("image");
    let e = refused(deps.patch("gw", &ssa, &Patch::Apply(no_image)).await);
    assert_eq!(
        e,
        (
            422,
            "Deployment.apps \"gw\" is invalid: spec.template.spec.containers[0].image: Required value".into()
        )
    );

    deps.patch("gw", &ssa, &Patch::Apply(deployment(json!({"app": "gw"}))))
        .await
        .unwrap();
    let e = refused(
        deps.patch(
            "gw",
            &ssa,
            &Patch::Apply(deployment(json!({"app": "gw", "istio": "eastwestgateway"}))),
        )
        .await,
    );
    assert_eq!(
        e,
        (
            422,
            "Deployment.apps \"gw\" is invalid: spec.selector: Invalid value: v1.LabelSelector{MatchLabels:map[string]string{\"app\":\"gw\", \"istio\":\"eastwestgateway\"}, MatchExpressions:[]v1.LabelSelectorRequirement(nil)}: field is immutable".into()
        )
    );
    // Re-applying the same selector (and a status write) is fine.
    deps.patch("gw", &ssa, &Patch::Apply(deployment(json!({"app": "gw"}))))
        .await
        .unwrap();
    deps.patch_status(
        "gw",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"readyReplicas": 1}})),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn bindings_keep_their_role_and_budgets_and_autoscalers_their_bounds() {
    let (_server, client) = started("rbac-scale").await;
    let ssa = PatchParams::apply("meshctl").force();

    let crbs: Api<ClusterRoleBinding> = Api::all(client.clone());
    let crb = |role: &str| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "gw"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": "gw", "namespace": "default"}]})
    };
    crbs.patch("gw", &ssa, &Patch::Apply(crb("old")))
        .await
        .unwrap();
    let e = refused(crbs.patch("gw", &ssa, &Patch::Apply(crb("new"))).await);
    assert_eq!(
        e,
        (
            422,
            "ClusterRoleBinding.rbac.authorization.k8s.io \"gw\" is invalid: roleRef: Invalid value: rbac.RoleRef{APIGroup:\"rbac.authorization.k8s.io\", Kind:\"ClusterRole\", Name:\"new\"}: cannot change roleRef".into()
        )
    );
    let mut no_ns = crb("x");
    no_ns["metadata"]["name"] = json!("other");
    no_ns["subjects"][0]
        .as_object_mut()
        .unwrap()
        .remove("namespace");
    let e = refused(crbs.patch("other", &ssa, &Patch::Apply(no_ns)).await);
    assert_eq!(
        e,
        (
            422,
            "ClusterRoleBinding.rbac.authorization.k8s.io \"other\" is invalid: subjects[0].namespace: Required value".into()
        )
    );

    let pdbs: Api<PodDisruptionBudget> = Api::default_namespaced(client.clone());
    let e = refused(
        pdbs.patch(
            "gw",
            &ssa,
            &Patch::Apply(json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "gw"},
                "spec": {"minAvailable": 1, "maxUnavailable": 1}})),
        )
        .await,
    );
    assert_eq!(e.0, 422);
    assert!(
        e.1.ends_with(": minAvailable and maxUnavailable cannot be both set"),
        "{}",
        e.1
    );

    let hpas: Api<HorizontalPodAutoscaler> = Api::default_namespaced(client.clone());
    let e = refused(
        hpas.patch(
            "gw",
            &ssa,
            &Patch::Apply(json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "gw"},
                "spec": {"minReplicas": 0, "maxReplicas": 5,
                    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gw"}}})),
        )
        .await,
    );
    assert_eq!(
        e,
        (
            422,
            "HorizontalPodAutoscaler.autoscaling \"gw\" is invalid: spec.minReplicas: Invalid value: 0: must be greater than or equal to 1".into()
        )
    );
}

#[tokio::test]
async fn applies_are_checked_before_they_are_merged() {
    let (_server, client) = started("apply-checks").await;
    let ssa = PatchParams::apply("meshctl").force();
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});

    // The status subresource never creates the object.
    let deps: Api<Deployment> = Api::default_namespaced(client.clone());
    let e = refused(
        deps.patch_status(
            "gw",
            &ssa,
            &Patch::Apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "gw"}, "status": {"replicas": 1}})),
        )
        .await,
    );
    assert_eq!(e, (404, "deployments.apps \"gw\" not found".into()));
    assert_eq!(status_code(&deps.get("gw").await.unwrap_err()), Some(404));

    // The body's type must be the URL's ...
    let mut wrong = cm.clone();
    wrong["apiVersion"] = json!("apps/v1");
    let e = refused(cms.patch("c", &ssa, &Patch::Apply(wrong)).await);
    assert_eq!(
        e,
        (400, "invalid object type: apps/v1, Kind=ConfigMap".into())
    );
    let mut wrong = cm.clone();
    wrong["kind"] = json!("Secret");
    let e = refused(cms.patch("c", &ssa, &Patch::Apply(wrong)).await);
    assert_eq!(e, (400, "invalid object type: /v1, Kind=Secret".into()));
    // ... it may not carry managedFields ...
    let mut managed = cm.clone();
    managed["metadata"]["managedFields"] = json!([{"manager": "x", "operation": "Apply"}]);
    let e = refused(cms.patch("c", &ssa, &Patch::Apply(managed)).await);
    assert_eq!(e, (400, "metadata.managedFields must be nil".into()));
    // ... and must name the object it creates.
    let mut unnamed = cm.clone();
    unnamed["metadata"].as_object_mut().unwrap().remove("name");
    let e = refused(cms.patch("c", &ssa, &Patch::Apply(unnamed.clone())).await);
    assert_eq!(
        e,
        (
            400,
            "the name of the object () does not match the name on the URL (c)".into()
        )
    );

    cms.patch("c", &ssa, &Patch::Apply(cm.clone()))
        .await
        .unwrap();
    // An update may leave the name out, but not move the object to another namespace.
    cms.patch("c", &ssa, &Patch::Apply(unnamed)).await.unwrap();
    let mut moved = cm.clone();
    moved["metadata"]["namespace"] = json!("kube-system");
    let e = refused(cms.patch("c", &ssa, &Patch::Apply(moved)).await);
    assert_eq!(
        e,
        (
            400,
            "the namespace of the provided object does not match the namespace sent on the request"
                .into()
        )
    );
    assert_eq!(cms.get("c").await.unwrap().data.unwrap()["a"], "1");
}

/// A body over kube-apiserver's 3 MiB `MaxRequestBodyBytes` is a 413 whatever it holds; one
/// just under is read (and here refused by Secret validation's 1 MiB instead).
#[tokio::test]
async fn bodies_over_three_mebibytes_are_too_large() {
    let (_server, client) = started("body").await;
    let maps: Api<ConfigMap> = Api::default_namespaced(client);
    let with = |n: usize| -> ConfigMap {
        obj(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "big"},
            "data": {"k": "x".repeat(n)}}),
        )
    };
    let (code, message) = refused(maps.create(&PostParams::default(), &with(3 << 20)).await);
    assert_eq!(
        (code, message.as_str()),
        (413, "Request entity too large: limit is 3145728")
    );
    let (code, _) = refused(maps.create(&PostParams::default(), &with(2 << 20)).await);
    assert_eq!(
        code, 422,
        "read, then refused by validation (1 MiB of data)"
    );
}

/// Field ownership as server-side apply keeps it: a label another writer changed is theirs,
/// so the applier ceasing to apply it leaves it; a label two appliers set stays while one
/// still applies it; the applier's own labels go, and only those. Before, the last applied
/// configuration alone decided, and every label it had set was removed.
#[tokio::test]
async fn an_apply_removes_only_the_fields_its_manager_still_owns() {
    use k8s_openapi::api::core::v1::Namespace;
    let (_server, client) = started("owners").await;
    let nss: Api<Namespace> = Api::all(client);
    let ns = |labels: Value| -> Namespace {
        obj(json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "mesh", "labels": labels}}))
    };
    let apply = |m: &str| PatchParams::apply(m).force();
    let labels = |n: &Namespace| n.metadata.labels.clone().unwrap_or_default();
    nss.patch(
        "mesh",
        &apply("meshctl"),
        &Patch::Apply(ns(json!({"net": "a", "mine": "1", "shared": "s"}))),
    )
    .await
    .unwrap();
    // Another writer changes one label (as `kubectl label --overwrite` does), and another
    // applier sets the same value on a second.
    let kubectl = PatchParams {
        field_manager: Some("kubectl-label".into()),
        ..PatchParams::default()
    };
    nss.patch(
        "mesh",
        &kubectl,
        &Patch::Merge(json!({"metadata": {"labels": {"net": "b"}}})),
    )
    .await
    .unwrap();
    nss.patch(
        "mesh",
        &apply("other"),
        &Patch::Apply(ns(json!({"shared": "s"}))),
    )
    .await
    .unwrap();
    let after = nss
        .patch("mesh", &apply("meshctl"), &Patch::Apply(ns(json!({}))))
        .await
        .unwrap();
    let l = labels(&after);
    assert_eq!(l.get("net").map(String::as_str), Some("b"), "{l:?}");
    assert_eq!(l.get("shared").map(String::as_str), Some("s"), "{l:?}");
    assert!(!l.contains_key("mine"), "{l:?}");
}
