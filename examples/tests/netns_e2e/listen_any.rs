//! The gateway's default listen address, `:PORT`, on real sockets in fresh namespaces (the
//! unit test in `gateway/src/sockets.rs` fakes the bind). Wildcard binds happen only inside
//! these namespaces, never on the host. Three namespaces, each with its own gateway
//! (`--listen :15443 --admin :15021`) and a catalog workload on `127.0.0.2:3000`:
//!
//! - `<p>ds-gw`, IPv4 and IPv6, joined by a veth to `<p>ds-peer` (10.77.0.1/24 and
//!   fd77::1/64 here, .2 and ::2 there), with `net.ipv6.bindv6only=1`: one socket on `[::]`
//!   serves calls over 127.0.0.1, ::1, and from the peer namespace over 10.77.0.1 and
//!   fd77::1; IPv4 clients are logged as IPv4, not `::ffff:a.b.c.d`.
//! - `<p>ds-v6off`, with `net.ipv6.conf.{all,default}.disable_ipv6=1`. Tried by hand first
//!   (python3 in `ip netns exec`): `socket(AF_INET6)` still works and binding `[::]` still
//!   succeeds; only binding `::1` fails (EADDRNOTAVAIL, the address is gone). So the sysctl
//!   does not trigger the fallback, and need not: the dual-stack socket on `[::]` still takes
//!   IPv4 clients. The test pins that down.
//! - `<p>ds-noinet6`, where the gateway cannot open AF_INET6 sockets at all, as on a kernel
//!   booted with `ipv6.disable=1`: there `inet6_init` returns before
//!   `sock_register(&inet6_family_ops)` (linux `net/ipv6/af_inet6.c`), so `__sock_create`
//!   finds no family and returns EAFNOSUPPORT (`net/socket.c`). That boot parameter is
//!   host-wide, not per namespace, so the gateway is started through a seccomp filter
//!   ([`NO_INET6`]) that makes `socket(AF_INET6, ...)` fail with that same errno: the
//!   gateway's real bind path meets a real kernel refusal and falls back to `0.0.0.0`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use testkit::mesh::{CATALOG, WEBAPP, spiffe_id};

use crate::fixture::Mesh;
use crate::preflight;
use crate::procs::{Proc, ip, run, sh};
use crate::topology::Namespaces;
use crate::{ADMIN_PORT, catalog_sni};

const GW: &str = "gw";
const PEER: &str = "peer";
const V6OFF: &str = "v6off";
const NOINET6: &str = "noinet6";
const GW_V4: &str = "10.77.0.1";
const GW_V6: &str = "fd77::1";
const PEER_V4: &str = "10.77.0.2";
const PEER_V6: &str = "fd77::2";
const LISTEN_PORT: u16 = 15443;
const BACKEND: &str = "127.0.0.2:3000";

