//! Calls from a workload's namespace: one `mesh-workload call` per request, or a long-lived
//! `openssl s_client` connection.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use testkit::mesh::WEBAPP;
use testkit::proc::ChildGuard;

use crate::fixture::Mesh;
use crate::preflight::Bins;
use crate::procs::one_shot;
use crate::{EAST_GW, WPOD, catalog_sni};

/// A workload identity in a namespace, calling with `mesh-workload call`.
#[derive(Clone)]
pub struct Caller {
    pub bins: Arc<Bins>,
    pub ns: String,
    pub certs: PathBuf,
}

pub struct Call {
    pub ok: bool,
    pub started: Instant,
    pub took: Duration,
    pub server_id: Option<String>,
    pub reply: Option<String>,
    pub stdout: String,
    pub stderr: String,
}

impl Call {
    pub fn describe(&self) -> String {
        format!(
            "ok={} in {:?}\nstdout: {}\nstderr: {}",
            self.ok,
            self.took,
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }

    pub fn error_line(&self) -> String {
        self.stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim()
            .to_string()
    }
}

impl Caller {
    pub fn call(&self, connect: &str, sni: &str, expect_peer: &str, request: &str) -> Call {
        let started = Instant::now();
        let flags = [
            "--connect",
            connect,
            "--sni",
            sni,
            "--expect-peer",
            expect_peer,
            "--request",
            request,
        ];
        let args = [
            OsStr::new("call"),
            OsStr::new("--certs"),
            self.certs.as_os_str(),
        ]
        .into_iter()
        .chain(flags.map(OsStr::new));
        let out = one_shot(&self.ns, &self.bins.workload, args);
        Call {
            ok: out.ok,
            started,
            took: started.elapsed(),
            server_id: out.field("server identity:"),
            reply: out.field("reply:"),
            stderr: out.stderr,
            stdout: out.stdout,
        }
    }
}

/// A long-lived mTLS connection from west's webapp to catalog through the east gateway:
/// `openssl s_client` with webapp's certificate, one request line per exchange.
pub struct LongConn {
    child: ChildGuard,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl LongConn {
    pub fn open(m: &Mesh) -> LongConn {
        let certs = m.certs("west", WEBAPP);
        let child = Command::new("ip")
            .args(["netns", "exec", &m.ns(WPOD)])
            .args(["setpriv", "--pdeathsig", "KILL", "openssl", "s_client"])
            .args(["-connect", EAST_GW, "-servername", &catalog_sni()])
            .args(["-alpn", "istio-peer-exchange,istio"])
            .arg("-cert")
            .arg(certs.join("cert.pem"))
            .arg("-key")
            .arg(certs.join("key.pem"))
            .arg("-cert_chain")
            .arg(m.dir.path().join("west-ca-cert.pem"))
            .arg("-CAfile")
            .arg(certs.join("root-cert.pem"))
            .args(["-verify_return_error", "-quiet", "-no_ign_eof"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn openssl s_client");
        let mut child = ChildGuard::new(child);
        let stdin = child.stdin.take();
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("piped");
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err = child.stderr.take().expect("piped");
        let sink = stderr.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        LongConn {
            child,
            stdin,
            lines,
            stderr,
        }
    }

    /// Sends one line and returns catalog's reply to it.
    pub fn exchange(&mut self, text: &str, timeout: Duration) -> String {
        let stdin = self.stdin.as_mut().expect("connection open");
        writeln!(stdin, "{text}")
            .and_then(|_| stdin.flush())
            .unwrap_or_else(|e| {
                panic!(
                    "long connection: write failed: {e}; s_client: {}",
                    self.stderr.lock().unwrap()
                )
            });
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        panic!(
            "long connection: no reply to {text:?} within {timeout:?}; s_client: {}",
            self.stderr.lock().unwrap()
        );
    }

    /// Closes stdin (s_client sends close_notify and exits) and waits.
    pub fn close(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.stdin = None;
        self.child.wait_exit(timeout)
    }
}
