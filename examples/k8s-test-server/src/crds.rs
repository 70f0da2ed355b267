//! The CRDs the server can install on request: Istio's DestinationRule, PeerAuthentication,
//! WorkloadEntry, ServiceEntry and Gateway, and Gateway API's Gateway.

pub(crate) const DESTINATION_RULE_CRD: &str = r#"{
  "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
  "metadata": {"name": "destinationrules.networking.istio.io", "labels": {"app": "istio-pilot", "chart": "istio"}},
  "spec": {"group": "networking.istio.io", "scope": "Namespaced",
    "names": {"plural": "destinationrules", "singular": "destinationrule", "kind": "DestinationRule", "listKind": "DestinationRuleList", "shortNames": ["dr"], "categories": ["istio-io", "networking-istio-io"]},
    "versions": [
      {"name": "v1", "served": true, "storage": false, "subresources": {"status": {}}, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
      {"name": "v1alpha3", "served": true, "storage": true, "subresources": {"status": {}}, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
      {"name": "v1beta1", "served": true, "storage": false, "subresources": {"status": {}}, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}
    ]}
}"#;

/// Istio's PeerAuthentication (`security.istio.io`), served at v1 and v1beta1 (stored), as
/// Istio 1.22 and later install it.
pub(crate) const PEER_AUTHENTICATION_CRD: &str = r#"{
  "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
  "metadata": {"name": "peerauthentications.security.istio.io", "labels": {"app": "istio-pilot", "chart": "istio"}},
  "spec": {"group": "security.istio.io", "scope": "Namespaced",
    "names": {"plural": "peerauthentications", "singular": "peerauthentication", "kind": "PeerAuthentication", "listKind": "PeerAuthenticationList", "shortNames": ["pa"], "categories": ["istio-io", "security-istio-io"]},
    "versions": [
      {"name": "v1", "served": true, "storage": false, "subresources": {"status": {}}, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
      {"name": "v1beta1", "served": true, "storage": true, "subresources": {"status": {}}, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}
    ]}
}"#;

/// Istio's WorkloadEntry (`networking.istio.io`), served at v1, v1alpha3 (stored) and v1beta1
/// with a status subresource (the VM agent's health condition), as Istio 1.22 and later
/// install it.
pub(crate) const WORKLOAD_ENTRY_CRD: &str = r#"{
  "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
  "metadata": {"name": "workloadentries.networking.istio.io", "labels": {"app": "istio-pilot", "chart": "istio"}},
  "spec": {"group": "networking.istio.io", "scope": "Namespaced",
    "names": {"plural": "workloadentries", "singular": "workloadentry", "kind": "WorkloadEntry", "listKind": "WorkloadEntryList", "shortNames": ["we"], "categories": ["istio-io", "networking-istio-io"]},
    "versions": [
      {"name": "v1", "served": true, "storage": false, "subresources": {"status": {}}, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
      {"name": "v1alpha3", "served": true, "storage": true, "subresources": {"status": {}}, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
      {"name": "v1beta1", "served": true, "storage": false, "subresources": {"status": {}}, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}
    ]}
}"#;

/// Istio's ServiceEntry (`networking.istio.io`), served at v1, v1alpha3 (stored) and v1beta1
/// with a status subresource, as Istio 1.22 and later install it.
pub(crate) const SERVICE_ENTRY_CRD: &str = r#"{
  "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
  "metadata": {"name": "serviceentries.networking.istio.io", "labels": {"app": "istio-pilot", "chart": "istio"}},
  "spec": {"group": "networking.istio.io", "scope": "Namespaced",
    "names": {"plural": "serviceentries", "singular": "serviceentry", "kind": "ServiceEntry", "listKind": "ServiceEntryList", "shortNames": ["se"], "categories": ["istio-io", "networking-istio-io"]},
    "versions": [
      {"name": "v1", "served": true, "storage": false, "subresources": {"status": {}}, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
      {"name": "v1alpha3", "served": true, "storage": true, "subresources": {"status": {}}, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
      {"name": "v1beta1", "served": true, "storage": false, "subresources": {"status": {}}, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}
    ]}
}"#;

pub(crate) const GATEWAY_CRD: &str = r#"{
  "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
  "metadata": {"name": "gateways.networking.istio.io", "labels": {"app": "istio-pilot", "chart": "istio"}},
  "spec": {"group": "networking.istio.io", "scope": "Namespaced",
    "names": {"plural": "gateways", "singular": "gateway", "kind": "Gateway", "listKind": "GatewayList", "shortNames": ["gw"], "categories": ["istio-io", "networking-istio-io"]},
    "versions": [
      {"name": "v1", "served": true, "storage": false, "subresources": {"status": {}}, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
      {"name": "v1alpha3", "served": true, "storage": true, "subresources": {"status": {}}, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
      {"name": "v1beta1", "served": true, "storage": false, "subresources": {"status": {}}, "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}
    ]}
}"#;

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
