//! Kubernetes objects as the API server stores them (`serde_json::Value`, ready for the
//! Kubernetes API test server's store or a kube `Api`), with only the fields discovery
//! reads. Callers add what their test needs on the returned value
//! (`v["metadata"]["annotations"] = ...`).

use std::net::IpAddr;

use serde_json::{Map, Value, json};

/// A Service port: `name`, `port`, `targetPort`, protocol TCP.
#[derive(Debug, Clone, Copy)]
pub struct ServicePort<'a> {
    pub name: &'a str,
    pub port: u16,
    pub target_port: u16,
}

/// A Service selecting pods labelled `app: <name>`.
pub fn service(namespace: &str, name: &str, ports: &[ServicePort]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|p| json!({"name": p.name, "port": p.port, "protocol": "TCP", "targetPort": p.target_port}))
        .collect();
    json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": name, "namespace": namespace},
           "spec": {"ports": ports, "selector": {"app": name}}})
}

/// One endpoint of a slice: its address, whether it is ready (and serving), and its pod.
#[derive(Debug, Clone, Copy)]
pub struct Endpoint<'a> {
    pub address: IpAddr,
    pub ready: bool,
    pub pod: &'a str,
}

/// An IPv4 EndpointSlice of `service` with one port (`port_name`, `port`), managed by the
/// given controller name (`endpointslice-controller.k8s.io` for the real one).
pub fn endpoint_slice(
    namespace: &str,
    name: &str,
    service: &str,
    (port_name, port): (&str, u16),
    managed_by: &str,
    endpoints: &[Endpoint],
) -> Value {
    let endpoints: Vec<Value> = endpoints
        .iter()
        .map(|e| {
            json!({"addresses": [e.address.to_string()],
                   "conditions": {"ready": e.ready, "serving": e.ready},
                   "targetRef": {"kind": "Pod", "name": e.pod, "namespace": namespace}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": name, "namespace": namespace,
                        "labels": {"kubernetes.io/service-name": service,
                                   "endpointslice.kubernetes.io/managed-by": managed_by}},
           "addressType": "IPv4",
           "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
           "endpoints": endpoints})
}

/// [`endpoint_slice`] `<service>-1` of `service` listing one ready endpoint, `address` of
/// Pod `pod`.
pub fn one_endpoint_slice(
    namespace: &str,
    service: &str,
    port: (&str, u16),
    address: IpAddr,
    pod: &str,
) -> Value {
    let ep = Endpoint {
        address,
        ready: true,
        pod,
    };
    let name = format!("{service}-1");
    endpoint_slice(namespace, &name, service, port, "test", &[ep])
}

/// A Pod with these labels and one container.
pub fn pod(namespace: &str, name: &str, labels: &[(&str, &str)]) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": namespace, "labels": string_map(labels)},
           "spec": {"containers": [{"name": "app", "image": "registry.example/app:1.0"}]}})
}

/// The label Istio's sidecar injector puts on every pod it injects; istiod (and the gateway)
/// take a pod's endpoints for mTLS ones, reachable through 15443, only with it.
pub const SIDECAR_TLS_MODE: (&str, &str) = ("security.istio.io/tlsMode", "istio");

/// A Pod as Istio's sidecar injector leaves it: [`pod`] with [`SIDECAR_TLS_MODE`] and the
/// injector's `sidecar.istio.io/status` annotation.
pub fn sidecar_pod(namespace: &str, name: &str, labels: &[(&str, &str)]) -> Value {
    let mut v = pod(namespace, name, labels);
    let (k, val) = SIDECAR_TLS_MODE;
    v["metadata"]["labels"][k] = Value::from(val);
    v["metadata"]["annotations"] =
        json!({"sidecar.istio.io/status": "{\"containers\":[\"istio-proxy\"]}"});
    v
}

