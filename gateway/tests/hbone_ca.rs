//! The HBONE certificate from istiod: the gateway started with `--ca-*` against the
//! certificate-service test server (`testkit::ca`), which reviews the gateway's token through
//! the Kubernetes API test server's TokenReview and issues from a `meshctl certs`-style
//! intermediate. Real TLS, real gRPC (tonic client, h2 server), real sockets on loopback;
//! every wait bounded.

mod common;
mod hbone_support;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use gateway::config::CaConfig;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_test_server::TestApiServer;
use kube::api::{Api, PostParams};
use rustls::pki_types::CertificateDer;
use testkit::ca::{CaServerOptions, CaTestServer, KubeTokenReview};
use testkit::hbone::{ClientZtunnel, ConnectRequest, DestinationZtunnel, TestApp};
use testkit::mtls::Identity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::{Gw, http_get};
use hbone_support::{TIMEOUT, hbone_yaml};

const SVC: &str = "catalog.istioinaction.svc.cluster.local";
const GW_NS: &str = "istio-system";
/// Not the name the gateway's files would carry: the SAN must come from the token.
const GW_SA: &str = "east-gateway";

fn gw_spiffe() -> String {
    format!("spiffe://cluster.local/ns/{GW_NS}/sa/{GW_SA}")
}

fn obj<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
    serde_json::from_value(v).unwrap()
}

/// The API server, the CA test server and the mesh PKI around one gateway.
struct Env {
    api: TestApiServer,
    ca: CaTestServer,
    /// Holds root-cert.pem and istio-token (0700).
    dir: tempfile::TempDir,
    /// Clients and destinations issued by the same intermediate as the CA's.
    client: pki::WorkloadCert,
    destination: pki::WorkloadCert,
}

async fn env() -> Env {
    common::init();
    testkit::kube_client::install_crypto_provider();
    let api = TestApiServer::start("east").await.unwrap();
    let admin = testkit::kube_client::client_from_yaml(&api.kubeconfig("east")).await;
    let pp = PostParams::default();
    let _ = Api::<Namespace>::all(admin.clone())
        .create(&pp, &obj(serde_json::json!({"metadata": {"name": GW_NS}})))
        .await;
    Api::<ServiceAccount>::namespaced(admin.clone(), GW_NS)
        .create(&pp, &obj(serde_json::json!({"metadata": {"name": GW_SA}})))
        .await
        .unwrap();
    let root = pki::RootCa::generate(&pki::RootOptions::default()).unwrap();
    let issuer = root
        .issue_intermediate(&pki::IntermediateOptions::new("east"))
        .unwrap();
    let issue = |ns: &str, sa: &str| {
        issuer
            .issue_workload(&pki::WorkloadOptions::new(ns, sa))
            .unwrap()
    };
    let client = issue("istioinaction", "webapp");
    let destination = issue("istioinaction", "catalog");
    let reviewer = Arc::new(KubeTokenReview { client: admin });
    let ca = CaTestServer::start(CaServerOptions::new(issuer, reviewer))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("root-cert.pem"), ca.root_pem()).unwrap();
    let env = Env {
        api,
        ca,
        dir,
        client,
        destination,
    };
    let token = env.token(&["istio-ca"]).await;
    env.write_token(&token);
    env
}

impl Env {
    /// A TokenRequest token for the gateway's service account.
    async fn token(&self, audiences: &[&str]) -> String {
        let admin = testkit::kube_client::client_from_yaml(&self.api.kubeconfig("east")).await;
        testkit::kube_client::service_account_token(&admin, GW_NS, GW_SA, audiences, Some(3600))
            .await
    }

    fn write_token(&self, token: &str) {
        std::fs::write(self.dir.path().join("istio-token"), token).unwrap();
    }

    fn ca_config(&self) -> CaConfig {
        CaConfig {
            address: self.ca.address(),
            token: self.dir.path().join("istio-token"),
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_millis(800),
            request_timeout: Duration::from_secs(5),
            ..CaConfig::new(self.dir.path().join("root-cert.pem"))
        }
    }

