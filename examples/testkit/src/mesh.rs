//! The demo mesh's names, as Istio spells them: one namespace (`istioinaction`, from
//! "Istio in Action"), services in two clusters, SPIFFE ids in the default trust domain and
//! the SNI routing keys a sidecar sends to an east-west gateway. Built by functions so a
//! test never re-types a name it could get wrong.

/// Istio's default trust domain, and the cluster DNS suffix of every host.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// The namespace every demo workload runs in.
pub const NAMESPACE: &str = "istioinaction";

/// The two clusters' names as `meshctl certs init --clusters` takes them.
pub const WEST_CLUSTER: &str = "west-cluster";
pub const EAST_CLUSTER: &str = "east-cluster";

/// Service (and service-account) names of the demo workloads.
pub const CATALOG: &str = "catalog";
pub const WEBAPP: &str = "webapp";
pub const SIMPLE_BACKEND: &str = "simple-backend";

/// The gateway's mTLS port for auto-passthrough, and its status (admin) port.
pub const GATEWAY_PORT: u16 = 15443;
pub const STATUS_PORT: u16 = 15021;

/// A service's cluster-local host name: `catalog` → `catalog.istioinaction.svc.cluster.local`.
pub fn host(service: &str) -> String {
    host_in(NAMESPACE, service)
}

/// `service.namespace.svc.cluster.local`.
pub fn host_in(namespace: &str, service: &str) -> String {
    format!("{service}.{namespace}.svc.{TRUST_DOMAIN}")
}

/// A workload's SPIFFE id in the demo namespace:
/// `webapp` → `spiffe://cluster.local/ns/istioinaction/sa/webapp`.
pub fn spiffe_id(service_account: &str) -> String {
    spiffe_id_in(NAMESPACE, service_account)
}

/// `spiffe://cluster.local/ns/<namespace>/sa/<service_account>`.
pub fn spiffe_id_in(namespace: &str, service_account: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}")
}

/// Istio's SNI routing key for a port, a subset (empty for none) and a host:
/// `outbound_.80_.v1_.catalog.istioinaction.svc.cluster.local`.
pub fn sni(port: u16, subset: &str, host: &str) -> String {
    format!("outbound_.{port}_.{subset}_.{host}")
}

/// The SNI a sidecar sends for a demo service without a subset:
/// `catalog`, 80 → `outbound_.80_._.catalog.istioinaction.svc.cluster.local`.
pub fn outbound(port: u16, service: &str) -> String {
    sni(port, "", &host(service))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_istios_spelling() {
        assert_eq!(host(CATALOG), "catalog.istioinaction.svc.cluster.local");
        assert_eq!(
            spiffe_id(WEBAPP),
            "spiffe://cluster.local/ns/istioinaction/sa/webapp"
        );
        assert_eq!(
            outbound(80, CATALOG),
            "outbound_.80_._.catalog.istioinaction.svc.cluster.local"
        );
        assert_eq!(
            sni(9080, "v1", &host_in("default", "reviews")),
            "outbound_.9080_.v1_.reviews.default.svc.cluster.local"
        );
    }
}
