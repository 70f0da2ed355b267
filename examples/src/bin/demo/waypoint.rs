//! Scene 8: a waypoint in front of catalog. East's route table binds catalog to a waypoint
//! (what `istio.io/use-waypoint` does in Kubernetes), and the gateway sends west's ztunnel's
//! tunnel to the waypoint's 15008 instead of catalog's ztunnel; the tunnel the waypoint then
//! sends (marked `x-istio-source: waypoint`) goes straight to catalog's ztunnel. The
//! waypoint is a double: it terminates the inner TLS with its own identity, as a waypoint
//! does, and passes the bytes to catalog's port, where a real one applies its L7 policy and
//! opens its own HBONE to catalog's ztunnel; here that second leg is sent through the
//! gateway to show the marked tunnel's path.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use testkit::hbone::{ClientZtunnel, ConnectRequest, DestinationZtunnel, OuterConn, tls};
use testkit::mesh::{self, CATALOG, SIMPLE_BACKEND, WEBAPP};
use testkit::mtls::Identity;

use crate::ambient::{app_call, tunnel_access_lines};
use crate::harness::{Demo, header, http_get};
use crate::{CATALOG_HBONE, CATALOG_POD, EAST_GW_ADMIN, EAST_GW_HBONE, GATEWAY_NS, GATEWAY_SA};

/// The waypoint's service account and Service name, in catalog's namespace.
pub const WAYPOINT: &str = "waypoint";
/// The waypoint pod's address on east's pod network, at its HBONE port.
const WAYPOINT_HBONE: &str = "127.0.20.10:15008";

/// What one tunnel saw: the inner TLS peer and catalog's reply.
struct Hop {
    inner_peer: Option<String>,
    reply: String,
}

pub async fn waypoint(
    d: &mut Demo,
    webapp: &Identity,
    catalog_zt: &DestinationZtunnel,
    gateway_log: &Path,
) -> Result<()> {
    header(
        8,
        "A waypoint in front of catalog: the gateway sends ztunnels' tunnels to it",
    );
    let (catalog_id, webapp_id) = (mesh::spiffe_id(CATALOG), mesh::spiffe_id(WEBAPP));
    let (waypoint_id, gateway_id) = (
        mesh::spiffe_id(WAYPOINT),
        mesh::spiffe_id_in(GATEWAY_NS, GATEWAY_SA),
    );
    let authority = format!("{}:80", mesh::host(CATALOG));
    let waypoint_host = mesh::host(WAYPOINT);

    let waypoint_cert = Identity::load_dir(&d.work.join("east").join(WAYPOINT))?;
    let waypoint = DestinationZtunnel::start_with(
        tls::server_config(&waypoint_cert)?,
        WAYPOINT_HBONE.parse()?,
        CATALOG_POD.parse()?,
    )
    .await
    .with_context(|| format!("starting the waypoint on {WAYPOINT_HBONE}"))?;
    println!("  waypoint  {WAYPOINT_HBONE} → {CATALOG_POD}  ({waypoint_id})");

    // Bind catalog to the waypoint, and list the waypoint's own Service at 15008.
    let (catalog_host, backend_host) = (mesh::host(CATALOG), mesh::host(SIMPLE_BACKEND));
    let eps = format!(
        "services:\n  - host: {catalog_host}\n    ports: [{{port: 80, targetPort: 3000}}]\n    waypoint: {waypoint_host}\n    endpoints: [{{address: 127.0.20.8, hbone: true}}]\n  - host: {waypoint_host}\n    ports: [{{port: 15008}}]\n    endpoints: [{{address: 127.0.20.10}}]\n  - host: {backend_host}\n    ports: [{{port: 80, targetPort: 8080}}]\n    endpoints: [{{address: 127.0.20.9}}]\n"
    );
    let path = d.work.join("east-endpoints.yaml");
    let tmp = d.work.join(".east-endpoints.yaml.new");
    std::fs::write(&tmp, &eps)?;
    std::fs::rename(&tmp, &path)?;
    println!("  east-endpoints.yaml now binds catalog to its waypoint:");
    for l in eps.lines().filter(|l| l.contains("waypoint")) {
        println!("    | {l}");
    }
    let bound = wait_bound(&catalog_host, &waypoint_host).await;
    d.check(
        &format!("/debug/routes shows catalog's route bound to waypoint {waypoint_host}"),
        bound,
    );

    // West's ztunnel knows catalog's waypoint (istiod tells it), so its inner TLS expects the
    // waypoint's identity; the outer CONNECT names catalog, unmarked.
    let seen_before = catalog_zt.seen().len();
    let lines_before = tunnel_access_lines(gateway_log).len();
    let to_gateway = ClientZtunnel::from_identity(webapp, std::slice::from_ref(&gateway_id))?;
    let outer = to_gateway.connect(EAST_GW_HBONE.parse()?).await?;
    let to_waypoint = ClientZtunnel::from_identity(webapp, std::slice::from_ref(&waypoint_id))?;
    let first = hop(&outer, &to_waypoint, webapp, &authority, None).await;
    drop(outer);
    // The waypoint's own tunnel onward, marked as Envoy waypoints mark it, with its identity
    // on both legs; its inner TLS expects catalog's.
    let waypoint_out =
        ClientZtunnel::from_identity(&waypoint_cert, std::slice::from_ref(&gateway_id))?;
    let outer = waypoint_out.connect(EAST_GW_HBONE.parse()?).await?;
    let to_catalog =
        ClientZtunnel::from_identity(&waypoint_cert, std::slice::from_ref(&catalog_id))?;
    let second = hop(&outer, &to_catalog, webapp, &authority, Some("waypoint")).await;
    drop(outer);
    for (what, h) in [("ztunnel's tunnel", &first), ("waypoint's tunnel", &second)] {
        match h {
            Ok(h) => println!(
                "  {what}: inner TLS peer {}; catalog replied: {}",
                h.inner_peer.as_deref().unwrap_or("<none>"),
                h.reply
            ),
            Err(e) => println!("  {what}: failed: {e:#}"),
        }
    }

    let lines = wait_access_lines(gateway_log, lines_before + 2).await;
    let lines = &lines[lines_before.min(lines.len())..];
    println!("  the gateway (access log):");
    for l in lines {
        println!(
            "    client_id={} authority={} upstream={} waypoint={} outcome={}",
            l.client_id,
            l.authority,
            l.upstream,
            if l.waypoint.is_empty() {
                "-"
            } else {
                &l.waypoint
            },
            l.outcome
        );
    }
    let at_waypoint = waypoint.seen();
    let at_catalog: Vec<_> = catalog_zt.seen().into_iter().skip(seen_before).collect();
    d.check(
        &format!(
            "the unmarked tunnel went to the waypoint ({WAYPOINT_HBONE}), named in the access line"
        ),
        lines.first().is_some_and(|l| {
            l.client_id == webapp_id
                && l.authority == authority
                && l.upstream == WAYPOINT_HBONE
                && l.waypoint == waypoint_host
        }),
    );
    d.check(
        "the waypoint terminated the inner TLS with its own identity and saw webapp's CONNECT to catalog",
        first.as_ref().is_ok_and(|h| h.inner_peer.as_deref() == Some(waypoint_id.as_str()))
            && at_waypoint.len() == 1
            && at_waypoint[0].peer.as_deref() == Some(webapp_id.as_str())
            && at_waypoint[0].authority.as_deref() == Some(authority.as_str()),
    );
    d.check(
        &format!("the tunnel marked x-istio-source: waypoint went straight to catalog's ztunnel ({CATALOG_HBONE})"),
        lines.get(1).is_some_and(|l| {
            l.client_id == waypoint_id && l.upstream == CATALOG_HBONE && l.waypoint.is_empty()
        }) && at_catalog.len() == 1
            && at_catalog[0].peer.as_deref() == Some(waypoint_id.as_str()),
    );
    let from_catalog =
        |r: &str| r.starts_with("catalog: ") && r.ends_with(&format!("(caller {webapp_id})"));
    d.check(
        "catalog answered both, each time with webapp as the caller of its own mTLS",
        [&first, &second]
            .iter()
            .all(|h| h.as_ref().is_ok_and(|h| from_catalog(&h.reply))),
    );
    Ok(())
}

