//! The file discovery source: loads the endpoints file, then watches it and SIGHUP and
//! republishes on every change of content.
//!
//! Directories are watched, not the file: Kubernetes mounts ConfigMaps through a `..data`
//! symlink that is swapped atomically, which a watch on the file itself misses. The path is
//! resolved name by name, symlinks in directory components included, and each directory whose
//! change could change what it names is watched (the file's, its parent, and every one from
//! the first symlink on: [`watch`]); the set is worked out and every watch set again before
//! every read, as links may have moved and directories come back. [`watch`] decides which
//! events matter and when a change has settled; [`format`](mod@format) reads the file's content,
//! within the [`bounds`] on the work one file may cause ([`policy`] its services'
//! DestinationRule-style traffic policies), and [`yaml_error`] tells what is wrong with it
//! without quoting it.
//!
//! Every read goes through [`read_regular`](crate::bounded_read::read_regular): whatever the
//! path names (a FIFO, a device, a huge file), a read never blocks and never takes more than a
//! bounded amount of memory.

pub mod bounds;
pub mod format;
mod policy;
pub mod watch;
mod yaml_error;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use notify::{RecursiveMode, Watcher};
use tokio::signal::unix::Signal;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Publisher;
use crate::routes::ServiceSpec;
pub use format::{load, parse};
use watch::{Names, Settle};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `detail` never quotes the file (it may be a key or a password file named by mistake).
    #[error("{path}: not a valid endpoints file: {detail}")]
    Yaml { path: PathBuf, detail: String },
    #[error(
        "{path} is empty (nothing but whitespace or comments), as a writer that died after \
         truncating it leaves it: refused; for an empty table write `services: []`"
    )]
    Empty { path: PathBuf },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    #[error(
        "{path} is {what}, not a regular file: --endpoints must name a regular file (or a \
         symlink to one)"
    )]
    NotRegular { path: PathBuf, what: &'static str },
    #[error(
        "{path} is larger than {} MiB, the limit of an endpoints file (20,000 routes take \
         about 3 MB): check that --endpoints names the right file",
        MAX_FILE_BYTES >> 20
    )]
    TooLarge { path: PathBuf },
    #[error("watching {path}: {source}")]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
}

/// The largest endpoints file read: 16 MiB, over 5 times a 20,000-route file (2.9 MB), and
/// room for 270,000 endpoints written as in the README. Reading takes about 40 times a file's
/// size in memory at its peak (serde_yaml holds every YAML event of the document): 16 MiB took
/// 0.6 s and 690 MB (release build); the earlier 64 MiB limit let one file take 2.7 GB.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Watches `path` (through its parent directory, the directories its links lead to, and
/// theirs) and SIGHUP, republishing on every change of content. Runs until `stop` is
/// cancelled. A bad file keeps the last good table.
pub struct FileSource {
    reader: Reader,
    pending: Arc<Pending>,
    /// SIGHUP, taken over by the caller before this source started (`app::hangup`), so that
    /// one sent while the first read runs is not the end of the process but a reload once it
    /// is done. `None` when the handler could not be installed (then only file events reload).
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

/// Resolutions of the path in one read at most, each after watching what the one before found:
/// the path changing faster than that is read again on the events of the last watches.
const MAX_RESOLVES: usize = 4;

/// The OS watcher and the directories it watches.
struct Watches {
    // Dropping the watcher stops the OS watch.
    watcher: notify::RecommendedWatcher,
    watched: HashSet<PathBuf>,
    /// Directories that could not be watched, each said once while it cannot.
    failed: HashSet<PathBuf>,
}

impl Watches {
    /// Watches the directories `want`, and no longer the others. Each is watched anew every
    /// time: the directory at a path may be a new one (removed and made again, or another
    /// renamed over it), whose events the old watch never sees, while notify would go on
    /// naming the old one's events after the path. An event lost in between is older than the
    /// read that follows. A directory that cannot be watched is read on SIGHUP only, and said
    /// so; when it is `must`, that is an error instead.
    fn follow(
        &mut self,
        want: &[PathBuf],
        must: Option<&Path>,
    ) -> Result<(), (PathBuf, notify::Error)> {
        for gone in self.watched.iter().filter(|d| !want.contains(d)) {
            // Fails when the directory is gone, which removed its watch already.
            let _ = self.watcher.unwatch(gone);
        }
        self.watched.clear();
        for dir in want {
            let _ = self.watcher.unwatch(dir);
            match self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    self.watched.insert(dir.clone());
                    self.failed.remove(dir);
                }
                Err(e) if must == Some(dir.as_path()) => return Err((dir.clone(), e)),
                Err(e) => {
                    if self.failed.insert(dir.clone()) {
                        tracing::warn!(
                            dir = %dir.display(),
                            error = %e,
                            "cannot watch a directory on the way to the --endpoints file: \
                             changes there are read on SIGHUP only"
                        );
                    }
                }
            }
        }
        self.failed.retain(|d| want.contains(d));
        Ok(())
    }
}

