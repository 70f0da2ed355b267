//! Bounded reading of input files (PEM files, kubeconfigs, CA files).
//!
//! Only regular files are read (a symlink to one is fine): a device (`/dev/zero`), FIFO,
//! socket or directory is refused before anything is read, and at most
//! [`MAX_INPUT_BYTES`] are read, so a wrong path can neither hang nor exhaust memory.
//! No CLI input read through here documents stdin or a pipe, so none is accepted.

use std::io::Read;
use std::path::Path;

/// The largest input file read: 4 MiB, far above any PEM bundle or kubeconfig.
pub const MAX_INPUT_BYTES: u64 = 4 * 1024 * 1024;

/// The contents of the regular file at `path`, at most [`MAX_INPUT_BYTES`]. The error
/// does not name the path (callers do) and says what to pass instead.
pub fn read_input(path: &Path) -> std::io::Result<Vec<u8>> {
    read_limited(path, MAX_INPUT_BYTES)
}

/// [`read_input`] as UTF-8 text. Binary DER (what `openssl ... -outform DER` writes, a
/// SEQUENCE: first byte 0x30) is named as such, with the command that converts it.
pub fn read_input_string(path: &Path) -> std::io::Result<String> {
    String::from_utf8(read_input(path)?).map_err(|e| {
        let msg = if e.as_bytes().first() == Some(&0x30) {
            let p = path.display();
            format!(
                "is binary DER, not PEM text: convert it, for a certificate with \
                 openssl x509 -inform DER -in {p} -out {p}.pem (for a key: openssl pkey \
                 -inform DER -in {p} -out {p}.pem), and pass the .pem file"
            )
        } else {
            "is not UTF-8 text (expected a PEM or YAML file)".to_string()
        };
        std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
    })
}

pub(crate) fn read_limited(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    // stat first, so that a device is refused without even being opened.
    regular(&std::fs::metadata(path)?)?;
    // The path may have been swapped since: the open never blocks (a FIFO without a writer
    // would block a plain open forever) and what was opened is checked again.
    let file = open_nonblocking(path)?;
    let meta = file.metadata()?;
    regular(&meta)?;
    let mut buf = Vec::with_capacity(meta.len().min(max) as usize);
    file.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "is larger than {}, the limit for an input file (PEM or kubeconfig); pass the \
                 right file",
                human(max)
            ),
        ));
    }
    Ok(buf)
}

#[cfg(unix)]
fn open_nonblocking(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::File::options()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
}

#[cfg(not(unix))]
fn open_nonblocking(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::open(path)
}

fn regular(meta: &std::fs::Metadata) -> std::io::Result<()> {
    let t = meta.file_type();
    if t.is_file() {
        return Ok(());
    }
    let what = if t.is_dir() {
        "a directory"
    } else {
        special_kind(&t)
    };
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!("is {what}, not a regular file; pass a regular file"),
    ))
}

#[cfg(unix)]
fn special_kind(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_socket() {
        "a socket"
    } else {
        "a special file"
    }
}

#[cfg(not(unix))]
fn special_kind(_: &std::fs::FileType) -> &'static str {
    "a special file"
}

fn human(bytes: u64) -> String {
    if bytes.is_multiple_of(1024 * 1024) {
        format!("{} MiB", bytes / (1024 * 1024))
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_directories_and_large_files_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let e = read_input(tmp.path()).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        #[cfg(unix)]
        {
            let e = read_input(Path::new("/dev/zero")).unwrap_err();
            assert!(e.to_string().contains("character device"), "{e}");
        }
        let big = tmp.path().join("big.pem");
        std::fs::write(&big, vec![b'a'; 100]).unwrap();
        let e = read_limited(&big, 99).unwrap_err();
        assert!(e.to_string().contains("larger than 99 bytes"), "{e}");
        assert_eq!(read_limited(&big, 100).unwrap().len(), 100);
        let e = read_input_string(&{
            let p = tmp.path().join("bin");
            std::fs::write(&p, [0xff, 0xfe, 0x00]).unwrap();
            p
        })
        .unwrap_err();
        assert!(e.to_string().contains("not UTF-8"), "{e}");
        let der = tmp.path().join("root.der");
        std::fs::write(&der, [0x30, 0x82, 0x01, 0x0a, 0xff]).unwrap();
        let e = read_input_string(&der).unwrap_err().to_string();
        assert!(
            e.contains("binary DER")
                && e.contains(&format!("openssl x509 -inform DER -in {}", der.display())),
            "{e}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("fifo");
        let ok = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return;
        }
        let e = read_input(&fifo).unwrap_err();
        assert!(e.to_string().contains("FIFO"), "{e}");
        // A path swapped to a FIFO after the stat: the open itself must not block.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(open_nonblocking(&fifo).and_then(|f| f.metadata()));
        });
        let meta = rx
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("opening a FIFO without a writer blocked")
            .unwrap();
        assert!(regular(&meta).is_err());
    }
}