/// Runs its argv under a seccomp filter that fails `socket(AF_INET6, ...)` with
/// EAFNOSUPPORT (97) and allows every other call, then execs it (the filter is inherited
/// across exec). x86_64 and aarch64; anything else exits with an error.
const NO_INET6: &str = r#"
import ctypes, os, platform, struct, sys
arch = platform.machine()
nr_socket, audit_arch = {"x86_64": (41, 0xC000003E), "aarch64": (198, 0xC00000B7)}[arch]
def op(code, jt, jf, k): return struct.pack("=HBBI", code, jt, jf, k)
prog = b"".join([
    op(0x20, 0, 0, 4), op(0x15, 0, 5, audit_arch),     # arch, else allow
    op(0x20, 0, 0, 0), op(0x15, 0, 3, nr_socket),      # nr == socket, else allow
    op(0x20, 0, 0, 16), op(0x15, 0, 1, 10),            # args[0] == AF_INET6, else allow
    op(0x06, 0, 0, 0x00050000 | 97),                   # SECCOMP_RET_ERRNO | EAFNOSUPPORT
    op(0x06, 0, 0, 0x7FFF0000),                        # SECCOMP_RET_ALLOW
])
buf = ctypes.create_string_buffer(prog)
class Fprog(ctypes.Structure): _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fprog = Fprog(len(prog) // 8, ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
# PR_SET_NO_NEW_PRIVS, then PR_SET_SECCOMP with SECCOMP_MODE_FILTER.
if libc.prctl(38, 1, None, 0, 0) or libc.prctl(22, 2, ctypes.byref(fprog), 0, 0):
    sys.exit("seccomp filter: " + os.strerror(ctypes.get_errno()))
os.execv(sys.argv[1], sys.argv[1:])
"#;

#[test]
#[ignore = "needs root: creates network namespaces; run with --ignored as root (CI does)"]
fn listen_any_is_dual_stack_and_falls_back_to_ipv4_without_ipv6() {
    let bins = preflight::preflight();
    let python = Command::new("python3").arg("--version").output();
    assert!(
        python.is_ok_and(|o| o.status.success()),
        "netns_e2e's listen_any case needs `python3` on PATH: it runs the gateway under a \
         seccomp filter (ctypes) to refuse AF_INET6 sockets"
    );
    let prefix = format!("mfw{}ds", std::process::id());
    let mut m = Mesh {
        procs: Vec::new(),
        namespaces: Namespaces::default(),
        dir: tempfile::Builder::new()
            .prefix(&format!("{prefix}-"))
            .tempdir()
            .expect("create temp dir"),
        bins: Arc::new(bins),
        prefix,
        cert_version: 0,
    };
    m.write_pki();
    std::fs::write(
        m.dir.path().join("endpoints.yaml"),
        format!(
            "services:\n- host: {}\n  ports: [{{port: 80, targetPort: 3000}}]\n  \
             endpoints: [{{address: 127.0.0.2}}]\n",
            testkit::mesh::host(CATALOG)
        ),
    )
    .expect("write endpoints");

    dual_stack(&mut m);
    ipv6_disabled_by_sysctl(&mut m);
    no_ipv6_sockets(&mut m);
    println!("== listen_any: all cases passed");
}

fn dual_stack(m: &mut Mesh) {
    println!("== listen_any: :PORT in a dual-stack namespace");
    let (gw, peer) = (m.ns(GW), m.ns(PEER));
    for ns in [&gw, &peer] {
        m.namespaces.add(ns);
        ip(&format!("-n {ns} link set lo up"));
    }
    // The gateway turns IPV6_V6ONLY off itself: IPv4 must work even where `[::]` sockets
    // are IPv6-only by default (the sysctl is per namespace).
    sh(&gw, "echo 1 > /proc/sys/net/ipv6/bindv6only");
    ip(&format!(
        "-n {gw} link add ds0 type veth peer name ds0 netns {peer}"
    ));
    for (ns, v4, v6) in [(&gw, GW_V4, GW_V6), (&peer, PEER_V4, PEER_V6)] {
        ip(&format!("-n {ns} addr add {v4}/24 dev ds0"));
        // No duplicate address detection: usable at once, not after a second or two.
        ip(&format!("-n {ns} addr add {v6}/64 dev ds0 nodad"));
        ip(&format!("-n {ns} link set ds0 up"));
    }
    let g = start(m, GW, false);
    assert_eq!(
        listening(m.proc(&g)),
        ("[::]:15443".into(), "[::]:15021".into())
    );
    assert_eq!(
        listeners(&gw),
        ["[::]:15021", "[::]:15443"],
        "one dual-stack socket per port, no IPv4 socket"
    );
    println!("   listening sockets: {:?}", listeners(&gw));
    let calls = [
        (GW, "127.0.0.1", "127.0.0.1"),
        (GW, "::1", "::1"),
        (PEER, GW_V4, PEER_V4),
        (PEER, GW_V6, PEER_V6),
    ];
    for (from, to, _) in calls {
        call_ok(m, from, to);
        let (status, _) = m
            .http_get(from, to, ADMIN_PORT, "/healthz/ready")
            .unwrap_or_else(|| panic!("admin on {to}:{ADMIN_PORT} from {from}: no answer"));
        assert_eq!(status, 200, "admin on {to} from {from}");
    }
    let mut want: Vec<String> = calls.iter().map(|(_, _, c)| c.to_string()).collect();
    want.sort();
    assert_eq!(clients(m.proc(&g), calls.len()), want);
}

fn ipv6_disabled_by_sysctl(m: &mut Mesh) {
    println!("== listen_any: :PORT with net.ipv6.conf.all.disable_ipv6=1");
    let ns = m.ns(V6OFF);
    m.namespaces.add(&ns);
    sh(
        &ns,
        "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && \
         echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6",
    );
    ip(&format!("-n {ns} link set lo up"));
    let v6 = run(
        Command::new("ip").args(["-n", &ns, "-6", "addr"]),
        Duration::from_secs(5),
    );
    assert!(v6.stdout.is_empty(), "IPv6 addresses left: {v6:?}");
    let g = start(m, V6OFF, false);
    assert_eq!(
        listening(m.proc(&g)),
        ("[::]:15443".into(), "[::]:15021".into())
    );
    assert!(
        m.proc(&g).find("no IPv6 on this host").is_none(),
        "binding [::] works with the sysctl set; nothing to fall back from"
    );
    assert_eq!(listeners(&ns), ["[::]:15021", "[::]:15443"]);
    println!("   listening sockets: {:?}, no fallback", listeners(&ns));
    call_ok(m, V6OFF, "127.0.0.1");
    let c = call(m, V6OFF, "::1");
    assert!(
        !c.ok && c.stderr.contains("Cannot assign requested address"),
        "::1 is gone with the sysctl, so the connect must fail: {}",
        c.describe()
    );
    println!("   v6off -> [::1]:{LISTEN_PORT}: {}", c.error_line());
    assert_eq!(clients(m.proc(&g), 1), ["127.0.0.1"]);
}

fn no_ipv6_sockets(m: &mut Mesh) {
    println!("== listen_any: :PORT where AF_INET6 sockets are refused (as ipv6.disable=1)");
    let ns = m.ns(NOINET6);
    m.namespaces.add(&ns);
    ip(&format!("-n {ns} link set lo up"));
    let g = start(m, NOINET6, true);
    let fallbacks: Vec<String> = m
        .proc(&g)
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, l)| l.contains("no IPv6 on this host"))
        .map(|(_, l)| l.clone())
        .collect();
    assert_eq!(
        fallbacks.len(),
        2,
        "listen and admin fall back: {fallbacks:?}"
    );
    for line in &fallbacks {
        assert!(line.contains("os error 97"), "EAFNOSUPPORT: {line}");
    }
    println!("   {}", fallbacks[0]);
    assert_eq!(
        listening(m.proc(&g)),
        ("0.0.0.0:15443".into(), "0.0.0.0:15021".into())
    );
    assert_eq!(listeners(&ns), ["0.0.0.0:15021", "0.0.0.0:15443"]);
    println!("   listening sockets: {:?}", listeners(&ns));
    call_ok(m, NOINET6, "127.0.0.1");
    let (status, _) = m
        .http_get(NOINET6, "127.0.0.1", ADMIN_PORT, "/healthz/ready")
        .expect("admin on 0.0.0.0 answers");
    assert_eq!(status, 200);
    // The namespace itself has IPv6 (the client may use it): nothing listens there.
    let c = call(m, NOINET6, "::1");
    assert!(
        !c.ok && c.stderr.contains("Connection refused"),
        "{}",
        c.describe()
    );
    println!("   noinet6 -> [::1]:{LISTEN_PORT}: {}", c.error_line());
    assert_eq!(clients(m.proc(&g), 1), ["127.0.0.1"]);
}

