//! `meshctl cacerts DIR [-n NS]`: prints the `cacerts` Secret that istiod reads.
//!
//! The Secret uses `data` (base64 of each file's exact bytes), the same as
//! `kubectl create secret generic cacerts --from-file=...` produces. The bundle is
//! verified first; a bundle with errors is refused so that istiod never sees it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;

#[derive(Debug, Args)]
pub struct CacertsArgs {
    /// Cluster bundle directory (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem).
    dir: PathBuf,
    /// Namespace of the Secret (istiod's namespace).
    #[arg(long, short = 'n', default_value = "istio-system")]
    namespace: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Secret {
    api_version: &'static str,
    kind: &'static str,
    metadata: Metadata,
    #[serde(rename = "type")]
    type_: &'static str,
    data: BTreeMap<&'static str, String>,
}

#[derive(Serialize)]
struct Metadata {
    name: &'static str,
    namespace: String,
}

pub fn run(a: CacertsArgs) -> Result<ExitCode> {
    pki::validate_dns_label(&a.namespace).map_err(|e| anyhow::anyhow!("namespace {e}"))?;
    let report = pki::verify_bundles(&[&a.dir], &pki::VerifyOptions::default());
    for w in report.warnings() {
        eprintln!("{w}");
    }
    if !report.is_ok() {
        eprint!("{report}");
        bail!(
            "{} is not a valid cluster bundle; fix it before installing it as cacerts",
            a.dir.display()
        );
    }
    let mut data = BTreeMap::new();
    for name in [pki::CA_CERT, pki::CA_KEY, pki::ROOT_CERT, pki::CERT_CHAIN] {
        let path = a.dir.join(name);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        data.insert(name, base64(&bytes));
    }
    let secret = Secret {
        api_version: "v1",
        kind: "Secret",
        metadata: Metadata {
            name: "cacerts",
            namespace: a.namespace,
        },
        type_: "Opaque",
        data,
    };
    print!("{}", serde_yaml::to_string(&secret)?);
    Ok(ExitCode::SUCCESS)
}

/// Standard base64 with padding (RFC 4648 §4).
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from_be_bytes([0, b[0], b[1], b[2]]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::base64;

    #[test]
    fn base64_rfc4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }
}
