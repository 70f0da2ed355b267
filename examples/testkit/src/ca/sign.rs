//! Signing as istiod's CA does with plugged-in certificates: the CSR's key, a leaf whose SAN
//! comes from the reviewed token, signed by the intermediate; and the server's own TLS.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, ExtendedKeyUsagePurpose,
    IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, PrivateKeyDer};

/// The request and response of `CreateCertificate` (istio `security/proto/.../ca.proto`
/// field numbers), written independently of the gateway's copy.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    #[prost(string, tag = "1")]
    pub csr: String,
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<prost_types::Struct>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

pub(crate) struct Signer {
    issuer_cert_pem: String,
    issuer_key_pem: String,
    /// The intermediate and any CAs above it, then the root: one PEM each.
    chain_tail: Vec<String>,
    trust_domain: String,
}

impl Signer {
    pub fn new(issuer: &pki::IntermediateCa, trust_domain: String) -> Result<Signer, String> {
        let chain_tail = CertificateDer::pem_slice_iter(issuer.cert_chain_pem().as_bytes())
            .map(|c| c.map(|c| der_to_pem(&c)).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Signer {
            issuer_cert_pem: issuer.cert_pem().to_string(),
            issuer_key_pem: issuer.key_pem().to_string(),
            chain_tail,
            trust_domain,
        })
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, String> {
        let key = KeyPair::from_pem(&self.issuer_key_pem).map_err(|e| e.to_string())?;
        Issuer::from_ca_cert_pem(&self.issuer_cert_pem, key).map_err(|e| e.to_string())
    }

    /// istiod's serving certificate: DNS `istiod.istio-system.svc` and IP 127.0.0.1 (tests
    /// dial the loopback), chained to the intermediate; ALPN h2 as gRPC needs.
    pub fn server_tls(&self) -> Result<Arc<ServerConfig>, String> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
        let mut params = CertificateParams::new(vec![super::ISTIOD_HOST.to_string()])
            .map_err(|e| e.to_string())?;
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + time::Duration::days(1);
        let cert = params
            .signed_by(&key, &self.issuer()?)
            .map_err(|e| e.to_string())?;
        let mut chain = vec![cert.der().clone()];
        // the intermediate and its parents, not the root
        for pem in &self.chain_tail[..self.chain_tail.len().saturating_sub(1)] {
            chain.push(CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| e.to_string())?);
        }
        let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
            .map_err(|e| e.to_string())?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut cfg = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| e.to_string())?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// Signs the CSR's key for `spiffe://<td>/ns/<ns>/sa/<sa>` (the CSR's own SAN and subject
    /// are ignored); returns leaf, intermediate(s), root. A CSR that does not parse or whose
    /// signature is wrong is refused, as istiod's `ParsePemEncodedCSR` + `CheckSignature`.
    pub fn sign(
        &self,
        csr_pem: &str,
        ns: &str,
        sa: &str,
        lifetime: Duration,
    ) -> Result<(Vec<String>, String), String> {
        let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .map_err(|e| format!("CSR is not PEM: {e}"))?;
        let csr = CertificateSigningRequestParams::from_der(&der)
            .map_err(|e| format!("CSR does not parse or verify: {e}"))?;
        let spiffe_id = format!("spiffe://{}/ns/{ns}/sa/{sa}", self.trust_domain);
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            spiffe_id.clone().try_into().map_err(|e| format!("{e}"))?,
        )];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        // istiod backdates notBefore by its clock-skew grace (`genCertTemplateFromCSR`:
        // ClockSkewGracePeriod, 2 minutes); the lifetime counts from now.
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(2);
        params.not_after = now + lifetime;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer()?)
            .map_err(|e| e.to_string())?;
        let mut chain = vec![cert.pem()];
        chain.extend(self.chain_tail.iter().cloned());
        Ok((chain, spiffe_id))
    }
}

fn der_to_pem(der: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}
