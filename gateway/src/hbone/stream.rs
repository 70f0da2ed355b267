//! One CONNECT stream: check the request, look the authority up in the route table, dial an
//! HBONE endpoint (P2C, outlier detection, retry on another endpoint), answer 200 only once
//! that connection is up, then splice. Every refusal answers a status and dials nothing more.
//!
//! Statuses: 400 for a method other than CONNECT or a malformed authority (as ztunnel's
//! inbound answers them, `build_inbound_request`); 503 for no healthy endpoint, every
//! attempt failed, too many tunnels, and for no route: Istio's gateway sends an unmatched
//! authority to a blackhole chain (hbone.md §3, `buildWaypointInternal`), so the client's
//! CONNECT fails without reaching any endpoint; 503 is what ztunnel itself answers when it
//! has nothing to dial (`find_inbound_upstream`). A service bound to a waypoint takes
//! straight to its endpoints only tunnels a waypoint sent (`x-istio-source: waypoint`); any
//! other is sent to the waypoint, as Istio's gateway does (`buildWaypointInternal`): dialed
//! at its pods' 15008, the tunnel's bytes (the client's inner TLS) passed on unchanged. With
//! a canary waypoint, each such tunnel goes to it at its weight's odds.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{Method, Request, Response, StatusCode};
use rand::Rng;
use tracing::{debug, info};

use super::Hbone;
use super::authority::{self, Authority};
use super::metrics::{AuthorityLabels, Refusal, TunnelCloseLabels};
use super::queued::Queue;
use super::rapid_reset::ResetWatch;
use super::splice::{self, End, Progress};
use crate::reject::Reject;
use crate::routes::{Route, WAYPOINT_PORT};
use crate::upstream;

/// A `--hbone-max-tunnels` place, given back on drop.
struct Permit<'a>(&'a tokio::sync::Semaphore);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.0.add_permits(1);
    }
}

impl Hbone {
    pub(super) async fn stream(
        &self,
        req: Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
        client_id: &str,
        client: SocketAddr,
        watch: &ResetWatch,
        queue: &Queue,
    ) {
        let start = Instant::now();
        let force = &self.drain.force_close;
        // A reset stream dials nothing, and a reset during the dial drops it: otherwise
        // HEADERS + RST_STREAM (rapid reset) costs ~50 bytes per connect in the cluster.
        let decided = tokio::select! {
            biased;
            r = poll_fn(|cx| respond.poll_reset(cx)) => {
                if r.is_ok() {
                    watch.premature_reset();
                }
                debug!("client reset the stream before its answer");
                return;
            }
            d = self.decide(&req, client) => d,
            _ = force.cancelled() => return respond.send_reset(h2::Reason::CANCEL),
        };
        let Decided {
            auth,
            connected,
            waypoint,
            permit: _permit,
            idle,
            max_duration,
        } = match decided {
            Ok(d) => d,
            Err((reason, status, authority)) => {
                self.metrics.refuse(reason);
                let _ = respond.send_response(status_only(status), true);
                debug!(
                    client_id,
                    authority,
                    reason = reason.as_str(),
                    status = status.as_u16(),
                    "HBONE tunnel refused"
                );
                return;
            }
        };
        let send = match respond.send_response(status_only(StatusCode::OK), false) {
            Ok(s) => s,
            Err(e) => {
                watch.premature_reset();
                debug!(error = %e, "client left before the 200");
                return;
            }
        };
        let upstream::Connected {
            stream: upstream,
            ep,
            held: _held,
        } = connected;
        let _active_ep = ep.track();
        let labels = AuthorityLabels {
            authority: auth.to_string(),
        };
        let m = &self.metrics;
        m.tunnels_opened.get_or_create(&labels).inc();
        let active = m.tunnels_active.get_or_create(&labels).clone();
        active.inc();
        let progress = Progress::new(
            m.sent_bytes.get_or_create(&labels).clone(),
            m.received_bytes.get_or_create(&labels).clone(),
        );
        let recv = req.into_body();
        // From the CONNECT, as Envoy times the tunnel's connection from its creation.
        let deadline = max_duration.map(|d| tokio::time::Instant::from_std(start + d));
        let end = tokio::select! {
            e = splice::run(recv, send, upstream, idle, deadline, &progress, queue) => e,
            _ = force.cancelled() => End::DrainDeadline,
        };
        // At the deadline the connection's task may close the client's side first: the
        // error that makes here is the deadline's, not the client's.
        let end = match end {
            End::ClientError(_) | End::UpstreamError(_) if force.is_cancelled() => {
                End::DrainDeadline
            }
            e => e,
        };
        active.dec();
        let (sent, received) = progress.totals();
        // A legitimate tunnel carries the inner TLS handshake first; one reset before any
        // byte from the client was only a dial.
        if matches!(end, End::Reset(_)) && sent == 0 {
            watch.premature_reset();
        }
        let outcome = end.as_str();
        m.tunnels_closed
            .get_or_create(&TunnelCloseLabels {
                authority: labels.authority,
                outcome,
            })
            .inc();
        match &end {
            End::ClientError(e) => debug!(error = %e, "tunnel ended by a client error"),
            End::UpstreamError(e) => debug!(error = %e, "tunnel ended by an upstream error"),
            _ => {}
        }
        info!(
            target: "access",
            client_id,
            client = %client,
            authority = %auth,
            upstream = %ep.addr,
            waypoint,
            sent,
            received,
            duration_ms = start.elapsed().as_millis() as u64,
            outcome,
            "HBONE tunnel closed"
        );
    }

