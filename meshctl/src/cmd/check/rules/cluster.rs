//! The checks of one cluster, judged from its [`ClusterFacts`] (or from why it could not be
//! read): cacerts present and valid, the network label, the gateway's address and pods, and
//! (`gateway_grants`) its ClusterRole.
//! Each returns what the pair and mesh checks need as a [`Seen`].

use k8s_openapi::api::core::v1::{Pod, Secret, Service};

use super::super::facts::{ClusterFacts, Seen, Unread};
use super::super::hints::{Invocation, shell_word};
use super::super::report::Report;
use crate::istio::{
    APP_LABEL, CLUSTER_NAME_ANNOTATION, GATEWAY_NAME, GATEWAY_PORT_LABEL, NETWORK_LABEL,
    NODE_SELECTOR_ANNOTATION, TLS_PORT,
};
use crate::mesh::cacerts::pem_ders;

/// The checks made on a cluster's own data (skipped when it cannot be read).
pub const CLUSTER_CHECKS: [&str; 5] = [
    "cacerts present and valid",
    "network label",
    "gateway Service has an external address",
    "gateway pods ready",
    super::gateway_grants::CHECK,
];

/// A cluster meshctl could not read: reachability (and the credential) fail once, the checks
/// that need its data are skipped with the reason. `name_flag` is its `--cluster-name`.
pub fn unread_cluster(r: &mut Report, ctx: &str, name_flag: Option<&str>, why: &Unread) -> Seen {
    let scope = format!("cluster {ctx}");
    let unread = match why {
        Unread::Refused {
            server,
            user,
            error,
        } => {
            r.pass(&scope, "API server reachable", server.clone());
            r.fail(
                &scope,
                "credential accepted",
                error.clone(),
                format!(
                    "put new credentials for kubeconfig user {user:?} (its token or client certificate was refused)"
                ),
            );
            "refusing meshctl's credential"
        }
        Unread::Unusable { user, error } => {
            r.fail(
                &scope,
                "credential usable",
                error.clone(),
                format!(
                    "fix the credential of kubeconfig user {user:?} (run its credential plugin by \
                     hand to see its message, or write its token on one line)"
                ),
            );
            "not readable with meshctl's credential"
        }
        Unread::Unreachable { error, fix } => {
            r.fail(&scope, "API server reachable", error.clone(), fix.clone());
            "unreachable"
        }
    };
    for check in CLUSTER_CHECKS {
        r.skip(&scope, check, format!("cluster {ctx} is {unread}"));
    }
    Seen {
        context: ctx.to_string(),
        name: name_flag.unwrap_or(ctx).into(),
        name_known: name_flag.is_some(),
        name_guessed: name_flag.is_none(),
        unread: Some(unread),
        network: None,
        root: None,
        uid: None,
    }
}

/// What a context needs to read for `check`.
pub const READ_RIGHTS_HINT: &str = "meshctl check reads Namespaces, Secrets (cacerts, remote \
    secrets), Services, Pods, Deployments and Nodes, and Istio's and the Gateway API's Gateways: \
    use a context that may get and list them (Kubernetes' view role excludes Secrets)";

/// A cluster whose objects could not be read with its context (a 403 on Secrets, a 500): that
/// one failure, and its other checks skipped, never the whole run ended.
pub fn objects_unread(
    r: &mut Report,
    (server, ctx): (&str, &str),
    name_flag: Option<&str>,
    error: &str,
    ns: &str,
) -> Seen {
    let scope = format!("cluster {ctx}");
    r.pass(&scope, "API server reachable", server);
    r.fail(
        &scope,
        "objects readable",
        format!("reading the objects of namespace {ns}: {error}"),
        READ_RIGHTS_HINT,
    );
    Seen {
        context: ctx.to_string(),
        name: name_flag.unwrap_or(ctx).into(),
        name_known: name_flag.is_some(),
        name_guessed: name_flag.is_none(),
        unread: Some("not readable with its context"),
        network: None,
        root: None,
        uid: None,
    }
}

