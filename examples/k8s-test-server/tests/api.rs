//! Discovery, CRUD, selectors, patch/apply, dry run and CRDs against the TEST SERVER with
//! real kube-rs clients.

mod common;

use common::{admin_client, client_from_yaml, init, obj, status_code};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_test_server::{Options, TestApiServer};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::Discovery;
use serde_json::json;
use std::time::Duration;
use testkit::wait::eventually_some;

#[tokio::test]
async fn version_and_discovery() {
    init();
    let server = TestApiServer::start("disco").await.unwrap();
    let client = admin_client(&server).await;
    let v = client.apiserver_version().await.unwrap();
    assert_eq!(
        (v.major.as_str(), v.minor.as_str(), v.git_version.as_str()),
        ("1", "31", "v1.31.0")
    );

    let d = Discovery::new(client.clone()).run().await.unwrap();
    let has = |group: &str, kind: &str| {
        d.groups().any(|g| {
            g.name() == group
                && g.recommended_resources()
                    .iter()
                    .any(|(r, _)| r.kind == kind)
        })
    };
    for (g, k) in [
        ("", "Service"),
        ("", "Secret"),
        ("", "ServiceAccount"),
        ("apps", "Deployment"),
        ("policy", "PodDisruptionBudget"),
        ("autoscaling", "HorizontalPodAutoscaler"),
        ("discovery.k8s.io", "EndpointSlice"),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding"),
        ("authorization.k8s.io", "SelfSubjectAccessReview"),
        ("apiextensions.k8s.io", "CustomResourceDefinition"),
    ] {
        assert!(has(g, k), "discovery lacks {g}/{k}");
    }
    assert!(!d.has_group("networking.istio.io"));
    let (ar, caps) = d
        .resolve_gvk(&GroupVersionKind::gvk("apps", "v1", "Deployment"))
        .unwrap();
    assert_eq!(ar.plural, "deployments");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);

    // aggregated discovery (one request per root) sees the same
    let agg = Discovery::new(client.clone())
        .run_aggregated()
        .await
        .unwrap();
    let (ar, caps) = agg
        .resolve_gvk(&GroupVersionKind::gvk("", "v1", "Namespace"))
        .unwrap();
    assert_eq!(
        (ar.plural.as_str(), caps.scope),
        ("namespaces", kube::discovery::Scope::Cluster)
    );
    assert!(
        agg.resolve_gvk(&GroupVersionKind::gvk(
            "discovery.k8s.io",
            "v1",
            "EndpointSlice"
        ))
        .is_some()
    );
}

#[tokio::test]
async fn wrong_or_missing_token_is_401() {
    init();
    let server = TestApiServer::start("auth").await.unwrap();
    let yaml = server.kubeconfig_with_token("auth", "not-a-valid-token");
    let client = client_from_yaml(&yaml).await;
    let err = Api::<Service>::all(client)
        .list(&ListParams::default())
        .await
        .unwrap_err();
    let kube::Error::Api(s) = &err else {
        panic!("expected API error, got {err:?}")
    };
    assert_eq!((s.code, s.reason.as_str()), (401, "Unauthorized"));
}

