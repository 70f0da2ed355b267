//! The east-west gateway as Kubernetes objects, and installing them. The names and labels
//! are Istio's (`istio-eastwestgateway`, `istio: eastwestgateway`, `topology.istio.io/network`),
//! so istiod finds the Service as the network's gateway.

use anyhow::{Result, anyhow, bail};
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};

use super::namespace::{NAMESPACE_LABEL, validate_label_value};
use super::origin;
use crate::cli::{GatewayFlags, HboneCerts, Protocols, ServiceType};
use crate::istio::{
    ADMIN_PORT, APP_LABEL, EXPOSE_GATEWAY, GATEWAY_API_GROUP, GATEWAY_CRD, GATEWAY_NAME,
    HBONE_APP_PROTOCOL, HBONE_CERTS_DIR, HBONE_CERTS_SECRET, HBONE_PORT, HBONE_PORT_NAME,
    ISTIO_CA_AUDIENCE, ISTIO_LABEL, ISTIO_NETWORKING_GROUP, ISTIO_NETWORKING_V1,
    ISTIO_SECURITY_GROUP, ISTIO_TOKEN_DIR, ISTIO_VALUE, MANAGER, NETWORK_LABEL,
    NODE_SELECTOR_ANNOTATION, STATUS_PORT, TLS_PORT, gateway_role_name, managed_labels,
};
use crate::kube::{self as kc, Cluster, names};

/// Where Istio's gateway template mounts the `istio-ca-root-cert` ConfigMap (the mesh root,
/// which istiod's serving certificate chains to): volume `istiod-ca-cert`, this directory.
pub const ISTIO_ROOT_CONFIGMAP: &str = "istio-ca-root-cert";
pub const ISTIO_ROOT_DIR: &str = "/var/run/secrets/istio";
/// istiod's certificate service in namespace `ns` (istiod's own, `-n`), as ztunnel and
/// istio-agent dial it: `istiod.<ns>.svc:15012`.
pub fn istiod_ca_address(ns: &str) -> String {
    format!("istiod.{ns}.svc:15012")
}
/// Istio's cluster ID when `clusterName` is not set.
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

/// SIGTERM to exit: the gateway's drain grace (5 s) plus drain timeout (20 s) must fit.
pub const TERMINATION_GRACE_SECONDS: u32 = 30;

/// Is the Istio Gateway CRD served? (`gateways.networking.istio.io`, version v1)
pub async fn gateway_crd_served(c: &Cluster) -> Result<bool> {
    let crd = kc::get(
        c,
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        None,
        GATEWAY_CRD,
    )
    .await?;
    Ok(crd.is_some_and(|crd| {
        crd["spec"]["versions"]
            .as_array()
            .is_some_and(|v| v.iter().any(|v| v["name"] == "v1" && v["served"] == true))
    }))
}

/// What the gateway's discovery lists and watches, by API group and resource: `check` asks
/// the API server whether the gateway's account may. The role grants exactly these verbs
/// on them (no `get`: the gateway never reads one object), as its messages name them.
pub const GATEWAY_READS: [(&str, &str); 10] = [
    ("", "services"),
    ("", "pods"),
    ("", "namespaces"),
    ("discovery.k8s.io", "endpointslices"),
    (ISTIO_NETWORKING_GROUP, "destinationrules"),
    (ISTIO_NETWORKING_GROUP, "workloadentries"),
    (ISTIO_NETWORKING_GROUP, "serviceentries"),
    (ISTIO_SECURITY_GROUP, "peerauthentications"),
    (GATEWAY_API_GROUP, "gateways"),
    (GATEWAY_API_GROUP, "gatewayclasses"),
];
/// The verbs of [`GATEWAY_READS`].
pub const GATEWAY_READ_VERBS: [&str; 2] = ["list", "watch"];