/// Every check of a cluster meshctl could read (reached at `server`); `inv`: the flags its
/// hints repeat.
pub fn read_cluster(
    r: &mut Report,
    f: &ClusterFacts,
    server: &str,
    name_flag: Option<&str>,
    inv: &Invocation,
) -> Seen {
    let (scope, ctx) = (format!("cluster {}", f.context), f.context.as_str());
    r.pass(&scope, "API server reachable", server);
    let recorded = ns_annotation(f, CLUSTER_NAME_ANNOTATION);
    let name = name_flag.or(recorded.as_deref()).unwrap_or(ctx).to_string();
    let name_guessed = name_flag.is_none() && recorded.is_none();
    let root = cacerts(r, &scope, f, &name, inv);
    let network = network_label(r, &scope, f, inv);
    gateway_service(r, &scope, f, inv);
    gateway_pods(r, &scope, f, inv);
    super::gateway_grants::gateway_grants(r, &scope, f, inv);
    Seen {
        context: ctx.into(),
        name,
        name_known: true,
        name_guessed,
        unread: None,
        network,
        root,
        uid: None,
    }
}

/// An annotation and a label of istiod's namespace (none when it does not exist).
fn ns_annotation(f: &ClusterFacts, key: &str) -> Option<String> {
    let meta = &f.namespace.as_ref()?.metadata;
    meta.annotations.as_ref()?.get(key).cloned()
}

fn ns_label(f: &ClusterFacts, key: &str) -> Option<String> {
    let meta = &f.namespace.as_ref()?.metadata;
    meta.labels.as_ref()?.get(key).cloned()
}

/// "cacerts present and valid"; returns the root's DER certificates (for the mesh check).
fn cacerts(
    r: &mut Report,
    scope: &str,
    f: &ClusterFacts,
    name: &str,
    inv: &Invocation,
) -> Option<Vec<Vec<u8>>> {
    let (ctx, ns, check) = (shell_word(&f.context), &f.ns, "cacerts present and valid");
    let flags = inv.meshctl();
    let Some(s) = &f.cacerts else {
        r.fail(scope, check, format!("no Secret {ns}/cacerts"),
            format!("meshctl cacerts apply certs/{name} --context {ctx}{flags}, then restart istiod ({} rollout restart deploy/istiod)", inv.kubectl(&f.context)));
        return None;
    };
    match verify_cacerts(s) {
        Ok(()) => r.pass(scope, check, ""),
        Err(e) => r.fail(scope, check, e,
            format!("regenerate the bundle (meshctl certs intermediate ...) and meshctl cacerts apply certs/{name} --context {ctx}{flags} --force")),
    }
    secret_bytes(s, pki::ROOT_CERT).map(pem_ders)
}

fn secret_bytes<'a>(s: &'a Secret, key: &str) -> Option<&'a [u8]> {
    s.data.as_ref()?.get(key).map(|b| b.0.as_slice())
}

/// Runs the bundle checks on the Secret's files in memory (the CA key never touches the disk).
pub fn verify_cacerts(s: &Secret) -> Result<(), String> {
    let text = |f: &str| -> Result<String, String> {
        let Some(bytes) = secret_bytes(s, f) else {
            return Err(format!("key {f} missing (istiod needs all four files)"));
        };
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{f}: not PEM text"))
    };
    let bundle = pki::Bundle {
        source: std::path::PathBuf::from("cacerts"),
        ca_cert: text(pki::CA_CERT)?,
        ca_key: text(pki::CA_KEY)?,
        root_cert: text(pki::ROOT_CERT)?,
        cert_chain: text(pki::CERT_CHAIN)?,
    };
    let report = pki::verify(&[bundle], &pki::VerifyOptions::default());
    if report.is_ok() {
        return Ok(());
    }
    let errors: Vec<String> = report
        .errors()
        .map(|f| {
            let file = f
                .file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!("{file}: {}", f.message)
        })
        .collect();
    Err(errors.join("; "))
}