/// Starts catalog on [`BACKEND`] and a gateway with `:PORT` listeners in the namespace of
/// `role` (under [`NO_INET6`] with `no_inet6`); returns the gateway's label once it listens.
fn start(m: &mut Mesh, role: &str, no_inet6: bool) -> String {
    let ns = m.ns(role);
    let certs = m.certs("east", CATALOG).display().to_string();
    let args = [
        "serve", "--certs", &certs, "--listen", BACKEND, "--name", "catalog",
    ]
    .map(String::from);
    let mut backend = Proc::spawn(&format!("catalog-{role}"), &ns, &m.bins.workload, &args);
    backend
        .wait_for("serving mTLS on", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("catalog in {ns} did not start: {e}"));
    m.procs.push(backend);
    let endpoints = m.dir.path().join("endpoints.yaml").display().to_string();
    let mut args: Vec<String> = [
        "--listen",
        &format!(":{LISTEN_PORT}"),
        "--admin",
        &format!(":{ADMIN_PORT}"),
        "--hbone-listen",
        "off",
        "--endpoints",
        &endpoints,
        "--log-format",
        "json",
    ]
    .map(String::from)
    .to_vec();
    let gateway = m.bins.gateway.display().to_string();
    let program = if no_inet6 {
        args.splice(0..0, ["-c".into(), NO_INET6.into(), gateway]);
        Path::new("python3").to_path_buf()
    } else {
        m.bins.gateway.clone()
    };
    let label = format!("gateway-{role}");
    let mut p = Proc::spawn(&label, &ns, &program, &args);
    p.wait_for("gateway listening", Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{label} did not start: {e}"));
    m.procs.push(p);
    label
}

/// The gateway's `listen_addr` and `admin_addr` from its start line.
fn listening(p: &Proc) -> (String, String) {
    let (_, line) = p.find("gateway listening").expect("listening line");
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    (field("listen_addr"), field("admin_addr"))
}

/// Listening TCP sockets of namespace `ns` on the gateway's ports, as `0.0.0.0:PORT`,
/// `[::]:PORT` or `<family> <hex address>:PORT`, sorted (from /proc/net/tcp{,6}).
fn listeners(ns: &str) -> Vec<String> {
    let mut found = Vec::new();
    for (file, any) in [("tcp", "0.0.0.0"), ("tcp6", "[::]")] {
        let out = run(
            Command::new("ip").args(["netns", "exec", ns, "cat", &format!("/proc/net/{file}")]),
            Duration::from_secs(5),
        );
        for line in String::from_utf8_lossy(&out.stdout).lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some("0A")) = (f.get(1), f.get(3).copied()) else {
                continue;
            };
            let Some((addr, port)) = local.split_once(':') else {
                continue;
            };
            let Ok(port) = u16::from_str_radix(port, 16) else {
                continue;
            };
            if port != LISTEN_PORT && port != ADMIN_PORT {
                continue;
            }
            if addr.bytes().all(|b| b == b'0') {
                found.push(format!("{any}:{port}"));
            } else {
                found.push(format!("{file} {addr}:{port}"));
            }
        }
    }
    found.sort();
    found
}

