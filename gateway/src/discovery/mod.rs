//! Discovery sources feed the route table through one [`Publisher`].

pub mod file;
pub mod k8s;

use std::fmt::Display;
use std::sync::Arc;

use crate::metrics::RouteMetrics;
use crate::routes::{RouteTable, Routes, ServiceSpec};
use crate::sni_name::{MAX_SNI_LEN, SniName};

/// The one interface every discovery source (file, Kubernetes) publishes through.
#[derive(Clone)]
pub struct Publisher {
    routes: Arc<Routes>,
    metrics: RouteMetrics,
}

impl Publisher {
    pub fn new(routes: Arc<Routes>, metrics: RouteMetrics) -> Self {
        Publisher { routes, metrics }
    }

    pub fn publish(&self, source: &str, specs: &[ServiceSpec]) -> Arc<RouteTable> {
        let before = self.routes.load();
        let table = self.routes.publish(specs);
        self.metrics.routes.set(table.len() as i64);
        self.metrics.endpoints.set(table.endpoint_count() as i64);
        self.metrics.left_out.set(table.left_out.len() as i64);
        let known = before
            .as_ref()
            .is_some_and(|b| b.left_out == table.left_out);
        if !known && !table.left_out.is_empty() {
            // Expected once per start in a cluster: the east-west gateway's own Service.
            let first = &table.left_out[0];
            tracing::info!(
                source,
                count = table.left_out.len(),
                first = %format_args!("{}:{} -> {}", first.host, first.port, first.endpoint),
                "endpoints at a passthrough port left out (dialing one would loop through the gateways)"
            );
        }
        self.metrics.too_long.set(table.too_long.len() as i64);
        let known = before
            .as_ref()
            .is_some_and(|b| b.too_long == table.too_long);
        if !known && !table.too_long.is_empty() {
            // A misconfiguration to fix at the source (a long ServiceEntry host or subset name).
            let first = &table.too_long[0];
            tracing::warn!(
                source,
                count = table.too_long.len(),
                first = %SniName::new(first.port, first.subset.as_str(), first.host.as_str()),
                first_len = first.len,
                "SNI names longer than {MAX_SNI_LEN} bytes: no TLS client sends them, so sidecars cannot reach these through 15443 (HBONE can); shorten the host or subset (/debug/routes lists them)"
            );
        }
        self.metrics.generation.set(table.generation as i64);
        self.metrics.reloads.inc();
        self.metrics.last_reload_ok.set(1);
        tracing::info!(
            source,
            generation = table.generation,
            routes = table.len(),
            endpoints = table.endpoint_count(),
            "route table published"
        );
        table
    }

    /// A good read that yields the table already serving: nothing to publish, but the source
    /// is healthy again (after a failed reload, restoring the old content must say so).
    pub fn confirm(&self, source: &str) {
        self.metrics.last_reload_ok.set(1);
        tracing::debug!(source, "route update matches the current table");
    }

    /// A rejected update: the last good table keeps serving.
    pub fn reject(&self, source: &str, error: &dyn Display) {
        self.metrics.reload_errors.inc();
        self.metrics.last_reload_ok.set(0);
        let kept = self.routes.load().map(|t| t.generation);
        tracing::error!(source, %error, kept_generation = ?kept, "route update rejected; keeping the last good table");
    }

    pub fn metrics(&self) -> &RouteMetrics {
        &self.metrics
    }
}
