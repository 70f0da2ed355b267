//! The network: five namespaces, a bridge for the shared load-balancer network, and one
//! veth per pod network; nothing routes between namespaces.

use std::process::Command;
use std::time::Duration;

use crate::fixture::Mesh;
use crate::procs::{ip, run, sh};
use crate::{EGW, EPOD, LB, WGW, WPOD};

impl Mesh {
    pub fn build_topology(&mut self) {
        for role in [LB, WGW, WPOD, EGW, EPOD] {
            let ns = self.ns(role);
            self.namespaces.add(&ns);
            ip(&format!("-n {ns} link set lo up"));
            // No namespace routes for another: gateways proxy, they never forward.
            sh(
                &ns,
                "echo 0 > /proc/sys/net/ipv4/ip_forward && test $(cat /proc/sys/net/ipv4/ip_forward) = 0",
            );
        }
        // The shared network: a bridge, and one leg per gateway and per pod network.
        let lb = self.ns(LB);
        ip(&format!("-n {lb} link add br0 type bridge stp_state 0"));
        ip(&format!("-n {lb} link set br0 up"));
        for (role, port, addr) in [
            (WGW, "wgw", "172.31.0.10/24"),
            (EGW, "egw", "172.31.0.20/24"),
            (WPOD, "wnode", "172.31.0.5/24"),
            (EPOD, "enode", "172.31.0.6/24"),
        ] {
            let ns = self.ns(role);
            ip(&format!(
                "-n {lb} link add {port} type veth peer name lb0 netns {ns}"
            ));
            ip(&format!("-n {lb} link set {port} master br0 up"));
            ip(&format!("-n {ns} addr add {addr} dev lb0"));
            ip(&format!("-n {ns} link set lb0 up"));
        }
        // Each pod network: a veth between the gateway's namespace and the pods' namespace.
        for (gw, pods, gw_addrs, pod_addrs) in [
            (WGW, WPOD, "10.10.0.1 10.10.0.2", "10.10.0.5 10.10.0.9"),
            (
                EGW,
                EPOD,
                "10.20.0.1 10.20.0.2 10.20.0.3",
                "10.20.0.8 10.20.0.9 10.20.0.18",
            ),
        ] {
            let (gw, pods) = (self.ns(gw), self.ns(pods));
            ip(&format!(
                "-n {gw} link add pods0 type veth peer name eth0 netns {pods}"
            ));
            for a in gw_addrs.split(' ') {
                ip(&format!("-n {gw} addr add {a}/16 dev pods0"));
            }
            ip(&format!("-n {gw} link set pods0 up"));
            for a in pod_addrs.split(' ') {
                ip(&format!("-n {pods} addr add {a}/16 dev eth0"));
            }
            ip(&format!("-n {pods} link set eth0 up"));
        }
        let routes = run(
            Command::new("ip").args(["-n", &self.ns(WPOD), "route"]),
            Duration::from_secs(5),
        );
        println!(
            "== namespaces {}-{{lb,wgw,wpod,egw,epod}}; west pods' routes:\n{}",
            self.prefix,
            String::from_utf8_lossy(&routes.stdout).trim_end()
        );
    }
}

/// Network namespaces created by this run, deleted on drop (also on panic).
#[derive(Default)]
pub struct Namespaces(Vec<String>);

impl Namespaces {
    pub fn add(&mut self, name: &str) {
        ip(&format!("netns add {name}"));
        self.0.push(name.to_string());
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in self.0.iter().rev() {
            let out = Command::new("ip").args(["netns", "del", ns]).output();
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!(
                    "ip netns del {ns}: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
                Err(e) => eprintln!("ip netns del {ns}: {e}"),
            }
        }
    }
}
