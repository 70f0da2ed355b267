//! What istiod reads in a *remote* cluster, and so what the reader role of a remote secret
//! grants: exactly that, minus Secrets (unless the user opts in).
//!
//! Derived from istio/istio's remote-cluster code (every path below is in istio/istio):
//! - `pilot/pkg/serviceregistry/kube/controller/multicluster.go` (`NewMulticluster`): for each
//!   remote secret istiod builds `NewController(client, …)` and `initializeCluster`;
//! - `pilot/pkg/serviceregistry/kube/controller/controller.go` (`NewController`): informers on
//!   Namespaces, Services, Nodes and Pods; `endpointslice.go` (`newEndpointSliceController`):
//!   EndpointSlices;
//! - `pilot/pkg/serviceregistry/kube/controller/network.go` (`initNetworkManager`): ConfigMaps
//!   (the meshNetworks collection), Namespaces (the system namespace's network label), Nodes,
//!   and Gateway API `Gateway`s labelled `topology.istio.io/network` (network gateways);
//! - `pilot/pkg/serviceregistry/kube/controller/ambient/multicluster/cluster.go` (`Run`): the
//!   ambient index's per-cluster informers: Namespaces, Pods, Gateways, Services, Nodes,
//!   EndpointSlices;
//! - `pkg/kube/kclient/crdwatcher.go` (`newCrdWatcher`): delayed informers (Gateways,
//!   WorkloadEntries) wait for their CRD, through a list/watch of CustomResourceDefinitions;
//! - `multicluster.go` (`createWleConfigStore`): WorkloadEntries when
//!   `PILOT_ENABLE_CROSS_CLUSTER_WORKLOAD_ENTRY` (default on).
//!
//! Informers only list and watch (reads come from their cache), so the verbs are list and watch.
//! Left out on purpose (see README "The reader role"): TokenReviews (created only when a remote
//! cluster's workloads talk to this istiod, i.e. primary-remote; meshctl joins primaries),
//! Secrets and the SubjectAccessReviews that go with them (`--reader-allow-secrets`), MCS ServiceExports/Imports (`PILOT_ENABLE_MCS_SERVICE_DISCOVERY`, default
//! off), Endpoints and ReplicaSets (no informer reads them any more).

use serde_json::{Value, json};

use crate::istio::ISTIO_NETWORKING_GROUP;

/// One permission: `verbs` on `resource` in API group `group` ("" is the core group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReaderRule {
    pub group: &'static str,
    pub resource: &'static str,
    pub verbs: &'static [&'static str],
    /// Where istiod reads it (istio/istio path).
    pub source: &'static str,
}

const LIST_WATCH: &[&str] = &["list", "watch"];

/// istiod's remote-cluster reads, Secrets excluded.
pub const READER_RULES: &[ReaderRule] = &[
    ReaderRule {
        group: "",
        resource: "namespaces",
        verbs: LIST_WATCH,
        source: "pilot/pkg/serviceregistry/kube/controller/controller.go (NewController)",
    },
    ReaderRule {
        group: "",
        resource: "services",
        verbs: LIST_WATCH,
        source: "pilot/pkg/serviceregistry/kube/controller/controller.go (NewController)",
    },
    ReaderRule {
        group: "",
        resource: "pods",
        verbs: LIST_WATCH,
        source: "pilot/pkg/serviceregistry/kube/controller/controller.go (NewController)",
    },
    ReaderRule {
        group: "",
        resource: "nodes",
        verbs: LIST_WATCH,
        source: "pilot/pkg/serviceregistry/kube/controller/controller.go (NewController), network.go",
    },
    ReaderRule {
        group: "",
        resource: "configmaps",
        verbs: LIST_WATCH,
        source: "pilot/pkg/serviceregistry/kube/controller/network.go (initNetworkManager: meshNetworks)",
    },
    ReaderRule {
        group: "discovery.k8s.io",
        resource: "endpointslices",
        verbs: LIST_WATCH,
        source: "pilot/pkg/serviceregistry/kube/controller/endpointslice.go",
    },
    ReaderRule {
        group: "gateway.networking.k8s.io",
        resource: "gateways",
        verbs: LIST_WATCH,
        source: "pilot/pkg/serviceregistry/kube/controller/network.go, ambient/multicluster/cluster.go",
    },
    ReaderRule {
        group: "apiextensions.k8s.io",
        resource: "customresourcedefinitions",
        verbs: LIST_WATCH,
        source: "pkg/kube/kclient/crdwatcher.go (newCrdWatcher)",
    },
    ReaderRule {
        group: ISTIO_NETWORKING_GROUP,
        resource: "workloadentries",
        verbs: LIST_WATCH,
        source: "pilot/pkg/serviceregistry/kube/controller/multicluster.go (createWleConfigStore)",
    },
];

/// `--reader-allow-secrets`: the remote cluster's `credentialName` Secrets (gateway TLS), read
/// by istiod's credentials controller, which also asks the cluster (SubjectAccessReview) whether
/// the gateway's service account may list Secrets before serving one
/// (`pilot/pkg/credentials/kube/secrets.go`, `Authorize`).
pub const SECRET_RULES: &[ReaderRule] = &[
    ReaderRule {
        group: "",
        resource: "secrets",
        verbs: &["get", "list", "watch"],
        source: "pilot/pkg/credentials/kube/secrets.go (NewCredentialsController)",
    },
    ReaderRule {
        group: "authorization.k8s.io",
        resource: "subjectaccessreviews",
        verbs: &["create"],
        source: "pilot/pkg/credentials/kube/secrets.go (Authorize)",
    },
];

/// The rules of the reader role.
pub fn reader_rules(allow_secrets: bool) -> Vec<ReaderRule> {
    let mut rules = READER_RULES.to_vec();
    if allow_secrets {
        rules.extend_from_slice(SECRET_RULES);
    }
    rules
}

/// The ClusterRole `rules` array: one entry per (group, resource).
pub fn role_rules(allow_secrets: bool) -> Vec<Value> {
    reader_rules(allow_secrets)
        .iter()
        .map(|r| json!({"apiGroups": [r.group], "resources": [r.resource], "verbs": r.verbs}))
        .collect()
}

/// `verb resource.group` as `kubectl auth can-i` spells it.
pub fn permission_name(group: &str, resource: &str, verb: &str) -> String {
    if group.is_empty() {
        format!("{verb} {resource}")
    } else {
        format!("{verb} {resource}.{group}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_secrets_unless_asked_and_no_writes() {
        let names = |allow| {
            reader_rules(allow)
                .iter()
                .flat_map(|r| {
                    r.verbs
                        .iter()
                        .map(move |v| permission_name(r.group, r.resource, v))
                })
                .collect::<Vec<_>>()
        };
        assert!(!names(false).iter().any(|n| n.contains("secrets")));
        assert!(names(true).contains(&"get secrets".to_string()));
        for n in names(true) {
            let verb = n.split(' ').next().unwrap();
            assert!(
                ["get", "list", "watch"].contains(&verb)
                    || n == "create subjectaccessreviews.authorization.k8s.io",
                "{n}"
            );
        }
        assert!(names(false).contains(&"watch gateways.gateway.networking.k8s.io".to_string()));
    }
}
