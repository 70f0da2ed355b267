//! Writing a set of files all or nothing, never through what is at a target's path, and
//! recoverably: a crash part way is settled by the next run.
//!
//! 0. Lock: each target directory is created if missing (0700, one level at a time: a level
//!    another writer made meanwhile is theirs) and locked (`flock`, released by the kernel
//!    when the writer dies) for the whole write; a second writer is refused, and removes no
//!    directory (the one it made may be the first writer's now). A target that already holds
//!    exactly its new contents (a key: with mode 0600) is left out of the write.
//!    Under the lock, an interrupted earlier write is settled (below) and the temporary files
//!    of one interrupted before it renamed anything are removed (`sweep`), each with a note.
//! 1. Stage: each file's contents go to a new file beside its target, created exclusively
//!    (`O_CREAT|O_EXCL` never follows a symlink) with its final mode (0600 for a key, else
//!    0644) before a byte is written, then synced.
//! 2. Keep: with `force`, each existing target gets a second name (a hard link, else a copy)
//!    so that it can be put back.
//! 3. Journal: what step 4 is about to do ([`JOURNAL`], 0600, synced with its directory, one
//!    copy in each target directory, each naming every file): per target its staged and kept
//!    names, the SHA-256 of its new contents and a print of its previous ones.
//! 4. Place: each staged file is renamed over its target (`force`: a symlink at the target is
//!    replaced, never followed) or linked to it (without `force`, `link(2)` refuses a target
//!    that appeared after the caller's check).
//! 5. Finish: the directories are synced, the kept files removed, then the journals.
//!
//! A failure in 1 to 3 removes the staged files and the directories this write created:
//! nothing changed. A failure in 4 (e.g. an immutable target) moves the kept files back and removes
//! the new ones placed; should that fail too, the error lists the files that now hold new
//! contents and where the previous contents are kept. Either way the error is the report and
//! the journals go.
//!
//! **Recovery rule** for a journal left by a crash (SIGKILL, power loss), applied by the
//! next write into any of its directories and by the readers of a bundle directory
//! (`recover`), like SQLite's hot journal: each target is recognised by its contents, never
//! by timing. If *every* target holds its new contents, the write is **finished forward**
//! (its staged and kept leftovers are removed). Otherwise it is **rolled back**: each target
//! that holds its new contents gets its kept previous contents back (or is removed if it did
//! not exist before), the others keep their previous contents, and the staged files go; the
//! result is the complete previous set (the one already installed: `certs renew --apply`
//! writes before it applies). Either way one line says what was done. A target
//! that holds neither its previous nor its new contents, or a replaced one whose kept copy is
//! gone, cannot be decided: recovery changes nothing and its error names the files and the
//! commands that restore either set. Recovery only ever renames or removes the files its
//! journal names, never through a symlink, and is safe to repeat: the journal goes last.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use super::OutFile;
use crate::error::PkiError;
use journal::{Entry, Journal, Print, print_of};
pub(super) use recovery::recover;
use recovery::{recover_locked, sweep};

/// The journal of a write in progress, in each directory it writes into.
pub(super) const JOURNAL: &str = ".pki-write.journal";

/// The calls of step 4 and its undo; tests replace them to fail on demand.
pub(super) trait Ops {
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()>;
    fn link(&mut self, from: &Path, to: &Path) -> io::Result<()>;
    /// A point where a crash leaves a distinct state on disk (crash tests stop here).
    fn checkpoint(&mut self, _what: &str) {}
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
    /// SHA-256 of the new contents, and the print of the previous ones.
    new: [u8; 32],
    old: Print,
}

/// A directory written into: as the caller named it, and absolute (for the journal).
struct Dir {
    path: PathBuf,
    abs: PathBuf,
}

