//! An API server that gives no answer is named by its cause, with that cause's fix, instead of
//! kube's nested transport text ("ServiceError: client error (Connect): invalid peer
//! certificate: UnknownIssuer"): real TLS handshakes against the API test server with the
//! wrong CA or name, a plain-HTTP listener, a closed port, a listener whose accept queue is
//! full, and listeners that close or reset the connection after the ClientHello.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use common::*;
use serde_json::json;

/// A context named `name` for `server` with `ca_pem`, and `tls-server-name` when given.
fn context(
    name: &str,
    server: &str,
    ca_pem: &str,
    tls_name: Option<&str>,
) -> [serde_json::Value; 3] {
    use base64::Engine as _;
    let mut cluster = json!({
        "server": server,
        "certificate-authority-data": base64::engine::general_purpose::STANDARD.encode(ca_pem),
    });
    if let Some(n) = tls_name {
        cluster["tls-server-name"] = json!(n);
    }
    [
        json!({"name": name, "cluster": cluster}),
        json!({"name": name, "context": {"cluster": name, "user": "u"}}),
        json!({"name": name, "user": {"token": "t"}}),
    ]
}

/// A listener that reads what a client sends first (its ClientHello) and then does `then`
/// with the connection before closing it. Bounded: the test connects a few times at most.
fn after_hello(then: fn(&mut std::net::TcpStream)) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        use std::io::Read;
        for s in l.incoming().take(4) {
            let Ok(mut s) = s else { return };
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf);
            then(&mut s);
        }
    });
    addr
}

/// A listener that answers any bytes with a plain HTTP 400 and closes, as an HTTP port does.
fn plain_http() -> SocketAddr {
    after_hello(|s| {
        use std::io::Write;
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    })
}

/// A listener that reads the ClientHello and closes, with a reset when `reset`: a proxy or
/// load balancer that drops TLS it will not pass.
fn dropping(reset: bool) -> SocketAddr {
    if reset {
        after_hello(|s| {
            let _ = socket2::SockRef::from(&*s).set_linger(Some(Duration::ZERO));
        })
    } else {
        after_hello(|_| {})
    }
}

/// A listener that never accepts, its queue (backlog 0) filled by one connection: a SYN to it
/// is dropped, as by a firewall, so a connect waits out meshctl's timeout.
fn silent() -> (socket2::Socket, std::net::TcpStream, SocketAddr) {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    let filler = std::net::TcpStream::connect(addr).unwrap();
    (s, filler, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_cause_is_named_with_its_fix() {
    let m = mesh().await;
    let http = plain_http();
    let (_listener, _filler, quiet) = silent();
    let contexts = [
        context("other-ca", &m.west.url(), m.east.ca_pem(), None),
        context(
            "other-name",
            &m.west.url(),
            m.west.ca_pem(),
            Some("api.example"),
        ),
        context("plain", &format!("https://{http}"), m.west.ca_pem(), None),
        context("closed", "https://127.0.0.1:1", m.west.ca_pem(), None),
        context("silent", &format!("https://{quiet}"), m.west.ca_pem(), None),
        context(
            "cut",
            &format!("https://{}", dropping(false)),
            m.west.ca_pem(),
            None,
        ),
        context(
            "reset",
            &format!("https://{}", dropping(true)),
            m.west.ca_pem(),
            None,
        ),
    ];
    let pick = |i: usize| contexts.iter().map(|c| c[i].clone()).collect::<Vec<_>>();
    let doc = json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "closed",
        "clusters": pick(0), "contexts": pick(1), "users": pick(2),
    });
    let kc = m.dir.path().join("unreachable-kubeconfig");
    std::fs::write(&kc, serde_yaml::to_string(&doc).unwrap()).unwrap();
    let mut args = vec![
        "check",
        "--kubeconfig",
        p(&kc),
        "--allow-loopback-server",
        "-o",
        "json",
    ];
    for c in [
        "other-ca",
        "other-name",
        "plain",
        "closed",
        "silent",
        "cut",
        "reset",
    ] {
        args.extend(["--context", c]);
    }
    let out = meshctl(&args).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let items = v["checks"].as_array().unwrap();
    let want = [
        (
            "other-ca",
            "its TLS certificate is not signed by the certificate authority given for it",
            "the cluster was recreated since the kubeconfig was written",
        ),
        (
            "other-name",
            "its TLS certificate is not for \"api.example\"; it is for localhost, kubernetes, ",
            "use one of those names in the server address, or as tls-server-name",
        ),
        (
            "plain",
            "what answers at that address does not speak TLS",
            "use the API server's HTTPS address and port",
        ),
        (
            "closed",
            "connection refused: nothing accepts connections at that address and port",
            "start the cluster",
        ),
        (
            "silent",
            "no connection within 5 s: the address is not reachable from here",
            "check the route to the cluster from this machine",
        ),
        (
            "cut",
            "the connection was closed before a whole answer came: the server, or a proxy, load balancer or firewall between, dropped it: tls handshake eof",
            "not a load balancer or proxy that filters TLS",
        ),
        (
            "reset",
            "the connection was closed before a whole answer came: the server, or a proxy, load balancer or firewall between, dropped it: Connection reset by peer",
            "not a load balancer or proxy that filters TLS",
        ),
    ];
    for (ctx, detail, hint) in want {
        let i = item(items, &format!("cluster {ctx}"), "API server reachable");
        assert_eq!(i["status"], "fail", "{i}");
        let d = i["detail"].as_str().unwrap();
        assert!(d.contains(detail), "{ctx}: {d}");
        assert!(
            !d.contains("ServiceError") && !d.contains("client error"),
            "{d}"
        );
        assert!(i["hint"].as_str().unwrap().contains(hint), "{ctx}: {i}");
    }
}

/// Outside `check`, the error says the cause and the fix on one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_names_the_cause_and_the_fix() {
    let m = mesh().await;
    let yaml = kubeconfig_yaml(&[("west", &m.west)]).replace(&m.west.url(), "https://127.0.0.1:1");
    let kc = m.dir.path().join("closed-kubeconfig");
    std::fs::write(&kc, yaml).unwrap();
    let out = meshctl(&remote_secret_args(p(&kc), &[])).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "cannot reach the API server of context \"west\" at https://127.0.0.1:1: connection \
             refused: nothing accepts connections at that address and port; start the cluster"
        ),
        "{err}"
    );
}
