//! SIGHUP never ends the gateway binary: with an endpoints file it reloads, also when it
//! arrives during start-up while the first (large) file is being read; with Kubernetes
//! discovery it is logged (at most one line per 10 s) and ignored. Its default action used to
//! end the process with status 129 and no log line: in Kubernetes mode no handler was ever
//! installed, and the file source installed its own only after the first read.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use k8s_test_server::TestApiServer;
use serde_json::Value;
use testkit::proc::ChildGuard;

/// The binary, with its JSON log lines collected as they come; unlike
/// [`GatewayProcess::spawn`] it does not wait for the listeners, so a test can signal it
/// during start-up.
struct Starting {
    child: ChildGuard,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Starting {
    fn spawn(mut cmd: Command) -> Starting {
        use std::io::BufRead;
        cmd.args(["--log-format", "json", "--hbone-listen", "off"])
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--drain-grace", "100ms", "--drain-timeout", "2s"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let mut child = ChildGuard::spawn(&mut cmd).expect("spawn gateway");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let v = serde_json::from_str(&line)
                    .unwrap_or_else(|_| serde_json::json!({ "raw": line }));
                sink.lock().unwrap().push(v);
            }
        });
        Starting { child, lines }
    }

    /// The first line whose message is `message`, waiting up to `within`; fails the test
    /// (with the exit status when the process is gone) otherwise.
    fn wait_message(&mut self, message: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = self.find(message) {
                return v;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Its last lines may still be in the pipe.
                std::thread::sleep(Duration::from_millis(100));
                if let Some(v) = self.find(message) {
                    return v;
                }
                panic!(
                    "the gateway exited ({status}) before logging {message:?}; log: {:?}",
                    self.lines.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {message:?} in {within:?}; log: {:?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn find(&self, message: &str) -> Option<Value> {
        let lines = self.lines.lock().unwrap();
        lines.iter().find(|v| v["message"] == message).cloned()
    }

    fn count(&self, message: &str) -> usize {
        let lines = self.lines.lock().unwrap();
        lines.iter().filter(|v| v["message"] == message).count()
    }

    fn hangup(&self) {
        assert!(self.child.signal("HUP"), "kill -HUP failed");
    }

    fn assert_alive(&mut self, when: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{when}: the gateway exited ({status}); log: {:?}",
                self.lines.lock().unwrap()
            );
        }
    }

    /// SIGTERM, then exit 0 within [`TIMEOUT`].
    fn terminate(mut self) {
        assert!(self.child.signal("TERM"));
        let status = self.child.wait_exit(TIMEOUT).expect("exits after SIGTERM");
        assert!(status.success(), "{status}");
    }
}

/// A plain TCP stand-in for the catalog workload on 127.0.0.2: it checks that a connection
/// carries exactly `hello`, then answers `ok`.
fn serve_hellos(hello: Vec<u8>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.2:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let hello = hello.clone();
            std::thread::spawn(move || {
                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                let mut got = vec![0; hello.len()];
                if s.read_exact(&mut got).is_ok() && got == hello {
                    let _ = s.write_all(b"ok");
                }
            });
        }
    });
    addr
}

/// One connection through the gateway: the hello reaches the workload, its answer comes back.
fn forwards(listen: SocketAddr, hello: &[u8]) {
    let mut c = TcpStream::connect(listen).unwrap();
    c.set_read_timeout(Some(TIMEOUT)).unwrap();
    c.write_all(hello).unwrap();
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer);
    assert_eq!(answer, b"ok", "the connection was not forwarded");
}

fn addr_of(v: &Value, key: &str) -> SocketAddr {
    v[key].as_str().unwrap().parse().unwrap()
}

fn catalog_hello() -> Vec<u8> {
    rustls_hello(default_client(), &sni(80, "", CATALOG))
}

#[test]
fn sighup_during_the_first_read_of_a_large_file_is_a_reload_once_started() {
    let hello = catalog_hello();
    let backend = serve_hellos(hello.clone());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endpoints.yaml");
    // The catalog route, then 40,000 endpoints (2.4 MB): the first read takes long enough for
    // a SIGHUP to land in it.
    let mut yaml = endpoints_yaml(CATALOG, backend.port(), &[(backend.ip(), "v1", true)]);
    for s in 0..400 {
        yaml.push_str(&service_yaml(s, 100));
    }
    std::fs::write(&path, &yaml).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.arg("--endpoints").arg(&path);
    let mut gw = Starting::spawn(cmd);
    // Logged once SIGHUP is taken over, before the file is read.
    gw.wait_message("starting gateway", TIMEOUT);
    gw.hangup();
    let t_hup = Instant::now();
    let up = gw.wait_message("gateway listening", Duration::from_secs(60));
    eprintln!("listening {:?} after the SIGHUP", t_hup.elapsed());
    gw.assert_alive("after a SIGHUP during start-up");
    // The SIGHUP received while reading is a reload once running.
    gw.wait_message("SIGHUP: reloading endpoints file", TIMEOUT);
    let (listen, admin) = (addr_of(&up, "listen_addr"), addr_of(&up, "admin_addr"));
    assert_eq!(admin_get(admin, "/healthz/ready").0, 200);
    forwards(listen, &hello);

    // And one once running: read again, still serving.
    let before = gw.count("SIGHUP: reloading endpoints file");
    gw.hangup();
    let deadline = Instant::now() + TIMEOUT;
    while gw.count("SIGHUP: reloading endpoints file") == before {
        gw.assert_alive("after a SIGHUP once running");
        assert!(
            Instant::now() < deadline,
            "the second SIGHUP was not a reload"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    gw.assert_alive("after a SIGHUP once running");
    assert_eq!(admin_get(admin, "/healthz/ready").0, 200);
    forwards(listen, &hello);
    gw.terminate();
}

#[test]
fn sighup_with_kubernetes_discovery_is_logged_and_ignored() {
    let rt = multi_thread_runtime(2);
    let api = rt.block_on(TestApiServer::start("east")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig("east")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    cmd.arg("--kubeconfig").arg(&kubeconfig);
    let mut gw = Starting::spawn(cmd);
    // During start-up (before the first sync), then three once running.
    gw.wait_message("starting gateway", TIMEOUT);
    gw.hangup();
    let up = gw.wait_message("gateway listening", TIMEOUT);
    let admin = addr_of(&up, "admin_addr");
    gw.wait_message(
        "SIGHUP ignored: the route table follows the Kubernetes API; nothing to reload",
        TIMEOUT,
    );
    let deadline = Instant::now() + TIMEOUT;
    while admin_get(admin, "/healthz/ready").0 != 200 {
        gw.assert_alive("waiting for the first sync");
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..3 {
        gw.hangup();
        std::thread::sleep(Duration::from_millis(100));
        gw.assert_alive("after a SIGHUP once running");
    }
    std::thread::sleep(Duration::from_millis(300));
    gw.assert_alive("after four SIGHUPs");
    // Within 10 s of the first line, the others are counted, not logged.
    assert_eq!(
        gw.count("SIGHUP ignored: the route table follows the Kubernetes API; nothing to reload"),
        1
    );
    assert_eq!(admin_get(admin, "/healthz/ready").0, 200);
    gw.terminate();
    drop(api);
}
