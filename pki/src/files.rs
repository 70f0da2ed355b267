//! The only file I/O of this crate: reading and writing the standard file layouts.
//!
//! Writers check every target before writing anything, so a refusal changes nothing, and
//! write a set of files all or nothing (`transaction`): every file is staged beside its
//! target first, then renamed over it (a symlink at the target is replaced, never followed);
//! an I/O error part way puts back what was replaced. A crash part way is settled by the next
//! write into the directory, or the next read of it as a bundle ([`recover_dir`]): back to
//! the complete previous set, or forward when every new file was already in place, with a
//! note on stderr (`transaction` has the rule). Private keys are 0600; directories
//! created for them are 0700, whatever the umask. A private key is never written into, or
//! read for reuse from, a symlinked directory or one other users may write (see `guard`).
//!
//! Every input file is read through [`read_input`]: regular files only, at most
//! [`MAX_INPUT_BYTES`]; certificate files through [`read_cert_pem`], which refuses any block
//! but `CERTIFICATE` (a key appended to a public file would be published).

mod guard;
mod input;
mod transaction;

pub use input::{MAX_INPUT_BYTES, read_input, read_input_string};

use std::path::{Path, PathBuf};

use crate::error::{PkiError, Result};
use crate::verify::{Bundle, Finding, Report, Severity, VerifyOptions, compare_roots, verify_one};
use crate::{IntermediateCa, RootCa, WorkloadCert};

pub const ROOT_CERT: &str = "root-cert.pem";
pub const ROOT_KEY: &str = "root-key.pem";
pub const CA_CERT: &str = "ca-cert.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const CERT_CHAIN: &str = "cert-chain.pem";
pub const WORKLOAD_CERT: &str = "cert.pem";
pub const WORKLOAD_KEY: &str = "key.pem";
pub const WORKLOAD_CHAIN: &str = "cert-chain.pem";
pub const WORKLOAD_ROOT: &str = "root-cert.pem";

/// One file to write.
#[derive(Debug, Clone)]
pub struct OutFile {
    pub path: PathBuf,
    pub contents: String,
    /// Private key: written with mode 0600.
    pub secret: bool,
}

impl OutFile {
    fn new(dir: &Path, name: &str, contents: impl Into<String>, secret: bool) -> Self {
        OutFile {
            path: dir.join(name),
            contents: contents.into(),
            secret,
        }
    }
}

/// Writes all files or none, creating parent directories (0700); see `transaction`.
/// Everything [`check_writable`] refuses is refused first. What an interrupted earlier write
/// into the same directories left is settled next ([`recover_dir`]), said in one line on
/// stderr ([`write_files_noting`] returns it instead). An I/O error while writing is
/// [`PkiError::NotWritten`] (every file as before), or, when even undoing failed,
/// [`PkiError::PartlyWritten`] naming the files that hold new contents.
pub fn write_files(files: &[OutFile], force: bool) -> Result<()> {
    for note in write_files_noting(files, force)? {
        eprintln!("note: {note}");
    }
    Ok(())
}

/// [`write_files`], returning the notes of what was recovered first instead of printing them.
pub fn write_files_noting(files: &[OutFile], force: bool) -> Result<Vec<String>> {
    check_writable(files, force)?;
    transaction::write_all(files, force, &mut transaction::RealOps)
}

/// Settles a write into `dir` that a crash interrupted (see `transaction` for the rule: back
/// to the complete previous set, or forward when every new file was in place). `Ok(None)`
/// when there was none, else what was done, in one line. An error changes nothing and says
/// how to fix the directory by hand. Readers of bundle directories call it first.
pub fn recover_dir(dir: &Path) -> Result<Option<String>> {
    transaction::recover(dir)
}

/// [`recover_dir`] for a reader: the note goes to stderr.
fn settle(dir: &Path) -> Result<()> {
    if let Some(note) = recover_dir(dir)? {
        eprintln!("note: {note}");
    }
    Ok(())
}

/// [`write_files_noting`], calling `pause` with a description of the state at the `at`-th
/// point (from 0) where a crash leaves a distinct one on disk. Only for pki's crash tests
/// (`tests/interrupted_writes.rs` kills the process while it pauses); no command calls it.
#[doc(hidden)]
pub fn write_files_pausing(
    files: &[OutFile],
    force: bool,
    at: usize,
    pause: &mut dyn FnMut(&str),
) -> Result<Vec<String>> {
    struct Pausing<'a> {
        left: usize,
        pause: &'a mut dyn FnMut(&str),
    }
    impl transaction::Ops for Pausing<'_> {
        fn rename(&mut self, from: &Path, to: &Path) -> std::io::Result<()> {
            transaction::Ops::rename(&mut transaction::RealOps, from, to)
        }
        fn link(&mut self, from: &Path, to: &Path) -> std::io::Result<()> {
            transaction::Ops::link(&mut transaction::RealOps, from, to)
        }
        fn checkpoint(&mut self, what: &str) {
            if self.left == 0 {
                (self.pause)(what);
            }
            self.left = self.left.wrapping_sub(1);
        }
    }
    check_writable(files, force)?;
    transaction::write_all(files, force, &mut Pausing { left: at, pause })
}

