//! Kubeconfig values kube-client takes but cannot use. A `server:` without a scheme
//! (`127.0.0.1:6443`) is read as client-go reads it (`https://` when TLS is configured,
//! `http://` otherwise) instead of panicking at the first request; one that is no URL at all
//! is an error naming the cluster and the file. Values that kube refuses (a bad
//! `tls-server-name`, an impersonation header with a line break, a client certificate that is
//! not one) are errors, never panics. With `KUBECONFIG=a:b:c` a refused or unusable
//! credential names the one file that defines the user (the first to name it, the one used),
//! never the colon-joined list. Every run is the real binary against TEST API servers.

mod common;

use std::path::Path;

use base64::Engine as _;
use common::runs::{run, says};
use common::*;
use k8s_test_server::TestApiServer;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A kubeconfig with one context `name` (cluster and user also `name`): `cluster` lines
/// under the cluster, `user` lines under the user.
fn kubeconfig(name: &str, cluster: &str, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n{cluster}\
         contexts:\n- name: {name}\n  context:\n    cluster: {name}\n    user: {name}\n\
         users:\n- name: {name}\n  user:\n{user}"
    )
}

/// The cluster lines of `s` with `server` as its server and `s`'s CA.
fn cluster_of(s: &TestApiServer, server: &str) -> String {
    format!(
        "    server: {server}\n    certificate-authority-data: {}\n",
        b64(s.ca_pem())
    )
}

/// `label-network west-network --dry-run` with context `ctx`, kubeconfig `kc` (or
/// `KUBECONFIG` when `None`).
async fn label_dry_run(kc: Option<&str>, ctx: &str, env: Option<&str>) -> (Option<i32>, String) {
    let mut cmd = tokio::process::Command::new(MESHCTL);
    cmd.args([
        "label-network",
        "west-network",
        "--context",
        ctx,
        "--dry-run",
    ])
    .env_remove("KUBECONFIG")
    .kill_on_drop(true);
    if let Some(kc) = kc {
        cmd.args(["--kubeconfig", kc]);
    }
    if let Some(v) = env {
        cmd.env("KUBECONFIG", v);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), cmd.output())
        .await
        .expect("meshctl ran over 60 s")
        .expect("run meshctl");
    (out.status.code(), text(&out))
}

