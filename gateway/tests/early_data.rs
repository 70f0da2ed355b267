//! TLS 1.3 early data (0-RTT) through the classic passthrough listener, with real processes:
//! `openssl s_server -tls1_3 -early_data` as the catalog endpoint (catalog's workload
//! certificate, mutual TLS, ALPN `istio`), the gateway in process, and `openssl s_client`
//! twice: once for a ticket (`-sess_out`), once resuming it with `-early_data <file>`. The
//! gateway never terminates TLS, so the 0-RTT records that follow the ClientHello must reach
//! the endpoint unchanged and be accepted there; both ends say so in their output.
//!
//! What OpenSSL 3.0's tools need for this, found by trying:
//! - `s_server -early_data` alone advertises `max_early_data` 16384 in its tickets (the
//!   session prints `Max Early Data: 16384`); `-max_early_data` is not needed.
//! - s_server reads its stdin; EOF there ends the whole server (it prints `DONE`), so its
//!   stdin stays an open pipe for as long as it runs.
//! - With anti-replay on (s_server's default) tickets are single-use sessions in the server's
//!   cache, and a connection that ends without close_notify has its session dropped from it:
//!   the resumption is then a full handshake (`New`) and `Early data was rejected`. So the
//!   ticket connection ends by closing s_client's stdin (it sends close_notify), and the
//!   server issues one ticket (`-num_tickets 1`), so none is still unread when it does.
//! - The resumed session's ALPN must be the one negotiated again (RFC 8446 4.2.10): the
//!   gateway asks for an Istio ALPN anyway, and s_server selects `istio` both times.
//! - s_server writes the early data itself straight to stdout and its own lines through a
//!   buffer, so in its output the payload may come before `Early data received:`.
//! - s_client's `Early data was accepted` only repeats the server's EncryptedExtensions,
//!   sent before the server has read the 0-RTT record: with the bytes after the hello
//!   dropped, the client still prints it (then fails on `bad record mac`). The proof is
//!   the server's `Early data received:` with the payload, and s_client exiting cleanly.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdin, Command};

const PAYLOAD: &str = "0-RTT through the east-west gateway, 7f3c\n";

/// Output of a child process (stdout and stderr), collected as it comes.
type Output = Arc<Mutex<String>>;

