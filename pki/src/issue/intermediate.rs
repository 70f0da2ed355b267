//! Intermediate CAs: signing one below a root or another intermediate, and loading a
//! cluster's `cacerts` files.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

use super::chain_pem::{anchor_pem, der_to_pem, normalize_pem};
use super::signer::{check_ca_and_key, sign_child};
use super::subject::{ca_dn, dns_san};
use super::validity::{days, parent_of, validity};
use super::{Clamp, IntermediateOptions};
use crate::error::{PkiError, Result};
use crate::pem::{cert_ders, first_cert_der, parse_x509};
use crate::validate_dns_label;

/// Signs a CA certificate for `opts` with the parent's key: subject O, CN, L=cluster.
pub(super) fn issue_ca(
    opts: &IntermediateOptions,
    parent_der: &[u8],
    parent_key: &KeyPair,
) -> Result<(Vec<u8>, KeyPair, Option<Clamp>)> {
    if !opts.renewal {
        validate_dns_label(&opts.cluster).map_err(|reason| PkiError::InvalidOption {
            field: "cluster name",
            reason,
        })?;
    }
    let parent = parse_x509(parent_der).map_err(PkiError::InvalidCert)?;
    if let Ok(Some(bc)) = parent.basic_constraints()
        && let Some(n) = bc.value.path_len_constraint
        && n <= u32::from(opts.path_len)
    {
        return Err(PkiError::InvalidOption {
            field: "parent",
            reason: format!(
                "\"{}\" has pathlen {n}, so it cannot sign a CA with pathlen {} \
                 (issue the parent with a larger pathlen)",
                parent.subject(),
                opts.path_len
            ),
        });
    }
    let (not_before, not_after, clamped) = validity(
        opts.not_before,
        opts.not_after,
        days(opts.days)?,
        Some(parent_of(parent_der)?),
    )?;
    let mut params = CertificateParams::default();
    params.distinguished_name = ca_dn(&[
        (DnType::OrganizationName, &opts.org),
        (DnType::CommonName, &opts.common_name),
        (DnType::LocalityName, &opts.cluster),
    ])?;
    let key = opts.key_type.generate()?;
    params.subject_alt_names = opts
        .san_dns
        .iter()
        .map(|d| dns_san(d))
        .collect::<Result<_>>()?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(opts.path_len));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before;
    params.not_after = not_after;
    let cert_der = sign_child(params, &key, parent_der, parent_key, "intermediate")?;
    Ok((cert_der, key, clamped))
}

/// A per-cluster intermediate CA with its root: the contents of Istio's `cacerts` Secret.
#[derive(Debug)]
pub struct IntermediateCa {
    pub(super) cert_pem: String,
    pub(super) key_pem: String,
    /// The intermediate CAs between this one and the root (PEM, lowest first), e.g. an
    /// offline intermediate; empty when the root signed this CA.
    pub(super) parents_pem: String,
    pub(super) root_pem: String,
    /// The one root that ends `cert-chain.pem` (the one this CA chains to), PEM.
    pub(super) anchor_pem: String,
    pub(super) cert_der: Vec<u8>,
    pub(super) key: KeyPair,
    /// Whether the requested notAfter was cut to the signer's.
    pub(super) clamped: Option<Clamp>,
}

impl IntermediateCa {
    /// Builds an intermediate from its certificate, key and root (all PEM). Checks that the
    /// certificate is a CA, that the key belongs to it, and that the root PEM holds a certificate.
    ///
    /// `root_cert` may hold several roots (during a root rotation): `cert-chain.pem` ends
    /// with the one that signed this CA (or the top of its parents, see
    /// [`IntermediateCa::with_parents`]).
    pub fn from_pems(ca_cert: &str, ca_key: &str, root_cert: &str) -> Result<IntermediateCa> {
        let cert_der = first_cert_der(ca_cert)
            .map_err(|e| PkiError::InvalidCert(format!("the CA certificate: {e}")))?;
        first_cert_der(root_cert)
            .map_err(|e| PkiError::InvalidCert(format!("the root certificate: {e}")))?;
        let key = crate::keys::load_private_key_pem(ca_key)?;
        check_ca_and_key(&cert_der, &key, "intermediate")?;
        let mut ca = IntermediateCa {
            cert_pem: normalize_pem(ca_cert),
            key_pem: ca_key.to_string(),
            parents_pem: String::new(),
            root_pem: normalize_pem(root_cert),
            anchor_pem: String::new(),
            cert_der,
            key,
            clamped: None,
        };
        ca.anchor_pem = ca.find_anchor(&ca.cert_der.clone());
        Ok(ca)
    }

    /// The root of `root_pem` that signs `top`, as PEM; the whole root file when none does
    /// (a bundle that does not verify: `certs verify` says why).
    fn find_anchor(&self, top: &[u8]) -> String {
        let roots = cert_ders(&self.root_pem).unwrap_or_default();
        match crate::verify::anchor_of(top, &roots) {
            Some(i) => anchor_pem(&self.root_pem, &roots[i]),
            None => self.root_pem.clone(),
        }
    }

    /// Like [`IntermediateCa::from_pems`], with the CAs between this one and the root
    /// (`cert-chain.pem` minus its first and last certificate).
    pub fn with_parents(mut self, parents: &[Vec<u8>]) -> IntermediateCa {
        self.parents_pem = parents.iter().map(|d| der_to_pem(d)).collect();
        let top = parents
            .last()
            .cloned()
            .unwrap_or_else(|| self.cert_der.clone());
        self.anchor_pem = self.find_anchor(&top);
        self
    }

    /// When this CA was issued with a requested notAfter later than its signer's: the
    /// signer's notAfter was used instead (see [`Clamp`]).
    pub fn clamped(&self) -> Option<&Clamp> {
        self.clamped.as_ref()
    }

    /// Issues a CA below this one (this one needs pathlen ≥ 1): its `cert-chain.pem` is the
    /// new CA, this CA and its parents, then the root.
    pub fn issue_intermediate(&self, opts: &IntermediateOptions) -> Result<IntermediateCa> {
        let (cert_der, key, clamped) = issue_ca(opts, &self.cert_der, &self.key)?;
        Ok(IntermediateCa {
            cert_pem: der_to_pem(&cert_der),
            key_pem: key.serialize_pem(),
            parents_pem: format!("{}{}", self.cert_pem, self.parents_pem),
            root_pem: self.root_pem.clone(),
            anchor_pem: self.anchor_pem.clone(),
            cert_der,
            key,
            clamped,
        })
    }

    /// `ca-cert.pem`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// `ca-key.pem`.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// `root-cert.pem`.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    /// `cert-chain.pem`: the intermediate, any CAs above it, then the root they chain to
    /// (`cat ca-cert.pem root-cert.pem` for one level and one root).
    pub fn cert_chain_pem(&self) -> String {
        format!("{}{}{}", self.cert_pem, self.parents_pem, self.anchor_pem)
    }

    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }
}
