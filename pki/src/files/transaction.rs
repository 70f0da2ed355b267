//! Writing a set of files all or nothing, never through what is at a target's path.
//!
//! 1. Stage: missing directories are created 0700; each file's contents go to a new file
//!    beside its target, created exclusively (`O_CREAT|O_EXCL` never follows a symlink) with
//!    its final mode (0600 for a key, else 0644) before a byte is written, then synced.
//! 2. Keep: with `force`, each existing target gets a second name (a hard link, else a copy)
//!    so that it can be put back.
//! 3. Place: each staged file is renamed over its target (`force`: a symlink at the target is
//!    replaced, never followed) or linked to it (without `force`, `link(2)` refuses a target
//!    that appeared after the caller's check).
//!
//! A failure in 1 or 2 removes the staged files and the directories created: nothing
//! changed. A failure in 3 (e.g. an immutable target) moves the kept files back and removes
//! the new ones placed; should that fail too, the error lists the files that now hold new
//! contents and where the previous contents are kept. A crash (rather than an I/O error)
//! during step 3 is not undone: the temporary and kept files stay beside their targets
//! (`.NAME.tmp-*`, `.NAME.old-*`).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::OutFile;
use crate::error::PkiError;

/// The calls of step 3 and its undo; tests replace them to fail on demand.
pub(super) trait Ops {
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()>;
    fn link(&mut self, from: &Path, to: &Path) -> io::Result<()>;
}

/// The real file system.
pub(super) struct RealOps;

impl Ops for RealOps {
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn link(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::hard_link(from, to)
    }
}

/// One staged file.
struct Staged<'a> {
    target: &'a Path,
    tmp: PathBuf,
    /// (device, inode) of the staged file: how a placed target is recognised as ours.
    id: Option<(u64, u64)>,
    /// Where the target's previous contents are kept (`force` and an existing target).
    kept: Option<PathBuf>,
}

/// Writes `files` all or nothing (see the module docs). The caller checked the targets.
pub(super) fn write_all(files: &[OutFile], force: bool, ops: &mut dyn Ops) -> crate::Result<()> {
    let mut created = Vec::new();
    let mut staged = Vec::new();
    if let Err((path, source)) = stage(files, force, &mut created, &mut staged) {
        discard(&staged, &[], &created);
        return Err(PkiError::NotWritten { path, source });
    }
    for i in 0..staged.len() {
        if let Err(source) = place(&staged[i], force, ops) {
            let path = staged[i].target.to_path_buf();
            let (new, kept) = undo(&staged[..i], ops);
            discard(&staged, &kept, &created);
            let _ = sync_dirs(&staged);
            return Err(if new.is_empty() {
                PkiError::NotWritten { path, source }
            } else {
                PkiError::PartlyWritten {
                    path,
                    source,
                    new,
                    kept,
                }
            });
        }
    }
    discard(&staged, &[], &[]);
    sync_dirs(&staged).map_err(|(path, e)| PkiError::Io {
        path,
        source: io::Error::new(
            e.kind(),
            format!("every file was written, but syncing this directory failed: {e}"),
        ),
    })
}

/// Steps 1 and 2; the error names the path that failed.
fn stage<'a>(
    files: &'a [OutFile],
    force: bool,
    created: &mut Vec<PathBuf>,
    staged: &mut Vec<Staged<'a>>,
) -> Result<(), (PathBuf, io::Error)> {
    for f in files {
        if let Some(parent) = f.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            create_private_dirs(parent, created).map_err(|e| (parent.to_path_buf(), e))?;
        }
        let (tmp, id) = write_temp(&f.path, f.contents.as_bytes(), f.secret)
            .map_err(|e| (f.path.clone(), e))?;
        staged.push(Staged {
            target: &f.path,
            tmp,
            id,
            kept: None,
        });
    }
    if force {
        for s in staged.iter_mut() {
            s.kept = keep(s.target).map_err(|e| (s.target.to_path_buf(), e))?;
        }
    }
    Ok(())
}

/// Step 3 for one file.
fn place(s: &Staged<'_>, force: bool, ops: &mut dyn Ops) -> io::Result<()> {
    if force {
        return ops.rename(&s.tmp, s.target);
    }
    match ops.link(&s.tmp, s.target) {
        Ok(()) => {
            let _ = std::fs::remove_file(&s.tmp);
            Ok(())
        }
        // Filesystems without hard links (EPERM): the caller checked that the target is absent.
        Err(e)
            if e.kind() != io::ErrorKind::AlreadyExists && s.target.symlink_metadata().is_err() =>
        {
            ops.rename(&s.tmp, s.target)
        }
        Err(e) => Err(e),
    }
}

