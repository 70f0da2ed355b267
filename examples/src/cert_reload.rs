//! Certificate files that change under a running workload, as a root rotation changes them:
//! the directory (`cert-chain.pem`, `key.pem`, `root-cert.pem`) is polled, and a changed set
//! that loads becomes the server configuration for new connections. Polling, not file
//! events: Kubernetes swaps a mounted Secret through a `..data` symlink.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::sync::watch;

use testkit::mtls::{self, Identity};

const FILES: [&str; 3] = ["cert-chain.pem", "key.pem", "root-cert.pem"];

/// The server configuration built from `dir`, and the files' contents it came from.
pub struct Loaded {
    pub config: Arc<ServerConfig>,
    contents: Vec<Vec<u8>>,
}

/// Reads and checks the three files; an error names the file and changes nothing.
pub fn load(dir: &Path) -> Result<Loaded, String> {
    let contents = read_all(dir)?;
    Ok(Loaded {
        config: build(dir, &contents)?,
        contents,
    })
}

fn read_all(dir: &Path) -> Result<Vec<Vec<u8>>, String> {
    FILES
        .iter()
        .map(|f| std::fs::read(dir.join(f)).map_err(|e| format!("{}: {e}", dir.join(f).display())))
        .collect()
}

fn build(dir: &Path, contents: &[Vec<u8>]) -> Result<Arc<ServerConfig>, String> {
    let text = |i: usize| String::from_utf8_lossy(&contents[i]).into_owned();
    // A leaf and key that do not match (files caught half-way through an update) fail here.
    let id = Identity::from_pems(&text(0), &text(1), &text(2))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    mtls::server_config(&id, rustls::DEFAULT_VERSIONS)
        .map_err(|e| format!("{}: {e}", dir.display()))
}

/// Polls `dir` every `every` until every receiver is gone, sending each changed set that
/// loads; a set that does not load is reported through `log` and the previous one stays.
pub async fn watch(
    dir: PathBuf,
    first: Loaded,
    every: Duration,
    tx: watch::Sender<Arc<ServerConfig>>,
    log: impl Fn(&str),
) {
    let mut last = first.contents;
    while !tx.is_closed() {
        tokio::time::sleep(every).await;
        let contents = match read_all(&dir) {
            Ok(c) => c,
            Err(e) => {
                log(&format!(
                    "certificates not reloaded ({e}); still serving the previous ones"
                ));
                continue;
            }
        };
        if contents == last {
            continue;
        }
        match build(&dir, &contents) {
            Ok(config) => {
                let _ = tx.send(config);
                log(&format!("certificates reloaded from {}", dir.display()));
            }
            Err(e) => log(&format!(
                "certificates not reloaded ({e}); still serving the previous ones"
            )),
        }
        last = contents;
    }
}
