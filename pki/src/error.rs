//! The error type of the `pki` crate.

use std::path::PathBuf;

/// Everything that can go wrong while generating, loading or writing PKI material.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Key generation failed in the crypto backend.
    #[error("generating a {key_type} key failed: {source}")]
    KeyGen {
        key_type: crate::KeyType,
        #[source]
        source: rcgen::Error,
    },
    /// A private key could not be read.
    #[error("invalid private key: {0}")]
    InvalidKey(String),
    /// A certificate could not be read.
    #[error("invalid certificate: {0}")]
    InvalidCert(String),
    /// An option is out of range or malformed.
    #[error("invalid {field}: {reason}")]
    InvalidOption { field: &'static str, reason: String },
    /// rcgen refused to build or sign a certificate.
    #[error("signing the {what} certificate failed: {source}")]
    Sign {
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    /// The private key does not belong to the certificate.
    #[error("the private key does not match the public key of the {0} certificate")]
    KeyMismatch(&'static str),
    /// The certificate meant to sign is not a CA.
    #[error("the {0} certificate is not a CA (basicConstraints CA:TRUE is missing)")]
    NotCa(&'static str),
    /// The certificate meant to sign has a keyUsage without keyCertSign.
    #[error(
        "the {0} certificate's keyUsage lacks keyCertSign (certificate signing), so what it \
         signs would be rejected (openssl: \"key usage does not include certificate signing\"); \
         use a CA certificate whose keyUsage includes keyCertSign"
    )]
    NoKeyCertSign(&'static str),
    /// A cluster bundle to sign with has errors (those `verify` reports), so nothing signed
    /// with it would verify.
    #[error(
        "the CA bundle in {} does not verify, so nothing was signed with it: {}",
        dir.display(),
        problems.join("; ")
    )]
    InvalidBundle { dir: PathBuf, problems: Vec<String> },
    /// The issuer name written into a child does not equal its parent's subject byte for byte.
    #[error(
        "the issuer name of the new {0} certificate does not equal the subject name of its signer byte for byte \
         (the CA subject has a form this tool cannot reproduce, e.g. a multi-valued RDN or a repeated attribute)"
    )]
    IssuerMismatch(&'static str),
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing a set of files failed at `path`; every file is as it was before (files
    /// already replaced were restored, temporary files removed).
    #[error(
        "cannot write {}, so nothing was written (every file is as it was before): {source}",
        path.display()
    )]
    NotWritten {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing a set of files failed at `path` after others were replaced, and undoing that
    /// failed too: `new` now hold the new contents; `kept` are (file, where its previous
    /// contents are kept). The other files are as they were.
    #[error(
        "the write stopped part way and could not be fully undone: {} now hold(s) the new \
         contents{}; every other file is as it was before. Writing {} failed: {source}",
        list_paths(new),
        kept_list(kept),
        path.display()
    )]
    PartlyWritten {
        path: PathBuf,
        #[source]
        source: std::io::Error,
        new: Vec<PathBuf>,
        kept: Vec<(PathBuf, PathBuf)>,
    },
    /// Output files exist and overwriting was not allowed. Nothing was written.
    #[error("refusing to overwrite existing file(s): {}", list_paths(.0))]
    Exists(Vec<PathBuf>),
    /// Targets that cannot be written (a target that is a directory, an existing ancestor
    /// that is not one), found before anything was written.
    #[error("cannot write: {}", .0.join("; "))]
    Unwritable(Vec<String>),
}

fn list_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn kept_list(kept: &[(PathBuf, PathBuf)]) -> String {
    kept.iter()
        .map(|(file, backup)| {
            format!(
                " (the previous {} is kept in {}: mv it back to undo)",
                file.display(),
                backup.display()
            )
        })
        .collect()
}

/// Result alias for this crate.
pub type Result<T, E = PkiError> = std::result::Result<T, E>;
