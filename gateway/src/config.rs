//! Gateway configuration: one flat struct whose `Default` is the one source of defaults,
//! built from flags with environment fallbacks (a test keeps the flags' defaults equal to it).

use std::ffi::OsStr;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use serde::Serialize;

use crate::outlier::Outlier;
use crate::sni_name::HostPattern;
use crate::sockets::ListenAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// `--endpoints FILE`: static YAML, reloaded on change and SIGHUP.
    File(PathBuf),
    /// Kubernetes EndpointSlices and Services.
    Kubernetes(KubeOptions),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KubeOptions {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    /// Empty means all namespaces.
    pub namespaces: Vec<String>,
    pub cluster_domain: String,
    /// How often to look for the DestinationRule CRD while it is not served.
    pub crd_recheck: Duration,
    /// The gateway pod's own address: without `--zone`, its zone is the one the EndpointSlices
    /// give the endpoint with this address (the gateway's own Service lists it).
    pub pod_ip: Option<IpAddr>,
    /// The cluster's ID as istiod names it (`--cluster-id`): every endpoint carries it as
    /// `topology.istio.io/cluster` for subsets, as istiod's endpoints do.
    pub cluster_id: String,
    /// istiod's root namespace (`--root-namespace`): where mesh-wide DestinationRules live.
    pub root_namespace: String,
    /// The gateway pod's node (`--node-name`), for Services with `internalTrafficPolicy: Local`.
    pub node_name: Option<String>,
}

impl KubeOptions {
    /// istiod's default `meshConfig.rootNamespace` in a standard install: its own namespace.
    pub const DEFAULT_ROOT_NAMESPACE: &str = "istio-system";
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            kubeconfig: None,
            context: None,
            namespaces: Vec::new(),
            cluster_domain: "cluster.local".into(),
            crd_recheck: Duration::from_secs(30),
            pod_ip: None,
            cluster_id: CaConfig::DEFAULT_CLUSTER_ID.into(),
            root_namespace: Self::DEFAULT_ROOT_NAMESPACE.into(),
            node_name: None,
        }
    }
}

/// Where Kubernetes credentials come from without `--kubeconfig`. As with kubectl, a set
/// `KUBECONFIG` (one file or a `:`-separated list, merged) is used; otherwise the in-cluster
/// ServiceAccount, then `~/.kube/config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultCredentials {
    KubeconfigEnv,
    InClusterThenHome,
}

impl DefaultCredentials {
    /// Decides from the value of `KUBECONFIG` (passed in: the environment is process-global).
    /// Empty counts as unset, as for kubectl.
    pub fn from_kubeconfig_env(value: Option<&OsStr>) -> DefaultCredentials {
        match value {
            Some(v) if !v.is_empty() => DefaultCredentials::KubeconfigEnv,
            _ => DefaultCredentials::InClusterThenHome,
        }
    }

    pub fn from_env() -> DefaultCredentials {
        Self::from_kubeconfig_env(std::env::var_os("KUBECONFIG").as_deref())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum LogFormat {
    Plain,
    Json,
}

/// Without `--endpoints`, endpoints come from Kubernetes.
impl Default for Discovery {
    fn default() -> Self {
        Discovery::Kubernetes(KubeOptions::default())
    }
}

/// Where the HBONE certificate comes from when it is istiod (`--ca-root` given, no
/// `--hbone-certs`). Defaults are ztunnel's (`src/config.rs`: `CA_ADDRESS`, `CLUSTER_ID`
/// `Kubernetes`, `SECRET_TTL` 24h, the token at `/var/run/secrets/tokens/istio-token`), which
/// are istio-agent's too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaConfig {
    /// `host:port` of istiod's gRPC port; the host is also the TLS server name.
    pub address: String,
    /// PEM root(s) that istiod's TLS certificate chains to: the mesh root (the
    /// `istio-ca-root-cert` ConfigMap's `root-cert.pem`). It also checks issued chains and
    /// the clients on 15008.
    pub root: PathBuf,
    /// The projected service-account token (audience `istio-ca`), re-read for every request
    /// because the kubelet rotates it.
    pub token: PathBuf,
    /// The `clusterid` header: which cluster's API server istiod asks to review the token.
    pub cluster_id: String,
    /// The validity asked for (istiod may cap it).
    pub cert_lifetime: Duration,
    /// First retry delay after a failed request; doubled per failure up to `retry_max`.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// Bound on one request, connection included.
    pub request_timeout: Duration,
}

impl CaConfig {
    pub const DEFAULT_ADDRESS: &str = "istiod.istio-system.svc:15012";
    pub const DEFAULT_TOKEN: &str = "/var/run/secrets/tokens/istio-token";
    pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";

