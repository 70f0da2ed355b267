//! `meshctl join --ambient` / `unjoin` / `gateway manifest --protocols` against two TEST API
//! servers, through the real binary: the HBONE port and certificate volumes on the gateway,
//! and the `istio-remote` Gateways that announce each peer network to ztunnels.

mod common;

use common::*;
use k8s_test_server::TestApiServer;
use serde_json::{Value, json};

async fn ambient_mesh() -> Mesh {
    let m = mesh().await;
    install_gateway_api(&m.west);
    install_gateway_api(&m.east);
    m
}

fn announce(s: &TestApiServer, network: &str) -> Option<Value> {
    s.store().get(
        "gateway.networking.k8s.io/v1",
        "Gateway",
        Some("istio-system"),
        &format!("meshctl-remote-{network}"),
    )
}

fn remote_gateways(s: &TestApiServer) -> Vec<Value> {
    s.store()
        .list("gateway.networking.k8s.io/v1", "Gateway", None)
        .into_iter()
        .collect()
}

fn expected_announce(network: &str, ty: &str, addr: &str) -> Value {
    json!({
        "labels": {"app.kubernetes.io/managed-by": "meshctl", "topology.istio.io/network": network},
        "annotations": {"gateway.istio.io/service-account": "istio-eastwestgateway"},
        "spec": {"gatewayClassName": "istio-remote",
            "addresses": [{"type": ty, "value": addr}],
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE",
                "tls": {"mode": "Terminate", "options": {"gateway.istio.io/tls-terminate-mode": "ISTIO_MUTUAL"}}}]},
        "status": {"addresses": [{"type": ty, "value": addr}]},
    })
}

