//! The gateway's key and its certificate signing request, made in memory: a P-256 key and a
//! CSR with an empty subject and one URI SAN, `spiffe://<td>/ns/<ns>/sa/<sa>`, as ztunnel's
//! `src/tls/csr.rs`. istiod ignores the CSR's SAN and signs for the token's service account
//! (`security/pkg/server/ca/server.go` `CreateCertificate`); the SAN is set from the same token
//! so the request says what it asks for.
//!
//! The private key stays in this process: it is never written, logged or formatted.

use base64::Engine;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// A fresh key and the CSR for it.
pub struct KeyAndCsr {
    pub key: PrivateKeyDer<'static>,
    pub csr_pem: String,
}

impl std::fmt::Debug for KeyAndCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAndCsr")
            .field("csr_pem", &self.csr_pem)
            .finish_non_exhaustive()
    }
}

pub fn generate(spiffe_id: &str) -> Result<KeyAndCsr, String> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| format!("generating a P-256 key: {e}"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let uri = spiffe_id
        .to_string()
        .try_into()
        .map_err(|e| format!("{spiffe_id:?} is not a URI: {e}"))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| format!("building the CSR: {e}"))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    Ok(KeyAndCsr { key, csr_pem })
}

/// The namespace and service account a Kubernetes service-account token names, from its
/// claims (read, not verified: the CA verifies it through TokenReview). Bound tokens carry
/// `kubernetes.io: {namespace, serviceaccount: {name}}`; legacy ones
/// `kubernetes.io/serviceaccount/{namespace,service-account.name}`.
pub fn token_service_account(token: &str) -> Option<(String, String)> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let s = |p: &str| {
        claims
            .pointer(p)
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    let bound = s("/kubernetes.io/namespace").zip(s("/kubernetes.io/serviceaccount/name"));
    bound.or_else(|| {
        s("/kubernetes.io~1serviceaccount~1namespace")
            .zip(s("/kubernetes.io~1serviceaccount~1service-account.name"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csr_has_the_uri_san_and_an_empty_subject() {
        let k = generate("spiffe://cluster.local/ns/istio-system/sa/gw").unwrap();
        use rustls::pki_types::pem::PemObject;
        let der =
            rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(k.csr_pem.as_bytes())
                .unwrap();
        use x509_parser::prelude::FromDer;
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
                .unwrap();
        assert_eq!(csr.certification_request_info.subject.iter().count(), 0);
        let sans: Vec<String> = csr
            .requested_extensions()
            .into_iter()
            .flatten()
            .filter_map(|e| match e {
                x509_parser::extensions::ParsedExtension::SubjectAlternativeName(s) => Some(s),
                _ => None,
            })
            .flat_map(|s| s.general_names.iter().map(|n| n.to_string()))
            .collect();
        assert_eq!(sans, ["URI(spiffe://cluster.local/ns/istio-system/sa/gw)"]);
        assert!(
            !format!("{k:?}").contains("PRIVATE"),
            "the key is never formatted"
        );
    }

    #[test]
    fn service_account_from_bound_and_legacy_claims() {
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let bound = format!(
            "h.{}.s",
            b64(
                serde_json::json!({"kubernetes.io": {"namespace": "ns1", "serviceaccount": {"name": "sa1"}}})
            )
        );
        assert_eq!(
            token_service_account(&bound),
            Some(("ns1".into(), "sa1".into()))
        );
        let legacy = format!(
            "h.{}.s",
            b64(
                serde_json::json!({"kubernetes.io/serviceaccount/namespace": "ns2", "kubernetes.io/serviceaccount/service-account.name": "sa2"})
            )
        );
        assert_eq!(
            token_service_account(&legacy),
            Some(("ns2".into(), "sa2".into()))
        );
        assert_eq!(token_service_account("not a jwt"), None);
    }
}
