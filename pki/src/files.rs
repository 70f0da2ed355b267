//! The only file I/O of this crate: reading and writing the standard file layouts.
//!
//! Writers check every target before writing anything, so a refusal changes nothing.
//! Private keys are created with mode 0600.

use std::path::{Path, PathBuf};

use crate::error::{PkiError, Result};
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

/// Writes all files, creating parent directories. Without `force`, fails with
/// [`PkiError::Exists`] listing every existing target, before writing anything.
pub fn write_files(files: &[OutFile], force: bool) -> Result<()> {
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
    for f in files {
        if let Some(parent) = f.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| PkiError::Io {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        write_one(f, force).map_err(|source| PkiError::Io {
            path: f.path.clone(),
            source,
        })?;
    }
    Ok(())
}

fn write_one(f: &OutFile, force: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(if f.secret { 0o600 } else { 0o644 });
    }
    let mut file = opts.open(&f.path)?;
    #[cfg(unix)]
    if f.secret {
        // The mode above only applies to new files; an overwritten key must not stay readable.
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(f.contents.as_bytes())?;
    file.sync_all()
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
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

    /// Loads a root from a certificate file and a key file.
    pub fn load_files(cert: &Path, key: &Path) -> Result<RootCa> {
        RootCa::from_pem(&read(cert)?, &read(key)?)
    }
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

    /// Reads a cluster bundle (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`, `cert-chain.pem`).
    /// `cert-chain.pem` must start with `ca-cert.pem`; use [`crate::verify_bundles`] for a full check.
    pub fn load_dir(dir: &Path) -> Result<IntermediateCa> {
        let ca = IntermediateCa::from_pems(
            &read(&dir.join(CA_CERT))?,
            &read(&dir.join(CA_KEY))?,
            &read(&dir.join(ROOT_CERT))?,
        )?;
        let chain_path = dir.join(CERT_CHAIN);
        let chain = crate::cert_ders(&read(&chain_path)?)
            .map_err(|e| PkiError::InvalidCert(format!("{}: {e}", chain_path.display())))?;
        if chain[0] != ca.cert_der() {
            return Err(PkiError::InvalidCert(format!(
                "{}: does not start with {CA_CERT}",
                chain_path.display()
            )));
        }
        Ok(ca)
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
