//! `meshctl certs` and `meshctl cacerts`, run as the real binary. Broken bundles are made
//! with the `pki` library (expired certificates) or with the `openssl` CLI (a non-CA
//! intermediate), then `meshctl certs verify` must name the file and the problem.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

use common::{MESHCTL, intermediate_args, p, text, workload_args};

/// Runs meshctl (synchronously: these tests need no API server).
fn meshctl(args: &[&str]) -> Output {
    Command::new(MESHCTL)
        .args(args)
        .output()
        .expect("run meshctl")
}

fn ok(args: &[&str]) -> String {
    let out = meshctl(args);
    assert!(
        out.status.success(),
        "meshctl {args:?} failed:\n{}",
        text(&out)
    );
    text(&out)
}

/// Runs meshctl, expects exit code 1, returns the output.
fn fails(args: &[&str]) -> String {
    let out = meshctl(args);
    assert_eq!(
        out.status.code(),
        Some(1),
        "meshctl {args:?}:\n{}",
        text(&out)
    );
    text(&out)
}

fn openssl(args: &[&str], dir: &Path) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl CLI");
    assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

/// The arguments of `certs init` for the two demo clusters into `out`, plus `extra`.
fn init_args<'a>(out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "certs",
        "init",
        "--clusters",
        "west-cluster,east-cluster",
        "--out",
        p(out),
    ];
    args.extend_from_slice(extra);
    args
}

/// `certs init` for the two demo clusters into `<dir>/certs`.
fn init(dir: &Path) -> PathBuf {
    let out = dir.join("certs");
    ok(&init_args(&out, &[]));
    out
}

/// A fresh `certs init` in a temporary directory: the directory (kept alive), the certs
/// directory and `cluster`'s bundle in it.
fn init_bundle(cluster: &str) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let certs = init(tmp.path());
    let bundle = certs.join(cluster);
    (tmp, certs, bundle)
}

/// `certs verify` of both demo clusters passes.
fn verify_both(certs: &Path) {
    ok(&[
        "certs",
        "verify",
        p(&certs.join("west-cluster")),
        p(&certs.join("east-cluster")),
    ]);
}

/// `certs verify` of `bundle` fails and its output says each of `want`; returns it.
fn verify_fails_with(bundle: &Path, want: &[&str]) -> String {
    let out = fails(&["certs", "verify", p(bundle)]);
    for w in want {
        assert!(out.contains(w), "{w}: {out}");
    }
    out
}

