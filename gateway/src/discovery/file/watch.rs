//! Which file-system events mean "the endpoints file changed", and when a change has settled
//! enough to be read.
//!
//! The parent directory is watched (a ConfigMap volume swaps a `..data` symlink), and so is
//! the directory of every link's target that lies elsewhere (`--endpoints` may be a symlink to
//! a file in another directory), and that directory's parent (it may be removed and made
//! again while the link stays), so most events concern other files. inotify also reports
//! opens, including the gateway's own reads: reacting to those made every read trigger the
//! next one. Only creates, in-place writes, closes after writing, renames and removals of the
//! file, of a symlink on its way, of its target, of a directory it lies in, or of `..data`
//! count; access events never do.
//!
//! A change is read once it has settled: no relevant event for [`QUIET`], and a file written
//! in place has been closed by its writer. A writer that keeps the file open without writing
//! for [`STALLED_WRITER`] is taken as done, and a burst of changes is read at the latest
//! [`MAX_DELAY`] after it began, so a reload is always bounded.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use notify::EventKind;
use notify::event::{AccessKind, AccessMode, ModifyKind};
use tokio::time::Instant;

/// Quiet time after the last relevant event (editors and symlink swaps come in bursts).
pub const QUIET: Duration = Duration::from_millis(150);
/// How long a writer may hold the file open without writing before its content is read.
pub const STALLED_WRITER: Duration = Duration::from_secs(2);
/// Upper bound from the first event of a burst to the read.
pub const MAX_DELAY: Duration = Duration::from_secs(5);

/// The name Kubernetes gives the symlink it swaps to update a ConfigMap or Secret volume.
const CONFIGMAP_DATA: &str = "..data";
/// Bound on symlink hops followed when collecting names.
const MAX_HOPS: usize = 8;

/// What a relevant event says about the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Data written in place: the writer may still hold the file open.
    Written,
    /// Closed after writing: the in-place write is complete.
    Closed,
    /// Created, renamed, removed, or a rescan: a whole new file (or none) is at the path.
    Replaced,
}

/// The directories to watch and, in each, the names whose events concern the endpoints file.
#[derive(Debug)]
pub struct Names {
    /// The file's own directory first; the others where links lead.
    dirs: Vec<WatchedDir>,
}

#[derive(Debug)]
struct WatchedDir {
    /// As watched: events name paths under it.
    path: PathBuf,
    /// Resolved, to watch a directory once however it is reached (inotify gives one watch per
    /// directory, and notify would report it under the last path it was added with).
    real: PathBuf,
    names: HashSet<OsString>,
}

impl Names {
    /// In `dir`: the file's own name, `..data`, and the first component inside `dir` of each
    /// symlink target on the file's chain (e.g. `real.yaml` for `endpoints.yaml -> real.yaml`).
    /// Elsewhere: each link's target, and the file the chain ends at, in its directory.
    pub fn new(dir: &Path, path: &Path) -> Names {
        let mut home = HashSet::from([OsString::from(CONFIGMAP_DATA)]);
        home.extend(path.file_name().map(OsString::from));
        let mut names = Names {
            dirs: vec![WatchedDir {
                path: dir.to_path_buf(),
                real: std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()),
                names: HashSet::new(),
            }],
        };
        let mut at = path.to_path_buf();
        for _ in 0..MAX_HOPS {
            let Ok(target) = std::fs::read_link(&at) else {
                break;
            };
            at = match at.parent() {
                Some(parent) => parent.join(target),
                None => target,
            };
            if let Ok(rest) = at.strip_prefix(dir)
                && let Some(Component::Normal(first)) = rest.components().next()
            {
                home.insert(first.to_os_string());
            }
            names.add(&at);
        }
        if let Ok(end) = std::fs::canonicalize(path) {
            names.add(&end);
        }
        names.dirs[0].names.extend(home);
        names
    }

    /// Adds `file` under its directory, resolved (so `..data/endpoints.yaml` is watched in
    /// the directory `..data` points to now). When that directory is missing, the nearest one
    /// left on the way is watched instead, for the next name down, so each level is followed
    /// as it comes back.
    ///
    /// A directory watched here, unless it is the file's own, is also watched from its parent:
    /// removed and made again under the same path, it is a new directory that the old watch
    /// (gone with the old one) never reports on, while the links leading there do not change.
    fn add(&mut self, file: &Path) {
        for at in file.ancestors() {
            let (Some(parent), Some(name)) = (at.parent(), at.file_name()) else {
                continue;
            };
            let Ok(real) = std::fs::canonicalize(parent) else {
                continue;
            };
            if real != self.dirs[0].real
                && let (Some(up), Some(dir_name)) = (real.parent(), real.file_name())
            {
                self.insert(up.to_path_buf(), dir_name);
            }
            self.insert(real, name);
            return;
        }
    }

    /// `name` counts in the directory `real` (resolved), watched once however it is reached.
    fn insert(&mut self, real: PathBuf, name: &OsStr) {
        match self.dirs.iter_mut().find(|d| d.real == real) {
            Some(d) => {
                d.names.insert(name.to_os_string());
            }
            None => self.dirs.push(WatchedDir {
                path: real.clone(),
                real,
                names: HashSet::from([name.to_os_string()]),
            }),
        }
    }

    /// The directories to watch besides the file's own.
    pub fn elsewhere(&self) -> HashSet<PathBuf> {
        self.dirs.iter().skip(1).map(|d| d.path.clone()).collect()
    }

    /// `Some` when `event` may have changed what reading the file returns.
    pub fn classify(&self, event: &notify::Event) -> Option<Change> {
        if event.need_rescan() {
            // The kernel queue overflowed: events were lost, so assume the file changed.
            return Some(Change::Replaced);
        }
        let change = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => Change::Closed,
            // Opens, reads and closes after reading (our own reads among them) change nothing.
            EventKind::Access(_) => return None,
            // Permissions and timestamps: `touch` alone is not a new table.
            EventKind::Modify(ModifyKind::Metadata(_)) => return None,
            EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any | ModifyKind::Other) => {
                Change::Written
            }
            EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Create(_)
            | EventKind::Remove(_)
            | EventKind::Any
            | EventKind::Other => Change::Replaced,
        };
        event
            .paths
            .iter()
            .any(|p| self.concerns(p))
            .then_some(change)
    }

    fn concerns(&self, p: &Path) -> bool {
        let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
            return false;
        };
        self.dirs
            .iter()
            .any(|d| d.path == parent && d.names.contains(name))
    }
}