/// "network label", on the namespace and on the gateway Service; returns the network.
fn network_label(
    r: &mut Report,
    scope: &str,
    f: &ClusterFacts,
    inv: &Invocation,
) -> Option<String> {
    let (ctx, ns, check) = (shell_word(&f.context), &f.ns, "network label");
    let flags = inv.meshctl();
    let network = ns_label(f, NETWORK_LABEL);
    let svc_net = f
        .gateway
        .as_ref()
        .and_then(|s| s.metadata.labels.as_ref()?.get(NETWORK_LABEL));
    match (&network, svc_net) {
        (None, _) => r.fail(
            scope,
            check,
            format!("namespace {ns} has no {NETWORK_LABEL} label"),
            format!("meshctl label-network <network> --context {ctx}{flags}"),
        ),
        (Some(n), None) if f.gateway.is_some() => r.fail(
            scope,
            check,
            format!(
                "namespace says {n}; gateway Service {GATEWAY_NAME} has no {NETWORK_LABEL} label, \
                 and istiod takes a Service for a network's gateway only by it"
            ),
            format!(
                "re-run the meshctl join that installed the gateway with the same flags, or {} \
                 label svc {GATEWAY_NAME} {NETWORK_LABEL}={n}",
                inv.kubectl(&f.context)
            ),
        ),
        (Some(n), Some(s)) if n != s => r.fail(
            scope,
            check,
            format!("namespace says {n}, gateway Service says {s}"),
            // Not `gateway install` with defaults: it would reset the image, Service type,
            // protocols and replicas the join chose.
            format!(
                "meshctl label-network {s} --context {ctx}{flags} to put the namespace back, or \
                 re-run the meshctl join that installed the gateway with the same flags"
            ),
        ),
        (Some(n), _) => r.pass(scope, check, n.clone()),
    }
    network
}

/// "gateway Service has an external address".
fn gateway_service(r: &mut Report, scope: &str, f: &ClusterFacts, inv: &Invocation) {
    let (ctx, ns, check) = (
        shell_word(&f.context),
        &f.ns,
        "gateway Service has an external address",
    );
    let flags = inv.meshctl();
    match &f.gateway {
        None => r.fail(
            scope,
            check,
            format!("no Service {ns}/{GATEWAY_NAME}"),
            format!(
                "re-run the meshctl join that made this mesh (with its flags), or for this \
                 cluster alone meshctl gateway install --network <its network> --context \
                 {ctx}{flags} with the flags the join was given"
            ),
        ),
        Some(s) => {
            match gateway_address(s, f.nodes.as_ref()) {
                Ok(detail) => r.pass(scope, check, detail),
                Err(detail) if !is_node_port(s) && !is_load_balancer(s) => r.fail(scope, check, detail,
                    "re-run the meshctl join that made this mesh (it makes the Service a LoadBalancer), or give it externalIPs the other networks reach"),
                Err(detail) if is_node_port(s) => r.fail(scope, check, detail,
                    "istiod advertises a NodePort gateway at the ExternalIP addresses of the nodes its traffic.istio.io/nodeSelector annotation selects: re-run meshctl join (it sets the annotation), and use a LoadBalancer where nodes have no ExternalIP (kind: cloud-provider-kind or MetalLB)"),
                Err(detail) => r.fail(scope, check, detail,
                    "no load-balancer controller assigned an address: install one (kind: cloud-provider-kind or MetalLB; check its pods and address pool), or use --service-type node-port where the nodes have ExternalIP addresses the other networks reach"),
            }
            one_family(r, scope, s, &inv.kubectl(&f.context));
            gateway_port(r, scope, s, inv.kubectl(&f.context));
        }
    }
}