/// The checks [`write_files`] makes before writing anything, for a dry run to make the same
/// refusals: [`check_targets`]; a private key's directory (`guard`: a symlinked directory,
/// or one that other users may write, is refused); without `force`, [`PkiError::Exists`]
/// listing every existing target.
pub fn check_writable(files: &[OutFile], force: bool) -> Result<()> {
    check_targets(files)?;
    for f in files.iter().filter(|f| f.secret) {
        check_key_dir(f.path.parent().unwrap_or(Path::new("")))?;
    }
    if !force {
        let existing: Vec<PathBuf> = files
            .iter()
            .filter(|f| f.path.symlink_metadata().is_ok())
            .map(|f| f.path.clone())
            .collect();
        if !existing.is_empty() {
            return Err(PkiError::Exists(existing));
        }
    }
    Ok(())
}

/// Refuses ([`PkiError::Unwritable`]) targets that cannot be created: a target that is a
/// directory, or an existing ancestor that is not a directory. [`write_files`] calls it
/// first; a caller with work to do before writing can call it earlier.
pub fn check_targets(files: &[OutFile]) -> Result<()> {
    let mut problems = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for f in files {
        if f.path.is_dir() {
            problems.push(format!("{} is a directory", f.path.display()));
        }
        for dir in f.path.ancestors().skip(1) {
            if dir.as_os_str().is_empty() || !seen.insert(dir.to_path_buf()) {
                continue;
            }
            // metadata follows symlinks: a symlink to a directory is a directory.
            if let Ok(m) = dir.metadata()
                && !m.is_dir()
            {
                problems.push(format!(
                    "{} exists and is not a directory (needed to write {})",
                    dir.display(),
                    f.path.display()
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(PkiError::Unwritable(problems))
    }
}

/// A private key's directory may hold one (`guard`), else [`PkiError::Io`] naming it.
fn check_key_dir(dir: &Path) -> Result<()> {
    guard::check_key_dir(dir).map_err(|(path, source)| PkiError::Io { path, source })
}

/// An input file, bounded ([`read_input_string`]).
fn read(path: &Path) -> Result<String> {
    read_input_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A certificate file (`root-cert.pem`, `cert-chain.pem`, `ca-cert.pem`), read bounded and
/// checked by [`crate::check_cert_pem`]: only `CERTIFICATE` blocks. The error names the file.
/// A write into its directory that a crash interrupted is settled first ([`recover_dir`]).
pub fn read_cert_pem(path: &Path) -> Result<String> {
    settle(path.parent().unwrap_or(Path::new("")))?;
    let text = read(path)?;
    crate::pem::cert_ders(&text)
        .map_err(|e| PkiError::InvalidCert(format!("{}: {e}", path.display())))?;
    Ok(text)
}

/// A private key to reuse: its directory is checked like a writer's, then it is read
/// (bounded, as [`read_input_string`]), after settling an interrupted write ([`recover_dir`]).
/// A key that group or other users may read is used, with a warning on stderr
/// ([`read_key_noting`] returns it instead).
pub fn read_key(path: &Path) -> Result<String> {
    let (text, warning) = read_key_noting(path)?;
    if let Some(w) = warning {
        eprintln!("warning: {w}");
    }
    Ok(text)
}

/// [`read_key`], returning the warning about the key's mode instead of printing it.
pub fn read_key_noting(path: &Path) -> Result<(String, Option<String>)> {
    let dir = path.parent().unwrap_or(Path::new(""));
    check_key_dir(dir)?;
    settle(dir)?;
    let text = read(path)?;
    Ok((text, key_mode_warning(path)))
}

/// Why a private key file's mode is too wide (group or other users may read or write it),
/// naming the file, with the fix; `None` when it is private (or cannot be told).
pub fn key_mode_warning(path: &Path) -> Option<String> {
    key_mode_problem(path).map(|m| format!("{}: {m}", path.display()))
}

/// [`key_mode_warning`] without the file's name.
fn key_mode_problem(path: &Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then(|| {
            format!(
                "is a private key with mode {mode:04o}, so other local users may read or \
                 change it: chmod 600 {} (and treat the key as exposed if others could read it)",
                path.display()
            )
        })
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

impl RootCa {
    /// `root-cert.pem` and `root-key.pem` in `dir`.
    pub fn files(&self, dir: &Path) -> Vec<OutFile> {
        vec![
            OutFile::new(dir, ROOT_CERT, self.cert_pem(), false),
            OutFile::new(dir, ROOT_KEY, self.key_pem(), true),
        ]
    }

    pub fn write_dir(&self, dir: &Path, force: bool) -> Result<()> {
        write_files(&self.files(dir), force)
    }

    /// Loads a root from a certificate file and a key file. Two files given the wrong way
    /// round (the key as the certificate) are named as such.
    pub fn load_files(cert: &Path, key: &Path) -> Result<RootCa> {
        let cert_text = match read_cert_pem(cert) {
            Ok(text) => text,
            Err(e) => return Err(swapped(cert, key).unwrap_or(e)),
        };
        let key_text = read_key(key)?;
        RootCa::from_pem(&cert_text, &key_text).map_err(|e| match e {
            PkiError::InvalidCert(m) => PkiError::InvalidCert(format!("{}: {m}", cert.display())),
            PkiError::InvalidKey(m) => PkiError::InvalidKey(format!("{}: {m}", key.display())),
            other => other,
        })
    }
}

/// The error for a certificate file `cert` that holds a private key (and no certificate)
/// while the key file `key` holds a certificate: the two were swapped.
fn swapped(cert: &Path, key: &Path) -> Option<PkiError> {
    let labels = |p: &Path| {
        read(p)
            .ok()
            .and_then(|t| crate::pem::block_labels(&t).ok())
            .unwrap_or_default()
    };
    let cert_labels = labels(cert);
    let is_key = !cert_labels.is_empty() && cert_labels.iter().all(|l| l.ends_with("PRIVATE KEY"));
    (is_key && labels(key).iter().any(|l| l == "CERTIFICATE")).then(|| {
        PkiError::InvalidCert(format!(
            "{}: this is a private key, and {} holds a certificate: did you swap --root-cert \
             and --root-key? (the certificate file comes first)",
            cert.display(),
            key.display()
        ))
    })
}

impl IntermediateCa {
    /// The four files of a cluster bundle in `dir`.
    pub fn files(&self, dir: &Path) -> Vec<OutFile> {
        vec![
            OutFile::new(dir, CA_CERT, self.cert_pem(), false),
            OutFile::new(dir, CA_KEY, self.key_pem(), true),
            OutFile::new(dir, CERT_CHAIN, self.cert_chain_pem(), false),
            OutFile::new(dir, ROOT_CERT, self.root_pem(), false),
        ]
    }

    pub fn write_dir(&self, dir: &Path, force: bool) -> Result<()> {
        write_files(&self.files(dir), force)
    }

    /// Reads a cluster bundle (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`)
    /// to sign with. Refuses one that [`crate::verify_bundles`] finds errors in, dates aside
    /// (the signer's own validity is checked when it signs): [`PkiError::InvalidBundle`].
    pub fn load_dir(dir: &Path) -> Result<IntermediateCa> {
        settle(dir)?;
        let (ca_cert, ca_key, root_cert) = (
            read_cert_pem(&dir.join(CA_CERT))?,
            read_key(&dir.join(CA_KEY))?,
            read_cert_pem(&dir.join(ROOT_CERT))?,
        );
        let ca = IntermediateCa::from_pems(&ca_cert, &ca_key, &root_cert)?;
        let chain_path = dir.join(CERT_CHAIN);
        let chain_text = read(&chain_path)?;
        let chain = crate::pem::cert_ders(&chain_text)
            .map_err(|e| PkiError::InvalidCert(format!("{}: {e}", chain_path.display())))?;
        if chain[0] != ca.cert_der() {
            return Err(PkiError::InvalidCert(format!(
                "{}: does not start with {CA_CERT}",
                chain_path.display()
            )));
        }
        let errors =
            crate::verify::signing_errors(dir, [&ca_cert, &ca_key, &root_cert, &chain_text]);
        if !errors.is_empty() {
            return Err(PkiError::InvalidBundle {
                dir: dir.to_path_buf(),
                problems: errors
                    .iter()
                    .map(|f| format!("{}: {}", f.file.display(), f.message))
                    .collect(),
            });
        }
        // Between ca-cert.pem and the root: the CAs a workload's chain must carry too.
        let parents = if chain.len() > 2 {
            &chain[1..chain.len() - 1]
        } else {
            &[]
        };
        Ok(ca.with_parents(parents))
    }
}

impl WorkloadCert {
    /// `cert.pem`, `key.pem`, `cert-chain.pem`, `root-cert.pem` in `dir`.
    pub fn files(&self, dir: &Path) -> Vec<OutFile> {
        vec![
            OutFile::new(dir, WORKLOAD_CERT, self.cert_pem.as_str(), false),
            OutFile::new(dir, WORKLOAD_KEY, self.key_pem.as_str(), true),
            OutFile::new(dir, WORKLOAD_CHAIN, self.chain_pem.as_str(), false),
            OutFile::new(dir, WORKLOAD_ROOT, self.root_pem.as_str(), false),
        ]
    }

    pub fn write_dir(&self, dir: &Path, force: bool) -> Result<()> {
        write_files(&self.files(dir), force)
    }
}

impl Bundle {
    /// Reads a cluster bundle directory. Each missing or unreadable file is a finding naming
    /// it; a directory that does not exist is one finding, and so is one that may not hold a
    /// private key (a symlink, or writable by other users: see `guard`).
    pub fn load_dir(dir: &Path) -> std::result::Result<Bundle, Vec<Finding>> {
        if dir.is_dir()
            && let Err((file, e)) = guard::check_key_dir(dir)
        {
            return Err(vec![Finding {
                severity: Severity::Error,
                file,
                message: e.to_string(),
            }]);
        }
        let (texts, findings) = read_bundle(dir);
        match texts {
            Some(
                [
                    Some(ca_cert),
                    Some(ca_key),
                    Some(root_cert),
                    Some(cert_chain),
                ],
            ) if findings.is_empty() => Ok(Bundle {
                source: dir.to_path_buf(),
                ca_cert,
                ca_key,
                root_cert,
                cert_chain,
            }),
            _ => Err(findings),
        }
    }
}

/// The four files of a bundle directory (`None` for each one that could not be read), and
/// a finding per problem. No texts at all when the directory itself is unusable.
fn read_bundle(dir: &Path) -> (Option<[Option<String>; 4]>, Vec<Finding>) {
    let error = |file: PathBuf, message: String| Finding {
        severity: Severity::Error,
        file,
        message,
    };
    let problem = match dir.metadata() {
        Ok(m) if m.is_dir() => None,
        Ok(_) => Some("is not a directory (expected a cluster bundle directory)".to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(
            "directory does not exist (expected a cluster bundle: ca-cert.pem, ca-key.pem, \
             root-cert.pem, cert-chain.pem)"
                .to_string(),
        ),
        Err(e) => Some(format!("cannot be read: {e}")),
    };
    if let Some(message) = problem {
        return (None, vec![error(dir.to_path_buf(), message)]);
    }
    // A write interrupted by a crash may have left a mix of old and new files.
    if let Err(e) = settle(dir) {
        let (file, message) = match e {
            PkiError::Io { path, source } => (path, source.to_string()),
            other => (dir.to_path_buf(), other.to_string()),
        };
        return (None, vec![error(file, message)]);
    }
    let mut findings = Vec::new();
    let texts = [CA_CERT, CA_KEY, ROOT_CERT, CERT_CHAIN].map(|name| {
        let path = dir.join(name);
        match read_input_string(&path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                findings.push(error(
                    path,
                    "missing: a cluster bundle needs ca-cert.pem, ca-key.pem, root-cert.pem and \
                     cert-chain.pem (istiod rejects an incomplete set)"
                        .into(),
                ));
                None
            }
            Err(e) => {
                findings.push(error(path, format!("cannot be read: {e}")));
                None
            }
        }
    });
    (Some(texts), findings)
}

/// [`mod@crate::verify`] on bundle directories. Files that cannot be read are findings; the
/// others are still checked.
pub fn verify_bundles(dirs: &[&Path], opts: &VerifyOptions) -> Report {
    let mut report = Report::default();
    let mut roots = Vec::new();
    for dir in dirs {
        let (texts, findings) = read_bundle(dir);
        report.findings.extend(findings);
        let key = dir.join(CA_KEY);
        if let Some(message) = key_mode_problem(&key) {
            report.findings.push(Finding {
                severity: Severity::Warning,
                file: key,
                message,
            });
        }
        match texts {
            Some(texts) => {
                let texts = [0, 1, 2, 3].map(|i| texts[i].as_deref());
                roots.extend(verify_one(dir, texts, opts, &mut report));
            }
            None => report.bundles.push(dir.to_path_buf()),
        }
    }
    compare_roots(&roots, &mut report);
    report
}
