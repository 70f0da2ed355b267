//! Trust changes applied to clusters: the `cacerts` Secret built from a bundle in memory
//! (renewal and root rotation never stage a CA key on disk just to apply it), and the
//! rotation state meshctl records on `cacerts` so that any machine can resume a rotation.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow, bail};
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
    // Canonical PEM only, as `cacerts apply` publishes (comments stay in the local files).
    let data = crate::mesh::cacerts::published_data(
        std::path::Path::new(CACERTS_SECRET),
        texts.iter().map(|(k, v)| (*k, v.as_str())),
    )?;
    let mut metadata =
        json!({"name": CACERTS_SECRET, "namespace": namespace, "labels": managed_labels()});
    if !annotations.is_empty() {
        metadata["annotations"] = json!(annotations);
    }
    Ok(
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": metadata, "data": data}),
    )
}

/// How far a cluster is in a root rotation, read from its `cacerts` (contents and
/// annotations together, so a hand-edited Secret is not mistaken for a stage).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// No rotation recorded (or a finished one): one root, and the CA chains to it.
    Stable,
    /// Trusts old + new, still signs with the old root.
    Prepared,
    /// Trusts old + new, signs with the new root since `activated_at` (RFC 3339).
    Activated { activated_at: String },
    /// Trusts the new root only (after `finish`).
    Finished,
    /// The annotations and the contents disagree; why.
    Inconsistent(String),
}

impl Stage {
    pub fn name(&self) -> &'static str {
        match self {
            Stage::Stable => "none",
            Stage::Prepared => "prepared",
            Stage::Activated { .. } => "activated",
            Stage::Finished => "finished",
            Stage::Inconsistent(_) => "inconsistent",
        }
    }
}

/// What a cluster's `cacerts` says about trust: its roots, the root its CA signs under,
/// the rotation recorded on it, and the stage that follows.
#[derive(Debug, Clone)]
pub struct Trust {
    /// The roots of root-cert.pem (DER), in file order.
    pub roots: Vec<Vec<u8>>,
    /// The root ca-cert.pem chains to, when the bundle is well-formed.
    pub signing: Option<Vec<u8>>,
    /// Fingerprints recorded by a rotation (`old`, `new`), when one was.
    pub old_fp: Option<String>,
    pub new_fp: Option<String>,
    pub stage: Stage,
}

/// Lowercase hex SHA-256 of a DER certificate (what the rotation annotations hold).
pub fn fingerprint(der: &[u8]) -> String {
    pki::inspect_pem(&pki::der_to_pem(der))
        .ok()
        .and_then(|s| s.into_iter().next())
        .map(|s| s.sha256_fingerprint.replace(':', "").to_lowercase())
        .unwrap_or_default()
}

/// Reads the trust state from a `cacerts` Secret's files and annotations.
pub fn trust_of(files: &BundleTexts, annotations: &BTreeMap<String, String>) -> Trust {
    let get = |f: &str| files.get(f).map(String::as_str).unwrap_or_default();
    let roots = crate::mesh::cacerts::pem_ders(get(pki::ROOT_CERT).as_bytes());
    let signing = pki::signing_root(get(pki::CA_CERT), get(pki::CERT_CHAIN), get(pki::ROOT_CERT));
    let ann = |k: &str| annotations.get(k).cloned();
    use crate::istio::{
        ROTATION_ACTIVATED_AT_ANNOTATION as AT, ROTATION_NEW_ROOT_ANNOTATION as NEW,
        ROTATION_OLD_ROOT_ANNOTATION as OLD, ROTATION_STAGE_ANNOTATION as STAGE,
    };
    let (old_fp, new_fp) = (ann(OLD), ann(NEW));
    let fps: Vec<String> = roots.iter().map(|r| fingerprint(r)).collect();
    let signing_fp = signing.as_deref().map(fingerprint);
    let both = |o: &String, n: &String| fps.len() == 2 && fps[0] == *o && fps[1] == *n;
    let stage = match (ann(STAGE).as_deref(), &old_fp, &new_fp) {
        (None, _, _) if roots.len() == 1 => Stage::Stable,
        (None, _, _) => Stage::Inconsistent(format!(
            "root-cert.pem holds {} roots but no rotation is recorded",
            roots.len()
        )),
        (Some("prepared"), Some(o), Some(n)) if both(o, n) && signing_fp.as_ref() == Some(o) => {
            Stage::Prepared
        }
        (Some("activated"), Some(o), Some(n)) if both(o, n) && signing_fp.as_ref() == Some(n) => {
            Stage::Activated {
                activated_at: ann(AT).unwrap_or_default(),
            }
        }
        (Some("finished"), _, Some(n)) if fps == [n.clone()] && signing_fp.as_ref() == Some(n) => {
            Stage::Finished
        }
        (Some(s), _, _) => Stage::Inconsistent(format!(
            "recorded stage {s:?} does not match the Secret: root-cert.pem holds {} root(s), \
             the CA signs under {}",
            roots.len(),
            signing_fp.map_or("no root of root-cert.pem".to_string(), |f| format!(
                "root {}",
                short(&f)
            ))
        )),
    };
    Trust {
        roots,
        signing,
        old_fp,
        new_fp,
        stage,
    }
}

