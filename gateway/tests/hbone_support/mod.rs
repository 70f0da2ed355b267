//! HBONE test support until `testkit::hbone` lands: a PKI with the gateway's and clients'
//! workload certificates, a "client ztunnel" (real rustls TLS 1.3 + real h2 CONNECT) and a
//! plain TCP app standing in for the destination ztunnel's 15008 (the gateway passes inner
//! bytes through untouched, so an echo proves them intact). Loopback only.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::{Method, Request, StatusCode};
use rustls::pki_types::ServerName;
use testkit::mtls::{self, Identity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;

pub const TIMEOUT: Duration = Duration::from_secs(20);
pub const GATEWAY_SA: &str = "istio-eastwestgateway";

pub struct Pki {
    /// The gateway's own workload certificate (`istio-system/istio-eastwestgateway`).
    pub gateway: pki::WorkloadCert,
    /// A client ztunnel's certificate: webapp in `cluster.local`, same root.
    pub client: pki::WorkloadCert,
    /// Same root, trust domain `other.td`.
    pub other_td: pki::WorkloadCert,
    /// Another root altogether; its `root_pem` is the mesh root, so this client trusts the
    /// gateway (and the gateway should not trust it).
    pub other_root: pki::WorkloadCert,
    /// A second gateway certificate from the first root (another service account), for reloads.
    pub gateway_b: pki::WorkloadCert,
    /// The other root's certificate.
    pub other_root_ca: String,
    /// A destination pod's workload (catalog), same root: what a destination ztunnel presents.
    pub destination: pki::WorkloadCert,
}

pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let issue = |root: &pki::RootCa, td: &str, ns: &str, sa: &str| {
            let ca = root
                .issue_intermediate(&pki::IntermediateOptions::new("east-cluster"))
                .unwrap();
            let mut o = pki::WorkloadOptions::new(ns, sa);
            o.trust_domain = td.into();
            ca.issue_workload(&o).unwrap()
        };
        let root = pki::RootCa::generate(&pki::RootOptions::default()).unwrap();
        let other = pki::RootCa::generate(&pki::RootOptions::default()).unwrap();
        Pki {
            gateway: issue(&root, "cluster.local", "istio-system", GATEWAY_SA),
            client: issue(&root, "cluster.local", "istioinaction", "webapp"),
            other_td: issue(&root, "other.td", "istioinaction", "webapp"),
            other_root: pki::WorkloadCert {
                root_pem: root.cert_pem().to_string(),
                ..issue(&other, "cluster.local", "istioinaction", "webapp")
            },
            other_root_ca: other.cert_pem().to_string(),
            gateway_b: issue(&root, "cluster.local", "istio-system", "gateway-b"),
            destination: issue(&root, "cluster.local", "istioinaction", "catalog"),
        }
    })
}

/// Writes the gateway's certificate files as Istio mounts them (key 0600 in a 0700 dir).
pub fn gateway_certs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    pki().gateway.write_dir(dir.path(), true).unwrap();
    dir
}

/// The built gateway binary with HBONE on (certificates from [`gateway_certs`]) over an
/// endpoints file of `yaml`, started as [`crate::common::GatewayProcess::start`] does with
/// `extra` flags, and its HBONE address once it listens.
pub struct HboneProcess {
    pub gw: crate::common::GatewayProcess,
    pub hbone: SocketAddr,
    /// The endpoints file's directory and the certificates' (kept for the process's life).
    files: (tempfile::TempDir, tempfile::TempDir),
}

impl HboneProcess {
    /// The directory its `--hbone-certs` point at.
    pub fn certs_dir(&self) -> &std::path::Path {
        self.files.1.path()
    }
}

pub async fn hbone_process(yaml: &str, extra: &[&str], rust_log: &str) -> HboneProcess {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endpoints.yaml");
    std::fs::write(&path, yaml).unwrap();
    let certs = gateway_certs();
    let mut args: Vec<String> = ["--hbone-listen", "127.0.0.1:0", "--hbone-certs"]
        .map(String::from)
        .to_vec();
    args.push(certs.path().to_str().unwrap().to_string());
    args.extend(extra.iter().map(|a| a.to_string()));
    let rust_log = rust_log.to_string();
    let gw = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        crate::common::GatewayProcess::start(&path, &args, &rust_log)
    })
    .await
    .unwrap();
    let on = gw.wait_line(&|v| v["message"] == "HBONE listener on");
    let hbone = on["hbone_addr"].as_str().unwrap().parse().unwrap();
    HboneProcess {
        gw,
        hbone,
        files: (dir, certs),
    }
}