fn no_panic(what: &str, code: Option<i32>, all: &str) {
    assert!(
        !all.contains("panicked") && code != Some(101),
        "{what}: {code:?}\n{all}"
    );
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_a_scheme_is_read_as_client_go_reads_it() {
    let m = mesh().await;
    let dir = m.dir.path();
    let token = format!("    token: {}\n", m.west.admin_token());
    let host_port = m.west.url().trim_start_matches("https://").to_string();
    assert!(!host_port.contains("://"), "{host_port}");

    // With a CA: https://, as kubectl; every command that connects works.
    let kc = write(
        dir,
        "no-scheme",
        &kubeconfig("west", &cluster_of(&m.west, &host_port), &token),
    );
    let (code, all) = label_dry_run(Some(&kc), "west", None).await;
    no_panic("label-network", code, &all);
    assert_eq!(code, Some(0), "{all}");
    let check = ["check", "--kubeconfig", &kc, "--context", "west"];
    let (code, _, all) = run(&[&check[..], &["--allow-loopback-server"]].concat()).await;
    no_panic("check", code, &all);
    assert!(!all.contains("cannot reach"), "{all}");
    let secret = create_remote_secret_args(&kc, "west", "west", &["--allow-loopback-server"]);
    let out = runs::succeeds(&secret).await;
    says(&out, &[&format!("server: {}", m.west.url())]);

    // Without TLS settings: http://, as kubectl (the TLS server then does not answer HTTP).
    let kc = write(
        dir,
        "no-scheme-no-ca",
        &kubeconfig("west", &format!("    server: {host_port}\n"), &token),
    );
    let (code, all) = label_dry_run(Some(&kc), "west", None).await;
    no_panic("label-network without a CA", code, &all);
    assert_eq!(code, Some(1), "{all}");
    says(&all, &[&format!("at http://{host_port}")]);

    // Not a URL nor a host:port pair: the cluster and the file are named, with the fix.
    let kc = write(
        dir,
        "path-only",
        &kubeconfig("west", &cluster_of(&m.west, "/api-prefix"), &token),
    );
    let (code, all) = label_dry_run(Some(&kc), "west", None).await;
    no_panic("a path as server", code, &all);
    assert_eq!(code, Some(1), "{all}");
    says(
        &all,
        &[
            "the server of cluster \"west\"",
            &kc,
            "write it as https://HOST:PORT",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_works_with_servers_without_a_scheme() {
    let m = mesh().await;
    let kc = kubeconfig_yaml(&[("west", &m.west), ("east", &m.east)]).replace("https://", "");
    assert!(!kc.contains("https://"), "{kc}");
    std::fs::write(&m.kubeconfig, kc).unwrap();
    let (code, _, all) = run(&m.join_args(&["--dry-run"])).await;
    no_panic("join --dry-run", code, &all);
    assert_eq!(code, Some(0), "{all}");
    let (code, _, all) = run(&m.join_args(&[])).await;
    no_panic("join", code, &all);
    assert_eq!(code, Some(0), "{all}");
    // The remote secrets carry the URL with its scheme (istiod and `check` need https://).
    let stored = stored_kubeconfig(
        &secret(&m.east, "istio-remote-secret-west").unwrap(),
        "west",
    );
    assert!(
        stored.contains(&format!("server: {}", m.west.url())),
        "{stored}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_kube_refuses_are_errors_never_panics() {
    let m = mesh().await;
    let dir = m.dir.path();
    let token = format!("    token: {}\n", m.west.admin_token());
    let https = cluster_of(&m.west, &m.west.url());
    let cases = [
        (
            "tls-server-name",
            format!("{https}    tls-server-name: \"bad name\\u0001\"\n"),
            token.clone(),
        ),
        (
            "empty tls-server-name",
            format!("{https}    tls-server-name: \"\"\n"),
            token.clone(),
        ),
        (
            "impersonation with a line break",
            https.clone(),
            format!("{token}    as: \"a\\nb\"\n"),
        ),
        (
            "impersonated group with a line break",
            https.clone(),
            format!("{token}    as: a\n    as-groups: [\"x\\ny\"]\n"),
        ),
        (
            "client certificate that is none",
            https.clone(),
            format!(
                "    client-certificate-data: {}\n    client-key-data: {}\n",
                b64("x"),
                b64("y")
            ),
        ),
        (
            "client certificate that is not base64",
            https.clone(),
            "    client-certificate-data: \"!!\"\n".to_string(),
        ),
        (
            "CA that is not base64",
            format!(
                "    server: {}\n    certificate-authority-data: \"!!\"\n",
                m.west.url()
            ),
            token.clone(),
        ),
        ("empty server", cluster_of(&m.west, "\"\""), token.clone()),
        (
            "server with an unknown scheme",
            cluster_of(&m.west, &m.west.url().replace("https", "ftp")),
            token.clone(),
        ),
    ];
    for (n, (what, cluster, user)) in cases.iter().enumerate() {
        let kc = write(
            dir,
            &format!("case-{n}"),
            &kubeconfig("west", cluster, user),
        );
        let (code, all) = label_dry_run(Some(&kc), "west", None).await;
        no_panic(what, code, &all);
        assert_eq!(code, Some(1), "{what}:\n{all}");
        assert!(all.contains("error: "), "{what}:\n{all}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubeconfig_list_names_the_file_that_defines_the_user() {
    let m = mesh().await;
    let dir = m.dir.path();
    let https = cluster_of(&m.west, &m.west.url());
    let a = write(
        dir,
        "a",
        &kubeconfig(
            "west",
            &https,
            &format!("    token: {}\n", m.west.admin_token()),
        ),
    );
    let b = write(
        dir,
        "b",
        &kubeconfig("badtok", &https, "    token: badtok\n"),
    );
    let empty = dir.join("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    let c = write(
        dir,
        "c",
        &kubeconfig(
            "tokfile",
            &https,
            &format!("    tokenFile: {}\n", empty.display()),
        ),
    );
    let d = write(
        dir,
        "d",
        &kubeconfig(
            "proxied",
            &format!("{https}    proxy-url: http://127.0.0.1:9\n"),
            "    token: t\n",
        ),
    );
    let list = [a.as_str(), &b, &c, &d].join(":");
    // A second `badtok` user in a later file is not the one used, nor named.
    let e = write(
        dir,
        "e",
        &kubeconfig("badtok", &https, "    token: other\n"),
    );
    let list = format!("{list}:{e}");
    for (ctx, file, want) in [
        (
            "badtok",
            &b,
            "refused the credential of kubeconfig user \"badtok\"",
        ),
        (
            "tokfile",
            &c,
            "kubeconfig user \"tokfile\" (context \"tokfile\")",
        ),
        ("proxied", &d, "cluster \"proxied\""),
    ] {
        let (code, all) = label_dry_run(None, ctx, Some(&list)).await;
        no_panic(ctx, code, &all);
        assert_eq!(code, Some(1), "{ctx}:\n{all}");
        says(&all, &[want, &format!(" {file} ")]);
        assert!(!all.contains(&list), "{ctx} names the whole list:\n{all}");
        assert!(!all.contains(&format!("{file}:")), "{ctx}:\n{all}");
    }
    // The context that works still does, through the same list.
    let (code, all) = label_dry_run(None, "west", Some(&list)).await;
    assert_eq!(code, Some(0), "{all}");
}