/// Writes `cert-chain.pem` of `bundle` as these of its files, in this order.
fn write_chain(bundle: &Path, files: [&str; 2]) {
    let chain: String = files
        .iter()
        .map(|f| fs::read_to_string(bundle.join(f)).unwrap())
        .collect();
    fs::write(bundle.join("cert-chain.pem"), chain).unwrap();
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_verify_workload_happy_path_checked_with_openssl() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = init(tmp.path());
    for f in ["root-cert.pem", "root-key.pem"] {
        assert!(certs.join(f).is_file(), "{f}");
    }
    assert_eq!(mode(&certs.join("root-key.pem")), 0o600);
    for c in ["west-cluster", "east-cluster"] {
        let d = certs.join(c);
        for f in [
            "ca-cert.pem",
            "ca-key.pem",
            "cert-chain.pem",
            "root-cert.pem",
        ] {
            assert!(d.join(f).is_file(), "{c}/{f}");
        }
        assert_eq!(mode(&d.join("ca-key.pem")), 0o600);
        assert_eq!(mode(&d.join("ca-cert.pem")), 0o644);
    }
    let west = certs.join("west-cluster");
    let east = certs.join("east-cluster");
    let out = ok(&["certs", "verify", p(&west), p(&east)]);
    assert!(
        out.contains("west-cluster: OK") && out.contains("east-cluster: OK"),
        "{out}"
    );
    assert!(!out.contains("PRIVATE KEY"));

    let wl = tmp.path().join("wl");
    let out = ok(&[
        "certs",
        "workload",
        "--ca",
        p(&east),
        "--namespace",
        "istioinaction",
        "--service-account",
        "catalog",
        "--out",
        p(&wl),
    ]);
    assert!(
        out.contains("spiffe://cluster.local/ns/istioinaction/sa/catalog"),
        "{out}"
    );
    assert!(
        !out.contains("PRIVATE KEY"),
        "keys are never printed: {out}"
    );
    assert_eq!(mode(&wl.join("key.pem")), 0o600);

    // openssl itself: the chain verifies, the extensions are there, keys match certs.
    fs::copy(east.join("ca-cert.pem"), wl.join("ca-cert.pem")).unwrap();
    openssl(
        &[
            "verify",
            "-CAfile",
            "root-cert.pem",
            "-untrusted",
            "ca-cert.pem",
            "cert.pem",
        ],
        &wl,
    );
    let t = openssl(&["x509", "-text", "-noout", "-in", "ca-cert.pem"], &east);
    for needle in [
        "CA:TRUE, pathlen:0",
        "Certificate Sign, CRL Sign",
        "DNS:istiod.istio-system.svc",
    ] {
        assert!(t.contains(needle), "{needle}: {t}");
    }
    let t = openssl(&["x509", "-text", "-noout", "-in", "cert.pem"], &wl);
    for needle in [
        "CA:FALSE",
        "TLS Web Server Authentication, TLS Web Client Authentication",
        "URI:spiffe://cluster.local/ns/istioinaction/sa/catalog",
    ] {
        assert!(t.contains(needle), "{needle}: {t}");
    }
    assert_eq!(
        openssl(&["pkey", "-in", "ca-key.pem", "-pubout"], &east),
        openssl(&["x509", "-in", "ca-cert.pem", "-noout", "-pubkey"], &east)
    );
    assert_eq!(
        openssl(&["pkey", "-in", "root-key.pem", "-pubout"], &certs),
        openssl(
            &["x509", "-in", "root-cert.pem", "-noout", "-pubkey"],
            &certs
        )
    );
}

#[test]
fn existing_files_are_not_overwritten_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = init(tmp.path());
    let before = fs::read(certs.join("root-cert.pem")).unwrap();
    fs::remove_file(certs.join("east-cluster/cert-chain.pem")).unwrap();
    let out = fails(&init_args(&certs, &[]));
    // A root is there: the way to add clusters to it, and what --force would cost.
    assert!(
        out.contains("already holds a root CA") && out.contains("nothing was written"),
        "{out}"
    );
    let add = format!(
        "meshctl certs intermediate --root-cert {c}/root-cert.pem --root-key {c}/root-key.pem \
         --cluster east-cluster --out {c}/east-cluster",
        c = certs.display()
    );
    assert!(out.contains(&add), "{out}");
    assert!(out.contains("--force would replace its key"), "{out}");
    // Nothing changed: the missing file stays missing, the others are untouched.
    assert!(!certs.join("east-cluster/cert-chain.pem").exists());
    assert_eq!(fs::read(certs.join("root-cert.pem")).unwrap(), before);

    fs::set_permissions(
        certs.join("root-key.pem"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    ok(&init_args(&certs, &["--force"]));
    assert_ne!(fs::read(certs.join("root-cert.pem")).unwrap(), before);
    assert!(certs.join("east-cluster/cert-chain.pem").exists());
    assert_eq!(mode(&certs.join("root-key.pem")), 0o600);
    verify_both(&certs);
}

#[test]
fn invalid_cluster_names_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let out = meshctl(&[
        "certs",
        "init",
        "--clusters",
        "west,East_1",
        "--out",
        p(tmp.path()),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("DNS-1123"), "{}", text(&out));
    assert_eq!(
        fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "nothing written"
    );
    let out = meshctl(&["certs", "init", "--clusters", "a,a", "--out", p(tmp.path())]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("listed twice"), "{}", text(&out));
}

#[test]
fn byo_root_with_root_and_intermediate_commands() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    ok(&[
        "certs",
        "root",
        "--out",
        p(&root),
        "--org",
        "Example",
        "--key-type",
        "ec-p384",
    ]);
    // An RSA PKCS#1 key from openssl as the bring-your-own root is covered in pki's tests;
    // here the root made above is reused as an existing root.
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    for (dir, cluster) in [(&a, "cluster-a"), (&b, "cluster-b")] {
        ok(&intermediate_args(
            &root.join("root-cert.pem"),
            &root.join("root-key.pem"),
            cluster,
            dir,
            &["--days", "30"],
        ));
    }
    let out = ok(&["certs", "verify", p(&a), p(&b), "--warn-days", "10"]);
    assert!(!out.contains("warning"), "{out}");
    let t = ok(&["certs", "inspect", p(&a.join("ca-cert.pem"))]);
    assert!(
        t.contains("O=Istio, CN=Intermediate CA, L=cluster-a"),
        "{t}"
    );
    assert!(
        t.contains("O=Example, CN=Root CA") && t.contains("ECDSA P-256"),
        "{t}"
    );
    let t = ok(&["certs", "inspect", p(&root.join("root-cert.pem"))]);
    assert!(t.contains("ECDSA P-384"), "{t}");
    // 30 days is within the default 30-day window: a warning, but still exit 0.
    let out = ok(&["certs", "verify", p(&a)]);
    assert!(
        out.contains("warning:") && out.contains("ca-cert.pem: expires on"),
        "{out}"
    );
    // A wrong root key is refused.
    let out = fails(&intermediate_args(
        &root.join("root-cert.pem"),
        &a.join("ca-key.pem"),
        "c",
        &tmp.path().join("c"),
        &[],
    ));
    assert!(out.contains("does not match"), "{out}");
}

