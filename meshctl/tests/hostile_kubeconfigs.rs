//! Hostile kubeconfigs. Stored in a remote secret (written by whoever may write Secrets in
//! another cluster), `check` never runs its command, reads a local file, sends its token
//! unencrypted or through a proxy, and names the Secret and the refused fields. Local (the
//! user's own): a token that fits in no HTTP header is a clean error naming the user, not a
//! panic; a `tokenFile` ending in a newline works, as with kubectl; a credential plugin's
//! failure names the plugin and its exit status, never its arguments or output; missing files
//! in `KUBECONFIG` are skipped as kubectl skips them. Every run is the real binary against
//! TEST API servers, and a sentinel in every credential must appear in no output.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use common::runs::run;
use common::*;
use k8s_test_server::TestApiServer;
use serde_json::{Value, json};

/// Stand-in credential: it must appear in no output.
const SENTINEL: &str = "SENTINEL-3f9a7c1e5b";

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// No credential, no panic and none of kube's exec-plugin dump in `all`.
fn assert_clean(what: &str, all: &str) {
    for bad in [
        SENTINEL,
        "panicked",
        "KUBERNETES_EXEC_INFO",
        "Output {",
        "--token=",
    ] {
        assert!(!all.contains(bad), "{what} printed {bad:?}:\n{all}");
    }
}

/// A TCP listener that counts the connections made to it: a server no request may reach.
struct Tripwire {
    port: u16,
    hits: Arc<AtomicUsize>,
}

impl Tripwire {
    async fn start() -> Tripwire {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            while let Ok((_conn, _)) = l.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
            }
        });
        Tripwire { port, hits }
    }

    /// Connections so far (after a moment for one still in the backlog).
    async fn hits(&self) -> usize {
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.hits.load(Ordering::SeqCst)
    }
}

/// A kubeconfig with one context, cluster and user, all named `west`: `server`, the CA of
/// `ca_of`, `cluster_extra` lines under the cluster and `user` lines under the user.
fn kubeconfig(server: &str, ca_of: &TestApiServer, cluster_extra: &str, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: west\nclusters:\n- name: west\n  \
         cluster:\n    server: {server}\n    certificate-authority-data: {}\n{cluster_extra}\
         contexts:\n- name: west\n  context:\n    cluster: west\n    user: west\nusers:\n- \
         name: west\n  user:\n{user}",
        b64(ca_of.ca_pem())
    )
}

/// An executable shell script at `dir/name`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// An `exec:` user entry running `command` with `args` (stderr captured by kube).
fn exec_user(command: &Path, args: &[&str]) -> String {
    format!(
        "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: {}\n      \
         args: {}\n      interactiveMode: Never\n",
        command.display(),
        serde_json::to_string(args).unwrap()
    )
}

/// An ExecCredential (client.authentication.k8s.io/v1) as a plugin prints it.
fn exec_credential(status: Value) -> String {
    json!({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
        "status": status})
    .to_string()
}

/// `label-network west-network --dry-run` with context west of the kubeconfig `kc`.
fn label_west(kc: &str) -> Vec<&str> {
    vec![
        "label-network",
        "west-network",
        "--kubeconfig",
        kc,
        "--context",
        "west",
        "--dry-run",
    ]
}

/// What a local kubeconfig `kc` is used for, with its context west: `check` as text and as
/// JSON, and [`label_west`].
fn local_runs(kc: &str) -> [Vec<&str>; 3] {
    let check = vec!["check", "--kubeconfig", kc, "--context", "west"];
    let mut json = check.clone();
    json.extend(["-o", "json"]);
    [check, json, label_west(kc)]
}

/// Stores `kubeconfig` as west's remote secret in east (`istio-remote-secret-west`, key west).
fn store_west_kubeconfig(m: &Mesh, kubeconfig: &str) {
    let mut sec = secret(&m.east, "istio-remote-secret-west").unwrap();
    sec["data"]["west"] = json!(b64(kubeconfig));
    m.east.store().apply(sec).unwrap();
}