fn collect(out: &Output, from: impl AsyncRead + Unpin + Send + 'static) {
    let sink = out.clone();
    tokio::spawn(async move {
        let mut from = from;
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
}

/// Spawns `cmd` with piped stdio, killed on drop; its stdin is kept open.
fn spawn(cmd: &mut Command) -> (Child, ChildStdin, Output) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn openssl");
    let out = Output::default();
    collect(&out, child.stdout.take().unwrap());
    collect(&out, child.stderr.take().unwrap());
    let stdin = child.stdin.take().unwrap();
    (child, stdin, out)
}

/// Waits (at most [`TIMEOUT`]) until `out` holds one of `needles`; returns the first found.
async fn wait_for(what: &str, out: &Output, needles: &[&'static str]) -> &'static str {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(n) = needles.iter().find(|n| out.lock().unwrap().contains(**n)) {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: none of {needles:?} within {TIMEOUT:?}; output:\n{}",
            out.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The endpoint, s_server with early data on, and the certificate directories.
struct Setup {
    gw: Gw,
    server: Output,
    _server: (Child, ChildStdin),
    dir: tempfile::TempDir,
}

impl Setup {
    async fn start() -> Setup {
        init();
        let dir = tempfile::tempdir().unwrap();
        mesh()
            .catalog
            .write_dir(&dir.path().join("catalog"), false)
            .unwrap();
        mesh()
            .webapp
            .write_dir(&dir.path().join("webapp"), false)
            .unwrap();
        std::fs::write(dir.path().join("early.txt"), PAYLOAD).unwrap();
        let backend = testkit::net::free_addr([127, 0, 0, 2].into()).unwrap();
        let east = dir.path().join("catalog");
        let (child, stdin, server) = spawn(
            Command::new("openssl")
                .args(["s_server", "-tls1_3", "-early_data", "-num_tickets", "1"])
                .arg("-accept")
                .arg(backend.to_string())
                .args(tls_files(&east))
                .args(["-Verify", "2", "-verify_return_error", "-alpn", "istio"]),
        );
        // s_server prints ACCEPT once it listens; no probe connection, which it would serve.
        wait_for("s_server start", &server, &["ACCEPT"]).await;
        let gw = gateway(&endpoints_yaml(
            CATALOG,
            backend.port(),
            &[(backend.ip(), "v1", true)],
        ))
        .await;
        gw.wait_generation(1).await;
        Setup {
            gw,
            server,
            _server: (child, stdin),
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// s_client as webapp's sidecar would connect through `to`, plus `extra`.
    fn client(&self, to: SocketAddr, extra: &[&Path]) -> (Child, ChildStdin, Output) {
        spawn(
            Command::new("openssl")
                .args(["s_client", "-tls1_3", "-connect", &to.to_string()])
                .args(["-servername", &sni(80, "", CATALOG), "-alpn", "istio"])
                .args(tls_files(&self.path("webapp")))
                .arg("-verify_return_error")
                .args(extra),
        )
    }

    /// A first connection through `to` that saves its ticket in `sess`; it ends with
    /// close_notify (stdin closed), which keeps the session in the server's cache.
    async fn ticket(&self, to: SocketAddr, sess: &Path) {
        let (c, stdin, out) = self.client(to, &[Path::new("-sess_out"), sess]);
        wait_for("first handshake", &out, &["Verify return code: 0 (ok)"]).await;
        let deadline = Instant::now() + TIMEOUT;
        while !std::fs::read_to_string(sess).is_ok_and(|s| s.contains("END SSL SESSION")) {
            assert!(
                Instant::now() < deadline,
                "no ticket in {TIMEOUT:?}: {}",
                out.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let out = closed_cleanly(c, stdin, &out).await;
        assert!(out.contains("New, TLSv1.3"), "{out}");
        assert!(out.contains("Early data was not sent"), "{out}");
    }

    /// Resumes `sess` through `to`, sending [`PAYLOAD`] as early data; returns s_client's
    /// output once it has closed.
    async fn early(&self, to: SocketAddr, sess: &Path) -> String {
        let early = self.path("early.txt");
        let args = [
            Path::new("-sess_in"),
            sess,
            Path::new("-early_data"),
            &early,
        ];
        let (c, stdin, out) = self.client(to, &args);
        let verdicts = [
            "Early data was accepted",
            "Early data was rejected",
            "Early data was not sent",
        ];
        wait_for("resumed handshake", &out, &verdicts).await;
        closed_cleanly(c, stdin, &out).await
    }

    /// What the endpoint printed about early data: `Early data received:` and the bytes, or
    /// why not. Waits (at most [`TIMEOUT`]) for its verdict on the second connection.
    async fn server_verdict(&self) -> String {
        let verdicts = |out: &str| {
            [
                "End of early data",
                "Early data was rejected",
                "No early data received",
            ]
            .iter()
            .map(|v| out.matches(v).count())
            .sum::<usize>()
        };
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let out = self.server.lock().unwrap().clone();
            if verdicts(&out) >= 2 {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "s_server gave no second verdict:\n{out}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `-cert`, `-key`, `-cert_chain`, `-CAfile` from a workload directory (Istio's layout).
fn tls_files(dir: &Path) -> Vec<std::ffi::OsString> {
    let mut a = Vec::new();
    for (flag, file) in [
        ("-cert", "cert.pem"),
        ("-key", "key.pem"),
        ("-cert_chain", "cert-chain.pem"),
        ("-CAfile", "root-cert.pem"),
    ] {
        a.push(flag.into());
        a.push(dir.join(file).into());
    }
    a
}

/// Asserts both ends agree the early data was accepted, and that the endpoint got it intact.
fn assert_accepted(client: &str, server: &str) {
    assert!(client.contains("Reused, TLSv1.3"), "not resumed:\n{client}");
    assert!(
        client.contains("Early data was accepted"),
        "client:\n{client}\nserver:\n{server}"
    );
    // The first (ticket) connection had none; this one had exactly ours.
    assert_eq!(
        server.matches("No early data received").count(),
        1,
        "{server}"
    );
    assert_eq!(
        server.matches("Early data received:").count(),
        1,
        "{server}"
    );
    assert_eq!(server.matches(PAYLOAD).count(), 1, "{server}");
    assert!(!server.contains("Early data was rejected"), "{server}");
}

async fn opened(gw: &Gw) -> f64 {
    let (_, body) = http_get(gw.admin, "/metrics").await;
    let series = format!(
        "gateway_connections_opened_total{{sni=\"{}\"}}",
        sni(80, "", CATALOG)
    );
    metric(&body, &series)
}

/// s_client (OpenSSL 3.0) writes its ClientHello, the compatibility ChangeCipherSpec and
/// the early data record in one write(2) (seen with strace), so the gateway's first read
/// holds 0-RTT bytes after the hello. It replays them all: the endpoint accepts the early
/// data and s_client reports it accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_data_through_the_gateway_is_accepted_by_the_endpoint() {
    let s = Setup::start().await;
    let sess = s.path("sess.pem");
    s.ticket(s.gw.listen, &sess).await;
    let client = s.early(s.gw.listen, &sess).await;
    let server = s.server_verdict().await;
    assert_accepted(&client, &server);
    assert_eq!(opened(&s.gw).await, 2.0);
}

/// The same through a relay that makes the delivery certain whatever the client's TLS stack
/// does: the whole first flight (hello, ChangeCipherSpec, early data) in one write, so one
/// segment on loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_data_in_the_hellos_segment_is_replayed_with_it() {
    early_data_through_relay(Delivery::OneWrite).await;
}

/// And the other way round: the hello alone, the 0-RTT records 200 ms later, after the
/// gateway has routed the hello and connected upstream; they are spliced, not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_data_after_the_hello_is_routed_is_forwarded() {
    early_data_through_relay(Delivery::HelloThenRest).await;
}

#[derive(Clone, Copy, Debug)]
enum Delivery {
    OneWrite,
    HelloThenRest,
}

/// A ticket straight through the gateway, then the early-data connection through a relay
/// that collects s_client's first flight and hands it to the gateway as `delivery` says.
async fn early_data_through_relay(delivery: Delivery) {
    let s = Setup::start().await;
    let sess = s.path("sess.pem");
    s.ticket(s.gw.listen, &sess).await;
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let gw = s.gw.listen;
    let first = tokio::spawn(async move {
        let (mut client, _) = relay.accept().await.unwrap();
        let first = first_flight(&mut client).await;
        let mut upstream = TcpStream::connect(gw).await.unwrap();
        upstream.set_nodelay(true).unwrap();
        match delivery {
            Delivery::OneWrite => upstream.write_all(&first).await.unwrap(),
            Delivery::HelloThenRest => {
                let hello = record_len(&first).unwrap();
                upstream.write_all(&first[..hello]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
                upstream.write_all(&first[hello..]).await.unwrap();
            }
        }
        tokio::spawn(async move {
            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
        });
        first
    });
    let client = s.early(relay_addr, &sess).await;
    let first = tokio::time::timeout(TIMEOUT, first).await.unwrap().unwrap();
    // Handshake (the hello, one record from s_client), ChangeCipherSpec, application data
    // (the early data).
    assert_eq!(record_types(&first), [22, 20, 23], "{delivery:?}");
    let server = s.server_verdict().await;
    assert_accepted(&client, &server);
    assert_eq!(opened(&s.gw).await, 2.0);
}

/// Reads the client's first flight: whole TLS records up to and including the first
/// application data record (the early data), bounded in time and size.
async fn first_flight(client: &mut TcpStream) -> Vec<u8> {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !(complete_records(&buf) && record_types(&buf).contains(&23)) {
        assert!(buf.len() < 64 * 1024, "first flight too long");
        let n = tokio::time::timeout_at(deadline, client.read_buf(&mut buf))
            .await
            .expect("the client's first flight within TIMEOUT")
            .unwrap();
        assert!(n > 0, "client closed during its first flight");
    }
    buf
}

/// The length of the first record of `buf` with its header, if it is whole.
fn record_len(buf: &[u8]) -> Option<usize> {
    let [_, _, _, hi, lo, ..] = buf else {
        return None;
    };
    let len = 5 + usize::from(u16::from_be_bytes([*hi, *lo]));
    (len <= buf.len()).then_some(len)
}

/// Content types of the whole records at the start of `buf`.
fn record_types(buf: &[u8]) -> Vec<u8> {
    let mut kinds = Vec::new();
    let mut rest = buf;
    while let [kind, _, _, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        let Some(next) = tail.get(len..) else { break };
        kinds.push(*kind);
        rest = next;
    }
    kinds
}

/// Whether `buf` ends exactly at a record boundary.
fn complete_records(buf: &[u8]) -> bool {
    let mut rest = buf;
    while let [_, _, _, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo]));
        match tail.get(len..) {
            Some(next) => rest = next,
            None => return false,
        }
    }
    rest.is_empty()
}

/// Closes s_client's stdin (it sends close_notify and exits) and returns its output once it
/// has exited 0.
async fn closed_cleanly(mut c: Child, stdin: ChildStdin, out: &Mutex<String>) -> String {
    drop(stdin);
    let status = tokio::time::timeout(TIMEOUT, c.wait())
        .await
        .expect("s_client exits");
    let out = out.lock().unwrap().clone();
    assert!(status.unwrap().success(), "{out}");
    out
}