#[test]
fn verify_rejects_a_key_from_another_certificate() {
    let (_tmp, certs, west) = init_bundle("west-cluster");
    fs::copy(
        certs.join("east-cluster/ca-key.pem"),
        west.join("ca-key.pem"),
    )
    .unwrap();
    verify_fails_with(
        &west,
        &["west-cluster/ca-key.pem: does not match the public key of ca-cert.pem"],
    );
}

#[test]
fn verify_rejects_a_chain_to_a_different_root() {
    let (_tmp, _, west) = init_bundle("west-cluster");
    let (_other_tmp, other, _) = init_bundle("west-cluster");
    // Same root *name*, different root key: only the signature check can tell.
    fs::copy(other.join("root-cert.pem"), west.join("root-cert.pem")).unwrap();
    write_chain(&west, ["ca-cert.pem", "root-cert.pem"]);
    verify_fails_with(
        &west,
        &[
            "west-cluster/ca-cert.pem: does not chain to root-cert.pem",
            "signature does not verify",
        ],
    );
}

#[test]
fn verify_rejects_an_intermediate_without_ca_true() {
    let (_tmp, _, west) = init_bundle("west-cluster");
    // Sign a non-CA "intermediate" with the real root, using openssl (no basicConstraints).
    openssl(
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "ca-key.pem",
        ],
        &west,
    );
    openssl(
        &[
            "req",
            "-new",
            "-key",
            "ca-key.pem",
            "-subj",
            "/O=Istio/CN=Intermediate CA/L=west-cluster",
            "-out",
            "ca.csr",
        ],
        &west,
    );
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "ca.csr",
            "-CA",
            "../root-cert.pem",
            "-CAkey",
            "../root-key.pem",
            "-CAcreateserial",
            "-days",
            "365",
            "-out",
            "ca-cert.pem",
        ],
        &west,
    );
    write_chain(&west, ["ca-cert.pem", "root-cert.pem"]);
    verify_fails_with(
        &west,
        &["west-cluster/ca-cert.pem: is not a CA certificate (basicConstraints CA:TRUE missing)"],
    );
    // And cacerts refuses to print such a bundle.
    let out = fails(&["cacerts", p(&west), "--show-secrets"]);
    assert!(
        out.contains("not a valid cluster bundle") && !out.contains("kind: Secret"),
        "{out}"
    );
}