/// One tunnel to `authority` on `outer` (marked with `x-istio-source` when `source` is
/// given), a TLS + CONNECT inside it with `inner`, then webapp's own call to catalog.
async fn hop(
    outer: &OuterConn,
    inner: &ClientZtunnel,
    webapp: &Identity,
    authority: &str,
    source: Option<&str>,
) -> Result<Hop> {
    let mut req = ConnectRequest::new(authority);
    if let Some(s) = source {
        req = req.header("x-istio-source", s);
    }
    let tunnel = outer.open(req).await.context("outer CONNECT")?;
    let inner = tokio::time::timeout(Duration::from_secs(10), inner.connect_over(tunnel))
        .await
        .context("inner TLS timed out")?
        .context("inner TLS")?;
    let inner_peer = inner.peer_identity().map(str::to_string);
    let tunnel = inner
        .open(ConnectRequest::new(authority))
        .await
        .context("inner CONNECT")?;
    let reply = app_call(webapp, tunnel, "GET /items (through a waypoint)").await?;
    Ok(Hop { inner_peer, reply })
}

/// Whether `/debug/routes` shows `host` bound to `waypoint` within 5 s (the file reload).
async fn wait_bound(host: &str, waypoint: &str) -> bool {
    let want = format!("\"waypoint\":\"{waypoint}\"");
    for _ in 0..50 {
        let page = http_get(EAST_GW_ADMIN, &format!("/debug/routes?host={host}")).await;
        if page
            .is_ok_and(|(code, body)| code == 200 && body.replace([' ', '\n'], "").contains(&want))
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// The access lines once there are `n` (at most 5 s: a line is written as its tunnel closes).
async fn wait_access_lines(log: &Path, n: usize) -> Vec<crate::ambient::AccessLine> {
    let mut lines = tunnel_access_lines(log);
    for _ in 0..50 {
        if lines.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        lines = tunnel_access_lines(log);
    }
    lines
}
