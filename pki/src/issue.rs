//! Issuing certificates: root CA, per-cluster intermediate CA, workload certificates.
//!
//! Every child certificate is signed through an [`rcgen::Issuer`] loaded from the parent's
//! own DER, never from retyped name fields, and the issuer name of each child is checked to
//! equal the parent's subject byte for byte (Go's crypto/x509, hence istiod, compares raw bytes).
//!
//! - `options`: defaults and the options of each kind of certificate.
//! - `root`, `intermediate`, `workload`: one file per kind of certificate issued.
//! - `signer`: the checks on a signing CA and its key, and the signing itself.
//! - `subject`, `validity`, `chain_pem`: names and SANs, validity windows, PEM output.

mod chain_pem;
mod intermediate;
mod options;
mod root;
mod signer;
mod subject;
mod validity;
mod workload;

pub use chain_pem::der_to_pem;
pub use intermediate::IntermediateCa;
pub use options::{
    DEFAULT_INTERMEDIATE_DAYS, DEFAULT_ORG, DEFAULT_ROOT_CN, DEFAULT_ROOT_DAYS,
    IntermediateOptions, RootOptions, WorkloadOptions,
};
pub use root::RootCa;
pub use validity::{Clamp, MAX_NOT_AFTER_UNIX};
pub use workload::WorkloadCert;
