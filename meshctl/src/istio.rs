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

/// The reader ClusterRole and its ClusterRoleBinding (same name) of service account `sa` in
/// namespace `ns`: one pair per reader, so that making a remote secret for one service
/// account never changes what another may read (a binding's subjects are one atomic list:
/// a shared binding applied with a new subject would revoke the old one). The default
/// reader keeps the name meshctl always gave it, `meshctl-istio-reader-<ns>`, so existing
/// installs keep theirs; any other gets `meshctl-istio-reader-<ns>.<sa>`. A namespace has no
/// dot, so no two readers share a name. At most [`MAX_OBJECT_NAME`] characters when
/// [`reader_role_name_fits`].
pub fn reader_role_name(ns: &str, sa: &str) -> String {
    if sa == DEFAULT_READER_SA {
        format!("{READER_ROLE_PREFIX}{ns}")
    } else {
        format!("{READER_ROLE_PREFIX}{ns}.{sa}")
    }
}

/// What every reader ClusterRole and ClusterRoleBinding name starts with.
pub const READER_ROLE_PREFIX: &str = "meshctl-istio-reader-";

/// The longest object name meshctl makes (a DNS-1123 subdomain's limit).
pub const MAX_OBJECT_NAME: usize = 253;

/// Whether [`reader_role_name`] of `ns` and `sa` is at most [`MAX_OBJECT_NAME`] characters.
pub fn reader_role_name_fits(ns: &str, sa: &str) -> bool {
    reader_role_name(ns, sa).len() <= MAX_OBJECT_NAME
}

/// The service-account-token Secret meshctl creates for `sa` (istioctl's name).
pub fn reader_token_secret_name(sa: &str) -> String {
    format!("{sa}-istio-remote-secret-token")
}

/// The east-west gateway: Deployment, Service, ServiceAccount, … all carry this name, and
/// `app=<name>` selects its pods.
pub const GATEWAY_NAME: &str = "istio-eastwestgateway";
pub const APP_LABEL: &str = "app";
/// `istio: eastwestgateway` is what Istio's `cross-network-gateway` Gateway selects.
pub const ISTIO_LABEL: &str = "istio";
pub const ISTIO_VALUE: &str = "eastwestgateway";
/// The gateway's status port: health only (`--status-listen`), exposed by its Service.
pub const STATUS_PORT: u16 = 15021;
/// The gateway's admin port (`--admin`: metrics, the route table): the pod's, not the
/// Service's; 15020 is where Istio's proxies serve their merged metrics.
pub const ADMIN_PORT: u16 = 15020;
/// The port istiod advertises for cross-network traffic (AUTO_PASSTHROUGH, SNI routing).
pub const TLS_PORT: u16 = 15443;
/// On a gateway Service, the port istiod advertises instead of [`TLS_PORT`].
pub const GATEWAY_PORT_LABEL: &str = "networking.istio.io/gatewayPort";
/// A NodePort gateway Service gets addresses from istiod only with this annotation (a JSON
/// label selector of the nodes whose ExternalIP addresses it takes; `{}`: every node).
/// istio/istio `pilot/pkg/serviceregistry/kube/controller/util.go` `isNodePortGatewayService`.
pub const NODE_SELECTOR_ANNOTATION: &str = "traffic.istio.io/nodeSelector";
/// Istio's Gateway exposing `*.local` on 15443 (`--expose-services`).
pub const EXPOSE_GATEWAY: &str = "cross-network-gateway";
/// The API version of Istio's `Gateway` (and its group, for RBAC rules).
pub const ISTIO_NETWORKING_V1: &str = "networking.istio.io/v1";
pub const ISTIO_NETWORKING_GROUP: &str = "networking.istio.io";
/// The group of Istio's PeerAuthentications, which the gateway reads (RBAC rules).
pub const ISTIO_SECURITY_GROUP: &str = "security.istio.io";
/// The CRD that must be served (version v1) before an Istio `Gateway` can be applied.
pub const GATEWAY_CRD: &str = "gateways.networking.istio.io";

/// The gateway's ClusterRole (and its binding) in namespace `ns`.
pub fn gateway_role_name(ns: &str) -> String {
    format!("meshctl-eastwestgateway-{ns}")
}

