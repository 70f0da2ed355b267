//! Key types: generation and loading of private keys (PKCS#8, PKCS#1, SEC1).

use std::fmt;
use std::str::FromStr;

use rcgen::{KeyPair, RsaKeySize};
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer, PrivatePkcs8KeyDer, PrivateSec1KeyDer};

use crate::error::{PkiError, Result};

/// The key algorithms offered for new keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256 (default: small and fast, what istiod issues).
    #[default]
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384,
    /// RSA 2048 with PKCS#1 v1.5 SHA-256 signatures.
    Rsa2048,
    /// RSA 3072.
    Rsa3072,
    /// RSA 4096 (what Istio's tools/certs Makefiles use). Slow to generate.
    Rsa4096,
}

impl KeyType {
    /// All key types, in the order shown in help texts.
    pub const ALL: [KeyType; 5] = [
        KeyType::EcdsaP256,
        KeyType::EcdsaP384,
        KeyType::Rsa2048,
        KeyType::Rsa3072,
        KeyType::Rsa4096,
    ];

    /// The name used on the command line (`ec-p256`, `rsa-4096`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::EcdsaP256 => "ec-p256",
            KeyType::EcdsaP384 => "ec-p384",
            KeyType::Rsa2048 => "rsa-2048",
            KeyType::Rsa3072 => "rsa-3072",
            KeyType::Rsa4096 => "rsa-4096",
        }
    }

    /// True for the RSA variants.
    pub fn is_rsa(self) -> bool {
        matches!(self, KeyType::Rsa2048 | KeyType::Rsa3072 | KeyType::Rsa4096)
    }

    /// Generates a fresh key pair of this type.
    pub fn generate(self) -> Result<KeyPair> {
        let res = match self {
            KeyType::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeyType::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            KeyType::Rsa2048 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048)
            }
            KeyType::Rsa3072 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072)
            }
            KeyType::Rsa4096 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_4096)
            }
        };
        res.map_err(|source| PkiError::KeyGen {
            key_type: self,
            source,
        })
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyType {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self> {
        KeyType::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| PkiError::InvalidOption {
                field: "key type",
                reason: format!(
                    "{s:?} is not one of {}",
                    KeyType::ALL.map(KeyType::as_str).join(", ")
                ),
            })
    }
}

/// Loads a private key from PEM. Accepts `PRIVATE KEY` (PKCS#8), `RSA PRIVATE KEY` (PKCS#1)
/// and `EC PRIVATE KEY` (SEC1); other blocks such as `EC PARAMETERS` are skipped.
pub fn load_private_key_pem(pem_text: &str) -> Result<KeyPair> {
    // A block without its -----END line (a truncated file), or a byte order mark: said the
    // way certificate files say it (pem::parse_many would skip such a block as text).
    let labels = crate::pem::block_labels(pem_text)
        .map_err(|e| PkiError::InvalidKey(format!("not valid PEM: {e}")))?;
    if !labels.is_empty() && labels.iter().all(|l| l == "CERTIFICATE") {
        return Err(PkiError::InvalidKey(
            "holds certificates only, no private key: pass the key file (PRIVATE KEY, RSA \
             PRIVATE KEY or EC PRIVATE KEY)"
                .into(),
        ));
    }
    let blocks = pem::parse_many(pem_text)
        .map_err(|e| PkiError::InvalidKey(format!("not valid PEM: {}", pem_error(&e))))?;
    let mut seen = Vec::new();
    for block in &blocks {
        let der: PrivateKeyDer<'_> = match block.tag() {
            "PRIVATE KEY" => PrivatePkcs8KeyDer::from(block.contents()).into(),
            "RSA PRIVATE KEY" => PrivatePkcs1KeyDer::from(block.contents()).into(),
            "EC PRIVATE KEY" => PrivateSec1KeyDer::from(block.contents()).into(),
            "ENCRYPTED PRIVATE KEY" => {
                return Err(PkiError::InvalidKey(
                    "the key is encrypted; decrypt it first (openssl pkey -in KEY -out PLAIN)"
                        .into(),
                ));
            }
            other => {
                seen.push(other.to_string());
                continue;
            }
        };
        return KeyPair::try_from(&der).map_err(|e| {
            PkiError::InvalidKey(format!(
                "the {} block could not be parsed as an ECDSA P-256/P-384 or RSA key: {e}",
                block.tag()
            ))
        });
    }
    Err(PkiError::InvalidKey(if seen.is_empty() {
        "no PEM block found".into()
    } else {
        format!(
            "no private key block found (saw: {}); expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY",
            seen.join(", ")
        )
    }))
}

/// A PEM parser error without the text it may quote (a header line or a label of a key
/// file can be key material).
fn pem_error(e: &pem::PemError) -> String {
    match e {
        pem::PemError::InvalidHeader(_) => "a malformed line in a PEM block (not shown)".into(),
        pem::PemError::MismatchedTags(..) => {
            "a -----BEGIN line and its -----END line name different block types".into()
        }
        pem::PemError::InvalidData(_) => "a PEM block's base64 is not valid".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_type_round_trips_through_its_name() {
        for k in KeyType::ALL {
            assert_eq!(k.as_str().parse::<KeyType>().unwrap(), k);
        }
        assert_eq!(KeyType::default(), KeyType::EcdsaP256);
        let err = "dsa".parse::<KeyType>().unwrap_err().to_string();
        assert!(err.contains("ec-p256"), "{err}");
    }

    #[test]
    fn generated_keys_reload() {
        for k in [KeyType::EcdsaP256, KeyType::EcdsaP384, KeyType::Rsa2048] {
            let kp = k.generate().unwrap();
            let again = load_private_key_pem(&kp.serialize_pem()).unwrap();
            assert_eq!(kp.public_key_raw(), again.public_key_raw(), "{k}");
        }
    }

    #[test]
    fn garbage_and_encrypted_keys_are_rejected_clearly() {
        let err = load_private_key_pem("hello").unwrap_err().to_string();
        assert!(err.contains("no PEM block"), "{err}");
        let kp = KeyType::EcdsaP256.generate().unwrap().serialize_pem();
        let cut = &kp[..kp.find("-----END").unwrap()];
        let err = load_private_key_pem(cut).unwrap_err().to_string();
        assert!(err.contains("has no -----END line"), "{err}");
        let enc =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let err = load_private_key_pem(enc).unwrap_err().to_string();
        assert!(err.contains("encrypted"), "{err}");
        // A mangled key file: the error quotes none of it.
        for text in [
            "-----BEGIN PRIVATE KEY-----\nSECRETLINE\n\nAAAA\n-----END PRIVATE KEY-----\n",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END SECRETLINE-----\n",
            "-----BEGIN PRIVATE KEY-----\nSECRET*LINE\n-----END PRIVATE KEY-----\n",
        ] {
            let err = load_private_key_pem(text).unwrap_err().to_string();
            assert!(
                err.contains("not valid PEM") && !err.contains("SECRET"),
                "{err}"
            );
        }
    }
}