/// The gateway's ClusterRole rules.
pub fn gateway_rules() -> Value {
    // Only what its informers do: no `get` (a watch starts from a list, never a read).
    let verbs = json!(GATEWAY_READ_VERBS);
    json!([
        {"apiGroups": [""], "resources": ["services", "pods", "namespaces"], "verbs": verbs},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": verbs},
        // Subsets, and VMs: WorkloadEntries a Service selects, ServiceEntries' hosts.
        {"apiGroups": [ISTIO_NETWORKING_GROUP], "resources": ["destinationrules", "workloadentries", "serviceentries"], "verbs": verbs},
        // A sidecar whose mTLS a PeerAuthentication disables takes no 15443 connection.
        {"apiGroups": [ISTIO_SECURITY_GROUP], "resources": ["peerauthentications"], "verbs": verbs},
        // Waypoints: a Service bound to one sends its tunnels there.
        {"apiGroups": [GATEWAY_API_GROUP], "resources": ["gateways", "gatewayclasses"], "verbs": verbs},
        // No CustomResourceDefinitions: the gateway finds its optional types by API discovery
        // (`/apis/<group>`, open to every account), not by reading CRD objects.
    ])
}

/// Applies the gateway objects; refuses `--expose-services` without Istio's Gateway CRD
/// before changing anything (unless `dry_run`). Callers run [`check_ip_family_policy`] first,
/// before their own first change. Refuses, before any change, when another installer's
/// gateway (its Deployment, Service, disruption budget or autoscaler) holds the names
/// ([`origin::ForeignGateway`]). Returns what it applies (or, with `dry_run`, would): `objs`
/// without the gateway's ServiceAccount or the `cross-network-gateway` when one exists that
/// meshctl did not make (Istio's gateway Helm chart makes the account `istio-eastwestgateway`
/// too; the rule is [`origin::writable`]): that one is used as it is, never relabelled, and
/// `unjoin` leaves it; install says so on stderr.
pub async fn install(c: &Cluster, ns: &str, objs: &[Value], dry_run: bool) -> Result<Vec<Value>> {
    let exposes = objs.iter().any(|o| o["kind"] == "Gateway");
    if exposes && !gateway_crd_served(c).await? {
        bail!(
            "--expose-services: context {:?} does not serve networking.istio.io/v1 Gateways \
             (CRD gateways.networking.istio.io missing): install Istio (its CRDs) first, then \
             run again with --expose-services",
            c.context
        );
    }
    let (planned, notices) = origin::writable(c, objs).await?;
    for n in notices {
        eprintln!("{n}");
    }
    let mut objs = origin::Planned::objects(&planned);
    if dry_run {
        return Ok(objs);
    }
    kc::ensure_namespace(c, ns).await?;
    // One object at a time, so that a failure part-way says which are in place.
    let mut left_out = Vec::new();
    for (n, p) in planned.iter().enumerate() {
        match origin::write(c, p).await {
            Ok(None) => {}
            Ok(Some(notice)) => {
                eprintln!("{notice}");
                left_out.push(n);
            }
            Err(e) => bail!("{}", interrupted(c, &e, &objs, n)),
        }
    }
    for n in left_out.into_iter().rev() {
        objs.remove(n);
    }
    Ok(objs)
}

/// Why `install` stopped at `objs[n]` (`e`), what is in place, and what to do next.
fn interrupted(c: &Cluster, e: &anyhow::Error, objs: &[Value], n: usize) -> String {
    let names = |os: &[Value]| os.iter().map(kc::describe).collect::<Vec<_>>().join(", ");
    // A refusal of the object itself (invalid, denied by admission) comes again on every
    // re-run; another gateway found under the name is removed first; anything else
    // (unreachable, overloaded) a re-run may get past.
    let next = if e.downcast_ref::<origin::ForeignGateway>().is_some() {
        "remove the other gateway as said above, then run the same command again".to_string()
    } else {
        match refusal_code(e).filter(|c| refuses_object(*c)) {
            Some(code) => format!(
                "the API server refused {} ({code}), so re-running the same command is \
                 refused the same way: fix what it names (a flag's value, or the admission \
                 policy that refused it), then run it again",
                kc::describe(&objs[n])
            ),
            None => "re-run the same command to resume (server-side apply: objects already \
                     in place stay as they are)"
                .to_string(),
        }
    };
    format!(
        "{e:#}\ninterrupted: applied {n} of {} gateway objects in context {:?} ({}); not \
         applied: {}. Until they are, the gateway may be incomplete or a mix of old and new \
         objects; {next}",
        objs.len(),
        c.context,
        if n == 0 {
            "none".to_string()
        } else {
            names(&objs[..n])
        },
        names(&objs[n..]),
    )
}

