//! Scene 7: ambient (HBONE) through the same east gateway process that serves 15443. West's
//! "ztunnel" (the `testkit::hbone` client double, with webapp's certificate) opens mutual TLS
//! to the gateway's 15008 and sends one CONNECT per call; inside each tunnel it runs a second
//! TLS + CONNECT, end to end, to the destination ztunnel double in front of catalog on
//! catalog's pod address. Next to it, the classic path through 15443 to the same service, and
//! the gateway's counters for both read from its /metrics.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use testkit::hbone::{ClientZtunnel, ConnectRequest, DestinationZtunnel, OuterConn, Tunnel, tls};
use testkit::mesh::{self, CATALOG, SIMPLE_BACKEND, WEBAPP};
use testkit::mtls::{self, Identity};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::harness::{Demo, header, metric, metrics, opened};
use crate::{CATALOG_HBONE, CATALOG_POD, EAST_GW, EAST_GW_HBONE, GATEWAY_NS, GATEWAY_SA};

/// Tunnels the west ztunnel opens on its one pooled outer connection.
const TUNNELS: u64 = 3;
/// The network the west ztunnel puts in `x-forwarded-network` on the inner CONNECT.
const WEST_NETWORK: &str = "west-network";

/// What one call through the double tunnel saw.
struct Hop {
    /// The SPIFFE id the inner TLS (to the destination ztunnel) presented.
    inner_peer: Option<String>,
    /// catalog's own reply line.
    reply: String,
}

