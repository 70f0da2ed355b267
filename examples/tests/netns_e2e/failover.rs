//! Step 4: a dead endpoint is failed over and ejected; locality failover through the gateway.

use testkit::mesh::{CATALOG, SIMPLE_BACKEND, WEBAPP, spiffe_id};
use testkit::prom::series_value;

use crate::caller::{Call, Caller};
use crate::fixture::Mesh;
use crate::{
    ADMIN_PORT, EAST_GW, EAST2_ADMIN_IP, EGW, WEST_BACKEND, WPOD, backend_sni, catalog_sni,
};

pub fn step4_endpoint_failure_and_failover(m: &mut Mesh) {
    println!("== step 4: endpoint failure and failover");
    let webapp = m.caller(WPOD, "west", "webapp");
    let before = failover_counts(m);
    m.proc_mut("catalog-b").kill();
    println!("   killed catalog-b (10.20.0.18:3000); catalog-a (10.20.0.8:3000) remains");
    until_ejected(m, before, "calls, all answered by catalog-a", |i| {
        let c = webapp.call(
            EAST_GW,
            &catalog_sni(),
            &spiffe_id(CATALOG),
            &format!("after-kill-{i}"),
        );
        assert!(
            c.ok,
            "calls must keep succeeding after an endpoint died: {}",
            c.describe()
        );
        let reply = c.reply.unwrap_or_default();
        assert!(
            reply.starts_with("catalog-a:"),
            "only catalog-a is alive: {reply:?}"
        );
    });
    let routes = m
        .http_get(EGW, EAST2_ADMIN_IP, ADMIN_PORT, "/debug/routes")
        .map(|(_, body)| body)
        .unwrap_or_default();
    assert!(
        routes.contains("10.20.0.18"),
        "/debug/routes should list the dead endpoint: {routes}"
    );

    // Locality failover, as a sidecar does it: the local simple-backend first, then the
    // remote cluster through its east-west gateway.
    let (path, c) = call_backend_with_locality_failover(&webapp);
    assert_eq!(path, "local", "{}", c.describe());
    let reply = c.reply.unwrap_or_default();
    assert!(reply.starts_with("simple-backend-west:"), "{reply:?}");
    println!("   before: webapp -> {WEST_BACKEND} (local): {reply}");

    m.proc_mut("simple-backend-west").kill();
    println!("   killed west's simple-backend");
    let opened = format!(
        "gateway_connections_opened_total{{sni=\"{}\"}}",
        backend_sni()
    );
    let before = series_value(&m.metrics(EGW, EAST2_ADMIN_IP), &opened);
    for i in 0..5 {
        let (path, c) = call_backend_with_locality_failover(&webapp);
        assert!(c.ok, "failover call {i} failed: {}", c.describe());
        assert_eq!(path, "east gateway", "{}", c.describe());
        assert_eq!(
            c.server_id.as_deref(),
            Some(spiffe_id(SIMPLE_BACKEND).as_str())
        );
        let reply = c.reply.unwrap_or_default();
        assert!(
            reply.starts_with("simple-backend-east:") && reply.contains(&spiffe_id(WEBAPP)),
            "{reply:?}"
        );
        if i == 0 {
            println!("   after: webapp -> local failed -> {EAST_GW}: {reply}");
        }
    }
    let after = series_value(&m.metrics(EGW, EAST2_ADMIN_IP), &opened);
    assert_eq!(
        after - before,
        5.0,
        "east gateway should count the 5 failover calls under {opened}"
    );
    println!("   east gateway metric {opened}: {before} -> {after}");
}

/// Tries west's simple-backend directly, then east's through the east gateway.
pub fn call_backend_with_locality_failover(webapp: &Caller) -> (&'static str, Call) {
    let id = spiffe_id(SIMPLE_BACKEND);
    let local = webapp.call(WEST_BACKEND, &backend_sni(), &id, "GET /data");
    if local.ok {
        return ("local", local);
    }
    (
        "east gateway",
        webapp.call(EAST_GW, &backend_sni(), &id, "GET /data"),
    )
}

const FAILURES: &str = "gateway_upstream_connect_failures_total";
const EJECTIONS: &str = "gateway_endpoint_ejections_total";

/// The east gateway's connect failures and endpoint ejections so far.
pub fn failover_counts(m: &Mesh) -> (f64, f64) {
    let text = m.metrics(EGW, EAST2_ADMIN_IP);
    (
        series_value(&text, FAILURES),
        series_value(&text, EJECTIONS),
    )
}

/// After an endpoint died (`before`: [`failover_counts`] before it did): runs `one(i)`, a call
/// or tunnel that must succeed through the east gateway, until at least 10 ran and the
/// gateway ejected an endpoint (at most 40), then checks that it counted connect failures and
/// an ejection (`--outlier-failures 2`).
pub fn until_ejected(m: &Mesh, before: (f64, f64), what: &str, mut one: impl FnMut(usize)) {
    let (fail0, eject0) = before;
    let (mut n, mut fails, mut ejects) = (0, fail0, eject0);
    for i in 0..40 {
        one(i);
        n += 1;
        (fails, ejects) = failover_counts(m);
        if n >= 10 && ejects > eject0 {
            break;
        }
    }
    println!("   {n} {what}; {FAILURES} {fail0} -> {fails}, {EJECTIONS} {eject0} -> {ejects}");
    assert!(
        fails > fail0,
        "the gateway should have counted connect failures to the dead endpoint"
    );
    assert!(
        ejects > eject0,
        "the dead endpoint should have been ejected (--outlier-failures 2)"
    );
}
