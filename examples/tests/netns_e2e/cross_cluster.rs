//! Step 2: cross-cluster calls through the gateways, identities checked by the workloads.

use testkit::mesh::{CATALOG, SIMPLE_BACKEND, WEBAPP, spiffe_id};
use testkit::prom::series_value;

use crate::fixture::Mesh;
use crate::{EAST_ADMIN_IP, EAST_GW, EGW, EPOD, WEST_GW, WPOD, backend_sni, catalog_sni};

pub fn step2_west_calls_catalog_through_east_gateway(m: &Mesh) {
    println!("== step 2: west -> east catalog through east's gateway {EAST_GW}");
    let webapp = m.caller(WPOD, "west", "webapp");
    let opened = format!(
        "gateway_connections_opened_total{{sni=\"{}\"}}",
        catalog_sni()
    );
    let before = series_value(&m.metrics(EGW, EAST_ADMIN_IP), &opened);

    let c = webapp.call(EAST_GW, &catalog_sni(), &spiffe_id(CATALOG), "GET /items");
    assert!(
        c.ok,
        "west -> catalog through the east gateway failed: {}",
        c.describe()
    );
    assert_eq!(
        c.server_id.as_deref(),
        Some(spiffe_id(CATALOG).as_str()),
        "{}",
        c.describe()
    );
    let reply = c.reply.clone().unwrap_or_default();
    assert!(
        reply.starts_with("catalog-")
            && reply.ends_with(&format!("(caller {})", spiffe_id(WEBAPP))),
        "catalog's reply should name it and the west caller's identity: {reply:?}"
    );
    println!(
        "   server identity checked by webapp: {}",
        spiffe_id(CATALOG)
    );
    println!("   reply (caller identity checked by catalog): {reply}");

    let after = series_value(&m.metrics(EGW, EAST_ADMIN_IP), &opened);
    assert_eq!(
        after - before,
        1.0,
        "east gateway should count exactly this call under {opened}"
    );
    println!("   east gateway metric {opened}: {before} -> {after}");

    // Identity is enforced by the workloads, not the gateway: a west workload that catalog
    // does not admit is denied; a caller expecting another identity rejects catalog.
    let intruder = m.caller(WPOD, "west", "simple-backend");
    let c = intruder.call(EAST_GW, &catalog_sni(), &spiffe_id(CATALOG), "GET /items");
    assert!(
        !c.ok && c.reply.as_deref().is_some_and(|r| r.starts_with("denied:")),
        "catalog must deny a caller not on its allow list: {}",
        c.describe()
    );
    println!(
        "   {} denied by catalog: {}",
        spiffe_id(SIMPLE_BACKEND),
        c.reply.unwrap_or_default()
    );
    let c = webapp.call(EAST_GW, &catalog_sni(), &spiffe_id("reviews"), "GET /items");
    assert!(
        !c.ok,
        "webapp expecting another identity must reject catalog: {}",
        c.describe()
    );
    println!(
        "   webapp expecting {} rejects catalog: {}",
        spiffe_id("reviews"),
        c.error_line()
    );

    // The mirror path: east calls west's simple-backend through west's gateway.
    let catalog_as_client = m.caller(EPOD, "east", "catalog");
    let c = catalog_as_client.call(
        WEST_GW,
        &backend_sni(),
        &spiffe_id(SIMPLE_BACKEND),
        "GET /data",
    );
    assert!(
        c.ok,
        "east -> west simple-backend through the west gateway failed: {}",
        c.describe()
    );
    let reply = c.reply.unwrap_or_default();
    assert!(
        reply.starts_with("simple-backend-west:") && reply.contains(&spiffe_id(CATALOG)),
        "{reply:?}"
    );
    println!("   mirror east -> {WEST_GW} -> west simple-backend: {reply}");
}