/// Whether an answer refuses the object itself (validation, admission, policy), so that a
/// re-run is refused the same way: a 4xx other than 401 (the credential), 404 (a missing
/// namespace or kind, checked apart), 409 (a conflict, which a re-run resolves) and 429
/// (overload).
pub fn refuses_object(code: u16) -> bool {
    (400..500).contains(&code) && !matches!(code, 401 | 404 | 409 | 429)
}

/// The HTTP status of the API server's answer in a failed request's message, as
/// `kube::error_text` writes it (`<message> (<code> <reason>)`): the last such code.
pub fn refusal_code(e: &anyhow::Error) -> Option<u16> {
    let text = format!("{e:#}");
    let b = text.as_bytes();
    let mut found = None;
    for (i, w) in b.windows(5).enumerate() {
        if w[0] == b'(' && w[1..4].iter().all(u8::is_ascii_digit) && w[4] == b' ' {
            let code: u16 = text[i + 1..i + 4].parse().ok()?;
            if (100..600).contains(&code) {
                found = Some(code);
            }
        }
    }
    found
}

/// When the gateway Service carries `--ip-family-policy`, asks the API server whether it
/// takes it, with a server-side dry-run apply that changes nothing: in `ns` (so a change of an
/// existing Service's policy is checked as the real apply will be), or in `default` while `ns`
/// does not exist yet (admission refuses objects in a missing namespace, dry runs too).
///
/// The one refusal meshctl's field can meet is `RequireDualStack` on a cluster without both
/// families (422, "this cluster is not configured for dual-stack services"); switching between
/// policies on an existing Service is allowed, as meshctl sends no `ipFamilies` or
/// `clusterIPs`: the secondary family is added for a dual-stack policy, and released for
/// SingleStack (kubernetes/kubernetes pkg/registry/core/service/storage/alloc.go,
/// `initIPFamilyFields`; pkg/apis/core/validation/validation.go,
/// `validateUpgradeDowngradeIPFamilies`). Any other failure of the dry run (no right to
/// patch Services in `default`, say) says nothing about the policy, so it is left to the
/// real apply.
pub async fn check_ip_family_policy(c: &Cluster, ns: &str, objs: &[Value]) -> Result<()> {
    let Some(svc) = objs.iter().find(|o| o["kind"] == "Service") else {
        return Ok(());
    };
    let Some(policy) = svc["spec"]["ipFamilyPolicy"].as_str() else {
        return Ok(());
    };
    let target = match kc::get(c, "v1", "Namespace", None, ns).await {
        Ok(Some(_)) => ns,
        Ok(None) => "default",
        Err(_) => return Ok(()),
    };
    let mut probe = svc.clone();
    probe["metadata"]["namespace"] = json!(target);
    let api: Api<Service> = Api::namespaced(c.client.clone(), target);
    let pp = PatchParams::apply(MANAGER).force().dry_run();
    match api.patch(GATEWAY_NAME, &pp, &Patch::Apply(&probe)).await {
        Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains("ipFamilyPolicy") => {
            let refused = kc::error_text(&kube::Error::Api(s));
            Err(anyhow!("{}", policy_refused(policy, &c.context, &refused)))
        }
        _ => Ok(()),
    }
}