/// Writes `files` all or nothing (see the module docs). The caller checked the targets.
/// Returns the notes of what was recovered first.
pub(super) fn write_all(
    files: &[OutFile],
    force: bool,
    ops: &mut dyn Ops,
) -> crate::Result<Vec<String>> {
    let dirs =
        target_dirs(files).map_err(|(path, source)| PkiError::NotWritten { path, source })?;
    let mut created = Vec::new();
    let mut locks = Locks::default();
    let mut notes = Vec::new();
    if let Err((e, locked)) = prepare(&dirs, &mut created, &mut locks, &mut notes) {
        // A directory this call created but could not lock is another writer's now: it
        // stays (removing it would pull it from under that writer's lock).
        if locked {
            remove_dirs(&created);
        }
        return Err(e);
    }
    // A target that already holds exactly its new contents (and, for a key, a private mode)
    // is left alone: nothing to undo, and an immutable unchanged file does not stop the write.
    let changed: Vec<OutFile> = files
        .iter()
        .filter(|f| !(force && unchanged(f)))
        .cloned()
        .collect();
    let files = &changed[..];
    let mut staged = Vec::new();
    let journals = stage(files, force, &mut staged, ops).and_then(|()| {
        let journals = write_journals(&dirs, &staged)?;
        ops.checkpoint(&format!("placed 0 of {}", staged.len()));
        Ok(journals)
    });
    let journals = match journals {
        Ok(j) => j,
        Err((path, source)) => {
            discard(&staged, &[]);
            remove_dirs(&created);
            return Err(PkiError::NotWritten { path, source });
        }
    };
    for i in 0..staged.len() {
        if let Err(source) = place(&staged[i], force, ops) {
            let path = staged[i].target.to_path_buf();
            let (new, kept) = undo(&staged[..i], ops);
            discard(&staged, &kept);
            let _ = sync_dirs(&dirs);
            remove_quietly(&journals);
            remove_dirs(&created);
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
        ops.checkpoint(&format!("placed {} of {}", i + 1, staged.len()));
    }
    // The renames are durable before the kept copies and then the journals go.
    let synced = sync_dirs(&dirs);
    discard(&staged, &[]);
    ops.checkpoint("leftovers removed");
    remove_quietly(&journals);
    synced
        .and(sync_dirs(&dirs))
        .map_err(|(path, e)| PkiError::Io {
            path,
            source: io::Error::new(
                e.kind(),
                format!("every file was written, but syncing this directory failed: {e}"),
            ),
        })?;
    Ok(notes)
}

/// Whether `f`'s target is a regular file (not a symlink) holding exactly `f.contents`, with
/// a mode no wider than the writer would give it (0600 for a key, 0644 otherwise).
fn unchanged(f: &OutFile) -> bool {
    let Ok(file) = open_nofollow(&f.path) else {
        return false;
    };
    let Ok(meta) = file.metadata() else {
        return false;
    };
    if !meta.is_file() || meta.len() != f.contents.len() as u64 {
        return false;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let allowed = if f.secret { 0o600 } else { 0o644 };
        if meta.permissions().mode() & 0o7777 & !allowed != 0 {
            return false;
        }
    }
    let mut now = Vec::with_capacity(f.contents.len());
    file.take(f.contents.len() as u64 + 1)
        .read_to_end(&mut now)
        .is_ok_and(|_| now == f.contents.as_bytes())
}

/// The directories of `files`, once each (by absolute path), in order.
fn target_dirs(files: &[OutFile]) -> Result<Vec<Dir>, (PathBuf, io::Error)> {
    let mut dirs: Vec<Dir> = Vec::new();
    for f in files {
        let path = match f.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let abs = std::path::absolute(&path).map_err(|e| (path.clone(), e))?;
        if !dirs.iter().any(|d| d.abs == abs) {
            dirs.push(Dir { path, abs });
        }
    }
    Ok(dirs)
}

/// Step 0: creates and locks every directory, then settles what an interrupted write left.
/// The error says whether every directory was locked (false: a lock failed or was never
/// tried, so the directories created may be another writer's).
fn prepare(
    dirs: &[Dir],
    created: &mut Vec<PathBuf>,
    locks: &mut Locks,
    notes: &mut Vec<String>,
) -> Result<(), (PkiError, bool)> {
    for d in dirs {
        let not_written = |source| {
            (
                PkiError::NotWritten {
                    path: d.path.clone(),
                    source,
                },
                false,
            )
        };
        create_private_dirs(&d.path, created).map_err(not_written)?;
        locks.lock(&d.path).map_err(not_written)?;
    }
    for d in dirs {
        notes.extend(recover_locked(&d.path, locks).map_err(|e| (e, true))?);
        notes.extend(sweep(&d.path));
    }
    Ok(())
}

/// Steps 1 and 2; the error names the path that failed.
fn stage<'a>(
    files: &'a [OutFile],
    force: bool,
    staged: &mut Vec<Staged<'a>>,
    ops: &mut dyn Ops,
) -> Result<(), (PathBuf, io::Error)> {
    for f in files {
        let (tmp, id) = write_temp(&f.path, f.contents.as_bytes(), f.secret)
            .map_err(|e| (f.path.clone(), e))?;
        staged.push(Staged {
            target: &f.path,
            tmp,
            id,
            kept: None,
            new: Sha256::digest(f.contents.as_bytes()).into(),
            old: Print::Absent,
        });
        ops.checkpoint(&format!("staged {} of {}", staged.len(), files.len()));
    }
    if force {
        for s in staged.iter_mut() {
            s.kept = keep(s.target).map_err(|e| (s.target.to_path_buf(), e))?;
            if let Some(k) = &s.kept {
                s.old = print_of(k).map_err(|e| (k.clone(), e))?;
            }
        }
        ops.checkpoint("kept the previous files");
    }
    Ok(())
}