    /// Defaults for everything but the root.
    pub fn new(root: PathBuf) -> CaConfig {
        CaConfig {
            address: Self::DEFAULT_ADDRESS.into(),
            root,
            token: Self::DEFAULT_TOKEN.into(),
            cluster_id: Self::DEFAULT_CLUSTER_ID.into(),
            cert_lifetime: Duration::from_secs(24 * 3600),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub listen: ListenAddr,
    pub admin: ListenAddr,
    /// A listener serving only the health paths (the port a load balancer may expose);
    /// `None`: none.
    pub status_listen: Option<ListenAddr>,
    pub discovery: Discovery,
    pub allow_hosts: Vec<HostPattern>,
    pub require_istio_alpn: bool,
    /// Cap on the bytes buffered while looking for the ClientHello.
    pub max_hello_bytes: usize,
    pub detect_timeout: Duration,
    pub connect_timeout: Duration,
    /// Endpoints tried per connection before `connect_failed`.
    pub connect_attempts: u32,
    pub idle_timeout: Duration,
    /// Bulk streams move by `splice(2)` (no copy through userspace); off, every byte is
    /// copied.
    pub splice: bool,
    /// Most decided connections (connecting or forwarding); undecided ones do not count.
    pub max_connections: usize,
    /// Most connections still sending their PROXY header or ClientHello; beyond it the
    /// oldest is shed.
    pub max_undecided: usize,
    /// Most bytes those undecided connections buffer in total; beyond it the oldest is shed.
    pub max_undecided_bytes: usize,
    pub proxy_protocol: bool,
    pub outlier: Outlier,
    /// After SIGTERM: readiness fails at once, the listener keeps accepting this long.
    pub drain_grace: Duration,
    /// Then open connections may finish until this deadline; the rest are closed.
    pub drain_timeout: Duration,
    /// The HBONE listener (15008); `None` turns it off.
    pub hbone_listen: Option<ListenAddr>,
    /// Directory with the gateway's workload certificate in Istio's file-mounted layout
    /// (`cert-chain.pem`, `key.pem`, `root-cert.pem`). Without it or `hbone_ca`, HBONE is off.
    pub hbone_certs: Option<PathBuf>,
    /// SPIFFE trust domains a client certificate may belong to.
    pub trust_domains: Vec<String>,
    /// HTTP/2 MAX_CONCURRENT_STREAMS on 15008: tunnels per outer connection.
    pub hbone_max_streams: u32,
    /// Most open HBONE tunnels in total; beyond it a CONNECT is answered 503.
    pub hbone_max_tunnels: usize,
    /// Most established (handshaken) HBONE outer connections. When all are taken, the one
    /// idle longest (no tunnel) is closed for a newcomer; with none idle the newcomer is refused.
    pub hbone_max_connections: usize,
    /// Bytes one HBONE outer connection may hold queued toward its client, shared by its
    /// tunnels ([`crate::hbone::queued`]).
    pub hbone_connection_queue: usize,
    /// HTTP/2 connection receive window on 15008: bytes one outer connection's clients may
    /// send that its endpoints have not taken yet. Each stream's window is ztunnel's 4 MiB,
    /// or this if smaller.
    pub hbone_connection_window: u32,
    /// An outer connection without a tunnel for this long gets GOAWAY.
    pub hbone_idle_timeout: Duration,
    /// A PING this often on each outer connection; no PONG in twice this closes it.
    pub hbone_keepalive: Duration,
    /// How often the certificate files are checked for a change.
    pub hbone_cert_poll: Duration,
    /// The HBONE certificate from istiod instead of `hbone_certs` files.
    pub hbone_ca: Option<CaConfig>,
    /// The zone the gateway runs in (`topology.kubernetes.io/zone`), given; in Kubernetes
    /// without it, learned from the EndpointSlices ([`KubeOptions::pod_ip`]).
    pub zone: Option<Arc<str>>,
}

impl Config {
    /// Defaults for everything but discovery; tests override fields directly.
    pub fn new(discovery: Discovery) -> Config {
        Config {
            discovery,
            ..Config::default()
        }
    }

    /// Whether the HBONE listener runs: an address and a certificate source (as `app::build`).
    pub fn hbone_enabled(&self) -> bool {
        self.hbone_listen.is_some() && (self.hbone_certs.is_some() || self.hbone_ca.is_some())
    }
}

/// The defaults. The flags in [`Args`] repeat them as text (clap shows them in `--help`, and
/// durations are given in humantime's syntax); `flag_defaults_are_config_defaults` keeps the
/// two equal.
impl Default for Config {
    fn default() -> Config {
        Config {
            listen: ListenAddr::Any(15443),
            admin: ListenAddr::Any(15021),
            status_listen: None,
            discovery: Discovery::default(),
            allow_hosts: vec![HostPattern::parse("*.local").expect("valid default pattern")],
            require_istio_alpn: true,
            max_hello_bytes: 64 * 1024,
            detect_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
            connect_attempts: 3,
            idle_timeout: Duration::from_secs(3600),
            splice: true,
            max_connections: 65_536,
            max_undecided: 1024,
            max_undecided_bytes: 16 << 20,
            proxy_protocol: false,
            outlier: Outlier::default(),
            drain_grace: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(20),
            hbone_listen: Some(ListenAddr::Any(15008)),
            hbone_certs: None,
            trust_domains: vec!["cluster.local".into()],
            hbone_max_streams: 100,
            hbone_max_tunnels: 65_536,
            hbone_max_connections: 65_536,
            hbone_connection_queue: crate::hbone::queued::BUDGET,
            hbone_connection_window: crate::hbone::CONNECTION_WINDOW,
            hbone_idle_timeout: Duration::from_secs(600),
            hbone_keepalive: crate::hbone::KEEPALIVE_INTERVAL,
            hbone_cert_poll: Duration::from_secs(5),
            hbone_ca: None,
            zone: None,
        }
    }
}

/// A duration of at least `MIN_MS` milliseconds (each flag's own floor: below it a value only
/// burns CPU, floods the log or cuts every connection) and at most a year (absurd values would
/// overflow deadline arithmetic).
fn duration<const MIN_MS: u64>(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 10s, 1h)"))?;
    let min = Duration::from_millis(MIN_MS);
    if d < min {
        return Err(format!(
            "below this flag's minimum, {}",
            humantime::format_duration(min)
        ));
    }
    if d > Duration::from_secs(365 * 24 * 3600) {
        return Err("more than this flag's maximum, 365 days".into());
    }
    Ok(d)
}

/// A namespace name: a DNS-1123 label, as Kubernetes requires of one
/// (`staging/src/k8s.io/apimachinery/pkg/api/validation/generic.go`: `ValidateNamespaceName =
/// NameIsDNSLabel`). An empty value passes to [`Args::check`]: alone it means every namespace,
/// as unset does (`GATEWAY_NAMESPACES=""` from a template with no namespaces).
fn namespace(s: &str) -> Result<String, String> {
    if s.is_empty() || crate::sni_name::is_dns1123_label(s) {
        Ok(s.to_string())
    } else {
        Err(
            "not a namespace name: at most 63 lower-case letters, digits and '-', starting and \
             ending with a letter or digit (e.g. istio-system)"
                .into(),
        )
    }
}

/// `--root-namespace`: a namespace name, never empty (istiod always has one).
fn root_namespace(s: &str) -> Result<String, String> {
    match namespace(s)? {
        n if n.is_empty() => Err("empty: istiod's root namespace (e.g. istio-system)".into()),
        n => Ok(n),
    }
}

/// `--zone`: a Kubernetes label value, as `topology.kubernetes.io/zone` and an EndpointSlice's
/// `zone` are; empty is none.
fn zone(s: &str) -> Result<String, String> {
    if s.is_empty() || is_zone(s) {
        Ok(s.to_string())
    } else {
        Err(
            "not a zone name: the node label topology.kubernetes.io/zone's value, at most 63 \
             letters, digits, '-', '_' and '.', starting and ending with a letter or digit \
             (e.g. us-east-1a)"
                .into(),
        )
    }
}

/// A non-empty Kubernetes label value (`validation.IsValidLabelValue`): what a zone name is.
pub fn is_zone(s: &str) -> bool {
    let edge = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && edge(s.bytes().next())
        && edge(s.bytes().last())
}

/// An address, or `off`.
fn listen_or_off(s: &str) -> Result<ListenOrOff, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(ListenOrOff(None));
    }
    s.parse()
        .map(|a| ListenOrOff(Some(a)))
        .map_err(|e| format!("{e}, or off"))
}

/// `--ca-address`: `host:port`.
fn host_port(s: &str) -> Result<String, String> {
    let ok = s
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && !h.contains('/') && p.parse::<u16>().is_ok());
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not host:port (e.g. istiod.istio-system.svc:15012)"
        ))
    }
}

/// `--cluster-domain`: a DNS name (as an SNI host's last labels must be), lower-cased, with
/// one trailing dot dropped (the fully qualified form of the same domain). An empty or
/// malformed domain made every Service's host unmatchable: no route, readiness passing.
fn cluster_domain(s: &str) -> Result<String, String> {
    let lower = s.to_ascii_lowercase();
    let domain = lower.strip_suffix('.').unwrap_or(&lower);
    // The shortest host discovery makes of it, `s.n.svc.<domain>`, must be a valid SNI host.
    match crate::sni_name::validate_host(&format!("s.n.svc.{domain}")) {
        Ok(()) if !domain.is_empty() => Ok(domain.to_string()),
        _ => Err(format!(
            "{s:?} is not a DNS domain: give the cluster's DNS domain (kubelet's \
             --cluster-domain), labels of 1-63 letters, digits and '-' joined by '.', at most \
             245 bytes (e.g. cluster.local)"
        )),
    }
}

