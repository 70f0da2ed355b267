//! Starting the mesh's processes in their namespaces: four workloads, catalog's two
//! destination ztunnels and two gateways (east's also on HBONE 15008).

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use testkit::mesh::{self, CATALOG, SIMPLE_BACKEND, WEBAPP, spiffe_id};
use testkit::wait::wait_until;

use crate::certs::GATEWAY_SA;
use crate::fixture::Mesh;
use crate::procs::Proc;
use crate::{
    ADMIN_PORT, CERT_POLL, DRAIN_GRACE, DRAIN_TIMEOUT, EAST_ADMIN_IP, EAST_GW, EAST_LB_IP,
    EAST2_ADMIN_IP, EGW, EPOD, WEST_ADMIN_IP, WEST_BACKEND, WEST_LB_IP, WGW, WPOD,
};

impl Mesh {
    pub fn start_workloads(&mut self) {
        let webapp = spiffe_id(WEBAPP);
        for (label, role, cluster, sa, listen, allow) in [
            (
                "catalog-a",
                EPOD,
                "east",
                "catalog",
                "10.20.0.8:3000",
                Some(&webapp),
            ),
            (
                "catalog-b",
                EPOD,
                "east",
                "catalog",
                "10.20.0.18:3000",
                Some(&webapp),
            ),
            (
                "simple-backend-east",
                EPOD,
                "east",
                "simple-backend",
                "10.20.0.9:3000",
                None,
            ),
            (
                "simple-backend-west",
                WPOD,
                "west",
                "simple-backend",
                WEST_BACKEND,
                None,
            ),
        ] {
            let mut args = vec![
                "serve".to_string(),
                "--certs".into(),
                self.certs(cluster, sa).display().to_string(),
                "--listen".into(),
                listen.into(),
                "--name".into(),
                label.into(),
                "--cert-poll-ms".into(),
                CERT_POLL.as_millis().to_string(),
            ];
            if let Some(peer) = allow {
                args.extend(["--allow-peer".into(), peer.clone()]);
            }
            let mut p = Proc::spawn(label, &self.ns(role), &self.bins.workload, &args);
            p.wait_for("serving mTLS on", Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("{label} did not start: {e}"));
            self.procs.push(p);
        }
    }

    /// The destination ztunnels of catalog's two pods, on `<pod IP>:15008`, presenting
    /// catalog's identity as ztunnel does for its pods.
    pub fn start_destination_ztunnels(&mut self) {
        for (label, addr) in [
            ("ztunnel-a", "10.20.0.8:15008"),
            ("ztunnel-b", "10.20.0.18:15008"),
        ] {
            let args = [
                "destination".to_string(),
                "--certs".into(),
                self.certs("east", CATALOG).display().to_string(),
                "--listen".into(),
                addr.into(),
                "--name".into(),
                label.into(),
            ];
            let mut p = Proc::spawn(label, &self.ns(EPOD), &self.bins.ztunnel, &args);
            p.wait_for("destination ztunnel listening", Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("{label} did not start: {e}"));
            self.procs.push(p);
        }
    }

    pub fn start_gateways(&mut self) {
        let east = self.dir.path().join("east-endpoints.yaml");
        let (catalog, backend) = (mesh::host(CATALOG), mesh::host(SIMPLE_BACKEND));
        std::fs::write(
            &east,
            format!(
                "services:\n\
                 - host: {catalog}\n  \
                   ports: [{{port: 80, targetPort: 3000}}]\n  \
                   hbone: true\n  \
                   endpoints: [{{address: 10.20.0.8}}, {{address: 10.20.0.18}}]\n\
                 - host: {backend}\n  \
                   ports: [{{port: 80, targetPort: 3000}}]\n  \
                   endpoints: [{{address: 10.20.0.9}}]\n"
            ),
        )
        .expect("write east endpoints");
        let west = self.dir.path().join("west-endpoints.yaml");
        std::fs::write(
            &west,
            format!(
                "services:\n\
                 - host: {backend}\n  \
                   ports: [{{port: 80, targetPort: 3000}}]\n  \
                   endpoints: [{{address: 10.10.0.9}}]\n"
            ),
        )
        .expect("write west endpoints");
        let p = self
            .start_gateway("west-gateway", WGW, WEST_LB_IP, WEST_ADMIN_IP, &west, false)
            .unwrap_or_else(|e| panic!("west gateway did not start: {e}"));
        self.procs.push(p);
        let p = self
            .start_gateway("east-gateway", EGW, EAST_LB_IP, EAST_ADMIN_IP, &east, true)
            .unwrap_or_else(|e| panic!("east gateway did not start: {e}"));
        self.procs.push(p);
        for (role, ip) in [(WGW, WEST_ADMIN_IP), (EGW, EAST_ADMIN_IP)] {
            wait_until("gateway readiness 200", Duration::from_secs(10), || {
                self.ready_status(role, ip) == Some(200)
            });
        }
    }

    /// Starts a gateway on `<lb_ip>:15443`, admin on `<admin_ip>:15021`, and with `hbone`
    /// also on `<lb_ip>:15008` with the east gateway's identity; waits for its listening line.
    pub fn start_gateway(
        &self,
        label: &str,
        role: &str,
        lb_ip: &str,
        admin_ip: &str,
        endpoints: &Path,
        hbone: bool,
    ) -> Result<Proc, String> {
        let mut args: Vec<String> = [
            "--listen",
            &format!("{lb_ip}:15443"),
            "--admin",
            &format!("{admin_ip}:{ADMIN_PORT}"),
            "--endpoints",
            &endpoints.display().to_string(),
            "--drain-grace",
            &format!("{}ms", DRAIN_GRACE.as_millis()),
            "--drain-timeout",
            &format!("{}ms", DRAIN_TIMEOUT.as_millis()),
            "--outlier-failures",
            "2",
            "--outlier-base-ejection",
            "30s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if hbone {
            args.extend([
                "--hbone-listen".into(),
                format!("{lb_ip}:15008"),
                "--hbone-certs".into(),
                self.certs("east", GATEWAY_SA).display().to_string(),
                "--hbone-cert-poll".into(),
                format!("{}ms", CERT_POLL.as_millis()),
            ]);
        }
        let mut p = Proc::spawn(label, &self.ns(role), &self.bins.gateway, &args);
        p.wait_for("gateway listening", Duration::from_secs(15))?;
        Ok(p)
    }

    /// Starts a second east gateway on the address the old one just released; retries while
    /// the address is still taken. Returns when it logged that it listens.
    pub fn start_east_gateway_retrying(&mut self, label: &str) -> Instant {
        let endpoints = self.dir.path().join("east-endpoints.yaml");
        let mut last = String::new();
        for _ in 0..50 {
            match self.start_gateway(label, EGW, EAST_LB_IP, EAST2_ADMIN_IP, &endpoints, true) {
                Ok(p) => {
                    let at = p
                        .find("gateway listening")
                        .map(|(t, _)| t)
                        .expect("listening line");
                    self.procs.push(p);
                    return at;
                }
                Err(e) => last = e,
            }
            thread::sleep(Duration::from_millis(50));
        }
        panic!("a new east gateway could not take over {EAST_GW}: {last}");
    }
}
