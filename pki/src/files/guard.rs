//! Which directories may hold a private key, for writing it and for reading one to reuse.
//!
//! The rules, after OpenSSH's `StrictModes` (which refuses keys and `authorized_keys` in
//! directories other users can write), checked before anything is written or read:
//!
//! - **The key's own directory** (the last component) must not be a symlink: a key is never
//!   written or read through a symlinked directory (`lstat`; the error names the real path to
//!   pass instead). It must be a directory, not writable by group or others (another local
//!   user could replace the key, or pre-plant one that would be reused; a sticky bit does not
//!   help, since a pre-planted file is the attack), and owned by the user running the
//!   command or by root. A directory that does not exist yet is created 0700 by the writer.
//! - **Its ancestors** may be symlinks (e.g. `/tmp` or `/var` on macOS, a symlinked home):
//!   they are resolved and their real directories checked. An ancestor that anyone may write
//!   without the sticky bit is refused (anyone could rename the key's directory and put
//!   another in its place); a sticky one such as `/tmp` is fine, and so is a group-writable
//!   ancestor (trusting the group of ancestors, as with per-user groups), unlike the key's
//!   own directory, where group-writable is refused.

use std::io::{Error, ErrorKind};
use std::path::{Path, PathBuf};

#[cfg(unix)]
use std::os::unix::fs::MetadataExt;

/// What to do when a check fails: the error text (the caller names the path).
type Check = std::result::Result<(), (PathBuf, Error)>;

fn refuse(path: &Path, msg: String) -> Check {
    Err((
        path.to_path_buf(),
        Error::new(ErrorKind::PermissionDenied, msg),
    ))
}

/// Checks that `dir` may hold a private key (see the module docs). `dir` need not exist.
pub(crate) fn check_key_dir(dir: &Path) -> Check {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    match dir.symlink_metadata() {
        Ok(m) if m.file_type().is_symlink() => {
            let real = std::fs::canonicalize(dir)
                .map(|r| format!(" (its real path is {})", r.display()))
                .unwrap_or_default();
            refuse(
                dir,
                format!(
                    "is a symlink{real}; a private key is never written or read through a \
                     symlinked directory (it could be redirected). Pass the real directory \
                     path instead, after checking it is yours"
                ),
            )
        }
        Ok(m) if !m.is_dir() => refuse(dir, "is not a directory".into()),
        Ok(m) => {
            check_own(dir, &m)?;
            check_ancestors(dir.parent().unwrap_or(Path::new("/")))
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            // Created 0700 by the writer: only its existing ancestors matter.
            let existing = dir
                .ancestors()
                .skip(1)
                .find(|a| a.as_os_str().is_empty() || a.symlink_metadata().is_ok())
                .unwrap_or(Path::new("."));
            check_ancestors(existing)
        }
        Err(e) => Err((dir.to_path_buf(), e)),
    }
}

/// The key's own directory: not writable by group or others, owned by us or root.
fn check_own(dir: &Path, m: &std::fs::Metadata) -> Check {
    #[cfg(unix)]
    {
        let mode = m.mode() & 0o7777;
        if mode & 0o022 != 0 {
            let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
                (true, true) => "its group and all users",
                (true, false) => "its group",
                _ => "all users",
            };
            return refuse(
                dir,
                format!(
                    "is writable by {who} (mode {mode:04o}): another local user could replace \
                     a private key there or plant one to be reused. Fix: chmod 700 {}, or use \
                     a directory of your own",
                    dir.display()
                ),
            );
        }
        if let Some(me) = effective_uid()
            && m.uid() != me
            && m.uid() != 0
        {
            return refuse(
                dir,
                format!(
                    "is owned by uid {}, not by you (uid {me}): its owner could replace a \
                     private key there. Use a directory of your own",
                    m.uid()
                ),
            );
        }
    }
    #[cfg(not(unix))]
    let _ = (dir, m);
    Ok(())
}

/// The real ancestors of `start` (itself included): none writable by all users without the
/// sticky bit.
fn check_ancestors(start: &Path) -> Check {
    let start = if start.as_os_str().is_empty() {
        Path::new(".")
    } else {
        start
    };
    let real = std::fs::canonicalize(start).map_err(|e| (start.to_path_buf(), e))?;
    #[cfg(unix)]
    for a in real.ancestors() {
        let m = a.metadata().map_err(|e| (a.to_path_buf(), e))?;
        let mode = m.mode() & 0o7777;
        if mode & 0o002 != 0 && mode & 0o1000 == 0 {
            return refuse(
                a,
                format!(
                    "(an ancestor of the private key's directory) is writable by all users \
                     without the sticky bit (mode {mode:04o}): anyone could move the key's \
                     directory and put another in its place. Fix: chmod o-w {} (or chmod +t), \
                     or use another directory",
                    a.display()
                ),
            );
        }
    }
    #[cfg(not(unix))]
    let _ = real;
    Ok(())
}

/// The effective uid, on every Unix (the owner check is skipped elsewhere).
pub(crate) fn effective_uid() -> Option<u32> {
    #[cfg(unix)]
    {
        Some(rustix::process::geteuid().as_raw())
    }
    #[cfg(not(unix))]
    {
        None
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(p: &Path, mode: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn private_dirs_pass_and_shared_or_symlinked_ones_do_not() {
        let tmp = tempfile::tempdir().unwrap();
        let ok = tmp.path().join("ok");
        std::fs::create_dir(&ok).unwrap();
        chmod(&ok, 0o755);
        check_key_dir(&ok).unwrap();
        check_key_dir(&ok.join("new/sub")).unwrap();

        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&ok, &link).unwrap();
        let (p, e) = check_key_dir(&link).unwrap_err();
        assert_eq!(p, link);
        assert!(e.to_string().contains("is a symlink"), "{e}");
        // A symlinked ancestor is resolved, not refused.
        std::fs::create_dir(ok.join("inner")).unwrap();
        check_key_dir(&link.join("inner")).unwrap();

        for (mode, who) in [
            (0o777, "group and all"),
            (0o770, "its group"),
            (0o1777, "all"),
        ] {
            chmod(&ok, mode);
            let (_, e) = check_key_dir(&ok).unwrap_err();
            assert!(e.to_string().contains(who), "{mode:o}: {e}");
            assert!(e.to_string().contains("chmod 700"), "{e}");
        }
        // World-writable ancestor without sticky: refused; with sticky: fine.
        chmod(&ok, 0o777);
        let (p, e) = check_key_dir(&ok.join("inner")).unwrap_err();
        assert_eq!(p, ok);
        assert!(e.to_string().contains("sticky"), "{e}");
        check_key_dir(&ok.join("missing")).unwrap_err();
        chmod(&ok, 0o1777);
        check_key_dir(&ok.join("inner")).unwrap();
        check_key_dir(&ok.join("missing")).unwrap();
        chmod(&ok, 0o700);
    }

    #[test]
    fn a_directory_another_user_owns_is_refused() {
        // Giving a directory away needs root; as any other user there is nothing to check.
        if !rustix::process::geteuid().is_root() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let theirs = tmp.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        chmod(&theirs, 0o700);
        check_key_dir(&theirs).unwrap();
        std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
        let (p, e) = check_key_dir(&theirs).unwrap_err();
        assert_eq!(p, theirs);
        assert!(e.to_string().contains("owned by uid 65534"), "{e}");
    }
}
