//! A DestinationRule's connection pool (connect timeout, connection limit, TCP keepalive),
//! outlier detection, load balancer, idle timeout and connection lifetime at the gateway, as
//! istiod applies them to its passthrough gateway (`applyTrafficPolicy` on the SNI-DNAT
//! clusters, the TCP proxies' timeouts), through the in-process Kubernetes API TEST SERVER
//! with Istio's DestinationRule CRD: the gateway runs in process (`app::build` on
//! 127.0.0.1:0), the catalog's endpoints are an mTLS test backend on 127.0.0.2, a closed port
//! on 127.0.0.9, and a listener on 127.0.0.10 whose accept queue is full (the kernel drops the
//! SYNs it gets, so a connect there hangs).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use gateway::config::Config;
use k8s_test_server::{Options, TestApiServer, namespace_json};
use serde_json::{Value, json};
use testkit::k8s;
use testkit::wait::eventually;

const NS: &str = testkit::mesh::NAMESPACE;
const WAIT: Duration = Duration::from_secs(10);
const DR: (&str, &str) = ("networking.istio.io/v1", "DestinationRule");

async fn api_server() -> TestApiServer {
    init();
    let mut opts = Options::new("east");
    opts.destination_rule_crd = true;
    // The endpoints are on 127.0.0.x; a real API server would refuse these slices.
    opts.store.allow_loopback_endpoint_addresses = true;
    let api = TestApiServer::start_with(opts).await.unwrap();
    api.store().create(namespace_json(NS)).unwrap();
    api
}

async fn kube_gateway(api: &TestApiServer, tweak: impl FnOnce(&mut Config)) -> KubeGw {
    kube_gateway_ready(&api.kubeconfig("east"), tweak).await
}

/// The catalog (port `http` 80 targeting `port`), one injected Pod per endpoint.
fn seed_catalog(api: &TestApiServer, port: u16, eps: &[(IpAddr, &str)]) {
    let st = api.store();
    let svc_port = k8s::ServicePort {
        name: "http",
        port: 80,
        target_port: port,
    };
    st.create(k8s::service(NS, "catalog", &[svc_port])).unwrap();
    for (_, pod) in eps {
        st.create(k8s::sidecar_pod(NS, pod, &[("app", "catalog")]))
            .unwrap();
    }
    let eps: Vec<k8s::Endpoint> = (eps.iter())
        .map(|&(address, pod)| k8s::Endpoint {
            address,
            ready: true,
            pod,
        })
        .collect();
    let slice = k8s::endpoint_slice(NS, "catalog-1", "catalog", ("http", port), "test", &eps);
    st.create(slice).unwrap();
}

/// The catalog's DestinationRule with this `trafficPolicy` and a subset `all`, by which a
/// test sees that the gateway has read it.
fn rule(policy: Value) -> Value {
    json!({"apiVersion": DR.0, "kind": DR.1,
        "metadata": {"name": "catalog", "namespace": NS},
        "spec": {"host": "catalog", "trafficPolicy": policy,
            "subsets": [{"name": "all", "labels": {}}]}})
}

/// The catalog on one backend ("a"), its rule with `policy`, and a gateway (`tweak`ed) that
/// has read the rule. The API server and backends live as long as the caller keeps them.
async fn catalog_on_a(
    policy: Value,
    tweak: impl FnOnce(&mut Config),
) -> (TestApiServer, Vec<Backend>, KubeGw) {
    let api = api_server().await;
    let (b, port) = backends(&["a"]).await;
    seed_catalog(&api, port, &[(b[0].addr.ip(), "pa")]);
    api.store().create(rule(policy)).unwrap();
    let gw = kube_gateway(&api, tweak).await;
    rule_seen(&gw).await;
    (api, b, gw)
}