/// Returns catalog's destination ztunnel, which the waypoint scene uses next.
pub async fn ambient(
    d: &mut Demo,
    webapp: &Identity,
    gateway_log: &Path,
) -> Result<DestinationZtunnel> {
    header(
        7,
        "Ambient: west's ztunnel reaches catalog through the same gateway's HBONE port 15008",
    );
    let (catalog_id, webapp_id) = (mesh::spiffe_id(CATALOG), mesh::spiffe_id(WEBAPP));
    let gateway_id = mesh::spiffe_id_in(GATEWAY_NS, GATEWAY_SA);
    let authority = format!("{}:80", mesh::host(CATALOG));
    let catalog_sni = mesh::outbound(80, CATALOG);

    // East: catalog's node ztunnel, on catalog's pod address and Istio's HBONE port. It
    // presents catalog's identity (ztunnel speaks for the pods of its node) and forwards each
    // tunnel to catalog's port.
    let catalog_cert = Identity::load_dir(&d.work.join("east").join(CATALOG))?;
    let dest = DestinationZtunnel::start_with(
        tls::server_config(&catalog_cert)?,
        CATALOG_HBONE.parse()?,
        CATALOG_POD.parse()?,
    )
    .await
    .with_context(|| format!("starting catalog's destination ztunnel on {CATALOG_HBONE}"))?;
    println!("  destination ztunnel  {CATALOG_HBONE} → {CATALOG_POD}  ({catalog_id})");

    // The classic path first, to the same service, so both show side by side.
    let m0 = metrics().await?;
    let classic = examples::workload::call(
        webapp,
        EAST_GW.parse()?,
        &catalog_sni,
        Some(&catalog_id),
        "GET /items (classic)",
    )
    .await;
    let m1 = metrics().await?;
    let classic_reply = match &classic {
        Ok(r) => r.reply.clone(),
        Err(e) => format!("failed: {e}"),
    };
    println!("  classic  webapp → {EAST_GW} (SNI {catalog_sni}) → {CATALOG_POD}");
    println!("           catalog replied: {classic_reply}");

    // West: webapp's ztunnel. Outer leg: webapp's certificate, the gateway's identity expected;
    // inner leg: the same certificate, catalog's identity expected.
    let outer_client = ClientZtunnel::from_identity(webapp, std::slice::from_ref(&gateway_id))?;
    let inner_client = ClientZtunnel::from_identity(webapp, std::slice::from_ref(&catalog_id))?;
    let outer = outer_client
        .connect(EAST_GW_HBONE.parse()?)
        .await
        .with_context(|| format!("the west ztunnel's mTLS to {EAST_GW_HBONE}"))?;
    let outer_peer = outer.peer_identity().unwrap_or("<none>").to_string();
    println!("  ambient  webapp's ztunnel ({webapp_id})");
    println!("    │  mTLS to {EAST_GW_HBONE}, ALPN h2; the gateway presented {outer_peer}");
    println!("    │  CONNECT {authority}  (one stream per call, {TUNNELS} on one connection)");
    println!(
        "    │  inside each: TLS + CONNECT to catalog's ztunnel, x-forwarded-network {WEST_NETWORK}"
    );
    println!("    ▼");
    let mut hops = Vec::new();
    for i in 1..=TUNNELS {
        let hop = double_hbone(&outer, &inner_client, webapp, &authority, i).await;
        match &hop {
            Ok(h) => println!(
                "    tunnel {i}: inner TLS peer {}; catalog replied: {}",
                h.inner_peer.as_deref().unwrap_or("<none>"),
                h.reply
            ),
            Err(e) => println!("    tunnel {i}: failed: {e:#}"),
        }
        hops.push(hop);
    }
    // A service without HBONE endpoints (simple-backend is classic-only in the route table).
    let backend_authority = format!("{}:80", mesh::host(SIMPLE_BACKEND));
    let refused = outer.connect_tunnel(&backend_authority).await;
    println!(
        "    CONNECT {backend_authority}: {}",
        match &refused {
            Ok(_) => "200?! (expected a refusal)".to_string(),
            Err(e) => e.to_string(),
        }
    );
    // Each tunnel closes on its own; the outer connection goes only once the gateway has seen
    // them close, or the last could be cut mid-close (CI saw it counted as a client error).
    let m2 = wait_tunnels_closed(&m1, &authority).await?;
    drop(outer);

    // What each party saw.
    let hops: Vec<Hop> = hops.into_iter().filter_map(|h| h.ok()).collect();
    let access = tunnel_access_lines(gateway_log);
    let seen = dest.seen();
    println!("  the gateway (access log, one line per tunnel):");
    for l in &access {
        println!(
            "    client_id={} authority={} upstream={} outcome={}",
            l.client_id, l.authority, l.upstream, l.outcome
        );
    }
    println!("  the destination ztunnel:");
    for s in &seen {
        println!(
            "    TLS peer {}  CONNECT {}  x-forwarded-network {}  → {}",
            s.peer.as_deref().unwrap_or("<none>"),
            s.authority.as_deref().unwrap_or("-"),
            s.headers
                .get("x-forwarded-network")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-"),
            s.status
        );
    }
    print_counters(&m0, &m1, &m2, &authority, &catalog_sni);
    println!(
        "  one route ({authority}), one endpoint, one catalog process: 15443 passed webapp's \
         TLS through to {CATALOG_POD}; 15008 terminated the outer mTLS and dialed \
         {CATALOG_HBONE}, passing the inner TLS through"
    );

    d.check(
        &format!("the west ztunnel saw the gateway's identity {gateway_id}"),
        outer_peer == gateway_id,
    );
    d.check(
        &format!(
            "the gateway saw webapp's identity on {TUNNELS} tunnels and dialed catalog's HBONE endpoint {CATALOG_HBONE}"
        ),
        access.len() as u64 == TUNNELS
            && access.iter().all(|l| {
                l.client_id == webapp_id
                    && l.authority == authority
                    && l.upstream == CATALOG_HBONE
                    && l.outcome == "closed"
            }),
    );
    d.check(
        "the destination ztunnel saw webapp (not the gateway), the authority and west's network: the inner TLS ran end to end",
        seen.len() as u64 == TUNNELS
            && seen.iter().all(|s| {
                s.peer.as_deref() == Some(webapp_id.as_str())
                    && s.authority.as_deref() == Some(authority.as_str())
                    && s.headers
                        .get("x-forwarded-network")
                        .is_some_and(|v| v == WEST_NETWORK)
            }),
    );
    d.check(
        &format!("the inner leg presented catalog's identity {catalog_id}"),
        hops.len() as u64 == TUNNELS
            && hops
                .iter()
                .all(|h| h.inner_peer.as_deref() == Some(catalog_id.as_str())),
    );
    let from_catalog =
        |r: &str| r.starts_with("catalog: ") && r.ends_with(&format!("(caller {webapp_id})"));
    d.check(
        "catalog answered every tunnel and the classic call, each time with webapp as the caller",
        hops.len() as u64 == TUNNELS
            && hops.iter().all(|h| from_catalog(&h.reply))
            && from_catalog(&classic_reply),
    );
    let hbone = |m: &str, series: &str| metric(m, series);
    let tunnels_opened = format!("gateway_hbone_tunnels_opened_total{{authority=\"{authority}\"}}");
    let tunnels_closed = format!(
        "gateway_hbone_tunnels_closed_total{{authority=\"{authority}\",outcome=\"closed\"}}"
    );
    d.check(
        &format!(
            "gateway HBONE counters: +1 outer connection, +{TUNNELS} tunnels opened and closed for {authority}"
        ),
        hbone(&m2, "gateway_hbone_connections_opened_total")
            == hbone(&m1, "gateway_hbone_connections_opened_total") + 1
            && hbone(&m2, &tunnels_opened) == hbone(&m1, &tunnels_opened) + TUNNELS
            && hbone(&m2, &tunnels_closed) == hbone(&m1, &tunnels_closed) + TUNNELS,
    );
    let catalog_host = mesh::host(CATALOG);
    d.check(
        "one gateway, two ports, counted apart: the classic call moved only the 15443 counter, the tunnels only the 15008 ones",
        opened(&m1, &catalog_host) == opened(&m0, &catalog_host) + 1
            && opened(&m2, &catalog_host) == opened(&m1, &catalog_host)
            && hbone(&m1, &tunnels_opened) == hbone(&m0, &tunnels_opened),
    );
    let no_route = "gateway_hbone_refused_total{reason=\"no_route\"}";
    d.check(
        "a classic-only service is refused on 15008 (503, counted as no_route)",
        refused.as_ref().err().and_then(|e| e.refused_status()) == Some(503)
            && hbone(&m2, no_route) == hbone(&m1, no_route) + 1,
    );
    Ok(dest)
}