#[tokio::test]
async fn typed_crud_for_every_served_kind() {
    init();
    let server = TestApiServer::start("crud").await.unwrap();
    let client = admin_client(&server).await;
    let pp = PostParams::default();
    let ns: Api<Namespace> = Api::all(client.clone());
    let created = ns
        .create(&pp, &obj(json!({"metadata": {"name": "app"}})))
        .await
        .unwrap();
    assert_eq!(created.status.unwrap().phase.as_deref(), Some("Active"));
    let md = created.metadata;
    assert!(md.uid.is_some() && md.creation_timestamp.is_some() && md.resource_version.is_some());

    let svc: Api<Service> = Api::namespaced(client.clone(), "app");
    let s = svc
        .create(&pp, &obj(json!({"metadata": {"name": "web", "labels": {"app": "web"}}, "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]}})))
        .await
        .unwrap();
    assert!(
        s.spec
            .as_ref()
            .unwrap()
            .cluster_ip
            .as_deref()
            .unwrap()
            .starts_with("10.96.")
    );
    assert_eq!(s.metadata.generation, Some(1));
    // As read back it carries a resourceVersion, which a create refuses first (500).
    let mut again = s.clone();
    again.metadata.resource_version = None;
    let err = svc.create(&pp, &again).await.unwrap_err();
    let kube::Error::Api(st) = &err else { panic!() };
    assert_eq!((st.code, st.reason.as_str()), (409, "AlreadyExists"));
    let err = svc.get("nope").await.unwrap_err();
    let kube::Error::Api(st) = &err else { panic!() };
    assert_eq!((st.code, st.reason.as_str()), (404, "NotFound"));
    assert_eq!(st.message, "services \"nope\" not found");

    // replace with a stale resourceVersion -> 409 Conflict; with the current one -> ok
    let mut s2 = svc.get("web").await.unwrap();
    s2.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("v".into(), "2".into());
    let replaced = svc.replace("web", &pp, &s2).await.unwrap();
    assert_ne!(
        replaced.metadata.resource_version,
        s2.metadata.resource_version
    );
    let err = svc.replace("web", &pp, &s2).await.unwrap_err();
    assert_eq!(status_code(&err), Some(409));
    // a no-op replace does not bump the resourceVersion
    let same = svc.replace("web", &pp, &replaced).await.unwrap();
    assert_eq!(
        same.metadata.resource_version,
        replaced.metadata.resource_version
    );

    let eps: Api<EndpointSlice> = Api::namespaced(client.clone(), "app");
    eps.create(&pp, &obj(json!({"metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}}, "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": true}}], "ports": [{"name": "http", "port": 8080}]})))
        .await
        .unwrap();
    assert_eq!(
        eps.get("web-abc").await.unwrap().endpoints.unwrap().len(),
        1
    );

    let secrets: Api<Secret> = Api::namespaced(client.clone(), "app");
    let sec = secrets
        .create(
            &pp,
            &obj(json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}})),
        )
        .await
        .unwrap();
    assert_eq!(sec.data.unwrap()["k"].0, b"v");
    assert!(sec.string_data.is_none());
    assert_eq!(sec.type_.as_deref(), Some("Opaque"));

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "app");
    cms.create(
        &pp,
        &obj(json!({"metadata": {"name": "c"}, "data": {"a": "b"}})),
    )
    .await
    .unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "app");
    sas.create(&pp, &obj(json!({"metadata": {"name": "gw"}})))
        .await
        .unwrap();
    // the namespace controller adds the default ServiceAccount
    eventually_some(
        "the default ServiceAccount in the new namespace",
        Duration::from_secs(5),
        || {
            let sas = sas.clone();
            async move { sas.get_opt("default").await.unwrap() }
        },
    )
    .await;

    let crs: Api<ClusterRole> = Api::all(client.clone());
    crs.create(&pp, &obj(json!({"metadata": {"name": "reader"}, "rules": [{"apiGroups": [""], "resources": ["services"], "verbs": ["get"]}]}))).await.unwrap();
    let crbs: Api<ClusterRoleBinding> = Api::all(client.clone());
    crbs.create(&pp, &obj(json!({"metadata": {"name": "reader"}, "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "gw", "namespace": "app"}]})))
        .await
        .unwrap();

    let deps: Api<Deployment> = Api::namespaced(client.clone(), "app");
    let d = deps
        .create(&pp, &obj(json!({"metadata": {"name": "gw"}, "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "gw"}},
            "template": {"metadata": {"labels": {"app": "gw"}}, "spec": {"containers": [{"name": "gw", "image": "gw:1"}]}}}, "status": {"replicas": 9}})))
        .await
        .unwrap();
    assert!(
        d.status.is_none(),
        "status is not writable through the main resource"
    );
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), "app");
    pdbs.create(&pp, &obj(json!({"metadata": {"name": "gw"}, "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "gw"}}}}))).await.unwrap();
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), "app");
    hpas.create(&pp, &obj(json!({"metadata": {"name": "gw"}, "spec": {"minReplicas": 2, "maxReplicas": 5, "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gw"}}})))
        .await
        .unwrap();
    assert_eq!(hpas.get("gw").await.unwrap().spec.max_replicas, 5);

    // status subresource
    let patched = deps
        .patch_status(
            "gw",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"readyReplicas": 2}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.status.unwrap().ready_replicas, Some(2));

    // delete: Status for most kinds, 404 afterwards
    let r = cms.delete("c", &DeleteParams::default()).await.unwrap();
    assert!(r.is_right());
    assert_eq!(status_code(&cms.get("c").await.unwrap_err()), Some(404));

    // namespace deletion removes the namespace's objects
    ns.delete("app", &DeleteParams::default()).await.unwrap();
    assert!(server.store().list("v1", "Service", Some("app")).is_empty());
    assert_eq!(
        status_code(&svc.create(&pp, &s2).await.unwrap_err()),
        Some(404)
    );
}

#[tokio::test]
async fn list_with_label_and_field_selectors() {
    init();
    let server = TestApiServer::start("sel").await.unwrap();
    let client = admin_client(&server).await;
    let pp = PostParams::default();
    for ns in ["a", "b"] {
        Api::<Namespace>::all(client.clone())
            .create(&pp, &obj(json!({"metadata": {"name": ns}})))
            .await
            .unwrap();
    }
    let specs = [
        ("a", "one", json!({"app": "x", "tier": "edge"})),
        ("a", "two", json!({"app": "y"})),
        ("b", "three", json!({"app": "x"})),
    ];
    for (ns, name, labels) in specs {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        api.create(
            &pp,
            &obj(json!({"metadata": {"name": name, "labels": labels}})),
        )
        .await
        .unwrap();
    }
    let all: Api<ConfigMap> = Api::all(client.clone());
    let names = |l: kube::core::ObjectList<ConfigMap>| {
        let mut v: Vec<String> = l
            .items
            .into_iter()
            .map(|c| c.metadata.name.unwrap())
            .filter(|n| n != "kube-root-ca.crt")
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        names(
            all.list(&ListParams::default().labels("app=x"))
                .await
                .unwrap()
        ),
        ["one", "three"]
    );
    assert_eq!(
        names(
            all.list(&ListParams::default().labels("app in (x,y),tier"))
                .await
                .unwrap()
        ),
        ["one"]
    );
    assert_eq!(
        names(
            all.list(&ListParams::default().labels("app,!tier"))
                .await
                .unwrap()
        ),
        ["three", "two"]
    );
    assert_eq!(
        names(
            all.list(&ListParams::default().labels("app notin (x)"))
                .await
                .unwrap()
        ),
        ["two"]
    );
    assert_eq!(
        names(
            all.list(&ListParams::default().labels("app!=x"))
                .await
                .unwrap()
        ),
        ["two"]
    );
    assert_eq!(
        names(
            all.list(&ListParams::default().fields("metadata.namespace=b"))
                .await
                .unwrap()
        ),
        ["three"]
    );
    assert_eq!(
        names(
            all.list(&ListParams::default().fields("metadata.name=two"))
                .await
                .unwrap()
        ),
        ["two"]
    );
    let in_a: Api<ConfigMap> = Api::namespaced(client.clone(), "a");
    let l = in_a
        .list(&ListParams::default().labels("app"))
        .await
        .unwrap();
    assert!(l.metadata.resource_version.is_some());
    assert_eq!(names(l), ["one", "two"]);
    // pagination with limit/continue
    let p1 = all
        .list(&ListParams::default().labels("app").limit(2))
        .await
        .unwrap();
    assert_eq!(p1.items.len(), 2);
    let token = p1.metadata.continue_.clone().unwrap();
    let p2 = all
        .list(
            &ListParams::default()
                .labels("app")
                .limit(2)
                .continue_token(&token),
        )
        .await
        .unwrap();
    assert_eq!(p2.items.len(), 1);
    assert!(p2.metadata.continue_.is_none());
    // metadata-only clients get PartialObjectMetadata
    let meta = all
        .list_metadata(&ListParams::default().labels("app=x"))
        .await
        .unwrap();
    assert_eq!(meta.items.len(), 2);
    assert!(
        meta.items
            .iter()
            .all(|m| m.metadata.labels.as_ref().unwrap()["app"] == "x")
    );
    // a bad selector is a 400
    assert_eq!(
        status_code(
            &all.list(&ListParams::default().labels("a in b"))
                .await
                .unwrap_err()
        ),
        Some(400)
    );
}

#[tokio::test]
async fn merge_patch_json_patch_and_server_side_apply() {
    init();
    let server = TestApiServer::start("patch").await.unwrap();
    let client = admin_client(&server).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");

    // server-side apply creates ...
    let ssa = PatchParams::apply("meshctl").force();
    let first = cms
        .patch("cfg", &ssa, &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "labels": {"a": "1", "b": "2"}}, "data": {"x": "1"}})))
        .await
        .unwrap();
    assert_eq!(first.data.as_ref().unwrap()["x"], "1");
    let mf = first.metadata.managed_fields.as_ref().unwrap();
    assert!(mf.iter().any(
        |m| m.manager.as_deref() == Some("meshctl") && m.operation.as_deref() == Some("Apply")
    ));
    // ... re-applying the same config changes nothing ...
    let again = cms
        .patch("cfg", &ssa, &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "labels": {"a": "1", "b": "2"}}, "data": {"x": "1"}})))
        .await
        .unwrap();
    assert_eq!(
        again.metadata.resource_version,
        first.metadata.resource_version
    );
    // ... a merge patch by someone else adds a label ...
    cms.patch(
        "cfg",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"other": "z"}}, "data": {"y": "2"}})),
    )
    .await
    .unwrap();
    // ... and an update by the applier drops only what it stopped applying.
    let updated = cms
        .patch("cfg", &ssa, &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "labels": {"a": "3"}}, "data": {"x": "2"}})))
        .await
        .unwrap();
    let labels = updated.metadata.labels.unwrap();
    assert_eq!(labels.get("a").map(String::as_str), Some("3"));
    assert!(!labels.contains_key("b"));
    assert_eq!(labels.get("other").map(String::as_str), Some("z"));
    assert_eq!(updated.data.as_ref().unwrap()["y"], "2");
    // A resourceVersion in an applied configuration is a precondition: a stale one is 409
    // and changes nothing, the current one applies.
    let rv = updated.metadata.resource_version.clone().unwrap();
    let stale = first.metadata.resource_version.clone().unwrap();
    let e = cms
        .patch("cfg", &ssa, &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "resourceVersion": stale}, "data": {"x": "stale"}})))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, kube::Error::Api(s) if s.code == 409 && s.message.contains("has been modified")),
        "{e}"
    );
    let same = cms
        .patch("cfg", &ssa, &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg", "resourceVersion": rv, "labels": {"a": "3"}}, "data": {"x": "2"}})))
        .await
        .unwrap();
    assert_eq!(same.data.as_ref().unwrap()["x"], "2");

    // merge patch: null deletes
    let p = cms
        .patch(
            "cfg",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"y": null}})),
        )
        .await
        .unwrap();
    assert!(!p.data.unwrap().contains_key("y"));
    // JSON patch
    let p = cms
        .patch(
            "cfg",
            &PatchParams::default(),
            &Patch::<()>::Json(
                serde_json::from_value(json!([{"op": "add", "path": "/data/z", "value": "3"}]))
                    .unwrap(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(p.data.unwrap()["z"], "3");
    // merge patch of a missing object is 404; apply without fieldManager is rejected
    assert_eq!(
        status_code(
            &cms.patch("nope", &PatchParams::default(), &Patch::Merge(json!({})))
                .await
                .unwrap_err()
        ),
        Some(404)
    );

    // apply keeps a Service's allocated clusterIP
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "gw"}, "spec": {"type": "LoadBalancer", "ports": [{"name": "tls", "port": 15443}]}});
    let a = svcs
        .patch("gw", &ssa, &Patch::Apply(svc.clone()))
        .await
        .unwrap();
    let b = svcs.patch("gw", &ssa, &Patch::Apply(svc)).await.unwrap();
    assert_eq!(
        a.spec.as_ref().unwrap().cluster_ip,
        b.spec.as_ref().unwrap().cluster_ip
    );
    assert_eq!(
        a.spec.unwrap().ports.unwrap()[0].node_port,
        b.spec.unwrap().ports.unwrap()[0].node_port
    );
    assert_eq!(a.metadata.resource_version, b.metadata.resource_version);
}