/// `--hbone-listen`: an address or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenOrOff(pub Option<ListenAddr>);

/// A SPIFFE trust domain: a lower-case DNS-like name, as in `spiffe://<td>/`.
fn trust_domain(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        // Only dots names no domain (pki's `validate_trust_domain`, which meshctl uses, agrees).
        && !s.bytes().all(|b| b == b'.');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a SPIFFE trust domain (lower-case letters, digits, '-', '.', '_'; e.g. cluster.local)"
        ))
    }
}

fn host_pattern(s: &str) -> Result<HostPattern, String> {
    HostPattern::parse(s).map_err(|e| e.to_string())
}

/// Istio-compatible east-west gateway: routes mTLS connections by SNI
/// (`outbound_.<port>_.<subset>_.<host>`) to local endpoints without terminating TLS.
#[derive(Debug, Parser)]
#[command(name = "gateway", version)]
pub struct Args {
    /// Address of the passthrough listener. `:PORT` binds every address: IPv6 and IPv4 on one
    /// socket, or IPv4 alone where the host has no IPv6; IP:PORT or `[IPv6]:PORT` binds that
    /// address only (0.0.0.0:PORT is IPv4 only).
    #[arg(long, env = "GATEWAY_LISTEN", default_value = ":15443")]
    pub listen: ListenAddr,
    /// Address of the admin listener (/healthz/ready, /metrics, /debug/routes), as --listen.
    #[arg(long, env = "GATEWAY_ADMIN", default_value = ":15021")]
    pub admin: ListenAddr,
    /// Address of a listener serving only /healthz/ready and /healthz/live: the one to expose
    /// on a load balancer (as Istio's status port 15021), while --admin, which also serves
    /// /metrics and /debug/routes (every endpoint's address), stays inside the cluster.
    #[arg(long, env = "GATEWAY_STATUS_LISTEN")]
    pub status_listen: Option<ListenAddr>,
    /// Static endpoints YAML file. Without it, endpoints come from Kubernetes.
    #[arg(long, env = "GATEWAY_ENDPOINTS")]
    pub endpoints: Option<PathBuf>,
    /// Kubeconfig file for Kubernetes discovery. Without it: $KUBECONFIG when set (a
    /// `:`-separated list is merged, as kubectl does), else in-cluster, else ~/.kube/config.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context.
    #[arg(long, env = "GATEWAY_CONTEXT")]
    pub context: Option<String>,
    /// Namespace to watch (repeatable, or comma-separated in GATEWAY_NAMESPACES; default all;
    /// an empty value alone means all too).
    #[arg(long = "namespace", env = "GATEWAY_NAMESPACES", value_delimiter = ',', value_parser = namespace)]
    pub namespaces: Vec<String>,
    /// Cluster DNS domain of service hosts (kubelet's --cluster-domain): a DNS name, case
    /// ignored; one trailing dot is dropped (cluster.local. is cluster.local).
    #[arg(long, env = "GATEWAY_CLUSTER_DOMAIN", default_value = "cluster.local", value_parser = cluster_domain)]
    pub cluster_domain: String,
    /// istiod's root namespace (its meshConfig.rootNamespace, by default istiod's own
    /// namespace). DestinationRules apply to the gateway from its own namespace, the Service's
    /// and this one, as istiod applies them to its gateways; rules in other namespaces never.
    #[arg(long, env = "GATEWAY_ROOT_NAMESPACE", default_value = KubeOptions::DEFAULT_ROOT_NAMESPACE, value_parser = root_namespace)]
    pub root_namespace: String,
    /// The zone this gateway runs in (its node's topology.kubernetes.io/zone). Services with
    /// `trafficDistribution: PreferClose` go to endpoints in it first. In Kubernetes without
    /// it, learned from the EndpointSlice that lists --pod-ip.
    #[arg(long, env = "GATEWAY_ZONE", value_parser = zone)]
    pub zone: Option<String>,
    /// This gateway pod's IP (Kubernetes discovery; set from the downward API's status.podIP):
    /// without --zone, the zone the EndpointSlices give this address is the gateway's.
    #[arg(long, env = "GATEWAY_POD_IP")]
    pub pod_ip: Option<IpAddr>,
    /// The node this gateway pod runs on (Kubernetes discovery; set from the downward API's
    /// spec.nodeName): a Service with `internalTrafficPolicy: Local` is served by its
    /// endpoints on this node only, as istiod serves it to its gateways. Unset, by those
    /// that name no node.
    #[arg(long, env = "GATEWAY_NODE_NAME")]
    pub node_name: Option<String>,
    /// Host pattern an SNI host must match (repeatable), as the Gateway's `hosts`.
    #[arg(long = "allow-host", env = "GATEWAY_ALLOW_HOSTS", value_delimiter = ',', default_value = "*.local", value_parser = host_pattern)]
    pub allow_hosts: Vec<HostPattern>,
    /// Accept only ClientHellos offering an Istio mTLS ALPN, like Istio's AUTO_PASSTHROUGH chains.
    #[arg(long, env = "GATEWAY_REQUIRE_ISTIO_ALPN", default_value_t = true, action = clap::ArgAction::Set)]
    pub require_istio_alpn: bool,
    /// Most bytes buffered while reading the ClientHello, 512 to 1048576.
    #[arg(long, env = "GATEWAY_MAX_HELLO_BYTES", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(512..=1_048_576))]
    pub max_hello_bytes: u32,
    /// Time allowed for the PROXY header and ClientHello to arrive (at least 100ms).
    #[arg(long, env = "GATEWAY_DETECT_TIMEOUT", default_value = "10s", value_parser = duration::<100>)]
    pub detect_timeout: Duration,
    /// Upstream connect timeout, per attempt (at least 10ms).
    #[arg(long, env = "GATEWAY_CONNECT_TIMEOUT", default_value = "1s", value_parser = duration::<10>)]
    pub connect_timeout: Duration,
    /// Endpoints tried before giving up on a connection, 1 to 10.
    #[arg(long, env = "GATEWAY_CONNECT_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub connect_attempts: u32,
    /// Close a forwarded connection after this long without bytes either way (at least 1s).
    #[arg(long, env = "GATEWAY_IDLE_TIMEOUT", default_value = "1h", value_parser = duration::<1000>)]
    pub idle_timeout: Duration,
    /// Move bulk streams with splice(2), without copying them through the gateway. `false`
    /// copies every byte: splicing holds the sender's pages until the receiver has read
    /// them, which costs peers on the same host more kernel work per GB (PERFORMANCE.md).
    #[arg(long, env = "GATEWAY_SPLICE", default_value_t = true, action = clap::ArgAction::Set)]
    pub splice: bool,
    /// Most concurrent decided connections (hello read; connecting or forwarding), 1 to
    /// 10000000; beyond it a newly decided one is closed at once.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub max_connections: u32,
    /// Most connections still sending their ClientHello, 1 to 1000000; beyond it the oldest
    /// is shed.
    #[arg(long, env = "GATEWAY_MAX_UNDECIDED", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_undecided: u32,
    /// Most bytes buffered by connections still sending their ClientHello, in total, 65536 to
    /// 4294967296; beyond it the oldest is shed.
    #[arg(long, env = "GATEWAY_MAX_UNDECIDED_BYTES", default_value_t = 16 << 20, value_parser = clap::value_parser!(u64).range(65_536..=(1 << 32)))]
    pub max_undecided_bytes: u64,
    /// Expect a PROXY protocol header, v1 or v2 (a load balancer in front adds it).
    /// `--proxy-protocol` alone is `true`; `--proxy-protocol=false` is accepted too, as `--splice false` is.
    #[arg(long, env = "GATEWAY_PROXY_PROTOCOL", default_value_t = false, num_args = 0..=1,
        default_missing_value = "true", action = clap::ArgAction::Set)]
    pub proxy_protocol: bool,
    /// Consecutive connect failures that eject an endpoint (0 disables).
    #[arg(long, env = "GATEWAY_OUTLIER_FAILURES", default_value_t = 5)]
    pub outlier_failures: u32,
    /// First ejection time; repeated ejections last longer.
    #[arg(long, env = "GATEWAY_OUTLIER_BASE_EJECTION", default_value = "30s", value_parser = duration::<1>)]
    pub outlier_base_ejection: Duration,
    /// Longest single ejection; at least --outlier-base-ejection.
    #[arg(long, env = "GATEWAY_OUTLIER_MAX_EJECTION", default_value = "5m", value_parser = duration::<1>)]
    pub outlier_max_ejection: Duration,
    /// Most endpoints of one service ejected at once, in percent, 0 to 100 (at least one
    /// endpoint may always be ejected).
    #[arg(long, env = "GATEWAY_OUTLIER_MAX_PERCENT", default_value_t = 50, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub outlier_max_percent: u8,
    /// After SIGTERM, keep accepting this long while readiness fails.
    #[arg(long, env = "GATEWAY_DRAIN_GRACE", default_value = "5s", value_parser = duration::<1>)]
    pub drain_grace: Duration,
    /// Then let open connections finish for up to this long.
    #[arg(long, env = "GATEWAY_DRAIN_TIMEOUT", default_value = "20s", value_parser = duration::<1>)]
    pub drain_timeout: Duration,
    /// Address of the HBONE listener (ambient east-west, mTLS + HTTP/2 CONNECT), as --listen,
    /// or `off`. It also needs a certificate: --hbone-certs or --ca-root.
    #[arg(long, env = "GATEWAY_HBONE_LISTEN", default_value = ":15008", value_parser = listen_or_off)]
    pub hbone_listen: ListenOrOff,
    /// Directory holding the gateway's workload certificate as Istio mounts it:
    /// cert-chain.pem, key.pem, root-cert.pem (reloaded on change). Without it or --ca-root, HBONE is off.
    #[arg(long, env = "GATEWAY_HBONE_CERTS")]
    pub hbone_certs: Option<PathBuf>,
    /// SPIFFE trust domain a client on 15008 may belong to (repeatable).
    #[arg(long = "trust-domain", env = "GATEWAY_TRUST_DOMAINS", value_delimiter = ',', default_value = "cluster.local", value_parser = trust_domain)]
    pub trust_domains: Vec<String>,
    /// Most tunnels (HTTP/2 streams) per HBONE connection, 1 to 10000.
    #[arg(long, env = "GATEWAY_HBONE_MAX_STREAMS", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub hbone_max_streams: u32,
    /// Most open HBONE tunnels in total, 1 to 10000000; beyond it a CONNECT is answered 503.
    #[arg(long, env = "GATEWAY_HBONE_MAX_TUNNELS", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub hbone_max_tunnels: u32,
    /// Most established HBONE connections (mTLS done), 1 to 10000000. When all are taken, the one idle
    /// longest (no tunnel open) is closed with GOAWAY to make room; with none idle, a new
    /// connection is refused (before its TLS handshake when that is already known).
    #[arg(long, env = "GATEWAY_HBONE_MAX_CONNECTIONS", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub hbone_max_connections: u32,
    /// KiB one HBONE connection may hold queued toward its client (read from endpoints, not
    /// yet written), shared by its tunnels; a tunnel stops reading its endpoint while it is
    /// full. 128 to 1048576.
    #[arg(long, env = "GATEWAY_HBONE_CONNECTION_QUEUE_KIB", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(128..=1_048_576))]
    pub hbone_connection_queue_kib: u32,
    /// KiB one HBONE connection's clients may send that its endpoints have not taken yet (the
    /// HTTP/2 connection window; each tunnel's is 4096 KiB, or this if smaller). 64 to 1048576.
    #[arg(long, env = "GATEWAY_HBONE_CONNECTION_WINDOW_KIB", default_value_t = 16384, value_parser = clap::value_parser!(u32).range(64..=1_048_576))]
    pub hbone_connection_window_kib: u32,
    /// Send GOAWAY on an HBONE connection that has carried no tunnel this long (at least 1s).
    #[arg(long, env = "GATEWAY_HBONE_IDLE_TIMEOUT", default_value = "10m", value_parser = duration::<1000>)]
    pub hbone_idle_timeout: Duration,
    /// Send an HTTP/2 PING this often on each HBONE connection, and close one whose PONG has
    /// not come in twice this time (ztunnel's and Istio's gateway's 10s/20s; at least 100ms).
    #[arg(long, env = "GATEWAY_HBONE_KEEPALIVE", default_value = "10s", value_parser = duration::<100>)]
    pub hbone_keepalive: Duration,
    /// How often the HBONE certificate files are checked for a change (at least 100ms).
    #[arg(long, env = "GATEWAY_HBONE_CERT_POLL", default_value = "5s", value_parser = duration::<100>)]
    pub hbone_cert_poll: Duration,
    /// Get the HBONE certificate from istiod, trusting the root(s) in this PEM file for
    /// istiod's TLS (the istio-ca-root-cert ConfigMap's root-cert.pem); also the roots that
    /// clients on 15008 must chain to. Not with --hbone-certs.
    #[arg(long, env = "GATEWAY_CA_ROOT")]
    pub ca_root: Option<PathBuf>,
    /// istiod's certificate service (gRPC over TLS), host:port; the host is the TLS name.
    #[arg(long, env = "GATEWAY_CA_ADDRESS", default_value = CaConfig::DEFAULT_ADDRESS, value_parser = host_port)]
    pub ca_address: String,
    /// Service-account token (audience istio-ca) sent to istiod; re-read for every request.
    #[arg(long, env = "GATEWAY_CA_TOKEN", default_value = CaConfig::DEFAULT_TOKEN)]
    pub ca_token: PathBuf,
    /// The cluster's ID as istiod knows it (its `clusterName`): every endpoint's
    /// `topology.istio.io/cluster` for DestinationRule subsets, and the cluster istiod
    /// checks the HBONE certificate request's token against (its `clusterid` header).
    #[arg(long, env = "GATEWAY_CLUSTER_ID", default_value = CaConfig::DEFAULT_CLUSTER_ID)]
    pub cluster_id: String,
    /// Validity asked of istiod for the HBONE certificate, in whole seconds; renewed at half
    /// its lifetime (at least 1m).
    #[arg(long, env = "GATEWAY_HBONE_CERT_LIFETIME", default_value = "24h", value_parser = duration::<60000>)]
    pub hbone_cert_lifetime: Duration,
    /// Worker threads, 1 to 1024. Default: $TOKIO_WORKER_THREADS when set, else the CPUs this process
    /// may use (a cgroup CPU quota counts). One worker runs the single-threaded scheduler.
    #[arg(long, env = "GATEWAY_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// Log format.
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_enum, default_value = "plain")]
    pub log_format: LogFormat,
}

