//! `meshctl certs renew`: a new intermediate for one cluster from the same root, written in
//! place (0600, atomic, never through a symlink) and applied as `cacerts`; `--dry-run`
//! changes nothing and prints no key; another root is refused.

mod common;

use std::os::unix::fs::PermissionsExt;

use base64::Engine as _;
use common::*;

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

fn secret_file(m: &Mesh, f: &str) -> String {
    let s = secret(&m.west, "cacerts").unwrap();
    let b = base64::engine::general_purpose::STANDARD
        .decode(s["data"][f].as_str().unwrap())
        .unwrap();
    String::from_utf8(b).unwrap()
}

#[tokio::test]
async fn renew_issues_a_new_key_under_the_same_root_and_applies_it() {
    let m = mesh().await;
    let west = m.certs.join("west");
    m.ok(&cacerts_apply_args(m.kc(), p(&west), "west", &[]))
        .await;
    let before_files: Vec<String> = [
        "ca-cert.pem",
        "ca-key.pem",
        "cert-chain.pem",
        "root-cert.pem",
    ]
    .iter()
    .map(|f| read(&west.join(f)))
    .collect();
    let before = secret(&m.west, "cacerts").unwrap();
    let renew = |extra: &'static [&'static str]| renew_west_args(&m, &m.certs, extra);

    // Dry run: the Secret is shown with the key redacted; no file, no object changes.
    let args = renew(&["--dry-run"]);
    let out = m
        .ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    assert!(
        out.contains("kind: Secret") && out.contains("<redacted private key"),
        "{out}"
    );
    assert!(!out.contains("PRIVATE KEY-----"), "{out}");
    for (f, old) in [
        "ca-cert.pem",
        "ca-key.pem",
        "cert-chain.pem",
        "root-cert.pem",
    ]
    .iter()
    .zip(&before_files)
    {
        assert_eq!(&read(&west.join(f)), old, "{f} changed by --dry-run");
    }
    assert_eq!(
        secret(&m.west, "cacerts").unwrap(),
        before,
        "--dry-run changed cacerts"
    );

    // A symlink at ca-key.pem is replaced, never followed.
    let target = m.dir.path().join("elsewhere.pem");
    std::fs::write(&target, "not a key").unwrap();
    std::fs::remove_file(west.join("ca-key.pem")).unwrap();
    std::os::unix::fs::symlink(&target, west.join("ca-key.pem")).unwrap();

    let args = renew(&[]);
    let out = m
        .ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    assert!(out.contains("cacerts applied in context \"west\""), "{out}");
    assert!(!out.contains("PRIVATE KEY"), "{out}");
    assert_eq!(read(&target), "not a key");
    let key_meta = std::fs::symlink_metadata(west.join("ca-key.pem")).unwrap();
    assert!(key_meta.file_type().is_file());
    assert_eq!(key_meta.permissions().mode() & 0o777, 0o600);

    let new_ca = read(&west.join("ca-cert.pem"));
    assert_ne!(new_ca, before_files[0]);
    assert_ne!(read(&west.join("ca-key.pem")), before_files[1]);
    assert_eq!(read(&west.join("root-cert.pem")), before_files[3]);
    let (old, new) = (
        &pki::inspect_pem(&before_files[0]).unwrap()[0],
        &pki::inspect_pem(&new_ca).unwrap()[0],
    );
    assert_eq!(
        (&old.subject, &old.issuer, &old.sans),
        (&new.subject, &new.issuer, &new.sans)
    );
    assert_ne!(old.sha256_fingerprint, new.sha256_fingerprint);
    // The cluster holds the renewed bundle, and it verifies.
    assert_eq!(secret_file(&m, "ca-cert.pem"), new_ca);
    assert_eq!(
        secret_file(&m, "ca-key.pem"),
        read(&west.join("ca-key.pem"))
    );
    m.ok(&["certs", "verify", p(&west), p(&m.certs.join("east"))])
        .await;

    // Another root is refused, and nothing changes.
    let other = m.dir.path().join("other");
    m.ok(&["certs", "root", "--out", p(&other)]).await;
    let before = secret(&m.west, "cacerts").unwrap();
    let args = renew_west_args(&m, &other, &[]);
    let out = m
        .fails(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    assert!(
        out.contains("renew keeps the root") && out.contains("meshctl rotate"),
        "{out}"
    );
    assert_eq!(read(&west.join("ca-cert.pem")), new_ca);
    assert_eq!(secret(&m.west, "cacerts").unwrap(), before);
}
