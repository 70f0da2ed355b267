//! `mesh-workload serve` follows its certificate files (a root rotation on file-mounted
//! certificates): a caller from a new root is refused while the server trusts only the old
//! one, admitted once `root-cert.pem` holds both, and a half-written set (a key that does not
//! match the leaf) is refused while the previous certificates keep serving. The real binary,
//! on 127.0.0.1 only.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use examples::workload;
use pki::{IntermediateOptions, RootCa, RootOptions, WorkloadOptions};
use testkit::mesh::{CATALOG, NAMESPACE, WEBAPP, outbound, spiffe_id};
use testkit::mtls::Identity;
use testkit::proc::ChildGuard;
use testkit::wait::wait_until;

fn issue(root: &RootCa, cluster: &str, sa: &str, dir: &Path) {
    let ca = root
        .issue_intermediate(&IntermediateOptions::new(cluster))
        .unwrap();
    ca.issue_workload(&WorkloadOptions::new(NAMESPACE, sa))
        .unwrap()
        .write_dir(dir, true)
        .unwrap();
}

fn call(certs: &Path, addr: std::net::SocketAddr) -> Result<String, String> {
    let id = Identity::load_dir(certs).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(workload::call(
        &id,
        addr,
        &outbound(80, CATALOG),
        Some(&spiffe_id(CATALOG)),
        "ping",
    ))
    .map(|r| r.reply)
}

#[test]
fn serve_reloads_a_changed_trust_bundle_and_keeps_serving_on_a_bad_set() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let (server, old_client, new_client) = (
        dir.path().join("catalog"),
        dir.path().join("webapp-old"),
        dir.path().join("webapp-new"),
    );
    let old = RootCa::generate(&RootOptions::default()).unwrap();
    let new = RootCa::generate(&RootOptions::default()).unwrap();
    issue(&old, "east-cluster", CATALOG, &server);
    issue(&old, "west-cluster", WEBAPP, &old_client);
    issue(&new, "west-cluster", WEBAPP, &new_client);
    // The new-root caller trusts both roots (it was issued after `prepare`).
    let both = format!("{}{}", old.cert_pem(), new.cert_pem());
    std::fs::write(new_client.join("root-cert.pem"), &both).unwrap();

    let mut child = ChildGuard::spawn(
        Command::new(env!("CARGO_BIN_EXE_mesh-workload"))
            .args(["serve", "--listen", "127.0.0.1:0", "--name", "catalog"])
            .arg("--certs")
            .arg(&server)
            .args(["--cert-poll-ms", "100"])
            .stdin(Stdio::null())
            .stderr(Stdio::piped()),
    )
    .unwrap();
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let stderr = child.stderr.take().unwrap();
    let sink = log.clone();
    thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(l);
        }
    });
    let has = |needle: &str| log.lock().unwrap().iter().any(|l| l.contains(needle));
    wait_until("serving line", Duration::from_secs(10), || {
        has("serving mTLS on")
    });
    let addr: std::net::SocketAddr = log.lock().unwrap()[0]
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();

    let r = call(&old_client, addr).unwrap();
    assert!(r.contains(&spiffe_id(WEBAPP)), "{r}");
    let refused = call(&new_client, addr);
    assert!(
        refused.is_err(),
        "a new-root caller must be refused while catalog trusts only the old root: {refused:?}"
    );

    // prepare: catalog's bundle becomes old + new; the running process picks it up.
    std::fs::write(server.join("root-cert.pem"), &both).unwrap();
    wait_until("reload", Duration::from_secs(10), || {
        has("certificates reloaded")
    });
    let r = call(&new_client, addr).unwrap();
    assert!(r.starts_with("catalog: ping"), "{r}");
    call(&old_client, addr).unwrap();

    // A key that does not match the leaf (a set caught half-way): refused, old set serves.
    let stray = dir.path().join("stray");
    issue(&new, "east-cluster", CATALOG, &stray);
    std::fs::copy(stray.join("key.pem"), server.join("key.pem")).unwrap();
    wait_until("refused reload", Duration::from_secs(10), || {
        has("certificates not reloaded")
    });
    call(&new_client, addr).unwrap();
    call(&old_client, addr).unwrap();
}
