//! What the binary says when its configuration cannot work, and what it does with a
//! `GATEWAY_*` variable set but empty: a bad `--cluster-domain` and two listeners on one port
//! stop the start with exit code 2 and the fix; an empty variable counts as unset.

mod common;

use std::process::Command;

use common::*;
use k8s_test_server::TestApiServer;

fn endpoints_file(dir: &tempfile::TempDir) -> std::path::PathBuf {
    let path = dir.path().join("endpoints.yaml");
    std::fs::write(&path, "services: []\n").unwrap();
    path
}

/// `--cluster-domain` (or its variable) empty, with a trailing `..` or not a DNS name gave
/// every Service an unmatchable host: zero routes, ready, nothing logged.
#[test]
fn a_cluster_domain_that_is_not_a_dns_name_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let eps = endpoints_file(&dir);
    for (flag, env) in [
        (Some("bad_domain"), None),
        (Some(""), None),
        (Some("cluster.local.."), None),
        (None, Some("bad_domain")),
    ] {
        let mut cmd = loopback_command();
        cmd.arg("--endpoints").arg(&eps);
        if let Some(v) = flag {
            cmd.arg(format!("--cluster-domain={v}"));
        }
        if let Some(v) = env {
            cmd.env("GATEWAY_CLUSTER_DOMAIN", v);
        }
        let (status, stderr) = exit_of(cmd, "a bad --cluster-domain");
        assert_eq!(status.code(), Some(2), "{flag:?} {env:?}: {stderr}");
        assert!(
            stderr.contains("--cluster-domain")
                && stderr.contains("not a DNS domain")
                && stderr.contains("e.g. cluster.local"),
            "{flag:?} {env:?}: {stderr}"
        );
    }
}

/// Two of the gateway's listeners on one port failed at bind, naming neither flag:
/// "binding 127.0.0.1:X: Address already in use", exit 1.
#[test]
fn two_listeners_on_one_port_stop_the_start_naming_both_flags() {
    let dir = tempfile::tempdir().unwrap();
    let eps = endpoints_file(&dir);
    let port = testkit::net::free_port([127, 0, 0, 1].into()).unwrap();
    let at = format!("127.0.0.1:{port}");
    for (flags, named) in [
        (
            vec![
                "--listen",
                "127.0.0.1:0",
                "--admin",
                &at,
                "--status-listen",
                &at,
            ],
            ["--admin", "--status-listen"],
        ),
        (
            vec!["--listen", &at, "--admin", &at],
            ["--listen", "--admin"],
        ),
    ] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
        cmd.args(["--hbone-listen", "off"])
            .args(&flags)
            .arg("--endpoints")
            .arg(&eps)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let (status, stderr) = exit_of(cmd, "two listeners on one port");
        assert_eq!(status.code(), Some(2), "{flags:?}: {stderr}");
        for flag in named {
            assert!(
                stderr.contains(&format!("{flag} ({at})")),
                "{flags:?}: {stderr}"
            );
        }
        assert!(stderr.contains("its own port"), "{stderr}");
    }
}

/// An empty variable is unset: `GATEWAY_PROXY_PROTOCOL=` and `GATEWAY_MAX_HELLO_BYTES=`
/// stopped the start with "a value is required for '--proxy-protocol'" (naming the flag, not
/// the variable the operator set); now the defaults apply and the start log names them.
#[test]
fn empty_variables_are_unset_with_an_endpoints_file() {
    let dir = tempfile::tempdir().unwrap();
    let eps = endpoints_file(&dir);
    let mut cmd = loopback_command();
    cmd.args(["--log-format", "json", "--endpoints"])
        .arg(&eps)
        .env("RUST_LOG", "info");
    for var in [
        "GATEWAY_PROXY_PROTOCOL",
        "GATEWAY_MAX_HELLO_BYTES",
        "GATEWAY_CONTEXT",
        "GATEWAY_CLUSTER_DOMAIN",
        "GATEWAY_NAMESPACES",
    ] {
        cmd.env(var, "");
    }
    let mut gw = GatewayProcess::spawn(cmd);
    let said =
        gw.wait_line(&|v| v["message"] == "environment variables set but empty are taken as unset");
    let mut named: Vec<&str> = said["variables"].as_str().unwrap().split(',').collect();
    named.sort_unstable();
    assert_eq!(
        named,
        [
            "GATEWAY_CLUSTER_DOMAIN",
            "GATEWAY_CONTEXT",
            "GATEWAY_MAX_HELLO_BYTES",
            "GATEWAY_NAMESPACES",
            "GATEWAY_PROXY_PROTOCOL"
        ],
        "{said}"
    );
    let config = gw.wait_line(&|v| v["message"] == "starting gateway");
    let config = config["config"].as_str().unwrap();
    assert!(
        config.contains("proxy_protocol: false") && config.contains("max_hello_bytes: 65536"),
        "{config}"
    );
    assert!(gw.terminate());
}

/// `GATEWAY_ENDPOINTS=` (a template with no file) is Kubernetes discovery, as no variable
/// is, and `GATEWAY_CONTEXT=` the kubeconfig's current context: they stopped the start with
/// "a value is required for '--endpoints'" and `no context ""`.
#[test]
fn empty_endpoints_and_context_variables_are_kubernetes_discovery_with_the_current_context() {
    let rt = multi_thread_runtime(2);
    let api = rt.block_on(TestApiServer::start("east")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig("east")).unwrap();
    let mut cmd = loopback_command();
    cmd.args(["--log-format", "json", "--kubeconfig"])
        .arg(&kubeconfig)
        .env("GATEWAY_ENDPOINTS", "")
        .env("GATEWAY_CONTEXT", "")
        .env("RUST_LOG", "info");
    let mut gw = GatewayProcess::spawn(cmd);
    let said =
        gw.wait_line(&|v| v["message"] == "environment variables set but empty are taken as unset");
    assert_eq!(
        said["variables"], "GATEWAY_ENDPOINTS,GATEWAY_CONTEXT",
        "{said}"
    );
    let config = gw.wait_line(&|v| v["message"] == "starting gateway");
    let config = config["config"].as_str().unwrap();
    assert!(
        config.contains("discovery: Kubernetes") && config.contains("context: None"),
        "{config}"
    );
    let deadline = std::time::Instant::now() + TIMEOUT;
    while admin_get(gw.admin, "/healthz/ready").0 != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(gw.terminate());
    drop(api);
}
