//! The endpoints file's format: its YAML schema, and parsing it into validated service specs
//! with errors that name the entry at fault.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use super::bounds::{self, EndpointList, HasEndpoints, Refused, ServiceList};
use super::policy::FilePolicy;
use super::{FileError, MAX_FILE_BYTES, yaml_error};
use crate::bounded_read::{ReadRefused, read_regular};
use crate::dr_conn::DrConn;
use crate::routes::{
    Canary, EndpointSpec, Labels, PREFER_CLOSE_VALUES, ServiceSpec, WAYPOINT_PORT,
};
use crate::sni_name;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    services: ServiceList<FileService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileService {
    host: String,
    ports: Vec<FilePort>,
    #[serde(default)]
    subsets: Vec<FileSubset>,
    #[serde(default)]
    endpoints: EndpointList<FileEndpoint>,
    /// Reach every endpoint over HBONE (ambient): `hbone: true` (port 15008),
    /// `hbone: {port: N}`; endpoints may override it.
    hbone: Option<FileHbone>,
    /// Bound to a waypoint (`istio.io/use-waypoint`): the host of the waypoint's service, a
    /// service of this file with port 15008. Tunnels a waypoint sent
    /// (`x-istio-source: waypoint`) reach this service's HBONE endpoints; every other goes to
    /// the waypoint.
    waypoint: Option<String>,
    /// A second waypoint that takes `weight` percent of the tunnels sent to a waypoint
    /// (`istio.io/use-waypoint-canary`); only with `waypoint`.
    waypoint_canary: Option<FileCanary>,
    /// Replaced by `waypoint` (kept only to say so).
    waypoint_bound: Option<serde::de::IgnoredAny>,
    /// Kubernetes' `trafficDistribution`: `PreferClose`, `PreferSameZone` or `PreferSameNode`
    /// send connections to endpoints in the gateway's zone (`--zone`) first.
    traffic_distribution: Option<String>,
    /// A DestinationRule's `trafficPolicy`, as far as the gateway applies it ([`FilePolicy`]).
    traffic_policy: Option<FilePolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCanary {
    host: String,
    /// Percent, 0 to 100.
    weight: u8,
}

impl HasEndpoints for FileService {
    fn endpoint_count(&self) -> usize {
        self.endpoints.0.len()
    }
}

/// `true` (the default port), `false` (classic), or `{port: N}`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(untagged)]
enum FileHbone {
    Enabled(bool),
    Port(FileHbonePort),
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHbonePort {
    #[serde(default = "hbone_default_port")]
    port: u16,
}

/// The port ztunnel's inbound HBONE listener uses, and Istio's gateway dials.
pub const HBONE_DEFAULT_PORT: u16 = 15008;

fn hbone_default_port() -> u16 {
    HBONE_DEFAULT_PORT
}

impl FileHbone {
    fn port(self) -> Option<u16> {
        match self {
            FileHbone::Enabled(false) => None,
            FileHbone::Enabled(true) => Some(HBONE_DEFAULT_PORT),
            FileHbone::Port(p) => Some(p.port),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FilePort {
    port: u16,
    /// Defaults to `port`.
    target_port: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSubset {
    name: String,
    #[serde(default)]
    labels: Labels,
    /// The subset's own `trafficPolicy`, merged over the service's as istiod merges a rule's.
    traffic_policy: Option<FilePolicy>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEndpoint {
    address: String,
    #[serde(default)]
    labels: Labels,
    #[serde(default = "yes")]
    ready: bool,
    /// Overrides the service's `hbone` for this endpoint.
    hbone: Option<FileHbone>,
    /// The zone the endpoint runs in (as an EndpointSlice's `zone`).
    zone: Option<String>,
    /// Load-balancing weight, 1 or more (a WorkloadEntry's `weight`); 1 when left out.
    weight: Option<u32>,
}

fn yes() -> bool {
    true
}

/// Flow collections (`[`, `{`) nested deeper than this are refused before the YAML parser
/// sees them. serde_yaml refuses more than 128 levels anyway, but only after libyaml has
/// scanned the whole document, which is slow on deep flow nesting: 100 KB of `[` took 1.2 s in
/// a debug build (19.6 s in an audit), a 16 MiB file of them would take minutes. The schema
/// itself needs 5 levels.
pub const MAX_FLOW_DEPTH: usize = 128;

/// The position of the first flow bracket nested deeper than [`MAX_FLOW_DEPTH`], if any.
///
/// A linear scan that skips comments and counts every other bracket, quoted or not: a bracket
/// inside a string can only make the count err by the number of such brackets, and a valid
/// endpoints file has no string holding over a hundred of them (hosts, subset names and
/// addresses cannot hold one; labels are Kubernetes label values).
fn too_deep(text: &str) -> Option<(usize, usize)> {
    let (mut depth, mut line, mut column) = (0usize, 1usize, 0usize);
    let mut comment = false;
    let mut after_space = true;
    for b in text.bytes() {
        column += 1;
        match b {
            b'\n' => {
                (line, column) = (line + 1, 0);
                comment = false;
            }
            _ if comment => {}
            b'#' if after_space => comment = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Some((line, column));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        after_space = matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    }
    None
}

/// Parses and validates an endpoints document. Errors name the entry at fault.
pub fn parse(path: &Path, text: &str) -> Result<Vec<ServiceSpec>, FileError> {
    let invalid = |msg: String| FileError::Invalid {
        path: path.into(),
        msg,
    };
    if let Some((line, column)) = too_deep(text) {
        return Err(invalid(format!(
            "not a valid endpoints file: `[` or `{{` nested deeper than {MAX_FLOW_DEPTH} \
             levels at line {line} column {column} (an endpoints file needs 5)"
        )));
    }
    if is_blank(text) {
        return Err(FileError::Empty { path: path.into() });
    }
    let yaml = |detail: String| FileError::Yaml {
        path: path.into(),
        detail,
    };
    match bounds::check_expansion(text) {
        Ok(()) => {}
        Err(Refused::Expands) => {
            return Err(yaml(format!(
                "its YAML aliases (`*name`) expand it to over {} times its own size: write the \
                 repeated entries out",
                bounds::MAX_EXPANSION
            )));
        }
        Err(Refused::Yaml(e)) => return Err(yaml(yaml_error::describe(&e))),
    }
    let doc: FileDoc = serde_yaml::from_str(text).map_err(|e| yaml(yaml_error::describe(&e)))?;
    let mut hosts = BTreeSet::new();
    // Endpoints with equal labels share one map in the table; equal zones one string.
    let mut shared: HashMap<Labels, Arc<Labels>> = HashMap::new();
    let mut zones: HashMap<String, Arc<str>> = HashMap::new();
    let mut out = Vec::with_capacity(doc.services.0.len());
    for (i, svc) in doc.services.0.into_iter().enumerate() {
        let at = format!("services[{i}] ({})", excerpt(&svc.host));
        let host = svc.host.to_ascii_lowercase();
        if svc.ports.is_empty() {
            return Err(invalid(format!(
                "{at}: ports: at least one port is required"
            )));
        }
        let mut port_map = BTreeMap::new();
        for (j, p) in svc.ports.iter().enumerate() {
            let target = p.target_port.unwrap_or(p.port);
            if p.port == 0 || target == 0 {
                return Err(invalid(format!("{at}: ports[{j}]: ports must be 1-65535")));
            }
            if port_map.insert(p.port, target).is_some() {
                return Err(invalid(format!(
                    "{at}: ports[{j}]: port {} listed twice",
                    p.port
                )));
            }
        }
        // The host must be routable: the data path's decoder checks it the same way.
        if let Err(e) = sni_name::validate_host(&host) {
            let reason = match e {
                sni_name::NameError::Host { reason, .. } => reason,
                _ => "not a DNS name",
            };
            return Err(invalid(format!(
                "{at}: host is not a valid service host name: {reason}"
            )));
        }
        if !hosts.insert(host.clone()) {
            return Err(invalid(format!("{at}: host listed twice")));
        }
        let mut conn = DrConn::default();
        if let Some(p) = &svc.traffic_policy {
            conn.service = p
                .read(&format!("{at}: traffic_policy"), false)
                .map_err(invalid)?;
        }
        let mut subsets = BTreeMap::new();
        for (j, s) in svc.subsets.into_iter().enumerate() {
            if sni_name::validate_subset(&s.name).is_err() {
                return Err(invalid(format!(
                    "{at}: subsets[{j}]: {} is not a valid subset name (a DNS-1123 label)",
                    excerpt(&s.name)
                )));
            }
            // Kept lower-cased: SNI names are matched ignoring case (see `sni_name::parse`).
            let name = s.name.to_ascii_lowercase();
            if let Some(p) = &s.traffic_policy {
                let policy = p.read(&format!("{at}: subsets[{j}].traffic_policy"), true);
                conn.subsets.insert(name.clone(), policy.map_err(invalid)?);
            }
            if subsets.insert(name.clone(), s.labels).is_some() {
                return Err(invalid(format!(
                    "{at}: subsets[{j}]: subset {name:?} listed twice (case is ignored, as \
                     in SNI names)"
                )));
            }
        }
        let subsets = Arc::new(subsets);
        let mut seen = BTreeSet::new();
        let mut endpoints = Vec::with_capacity(svc.endpoints.0.len());
        for (j, e) in svc.endpoints.0.into_iter().enumerate() {
            let address: IpAddr = e.address.trim().parse().map_err(|_| {
                invalid(format!(
                    "{at}: endpoints[{j}]: address {} is not an IP address",
                    excerpt(&e.address)
                ))
            })?;
            // `::ffff:a.b.c.d` is the IPv4 endpoint a.b.c.d, dialed and counted as one.
            let address = address.to_canonical();
            if let Some(what) = not_a_host(address) {
                return Err(invalid(format!(
                    "{at}: endpoints[{j}]: address {address} is {what}, not an endpoint's address"
                )));
            }
            let hbone_port = e.hbone.or(svc.hbone).and_then(FileHbone::port);
            if hbone_port == Some(0) {
                return Err(invalid(format!(
                    "{at}: endpoints[{j}]: hbone port must be 1-65535"
                )));
            }
            if !seen.insert(address) {
                return Err(invalid(format!(
                    "{at}: endpoints[{j}]: address {address} listed twice"
                )));
            }
            let zone = match e.zone.filter(|z| !z.is_empty()) {
                None => None,
                Some(z) if crate::config::is_zone(&z) => Some(
                    zones
                        .entry(z)
                        .or_insert_with_key(|z| z.as_str().into())
                        .clone(),
                ),
                Some(z) => {
                    return Err(invalid(format!(
                        "{at}: endpoints[{j}]: zone {} is not a zone name (a Kubernetes label \
                         value: at most 63 letters, digits, '-', '_' and '.', starting and \
                         ending with a letter or digit)",
                        excerpt(&z)
                    )));
                }
            };
            if e.weight == Some(0) {
                return Err(invalid(format!(
                    "{at}: endpoints[{j}]: weight must be 1 or more (leave it out for 1; to \
                     take the endpoint out of rotation, set `ready: false`)"
                )));
            }
            endpoints.push(EndpointSpec {
                address,
                ports: port_map.clone(),
                labels: shared
                    .entry(e.labels)
                    .or_insert_with_key(|l| Arc::new(l.clone()))
                    .clone(),
                ready: e.ready,
                hbone_port,
                zone,
                // The operator lists the file's endpoints: they are taken as mesh workloads.
                mtls: true,
                mtls_disabled: Vec::new(),
                weight: e.weight.unwrap_or(1),
            });
        }
        if svc.waypoint_bound.is_some() {
            return Err(invalid(format!(
                "{at}: waypoint_bound was replaced by `waypoint: <host of the waypoint's \
                 service>` (a service of this file with port 15008), to which the gateway now \
                 sends the tunnels a waypoint did not send"
            )));
        }
        let canary = match svc.waypoint_canary {
            Some(_) if svc.waypoint.is_none() => {
                return Err(invalid(format!(
                    "{at}: waypoint_canary needs a waypoint: give `waypoint: <host>` too"
                )));
            }
            Some(c) if c.weight > 100 => {
                return Err(invalid(format!(
                    "{at}: waypoint_canary: weight {} is over 100 (percent)",
                    c.weight
                )));
            }
            // No tunnel would go there.
            Some(FileCanary { weight: 0, .. }) | None => None,
            Some(c) => Some(Canary {
                host: c.host.trim().to_ascii_lowercase().into(),
                weight: c.weight,
            }),
        };
        let prefer_close = match svc.traffic_distribution.as_deref() {
            None => false,
            Some(t) if PREFER_CLOSE_VALUES.contains(&t) => true,
            Some(t) => {
                return Err(invalid(format!(
                    "{at}: traffic_distribution {} is not one of {} (Kubernetes' \
                     trafficDistribution values; leave it out for no zone preference)",
                    excerpt(t),
                    PREFER_CLOSE_VALUES.join(", ")
                )));
            }
        };
        out.push(ServiceSpec {
            host,
            ports: port_map.keys().copied().collect(),
            subsets,
            endpoints,
            waypoint: svc.waypoint.map(|w| w.trim().to_ascii_lowercase()),
            canary,
            prefer_close,
            // The file marks each endpoint itself (every one an mTLS workload).
            tls: Default::default(),
            conn: Arc::new(conn),
        });
    }
    check_waypoints(&out).map_err(invalid)?;
    Ok(out)
}

/// Each `waypoint` and canary names another service of the file, with port 15008 (where
/// tunnels are sent to it) and not bound to a waypoint itself (Istio gives a waypoint none);
/// a canary is not the waypoint itself (istiod's `CanarySameAsPrimary`).
fn check_waypoints(specs: &[ServiceSpec]) -> Result<(), String> {
    if specs.iter().all(|s| s.waypoint.is_none()) {
        return Ok(());
    }
    // Hosts are unique (checked above): one lookup per bound service, not a scan.
    let by_host: HashMap<&str, &ServiceSpec> = specs.iter().map(|s| (s.host.as_str(), s)).collect();
    for (i, spec) in specs.iter().enumerate() {
        let Some(wp) = &spec.waypoint else { continue };
        let named = std::iter::once(("waypoint", wp.as_str()))
            .chain(spec.canary.as_ref().map(|c| ("waypoint_canary", &*c.host)));
        for (key, host) in named {
            let problem = match by_host.get(host) {
                _ if host == spec.host => "is the service itself",
                _ if key == "waypoint_canary" && host == wp => "is the waypoint itself",
                None => "is not a host of this file: list the waypoint's service, with port 15008",
                Some(w) if !w.ports.contains(&WAYPOINT_PORT) => {
                    "has no port 15008, where tunnels are sent to a waypoint"
                }
                Some(w) if w.waypoint.is_some() => "is bound to a waypoint itself",
                Some(_) => continue,
            };
            let at = format!("services[{i}] ({})", excerpt(&spec.host));
            return Err(format!("{at}: {key} {} {problem}", excerpt(host)));
        }
    }
    Ok(())
}

/// Nothing but whitespace and comments: what a writer that died after truncating leaves.
fn is_blank(text: &str) -> bool {
    text.lines().all(|l| {
        let l = l.trim();
        l.is_empty() || l.starts_with('#')
    })
}

/// `s` quoted and escaped (`"a\nb"`) and cut to 64 characters: enough to find the entry, and
/// no control character or long run of someone else's text reaches a log line.
pub(super) fn excerpt(s: &str) -> String {
    const MAX: usize = 64;
    match s.char_indices().nth(MAX) {
        None => format!("{s:?}"),
        Some((i, _)) => format!("{:?}…", &s[..i]),
    }
}

/// Reads (a regular file of at most [`MAX_FILE_BYTES`], never blocking) and parses `path`.
pub fn load(path: &Path) -> Result<Vec<ServiceSpec>, FileError> {
    let read = |source| FileError::Read {
        path: path.into(),
        source,
    };
    let bytes = read_regular(path, MAX_FILE_BYTES).map_err(|e| match e {
        ReadRefused::Io(source) => read(source),
        ReadRefused::NotRegular(what) => FileError::NotRegular {
            path: path.into(),
            what,
        },
        ReadRefused::TooLarge => FileError::TooLarge { path: path.into() },
    })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        read(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
        ))
    })?;
    parse(path, &text)
}

/// Addresses no endpoint has: unspecified (`0.0.0.0` dials this host), broadcast or multicast.
/// Loopback stays allowed: a gateway may front workloads on its own host.
fn not_a_host(a: IpAddr) -> Option<&'static str> {
    let a = match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    };
    match a {
        a if a.is_unspecified() => Some("unspecified"),
        a if a.is_multicast() => Some("a multicast address"),
        IpAddr::V4(v4) if v4.is_broadcast() => Some("the broadcast address"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<Vec<ServiceSpec>, FileError> {
        parse(Path::new("eps.yaml"), text)
    }

    #[test]
    fn parses_the_documented_example() {
        let specs = p(r#"
services:
  - host: catalog.istioinaction.svc.cluster.local
    ports:
      - port: 80
        targetPort: 3000
    subsets:
      - name: v1
        labels: {version: v1}
    endpoints:
      - address: 10.20.0.8
        labels: {version: v1}
      - address: 10.20.0.9
        ready: false
"#)
        .unwrap();
        assert_eq!(specs.len(), 1);
        let s = &specs[0];
        assert_eq!(s.ports, vec![80]);
        assert_eq!(s.endpoints[0].ports[&80], 3000);
        assert!(s.endpoints[0].ready);
        assert!(!s.endpoints[1].ready);
        assert_eq!(s.subsets["v1"]["version"], "v1");
    }

    #[test]
    fn errors_name_the_entry() {
        let cases = [
            (
                "services: [{host: a.local, ports: []}]",
                "services[0] (\"a.local\"): ports",
            ),
            (
                "services: [{host: a.local, ports: [{port: 0}]}]",
                "ports[0]",
            ),
            (
                "services: [{host: 'bad host', ports: [{port: 80}]}]",
                "services[0] (\"bad host\"): host",
            ),
            (
                "services: [{host: a.local, ports: [{port: 80}], endpoints: [{address: nope}]}]",
                "endpoints[0]: address \"nope\"",
            ),
            (
                "services: [{host: a.local, ports: [{port: 80}], endpoints: [{address: 0.0.0.0}]}]",
                "address 0.0.0.0 is unspecified",
            ),
            (
                "services: [{host: a.local, ports: [{port: 80}], endpoints: [{address: 255.255.255.255}]}]",
                "is the broadcast address",
            ),
            (
                "services: [{host: a.local, ports: [{port: 80}], endpoints: [{address: '224.0.0.1'}]}]",
                "is a multicast address",
            ),
            (
                "services: [{host: a.local, ports: [{port: 80}], endpoints: [{address: '::'}]}]",
                "is unspecified",
            ),
            (
                "services: [{host: a.local, ports: [{port: 80}], endpoints: [{address: 10.0.0.1}, {address: '::ffff:10.0.0.1'}]}]",
                "endpoints[1]: address 10.0.0.1 listed twice",
            ),
            (
                "services: [{host: a.local, ports: [{port: 80}]}, {host: a.local, ports: [{port: 81}]}]",
                "services[1] (\"a.local\"): host listed twice",
            ),
            (
                "services: [{host: a.local, ports: [{port: 80}], subsets: [{name: 'V_1'}]}]",
                "subsets[0]",
            ),
            (
                "services: [{host: a.local, prots: []}]",
                "services[0]: unknown field, expected one of `host`, `ports`",
            ),
            ("services: [", "not a valid endpoints file"),
        ];
        for (text, want) in cases {
            let err = p(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: got {err:?}, want {want:?}");
        }
    }

    /// A service's and a subset's `traffic_policy` reach the spec as a DestinationRule's
    /// would; errors name their place, through serde's path too.
    #[test]
    fn traffic_policies() {
        let specs = p(r#"
services:
  - host: a.local
    ports: [{port: 80}]
    traffic_policy:
      connectionPool: {tcp: {maxConnections: 10, maxConnectionDuration: 1h}}
      loadBalancer: {simple: ROUND_ROBIN}
    subsets:
      - name: v1
        labels: {version: v1}
        traffic_policy: {loadBalancer: {simple: RANDOM}}
    endpoints: [{address: 10.0.0.1, labels: {version: v1}}]
"#)
        .unwrap();
        let conn = &specs[0].conn;
        assert_eq!(
            conn.max_duration(),
            Some(std::time::Duration::from_secs(3600))
        );
        let whole = conn.for_route(80, "");
        assert_eq!(whole.max_connections(), Some(10));
        assert_eq!(whole.lb, Some(crate::dr_conn::Lb::RoundRobin));
        let v1 = conn.for_route(80, "v1");
        assert_eq!(v1.lb, Some(crate::dr_conn::Lb::Random));
        assert_eq!(v1.max_connections(), Some(10), "the service's pool");
        assert!(
            p("services: [{host: a.local, ports: [{port: 80}]}]").unwrap()[0]
                .conn
                .is_empty()
        );
        for (policy, want) in [
            (
                "{connectionPool: {http: {}}}",
                "services[0].traffic_policy.connectionPool: unknown field, expected `tcp`",
            ),
            (
                "{connectionPool: {tcp: {connectTimeout: soon}}}",
                "services[0] (\"a.local\"): traffic_policy.connectionPool.tcp.connectTimeout: \"soon\" is not a duration",
            ),
        ] {
            let text = format!(
                "services: [{{host: a.local, ports: [{{port: 80}}], traffic_policy: {policy}}}]"
            );
            let err = p(&text).unwrap_err().to_string();
            assert!(err.contains(want), "{policy}: got {err:?}");
        }
        let subset = "services: [{host: a.local, ports: [{port: 80}], subsets: [{name: v1, traffic_policy: {connectionPool: {tcp: {idleTimeout: 1s}}}}]}]";
        let err = p(subset).unwrap_err().to_string();
        assert!(err.contains("subsets[0].traffic_policy.connectionPool.tcp: idleTimeout and maxConnectionDuration apply to the whole service"), "{err}");
    }

    /// `weight` defaults to 1; zero, negative or past `u32` is refused with the fix.
    #[test]
    fn endpoint_weights() {
        let specs = p(r#"
services:
  - host: a.local
    ports: [{port: 80}]
    endpoints:
      - {address: 10.0.0.1, weight: 9}
      - {address: 10.0.0.2}
"#)
        .unwrap();
        let weights: Vec<u32> = specs[0].endpoints.iter().map(|e| e.weight).collect();
        assert_eq!(weights, [9, 1]);
        for (weight, want) in [
            (
                "0",
                "services[0] (\"a.local\"): endpoints[0]: weight must be 1 or more (leave it out for 1; to take the endpoint out of rotation, set `ready: false`)",
            ),
            (
                "-1",
                "services[0].endpoints[0].weight: invalid type: integer, expected u32",
            ),
            (
                "4294967296",
                "services[0].endpoints[0].weight: invalid value: integer, expected u32",
            ),
            (
                "heavy",
                "services[0].endpoints[0].weight: invalid type: string, expected u32",
            ),
        ] {
            let text = format!(
                "services: [{{host: a.local, ports: [{{port: 80}}], endpoints: [{{address: 10.0.0.1, weight: {weight}}}]}}]"
            );
            let err = p(&text).unwrap_err().to_string();
            assert!(err.contains(want), "{weight}: got {err:?}");
        }
    }

    #[test]
    fn traffic_distribution_and_zones() {
        let specs = p(r#"
services:
  - host: near.ns.svc.cluster.local
    ports: [{port: 80}]
    traffic_distribution: PreferClose
    endpoints:
      - {address: 10.0.0.1, zone: us-east-1a}
      - {address: 10.0.0.2, zone: us-east-1a}
      - {address: 10.0.0.3, zone: us-east-1b}
      - {address: 10.0.0.4}
  - host: any.ns.svc.cluster.local
    ports: [{port: 80}]
    endpoints: [{address: 10.0.0.5, zone: ''}]
"#)
        .unwrap();
        assert!(specs[0].prefer_close && !specs[1].prefer_close);
        let zones: Vec<Option<&str>> = specs[0]
            .endpoints
            .iter()
            .map(|e| e.zone.as_deref())
            .collect();
        assert_eq!(
            zones,
            [
                Some("us-east-1a"),
                Some("us-east-1a"),
                Some("us-east-1b"),
                None
            ]
        );
        // One string per zone.
        let (a, b) = (&specs[0].endpoints[0].zone, &specs[0].endpoints[1].zone);
        assert!(Arc::ptr_eq(a.as_ref().unwrap(), b.as_ref().unwrap()));
        assert_eq!(specs[1].endpoints[0].zone, None);
        for td in ["PreferSameZone", "PreferSameNode"] {
            let text = format!(
                "services: [{{host: a.local, ports: [{{port: 80}}], traffic_distribution: {td}}}]"
            );
            assert!(p(&text).unwrap()[0].prefer_close, "{td}");
        }
        for (text, want) in [
            (
                "services: [{host: a.local, ports: [{port: 80}], traffic_distribution: preferclose}]",
                "services[0] (\"a.local\"): traffic_distribution \"preferclose\" is not one of PreferClose, PreferSameZone, PreferSameNode",
            ),
            (
                "services: [{host: a.local, ports: [{port: 80}], endpoints: [{address: 10.0.0.1, zone: 'us east'}]}]",
                "services[0] (\"a.local\"): endpoints[0]: zone \"us east\" is not a zone name",
            ),
            (
                "services: [{host: a.local, ports: [{port: 80}], endpoints: [{address: 10.0.0.1, zone: -a}]}]",
                "zone \"-a\" is not a zone name",
            ),
        ] {
            let err = p(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: got {err:?}, want {want:?}");
        }
    }

    /// Classic and ambient services side by side; the endpoint's setting wins.
    #[test]
    fn hbone_per_service_and_per_endpoint() {
        let specs = p(r#"
services:
  - host: classic.ns.svc.cluster.local
    ports: [{port: 80, targetPort: 8080}]
    endpoints:
      - address: 10.0.0.1
      - address: 10.0.0.2
        hbone: {port: 15009}
  - host: ambient.ns.svc.cluster.local
    ports: [{port: 80}]
    hbone: true
    endpoints:
      - address: 10.0.1.1
      - address: 10.0.1.2
        hbone: false
      - address: 10.0.1.3
        hbone: {}
"#)
        .unwrap();
        let ports = |s: &ServiceSpec| s.endpoints.iter().map(|e| e.hbone_port).collect::<Vec<_>>();
        assert_eq!(ports(&specs[0]), [None, Some(15009)]);
        assert_eq!(ports(&specs[1]), [Some(15008), None, Some(15008)]);
        let err = p("services: [{host: a.local, ports: [{port: 80}], hbone: {port: 0}, endpoints: [{address: 10.0.0.1}]}]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("hbone port must be 1-65535"), "{err}");
        let err = p("services: [{host: a.local, ports: [{port: 80}], hbone: yes-please}]")
            .unwrap_err()
            .to_string();
        assert!(err.contains("services"), "{err}");
    }

    /// `waypoint` names a service of the file at 15008; anything else is refused, and the
    /// old `waypoint_bound` key says what replaced it.
    #[test]
    fn a_waypoint_is_a_service_of_the_file_at_15008() {
        let specs = p(r#"
services:
  - host: bound.ns.svc.cluster.local
    ports: [{port: 80}]
    hbone: true
    waypoint: WP.ns.svc.cluster.local
  - host: wp.ns.svc.cluster.local
    ports: [{port: 15008}, {port: 15021}]
    endpoints: [{address: 10.0.0.9}]
"#)
        .unwrap();
        assert_eq!(
            specs[0].waypoint.as_deref(),
            Some("wp.ns.svc.cluster.local")
        );
        assert_eq!(specs[1].waypoint, None);
        assert_eq!(specs[0].canary, None);
        let canaried = |weight: u8| {
            p(&format!(
                "services: [{{host: a.local, ports: [{{port: 80}}], waypoint: wp.local, \
                 waypoint_canary: {{host: WP2.local, weight: {weight}}}}}, \
                 {{host: wp.local, ports: [{{port: 15008}}]}}, \
                 {{host: wp2.local, ports: [{{port: 15008}}]}}]"
            ))
            .unwrap()
            .remove(0)
            .canary
        };
        assert_eq!(
            canaried(20),
            Some(Canary {
                host: "wp2.local".into(),
                weight: 20
            })
        );
        assert_eq!(canaried(0), None, "no tunnel would go there");
        let wp = "{host: wp.local, ports: [{port: 15008}]}";
        for (doc, want) in [
            (
                "services: [{host: a.local, ports: [{port: 80}], waypoint: b.local}]".to_string(),
                "services[0] (\"a.local\"): waypoint \"b.local\" is not a host of this file",
            ),
            (
                "services: [{host: a.local, ports: [{port: 80}], waypoint: a.local}]".into(),
                "waypoint \"a.local\" is the service itself",
            ),
            (
                "services: [{host: a.local, ports: [{port: 80}], waypoint: b.local}, {host: b.local, ports: [{port: 80}]}]".into(),
                "waypoint \"b.local\" has no port 15008",
            ),
            (
                format!("services: [{{host: a.local, ports: [{{port: 80}}], waypoint: b.local}}, {{host: b.local, ports: [{{port: 15008}}], waypoint: wp.local}}, {wp}]"),
                "waypoint \"b.local\" is bound to a waypoint itself",
            ),
            (
                "services: [{host: a.local, ports: [{port: 80}], waypoint_bound: true}]".into(),
                "services[0] (\"a.local\"): waypoint_bound was replaced by `waypoint: <host",
            ),
            (
                format!("services: [{{host: a.local, ports: [{{port: 80}}], waypoint_canary: {{host: wp.local, weight: 5}}}}, {wp}]"),
                "services[0] (\"a.local\"): waypoint_canary needs a waypoint",
            ),
            (
                format!("services: [{{host: a.local, ports: [{{port: 80}}], waypoint: wp.local, waypoint_canary: {{host: wp.local, weight: 5}}}}, {wp}]"),
                "waypoint_canary \"wp.local\" is the waypoint itself",
            ),
            (
                format!("services: [{{host: a.local, ports: [{{port: 80}}], waypoint: wp.local, waypoint_canary: {{host: c.local, weight: 5}}}}, {wp}]"),
                "waypoint_canary \"c.local\" is not a host of this file",
            ),
            (
                format!("services: [{{host: a.local, ports: [{{port: 80}}], waypoint: wp.local, waypoint_canary: {{host: c.local, weight: 101}}}}, {wp}]"),
                "waypoint_canary: weight 101 is over 100",
            ),
            (
                format!("services: [{{host: a.local, ports: [{{port: 80}}], waypoint: wp.local, waypoint_canary: {{host: c.local}}}}, {wp}]"),
                "services[0].waypoint_canary: missing field `weight`",
            ),
        ] {
            let err = p(&doc).unwrap_err().to_string();
            assert!(err.contains(want), "{doc}: {err}");
        }
    }

    /// A file truncated to nothing (a writer that died, a full disk) is no table; an empty
    /// table is written out.
    #[test]
    fn an_empty_file_is_refused_and_an_empty_table_is_written_out() {
        for text in ["", "\n  \n", "# all gone\n\n  # really\n"] {
            let err = p(text).unwrap_err().to_string();
            assert!(
                err.contains("is empty") && err.contains("services: []"),
                "{text:?}: {err}"
            );
        }
        assert!(p("services: []").unwrap().is_empty());
        assert!(p("# none yet\nservices: []\n").unwrap().is_empty());
        assert!(p("{}").unwrap().is_empty());
    }

    /// Istio accepts upper case in subset names (`pkg/config/labels/instance.go`), sidecars
    /// send it in the SNI name, and the SNI parser lower-cases: the table keeps names
    /// lower-cased so `V1` is reachable.
    #[test]
    fn subset_names_are_kept_lower_cased() {
        let specs =
            p("services: [{host: a.local, ports: [{port: 80}], subsets: [{name: V1}]}]").unwrap();
        assert_eq!(specs[0].subsets.keys().collect::<Vec<_>>(), ["v1"]);
        let err = p(
            "services: [{host: a.local, ports: [{port: 80}], subsets: [{name: V1}, {name: v1}]}]",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("subsets[1]: subset \"v1\" listed twice"),
            "{err}"
        );
    }

    /// Values quoted in errors are escaped and cut short: no line of a plain log is forged.
    #[test]
    fn quoted_values_are_escaped_and_short() {
        // YAML's escapes: a newline and an ESC in the host.
        let text = format!(
            "services: [{{host: \"x\\n2026-12-05T06:00:00Z  INFO forged\\e[31m{}\", \
             ports: [{{port: 80}}]}}]",
            "y".repeat(500)
        );
        let err = p(&text).unwrap_err().to_string();
        assert!(!err.contains('\n') && !err.contains('\u{1b}'), "{err:?}");
        assert!(err.contains("services[0] (\"x\\n2026"), "{err}");
        assert!(err.len() < 300, "{err}");
    }

    /// 100 KB of `[` took seconds in libyaml's scanner; the depth check refuses it at once,
    /// with the position. Anything serde_yaml accepts (at most 128 levels) still parses as before.
    #[test]
    fn deep_flow_nesting_is_refused_before_the_parser() {
        for open in ["[", "{", "services: ["] {
            let text = open.repeat(100_000);
            let t0 = std::time::Instant::now();
            let err = p(&text).unwrap_err().to_string();
            assert!(t0.elapsed() < std::time::Duration::from_secs(1), "{open:?}");
            assert!(
                err.contains("nested deeper than 128 levels at line 1"),
                "{open:?}: {err}"
            );
        }
        // Within the limit, the parser's own verdict; brackets in comments do not count.
        let ok = format!(
            "# {}\nservices: [{{host: a.local, ports: [{{port: 80}}]}}]\n",
            "[".repeat(500)
        );
        assert_eq!(p(&ok).unwrap().len(), 1);
        let err = p(&"[".repeat(128)).unwrap_err().to_string();
        assert!(!err.contains("nested deeper"), "{err}");
    }

    /// Block nesting (indentation) is not where libyaml is slow: a deep block document is
    /// refused by serde_yaml's recursion limit quickly.
    #[test]
    fn deep_block_nesting_is_refused_quickly() {
        let text = "- ".repeat(50_000) + "x\n";
        let t0 = std::time::Instant::now();
        let err = p(&text).unwrap_err().to_string();
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            t0.elapsed()
        );
        assert!(err.contains("not a valid endpoints file"), "{err}");
    }

    /// A FIFO (no writer), a device and a directory are refused without blocking; an
    /// oversized file is refused without being read whole.
    #[test]
    fn only_bounded_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.yaml");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let err = load(&fifo).unwrap_err().to_string();
        assert!(err.contains("is a FIFO, not a regular file"), "{err}");
        let zero = dir.path().join("zero.yaml");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let err = load(&zero).unwrap_err().to_string();
        assert!(
            err.contains("is a character device, not a regular file"),
            "{err}"
        );
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is a directory"), "{err}");
        let big = dir.path().join("big.yaml");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_FILE_BYTES + 1).unwrap();
        let err = load(&big).unwrap_err().to_string();
        assert!(err.contains("larger than 16 MiB"), "{err}");
        let small = dir.path().join("small.yaml");
        std::fs::write(&small, [0xff, 0xfe]).unwrap();
        let err = load(&small).unwrap_err().to_string();
        assert!(err.contains("not UTF-8"), "{err}");
    }
}
