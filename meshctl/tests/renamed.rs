//! A cluster joined again under another cluster name and network: the other clusters keep no
//! remote secret or ambient announcement under the old names. Before, `istio-remote-secret-<old>`
//! stayed next to the new one (istiod read the cluster twice, as two clusters, and
//! `credentials refresh` failed on the old one in every run) and `meshctl-remote-<old
//! network>` kept announcing a network that no longer exists.

mod common;

use common::*;
use k8s_test_server::TestApiServer;
use serde_json::Value;

const NS: &str = "istio-system";

fn announce(s: &TestApiServer, network: &str) -> Option<Value> {
    let name = format!("meshctl-remote-{network}");
    s.store()
        .get("gateway.networking.k8s.io/v1", "Gateway", Some(NS), &name)
}

fn remote_secrets(s: &TestApiServer) -> Vec<String> {
    let mut names: Vec<String> = s
        .store()
        .list("v1", "Secret", Some(NS))
        .into_iter()
        .filter(|o| o["metadata"]["labels"]["istio/multiCluster"] == "true")
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_joined_again_under_new_names_leaves_nothing_under_the_old_ones() {
    let m = mesh().await;
    install_gateway_api(&m.west);
    install_gateway_api(&m.east);
    let addrs = [
        "--ambient",
        "--gateway-address",
        "west=172.18.0.10",
        "--gateway-address",
        "east=172.18.0.20",
    ];
    m.join(&addrs).await;
    assert_eq!(remote_secrets(&m.east), ["istio-remote-secret-west"]);
    assert!(announce(&m.east, "west-network").is_some());

    // west becomes west2 on west2-network: a bundle for the new name, then join again.
    let (root_cert, root_key) = (m.certs.join("root-cert.pem"), m.certs.join("root-key.pem"));
    let west2 = m.certs.join("west2");
    m.ok(&intermediate_args(
        &root_cert,
        &root_key,
        "west2",
        &west2,
        &[],
    ))
    .await;
    let mut args = m.join_certs_args(&["--allow-loopback-server"]);
    args.extend([
        "--cluster-name",
        "west=west2",
        "--network",
        "west=west2-network",
        "--network",
        "east=east-network",
    ]);
    args.extend(addrs);

    // A dry run says what goes and removes nothing.
    let before = snapshot(&m.east);
    let mut dry = args.clone();
    dry.push("--dry-run");
    let out = meshctl(&dry).await;
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains(
            "east: Secret istio-system/istio-remote-secret-west would be removed: cluster \"west\" \
             (context west) is now cluster \"west2\""
        ),
        "{t}"
    );
    assert!(
        t.contains("Gateway istio-system/meshctl-remote-west-network would be removed"),
        "{t}"
    );
    assert_eq!(snapshot(&m.east), before);

    let mut real = args.clone();
    real.extend(["-o", "json"]);
    let out = m.ok(&real).await;
    let summary: Value = serde_json::from_str(&out).unwrap();
    let east = &summary["clusters"][1];
    assert_eq!(east["context"], "east");
    assert_eq!(
        east["removed"],
        serde_json::json!([
            "Secret istio-system/istio-remote-secret-west",
            "Gateway istio-system/meshctl-remote-west-network"
        ]),
        "{summary:#}"
    );
    assert!(summary["clusters"][0].get("removed").is_none());
    // east reads west once, under its new name, and announces only its new network.
    assert_eq!(remote_secrets(&m.east), ["istio-remote-secret-west2"]);
    assert!(announce(&m.east, "west-network").is_none());
    assert!(announce(&m.east, "west2-network").is_some());
    // west's view of east is untouched.
    assert_eq!(remote_secrets(&m.west), ["istio-remote-secret-east"]);
    assert!(announce(&m.west, "east-network").is_some());

    // Every stored credential now belongs to a context: refresh has nothing to fail on.
    let mut refresh = both_contexts("credentials", m.kc());
    refresh.insert(1, "refresh");
    refresh.push("--dry-run");
    m.ok(&refresh).await;

    // A third run changes nothing.
    let before = (snapshot(&m.west), snapshot(&m.east));
    m.ok(&args).await;
    assert_eq!((snapshot(&m.west), snapshot(&m.east)), before);
}

/// Two clusters swapping names: each keeps the other's remote secret under its new name, and
/// loses the one under its own new name (which read the other cluster as itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_that_swap_names_hold_each_other_once() {
    let m = mesh().await;
    m.join(&[]).await;
    let mut args = m.join_certs_args(&["--allow-loopback-server"]);
    args.extend([
        "--cluster-name",
        "west=east",
        "--cluster-name",
        "east=west",
        "--network",
        "west=east-network",
        "--network",
        "east=west-network",
    ]);
    let out = m.ok(&args).await;
    assert!(
        out.contains("west: Secret istio-system/istio-remote-secret-east removed"),
        "{out}"
    );
    assert_eq!(remote_secrets(&m.west), ["istio-remote-secret-west"]);
    assert_eq!(remote_secrets(&m.east), ["istio-remote-secret-east"]);
}
