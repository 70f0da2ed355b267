//! The HBONE doubles against each other, with real rustls, real h2 and real sockets on
//! 127.0.0.1: single and double HBONE through a TCP relay, bytes intact, half-close both
//! ways, cancel, pooled streams, refusals.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use testkit::hbone::{
    AppMode, ClientZtunnel, ConnectRequest, DestinationZtunnel, HboneError, OuterConn, StreamEnd,
    TestApp, Tunnel,
};
use testkit::mesh;
use testkit::mtls::Identity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TIMEOUT: Duration = Duration::from_secs(60);

struct Pki {
    /// The webapp workload's PEMs (for `openssl s_client`) and its identity.
    webapp_pems: pki::WorkloadCert,
    webapp: Identity,
    catalog: Identity,
    gateway: Identity,
    /// Same root, trust domain `other.example`.
    other_domain: Identity,
    /// From another root altogether (but trusting the mesh root, so only the server refuses).
    stranger: Identity,
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let root = pki::RootCa::generate(&pki::RootOptions::default()).unwrap();
        let east = root
            .issue_intermediate(&pki::IntermediateOptions::new(mesh::EAST_CLUSTER))
            .unwrap();
        let west = root
            .issue_intermediate(&pki::IntermediateOptions::new(mesh::WEST_CLUSTER))
            .unwrap();
        let id = |ca: &pki::IntermediateCa, opts: pki::WorkloadOptions| {
            Identity::from_workload(&ca.issue_workload(&opts).unwrap()).unwrap()
        };
        let mut other = pki::WorkloadOptions::new(mesh::NAMESPACE, mesh::WEBAPP);
        other.trust_domain = "other.example".into();
        let stranger_root = pki::RootCa::generate(&pki::RootOptions::default()).unwrap();
        let stranger_ca = stranger_root
            .issue_intermediate(&pki::IntermediateOptions::new(mesh::WEST_CLUSTER))
            .unwrap();
        let root_trust = id(&west, pki::WorkloadOptions::new(mesh::NAMESPACE, "x")).roots;
        let webapp_pems = west
            .issue_workload(&pki::WorkloadOptions::new(mesh::NAMESPACE, mesh::WEBAPP))
            .unwrap();
        Pki {
            webapp: Identity::from_workload(&webapp_pems).unwrap(),
            webapp_pems,
            catalog: id(
                &east,
                pki::WorkloadOptions::new(mesh::NAMESPACE, mesh::CATALOG),
            ),
            gateway: id(
                &east,
                pki::WorkloadOptions::new("istio-system", "istio-eastwestgateway"),
            ),
            other_domain: id(&west, other),
            stranger: Identity {
                roots: root_trust.clone(),
                ..id(
                    &stranger_ca,
                    pki::WorkloadOptions::new(mesh::NAMESPACE, mesh::WEBAPP),
                )
            },
        }
    })
}

fn catalog_authority() -> String {
    format!("{}:80", mesh::host(mesh::CATALOG))
}

fn webapp_client(server_id: &str) -> ClientZtunnel {
    ClientZtunnel::from_identity(&pki().webapp, &[server_id.to_owned()]).unwrap()
}

/// A catalog destination ztunnel in front of `app`, and the webapp client's outer
/// connection to it.
async fn catalog_outer(app: SocketAddr) -> (DestinationZtunnel, OuterConn) {
    let dest = DestinationZtunnel::start(&pki().catalog, app)
        .await
        .unwrap();
    let outer = webapp_client(&mesh::spiffe_id(mesh::CATALOG))
        .connect(dest.addr())
        .await
        .unwrap();
    (dest, outer)
}

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TIMEOUT, f)
        .await
        .expect("test timed out")
}

/// Deterministic bytes that differ at every offset in a 255-byte cycle and across runs of
/// the cycle, so a lost, doubled or reordered chunk shows.
fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8 ^ (i / 251) as u8).collect()
}

/// Writes `data`, half-closes, and reads until EOF, concurrently.
async fn round_trip(t: Tunnel, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let (mut r, mut w) = tokio::io::split(t);
    let write = async {
        w.write_all(data).await?;
        w.shutdown().await
    };
    let read = async {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.map(|_| got)
    };
    let (wr, got) = tokio::join!(write, read);
    wr?;
    got
}

/// A plain TCP relay to `to`, counting the bytes it passed (stands in for the network).
async fn relay(to: SocketAddr) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut down, _)) = listener.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                let Ok(mut up) = TcpStream::connect(to).await else {
                    return;
                };
                if let Ok((a, b)) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                    c.fetch_add(a + b, Ordering::Relaxed);
                }
            });
        }
    });
    (addr, count)
}

