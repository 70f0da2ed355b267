//! The built binary under a tight descriptor limit (`ulimit -n`): running out of descriptors
//! is the gateway's own problem, not the endpoint's, it is logged without flooding, and the
//! status and admin ports still answer.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const FD_LIMIT: u32 = 64;

struct Starved {
    gw: GatewayProcess,
    _catalog: CatalogFile,
    /// Idle connections that hold all but one of the gateway's descriptors.
    idle: Vec<TcpStream>,
}

/// Starts the binary with [`FD_LIMIT`] descriptors and opens idle connections (no bytes, a
/// long detect timeout) until the gateway is one descriptor short: it can accept a call but
/// not dial the upstream. The first failed call proves it. The connection limits are set
/// explicitly far above what fits, as an operator may: defaulted ones would be lowered to fit
/// and refuse connections before descriptors ran out.
async fn one_descriptor_short() -> Starved {
    one_descriptor_short_with(&[]).await
}

/// As [`one_descriptor_short`], with more flags.
async fn one_descriptor_short_with(extra: &[&str]) -> Starved {
    let catalog = catalog_endpoints_file().await;
    let mut args = vec!["--detect-timeout", "60s"];
    args.extend(["--max-connections", "1000", "--max-undecided", "1000"]);
    args.extend_from_slice(extra);
    let gw =
        GatewayProcess::start_limited(&catalog.path, &args, "info", Some((FD_LIMIT, FD_LIMIT)));
    let mut idle = Vec::new();
    let access = |v: &serde_json::Value| v["target"] == "access";
    for calls in 1..=FD_LIMIT as usize {
        if call(gw.listen, &sni(80, "", CATALOG)).await.is_err() {
            return Starved {
                gw,
                _catalog: catalog,
                idle,
            };
        }
        // The call's two descriptors are free again once its access-log line is out.
        for _ in 0..250 {
            if gw.count_lines(&access) >= calls {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(gw.count_lines(&access), calls, "call {calls} never closed");
        idle.push(TcpStream::connect(gw.listen).await.unwrap());
    }
    panic!("{FD_LIMIT} idle connections never exhausted the gateway's descriptors");
}

impl Starved {
    /// Waits until accepts on 15443 keep failing: a failure streak is open (one more "accept
    /// failed" line than "accept recovered") and stays so for 300 ms, long enough for the
    /// data path (retrying every 20 ms) to take any descriptor the gateway was still closing
    /// (the last call's, which it closes after the client).
    /// Returns the number of "accept recovered" lines so far.
    async fn wait_stuck(&self) -> usize {
        let count = |m: &str| {
            self.gw
                .count_lines(&|v| v["message"].as_str().is_some_and(|l| l.starts_with(m)))
        };
        let state = || (count("accept failed"), count("accept recovered"));
        let mut last = state();
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = state();
            if now == last && now.0 > now.1 {
                return now.1;
            }
            last = now;
        }
        panic!("accepts on 15443 never kept failing: {last:?} (failed, recovered) lines");
    }

    /// Closes the idle connections and waits until the gateway has closed its side of each.
    async fn release(&mut self) {
        let n = self.idle.len() as f64;
        self.idle.clear();
        for _ in 0..250 {
            if rejected(self.gw.admin, "client_closed").await >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the gateway did not see the idle connections close");
    }
}

/// Container runtimes and systemd start services with a soft limit far under the hard one;
/// the gateway raises it at start. Limits set explicitly that cannot fit are named in a
/// warning with the fix; limits that fit get no warning.
#[tokio::test]
async fn soft_limit_is_raised_and_a_short_one_is_named() {
    let catalog = catalog_endpoints_file().await;
    let too_many = ["--max-connections", "65536"];
    let gw = GatewayProcess::start_limited(&catalog.path, &too_many, "info", Some((64, 4096)));
    let raised = gw.wait_line(&|v| v["message"] == "descriptor limit raised to the hard limit");
    assert_eq!(
        (raised["from"].as_u64(), raised["to"].as_u64()),
        (Some(64), Some(4096))
    );
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", gw.child.id())).unwrap();
    let open_files = limits.lines().find(|l| l.starts_with("Max open files"));
    let values: Vec<_> = open_files.unwrap().split_whitespace().collect();
    assert_eq!(values[3..5], ["4096", "4096"], "{limits}");
    let short = |v: &serde_json::Value| {
        v["level"] == "WARN"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("descriptor limit 4096 is below"))
    };
    let warning = gw.wait_line(&|v| short(v) && v["message"].to_string().contains("forwarded"));
    let text = warning["message"].as_str().unwrap();
    assert!(text.contains("LimitNOFILE"), "{text}");
    // The explicit flag is kept; the defaulted one made room (down to 1).
    assert!(
        text.contains("--max-connections 65536 and --max-undecided 1"),
        "{text}"
    );
    // Probes are not among what fails: the operator is told where they still go.
    assert!(
        text.contains("status and admin listeners answer one connection at a time"),
        "{text}"
    );

    let fits = ["--max-connections", "1000", "--max-undecided", "100"];
    let gw = GatewayProcess::start_limited(&catalog.path, &fits, "info", Some((64, 4096)));
    // The check is logged before the listeners are bound, and start waits for those.
    assert_eq!(gw.count_lines(&short), 0);
    assert!(call(gw.listen, &sni(80, "", CATALOG)).await.is_ok());
}

/// The defaults (65,536 connections) do not fit in 700 descriptors, so start-up lowers them
/// (to the floor, 64) and says so. Then connections past the lowered limit are refused by it
/// (`over_limit`), never by a failed accept or dial, and the process keeps descriptors
/// free for its control-plane connections. Before, the defaults stood: accepts failed with
/// EMFILE at about 300 connections and dials as `local_resource`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaulted_limits_are_lowered_to_fit_the_descriptor_limit() {
    const LIMIT: u32 = 700;
    let catalog = catalog_endpoints_file().await;
    let gw = GatewayProcess::start_limited(&catalog.path, &[], "info", Some((LIMIT, LIMIT)));
    let lowered = gw.wait_line(&|v| {
        v["level"] == "WARN"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("descriptor limit 700 is below"))
    });
    let text = lowered["message"].as_str().unwrap();
    let start = gw.wait_line(&|v| v["message"] == "starting gateway");
    let config = start["config"].as_str().unwrap_or_default();
    let max = config
        .split("max_connections: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no max_connections in {config}"));
    assert!(
        text.contains(&format!("--max-connections 65536 → {max},")) && max < 100,
        "{max}: {text}"
    );
    assert!(
        text.contains("LimitNOFILE") && text.contains("set the flags"),
        "{text}"
    );

    let mut open_calls = Vec::new();
    let refused = loop {
        assert!(
            open_calls.len() <= max,
            "more than {max} connections forwarded"
        );
        match open(gw.listen, &sni(80, "", CATALOG), default_client()).await {
            Ok(c) => open_calls.push(c),
            Err(_) => break open_calls.len(),
        }
    };
    assert_eq!(
        refused, max,
        "connections forwarded before the first refusal"
    );
    gw.wait_metric(
        "gateway_connections_rejected_total{reason=\"over_limit\"}",
        1.0,
    );
    let (_, m) = http_get(gw.admin, "/metrics").await;
    for series in [
        "gateway_connections_rejected_total{reason=\"local_resource\"}",
        "gateway_accept_errors_total{kind=\"out_of_descriptors\"}",
    ] {
        assert_eq!(metric(&m, series), 0.0, "{series}");
    }
    // Room is left for the control plane: the reserve, less what is open besides.
    let fds = std::fs::read_dir(format!("/proc/{}/fd", gw.child.id()))
        .unwrap()
        .count();
    assert!(
        fds + 64 <= LIMIT as usize,
        "{fds} descriptors open of {LIMIT}"
    );
    drop(open_calls);
}