/// What to do when the API server refuses `--ip-family-policy POLICY` (its reason in
/// `refused`).
fn policy_refused(policy: &str, context: &str, refused: &str) -> String {
    let fix = if policy == "RequireDualStack" && refused.contains("not configured for dual-stack") {
        "the cluster has Service addresses of one IP family only, so it cannot give the gateway \
         one of each: pass --ip-family-policy PreferDualStack (both families where a cluster \
         has them, one elsewhere) or SingleStack, or leave the flag out"
    } else {
        "pass another --ip-family-policy, or leave the flag out to keep the Service's policy as \
         it is"
    };
    format!(
        "--ip-family-policy {policy}: the API server of context {context:?} refuses the gateway \
         Service with it: {refused}; {fix}"
    )
}

/// A SPIFFE trust domain: DNS-like labels (lower case, digits, `-`, `.`, `_`).
pub fn validate_trust_domain(td: &str) -> Result<()> {
    let ok = !td.is_empty()
        && td.len() <= 255
        && td
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._".contains(c));
    if !ok {
        bail!(
            "--trust-domain {td:?}: expected a SPIFFE trust domain such as cluster.local (lower-case letters, digits, '-', '.', '_')"
        );
    }
    Ok(())
}

/// An annotation key as the API server accepts it: `[prefix/]name`, the name 1-63
/// characters (alphanumerics, '-', '_', '.'; alphanumeric at both ends), the prefix a DNS
/// subdomain of at most 253 characters.
fn validate_annotation_key(k: &str) -> std::result::Result<(), String> {
    let (prefix, name) = k.rsplit_once('/').map_or((None, k), |(p, n)| (Some(p), n));
    if names::is_qualified_name_part(name) && prefix.is_none_or(names::is_dns_subdomain) {
        Ok(())
    } else {
        Err(format!(
            "{k:?} is not a valid annotation key ([prefix/]name: a name of 1-63 letters, digits, \
             '-', '_', '.', and an optional DNS-subdomain prefix)"
        ))
    }
}

/// The most bytes an object's annotations may hold, keys plus values: the API server's
/// `TotalAnnotationSizeLimitB` (kubernetes/kubernetes
/// staging/src/k8s.io/apimachinery/pkg/api/validation/objectmeta.go,
/// `ValidateAnnotationsSize`), which answers more with 422 "metadata.annotations: Too long".
pub const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

/// `--service-annotation KEY=VALUE` flags as the Service's annotations: each key valid, the
/// total size within [`ANNOTATIONS_MAX_BYTES`] (a later flag with the same key replaces an
/// earlier one, as in the map the API server gets).
fn parse_annotations(items: &[String]) -> Result<serde_json::Map<String, Value>> {
    let mut m = serde_json::Map::new();
    for a in items {
        let (k, v) = a
            .split_once('=')
            .ok_or_else(|| anyhow!("--service-annotation {a:?}: expected KEY=VALUE"))?;
        validate_annotation_key(k)
            .map_err(|e| anyhow!("--service-annotation {a:?}: the key {e}"))?;
        m.insert(k.to_string(), json!(v));
    }
    let size: usize = m
        .iter()
        .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
        .sum();
    if size > ANNOTATIONS_MAX_BYTES {
        bail!(
            "--service-annotation: the annotations add up to {size} bytes (keys plus values), \
             over the {ANNOTATIONS_MAX_BYTES} bytes (256 KiB) the API server accepts on one \
             object (metadata.annotations: Too long); shorten or drop some"
        );
    }
    Ok(m)
}