async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

async fn eventually_end(dest: &DestinationZtunnel, idx: usize) -> StreamEnd {
    testkit::wait::eventually_some("the tunnel's end recorded", TIMEOUT, || async {
        dest.seen().get(idx).and_then(|s| s.end.clone())
    })
    .await
}

#[tokio::test]
async fn single_hbone_through_a_relay_carries_bytes_intact() {
    within(async {
        let app = TestApp::echo().await.unwrap();
        let dest = DestinationZtunnel::start(&pki().catalog, app.addr())
            .await
            .unwrap();
        let (relay_addr, relayed) = relay(dest.addr()).await;
        let outer = webapp_client(&mesh::spiffe_id(mesh::CATALOG))
            .connect(relay_addr)
            .await
            .unwrap();
        assert_eq!(
            outer.peer_identity(),
            Some(mesh::spiffe_id(mesh::CATALOG).as_str())
        );
        let sizes = [1usize, 64 * 1024, 8 * 1024 * 1024];
        for (i, n) in sizes.into_iter().enumerate() {
            let data = payload(n);
            let t = outer.connect_tunnel(&catalog_authority()).await.unwrap();
            let got = round_trip(t, &data).await.unwrap();
            assert!(
                got == data,
                "{n} bytes: got {} bytes back, not intact",
                got.len()
            );
            let end = eventually_end(&dest, i).await;
            assert_eq!(
                end,
                StreamEnd::Closed {
                    to_app: n as u64,
                    from_app: n as u64
                }
            );
        }
        let seen = dest.seen();
        assert!(seen.iter().all(|s| {
            s.peer.as_deref() == Some(mesh::spiffe_id(mesh::WEBAPP).as_str())
                && s.authority.as_deref() == Some(catalog_authority().as_str())
                && ["baggage", "forwarded", "traceparent"]
                    .iter()
                    .all(|h| s.headers.contains_key(*h))
        }));
        assert_eq!(dest.connections().len(), 1, "one pooled outer connection");
        drop(outer);
        // TLS and h2 framing on top of 2 × (1 B + 64 KiB + 8 MiB) of payload.
        testkit::wait::eventually("the relay closed", TIMEOUT, || async {
            relayed.load(Ordering::Relaxed) > 2 * (8 * 1024 * 1024 + 64 * 1024)
        })
        .await;
    })
    .await
}

#[tokio::test]
async fn double_hbone_runs_inner_tls_end_to_end_through_an_outer_hop() {
    within(async {
        let app = TestApp::echo().await.unwrap();
        let destination = DestinationZtunnel::start(&pki().catalog, app.addr())
            .await
            .unwrap();
        let (relay_addr, _) = relay(destination.addr()).await;
        // The outer hop: a plain mTLS HBONE server that forwards the stream's bytes raw.
        let gateway = DestinationZtunnel::start(&pki().gateway, relay_addr)
            .await
            .unwrap();
        let gw_id = mesh::spiffe_id_in("istio-system", "istio-eastwestgateway");
        let outer = webapp_client(&gw_id).connect(gateway.addr()).await.unwrap();
        let trace = "00-0123456789abcdef0123456789abcdef-0123456789abcdef-00";
        let req = || ConnectRequest::new(&catalog_authority()).traceparent(trace);
        let outer_tunnel = outer.open(req()).await.unwrap();
        let inner = webapp_client(&mesh::spiffe_id(mesh::CATALOG))
            .connect_over(outer_tunnel)
            .await
            .unwrap();
        assert_eq!(
            inner.peer_identity(),
            Some(mesh::spiffe_id(mesh::CATALOG).as_str()),
            "the inner TLS ends at the destination, not at the outer hop"
        );
        let tunnel = inner
            .open(req().forwarded_network("west-network"))
            .await
            .unwrap();
        let data = payload(1024 * 1024 + 7);
        let got = round_trip(tunnel, &data).await.unwrap();
        assert!(got == data, "got {} bytes back, not intact", got.len());

        let at_dest = &destination.seen()[0];
        assert_eq!(
            at_dest.peer.as_deref(),
            Some(mesh::spiffe_id(mesh::WEBAPP).as_str())
        );
        assert_eq!(at_dest.headers["x-forwarded-network"], "west-network");
        assert_eq!(at_dest.headers["traceparent"], trace);
        let at_gw = &gateway.seen()[0];
        assert_eq!(
            at_gw.authority.as_deref(),
            Some(catalog_authority().as_str())
        );
        assert!(!at_gw.headers.contains_key("x-forwarded-network"));
        assert_eq!(
            eventually_end(&destination, 0).await,
            StreamEnd::Closed {
                to_app: data.len() as u64,
                from_app: data.len() as u64
            }
        );
    })
    .await
}