/// Step 3: the journal, in every directory, synced with it; returns where they are.
fn write_journals(
    dirs: &[Dir],
    staged: &[Staged<'_>],
) -> Result<Vec<PathBuf>, (PathBuf, io::Error)> {
    let dir_of = |target: &Path| {
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::path::absolute(parent).map_err(|e| (target.to_path_buf(), e))
    };
    let mut entries = Vec::new();
    for s in staged {
        let abs = dir_of(s.target)?;
        let name = |p: &Path| abs.join(p.file_name().unwrap_or_default());
        entries.push(Entry {
            target: name(s.target),
            tmp: name(&s.tmp),
            kept: s.kept.as_deref().map(name),
            new: s.new,
            old: s.old.clone(),
        });
    }
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let journal = Journal {
        txn: format!("{}-{nanos}", std::process::id()),
        dirs: dirs.iter().map(|d| d.abs.clone()).collect(),
        entries,
    };
    let text = journal.render();
    let mut written = Vec::new();
    for d in dirs {
        let path = d.path.join(JOURNAL);
        let made = new_file(&path, 0o600).and_then(|mut f| {
            written.push(path.clone());
            f.write_all(text.as_bytes())?;
            f.sync_all()
        });
        if let Err(e) = made {
            remove_quietly(&written);
            return Err((path, e));
        }
    }
    if let Err(e) = sync_dirs(dirs) {
        remove_quietly(&written);
        return Err(e);
    }
    Ok(written)
}

/// Step 4 for one file.
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

/// Undoes step 4 for `placed`, newest first: kept files go back, new files are removed.
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

/// Removes the staged files still there and the kept files not listed in `keep`.
fn discard(staged: &[Staged<'_>], keep: &[(PathBuf, PathBuf)]) {
    for s in staged {
        let _ = std::fs::remove_file(&s.tmp);
        if let Some(k) = &s.kept
            && !keep.iter().any(|(_, kk)| kk == k)
        {
            let _ = std::fs::remove_file(k);
        }
    }
}

/// Removes the directories created (deepest first; one that is not empty stays).
fn remove_dirs(created: &[PathBuf]) {
    for dir in created.iter().rev() {
        let _ = std::fs::remove_dir(dir);
    }
}

fn remove_quietly(paths: &[PathBuf]) {
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
}

/// A new name for `target` beside it: `.NAME.<what>-<pid>-<n>` (`sweep` knows the form).
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

/// Opens `path` to read it, never through a symlink and without blocking on a FIFO.
fn open_nofollow(path: &Path) -> io::Result<std::fs::File> {
    let mut opts = std::fs::File::options();
    opts.read(true);
    #[cfg(unix)]
    {
        use rustix::fs::OFlags;
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32);
    }
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
        use std::os::unix::fs::MetadataExt;
        if meta.file_type().is_symlink() {
            return std::os::unix::fs::symlink(std::fs::read_link(target)?, kept);
        }
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file or symlink",
            ));
        }
        let mut from = open_nofollow(target)?;
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

