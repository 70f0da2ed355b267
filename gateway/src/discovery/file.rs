//! Discovery from a static YAML endpoints file, reloaded on change and on SIGHUP.
//!
//! The parent directory is watched, not the file: Kubernetes mounts ConfigMaps through a
//! `..data` symlink that is swapped atomically, which a watch on the file itself misses.
//! [`super::file_watch`] decides which of its events matter and when a change has settled.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use notify::{RecursiveMode, Watcher};
use serde::Deserialize;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Publisher;
use super::file_watch::{Names, Settle};
use crate::routes::{EndpointSpec, Labels, ServiceSpec};
use crate::sni_name;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a valid endpoints file: {source}")]
    Yaml {
        path: PathBuf,
        source: serde_yaml::Error,
    },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    #[error("watching {path}: {source}")]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default)]
    services: Vec<FileService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileService {
    host: String,
    ports: Vec<FilePort>,
    #[serde(default)]
    subsets: Vec<FileSubset>,
    #[serde(default)]
    endpoints: Vec<FileEndpoint>,
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEndpoint {
    address: String,
    #[serde(default)]
    labels: Labels,
    #[serde(default = "yes")]
    ready: bool,
}

fn yes() -> bool {
    true
}

/// Parses and validates an endpoints document. Errors name the entry at fault.
pub fn parse(path: &Path, text: &str) -> Result<Vec<ServiceSpec>, FileError> {
    // An empty file is an empty table, not a YAML error.
    let doc: FileDoc = if text.trim().is_empty() {
        FileDoc { services: vec![] }
    } else {
        serde_yaml::from_str(text).map_err(|source| FileError::Yaml {
            path: path.into(),
            source,
        })?
    };
    let invalid = |msg: String| FileError::Invalid {
        path: path.into(),
        msg,
    };
    let mut hosts = BTreeSet::new();
    // Endpoints with equal labels share one map in the table.
    let mut shared: HashMap<Labels, Arc<Labels>> = HashMap::new();
    let mut out = Vec::with_capacity(doc.services.len());
    for (i, svc) in doc.services.into_iter().enumerate() {
        let at = format!("services[{i}] ({})", svc.host);
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
            return Err(invalid(format!(
                "{at}: host is not a valid service host name: {e}"
            )));
        }
        if !hosts.insert(host.clone()) {
            return Err(invalid(format!("{at}: host listed twice")));
        }
        let mut subsets = BTreeMap::new();
        for (j, s) in svc.subsets.into_iter().enumerate() {
            if sni_name::validate_subset(&s.name).is_err() {
                return Err(invalid(format!(
                    "{at}: subsets[{j}]: {:?} is not a valid subset name (a DNS-1123 label)",
                    s.name
                )));
            }
            if subsets.insert(s.name.clone(), s.labels).is_some() {
                return Err(invalid(format!(
                    "{at}: subsets[{j}]: subset {:?} listed twice",
                    s.name
                )));
            }
        }
        let subsets = Arc::new(subsets);
        let mut seen = BTreeSet::new();
        let mut endpoints = Vec::with_capacity(svc.endpoints.len());
        for (j, e) in svc.endpoints.into_iter().enumerate() {
            let address: IpAddr = e.address.trim().parse().map_err(|_| {
                invalid(format!(
                    "{at}: endpoints[{j}]: address {:?} is not an IP address",
                    e.address
                ))
            })?;
            if !seen.insert(address) {
                return Err(invalid(format!(
                    "{at}: endpoints[{j}]: address {address} listed twice"
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
            });
        }
        out.push(ServiceSpec {
            host,
            ports: port_map.keys().copied().collect(),
            subsets,
            endpoints,
        });
    }
    Ok(out)
}

pub fn load(path: &Path) -> Result<Vec<ServiceSpec>, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.into(),
        source,
    })?;
    parse(path, &text)
}

/// Watches `path` (through its parent directory) and SIGHUP, republishing on every change
/// of content. Runs until `stop` is cancelled. A bad file keeps the last good table.
pub struct FileSource {
    reader: Reader,
    // Held for its Drop: dropping the watcher stops the OS watch.
    _watcher: notify::RecommendedWatcher,
    pending: Arc<Pending>,
    /// `None` when the handler could not be installed (then only file events reload).
    hangup: Option<Signal>,
}

/// Changes seen by the watcher thread and not read yet. Recording into one debounce state
/// (rather than queueing events) loses nothing, however many events a large write makes.
#[derive(Default)]
struct Pending {
    settle: Mutex<Settle>,
    wake: Notify,
}

