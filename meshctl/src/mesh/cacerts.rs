//! The `cacerts` Secret istiod reads its CA from: built from a verified bundle directory,
//! compared by root, and applied without silently replacing a different root.
//!
//! The Secret uses `data` (base64 of each file's exact bytes), the same as
//! `kubectl create secret generic cacerts --from-file=...` produces. The bundle is
//! verified first; a bundle with errors is refused so that istiod never sees it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::istio::{CACERTS_SECRET, DEFAULT_NAMESPACE, managed_labels};
use crate::kube::{self as kc, Cluster};

/// The hint printed whenever cacerts changed.
pub const RESTART_HINT: &str = "istiod reads cacerts only when it starts: restart it to use the new CA: \
     kubectl -n istio-system rollout restart deploy/istiod";

/// Verifies the bundle and returns its files, base64-encoded.
pub fn verified_data(dir: &Path, namespace: &str) -> Result<BTreeMap<&'static str, String>> {
    pki::validate_dns_label(namespace).map_err(|e| anyhow!("namespace {e}"))?;
    let report = pki::verify_bundles(&[dir], &pki::VerifyOptions::default());
    for w in report.warnings() {
        eprintln!("{w}");
    }
    if !report.is_ok() {
        eprint!("{report}");
        bail!(
            "{} is not a valid cluster bundle; fix it before installing it as cacerts",
            dir.display()
        );
    }
    let mut data = BTreeMap::new();
    for name in [pki::CA_CERT, pki::CA_KEY, pki::ROOT_CERT, pki::CERT_CHAIN] {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        data.insert(
            name,
            base64::engine::general_purpose::STANDARD.encode(&bytes),
        );
    }
    Ok(data)
}

/// The `cacerts` Secret for a verified bundle, labelled as managed by meshctl.
pub fn secret_object(dir: &Path, namespace: &str) -> Result<Value> {
    let data = verified_data(dir, namespace)?;
    Ok(
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": CACERTS_SECRET, "namespace": namespace, "labels": managed_labels()},
        "data": data}),
    )
}

/// The DER certificates of a PEM text (for comparing roots regardless of formatting).
pub fn pem_ders(text: &[u8]) -> Vec<Vec<u8>> {
    pem::parse_many(text)
        .map(|v| v.into_iter().map(|p| p.into_contents()).collect())
        .unwrap_or_default()
}

/// The decoded `root-cert.pem` of a cacerts Secret as JSON.
pub fn root_of(secret: &Value) -> Option<Vec<u8>> {
    let b64 = secret.get("data")?.get(pki::ROOT_CERT)?.as_str()?;
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// Applies `cacerts` unless an existing one has a different root (and not `force`).
/// Returns true when the Secret was created or changed.
pub async fn apply_secret(c: &Cluster, secret: &Value, force: bool, dry_run: bool) -> Result<bool> {
    let ns = secret["metadata"]["namespace"]
        .as_str()
        .unwrap_or(DEFAULT_NAMESPACE);
    let existing = if kc::get(c, "v1", "Namespace", None, ns).await?.is_some() {
        kc::get(c, "v1", "Secret", Some(ns), CACERTS_SECRET).await?
    } else {
        None
    };
    if let Some(old) = &existing {
        let old_root = root_of(old).map(|r| pem_ders(&r)).unwrap_or_default();
        let new_root = root_of(secret).map(|r| pem_ders(&r)).unwrap_or_default();
        if old_root != new_root && !force {
            bail!(
                "context {:?} already has a cacerts Secret in {ns} with a different root \
                 certificate; replacing it breaks trust with workloads signed by the old root. \
                 Pass --force to replace it anyway",
                c.context
            );
        }
        if old.get("data") == secret.get("data") {
            if !dry_run {
                kc::apply(c, secret).await?;
            }
            return Ok(false);
        }
    }
    if !dry_run {
        kc::ensure_namespace(c, ns).await?;
        kc::apply(c, secret).await?;
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Secret carries each file's exact bytes (what `kubectl create secret
    /// --from-file` stores), and its root compares by DER, not by PEM text.
    #[test]
    fn secret_data_is_each_files_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let root = pki::RootCa::generate(&pki::RootOptions::default()).unwrap();
        let ca = root
            .issue_intermediate(&pki::IntermediateOptions::new("west"))
            .unwrap();
        pki::write_files(&ca.files(dir.path()), false).unwrap();
        let s = secret_object(dir.path(), "istio-system").unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        for name in [pki::CA_CERT, pki::CA_KEY, pki::ROOT_CERT, pki::CERT_CHAIN] {
            let stored = b64.decode(s["data"][name].as_str().unwrap()).unwrap();
            assert_eq!(
                stored,
                std::fs::read(dir.path().join(name)).unwrap(),
                "{name}"
            );
        }
        let root_pem = std::fs::read(dir.path().join(pki::ROOT_CERT)).unwrap();
        let reformatted = String::from_utf8(root_pem.clone())
            .unwrap()
            .replace('\n', "\r\n");
        assert_eq!(root_of(&s).map(|r| pem_ders(&r)), Some(pem_ders(&root_pem)));
        assert_eq!(pem_ders(reformatted.as_bytes()), pem_ders(&root_pem));
        assert_eq!(pem_ders(&root_pem).len(), 1);
    }
}