/// TLS as ztunnel's client: TLS 1.3, ALPN h2, its workload certificate (if any), server
/// checked against the root and the gateway's SPIFFE id.
pub fn client_tls(cert: Option<&pki::WorkloadCert>, expect: &str) -> Arc<rustls::ClientConfig> {
    let mut cfg = match cert {
        Some(c) => {
            let id = Identity::from_workload(c).unwrap();
            (*mtls::client_config(&id, Some(expect), &[&rustls::version::TLS13]).unwrap()).clone()
        }
        None => {
            // No client certificate: the server is still checked against the mesh root.
            let id = Identity::from_workload(&pki().client).unwrap();
            rustls::ClientConfig::builder_with_provider(mtls::provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(RootOnly(id.roots.clone())))
                .with_no_client_auth()
        }
    };
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(cfg)
}

/// An outer HBONE connection: the h2 handle, and its driver task.
pub struct Outer {
    pub send: SendRequest<Bytes>,
    pub conn: tokio::task::JoinHandle<Result<(), h2::Error>>,
    pub ping: Option<h2::PingPong>,
}

/// mTLS to the gateway's 15008 and the HTTP/2 handshake, with ztunnel's windows. ztunnel
/// sends no SNI (a dummy IP server name).
pub async fn outer(addr: SocketAddr, cert: Option<&pki::WorkloadCert>) -> Result<Outer, String> {
    outer_expecting(addr, cert, &pki().gateway.spiffe_id).await
}

/// As [`outer`], checking that the gateway presents `expect`.
pub async fn outer_expecting(
    addr: SocketAddr,
    cert: Option<&pki::WorkloadCert>,
    expect: &str,
) -> Result<Outer, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::IpAddress(IpAddr::from([127, 0, 0, 1]).into());
    let tls = tokio::time::timeout(
        TIMEOUT,
        TlsConnector::from(client_tls(cert, expect)).connect(name, tcp),
    )
    .await
    .map_err(|_| "TLS handshake timed out".to_string())?
    .map_err(|e| format!("TLS: {e}"))?;
    let (send, mut conn) = h2::client::Builder::new()
        .initial_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .max_frame_size(1 << 20)
        .handshake::<_, Bytes>(tls)
        .await
        .map_err(|e| format!("h2: {e}"))?;
    let ping = conn.ping_pong();
    let conn = tokio::spawn(conn);
    Ok(Outer { send, conn, ping })
}

/// One CONNECT on `outer`: the status, and the stream halves when 200.
pub async fn connect(
    outer: &mut Outer,
    authority: &str,
) -> Result<(StatusCode, Option<(SendStream<Bytes>, RecvStream)>), h2::Error> {
    request(outer, Method::CONNECT, authority).await
}

pub async fn request(
    outer: &mut Outer,
    method: Method,
    authority: &str,
) -> Result<(StatusCode, Option<(SendStream<Bytes>, RecvStream)>), h2::Error> {
    request_with(outer, method, authority, &[]).await
}

/// One CONNECT on `outer` with these extra request headers.
pub async fn connect_with(
    outer: &mut Outer,
    authority: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, Option<(SendStream<Bytes>, RecvStream)>), h2::Error> {
    request_with(outer, Method::CONNECT, authority, headers).await
}

pub async fn request_with(
    outer: &mut Outer,
    method: Method,
    authority: &str,
    headers: &[(&str, &str)],
) -> Result<(StatusCode, Option<(SendStream<Bytes>, RecvStream)>), h2::Error> {
    let uri = if method == Method::CONNECT {
        http::Uri::builder().authority(authority).build().unwrap()
    } else {
        format!("http://{authority}/").parse().unwrap()
    };
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(()).unwrap();
    let send = outer.send.clone().ready().await?;
    let mut send = send;
    let (resp, stream) = send.send_request(req, false)?;
    let resp = tokio::time::timeout(TIMEOUT, resp)
        .await
        .expect("response in time")?;
    let status = resp.status();
    if status == StatusCode::OK {
        Ok((status, Some((stream, resp.into_body()))))
    } else {
        Ok((status, None))
    }
}