/// `check` of the mesh as text and as JSON: each output is clean and exits 1; returns the
/// JSON checklist and both outputs.
async fn check_both(m: &Mesh, what: &str) -> (Vec<Value>, String) {
    let (code, _, all_text) = run(&check_args(m.kc(), &[])).await;
    assert_eq!(code, Some(1), "{what}:\n{all_text}");
    let json = check_args(m.kc(), &["-o", "json"]);
    let (out, _) = common::runs::meshctl_within(Duration::from_secs(60), &json).await;
    assert_eq!(out.status.code(), Some(1), "{what}:\n{}", text(&out));
    let v: Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    let all = format!("{all_text}{}", text(&out));
    assert_clean(what, &all);
    (v["checks"].as_array().unwrap().clone(), all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_refuses_a_stored_kubeconfig_that_would_run_read_or_leak_before_using_it() {
    let m = joined_ready_mesh().await;
    let dir = m.dir.path();
    let trip = Tripwire::start().await;
    let https = format!("https://127.0.0.1:{}", trip.port);
    let marker = dir.join("plugin-ran");
    let plugin = script(
        dir,
        "plugin.sh",
        &format!("touch {}\necho {SENTINEL}", marker.display()),
    );
    let secret_file = dir.join("local-secret");
    std::fs::write(&secret_file, SENTINEL).unwrap();
    let local = secret_file.display().to_string();
    let token = format!("    token: {SENTINEL}\n");
    let cases: Vec<(&str, String, String, String)> = vec![
        (
            "exec",
            https.clone(),
            String::new(),
            exec_user(&plugin, &[&format!("--token={SENTINEL}")]),
        ),
        (
            "auth-provider \"gcp\"",
            https.clone(),
            String::new(),
            format!(
                "    auth-provider:\n      name: gcp\n      config:\n        cmd-path: {}\n",
                plugin.display()
            ),
        ),
        (
            "tokenFile",
            https.clone(),
            String::new(),
            format!("    tokenFile: {local}\n"),
        ),
        (
            "client-certificate",
            https.clone(),
            String::new(),
            format!(
                "    client-certificate: {local}\n    client-key-data: {}\n",
                b64("k")
            ),
        ),
        (
            "client-key",
            https.clone(),
            String::new(),
            format!(
                "    client-key: {local}\n    client-certificate-data: {}\n",
                b64("c")
            ),
        ),
        (
            "certificate-authority",
            https.clone(),
            "    certificate-authority: /dev/zero\n".into(),
            token.clone(),
        ),
        (
            "not https://",
            format!("http://127.0.0.1:{}", trip.port),
            String::new(),
            token.clone(),
        ),
        (
            "proxy-url",
            https.clone(),
            format!(
                "    proxy-url: http://u:{SENTINEL}@127.0.0.1:{}\n",
                trip.port
            ),
            token.clone(),
        ),
        (
            "fits in no HTTP header",
            https.clone(),
            String::new(),
            format!("    token: \"{SENTINEL}\\n\"\n"),
        ),
    ];
    let ca_data = format!("    certificate-authority-data: {}\n", b64(m.west.ca_pem()));
    for (want, server, cluster_extra, user) in cases {
        let mut stored = kubeconfig(&server, &m.west, &cluster_extra, &user);
        if want == "certificate-authority" {
            // kube prefers the data: without it, it would read the file.
            stored = stored.replace(&ca_data, "");
            assert!(!stored.contains("certificate-authority-data"), "{stored}");
        }
        store_west_kubeconfig(&m, &stored);
        let (items, _) = check_both(&m, want).await;
        let i = item(&items, "secret for west in east", "kubeconfig works");
        assert_eq!(i["status"], "fail", "{want}: {i}");
        let detail = i["detail"].as_str().unwrap();
        let field = match want {
            "certificate-authority" | "not https://" | "proxy-url" => "cluster \"west\"",
            _ => "user \"west\"",
        };
        let secret = "Secret istio-system/istio-remote-secret-west (key \"west\") was not used";
        for w in [want, secret, field] {
            assert!(detail.contains(w), "{want}: {w:?} missing in {detail}");
        }
        assert!(
            !marker.exists(),
            "{want}: the stored kubeconfig's command ran"
        );
        // The other pair is untouched.
        let other = item(&items, "secret for east in west", "kubeconfig works");
        assert_eq!(other["status"], "pass", "{want}: {other}");
    }
    assert_eq!(
        trip.hits().await,
        0,
        "a stored kubeconfig reached its server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_token_that_fits_in_no_header_is_a_clean_error_naming_the_user() {
    let m = mesh().await;
    for (token, words) in [
        (format!("{SENTINEL}\n"), "ends with a line break"),
        (format!("{SENTINEL}\u{7}x"), "control character"),
    ] {
        let kc = m.dir.path().join("bad-token-kubeconfig");
        // serde_yaml writes a value ending in "\n" as a `|` block, as a user would.
        std::fs::write(&kc, m.west.kubeconfig_with_token("west", &token)).unwrap();
        let kc = p(&kc);
        for args in local_runs(kc) {
            let (code, _, all) = run(&args).await;
            assert_eq!(code, Some(1), "{args:?}:\n{all}");
            assert_clean(&format!("{args:?}"), &all);
            for w in [
                "kubeconfig user \\\"west\\\"",
                words,
                "Remove the line break",
            ] {
                let w = if args.contains(&"json") {
                    w.to_string()
                } else {
                    w.replace("\\\"", "\"")
                };
                assert!(all.contains(&w), "{args:?}: {w:?} missing in:\n{all}");
            }
            // check names the credential, not the API server, as what failed.
            if args[0] == "check" {
                assert!(all.contains("credential usable"), "{args:?}:\n{all}");
                assert!(!all.contains("API server reachable"), "{args:?}:\n{all}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_ending_in_a_newline_works_and_an_empty_one_is_named() {
    let m = mesh().await;
    let dir = m.dir.path();
    // What `kubectl create token ... > file` writes: the token and a newline.
    std::fs::write(dir.join("token"), format!("{}\n", m.west.admin_token())).unwrap();
    let kc = dir.join("token-file-kubeconfig");
    std::fs::write(
        &kc,
        kubeconfig(&m.west.url(), &m.west, "", "    tokenFile: token\n"),
    )
    .unwrap();
    let label = label_west(p(&kc));
    let (code, _, all) = run(&label).await;
    assert_eq!(code, Some(0), "{all}");
    std::fs::write(dir.join("token"), "\n").unwrap();
    let (code, _, all) = run(&label).await;
    assert_eq!(code, Some(1), "{all}");
    assert!(
        all.contains("tokenFile") && all.contains("is empty") && all.contains("user \"west\""),
        "{all}"
    );
    assert!(!all.contains("cannot reach"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_plugins_failure_names_it_and_never_prints_its_output_or_arguments() {
    let m = mesh().await;
    let dir = m.dir.path();
    let with_token = |token: &str| exec_credential(json!({"token": token}));
    // Runs 1 and 2 build the client (kube runs the plugin twice); later runs refresh.
    let count = dir.join("runs");
    let cases = [
        (
            "printed something that is not an ExecCredential",
            format!("echo {SENTINEL}"),
        ),
        (
            "failed (exit status: 3)",
            format!("echo stderr-{SENTINEL} >&2; echo {SENTINEL}; exit 3"),
        ),
        (
            "cannot be sent in an HTTP header",
            format!("printf '%s' '{}'", with_token(&format!("{SENTINEL}\n"))),
        ),
        // A token valid for a year that fits in no header: kube refreshes it per request.
        (
            "cannot be sent in an HTTP header",
            format!(
                "printf '%s' '{}'",
                exec_credential(json!({"token": format!("{SENTINEL}\n"),
                    "expirationTimestamp": "2099-01-01T00:00:00Z"}))
            ),
        ),
        // Expired at once, so kube runs it again for the request, and then it fails.
        (
            "failed (exit status: 3)",
            format!(
                "n=$(cat {c} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {c}\n\
                 if [ $n -gt 2 ]; then echo stderr-{SENTINEL} >&2; exit 3; fi\n\
                 printf '%s' '{}'",
                exec_credential(json!({"token": SENTINEL,
                    "expirationTimestamp": "2000-01-01T00:00:00Z"})),
                c = count.display()
            ),
        ),
    ];
    for (i, (want, body)) in cases.iter().enumerate() {
        let _ = std::fs::remove_file(&count);
        let plugin = script(dir, &format!("plugin-{i}.sh"), body);
        let kc = dir.join(format!("exec-kubeconfig-{i}"));
        let user = exec_user(&plugin, &[&format!("--token={SENTINEL}")]);
        std::fs::write(&kc, kubeconfig(&m.west.url(), &m.west, "", &user)).unwrap();
        let kc = p(&kc);
        for args in local_runs(kc) {
            let _ = std::fs::remove_file(&count);
            let (code, _, all) = run(&args).await;
            assert_eq!(code, Some(1), "{want} {args:?}:\n{all}");
            assert_clean(&format!("{want} {args:?}"), &all);
            assert!(all.contains(want), "{args:?}: {want:?} missing in:\n{all}");
            assert!(all.contains("plugin-"), "names the plugin: {all}");
            assert!(!all.contains("cannot reach"), "{all}");
        }
    }
    // A plugin that prints a good ExecCredential still works (exec is the user's choice).
    let good = script(
        dir,
        "good.sh",
        &format!("printf '%s' '{}'", with_token(m.west.admin_token())),
    );
    let kc = dir.join("good-exec-kubeconfig");
    let user = exec_user(&good, &[]);
    std::fs::write(&kc, kubeconfig(&m.west.url(), &m.west, "", &user)).unwrap();
    let (code, _, all) = run(&label_west(p(&kc))).await;
    assert_eq!(code, Some(0), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_proxy_url_is_refused_with_the_fix_and_without_its_password() {
    let m = mesh().await;
    let kc = m.dir.path().join("proxy-kubeconfig");
    let proxy = format!("    proxy-url: http://u:{SENTINEL}@127.0.0.1:1\n");
    let user = format!("    token: {}\n", m.west.admin_token());
    std::fs::write(&kc, kubeconfig(&m.west.url(), &m.west, &proxy, &user)).unwrap();
    let (code, _, all) = run(&["check", "--kubeconfig", p(&kc), "--context", "west"]).await;
    assert_eq!(code, Some(1), "{all}");
    assert_clean("proxy-url", &all);
    assert!(
        all.contains("proxy-url") && all.contains("remove proxy-url"),
        "{all}"
    );
}

/// meshctl with `KUBECONFIG` set to `value`: (exit code, stdout and stderr).
async fn with_kubeconfig_env(value: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(MESHCTL)
            .args(args)
            .env("KUBECONFIG", value)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("meshctl finished within 60 s")
    .unwrap();
    (out.status.code(), text(&out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_files_in_kubeconfig_are_skipped_as_kubectl_skips_them() {
    let m = mesh().await;
    let missing = m.dir.path().join("no-such-dir/kubeconfig");
    let args = [
        "label-network",
        "west-network",
        "--context",
        "east",
        "--dry-run",
    ];
    for list in [
        format!("{}:{}", m.kc(), missing.display()),
        format!("{}::{}:{}", missing.display(), m.kc(), m.kc()),
    ] {
        let (code, all) = with_kubeconfig_env(&list, &args).await;
        assert_eq!(code, Some(0), "KUBECONFIG={list}:\n{all}");
    }
    let other = m.dir.path().join("also-missing");
    let list = format!("{}:{}", missing.display(), other.display());
    let (code, all) = with_kubeconfig_env(&list, &args).await;
    assert_eq!(code, Some(1), "{all}");
    assert!(
        all.contains("none of the kubeconfig files in KUBECONFIG exists")
            && all.contains(&missing.display().to_string())
            && all.contains(&other.display().to_string()),
        "{all}"
    );
}