/// The gateway's command line: [`Args`], with every `GATEWAY_*` variable that is set but
/// empty treated as unset (as `KUBECONFIG` is, and as a template that renders an empty value
/// means), rather than as an empty value clap refuses naming the flag, not the variable.
/// Returns the names of those variables too, for the start-up log.
pub fn command() -> (clap::Command, Vec<String>) {
    command_with_env(|name| std::env::var_os(name))
}

/// [`command`], with the emptiness of each variable read through `var` (tests pass their own).
pub fn command_with_env(
    var: impl Fn(&OsStr) -> Option<std::ffi::OsString>,
) -> (clap::Command, Vec<String>) {
    use clap::CommandFactory;
    let mut cmd = Args::command();
    let mut empty = Vec::new();
    let names: Vec<(clap::Id, std::ffi::OsString)> = cmd
        .get_arguments()
        .filter_map(|a| Some((a.get_id().clone(), a.get_env()?.to_os_string())))
        .collect();
    for (id, name) in names {
        match var(&name) {
            Some(v) if v.is_empty() => {
                // Clap read the (empty) value when the command was made: the argument loses
                // its variable, so the flag's default applies.
                cmd = cmd.mut_arg(id, |a| a.env(None::<&str>));
                empty.push(name.to_string_lossy().into_owned());
            }
            _ => {}
        }
    }
    (cmd, empty)
}

