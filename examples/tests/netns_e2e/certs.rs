//! The mesh's certificates, made with `meshctl certs` as a user would: a root, one
//! intermediate per cluster (`pki/west`, `pki/east`, Istio's `cacerts` layout), and a
//! workload certificate per identity.
//!
//! Each workload directory is laid out as Kubernetes mounts a Secret: the files are symlinks
//! into `..data`, itself a symlink to a versioned directory (`..v0`, `..v1`, …) that is
//! swapped with one rename. A process reading the files never sees half of an update, as a
//! pod never does; `mesh-workload serve` and the gateway's `--hbone-certs` poll them.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use testkit::mesh::{CATALOG, EAST_CLUSTER, NAMESPACE, SIMPLE_BACKEND, WEBAPP, WEST_CLUSTER};

use crate::fixture::Mesh;
use crate::procs::run;

/// The east gateway's identity, as `meshctl gateway install` names it.
pub const GATEWAY_NS: &str = "istio-system";
pub const GATEWAY_SA: &str = "istio-eastwestgateway";

/// Every identity with a certificate directory: (cluster dir, namespace, service account).
pub const IDENTITIES: [(&str, &str, &str); 5] = [
    ("west", NAMESPACE, WEBAPP),
    ("west", NAMESPACE, SIMPLE_BACKEND),
    ("east", NAMESPACE, CATALOG),
    ("east", NAMESPACE, SIMPLE_BACKEND),
    ("east", GATEWAY_NS, GATEWAY_SA),
];

const FILES: [&str; 4] = ["cert.pem", "key.pem", "cert-chain.pem", "root-cert.pem"];

impl Mesh {
    /// `pki/<name>`: a root (`root`, `root-new`) or a cluster CA (`west`, `east`).
    pub fn pki(&self, name: &str) -> PathBuf {
        self.dir.path().join("pki").join(name)
    }

    pub fn write_pki(&mut self) {
        let root = self.pki("root");
        self.meshctl(&[
            OsStr::new("certs"),
            "root".as_ref(),
            "--out".as_ref(),
            root.as_os_str(),
        ]);
        for (dir, cluster) in [("west", WEST_CLUSTER), ("east", EAST_CLUSTER)] {
            self.intermediate(&root, cluster, &self.pki(dir), false);
        }
        self.issue_all(&["west", "east"]);
        // openssl s_client sends its leaf plus this intermediate.
        std::fs::copy(
            self.pki("west").join("ca-cert.pem"),
            self.dir.path().join("west-ca-cert.pem"),
        )
        .expect("copy west CA");
    }

    /// `meshctl certs intermediate` for `cluster` from the root in `root_dir`, into `out`.
    pub fn intermediate(&self, root_dir: &Path, cluster: &str, out: &Path, force: bool) {
        let mut args: Vec<&OsStr> = ["certs", "intermediate", "--cluster", cluster]
            .map(OsStr::new)
            .to_vec();
        let (cert, key) = (
            root_dir.join("root-cert.pem"),
            root_dir.join("root-key.pem"),
        );
        args.extend([
            OsStr::new("--root-cert"),
            cert.as_os_str(),
            OsStr::new("--root-key"),
            key.as_os_str(),
            OsStr::new("--out"),
            out.as_os_str(),
        ]);
        if force {
            args.push(OsStr::new("--force"));
        }
        self.meshctl(&args);
    }

    /// Issues every identity of `clusters` from its cluster's CA directory as it is now, and
    /// swaps each workload directory to the new set at once.
    pub fn issue_all(&mut self, clusters: &[&str]) {
        self.cert_version += 1;
        let v = self.cert_version;
        for (cluster, ns, sa) in IDENTITIES {
            if clusters.contains(&cluster) {
                self.issue(cluster, ns, sa, v);
            }
        }
    }

    fn issue(&self, cluster: &str, ns: &str, sa: &str, version: u32) {
        let dir = self.certs(cluster, sa);
        std::fs::create_dir_all(&dir).expect("create workload dir");
        let versioned = format!("..v{version}");
        let (ca, out) = (self.pki(cluster), dir.join(&versioned));
        self.meshctl(&[
            OsStr::new("certs"),
            OsStr::new("workload"),
            OsStr::new("-n"),
            OsStr::new(ns),
            OsStr::new("-s"),
            OsStr::new(sa),
            OsStr::new("--ca"),
            ca.as_os_str(),
            OsStr::new("--out"),
            out.as_os_str(),
        ]);
        swap_data(&dir, &versioned);
    }

    /// Runs `meshctl <args>`; panics with its output when it fails.
    pub fn meshctl(&self, args: &[&OsStr]) -> String {
        let out = run(
            Command::new(&self.bins.meshctl).args(args),
            Duration::from_secs(30),
        );
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "meshctl {args:?} failed: {text}");
        text
    }
}

/// Points `dir/..data` at `dir/<target>` with one rename (creating the file symlinks the
/// first time), as the kubelet updates a Secret volume.
fn swap_data(dir: &Path, target: &str) {
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).expect("symlink ..data_tmp");
    std::fs::rename(&tmp, dir.join("..data")).expect("swap ..data");
    for f in FILES {
        let link = dir.join(f);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(f), &link)
                .expect("symlink a certificate file");
        }
    }
}

/// Concatenated PEM files: a trust bundle of several roots.
pub fn bundle(roots: &[&Path]) -> String {
    roots
        .iter()
        .map(|r| std::fs::read_to_string(r.join("root-cert.pem")).expect("read root"))
        .collect()
}
