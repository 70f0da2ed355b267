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

    /// Publishes `specs` as the new table; `zone` is the gateway's own, when known (services
    /// that prefer close endpoints try those in it first).
    pub fn publish(
        &self,
        source: &str,
        specs: &[ServiceSpec],
        zone: Option<&Arc<str>>,
    ) -> Arc<RouteTable> {
        let before = self.routes.load();
        let table = self.routes.publish_in(specs, zone);
        self.metrics.routes.set(table.len() as i64);
        self.metrics.endpoints.set(table.endpoint_count() as i64);
        self.metrics.left_out.set(table.left_out.len() as i64);
        if let Some(first) = changed_to(before.as_deref(), &table, |t| &t.left_out) {
            // Expected once per start in a cluster: the east-west gateway's own Service.
            tracing::info!(
                source,
                count = table.left_out.len(),
                first = %format_args!("{}:{} -> {}", first.host, first.port, first.endpoint),
                "endpoints at a passthrough port left out (dialing one would loop through the gateways)"
            );
        }
        self.metrics.too_long.set(table.too_long.len() as i64);
        if let Some(first) = changed_to(before.as_deref(), &table, |t| &t.too_long) {
            // A misconfiguration to fix at the source (a long ServiceEntry host or subset name).
            tracing::warn!(
                source,
                count = table.too_long.len(),
                first = %SniName::new(first.port, first.subset.as_str(), first.host.as_str()),
                first_len = first.len,
                "SNI names longer than {MAX_SNI_LEN} bytes: no TLS client sends them, so sidecars cannot reach these through 15443 (HBONE can); shorten the host or subset (/debug/routes lists them)"
            );
        }
        // The generation last: a reader that sees it has the other series of this table too.
        self.metrics.reloads.inc();
        self.metrics.last_reload_ok.set(1);
        self.metrics.generation.set(table.generation as i64);
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
        // The error count last: a reader that sees it sees `last_reload_ok` 0 too.
        self.metrics.last_reload_ok.set(0);
        self.metrics.reload_errors.inc();
        let kept = self.routes.load().map(|t| t.generation);
        tracing::error!(
            source,
            %error,
            kept_generation = kept,
            "route update rejected; keeping the last good table"
        );
    }

    pub fn metrics(&self) -> &RouteMetrics {
        &self.metrics
    }
}

/// The first entry of a list of `table` that differs from `before`'s and is not empty: what
/// a publish logs once per change rather than once per table.
fn changed_to<'t, T: PartialEq>(
    before: Option<&RouteTable>,
    table: &'t RouteTable,
    list: impl Fn(&RouteTable) -> &Vec<T>,
) -> Option<&'t T> {
    let now = list(table);
    let same = before.is_some_and(|b| list(b) == now);
    (!same).then(|| now.first()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_is_announced_when_it_changes_to_something() {
        let spec = |host: &str| ServiceSpec {
            host: host.into(),
            ports: vec![80],
            subsets: Arc::default(),
            waypoint: None,
            canary: None,
            endpoints: Vec::new(),
            prefer_close: false,
            tls: Arc::default(),
            conn: Arc::default(),
        };
        let long = "a".repeat(240);
        let routes = Routes::new();
        let empty = routes.publish(&[spec("a.local")]);
        let one = routes.publish(&[spec("a.local"), spec(&long)]);
        let same = routes.publish(&[spec(&long)]);
        fn too_long(t: &RouteTable) -> &Vec<crate::routes::TooLong> {
            &t.too_long
        }
        assert_eq!(changed_to(None, &empty, too_long), None);
        assert_eq!(
            changed_to(Some(&empty), &one, too_long).map(|l| l.len),
            Some(256)
        );
        assert_eq!(changed_to(Some(&one), &same, too_long), None);
        assert_eq!(changed_to(Some(&one), &empty, too_long), None);
        assert!(changed_to(None, &one, too_long).is_some());
    }
}
