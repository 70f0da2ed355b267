//! Shared test harness: a mesh PKI, mTLS backends on loopback, the gateway in process, and
//! small clients. Everything binds 127.0.0.0/8 addresses only.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use gateway::app::{self, Bound};
use gateway::config::{Config, Discovery, KubeOptions};
use rustls::ClientConfig;
use testkit::mesh;
use testkit::mtls::{self, Identity};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector, client::TlsStream};

/// The ERROR line a rejected route update logs (`Publisher::reject`), after its counter.
pub const REJECTED: &str = "route update rejected";
pub const CATALOG: &str = "catalog.istioinaction.svc.cluster.local";
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Istio's SNI routing key, `outbound_.<port>_.<subset>_.<host>`.
#[allow(unused_imports)] // not every test binary sends an SNI
pub use testkit::mesh::sni;

pub struct Mesh {
    pub catalog: pki::WorkloadCert,
    pub webapp: pki::WorkloadCert,
}

/// One root, an east and a west intermediate, catalog in east and webapp in west.
pub fn mesh() -> &'static Mesh {
    static MESH: OnceLock<Mesh> = OnceLock::new();
    MESH.get_or_init(|| {
        let root = pki::RootCa::generate(&pki::RootOptions::default()).unwrap();
        let east = root
            .issue_intermediate(&pki::IntermediateOptions::new(mesh::EAST_CLUSTER))
            .unwrap();
        let west = root
            .issue_intermediate(&pki::IntermediateOptions::new(mesh::WEST_CLUSTER))
            .unwrap();
        Mesh {
            catalog: east
                .issue_workload(&pki::WorkloadOptions::new(mesh::NAMESPACE, mesh::CATALOG))
                .unwrap(),
            webapp: west
                .issue_workload(&pki::WorkloadOptions::new(mesh::NAMESPACE, mesh::WEBAPP))
                .unwrap(),
        }
    })
}