/// Creates `dir` and its missing ancestors with mode 0700, one level at a time, recording
/// in `created` (parents first) only those this call made: one that another process made
/// meanwhile (`mkdir` says it exists) is theirs, never recorded, so never removed. Only
/// directories created here are chmod-ed (mkdir's mode is filtered by the umask); existing
/// ones are left as they are.
fn create_private_dirs(dir: &Path, created: &mut Vec<PathBuf>) -> io::Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && d.symlink_metadata().is_err())
        .collect();
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    for d in missing.into_iter().rev() {
        match builder.create(d) {
            Ok(()) => created.push(d.to_path_buf()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => continue,
            Err(e) => return Err(e),
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    Ok(())
}

/// Syncs each directory, so that the renames (or removals) in it survive a crash.
fn sync_dirs(dirs: &[Dir]) -> Result<(), (PathBuf, io::Error)> {
    let mut first_error = None;
    for d in dirs {
        if let Err(e) = sync_dir(&d.path) {
            first_error.get_or_insert((d.path.clone(), e));
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all())
}

/// Exclusive locks on directories, held until dropped (the kernel drops them when the
/// process dies, which is how a journal left by a crash is told from one being written).
/// One lock per directory, however it is named.
#[derive(Default)]
pub(super) struct Locks(Vec<(Option<(u64, u64)>, std::fs::File)>);

impl Locks {
    pub(super) fn lock(&mut self, dir: &Path) -> io::Result<()> {
        let file = std::fs::File::open(dir)?;
        let id = id_of(&file.metadata()?);
        if id.is_some() && self.0.iter().any(|(held, _)| *held == id) {
            return Ok(());
        }
        try_lock(&file)?;
        self.0.push((id, file));
        Ok(())
    }
}

#[cfg(unix)]
fn try_lock(dir: &std::fs::File) -> io::Result<()> {
    use rustix::fs::{FlockOperation, flock};
    use rustix::io::Errno;
    // A lock just released can outlive its holder for a moment: a process that forked
    // while holding it keeps the descriptor in the child until the child's exec closes it.
    // So a held lock is tried again for up to about a second before it counts as a writer.
    let mut held = flock(dir, FlockOperation::NonBlockingLockExclusive);
    for _ in 0..20 {
        if held != Err(Errno::WOULDBLOCK) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        held = flock(dir, FlockOperation::NonBlockingLockExclusive);
    }
    match held {
        Ok(()) => Ok(()),
        Err(e) if e == Errno::WOULDBLOCK => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            "another write into this directory is in progress (it holds a lock on the \
             directory): wait for it to finish, then run this again",
        )),
        // A filesystem without flock: unlocked, as before journals existed.
        Err(e) if [Errno::NOLCK, Errno::OPNOTSUPP, Errno::NOSYS].contains(&e) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(not(unix))]
fn try_lock(_: &std::fs::File) -> io::Result<()> {
    Ok(())
}

/// A path for a shell command line: single-quoted unless plainly safe.
fn quote(p: &Path) -> String {
    let s = p.display().to_string();
    if s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._+,=@~-".contains(&b))
    {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The journal: what a write is about to do, as text on disk, and the prints that tell a
/// target's previous contents from its new ones.
mod journal;

/// Settling what an interrupted write left (the rule is in the module docs).
mod recovery;

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

    /// Any path survives the journal's text form; a journal cut anywhere is torn, not
    /// misread; a checksummed one with another layout is foreign.
    #[test]
    fn journals_round_trip_and_cut_ones_are_torn() {
        use journal::Parsed;
        let dir = PathBuf::from("/d i r/%x\n\u{e9}");
        let name = |n: &str| dir.join(n);
        let j = Journal {
            txn: "1-2".into(),
            dirs: vec![dir.clone()],
            entries: vec![
                Entry {
                    target: name("a b.pem"),
                    tmp: name(".a b.pem.tmp-1-0"),
                    kept: Some(name(".a b.pem.old-1-1")),
                    new: [7; 32],
                    old: Print::Link([9; 32]),
                },
                Entry {
                    target: name("k"),
                    tmp: name(".k.tmp-1-2"),
                    kept: None,
                    new: [0; 32],
                    old: Print::Absent,
                },
            ],
        };
        let text = j.render();
        let Parsed::Journal(back) = Journal::parse(&text) else {
            panic!("{text}")
        };
        assert_eq!(back.render(), text);
        assert_eq!(back.entries[0].target, name("a b.pem"));
        for cut in 0..text.len() {
            assert!(
                matches!(Journal::parse(&text[..cut]), Parsed::Torn),
                "{cut}"
            );
        }
        // Names a writer never gives: refused, so recovery never touches other files.
        let bad = Journal {
            entries: vec![Entry {
                tmp: PathBuf::from("/elsewhere/.k.tmp-1-2"),
                ..j.entries.into_iter().nth(1).unwrap()
            }],
            ..j
        };
        assert!(matches!(Journal::parse(&bad.render()), Parsed::Foreign(_)));
        assert!(matches!(Journal::parse("hello\n"), Parsed::Foreign(_)));
        assert_eq!(
            journal::leftover_name(".ca-key.pem.old-12-3"),
            Some(("ca-key.pem", "old"))
        );
        for not in [
            ".ca-key.pem.tmp-12",
            "ca.tmp-1-2",
            "..tmp-1-2",
            ".a.tmp-x-2",
        ] {
            assert_eq!(journal::leftover_name(not), None, "{not}");
        }
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