#[tokio::test]
async fn dry_run_changes_nothing() {
    init();
    let server = TestApiServer::start("dry").await.unwrap();
    let client = admin_client(&server).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let rv0 = server.store().resource_version();
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    let out = cms
        .create(
            &dry,
            &obj(json!({"metadata": {"name": "d"}, "data": {"a": "1"}})),
        )
        .await
        .unwrap();
    assert_eq!(out.metadata.name.as_deref(), Some("d"));
    assert_eq!(status_code(&cms.get("d").await.unwrap_err()), Some(404));
    let ssa_dry = PatchParams::apply("meshctl").dry_run();
    cms.patch(
        "d",
        &ssa_dry,
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "d"}})),
    )
    .await
    .unwrap();
    assert_eq!(status_code(&cms.get("d").await.unwrap_err()), Some(404));
    assert_eq!(server.store().resource_version(), rv0);

    cms.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "d"}, "data": {"a": "1"}})),
    )
    .await
    .unwrap();
    let rv1 = server.store().resource_version();
    let pp = PatchParams {
        dry_run: true,
        ..Default::default()
    };
    let p = cms
        .patch("d", &pp, &Patch::Merge(json!({"data": {"a": "2"}})))
        .await
        .unwrap();
    assert_eq!(p.data.unwrap()["a"], "2");
    cms.delete(
        "d",
        &DeleteParams {
            dry_run: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(cms.get("d").await.unwrap().data.unwrap()["a"], "1");
    assert_eq!(server.store().resource_version(), rv1);
}

/// A create carrying a resourceVersion is refused as the real storage refuses it (500,
/// `ErrResourceVersionSetOnCreate`), by POST and by a server-side apply that would create
/// the object; one that does not parse as a number passes, as does a dry run. An apply with
/// a resourceVersion to an existing object is a precondition: 409 once it changed.
#[tokio::test]
async fn a_resource_version_is_refused_on_create_and_a_precondition_on_apply() {
    init();
    let server = TestApiServer::start("rv").await.unwrap();
    let client = admin_client(&server).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let with_rv = |name: &str, rv: &str| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "resourceVersion": rv}, "data": {"a": "1"}})
    };
    let refused = |e: kube::Error| match e {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 500, "{s:?}");
            assert_eq!(
                s.message,
                "resourceVersion should not be set on objects to be created"
            );
        }
        e => panic!("{e}"),
    };
    let post = PostParams::default();
    refused(
        cms.create(&post, &obj(with_rv("a", "7")))
            .await
            .unwrap_err(),
    );
    let ssa = PatchParams::apply("meshctl").force();
    refused(
        cms.patch("a", &ssa, &Patch::Apply(with_rv("a", "7")))
            .await
            .unwrap_err(),
    );
    assert_eq!(status_code(&cms.get("a").await.unwrap_err()), Some(404));
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    cms.create(&dry, &obj(with_rv("a", "7"))).await.unwrap();
    cms.create(&post, &obj(with_rv("a", "x"))).await.unwrap();
    let rv = cms
        .get("a")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    cms.patch("a", &ssa, &Patch::Apply(with_rv("a", &rv)))
        .await
        .unwrap();
    let merge = PatchParams::default();
    cms.patch("a", &merge, &Patch::Merge(json!({"data": {"a": "2"}})))
        .await
        .unwrap();
    let e = cms
        .patch("a", &ssa, &Patch::Apply(with_rv("a", &rv)))
        .await
        .unwrap_err();
    assert_eq!(status_code(&e), Some(409));
}