/// One call as an ambient app makes it: a CONNECT on the pooled outer connection to the
/// gateway, a new TLS + CONNECT inside it to the destination ztunnel (same trace id on both
/// legs, `x-forwarded-network` on the inner one), then the app's own bytes: the demo's catalog
/// is an mTLS workload, so webapp's request is its own TLS call, carried as opaque bytes.
async fn double_hbone(
    outer: &OuterConn,
    inner_client: &ClientZtunnel,
    webapp: &Identity,
    authority: &str,
    i: u64,
) -> Result<Hop> {
    let outer_req = ConnectRequest::new(authority);
    let trace = outer_req.build()?.headers()["traceparent"]
        .to_str()?
        .to_string();
    let outer_tunnel = outer.open(outer_req).await.context("outer CONNECT")?;
    let inner = tokio::time::timeout(
        Duration::from_secs(10),
        inner_client.connect_over(outer_tunnel),
    )
    .await
    .context("inner TLS timed out")?
    .context("inner TLS to the destination ztunnel")?;
    let inner_peer = inner.peer_identity().map(str::to_string);
    let tunnel = inner
        .open(
            ConnectRequest::new(authority)
                .traceparent(&trace)
                .forwarded_network(WEST_NETWORK),
        )
        .await
        .context("inner CONNECT")?;
    let reply = app_call(webapp, tunnel, &format!("GET /items (tunnel {i})")).await?;
    Ok(Hop { inner_peer, reply })
}

/// webapp's request line to catalog over `tunnel`, with its own mTLS (catalog's identity
/// required), and catalog's reply line.
pub async fn app_call(webapp: &Identity, tunnel: Tunnel, request: &str) -> Result<String> {
    let catalog_id = mesh::spiffe_id(CATALOG);
    let cfg = mtls::client_config(webapp, Some(catalog_id.as_str()), rustls::DEFAULT_VERSIONS)?;
    let name = mtls::sni_server_name(&mesh::outbound(80, CATALOG))?;
    let call = async move {
        let tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(name, tunnel)
            .await
            .context("webapp's TLS to catalog")?;
        let mut conn = BufReader::new(tls);
        conn.write_all(format!("{request}\n").as_bytes()).await?;
        let mut reply = String::new();
        conn.read_line(&mut reply).await?;
        let _ = conn.shutdown().await;
        anyhow::Ok(reply.trim_end().to_string())
    };
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .context("catalog did not answer within 10 s")?
}

/// A scrape once every tunnel for `authority` opened since `before` has closed (at most 5 s).
async fn wait_tunnels_closed(before: &str, authority: &str) -> Result<String> {
    let opened = format!("gateway_hbone_tunnels_opened_total{{authority=\"{authority}\"}}");
    let active = format!("gateway_hbone_tunnels_active{{authority=\"{authority}\"}}");
    let target = metric(before, &opened) + TUNNELS;
    let mut m = metrics().await?;
    for _ in 0..50 {
        if metric(&m, &opened) >= target && metric(&m, &active) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        m = metrics().await?;
    }
    Ok(m)
}

fn print_counters(m0: &str, m1: &str, m2: &str, authority: &str, sni: &str) {
    println!("  east gateway's counters (before the classic call → after it → after the tunnels):");
    for series in [
        format!("gateway_connections_opened_total{{sni=\"{sni}\"}}"),
        "gateway_hbone_connections_opened_total".to_string(),
        format!("gateway_hbone_tunnels_opened_total{{authority=\"{authority}\"}}"),
        format!(
            "gateway_hbone_tunnels_closed_total{{authority=\"{authority}\",outcome=\"closed\"}}"
        ),
        "gateway_hbone_refused_total{reason=\"no_route\"}".to_string(),
    ] {
        println!(
            "    {series} {} → {} → {}",
            metric(m0, &series),
            metric(m1, &series),
            metric(m2, &series)
        );
    }
}

/// The fields of one `HBONE tunnel closed` access-log line.
pub struct AccessLine {
    pub client_id: String,
    pub authority: String,
    pub upstream: String,
    /// The waypoint's host when the tunnel was sent to one; empty otherwise.
    pub waypoint: String,
    pub outcome: String,
}

/// The gateway's HBONE access lines so far (its log is plain `key=value` text).
pub fn tunnel_access_lines(log: &Path) -> Vec<AccessLine> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    // The event's own fields follow its message; the span before it repeats some of them.
    text.lines()
        .filter_map(|l| {
            l.split_once("HBONE tunnel closed")
                .map(|(_, fields)| fields)
        })
        .map(|l| AccessLine {
            client_id: field(l, "client_id"),
            authority: field(l, "authority"),
            upstream: field(l, "upstream"),
            waypoint: field(l, "waypoint"),
            outcome: field(l, "outcome"),
        })
        .collect()
}

/// `key=value` (or `key="value"`) from a plain log line; empty when absent.
fn field(line: &str, key: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_default()
}
