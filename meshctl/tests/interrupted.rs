//! Every meshctl command that makes several changes, interrupted part-way by a persistent API
//! server failure (the TEST SERVER's injected faults) in one cluster: it exits 1 within a
//! bounded time, names the object, cluster and cause, says what was already changed and how
//! to resume, and re-running it once the server is well completes it. `rotate` and
//! `credentials refresh` are in `interrupted_trust.rs`.

mod common;

use common::runs::*;
use common::*;
use k8s_test_server::{Fault, TestApiServer};
use serde_json::Value;

/// The objects meshctl manages, without what the server assigns (versions, times, IPs).
fn managed(s: &TestApiServer) -> Vec<Value> {
    let mut out = Vec::new();
    for rt in s.store().resource_types() {
        let av = rt.api_version(rt.preferred_version());
        for mut o in s.store().list(&av, &rt.kind, None) {
            if o["metadata"]["labels"]["app.kubernetes.io/managed-by"] != "meshctl" {
                continue;
            }
            let m = o["metadata"].as_object_mut().unwrap();
            for k in [
                "resourceVersion",
                "uid",
                "creationTimestamp",
                "managedFields",
            ] {
                m.remove(k);
            }
            let o = o.as_object_mut().unwrap();
            o.remove("status");
            if let Some(spec) = o.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("clusterIP");
                spec.remove("clusterIPs");
            }
            out.push(Value::Object(o.clone()));
        }
    }
    out.sort_by_key(|o| o.to_string());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_install_names_what_is_in_place_and_a_rerun_completes_it() {
    let m = mesh().await;
    let install = |ctx: &'static str| {
        vec![
            "gateway",
            "install",
            "--network",
            "net-1",
            "--kubeconfig",
            m.kc(),
            "--context",
            ctx,
        ]
    };
    succeeds(&install("west")).await;
    outage(&m.east, Fault::Unavailable, "patch", "deployments");
    let all = interrupted(&install("east")).await;
    says(
        &all,
        &[
            "applying Deployment istio-system/istio-eastwestgateway in context \"east\"",
            "503 ServiceUnavailable",
            "applied 3 of 7 gateway objects in context \"east\" (ServiceAccount \
             istio-system/istio-eastwestgateway, ClusterRole",
            "not applied: Deployment istio-system/istio-eastwestgateway, Service",
            "re-run the same command to resume",
        ],
    );
    m.east.faults().clear();
    succeeds(&install("east")).await;
    // The same objects as the uninterrupted install in west.
    assert_eq!(managed(&m.east), managed(&m.west));
    assert_eq!(managed(&m.east).len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_network_and_cacerts_apply_say_what_is_not_done_and_resume() {
    let m = mesh().await;
    // A new namespace: created first, then the label fails (500, not retried).
    let label = [
        "label-network",
        "net-2",
        "--kubeconfig",
        m.kc(),
        "--context",
        "east",
        "-n",
        "fresh",
    ];
    outage(&m.east, Fault::Internal, "patch", "namespaces");
    let all = interrupted(&label).await;
    says(
        &all,
        &[
            "applying Namespace fresh in context \"east\"",
            "500 InternalError",
            "namespace fresh in context \"east\" is not labelled (it may have been created \
             without the label); re-run the same command to resume",
        ],
    );
    m.east.faults().clear();
    succeeds(&label).await;
    let ns = m
        .east
        .store()
        .get("v1", "Namespace", None, "fresh")
        .unwrap();
    assert_eq!(
        ns["metadata"]["labels"]["topology.istio.io/network"],
        "net-2"
    );

    let bundle = m.certs.join("east");
    let apply = cacerts_apply_args(m.kc(), p(&bundle), "east", &["-n", "other"]);
    outage(&m.east, Fault::Unavailable, "patch", "secrets");
    outage(&m.east, Fault::Unavailable, "create", "secrets");
    let all = interrupted(&apply).await;
    says(
        &all,
        &[
            "creating Secret other/cacerts in context \"east\"",
            "503 ServiceUnavailable",
            "cacerts in context \"east\" was not updated (namespace other may have been \
             created): istiod keeps its current CA; re-run the same command to resume",
        ],
    );
    assert!(
        !all.contains("restart"),
        "no istiod restart for nothing:\n{all}"
    );
    m.east.faults().clear();
    let all = succeeds(&apply).await;
    assert!(all.contains("rollout restart deploy/istiod"), "{all}");
    let s = m
        .east
        .store()
        .get("v1", "Secret", Some("other"), "cacerts")
        .unwrap();
    let ca = std::fs::read(bundle.join("ca-cert.pem")).unwrap();
    use base64::Engine as _;
    let stored = base64::engine::general_purpose::STANDARD
        .decode(s["data"]["ca-cert.pem"].as_str().unwrap())
        .unwrap();
    assert_eq!(stored, ca);
}

/// Already right before this file: the renewed bundle is on disk, the message says cacerts
/// was not updated and how to apply it; re-running the renewal completes it (with yet
/// another key: the unapplied one was never used).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_renew_apply_says_the_bundle_is_written_but_not_applied() {
    let m = mesh().await;
    let bundle = m.certs.join("east");
    succeeds(&cacerts_apply_args(m.kc(), p(&bundle), "east", &[])).await;
    let (root, key) = (m.certs.join("root-cert.pem"), m.certs.join("root-key.pem"));
    let renew = renew_args(
        &bundle,
        &root,
        &key,
        &["--apply", "--kubeconfig", m.kc(), "--context", "east"],
    );
    outage(&m.east, Fault::Unavailable, "patch", "secrets");
    let all = interrupted(&renew).await;
    says(
        &all,
        &[
            "applying Secret istio-system/cacerts in context \"east\"",
            "503 ServiceUnavailable",
            "the renewed bundle is written to",
            "but cacerts in context \"east\" was not updated; apply it with: meshctl cacerts \
             apply",
        ],
    );
    m.east.faults().clear();
    succeeds(&renew).await;
    use base64::Engine as _;
    let s = secret(&m.east, "cacerts").unwrap();
    for f in [
        "ca-cert.pem",
        "ca-key.pem",
        "cert-chain.pem",
        "root-cert.pem",
    ] {
        let stored = base64::engine::general_purpose::STANDARD
            .decode(s["data"][f].as_str().unwrap())
            .unwrap();
        assert_eq!(stored, std::fs::read(bundle.join(f)).unwrap(), "{f}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unjoin_says_which_cluster_is_half_removed_and_a_rerun_finishes() {
    let m = joined_mesh().await;
    outage(&m.east, Fault::Unavailable, "delete", "deployments");
    let all = interrupted(&m.unjoin_args(&[])).await;
    says(
        &all,
        &[
            "deleting Deployment istio-system/istio-eastwestgateway in context \"east\"",
            "503 ServiceUnavailable",
            "interrupted: west: done (",
            "east: part-way: 3 removed (HorizontalPodAutoscaler \
             istio-system/istio-eastwestgateway, PodDisruptionBudget",
            "is still there",
            "The mesh is half removed: cross-cluster traffic",
            "Re-run the same command to resume",
        ],
    );
    assert!(managed(&m.west).is_empty());
    assert!(!managed(&m.east).is_empty());
    m.east.faults().clear();
    let all = succeeds(&m.unjoin_args(&[])).await;
    assert!(all.contains("west: removed 0 object(s)"), "{all}");
    for s in [&m.west, &m.east] {
        assert_eq!(managed(s), Vec::<Value>::new());
        let ns = istio_namespace(s);
        assert!(
            ns["metadata"]["labels"]
                .get("topology.istio.io/network")
                .is_none(),
            "{ns}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_ambient_lists_the_announcements_made_and_a_rerun_completes() {
    let m = mesh().await;
    install_gateway_api(&m.west);
    install_gateway_api(&m.east);
    let join = m.join_args(&[
        "--ambient",
        "--gateway-address",
        "west=10.0.0.1",
        "--gateway-address",
        "east=10.0.0.2",
    ]);
    // West announces east's network; east's announcement of west's fails.
    outage(&m.east, Fault::Unavailable, "patch", "gateways");
    let all = interrupted(&join).await;
    says(
        &all,
        &[
            "applying Gateway istio-system/meshctl-remote-west-network in context \"east\"",
            "503 ServiceUnavailable",
            "interrupted after these changes",
            "west: remote secret of east; west: network east-network announced; re-run the same \
             command to resume",
            "cross-cluster traffic may fail where a gateway, remote secret or network \
             announcement is still missing",
        ],
    );
    m.east.faults().clear();
    let all = succeeds(&join).await;
    assert!(
        all.contains("east: network west-network announced"),
        "{all}"
    );
    // Complete: another run changes nothing.
    let before = (snapshot(&m.west), snapshot(&m.east));
    succeeds(&join).await;
    assert_eq!((snapshot(&m.west), snapshot(&m.east)), before);
    let gw = |s: &TestApiServer, net: &str| {
        s.store().get(
            "gateway.networking.k8s.io/v1",
            "Gateway",
            Some("istio-system"),
            &format!("meshctl-remote-{net}"),
        )
    };
    assert!(gw(&m.west, "east-network").is_some() && gw(&m.east, "west-network").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_failing_before_any_change_says_nothing_was_changed() {
    let m = mesh().await;
    let before = m.settled_snapshots().await;
    // Reading east's namespace during the checks fails: no cluster is touched.
    outage(&m.east, Fault::Internal, "get", "namespaces");
    let all = interrupted(&m.join_args(&[])).await;
    says(
        &all,
        &[
            "reading Namespace istio-system in context \"east\"",
            "500 InternalError",
            "nothing was changed; re-run the same command once this is fixed",
        ],
    );
    assert_eq!((snapshot(&m.west), snapshot(&m.east)), before);
    m.east.faults().clear();
    // The first write fails.
    outage(&m.west, Fault::Internal, "patch", "secrets");
    outage(&m.west, Fault::Internal, "create", "secrets");
    let all = interrupted(&m.join_args(&[])).await;
    says(
        &all,
        &[
            "creating Secret istio-system/cacerts in context \"west\"",
            "interrupted before the first change was complete; re-run the same command",
        ],
    );
    m.west.faults().clear();
    succeeds(&m.join_args(&[])).await;
}
