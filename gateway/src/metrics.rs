//! Prometheus metrics, registered per subsystem under the `gateway_` prefix.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::forward::End;
use crate::reject::Reject;

/// Labels per routed SNI name. Only names that matched a route become labels, so a hostile
/// client cannot grow the label set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SniLabels {
    pub sni: String,
}

/// A routed SNI name and how its connection ended (`forward::End::as_str`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CloseLabels {
    pub sni: String,
    pub outcome: &'static str,
}

/// What ran out, for accept failures (`local_error::Exhausted::as_str`, or `other`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: Reject,
}

/// Data-path metrics.
#[derive(Clone)]
pub struct ProxyMetrics {
    pub accepted: Counter,
    pub accept_errors: Family<KindLabels, Counter>,
    pub undecided: Gauge,
    pub undecided_bytes: Gauge,
    pub opened: Family<SniLabels, Counter>,
    pub closed: Family<CloseLabels, Counter>,
    pub active: Family<SniLabels, Gauge>,
    pub sent_bytes: Family<SniLabels, Counter>,
    pub received_bytes: Family<SniLabels, Counter>,
    pub rejected: Family<ReasonLabels, Counter>,
    pub connect_seconds: Histogram,
    pub connect_failures: Counter,
    pub ejections: Counter,
    /// Dial attempts outside the gateway's zone for a service that prefers it.
    pub zone_spills: Counter,
    /// The per-SNI families again, with the names whose handles are alive.
    series: SniSeries,
}

/// The per-SNI families, and for each routed SNI name the handles alive now: one set per
/// name, shared by every table that routes it and every connection through it. When the last
/// holder is gone (the name left the tables and its connections ended), its series are
/// removed, so service churn does not grow `/metrics` for the life of the process.
#[derive(Clone, Debug, Default)]
struct SniSeries {
    opened: Family<SniLabels, Counter>,
    closed: Family<CloseLabels, Counter>,
    active: Family<SniLabels, Gauge>,
    sent: Family<SniLabels, Counter>,
    received: Family<SniLabels, Counter>,
    live: Arc<Mutex<HashMap<String, Weak<ConnMetrics>>>>,
}

impl ProxyMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        // One set of per-SNI families, shared by the fields (registered below) and `series`.
        let series = SniSeries::default();
        let m = ProxyMetrics {
            accepted: Counter::default(),
            accept_errors: Family::default(),
            undecided: Gauge::default(),
            undecided_bytes: Gauge::default(),
            opened: series.opened.clone(),
            closed: series.closed.clone(),
            active: series.active.clone(),
            sent_bytes: series.sent.clone(),
            received_bytes: series.received.clone(),
            rejected: Family::default(),
            // 100 µs to ~3.3 s
            connect_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            connect_failures: Counter::default(),
            ejections: Counter::default(),
            zone_spills: Counter::default(),
            series,
        };
        let r = registry;
        r.register(
            "tcp_connections_accepted",
            "TCP connections accepted on the gateway listener",
            m.accepted.clone(),
        );
        r.register(
            "accept_errors",
            "Failed accepts on the gateway listener, by what ran out",
            m.accept_errors.clone(),
        );
        r.register(
            "undecided_connections",
            "Connections still sending their PROXY header or ClientHello",
            m.undecided.clone(),
        );
        r.register(
            "undecided_hello_bytes",
            "Bytes buffered by connections still sending their ClientHello",
            m.undecided_bytes.clone(),
        );
        r.register(
            "connections_opened",
            "Connections forwarded to an upstream, per SNI",
            m.opened.clone(),
        );
        r.register(
            "connections_closed",
            "Forwarded connections that ended, per SNI and outcome",
            m.closed.clone(),
        );
        r.register(
            "connections_active",
            "Forwarded connections open now, per SNI",
            m.active.clone(),
        );
        r.register(
            "sent_bytes",
            "Bytes from downstream clients to upstreams, per SNI",
            m.sent_bytes.clone(),
        );
        r.register(
            "received_bytes",
            "Bytes from upstreams to downstream clients, per SNI",
            m.received_bytes.clone(),
        );
        r.register(
            "connections_rejected",
            "Connections closed without forwarding, by reason",
            m.rejected.clone(),
        );
        r.register(
            "upstream_connect_seconds",
            "Time to connect to an upstream endpoint",
            m.connect_seconds.clone(),
        );
        r.register(
            "upstream_connect_failures",
            "Failed upstream connect attempts (each retry counts)",
            m.connect_failures.clone(),
        );
        r.register(
            "endpoint_ejections",
            "Endpoints ejected by passive outlier detection",
            m.ejections.clone(),
        );
        r.register(
            "upstream_zone_spills",
            "Upstream dial attempts outside the gateway's zone for a service that prefers it (none in the zone ready, or each ejected or already failed)",
            m.zone_spills.clone(),
        );
        for kind in crate::local_error::Exhausted::ALL {
            let _ = m.accept_errors.get_or_create(&KindLabels {
                kind: kind.as_str(),
            });
        }
        // Every reason appears from the start, so dashboards and tests see explicit zeros.
        for reason in Reject::ALL {
            let _ = m.rejected.get_or_create(&ReasonLabels { reason });
        }
        m
    }

    pub fn reject(&self, reason: Reject) {
        self.rejected.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// The handles of one routed SNI name: those alive if any holder has them, else new.
    /// A family lookup hashes the label under a lock, so routes resolve this once per subset
    /// and carry it to the next table ([`crate::routes::Subset`]), not once per connection.
    pub fn for_sni(&self, sni: String) -> Arc<ConnMetrics> {
        let s = &self.series;
        let mut live = s.live.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = live.get(&sni).and_then(Weak::upgrade) {
            return m;
        }
        let labels = SniLabels { sni };
        let m = Arc::new(ConnMetrics {
            opened: s.opened.get_or_create(&labels).clone(),
            active: s.active.get_or_create(&labels).clone(),
            sent: s.sent.get_or_create(&labels).clone(),
            received: s.received.get_or_create(&labels).clone(),
            series: s.clone(),
            closed: Default::default(),
            sni: labels.sni,
        });
        live.insert(m.sni.clone(), Arc::downgrade(&m));
        m
    }
}

