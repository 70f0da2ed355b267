//! Reading a file named by the user (the endpoints file, the HBONE certificates) without
//! blocking on what is not a regular file and without unbounded memory.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Why [`read_regular`] refused a path.
#[derive(Debug)]
pub enum ReadRefused {
    Io(std::io::Error),
    /// Not a regular file: what it is ("a FIFO", "a directory", ...).
    NotRegular(&'static str),
    /// Holds more than the cap.
    TooLarge,
}

/// Reads the regular file at `path` (symlinks followed), at most `cap` bytes.
///
/// Never blocks on what is not a regular file: the open is non-blocking (a FIFO without a
/// writer would otherwise block it forever) and the opened file is checked with fstat before
/// any read, so a FIFO, a device (`/dev/zero`) or a directory is refused whatever the path
/// resolved to at the moment of the open. A regular file is read through a `cap + 1` window,
/// so even one whose size lies (`/proc`) cannot take more than `cap + 1` bytes of memory.
pub fn read_regular(path: &Path, cap: u64) -> Result<Vec<u8>, ReadRefused> {
    let file = File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(ReadRefused::Io)?;
    let meta = file.metadata().map_err(ReadRefused::Io)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        return Err(ReadRefused::NotRegular(if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else if kind.is_dir() {
            "a directory"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "something else"
        }));
    }
    if meta.len() > cap {
        return Err(ReadRefused::TooLarge);
    }
    // The size is a hint only: a file may grow between the fstat and the read.
    let mut buf = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0).saturating_add(1));
    file.take(cap.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(ReadRefused::Io)?;
    if buf.len() as u64 > cap {
        return Err(ReadRefused::TooLarge);
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The window: a regular file over the cap is refused, one at the cap is read, and a file
    /// that reports no size (`/proc`) is still cut at the cap.
    #[test]
    fn reads_are_cut_at_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("small.yaml");
        std::fs::write(&small, "0123456789").unwrap();
        assert!(matches!(
            read_regular(&small, 9),
            Err(ReadRefused::TooLarge)
        ));
        assert_eq!(read_regular(&small, 10).unwrap(), b"0123456789");
        assert!(matches!(
            read_regular(Path::new("/proc/self/status"), 16),
            Err(ReadRefused::TooLarge)
        ));
    }
}