/// `to` with the gateway's port, bracketed if IPv6.
fn gw_addr(to: &str) -> String {
    match to.contains(':') {
        true => format!("[{to}]:{LISTEN_PORT}"),
        false => format!("{to}:{LISTEN_PORT}"),
    }
}

fn call(m: &Mesh, from: &str, to: &str) -> crate::caller::Call {
    let addr = gw_addr(to);
    m.caller(from, "west", WEBAPP).call(
        &addr,
        &catalog_sni(),
        &spiffe_id(CATALOG),
        &format!("over {addr}"),
    )
}

/// One call from `from` to the gateway on `to`: catalog answers and names webapp.
fn call_ok(m: &Mesh, from: &str, to: &str) {
    let c = call(m, from, to);
    let reply = c.reply.clone().unwrap_or_default();
    assert!(
        c.ok && reply.starts_with("catalog: over ")
            && reply.ends_with(&format!("(caller {})", spiffe_id(WEBAPP))),
        "call from {from} to the gateway on {to}: {}",
        c.describe()
    );
    println!("   {from} -> {}: {reply}", gw_addr(to));
}

/// The client IPs of the access lines of gateway `p`, sorted, once it has logged `n` (at
/// most 5 s); an IPv4 client logged as `::ffff:a.b.c.d` would not compare equal.
fn clients(p: &Proc, n: usize) -> Vec<String> {
    let label = &p.label;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let lines: Vec<serde_json::Value> = p
            .log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(_, l)| serde_json::from_str(l).ok())
            .filter(|v: &serde_json::Value| v["message"] == "connection closed")
            .collect();
        if lines.len() >= n || std::time::Instant::now() > deadline {
            assert_eq!(lines.len(), n, "access lines of {label}: {lines:?}");
            let mut ips: Vec<String> = lines
                .iter()
                .map(|v| {
                    let c: std::net::SocketAddr = v["client"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or_else(|| panic!("no client in {v}"));
                    c.ip().to_string()
                })
                .collect();
            ips.sort();
            return ips;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
