//! The PEM text of what is issued: one certificate's PEM, text that stays valid PEM when
//! concatenated, and the root that ends `cert-chain.pem`.

use crate::pem::cert_ders;

/// PEM of one DER certificate, LF line endings.
pub fn der_to_pem(der: &[u8]) -> String {
    crate::pem::encode("CERTIFICATE", der.to_vec())
}

/// Ensures the PEM text ends with exactly one newline, so that concatenations stay valid PEM.
pub(super) fn normalize_pem(text: &str) -> String {
    format!("{}\n", text.trim_end())
}

/// The root to end a `cert-chain.pem` with: the root file itself when it holds that root
/// alone (byte for byte as before), else that root alone.
pub(super) fn anchor_pem(root_file: &str, root_der: &[u8]) -> String {
    match cert_ders(root_file) {
        Ok(ders) if ders.len() == 1 && ders[0] == root_der => normalize_pem(root_file),
        _ => der_to_pem(root_der),
    }
}