#[tokio::test]
async fn half_close_works_in_each_direction_on_its_own() {
    within(async {
        let client = webapp_client(&mesh::spiffe_id(mesh::CATALOG));
        // Server → client first: the app sends and closes, then still reads what we send.
        let greeting = b"hello from catalog".to_vec();
        let speaker = TestApp::start(AppMode::SpeakFirst(greeting.clone()))
            .await
            .unwrap();
        let dest = DestinationZtunnel::start(&pki().catalog, speaker.addr())
            .await
            .unwrap();
        let outer = client.connect(dest.addr()).await.unwrap();
        let mut t = outer.connect_tunnel(&catalog_authority()).await.unwrap();
        let mut got = Vec::new();
        t.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, greeting, "the app's FIN arrives as END_STREAM = EOF");
        let late = payload(100_000);
        t.write_all(&late).await.unwrap();
        t.shutdown().await.unwrap();
        let end = eventually_end(&dest, 0).await;
        assert_eq!(
            end,
            StreamEnd::Closed {
                to_app: late.len() as u64,
                from_app: greeting.len() as u64
            }
        );
        let conn = speaker.conns()[0].clone();
        assert_eq!(conn.received, late.len() as u64);
        assert_eq!(
            conn.ended,
            Some(Ok(())),
            "our END_STREAM reached the app as FIN"
        );

        // Client → server: after our END_STREAM the echo still answers everything.
        let echo = TestApp::echo().await.unwrap();
        let dest = DestinationZtunnel::start(&pki().catalog, echo.addr())
            .await
            .unwrap();
        let outer = client.connect(dest.addr()).await.unwrap();
        let mut t = outer.connect_tunnel(&catalog_authority()).await.unwrap();
        let data = payload(200_000);
        t.write_all(&data).await.unwrap();
        t.shutdown().await.unwrap();
        let mut back = Vec::new();
        t.read_to_end(&mut back).await.unwrap();
        assert!(
            back == data,
            "got {} bytes after our half-close",
            back.len()
        );
    })
    .await
}

#[tokio::test]
async fn cancel_resets_the_stream_at_the_destination_and_spares_the_connection() {
    within(async {
        let app = TestApp::echo().await.unwrap();
        let (dest, outer) = catalog_outer(app.addr()).await;
        let mut t = outer.connect_tunnel(&catalog_authority()).await.unwrap();
        t.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        t.read_exact(&mut buf).await.unwrap();
        t.cancel();
        assert_eq!(
            eventually_end(&dest, 0).await,
            StreamEnd::Reset(h2::Reason::CANCEL)
        );
        testkit::wait::eventually("the app connection closed", TIMEOUT, || async {
            app.conns().first().is_some_and(|c| c.ended.is_some())
        })
        .await;
        // The outer connection lives on; an `ip:port` authority with the pod's own IP is fine.
        let own = format!("{}:8080", dest.addr().ip());
        let t = outer.connect_tunnel(&own).await.unwrap();
        assert_eq!(round_trip(t, b"again").await.unwrap(), b"again");
        // Dropping a tunnel that is still open resets it the same way.
        let mut t = outer.connect_tunnel(&catalog_authority()).await.unwrap();
        t.write_all(b"drop").await.unwrap();
        t.read_exact(&mut buf).await.unwrap();
        drop(t);
        assert_eq!(
            eventually_end(&dest, 2).await,
            StreamEnd::Reset(h2::Reason::CANCEL)
        );
        assert_eq!(dest.connections().len(), 1);
    })
    .await
}

#[tokio::test]
async fn three_tunnels_share_one_outer_connection_concurrently() {
    within(async {
        let app = TestApp::echo().await.unwrap();
        let (dest, outer) = catalog_outer(app.addr()).await;
        let tunnels = (0..3u8).map(|i| {
            let outer = outer.clone();
            tokio::spawn(async move {
                let t = outer.connect_tunnel(&catalog_authority()).await.unwrap();
                let id = t.stream_id();
                let data: Vec<u8> = payload(300_000).iter().map(|b| b ^ i).collect();
                let got = round_trip(t, &data).await.unwrap();
                (id, got == data)
            })
        });
        let mut ids = Vec::new();
        for t in tunnels.collect::<Vec<_>>() {
            let (id, intact) = t.await.unwrap();
            assert!(intact, "stream {id} not intact");
            ids.push(id);
        }
        ids.sort();
        assert_eq!(ids, [1, 3, 5], "three streams on one connection");
        assert_eq!(dest.connections().len(), 1);
        assert_eq!(app.conns().len(), 3);
        let rtt = outer.ping(Duration::from_secs(5)).await.unwrap();
        assert!(rtt < Duration::from_secs(5));
    })
    .await
}

