//! `gateway install` over the gateway a `join` made: it keeps the cluster ID join recorded
//! (before, Istio's default `Kubernetes` replaced it: per-cluster subsets lost their
//! endpoints and istiod reviewed the gateway's certificate requests against a cluster it does
//! not know), and every setting it resets to a default is said, in dry runs too (before,
//! silently).

mod common;

use common::*;

fn args_of(s: &k8s_test_server::TestApiServer) -> String {
    gateway_deployment(s)["spec"]["template"]["spec"]["containers"][0]["args"].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_over_a_joined_gateway_keeps_its_cluster_id_and_says_what_it_resets() {
    let m = mesh().await;
    m.join(&[
        "--protocols",
        "both",
        "--replicas",
        "4",
        "--max-replicas",
        "8",
    ])
    .await;
    assert!(args_of(&m.west).contains(r#""--cluster-id","west""#));

    // Only the image meant to change; the join's protocols are left out.
    let install = gateway_install_args(m.kc(), &["--gateway-image", "example.com/gw:2"]);
    let mut dry = install.clone();
    dry.push("--dry-run");
    let before = snapshot(&m.west);
    let out = meshctl(&dry).await;
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("this install would change what was in place"),
        "{t}"
    );
    assert!(err.contains("-> example.com/gw:2"), "{t}");
    assert!(
        err.contains("gateway arguments removed: --hbone-listen :15008"),
        "{t}"
    );
    assert!(
        err.contains(
            "Service ports: status-port:15021,tls:15443,mesh:15008 -> status-port:15021,tls:15443"
        ),
        "{t}"
    );
    assert!(!err.contains("--cluster-id"), "{t}");
    assert!(err.contains("replicas (autoscaler minimum): 4 -> 2"), "{t}");
    assert!(err.contains("max replicas: 8 -> 5"), "{t}");
    assert_eq!(snapshot(&m.west), before);

    let out = meshctl(&install).await;
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("this install changed what was in place"),
        "{t}"
    );
    let a = args_of(&m.west);
    assert!(a.contains(r#""--cluster-id","west""#), "{a}");
    assert!(!a.contains("--hbone-listen"), "{a}");

    // The same install again changes nothing and says nothing of changes.
    let out = meshctl(&install).await;
    assert!(!text(&out).contains("what was in place"), "{}", text(&out));
    // An explicit --cluster-id wins.
    let mut explicit = install.clone();
    explicit.extend(["--cluster-id", "other"]);
    let out = meshctl(&explicit).await;
    let t = text(&out);
    assert!(
        t.contains("gateway arguments added: --cluster-id other"),
        "{t}"
    );
    assert!(args_of(&m.west).contains(r#""--cluster-id","other""#));
}

/// Without a join, the default stays Istio's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_without_a_join_uses_istios_default_cluster_id() {
    let m = mesh().await;
    m.ok(&gateway_install_args(m.kc(), &[])).await;
    assert!(args_of(&m.west).contains(r#""--cluster-id","Kubernetes""#));
}
