//! Flags shared by several commands, declared once and flattened into each command's `Args`:
//! the cluster(s) to act on, istiod's namespace, `--dry-run`/`-o`, the cacerts flags, the
//! gateway and remote-secret flag groups; and `CONTEXT=VALUE` mappings.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, ValueEnum};

use crate::istio::{DEFAULT_NAMESPACE, DEFAULT_READER_SA};
use crate::kube::{Output, Secrets};

/// `--kubeconfig` and one `--context` (commands that act on one cluster).
#[derive(Debug, Clone, Args)]
pub struct KubeArgs {
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Context in the kubeconfig (default: its current context).
    #[arg(long)]
    pub context: Option<String>,
}

/// `--kubeconfig` and a repeated `--context` (commands that act on several clusters).
#[derive(Debug, Clone, Args)]
pub struct ClustersArgs {
    /// Kubeconfig holding every context (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// A cluster (repeat for each).
    #[arg(long = "context", required = true)]
    pub contexts: Vec<String>,
}

/// `-n`: istiod's namespace.
#[derive(Debug, Clone, Args)]
pub struct NamespaceArg {
    /// istiod's namespace.
    #[arg(long, short = 'n', default_value = DEFAULT_NAMESPACE, value_parser = namespace_name)]
    pub namespace: String,
}

/// A namespace name (DNS-1123 label), checked when parsed: a usage error (exit 2) on every
/// command, before anything is read.
fn namespace_name(s: &str) -> Result<String, String> {
    pki::validate_dns_label(s)
        .map(|()| s.to_string())
        .map_err(|e| format!("namespace {e}"))
}

/// `-o yaml|json`.
#[derive(Debug, Clone, Args)]
pub struct OutputArg {
    /// Output format: yaml or json.
    #[arg(long, short = 'o', value_enum, default_value = "yaml")]
    pub output: Output,
}

/// `--dry-run` and `-o`, on every command that changes a cluster.
#[derive(Debug, Clone, Args)]
pub struct MutateArgs {
    /// Print what would be applied or deleted and change nothing (private keys redacted,
    /// tokens are placeholders).
    #[arg(long)]
    pub dry_run: bool,
    /// Output format: yaml (the default) or json.
    #[arg(long, short = 'o', value_enum)]
    output: Option<Output>,
}

impl MutateArgs {
    /// The output format: `-o`, else YAML.
    pub fn output(&self) -> Output {
        self.output.unwrap_or_default()
    }

    /// `-o`, when it was given: then a real run prints what it applied on stdout, as one
    /// document (progress and notices go to stderr either way).
    pub fn output_asked(&self) -> Option<Output> {
        self.output
    }
}

/// `--deletion-wait`, on every command that writes objects: an object it will write (or
/// its namespace) that is being deleted (a `deletionTimestamp`, held by finalizers) is waited
/// for before the first write, since an apply to it would be lost when it goes
/// (`mesh::terminating`).
#[derive(Debug, Clone, Args)]
pub struct DeletionWaitArg {
    /// How long to wait, before the first change, for objects this command writes (or their
    /// namespace) that are still being deleted, e.g. a LoadBalancer Service whose cloud load
    /// balancer is being torn down; 0: do not wait. If one is still there, nothing is changed
    /// (exit 1).
    #[arg(long = "deletion-wait", value_name = "DURATION", default_value = "2m",
        value_parser = humantime::parse_duration)]
    pub deletion_wait: Duration,
}

/// `--force` and `--show-secrets`, on the commands that apply a `cacerts` Secret.
#[derive(Debug, Clone, Args)]
pub struct CacertsFlags {
    /// Replace a `cacerts` whose root differs (workloads signed by the old root stop being trusted).
    #[arg(long)]
    pub force: bool,
    /// Print `ca-key.pem` in the --dry-run and -o output instead of a placeholder.
    #[arg(long)]
    pub show_secrets: bool,
}

impl CacertsFlags {
    pub fn secrets(&self) -> Secrets {
        Secrets::from_flag(self.show_secrets)
    }
}

/// Gateway Service type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServiceType {
    LoadBalancer,
    NodePort,
}

/// Which protocols the gateway serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocols {
    /// 15443 only (sidecars, SNI auto-passthrough): needs no workload certificate.
    Classic,
    /// 15443 and 15008 (HBONE): a mesh mixing sidecars and ambient.
    Both,
    /// 15008 only.
    Ambient,
}

impl Protocols {
    pub fn classic(self) -> bool {
        self != Protocols::Ambient
    }
    pub fn hbone(self) -> bool {
        self != Protocols::Classic
    }
}

