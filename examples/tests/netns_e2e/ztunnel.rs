//! West's ztunnel double: one double-HBONE tunnel per `ztunnel-double call`, or a paced
//! tunnel load (`ztunnel-double load`) as a process in west's pod namespace.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use testkit::mesh::{self, CATALOG, WEBAPP, spiffe_id_in};

use crate::certs::{GATEWAY_NS, GATEWAY_SA};
use crate::fixture::Mesh;
use crate::preflight::Bins;
use crate::procs::{Proc, one_shot};
use crate::{EAST_HBONE, WPOD};

/// The authority a ztunnel sends for catalog's port 80, on both legs.
pub fn catalog_authority() -> String {
    format!("{}:80", mesh::host(CATALOG))
}

pub fn gateway_id() -> String {
    spiffe_id_in(GATEWAY_NS, GATEWAY_SA)
}

pub struct Tunnel {
    pub ok: bool,
    pub started: Instant,
    pub gateway_id: Option<String>,
    pub destination_id: Option<String>,
    pub reply: Option<String>,
    pub stderr: String,
}

impl Tunnel {
    pub fn describe(&self) -> String {
        format!(
            "ok={} gateway={:?} destination={:?} reply={:?}\nstderr: {}",
            self.ok,
            self.gateway_id,
            self.destination_id,
            self.reply,
            self.stderr.trim_end()
        )
    }

    /// The endpoint that answered: the destination double's name before `:` in the reply.
    pub fn endpoint(&self) -> &str {
        self.reply
            .as_deref()
            .and_then(|r| r.split(':').next())
            .unwrap_or("")
    }
}

/// West's webapp as a client ztunnel, usable from another thread.
#[derive(Clone)]
pub struct ZtunnelClient {
    bins: Arc<Bins>,
    ns: String,
    certs: PathBuf,
}

impl ZtunnelClient {
    fn args(&self, gateway: &str, certs: Option<&Path>) -> Vec<String> {
        vec![
            "--certs".into(),
            certs.unwrap_or(&self.certs).display().to_string(),
            "--gateway".into(),
            gateway.into(),
            "--gateway-id".into(),
            gateway_id(),
            "--authority".into(),
            catalog_authority(),
            "--peer-id".into(),
            mesh::spiffe_id(CATALOG),
        ]
    }

    /// One tunnel to catalog through `gateway` (normally [`EAST_HBONE`]), with webapp's
    /// certificates or those in `certs`.
    pub fn tunnel(&self, gateway: &str, request: &str, certs: Option<&Path>) -> Tunnel {
        let started = Instant::now();
        let mut args = vec!["call".to_string()];
        args.extend(self.args(gateway, certs));
        args.extend(["--request".to_string(), request.to_string()]);
        let out = one_shot(&self.ns, &self.bins.ztunnel, args);
        Tunnel {
            ok: out.ok,
            started,
            gateway_id: out.field("gateway identity:"),
            destination_id: out.field("destination identity:"),
            reply: out.field("reply:"),
            stderr: out.stderr,
        }
    }
}

impl Mesh {
    pub fn tunnel_client(&self) -> ZtunnelClient {
        ZtunnelClient {
            bins: self.bins.clone(),
            ns: self.ns(WPOD),
            certs: self.certs("west", WEBAPP),
        }
    }

    /// One tunnel from west's webapp to catalog through `gateway`.
    pub fn tunnel(&self, gateway: &str, request: &str) -> Tunnel {
        self.tunnel_client().tunnel(gateway, request, None)
    }

    /// `ztunnel-double load` from west through east's gateway, as a process.
    pub fn tunnel_load(&self, label: &str, extra: &[&str]) -> Proc {
        let mut args = vec!["load".to_string()];
        args.extend(self.tunnel_client().args(EAST_HBONE, None));
        args.extend(extra.iter().map(|s| s.to_string()));
        Proc::spawn(label, &self.ns(WPOD), &self.bins.ztunnel, &args)
    }
}

/// One `tunnel <n> <outcome> at_ms=<a> end_ms=<b> …` line of a load's output.
#[derive(Debug)]
pub struct LoadLine {
    pub outcome: String,
    pub at_ms: u64,
    pub end_ms: u64,
    pub line: String,
}

pub fn load_lines(p: &Proc) -> Vec<LoadLine> {
    let log = p.log.lock().unwrap();
    log.iter()
        .filter_map(|(_, l)| {
            let rest = l.strip_prefix("tunnel ")?;
            let mut words = rest.split_whitespace();
            words.next()?.parse::<usize>().ok()?;
            let outcome = words.next()?.to_string();
            let num = |k: &str| {
                rest.split_whitespace()
                    .find_map(|w| w.strip_prefix(k))
                    .and_then(|v| v.parse().ok())
            };
            Some(LoadLine {
                outcome,
                at_ms: num("at_ms=")?,
                end_ms: num("end_ms=")?,
                line: l.clone(),
            })
        })
        .collect()
}
