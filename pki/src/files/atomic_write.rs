//! Replacing a file without ever writing through what is at its path.
//!
//! The contents go to a new file beside the target (created exclusively: `O_CREAT|O_EXCL`
//! never follows a symlink), are synced, then moved into place. `rename(2)` replaces a
//! symlink at the target itself, so its destination never receives a key; without `force`,
//! `link(2)` refuses an existing target, even one that appeared after the caller's check.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `contents` to `path` atomically; mode 0600 when `secret`, else 0644.
pub(crate) fn write_atomic(
    path: &Path,
    contents: &[u8],
    secret: bool,
    force: bool,
) -> std::io::Result<()> {
    let tmp = write_temp(path, contents, secret)?;
    let placed = if force {
        std::fs::rename(&tmp, path)
    } else {
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => std::fs::remove_file(&tmp),
            // Filesystems without hard links: the caller checked the target already.
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                if path.symlink_metadata().is_ok() {
                    Err(e)
                } else {
                    std::fs::rename(&tmp, path)
                }
            }
            Err(e) => Err(e),
        }
    };
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(path)
}

/// A new, synced file in the target's directory holding `contents`.
fn write_temp(path: &Path, contents: &[u8], secret: bool) -> std::io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "path has no file name")
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(
        ".tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = path.with_file_name(tmp_name);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = opts.open(&tmp)?;
    let written = (|| {
        file.write_all(contents)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

/// Makes the rename durable (a crash must not leave the old file or no file).
fn sync_dir(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => std::fs::File::open(dir)?.sync_all(),
        None => std::fs::File::open(".")?.sync_all(),
    }
}