/// Where an HBONE gateway's workload certificate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HboneCerts {
    /// A CSR to istiod with the pod's projected istio-ca token, renewed at half its lifetime
    /// (as Istio's own gateways and ztunnel get theirs).
    Istiod,
    /// The Secret istio-eastwestgateway-hbone-certs in Istio's file layout (no istiod CA,
    /// e.g. a CA outside the cluster); reloaded when it changes.
    Files,
}

/// The gateway Service's `spec.ipFamilyPolicy`, spelled as Kubernetes spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IpFamilyPolicy {
    /// One family, the cluster's primary one.
    #[value(name = "SingleStack")]
    Single,
    /// Both families where the cluster has both, else one.
    #[value(name = "PreferDualStack")]
    PreferDual,
    /// Both families; a single-stack cluster refuses it.
    #[value(name = "RequireDualStack")]
    RequireDual,
}

impl IpFamilyPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            IpFamilyPolicy::Single => "SingleStack",
            IpFamilyPolicy::PreferDual => "PreferDualStack",
            IpFamilyPolicy::RequireDual => "RequireDualStack",
        }
    }
}

/// Default gateway image (the one `kind-e2e` builds).
pub const DEFAULT_IMAGE: &str = "meshfed/gateway:dev";

/// Gateway flags shared by `gateway manifest|install` and `join`.
#[derive(Debug, Args, Clone)]
pub struct GatewayFlags {
    /// Gateway container image.
    #[arg(long = "gateway-image", default_value = DEFAULT_IMAGE, value_parser = image_ref)]
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
    /// Protocols served: classic (15443), both (15443 + HBONE 15008), ambient (15008).
    /// HBONE needs a workload certificate: from istiod, or the Secret (--hbone-certs files).
    /// `join --ambient` makes it `both` unless given.
    #[arg(long, value_enum)]
    pub protocols: Option<Protocols>,
    /// The mesh's SPIFFE trust domain (the gateway's identity and the clients it accepts).
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Where the HBONE certificate comes from: istiod, or files from the Secret
    /// istio-eastwestgateway-hbone-certs.
    #[arg(long, value_enum, default_value = "istiod")]
    pub hbone_certs: HboneCerts,
    /// The gateway Service's ipFamilyPolicy. Unset, meshctl sends none: a new Service gets
    /// the cluster's primary family only, and an existing one keeps its policy (one set with
    /// kubectl patch included). On a dual-stack cluster PreferDualStack gives the load balancer
    /// an address per family, and istiod splits cross-network traffic over both (README).
    #[arg(long, value_enum)]
    pub ip_family_policy: Option<IpFamilyPolicy>,
}

impl GatewayFlags {
    /// `--protocols`, else `both` when ambient is asked for, else `classic`.
    pub fn protocols(&self, ambient: bool) -> Protocols {
        self.protocols.unwrap_or(if ambient {
            Protocols::Both
        } else {
            Protocols::Classic
        })
    }
}

/// Remote-secret flags shared by `create-remote-secret` and `join`.
#[derive(Debug, Args, Clone)]
pub struct SecretFlags {
    /// Service account whose token the Secret carries.
    #[arg(long, default_value = DEFAULT_READER_SA)]
    pub service_account: String,
    /// Create the service account and its own read-only ClusterRole and ClusterRoleBinding
    /// (meshctl-istio-reader-<ns> for the default account, meshctl-istio-reader-<ns>.<sa>
    /// for another).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub create_service_account: bool,
    /// Use this existing `kubernetes.io/service-account-token` Secret for the token.
    #[arg(long)]
    pub secret_name: Option<String>,
    /// Expiring token from the TokenRequest API (10m to 2^32 s, e.g. 24h) instead of a
    /// never-expiring service-account-token Secret. Re-run before it expires.
    #[arg(long, value_parser = parse_ttl)]
    pub token_ttl: Option<Duration>,
    /// Accept a loopback API server address (127.0.0.1, localhost, ::1) in the Secret.
    #[arg(long)]
    pub allow_loopback_server: bool,
    /// `tls-server-name` for the generated kubeconfig.
    #[arg(long)]
    pub tls_server_name: Option<String>,
    /// Also let the reader get/list/watch Secrets, so the other clusters' istiod can serve
    /// this cluster's `credentialName` Secrets; the token then reads every Secret here.
    #[arg(long)]
    pub reader_allow_secrets: bool,
    /// `--deletion-wait` (here so that `create-remote-secret` and `join` both have it).
    #[command(flatten)]
    pub deletion: DeletionWaitArg,
}

/// The shortest and longest `spec.expirationSeconds` a TokenRequest may ask for: 10 minutes
/// and 2^32 seconds (kubernetes/kubernetes pkg/apis/authentication/validation/validation.go,
/// `ValidateTokenRequest`; the API server refuses anything else with 422).
pub const MIN_TOKEN_TTL_SECS: u64 = 600;
pub const MAX_TOKEN_TTL_SECS: u64 = 1 << 32;