/// Reads, compares and publishes; runs on the blocking pool, away from the data path.
#[derive(Clone)]
struct Reader {
    path: Arc<Path>,
    publisher: Publisher,
    /// The gateway's zone (`--zone`), for the services that prefer close endpoints.
    zone: Option<Arc<str>>,
    last: Arc<Vec<ServiceSpec>>,
    /// Shared with the watcher callback; refreshed before each read, as links may have moved.
    names: Arc<RwLock<Names>>,
    watches: Arc<Mutex<Watches>>,
}

impl FileSource {
    /// Starts watching the file, then loads it (an error here fails start-up). `hangup` is
    /// SIGHUP's stream (`app::hangup`): each SIGHUP, and one received before [`run`] starts,
    /// reads the file again.
    ///
    /// [`run`]: FileSource::run
    pub fn start(
        path: &Path,
        publisher: Publisher,
        zone: Option<Arc<str>>,
        hangup: Option<Signal>,
    ) -> Result<FileSource, FileError> {
        // Absolute once (the current directory joined, no symlink resolved): the resolution
        // starts at `/`, and the current directory may change or go later. (Events name
        // absolute paths, which a relative directory never matched, so a relative --endpoints
        // was once reloaded by SIGHUP only.)
        let path = &std::path::absolute(path).map_err(|source| FileError::Read {
            path: path.into(),
            source,
        })?;
        let names = Arc::new(RwLock::new(Names::default()));
        let pending = Arc::new(Pending::default());
        let (watch_names, watch_pending) = (names.clone(), pending.clone());
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
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
        let mut reader = Reader {
            path: path.as_path().into(),
            publisher,
            zone,
            last: Arc::new(Vec::new()),
            names,
            watches: Arc::new(Mutex::new(Watches {
                watcher,
                watched: HashSet::new(),
                failed: HashSet::new(),
            })),
        };
        // The file's own directory must be watched at start; others may come later.
        reader
            .watch(true)
            .map_err(|(path, source)| FileError::Watch { path, source })?;
        // Read after the watches are set: a change from now on is in this read or makes an
        // event.
        let specs = load(path)?;
        reader
            .publisher
            .publish("file", &specs, reader.zone.as_ref());
        reader.last = Arc::new(specs);
        Ok(FileSource {
            reader,
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
    /// Resolves the path and watches the directories that resolution goes through, until a
    /// resolution made once they are watched finds the same ones (at most [`MAX_RESOLVES`]
    /// times): from then on, a change of what the path names makes an event. With `strict`,
    /// the file's directory that cannot be watched is an error.
    fn watch(&self, strict: bool) -> Result<(), (PathBuf, notify::Error)> {
        let mut names = Names::new(&self.path);
        for _ in 0..MAX_RESOLVES {
            let (dirs, home) = (names.dirs(), names.home().map(Path::to_path_buf));
            // The names lock is released before watching: the watcher thread takes it in its
            // callback, and adding a watch waits for that thread.
            *self.names.write().unwrap_or_else(|e| e.into_inner()) = names;
            self.watches
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .follow(&dirs, home.as_deref().filter(|_| strict))?;
            names = Names::new(&self.path);
            if names == *self.names.read().unwrap_or_else(|e| e.into_inner()) {
                break;
            }
        }
        Ok(())
    }

    /// Returns the new table's specs when one was published.
    fn reload(&self) -> Option<Arc<Vec<ServiceSpec>>> {
        // Watched (again) before the read: a change after it makes an event.
        let _ = self.watch(false);
        match load(&self.path) {
            Ok(specs) if specs == *self.last => {
                tracing::debug!(path = %self.path.display(), "endpoints file unchanged");
                self.publisher.confirm("file");
                None
            }
            Ok(specs) => {
                self.publisher.publish("file", &specs, self.zone.as_ref());
                Some(Arc::new(specs))
            }
            Err(e) => {
                self.publisher.reject("file", &e);
                None
            }
        }
    }
}