/// The first 16 hex digits of a fingerprint, for messages.
pub fn short(fp: &str) -> &str {
    &fp[..fp.len().min(16)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::istio::{
        ROTATION_NEW_ROOT_ANNOTATION, ROTATION_OLD_ROOT_ANNOTATION, ROTATION_STAGE_ANNOTATION,
    };

    fn bundle(signer: &pki::RootCa, roots: &str) -> BundleTexts {
        let ca = signer
            .issue_intermediate(&pki::IntermediateOptions::new("west"))
            .unwrap();
        BundleTexts::from([
            (pki::CA_CERT, ca.cert_pem().to_string()),
            (pki::CA_KEY, ca.key_pem().to_string()),
            (pki::CERT_CHAIN, ca.cert_chain_pem()),
            (pki::ROOT_CERT, roots.to_string()),
        ])
    }

    fn ann(stage: &str, old: &pki::RootCa, new: &pki::RootCa) -> BTreeMap<String, String> {
        BTreeMap::from([
            (ROTATION_STAGE_ANNOTATION.to_string(), stage.to_string()),
            (
                ROTATION_OLD_ROOT_ANNOTATION.to_string(),
                fingerprint(old.cert_der()),
            ),
            (
                ROTATION_NEW_ROOT_ANNOTATION.to_string(),
                fingerprint(new.cert_der()),
            ),
        ])
    }

    /// The stage comes from the annotations *and* the contents: a Secret edited by hand
    /// after a step is inconsistent, not silently taken for the recorded stage.
    #[test]
    fn stages_follow_contents_and_annotations() {
        let old = pki::RootCa::generate(&pki::RootOptions::default()).unwrap();
        let new = pki::RootCa::generate(&pki::RootOptions::default()).unwrap();
        let both = format!("{}{}", old.cert_pem(), new.cert_pem());
        let none = BTreeMap::new();
        assert_eq!(
            trust_of(&bundle(&old, old.cert_pem()), &none).stage,
            Stage::Stable
        );
        let t = trust_of(&bundle(&old, &both), &ann("prepared", &old, &new));
        assert_eq!(t.stage, Stage::Prepared);
        assert_eq!(t.signing.as_deref(), Some(old.cert_der()));
        let t = trust_of(&bundle(&new, &both), &ann("activated", &old, &new));
        assert!(matches!(t.stage, Stage::Activated { .. }), "{:?}", t.stage);
        assert_eq!(
            trust_of(&bundle(&new, new.cert_pem()), &ann("finished", &old, &new)).stage,
            Stage::Finished
        );
        // Recorded "activated" but the CA still signs under the old root; two roots unrecorded.
        assert!(matches!(
            trust_of(&bundle(&old, &both), &ann("activated", &old, &new)).stage,
            Stage::Inconsistent(_)
        ));
        assert!(matches!(
            trust_of(&bundle(&old, &both), &none).stage,
            Stage::Inconsistent(_)
        ));
        assert!(matches!(
            trust_of(&bundle(&old, old.cert_pem()), &ann("prepared", &old, &new)).stage,
            Stage::Inconsistent(_)
        ));
    }
}
