//! ClientHellos from two other TLS stacks (`openssl s_client`, `gnutls-cli`) and rustls at the
//! limits of SNI names and record framing, through the real binary on 127.0.0.0/8. Every loop
//! is bounded.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A host of `len` bytes under `.svc.cluster.local`, in 63-byte labels.
fn long_host(len: usize) -> String {
    let suffix = ".svc.cluster.local";
    let mut labels = Vec::new();
    let mut left = len - suffix.len();
    let mut c = b'a';
    while left > 0 {
        // A label and its dot; the last label has no dot of its own.
        let n = if left > 64 { 63 } else { left };
        labels.push(String::from(c as char).repeat(n));
        left -= n + usize::from(left > n);
        c += 1;
    }
    let host = format!("{}{suffix}", labels.join("."));
    assert_eq!(host.len(), len);
    host
}

/// The longest SNI `openssl s_client` and `gnutls-cli` send is 255 bytes
/// (`TLSEXT_MAXLEN_host_name`, as BoringSSL's in Envoy): a 239-byte host.
const LONGEST_SENDABLE_HOST: usize = 255 - "outbound_.80_._.".len();

/// `openssl s_server` as the workload, routed under several hosts, and the gateway.
struct Stacks {
    gw: Gw,
    _server: testkit::proc::ChildGuard,
    _dir: tempfile::TempDir,
}

