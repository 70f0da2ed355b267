//! `meshctl join` / `unjoin` / `cacerts apply` / `label-network` / `gateway install` against
//! two TEST API servers, through the real binary.

mod common;

use std::path::Path;

use common::*;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams};
use serde_json::json;

/// What join adds to one cluster (besides the namespace controller's defaults).
fn expected(other: &str) -> Vec<String> {
    let mut v: Vec<String> = [
        "Namespace /istio-system",
        "ServiceAccount istio-system/default",
        "ConfigMap istio-system/kube-root-ca.crt",
        "Secret istio-system/cacerts",
        "ServiceAccount istio-system/istio-eastwestgateway",
        "ClusterRole /meshctl-eastwestgateway-istio-system",
        "ClusterRoleBinding /meshctl-eastwestgateway-istio-system",
        "Deployment istio-system/istio-eastwestgateway",
        "Service istio-system/istio-eastwestgateway",
        "PodDisruptionBudget istio-system/istio-eastwestgateway",
        "HorizontalPodAutoscaler istio-system/istio-eastwestgateway",
        "ServiceAccount istio-system/istio-reader-service-account",
        "ClusterRole /meshctl-istio-reader-istio-system",
        "ClusterRoleBinding /meshctl-istio-reader-istio-system",
        "Secret istio-system/istio-reader-service-account-istio-remote-secret-token",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(format!("Secret istio-system/istio-remote-secret-{other}"));
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_creates_exactly_the_expected_objects_and_a_second_run_changes_nothing() {
    let m = mesh().await;
    let (w0, e0) = m.settled_snapshots().await;
    let out = m.join(&[]).await;
    assert!(
        out.contains("remote secret istio-remote-secret-west"),
        "{out}"
    );
    let (w1, e1) = m.settled_snapshots().await;
    let mut got = added(&w0, &w1);
    got.sort();
    assert_eq!(got, expected("east"));
    let mut got = added(&e0, &e1);
    got.sort();
    assert_eq!(got, expected("west"));
    // Everything but the namespace (shared with Istio) and its defaults is labelled.
    for (s, other) in [(&m.west, "east"), (&m.east, "west")] {
        let gw = gateway_deployment(s);
        assert_eq!(
            gw["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "meshctl"
        );
        let rs = secret(s, &format!("istio-remote-secret-{other}")).unwrap();
        assert_eq!(
            rs["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "meshctl"
        );
        let ns = istio_namespace(s);
        assert!(
            ns["metadata"]["labels"]["topology.istio.io/network"]
                .as_str()
                .unwrap()
                .ends_with("-network")
        );
    }
    // Idempotent: no resourceVersion moves.
    m.join(&[]).await;
    assert_eq!(snapshot(&m.west), w1, "second join changed west");
    assert_eq!(snapshot(&m.east), e1, "second join changed east");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_secret_in_east_authenticates_against_west_and_lists_its_services() {
    let m = mesh().await;
    m.west.store().create(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "catalog", "namespace": "default"},
        "spec": {"ports": [{"port": 80}]}})).unwrap();
    m.join(&[]).await;
    let s = secret(&m.east, "istio-remote-secret-west").expect("west's secret in east");
    let yaml = stored_kubeconfig(&s, "west");
    assert!(yaml.contains(&m.west.url()), "{yaml}");
    let client = client_from_yaml(&yaml).await;
    let names: Vec<String> = Api::<Service>::all(client)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    assert!(names.contains(&"catalog".to_string()), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_prints_every_object_per_cluster_and_changes_nothing() {
    let m = mesh().await;
    let (w0, e0) = m.settled_snapshots().await;
    let out = m.join(&["--dry-run"]).await;
    assert_eq!(snapshot(&m.west), w0);
    assert_eq!(snapshot(&m.east), e0);
    assert!(
        out.contains("# context west:") && out.contains("# context east:"),
        "{out}"
    );
    for kind in [
        "kind: Deployment",
        "kind: HorizontalPodAutoscaler",
        "kind: PodDisruptionBudget",
        "name: istio-remote-secret-east",
        "name: cacerts",
    ] {
        assert!(out.contains(kind), "{kind} missing:\n{out}");
    }
    assert!(
        !out.contains("PRIVATE KEY") && out.contains("<redacted"),
        "the CA key must not be printed"
    );
    // JSON too, and a joined pair's dry run changes nothing either.
    let json_out = m.join(&["--dry-run", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_str(&json_out).unwrap();
    assert_eq!(v["clusters"].as_array().unwrap().len(), 2);
    m.join(&[]).await;
    let (w1, e1) = m.settled_snapshots().await;
    m.join(&["--dry-run", "--token-ttl", "1h"]).await;
    assert_eq!((snapshot(&m.west), snapshot(&m.east)), (w1, e1));
    // unjoin --dry-run too.
    let out = m.ok(&m.unjoin_args(&["--dry-run"])).await;
    assert!(out.contains("istio-eastwestgateway"), "{out}");
    assert!(
        m.west
            .store()
            .get(
                "apps/v1",
                "Deployment",
                Some("istio-system"),
                "istio-eastwestgateway"
            )
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unjoin_leaves_nothing_behind_and_keeps_unrelated_objects() {
    let m = mesh().await;
    // Pre-existing: the namespace with an unrelated Secret and label, and an unrelated ClusterRole.
    for s in [&m.west, &m.east] {
        s.store().create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "istio-system", "labels": {"team": "mesh"}}})).unwrap();
        s.store().create(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "keep-me", "namespace": "istio-system"}, "stringData": {"a": "b"}})).unwrap();
        s.store().create(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "keep-me"}, "rules": []})).unwrap();
        // The namespace controller adds its defaults asynchronously; wait (bounded).
        for _ in 0..100 {
            if s.store()
                .get("v1", "ConfigMap", Some("istio-system"), "kube-root-ca.crt")
                .is_some()
            {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let (w0, e0) = m.settled_snapshots().await;
    m.join(&[]).await;
    let out = m.ok(&m.unjoin_args(&[])).await;
    assert!(out.contains("west: removed"), "{out}");
    for (s, before) in [(&m.west, &w0), (&m.east, &e0)] {
        let after = snapshot(s);
        let left: Vec<String> = added(before, &after);
        assert!(left.is_empty(), "left behind: {left:?}");
        for k in [
            "Secret istio-system/keep-me",
            "ClusterRole /keep-me",
            "Namespace /istio-system",
        ] {
            assert!(after.contains_key(k), "{k} was deleted");
        }
        unjoined_keeping_team_label(s);
    }
}

/// After unjoin: istio-system keeps its `team: mesh` label and has neither the network label
/// nor the cluster-name annotation.
fn unjoined_keeping_team_label(s: &k8s_test_server::TestApiServer) {
    let ns = istio_namespace(s);
    assert_eq!(ns["metadata"]["labels"]["team"], "mesh", "{ns}");
    let network = ns["metadata"]["labels"].get("topology.istio.io/network");
    let cluster = ns["metadata"]["annotations"].get("meshctl.io/cluster-name");
    assert!(network.is_none() && cluster.is_none(), "{ns}");
}

/// A network label someone changed after join (`kubectl label --overwrite`, another field
/// manager) is theirs under server-side apply, so unjoin's apply leaves it; unjoin removes it
/// all the same (and the cluster-name annotation), and keeps the namespace's other labels.
/// Before, unjoin reported it removed and left it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unjoin_removes_a_network_label_another_writer_changed() {
    let m = mesh().await;
    m.join(&[]).await;
    relabel_east(
        &m,
        json!({"topology.istio.io/network": "renamed", "team": "mesh"}),
    )
    .await;
    m.ok(&m.unjoin_args(&[])).await;
    unjoined_keeping_team_label(&m.east);
}