/// Undoes step 3 for `placed`, newest first: kept files go back, new files are removed.
/// Returns the targets still holding new contents, and (target, kept file) for those whose
/// previous contents could not be moved back.
fn undo(placed: &[Staged<'_>], ops: &mut dyn Ops) -> (Vec<PathBuf>, Vec<(PathBuf, PathBuf)>) {
    let (mut new, mut kept) = (Vec::new(), Vec::new());
    for s in placed.iter().rev() {
        let undone = match &s.kept {
            Some(k) => {
                let back = ops.rename(k, s.target).is_ok();
                if !back {
                    kept.push((s.target.to_path_buf(), k.clone()));
                }
                back
            }
            // Only our own file is removed, not one that replaced it meanwhile.
            None if s.id.is_none() || file_id(s.target).ok().flatten() == s.id => {
                std::fs::remove_file(s.target).is_ok()
            }
            None => true,
        };
        if !undone {
            new.push(s.target.to_path_buf());
        }
    }
    new.reverse();
    kept.reverse();
    (new, kept)
}

/// Removes the staged files still there, the kept files not listed in `keep`, and the
/// directories created (deepest first; one that is not empty stays).
fn discard(staged: &[Staged<'_>], keep: &[(PathBuf, PathBuf)], created: &[PathBuf]) {
    for s in staged {
        let _ = std::fs::remove_file(&s.tmp);
        if let Some(k) = &s.kept
            && !keep.iter().any(|(_, kk)| kk == k)
        {
            let _ = std::fs::remove_file(k);
        }
    }
    for dir in created.iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
}

/// A new name for `target` beside it: `.NAME.<what>-<pid>-<n>`.
fn sibling(target: &Path, what: &str) -> io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = target
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".{what}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    Ok(target.with_file_name(tmp_name))
}

/// A new, synced file beside `path` holding `contents`, and its identity.
fn write_temp(
    path: &Path,
    contents: &[u8],
    secret: bool,
) -> io::Result<(PathBuf, Option<(u64, u64)>)> {
    let tmp = sibling(path, "tmp")?;
    let mut file = new_file(&tmp, if secret { 0o600 } else { 0o644 })?;
    let written = (|| {
        file.write_all(contents)?;
        file.sync_all()?;
        file.metadata()
    })();
    match written {
        Ok(meta) => Ok((tmp, id_of(&meta))),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Creates `path` exclusively with `mode` (never through a symlink).
fn new_file(path: &Path, mode: u32) -> io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    opts.open(path)
}

/// Step 2 for one target: a second name for its current contents, `None` if it is absent.
/// A hard link keeps the very file (mode, owner); where linking fails (a filesystem without
/// hard links, an immutable file) a copy is made.
fn keep(target: &Path) -> io::Result<Option<PathBuf>> {
    let meta = match target.symlink_metadata() {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let kept = sibling(target, "old")?;
    match std::fs::hard_link(target, &kept) {
        Ok(()) => Ok(Some(kept)),
        Err(link_err) => match copy_aside(target, &kept, &meta) {
            Ok(()) => Ok(Some(kept)),
            Err(e) => {
                let _ = std::fs::remove_file(&kept);
                Err(io::Error::new(
                    e.kind(),
                    format!(
                        "cannot keep its current contents to restore them on failure (link: \
                         {link_err}; copy: {e})"
                    ),
                ))
            }
        },
    }
}

/// A copy of the symlink or regular file `target` at `kept` (same mode, and owner if allowed).
fn copy_aside(target: &Path, kept: &Path, meta: &std::fs::Metadata) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        if meta.file_type().is_symlink() {
            return std::os::unix::fs::symlink(std::fs::read_link(target)?, kept);
        }
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file or symlink",
            ));
        }
        let mut from = std::fs::File::options()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(target)?;
        let mut to = new_file(kept, meta.mode() & 0o777)?;
        io::copy(&mut from, &mut to)?;
        to.sync_all()?;
        let _ = std::os::unix::fs::fchown(&to, Some(meta.uid()), Some(meta.gid()));
        Ok(())
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        std::fs::copy(target, kept).map(|_| ())
    }
}

fn file_id(path: &Path) -> io::Result<Option<(u64, u64)>> {
    Ok(id_of(&path.symlink_metadata()?))
}

fn id_of(meta: &std::fs::Metadata) -> Option<(u64, u64)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((meta.dev(), meta.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = meta;
        None
    }
}