    async fn gateway(&self, yaml: &str) -> Gw {
        let ca = self.ca_config();
        common::gateway_with(yaml, |c| {
            c.hbone_listen = Some("127.0.0.1:0".parse().unwrap());
            c.hbone_ca = Some(ca);
            c.connect_timeout = Duration::from_millis(500);
        })
        .await
    }

    /// A client ztunnel (webapp) that accepts only the gateway's token identity.
    fn client(&self) -> ClientZtunnel {
        let id = Identity::from_workload(&self.client).unwrap();
        ClientZtunnel::from_identity(&id, &[gw_spiffe()]).unwrap()
    }
}

fn hbone_addr(gw: &Gw) -> std::net::SocketAddr {
    gw.bound().hbone_addr.expect("HBONE listener on")
}

async fn readiness(gw: &Gw) -> (u16, String) {
    http_get(gw.admin, "/healthz/ready").await
}

async fn wait_ready(gw: &Gw) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (code, body) = readiness(gw).await;
        if code == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Polls readiness until its body contains `needle`; returns it.
async fn wait_readiness_text(gw: &Gw, needle: &str) -> (u16, String) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (code, body) = readiness(gw).await;
        if body.contains(needle) {
            return (code, body);
        }
        assert!(
            Instant::now() < deadline,
            "readiness never said {needle:?}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn metric(gw: &Gw, series: &str) -> f64 {
    let (_, body) = http_get(gw.admin, "/metrics").await;
    common::metric(&body, series)
}

async fn wait_metric_at_least(gw: &Gw, series: &str, want: f64) -> f64 {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let got = metric(gw, series).await;
        if got >= want {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{series} stayed {got}, want ≥ {want}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The leaf the gateway serves on 15008 now (a full mTLS handshake as the client ztunnel).
async fn served_leaf(env: &Env, gw: &Gw) -> Result<CertificateDer<'static>, String> {
    let tcp = tokio::net::TcpStream::connect(hbone_addr(gw))
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio::time::timeout(
        TIMEOUT,
        tokio_rustls::TlsConnector::from(env.client().config())
            .connect(testkit::hbone::tls::dummy_server_name(), tcp),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| format!("TLS: {e}"))?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    Ok(leaf.into_owned())
}

fn not_after(leaf: &CertificateDer<'_>) -> SystemTime {
    let (_, x) = x509_parser::parse_x509_certificate(leaf.as_ref()).unwrap();
    SystemTime::UNIX_EPOCH + Duration::from_secs(x.validity().not_after.timestamp() as u64)
}

/// Double HBONE through the gateway to a destination ztunnel and its echo app: the bytes
/// come back intact.
async fn echo_through(env: &Env, outer: &testkit::hbone::OuterConn, n: u32) {
    let authority = format!("{SVC}:80");
    let outer_tunnel = outer.connect_tunnel(&authority).await.unwrap();
    let id = Identity::from_workload(&env.client).unwrap();
    let inner_client =
        ClientZtunnel::from_identity(&id, std::slice::from_ref(&env.destination.spiffe_id))
            .unwrap();
    let inner = tokio::time::timeout(TIMEOUT, inner_client.connect_over(outer_tunnel))
        .await
        .unwrap()
        .unwrap();
    let mut t = inner.open(ConnectRequest::new(&authority)).await.unwrap();
    let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    t.write_all(&data).await.unwrap();
    t.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(TIMEOUT, t.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert!(got == data, "bytes changed through the tunnels");
}

async fn destination(env: &Env) -> (TestApp, DestinationZtunnel) {
    let app = TestApp::echo().await.unwrap();
    let id = Identity::from_workload(&env.destination).unwrap();
    let dest = DestinationZtunnel::start(&id, app.addr()).await.unwrap();
    (app, dest)
}

fn yaml(dest: &DestinationZtunnel) -> String {
    hbone_yaml(&[(SVC, &[(dest.addr().ip(), dest.addr().port())])])
}

#[tokio::test]
async fn certificate_from_istiod_carries_the_tokens_identity_and_serves_tunnels() {
    let env = env().await;
    let (_app, dest) = destination(&env).await;
    let gw = env.gateway(&yaml(&dest)).await;
    wait_ready(&gw).await;

    let outer = env.client().connect(hbone_addr(&gw)).await.unwrap();
    assert_eq!(outer.peer_identity(), Some(gw_spiffe().as_str()));
    echo_through(&env, &outer, 100_000).await;

    let seen = env.ca.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].cluster_id.as_deref(), Some("Kubernetes"));
    assert_eq!(seen[0].requested_seconds, 24 * 3600, "Istio's 24h default");
    assert_eq!(seen[0].issued.as_deref(), Some(gw_spiffe().as_str()));
    assert_eq!(metric(&gw, "gateway_hbone_cert_renewals_total").await, 1.0);
    assert_eq!(
        metric(&gw, "gateway_hbone_cert_renewal_failures_total").await,
        0.0
    );
    let expiry = metric(&gw, "gateway_hbone_cert_expiry_seconds").await;
    let leaf = served_leaf(&env, &gw).await.unwrap();
    let want = not_after(&leaf)
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    assert_eq!(expiry, want);
}