/// Sets `labels` on east's istio-system with a merge patch of another field manager, as
/// `kubectl label` does.
async fn relabel_east(m: &Mesh, labels: serde_json::Value) {
    use kube::api::{Api, Patch, PatchParams};
    let east = client_from_yaml(&m.east.kubeconfig("east")).await;
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(east);
    let kubectl = PatchParams {
        field_manager: Some("kubectl-label".into()),
        ..PatchParams::default()
    };
    let patch = json!({"metadata": {"labels": labels}});
    nss.patch("istio-system", &kubectl, &Patch::Merge(&patch))
        .await
        .unwrap();
}

/// meshctl owns what it applies: a second `join` after another writer (kubectl-style, a
/// manager of its own) changed the network label takes it back. Without `force` the API
/// server answers such an apply with 409 Conflict, as a real one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_again_takes_back_a_network_label_another_writer_changed() {
    let m = mesh().await;
    m.join(&[]).await;
    relabel_east(&m, json!({"topology.istio.io/network": "renamed"})).await;
    m.join(&[]).await;
    let ns = m
        .east
        .store()
        .get("v1", "Namespace", None, "istio-system")
        .expect("istio-system");
    assert_eq!(
        ns["metadata"]["labels"]["topology.istio.io/network"],
        "east-network"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expose_services_needs_the_gateway_crd_and_changes_nothing_without_it() {
    let m = mesh().await;
    let (w0, e0) = m.settled_snapshots().await;
    let mut args = m.join_certs_args(&["--allow-loopback-server", "--expose-services"]);
    let out = m.fails(&args).await;
    assert!(
        out.contains("gateways.networking.istio.io") && out.contains("install Istio"),
        "{out}"
    );
    assert_eq!(
        (snapshot(&m.west), snapshot(&m.east)),
        (w0.clone(), e0.clone())
    );
    // A dry run refuses it too: it says what the run would do.
    args.push("--dry-run");
    let out = m.fails(&args).await;
    assert!(out.contains("gateways.networking.istio.io"), "{out}");
    m.west.install_istio_gateway_crd();
    m.east.install_istio_gateway_crd();
    let out = m.ok(&args).await;
    assert!(
        out.contains("cross-network-gateway") && out.contains("AUTO_PASSTHROUGH"),
        "{out}"
    );
    args.pop();
    m.ok(&args).await;
    for s in [&m.west, &m.east] {
        let g = s
            .store()
            .get(
                "networking.istio.io/v1",
                "Gateway",
                Some("istio-system"),
                "cross-network-gateway",
            )
            .expect("Gateway");
        assert_eq!(g["spec"]["selector"]["istio"], "eastwestgateway");
        let srv = &g["spec"]["servers"][0];
        assert_eq!(srv["port"]["number"], 15443);
        assert_eq!(srv["tls"]["mode"], "AUTO_PASSTHROUGH");
        assert_eq!(srv["hosts"][0], "*.local");
    }
}

/// `meshctl join` of `contexts` with this kubeconfig, the mesh's certificates and `extra`
/// flags: refused (exit 1); returns the output.
async fn join_refused(m: &Mesh, kubeconfig: &Path, contexts: [&str; 2], extra: &[&str]) -> String {
    let mut args = vec![
        "join",
        "--kubeconfig",
        p(kubeconfig),
        "--certs",
        p(&m.certs),
        "--context",
        contexts[0],
        "--context",
        contexts[1],
    ];
    args.extend_from_slice(extra);
    m.fails(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_before_any_change() {
    let m = mesh().await;
    let (w0, e0) = m.settled_snapshots().await;
    let both = ["west", "east"];
    // (contexts, flags besides --allow-loopback-server, what the refusal says); a context
    // missing from the kubeconfig exits 1, wrong flags are usage errors (exit 2).
    let out = join_refused(
        &m,
        &m.kubeconfig,
        ["west", "nope"],
        &["--allow-loopback-server"],
    )
    .await;
    assert!(
        out.contains("context \"nope\" not found in") && out.contains("available: west, east"),
        "{out}"
    );
    let cases: [(&[&str], &str); 3] = [
        (
            &["--network", "west=n1", "--network", "east=n1"],
            "both on network",
        ),
        (&["--cluster-name", "east=west"], "same cluster name"),
        (&["--cluster-name", "east=East_1"], "DNS-1123"),
    ];
    for (extra, want) in cases {
        let t =
            usage_error(&m.join_certs_args(&[&["--allow-loopback-server"], extra].concat())).await;
        assert!(t.contains(want), "{want}: {t}");
    }
    // Loopback server without --allow-loopback-server: refused, with the fix.
    let out = join_refused(&m, &m.kubeconfig, both, &[]).await;
    assert!(
        out.contains("loopback") && out.contains("--server west=") && out.contains(":6443"),
        "{out}"
    );
    // Missing kubeconfig, broken kubeconfig, unreachable server.
    let out = join_refused(&m, &m.dir.path().join("missing"), both, &[]).await;
    assert!(out.contains("not found"), "{out}");
    let broken = m.dir.path().join("broken");
    std::fs::write(&broken, "clusters: [this is: not: yaml").unwrap();
    let out = join_refused(&m, &broken, both, &[]).await;
    assert!(out.contains("reading kubeconfig"), "{out}");
    assert_eq!(
        (snapshot(&m.west), snapshot(&m.east)),
        (w0.clone(), e0.clone())
    );
    let dead = m.dir.path().join("dead");
    let yaml = kubeconfig_yaml(&[("west", &m.west), ("east", &m.east)])
        .replace(&m.east.url(), "https://127.0.0.1:1");
    std::fs::write(&dead, yaml).unwrap();
    let out = join_refused(&m, &dead, both, &["--allow-loopback-server"]).await;
    assert!(
        out.contains("cannot reach the API server of context \"east\" at https://127.0.0.1:1"),
        "{out}"
    );
    assert_eq!(
        (snapshot(&m.west), snapshot(&m.east)),
        (w0.clone(), e0.clone())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cacerts_apply_creates_the_namespace_and_refuses_another_root_without_force() {
    let m = mesh().await;
    let west_bundle = m.certs.join("west");
    let out = m
        .ok(&cacerts_apply_args(m.kc(), p(&west_bundle), "west", &[]))
        .await;
    assert!(out.contains("cacerts applied"), "{out}");
    let s = secret(&m.west, "cacerts").expect("cacerts");
    assert_eq!(
        s["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "meshctl"
    );
    for f in [
        "ca-cert.pem",
        "ca-key.pem",
        "root-cert.pem",
        "cert-chain.pem",
    ] {
        assert!(s["data"][f].is_string(), "{f}");
    }
    let out = meshctl(&cacerts_apply_args(m.kc(), p(&west_bundle), "west", &[])).await;
    assert!(text(&out).contains("up to date"), "{}", text(&out));
    // A bundle from another root is refused without --force.
    let other = m.dir.path().join("other");
    m.ok(&["certs", "init", "--clusters", "west", "--out", p(&other)])
        .await;
    let before = snapshot(&m.west);
    let out = m
        .fails(&cacerts_apply_args(
            m.kc(),
            p(&other.join("west")),
            "west",
            &[],
        ))
        .await;
    assert!(
        out.contains("different root") && out.contains("--force"),
        "{out}"
    );
    assert_eq!(snapshot(&m.west), before);
    let out = meshctl(&cacerts_apply_args(
        m.kc(),
        p(&other.join("west")),
        "west",
        &["--force"],
    ))
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("rollout restart deploy/istiod"),
        "{}",
        text(&out)
    );
    assert_ne!(snapshot(&m.west), before);
    // The printing form still works.
    let yaml = m.ok(&["cacerts", p(&west_bundle), "--show-secrets"]).await;
    assert!(
        yaml.contains("kind: Secret") && yaml.contains("name: cacerts"),
        "{yaml}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_network_and_gateway_install() {
    let m = mesh().await;
    let before = settled_snapshot(&m.east).await;
    let out = m
        .ok(&[
            "label-network",
            "east-net",
            "--kubeconfig",
            m.kc(),
            "--context",
            "east",
            "--dry-run",
        ])
        .await;
    assert!(out.contains("topology.istio.io/network: east-net"), "{out}");
    assert_eq!(snapshot(&m.east), before);
    m.ok(&[
        "label-network",
        "east-net",
        "--kubeconfig",
        m.kc(),
        "--context",
        "east",
    ])
    .await;
    let ns = istio_namespace(&m.east);
    assert_eq!(
        ns["metadata"]["labels"]["topology.istio.io/network"],
        "east-net"
    );
    let t = usage_error(&[
        "label-network",
        "bad net",
        "--kubeconfig",
        m.kc(),
        "--context",
        "east",
    ])
    .await;
    assert!(t.contains("not a valid label value"), "{t}");

    m.ok(&[
        "gateway",
        "install",
        "--network",
        "east-net",
        "--service-type",
        "node-port",
        "--service-annotation",
        "a=b",
        "--kubeconfig",
        m.kc(),
        "--context",
        "east",
    ])
    .await;
    let svc = gateway_service(&m.east);
    assert_eq!(svc["spec"]["type"], "NodePort");
    assert_eq!(svc["metadata"]["annotations"]["a"], "b");
    assert_eq!(
        svc["metadata"]["labels"]["topology.istio.io/network"],
        "east-net"
    );
    assert_eq!(svc["metadata"]["labels"]["istio"], "eastwestgateway");
    assert_eq!(svc["metadata"]["labels"]["app"], "istio-eastwestgateway");
    let ports: Vec<(String, u64)> = svc["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["port"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        vec![
            ("status-port".to_string(), 15021),
            ("tls".to_string(), 15443)
        ]
    );
    let d = gateway_deployment(&m.east);
    let pod = &d["spec"]["template"]["spec"];
    assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() >= 30);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let c = &pod["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/healthz/ready");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], 15021);
    // The Service exposes the status port (health only); the admin port (metrics, the route
    // table) is the pod's, for Prometheus.
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let after = |flag: &str| args[args.iter().position(|a| *a == flag).unwrap() + 1];
    assert_eq!(after("--status-listen"), ":15021");
    assert_eq!(after("--admin"), ":15020");
    assert!(ports.iter().all(|(_, p)| *p != 15020), "{ports:?}");
    let pod_meta = &d["spec"]["template"]["metadata"];
    assert_eq!(pod_meta["annotations"]["prometheus.io/port"], "15020");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert!(
        c["resources"]["requests"]["cpu"].is_string()
            && c["resources"]["limits"]["memory"].is_string()
    );
    let pdb = m
        .east
        .store()
        .get(
            "policy/v1",
            "PodDisruptionBudget",
            Some("istio-system"),
            "istio-eastwestgateway",
        )
        .unwrap();
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    let hpa = m
        .east
        .store()
        .get(
            "autoscaling/v2",
            "HorizontalPodAutoscaler",
            Some("istio-system"),
            "istio-eastwestgateway",
        )
        .unwrap();
    assert_eq!(
        hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
        80
    );
    // The ClusterRole covers what the gateway discovers, read-only.
    let role = m
        .east
        .store()
        .get(
            "rbac.authorization.k8s.io/v1",
            "ClusterRole",
            None,
            "meshctl-eastwestgateway-istio-system",
        )
        .unwrap();
    let text = role.to_string();
    for r in [
        "endpointslices",
        "destinationrules",
        "workloadentries",
        "serviceentries",
        "peerauthentications",
        "gateways",
        "gatewayclasses",
        "services",
        "pods",
        "namespaces",
    ] {
        assert!(text.contains(r), "{r}");
    }
    // Nothing it does not read: CRDs are found by API discovery (before 2026-12-07 the role
    // granted reading them too).
    assert!(
        !text.contains("secrets")
            && !text.contains("create")
            && !text.contains("customresourcedefinitions"),
        "{text}"
    );
}