fn shape(o: &Value) -> Value {
    json!({"labels": o["metadata"]["labels"], "annotations": o["metadata"]["annotations"],
        "spec": o["spec"], "status": o["status"]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_ambient_announces_each_peer_network_and_unjoin_removes_it() {
    let m = ambient_mesh().await;
    let out = m
        .join(&[
            "--ambient",
            "--gateway-address",
            "west=172.18.0.10",
            "--gateway-address",
            "east=gw-east.example.com",
        ])
        .await;
    assert!(out.contains("network east-network announced"), "{out}");
    // Each cluster announces exactly the other network, with the address in spec and in
    // status (written through the status subresource).
    assert_eq!(remote_gateways(&m.west).len(), 1);
    assert_eq!(remote_gateways(&m.east).len(), 1);
    let w = announce(&m.west, "east-network").expect("west announces east");
    assert_eq!(
        shape(&w),
        expected_announce("east-network", "Hostname", "gw-east.example.com")
    );
    let e = announce(&m.east, "west-network").expect("east announces west");
    assert_eq!(
        shape(&e),
        expected_announce("west-network", "IPAddress", "172.18.0.10")
    );

    // The gateway serves both protocols: Service 15443 and 15008, the HBONE args and volumes
    // (its certificate from istiod, which knows the cluster by its name).
    for (s, cluster) in [(&m.west, "west"), (&m.east, "east")] {
        let svc = s
            .store()
            .get(
                "v1",
                "Service",
                Some("istio-system"),
                "istio-eastwestgateway",
            )
            .unwrap();
        let ports: Vec<(String, u64, Value)> = svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_string(),
                    p["port"].as_u64().unwrap(),
                    p["appProtocol"].clone(),
                )
            })
            .collect();
        assert_eq!(
            ports,
            vec![
                ("status-port".into(), 15021, Value::Null),
                ("tls".into(), 15443, Value::Null),
                ("mesh".into(), 15008, json!("hbone")),
            ]
        );
        let d = gateway_deployment(s);
        let pod = &d["spec"]["template"]["spec"];
        let args: Vec<&str> = pod["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let joined = args.join(" ");
        assert!(joined.contains("--listen :15443"), "{joined}");
        assert!(
            joined.contains(&format!("--cluster-id {cluster} ")),
            "{joined}"
        );
        assert!(
            joined.contains(
                "--hbone-listen :15008 --ca-address istiod.istio-system.svc:15012 \
                 --ca-root /var/run/secrets/istio/root-cert.pem \
                 --ca-token /var/run/secrets/tokens/istio-token --trust-domain cluster.local"
            ),
            "{joined}"
        );
        assert_eq!(
            pod["volumes"][0]["configMap"]["name"], "istio-ca-root-cert",
            "istiod's root, as Istio's gateway template mounts it"
        );
        assert_eq!(
            pod["containers"][0]["volumeMounts"][0]["mountPath"],
            "/var/run/secrets/istio"
        );
        assert_eq!(
            pod["volumes"][1]["projected"]["sources"][0]["serviceAccountToken"]["audience"],
            "istio-ca"
        );
        assert_eq!(
            pod["containers"][0]["volumeMounts"][1]["mountPath"],
            "/var/run/secrets/tokens"
        );
    }

    // A second run changes nothing.
    let (w1, e1) = m.settled_snapshots().await;
    m.join(&[
        "--ambient",
        "--gateway-address",
        "west=172.18.0.10",
        "--gateway-address",
        "east=gw-east.example.com",
    ])
    .await;
    assert_eq!(snapshot(&m.west), w1);
    assert_eq!(snapshot(&m.east), e1);

    m.ok(&[
        "unjoin",
        "--kubeconfig",
        m.kc(),
        "--context",
        "west",
        "--context",
        "east",
    ])
    .await;
    assert!(remote_gateways(&m.west).is_empty());
    assert!(remote_gateways(&m.east).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_ambient_uses_the_load_balancer_address_once_there_is_one() {
    let m = ambient_mesh().await;
    let out = meshctl(&m.join_args(&["--ambient"])).await;
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains("network east-network not announced") && t.contains("--gateway-address east="),
        "{t}"
    );
    assert!(remote_gateways(&m.west).is_empty());
    m.make_gateways_ready();
    m.join(&["--ambient"]).await;
    let w = announce(&m.west, "east-network").expect("announced");
    assert_eq!(
        shape(&w),
        expected_announce("east-network", "IPAddress", "172.18.0.20")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_ambient_dry_run_shows_the_announcements_and_changes_nothing() {
    let m = ambient_mesh().await;
    let (w0, e0) = m.settled_snapshots().await;
    let out = m
        .join(&[
            "--ambient",
            "--dry-run",
            "--gateway-address",
            "west=172.18.0.10",
            "--gateway-address",
            "east=172.18.0.20",
        ])
        .await;
    assert!(out.contains("name: meshctl-remote-east-network"), "{out}");
    assert!(out.contains("name: meshctl-remote-west-network"), "{out}");
    assert!(out.contains("gatewayClassName: istio-remote"), "{out}");
    assert!(!out.contains("BEGIN PRIVATE KEY"), "{out}");
    assert_eq!(snapshot(&m.west), w0);
    assert_eq!(snapshot(&m.east), e0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_ambient_refuses_without_the_gateway_api_and_changes_nothing() {
    let m = mesh().await;
    install_gateway_api(&m.west);
    let (w0, e0) = m.settled_snapshots().await;
    let out = m
        .fails(&m.join_certs_args(&["--allow-loopback-server", "--ambient"]))
        .await;
    assert!(
        out.contains("gateways.gateway.networking.k8s.io") && out.contains("\"east\""),
        "{out}"
    );
    assert_eq!(snapshot(&m.west), w0);
    assert_eq!(snapshot(&m.east), e0);
    // A bad address is refused before anything is read (a usage error, exit 2).
    let out =
        meshctl(&m.join_certs_args(&["--ambient", "--gateway-address", "east=10.0.0.1:15008"]))
            .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = text(&out);
    assert!(
        out.contains("expected an IP address or a DNS name"),
        "{out}"
    );
    let out = meshctl(&m.join_certs_args(&["--gateway-address", "east=10.0.0.1"])).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = text(&out);
    assert!(out.contains("add --ambient"), "{out}");
    assert_eq!(snapshot(&m.west), w0);
    assert_eq!(snapshot(&m.east), e0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_manifest_protocols() {
    async fn ports(proto: &str) -> Vec<u64> {
        let out = meshctl(&[
            "gateway",
            "manifest",
            "--network",
            "n1",
            "--protocols",
            proto,
            "-o",
            "json",
        ])
        .await;
        let items = manifest_items(&out);
        let svc = items
            .iter()
            .find(|o| o["kind"] == "Service")
            .unwrap()
            .clone();
        svc["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["port"].as_u64().unwrap())
            .collect::<Vec<_>>()
    }
    assert_eq!(ports("classic").await, [15021, 15443]);
    assert_eq!(ports("both").await, [15021, 15443, 15008]);
    assert_eq!(ports("ambient").await, [15021, 15008]);
    // The default stays classic: no certificate Secret is needed.
    let out = meshctl(&["gateway", "manifest", "--network", "n1"]).await;
    let t = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!t.contains("15008") && !t.contains("hbone"), "{t}");
    let out = meshctl(&[
        "gateway",
        "manifest",
        "--network",
        "n1",
        "--protocols",
        "both",
        "--trust-domain",
        "Bad Domain",
    ])
    .await;
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(text(&out).contains("--trust-domain"), "{}", text(&out));

    // HBONE certificates: from istiod by default, files from the Secret when asked.
    let pod_of = |out: &std::process::Output| {
        assert!(out.status.success(), "{}", text(out));
        let objs: Value = serde_json::from_slice(&out.stdout).unwrap();
        let items = objs
            .as_array()
            .cloned()
            .unwrap_or_else(|| objs["items"].as_array().unwrap().clone());
        let d = items.iter().find(|o| o["kind"] == "Deployment").unwrap();
        d["spec"]["template"]["spec"].clone()
    };
    let manifest = |extra: &[&str]| {
        let mut argv = vec![
            "gateway",
            "manifest",
            "--network",
            "n1",
            "--protocols",
            "ambient",
        ];
        argv.extend_from_slice(extra);
        argv.extend(["-o", "json"]);
        argv.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let args_of = |pod: &Value| {
        pod["containers"][0]["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let argv = manifest(&["--cluster-id", "east"]);
    let pod = pod_of(&meshctl(&argv.iter().map(String::as_str).collect::<Vec<_>>()).await);
    let args = args_of(&pod);
    assert!(
        args.contains("--ca-root /var/run/secrets/istio/root-cert.pem")
            && args.contains("--cluster-id east")
            && !args.contains("--hbone-certs"),
        "{args}"
    );
    assert_eq!(pod["volumes"][0]["configMap"]["name"], "istio-ca-root-cert");
    let argv = manifest(&["--hbone-certs", "files"]);
    let pod = pod_of(&meshctl(&argv.iter().map(String::as_str).collect::<Vec<_>>()).await);
    let args = args_of(&pod);
    assert!(
        args.contains("--hbone-certs /etc/istio/hbone-certs") && !args.contains("--ca-root"),
        "{args}"
    );
    assert_eq!(
        pod["volumes"][0]["secret"]["secretName"],
        "istio-eastwestgateway-hbone-certs"
    );
    // The key is readable by the gateway's user: the kubelet gives a Secret volume's files
    // to the pod's fsGroup only, root's otherwise (found by an audit session: 0400 without an
    // fsGroup, so the gateway could not open key.pem).
    assert_eq!(pod["volumes"][0]["secret"]["defaultMode"], 0o440);
    assert_eq!(pod["securityContext"]["fsGroup"], 65532);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
}

/// istiod as Istio's chart deploys it, with the multi-network ambient setting `on`.
fn istiod(s: &TestApiServer, on: &str) {
    s.store().apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "istiod", "namespace": "istio-system", "labels": {"app": "istiod"}},
        "spec": {"selector": {"matchLabels": {"app": "istiod"}},
            "template": {"metadata": {"labels": {"app": "istiod"}},
                "spec": {"containers": [{"name": "discovery", "image": "docker.io/istio/pilot:1.28.0",
                    "env": [{"name": "AMBIENT_ENABLE_MULTI_NETWORK", "value": on}]}]}}}})).unwrap();
}

/// The gateway's HBONE Secret, issued by `meshctl certs workload` from `cluster`'s CA for
/// service account `sa`.
async fn hbone_secret(m: &Mesh, s: &TestApiServer, cluster: &str, sa: &str) {
    use base64::Engine as _;
    let out = m.dir.path().join(format!("hbone-{cluster}-{sa}"));
    m.ok(&workload_args(
        &m.certs.join(cluster),
        "istio-system",
        sa,
        &out,
        &["--force"],
    ))
    .await;
    let b64 = |f: &str| {
        base64::engine::general_purpose::STANDARD.encode(std::fs::read(out.join(f)).unwrap())
    };
    s.store()
        .apply(json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "istio-eastwestgateway-hbone-certs", "namespace": "istio-system"},
            "data": {"cert-chain.pem": b64("cert-chain.pem"), "key.pem": b64("key.pem"), "root-cert.pem": b64("root-cert.pem")}}))
        .unwrap();
}

fn global_service(s: &TestApiServer, name: &str) {
    s.store()
        .apply(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "labels": {"istio.io/global": "true"}},
        "spec": {"ports": [{"port": 80}]}}))
        .unwrap();
}

async fn check(m: &Mesh) -> (i32, Vec<Value>) {
    check_json(m.kc(), &[], false).await
}

const AMBIENT_CHECKS: [&str; 4] = [
    "istiod ambient multi-network",
    "gateway HBONE identity",
    "peer networks announced",
    "waypoints of global services",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_on_a_good_ambient_setup_and_names_each_broken_item() {
    let m = ambient_mesh().await;
    // File certificates: the check reads the Secret (with istiod it has nothing to read).
    m.join(&["--ambient", "--hbone-certs", "files"]).await;
    m.make_gateways_ready();
    m.join(&["--ambient", "--hbone-certs", "files"]).await;
    for (s, c) in [(&m.west, "west"), (&m.east, "east")] {
        istiod(s, "true");
        hbone_secret(&m, s, c, "istio-eastwestgateway").await;
        global_service(s, "catalog");
    }
    let (code, items) = check(&m).await;
    let bad: Vec<&Value> = items.iter().filter(|i| i["status"] != "pass").collect();
    assert_eq!(code, 0, "{bad:#?}");
    assert!(bad.is_empty(), "{bad:#?}");
    for scope in ["cluster west", "cluster east"] {
        for name in AMBIENT_CHECKS {
            assert_eq!(
                item(&items, scope, name)["status"],
                "pass",
                "{scope} {name}"
            );
        }
    }
    assert_eq!(
        item(&items, "cluster west", "peer networks announced")["detail"],
        "east-network at 172.18.0.20"
    );
    assert_eq!(
        item(&items, "cluster east", "gateway HBONE identity")["detail"],
        "spiffe://cluster.local/ns/istio-system/sa/istio-eastwestgateway"
    );

    // Broken, one item each.
    istiod(&m.east, "false");
    hbone_secret(&m, &m.west, "west", "someone-else").await;
    global_service(&m.west, "webapp");
    // East binds every Service of `default` to a waypoint, catalog included.
    let mut ns = m
        .east
        .store()
        .get("v1", "Namespace", None, "default")
        .unwrap();
    ns["metadata"]["labels"]["istio.io/use-waypoint"] = json!("wp");
    m.east.store().apply(ns).unwrap();
    let mut gw = announce(&m.east, "west-network").unwrap();
    gw["metadata"]["annotations"]["gateway.istio.io/service-account"] = json!("other-sa");
    m.east.store().apply(gw).unwrap();
    let mut gw = announce(&m.west, "east-network").unwrap();
    gw["status"] = json!({});
    m.west.store().apply(gw).unwrap();

    let (code, items) = check(&m).await;
    assert_eq!(code, 1);
    let failing = |scope: &str, name: &str| {
        let i = item(&items, scope, name);
        assert_eq!(i["status"], "fail", "{i}");
        assert!(i["hint"].as_str().is_some_and(|h| !h.is_empty()), "{i}");
        i["detail"].as_str().unwrap().to_string()
    };
    let d = failing("cluster east", "istiod ambient multi-network");
    assert!(
        d.contains("AMBIENT_ENABLE_MULTI_NETWORK is not true on istiod"),
        "{d}"
    );
    assert_eq!(
        item(&items, "cluster west", "istiod ambient multi-network")["status"],
        "pass"
    );
    let d = failing("cluster west", "gateway HBONE identity");
    assert!(
        d.contains("peers expect spiffe://cluster.local/ns/istio-system/sa/istio-eastwestgateway")
            && d.contains("sa/someone-else"),
        "{d}"
    );
    let d = failing("cluster east", "peer networks announced");
    assert!(
        d.contains("network west-network") && d.contains("sa/other-sa"),
        "{d}"
    );
    let d = failing("cluster west", "peer networks announced");
    assert!(d.contains("has no status.addresses"), "{d}");
    let w = item(&items, "cluster east", "waypoints of global services");
    assert_eq!(w["status"], "warn");
    assert_eq!(
        w["detail"],
        "bound to a waypoint that is not ready (no status.addresses, or no such Gateway): \
         default/catalog (its namespace's istio.io/use-waypoint=wp, Gateway default/wp)"
    );
    assert!(
        w["hint"]
            .as_str()
            .unwrap()
            .contains("without the waypoint's policy"),
        "{w}"
    );
    assert_eq!(
        item(&items, "cluster west", "waypoints of global services")["status"],
        "pass"
    );
    // With the waypoint deployed (a Gateway with addresses), istiod and the gateway use it.
    m.east.store().apply(ready_waypoint("wp")).unwrap();
    let (_, items) = check(&m).await;
    let w = item(&items, "cluster east", "waypoints of global services");
    assert_eq!(w["status"], "pass");
    assert_eq!(
        w["detail"],
        "through their waypoints: default/catalog (its namespace's istio.io/use-waypoint=wp, \
         Gateway default/wp)"
    );
    // A canary named with the namespace's waypoint: warned of until its Gateway is ready.
    let mut ns = m
        .east
        .store()
        .get("v1", "Namespace", None, "default")
        .unwrap();
    ns["metadata"]["labels"]["istio.io/use-waypoint-canary"] = json!("wp2");
    ns["metadata"]["annotations"] = json!({"istio.io/use-waypoint-canary-weight": "10"});
    m.east.store().apply(ns).unwrap();
    let (_, items) = check(&m).await;
    let w = item(&items, "cluster east", "waypoints of global services");
    assert_eq!(w["status"], "warn", "{w}");
    assert_eq!(
        w["detail"],
        "canary waypoint takes nothing: default/catalog (canary Gateway default/wp2: not ready \
         (no status.addresses, or no such Gateway))"
    );
    m.east.store().apply(ready_waypoint("wp2")).unwrap();
    let (_, items) = check(&m).await;
    let w = item(&items, "cluster east", "waypoints of global services");
    assert_eq!(w["status"], "pass", "{w}");
    assert_eq!(
        w["detail"],
        "through their waypoints: default/catalog (its namespace's istio.io/use-waypoint=wp, \
         Gateway default/wp), canary Gateway default/wp2 at 10%"
    );
    let w = item(&items, "mesh", "global services on every side");
    assert_eq!(w["status"], "warn");
    assert_eq!(
        w["detail"],
        "global on one side only: default/webapp (missing in east)"
    );
}

/// Waypoint `name` in `default` as istiod leaves it once deployed: a Gateway with addresses.
fn ready_waypoint(name: &str) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"gatewayClassName": "istio-waypoint",
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}]},
        "status": {"addresses": [{"type": "Hostname",
            "value": format!("{name}.default.svc.cluster.local")}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_adds_no_ambient_items_to_a_classic_mesh() {
    let m = mesh().await;
    m.join(&[]).await;
    m.make_gateways_ready();
    let (code, items) = check(&m).await;
    assert_eq!(code, 0, "{items:#?}");
    for i in &items {
        let name = i["check"].as_str().unwrap();
        assert!(
            !AMBIENT_CHECKS.contains(&name) && name != "global services on every side",
            "{i}"
        );
    }
}

/// The objects `gateway manifest -o json` printed (a list, or a `List`'s items).
fn manifest_items(out: &std::process::Output) -> Vec<Value> {
    assert!(out.status.success(), "{}", text(out));
    let objs: Value = serde_json::from_slice(&out.stdout).unwrap();
    objs.as_array()
        .cloned()
        .unwrap_or_else(|| objs["items"].as_array().unwrap().clone())
}

/// Istio in another namespace: its root namespace (where mesh-wide DestinationRules live) is
/// that one by default, so the gateway is told; in istio-system its arguments stay as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_manifest_names_another_root_namespace() {
    let args_in = |ns: &'static str| async move {
        let out = meshctl(&[
            "gateway",
            "manifest",
            "--network",
            "n1",
            "-n",
            ns,
            "-o",
            "json",
        ])
        .await;
        let items = manifest_items(&out);
        let d = items.iter().find(|o| o["kind"] == "Deployment").unwrap();
        let args = &d["spec"]["template"]["spec"]["containers"][0]["args"];
        args.as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let other = args_in("mesh-system").await;
    let at = other.iter().position(|a| a == "--root-namespace").unwrap();
    assert_eq!(other[at + 1], "mesh-system");
    assert!(
        !args_in("istio-system")
            .await
            .contains(&"--root-namespace".to_string())
    );
}

/// The gateway knows its node (downward API), for Services with `internalTrafficPolicy: Local`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_manifest_gives_the_gateway_its_node() {
    let out = meshctl(&["gateway", "manifest", "--network", "n1", "-o", "json"]).await;
    let items = manifest_items(&out);
    let d = items.iter().find(|o| o["kind"] == "Deployment").unwrap();
    let env = d["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    let node = env
        .iter()
        .find(|e| e["name"] == "GATEWAY_NODE_NAME")
        .unwrap();
    assert_eq!(node["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
}