/// Splice pipes hold descriptors too: under 600 the start-up caps them at one pipe ((600 -
/// 578) / 16), so three bulk echoes at once, which would splice both ways (six pipes), hold
/// at most one, and every byte still arrives (the other directions copy). Without the cap
/// each direction took its own pipe.
#[test]
fn splice_pipes_are_capped_under_a_small_descriptor_limit() {
    let rt = multi_thread_runtime(2);
    let catalog = rt.block_on(catalog_endpoints_file());
    let gw = GatewayProcess::start_limited(&catalog.path, &[], "info", Some((600, 600)));
    let start = gw.wait_line(&|v| v["message"] == "starting gateway");
    assert_eq!(start["splice_pipes"], 1, "{start}");
    let pid = gw.child.id();
    // Its stderr is a pipe to this test.
    let before = pipes_open(pid);
    const BULK: usize = 2 << 20;
    let most = rt.block_on(async {
        let mut streams = Vec::new();
        // One at a time: the lowered --max-undecided (1) sheds a second hello in flight.
        for _ in 0..3 {
            let (s, _) = open(gw.listen, &sni(80, "v1", CATALOG), default_client())
                .await
                .unwrap();
            streams.push(s);
        }
        let echoes = streams.into_iter().map(|stream| {
            echo_bulk(stream, BULK, move |_| {
                pipes_open(pid).saturating_sub(before)
            })
        });
        let all = futures::future::join_all(echoes);
        let per_stream = tokio::time::timeout(Duration::from_secs(30), all)
            .await
            .expect("bulk echoes timed out");
        per_stream.into_iter().max().unwrap_or(0)
    });
    // Two descriptors per pipe.
    assert!(most <= 2, "{most} pipe descriptors open at once");
}

