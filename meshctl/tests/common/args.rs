//! meshctl's command lines, written once: a test names only what it varies, and `extra`
//! flags go last.

use std::path::Path;

use super::{Mesh, p};

/// `meshctl <command> --kubeconfig <kubeconfig> --context west --context east`.
pub fn both_contexts<'a>(command: &'a str, kubeconfig: &'a str) -> Vec<&'a str> {
    vec![
        command,
        "--kubeconfig",
        kubeconfig,
        "--context",
        "west",
        "--context",
        "east",
    ]
}

/// `meshctl check` of west and east with this kubeconfig (loopback test servers allowed),
/// plus `extra` flags.
pub fn check_args<'a>(kubeconfig: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = both_contexts("check", kubeconfig);
    args.push("--allow-loopback-server");
    args.extend_from_slice(extra);
    args
}

/// `meshctl gateway install --network west-network` into context west with this kubeconfig,
/// plus `extra` flags.
pub fn gateway_install_args<'a>(kubeconfig: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "gateway",
        "install",
        "--network",
        "west-network",
        "--kubeconfig",
        kubeconfig,
        "--context",
        "west",
    ];
    args.extend_from_slice(extra);
    args
}

/// `meshctl create-remote-secret --kubeconfig <kubeconfig> --context <context> --name <name>`
/// plus `extra` flags.
pub fn create_remote_secret_args<'a>(
    kubeconfig: &'a str,
    context: &'a str,
    name: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "create-remote-secret",
        "--kubeconfig",
        kubeconfig,
        "--context",
        context,
        "--name",
        name,
    ];
    args.extend_from_slice(extra);
    args
}

/// `meshctl create-remote-secret` for context west (named west) with this kubeconfig,
/// loopback test servers allowed, plus `extra` flags.
pub fn remote_secret_args<'a>(kubeconfig: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args =
        create_remote_secret_args(kubeconfig, "west", "west", &["--allow-loopback-server"]);
    args.extend_from_slice(extra);
    args
}

/// `meshctl cacerts apply <bundle> --kubeconfig <kubeconfig> --context <context>` plus `extra`.
pub fn cacerts_apply_args<'a>(
    kubeconfig: &'a str,
    bundle: &'a str,
    context: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "cacerts",
        "apply",
        bundle,
        "--kubeconfig",
        kubeconfig,
        "--context",
        context,
    ];
    args.extend_from_slice(extra);
    args
}

/// `meshctl certs intermediate` for `cluster` into `out`, signed by the root
/// `root_cert`/`root_key`, plus `extra` flags.
pub fn intermediate_args<'a>(
    root_cert: &'a Path,
    root_key: &'a Path,
    cluster: &'a str,
    out: &'a Path,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "certs",
        "intermediate",
        "--root-cert",
        p(root_cert),
        "--root-key",
        p(root_key),
        "--cluster",
        cluster,
        "--out",
        p(out),
    ];
    args.extend_from_slice(extra);
    args
}

/// `meshctl certs renew` of the cluster bundle `ca` with the root `root_cert`/`root_key`,
/// plus `extra` flags.
pub fn renew_args<'a>(
    ca: &'a Path,
    root_cert: &'a Path,
    root_key: &'a Path,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "certs",
        "renew",
        "--ca",
        p(ca),
        "--root-cert",
        p(root_cert),
        "--root-key",
        p(root_key),
    ];
    args.extend_from_slice(extra);
    args
}

/// `meshctl certs workload` for `namespace`/`service_account`, signed by the cluster bundle
/// `ca`, into `out`, plus `extra` flags.
pub fn workload_args<'a>(
    ca: &'a Path,
    namespace: &'a str,
    service_account: &'a str,
    out: &'a Path,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "certs",
        "workload",
        "--ca",
        p(ca),
        "-n",
        namespace,
        "-s",
        service_account,
        "--out",
        p(out),
    ];
    args.extend_from_slice(extra);
    args
}

impl Mesh {
    /// `meshctl rotate <step>` of west and east: `finish` confirmed, the others with `--dir`.
    pub fn rotate_args<'a>(&'a self, step: &'a str, dir: &'a Path) -> Vec<&'a str> {
        let mut a = vec!["rotate"];
        a.extend(both_contexts(step, self.kc()));
        if step == "finish" {
            a.push("--confirm");
        } else {
            a.extend(["--dir", p(dir)]);
        }
        a
    }
}

/// `meshctl certs renew` of west's bundle with the root in `root`, applied in west, plus
/// `extra`.
pub fn renew_west_args(m: &Mesh, root: &Path, extra: &[&str]) -> Vec<String> {
    let west = m.certs.join("west");
    let (cert, key) = (root.join("root-cert.pem"), root.join("root-key.pem"));
    let mut args = vec![
        "certs",
        "renew",
        "--ca",
        p(&west),
        "--root-cert",
        p(&cert),
        "--root-key",
        p(&key),
        "--kubeconfig",
        m.kc(),
        "--context",
        "west",
        "--apply",
    ];
    args.extend_from_slice(extra);
    args.iter().map(|s| s.to_string()).collect()
}
