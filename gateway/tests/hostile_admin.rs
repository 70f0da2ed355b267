//! Hostile peers on the admin and status listeners, with the real binary and sockets on
//! 127.0.0.0/8: floods, slowloris, non-readers and odd requests; and the accept loop at the
//! descriptor limit. Every loop is bounded.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// The kubelet's default probe timeout: a probe slower than this fails.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------
// Admin and status listeners
// ---------------------------------------------------------------------------------------

/// The status listener's address from the binary's start line (`status_addr`).
fn status_addr(gw: &GatewayProcess) -> SocketAddr {
    let up = gw.wait_line(&|v| v["message"] == "gateway listening");
    up["status_addr"].as_str().unwrap().parse().unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// A kubelet-style probe: a new connection, one GET, answered within [`PROBE_TIMEOUT`].
async fn probe(addr: SocketAddr) -> u16 {
    let started = Instant::now();
    let (code, _) = tokio::time::timeout(PROBE_TIMEOUT, http_get(addr, "/healthz/ready"))
        .await
        .unwrap_or_else(|_| panic!("probe of {addr} took over {PROBE_TIMEOUT:?}"));
    assert!(started.elapsed() < PROBE_TIMEOUT);
    code
}

/// Sends `req` and reads until the server closes (bounded), returning what it sent.
async fn exchange(addr: SocketAddr, req: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, s.read_to_end(&mut out))
        .await
        .expect("the gateway closed the connection");
    String::from_utf8_lossy(&out).into_owned()
}

async fn admin_metric(admin: SocketAddr, series: &str) -> f64 {
    let (_, body) = http_get(admin, "/metrics").await;
    metric(&body, series)
}

