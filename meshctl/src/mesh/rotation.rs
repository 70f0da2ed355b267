//! Trust changes applied to clusters: the `cacerts` Secret built from a bundle in memory
//! (renewal and root rotation never stage a CA key on disk just to apply it), and the
//! rotation state meshctl records on `cacerts` so that any machine can resume a rotation.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow, bail};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::istio::{CACERTS_SECRET, managed_labels};

/// The four files of a cluster bundle, by file name (`pki::CA_CERT` ...).
pub type BundleTexts = BTreeMap<&'static str, String>;

/// Verifies `texts` as a bundle (errors refuse it; warnings go to stderr) and returns the
/// `cacerts` Secret carrying them, with `annotations` (the rotation state, or none).
pub fn cacerts_secret(
    texts: &BundleTexts,
    namespace: &str,
    annotations: &BTreeMap<String, String>,
) -> Result<Value> {
    pki::validate_dns_label(namespace).map_err(|e| anyhow!("namespace {e}"))?;
    let get = |f: &str| texts.get(f).cloned().unwrap_or_default();
    let bundle = pki::Bundle {
        source: CACERTS_SECRET.into(),
        ca_cert: get(pki::CA_CERT),
        ca_key: get(pki::CA_KEY),
        root_cert: get(pki::ROOT_CERT),
        cert_chain: get(pki::CERT_CHAIN),
    };
    let report = pki::verify(&[bundle], &pki::VerifyOptions::default());
    for w in report.warnings() {
        eprintln!("{w}");
    }
    if !report.is_ok() {
        bail!("the new bundle is not valid, nothing was changed:\n{report}");
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let data: BTreeMap<&str, String> = texts.iter().map(|(k, v)| (*k, b64.encode(v))).collect();
    let mut metadata =
        json!({"name": CACERTS_SECRET, "namespace": namespace, "labels": managed_labels()});
    if !annotations.is_empty() {
        metadata["annotations"] = json!(annotations);
    }
    Ok(
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": metadata, "data": data}),
    )
}