/// "gateway addresses of one IP family": istiod makes every load-balancer address a network
/// gateway and spreads a network's cross-network traffic evenly over them
/// (`pilot/pkg/serviceregistry/kube/conversion.go`, `xds/endpoints/ep_filters.go`), so a
/// dual-stack Service sends about half of it to a family the peers may not reach.
fn one_family(r: &mut Report, scope: &str, svc: &Service, kubectl: &str) {
    let check = "gateway addresses of one IP family";
    let ips: Vec<std::net::IpAddr> = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default()
        .iter()
        .filter_map(|i| i.ip.as_deref()?.parse().ok())
        .collect();
    let (v4, v6) = ips.iter().partition::<Vec<_>, _>(|ip| ip.is_ipv4());
    if v4.is_empty() || v6.is_empty() {
        return;
    }
    let shown = |a: &[&std::net::IpAddr]| {
        a.iter()
            .map(|ip| ip.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    r.warn(
        scope,
        check,
        format!("IPv4 {} and IPv6 {}: istiod splits cross-network traffic over both", shown(&v4), shown(&v6)),
        format!("unless every peer reaches both families: {kubectl} patch svc {GATEWAY_NAME} -p '{{\"spec\":{{\"ipFamilyPolicy\":\"SingleStack\"}}}}'"),
    );
}

fn is_load_balancer(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("LoadBalancer")
}

fn is_node_port(svc: &Service) -> bool {
    svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("NodePort")
}

/// "gateway Service forwards the gateway port": istiod advertises port 15443 of a network's
/// gateway Service (or its `networking.istio.io/gatewayPort` label's) to the other networks,
/// so the Service must have that port, and it must lead to the gateway's 15443 (`tls`).
fn gateway_port(r: &mut Report, scope: &str, svc: &Service, kubectl: String) {
    let check = "gateway Service forwards the gateway port";
    let label = svc
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(GATEWAY_PORT_LABEL));
    // An unparsable label is 15443 to istiod (with a warning in its log).
    let want = label
        .and_then(|v| v.parse::<i32>().ok())
        .unwrap_or(i32::from(TLS_PORT));
    let ports = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default();
    let hint = format!(
        "re-run the meshctl join that installed the gateway with the same flags (it sets port \
         {TLS_PORT} to target port tls), and drop a {GATEWAY_PORT_LABEL} label it does not \
         serve ({kubectl} label svc {GATEWAY_NAME} {GATEWAY_PORT_LABEL}-)"
    );
    let why = match label {
        Some(v) => format!("its {GATEWAY_PORT_LABEL} label {v:?}"),
        None => format!("Istio's default {TLS_PORT}"),
    };
    let Some(p) = ports.iter().find(|p| p.port == want) else {
        let have: Vec<String> = ports.iter().map(|p| p.port.to_string()).collect();
        return r.fail(
            scope,
            check,
            format!(
                "istiod advertises port {want} ({why}) to the other networks, but the Service \
                 has ports {}",
                have.join(", ")
            ),
            hint,
        );
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match &p.target_port {
        None => r.pass(scope, check, format!("{want}")),
        Some(IntOrString::Int(t)) if *t == i32::from(TLS_PORT) => {
            r.pass(scope, check, format!("{want} -> {t}"))
        }
        Some(IntOrString::String(n)) if n == "tls" => {
            r.pass(scope, check, format!("{want} -> tls"))
        }
        Some(t) => r.fail(
            scope,
            check,
            format!(
                "port {want} ({why}) leads to target port {}, not the gateway's {TLS_PORT} (tls)",
                match t {
                    IntOrString::Int(i) => i.to_string(),
                    IntOrString::String(s) => s.clone(),
                }
            ),
            hint,
        ),
    }
}

/// `Ok(description)` when istiod can find an address for the gateway; `nodes`: the cluster's
/// Nodes, read for a NodePort gateway.
pub fn gateway_address(
    svc: &Service,
    nodes: Option<&Result<Vec<k8s_openapi::api::core::v1::Node>, String>>,
) -> Result<String, String> {
    let ingress = svc
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_deref())
        .unwrap_or_default();
    let ips: Vec<&str> = ingress.iter().filter_map(|i| i.ip.as_deref()).collect();
    let hosts: Vec<&str> = ingress
        .iter()
        .filter_map(|i| i.hostname.as_deref())
        .collect();
    let spec = svc.spec.clone().unwrap_or_default();
    let external = spec.external_ips.unwrap_or_default();
    // istiod reads the load balancer's addresses of a LoadBalancer Service only.
    let (ips, hosts) = if spec.type_.as_deref() == Some("LoadBalancer") {
        (ips, hosts)
    } else {
        (Vec::new(), Vec::new())
    };
    if !ips.is_empty() {
        return Ok(ips.join(", "));
    }
    if !hosts.is_empty() {
        return Ok(format!(
            "{} (hostname: istiod resolves it with RESOLVE_HOSTNAME_GATEWAYS, the default)",
            hosts.join(", ")
        ));
    }
    if !external.is_empty() {
        return Ok(format!("externalIPs {}", external.join(", ")));
    }
    if spec.type_.as_deref() == Some("NodePort") {
        let tls = spec
            .ports
            .unwrap_or_default()
            .into_iter()
            .find(|p| p.port == i32::from(TLS_PORT));
        let Some(np) = tls.and_then(|p| p.node_port) else {
            return Err("NodePort Service without a nodePort for 15443".into());
        };
        let Some(selector) = svc
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(NODE_SELECTOR_ANNOTATION))
        else {
            return Err(format!(
                "NodePort {np} for 15443, but without the {NODE_SELECTOR_ANNOTATION} annotation \
                 istiod gives a NodePort Service no address"
            ));
        };
        let nodes = match nodes {
            Some(Ok(n)) => n,
            Some(Err(e)) => {
                return Ok(format!(
                    "NodePort {np} for 15443 (the nodes could not be listed, so their ExternalIP \
                     addresses, which istiod uses, are not checked: {e})"
                ));
            }
            None => return Ok(format!("NodePort {np} for 15443")),
        };
        let ips = node_external_ips(nodes, selector);
        if ips.is_empty() {
            return Err(format!(
                "NodePort {np} for 15443, but none of the {} node(s) {NODE_SELECTOR_ANNOTATION} \
                 {selector} selects has an ExternalIP address, the only kind istiod advertises",
                nodes.len()
            ));
        }
        return Ok(format!("NodePort {np} for 15443 on {}", ips.join(", ")));
    }
    match spec.type_.as_deref() {
        Some("LoadBalancer") => Err("pending: status.loadBalancer.ingress is empty".into()),
        other => Err(format!(
            "Service type {}: istiod advertises a gateway only at a load balancer's, its \
             externalIPs' or (NodePort) its nodes' addresses",
            other.unwrap_or("ClusterIP")
        )),
    }
}

