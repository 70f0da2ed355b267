//! `meshctl gateway manifest|install`: the east-west gateway as Kubernetes objects. The
//! names and labels are Istio's (`istio-eastwestgateway`, `istio: eastwestgateway`,
//! `topology.istio.io/network`), so istiod finds the Service as the network's gateway.

use std::process::ExitCode;

use anyhow::{Result, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::kube_client::{self as kc, Cluster, KubeArgs, KubeconfigFile, Output};
use crate::label::{NETWORK_LABEL, validate_label_value};

pub const NAME: &str = "istio-eastwestgateway";
pub const APP_LABEL: &str = "app";
pub const ISTIO_LABEL: &str = "istio";
pub const ISTIO_VALUE: &str = "eastwestgateway";
pub const STATUS_PORT: u16 = 15021;
pub const TLS_PORT: u16 = 15443;
pub const EXPOSE_GATEWAY: &str = "cross-network-gateway";
pub const DEFAULT_IMAGE: &str = "meshfed/gateway:dev";
/// SIGTERM to exit: the gateway's drain grace (5 s) plus drain timeout (20 s) must fit.
pub const TERMINATION_GRACE_SECONDS: u32 = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServiceType {
    LoadBalancer,
    NodePort,
}

/// Gateway flags shared by `gateway manifest|install` and `join`.
#[derive(Debug, Args, Clone)]
pub struct GatewayFlags {
    /// Gateway container image.
    #[arg(long = "gateway-image", default_value = DEFAULT_IMAGE)]
    pub image: String,
    /// Minimum replicas (the HorizontalPodAutoscaler's floor).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub replicas: u32,
    /// HorizontalPodAutoscaler ceiling.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_replicas: u32,
    /// Service type of the gateway.
    #[arg(long, value_enum, default_value = "load-balancer")]
    pub service_type: ServiceType,
    /// Service annotation KEY=VALUE (repeatable), e.g. for a cloud load balancer.
    #[arg(long = "service-annotation")]
    pub annotations: Vec<String>,
    /// Also apply Istio's `cross-network-gateway` Gateway (AUTO_PASSTHROUGH on 15443, `*.local`).
    #[arg(long)]
    pub expose_services: bool,
}

#[derive(Debug, Args)]
pub struct GatewayArgs {
    #[command(subcommand)]
    cmd: GatewayCmd,
}

#[derive(Debug, Subcommand)]
enum GatewayCmd {
    /// Print the gateway's objects.
    Manifest(ManifestArgs),
    /// Apply the gateway's objects to a cluster (server-side apply).
    Install(InstallArgs),
}

#[derive(Debug, Args)]
struct ManifestArgs {
    /// This cluster's network (label value), e.g. west-network.
    #[arg(long)]
    network: String,
    #[arg(long, short = 'n', default_value = "istio-system")]
    namespace: String,
    #[command(flatten)]
    gw: GatewayFlags,
    #[arg(long, short = 'o', value_enum, default_value = "yaml")]
    output: Output,
}

#[derive(Debug, Args)]
struct InstallArgs {
    #[command(flatten)]
    m: ManifestArgs,
    #[command(flatten)]
    kube: KubeArgs,
    /// Print the objects and apply nothing.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(a: GatewayArgs) -> Result<ExitCode> {
    match a.cmd {
        GatewayCmd::Manifest(m) => {
            let objs = objects(&m.namespace, &m.network, &m.gw)?;
            print!("{}", kc::render(&objs, m.output)?);
            Ok(ExitCode::SUCCESS)
        }
        GatewayCmd::Install(i) => {
            let objs = objects(&i.m.namespace, &i.m.network, &i.m.gw)?;
            let file = KubeconfigFile::load(i.kube.kubeconfig.as_deref())?;
            let ctx = file.context_name(i.kube.context.as_deref())?;
            file.require_contexts(std::slice::from_ref(&ctx))?;
            kc::block_on(async {
                let c = file.connect(&ctx).await?;
                install(&c, &i.m.namespace, &objs, i.dry_run).await
            })?;
            if i.dry_run {
                print!("{}", kc::render_plan(&[(ctx, objs)], i.m.output)?);
            } else {
                println!(
                    "gateway {NAME} applied in context {ctx:?} ({} objects)",
                    objs.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Is the Istio Gateway CRD served? (`gateways.networking.istio.io`, version v1)
pub async fn gateway_crd_served(c: &Cluster) -> Result<bool> {
    let crd = kc::get(
        c,
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        None,
        "gateways.networking.istio.io",
    )
    .await?;
    Ok(crd.is_some_and(|crd| {
        crd["spec"]["versions"]
            .as_array()
            .is_some_and(|v| v.iter().any(|v| v["name"] == "v1" && v["served"] == true))
    }))
}

/// Applies the gateway objects; refuses `--expose-services` without Istio's Gateway CRD
/// before changing anything (unless `dry_run`).
pub async fn install(c: &Cluster, ns: &str, objs: &[Value], dry_run: bool) -> Result<()> {
    let exposes = objs.iter().any(|o| o["kind"] == "Gateway");
    if exposes && !dry_run && !gateway_crd_served(c).await? {
        bail!(
            "--expose-services: context {:?} does not serve networking.istio.io/v1 Gateways \
             (CRD gateways.networking.istio.io missing): install Istio (its CRDs) first, then \
             run again with --expose-services",
            c.context
        );
    }
    if !dry_run {
        kc::ensure_namespace(c, ns).await?;
        kc::apply_all(c, objs).await?;
    }
    Ok(())
}

fn parse_annotations(items: &[String]) -> Result<serde_json::Map<String, Value>> {
    let mut m = serde_json::Map::new();
    for a in items {
        let (k, v) = a
            .split_once('=')
            .ok_or_else(|| anyhow!("--service-annotation {a:?}: expected KEY=VALUE"))?;
        m.insert(k.to_string(), json!(v));
    }
    Ok(m)
}

/// All gateway objects for one cluster, in apply order.
pub fn objects(ns: &str, network: &str, f: &GatewayFlags) -> Result<Vec<Value>> {
    validate_label_value(network)?;
    pki::validate_dns_label(ns).map_err(|e| anyhow!("namespace {e}"))?;
    if f.max_replicas < f.replicas {
        bail!(
            "--max-replicas {} is below --replicas {}",
            f.max_replicas,
            f.replicas
        );
    }
    let annotations = parse_annotations(&f.annotations)?;
    let managed = kc::managed_labels();
    let mut labels = managed.clone();
    labels.insert(APP_LABEL.into(), json!(NAME));
    labels.insert(ISTIO_LABEL.into(), json!(ISTIO_VALUE));
    labels.insert(NETWORK_LABEL.into(), json!(network));
    let selector = json!({APP_LABEL: NAME, ISTIO_LABEL: ISTIO_VALUE});
    let role = format!("meshctl-eastwestgateway-{ns}");
    let verbs = json!(["get", "list", "watch"]);
    let meta = |name: &str, namespaced: bool| {
        let mut m = json!({"name": name, "labels": labels});
        if namespaced {
            m["namespace"] = json!(ns);
        }
        m
    };
    let mut service_meta = meta(NAME, true);
    if !annotations.is_empty() {
        service_meta["annotations"] = Value::Object(annotations);
    }
    let service_type = match f.service_type {
        ServiceType::LoadBalancer => "LoadBalancer",
        ServiceType::NodePort => "NodePort",
    };
    let mut out = vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta(NAME, true)}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta(&role, false),
        "rules": [
            {"apiGroups": [""], "resources": ["services", "pods", "namespaces"], "verbs": verbs},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": verbs},
            {"apiGroups": ["networking.istio.io"], "resources": ["destinationrules"], "verbs": verbs},
            {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": verbs},
        ]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": meta(&role, false),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": ns}]}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta(NAME, true),
        // No spec.replicas: the HorizontalPodAutoscaler owns the count.
        "spec": {
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": NAME,
                    "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "gateway",
                        "image": f.image,
                        "args": ["--listen", format!("0.0.0.0:{TLS_PORT}"), "--admin", format!("0.0.0.0:{STATUS_PORT}"),
                            "--cluster-domain", "cluster.local", "--allow-host", "*.local", "--log-format", "json"],
                        "ports": [
                            {"name": "tls", "containerPort": TLS_PORT, "protocol": "TCP"},
                            {"name": "status-port", "containerPort": STATUS_PORT, "protocol": "TCP"}],
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
        json!({"apiVersion": "v1", "kind": "Service", "metadata": service_meta,
            "spec": {"type": service_type, "selector": selector, "ports": [
                {"name": "status-port", "port": STATUS_PORT, "targetPort": STATUS_PORT, "protocol": "TCP"},
                {"name": "tls", "port": TLS_PORT, "targetPort": TLS_PORT, "protocol": "TCP"}]}}),
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": meta(NAME, true),
            "spec": {"minAvailable": 1, "selector": {"matchLabels": selector}}}),
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": meta(NAME, true),
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME},
                "minReplicas": f.replicas, "maxReplicas": f.max_replicas,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": 80}}}]}}),
    ];
    if f.expose_services {
        out.push(
            json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
            "metadata": {"name": EXPOSE_GATEWAY, "namespace": ns, "labels": managed},
            "spec": {"selector": {ISTIO_LABEL: ISTIO_VALUE}, "servers": [{
                "port": {"number": TLS_PORT, "name": "tls", "protocol": "TLS"},
                "tls": {"mode": "AUTO_PASSTHROUGH"},
                "hosts": ["*.local"]}]}}),
        );
    }
    Ok(out)
}
