//! Which file-system events mean "the endpoints file changed", and when a change has settled
//! enough to be read.
//!
//! [`Names::new`] resolves the path as the kernel does, one name at a time, following every
//! symlink on the way (in a directory component as well as the last one, up to the kernel's
//! 40), and records each name it looks up in each directory. A change of what the path names
//! is a change of one of those entries (created, removed, renamed over, written), so watching
//! their directories sees it. Watched: every directory from the one holding the first symlink
//! met on, the directory the file lies in, and that directory's parent (the file's directory
//! removed and made again, a Capistrano `current -> releases/N` swap, a ConfigMap's `..data`
//! swap). Directories above those stay unwatched: a path without symlinks is not watched up to
//! `/`. Most events in those directories concern other files. inotify also reports opens,
//! including the gateway's own reads: reacting to those made every read trigger the next one.
//! Only creates, in-place writes, closes after writing, renames and removals of a recorded
//! name count; access events never do.
//!
//! A change is read once it has settled: no relevant event for [`QUIET`], and a file written
//! in place has been closed by its writer. A writer that keeps the file open without writing
//! for [`STALLED_WRITER`] is taken as done, and a burst of changes is read at the latest
//! [`MAX_DELAY`] after it began, so a reload is always bounded.

use std::collections::{HashSet, VecDeque};
use std::ffi::OsString;
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

/// Symlinks followed in one resolution, as Linux's `MAXSYMLINKS`: one more is `ELOOP`, so the
/// read fails too.
const MAX_LINKS: usize = 40;
/// Names looked up in one resolution, links' included: bounds the directories watched
/// (`PATH_MAX` bounds each path, [`MAX_LINKS`] their number).
const MAX_LOOKUPS: usize = 256;

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
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Names {
    /// Resolved (no symlink in them), in the order the path's resolution reached them: each
    /// directory is watched once, under the path events will name.
    dirs: Vec<(PathBuf, HashSet<OsString>)>,
    /// Where the resolution ended: the directory the file lies in, or, when a name on the way
    /// is missing, the directory that lacks it.
    home: Option<PathBuf>,
}

/// One step of a path's resolution.
enum Step {
    Root,
    Up,
    Name(OsString),
}

fn steps(path: &Path) -> Vec<Step> {
    path.components()
        .filter_map(|c| match c {
            Component::RootDir | Component::Prefix(_) => Some(Step::Root),
            Component::ParentDir => Some(Step::Up),
            Component::CurDir => None,
            Component::Normal(n) => Some(Step::Name(n.to_os_string())),
        })
        .collect()
}

impl Names {
    /// Resolves `path` (absolute) as the kernel would, without opening anything (no event for
    /// the watcher), and keeps the names that matter (see the module's documentation).
    pub fn new(path: &Path) -> Names {
        // (directory, name looked up in it), in order; the directories have no symlink.
        let mut lookups: Vec<(PathBuf, OsString)> = Vec::new();
        let mut first_link = None;
        let mut todo: VecDeque<Step> = steps(path).into();
        let mut at = PathBuf::from("/");
        let mut links = 0;
        while let Some(step) = todo.pop_front() {
            let name = match step {
                Step::Root => {
                    at = PathBuf::from("/");
                    continue;
                }
                // `at` has no symlink in it: `..` is its parent, as for the kernel.
                Step::Up => {
                    at.pop();
                    continue;
                }
                Step::Name(name) => name,
            };
            if lookups.len() == MAX_LOOKUPS {
                break;
            }
            let next = at.join(&name);
            lookups.push((at.clone(), name));
            // Missing: the lookup just recorded sees it come back.
            let Ok(meta) = std::fs::symlink_metadata(&next) else {
                break;
            };
            if meta.file_type().is_symlink() {
                links += 1;
                if links > MAX_LINKS {
                    break;
                }
                let Ok(target) = std::fs::read_link(&next) else {
                    break;
                };
                first_link.get_or_insert(lookups.len() - 1);
                // Relative to the link's directory, `at`, which stays.
                for step in steps(&target).into_iter().rev() {
                    todo.push_front(step);
                }
            } else if meta.is_dir() {
                at = next;
            } else {
                // The file (or a file where a directory should be: ENOTDIR).
                break;
            }
        }
        let mut names = Names::default();
        let Some((home, file)) = lookups.last().cloned() else {
            return names;
        };
        let from = first_link.unwrap_or(lookups.len());
        for (dir, name) in lookups.drain(..).skip(from) {
            names.insert(dir, name);
        }
        if let (Some(up), Some(name)) = (home.parent(), home.file_name()) {
            names.insert(up.to_path_buf(), name.to_os_string());
        }
        names.insert(home.clone(), file);
        names.home = Some(home);
        names
    }