/// EMFILE on the upstream socket is a local error: it is its own rejection reason, it is not
/// a connect failure, and it never ejects the service's only endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_descriptor_exhaustion_does_not_eject_the_endpoint() {
    let mut s = one_descriptor_short().await;
    // Five more local failures: before, these ejected the only endpoint.
    for _ in 0..5 {
        assert!(call(s.gw.listen, &sni(80, "", CATALOG)).await.is_err());
    }
    s.release().await;
    let mut ok = 0;
    for _ in 0..50 {
        if call(s.gw.listen, &sni(80, "", CATALOG)).await.is_ok() {
            ok += 1;
        }
    }
    let (_, m) = http_get(s.gw.admin, "/metrics").await;
    assert_eq!(ok, 50, "calls after descriptors were freed");
    assert_eq!(metric(&m, "gateway_endpoint_ejections_total"), 0.0);
    assert_eq!(metric(&m, "gateway_upstream_connect_failures_total"), 0.0);
    let local = "gateway_connections_rejected_total{reason=\"local_resource\"}";
    assert_eq!(metric(&m, local), 6.0);
    assert_eq!(
        metric(
            &m,
            "gateway_connections_rejected_total{reason=\"no_healthy_endpoint\"}"
        ),
        0.0
    );
}

/// With no descriptor left, accept fails every retry; the log gets the first failure and
/// then summaries, not one line per retry, and the failures are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_failures_are_logged_once_then_summarized() {
    let mut s = one_descriptor_short().await;
    let warn = |v: &serde_json::Value| {
        v["level"] == "WARN" && v["message"].as_str().is_some_and(|m| m.contains("accept"))
    };
    let before = s.gw.count_lines(&warn);
    // The last descriptor, then one connection the gateway cannot accept.
    s.idle.push(TcpStream::connect(s.gw.listen).await.unwrap());
    let stuck = TcpStream::connect(s.gw.listen).await.unwrap();
    // A 2-second window: retries run every 20 ms, about 100 of them.
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let warned = s.gw.count_lines(&warn) - before;
    assert!(
        (1..=2).contains(&warned),
        "{warned} accept warnings in {:?}",
        window.elapsed()
    );
    s.release().await;
    drop(stuck);
    // The streak of this window: ~100 retries in one line.
    let recovered = s.gw.wait_line(&|v| {
        v["message"] == "accept recovered" && v["errors"].as_u64().is_some_and(|n| n >= 20)
    });
    let errors = recovered["errors"].as_u64().unwrap();
    let (_, m) = http_get(s.gw.admin, "/metrics").await;
    let counted = metric(
        &m,
        "gateway_accept_errors_total{kind=\"out_of_descriptors\"}",
    );
    assert!(counted >= errors as f64, "{counted} < {errors}");
}