/// Sends `data` in frames the window allows.
pub async fn send_all(s: &mut SendStream<Bytes>, mut data: Bytes, end: bool) {
    while !data.is_empty() {
        s.reserve_capacity(data.len());
        let n = std::future::poll_fn(|cx| s.poll_capacity(cx))
            .await
            .expect("stream open")
            .expect("capacity");
        if n == 0 {
            continue;
        }
        let part = data.split_to(n.min(data.len()));
        s.send_data(part, false).unwrap();
    }
    if end {
        s.send_data(Bytes::new(), true).unwrap();
    }
}

/// Reads until END_STREAM (or `limit` bytes), releasing capacity as it goes.
pub async fn read_to_end(r: &mut RecvStream, limit: usize) -> Result<Vec<u8>, h2::Error> {
    let mut out = Vec::new();
    while let Some(d) = r.data().await {
        let d = d?;
        let _ = r.flow_control().release_capacity(d.len());
        out.extend_from_slice(&d);
        if out.len() >= limit {
            break;
        }
    }
    Ok(out)
}

/// Reads exactly `n` bytes.
pub async fn read_n(r: &mut RecvStream, n: usize) -> Vec<u8> {
    let got = tokio::time::timeout(TIMEOUT, read_to_end(r, n))
        .await
        .expect("bytes in time")
        .expect("stream ok");
    assert!(got.len() >= n, "got {} of {n} bytes", got.len());
    got
}

/// What the app does once a connection arrives.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum AppMode {
    /// Greets `<name>\n`, echoes, and on EOF writes `eof after <n> bytes\n` and closes.
    Echo,
    /// Writes `bye\n`, shuts its write side at once, then counts what it still receives.
    CloseFirst,
    /// Writes zeros as fast as it may (at most 1 GiB), reading nothing: a bulk download.
    Flood,
    /// Greets, then neither reads nor writes for 30 s: an endpoint that stopped reading.
    Stall,
}