pub fn init() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub fn client_config(versions: &[&'static rustls::SupportedProtocolVersion]) -> Arc<ClientConfig> {
    let id = Identity::from_workload(&mesh().webapp).unwrap();
    mtls::client_config(&id, Some(&mesh::spiffe_id(mesh::CATALOG)), versions).unwrap()
}

pub fn default_client() -> Arc<ClientConfig> {
    client_config(rustls::DEFAULT_VERSIONS)
}

/// An mTLS backend standing in for the catalog sidecar. After the handshake it sends
/// `<name> peer=<client spiffe id>\n`, echoes every byte, and on EOF writes
/// `eof after <n> bytes\n` before closing: the last line proves half-close works.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn start(name: &str, ip: IpAddr, port: u16) -> std::io::Result<Backend> {
        let id = Identity::from_workload(&mesh().catalog).unwrap();
        let tls = mtls::server_config(&id, rustls::ALL_VERSIONS).unwrap();
        Backend::start_with(name, ip, port, tls).await
    }

    /// As [`Backend::start`], with the caller's TLS server configuration (its own
    /// certificate and the roots it trusts for client certificates).
    pub async fn start_with(
        name: &str,
        ip: IpAddr,
        port: u16,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Backend> {
        let listener = TcpListener::bind((ip, port)).await?;
        let addr = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(tls);
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let name_owned = name.to_string();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                let name = name_owned.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let peer = mtls::peer_spiffe_id(tls.get_ref().1.peer_certificates())
                        .unwrap_or_default();
                    if tls
                        .write_all(format!("{name} peer={peer}\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let _ = tls.flush().await;
                    let mut total = 0usize;
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                total += n;
                                // Flushed: rustls may keep the last records of a write
                                // that met a full socket, and this loop then waits to
                                // read while the client waits for them.
                                let echoed = tls.write_all(&buf[..n]).await;
                                if echoed.is_err() || tls.flush().await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = tls
                        .write_all(format!("eof after {total} bytes\n").as_bytes())
                        .await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Ok(Backend {
            name: name.into(),
            addr,
            accepted,
            task,
        })
    }

    pub fn stop(&self) {
        self.task.abort();
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One backend, `catalog-1`, and an endpoints file routing catalog (port 80, subset v1) to
/// it, for the built binary ([`GatewayProcess`]). The backend runs and the file exists as
/// long as this lives.
pub struct CatalogFile {
    pub backends: Vec<Backend>,
    pub path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

/// A runtime for a test that drives the built binary from a plain `#[test]`.
pub fn multi_thread_runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .unwrap()
}

pub async fn catalog_endpoints_file() -> CatalogFile {
    let (backends, port) = backends(&["catalog-1"]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endpoints.yaml");
    std::fs::write(
        &path,
        endpoints_yaml(CATALOG, port, &[(backends[0].addr.ip(), "v1", true)]),
    )
    .unwrap();
    CatalogFile {
        backends,
        path,
        _dir: dir,
    }
}

/// Starts backends on 127.0.0.2, 127.0.0.3, … sharing one port, as pods of one service
/// share a targetPort.
pub async fn backends(names: &[&str]) -> (Vec<Backend>, u16) {
    for _ in 0..20 {
        let first = Backend::start(names[0], [127, 0, 0, 2].into(), 0)
            .await
            .unwrap();
        let port = first.addr.port();
        let mut all = vec![first];
        let mut ok = true;
        for (i, n) in names.iter().enumerate().skip(1) {
            match Backend::start(n, [127, 0, 0, 2 + i as u8].into(), port).await {
                Ok(b) => all.push(b),
                Err(_) => {
                    ok = false;
                    break;
                }
            }
        }
        if ok {
            return (all, port);
        }
    }
    panic!("could not find a free shared port on 127.0.0.x");
}

/// A port on `ip` that refuses connections (bound, then released).
pub async fn refused_port(ip: IpAddr, port: u16) -> SocketAddr {
    let l = std::net::TcpListener::bind((ip, port)).unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

pub struct Gw {
    pub bound: Option<Bound>,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub path: std::path::PathBuf,
}

impl Gw {
    pub fn bound(&self) -> &Bound {
        self.bound.as_ref().unwrap()
    }

    /// Rewrites the endpoints file atomically (write then rename), as a ConfigMap update does.
    pub fn write_endpoints(&self, yaml: &str) {
        let tmp = self.dir.path().join(".tmp-endpoints");
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }

    pub async fn wait_generation(&self, want: u64) {
        for _ in 0..200 {
            if self
                .bound()
                .routes
                .load()
                .is_some_and(|t| t.generation >= want)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("route table generation {want} not reached");
    }
}

pub fn test_config(path: &std::path::Path) -> Config {
    let mut cfg = Config::new(Discovery::File(path.to_path_buf()));
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.admin = "127.0.0.1:0".parse().unwrap();
    cfg.drain_grace = Duration::from_millis(100);
    cfg.drain_timeout = Duration::from_secs(2);
    cfg
}

/// A gateway config for Kubernetes discovery through `kubeconfig` (context `east`, the API
/// test server's), listening on 127.0.0.1:0; the kubeconfig file lives in the returned
/// directory.
pub fn kube_test_config(
    kubeconfig: &str,
    tweak: impl FnOnce(&mut KubeOptions),
) -> (tempfile::TempDir, Config) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, kubeconfig).unwrap();
    (dir, kube_path_config(path, tweak))
}

/// A gateway built in process on a Kubernetes API ([`kube_gateway_ready`]); the directory
/// holds its kubeconfig file.
pub struct KubeGw {
    pub bound: Bound,
    _dir: tempfile::TempDir,
}

/// A gateway on `kubeconfig` ([`kube_test_config`], a 50 ms drain grace, then `tweak`), built
/// in process and returned once it reports ready.
pub async fn kube_gateway_ready(kubeconfig: &str, tweak: impl FnOnce(&mut Config)) -> KubeGw {
    let (dir, mut cfg) = kube_test_config(kubeconfig, |_| {});
    cfg.drain_grace = Duration::from_millis(50);
    tweak(&mut cfg);
    let bound = app::build(cfg).await.unwrap();
    let admin = bound.admin_addr;
    testkit::wait::eventually("gateway ready", Duration::from_secs(10), || async move {
        http_get(admin, "/healthz/ready").await.0 == 200
    })
    .await;
    KubeGw { bound, _dir: dir }
}

/// [`kube_test_config`] for a kubeconfig file at `path` (which need not exist).
pub fn kube_path_config(path: std::path::PathBuf, tweak: impl FnOnce(&mut KubeOptions)) -> Config {
    let mut opts = KubeOptions {
        kubeconfig: Some(path),
        context: Some("east".into()),
        ..KubeOptions::default()
    };
    tweak(&mut opts);
    let mut cfg = Config::new(Discovery::Kubernetes(opts));
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.admin = "127.0.0.1:0".parse().unwrap();
    cfg
}

pub async fn gateway_with(yaml: &str, tweak: impl FnOnce(&mut Config)) -> Gw {
    init();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endpoints.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut cfg = test_config(&path);
    tweak(&mut cfg);
    let bound = app::build(cfg).await.unwrap();
    Gw {
        listen: bound.listen_addr,
        admin: bound.admin_addr,
        bound: Some(bound),
        dir,
        path,
    }
}

pub async fn gateway(yaml: &str) -> Gw {
    gateway_with(yaml, |_| {}).await
}

/// Endpoints YAML for one service on port 80 with the given (address, labels, ready).
pub fn endpoints_yaml(host: &str, target_port: u16, eps: &[(IpAddr, &str, bool)]) -> String {
    let mut y = format!(
        "services:\n  - host: {host}\n    ports:\n      - port: 80\n        targetPort: {target_port}\n    subsets:\n      - name: v1\n        labels: {{version: v1}}\n      - name: v2\n        labels: {{version: v2}}\n    endpoints:\n"
    );
    for (a, version, ready) in eps {
        y.push_str(&format!(
            "      - address: {a}\n        labels: {{version: {version}}}\n        ready: {ready}\n"
        ));
    }
    y
}

pub async fn connect(
    gw: SocketAddr,
    sni: &str,
    cfg: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(gw).await?;
    let name = mtls::sni_server_name(sni).map_err(std::io::Error::other)?;
    tokio::time::timeout(TIMEOUT, TlsConnector::from(cfg).connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))?
}

/// Handshake through the gateway and read the backend's greeting line; the stream stays open.
pub async fn open(
    gw: SocketAddr,
    sni: &str,
    cfg: Arc<ClientConfig>,
) -> std::io::Result<(BufReader<TlsStream<TcpStream>>, String)> {
    let mut r = BufReader::new(connect(gw, sni, cfg).await?);
    let mut line = String::new();
    tokio::time::timeout(TIMEOUT, r.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::other("no greeting"))??;
    Ok((r, line.trim_end().to_string()))
}

/// One call: handshake through the gateway, read the backend's greeting line.
pub async fn call(gw: SocketAddr, sni: &str) -> std::io::Result<String> {
    Ok(open(gw, sni, default_client()).await?.1)
}

/// The name of the backend that answered one call (the first word of its greeting).
pub async fn served_by(gw: SocketAddr, sni: &str) -> String {
    let greeting = call(gw, sni).await.unwrap();
    greeting.split(' ').next().unwrap_or_default().to_string()
}

/// Who answers a call through the gateway ("a", "b", …), or `None` when it is refused.
pub async fn who(gw: SocketAddr, sni: &str) -> Option<String> {
    let line = call(gw, sni).await.ok()?;
    Some(line.split(' ').next()?.to_string())
}

/// Waits (up to 10 s) until calls in a row are answered by exactly the backends in `want`,
/// or, with `want` empty, all refused.
pub async fn eventually_served_by(gw: SocketAddr, sni: &str, want: &[&str]) {
    let what = format!("{sni} served by {want:?}");
    testkit::wait::eventually(&what, Duration::from_secs(10), || async move {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..(want.len() * 6).max(4) {
            match who(gw, sni).await {
                Some(b) if want.contains(&b.as_str()) => {
                    seen.insert(b);
                }
                None if want.is_empty() => {}
                _ => return false,
            }
        }
        seen.len() == want.len()
    })
    .await;
}

/// One `catalog-1` backend and a gateway routing the catalog service (subset v1) to it.
pub async fn one_catalog(tweak: impl FnOnce(&mut Config)) -> (Vec<Backend>, Gw) {
    let (b, port) = backends(&["catalog-1"]).await;
    let gw = gateway_with(
        &endpoints_yaml(CATALOG, port, &[(b[0].addr.ip(), "v1", true)]),
        tweak,
    )
    .await;
    (b, gw)
}

/// Plain HTTP/1.0 GET against the admin listener.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(TIMEOUT, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    status_and_body(&out)
}

/// The status code (0 when there is none) and the body of an HTTP/1 response.
fn status_and_body(response: &str) -> (u16, String) {
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// Value of one series in Prometheus text, written as exposed, e.g.
/// `gateway_connections_rejected_total{reason="no_sni"}`; 0 when absent. Parsed by
/// `testkit::prom` (exact name and labels).
pub fn metric(text: &str, series: &str) -> f64 {
    testkit::prom::series_value(text, series)
}

pub async fn rejected(admin: SocketAddr, reason: &str) -> f64 {
    let (_, body) = http_get(admin, "/metrics").await;
    metric(
        &body,
        &format!("gateway_connections_rejected_total{{reason=\"{reason}\"}}"),
    )
}

/// Waits until the server closes `s` (EOF or reset) and returns the bytes it sent first.
pub async fn expect_closed(mut s: TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let r = tokio::time::timeout(TIMEOUT, s.read_to_end(&mut got)).await;
    assert!(r.is_ok(), "connection was not closed by the gateway");
    got
}

/// The built `gateway` binary as a child process on 127.0.0.1:0 with JSON logs, killed on drop.
/// Every stderr line is kept (parsed as JSON; `{"raw": line}` otherwise) so tests can count them.
pub struct GatewayProcess {
    /// Killed and reaped when the `GatewayProcess` is dropped.
    pub child: testkit::proc::ChildGuard,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub lines: Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    /// The stderr reader: done once the process's last line is in `lines`.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl GatewayProcess {
    /// Starts the binary with `--endpoints path` and waits for it to report its addresses.
    pub fn start(endpoints: &std::path::Path, extra: &[&str], rust_log: &str) -> Self {
        Self::start_limited(endpoints, extra, rust_log, None)
    }

    /// As [`GatewayProcess::start`]; with `fds` (soft, hard), the process starts under that
    /// descriptor limit (`ulimit` in a shell that then execs it). Short drain settings are added
    /// unless `extra` sets its own.
    pub fn start_limited(
        endpoints: &std::path::Path,
        extra: &[&str],
        rust_log: &str,
        fds: Option<(u32, u32)>,
    ) -> Self {
        let bin = env!("CARGO_BIN_EXE_gateway");
        let mut cmd = match fds {
            Some((soft, hard)) => {
                let mut c = std::process::Command::new("sh");
                let limit = format!("ulimit -S -n {soft} && ulimit -H -n {hard}");
                c.args(["-c", &format!("{limit} && exec \"$0\" \"$@\""), bin]);
                c
            }
            None => std::process::Command::new(bin),
        };
        cmd.args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--log-format", "json", "--endpoints"])
            .arg(endpoints);
        if !extra.iter().any(|a| a.starts_with("--drain-")) {
            cmd.args(["--drain-grace", "200ms", "--drain-timeout", "2s"]);
        }
        cmd.args(extra)
            .env("RUST_LOG", rust_log)
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        Self::spawn(cmd)
    }

    /// The binary in Kubernetes mode on `kubeconfig` (written into `dir`), context `east`,
    /// without the HBONE listener, with `env` besides; waits for it to report its addresses.
    pub fn start_kube(
        dir: &std::path::Path,
        kubeconfig: &str,
        rust_log: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let path = dir.join("kubeconfig");
        std::fs::write(&path, kubeconfig).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"));
        cmd.args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args([
                "--hbone-listen",
                "off",
                "--log-format",
                "json",
                "--kubeconfig",
            ])
            .arg(&path)
            .args(["--context", "east"])
            .env("RUST_LOG", rust_log)
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        Self::spawn(cmd)
    }

    /// Runs `cmd` (a gateway with `--log-format json` and stderr piped) and waits for it to
    /// report its addresses.
    pub fn spawn(mut cmd: std::process::Command) -> Self {
        use std::io::BufRead;
        let mut child = testkit::proc::ChildGuard::spawn(&mut cmd).expect("spawn gateway");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let v: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "raw": line }));
                sink.lock().unwrap().push(v);
            }
        });
        let mut p = GatewayProcess {
            child,
            reader: Some(reader),
            listen: ([0, 0, 0, 0], 0).into(),
            admin: ([0, 0, 0, 0], 0).into(),
            lines,
        };
        let up = p.wait_line(&|v| v["message"] == "gateway listening");
        let addr = |k: &str| up[k].as_str().unwrap().parse().unwrap();
        p.listen = addr("listen_addr");
        p.admin = addr("admin_addr");
        p
    }

    /// The first log line matching `pred`, waiting up to [`TIMEOUT`].
    pub fn wait_line(&self, pred: &dyn Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            if let Some(v) = self.lines.lock().unwrap().iter().find(|v| pred(v)) {
                return v.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no such log line in {:?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How many log lines so far match `pred`.
    pub fn count_lines(&self, pred: &dyn Fn(&serde_json::Value) -> bool) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|v| pred(v))
            .count()
    }

    /// How many log lines so far contain `needle` anywhere (message or field).
    pub fn log_count(&self, needle: &str) -> usize {
        self.count_lines(&|v| v.to_string().contains(needle))
    }

    /// Waits (up to [`TIMEOUT`]) until `n` log lines contain `needle`. A line reaches the
    /// reader thread after the metric its event moves: wait for both before a snapshot.
    pub fn wait_log_count(&self, needle: &str, n: usize) {
        let deadline = std::time::Instant::now() + TIMEOUT;
        while self.log_count(needle) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "fewer than {n} log lines with {needle:?} in {:?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends a signal by name (`HUP`, `TERM`) with kill(1).
    pub fn signal(&self, name: &str) {
        assert!(self.child.signal(name), "kill -{name} failed");
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit; returns whether it exited 0.
    pub fn terminate(&mut self) -> bool {
        self.signal("TERM");
        self.wait_exit().success()
    }

    /// Waits (bounded) for the process to exit and for its last log line to be read: the
    /// reader thread lags the exit, so lines counted right after it could be missing.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let status = self.child.wait_exit(TIMEOUT).expect("gateway did not exit");
        let deadline = std::time::Instant::now() + TIMEOUT;
        if let Some(reader) = self.reader.take() {
            while !reader.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if reader.is_finished() {
                let _ = reader.join();
            }
        }
        status
    }

    /// One metric sample from `/metrics`, fetched without an async runtime.
    pub fn metric(&self, series: &str) -> f64 {
        let (code, body) = admin_get(self.admin, "/metrics");
        assert_eq!(code, 200, "{body}");
        metric(&body, series)
    }

    /// Polls `series` until it equals `want`, bounded by [`TIMEOUT`].
    pub fn wait_metric(&self, series: &str, want: f64) {
        let deadline = std::time::Instant::now() + TIMEOUT;
        loop {
            let got = self.metric(series);
            if got == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{series} stayed {got}, want {want}; log: {:?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Blocking HTTP/1.0 GET against the admin listener, for tests that run no async runtime (or
/// must not block the one under test).
pub fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    status_and_body(&String::from_utf8_lossy(&out))
}

/// An endpoints file with `services` services (`svc-<i>.big.local`, port 80), each with
/// `per_service` endpoints on distinct 10.x addresses.
pub fn big_endpoints_yaml(services: usize, per_service: usize) -> String {
    let mut y = String::from("services:\n");
    for s in 0..services {
        y.push_str(&service_yaml(s, per_service));
    }
    y
}

/// One service entry of [`big_endpoints_yaml`].
pub fn service_yaml(s: usize, per_service: usize) -> String {
    let mut y =
        format!("  - host: svc-{s}.big.local\n    ports:\n      - port: 80\n    endpoints:\n");
    for e in 0..per_service {
        let n = s * per_service + e;
        y.push_str(&format!(
            "      - address: 10.{}.{}.{}\n        labels: {{version: v1}}\n",
            (n >> 16) & 0xff,
            (n >> 8) & 0xff,
            n & 0xff
        ));
    }
    y
}

/// The raw ClientHello a configured rustls client would send for `sni`.
pub fn rustls_hello(cfg: Arc<ClientConfig>, name: &str) -> Vec<u8> {
    let server = mtls::sni_server_name(name).unwrap();
    let mut conn = rustls::ClientConnection::new(cfg, server).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

/// Established IPv4 sockets of this network namespace whose (local, remote) addresses `pick`
/// accepts, with their timer column (`tr` in /proc/net/tcp; 2 is the keepalive timer).
pub fn tcp_timers(
    pick: &dyn Fn(SocketAddr, SocketAddr) -> bool,
) -> Vec<(SocketAddr, SocketAddr, u8)> {
    (established_rows(pick).into_iter())
        .map(|(local, remote, timer, _)| (local, remote, timer))
        .collect()
}

/// Established IPv4 sockets matching `pick` that run their keepalive timer, with the time
/// until it fires (`tm->when` in /proc/net/tcp, in USER_HZ ticks of 10 ms).
pub fn keepalive_due(pick: &dyn Fn(SocketAddr, SocketAddr) -> bool) -> Vec<Duration> {
    (established_rows(pick).into_iter())
        .filter(|&(_, _, timer, _)| timer == 2)
        .map(|(_, _, _, when)| Duration::from_millis(when * 10))
        .collect()
}

/// /proc/net/tcp's established rows matching `pick`: addresses, timer and its ticks to go.
fn established_rows(
    pick: &dyn Fn(SocketAddr, SocketAddr) -> bool,
) -> Vec<(SocketAddr, SocketAddr, u8, u64)> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    // Addresses are hex: the IPv4 address as the kernel stores it, printed as a native u32.
    let addr = |hex: &str| {
        let (ip, port) = hex.split_once(':')?;
        let ip = u32::from_str_radix(ip, 16).ok()?.to_le_bytes();
        Some(SocketAddr::from((ip, u16::from_str_radix(port, 16).ok()?)))
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (local, remote) = (addr(f.get(1)?)?, addr(f.get(2)?)?);
            let established = *f.get(3)? == "01";
            let (timer, when) = f.get(5)?.split_once(':')?;
            let timer = u8::from_str_radix(timer, 16).ok()?;
            let when = u64::from_str_radix(when, 16).ok()?;
            (established && pick(local, remote)).then_some((local, remote, timer, when))
        })
        .collect()
}

/// Waits (at most 2 s) until `want` established sockets match `pick` and each runs its
/// keepalive timer. Right after bytes moved a socket may show its retransmission timer
/// instead, hence the wait.
pub async fn wait_keepalive(
    what: &str,
    pick: &dyn Fn(SocketAddr, SocketAddr) -> bool,
    want: usize,
) {
    let mut last = Vec::new();
    for _ in 0..100 {
        last = tcp_timers(pick);
        if last.len() == want && last.iter().all(|&(_, _, timer)| timer == 2) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "{what}: want {want} socket(s) with keepalive running, have (local, remote, timer) {last:?}"
    );
}

/// Pipes the gateway process holds now (`/proc/<pid>/fd`).
pub fn pipes_open(pid: u32) -> usize {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    fds.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with("pipe:"))
        .count()
}

/// Writes `total` bytes of 7s through an echoing connection while reading them back, checking
/// each byte; after each read `sample(bytes read so far)` is called. Returns the largest value
/// it returned (e.g. the gateway's pipes open while the bytes flow).
pub async fn echo_bulk<S>(stream: S, total: usize, mut sample: impl FnMut(usize) -> usize) -> usize
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut rd, mut wr) = tokio::io::split(stream);
    let write = async {
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..total / chunk.len() {
            wr.write_all(&chunk).await.unwrap();
        }
        wr.flush().await.unwrap();
        wr
    };
    let read = async {
        let mut buf = vec![0u8; 64 * 1024];
        let (mut got, mut most) = (0, 0);
        while got < total {
            let n = rd.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed after {got} bytes");
            assert!(
                buf[..n].iter().all(|&b| b == 7),
                "bytes changed after {got}"
            );
            got += n;
            most = most.max(sample(got));
        }
        most
    };
    let (_wr, most) = tokio::join!(write, read);
    most
}

/// Runs `cmd` (stderr piped) until it exits, within [`TIMEOUT`] (a panic naming `what` when it
/// keeps running): its exit status and stderr.
pub fn exit_of(mut cmd: std::process::Command, what: &str) -> (std::process::ExitStatus, String) {
    use std::io::Read;
    let mut child = testkit::proc::ChildGuard::spawn(&mut cmd).unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let status = child
        .wait_exit(TIMEOUT)
        .unwrap_or_else(|| panic!("{what}: the gateway kept running"));
    (status, reader.join().unwrap())
}

/// An endpoints file routing the catalog service (subset v1) to 127.0.0.2 on `port`.
pub fn catalog_yaml(port: u16) -> String {
    endpoints_yaml(CATALOG, port, &[([127, 0, 0, 2].into(), "v1", true)])
}

/// Replaces `path` atomically (write a temporary file beside it, rename it over), as a
/// careful writer does.
pub fn replace_file(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The built binary on loopback listeners with HBONE off, stderr piped and stdout dropped,
/// for tests that read what it says when it refuses or fails to start.
pub fn loopback_command() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(["--hbone-listen", "off"])
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    cmd
}
