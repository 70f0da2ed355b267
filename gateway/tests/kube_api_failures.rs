//! Kubernetes discovery while the API server answers but fails (the TEST SERVER's injected
//! 503s): the watches notice within seconds, the last table keeps serving and the gateway
//! stays ready, and everything is current again once the server recovers.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use gateway::app;
use k8s_test_server::{Fault, FaultRule, Options, TestApiServer, namespace_json};
use testkit::k8s;
use testkit::wait::eventually;

const NS: &str = testkit::mesh::NAMESPACE;
const STALE: &str = "gateway_discovery_route_table_stale_seconds";

async fn metrics(admin: SocketAddr) -> String {
    http_get(admin, "/metrics").await.1
}

#[tokio::test]
async fn failing_watches_show_as_stale_within_seconds_while_the_last_table_serves() {
    init();
    let mut opts = Options::new("east");
    opts.store.allow_loopback_endpoint_addresses = true;
    let api = TestApiServer::start_with(opts).await.unwrap();
    api.store().create(namespace_json(NS)).unwrap();
    let (b, port) = backends(&["a"]).await;
    let svc_port = k8s::ServicePort {
        name: "http",
        port: 80,
        target_port: 9080,
    };
    api.store()
        .create(k8s::service(NS, "catalog", &[svc_port]))
        .unwrap();
    let slice = k8s::one_endpoint_slice(NS, "catalog", ("http", port), b[0].addr.ip(), "pa");
    api.store().create(k8s::sidecar_pod(NS, "pa", &[])).unwrap();
    api.store().create(slice).unwrap();

    let (_dir, cfg) = kube_test_config(&api.kubeconfig("east"), |_| {});
    let gw = app::build(cfg).await.unwrap();
    let (listen, admin) = (gw.listen_addr, gw.admin_addr);
    let served = || async move { call(listen, &sni(80, "", CATALOG)).await.is_ok() };
    eventually("catalog served", TIMEOUT, served).await;

    // Every list and watch now fails with 503, and the open watches end as at their
    // timeout, so each must list or watch again.
    for verb in ["list", "watch"] {
        api.faults()
            .inject(FaultRule::new(Fault::Unavailable).verb(verb));
    }
    let failing = Instant::now();
    api.end_watches();
    eventually(
        "stale_seconds >= 1",
        Duration::from_secs(8),
        || async move { metric(&metrics(admin).await, STALE) >= 1.0 },
    )
    .await;
    println!(
        "staleness shown {:?} after the failures began",
        failing.elapsed()
    );
    assert!(api.faults().injected() > 0);
    // The last table keeps serving, and the gateway stays ready with it.
    assert!(served().await, "the last table keeps serving");
    assert_eq!(http_get(admin, "/healthz/ready").await.0, 200);
    let errors = metric(
        &metrics(admin).await,
        "gateway_discovery_route_table_last_reload_ok",
    );
    assert_eq!(
        errors, 1.0,
        "no update was rejected: the table is only stale"
    );

    api.faults().clear();
    eventually("stale_seconds back to 0", TIMEOUT, || async move {
        metric(&metrics(admin).await, STALE) == 0.0
    })
    .await;
    assert!(served().await);
}