#[tokio::test]
async fn destination_rules_are_served_only_after_the_crd_is_installed() {
    init();
    let server = TestApiServer::start("crd").await.unwrap();
    let client = admin_client(&server).await;
    let gvk = GroupVersionKind::gvk("networking.istio.io", "v1", "DestinationRule");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "destinationrules");
    let drs: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    assert_eq!(
        status_code(&drs.list(&ListParams::default()).await.unwrap_err()),
        Some(404)
    );
    let d = Discovery::new(client.clone()).run().await.unwrap();
    assert!(!d.has_group("networking.istio.io"));

    server.install_destination_rule_crd();
    let d = Discovery::new(client.clone()).run().await.unwrap();
    let (found, caps) = d.resolve_gvk(&gvk).unwrap();
    assert_eq!(found.plural, "destinationrules");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    let dr: DynamicObject = serde_json::from_value(json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "reviews"}, "spec": {"host": "reviews", "subsets": [{"name": "v1", "labels": {"version": "v1"}}]}}))
    .unwrap();
    drs.create(&PostParams::default(), &dr).await.unwrap();
    let got = drs.get("reviews").await.unwrap();
    assert_eq!(got.data["spec"]["subsets"][0]["name"], "v1");
    // the same object is served under the older versions
    let old = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.istio.io", "v1alpha3", "DestinationRule"),
        "destinationrules",
    );
    let old_api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &old);
    assert_eq!(
        old_api
            .get("reviews")
            .await
            .unwrap()
            .types
            .unwrap()
            .api_version,
        "networking.istio.io/v1alpha3"
    );

    server.install_istio_gateway_crd();
    let gw = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("networking.istio.io", "v1", "Gateway"),
        "gateways",
    );
    let gws: Api<DynamicObject> = Api::namespaced_with(client, "default", &gw);
    assert!(
        gws.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn several_clusters_are_independent() {
    init();
    let mut opts = Options::new("east");
    opts.git_version = "v1.30.2".into();
    let (west, east) = (
        TestApiServer::start("west").await.unwrap(),
        TestApiServer::start_with(opts).await.unwrap(),
    );
    assert_ne!(west.ca_pem(), east.ca_pem());
    let (cw, ce) = (admin_client(&west).await, admin_client(&east).await);
    assert_eq!(ce.apiserver_version().await.unwrap().minor, "30");
    Api::<ConfigMap>::namespaced(cw.clone(), "default")
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "only-west"}})),
        )
        .await
        .unwrap();
    assert!(
        Api::<ConfigMap>::namespaced(ce, "default")
            .get_opt("only-west")
            .await
            .unwrap()
            .is_none()
    );
    // a token of one cluster is not valid on the other
    let cross = client_from_yaml(&east.kubeconfig_with_token("x", west.admin_token())).await;
    assert_eq!(
        status_code(
            &Api::<ConfigMap>::all(cross)
                .list(&ListParams::default())
                .await
                .unwrap_err()
        ),
        Some(401)
    );
}