/// The status listener's address, from the start-up line (`status_addr`, logged when
/// `--status-listen` is given).
fn status_addr(gw: &GatewayProcess) -> std::net::SocketAddr {
    let up = gw.wait_line(&|v| v["message"] == "gateway listening");
    up["status_addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no status address in {up}"))
}

/// One HTTP/1.1 GET as a kubelet probe sends it (one request per connection), bounded: the
/// status code and body, or `None` when no whole answer came within 3 s.
async fn probe(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        let text = String::from_utf8_lossy(&out);
        let code = text.split_whitespace().nth(1)?.parse().ok()?;
        let (_, body) = text.split_once("\r\n\r\n")?;
        Some((code, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(3), exchange)
        .await
        .ok()
        .flatten()
}

/// With every descriptor taken by idle data-path connections (accepts on 15443 failing with
/// EMFILE), the status port still answers readiness, probe after probe, on the descriptor it
/// keeps in reserve, and so does the admin port; each such connection is counted. Before the
/// reserve, the probes' connections waited unaccepted in the backlog until the probes timed
/// out, and the kubelet would have restarted the pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_port_answers_while_descriptors_are_exhausted() {
    let mut s = one_descriptor_short_with(&["--status-listen", "127.0.0.1:0"]).await;
    let status = status_addr(&s.gw);
    // The last descriptor, then one connection the data path cannot accept.
    s.idle.push(TcpStream::connect(s.gw.listen).await.unwrap());
    let _stuck = TcpStream::connect(s.gw.listen).await.unwrap();
    let recovered = s.wait_stuck().await;

    const PROBES: usize = 5;
    for i in 0..PROBES {
        let answer = probe(status, "/healthz/ready").await;
        assert_eq!(
            answer,
            Some((200, "ready\n".to_string())),
            "readiness probe {i} on the status port while out of descriptors"
        );
    }
    let live = probe(status, "/healthz/live").await;
    assert_eq!(live, Some((200, "live\n".to_string())));

    let (code, m) = probe(s.gw.admin, "/metrics")
        .await
        .expect("the admin port did not answer while out of descriptors");
    assert_eq!(code, 200, "{m}");
    let reserved = |l: &str| {
        let series = format!("gateway_admin_reserved_accepts_total{{listener=\"{l}\"}}");
        metric(&m, &series)
    };
    assert_eq!(reserved("status"), (PROBES + 1) as f64, "{m}");
    assert_eq!(reserved("admin"), 1.0, "{m}");
    // Each reserved descriptor went back to its listener, not to the data path: the
    // connection queued on 15443 was never accepted (that would end the failure streak).
    let recovered_now = s.gw.count_lines(&|v| v["message"] == "accept recovered");
    assert_eq!(
        recovered_now, recovered,
        "15443 accepted while the reserve was in use"
    );
    let used = s.gw.count_lines(&|v| {
        v["level"] == "WARN"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("out of descriptors (EMFILE)"))
    });
    assert_eq!(used, 2, "one warning per listener within 5 s");

    s.release().await;
    assert_eq!(
        probe(status, "/healthz/ready").await,
        Some((200, "ready\n".to_string()))
    );
}