#[test]
fn verify_rejects_an_expired_certificate() {
    use pki::{IntermediateOptions, RootCa, RootOptions};
    let root = RootCa::generate(&RootOptions::default()).unwrap();
    let mut opts = IntermediateOptions::new("west-cluster");
    let now = time::OffsetDateTime::now_utc();
    opts.not_before = Some(now - time::Duration::days(10));
    opts.not_after = Some(now - time::Duration::days(1));
    let ca = root.issue_intermediate(&opts).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    ca.write_dir(tmp.path(), false).unwrap();
    let out = fails(&["certs", "verify", p(tmp.path())]);
    assert!(out.contains("ca-cert.pem: expired on"), "{out}");
}

#[test]
fn verify_rejects_a_missing_file() {
    let (tmp, _, east) = init_bundle("east-cluster");
    fs::remove_file(east.join("cert-chain.pem")).unwrap();
    verify_fails_with(&east, &["east-cluster/cert-chain.pem: missing"]);
    // A directory that does not exist is one clear finding, not four missing files.
    let out = fails(&["certs", "verify", p(&tmp.path().join("nope"))]);
    assert!(out.contains("nope: directory does not exist"), "{out}");
    assert!(!out.contains("missing"), "{out}");
    assert_eq!(out.matches("error:").count(), 1, "{out}");
}

