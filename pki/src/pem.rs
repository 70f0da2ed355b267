//! PEM and DER helpers: the certificates of a PEM text, parsed X.509.

use x509_parser::certificate::X509Certificate;

/// All `CERTIFICATE` blocks of a PEM text, as DER. Errors say what was wrong.
pub(crate) fn cert_ders(text: &str) -> std::result::Result<Vec<Vec<u8>>, String> {
    let blocks = ::pem::parse_many(text).map_err(|e| format!("not valid PEM: {e}"))?;
    let mut ders = Vec::new();
    let mut other = Vec::new();
    for b in blocks {
        if b.tag() == "CERTIFICATE" {
            ders.push(b.into_contents());
        } else {
            other.push(b.tag().to_string());
        }
    }
    if ders.is_empty() {
        return Err(if other.is_empty() {
            "no PEM certificate found (expected -----BEGIN CERTIFICATE-----)".into()
        } else {
            format!("no CERTIFICATE block found (saw: {})", other.join(", "))
        });
    }
    for (i, der) in ders.iter().enumerate() {
        parse_x509(der).map_err(|e| format!("certificate #{}: {e}", i + 1))?;
    }
    Ok(ders)
}

pub(crate) fn first_cert_der(text: &str) -> std::result::Result<Vec<u8>, String> {
    Ok(cert_ders(text)?.swap_remove(0))
}

pub(crate) fn parse_x509(der: &[u8]) -> std::result::Result<X509Certificate<'_>, String> {
    match x509_parser::parse_x509_certificate(der) {
        Ok(([], cert)) => Ok(cert),
        Ok(_) => Err("trailing bytes after the DER certificate".into()),
        Err(e) => Err(format!("not a valid X.509 certificate: {e}")),
    }
}