/// A token lifetime (`--token-ttl`): what the TokenRequest API accepts, 10m to 2^32 s
/// (about 136 years), refused here (a usage error) rather than by the API server after
/// meshctl has changed something.
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))?;
    if d.as_secs() < MIN_TOKEN_TTL_SECS {
        return Err(format!(
            "{s:?} is shorter than 10m, the minimum the TokenRequest API accepts"
        ));
    }
    if d.as_secs() > MAX_TOKEN_TTL_SECS {
        return Err(format!(
            "{s:?} is longer than 2^32 s ({MAX_TOKEN_TTL_SECS}s, about 136 years), the maximum \
             the TokenRequest API accepts; pass a lifetime such as 24h or 720h and refresh the \
             token before it expires (meshctl credentials refresh)"
        ));
    }
    Ok(d)
}

/// A usage error found after parsing: a flag's value or a combination of flags is wrong,
/// known before any file or cluster is read. `main` exits 2 for it, as clap does for the
/// usage errors it finds itself; every other failure exits 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A usage error with this message (see [`UsageError`]).
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}

/// Turns an error from checking flags into a usage error, keeping its text and causes.
pub fn as_usage(e: anyhow::Error) -> anyhow::Error {
    if e.chain().any(|c| c.is::<UsageError>()) {
        return e;
    }
    usage(format!("{e:#}"))
}

/// A container image reference as a flag: not empty, no whitespace or control characters
/// (the API server takes any string and the kubelet fails the pull much later).
fn image_ref(s: &str) -> std::result::Result<String, String> {
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{s:?} is not an image reference: give one like registry.example/meshfed/gateway:1.0"
        ));
    }
    Ok(s.to_string())
}

/// Explicit `--cluster-name CONTEXT=NAME` values: DNS-1123 labels, as `join` names clusters
/// (a usage error otherwise).
pub fn check_cluster_names(names: &[(String, String)]) -> Result<()> {
    for (ctx, name) in names {
        pki::validate_dns_label(name)
            .map_err(|e| usage(format!("--cluster-name {ctx}={name}: {e}")))?;
    }
    Ok(())
}

/// Refuses a `--context` given twice (before anything is read or changed; a usage error).
pub fn check_unique(contexts: &[String]) -> Result<()> {
    for (i, c) in contexts.iter().enumerate() {
        // A context is printed into comments and hints: a newline in it would forge lines.
        if c.is_empty() || c.chars().any(char::is_control) {
            return Err(usage(format!(
                "--context {c:?}: a context name is not empty and has no control characters"
            )));
        }
        if contexts[..i].contains(c) {
            return Err(usage(format!("--context {c:?} given twice")));
        }
    }
    Ok(())
}

/// Parses `ctx=value` flags into pairs, rejecting unknown contexts and duplicates (usage
/// errors).
pub fn parse_mapping(
    flag: &str,
    items: &[String],
    contexts: &[String],
) -> Result<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::new();
    for item in items {
        let (ctx, val) = item
            .split_once('=')
            .ok_or_else(|| usage(format!("--{flag} {item:?}: expected CONTEXT=VALUE")))?;
        if !contexts.iter().any(|c| c == ctx) {
            return Err(usage(format!(
                "--{flag} {item:?}: context {ctx:?} is not one of the --context values ({})",
                contexts.join(", ")
            )));
        }
        if out.iter().any(|(c, _)| c == ctx) {
            return Err(usage(format!("--{flag}: context {ctx:?} given twice")));
        }
        out.push((ctx.to_string(), val.to_string()));
    }
    Ok(out)
}

pub fn lookup<'a>(map: &'a [(String, String)], ctx: &str) -> Option<&'a str> {
    map.iter().find(|(c, _)| c == ctx).map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_within_what_token_request_accepts() {
        assert!(parse_ttl("5m").is_err());
        assert!(parse_ttl("599s").is_err());
        assert_eq!(parse_ttl("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_ttl("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(
            parse_ttl("4294967296s").unwrap(),
            Duration::from_secs(1 << 32)
        );
        for long in ["4294967297s", "99999999999h", "18446744073709551615s"] {
            let e = parse_ttl(long).unwrap_err();
            assert!(e.contains("longer than 2^32 s"), "{long}: {e}");
        }
    }

    #[test]
    fn usage_errors_stay_usage_errors() {
        let e = as_usage(anyhow::anyhow!("outer").context("ctx"));
        assert!(e.is::<UsageError>());
        assert_eq!(e.to_string(), "ctx: outer");
        let e = as_usage(usage("x").context("y"));
        assert!(e.chain().any(|c| c.is::<UsageError>()));
        assert!(
            parse_mapping("network", &["a".into()], &["a".into()])
                .unwrap_err()
                .is::<UsageError>()
        );
    }
}