/// The per-SNI metric handles a forwarded connection updates, and the label itself (for the
/// access log). A `connections_closed` series appears only once a connection ends that
/// way, as before.
#[derive(Debug)]
pub struct ConnMetrics {
    pub sni: String,
    pub opened: Counter,
    pub active: Gauge,
    pub sent: Counter,
    pub received: Counter,
    series: SniSeries,
    /// By position in [`End::OUTCOMES`], filled on first use.
    closed: [OnceLock<Counter>; End::OUTCOMES.len()],
}

impl ConnMetrics {
    /// Counts one connection that ended with `outcome` ([`End::as_str`]).
    pub fn closed(&self, outcome: &'static str) {
        let labels = || CloseLabels {
            sni: self.sni.clone(),
            outcome,
        };
        match End::OUTCOMES.iter().position(|o| *o == outcome) {
            Some(i) => self.closed[i]
                .get_or_init(|| self.series.closed.get_or_create(&labels()).clone())
                .inc(),
            None => self.series.closed.get_or_create(&labels()).inc(),
        };
    }
}

impl Drop for ConnMetrics {
    /// The last holder of the name is gone: its series go, unless newer handles hold the
    /// name already (it was routed again while these were dropping).
    fn drop(&mut self) {
        let s = &self.series;
        let mut live = s.live.lock().unwrap_or_else(|e| e.into_inner());
        let ours = live
            .get(&self.sni)
            .is_some_and(|w| std::ptr::eq(w.as_ptr(), self));
        if !ours {
            return;
        }
        live.remove(&self.sni);
        for outcome in End::OUTCOMES {
            s.closed.remove(&CloseLabels {
                sni: self.sni.clone(),
                outcome,
            });
        }
        let labels = SniLabels {
            sni: std::mem::take(&mut self.sni),
        };
        s.opened.remove(&labels);
        s.active.remove(&labels);
        s.sent.remove(&labels);
        s.received.remove(&labels);
    }
}

/// Route-table metrics, shared by every discovery source.
#[derive(Clone, Default)]
pub struct RouteMetrics {
    pub routes: Gauge,
    pub endpoints: Gauge,
    pub left_out: Gauge,
    pub too_long: Gauge,
    pub generation: Gauge,
    pub reloads: Counter,
    pub reload_errors: Counter,
    pub last_reload_ok: Gauge,
    /// Seconds since the source last confirmed its view (Kubernetes: since the watch was healthy).
    pub stale_seconds: Gauge,
}

impl RouteMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = RouteMetrics::default();
        let r = registry;
        r.register(
            "route_table_routes",
            "(host, port) routes in the current table",
            m.routes.clone(),
        );
        r.register(
            "route_table_endpoints",
            "Endpoints in the current table",
            m.endpoints.clone(),
        );
        r.register(
            "route_table_endpoints_left_out",
            "Endpoints at a passthrough port (15443 or the gateway's own), never dialed: a \
             client could make the gateways connect to each other without end",
            m.left_out.clone(),
        );
        r.register(
            "route_table_sni_names_too_long",
            "SNI names of routes and subsets longer than any TLS client sends (255 bytes): \
             unreachable through 15443, reachable over HBONE",
            m.too_long.clone(),
        );
        r.register(
            "route_table_generation",
            "Generation of the current table",
            m.generation.clone(),
        );
        r.register(
            "route_table_reloads",
            "Route tables published",
            m.reloads.clone(),
        );
        r.register(
            "route_table_reload_errors",
            "Reloads rejected; the last good table kept serving",
            m.reload_errors.clone(),
        );
        r.register(
            "route_table_last_reload_ok",
            "1 when the last reload succeeded, 0 when it failed",
            m.last_reload_ok.clone(),
        );
        r.register(
            "route_table_stale_seconds",
            "Seconds the discovery source has been unable to refresh",
            m.stale_seconds.clone(),
        );
        m
    }
}