/// Polls `series` until it reaches `want`, for at most `within`.
async fn wait_admin_metric(admin: SocketAddr, series: &str, want: f64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = admin_metric(admin, series).await;
        if got >= want {
            return;
        }
        assert!(Instant::now() < deadline, "{series} is {got}, want {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn cut(listener: &str, reason: &str) -> String {
    format!("gateway_admin_connections_cut_total{{listener=\"{listener}\",reason=\"{reason}\"}}")
}

/// 1,200 idle connections to the status port (the one a load balancer exposes): the
/// gateway holds at most 256 of them, the oldest closed first, so its descriptors (shared
/// with the data path) and memory stay bounded, and a probe on a new connection is answered
/// within the kubelet's timeout all along. Before, every connection was kept until its
/// header timeout: 1,200 descriptors, and a flood at the limit stopped 15443 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_flood_is_bounded_and_probes_keep_answering() {
    let catalog = catalog_endpoints_file().await;
    let gw = GatewayProcess::start(&catalog.path, &["--status-listen", "127.0.0.1:0"], "info");
    let status = status_addr(&gw);
    let pid = gw.child.id();
    assert_eq!(probe(status).await, 200);
    let before = open_fds(pid);
    let mut idle = Vec::new();
    for i in 0..1200 {
        idle.push(TcpStream::connect(status).await.unwrap());
        if i % 200 == 199 {
            assert_eq!(probe(status).await, 200, "after {} idle connections", i + 1);
        }
    }
    // Once every connection is accepted, the newest 256 are held and the rest were shed.
    let shed = cut("status", "shed");
    let deadline = Instant::now() + Duration::from_secs(10);
    let held = loop {
        let held = open_fds(pid).saturating_sub(before);
        let settled = held <= 256 + 4 && admin_metric(gw.admin, &shed).await >= 1200.0 - 256.0;
        if settled || Instant::now() > deadline {
            break held;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        held <= 256 + 4,
        "{held} descriptors held for 1200 idle connections"
    );
    // The probes' own connections may be among the shed, once they have their answers.
    assert!(admin_metric(gw.admin, &shed).await >= 1200.0 - 256.0);
    let open = "gateway_admin_connections{listener=\"status\"}";
    assert!(admin_metric(gw.admin, open).await <= 256.0);
    // The data path still works.
    assert!(call(gw.listen, &sni(80, "", CATALOG)).await.is_ok());
    drop(idle);
}

/// Slow and greedy clients on the status listener, at once: a slowloris sending its head a
/// byte a second, a client that pipelines requests and never reads, heads far over the
/// bound. Each is cut within its bound and counted by reason, and probes keep answering
/// within the kubelet's timeout meanwhile. Before, the non-reader was kept forever and a
/// 100 KB header was read and answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_greedy_clients_are_cut_and_counted() {
    let gw = gateway_with(&big_endpoints_yaml(1, 1), |c| {
        c.status_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let status = gw.bound().status_addr.unwrap();
    let admin = gw.admin;
    // Connects and sends nothing: cut at the same 10 s, but counted as idle, apart from the
    // slowloris whose head started.
    let silent = TcpStream::connect(status).await.unwrap();

    let slowloris = tokio::spawn(async move {
        let mut s = TcpStream::connect(status).await.unwrap();
        s.set_nodelay(true).unwrap();
        let started = Instant::now();
        let head = b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa";
        for &b in head {
            if s.write_all(&[b]).await.is_err() {
                break;
            }
            let mut probe = [0u8; 1];
            // Closed by the gateway: the read ends (EOF or reset) within the second.
            if let Ok(r) = tokio::time::timeout(Duration::from_secs(1), s.read(&mut probe)).await {
                assert!(!matches!(r, Ok(n) if n > 0), "answered a partial head");
                break;
            }
        }
        started.elapsed()
    });

    // A non-reader: a small receive window, requests pipelined until the gateway stops
    // reading them.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut greedy = socket.connect(status).await.unwrap();
    let reqs = b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\n\r\n".repeat(256);
    let mut sent = 0usize;
    for _ in 0..2000 {
        match tokio::time::timeout(Duration::from_millis(200), greedy.write_all(&reqs)).await {
            Ok(Ok(())) => sent += reqs.len(),
            _ => break,
        }
    }
    assert!(
        sent < 2000 * reqs.len(),
        "the gateway read {sent} bytes unanswered"
    );

    // Heads over the 16 KiB bound: refused at once with 431, not read to the end.
    for size in [20_000, 100_000] {
        let req = format!(
            "GET /healthz/ready HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(size)
        );
        let out = exchange(status, req.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 431"), "{size}: {out}");
    }
    let long_line = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100_000));
    let out = exchange(status, long_line.as_bytes()).await;
    // 414 for a line hyper has parsed, 431 when the bound is met first: refused either way.
    assert!(
        out.starts_with("HTTP/1.1 414") || out.starts_with("HTTP/1.1 431"),
        "{out}"
    );

    // Probes meanwhile, for as long as the slowloris lasts (bounded by its head's length).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !slowloris.is_finished() {
        assert_eq!(probe(status).await, 200);
        assert!(Instant::now() < deadline, "the slowloris was never cut");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let lasted = slowloris.await.unwrap();
    assert!(
        lasted >= Duration::from_secs(9) && lasted < Duration::from_secs(13),
        "slowloris cut after {lasted:?}, the header timeout is 10 s"
    );
    assert_eq!(
        admin_metric(admin, &cut("status", "header_timeout")).await,
        1.0
    );
    wait_admin_metric(admin, &cut("status", "idle"), 1.0, Duration::from_secs(2)).await;
    assert_eq!(expect_closed(silent).await, b"");
    assert_eq!(
        admin_metric(admin, &cut("status", "bad_request")).await,
        3.0
    );
    // The non-reader: cut 10 s after its responses stopped moving.
    wait_admin_metric(
        admin,
        &cut("status", "write_stall"),
        1.0,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(probe(status).await, 200);
    drop(greedy);
}

/// Methods, paths, query strings and protocols a scanner tries: each gets a definite answer
/// (or a close), health answers ignore the query, nothing but health leaves the status
/// port, and a 405 says which methods are allowed (RFC 9110 15.5.6; before, it did not).
#[tokio::test]
async fn odd_requests_get_definite_answers() {
    let gw = gateway_with(&big_endpoints_yaml(1, 1), |c| {
        c.status_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    let status = gw.bound().status_addr.unwrap();
    for method in ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"] {
        let out = exchange(
            status,
            format!(
                "{method} /healthz/ready HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"
            )
            .as_bytes(),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 405"), "{method}: {out}");
        assert!(
            out.to_ascii_lowercase()
                .contains("\r\nallow: get, head\r\n"),
            "{method}: {out}"
        );
    }
    let connect = exchange(
        status,
        b"CONNECT 10.0.0.1:443 HTTP/1.1\r\nHost: 10.0.0.1:443\r\nConnection: close\r\n\r\n",
    );
    assert!(connect.await.starts_with("HTTP/1.1 405"));
    let head = exchange(status, b"HEAD /healthz/ready HTTP/1.0\r\n\r\n").await;
    assert!(
        head.starts_with("HTTP/1.0 200") && head.ends_with("\r\n\r\n"),
        "{head}"
    );

    for (path, want) in [
        ("/healthz/ready?probe=1&x=%00%ff", 200),
        ("/healthz/live?", 200),
        ("/healthz/ready#frag", 200),
        ("http://other.example/healthz/ready", 200),
        ("/healthz/%72eady", 404),
        ("//healthz/ready", 404),
        ("/healthz/ready/", 404),
        ("/healthz/ready/../../metrics", 404),
        ("/metrics%2f", 404),
        ("/%6detrics", 404),
        ("/debug/routes?host=svc-0.big.local", 404),
    ] {
        let out = exchange(status, format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).await;
        let code = out.split(' ').nth(1).unwrap_or_default();
        assert_eq!(code, want.to_string(), "{path}: {out}");
        assert!(!out.contains("10.0.0."), "{path} leaked an endpoint");
        assert!(!out.contains("gateway_"), "{path} leaked a metric");
    }
    for bad in [
        &b"GET /healthz/re\0ady HTTP/1.0\r\n\r\n"[..],
        b"GET /healthz/ready\r\n\r\n",
        b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n",
    ] {
        let out = exchange(status, bad).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{bad:?}: {out}");
    }

    // HTTP/2 with prior knowledge: closed without an answer (HTTP/1 only). An h2c upgrade is
    // answered in HTTP/1.1, never switched.
    let h2 = exchange(
        status,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    )
    .await;
    assert_eq!(h2, "");
    let upgrade = exchange(
        status,
        b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await;
    assert!(upgrade.starts_with("HTTP/1.1 200"), "{upgrade}");

    // Pipelined: every request answered, in order.
    let pipelined = [
        &b"GET /healthz/ready HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ]
    .concat();
    let out = exchange(status, &pipelined).await;
    let codes: Vec<_> = out
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &out[i + 9..i + 12])
        .collect();
    assert_eq!(codes, ["200", "404", "200"], "{out}");

    let admin = gw.admin;
    // The NUL, HTTP/0.9 and bad-header requests, and the HTTP/2 preface.
    assert_eq!(
        admin_metric(admin, &cut("status", "bad_request")).await,
        4.0
    );
}

// ---------------------------------------------------------------------------------------
// Descriptor exhaustion
// ---------------------------------------------------------------------------------------

/// CPU time (user and system) the process has used, from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<u64> = rest
        .split(' ')
        .skip(11)
        .take(2)
        .map(|f| f.parse().unwrap())
        .collect();
    // Clock ticks: 100 a second on Linux.
    Duration::from_millis((fields[0] + fields[1]) * 10)
}

/// At the descriptor limit, with connections waiting in every accept queue, the accept
/// loops back off instead of spinning (bounded CPU, a bounded count of failed accepts), and
/// once descriptors are free again the gateway accepts, forwards and answers probes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_descriptor_limit_accepting_backs_off_and_recovers() {
    let catalog = catalog_endpoints_file().await;
    let gw = GatewayProcess::start_limited(
        &catalog.path,
        // Limits set above what fits (defaulted ones would be lowered to fit).
        &[
            "--detect-timeout",
            "60s",
            "--status-listen",
            "127.0.0.1:0",
            "--max-undecided",
            "1000",
        ],
        "info",
        Some((64, 64)),
    );
    let status = status_addr(&gw);
    let pid = gw.child.id();
    // More idle connections than descriptors: the rest wait in the accept queue.
    let mut idle = Vec::new();
    for _ in 0..80 {
        idle.push(TcpStream::connect(gw.listen).await.unwrap());
    }
    let deadline = Instant::now() + TIMEOUT;
    while open_fds(pid) < 64 {
        assert!(Instant::now() < deadline, "never reached the limit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A probe waits in the status listener's queue too.
    let mut queued_probe = TcpStream::connect(status).await.unwrap();
    queued_probe
        .write_all(b"GET /healthz/live HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let (cpu0, t0) = (cpu_time(pid), Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu, wall) = (cpu_time(pid) - cpu0, t0.elapsed());
    assert!(
        cpu < wall / 5,
        "{cpu:?} of CPU in {wall:?} while out of descriptors"
    );

    drop(idle);
    // The queued probe is answered once a descriptor is free.
    let mut answer = String::new();
    tokio::time::timeout(TIMEOUT, queued_probe.read_to_string(&mut answer))
        .await
        .expect("the queued probe was answered")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    assert!(call(gw.listen, &sni(80, "", CATALOG)).await.is_ok());
    let failed = gw.metric("gateway_accept_errors_total{kind=\"out_of_descriptors\"}");
    // One retry every 20 ms: about 100 in the window on 15443, not a spin.
    assert!(
        (10.0..=400.0).contains(&failed),
        "{failed} failed accepts in about {wall:?}"
    );
}