#[test]
fn verify_rejects_garbage_pem() {
    let (_tmp, _, east) = init_bundle("east-cluster");
    fs::write(east.join("ca-cert.pem"), "this is not a certificate\n").unwrap();
    fs::write(
        east.join("ca-key.pem"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    verify_fails_with(
        &east,
        &[
            "east-cluster/ca-cert.pem: no PEM certificate found",
            "east-cluster/ca-key.pem: invalid private key",
        ],
    );
    let out = fails(&["certs", "inspect", p(&east.join("ca-cert.pem"))]);
    assert!(out.contains("no PEM certificate found"), "{out}");
}

#[test]
fn verify_rejects_a_wrong_cert_chain_order() {
    let (_tmp, _, east) = init_bundle("east-cluster");
    write_chain(&east, ["root-cert.pem", "ca-cert.pem"]);
    verify_fails_with(
        &east,
        &["cert-chain.pem: its first certificate is not ca-cert.pem"],
    );
}

#[test]
fn verify_rejects_clusters_with_different_roots() {
    let t1 = tempfile::tempdir().unwrap();
    let t2 = tempfile::tempdir().unwrap();
    let west = init(t1.path()).join("west-cluster");
    let east = init(t2.path()).join("east-cluster");
    ok(&["certs", "verify", p(&west)]);
    ok(&["certs", "verify", p(&east)]);
    let out = fails(&["certs", "verify", p(&west), p(&east)]);
    assert!(
        out.contains("east-cluster/root-cert.pem: differs from"),
        "{out}"
    );
    assert!(out.contains("do not trust each other"), "{out}");
}

#[test]
fn cacerts_prints_the_secret_with_exact_file_bytes() {
    let (tmp, _, east) = init_bundle("east-cluster");
    let out = fails(&["cacerts", p(&east), "-n", "istio-system"]);
    assert!(out.contains("--show-secrets"), "{out}");
    assert!(!out.contains("PRIVATE KEY"), "{out}");
    let key_b64 = fs::read_to_string(east.join("ca-key.pem")).unwrap();
    assert!(!out.contains(key_b64.lines().nth(1).unwrap()), "{out}");
    let yaml = ok(&["cacerts", p(&east), "-n", "istio-system", "--show-secrets"]);
    let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(v["apiVersion"], "v1");
    assert_eq!(v["kind"], "Secret");
    assert_eq!(v["type"], "Opaque");
    assert_eq!(v["metadata"]["name"], "cacerts");
    assert_eq!(v["metadata"]["namespace"], "istio-system");
    for f in [
        "ca-cert.pem",
        "ca-key.pem",
        "cert-chain.pem",
        "root-cert.pem",
    ] {
        let b64 = v["data"][f].as_str().unwrap();
        fs::write(tmp.path().join("b64"), b64).unwrap();
        let decoded = openssl(&["base64", "-d", "-A", "-in", "b64"], tmp.path());
        assert_eq!(decoded, fs::read_to_string(east.join(f)).unwrap(), "{f}");
    }
    let yaml = ok(&[
        "cacerts",
        p(&east),
        "--namespace",
        "mesh-1",
        "--show-secrets",
    ]);
    assert!(yaml.contains("namespace: mesh-1"), "{yaml}");
    // A usage error (exit 2), as on every command that takes -n.
    let out = meshctl(&["cacerts", p(&east), "-n", "Bad_NS", "--show-secrets"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("DNS-1123"), "{}", text(&out));
}

/// Runs meshctl under `umask 000` (through sh, so the umask is the process's own).
fn meshctl_umask_000(args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg("umask 000; exec \"$0\" \"$@\"")
        .arg(MESHCTL)
        .args(args)
        .output()
        .expect("run sh")
}

#[test]
fn key_directories_are_0700_and_keys_0600_whatever_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("new/certs");
    let out = meshctl_umask_000(&[
        "certs",
        "init",
        "--clusters",
        "west-cluster",
        "--out",
        p(&out_dir),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    for d in [
        tmp.path().join("new"),
        out_dir.clone(),
        out_dir.join("west-cluster"),
    ] {
        assert_eq!(mode(&d), 0o700, "{}", d.display());
    }
    assert_eq!(mode(&out_dir.join("root-key.pem")), 0o600);
    assert_eq!(mode(&out_dir.join("west-cluster/ca-key.pem")), 0o600);
    assert_eq!(mode(&out_dir.join("west-cluster/ca-cert.pem")), 0o644);
    let wl = tmp.path().join("wl/a");
    let out = meshctl_umask_000(&workload_args(
        &out_dir.join("west-cluster"),
        "ns",
        "sa",
        &wl,
        &[],
    ));
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(mode(&tmp.path().join("wl")), 0o700);
    assert_eq!(mode(&wl), 0o700);
    assert_eq!(mode(&wl.join("key.pem")), 0o600);
    // An existing directory keeps its mode: meshctl only sets what it creates.
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let out = meshctl_umask_000(&["certs", "root", "--out", p(tmp.path()), "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(mode(tmp.path()), 0o755);
}

#[test]
fn force_replaces_a_symlink_at_a_key_path_and_never_writes_through_it() {
    let tmp = tempfile::tempdir().unwrap();
    let certs = init(tmp.path());
    let victim = tmp.path().join("victim.txt");
    fs::write(&victim, "precious").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();
    let keys = [
        certs.join("root-key.pem"),
        certs.join("west-cluster/ca-key.pem"),
    ];
    for k in &keys {
        fs::remove_file(k).unwrap();
        std::os::unix::fs::symlink(&victim, k).unwrap();
    }
    // Without --force a symlink counts as an existing file.
    let out = fails(&init_args(&certs, &[]));
    assert!(out.contains("already holds a root CA"), "{out}");
    ok(&init_args(&certs, &["--force"]));
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    assert_eq!(mode(&victim), 0o644);
    for k in &keys {
        let meta = fs::symlink_metadata(k).unwrap();
        assert!(
            meta.file_type().is_file(),
            "{} is still a symlink",
            k.display()
        );
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{}", k.display());
        assert!(fs::read_to_string(k).unwrap().contains("PRIVATE KEY"));
    }
    // No temporary files are left beside the targets.
    for d in [certs.clone(), certs.join("west-cluster")] {
        for e in fs::read_dir(&d).unwrap() {
            let name = e.unwrap().file_name();
            assert!(
                !name.to_string_lossy().contains(".tmp"),
                "{name:?} left in {}",
                d.display()
            );
        }
    }
    verify_both(&certs);
}