/// A plain TCP app on `ip:port` standing in for the destination ztunnel.
pub struct App {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    /// One entry per finished connection: bytes it received before EOF.
    pub finished: Arc<Mutex<Vec<usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl App {
    pub async fn start(name: &str, ip: IpAddr, port: u16, mode: AppMode) -> std::io::Result<App> {
        let listener = TcpListener::bind((ip, port)).await?;
        let addr = listener.local_addr()?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let finished = Arc::new(Mutex::new(Vec::new()));
        let (count, done, name) = (accepted.clone(), finished.clone(), name.to_string());
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (done, name) = (done.clone(), name.clone());
                tokio::spawn(async move {
                    if mode == AppMode::Flood {
                        let chunk = vec![0u8; 64 * 1024];
                        for _ in 0..(1 << 14) {
                            if s.write_all(&chunk).await.is_err() {
                                break;
                            }
                        }
                        done.lock().unwrap().push(0);
                        return;
                    }
                    if mode == AppMode::Stall {
                        let _ = s.write_all(format!("{name}\n").as_bytes()).await;
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                    let greet = match mode {
                        AppMode::Echo => format!("{name}\n"),
                        AppMode::CloseFirst | AppMode::Flood | AppMode::Stall => {
                            "bye\n".to_string()
                        }
                    };
                    if s.write_all(greet.as_bytes()).await.is_err() {
                        return;
                    }
                    if mode == AppMode::CloseFirst {
                        let _ = s.shutdown().await;
                    }
                    let mut buf = vec![0u8; 256 * 1024];
                    let mut total = 0;
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                total += n;
                                if mode == AppMode::Echo && s.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    if mode == AppMode::Echo {
                        let _ = s
                            .write_all(format!("eof after {total} bytes\n").as_bytes())
                            .await;
                        let _ = s.shutdown().await;
                    }
                    done.lock().unwrap().push(total);
                });
            }
        });
        Ok(App {
            addr,
            accepted,
            finished,
            task,
        })
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub fn finished(&self) -> Vec<usize> {
        self.finished.lock().unwrap().clone()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Endpoints YAML: one service per (host, [(ip, hbone port)]), service port 80.
pub fn hbone_yaml(services: &[(&str, &[(IpAddr, u16)])]) -> String {
    let mut y = String::from("services:\n");
    for (host, eps) in services {
        y.push_str(&format!(
            "  - host: {host}\n    ports:\n      - port: 80\n        targetPort: 8080\n    endpoints:\n"
        ));
        for (ip, port) in *eps {
            y.push_str(&format!(
                "      - address: {ip}\n        hbone: {{port: {port}}}\n"
            ));
        }
    }
    y
}

/// Polls until `cond` holds, bounded.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..400 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("not reached in time: {what}");
}

/// A greeting echo app ("catalog-1") on `ip` and a gateway routing the catalog service
/// (`common::CATALOG`) to it.
pub async fn catalog_behind_gateway(
    ip: [u8; 4],
    tweak: impl FnOnce(&mut gateway::config::Config),
) -> (App, HboneGw) {
    app_behind_gateway("catalog-1", AppMode::Echo, ip, tweak).await
}

/// As [`catalog_behind_gateway`], with an app of this name and mode as the catalog's endpoint.
pub async fn app_behind_gateway(
    name: &str,
    mode: AppMode,
    ip: [u8; 4],
    tweak: impl FnOnce(&mut gateway::config::Config),
) -> (App, HboneGw) {
    let a = App::start(name, ip.into(), 0, mode).await.unwrap();
    let svc = crate::common::CATALOG;
    let gw = gateway(
        &hbone_yaml(&[(svc, &[(a.addr.ip(), a.addr.port())])]),
        tweak,
    )
    .await;
    (a, gw)
}

/// A tunnel to the catalog service's port 80 through `hbone` with the client identity, the
/// app's greeting read.
pub async fn greeted_tunnel(hbone: SocketAddr) -> (Outer, SendStream<Bytes>, RecvStream) {
    let mut o = outer(hbone, Some(&pki().client)).await.unwrap();
    let authority = format!("{}:80", crate::common::CATALOG);
    let (_, io) = connect(&mut o, &authority).await.unwrap();
    let (tx, mut rx) = io.expect("tunnel answered 200");
    read_n(&mut rx, 10).await;
    (o, tx, rx)
}

/// A gateway in process with HBONE on `127.0.0.1:0`, its certificate directory kept alive.
pub struct HboneGw {
    pub gw: crate::common::Gw,
    pub hbone: SocketAddr,
    pub certs: tempfile::TempDir,
}

pub async fn gateway(yaml: &str, tweak: impl FnOnce(&mut gateway::config::Config)) -> HboneGw {
    let certs = gateway_certs();
    let dir = certs.path().to_path_buf();
    let gw = crate::common::gateway_with(yaml, |c| {
        c.hbone_listen = Some("127.0.0.1:0".parse().unwrap());
        c.hbone_certs = Some(dir);
        c.connect_timeout = Duration::from_millis(500);
        tweak(c);
    })
    .await;
    let hbone = gw.bound().hbone_addr.expect("HBONE listener on");
    HboneGw { gw, hbone, certs }
}

impl HboneGw {
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, body) = crate::common::http_get(self.gw.admin, "/metrics").await;
        crate::common::metric(&body, series)
    }

    pub async fn refused(&self, reason: &str) -> f64 {
        self.metric(&format!(
            "gateway_hbone_refused_total{{reason=\"{reason}\"}}"
        ))
        .await
    }
}

/// Checks only that the server's chain ends at one of `roots` (for the no-client-cert case).
#[derive(Debug)]
struct RootOnly(Arc<rustls::RootCertStore>);

impl rustls::client::danger::ServerCertVerifier for RootOnly {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _name: &ServerName<'_>,
        _ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        let algs = mtls::provider().signature_verification_algorithms;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.0,
            intermediates,
            now,
            algs.all,
        )?;
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = mtls::provider().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = mtls::provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        mtls::provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl HboneGw {
    /// Polls `series` until it equals `want`, bounded.
    pub async fn wait_metric(&self, series: &str, want: f64) {
        let mut got = 0.0;
        for _ in 0..400 {
            got = self.metric(series).await;
            if got == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{series} stayed {got}, want {want}");
    }
}
