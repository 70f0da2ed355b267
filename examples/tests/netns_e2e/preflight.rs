//! Before anything is created: root, the tools on PATH, the built binaries.

use std::path::PathBuf;
use std::process::{Command, Stdio};

pub struct Bins {
    pub workload: PathBuf,
    pub gateway: PathBuf,
    pub ztunnel: PathBuf,
    pub meshctl: PathBuf,
}

pub fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

pub fn preflight() -> Bins {
    match effective_uid() {
        Some(0) => {}
        uid => panic!(
            "netns_e2e needs root (effective uid: {}): it creates network namespaces and veth \
             links with `ip netns`. Run it as root: `sudo -E cargo test -p examples --test \
             netns_e2e -- --ignored` (CI does). It fails rather than pass without running; \
             test.sh reports it as SKIPPED when not root.",
            uid.map_or("unknown".into(), |u| u.to_string())
        ),
    }
    for (tool, arg) in [
        ("ip", "-V"),
        ("bash", "--version"),
        ("openssl", "version"),
        ("setpriv", "--version"),
        ("python3", "--version"),
    ] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "netns_e2e needs `{tool}` on PATH (iproute2, bash, openssl, util-linux, python3)"
        );
    }
    let workload = PathBuf::from(env!("CARGO_BIN_EXE_mesh-workload"));
    let ztunnel = PathBuf::from(env!("CARGO_BIN_EXE_ztunnel-double"));
    let (gateway, meshctl) = (
        workload.with_file_name("gateway"),
        workload.with_file_name("meshctl"),
    );
    for (bin, pkg) in [(&gateway, "gateway"), (&meshctl, "meshctl")] {
        assert!(
            bin.is_file(),
            "{} is missing: build it first with `cargo build --workspace` (or -p {pkg}); \
             `cargo test --workspace` builds it too",
            bin.display()
        );
    }
    println!(
        "== binaries: {}, {}, {} and {}",
        gateway.display(),
        meshctl.display(),
        workload.display(),
        ztunnel.display()
    );
    Bins {
        workload,
        gateway,
        ztunnel,
        meshctl,
    }
}
