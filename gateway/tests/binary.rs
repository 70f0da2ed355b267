//! The built `gateway` binary as its own process, with `openssl s_client` as the sidecar and
//! `openssl s_server` as the workload; SIGTERM drains and exits 0.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use testkit::proc::ChildGuard;

fn free_port(ip: [u8; 4]) -> u16 {
    testkit::net::free_port(ip.into()).unwrap()
}

fn wait_port(addr: SocketAddr) {
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{addr} never listened");
}

#[test]
fn openssl_client_through_binary_to_openssl_server_then_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let m = mesh();
    let east = dir.path().join("catalog");
    let west = dir.path().join("webapp");
    m.catalog.write_dir(&east, false).unwrap();
    m.webapp.write_dir(&west, false).unwrap();

    let port = free_port([127, 0, 0, 2]);
    let backend = SocketAddr::from(([127, 0, 0, 2], port));
    let server = ChildGuard::new(
        Command::new("openssl")
            .args(["s_server", "-quiet", "-www", "-accept"])
            .arg(backend.to_string())
            .arg("-cert")
            .arg(east.join("cert.pem"))
            .arg("-key")
            .arg(east.join("key.pem"))
            .arg("-cert_chain")
            .arg(east.join("cert-chain.pem"))
            .arg("-CAfile")
            .arg(east.join("root-cert.pem"))
            .args(["-Verify", "2", "-verify_return_error", "-alpn", "istio"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl s_server"),
    );
    wait_port(backend);

    let eps = dir.path().join("endpoints.yaml");
    std::fs::write(
        &eps,
        endpoints_yaml(CATALOG, port, &[(backend.ip(), "v1", true)]),
    )
    .unwrap();
    // A grace that a loaded machine cannot outlast between the signal and the probe below.
    let mut gw = GatewayProcess::start(
        &eps,
        &["--drain-grace", "1s", "--drain-timeout", "2s"],
        "info",
    );
    let (listen, admin) = (gw.listen, gw.admin);

    let run_client = |alpn: &str| {
        let mut c = Command::new("openssl")
            .args(["s_client", "-connect"])
            .arg(listen.to_string())
            .args(["-servername", &sni(80, "", CATALOG), "-alpn", alpn])
            .arg("-cert")
            .arg(west.join("cert.pem"))
            .arg("-key")
            .arg(west.join("key.pem"))
            .arg("-cert_chain")
            .arg(west.join("cert-chain.pem"))
            .arg("-CAfile")
            .arg(west.join("root-cert.pem"))
            .args(["-verify_return_error", "-ign_eof"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl s_client");
        c.stdin
            .take()
            .unwrap()
            .write_all(b"GET / HTTP/1.0\r\n\r\n")
            .unwrap();
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline && c.try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let out = c.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let out = run_client("istio");
    assert!(out.contains("HTTP/1.0 200 ok"), "s_client output:\n{out}");
    assert!(out.contains("ALPN protocol: istio"), "{out}");
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");

    // A non-Istio ALPN is refused by the gateway: no HTTP answer.
    let out = run_client("h2");
    assert!(!out.contains("HTTP/1.0 200 ok"), "{out}");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (code, m) = rt.block_on(http_get(admin, "/metrics"));
    assert_eq!(code, 200);
    assert_eq!(
        metric(
            &m,
            &format!(
                "gateway_connections_opened_total{{sni=\"{}\"}}",
                sni(80, "", CATALOG)
            )
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "gateway_connections_rejected_total{reason=\"alpn_not_allowed\"}"
        ),
        1.0
    );

    // SIGTERM: readiness flips to 503, then the process exits 0 after the drain.
    gw.signal("TERM");
    let flipped = Instant::now() + Duration::from_millis(900);
    while rt.block_on(http_get(admin, "/healthz/ready")).0 != 503 {
        assert!(
            Instant::now() < flipped,
            "readiness still 200 after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(s) = gw.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "gateway did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    drop(server);
}

#[test]
fn bad_flags_and_files_fail_clearly() {
    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "--endpoints",
            "/nonexistent/eps.yaml",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/eps.yaml"), "{err}");

    let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["--idle-timeout", "forever"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--idle-timeout"));
}

#[test]
fn out_of_range_values_are_refused_without_panicking() {
    for args in [
        &["--max-connections", "0"][..],
        &["--max-connections", "99999999999999999999"],
        &["--idle-timeout", "0s"],
        &["--detect-timeout", "100000years"],
        &["--allow-host", "bad host"],
        &["--max-hello-bytes", "10"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(args[0]), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

/// SIGHUP reloads even when no file event is seen: the endpoints file is a hard link to a
/// file in another directory, so writing through that other name makes no event in the
/// watched parent (a symlink's target directory is watched too; a hard link is one file with
/// two names, and inotify reports a write under the name it went through).
#[test]
fn sighup_reloads_the_endpoints_file() {
    let dir = tempfile::tempdir().unwrap();
    let (watched, elsewhere) = (dir.path().join("watched"), dir.path().join("elsewhere"));
    std::fs::create_dir_all(&watched).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    let target = elsewhere.join("real.yaml");
    std::fs::write(&target, "services: []\n").unwrap();
    let link = watched.join("endpoints.yaml");
    std::fs::hard_link(&target, &link).unwrap();
    let gw = GatewayProcess::start(&link, &[], "info");
    let admin = gw.admin;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let generation = || {
        let (_, m) = rt.block_on(http_get(admin, "/metrics"));
        metric(&m, "gateway_discovery_route_table_generation")
    };
    assert_eq!(generation(), 1.0);

    std::fs::write(
        &target,
        endpoints_yaml(CATALOG, 3000, &[([127, 0, 0, 2].into(), "v1", true)]),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(
        generation(),
        1.0,
        "no file event should have reached the watcher"
    );

    gw.signal("HUP");
    let deadline = Instant::now() + TIMEOUT;
    while generation() < 2.0 {
        assert!(Instant::now() < deadline, "SIGHUP did not reload the file");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, routes) = rt.block_on(http_get(admin, "/debug/routes"));
    assert!(routes.contains(CATALOG), "{routes}");
}

/// `--log-format json`: the effective configuration at start, and one access-log line per
/// forwarded connection with SNI, upstream, bytes each way and outcome, inside the
/// connection's span with the same fields.
#[test]
fn json_logs_carry_config_and_access_log() {
    let rt = multi_thread_runtime(1);
    let catalog = rt.block_on(catalog_endpoints_file());
    let (backends, eps) = (&catalog.backends, &catalog.path);
    let mut child = ChildGuard::new(
        Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--admin",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--endpoints",
            ])
            .arg(eps)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::<serde_json::Value>::new()));
    let sink = lines.clone();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let v: serde_json::Value =
                serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
            sink.lock().unwrap().push(v);
        }
    });
    let find = |pred: &dyn Fn(&serde_json::Value) -> bool| -> serde_json::Value {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(v) = lines.lock().unwrap().iter().find(|v| pred(v)) {
                return v.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no such log line in {:?}",
                lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let start = find(&|v| v["message"] == "starting gateway");
    assert!(
        start["config"]
            .as_str()
            .unwrap()
            .contains("require_istio_alpn: true"),
        "{start}"
    );
    let listening = find(&|v| v["message"] == "gateway listening");
    let listen: SocketAddr = listening["listen_addr"].as_str().unwrap().parse().unwrap();

    // A graceful client: close_notify and FIN, then read to the backend's own close.
    let client = rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut conn, greeting) = open(listen, &sni(80, "", CATALOG), default_client())
            .await
            .unwrap();
        let client = conn.get_ref().get_ref().0.local_addr().unwrap();
        assert!(greeting.starts_with("catalog-1 "));
        conn.shutdown().await.unwrap();
        let mut rest = String::new();
        conn.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "eof after 0 bytes\n");
        client
    });
    let access = find(&|v| v["target"] == "access");
    assert_eq!(access["client"], client.to_string(), "{access}");
    assert_eq!(access["sni"], sni(80, "", CATALOG));
    assert_eq!(access["upstream"], backends[0].addr.to_string());
    assert_eq!(access["outcome"], "ok");
    // The connection's span carries what was learnt while deciding (`record_on_conn_span`).
    let span = &access["span"];
    assert_eq!(span["name"], "conn", "{access}");
    assert_eq!(span["client"], client.to_string(), "{access}");
    assert_eq!(span["sni"], sni(80, "", CATALOG), "{access}");
    assert_eq!(span["upstream"], backends[0].addr.to_string(), "{access}");
    assert!(
        access["sent"].as_u64().unwrap() > 100 && access["received"].as_u64().unwrap() > 100,
        "{access}"
    );
    drop(child);
}

/// `--splice false` copies every byte: a bulk stream through it never opens a pipe, where
/// the default splices the same stream through pipes (so the check can fail).
#[test]
fn splice_false_moves_bulk_without_a_pipe() {
    let rt = multi_thread_runtime(2);
    let catalog = rt.block_on(catalog_endpoints_file());
    const BULK: usize = 4 << 20;
    for (splice, expect_pipes) in [("true", true), ("false", false)] {
        let gw = GatewayProcess::start(&catalog.path, &["--splice", splice], "info");
        let pid = gw.child.id();
        // Its stderr is a pipe to this test, and it may hold others of its own.
        let before = pipes_open(pid);
        let got = std::sync::atomic::AtomicUsize::new(0);
        let most_pipes = rt.block_on(async {
            let (stream, greeting) = open(gw.listen, &sni(80, "v1", CATALOG), default_client())
                .await
                .unwrap();
            assert!(greeting.starts_with("catalog-1"), "{greeting}");
            let seen = &got;
            // The backend echoes: look at the gateway's descriptors while the bytes flow.
            let echo = echo_bulk(stream, BULK, |got| {
                seen.store(got, std::sync::atomic::Ordering::Relaxed);
                pipes_open(pid).saturating_sub(before)
            });
            tokio::time::timeout(TIMEOUT, echo)
                .await
                .unwrap_or_else(|_| {
                    let ss = Command::new("ss")
                        .args(["-tnio", "state", "established"])
                        .output()
                        .unwrap();
                    panic!(
                        "--splice {splice}: bulk echo timed out; got {}\n{}",
                        got.load(std::sync::atomic::Ordering::Relaxed),
                        String::from_utf8_lossy(&ss.stdout)
                    )
                })
        });
        assert_eq!(
            most_pipes > 0,
            expect_pipes,
            "--splice {splice}: at most {most_pipes} pipes opened during the transfer"
        );
    }
}