#[tokio::test]
async fn deleting_a_crd_deletes_its_objects_and_ends_their_watches() {
    init();
    let server = TestApiServer::start("crd-gone").await.unwrap();
    server.install_destination_rule_crd();
    let client = admin_client(&server).await;
    let gvk = GroupVersionKind::gvk("networking.istio.io", "v1", "DestinationRule");
    let ar = ApiResource::from_gvk_with_plural(&gvk, "destinationrules");
    let drs: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let dr: DynamicObject = serde_json::from_value(
        json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
        "metadata": {"name": "reviews"}, "spec": {"host": "reviews"}}),
    )
    .unwrap();
    drs.create(&PostParams::default(), &dr).await.unwrap();
    let rv = server.store().resource_version().to_string();
    let mut watch = drs
        .watch(&kube::api::WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();

    let crd_ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
        "customresourcedefinitions",
    );
    let crds: Api<DynamicObject> = Api::all_with(client.clone(), &crd_ar);
    crds.delete(
        "destinationrules.networking.istio.io",
        &DeleteParams::default(),
    )
    .await
    .unwrap();
    // The objects go first (DELETED), then the watch ends.
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(ev) = watch.try_next().await.unwrap() {
            seen.push(ev);
        }
    })
    .await
    .expect("the watch ends when its CRD is deleted");
    assert!(
        matches!(seen.as_slice(), [kube::api::WatchEvent::Deleted(o)] if o.metadata.name.as_deref() == Some("reviews")),
        "{seen:?}"
    );
    assert_eq!(
        status_code(&drs.list(&ListParams::default()).await.unwrap_err()),
        Some(404)
    );
    // Back again: the old objects did not survive.
    server.install_destination_rule_crd();
    assert!(
        drs.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

#[tokio::test]
async fn loopback_endpoint_addresses_are_refused_unless_the_test_opts_in() {
    init();
    let server = TestApiServer::start("loop").await.unwrap();
    let client = admin_client(&server).await;
    let slice = |addr: &str| -> EndpointSlice {
        serde_json::from_value(json!({"metadata": {"name": "s", "namespace": "default"},
            "addressType": "IPv4", "endpoints": [{"addresses": [addr]}]}))
        .unwrap()
    };
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let e = slices
        .create(&PostParams::default(), &slice("127.0.0.1"))
        .await
        .unwrap_err();
    let kube::Error::Api(s) = e else {
        panic!("expected a Status, got {e:?}")
    };
    assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
    assert_eq!(
        s.message,
        "EndpointSlice.discovery.k8s.io \"s\" is invalid: endpoints[0].addresses[0]: Invalid value: \"127.0.0.1\": may not be in the loopback range (127.0.0.0/8, ::1/128)"
    );
    // Direct store writes are checked too, and so are Endpoints.
    let e = server
        .store()
        .create(json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "e", "namespace": "default"},
            "subsets": [{"addresses": [{"ip": "127.0.0.2"}]}]}))
        .unwrap_err();
    assert_eq!(e.code, 422);
    assert!(e.message.contains("subsets[0].addresses[0].ip"), "{e}");
    slices
        .create(&PostParams::default(), &slice("10.1.0.1"))
        .await
        .unwrap();

    let mut opts = Options::new("loop-ok");
    opts.store.allow_loopback_endpoint_addresses = true;
    let allowing = TestApiServer::start_with(opts).await.unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(admin_client(&allowing).await, "default");
    slices
        .create(&PostParams::default(), &slice("127.0.0.1"))
        .await
        .unwrap();
    // Only loopback is allowed: link-local stays refused.
    let mut s = slice("169.254.169.254");
    s.metadata.name = Some("t".into());
    assert!(slices.create(&PostParams::default(), &s).await.is_err());
}