/// The gateway's listeners as container args, container ports and Service ports.
/// Classic: 15443 (SNI passthrough). HBONE: 15008 with the workload certificate from istiod
/// (a CSR with the projected token, `cluster_id` in its `clusterid` header, istiod's TLS
/// checked against the mounted `istio-ca-root-cert`) or read from the mounted Secret
/// (Istio's file layout), and clients of `f.trust_domain` accepted.
fn listeners(
    p: Protocols,
    f: &GatewayFlags,
    ns: &str,
    cluster_id: &str,
) -> (Vec<Value>, Vec<Value>, Vec<Value>) {
    let mut args = Vec::new();
    let mut container_ports = Vec::new();
    let mut service_ports = vec![
        json!({"name": "status-port", "port": STATUS_PORT, "targetPort": STATUS_PORT, "protocol": "TCP"}),
    ];
    if p.classic() {
        args.extend([json!("--listen"), json!(format!(":{TLS_PORT}"))]);
        container_ports.push(json!({"name": "tls", "containerPort": TLS_PORT, "protocol": "TCP"}));
        service_ports.push(
            json!({"name": "tls", "port": TLS_PORT, "targetPort": TLS_PORT, "protocol": "TCP"}),
        );
    }
    // The Service (a load balancer) exposes the status port, which serves only health, as
    // Istio's 15021; the admin port (metrics, the route table with every endpoint's address)
    // is the pod's alone, for Prometheus and `kubectl port-forward`.
    // The cluster's ID as istiod knows it: every endpoint carries it for subsets
    // (`topology.istio.io/cluster`), and istiod reviews the HBONE certificate request's
    // token against it.
    args.extend([
        json!("--status-listen"),
        json!(format!(":{STATUS_PORT}")),
        json!("--admin"),
        json!(format!(":{ADMIN_PORT}")),
        json!("--cluster-id"),
        json!(cluster_id),
    ]);
    // istiod's root namespace is its own by default, where mesh-wide DestinationRules live;
    // the gateway assumes istio-system, so only another one is passed (an unchanged install
    // keeps its arguments).
    if ns != crate::istio::DEFAULT_NAMESPACE {
        args.extend([json!("--root-namespace"), json!(ns)]);
    }
    container_ports.extend([
        json!({"name": "status-port", "containerPort": STATUS_PORT, "protocol": "TCP"}),
        json!({"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}),
    ]);
    if p.hbone() {
        args.extend([json!("--hbone-listen"), json!(format!(":{HBONE_PORT}"))]);
        match f.hbone_certs {
            HboneCerts::Istiod => args.extend([
                json!("--ca-address"),
                json!(istiod_ca_address(ns)),
                json!("--ca-root"),
                json!(format!("{ISTIO_ROOT_DIR}/root-cert.pem")),
                json!("--ca-token"),
                json!(format!("{ISTIO_TOKEN_DIR}/istio-token")),
            ]),
            HboneCerts::Files => args.extend([json!("--hbone-certs"), json!(HBONE_CERTS_DIR)]),
        }
        args.extend([json!("--trust-domain"), json!(f.trust_domain)]);
        container_ports
            .push(json!({"name": HBONE_PORT_NAME, "containerPort": HBONE_PORT, "protocol": "TCP"}));
        service_ports.push(
            json!({"name": HBONE_PORT_NAME, "port": HBONE_PORT, "targetPort": HBONE_PORT,
            "protocol": "TCP", "appProtocol": HBONE_APP_PROTOCOL}),
        );
    }
    args.extend(
        [
            "--cluster-domain",
            "cluster.local",
            "--allow-host",
            "*.local",
            "--log-format",
            "json",
        ]
        .map(|a| json!(a)),
    );
    (args, container_ports, service_ports)
}

/// The volumes an HBONE gateway mounts, where Istio's gateway template puts them: the
/// certificate source (the `istio-ca-root-cert` ConfigMap for istiod, or the certificate
/// Secret for files) and the projected `istio-ca` token (is:`kube-gateway.yaml`: audience
/// istio-ca, 43200 s).
fn hbone_volumes(certs: HboneCerts) -> (Value, Value) {
    let (source, source_mount) = match certs {
        HboneCerts::Istiod => (
            json!({"name": "istiod-ca-cert", "configMap": {"name": ISTIO_ROOT_CONFIGMAP}}),
            json!({"name": "istiod-ca-cert", "mountPath": ISTIO_ROOT_DIR, "readOnly": true}),
        ),
        HboneCerts::Files => (
            // Group-readable: the kubelet gives the files to the pod's fsGroup (they are root's
            // otherwise, and the gateway runs as 65532).
            json!({"name": "hbone-certs", "secret": {"secretName": HBONE_CERTS_SECRET, "defaultMode": 0o440}}),
            json!({"name": "hbone-certs", "mountPath": HBONE_CERTS_DIR, "readOnly": true}),
        ),
    };
    let volumes = json!([
        source,
        {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken":
            {"audience": ISTIO_CA_AUDIENCE, "expirationSeconds": 43200, "path": "istio-token"}}]}},
    ]);
    let mounts = json!([
        source_mount,
        {"name": "istio-token", "mountPath": ISTIO_TOKEN_DIR, "readOnly": true},
    ]);
    (volumes, mounts)
}