#[tokio::test]
async fn refused_connects_report_their_status() {
    within(async {
        let down = closed_port().await;
        let (dest, outer) = catalog_outer(down).await;
        let e = outer
            .connect_tunnel(&catalog_authority())
            .await
            .err()
            .expect("no app: refused");
        assert_eq!(e.refused_status(), Some(503), "{e}");

        let get = http::Request::get(format!("https://{}/", catalog_authority()))
            .body(())
            .unwrap();
        let e = outer.send_request(get).await.err().expect("GET refused");
        assert_eq!(e.refused_status(), Some(400), "{e}");
        let e = outer
            .connect_tunnel(&mesh::host(mesh::CATALOG))
            .await
            .err()
            .expect("authority without a port refused");
        assert_eq!(e.refused_status(), Some(400), "{e}");

        let e = outer
            .connect_tunnel("10.9.9.9:80")
            .await
            .err()
            .expect("another pod's IP refused");
        assert_eq!(e.refused_status(), Some(400), "{e}");

        let statuses: Vec<u16> = dest.seen().iter().map(|s| s.status.as_u16()).collect();
        assert_eq!(statuses, [503, 400, 400, 400]);
        // Still one healthy connection after four refusals.
        assert_eq!(dest.connections().len(), 1);
    })
    .await
}

async fn refused_by_destination(client: ClientZtunnel, why: &str) {
    let app = TestApp::echo().await.unwrap();
    let dest = DestinationZtunnel::start(&pki().catalog, app.addr())
        .await
        .unwrap();
    let res = async {
        let outer = client.connect(dest.addr()).await?;
        outer.connect_tunnel(&catalog_authority()).await
    }
    .await;
    let e = res.err().expect("the destination must refuse");
    assert!(
        matches!(e, HboneError::Tls(_) | HboneError::H2(_)),
        "a TLS-level refusal, got {e}"
    );
    let refused = testkit::wait::eventually_some("the refusal recorded", TIMEOUT, || async {
        dest.refused_handshakes().first().cloned()
    })
    .await;
    assert!(
        refused.contains(why),
        "refused for {refused:?}, expected {why:?}"
    );
    assert!(dest.seen().is_empty());
    assert!(
        app.conns().is_empty(),
        "a refused handshake never reaches the app"
    );
}

#[tokio::test]
async fn destination_refuses_a_client_from_another_root() {
    let p = pki();
    let client = ClientZtunnel::from_identity(&p.stranger, &[]).unwrap();
    within(refused_by_destination(client, "invalid peer certificate")).await
}

#[tokio::test]
async fn destination_refuses_a_client_of_another_trust_domain() {
    let client = ClientZtunnel::from_identity(&pki().other_domain, &[]).unwrap();
    within(refused_by_destination(client, "trust domain cluster.local")).await
}

#[tokio::test]
async fn destination_refuses_a_client_without_a_certificate() {
    let cfg =
        testkit::hbone::tls::anonymous_client_config(pki().webapp.roots.clone(), &[]).unwrap();
    let client = ClientZtunnel::new(cfg);
    within(refused_by_destination(client, "peer sent no certificates")).await
}

#[tokio::test]
async fn client_refuses_a_server_with_another_identity() {
    within(async {
        let app = TestApp::echo().await.unwrap();
        let dest = DestinationZtunnel::start(&pki().gateway, app.addr())
            .await
            .unwrap();
        let e = webapp_client(&mesh::spiffe_id(mesh::CATALOG))
            .connect(dest.addr())
            .await
            .err()
            .expect("wrong server identity");
        assert!(e.to_string().contains("is none of"), "{e}");
    })
    .await
}

/// The ClientHello is ztunnel's: no SNI, ALPN `h2` only, TLS 1.3 AES-GCM suites only.
#[tokio::test]
async fn client_hello_has_ztunnels_shape() {
    within(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = webapp_client(&mesh::spiffe_id(mesh::CATALOG));
        let dial = tokio::spawn(async move { client.connect(addr).await.err() });
        let (tcp, _) = listener.accept().await.unwrap();
        let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp)
            .await
            .unwrap();
        let hello = start.client_hello();
        assert_eq!(hello.server_name(), None);
        let alpn: Vec<&[u8]> = hello.alpn().unwrap().collect();
        assert_eq!(alpn, [b"h2".as_slice()]);
        let suites: Vec<_> = hello.cipher_suites().to_vec();
        assert_eq!(
            suites,
            [
                rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
            ]
        );
        drop(start);
        assert!(
            dial.await.unwrap().is_some(),
            "the dial fails once we hang up"
        );
    })
    .await
}

