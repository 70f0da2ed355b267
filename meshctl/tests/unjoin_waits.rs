//! `unjoin` waits for what it deleted to finish deleting: a LoadBalancer Service keeps the
//! cloud controller's `service.kubernetes.io/load-balancer-cleanup` finalizer until its
//! load balancer is torn down, so a DELETE only marks it. unjoin waits up to
//! `--deletion-wait` (join's flag, same default) and exits 1 naming what is still there and
//! its finalizers. Through the real binary, against two TEST API servers whose cloud
//! controller puts that finalizer on (and never takes it off: the test plays the teardown).

mod common;

use std::time::Duration;

use common::cloud::{LB_FINALIZER, cloud_mesh, stored_service};
use common::runs::{meshctl_then, meshctl_within, says};
use common::*;
use k8s_openapi::api::core::v1::Service;
use k8s_test_server::TestApiServer;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

/// A joined cloud mesh whose gateway Services carry the cloud controller's finalizer
/// (bounded: 5 s).
async fn joined_cloud_mesh() -> Mesh {
    let m = cloud_mesh().await;
    m.join(&[]).await;
    for s in [&m.west, &m.east] {
        let mut added = false;
        for _ in 0..100 {
            if stored_service(s)
                .is_some_and(|svc| svc["metadata"]["finalizers"] == json!([LB_FINALIZER]))
            {
                added = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(added, "no {LB_FINALIZER} on the gateway Service within 5 s");
    }
    m
}

/// The cloud controller's last step once the load balancer is gone: the finalizer off.
async fn teardown_done(kubeconfig: String) {
    let client = client_from_yaml(&kubeconfig).await;
    let api: Api<Service> = Api::namespaced(client, "istio-system");
    api.patch(
        "istio-eastwestgateway",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
}

fn terminating(s: &TestApiServer) -> bool {
    stored_service(s).is_some_and(|svc| svc["metadata"]["deletionTimestamp"].is_string())
}

/// The teardown finishes once unjoin says it waits for it: unjoin waits, says what for, and
/// succeeds with the Services gone. (Without the wait, unjoin reported success while the
/// Services were still there, and a join right after applied to objects about to vanish.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unjoin_waits_for_the_gateway_service_to_finish_deleting() {
    let m = joined_cloud_mesh().await;
    let (west, east) = (m.west.kubeconfig("west"), m.east.kubeconfig("east"));
    let teardown = async move {
        teardown_done(west).await;
        teardown_done(east).await;
    };
    let args = m.unjoin_args(&[]);
    let waits = "west: waiting for";
    let (out, _) = meshctl_then(Duration::from_secs(60), &args, waits, teardown).await;
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    says(
        &all,
        &[&format!(
            "west: waiting for Service istio-system/istio-eastwestgateway to finish deleting \
             (finalizers: {LB_FINALIZER})"
        )],
    );
    for s in [&m.west, &m.east] {
        assert!(stored_service(s).is_none(), "{:#?}", stored_service(s));
    }
}

/// The teardown does not finish within `--deletion-wait 1s`: unjoin exits 1, naming in each
/// context the Service, its finalizer, who takes it off and how to watch it go; everything
/// else is removed. `--deletion-wait 0` does not wait at all; a dry run does not either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unjoin_exits_1_naming_what_is_still_being_deleted_after_the_wait() {
    let m = joined_cloud_mesh().await;
    let (out, took) = meshctl_within(
        Duration::from_secs(60),
        &m.unjoin_args(&["--deletion-wait", "1s"]),
    )
    .await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(took < Duration::from_secs(15), "bounded: {took:?}\n{all}");
    for ctx in ["west", "east"] {
        says(
            &all,
            &[
                &format!(
                    "context \"{ctx}\": Service istio-system/istio-eastwestgateway (finalizers: \
                     {LB_FINALIZER}) is still being deleted after 1s"
                ),
                &format!(
                    "kubectl --context {ctx} get service -n istio-system istio-eastwestgateway -w"
                ),
            ],
        );
    }
    says(
        &all,
        &[
            "unjoin deleted everything meshctl made",
            "the cloud controller, once it has torn down the Service's load balancer",
            "--deletion-wait (now 1s)",
        ],
    );
    for s in [&m.west, &m.east] {
        assert!(terminating(s));
        assert!(
            s.store()
                .get(
                    "apps/v1",
                    "Deployment",
                    Some("istio-system"),
                    "istio-eastwestgateway"
                )
                .is_none()
        );
    }
    // `--deletion-wait 0`: at once.
    let (out, took) = meshctl_within(
        Duration::from_secs(30),
        &m.unjoin_args(&["--deletion-wait", "0"]),
    )
    .await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(!all.contains("waiting for"), "{all}");
    says(&all, &["is still being deleted: it goes once"]);
    // A dry run deletes nothing and waits for nothing.
    let (out, took) = meshctl_within(Duration::from_secs(30), &m.unjoin_args(&["--dry-run"])).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Once the teardown is done, unjoin completes.
    teardown_done(m.west.kubeconfig("west")).await;
    teardown_done(m.east.kubeconfig("east")).await;
    m.ok(&m.unjoin_args(&["--deletion-wait", "5s"])).await;
    for s in [&m.west, &m.east] {
        assert!(stored_service(s).is_none());
    }
}
