//! Dual-stack Services from the Kubernetes API TEST SERVER, run as a dual-stack cluster
//! (IPv4 primary): Kubernetes makes one EndpointSlice per family listing the same pods, and
//! each pod must be one endpoint, at the address of its Service's primary family
//! (`ipFamilies[0]`, IPv4 unless the Service asks for IPv6 first); `::1` is the IPv6 loopback.

mod common;

use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use common::*;
use gateway::app;
use k8s_test_server::{Options, TestApiServer, namespace_json};
use serde_json::Value;
use testkit::k8s::{self, Endpoint, ServicePort};
use testkit::wait::eventually;

const NS: &str = testkit::mesh::NAMESPACE;
const REVIEWS: &str = "reviews.istioinaction.svc.cluster.local";
const RATINGS: &str = "ratings.istioinaction.svc.cluster.local";
const WAIT: Duration = Duration::from_secs(10);
const V6_LOOPBACK: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// A slice of `svc` as the EndpointSlice controller makes it, with one endpoint of `pod`.
fn slice(name: &str, svc: &str, port: u16, address: IpAddr, pod: &str) -> Value {
    let ep = Endpoint {
        address,
        ready: true,
        pod,
    };
    let controller = "endpointslice-controller.k8s.io";
    let mut s = k8s::endpoint_slice(NS, name, svc, ("http", port), controller, &[ep]);
    if address.is_ipv6() {
        s["addressType"] = "IPv6".into();
    }
    s
}

#[tokio::test]
async fn a_dual_stack_pod_is_one_endpoint_and_ipv6_endpoints_are_dialed() {
    init();
    let mut opts = Options::new("east");
    // The backends listen on loopback; a real API server would refuse these slices.
    opts.store.allow_loopback_endpoint_addresses = true;
    opts.store.ip_families = &["IPv4", "IPv6"];
    let api = TestApiServer::start_with(opts).await.unwrap();
    let st = api.store();
    st.create(namespace_json(NS)).unwrap();
    // Every pod the slices name, injected: only a sidecar's endpoint takes 15443.
    for pod in ["p1", "r1", "q1"] {
        st.create(k8s::sidecar_pod(NS, pod, &[])).unwrap();
    }
    let v4 = Backend::start("v4", [127, 0, 0, 2].into(), 0)
        .await
        .unwrap();
    let v6 = Backend::start("v6", V6_LOOPBACK, 0).await.unwrap();
    let http = [ServicePort {
        name: "http",
        port: 80,
        target_port: 9080,
    }];
    // catalog: pod p1 has both addresses, one per slice.
    st.create(k8s::service(NS, "catalog", &http)).unwrap();
    st.create(slice(
        "catalog-v4",
        "catalog",
        v4.addr.port(),
        v4.addr.ip(),
        "p1",
    ))
    .unwrap();
    st.create(slice(
        "catalog-v6",
        "catalog",
        v6.addr.port(),
        V6_LOOPBACK,
        "p1",
    ))
    .unwrap();
    // reviews: pod r1 has an IPv6 address only.
    st.create(k8s::service(NS, "reviews", &http)).unwrap();
    st.create(slice(
        "reviews-v6",
        "reviews",
        v6.addr.port(),
        V6_LOOPBACK,
        "r1",
    ))
    .unwrap();

    // ratings: IPv6 first; pod q1 has both addresses.
    let mut ratings = k8s::service(NS, "ratings", &http);
    ratings["spec"]["ipFamilies"] = serde_json::json!(["IPv6", "IPv4"]);
    let ratings = st.create(ratings).unwrap();
    assert_eq!(ratings["spec"]["ipFamilyPolicy"], "RequireDualStack");
    for (name, addr, port) in [
        ("ratings-v4", v4.addr.ip(), v4.addr.port()),
        ("ratings-v6", V6_LOOPBACK, v6.addr.port()),
    ] {
        st.create(slice(name, "ratings", port, addr, "q1")).unwrap();
    }

    let (_dir, cfg) = kube_test_config(&api.kubeconfig("east"), |_| {});
    let gw = app::build(cfg).await.unwrap();
    let routes = gw.routes.clone();
    eventually("both services routed", WAIT, || {
        let routes = routes.clone();
        async move {
            let t = routes.load();
            t.is_some_and(|t| {
                [CATALOG, REVIEWS, RATINGS]
                    .iter()
                    .all(|h| t.lookup(h, 80).is_some())
            })
        }
    })
    .await;
    let table = gw.routes.load().unwrap();
    let eps = |host| -> Vec<String> {
        let r = table.lookup(host, 80).unwrap();
        r.endpoints
            .iter()
            .map(|e| e.state.addr.to_string())
            .collect()
    };
    assert_eq!(
        eps(CATALOG),
        [v4.addr.to_string()],
        "p1 once, at its IPv4 address"
    );
    assert_eq!(
        eps(REVIEWS),
        [v6.addr.to_string()],
        "r1 at its only address"
    );
    assert_eq!(
        eps(RATINGS),
        [v6.addr.to_string()],
        "q1 once, at its IPv6 address"
    );
    let (_, m) = http_get(gw.admin_addr, "/metrics").await;
    assert_eq!(metric(&m, "gateway_discovery_route_table_endpoints"), 3.0);

    for _ in 0..6 {
        assert_eq!(served_by(gw.listen_addr, &sni(80, "", CATALOG)).await, "v4");
    }
    assert_eq!(served_by(gw.listen_addr, &sni(80, "", REVIEWS)).await, "v6");
    assert_eq!(served_by(gw.listen_addr, &sni(80, "", RATINGS)).await, "v6");
    assert_eq!((v4.accepted(), v6.accepted()), (6, 2));
}
