//! Why a connection was closed without forwarding a byte: the `reason` label of
//! `gateway_connections_rejected`, owned beside the metrics that count it.

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

/// Why a connection was closed without forwarding a byte: the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    Timeout,
    NotTls,
    NoSni,
    BadName,
    HostNotAllowed,
    AlpnNotAllowed,
    NoRoute,
    NoHealthyEndpoint,
    ConnectFailed,
    /// Too many decided connections, or a ClientHello larger than the buffer cap.
    OverLimit,
    /// `--proxy-protocol` is on and the PROXY header is missing or malformed, or it is off
    /// and one arrived anyway.
    BadProxyHeader,
    /// The client closed or reset before its ClientHello was complete.
    ClientClosed,
    /// The upstream socket failed for a local reason (out of descriptors, buffers or local
    /// ports): the gateway's problem, not the endpoint's, so it never counts toward ejection.
    LocalResource,
    /// A TLS ClientHello with invalid contents (two SNI names, a NUL in the name, an empty
    /// ALPN list): a broken or hostile TLS client rather than another protocol.
    MalformedHello,
    /// The drain deadline passed before the connection was forwarded.
    DrainDeadline,
    /// Still sending its hello when the undecided budget was full: the oldest is shed.
    Shed,
    /// The ClientHello of a connection this process is forwarding arrived again: it went
    /// round a routing loop through gateways (`loop_guard`).
    Loop,
    /// The route's DestinationRule limits its connections (`maxConnections`) and that many
    /// are open: Envoy's circuit breaker (`upstream_cx_overflow`).
    UpstreamOverflow,
}

impl Reject {
    pub const ALL: [Reject; 18] = [
        Reject::Timeout,
        Reject::NotTls,
        Reject::NoSni,
        Reject::BadName,
        Reject::HostNotAllowed,
        Reject::AlpnNotAllowed,
        Reject::NoRoute,
        Reject::NoHealthyEndpoint,
        Reject::ConnectFailed,
        Reject::OverLimit,
        Reject::BadProxyHeader,
        Reject::ClientClosed,
        Reject::LocalResource,
        Reject::MalformedHello,
        Reject::DrainDeadline,
        Reject::Shed,
        Reject::Loop,
        Reject::UpstreamOverflow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reject::Timeout => "timeout",
            Reject::NotTls => "not_tls",
            Reject::NoSni => "no_sni",
            Reject::BadName => "bad_name",
            Reject::HostNotAllowed => "host_not_allowed",
            Reject::AlpnNotAllowed => "alpn_not_allowed",
            Reject::NoRoute => "no_route",
            Reject::NoHealthyEndpoint => "no_healthy_endpoint",
            Reject::ConnectFailed => "connect_failed",
            Reject::OverLimit => "over_limit",
            Reject::BadProxyHeader => "bad_proxy_header",
            Reject::ClientClosed => "client_closed",
            Reject::LocalResource => "local_resource",
            Reject::MalformedHello => "malformed_hello",
            Reject::DrainDeadline => "drain_deadline",
            Reject::Shed => "shed",
            Reject::Loop => "loop",
            Reject::UpstreamOverflow => "upstream_overflow",
        }
    }
}

impl EncodeLabelValue for Reject {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::ProxyMetrics;
    use prometheus_client::registry::Registry;

    /// Every reason is a label from the start (explicit zeros for dashboards), spelled as
    /// `as_str` says, and each appears once.
    #[test]
    fn every_reason_is_precreated_by_its_name() {
        let mut reg = Registry::with_prefix("gateway");
        let m = ProxyMetrics::new(&mut reg);
        m.reject(Reject::Shed);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        for r in Reject::ALL {
            let n = if r == Reject::Shed { 1 } else { 0 };
            let line = format!(
                "gateway_connections_rejected_total{{reason=\"{}\"}} {n}\n",
                r.as_str()
            );
            assert_eq!(text.matches(&line).count(), 1, "{line}");
        }
        let names: std::collections::HashSet<_> = Reject::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), Reject::ALL.len());
    }
}