#[tokio::test]
async fn drain_sends_goaway_and_lets_an_open_tunnel_finish() {
    within(async {
        let app = TestApp::echo().await.unwrap();
        let (dest, outer) = catalog_outer(app.addr()).await;
        let mut t = outer.connect_tunnel(&catalog_authority()).await.unwrap();
        t.write_all(b"before").await.unwrap();
        let mut buf = [0u8; 6];
        t.read_exact(&mut buf).await.unwrap();

        dest.drain();
        // The open tunnel still carries bytes both ways after the GOAWAY...
        let late = payload(100_000);
        t.write_all(&late).await.unwrap();
        let mut back = vec![0u8; late.len()];
        t.read_exact(&mut back).await.unwrap();
        assert!(back == late);
        assert!(!outer.is_closed(), "closed while a tunnel was open");
        // ...and once it ends, the connection closes cleanly and takes no new tunnel.
        t.shutdown().await.unwrap();
        let mut rest = Vec::new();
        t.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        drop(t);
        assert_eq!(outer.closed().await, Ok(()));
        assert!(outer.connect_tunnel(&catalog_authority()).await.is_err());
        assert_eq!(
            eventually_end(&dest, 0).await,
            StreamEnd::Closed {
                to_app: 6 + late.len() as u64,
                from_app: 6 + late.len() as u64
            }
        );
    })
    .await
}

/// `openssl s_client` with the webapp certificate and the given extra flags; its stdout and
/// stderr once it exits (stdin is closed, so it leaves right after the handshake).
fn s_client(addr: SocketAddr, flags: &[&str]) -> String {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap(); // 0700
    let w = &pki().webapp_pems;
    std::fs::write(dir.path().join("cert-chain.pem"), &w.chain_pem).unwrap();
    std::fs::write(dir.path().join("root-cert.pem"), &w.root_pem).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.path().join("key.pem"))
        .unwrap()
        .write_all(w.key_pem.as_bytes())
        .unwrap();
    let mut c = Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(addr.to_string())
        .arg("-cert")
        .arg(dir.path().join("cert-chain.pem"))
        .arg("-cert_chain")
        .arg(dir.path().join("cert-chain.pem"))
        .arg("-key")
        .arg(dir.path().join("key.pem"))
        .arg("-CAfile")
        .arg(dir.path().join("root-cert.pem"))
        .arg("-verify_return_error")
        .args(flags)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline && c.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let out = c.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The destination's TLS as a foreign client sees it: TLS 1.3 with ALPN h2 and AES-GCM is
/// accepted; TLS 1.2, or no h2 in the ALPN offer, is refused.
#[tokio::test]
async fn destination_speaks_only_tls13_with_h2_to_openssl() {
    let app = TestApp::echo().await.unwrap();
    let dest = DestinationZtunnel::start(&pki().catalog, app.addr())
        .await
        .unwrap();
    let addr = dest.addr();
    let run =
        |flags: &'static [&'static str]| tokio::task::spawn_blocking(move || s_client(addr, flags));
    let ok = run(&["-alpn", "h2"]).await.unwrap();
    assert!(ok.contains("ALPN protocol: h2"), "{ok}");
    assert!(ok.contains("TLSv1.3"), "{ok}");
    assert!(ok.contains("Verify return code: 0 (ok)"), "{ok}");
    assert!(
        ok.contains("TLS_AES_256_GCM_SHA384") || ok.contains("TLS_AES_128_GCM_SHA256"),
        "{ok}"
    );
    let tls12 = run(&["-alpn", "h2", "-tls1_2"]).await.unwrap();
    assert!(!tls12.contains("ALPN protocol: h2"), "{tls12}");
    let chacha = run(&[
        "-alpn",
        "h2",
        "-ciphersuites",
        "TLS_CHACHA20_POLY1305_SHA256",
    ])
    .await
    .unwrap();
    assert!(!chacha.contains("ALPN protocol: h2"), "{chacha}");
    let http11 = run(&["-alpn", "http/1.1"]).await.unwrap();
    assert!(!http11.contains("ALPN protocol"), "{http11}");
    let refused = dest.refused_handshakes();
    assert_eq!(refused.len(), 3, "{refused:?}");
    assert_eq!(dest.connections().len(), 1);
}
