//! Certificate files under attack or accident, with the real binary: private keys appended
//! to public PEM files are refused wherever those files are read; a write that fails part
//! way changes nothing; dry runs refuse what the real run refuses; a workload's output may
//! not be its CA directory; workload names are Kubernetes names.

mod common;

use std::path::{Path, PathBuf};

use common::runs::says;
use common::*;

const BUNDLE: [&str; 4] = [
    "ca-cert.pem",
    "ca-key.pem",
    "cert-chain.pem",
    "root-cert.pem",
];

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn append(to: &Path, from: &Path) {
    let mut text = read(to);
    text.extend(read(from));
    std::fs::write(to, text).unwrap();
}

/// Every entry of `dir` (recursively) with a digest of its bytes (keys stay out of failure
/// messages); directories as `None`.
fn tree(dir: &Path) -> Vec<(PathBuf, Option<u64>)> {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.symlink_metadata().unwrap().is_dir() {
                out.push((p.clone(), None));
                todo.push(p);
            } else {
                let mut h = DefaultHasher::new();
                read(&p).hash(&mut h);
                out.push((p.clone(), Some(h.finish())));
            }
        }
    }
    out.sort();
    out
}

/// The base64 body lines of a PEM key file: none may appear in any output.
fn key_lines(key: &Path) -> Vec<String> {
    String::from_utf8(read(key))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .map(str::to_string)
        .collect()
}