/// The catalog's endpoints in `/debug/routes`, by address.
async fn endpoints(gw: &KubeGw) -> Vec<Value> {
    let (_, body) = http_get(gw.bound.admin_addr, "/debug/routes?host=catalog.").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    v["routes"][0]["endpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn rule_seen(gw: &KubeGw) {
    routes_show(gw.bound.admin_addr, "the rule's subset routed", r#""all""#).await;
}

/// Waits until the catalog's `/debug/routes` shows `needle`.
async fn routes_show(admin: SocketAddr, what: &str, needle: &'static str) {
    eventually(what, WAIT, || async move {
        let (_, body) = http_get(admin, "/debug/routes?host=catalog.").await;
        body.contains(needle)
    })
    .await;
}

/// A rule's `outlierDetection` ejects at its own count where the gateway's flags would not
/// (here 1,000 failures), and without one the flags apply again. Before, only the flags
/// counted.
#[tokio::test]
async fn a_rules_outlier_detection_ejects_at_its_own_count() {
    let api = api_server().await;
    let (b, port) = backends(&["a"]).await;
    let dead: IpAddr = [127, 0, 0, 9].into();
    seed_catalog(&api, port, &[(b[0].addr.ip(), "pa"), (dead, "pb")]);
    let od = json!({"consecutive5xxErrors": 1, "maxEjectionPercent": 100,
        "baseEjectionTime": "1h"});
    api.store()
        .create(rule(json!({"outlierDetection": od})))
        .unwrap();
    let gw = kube_gateway(&api, |c| c.outlier.consecutive_failures = 1_000).await;
    rule_seen(&gw).await;
    let catalog = sni(80, "", CATALOG);
    // Every connection is answered: one that meets the closed port retries on "a".
    for _ in 0..30 {
        assert_eq!(
            who(gw.bound.listen_addr, &catalog).await.as_deref(),
            Some("a")
        );
    }
    let eps = endpoints(&gw).await;
    let at = |ip: IpAddr| {
        let addr = SocketAddr::new(ip, port).to_string();
        eps.iter()
            .find(|e| e["address"] == addr.as_str())
            .cloned()
            .unwrap()
    };
    assert_eq!(at(dead)["ejected"], true, "{eps:?}");
    // `/debug/routes` shows the rule's detection as Envoy would apply it.
    let (_, body) = http_get(gw.bound.admin_addr, "/debug/routes?host=catalog.").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    let want = json!({"consecutive_failures": 1, "base_ejection_ms": 3_600_000,
        "max_ejection_ms": 3_600_000, "max_ejection_percent": 100, "min_health_percent": 0});
    assert_eq!(v["routes"][0]["outlier_detection"], want, "{body}");
    assert_eq!(at(b[0].addr.ip())["ejected"], false);

    // Without the rule's detection a second closed port is never ejected: its failures add up.
    let dead2: IpAddr = [127, 0, 0, 8].into();
    let st = api.store();
    st.apply(rule(json!({}))).unwrap();
    st.create(k8s::sidecar_pod(NS, "pc", &[("app", "catalog")]))
        .unwrap();
    let eps3 = [(b[0].addr.ip(), "pa"), (dead, "pb"), (dead2, "pc")];
    let eps3: Vec<k8s::Endpoint> = (eps3.iter())
        .map(|&(address, pod)| k8s::Endpoint {
            address,
            ready: true,
            pod,
        })
        .collect();
    st.apply(k8s::endpoint_slice(
        NS,
        "catalog-1",
        "catalog",
        ("http", port),
        "test",
        &eps3,
    ))
    .unwrap();
    let admin = gw.bound.admin_addr;
    routes_show(admin, "three endpoints listed", "127.0.0.8").await;
    for _ in 0..30 {
        assert_eq!(
            who(gw.bound.listen_addr, &catalog).await.as_deref(),
            Some("a")
        );
    }
    let eps = endpoints(&gw).await;
    let second = eps
        .iter()
        .find(|e| e["address"] == SocketAddr::new(dead2, port).to_string().as_str())
        .unwrap();
    assert_eq!(second["ejected"], false, "{eps:?}");
    assert!(
        second["consecutive_failures"].as_u64().unwrap() > 1,
        "{eps:?}"
    );
}

/// A rule's `connectionPool.tcp.connectTimeout` bounds each connect attempt of its routes in
/// place of `--connect-timeout` (here 20 s): an endpoint that never answers the handshake is
/// given up after the rule's 300 ms.
#[tokio::test]
async fn a_rules_connect_timeout_bounds_each_attempt() {
    let api = api_server().await;
    let silent = silent_listener([127, 0, 0, 10].into());
    let port = silent.addr.port();
    seed_catalog(&api, port, &[(silent.addr.ip(), "pa")]);
    let pool = json!({"tcp": {"connectTimeout": "300ms"}});
    api.store()
        .create(rule(json!({"connectionPool": pool})))
        .unwrap();
    let gw = kube_gateway(&api, |c| c.connect_timeout = Duration::from_secs(20)).await;
    rule_seen(&gw).await;
    let (_, body) = http_get(gw.bound.admin_addr, "/debug/routes?host=catalog.").await;
    assert!(body.contains(r#""connect_timeout_ms": 300"#), "{body}");
    let started = Instant::now();
    assert_eq!(who(gw.bound.listen_addr, &sni(80, "", CATALOG)).await, None);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "refused after {took:?}"
    );
}

/// A rule's top-level `connectionPool.tcp.idleTimeout` ends its routes' quiet connections in
/// place of `--idle-timeout` (here an hour), subsets included, as istiod gives it to every
/// passthrough filter chain of the host.
#[tokio::test]
async fn a_rules_idle_timeout_ends_quiet_connections() {
    use tokio::io::AsyncReadExt;
    let pool = json!({"tcp": {"idleTimeout": "1s"}});
    let (_api, _b, gw) = catalog_on_a(json!({"connectionPool": pool}), |c| {
        c.idle_timeout = Duration::from_secs(3600)
    })
    .await;
    let (_, body) = http_get(gw.bound.admin_addr, "/debug/routes?host=catalog.").await;
    assert!(body.contains(r#""idle_timeout_ms": 1000"#), "{body}");
    for subset in ["", "all"] {
        let (mut conn, line) = open(
            gw.bound.listen_addr,
            &sni(80, subset, CATALOG),
            default_client(),
        )
        .await
        .unwrap();
        assert!(line.starts_with('a'), "{line}");
        let started = Instant::now();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "subset {subset:?}: still open after 10 s");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(800) && took < Duration::from_secs(5),
            "subset {subset:?}: closed after {took:?}"
        );
    }
}

/// A rule's `maxConnections` is Envoy's circuit breaker on the cluster: past it a new
/// connection is closed at once (`upstream_overflow`), and a place freed is taken again.
#[tokio::test]
async fn a_rules_max_connections_close_connections_past_them() {
    let pool = json!({"tcp": {"maxConnections": 2}});
    let (_api, _b, gw) = catalog_on_a(json!({"connectionPool": pool}), |_| {}).await;
    let catalog = sni(80, "", CATALOG);
    let (gw_addr, admin) = (gw.bound.listen_addr, gw.bound.admin_addr);
    let first = open(gw_addr, &catalog, default_client()).await.unwrap();
    let second = open(gw_addr, &catalog, default_client()).await.unwrap();
    let (_, body) = http_get(admin, "/debug/routes?host=catalog.").await;
    assert!(body.contains(r#""max_connections": 2"#), "{body}");
    assert!(body.contains(r#""open_connections": 2"#), "{body}");
    let started = Instant::now();
    assert_eq!(who(gw_addr, &catalog).await, None, "a third is refused");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "at once, not after a timeout"
    );
    assert_eq!(rejected(admin, "upstream_overflow").await, 1.0);
    // The subset is its own cluster with its own count (the rule's pool applies there too),
    // shown apart.
    assert_eq!(
        who(gw_addr, &sni(80, "all", CATALOG)).await.as_deref(),
        Some("a")
    );
    let (_, body) = http_get(admin, "/debug/routes?host=catalog.").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    let all = &v["routes"][0]["subset_policies"]["all"];
    assert_eq!(all["max_connections"], 2, "{body}");
    drop(first);
    eventually("a place freed", WAIT, || async {
        who(gw_addr, &catalog).await.as_deref() == Some("a")
    })
    .await;
    drop(second);
    routes_show(admin, "the count back to 0", r#""open_connections": 0"#).await;
}

/// A rule's `maxConnectionDuration` closes a connection that long after it came, busy or
/// not, as Envoy's TCP proxy does (`max_downstream_connection_duration`).
#[tokio::test]
async fn a_rules_max_connection_duration_cuts_a_busy_connection() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let pool = json!({"tcp": {"maxConnectionDuration": "1s"}});
    let (_api, _b, gw) = catalog_on_a(json!({"connectionPool": pool}), |c| {
        c.idle_timeout = Duration::from_secs(3600)
    })
    .await;
    let (_, body) = http_get(gw.bound.admin_addr, "/debug/routes?host=catalog.").await;
    assert!(
        body.contains(r#""max_connection_duration_ms": 1000"#),
        "{body}"
    );
    let catalog = sni(80, "", CATALOG);
    let started = Instant::now();
    let (mut conn, line) = open(gw.bound.listen_addr, &catalog, default_client())
        .await
        .unwrap();
    assert!(line.starts_with('a'), "{line}");
    // An echo every 50 ms: never idle, yet cut at the rule's second.
    let mut echoes = 0;
    let ended = loop {
        assert!(echoes < 200, "still open after {:?}", started.elapsed());
        let mut back = String::new();
        let echoed = async {
            conn.get_mut().write_all(b"ping\n").await?;
            conn.get_mut().flush().await?;
            conn.read_line(&mut back).await
        };
        match tokio::time::timeout(Duration::from_secs(5), echoed).await {
            Ok(Ok(n)) if n > 0 => echoes += 1,
            _ => break started.elapsed(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(echoes >= 5, "{echoes} echoes before the end");
    assert!(
        ended >= Duration::from_millis(900) && ended < Duration::from_secs(4),
        "closed after {ended:?}"
    );
    let series =
        format!("gateway_connections_closed_total{{sni=\"{catalog}\",outcome=\"max_duration\"}}");
    let admin = gw.bound.admin_addr;
    eventually("counted as max_duration", WAIT, || {
        let series = series.clone();
        async move {
            let (_, body) = http_get(admin, "/metrics").await;
            metric(&body, &series) == 1.0
        }
    })
    .await;
}

/// A rule's `loadBalancer`: `ROUND_ROBIN` takes the endpoints in turn, and a
/// `consistentHash` on the source address keeps a client on one endpoint.
#[tokio::test]
async fn a_rules_load_balancer_picks_in_turn_or_by_the_clients_address() {
    let api = api_server().await;
    let (b, port) = backends(&["a", "b", "c"]).await;
    let eps: Vec<(IpAddr, &str)> = b
        .iter()
        .zip(["pa", "pb", "pc"])
        .map(|(b, p)| (b.addr.ip(), p))
        .collect();
    seed_catalog(&api, port, &eps);
    api.store()
        .create(rule(json!({"loadBalancer": {"simple": "ROUND_ROBIN"}})))
        .unwrap();
    let gw = kube_gateway(&api, |_| {}).await;
    rule_seen(&gw).await;
    let (gw_addr, admin) = (gw.bound.listen_addr, gw.bound.admin_addr);
    let (_, body) = http_get(admin, "/debug/routes?host=catalog.").await;
    assert!(body.contains(r#""load_balancer": "ROUND_ROBIN""#), "{body}");
    let catalog = sni(80, "", CATALOG);
    let mut seen = Vec::new();
    for _ in 0..9 {
        seen.push(who(gw_addr, &catalog).await.unwrap());
    }
    // Each turn of three takes each endpoint once (the least-connections pick, with no
    // connection open, would draw two at random each time).
    for turn in seen.chunks(3) {
        let mut names = turn.to_vec();
        names.sort();
        assert_eq!(names, ["a", "b", "c"], "{seen:?}");
    }

    let hash = json!({"consistentHash": {"useSourceIp": true}});
    api.store()
        .apply(rule(json!({"loadBalancer": hash})))
        .unwrap();
    routes_show(
        admin,
        "the hash read",
        r#""load_balancer": "SOURCE_IP_HASH""#,
    )
    .await;
    let first = who(gw_addr, &catalog).await.unwrap();
    for _ in 0..15 {
        assert_eq!(who(gw_addr, &catalog).await.unwrap(), first);
    }
}

/// A rule's `tcpKeepalive` is set on the gateway's sockets to the endpoints: here the first
/// probe after 300 s of quiet where the gateway's own is 60 s.
#[tokio::test]
async fn a_rules_tcp_keepalive_is_set_on_upstream_sockets() {
    let keepalive = json!({"time": "300s", "interval": "30s", "probes": 3});
    let pool = json!({"tcp": {"tcpKeepalive": keepalive}});
    let (_api, b, gw) = catalog_on_a(json!({"connectionPool": pool}), |_| {}).await;
    let (_, body) = http_get(gw.bound.admin_addr, "/debug/routes?host=catalog.").await;
    let v: Value = serde_json::from_str(&body).unwrap();
    let want = json!({"time_s": 300, "interval_s": 30, "probes": 3});
    assert_eq!(v["routes"][0]["tcp_keepalive"], want, "{body}");
    let backend = b[0].addr;
    let to_backend = move |_: SocketAddr, remote: SocketAddr| remote == backend;
    let (_conn, line) = open(
        gw.bound.listen_addr,
        &sni(80, "", CATALOG),
        default_client(),
    )
    .await
    .unwrap();
    assert!(line.starts_with('a'), "{line}");
    wait_keepalive("the gateway's upstream socket", &to_backend, 1).await;
    let due = keepalive_due(&to_backend);
    assert_eq!(due.len(), 1, "{due:?}");
    assert!(
        due[0] > Duration::from_secs(200),
        "first probe in {:?}",
        due[0]
    );
    // The subset without a rule of its own takes the rule's; a route without any rule
    // would show the gateway's 60 s (`sockets.rs` tests the defaults).
}

/// A listener whose accept queue is full: the kernel drops further SYNs, so a connect to it
/// hangs until the caller gives up.
struct Silent {
    addr: SocketAddr,
    _listener: socket2::Socket,
    _queued: std::net::TcpStream,
}

fn silent_listener(ip: IpAddr) -> Silent {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener.bind(&SocketAddr::new(ip, 0).into()).unwrap();
    // A backlog of 0 holds one connection; nothing accepts it.
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let queued = std::net::TcpStream::connect(addr).unwrap();
    // The queue is full once a second connect hangs.
    let probe = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200));
    assert!(probe.is_err(), "the accept queue of {addr} is not full");
    Silent {
        addr,
        _listener: listener,
        _queued: queued,
    }
}

/// A rule's `warmup` (Envoy's slow start): an endpoint that has just become ready takes a
/// slowed share of new connections (its weight times a factor that grows from the floor,
/// here 5 %, over the window), and its whole share once it has been ready longer than the
/// window. Without the warmup the third endpoint would take a third from the start. The
/// first two must be past their own window first: at the gateway's start every endpoint
/// warms up at once, as in Envoy.
#[tokio::test]
async fn a_rules_warmup_slows_a_new_endpoint_in() {
    let api = api_server().await;
    let (b, port) = backends(&["a", "b", "c"]).await;
    seed_catalog(
        &api,
        port,
        &[(b[0].addr.ip(), "pa"), (b[1].addr.ip(), "pb")],
    );
    let warmup =
        |d: &str| rule(json!({"loadBalancer": {"warmup": {"duration": d, "minimumPercent": 5}}}));
    api.store().create(warmup("8s")).unwrap();
    let gw = kube_gateway(&api, |_| {}).await;
    rule_seen(&gw).await;
    let (gw_addr, admin) = (gw.bound.listen_addr, gw.bound.admin_addr);
    let (_, body) = http_get(admin, "/debug/routes?host=catalog.").await;
    assert!(body.contains(r#""duration_ms": 8000"#), "{body}");
    let ready_for = |eps: &[Value]| -> Vec<u64> {
        eps.iter()
            .filter_map(|e| e["ready_for_ms"].as_u64())
            .collect()
    };
    eventually(
        "a and b past the window",
        Duration::from_secs(20),
        || async {
            let eps = endpoints(&gw).await;
            ready_for(&eps).iter().filter(|&&ms| ms >= 8_000).count() == 2
        },
    )
    .await;
    // The third endpoint becomes ready in a slice of its own.
    let st = api.store();
    st.create(k8s::sidecar_pod(NS, "pc", &[("app", "catalog")]))
        .unwrap();
    let c = k8s::Endpoint {
        address: b[2].addr.ip(),
        ready: true,
        pod: "pc",
    };
    let slice = k8s::endpoint_slice(NS, "catalog-2", "catalog", ("http", port), "test", &[c]);
    st.create(slice).unwrap();
    eventually("three ready endpoints", WAIT, || async {
        ready_for(&endpoints(&gw).await).len() == 3
    })
    .await;
    let catalog = sni(80, "", CATALOG);
    let early = to_c(gw_addr, &catalog).await;
    // c's age when the last of them was routed, by the gateway's clock.
    let age = *ready_for(&endpoints(&gw).await).iter().min().unwrap();
    eprintln!("c took {early} of 120 in its first {age} ms");
    // Until 4 s its factor is at most a half, so its share at most a fifth (24), and on
    // average far less; without the warmup a third (40).
    assert!(
        age < 4_000,
        "the connections took too long to see the window ({age} ms)"
    );
    assert!(early <= 24, "c took {early} of 120 while warming up");
    // With a window shorter than c has been ready for, a third.
    api.store().apply(warmup("1s")).unwrap();
    routes_show(admin, "the shorter window", r#""duration_ms": 1000"#).await;
    let late = to_c(gw_addr, &catalog).await;
    eprintln!("c took {late} of 120 after its warmup");
    assert!(late >= 28, "c took {late} of 120 after its warmup");
}

/// How many of 120 connections to `catalog`, four at a time, backend "c" takes.
async fn to_c(gw: SocketAddr, catalog: &str) -> usize {
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let catalog = catalog.to_owned();
            tokio::spawn(async move {
                let mut hits = 0;
                for _ in 0..30 {
                    hits += usize::from(who(gw, &catalog).await.unwrap() == "c");
                }
                hits
            })
        })
        .collect();
    let mut hits = 0;
    for w in workers {
        hits += w.await.unwrap();
    }
    hits
}
