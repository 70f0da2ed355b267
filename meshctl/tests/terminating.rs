//! Objects being deleted ("Terminating": a `deletionTimestamp`, held by finalizers), through
//! the real binary on TEST API servers that keep such objects as a real API server does: a
//! LoadBalancer Service carries the cloud controller's `service.kubernetes.io/load-balancer-
//! cleanup` (`StoreConfig::load_balancer_cleanup_finalizer`), so `unjoin` only marks it and
//! an apply to it would vanish with it; a namespace being deleted refuses creates. meshctl
//! waits for such objects (`--deletion-wait`) before its first write, or changes nothing.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::cloud::{LB_FINALIZER, cloud_mesh, stored_service};
use common::runs::{meshctl_then, meshctl_within, says};
use common::*;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_test_server::TestApiServer;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

const HOLD: &str = "test.meshctl.io/hold";
const SERVICE: &str = "Service istio-system/istio-eastwestgateway";

/// Waits (bounded: 5 s) until the cloud controller has put its finalizer on the gateway.
async fn finalizer_added(s: &TestApiServer) {
    for _ in 0..100 {
        if stored_service(s)
            .is_some_and(|svc| svc["metadata"]["finalizers"] == json!([LB_FINALIZER]))
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no {LB_FINALIZER} on the gateway Service within 5 s");
}

/// What the cloud controller does once the load balancer is gone: a plain merge patch that
/// takes the finalizers off (which deletes a Service being deleted).
async fn teardown_done(s: &TestApiServer, ctx: &str) {
    let client = client_from_yaml(&s.kubeconfig(ctx)).await;
    let api: Api<Service> = Api::namespaced(client, "istio-system");
    api.patch(
        "istio-eastwestgateway",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
}

/// Takes the test's own finalizer off namespace istio-system (a merge patch), which
/// deletes it while it is being deleted.
async fn release_namespace(s: &TestApiServer, ctx: &str) {
    let client = client_from_yaml(&s.kubeconfig(ctx)).await;
    let api: Api<Namespace> = Api::all(client);
    api.patch(
        "istio-system",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
}

/// Gives namespace istio-system a finalizer of the test's own, then deletes it: it stays
/// `Terminating` (its objects are deleted at once) until the finalizer is taken off.
fn terminate_namespace(s: &TestApiServer) {
    let mut ns = istio_namespace(s);
    ns["metadata"]["finalizers"] = json!([HOLD]);
    s.store().apply(ns).unwrap();
    s.store()
        .delete("v1", "Namespace", None, "istio-system")
        .unwrap();
    let ns = istio_namespace(s);
    assert!(ns["metadata"]["deletionTimestamp"].is_string(), "{ns:#}");
}

/// Every object of west and of east with its resourceVersion (a namespace being deleted
/// never gets its `default` ServiceAccount back, so this does not wait for that).
fn snapshots(m: &Mesh) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    (snapshot(&m.west), snapshot(&m.east))
}

fn terminating(obj: &Value) -> bool {
    obj["metadata"]["deletionTimestamp"].is_string()
}

/// A joined mesh on the cloud clusters, then unjoined: both gateway Services are only
/// marked for deletion, held by the load-balancer cleanup finalizer. (`unjoin` does not wait
/// for them here, `--deletion-wait 0`; when it checks what it deleted, it exits 1 naming the
/// Service still being deleted.)
async fn unjoined_cloud_mesh() -> Mesh {
    let m = cloud_mesh().await;
    m.join(&[]).await;
    for s in [&m.west, &m.east] {
        finalizer_added(s).await;
    }
    let (out, _) = meshctl_within(
        Duration::from_secs(60),
        &m.unjoin_args(&["--deletion-wait", "0"]),
    )
    .await;
    let all = text(&out);
    match out.status.code() {
        Some(0) => {}
        Some(1) => says(&all, &[&format!("{SERVICE} (finalizers: {LB_FINALIZER})")]),
        _ => panic!("unjoin failed:\n{all}"),
    }
    for s in [&m.west, &m.east] {
        let svc = stored_service(s).expect("the Service stays while its finalizer does");
        assert!(terminating(&svc), "{svc:#}");
    }
    m
}

/// `unjoin` then `join` on a cloud cluster: join waits for the gateway Service to finish
/// deleting (the load balancer teardown, played once join says it waits), then applies it anew, so
/// the gateway exists afterwards. (Without the wait, join applied to the Service being
/// deleted, reported success, and the gateway was gone once the teardown finished.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_waits_for_the_gateway_service_being_deleted_and_then_makes_it() {
    let m = unjoined_cloud_mesh().await;
    let (west_url, east_url) = (m.west.kubeconfig("west"), m.east.kubeconfig("east"));
    let teardown = async move {
        for (yaml, ctx) in [(west_url, "west"), (east_url, "east")] {
            let client = client_from_yaml(&yaml).await;
            let api: Api<Service> = Api::namespaced(client, "istio-system");
            api.patch(
                "istio-eastwestgateway",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        }
    };
    let args = m.join_args(&[]);
    let waits = "west: waiting for";
    let (out, _) = meshctl_then(Duration::from_secs(60), &args, waits, teardown).await;
    let all = text(&out);
    assert!(out.status.success(), "join failed:\n{all}");
    for s in [&m.west, &m.east] {
        let svc = stored_service(s).expect("the gateway Service exists after join");
        assert!(!terminating(&svc), "{svc:#}");
        // And it stays: the cloud controller's finalizer is only for a future deletion.
        finalizer_added(s).await;
        assert!(!terminating(&stored_service(s).unwrap()));
    }
    says(
        &all,
        &[&format!(
            "west: waiting for {SERVICE} to finish deleting (finalizers: {LB_FINALIZER})"
        )],
    );
    assert_eq!(all.matches("west: waiting for").count(), 1, "once:\n{all}");
}

/// The teardown never finishes within `--deletion-wait 1s`: join stops (exit 1) naming the
/// Service, its finalizer and how to watch it go, and changes nothing in either cluster. A
/// dry run reports the Service being deleted without waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_changes_nothing_when_the_deletion_outlasts_the_wait() {
    let m = unjoined_cloud_mesh().await;
    let before = m.settled_snapshots().await;
    let args = m.join_args(&["--deletion-wait", "1s"]);
    let (out, took) = meshctl_within(Duration::from_secs(30), &args).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(took < Duration::from_secs(15), "bounded: {took:?}\n{all}");
    says(
        &all,
        &[
            &format!("{SERVICE} (finalizers: {LB_FINALIZER}) is still being deleted after 1s"),
            "the cloud controller, once it has torn down the Service's load balancer",
            "kubectl --context west get service -n istio-system istio-eastwestgateway -w",
            "--deletion-wait",
            "Nothing was changed",
        ],
    );
    assert_eq!(m.settled_snapshots().await, before, "nothing changed");
    // `--deletion-wait 0`: no wait at all.
    let args = m.join_args(&["--deletion-wait", "0"]);
    let (out, took) = meshctl_within(Duration::from_secs(30), &args).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(!text(&out).contains("waiting for"), "{}", text(&out));
    // A dry run says so and does not wait.
    let args = m.join_args(&["--dry-run"]);
    let (out, took) = meshctl_within(Duration::from_secs(30), &args).await;
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(took < Duration::from_secs(10), "{took:?}");
    says(
        &all,
        &[&format!(
            "# dry run: context \"west\": {SERVICE} is being deleted (finalizers: {LB_FINALIZER}); a real run waits up to 2m"
        )],
    );
    assert_eq!(m.settled_snapshots().await, before, "nothing changed");
    // Once the teardown is done, join makes the gateway again.
    teardown_done(&m.west, "west").await;
    teardown_done(&m.east, "east").await;
    m.join(&[]).await;
    assert!(!terminating(&stored_service(&m.west).unwrap()));
}

/// Namespace istio-system being deleted (held by a finalizer): join stops within
/// `--deletion-wait`, naming the namespace, with nothing changed; given time, it waits for
/// the namespace to go and then joins (without the wait, every create in it was refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_waits_for_a_namespace_being_deleted() {
    let m = mesh().await;
    m.join(&[]).await;
    m.settled_snapshots().await;
    terminate_namespace(&m.west);
    let before = snapshots(&m);
    let args = m.join_args(&["--deletion-wait", "1s"]);
    let (out, took) = meshctl_within(Duration::from_secs(30), &args).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(took < Duration::from_secs(15), "bounded: {took:?}\n{all}");
    says(
        &all,
        &[
            &format!(
                "west: waiting for Namespace istio-system to finish deleting (finalizers: {HOLD}"
            ),
            &format!(
                "Namespace istio-system (finalizers: {HOLD}, kubernetes) is still being deleted after 1s"
            ),
            "kubectl --context west get namespace istio-system -w",
            "Nothing was changed",
        ],
    );
    assert_eq!(snapshots(&m), before, "nothing changed");

    let kubeconfig = m.west.kubeconfig("west");
    let release = async move {
        let client = client_from_yaml(&kubeconfig).await;
        let api: Api<Namespace> = Api::all(client);
        api.patch(
            "istio-system",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    };
    let args = m.join_args(&[]);
    let waits = "west: waiting for Namespace istio-system";
    let (out, _) = meshctl_then(Duration::from_secs(60), &args, waits, release).await;
    let all = text(&out);
    assert!(out.status.success(), "join failed:\n{all}");
    says(&all, &[waits]);
    let ns = istio_namespace(&m.west);
    assert!(!terminating(&ns), "{ns:#}");
    assert_eq!(
        ns["metadata"]["labels"]["topology.istio.io/network"],
        "west-network"
    );
    assert!(!terminating(&gateway_service(&m.west)));
}

/// The single-cluster writers check too: `gateway install`, `label-network`, `cacerts
/// apply` and `create-remote-secret` stop with nothing changed when the namespace they
/// write in is being deleted (`--deletion-wait 0`), a dry run only says so, and once the
/// namespace is gone they write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_writer_waits_for_a_namespace_being_deleted() {
    let m = mesh().await;
    m.join(&[]).await;
    m.settled_snapshots().await;
    terminate_namespace(&m.west);
    let before = snapshots(&m);
    let kc = m.kc();
    let bundle = m.certs.join("west");
    let gateway: Vec<&str> = vec![
        "gateway",
        "install",
        "--network",
        "west-network",
        "--kubeconfig",
        kc,
        "--context",
        "west",
    ];
    let label = vec![
        "label-network",
        "west-network",
        "--kubeconfig",
        kc,
        "--context",
        "west",
    ];
    let cacerts = cacerts_apply_args(kc, p(&bundle), "west", &[]);
    let secret = remote_secret_args(kc, &[]);
    for cmd in [&gateway, &label, &cacerts, &secret] {
        let mut args = cmd.clone();
        args.extend(["--deletion-wait", "0"]);
        let (out, took) = meshctl_within(Duration::from_secs(30), &args).await;
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}:\n{all}");
        assert!(took < Duration::from_secs(10), "{args:?}: {took:?}");
        says(
            &all,
            &[
                &format!(
                    "Namespace istio-system (finalizers: {HOLD}, kubernetes) is still being deleted"
                ),
                "Nothing was changed",
            ],
        );
        let mut dry = cmd.clone();
        dry.push("--dry-run");
        let (out, _) = meshctl_within(Duration::from_secs(30), &dry).await;
        let all = text(&out);
        assert!(out.status.success(), "{dry:?}:\n{all}");
        says(
            &all,
            &["# dry run: context \"west\": Namespace istio-system is being deleted"],
        );
    }
    assert_eq!(snapshots(&m), before, "nothing changed");
    release_namespace(&m.west, "west").await;
    for cmd in [&label, &cacerts, &gateway, &secret] {
        let out = meshctl(cmd).await;
        assert!(out.status.success(), "{cmd:?}:\n{}", text(&out));
    }
    assert!(!terminating(&istio_namespace(&m.west)));
    assert!(!terminating(&gateway_service(&m.west)));
}