    /// Checks the request, takes a tunnel place, routes and connects ([`Decided`]); on
    /// refusal: the reason, the status to answer and the authority as received (for the log).
    async fn decide(
        &self,
        req: &Request<RecvStream>,
        client: SocketAddr,
    ) -> Result<Decided<'_>, (Refusal, StatusCode, String)> {
        let raw = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        let bad = |raw: &str| (Refusal::BadRequest, StatusCode::BAD_REQUEST, raw.to_owned());
        if req.method() != Method::CONNECT {
            return Err(bad(&raw));
        }
        let auth = authority::parse(raw.as_bytes()).map_err(|e| {
            debug!(error = %e, "malformed authority");
            bad(&raw)
        })?;
        let unavailable = |r: Refusal| (r, StatusCode::SERVICE_UNAVAILABLE, raw.clone());
        if self.tunnels.try_acquire().map(|p| p.forget()).is_err() {
            return Err(unavailable(Refusal::OverLimit));
        }
        let permit = Permit(&self.tunnels);
        let table = self
            .routes
            .load()
            .ok_or_else(|| unavailable(Refusal::NoRoute))?;
        let route = table
            .lookup_hbone(&auth.host, auth.port)
            .ok_or_else(|| unavailable(Refusal::NoRoute))?;
        // The service's rule times each tunnel, as istiod gives its top-level `idleTimeout`
        // and `maxConnectionDuration` to the TCP proxy of Istio's east-west gateway that
        // takes the tunnel (`buildWaypointNetworkFilters`), waypoint or not.
        let idle = route.conn.idle_timeout().unwrap_or(self.cfg.idle_timeout);
        let max_duration = route.conn.max_duration();
        // The waypoint's classic route: its pods dialed at their own 15008, as Istio's
        // gateway dials `inbound-vip|15008|tcp|<waypoint>` (no HBONE port override there).
        // A canary takes its share per tunnel, as ztunnel samples per connection; a waypoint
        // with no ready endpoint leaves its tunnels to the other.
        let (route, waypoint) = match route.waypoints(roll(route)) {
            Some((first, other)) if !sent_by_waypoint(req) => {
                let ready = |wp| {
                    let to = table.lookup_waypoint(wp)?;
                    to.candidates("").is_ok().then_some((to, wp))
                };
                let (to, wp) = ready(first)
                    .or_else(|| other.and_then(ready))
                    .or_else(|| Some((table.lookup_waypoint(first)?, first)))
                    .ok_or_else(|| {
                        debug!(waypoint = %first, "the waypoint has no endpoint at {WAYPOINT_PORT}");
                        unavailable(Refusal::NoHealthyEndpoint)
                    })?;
                (to, Some(Box::from(wp)))
            }
            _ => (route, None),
        };
        let connected =
            upstream::connect(route, "", Some(client.ip()), &self.cfg, &self.proxy_metrics);
        let connected = connected.await.map_err(|r| {
            unavailable(match r {
                Reject::NoRoute => Refusal::NoRoute,
                Reject::NoHealthyEndpoint => Refusal::NoHealthyEndpoint,
                Reject::LocalResource => Refusal::LocalResource,
                Reject::UpstreamOverflow => Refusal::UpstreamOverflow,
                _ => Refusal::ConnectFailed,
            })
        })?;
        Ok(Decided {
            auth,
            connected,
            waypoint,
            permit,
            idle,
            max_duration,
        })
    }
}

/// A tunnel ready to splice: its authority, the connected endpoint, the waypoint it was sent
/// to (if any), its place under `--hbone-max-tunnels`, and how long it may stay quiet and
/// live (the service's DestinationRule, else `--idle-timeout` and no limit).
struct Decided<'a> {
    auth: Authority,
    connected: upstream::Connected,
    waypoint: Option<Box<str>>,
    permit: Permit<'a>,
    idle: std::time::Duration,
    max_duration: Option<std::time::Duration>,
}

/// A draw from 0 to 99 for a route with a canary; 0 (unused) otherwise.
fn roll(route: &Route) -> u8 {
    if route.canary.is_none() {
        return 0;
    }
    rand::rng().random_range(0..100)
}

/// Whether a waypoint sent this tunnel, its policy applied (`x-istio-source: waypoint`, which
/// Envoy waypoints add to the double HBONE they originate; Istio's gateway matches the value
/// exactly and, like it, trusts it from any mesh identity).
fn sent_by_waypoint<B>(req: &Request<B>) -> bool {
    req.headers()
        .get(SOURCE_HEADER)
        .is_some_and(|v| v.as_bytes() == b"waypoint")
}

/// The header naming what kind of proxy sent a tunnel (`waypoint`, `gateway`, `sidecar`).
const SOURCE_HEADER: &str = "x-istio-source";

fn status_only(status: StatusCode) -> Response<()> {
    let mut r = Response::new(());
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_waypoint_source_counts() {
        let req = |v: Option<&str>| {
            let mut b = Request::builder().method(Method::CONNECT).uri("a.local:80");
            if let Some(v) = v {
                b = b.header(SOURCE_HEADER, v);
            }
            b.body(()).unwrap()
        };
        assert!(sent_by_waypoint(&req(Some("waypoint"))));
        for other in [
            None,
            Some("gateway"),
            Some("sidecar"),
            Some("Waypoint"),
            Some(""),
        ] {
            assert!(!sent_by_waypoint(&req(other)), "{other:?}");
        }
    }
}