/// Whether two listeners would take the same port on a common address: `:PORT` and
/// `[::]:PORT` cover every address, `0.0.0.0:PORT` every IPv4 one. Port 0 picks a free port,
/// so it never clashes.
fn listen_overlap(a: ListenAddr, b: ListenAddr) -> bool {
    use std::net::IpAddr;
    let split = |l: ListenAddr| match l {
        ListenAddr::Any(p) => (None, p),
        ListenAddr::Exact(s) => (Some(s.ip().to_canonical()), s.port()),
    };
    let ((ia, pa), (ib, pb)) = (split(a), split(b));
    if pa != pb || pa == 0 {
        return false;
    }
    let covers = |wide: IpAddr, ip: IpAddr| match wide {
        IpAddr::V6(w) => w.is_unspecified(),
        IpAddr::V4(w) => w.is_unspecified() && ip.is_ipv4(),
    };
    match (ia, ib) {
        (None, _) | (_, None) => true,
        (Some(x), Some(y)) => x == y || covers(x, y) || covers(y, x),
    }
}

impl Args {
    /// Checks between flags that clap cannot express per flag; the message names the fix.
    pub fn check(&self) -> Result<(), String> {
        // The listeners this process binds; HBONE's only with a certificate source.
        let hbone_on = self.hbone_certs.is_some() || self.ca_root.is_some();
        let listeners = [
            ("--listen", Some(self.listen)),
            ("--admin", Some(self.admin)),
            ("--status-listen", self.status_listen),
            ("--hbone-listen", self.hbone_listen.0.filter(|_| hbone_on)),
        ];
        for (i, (fa, a)) in listeners.iter().enumerate() {
            for (fb, b) in &listeners[i + 1..] {
                if let (Some(a), Some(b)) = (a, b)
                    && listen_overlap(*a, *b)
                {
                    return Err(format!(
                        "{fa} ({a}) and {fb} ({b}) would listen on the same port: give each \
                         listener its own port (meshctl's manifest runs --status-listen :15021 \
                         --admin :15020)"
                    ));
                }
            }
        }
        if self.max_undecided_bytes < u64::from(self.max_hello_bytes) {
            return Err(format!(
                "--max-undecided-bytes ({}) must be at least --max-hello-bytes ({}): a hello \
                 that may be that large must fit in the budget",
                self.max_undecided_bytes, self.max_hello_bytes
            ));
        }
        if self.outlier_max_ejection < self.outlier_base_ejection {
            return Err(format!(
                "--outlier-max-ejection ({}) is shorter than --outlier-base-ejection ({}): the \
                 longest ejection cannot be shorter than the first; raise the one or lower the \
                 other",
                humantime::format_duration(self.outlier_max_ejection),
                humantime::format_duration(self.outlier_base_ejection)
            ));
        }
        if self.namespaces.len() > 1 && self.namespaces.iter().any(String::is_empty) {
            return Err(format!(
                "--namespace (or GATEWAY_NAMESPACES) {:?} has an empty name in the list: remove \
                 the extra comma (give no namespace at all to watch every one)",
                self.namespaces.join(",")
            ));
        }
        if self.hbone_certs.is_some() && self.ca_root.is_some() {
            return Err(
                "--hbone-certs and --ca-root both name a source of the HBONE certificate: give \
                 --hbone-certs for files, or --ca-root (with --ca-address) for istiod"
                    .into(),
            );
        }
        Ok(())
    }

