//! The CRDs the server can install on request: Istio's DestinationRule, PeerAuthentication,
//! WorkloadEntry, ServiceEntry and Gateway, and Gateway API's Gateway and GatewayClass.

use serde_json::{Value, json};

/// The versions `networking.istio.io` types are served at (v1alpha3 stored), as Istio 1.22 and
/// later install them.
const NETWORKING_VERSIONS: (&[&str], &str) = (&["v1", "v1alpha3", "v1beta1"], "v1alpha3");

/// An Istio CRD as Istio's charts install it: namespaced, served at `versions.0` with
/// `versions.1` stored, each with a status subresource and a schema that keeps every field.
/// `names` is (plural, singular, kind, short name).
fn istio_crd(group: &str, names: [&str; 4], (versions, stored): (&[&str], &str)) -> Value {
    let [plural, singular, kind, short] = names;
    let versions: Vec<Value> = (versions.iter())
        .map(|&v| {
            json!({"name": v, "served": true, "storage": v == stored,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object",
                    "x-kubernetes-preserve-unknown-fields": true}}})
        })
        .collect();
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.{group}"),
            "labels": {"app": "istio-pilot", "chart": "istio"}},
        "spec": {"group": group, "scope": "Namespaced",
            "names": {"plural": plural, "singular": singular, "kind": kind,
                "listKind": format!("{kind}List"), "shortNames": [short],
                "categories": ["istio-io", group.replace('.', "-")]},
            "versions": versions}})
}

/// Istio's DestinationRule (`networking.istio.io`).
pub(crate) fn destination_rule_crd() -> Value {
    let names = [
        "destinationrules",
        "destinationrule",
        "DestinationRule",
        "dr",
    ];
    istio_crd("networking.istio.io", names, NETWORKING_VERSIONS)
}

/// Istio's PeerAuthentication (`security.istio.io`), served at v1 and v1beta1 (stored).
pub(crate) fn peer_authentication_crd() -> Value {
    let names = [
        "peerauthentications",
        "peerauthentication",
        "PeerAuthentication",
        "pa",
    ];
    istio_crd("security.istio.io", names, (&["v1", "v1beta1"], "v1beta1"))
}

/// Istio's WorkloadEntry (`networking.istio.io`); its status holds the VM agent's health
/// condition.
pub(crate) fn workload_entry_crd() -> Value {
    let names = ["workloadentries", "workloadentry", "WorkloadEntry", "we"];
    istio_crd("networking.istio.io", names, NETWORKING_VERSIONS)
}

/// Istio's ServiceEntry (`networking.istio.io`).
pub(crate) fn service_entry_crd() -> Value {
    let names = ["serviceentries", "serviceentry", "ServiceEntry", "se"];
    istio_crd("networking.istio.io", names, NETWORKING_VERSIONS)
}

/// Istio's Gateway (`networking.istio.io`).
pub(crate) fn gateway_crd() -> Value {
    istio_crd(
        "networking.istio.io",
        ["gateways", "gateway", "Gateway", "gw"],
        NETWORKING_VERSIONS,
    )
}

/// Gateway API's GatewayClass (cluster-scoped), served at v1 (stored) and v1beta1, with the
/// status subresource, as the standard channel's CRD has them.
pub(crate) const GATEWAY_CLASS_CRD: &str = r#"{
  "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
  "metadata": {"name": "gatewayclasses.gateway.networking.k8s.io"},
  "spec": {"group": "gateway.networking.k8s.io", "scope": "Cluster",
    "names": {"plural": "gatewayclasses", "singular": "gatewayclass", "kind": "GatewayClass", "listKind": "GatewayClassList", "shortNames": ["gc"]},
    "versions": [
      {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
      {"name": "v1beta1", "served": true, "storage": false, "subresources": {"status": {}}, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}
    ]}
}"#;

/// Gateway API's Gateway (`gateway.networking.k8s.io`), served at v1 (stored) and v1beta1, with
/// the status subresource, as the standard channel's CRD has them.
pub(crate) const GATEWAY_API_CRD: &str = r#"{
  "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
  "metadata": {"name": "gateways.gateway.networking.k8s.io"},
  "spec": {"group": "gateway.networking.k8s.io", "scope": "Namespaced",
    "names": {"plural": "gateways", "singular": "gateway", "kind": "Gateway", "listKind": "GatewayList", "shortNames": ["gtw"]},
    "versions": [
      {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
      {"name": "v1beta1", "served": true, "storage": false, "subresources": {"status": {}}, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}
    ]}
}"#;