/// An Istio WorkloadEntry (`networking.istio.io/v1`): a VM at `address` with these labels,
/// and `serviceAccount` when given (which makes it an mTLS endpoint, as istiod reads it).
pub fn workload_entry(
    namespace: &str,
    name: &str,
    address: IpAddr,
    labels: &[(&str, &str)],
    service_account: Option<&str>,
) -> Value {
    let mut spec = json!({"address": address.to_string(), "labels": string_map(labels)});
    if let Some(sa) = service_account {
        spec["serviceAccount"] = Value::from(sa);
    }
    json!({"apiVersion": "networking.istio.io/v1", "kind": "WorkloadEntry",
           "metadata": {"name": name, "namespace": namespace}, "spec": spec})
}

/// An Istio DestinationRule (`networking.istio.io/v1`) for `host`, with subsets given as
/// (name, labels).
pub fn destination_rule(
    namespace: &str,
    name: &str,
    host: &str,
    subsets: &[(&str, &[(&str, &str)])],
) -> Value {
    let subsets: Vec<Value> = subsets
        .iter()
        .map(|(n, labels)| json!({"name": n, "labels": string_map(labels)}))
        .collect();
    json!({"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
           "metadata": {"name": name, "namespace": namespace},
           "spec": {"host": host, "subsets": subsets}})
}

fn string_map(pairs: &[(&str, &str)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect::<Map<_, _>>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Pod, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    // Typed round trips: a misspelt field would be dropped by serde and the reads below
    // would come back empty.
    #[test]
    fn service_reads_back_as_a_typed_service() {
        let v = service(
            "istioinaction",
            "catalog",
            &[ServicePort {
                name: "http",
                port: 80,
                target_port: 3000,
            }],
        );
        let s: Service = serde_json::from_value(v).unwrap();
        assert_eq!(s.metadata.namespace.as_deref(), Some("istioinaction"));
        let spec = s.spec.unwrap();
        let p = &spec.ports.unwrap()[0];
        assert_eq!((p.name.as_deref(), p.port), (Some("http"), 80));
        assert_eq!(p.target_port, Some(IntOrString::Int(3000)));
        assert_eq!(spec.selector.unwrap()["app"], "catalog");
    }

    #[test]
    fn slice_reads_back_as_a_typed_endpoint_slice() {
        let v = endpoint_slice(
            "istioinaction",
            "catalog-abc",
            "catalog",
            ("http", 3000),
            "test",
            &[
                Endpoint {
                    address: [127, 0, 0, 2].into(),
                    ready: true,
                    pod: "catalog-a",
                },
                Endpoint {
                    address: [127, 0, 0, 3].into(),
                    ready: false,
                    pod: "catalog-b",
                },
            ],
        );
        let s: EndpointSlice = serde_json::from_value(v).unwrap();
        assert_eq!(
            s.metadata.labels.unwrap()["kubernetes.io/service-name"],
            "catalog"
        );
        assert_eq!(s.address_type, "IPv4");
        assert_eq!(s.ports.unwrap()[0].port, Some(3000));
        let eps = s.endpoints.unwrap();
        assert_eq!(eps[0].addresses, ["127.0.0.2"]);
        let cond = eps[1].conditions.as_ref().unwrap();
        assert_eq!((cond.ready, cond.serving), (Some(false), Some(false)));
        assert_eq!(
            eps[1].target_ref.as_ref().unwrap().name.as_deref(),
            Some("catalog-b")
        );
    }

    #[test]
    fn pod_and_destination_rule_carry_their_labels() {
        let p: Pod = serde_json::from_value(pod(
            "istioinaction",
            "catalog-a",
            &[("app", "catalog"), ("version", "v1")],
        ))
        .unwrap();
        assert_eq!(p.metadata.labels.unwrap()["version"], "v1");
        assert_eq!(p.spec.unwrap().containers.len(), 1);

        let dr = destination_rule(
            "istioinaction",
            "catalog",
            "catalog.istioinaction.svc.cluster.local",
            &[("v1", &[("version", "v1")]), ("v2", &[("version", "v2")])],
        );
        assert_eq!(
            dr["spec"]["host"],
            "catalog.istioinaction.svc.cluster.local"
        );
        assert_eq!(dr["spec"]["subsets"][1]["labels"]["version"], "v2");
    }
}
