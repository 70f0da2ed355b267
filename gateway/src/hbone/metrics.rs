//! HBONE metrics, registered on the gateway's registry under `gateway_hbone_`: tunnels per
//! authority, outer connections, streams per connection, refusals by reason, rapid-reset cuts
//! of cooling identities, bytes queued toward clients, and the certificate from istiod
//! (renewals, failures, expiry). The upstream connect histogram and failure counters are the
//! classic listener's (`ProxyMetrics`), shared.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Why a connection or a tunnel on 15008 was refused: the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// No client certificate, or one that does not chain to a root.
    BadClientCert,
    /// A valid chain whose SPIFFE id is in no `--trust-domain`.
    TrustDomainNotAllowed,
    /// Not a CONNECT, or an authority that is not `<host>:<port>` (answered 400).
    BadRequest,
    /// No route for the authority, or a route with no HBONE endpoint (answered 503).
    NoRoute,
    NoHealthyEndpoint,
    ConnectFailed,
    /// Too many tunnels in total (answered 503), or a handshake shed from the undecided budget.
    OverLimit,
    /// The HTTP/2 connection failed (protocol error, I/O error) before or between streams.
    H2Error,
    /// The connection was ended with GOAWAY ENHANCE_YOUR_CALM: rapid resets, CONTINUATION
    /// or small-frame floods, too many stream errors.
    EnhanceYourCalm,
    /// Any other TLS handshake failure: no common version, suite or ALPN; the client left.
    HandshakeFailed,
    /// The TLS handshake did not finish within `--detect-timeout`.
    Timeout,
    /// The upstream socket failed for a local reason (descriptors, ports): never an ejection.
    LocalResource,
    /// `--hbone-max-connections` taken by connections that all carry tunnels: a new outer
    /// connection is closed (at accept, before TLS, when already known).
    ConnectionLimit,
    /// An outer connection closed because its PONG did not come in time (`--hbone-keepalive`).
    KeepaliveTimeout,
    /// The route's DestinationRule `maxConnections` are open (answered 503).
    UpstreamOverflow,
}

impl Refusal {
    pub const ALL: [Refusal; 15] = [
        Refusal::BadClientCert,
        Refusal::TrustDomainNotAllowed,
        Refusal::BadRequest,
        Refusal::NoRoute,
        Refusal::NoHealthyEndpoint,
        Refusal::ConnectFailed,
        Refusal::OverLimit,
        Refusal::H2Error,
        Refusal::EnhanceYourCalm,
        Refusal::HandshakeFailed,
        Refusal::Timeout,
        Refusal::LocalResource,
        Refusal::ConnectionLimit,
        Refusal::KeepaliveTimeout,
        Refusal::UpstreamOverflow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::BadClientCert => "bad_client_cert",
            Refusal::TrustDomainNotAllowed => "trust_domain_not_allowed",
            Refusal::BadRequest => "bad_request",
            Refusal::NoRoute => "no_route",
            Refusal::NoHealthyEndpoint => "no_healthy_endpoint",
            Refusal::ConnectFailed => "connect_failed",
            Refusal::OverLimit => "over_limit",
            Refusal::H2Error => "h2_error",
            Refusal::EnhanceYourCalm => "enhance_your_calm",
            Refusal::HandshakeFailed => "handshake_failed",
            Refusal::Timeout => "timeout",
            Refusal::LocalResource => "local_resource",
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::KeepaliveTimeout => "keepalive_timeout",
            Refusal::UpstreamOverflow => "upstream_overflow",
        }
    }
}

impl EncodeLabelValue for Refusal {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub reason: Refusal,
}

/// A routed authority (`host:port`). Only authorities that matched a route become labels,
/// so a client cannot grow the label set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthorityLabels {
    pub authority: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TunnelCloseLabels {
    pub authority: String,
    pub outcome: &'static str,
}

#[derive(Clone)]
pub struct HboneMetrics {
    pub connections_opened: Counter,
    pub connections_active: Gauge,
    /// Idle outer connections closed to make room under `--hbone-max-connections`.
    pub connections_shed: Counter,
    pub streams_per_connection: Histogram,
    pub tunnels_opened: Family<AuthorityLabels, Counter>,
    pub tunnels_closed: Family<TunnelCloseLabels, Counter>,
    pub tunnels_active: Family<AuthorityLabels, Gauge>,
    pub sent_bytes: Family<AuthorityLabels, Counter>,
    pub received_bytes: Family<AuthorityLabels, Counter>,
    pub refused: Family<RefusalLabels, Counter>,
    /// Connections cut by the lower premature-reset threshold of a cooling identity (also in
    /// `refused{reason="enhance_your_calm"}`).
    pub cooling_cuts: Counter,
    /// Certificates from istiod put in use (the first one included).
    pub cert_renewals: Counter,
    /// Failed requests to istiod (each retried with back-off).
    pub cert_renewal_failures: Counter,
    /// notAfter of the certificate from istiod in use, in Unix seconds (0 before the first).
    pub cert_expiry_seconds: Gauge,
    /// Rereads of the --hbone-certs files refused (the previous certificate stays).
    pub cert_reload_failures: Counter,
    /// Bytes read from endpoints and not yet written toward clients, across connections.
    pub queued_bytes: Gauge,
    /// Times a tunnel waited for its connection's queue toward the client to drain.
    pub queue_waits: Counter,
}