impl Pending {
    fn settle(&self) -> std::sync::MutexGuard<'_, Settle> {
        self.settle.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads, compares and publishes; runs on the blocking pool, away from the data path.
#[derive(Clone)]
struct Reader {
    path: Arc<Path>,
    dir: Arc<Path>,
    publisher: Publisher,
    last: Arc<Vec<ServiceSpec>>,
    /// Shared with the watcher callback; refreshed after each read, as links may have moved.
    names: Arc<RwLock<Names>>,
}

impl FileSource {
    /// Loads the file (an error here fails start-up) and starts watching it.
    pub fn start(path: &Path, publisher: Publisher) -> Result<FileSource, FileError> {
        let specs = load(path)?;
        publisher.publish("file", &specs);
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let path = dir.join(path.file_name().unwrap_or(path.as_os_str()));
        let names = Arc::new(RwLock::new(Names::new(&dir, &path)));
        let pending = Arc::new(Pending::default());
        let (watch_names, watch_pending) = (names.clone(), pending.clone());
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(event) = res else { return };
            let change = watch_names
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .classify(&event);
            if let Some(change) = change {
                watch_pending.settle().record(change, Instant::now());
                watch_pending.wake.notify_one();
            }
        })
        .map_err(|source| FileError::Watch {
            path: path.clone(),
            source,
        })?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(|source| FileError::Watch {
                path: dir.clone(),
                source,
            })?;
        let hangup = signal(SignalKind::hangup())
            .inspect_err(|e| tracing::warn!(error = %e, "no SIGHUP reload"))
            .ok();
        Ok(FileSource {
            reader: Reader {
                path: path.into(),
                dir: dir.into(),
                publisher,
                last: Arc::new(specs),
                names,
            },
            _watcher: watcher,
            pending,
            hangup,
        })
    }

    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            let due = self.pending.settle().due();
            let settled = async {
                match due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let hup = async {
                match self.hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                // A new event moves the deadline: compute it again.
                _ = self.pending.wake.notified() => continue,
                _ = hup => tracing::info!("SIGHUP: reloading endpoints file"),
                _ = settled => {}
            }
            // Everything recorded so far happened before this read, which covers it.
            self.pending.settle().clear();
            self.reload().await;
        }
    }

    /// Parsing a large file takes long enough to delay connections: do it off the runtime.
    async fn reload(&mut self) {
        let reader = self.reader.clone();
        match tokio::task::spawn_blocking(move || reader.reload()).await {
            Ok(Some(last)) => self.reader.last = last,
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "endpoints file reload task failed"),
        }
    }
}

impl Reader {
    /// Returns the new table's specs when one was published.
    fn reload(&self) -> Option<Arc<Vec<ServiceSpec>>> {
        let result = load(&self.path);
        *self.names.write().unwrap_or_else(|e| e.into_inner()) = Names::new(&self.dir, &self.path);
        match result {
            Ok(specs) if specs == *self.last => {
                tracing::debug!(path = %self.path.display(), "endpoints file unchanged");
                self.publisher.confirm("file");
                None
            }
            Ok(specs) => {
                self.publisher.publish("file", &specs);
                Some(Arc::new(specs))
            }
            Err(e) => {
                self.publisher.reject("file", &e);
                None
            }
        }
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
                "services[0] (a.local): ports",
            ),
            (
                "services: [{host: a.local, ports: [{port: 0}]}]",
                "ports[0]",
            ),
            (
                "services: [{host: 'bad host', ports: [{port: 80}]}]",
                "services[0] (bad host): host",
            ),
            (
                "services: [{host: a.local, ports: [{port: 80}], endpoints: [{address: nope}]}]",
                "endpoints[0]: address \"nope\"",
            ),
            (
                "services: [{host: a.local, ports: [{port: 80}]}, {host: a.local, ports: [{port: 81}]}]",
                "services[1] (a.local): host listed twice",
            ),
            (
                "services: [{host: a.local, ports: [{port: 80}], subsets: [{name: 'V_1'}]}]",
                "subsets[0]",
            ),
            (
                "services: [{host: a.local, prots: []}]",
                "unknown field `prots`",
            ),
            ("services: [", "not a valid endpoints file"),
        ];
        for (text, want) in cases {
            let err = p(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn empty_file_is_empty_table() {
        assert!(p("").unwrap().is_empty());
        assert!(p("services: []").unwrap().is_empty());
    }
}
