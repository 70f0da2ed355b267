//! Real mTLS across the rotation: west's webapp calls east's catalog through east's gateway
//! (its own process, SNI passthrough), both `mesh-workload` processes with certificates from
//! `meshctl certs workload`. The gateway never terminates TLS, so whether a call works is
//! decided by the two workloads' certificates and trust bundles alone.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Result;
use testkit::mesh::{self, CATALOG, WEBAPP};
use testkit::net::free_addr;

use crate::harness::{Demo, Proc, http_get, wait_listening};

/// How a call ends, as the caller sees it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Outcome {
    /// Handshake both ways, catalog's reply naming webapp's identity.
    Called,
    /// catalog refused webapp's certificate (its root is not in catalog's bundle): webapp
    /// receives catalog's alert.
    CatalogRefuses,
    /// webapp refused catalog's certificate (its root is not in webapp's bundle).
    WebappRefuses,
}

impl Outcome {
    fn text(self) -> &'static str {
        match self {
            Outcome::Called => "called",
            Outcome::CatalogRefuses => "refused by catalog",
            Outcome::WebappRefuses => "refused by webapp",
        }
    }
}

/// East's gateway and where catalog listens (started anew for each call with the
/// certificates of the case).
pub struct EastGateway {
    _gateway: Proc,
    listen: SocketAddr,
    admin: SocketAddr,
    catalog: SocketAddr,
}

/// A workload's certificate directory and what it stands for in the output.
pub struct Workload<'a> {
    pub dir: &'a str,
    pub label: &'a str,
}

impl EastGateway {
    pub fn start(d: &Demo) -> Result<EastGateway> {
        let ip = Ipv4Addr::LOCALHOST;
        let (listen, admin, catalog) = (free_addr(ip)?, free_addr(ip)?, free_addr(ip)?);
        let eps = format!(
            "services:\n  - host: {}\n    ports: [{{port: 80, targetPort: {}}}]\n    endpoints: [{{address: {ip}}}]\n",
            mesh::host(CATALOG),
            catalog.port()
        );
        let file = d.work.join("east-endpoints.yaml");
        std::fs::write(&file, eps)?;
        let (l, a, f) = (
            listen.to_string(),
            admin.to_string(),
            d.path("east-endpoints.yaml"),
        );
        let mut gw = d.spawn(
            "east-gateway",
            "gateway",
            &["--listen", &l, "--admin", &a, "--endpoints", &f],
        )?;
        // The admin port, not 15443: a bare TCP probe there would count as a rejection.
        wait_listening(&mut gw, admin)?;
        println!("  east gateway {listen} (SNI passthrough) → catalog {catalog}");
        Ok(EastGateway {
            _gateway: gw,
            listen,
            admin,
            catalog,
        })
    }

    fn opened(&self) -> Result<u64> {
        let text = http_get(self.admin, "/metrics")?;
        let series = format!(
            "gateway_connections_opened_total{{sni=\"{}\"}}",
            mesh::outbound(80, CATALOG)
        );
        Ok(testkit::prom::series_value(&text, &series) as u64)
    }

    /// One call: catalog served with `server`'s certificates, webapp calling through the
    /// gateway with `client`'s. Records a check that it ended as `want` and that the gateway
    /// forwarded the connection (it does not judge trust).
    pub fn call(
        &self,
        d: &mut Demo,
        client: &Workload,
        server: &Workload,
        want: Outcome,
    ) -> Result<()> {
        let (addr, webapp_id) = (self.catalog.to_string(), mesh::spiffe_id(WEBAPP));
        let mut catalog = d.spawn(
            "catalog",
            "mesh-workload",
            &[
                "serve",
                "--certs",
                server.dir,
                "--listen",
                &addr,
                "--name",
                "catalog",
                "--allow-peer",
                &webapp_id,
            ],
        )?;
        wait_listening(&mut catalog, self.catalog)?;
        let before = self.opened()?;
        let out = d.quiet(
            "mesh-workload",
            &[
                "call",
                "--certs",
                client.dir,
                "--connect",
                &self.listen.to_string(),
                "--sni",
                &mesh::outbound(80, CATALOG),
                "--expect-peer",
                &mesh::spiffe_id(CATALOG),
            ],
        )?;
        let forwarded = self.opened()? == before + 1;
        drop(catalog);
        let got = if out.ok && out.stdout.contains(&format!("(caller {webapp_id})")) {
            Some(Outcome::Called)
        } else if out.stderr.contains("received fatal alert") {
            Some(Outcome::CatalogRefuses)
        } else if out.stderr.contains("invalid peer certificate") {
            Some(Outcome::WebappRefuses)
        } else {
            None
        };
        let what = format!(
            "webapp [{}] → gateway → catalog [{}]: {}",
            client.label,
            server.label,
            want.text()
        );
        d.check(&what, got == Some(want) && forwarded);
        if got != Some(want) {
            println!(
                "      got {}; webapp said: {}",
                got.map_or("another failure", Outcome::text),
                out.stderr.lines().next().unwrap_or("").trim()
            );
        }
        if !forwarded {
            println!("      the gateway did not count exactly one forwarded connection");
        }
        Ok(())
    }
}