/// The HBONE (ambient) port: istiod pairs it with 15443 on the network-labelled Service
/// (`network.go` `getGatewayDetails`), and peers' ztunnels dial it.
pub const HBONE_PORT: u16 = 15008;
/// The Service port name and appProtocol of Istio's own ambient east-west gateway.
pub const HBONE_PORT_NAME: &str = "mesh";
pub const HBONE_APP_PROTOCOL: &str = "hbone";
/// The Secret holding the gateway's workload certificate in Istio's file-mounted layout
/// (`cert-chain.pem`, `key.pem`, `root-cert.pem`), mounted at [`HBONE_CERTS_DIR`].
pub const HBONE_CERTS_SECRET: &str = "istio-eastwestgateway-hbone-certs";
pub const HBONE_CERTS_DIR: &str = "/etc/istio/hbone-certs";
pub const HBONE_CERT_KEYS: [&str; 3] = ["cert-chain.pem", "key.pem", "root-cert.pem"];
/// The projected service-account token for istiod's CA (audience `istio-ca`), where Istio's
/// gateway template mounts it.
pub const ISTIO_TOKEN_DIR: &str = "/var/run/secrets/tokens";
pub const ISTIO_CA_AUDIENCE: &str = "istio-ca";

/// Kubernetes Gateway API `Gateway` (how ztunnels learn network gateways), and its CRD.
pub const GATEWAY_API_V1: &str = "gateway.networking.k8s.io/v1";
pub const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";
pub const GATEWAY_API_CRD: &str = "gateways.gateway.networking.k8s.io";
/// The class of a Gateway that announces a gateway Istio did not deploy.
pub const REMOTE_GATEWAY_CLASS: &str = "istio-remote";
/// Names the service account of an announced gateway (its expected SPIFFE identity).
pub const GATEWAY_SA_ANNOTATION: &str = "gateway.istio.io/service-account";
/// Marks a Service as global (exported to the other networks) in Istio's ambient profile.
pub const GLOBAL_SERVICE_LABEL: &str = "istio.io/global";
/// Binds a Service (or every Service of a Namespace) to a waypoint; `none` opts out.
pub const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";
/// The namespace of the waypoint `istio.io/use-waypoint` names (default: the object's own).
pub const USE_WAYPOINT_NAMESPACE_LABEL: &str = "istio.io/use-waypoint-namespace";
/// A second waypoint that takes a share of a Service's traffic (Istio 1.31, alpha), its
/// namespace, and its share in percent (an annotation, 0 to 100, default 0).
pub const USE_WAYPOINT_CANARY_LABEL: &str = "istio.io/use-waypoint-canary";
pub const USE_WAYPOINT_CANARY_NAMESPACE_LABEL: &str = "istio.io/use-waypoint-canary-namespace";
pub const CANARY_WEIGHT_ANNOTATION: &str = "istio.io/use-waypoint-canary-weight";
/// istiod's switch for ambient multi-network.
pub const AMBIENT_MULTI_NETWORK_ENV: &str = "AMBIENT_ENABLE_MULTI_NETWORK";

/// The `istio-remote` Gateway in one cluster announcing network `network`'s gateway.
pub fn announce_gateway_name(network: &str) -> String {
    format!("meshctl-remote-{network}")
}

/// `spiffe://<td>/ns/<ns>/sa/<sa>`: what peers expect the gateway to present.
pub fn spiffe_id(trust_domain: &str, ns: &str, sa: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{ns}/sa/{sa}")
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
    fn every_reader_has_its_own_role_name() {
        assert_eq!(
            reader_role_name("istio-system", DEFAULT_READER_SA),
            "meshctl-istio-reader-istio-system"
        );
        assert_eq!(
            reader_role_name("istio-system", "other-sa"),
            "meshctl-istio-reader-istio-system.other-sa"
        );
        // Namespace "a" with account "b-c" and namespace "a-b" with account "c" differ.
        assert_ne!(reader_role_name("a", "b-c"), reader_role_name("a-b", "c"));
        let longest_sa = "a".repeat(MAX_OBJECT_NAME - READER_ROLE_PREFIX.len() - "ns.".len());
        assert!(reader_role_name_fits("ns", &longest_sa));
        assert!(!reader_role_name_fits("ns", &format!("{longest_sa}a")));
        assert!(reader_role_name_fits(&"n".repeat(63), DEFAULT_READER_SA));
    }

    #[test]
    fn the_selector_is_the_label() {
        assert_eq!(
            MANAGED_SELECTOR,
            format!("{MANAGED_BY_KEY}={MANAGED_BY_VALUE}")
        );
    }
}