    pub fn into_config(self) -> Config {
        let discovery = match self.endpoints {
            Some(path) => Discovery::File(path),
            None => Discovery::Kubernetes(KubeOptions {
                kubeconfig: self.kubeconfig,
                context: self.context,
                // `[""]` (an empty value) is every namespace, as none is.
                namespaces: self
                    .namespaces
                    .into_iter()
                    .filter(|n| !n.is_empty())
                    .collect(),
                cluster_domain: self.cluster_domain,
                pod_ip: self.pod_ip.map(|ip| ip.to_canonical()),
                cluster_id: self.cluster_id.clone(),
                root_namespace: self.root_namespace,
                node_name: self.node_name.clone(),
                ..KubeOptions::default()
            }),
        };
        Config {
            listen: self.listen,
            admin: self.admin,
            status_listen: self.status_listen,
            discovery,
            allow_hosts: self.allow_hosts,
            require_istio_alpn: self.require_istio_alpn,
            max_hello_bytes: self.max_hello_bytes as usize,
            detect_timeout: self.detect_timeout,
            connect_timeout: self.connect_timeout,
            connect_attempts: self.connect_attempts,
            idle_timeout: self.idle_timeout,
            splice: self.splice,
            max_connections: self.max_connections as usize,
            max_undecided: self.max_undecided as usize,
            max_undecided_bytes: self.max_undecided_bytes as usize,
            proxy_protocol: self.proxy_protocol,
            outlier: Outlier {
                consecutive_failures: self.outlier_failures,
                base_ejection: self.outlier_base_ejection,
                max_ejection: self.outlier_max_ejection,
                max_ejection_percent: self.outlier_max_percent,
                eject_one_regardless: true,
                min_health_percent: 0,
            },
            drain_grace: self.drain_grace,
            drain_timeout: self.drain_timeout,
            hbone_listen: self.hbone_listen.0,
            hbone_certs: self.hbone_certs,
            trust_domains: self.trust_domains,
            hbone_max_streams: self.hbone_max_streams,
            hbone_max_tunnels: self.hbone_max_tunnels as usize,
            hbone_max_connections: self.hbone_max_connections as usize,
            hbone_connection_queue: self.hbone_connection_queue_kib as usize * 1024,
            hbone_connection_window: self.hbone_connection_window_kib * 1024,
            hbone_idle_timeout: self.hbone_idle_timeout,
            hbone_keepalive: self.hbone_keepalive,
            hbone_cert_poll: self.hbone_cert_poll,
            hbone_ca: self.ca_root.map(|root| CaConfig {
                address: self.ca_address,
                token: self.ca_token,
                cluster_id: self.cluster_id,
                cert_lifetime: self.hbone_cert_lifetime,
                ..CaConfig::new(root)
            }),
            zone: self.zone.filter(|z| !z.is_empty()).map(Arc::from),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// The flags' defaults and `Config::default()` cannot drift apart.
    #[test]
    fn boolean_flags_take_an_optional_value() {
        let pp = |argv: &[&str]| {
            let mut a = vec!["gateway", "--endpoints", "x.yaml"];
            a.extend_from_slice(argv);
            Args::try_parse_from(a).map(|a| a.proxy_protocol)
        };
        assert!(!pp(&[]).unwrap());
        assert!(pp(&["--proxy-protocol"]).unwrap());
        assert!(pp(&["--proxy-protocol=true"]).unwrap());
        assert!(!pp(&["--proxy-protocol=false"]).unwrap());
        assert!(pp(&["--proxy-protocol", "--splice", "false"]).unwrap());
        assert!(pp(&["--proxy-protocol=maybe"]).is_err());
    }

    #[test]
    fn flag_defaults_are_config_defaults() {
        let from_flags = |argv: &[&str]| {
            let args = Args::try_parse_from(argv).expect("defaults parse");
            args.check().expect("defaults are consistent");
            args.into_config()
        };
        assert_eq!(
            from_flags(&["gateway", "--endpoints", "x.yaml"]),
            Config::new(Discovery::File("x.yaml".into()))
        );
        assert_eq!(
            from_flags(&["gateway", "--kubeconfig", "k"]),
            Config::new(Discovery::Kubernetes(KubeOptions {
                kubeconfig: Some("k".into()),
                ..KubeOptions::default()
            }))
        );
    }

    /// Every listener defaults to every address, IPv6 and IPv4 (an IPv6-only pod's Service
    /// traffic and kubelet probes arrive over IPv6); an address given is kept as given.
    #[test]
    fn listeners_default_to_every_address() {
        let c = Config::default();
        assert_eq!(c.listen, ListenAddr::Any(15443));
        assert_eq!(c.admin, ListenAddr::Any(15021));
        assert_eq!(c.hbone_listen, Some(ListenAddr::Any(15008)));
        let given = Args::try_parse_from([
            "gateway",
            "--endpoints",
            "x.yaml",
            "--listen",
            "0.0.0.0:15443",
            "--status-listen",
            ":15021",
            "--admin",
            "[::1]:15020",
            "--hbone-listen",
            "[::]:15008",
        ])
        .unwrap()
        .into_config();
        assert_eq!(
            given.listen,
            ListenAddr::Exact(([0, 0, 0, 0], 15443).into())
        );
        assert_eq!(given.status_listen, Some(ListenAddr::Any(15021)));
        assert_eq!(
            given.admin,
            ListenAddr::Exact("[::1]:15020".parse().unwrap())
        );
        assert_eq!(
            given.hbone_listen,
            Some(ListenAddr::Exact("[::]:15008".parse().unwrap()))
        );
    }

    #[test]
    fn hbone_flags() {
        let parse = |extra: &[&str]| {
            let mut argv = vec!["gateway", "--endpoints", "x.yaml"];
            argv.extend_from_slice(extra);
            Args::try_parse_from(argv).map(Args::into_config)
        };
        let off = parse(&["--hbone-listen", "off"]).unwrap();
        assert_eq!(off.hbone_listen, None);
        let c = parse(&[
            "--hbone-listen",
            "127.0.0.1:9",
            "--trust-domain",
            "a.td",
            "--trust-domain",
            "b.td",
            "--hbone-certs",
            "/certs",
        ])
        .unwrap();
        assert_eq!(c.hbone_listen, Some("127.0.0.1:9".parse().unwrap()));
        assert_eq!(c.trust_domains, ["a.td", "b.td"]);
        assert_eq!(c.hbone_certs, Some("/certs".into()));
        assert!(c.hbone_enabled() && !off.hbone_enabled());
        let c = parse(&["--hbone-max-connections", "20000"]).unwrap();
        assert_eq!(c.hbone_max_connections, 20_000);
        assert!(!c.hbone_enabled(), "no certificate source");
        assert!(parse(&["--hbone-max-connections", "0"]).is_err());
        assert_eq!(Config::default().hbone_connection_queue, 4 << 20);
        let c = parse(&["--hbone-connection-queue-kib", "512"]).unwrap();
        assert_eq!(c.hbone_connection_queue, 512 << 10);
        assert!(parse(&["--hbone-connection-queue-kib", "127"]).is_err());
        assert!(parse(&["--hbone-connection-queue-kib", "1048577"]).is_err());
        assert_eq!(Config::default().hbone_connection_window, 16 << 20);
        let c = parse(&["--hbone-connection-window-kib", "1024"]).unwrap();
        assert_eq!(c.hbone_connection_window, 1 << 20);
        assert!(parse(&["--hbone-connection-window-kib", "63"]).is_err());
        assert!(parse(&["--hbone-connection-window-kib", "1048577"]).is_err());
        let e = parse(&["--hbone-listen", "nowhere"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("or off"), "{e}");
        let c = parse(&["--ca-root", "/r.pem"]).unwrap();
        assert_eq!(c.hbone_ca, Some(CaConfig::new("/r.pem".into())));
        let c = parse(&[
            "--ca-root",
            "/r.pem",
            "--ca-address",
            "127.0.0.1:15012",
            "--cluster-id",
            "east",
            "--hbone-cert-lifetime",
            "1h",
        ])
        .unwrap();
        let ca = c.hbone_ca.unwrap();
        assert_eq!(
            (
                ca.address.as_str(),
                ca.cluster_id.as_str(),
                ca.cert_lifetime
            ),
            ("127.0.0.1:15012", "east", Duration::from_secs(3600))
        );
        let e = parse(&["--ca-address", "istiod"]).unwrap_err().to_string();
        assert!(e.contains("host:port"), "{e}");
        let both = Args::try_parse_from([
            "gateway",
            "--endpoints",
            "x.yaml",
            "--hbone-certs",
            "/c",
            "--ca-root",
            "/r.pem",
        ])
        .unwrap();
        let e = both.check().unwrap_err();
        assert!(
            e.contains("--hbone-certs") && e.contains("--ca-root"),
            "{e}"
        );
        let e = parse(&["--trust-domain", "Bad/TD"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a SPIFFE trust domain"), "{e}");
        for dots in [".", ".."] {
            assert!(parse(&["--trust-domain", dots]).is_err(), "{dots}");
        }
    }

    fn parse_with(extra: &[&str]) -> Result<Args, String> {
        let mut argv = vec!["gateway", "--kubeconfig", "k"];
        argv.extend_from_slice(extra);
        let args = Args::try_parse_from(argv).map_err(|e| e.to_string())?;
        args.check()?;
        Ok(args)
    }

    /// An empty or malformed namespace listed `/api/v1/namespaces//services` and failed
    /// forever; now a namespace is a DNS-1123 label, and an empty value alone means all.
    #[test]
    fn namespaces_are_kubernetes_names() {
        let namespaces = |extra: &[&str]| match parse_with(extra).map(Args::into_config) {
            Ok(Config {
                discovery: Discovery::Kubernetes(k),
                ..
            }) => Ok(k.namespaces),
            Ok(_) => unreachable!(),
            Err(e) => Err(e),
        };
        assert_eq!(namespaces(&[]).unwrap(), Vec::<String>::new());
        assert_eq!(
            namespaces(&["--namespace", ""]).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            namespaces(&["--namespace", "shop,istio-system", "--namespace", "a1"]).unwrap(),
            ["shop", "istio-system", "a1"]
        );
        for bad in ["BAD NS", "Shop", "-a", "a-", "a.b", &"a".repeat(64)] {
            let e = namespaces(&[&format!("--namespace={bad}")]).unwrap_err();
            assert!(
                e.contains("not a namespace name") && e.contains("--namespace"),
                "{bad:?}: {e}"
            );
        }
        for bad in ["a,,b", "a,", ",a"] {
            let e = namespaces(&["--namespace", bad]).unwrap_err();
            assert!(e.contains("empty name in the list"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn outlier_max_ejection_is_at_least_the_base() {
        let e = parse_with(&[
            "--outlier-base-ejection",
            "1h",
            "--outlier-max-ejection",
            "1s",
        ])
        .unwrap_err();
        assert!(
            e.contains("--outlier-max-ejection (1s)") && e.contains("--outlier-base-ejection (1h)"),
            "{e}"
        );
        assert!(
            parse_with(&[
                "--outlier-base-ejection",
                "1m",
                "--outlier-max-ejection",
                "1m"
            ])
            .is_ok()
        );
    }

    /// `--hbone-cert-poll 1ns` re-read the files every millisecond, `--hbone-cert-lifetime
    /// 1ms` asked istiod for 0 s: each duration flag has a floor.
    #[test]
    fn durations_have_a_floor() {
        let floors = [
            ("--detect-timeout", "99ms", "100ms"),
            ("--connect-timeout", "9ms", "10ms"),
            ("--idle-timeout", "999ms", "1s"),
            ("--outlier-base-ejection", "999us", "1ms"),
            ("--outlier-max-ejection", "999us", "1ms"),
            ("--drain-grace", "1ns", "1ms"),
            ("--drain-timeout", "1ns", "1ms"),
            ("--hbone-idle-timeout", "999ms", "1s"),
            ("--hbone-keepalive", "99ms", "100ms"),
            ("--hbone-cert-poll", "1ns", "100ms"),
            ("--hbone-cert-lifetime", "59s", "1m"),
        ];
        for (flag, below, floor) in floors {
            let e = parse_with(&[flag, below]).unwrap_err();
            assert!(
                e.contains(flag) && e.contains(&format!("minimum, {floor}")),
                "{flag}: {e}"
            );
            // The base may not be longer than the longest ejection.
            let mut args = vec![flag, floor];
            if flag != "--outlier-base-ejection" {
                args.extend(["--outlier-base-ejection", "1ms"]);
            }
            parse_with(&args).unwrap_or_else(|e| panic!("{flag} {floor}: {e}"));
            let e = parse_with(&[flag, "400days"]).unwrap_err();
            assert!(e.contains("365 days"), "{flag}: {e}");
        }
        // Every duration flag is in the list above.
        let listed: Vec<&str> = floors.iter().map(|f| f.0).collect();
        for arg in Args::command().get_arguments() {
            let default = arg.get_default_values().first().and_then(|d| d.to_str());
            if default.is_some_and(|d| humantime::parse_duration(d).is_ok()) {
                let flag = format!("--{}", arg.get_long().unwrap());
                assert!(listed.contains(&flag.as_str()), "{flag} has no floor test");
            }
        }
    }

    fn cluster_domain_of(extra: &[&str]) -> Result<String, String> {
        match parse_with(extra)?.into_config().discovery {
            Discovery::Kubernetes(k) => Ok(k.cluster_domain),
            Discovery::File(_) => unreachable!(),
        }
    }

    /// An empty or malformed `--cluster-domain` made every Service's host unmatchable: zero
    /// routes, readiness passing, nothing logged. Now a DNS name, case ignored, one trailing
    /// dot dropped.
    #[test]
    fn cluster_domain_is_a_dns_name() {
        assert_eq!(cluster_domain_of(&[]).unwrap(), "cluster.local");
        for (given, want) in [
            ("cluster.local.", "cluster.local"),
            ("Cluster.Local", "cluster.local"),
            ("east.example", "east.example"),
            ("local", "local"),
        ] {
            assert_eq!(
                cluster_domain_of(&["--cluster-domain", given]).unwrap(),
                want
            );
        }
        let long = [
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(60),
        ]
        .join(".");
        for bad in [
            "",
            ".",
            "bad_domain",
            "cluster..local",
            "-x.local",
            "cluster.local..",
            "a b",
            &long,
        ] {
            let e = cluster_domain_of(&[&format!("--cluster-domain={bad}")]).unwrap_err();
            assert!(
                e.contains("--cluster-domain") && e.contains("not a DNS domain"),
                "{bad:?}: {e}"
            );
        }
    }

    /// Two of the gateway's own listeners on one port failed at bind with only "Address
    /// already in use"; now the check names both flags.
    #[test]
    fn two_listeners_on_one_port_are_refused_naming_both() {
        let e = parse_with(&[
            "--admin",
            "127.0.0.1:15021",
            "--status-listen",
            "127.0.0.1:15021",
        ])
        .unwrap_err();
        assert!(
            e.contains("--admin (127.0.0.1:15021)")
                && e.contains("--status-listen (127.0.0.1:15021)"),
            "{e}"
        );
        for (a, b) in [
            (":15021", "127.0.0.1:15021"),
            ("[::]:15021", "127.0.0.1:15021"),
            ("0.0.0.0:15021", "127.0.0.1:15021"),
            ("[::1]:15021", "[::1]:15021"),
            ("[::ffff:127.0.0.1]:15021", "127.0.0.1:15021"),
        ] {
            let e = parse_with(&["--admin", a, "--status-listen", b]).unwrap_err();
            assert!(e.contains("same port"), "{a} {b}: {e}");
            let e = parse_with(&["--listen", b, "--admin", a]).unwrap_err();
            assert!(
                e.contains("--listen") && e.contains("--admin"),
                "{a} {b}: {e}"
            );
        }
        // The default --admin (:15021) and a --listen on its port.
        let e = parse_with(&["--listen", "127.0.0.1:15021"]).unwrap_err();
        assert!(
            e.contains("--listen") && e.contains("--admin (:15021)"),
            "{e}"
        );
        // HBONE's listener counts only when it runs (a certificate source is given).
        assert!(parse_with(&["--hbone-listen", ":15021"]).is_ok());
        let e = parse_with(&["--hbone-listen", ":15021", "--hbone-certs", "/c"]).unwrap_err();
        assert!(e.contains("--hbone-listen") && e.contains("--admin"), "{e}");
        // No common address, another port, or port 0 (a free one each): no clash.
        for (a, b) in [
            ("127.0.0.1:15021", "127.0.0.2:15021"),
            ("0.0.0.0:15021", "[::1]:15021"),
            (":15020", ":15021"),
            ("127.0.0.1:0", "127.0.0.1:0"),
        ] {
            parse_with(&["--admin", a, "--status-listen", b])
                .unwrap_or_else(|e| panic!("{a} {b}: {e}"));
        }
    }

    /// `--help` gives each bounded number's range, not only the error for a value outside it.
    #[test]
    fn help_gives_the_ranges() {
        let cmd = Args::command();
        for (flag, range) in [
            ("max-hello-bytes", "512 to 1048576"),
            ("connect-attempts", "1 to 10"),
            ("outlier-max-percent", "0 to 100"),
            ("max-connections", "1 to 10000000"),
            ("max-undecided", "1 to 1000000"),
            ("max-undecided-bytes", "65536 to 4294967296"),
            ("hbone-max-streams", "1 to 10000"),
            ("hbone-max-tunnels", "1 to 10000000"),
            ("hbone-max-connections", "1 to 10000000"),
            ("hbone-connection-queue-kib", "128 to 1048576"),
            ("hbone-connection-window-kib", "64 to 1048576"),
            ("workers", "1 to 1024"),
        ] {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_long() == Some(flag))
                .unwrap();
            let help = arg.get_help().unwrap().to_string();
            assert!(help.contains(range), "--{flag}: {help}");
        }
        let help = cmd.clone().render_long_help().to_string();
        assert!(help.contains("trailing dot"), "{help}");
    }

    /// A `GATEWAY_*` variable set but empty counts as unset: its argument loses the variable
    /// (clap would refuse the empty value, naming the flag), and its name is returned for
    /// the log. The binary's behaviour is in `tests/start_errors.rs`.
    #[test]
    fn the_zone_is_a_label_value_and_the_pod_ip_an_address() {
        let parse = |extra: &[&str]| parse_with(extra).map(Args::into_config);
        let c = parse(&["--zone", "us-east-1a", "--pod-ip", "::ffff:10.0.0.7"]).unwrap();
        assert_eq!(c.zone.as_deref(), Some("us-east-1a"));
        let Discovery::Kubernetes(k) = &c.discovery else {
            panic!("kubernetes")
        };
        assert_eq!(k.pod_ip, Some("10.0.0.7".parse().unwrap()));
        assert_eq!(parse(&["--zone", ""]).unwrap().zone, None);
        assert_eq!(parse(&[]).unwrap().zone, None);
        for bad in ["us east", "_a", "a-", &"z".repeat(64), "a/b"] {
            let e = parse(&["--zone", bad]).unwrap_err();
            assert!(e.contains("not a zone name"), "{bad}: {e}");
        }
        assert!(parse(&["--pod-ip", "10.0.0"]).is_err());
    }

    #[test]
    fn the_node_name_and_root_namespace_reach_discovery() {
        let kube = |extra: &[&str]| match parse_with(extra).map(Args::into_config) {
            Ok(Config {
                discovery: Discovery::Kubernetes(k),
                ..
            }) => Ok(k),
            Ok(_) => panic!("kubernetes"),
            Err(e) => Err(e),
        };
        let k = kube(&["--node-name", "node-a", "--root-namespace", "mesh-system"]).unwrap();
        assert_eq!(k.node_name.as_deref(), Some("node-a"));
        assert_eq!(k.root_namespace, "mesh-system");
        let k = kube(&[]).unwrap();
        assert_eq!(
            (k.node_name, k.root_namespace.as_str()),
            (None, "istio-system")
        );
        for bad in ["", "Istio_System"] {
            assert!(kube(&["--root-namespace", bad]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn empty_variables_are_unset() {
        let empty = [
            "GATEWAY_ENDPOINTS",
            "GATEWAY_CONTEXT",
            "GATEWAY_PROXY_PROTOCOL",
        ];
        let (cmd, names) = command_with_env(|name| {
            empty
                .contains(&name.to_str().unwrap())
                .then(std::ffi::OsString::new)
        });
        assert_eq!(
            names,
            [
                "GATEWAY_ENDPOINTS",
                "GATEWAY_CONTEXT",
                "GATEWAY_PROXY_PROTOCOL"
            ]
        );
        let env_of = |long: &str| {
            cmd.get_arguments()
                .find(|a| a.get_long() == Some(long))
                .unwrap()
                .get_env()
                .map(|e| e.to_os_string())
        };
        assert_eq!(env_of("endpoints"), None);
        assert_eq!(env_of("context"), None);
        assert_eq!(env_of("proxy-protocol"), None);
        assert_eq!(env_of("listen"), Some("GATEWAY_LISTEN".into()));
        // Every flag but --kubeconfig has a variable (README), and each is GATEWAY_*.
        for arg in Args::command().get_arguments() {
            let long = arg.get_long();
            if matches!(long, None | Some("kubeconfig" | "help" | "version")) {
                continue;
            }
            let env = arg
                .get_env()
                .unwrap_or_else(|| panic!("--{long:?} has no variable"));
            assert!(env.to_str().unwrap().starts_with("GATEWAY_"), "{env:?}");
        }
    }

    /// `KUBECONFIG`, as every Kubernetes tool reads it, decides the credentials when no
    /// `--kubeconfig` is given; `KUBECONFIG_PATH` is no longer a fallback of the flag.
    #[test]
    fn kubeconfig_env_is_kubectls() {
        use DefaultCredentials::*;
        let decide = |v: Option<&str>| DefaultCredentials::from_kubeconfig_env(v.map(OsStr::new));
        assert_eq!(decide(Some("/a/config")), KubeconfigEnv);
        assert_eq!(decide(Some("/a/config:/b/config")), KubeconfigEnv);
        assert_eq!(decide(Some("")), InClusterThenHome);
        assert_eq!(decide(None), InClusterThenHome);
        let help = Args::command().render_long_help().to_string();
        assert!(!help.contains("KUBECONFIG_PATH"), "{help}");
        assert!(help.contains("$KUBECONFIG"), "{help}");
    }
}
