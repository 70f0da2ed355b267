//! Chains with more than one intermediate level through the real binary: root → offline
//! intermediate (`certs intermediate --path-len 1`) → cluster CAs (`--parent`), then
//! `certs verify` naming the wrong link, and `check` judging such a `cacerts` in a cluster.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;

/// An offline intermediate "Offline CA" (pathlen 1) signed by the root in `root`, into `out`.
async fn offline_ca(m: &Mesh, root: &Path, out: &Path) {
    let (cert, key) = (root.join("root-cert.pem"), root.join("root-key.pem"));
    m.ok(&intermediate_args(
        &cert,
        &key,
        "offline",
        out,
        &["--path-len", "1", "--common-name", "Offline CA"],
    ))
    .await;
}

/// root/, offline/ (pathlen 1), west/ and east/ signed by offline/.
async fn two_levels(m: &Mesh) -> std::path::PathBuf {
    let d = m.dir.path().join("pki2");
    let (root, off) = (d.join("root"), d.join("offline"));
    m.ok(&["certs", "root", "--out", p(&root)]).await;
    offline_ca(m, &root, &off).await;
    for c in ["west", "east"] {
        m.ok(&[
            "certs",
            "intermediate",
            "--parent",
            p(&off),
            "--cluster",
            c,
            "--out",
            p(&d.join(c)),
        ])
        .await;
    }
    d
}

#[tokio::test]
async fn certs_makes_and_verifies_a_two_level_chain_and_names_a_broken_link() {
    let m = mesh().await;
    let d = two_levels(&m).await;
    let (west, east) = (d.join("west"), d.join("east"));
    let out = m.ok(&["certs", "verify", p(&west), p(&east)]).await;
    assert!(
        out.contains("west: OK") && out.contains("east: OK"),
        "{out}"
    );
    let chain = std::fs::read_to_string(west.join("cert-chain.pem")).unwrap();
    assert_eq!(
        chain.matches("BEGIN CERTIFICATE").count(),
        3,
        "ca, offline, root"
    );

    // A workload from the two-level CA carries both CAs.
    let wl = d.join("wl");
    m.ok(&workload_args(&west, "ns", "sa", &wl, &[])).await;
    let wchain = std::fs::read_to_string(wl.join("cert-chain.pem")).unwrap();
    assert_eq!(wchain.matches("BEGIN CERTIFICATE").count(), 3);

    // The offline CA dropped from cert-chain.pem: verify names the file and the link.
    let ca = std::fs::read_to_string(west.join("ca-cert.pem")).unwrap();
    let root = std::fs::read_to_string(west.join("root-cert.pem")).unwrap();
    let off = std::fs::read_to_string(d.join("offline/ca-cert.pem")).unwrap();
    std::fs::write(west.join("cert-chain.pem"), format!("{ca}{root}")).unwrap();
    let out = m.fails(&["certs", "verify", p(&west)]).await;
    assert!(out.contains("west/ca-cert.pem: does not chain to root-cert.pem: its issuer \"O=Istio, CN=Offline CA, L=offline\""), "{out}");
    // The offline CA where cert-chain.pem should hold the cluster CA's issuer: wrong order.
    std::fs::write(west.join("cert-chain.pem"), format!("{ca}{root}{off}")).unwrap();
    let out = m.fails(&["certs", "verify", p(&west)]).await;
    assert!(
        out.contains("certificate 2 is a root (self-signed), which can only come last"),
        "{out}"
    );

    // --parent with a pathlen-0 CA is refused with the reason, and nothing is written.
    let out = m
        .fails(&[
            "certs",
            "intermediate",
            "--parent",
            p(&east),
            "--cluster",
            "x",
            "--out",
            p(&d.join("x")),
        ])
        .await;
    assert!(
        out.contains("has pathlen 0, so it cannot sign a CA"),
        "{out}"
    );
    assert!(!d.join("x").exists());
    let out = meshctl(&[
        "certs",
        "intermediate",
        "--cluster",
        "x",
        "--out",
        p(&d.join("x")),
    ])
    .await;
    assert!(!out.status.success());
    let out = text(&out);
    assert!(
        out.contains("--root-cert") || out.contains("--parent"),
        "{out}"
    );
}

#[tokio::test]
async fn check_accepts_a_two_level_cacerts_and_names_a_broken_link() {
    let m = mesh().await;
    let d = two_levels(&m).await;
    let west = d.join("west");
    m.ok(&cacerts_apply_args(m.kc(), p(&west), "west", &[]))
        .await;
    let cacerts_item = |out: &str| -> Value {
        let v: Value = serde_json::from_str(out).unwrap();
        check_item(&v, "cluster west", "cacerts present and valid")
    };
    let out = meshctl(&[
        "check",
        "--kubeconfig",
        m.kc(),
        "--context",
        "west",
        "-o",
        "json",
    ])
    .await;
    let item = cacerts_item(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(item["status"], "pass", "{item}");

    // The offline CA in the Secret's chain replaced by a same-named impostor.
    offline_ca(&m, &d.join("root"), &d.join("impostor")).await;
    let mut s = secret(&m.west, "cacerts").unwrap();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
    let chain = format!(
        "{}{}{}",
        read("west/ca-cert.pem"),
        read("impostor/ca-cert.pem"),
        read("root/root-cert.pem")
    );
    s["data"]["cert-chain.pem"] = Value::String(b64.encode(chain));
    m.west.store().apply(s).unwrap();
    let out = meshctl(&[
        "check",
        "--kubeconfig",
        m.kc(),
        "--context",
        "west",
        "-o",
        "json",
    ])
    .await;
    let item = cacerts_item(&String::from_utf8_lossy(&out.stdout));
    assert_eq!(item["status"], "fail", "{item}");
    assert!(
        item["detail"].as_str().unwrap().contains("cert-chain.pem: link 1→2: certificate 2 (\"O=Istio, CN=Offline CA, L=offline\") has the issuer's name but its key does not verify"),
        "{item}"
    );
}