fn no_key_in(out: &str, key: &Path) {
    for l in key_lines(key) {
        assert!(
            !out.contains(&l),
            "a line of {} was printed:\n{out}",
            key.display()
        );
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir(to).unwrap();
    for f in BUNDLE {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

/// `certs init` of `clusters` into `certs` of a new temporary directory: (the directory, its
/// `certs`).
async fn init_certs(clusters: &str) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let certs = tmp.path().join("certs");
    let out = meshctl(&["certs", "init", "--clusters", clusters, "--out", p(&certs)]).await;
    assert!(out.status.success(), "{}", text(&out));
    (tmp, certs)
}

/// A key appended to `root-cert.pem` or `cert-chain.pem` (`cat key >> cert`), or cut short
/// (no END line): `certs verify`, `cacerts apply --force`, `certs workload`, `certs renew`,
/// `certs intermediate` and `rotate prepare` all refuse it, naming the file and the block,
/// printing none of the key; the clusters keep their cacerts.
#[tokio::test]
async fn private_keys_in_certificate_files_are_refused_everywhere() {
    let m = mesh_with_cacerts().await;
    let kc = m.kc();
    let before: Vec<_> = [&m.west, &m.east]
        .iter()
        .map(|s| secret(s, "cacerts").unwrap()["metadata"]["resourceVersion"].clone())
        .collect();
    let (root_cert, root_key) = (m.certs.join("root-cert.pem"), m.certs.join("root-key.pem"));
    let ca_key = m.certs.join("west/ca-key.pem");
    let work = m.dir.path();

    // (file to poison, key appended, how)
    let cases: [(&str, &Path, bool); 4] = [
        ("root-cert.pem", &root_key, true),
        ("cert-chain.pem", &ca_key, true),
        ("ca-cert.pem", &ca_key, true),
        // Without its END line: the PEM parser alone would skip it as text.
        ("root-cert.pem", &root_key, false),
    ];
    for (i, (file, key, whole)) in cases.into_iter().enumerate() {
        let bad = work.join(format!("bad{i}"));
        copy_dir(&m.certs.join("west"), &bad);
        if whole {
            append(&bad.join(file), key);
        } else {
            let text = String::from_utf8(read(key)).unwrap();
            let cut: String = text
                .lines()
                .filter(|l| !l.starts_with("-----END"))
                .collect::<Vec<_>>()
                .join("\n");
            let mut t = read(&bad.join(file));
            t.extend(cut.as_bytes());
            std::fs::write(bad.join(file), t).unwrap();
        }
        let want_block = if whole {
            "PRIVATE KEY block"
        } else {
            "no -----END line"
        };
        let named = bad.join(file).display().to_string();

        let out = m.fails(&["certs", "verify", p(&bad)]).await;
        says(&out, &[&named, want_block, "FAILED"]);
        no_key_in(&out, key);

        let out = m
            .fails(&cacerts_apply_args(kc, p(&bad), "west", &["--force"]))
            .await;
        says(&out, &[&named, want_block, "not a valid cluster bundle"]);
        no_key_in(&out, key);

        let wl = work.join(format!("wl{i}"));
        let out = m
            .fails(&workload_args(&bad, "default", "sa", &wl, &[]))
            .await;
        says(&out, &[&named, want_block]);
        no_key_in(&out, key);
        assert!(!wl.exists());

        if file != "cert-chain.pem" {
            // renew reads ca-cert.pem and root-cert.pem, and writes root-cert.pem back.
            let before = tree(&bad);
            let out = m.fails(&renew_args(&bad, &root_cert, &root_key, &[])).await;
            says(&out, &[&named, want_block]);
            no_key_in(&out, key);
            assert_eq!(tree(&bad), before);
        }
    }

    // A root certificate file with its key appended, as a signer and as a rotation's root.
    let poisoned = work.join("poisoned-root");
    std::fs::create_dir(&poisoned).unwrap();
    std::fs::copy(&root_cert, poisoned.join("root-cert.pem")).unwrap();
    std::fs::copy(&root_key, poisoned.join("root-key.pem")).unwrap();
    append(&poisoned.join("root-cert.pem"), &root_key);
    let out = m
        .fails(&intermediate_args(
            &poisoned.join("root-cert.pem"),
            &root_key,
            "north",
            &work.join("north"),
            &[],
        ))
        .await;
    says(&out, &["poisoned-root/root-cert.pem", "PRIVATE KEY block"]);
    no_key_in(&out, &root_key);
    assert!(!work.join("north").exists());

    let out = m.fails(&m.rotate_args("prepare", &poisoned)).await;
    says(&out, &["poisoned-root/root-cert.pem", "PRIVATE KEY block"]);
    no_key_in(&out, &root_key);

    let after: Vec<_> = [&m.west, &m.east]
        .iter()
        .map(|s| secret(s, "cacerts").unwrap()["metadata"]["resourceVersion"].clone())
        .collect();
    assert_eq!(after, before, "a cacerts Secret changed");

    // `certs inspect` still shows the certificate of a combined file, and warns.
    let out = m
        .ok(&["certs", "inspect", p(&poisoned.join("root-cert.pem"))])
        .await;
    assert!(out.contains("Subject:"), "{out}");
    let all = text(&meshctl(&["certs", "inspect", p(&poisoned.join("root-cert.pem"))]).await);
    says(&all, &["warning:", "PRIVATE KEY block"]);
    no_key_in(&all, &root_key);
}

/// `chattr +i` on `path` until dropped (root with CAP_LINUX_IMMUTABLE on ext4, xfs, ...).
struct Immutable(PathBuf);

impl Immutable {
    fn set(path: &Path) -> Option<Immutable> {
        let ok = std::process::Command::new("chattr")
            .arg("+i")
            .arg(path)
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then(|| Immutable(path.to_path_buf()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

/// A real I/O failure in the middle of a multi-file write (an immutable target file, an
/// immutable directory) changes nothing: the files already replaced are put back, no
/// temporary file stays, and the message says nothing was written.
#[tokio::test]
async fn a_write_that_fails_part_way_changes_nothing() {
    let (tmp, certs) = init_certs("west,east").await;
    let west = certs.join("west");
    let Some(guard) = Immutable::set(&west.join("cert-chain.pem")) else {
        eprintln!("skipped: chattr +i is not available here (needs root on ext4/xfs/btrfs)");
        return;
    };
    let before = tree(&certs);
    let old_key = read(&west.join("ca-key.pem"));
    let (root_cert, root_key) = (certs.join("root-cert.pem"), certs.join("root-key.pem"));
    let renew = renew_args(&west, &root_cert, &root_key, &[]);
    let out = meshctl(&renew).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert_eq!(
        tree(&certs),
        before,
        "files changed or were left behind:\n{all}"
    );
    says(
        &all,
        &[
            "cert-chain.pem",
            "nothing was written",
            "Operation not permitted",
        ],
    );
    drop(guard);
    let out = meshctl(&["certs", "verify", p(&west)]).await;
    assert!(out.status.success(), "{}", text(&out));
    // Once the cause is gone the same command works.
    let out = meshctl(&renew).await;
    assert!(out.status.success(), "{}", text(&out));
    assert_ne!(read(&west.join("ca-key.pem")), old_key);

    // certs init into a tree whose east/ cannot take files: not even the root is written.
    let out_dir = tmp.path().join("fresh");
    std::fs::create_dir_all(out_dir.join("east")).unwrap();
    let guard = Immutable::set(&out_dir.join("east")).expect("chattr worked above");
    let init = [
        "certs",
        "init",
        "--clusters",
        "west,east",
        "--out",
        p(&out_dir),
    ];
    let out = meshctl(&init).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert_eq!(tree(&out_dir), vec![(out_dir.join("east"), None)], "{all}");
    says(&all, &["east/ca-cert.pem", "nothing was written"]);
    drop(guard);
    let out = meshctl(&init).await;
    assert!(
        out.status.success(),
        "a rerun must not need --force: {}",
        text(&out)
    );
}

/// The audit's case as a plain user: an existing read-only `certs/east` (0500). Needs root
/// (to become uid 65534) and setpriv.
#[tokio::test]
async fn a_read_only_directory_of_a_plain_user_changes_nothing() {
    if !is_root()
        || std::process::Command::new("setpriv")
            .arg("--help")
            .output()
            .is_err()
    {
        eprintln!("skipped: needs root and setpriv");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    std::fs::create_dir_all(home.join("certs/east")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        home.join("certs/east"),
        std::fs::Permissions::from_mode(0o500),
    )
    .unwrap();
    for d in [home.clone(), home.join("certs"), home.join("certs/east")] {
        std::os::unix::fs::chown(&d, Some(65534), Some(65534)).unwrap();
    }
    let run = || {
        std::process::Command::new("setpriv")
            .args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                MESHCTL,
            ])
            .args(["certs", "init", "--clusters", "west,east", "--out", "certs"])
            .current_dir(&home)
            .env_remove("KUBECONFIG")
            .output()
            .unwrap()
    };
    let out = run();
    let all = text(&out);
    if out.status.code() == Some(127) {
        eprintln!("skipped: uid 65534 cannot execute {MESHCTL}: {all}");
        return;
    }
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert_eq!(
        tree(&home),
        vec![(home.join("certs"), None), (home.join("certs/east"), None)],
        "{all}"
    );
    says(
        &all,
        &[
            "certs/east/ca-cert.pem",
            "Permission denied",
            "nothing was written",
        ],
    );
    // Fixed, the rerun writes everything without asking for --force.
    std::fs::set_permissions(
        home.join("certs/east"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    let out = run();
    assert!(out.status.success(), "{}", text(&out));
}

/// Whether the test runs as root (its real uid, from /proc: no unsafe, no extra crate).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// `rotate prepare --dry-run` and `certs renew --dry-run` refuse an output the real run
/// refuses (a symlinked directory for keys, a file where a directory must be), and write
/// nothing.
#[tokio::test]
async fn dry_runs_refuse_what_the_real_run_refuses() {
    let m = mesh_with_cacerts().await;
    let work = m.dir.path();
    let real = work.join("rotreal");
    std::fs::create_dir(&real).unwrap();
    let link = work.join("rotlink");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let file = work.join("rotfile");
    std::fs::write(&file, "not a directory").unwrap();
    for (dir, why) in [(&link, "is a symlink"), (&file, "is not a directory")] {
        for dry in [true, false] {
            let mut args = m.rotate_args("prepare", dir);
            if dry {
                args.push("--dry-run");
            }
            let out = m.fails(&args).await;
            says(&out, &[why, "nothing was changed"]);
            assert!(!out.contains("would write"), "{out}");
        }
    }
    assert!(std::fs::read_dir(&real).unwrap().next().is_none());
    assert_eq!(read(&file), b"not a directory");

    let west_link = work.join("westlink");
    std::os::unix::fs::symlink(m.certs.join("west"), &west_link).unwrap();
    let before = tree(&m.certs);
    let (root_cert, root_key) = (m.certs.join("root-cert.pem"), m.certs.join("root-key.pem"));
    for extra in [&["--dry-run"][..], &[]] {
        let out = m
            .fails(&renew_args(&west_link, &root_cert, &root_key, extra))
            .await;
        says(&out, &["is a symlink"]);
        assert!(!out.contains("would write"), "{out}");
    }
    assert_eq!(tree(&m.certs), before);
}

/// `certs workload --out` that is the `--ca` directory (however spelled), and `certs
/// intermediate --out` that is its `--parent`, are refused even with --force: nothing is
/// overwritten and the bundle still verifies.
/// Nor another cluster's CA bundle: `certs workload --ca certs/west --out certs/east
/// --force` replaced east's cert-chain.pem, after which east's bundle no longer verified
/// (found by an audit session, 2026-12-06).
#[tokio::test]
async fn a_workload_output_cannot_be_another_ca_bundle() {
    let (_tmp, certs) = init_certs("west,east").await;
    let (west, east) = (certs.join("west"), certs.join("east"));
    let before = tree(&certs);
    let out = meshctl(&workload_args(&west, "default", "sa", &east, &["--force"])).await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    says(
        &all,
        &["holds a CA bundle", "nothing was written", "another --out"],
    );
    assert_eq!(tree(&certs), before);
    let out = meshctl(&["certs", "verify", p(&west), p(&east)]).await;
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test]
async fn an_output_cannot_be_its_ca_directory() {
    let (tmp, certs) = init_certs("west").await;
    let west = certs.join("west");
    let alias = tmp.path().join("alias");
    std::os::unix::fs::symlink(&west, &alias).unwrap();
    let before = tree(&certs);
    let dot = west.join(".");
    let up = west.join("../west");
    for out_dir in [&west, &dot, &up, &alias] {
        let out = meshctl(&workload_args(
            &west,
            "default",
            "sa",
            out_dir,
            &["--force"],
        ))
        .await;
        let all = text(&out);
        assert_eq!(out.status.code(), Some(1), "{all}");
        says(
            &all,
            &[
                "is the CA directory",
                "--ca",
                "nothing was written",
                "another --out",
            ],
        );
    }
    // An offline intermediate (pathlen 1) as --parent, and --out the same directory.
    let offline = tmp.path().join("offline");
    let out = meshctl(&intermediate_args(
        &certs.join("root-cert.pem"),
        &certs.join("root-key.pem"),
        "offline",
        &offline,
        &["--path-len", "1"],
    ))
    .await;
    assert!(out.status.success(), "{}", text(&out));
    let offline_before = tree(&offline);
    let out = meshctl(&[
        "certs",
        "intermediate",
        "--parent",
        p(&offline),
        "--cluster",
        "east",
        "--out",
        p(&offline),
        "--force",
    ])
    .await;
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    says(&all, &["is the CA directory", "--parent", "ca-key.pem"]);
    assert_eq!(tree(&offline), offline_before);
    assert_eq!(tree(&certs), before);
    let out = meshctl(&["certs", "verify", p(&west)]).await;
    assert!(out.status.success(), "{}", text(&out));
}

/// `-n` is a Namespace name (DNS-1123 label, at most 63) and `-s` a ServiceAccount name
/// (DNS-1123 subdomain, at most 253), checked like Kubernetes does, with the rule in the
/// error: usage errors (exit 2), nothing written.
#[tokio::test]
async fn workload_names_are_kubernetes_names() {
    let (tmp, certs) = init_certs("west").await;
    let west = certs.join("west");
    let wl = tmp.path().join("wl");
    let run = |ns: String, sa: String| {
        let (west, wl) = (west.clone(), wl.clone());
        async move { meshctl(&workload_args(&west, &ns, &sa, &wl, &["--force"])).await }
    };
    let label63 = "n".repeat(63);
    let sub253 = [
        &"a".repeat(63)[..],
        &"b".repeat(63),
        &"c".repeat(63),
        &"d".repeat(61),
    ]
    .join(".");
    let bad = [
        ("ünï".to_string(), "sa".to_string(), "lowercase letters"),
        ("n".repeat(64), "sa".into(), "1 to 63 characters"),
        ("n".repeat(300), "sa".into(), "1 to 63 characters"),
        ("My-NS".into(), "sa".into(), "namespace name"),
        ("a.b".into(), "sa".into(), "DNS-1123 label"),
        (
            "default".into(),
            format!("{sub253}e"),
            "1 to 253 characters",
        ),
        ("default".into(), "My_SA".into(), "service account name"),
        ("default".into(), "ünï".into(), "lowercase letters"),
    ];
    for (ns, sa, want) in bad {
        let out = run(ns.clone(), sa.clone()).await;
        let all = text(&out);
        assert_eq!(out.status.code(), Some(2), "{ns} {sa}: {all}");
        says(&all, &[want]);
        assert!(!all.contains("IA5String"), "{all}");
        assert!(!wl.exists());
    }
    for (ns, sa) in [
        (label63, sub253),
        ("default".to_string(), "a.b-c".to_string()),
    ] {
        let out = run(ns.clone(), sa.clone()).await;
        assert!(out.status.success(), "{}", text(&out));
        says(
            &text(&out),
            &[&format!("spiffe://cluster.local/ns/{ns}/sa/{sa}")],
        );
    }
}