/// The ExternalIP addresses of the nodes `selector` (the annotation's JSON map; one istiod
/// cannot parse selects every node, as in istiod) selects.
fn node_external_ips(nodes: &[k8s_openapi::api::core::v1::Node], selector: &str) -> Vec<String> {
    let want: std::collections::BTreeMap<String, String> =
        serde_json::from_str(selector).unwrap_or_default();
    nodes
        .iter()
        .filter(|n| {
            let labels = n.metadata.labels.clone().unwrap_or_default();
            want.iter().all(|(k, v)| labels.get(k) == Some(v))
        })
        .flat_map(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.addresses.clone())
                .unwrap_or_default()
        })
        .filter(|a| a.type_ == "ExternalIP" && !a.address.is_empty())
        .map(|a| a.address)
        .collect()
}

/// "gateway pods ready".
fn gateway_pods(r: &mut Report, scope: &str, f: &ClusterFacts, inv: &Invocation) {
    let check = "gateway pods ready";
    let (pods, ready) = (f.pods.len(), f.pods.iter().filter(|p| pod_ready(p)).count());
    let kubectl = inv.kubectl(&f.context);
    let hint = format!(
        "{kubectl} describe pods -l {APP_LABEL}={GATEWAY_NAME}; {kubectl} logs deploy/{GATEWAY_NAME}"
    );
    if pods == 0 {
        r.fail(
            scope,
            check,
            format!("no pods with label {APP_LABEL}={GATEWAY_NAME}"),
            hint,
        );
    } else if ready == 0 {
        r.fail(scope, check, format!("0 of {pods} ready"), hint);
    } else if ready < pods {
        r.warn(scope, check, format!("{ready} of {pods} ready"), hint);
    } else {
        r.pass(scope, check, format!("{ready} of {pods} ready"));
    }
}

/// Ready, and not being deleted (an EndpointSlice lists a terminating pod as not ready).
fn pod_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