/// Debounces relevant changes into one read.
#[derive(Debug, Default)]
pub struct Settle {
    first: Option<Instant>,
    last: Option<Instant>,
    writing: bool,
}

impl Settle {
    pub fn record(&mut self, change: Change, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
        self.writing = change == Change::Written;
    }

    /// When to read the file, or `None` when nothing is pending.
    pub fn due(&self) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        let wait = if self.writing { STALLED_WRITER } else { QUIET };
        Some((last + wait).min(first + MAX_DELAY))
    }

    pub fn clear(&mut self) {
        *self = Settle::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, DataChange, EventAttributes, Flag, RenameMode};

    fn ev(kind: EventKind, path: &str) -> notify::Event {
        notify::Event {
            kind,
            paths: vec![PathBuf::from(path)],
            attrs: EventAttributes::new(),
        }
    }

    #[test]
    fn only_changes_of_the_file_or_its_links_count() {
        let names = Names::new(Path::new("/cm"), Path::new("/cm/endpoints.yaml"));
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let cases = [
            (write, "/cm/endpoints.yaml", Some(Change::Written)),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                "/cm/endpoints.yaml",
                Some(Change::Closed),
            ),
            (
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                "/cm/..data",
                Some(Change::Replaced),
            ),
            (
                EventKind::Create(CreateKind::File),
                "/cm/endpoints.yaml",
                Some(Change::Replaced),
            ),
            (
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                "/cm/endpoints.yaml",
                None,
            ),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                "/cm/endpoints.yaml",
                None,
            ),
            (
                EventKind::Modify(ModifyKind::Metadata(notify::event::MetadataKind::Any)),
                "/cm/endpoints.yaml",
                None,
            ),
            (write, "/cm/other.yaml", None),
            (EventKind::Create(CreateKind::Any), "/cm/..data_tmp", None),
            (write, "/elsewhere/endpoints.yaml", None),
        ];
        for (kind, path, want) in cases {
            assert_eq!(names.classify(&ev(kind, path)), want, "{kind:?} {path}");
        }
        let overflow = notify::Event::new(EventKind::Other).set_flag(Flag::Rescan);
        assert_eq!(names.classify(&overflow), Some(Change::Replaced));
    }

    #[test]
    fn a_symlink_target_in_the_directory_counts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("real.yaml"), "").unwrap();
        std::os::unix::fs::symlink("real.yaml", dir.path().join("endpoints.yaml")).unwrap();
        let names = Names::new(dir.path(), &dir.path().join("endpoints.yaml"));
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let real = dir.path().join("real.yaml");
        assert_eq!(
            names.classify(&ev(write, real.to_str().unwrap())),
            Some(Change::Written)
        );
    }

    /// `conf/endpoints.yaml -> ../real/endpoints.yaml`: events in `real` about the target
    /// count, other files there do not, and `real` is a directory to watch.
    #[test]
    fn a_symlink_target_in_another_directory_counts() {
        let dir = tempfile::tempdir().unwrap();
        let (conf, real) = (dir.path().join("conf"), dir.path().join("real"));
        std::fs::create_dir(&conf).unwrap();
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("endpoints.yaml"), "").unwrap();
        std::os::unix::fs::symlink("../real/endpoints.yaml", conf.join("endpoints.yaml")).unwrap();
        let names = Names::new(&conf, &conf.join("endpoints.yaml"));
        let top = std::fs::canonicalize(dir.path()).unwrap();
        let real = top.join("real");
        assert_eq!(
            names.elsewhere(),
            HashSet::from([real.clone(), top.clone()])
        );
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let at = |name: &str| real.join(name).to_str().unwrap().to_string();
        assert_eq!(
            names.classify(&ev(write, &at("endpoints.yaml"))),
            Some(Change::Written)
        );
        assert_eq!(names.classify(&ev(write, &at("other.yaml"))), None);
        // In the parent, `real` itself counts (removed or made again), its neighbours not.
        let mkdir = EventKind::Create(CreateKind::Folder);
        let top_at = |name: &str| top.join(name).to_str().unwrap().to_string();
        assert_eq!(
            names.classify(&ev(mkdir, &top_at("real"))),
            Some(Change::Replaced)
        );
        assert_eq!(names.classify(&ev(mkdir, &top_at("conf2"))), None);
        let open = EventKind::Access(AccessKind::Open(AccessMode::Any));
        assert_eq!(names.classify(&ev(open, &top_at("real"))), None);
        // A link within its own directory adds none.
        let same = Names::new(&real, &real.join("endpoints.yaml"));
        assert!(same.elsewhere().is_empty());
    }

    /// `conf/endpoints.yaml -> ../a/b/endpoints.yaml` with `a` removed: the nearest directory
    /// left is watched for `a`, then, once `a` is back without `b`, `a` for `b` (and its
    /// parent for `a`).
    #[test]
    fn a_missing_target_directory_is_watched_for_from_the_nearest_one_left() {
        let dir = tempfile::tempdir().unwrap();
        let top = std::fs::canonicalize(dir.path()).unwrap();
        let conf = top.join("conf");
        std::fs::create_dir(&conf).unwrap();
        std::os::unix::fs::symlink("../a/b/endpoints.yaml", conf.join("endpoints.yaml")).unwrap();
        let mkdir = EventKind::Create(CreateKind::Folder);
        let at = |p: &Path| p.to_str().unwrap().to_string();

        // `top` is watched from its parent too: it may go as well.
        let names = Names::new(&conf, &conf.join("endpoints.yaml"));
        let up = top.parent().unwrap().to_path_buf();
        assert_eq!(names.elsewhere(), HashSet::from([top.clone(), up]));
        assert_eq!(
            names.classify(&ev(mkdir, &at(&top.join("a")))),
            Some(Change::Replaced)
        );

        std::fs::create_dir(top.join("a")).unwrap();
        let names = Names::new(&conf, &conf.join("endpoints.yaml"));
        assert_eq!(
            names.elsewhere(),
            HashSet::from([top.clone(), top.join("a")])
        );
        assert_eq!(
            names.classify(&ev(mkdir, &at(&top.join("a/b")))),
            Some(Change::Replaced)
        );
    }

    #[test]
    fn settles_after_quiet_or_close_and_always_within_the_bound() {
        let t0 = Instant::now();
        let mut s = Settle::default();
        assert_eq!(s.due(), None);
        s.record(Change::Replaced, t0);
        assert_eq!(s.due(), Some(t0 + QUIET));

        // An in-place write waits for the close, or for a stalled writer.
        s.clear();
        s.record(Change::Written, t0);
        assert_eq!(s.due(), Some(t0 + STALLED_WRITER));
        let t1 = t0 + Duration::from_millis(600);
        s.record(Change::Closed, t1);
        assert_eq!(s.due(), Some(t1 + QUIET));

        // Events that never stop are still read MAX_DELAY after the first.
        s.clear();
        let mut t = t0;
        while t < t0 + MAX_DELAY * 2 {
            s.record(Change::Written, t);
            t += Duration::from_millis(50);
        }
        assert_eq!(s.due(), Some(t0 + MAX_DELAY));
    }
}