/// The gateway Service. `ipFamilyPolicy` only with `--ip-family-policy`: without it, the
/// cluster's primary family (SingleStack, the API server's default), although the gateway
/// listens on both. On a dual-stack cluster PreferDualStack gives the load balancer an address
/// per family, and istiod makes each one a network gateway and splits sidecars'
/// cross-network traffic evenly over them, whatever families the client can reach
/// (istio/istio pilot/pkg/serviceregistry/kube/conversion.go, kube/controller/network.go,
/// xds/endpoints/ep_filters.go), so it is opt-in. Unset, the field is not sent: an apply
/// leaves a value another writer set (`kubectl patch`), and an update without a policy keeps
/// the old one (kubernetes/kubernetes pkg/registry/core/service/storage/alloc.go,
/// `initIPFamilyFields`), also after meshctl itself set it.
fn service(
    meta: Value,
    service_type: &str,
    selector: &Value,
    ports: Vec<Value>,
    f: &GatewayFlags,
) -> Value {
    let mut spec = json!({"type": service_type, "selector": selector, "ports": ports});
    if let Some(p) = f.ip_family_policy {
        spec["ipFamilyPolicy"] = json!(p.as_str());
    }
    json!({"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec})
}

/// All gateway objects for one cluster, in apply order. `cluster_id` is the cluster's name in
/// the mesh (what istiod knows it by).
pub fn objects(
    ns: &str,
    network: &str,
    cluster_id: &str,
    f: &GatewayFlags,
    p: Protocols,
) -> Result<Vec<Value>> {
    validate_label_value(network)?;
    if cluster_id.is_empty() || cluster_id.chars().any(|c| c.is_control() || c == ' ') {
        bail!("--cluster-id {cluster_id:?}: expected a cluster name such as Kubernetes or east");
    }
    if p.hbone() {
        validate_trust_domain(&f.trust_domain)?;
    }
    pki::validate_dns_label(ns).map_err(|e| anyhow!("namespace {e}"))?;
    if f.max_replicas < f.replicas {
        bail!(
            "--max-replicas {} is below --replicas {}",
            f.max_replicas,
            f.replicas
        );
    }
    let annotations = parse_annotations(&f.annotations)?;
    let managed = managed_labels();
    let mut labels = managed.clone();
    labels.insert(APP_LABEL.into(), json!(GATEWAY_NAME));
    labels.insert(ISTIO_LABEL.into(), json!(ISTIO_VALUE));
    labels.insert(NETWORK_LABEL.into(), json!(network));
    let selector = json!({APP_LABEL: GATEWAY_NAME, ISTIO_LABEL: ISTIO_VALUE});
    let role = gateway_role_name(ns);
    let meta = |name: &str, namespaced: bool| {
        let mut m = json!({"name": name, "labels": labels});
        if namespaced {
            m["namespace"] = json!(ns);
        } else {
            m["labels"][NAMESPACE_LABEL] = json!(ns);
        }
        m
    };
    let mut service_meta = meta(GATEWAY_NAME, true);
    let mut annotations = annotations;
    if f.service_type == ServiceType::NodePort {
        // Without it istiod gives a NodePort gateway no address at all.
        annotations
            .entry(NODE_SELECTOR_ANNOTATION)
            .or_insert_with(|| json!("{}"));
    }
    if !annotations.is_empty() {
        service_meta["annotations"] = Value::Object(annotations);
    }
    let service_type = match f.service_type {
        ServiceType::LoadBalancer => "LoadBalancer",
        ServiceType::NodePort => "NodePort",
    };
    let (args, container_ports, service_ports) = listeners(p, f, ns, cluster_id);
    let mut out = vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(GATEWAY_NAME, true)}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta(&role, false),
        "rules": gateway_rules()}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": meta(&role, false),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": GATEWAY_NAME, "namespace": ns}]}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(GATEWAY_NAME, true),
        // No spec.replicas: the HorizontalPodAutoscaler owns the count.
        "spec": {
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels, "annotations": {"prometheus.io/scrape": "true",
                    "prometheus.io/port": ADMIN_PORT.to_string(), "prometheus.io/path": "/metrics"}},
                "spec": {
                    "serviceAccountName": GATEWAY_NAME,
                    "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
                    // fsGroup: mounted Secrets (the HBONE key) and projected tokens are owned
                    // by this group, else by root and unreadable to the gateway's user.
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                        "fsGroup": 65532, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "gateway",
                        "image": f.image,
                        "args": args,
                        // The gateway learns its zone from the EndpointSlice listing this
                        // address, for Services with trafficDistribution: PreferClose; its
                        // node serves Services with internalTrafficPolicy: Local.
                        "env": [{"name": "GATEWAY_POD_IP",
                            "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                            {"name": "GATEWAY_NODE_NAME",
                            "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
                        "ports": container_ports,
                        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": STATUS_PORT},
                            "periodSeconds": 2, "failureThreshold": 3, "timeoutSeconds": 1},
                        "livenessProbe": {"httpGet": {"path": "/healthz/live", "port": STATUS_PORT},
                            "initialDelaySeconds": 5, "periodSeconds": 10, "failureThreshold": 3, "timeoutSeconds": 2},
                        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"},
                            "limits": {"cpu": "2", "memory": "512Mi"}},
                        "securityContext": {"runAsNonRoot": true, "readOnlyRootFilesystem": true,
                            "allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
                    }],
                },
            },
        }}),
        service(service_meta, service_type, &selector, service_ports, f),
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta(GATEWAY_NAME, true),
            "spec": {"minAvailable": 1, "selector": {"matchLabels": selector}}}),
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta(GATEWAY_NAME, true),
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": GATEWAY_NAME},
                "minReplicas": f.replicas, "maxReplicas": f.max_replicas,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 80}}}]}}),
    ];
    if p.hbone() {
        let (volumes, mounts) = hbone_volumes(f.hbone_certs);
        if let Some(d) = out.iter_mut().find(|o| o["kind"] == "Deployment") {
            let pod = &mut d["spec"]["template"]["spec"];
            pod["volumes"] = volumes;
            pod["containers"][0]["volumeMounts"] = mounts;
        }
    }
    if f.expose_services {
        out.push(json!({"apiVersion": ISTIO_NETWORKING_V1, "kind": "Gateway",
            "metadata": {"name": EXPOSE_GATEWAY, "namespace": ns, "labels": managed},
            "spec": {"selector": {ISTIO_LABEL: ISTIO_VALUE}, "servers": [{
                "port": {"number": TLS_PORT, "name": "tls", "protocol": "TLS"},
                "tls": {"mode": "AUTO_PASSTHROUGH"},
                "hosts": ["*.local"]}]}}));
    }
    Ok(out)
}
