//! Step 1: the networks are isolated; west reaches east only through a gateway.

use std::process::Command;
use std::time::Duration;

use testkit::mesh::{CATALOG, spiffe_id};

use crate::fixture::Mesh;
use crate::procs::{ip, run};
use crate::{EAST_GW, EAST_LB_IP, WPOD, catalog_sni};

pub fn step1_west_cannot_reach_east_pods(m: &Mesh) {
    println!("== step 1: west cannot reach east pod addresses");
    let webapp = m.caller(WPOD, "west", "webapp");
    for target in ["10.20.0.8:3000", "10.20.0.9:3000", "10.20.0.1:15443"] {
        let c = webapp.call(target, &catalog_sni(), &spiffe_id(CATALOG), "direct");
        assert!(
            !c.ok,
            "west reached east pod network address {target} directly: {}",
            c.describe()
        );
        assert!(
            c.stderr.contains(&format!("connect {target}")),
            "call to {target} should fail at TCP connect (no route), got: {}",
            c.describe()
        );
        println!("   west -> {target} directly: refused: {}", c.error_line());
    }

    // Even a west host that routes 10.20.0.0/16 at the east gateway's LB address gets
    // nowhere: the gateway namespace does not forward packets (they are dropped, so the
    // probe times out), it only proxies by SNI. The same probe reaches the gateway's port.
    let wpod = m.ns(WPOD);
    tcp_probe(&wpod, EAST_GW).unwrap_or_else(|e| panic!("probe to {EAST_GW} should connect: {e}"));
    ip(&format!(
        "-n {wpod} route add 10.20.0.0/16 via {EAST_LB_IP}"
    ));
    let probe = tcp_probe(&wpod, "10.20.0.8:3000");
    ip(&format!(
        "-n {wpod} route del 10.20.0.0/16 via {EAST_LB_IP}"
    ));
    match probe {
        Ok(()) => panic!("with a route via the east gateway, west reached 10.20.0.8:3000"),
        Err(e) => println!("   west -> 10.20.0.8:3000 routed via {EAST_LB_IP}: no connection: {e}"),
    }
}

/// A plain TCP connect from inside a namespace, given up after 2 s.
pub fn tcp_probe(ns: &str, addr: &str) -> Result<(), String> {
    let (host, port) = addr.rsplit_once(':').expect("ip:port");
    let out = run(
        Command::new("ip").args([
            "netns",
            "exec",
            ns,
            "timeout",
            "2",
            "bash",
            "-c",
            r#"exec 3<>"/dev/tcp/$1/$2""#,
            "tcp_probe",
            host,
            port,
        ]),
        Duration::from_secs(5),
    );
    match out.status.code() {
        Some(0) => Ok(()),
        Some(124) => Err("connect timed out after 2 s".into()),
        _ => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
    }
}