#[tokio::test]
async fn not_ready_and_no_handshake_before_the_first_certificate() {
    let env = env().await;
    env.ca.set_delay(Duration::from_millis(1500));
    let (_app, dest) = destination(&env).await;
    let gw = env.gateway(&yaml(&dest)).await;

    let (code, body) = readiness(&gw).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("no HBONE certificate from istiod yet"),
        "{body}"
    );
    let e = served_leaf(&env, &gw).await.unwrap_err();
    assert!(e.starts_with("TLS"), "the handshake is refused: {e}");

    wait_ready(&gw).await;
    let outer = env.client().connect(hbone_addr(&gw)).await.unwrap();
    assert_eq!(outer.peer_identity(), Some(gw_spiffe().as_str()));
    echo_through(&env, &outer, 10_000).await;
}

#[tokio::test]
async fn renewal_before_expiry_changes_the_certificate_and_tunnels_keep_working() {
    let env = env().await;
    env.ca.force_lifetime(Some(Duration::from_secs(4)));
    let (_app, dest) = destination(&env).await;
    let gw = env.gateway(&yaml(&dest)).await;
    wait_ready(&gw).await;

    let first = served_leaf(&env, &gw).await.unwrap();
    let first_expiry = not_after(&first);
    // An outer connection opened on the first certificate.
    let outer = env.client().connect(hbone_addr(&gw)).await.unwrap();
    echo_through(&env, &outer, 10_000).await;

    let deadline = Instant::now() + TIMEOUT;
    let second = loop {
        let leaf = served_leaf(&env, &gw).await.unwrap();
        if leaf != first {
            break leaf;
        }
        assert!(
            Instant::now() < deadline,
            "the certificate was never renewed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        SystemTime::now() < first_expiry,
        "renewed before the first certificate expired"
    );
    assert!(not_after(&second) > first_expiry);
    assert!(metric(&gw, "gateway_hbone_cert_renewals_total").await >= 2.0);
    assert!(env.ca.issued() >= 2);
    // The connection from before the renewal still carries new tunnels, and new ones work.
    echo_through(&env, &outer, 10_000).await;
    let outer2 = env.client().connect(hbone_addr(&gw)).await.unwrap();
    echo_through(&env, &outer2, 10_000).await;
    assert_eq!(readiness(&gw).await.0, 200);
}

#[tokio::test]
async fn a_ca_outage_is_survived_on_the_current_certificate() {
    let env = env().await;
    env.ca.force_lifetime(Some(Duration::from_secs(8)));
    let (_app, dest) = destination(&env).await;
    let gw = env.gateway(&yaml(&dest)).await;
    wait_ready(&gw).await;
    let first = served_leaf(&env, &gw).await.unwrap();

    env.ca.fail_always(true);
    // renewal at 4 s fails, then retries with back-off
    wait_metric_at_least(&gw, "gateway_hbone_cert_renewal_failures_total", 2.0).await;
    assert!(SystemTime::now() < not_after(&first));
    assert_eq!(
        readiness(&gw).await.0,
        200,
        "still ready on the current certificate"
    );
    assert_eq!(served_leaf(&env, &gw).await.unwrap(), first);
    let outer = env.client().connect(hbone_addr(&gw)).await.unwrap();
    echo_through(&env, &outer, 10_000).await;

    env.ca.fail_always(false);
    let deadline = Instant::now() + TIMEOUT;
    while served_leaf(&env, &gw).await.unwrap() == first {
        assert!(
            Instant::now() < deadline,
            "no new certificate after the outage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(metric(&gw, "gateway_hbone_cert_renewals_total").await >= 2.0);
    echo_through(&env, &outer, 10_000).await;
}

#[tokio::test]
async fn a_refused_token_is_a_clear_error_and_nothing_is_served() {
    let env = env().await;
    // A token for the API server's audience, not istio-ca: TokenReview refuses it.
    let token = env.token(&[]).await;
    env.write_token(&token);
    let (_app, dest) = destination(&env).await;
    let gw = env.gateway(&yaml(&dest)).await;
    let (code, body) = wait_readiness_text(&gw, "refused the token").await;
    assert_eq!(code, 503);
    assert!(body.contains("--ca-token"), "{body}");
    assert!(!body.contains(&token), "the token is never shown");
    assert!(served_leaf(&env, &gw).await.is_err());
    assert_eq!(env.ca.issued(), 0);
    assert!(
        env.ca.seen().iter().all(|c| c.status == 16),
        "UNAUTHENTICATED"
    );

    // A missing token file names the flag too.
    std::fs::remove_file(env.dir.path().join("istio-token")).unwrap();
    let (code, body) = wait_readiness_text(&gw, "reading --ca-token").await;
    assert_eq!(code, 503, "{body}");
}

/// A lifetime over istiod's MAX_WORKLOAD_CERT_TTL is refused by istiod (InvalidArgument,
/// not capped) and the gateway names the flag (before, the double capped it, so a value
/// that fails against real istiod passed; found by an audit session).
#[tokio::test]
async fn a_lifetime_over_istiods_maximum_names_the_flag() {
    let env = env().await;
    let (_app, dest) = destination(&env).await;
    let mut ca = env.ca_config();
    ca.cert_lifetime = Duration::from_secs(91 * 24 * 3600);
    let gw = common::gateway_with(&yaml(&dest), |c| {
        c.hbone_listen = Some("127.0.0.1:0".parse().unwrap());
        c.hbone_ca = Some(ca);
    })
    .await;
    let (code, body) = wait_readiness_text(&gw, "--hbone-cert-lifetime").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("MAX_WORKLOAD_CERT_TTL"), "{body}");
    assert_eq!(env.ca.issued(), 0);
}

#[tokio::test]
async fn a_wrong_ca_root_is_a_clear_error_naming_the_flag() {
    let env = env().await;
    let (_app, dest) = destination(&env).await;
    // Another mesh's root: istiod's TLS certificate is not trusted.
    let other = pki::RootCa::generate(&pki::RootOptions::default()).unwrap();
    std::fs::write(env.dir.path().join("root-cert.pem"), other.cert_pem()).unwrap();
    let gw = env.gateway(&yaml(&dest)).await;
    let (code, body) = wait_readiness_text(&gw, "does not trust").await;
    assert_eq!(code, 503);
    assert!(body.contains("--ca-root"), "{body}");
    assert!(served_leaf(&env, &gw).await.is_err());
    assert_eq!(env.ca.issued(), 0);

    // A missing or empty root file stops the start, naming the flag.
    let build = |root: std::path::PathBuf| {
        let mut cfg = common::test_config(&env.dir.path().join("endpoints.yaml"));
        cfg.hbone_listen = Some("127.0.0.1:0".parse().unwrap());
        cfg.hbone_ca = Some(CaConfig {
            root,
            ..env.ca_config()
        });
        gateway::app::build(cfg)
    };
    std::fs::write(env.dir.path().join("endpoints.yaml"), yaml(&dest)).unwrap();
    let e = build(env.dir.path().join("missing.pem"))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--ca-root") && e.contains("missing.pem"), "{e}");
    std::fs::write(env.dir.path().join("empty.pem"), "").unwrap();
    let e = build(env.dir.path().join("empty.pem"))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("--ca-root") && e.contains("no certificate"),
        "{e}"
    );
}

/// The test server refuses what istiod refuses (no token, another cluster's id) with
/// UNAUTHENTICATED, and signs for the token's service account, not the CSR's SAN.
#[tokio::test]
async fn the_test_server_answers_as_istiod_does() {
    use gateway::hbone::ca::{CaClient, CaError, csr};
    let env = env().await;
    let token = env.token(&["istio-ca"]).await;
    let call = |cfg: CaConfig, token: String| async move {
        let (client, _) = CaClient::new(&cfg).unwrap();
        let k = csr::generate("spiffe://cluster.local/ns/evil/sa/admin").unwrap();
        client.create_certificate(k.csr_pem, &token).await
    };
    let chain = call(env.ca_config(), token.clone()).await.unwrap();
    assert_eq!(
        testkit::mtls::spiffe_ids(&chain[0]),
        [gw_spiffe()],
        "the SAN comes from the token"
    );
    assert_eq!(chain.len(), 3, "leaf, intermediate, root");

    let e = call(env.ca_config(), String::new()).await.unwrap_err();
    assert!(matches!(e, CaError::Unauthenticated { .. }), "{e}");
    let other_cluster = CaConfig {
        cluster_id: "west".into(),
        ..env.ca_config()
    };
    let e = call(other_cluster, token).await.unwrap_err();
    assert!(
        matches!(&e, CaError::Unauthenticated { message, .. } if message.contains("west")),
        "{e}"
    );
    env.ca.fail_next(1);
    let e = call(env.ca_config(), env.token(&["istio-ca"]).await)
        .await
        .unwrap_err();
    assert!(
        matches!(&e, CaError::Call { code, .. } if *code == tonic::Code::Unavailable),
        "{e}"
    );
    assert_eq!(env.ca.issued(), 1);
}

/// istiod's certificate must name the host of --ca-address: a mismatch says so and how to fix
/// it, rather than blaming --ca-root. (The test server's certificate names
/// istiod.istio-system.svc and 127.0.0.1, not `localhost`.) Seen failing before: "presented a
/// TLS certificate that --ca-root ... does not trust".
#[tokio::test]
async fn a_ca_address_that_istiods_certificate_does_not_name_is_a_clear_error() {
    use gateway::hbone::ca::{CaClient, CaError, csr};
    let env = env().await;
    let port = env.ca.address().rsplit_once(':').unwrap().1.to_string();
    let cfg = CaConfig {
        address: format!("localhost:{port}"),
        ..env.ca_config()
    };
    let (client, _) = CaClient::new(&cfg).unwrap();
    let k = csr::generate(&gw_spiffe()).unwrap();
    let e = client
        .create_certificate(k.csr_pem, &env.token(&["istio-ca"]).await)
        .await
        .unwrap_err();
    assert!(matches!(e, CaError::WrongName { .. }), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("--ca-address localhost:")
            && text.contains("istiod.<istiod's namespace>.svc:15012"),
        "{text}"
    );
    assert_eq!(env.ca.issued(), 0);
}