impl HboneMetrics {
    /// Registers under `registry` (the caller passes the `hbone` sub-registry).
    pub fn new(registry: &mut Registry) -> Self {
        let m = HboneMetrics {
            connections_opened: Counter::default(),
            connections_active: Gauge::default(),
            connections_shed: Counter::default(),
            // 1 to 4096 streams
            streams_per_connection: Histogram::new(exponential_buckets(1.0, 2.0, 13)),
            tunnels_opened: Family::default(),
            tunnels_closed: Family::default(),
            tunnels_active: Family::default(),
            sent_bytes: Family::default(),
            received_bytes: Family::default(),
            refused: Family::default(),
            cooling_cuts: Counter::default(),
            cert_renewals: Counter::default(),
            cert_renewal_failures: Counter::default(),
            cert_expiry_seconds: Gauge::default(),
            cert_reload_failures: Counter::default(),
            queued_bytes: Gauge::default(),
            queue_waits: Counter::default(),
        };
        let r = registry;
        r.register(
            "connections_opened",
            "Outer HBONE connections (mTLS + HTTP/2) established on 15008",
            m.connections_opened.clone(),
        );
        r.register(
            "connections_active",
            "Outer HBONE connections open now",
            m.connections_active.clone(),
        );
        r.register(
            "connections_shed",
            "Idle outer HBONE connections (no tunnel) closed with GOAWAY to make room for a new one under --hbone-max-connections",
            m.connections_shed.clone(),
        );
        r.register(
            "streams_per_connection",
            "CONNECT streams an outer connection carried, observed when it closes",
            m.streams_per_connection.clone(),
        );
        r.register(
            "tunnels_opened",
            "Tunnels answered 200 and forwarded, per authority",
            m.tunnels_opened.clone(),
        );
        r.register(
            "tunnels_closed",
            "Tunnels that ended, per authority and outcome",
            m.tunnels_closed.clone(),
        );
        r.register(
            "tunnels_active",
            "Tunnels open now, per authority",
            m.tunnels_active.clone(),
        );
        r.register(
            "sent_bytes",
            "Bytes from HBONE clients to endpoints, per authority",
            m.sent_bytes.clone(),
        );
        r.register(
            "received_bytes",
            "Bytes from endpoints to HBONE clients, per authority",
            m.received_bytes.clone(),
        );
        r.register(
            "cert_reload_failures",
            "Rereads of the --hbone-certs files refused (unreadable, invalid, expired); the previous certificate stays",
            m.cert_reload_failures.clone(),
        );
        r.register(
            "refused",
            "Connections or tunnels on 15008 refused, by reason",
            m.refused.clone(),
        );
        r.register(
            "cooling_cuts",
            "Connections cut with GOAWAY ENHANCE_YOUR_CALM at the lower premature-reset threshold of a client identity cut before (also counted as refused, reason enhance_your_calm)",
            m.cooling_cuts.clone(),
        );
        r.register(
            "cert_renewals",
            "HBONE certificates from istiod put in use, the first included",
            m.cert_renewals.clone(),
        );
        r.register(
            "cert_renewal_failures",
            "Failed HBONE certificate requests to istiod (retried with back-off)",
            m.cert_renewal_failures.clone(),
        );
        r.register(
            "cert_expiry_seconds",
            "notAfter of the HBONE certificate from istiod in use, Unix seconds",
            m.cert_expiry_seconds.clone(),
        );
        r.register(
            "queued_bytes",
            "Bytes read from endpoints and queued toward HBONE clients, not yet written to their connections",
            m.queued_bytes.clone(),
        );
        r.register(
            "queue_waits",
            "Times a tunnel stopped reading its endpoint because its outer connection's queue toward the client was full (a client reading slower than its endpoints send)",
            m.queue_waits.clone(),
        );
        for reason in Refusal::ALL {
            let _ = m.refused.get_or_create(&RefusalLabels { reason });
        }
        m
    }

    pub fn refuse(&self, reason: Refusal) {
        self.refused.get_or_create(&RefusalLabels { reason }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_precreated_once() {
        let mut reg = Registry::with_prefix("gateway");
        let m = HboneMetrics::new(reg.sub_registry_with_prefix("hbone"));
        m.refuse(Refusal::NoRoute);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        for r in Refusal::ALL {
            let n = if r == Refusal::NoRoute { 1 } else { 0 };
            let line = format!(
                "gateway_hbone_refused_total{{reason=\"{}\"}} {n}\n",
                r.as_str()
            );
            assert_eq!(text.matches(&line).count(), 1, "{line}\n{text}");
        }
        let names: std::collections::HashSet<_> = Refusal::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Refusal::ALL.len());
    }
}
