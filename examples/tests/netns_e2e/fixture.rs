//! The running mesh: namespaces, PKI, processes, and requests to the gateways' admin ports.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::ADMIN_PORT;
use crate::caller::Caller;
use crate::preflight::Bins;
use crate::procs::{Proc, run};
use crate::topology::Namespaces;

/// Fields drop in order: processes are killed, then namespaces deleted, then files removed.
pub struct Mesh {
    pub procs: Vec<Proc>,
    pub namespaces: Namespaces,
    pub dir: tempfile::TempDir,
    pub bins: Arc<Bins>,
    pub prefix: String,
    /// The last `..v<n>` issued into the workload directories (see `certs.rs`).
    pub cert_version: u32,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if thread::panicking() {
            for p in &self.procs {
                eprintln!("---- last log lines of {} ----\n{}", p.label, p.tail(40));
            }
        }
    }
}

impl Mesh {
    pub fn up(bins: Bins) -> Mesh {
        let prefix = format!("mfw{}", std::process::id());
        let mut m = Mesh {
            procs: Vec::new(),
            namespaces: Namespaces::default(),
            dir: tempfile::Builder::new()
                .prefix(&format!("{prefix}-netns-e2e-"))
                .tempdir()
                .expect("create temp dir"),
            bins: Arc::new(bins),
            prefix,
            cert_version: 0,
        };
        m.build_topology();
        m.write_pki();
        m.start_workloads();
        m.start_destination_ztunnels();
        m.start_gateways();
        m
    }

    pub fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    pub fn certs(&self, cluster: &str, sa: &str) -> PathBuf {
        self.dir.path().join(cluster).join(sa)
    }

    pub fn caller(&self, ns_role: &str, cluster: &str, sa: &str) -> Caller {
        Caller {
            bins: self.bins.clone(),
            ns: self.ns(ns_role),
            certs: self.certs(cluster, sa),
        }
    }

    pub fn proc(&self, label: &str) -> &Proc {
        self.procs
            .iter()
            .find(|p| p.label == label)
            .unwrap_or_else(|| panic!("no process {label}"))
    }

    pub fn proc_mut(&mut self, label: &str) -> &mut Proc {
        self.procs
            .iter_mut()
            .find(|p| p.label == label)
            .unwrap_or_else(|| panic!("no process {label}"))
    }

    /// HTTP/1.0 GET from inside a namespace (bash's /dev/tcp): (status, body).
    pub fn http_get(&self, role: &str, ip: &str, port: u16, path: &str) -> Option<(u16, String)> {
        let out = run(
            Command::new("ip")
                .args(["netns", "exec", &self.ns(role), "bash", "-c"])
                .args([
                    r#"exec 3<>"/dev/tcp/$1/$2" || exit 7
printf 'GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' "$3" "$1" >&3
cat <&3"#,
                    "http_get",
                    ip,
                    &port.to_string(),
                    path,
                ]),
            Duration::from_secs(5),
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let status = text
            .lines()
            .next()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((status, body))
    }

    pub fn ready_status(&self, role: &str, ip: &str) -> Option<u16> {
        self.http_get(role, ip, ADMIN_PORT, "/healthz/ready")
            .map(|(s, _)| s)
    }

    pub fn metrics(&self, role: &str, ip: &str) -> String {
        match self.http_get(role, ip, ADMIN_PORT, "/metrics") {
            Some((200, body)) => body,
            other => panic!("GET /metrics on {ip}:{ADMIN_PORT} failed: {other:?}"),
        }
    }
}