async fn stacks(hosts: &[String]) -> Stacks {
    let dir = tempfile::tempdir().unwrap();
    let east = dir.path().join("catalog");
    mesh().catalog.write_dir(&east, false).unwrap();
    let port = testkit::net::free_port([127, 0, 0, 2].into()).unwrap();
    let backend = SocketAddr::from(([127, 0, 0, 2], port));
    let server = testkit::proc::ChildGuard::spawn(
        std::process::Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(backend.to_string())
            .arg("-cert")
            .arg(east.join("cert.pem"))
            .arg("-key")
            .arg(east.join("key.pem"))
            .args(["-alpn", "istio"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .expect("openssl s_server");
    for _ in 0..100 {
        if TcpStream::connect(backend).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut yaml = String::from("services:\n");
    for h in hosts {
        yaml.push_str(&format!(
            "  - host: {h}\n    ports:\n      - port: 80\n        targetPort: {port}\n    endpoints:\n      - address: 127.0.0.2\n"
        ));
    }
    let gw = gateway(&yaml).await;
    gw.wait_generation(1).await;
    Stacks {
        gw,
        _server: server,
        _dir: dir,
    }
}

/// Runs a TLS client process with an HTTP/1.0 GET on stdin, bounded by [`TIMEOUT`]; returns
/// its output (stdout and stderr).
async fn tls_client(program: &str, args: &[String]) -> String {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    // gnutls-cli sends on EOF; s_client (with -ign_eof) waits for the server's close.
    drop(stdin);
    let out = tokio::time::timeout(TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} hung"))
        .unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn openssl_args(to: SocketAddr, servername: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["s_client", "-connect", &to.to_string(), "-servername"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.push(servername.to_string());
    a.extend(["-alpn", "istio", "-ign_eof"].map(String::from));
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn gnutls_args(to: SocketAddr, servername: &str, priority: Option<&str>) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "--insecure".into(),
        "--alpn".into(),
        "istio".into(),
        "-p".into(),
        to.port().to_string(),
        "--sni-hostname".into(),
        servername.into(),
    ];
    if let Some(p) = priority {
        a.push("--priority".into());
        a.push(p.into());
    }
    a.push(to.ip().to_string());
    a
}

const ANSWERED: &str = "HTTP/1.0 200 ok";

/// openssl and gnutls hellos, TLS 1.2 and 1.3, with SNI names at the limits: the longest
/// either will send (255 bytes), 63-byte labels, upper case, punycode; and hellos of over
/// 1500 bytes (an ffdhe8192 key share and a long ALPN list) split into 512-byte records.
/// Each is routed. Names no DNS name can be (a trailing dot, raw UTF-8) are refused with
/// their reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_and_gnutls_hellos_at_the_limits_are_routed() {
    let longest = long_host(LONGEST_SENDABLE_HOST);
    let label63 = format!("{}.ns.svc.cluster.local", "l".repeat(63));
    let puny = "xn--caf-dma.ns.svc.cluster.local".to_string();
    let s = stacks(&[
        CATALOG.into(),
        longest.clone(),
        label63.clone(),
        puny.clone(),
    ])
    .await;
    let to = s.gw.listen;
    let name = |h: &str| sni(80, "", h);
    assert_eq!(name(&longest).len(), 255);

    let long_alpn = (0..6)
        .map(|i| format!("{}{i}", "x".repeat(200)))
        .chain(["istio".to_string()])
        .collect::<Vec<_>>()
        .join(",");
    let mut routed = 0;
    let openssl_cases: Vec<(String, Vec<&str>)> = vec![
        (name(CATALOG), vec!["-tls1_3"]),
        (name(CATALOG), vec!["-tls1_2"]),
        (name(&longest), vec![]),
        (name(&label63), vec!["-tls1_2"]),
        (name(&puny), vec![]),
        (name(CATALOG).to_uppercase(), vec![]),
        (
            name(CATALOG),
            vec!["-groups", "ffdhe8192:X25519", "-max_send_frag", "512"],
        ),
    ];
    for (servername, extra) in &openssl_cases {
        let mut args = openssl_args(to, servername, extra);
        if extra.contains(&"-groups") {
            // Replace the ALPN list with one of 1.2 KB ending in istio.
            let at = args.iter().position(|a| a == "istio").unwrap();
            args[at] = long_alpn.clone();
        }
        let out = tls_client("openssl", &args).await;
        assert!(
            out.contains(ANSWERED),
            "openssl {servername} {extra:?}:\n{out}"
        );
        routed += 1;
    }
    let tls12 = "NORMAL:-VERS-ALL:+VERS-TLS1.2";
    let big = "NORMAL:-GROUP-ALL:+GROUP-FFDHE8192:+GROUP-X25519";
    let gnutls_cases = [
        (name(CATALOG), None),
        (name(CATALOG), Some(tls12)),
        (name(&longest), None),
        (name(&label63), Some(tls12)),
        (name(&puny), None),
        (name(CATALOG).to_uppercase(), None),
        (name(CATALOG), Some(big)),
    ];
    for (servername, priority) in &gnutls_cases {
        let out = tls_client("gnutls-cli", &gnutls_args(to, servername, *priority)).await;
        assert!(
            out.contains(ANSWERED),
            "gnutls {servername} {priority:?}:\n{out}"
        );
        routed += 1;
    }
    let (_, m) = http_get(s.gw.admin, "/metrics").await;
    let opened = |h: &str| {
        metric(
            &m,
            &format!("gateway_connections_opened_total{{sni=\"{}\"}}", name(h)),
        )
    };
    let total = opened(CATALOG) + opened(&longest) + opened(&label63) + opened(&puny);
    assert_eq!(total, routed as f64, "{m}");

    // Refused with a reason, promptly.
    let refused = [
        (format!("{}.", name(CATALOG)), "bad_name"),
        (name("café.ns.svc.cluster.local"), "malformed_hello"),
    ];
    for (servername, reason) in refused {
        let started = Instant::now();
        let out = tls_client("openssl", &openssl_args(to, &servername, &[])).await;
        assert!(!out.contains(ANSWERED), "{servername}: {out}");
        assert!(started.elapsed() < Duration::from_secs(3), "{servername}");
        assert_eq!(rejected(s.gw.admin, reason).await, 1.0, "{servername}");
    }
}

/// Resumption: the second hello carries a session ticket (TLS 1.3 PSK, TLS 1.2 ticket)
/// and is routed like the first; openssl reports the session reused end to end.
/// A host one byte longer than the longest sendable is valid, but its SNI name is one no
/// client sends (openssl refuses it before connecting): the gateway keeps the route (HBONE
/// names hosts without the SNI layout) and says which names are unreachable on 15443.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_whose_names_no_client_sends_are_reported() {
    let longest = long_host(LONGEST_SENDABLE_HOST);
    let over = long_host(LONGEST_SENDABLE_HOST + 1);
    let s = stacks(&[longest.clone(), over.clone()]).await;
    let out = tls_client(
        "openssl",
        &openssl_args(s.gw.listen, &sni(80, "", &over), &[]),
    )
    .await;
    assert!(
        out.contains("Unable to set TLS servername extension"),
        "{out}"
    );
    assert!(!out.contains(ANSWERED), "{out}");

    let (code, body) = http_get(s.gw.admin, "/debug/routes").await;
    assert_eq!(code, 200, "{body}");
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        view["sni_too_long"],
        serde_json::json!([{"sni": sni(80, "", &over), "bytes": 256}])
    );
    // Both routes stay in the table.
    assert_eq!(view["total_routes"], 2);
    let (_, metrics) = http_get(s.gw.admin, "/metrics").await;
    assert_eq!(
        metric(&metrics, "gateway_discovery_route_table_sni_names_too_long"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_sessions_are_routed() {
    let s = stacks(&[CATALOG.into()]).await;
    let dir = tempfile::tempdir().unwrap();
    for version in ["-tls1_3", "-tls1_2"] {
        let sess = dir.path().join(format!("sess{version}.pem"));
        let sess = sess.to_str().unwrap();
        let first = openssl_args(
            s.gw.listen,
            &sni(80, "", CATALOG),
            &[version, "-sess_out", sess],
        );
        let out = tls_client("openssl", &first).await;
        assert!(out.contains(ANSWERED) && out.contains("New, TLS"), "{out}");
        let again = openssl_args(
            s.gw.listen,
            &sni(80, "", CATALOG),
            &[version, "-sess_in", sess],
        );
        let out = tls_client("openssl", &again).await;
        assert!(out.contains(ANSWERED), "{version}: {out}");
        assert!(out.contains("Reused, TLS"), "{version} not resumed: {out}");
    }
}

/// openssl's 2.6 KB hello (ffdhe8192 key share, long ALPN list, 512-byte records) delivered
/// one byte per TCP segment through a relay: routed, and the handshake completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_hello_one_byte_per_segment_is_routed() {
    let s = stacks(&[CATALOG.into()]).await;
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let gw_addr = s.gw.listen;
    let forwarded = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = forwarded.clone();
    tokio::spawn(async move {
        let (client, _) = relay.accept().await.unwrap();
        let upstream = TcpStream::connect(gw_addr).await.unwrap();
        upstream.set_nodelay(true).unwrap();
        let (mut cr, mut cw) = client.into_split();
        let (mut ur, mut uw) = upstream.into_split();
        tokio::spawn(async move { tokio::io::copy(&mut ur, &mut cw).await });
        let mut buf = [0u8; 4096];
        // Every byte the client sends, alone in its segment (bounded by the client's life).
        while let Ok(n) = cr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            for b in &buf[..n] {
                if uw.write_all(std::slice::from_ref(b)).await.is_err() {
                    return;
                }
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_micros(100)).await;
            }
        }
        let _ = uw.shutdown().await;
    });
    // Protocol names are at most 255 bytes each.
    let long_alpn = format!("{0},{0},{0},{0},istio", "y".repeat(250));
    let mut args = openssl_args(
        relay_addr,
        &sni(80, "", CATALOG),
        &["-groups", "ffdhe8192", "-max_send_frag", "512"],
    );
    let at = args.iter().position(|a| a == "istio").unwrap();
    args[at] = long_alpn;
    let out = tls_client("openssl", &args).await;
    assert!(out.contains(ANSWERED), "{out}");
    assert!(forwarded.load(std::sync::atomic::Ordering::Relaxed) > 2000);
}

/// A rustls hello with ECH GREASE (RFC 9849's outer extension with a random payload) and a
/// post-quantum X25519MLKEM768 key share, together over 1500 bytes: the real SNI is read
/// from the outer hello, and the bytes reach the endpoint unchanged.
#[tokio::test]
async fn ech_grease_and_post_quantum_hello_is_routed_intact() {
    use rustls::crypto::aws_lc_rs as provider;
    use rustls::crypto::hpke::Hpke;
    let upstream = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = upstream.local_addr().unwrap().port();
    let gw = gateway(&endpoints_yaml(
        CATALOG,
        port,
        &[([127, 0, 0, 2].into(), "v1", true)],
    ))
    .await;
    let mut p = provider::default_provider();
    p.kx_groups = vec![
        provider::kx_group::X25519MLKEM768,
        provider::kx_group::X25519,
    ];
    let suite = provider::hpke::DH_KEM_X25519_HKDF_SHA256_AES_128;
    let placeholder = suite.generate_key_pair().unwrap().0;
    let grease = rustls::client::EchGreaseConfig::new(suite, placeholder);
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(p))
        .with_ech(rustls::client::EchMode::Grease(grease))
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NeverVerified))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"istio-peer-exchange".to_vec(), b"istio".to_vec()];
    let name = testkit::mtls::sni_server_name(&sni(80, "", CATALOG)).unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    assert!(hello.len() > 1500, "{} bytes", hello.len());
    assert!(
        hello.windows(2).any(|w| w == [0xfe, 0x0d]),
        "no ECH extension in the hello"
    );

    let mut c = TcpStream::connect(gw.listen).await.unwrap();
    c.write_all(&hello).await.unwrap();
    let (mut e, _) = tokio::time::timeout(TIMEOUT, upstream.accept())
        .await
        .expect("routed")
        .unwrap();
    let mut got = vec![0u8; hello.len()];
    tokio::time::timeout(TIMEOUT, e.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, hello);
}

/// The hello above is never answered, so its certificate is never checked.
#[derive(Debug)]
struct NeverVerified;

impl rustls::client::danger::ServerCertVerifier for NeverVerified {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Err(rustls::Error::General("not verified in this test".into()))
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("not verified in this test".into()))
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("not verified in this test".into()))
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        vec![rustls::SignatureScheme::ECDSA_NISTP256_SHA256]
    }
}
