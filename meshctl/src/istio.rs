//! Every Istio and Kubernetes name meshctl depends on, in one place: labels, annotations,
//! Secret names and types, the east-west gateway's names and ports, and the marks meshctl
//! puts on what it creates. Every other module imports these; none retypes them.

use serde_json::{Value, json};

/// istiod's namespace, unless `-n` names another.
pub const DEFAULT_NAMESPACE: &str = "istio-system";

/// The network of a cluster: on istiod's namespace (istiod's fallback network for workloads)
/// and on the gateway's Service (how istiod finds the network's gateway).
pub const NETWORK_LABEL: &str = "topology.istio.io/network";
/// The cluster name `join` used for this cluster, on istiod's namespace (read back by `check`).
pub const CLUSTER_NAME_ANNOTATION: &str = "meshctl.io/cluster-name";

/// The Secret istiod reads its CA from (plugged-in CA); its keys are `pki::CA_CERT` etc.
pub const CACERTS_SECRET: &str = "cacerts";

/// A root rotation's state, on `cacerts` (so that any machine can resume it): the stage
/// this cluster reached (`prepared`, `activated`, `finished`), the SHA-256 of the old and
/// the new root, and when the cluster's new intermediate was applied (RFC 3339).
pub const ROTATION_STAGE_ANNOTATION: &str = "meshctl.io/rotation-stage";
pub const ROTATION_OLD_ROOT_ANNOTATION: &str = "meshctl.io/rotation-old-root";
pub const ROTATION_NEW_ROOT_ANNOTATION: &str = "meshctl.io/rotation-new-root";
pub const ROTATION_ACTIVATED_AT_ANNOTATION: &str = "meshctl.io/rotation-activated-at";

/// Marks a remote secret for istiod's multicluster controller.
pub const MULTICLUSTER_LABEL: &str = "istio/multiCluster";
/// The cluster ID a remote secret holds (istioctl sets it).
pub const CLUSTER_ANNOTATION: &str = "networking.istio.io/cluster";
/// The service account whose token a remote secret carries (istioctl's default).
pub const DEFAULT_READER_SA: &str = "istio-reader-service-account";
/// Kubernetes' long-lived service-account token Secret, and the annotation naming its account.
pub const SA_TOKEN_TYPE: &str = "kubernetes.io/service-account-token";
pub const SA_NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";

/// Selects istiod's Deployments (`istiod`, and `istiod-<revision>` of revisioned installs);
/// the version is in the image tag of its `discovery` container.
pub const ISTIOD_SELECTOR: &str = "app=istiod";
pub const ISTIOD_CONTAINER: &str = "discovery";

/// The remote secret of cluster `cluster` (istioctl's name).
pub fn remote_secret_name(cluster: &str) -> String {
    format!("istio-remote-secret-{cluster}")
}

/// The reader ClusterRole (and its binding) for remote secrets of namespace `ns`.
pub fn reader_role_name(ns: &str) -> String {
    format!("meshctl-istio-reader-{ns}")
}

/// The east-west gateway: Deployment, Service, ServiceAccount, … all carry this name, and
/// `app=<name>` selects its pods.
pub const GATEWAY_NAME: &str = "istio-eastwestgateway";
pub const APP_LABEL: &str = "app";
/// `istio: eastwestgateway` is what Istio's `cross-network-gateway` Gateway selects.
pub const ISTIO_LABEL: &str = "istio";
pub const ISTIO_VALUE: &str = "eastwestgateway";
pub const STATUS_PORT: u16 = 15021;
/// The port istiod advertises for cross-network traffic (AUTO_PASSTHROUGH, SNI routing).
pub const TLS_PORT: u16 = 15443;
/// Istio's Gateway exposing `*.local` on 15443 (`--expose-services`).
pub const EXPOSE_GATEWAY: &str = "cross-network-gateway";
/// The API version of Istio's `Gateway` (and its group, for RBAC rules).
pub const ISTIO_NETWORKING_V1: &str = "networking.istio.io/v1";
pub const ISTIO_NETWORKING_GROUP: &str = "networking.istio.io";
/// The CRD that must be served (version v1) before an Istio `Gateway` can be applied.
pub const GATEWAY_CRD: &str = "gateways.networking.istio.io";

/// The gateway's ClusterRole (and its binding) in namespace `ns`.
pub fn gateway_role_name(ns: &str) -> String {
    format!("meshctl-eastwestgateway-{ns}")
}

/// Field manager of every server-side apply.
pub const MANAGER: &str = "meshctl";
/// Label on everything meshctl creates; `unjoin` deletes exactly what carries it.
pub const MANAGED_BY_KEY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "meshctl";
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=meshctl";

/// The `metadata.labels` map every managed object carries.
pub fn managed_labels() -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert(MANAGED_BY_KEY.into(), json!(MANAGED_BY_VALUE));
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_selector_is_the_label() {
        assert_eq!(
            MANAGED_SELECTOR,
            format!("{MANAGED_BY_KEY}={MANAGED_BY_VALUE}")
        );
    }
}