    fn insert(&mut self, dir: PathBuf, name: OsString) {
        match self.dirs.iter_mut().find(|(d, _)| *d == dir) {
            Some((_, names)) => {
                names.insert(name);
            }
            None => self.dirs.push((dir, HashSet::from([name]))),
        }
    }

    /// The directories to watch.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|(d, _)| d.clone()).collect()
    }

    /// The directory the file lies in (or the one that lacks the next name on its way).
    pub fn home(&self) -> Option<&Path> {
        self.home.as_deref()
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

    /// A recorded name in its directory, or a watched directory itself: removed or moved
    /// away, its watch is gone (the kernel drops it), and the path resolves elsewhere.
    fn concerns(&self, p: &Path) -> bool {
        if self.dirs.iter().any(|(d, _)| d == p) {
            return true;
        }
        let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
            return false;
        };
        self.dirs
            .iter()
            .any(|(d, names)| d == parent && names.contains(name))
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

    fn real_tempdir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let top = std::fs::canonicalize(dir.path()).unwrap();
        (dir, top)
    }

    fn set(names: &[&str]) -> HashSet<OsString> {
        names.iter().map(OsString::from).collect()
    }

    /// A ConfigMap volume: `cm/endpoints.yaml -> ..data/endpoints.yaml`,
    /// `..data -> ..2026_12_05_1`.
    #[test]
    fn only_changes_of_the_file_or_its_links_count() {
        let (_dir, top) = real_tempdir();
        let cm = top.join("cm");
        std::fs::create_dir_all(cm.join("..2026_12_05_1")).unwrap();
        std::fs::write(cm.join("..2026_12_05_1/endpoints.yaml"), "").unwrap();
        std::os::unix::fs::symlink("..2026_12_05_1", cm.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/endpoints.yaml", cm.join("endpoints.yaml")).unwrap();
        let names = Names::new(&cm.join("endpoints.yaml"));
        let data = cm.join("..2026_12_05_1");
        assert_eq!(
            names.dirs,
            vec![
                (
                    cm.clone(),
                    set(&["endpoints.yaml", "..data", "..2026_12_05_1"])
                ),
                (data.clone(), set(&["endpoints.yaml"])),
            ]
        );
        assert_eq!(names.home(), Some(data.as_path()));
        let at = |p: &Path| p.to_str().unwrap().to_string();
        let (file, link) = (data.join("endpoints.yaml"), cm.join("endpoints.yaml"));
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let cases = [
            (write, at(&file), Some(Change::Written)),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                at(&file),
                Some(Change::Closed),
            ),
            (
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                at(&cm.join("..data")),
                Some(Change::Replaced),
            ),
            (
                EventKind::Remove(notify::event::RemoveKind::Folder),
                at(&data),
                Some(Change::Replaced),
            ),
            (
                EventKind::Create(CreateKind::File),
                at(&link),
                Some(Change::Replaced),
            ),
            (
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                at(&file),
                None,
            ),
            (
                EventKind::Access(AccessKind::Close(AccessMode::Read)),
                at(&link),
                None,
            ),
            (
                EventKind::Modify(ModifyKind::Metadata(notify::event::MetadataKind::Any)),
                at(&file),
                None,
            ),
            (write, at(&cm.join("other.yaml")), None),
            (
                EventKind::Create(CreateKind::Any),
                at(&cm.join("..data_tmp")),
                None,
            ),
            (write, "/elsewhere/endpoints.yaml".into(), None),
            // A watched directory moved away (inotify's IN_MOVE_SELF): its watch is useless.
            (
                EventKind::Modify(ModifyKind::Name(RenameMode::From)),
                at(&cm),
                Some(Change::Replaced),
            ),
        ];
        for (kind, path, want) in cases {
            assert_eq!(names.classify(&ev(kind, &path)), want, "{kind:?} {path}");
        }
        let overflow = notify::Event::new(EventKind::Other).set_flag(Flag::Rescan);
        assert_eq!(names.classify(&overflow), Some(Change::Replaced));
    }

    #[test]
    fn a_symlink_target_in_the_directory_counts() {
        let (_dir, top) = real_tempdir();
        std::fs::write(top.join("real.yaml"), "").unwrap();
        std::os::unix::fs::symlink("real.yaml", top.join("endpoints.yaml")).unwrap();
        let names = Names::new(&top.join("endpoints.yaml"));
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        let real = top.join("real.yaml");
        assert_eq!(
            names.classify(&ev(write, real.to_str().unwrap())),
            Some(Change::Written)
        );
        // The directory itself, from its parent: removed and made again.
        let up = top.parent().unwrap().to_path_buf();
        let name = top.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            names.dirs,
            vec![
                (top.clone(), set(&["endpoints.yaml", "real.yaml"])),
                (up, set(&[name])),
            ]
        );
    }

    /// `conf/endpoints.yaml -> ../real/endpoints.yaml`: events in `real` about the target
    /// count, other files there do not, and `real` is a directory to watch.
    #[test]
    fn a_symlink_target_in_another_directory_counts() {
        let (_dir, top) = real_tempdir();
        let (conf, real) = (top.join("conf"), top.join("real"));
        std::fs::create_dir(&conf).unwrap();
        std::fs::create_dir(&real).unwrap();
        std::fs::write(real.join("endpoints.yaml"), "").unwrap();
        std::os::unix::fs::symlink("../real/endpoints.yaml", conf.join("endpoints.yaml")).unwrap();
        let names = Names::new(&conf.join("endpoints.yaml"));
        assert_eq!(names.dirs(), vec![conf.clone(), top.clone(), real.clone()]);
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
        // Without a link: the file's directory and its parent, for that directory only.
        let plain = Names::new(&real.join("endpoints.yaml"));
        assert_eq!(
            plain.dirs,
            vec![
                (top.clone(), set(&["real"])),
                (real.clone(), set(&["endpoints.yaml"])),
            ]
        );
    }

    /// `conf/endpoints.yaml -> ../a/b/endpoints.yaml` with `a` removed: the nearest directory
    /// left is watched for `a`, then, once `a` is back without `b`, `a` for `b` (and its
    /// parent for `a`).
    #[test]
    fn a_missing_target_directory_is_watched_for_from_the_nearest_one_left() {
        let (_dir, top) = real_tempdir();
        let conf = top.join("conf");
        std::fs::create_dir(&conf).unwrap();
        std::os::unix::fs::symlink("../a/b/endpoints.yaml", conf.join("endpoints.yaml")).unwrap();
        let mkdir = EventKind::Create(CreateKind::Folder);
        let at = |p: &Path| p.to_str().unwrap().to_string();

        // `top` is watched from its parent too: it may go as well.
        let names = Names::new(&conf.join("endpoints.yaml"));
        let up = top.parent().unwrap().to_path_buf();
        assert_eq!(names.dirs(), vec![conf.clone(), top.clone(), up]);
        assert_eq!(names.home(), Some(top.as_path()));
        assert_eq!(
            names.classify(&ev(mkdir, &at(&top.join("a")))),
            Some(Change::Replaced)
        );

        std::fs::create_dir(top.join("a")).unwrap();
        let names = Names::new(&conf.join("endpoints.yaml"));
        assert_eq!(names.dirs(), vec![conf.clone(), top.clone(), top.join("a")]);
        assert_eq!(
            names.classify(&ev(mkdir, &at(&top.join("a/b")))),
            Some(Change::Replaced)
        );
    }

    /// `cap/current -> rel1` (a directory link, swapped by Capistrano): `cap` is watched for
    /// `current` and `rel1`, `rel1` for the file; after the swap, `rel2` instead.
    #[test]
    fn a_symlinked_directory_on_the_way_counts() {
        let (_dir, top) = real_tempdir();
        let cap = top.join("cap");
        for rel in ["rel1", "rel2"] {
            std::fs::create_dir_all(cap.join(rel)).unwrap();
            std::fs::write(cap.join(rel).join("ep.yaml"), "").unwrap();
        }
        std::os::unix::fs::symlink("rel1", cap.join("current")).unwrap();
        let path = cap.join("current/ep.yaml");
        let names = Names::new(&path);
        assert_eq!(
            names.dirs,
            vec![
                (cap.clone(), set(&["current", "rel1"])),
                (cap.join("rel1"), set(&["ep.yaml"])),
            ]
        );
        let rename = EventKind::Modify(ModifyKind::Name(RenameMode::To));
        let at = |p: &Path| p.to_str().unwrap().to_string();
        assert_eq!(
            names.classify(&ev(rename, &at(&cap.join("current")))),
            Some(Change::Replaced)
        );
        assert_eq!(
            names.classify(&ev(rename, &at(&cap.join("rel1/ep.yaml")))),
            Some(Change::Replaced)
        );
        assert_eq!(
            names.classify(&ev(rename, &at(&cap.join("rel2/ep.yaml")))),
            None
        );

        std::os::unix::fs::symlink("rel2", cap.join("current.tmp")).unwrap();
        std::fs::rename(cap.join("current.tmp"), cap.join("current")).unwrap();
        let names = Names::new(&path);
        assert_eq!(names.dirs(), vec![cap.clone(), cap.join("rel2")]);
        assert_eq!(
            names.classify(&ev(rename, &at(&cap.join("rel2/ep.yaml")))),
            Some(Change::Replaced)
        );

        // Through an absolute link to the link: every directory from the first link on.
        std::fs::create_dir(top.join("conf")).unwrap();
        std::os::unix::fs::symlink(&path, top.join("conf/ep.yaml")).unwrap();
        let names = Names::new(&top.join("conf/ep.yaml"));
        let dirs = names.dirs();
        assert_eq!(dirs.first(), Some(&top.join("conf")));
        assert_eq!(dirs.last(), Some(&cap.join("rel2")));
        assert!(
            dirs.contains(&PathBuf::from("/")) && dirs.contains(&cap),
            "{dirs:?}"
        );
    }

    /// A loop of links, and a chain longer than the kernel follows: bounded, no panic.
    #[test]
    fn link_loops_are_bounded() {
        let (_dir, top) = real_tempdir();
        std::os::unix::fs::symlink("b", top.join("a")).unwrap();
        std::os::unix::fs::symlink("a", top.join("b")).unwrap();
        let names = Names::new(&top.join("a/ep.yaml"));
        let up = top.parent().unwrap().to_path_buf();
        assert_eq!(names.dirs(), vec![top.clone(), up]);
        for i in 0..100 {
            std::os::unix::fs::symlink(format!("l{}", i + 1), top.join(format!("l{i}"))).unwrap();
        }
        let names = Names::new(&top.join("l0"));
        assert_eq!(names.dirs.len(), 2);
        assert_eq!(names.dirs[0].1.len(), MAX_LINKS + 1);
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
