//! What `check` gathers and what its rules conclude about each cluster: plain data, typed
//! with k8s_openapi where a rule reads a field. `gather.rs` fills these, `rules/` reads them.

use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, Service};
use kube::config::Kubeconfig;

/// One readable cluster's objects that the cluster checks look at.
#[derive(Debug, Default)]
pub struct ClusterFacts {
    pub context: String,
    /// istiod's namespace (name), and the object if it exists.
    pub ns: String,
    pub namespace: Option<Namespace>,
    /// `<ns>/cacerts` (only looked up when the namespace exists).
    pub cacerts: Option<Secret>,
    /// The east-west gateway's Service and pods.
    pub gateway: Option<Service>,
    pub pods: Vec<Pod>,
    /// The cluster's Nodes, read only for a NodePort gateway (istiod gives it their
    /// ExternalIP addresses); `Err`: why they could not be listed.
    pub nodes: Option<Result<Vec<k8s_openapi::api::core::v1::Node>, String>>,
    /// The gateway's ClusterRole as `gateway install` names it: `None` when there is none,
    /// `Err`: why it could not be read (a context that may not read ClusterRoles).
    pub gateway_role: Option<Result<serde_json::Value, String>>,
    /// The ClusterRoleBinding of that name (read only when the role is there), likewise.
    pub gateway_binding: Option<Result<serde_json::Value, String>>,
    /// Only when the role is there: what the API server says the gateway's account may not
    /// do of what the gateway reads (one SubjectAccessReview per resource and verb), or why
    /// it could not be asked.
    pub gateway_denied: Option<Result<Vec<Ungranted>, String>>,
}

/// One resource and the verbs on it that are not granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ungranted {
    pub group: String,
    pub resource: String,
    pub verbs: Vec<String>,
}

/// One key of a remote secret stored in a cluster (istiod registers a cluster per key): the
/// cluster ID it is keyed by, and its kubeconfig, parsed once by `gather` (the error text
/// when it does not parse).
#[derive(Debug, Clone)]
pub struct StoredRemote {
    /// The Secret's name (in istiod's namespace).
    pub secret: String,
    pub cluster: String,
    pub kubeconfig: Result<Kubeconfig, String>,
}

/// Why the live check of a stored kubeconfig failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveFailure {
    /// No client could be built from it (bad base64 or PEM, a current-context naming no
    /// context, ...): no request was sent.
    Unusable,
    /// The request to list Services failed (`kube::classify`).
    Request(crate::kube::Failure),
}

/// Why a cluster could not be read.
#[derive(Debug, Clone)]
pub enum Unread {
    /// The API server answered 401 to the kubeconfig's credential.
    Refused {
        server: String,
        user: String,
        error: String,
    },
    /// The kubeconfig's credential could not be used, so nothing was sent (a failed plugin,
    /// a token that fits no HTTP header).
    Unusable { user: String, error: String },
    /// No answer, or any other failure to connect.
    Unreachable { error: String, fix: String },
}

/// What check concluded about one cluster, for the pair and mesh checks.
#[derive(Debug, Clone)]
pub struct Seen {
    pub context: String,
    /// The cluster ID: `--cluster-name`, else what join recorded, else the context.
    pub name: String,
    /// False when the cluster could not be read and no `--cluster-name` gave its ID.
    pub name_known: bool,
    /// The name is the context's, for want of a flag or a recorded ID.
    pub name_guessed: bool,
    /// Why meshctl could not read the cluster ("unreachable", ...); then the fields below
    /// are empty.
    pub unread: Option<&'static str>,
    pub network: Option<String>,
    /// The DER certificates of the cacerts root.
    pub root: Option<Vec<Vec<u8>>>,
    /// The UID of its `kube-system` Namespace (which cluster the context reaches), when read.
    pub uid: Option<String>,
}

/// One readable cluster's ambient objects (read only when the cluster could be read).
#[derive(Debug, Default)]
pub struct AmbientFacts {
    /// istiod's Deployments (`app=istiod`).
    pub istiods: Vec<k8s_openapi::api::apps::v1::Deployment>,
    /// The east-west gateway's Deployment.
    pub gateway: Option<k8s_openapi::api::apps::v1::Deployment>,
    /// The gateway's HBONE certificate Secret.
    pub hbone_secret: Option<Secret>,
    /// Gateway API Gateways of class `istio-remote` (JSON: not a k8s_openapi type).
    pub remote_gateways: Vec<serde_json::Value>,
    /// Services labelled `istio.io/global=true`, as `namespace/name`.
    pub global_services: Vec<String>,
    /// Those of them bound to a waypoint.
    pub waypoint_bound: Vec<WaypointBinding>,
}

/// A global Service bound to a waypoint by an `istio.io/use-waypoint` label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaypointBinding {
    /// The Service, `namespace/name`.
    pub service: String,
    /// The label's value, the waypoint's name.
    pub label: String,
    /// The waypoint Gateway, `namespace/name` (`istio.io/use-waypoint-namespace`, else the
    /// Service's namespace).
    pub waypoint: String,
    /// The label is the Namespace's, not the Service's own.
    pub from_namespace: bool,
    /// The Gateway exists with `status.addresses` (istiod's condition for a waypoint: until
    /// then it ignores the binding).
    pub ready: bool,
    /// Its canary waypoint (`istio.io/use-waypoint-canary`), if one is named.
    pub canary: Option<CanaryBinding>,
}

/// A canary waypoint named with a waypoint binding: from the same object, a Service's own
/// label and annotation overriding its Namespace's when the waypoint is the Namespace's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryBinding {
    /// The canary Gateway, `namespace/name`.
    pub waypoint: String,
    /// `istio.io/use-waypoint-canary-weight` as written; absent is 0.
    pub weight: Option<String>,
    /// The Gateway exists with `status.addresses`.
    pub ready: bool,
}