/// Creates `dir` and its missing ancestors with mode 0700, recording each one created (in
/// `created`, parents first). Only directories created here are chmod-ed (mkdir's mode is
/// filtered by the umask); existing ones are left as they are.
fn create_private_dirs(dir: &Path, created: &mut Vec<PathBuf>) -> io::Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && d.symlink_metadata().is_err())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    let made = builder.create(dir);
    // Recorded even after a failure, so that a partial creation is removed too.
    for d in missing.iter().rev() {
        if d.symlink_metadata().is_ok() {
            created.push(d.to_path_buf());
        }
    }
    made?;
    #[cfg(unix)]
    for d in missing {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Syncs each target directory once, so that the renames survive a crash.
fn sync_dirs(staged: &[Staged<'_>]) -> Result<(), (PathBuf, io::Error)> {
    let mut dirs: Vec<&Path> = staged
        .iter()
        .map(|s| {
            s.target
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
        })
        .collect();
    dirs.dedup();
    let mut first_error = None;
    for dir in dirs {
        if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
            first_error.get_or_insert((dir.to_path_buf(), e));
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// The real calls, except that placing a staged file onto a path in `place` fails (as
    /// onto an immutable file), and so does moving a kept file back onto one in `restore`.
    #[derive(Default)]
    struct Failing {
        place: Vec<PathBuf>,
        restore: Vec<PathBuf>,
    }

    impl Failing {
        fn fails(&self, from: &Path, to: &Path) -> io::Result<()> {
            let kept = from.to_string_lossy().contains(".old-");
            let list = if kept { &self.restore } else { &self.place };
            if list.iter().any(|p| p == to) {
                return Err(io::Error::from_raw_os_error(1));
            }
            Ok(())
        }
    }

    impl Ops for Failing {
        fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
            self.fails(from, to)?;
            std::fs::rename(from, to)
        }

        fn link(&mut self, from: &Path, to: &Path) -> io::Result<()> {
            self.fails(from, to)?;
            std::fs::hard_link(from, to)
        }
    }

    fn files(dir: &Path, tag: &str) -> Vec<OutFile> {
        ["a.pem", "b-key.pem", "c.pem"]
            .iter()
            .map(|n| OutFile {
                path: dir.join(n),
                contents: format!("{tag} {n}"),
                secret: n.contains("key"),
            })
            .collect()
    }

    fn listing(dir: &Path) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                (e.file_name().to_string_lossy().into_owned(), text)
            })
            .collect();
        v.sort();
        v
    }

    /// The last rename fails: the two files replaced before it get their old contents back,
    /// and nothing else is left behind.
    #[test]
    fn a_failed_rename_puts_the_replaced_files_back() {
        let tmp = tempfile::tempdir().unwrap();
        write_all(&files(tmp.path(), "old"), false, &mut RealOps).unwrap();
        let before = listing(tmp.path());
        let mut ops = Failing {
            place: vec![tmp.path().join("c.pem")],
            ..Default::default()
        };
        let e = write_all(&files(tmp.path(), "new"), true, &mut ops).unwrap_err();
        assert!(matches!(e, PkiError::NotWritten { .. }), "{e}");
        assert!(e.to_string().contains("nothing was written"), "{e}");
        assert_eq!(listing(tmp.path()), before);

        // New files: removed again; the directory created for them too.
        let sub = tmp.path().join("new/sub");
        let e = write_all(
            &files(&sub, "new"),
            false,
            &mut Failing {
                place: vec![sub.join("c.pem")],
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(e, PkiError::NotWritten { .. }), "{e}");
        assert!(!tmp.path().join("new").exists());
    }

    /// Undoing fails as well: the error says which file holds new contents and where its
    /// previous contents are; those stay there.
    #[test]
    fn a_failed_undo_says_what_holds_new_contents() {
        let tmp = tempfile::tempdir().unwrap();
        write_all(&files(tmp.path(), "old"), false, &mut RealOps).unwrap();
        let (a, c) = (tmp.path().join("a.pem"), tmp.path().join("c.pem"));
        let mut ops = Failing {
            place: vec![c.clone()],
            restore: vec![a.clone()],
        };
        let e = write_all(&files(tmp.path(), "new"), true, &mut ops).unwrap_err();
        let PkiError::PartlyWritten { new, kept, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(new, std::slice::from_ref(&a));
        assert_eq!(kept.len(), 1);
        assert_eq!(std::fs::read_to_string(&kept[0].1).unwrap(), "old a.pem");
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "new a.pem");
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("b-key.pem")).unwrap(),
            "old b-key.pem"
        );
        assert_eq!(std::fs::read_to_string(&c).unwrap(), "old c.pem");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("{} now hold(s) the new contents", a.display()))
                && msg.contains(&format!("is kept in {}", kept[0].1.display())),
            "{msg}"
        );
        // Nothing else was left behind: the three files and the kept one.
        assert_eq!(listing(tmp.path()).len(), 4);
    }

    #[test]
    fn modes_are_final_before_any_byte_is_written() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        write_all(&files(tmp.path(), "x"), false, &mut RealOps).unwrap();
        let mode = |n: &str| {
            std::fs::metadata(tmp.path().join(n))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("b-key.pem"), 0o600);
        assert_eq!(mode("a.pem") & 0o600, 0o600);
        assert_eq!(listing(tmp.path()).len(), 3);
    }
}
