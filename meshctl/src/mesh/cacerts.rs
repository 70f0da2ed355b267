//! The `cacerts` Secret istiod reads its CA from: built from a verified bundle directory,
//! compared by root, and applied without silently replacing a different root.
//!
//! The Secret uses `data`, like `kubectl create secret generic cacerts --from-file=...`,
//! but holds each file's canonical PEM rather than its exact bytes ([`published_data`]):
//! istiod keeps `root-cert.pem` byte for byte (istio/istio
//! `security/pkg/pki/util/keycertbundle.go`) and copies it into the `istio-ca-root-cert`
//! ConfigMap of every namespace, so comments or openssl's `Bag Attributes` in a local file
//! would be published cluster-wide. The local files are left as they are. The bundle is
//! verified first; a bundle with errors is refused so that istiod never sees it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, anyhow, bail};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::istio::{CACERTS_SECRET, DEFAULT_NAMESPACE, managed_labels};
use crate::kube::{self as kc, Cluster, Conditional};

/// The hint printed whenever cacerts changed: when istiod takes it by itself and the restart
/// of istiod in namespace `ns` otherwise (README, "What Istio does with a changed cacerts").
pub fn restart_hint(ns: &str) -> String {
    format!(
        "istiod 1.18+ loads a new intermediate under the same root by itself; a new root (unless \
         ISTIO_MULTIROOT_MESH=true) and an older istiod need a restart: kubectl -n {ns} rollout \
         restart deploy/istiod"
    )
}

/// Reads the bundle directory once, verifies what was read and returns those same bytes,
/// base64-encoded: the Secret holds exactly the files that were verified, even if one
/// changes on disk meanwhile.
pub fn verified_data(dir: &Path, namespace: &str) -> Result<BTreeMap<&'static str, String>> {
    pki::validate_dns_label(namespace).map_err(|e| anyhow!("namespace {e}"))?;
    match pki::Bundle::load_dir(dir) {
        Ok(bundle) => bundle_data(&bundle),
        Err(findings) => refuse(
            dir,
            &pki::Report {
                bundles: vec![dir.to_path_buf()],
                findings,
            },
        ),
    }
}

/// Verifies an in-memory bundle; returns its four files, base64-encoded.
fn bundle_data(bundle: &pki::Bundle) -> Result<BTreeMap<&'static str, String>> {
    let report = pki::verify(std::slice::from_ref(bundle), &pki::VerifyOptions::default());
    for w in report.warnings() {
        eprintln!("{w}");
    }
    if !report.is_ok() {
        return refuse(&bundle.source, &report);
    }
    published_data(
        &bundle.source,
        [
            (pki::CA_CERT, bundle.ca_cert.as_str()),
            (pki::CA_KEY, bundle.ca_key.as_str()),
            (pki::ROOT_CERT, bundle.root_cert.as_str()),
            (pki::CERT_CHAIN, bundle.cert_chain.as_str()),
        ],
    )
}

/// The `data` of a `cacerts` Secret for verified bundle files (name, text): each file's
/// canonical PEM, base64-encoded. Certificate files keep their `CERTIFICATE` blocks, the key
/// file its key block (`pki::canonical_cert_pem`, `pki::canonical_key_pem`). When a file held
/// anything else, one line on stderr names it (`source/<name>`), never the text.
pub fn published_data<'a>(
    source: &Path,
    files: impl IntoIterator<Item = (&'static str, &'a str)>,
) -> Result<BTreeMap<&'static str, String>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut data = BTreeMap::new();
    for (name, text) in files {
        let path = source.join(name);
        let key = name == pki::CA_KEY;
        let canonical = if key {
            pki::canonical_key_pem(text)
        } else {
            pki::canonical_cert_pem(text)
        }
        .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        if canonical.dropped {
            let what = if key {
                "anything besides its private key block (comments, attributes, other blocks)"
            } else {
                "text outside its certificate blocks (comments, Bag Attributes, subject lines)"
            };
            eprintln!(
                "note: {}: {what} is not published: cacerts holds canonical PEM only (the \
                 file itself is unchanged)",
                path.display()
            );
        }
        data.insert(name, b64.encode(canonical.pem));
    }
    Ok(data)
}

/// Prints the report's findings and refuses the bundle.
fn refuse<T>(dir: &Path, report: &pki::Report) -> Result<T> {
    eprint!("{report}");
    bail!(
        "{} is not a valid cluster bundle; fix it before installing it as cacerts",
        dir.display()
    )
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

/// The DER certificates of a PEM text (for comparing roots regardless of formatting): its
/// `CERTIFICATE` blocks only (a stray key block is no root; `pki::check_cert_pem` refuses
/// such a file wherever one is installed), none if the text is not PEM.
pub fn pem_ders(text: &[u8]) -> Vec<Vec<u8>> {
    pem::parse_many(text)
        .map(|v| {
            v.into_iter()
                .filter(|p| p.tag() == "CERTIFICATE")
                .map(|p| p.into_contents())
                .collect()
        })
        .unwrap_or_default()
}

/// The decoded `root-cert.pem` of a cacerts Secret as JSON.
pub fn root_of(secret: &Value) -> Option<Vec<u8>> {
    let b64 = secret.get("data")?.get(pki::ROOT_CERT)?.as_str()?;
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// How many times [`apply_secret`] reads, compares and writes before it gives up: each
/// retry follows a 409, i.e. another writer changed `cacerts` between the read and the write.
const APPLY_ATTEMPTS: usize = 5;

/// Applies `cacerts` unless an existing one has a different root (and not `force`).
/// Returns true when the Secret was created or changed.
///
/// The write is conditional on what was compared, so two runs that overlap cannot both pass
/// the root check and the later one silently replace the other's root: an existing Secret is
/// applied with the `metadata.resourceVersion` that was read (the API server stores a patch
/// through a conditional update and answers 409 Conflict when the object changed since,
/// k8s.io/apiserver `pkg/registry/generic/registry/store.go` `Update`), and a missing one is
/// created with POST, which answers 409 AlreadyExists when another run created it first
/// ([`kc::apply_at`], [`kc::create_then_apply`]). When either finds the Secret no longer as
/// read (changed, created, or deleted since), it is read and its root compared again (up to
/// [`APPLY_ATTEMPTS`] times). With `force` the Secret is applied unconditionally, as the flag
/// asks.
pub async fn apply_secret(c: &Cluster, secret: &Value, force: bool, dry_run: bool) -> Result<bool> {
    let ns = secret["metadata"]["namespace"]
        .as_str()
        .unwrap_or(DEFAULT_NAMESPACE);
    for _ in 0..APPLY_ATTEMPTS {
        let existing = if kc::get(c, "v1", "Namespace", None, ns).await?.is_some() {
            kc::get(c, "v1", "Secret", Some(ns), CACERTS_SECRET).await?
        } else {
            None
        };
        let changed = match &existing {
            Some(old) => {
                check_root(c, ns, old, secret, force)?;
                old.get("data") != secret.get("data")
            }
            None => true,
        };
        if dry_run {
            return Ok(changed);
        }
        let written = match &existing {
            _ if force => {
                kc::ensure_namespace(c, ns).await?;
                kc::apply(c, secret).await?;
                Conditional::Written
            }
            Some(old) => {
                let rv = old["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default();
                kc::apply_at(c, secret, rv).await?
            }
            None => {
                kc::ensure_namespace(c, ns).await?;
                kc::create_then_apply(c, secret).await?
            }
        };
        if written == Conditional::Written {
            return Ok(changed);
        }
    }
    bail!(
        "{CACERTS_SECRET} in context {:?} (namespace {ns}) was changed by another writer each of \
         the {APPLY_ATTEMPTS} times meshctl read it and tried to write it: stop the other \
         writer (another meshctl run, a GitOps controller) and re-run",
        c.context
    )
}

/// Refuses to replace a `cacerts` whose root differs from the new one, unless `force`.
fn check_root(c: &Cluster, ns: &str, old: &Value, new: &Value, force: bool) -> Result<()> {
    let old_root = root_of(old).map(|r| pem_ders(&r)).unwrap_or_default();
    let new_root = root_of(new).map(|r| pem_ders(&r)).unwrap_or_default();
    if old_root != new_root && !force {
        return Err(RootRefused(root_refusal(&c.context, ns, old, &new_root)).into());
    }
    Ok(())
}

/// A `cacerts` not replaced because its root differs: a refusal, not a failure to retry.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RootRefused(String);

/// Why a `cacerts` with another root is not replaced, and what to do instead. A Secret a
/// `meshctl rotate` moved records the retired and the new root: bundles of the retired one
/// are the user's old `--certs` directory, not a choice to `--force`.
fn root_refusal(context: &str, ns: &str, old: &Value, new_root: &[Vec<u8>]) -> String {
    use crate::istio::{
        ROTATION_NEW_ROOT_ANNOTATION as NEW, ROTATION_OLD_ROOT_ANNOTATION as OLD,
        ROTATION_STAGE_ANNOTATION as STAGE,
    };
    use crate::mesh::rotation::{fingerprint, short};
    let ann = |k: &str| old["metadata"]["annotations"][k].as_str();
    let bundle: Vec<String> = new_root.iter().map(|d| fingerprint(d)).collect();
    let retired = ann(OLD).is_some_and(|o| bundle.iter().any(|b| b == o));
    let fix_new = "use bundles of the new root instead: meshctl rotate keeps it in its --dir \
                   (root-cert.pem, root-key.pem) and each cluster's intermediate in \
                   --dir/<context>; for join --certs, meshctl certs intermediate --root-cert \
                   <dir>/root-cert.pem --root-key <dir>/root-key.pem --cluster <name> --out \
                   <certs>/<name> makes one";
    match ann(STAGE) {
        Some("finished") if retired => format!(
            "context {context:?}'s cacerts in {ns} finished a root rotation away from this \
             bundle's root ({}): applying it would bring the retired root back and break \
             trust with every workload of the new one ({}); nothing was changed. Fix: \
             {fix_new}",
            short(ann(OLD).unwrap_or_default()),
            short(ann(NEW).unwrap_or_default()),
        ),
        Some(stage @ ("prepared" | "activated")) => format!(
            "context {context:?}'s cacerts in {ns} is in a root rotation (stage {stage}; \
             meshctl check shows every cluster's): replacing it now would break the rotation; \
             nothing was changed. Fix: complete it with meshctl rotate activate|finish --dir \
             <the rotation's --dir> for every cluster, then {fix_new}"
        ),
        _ => format!(
            "context {context:?} already has a cacerts Secret in {ns} with a different root \
             certificate; replacing it breaks trust with workloads signed by the old root. \
             Pass --force to replace it anyway"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bundles of the root a rotation retired are met with the way to the new root's, and a
    /// rotation in progress with the way to complete it; never with advice to `--force`.
    #[test]
    fn a_rotated_cacerts_names_the_rotation_not_force() {
        use crate::istio::{
            ROTATION_NEW_ROOT_ANNOTATION as NEW, ROTATION_OLD_ROOT_ANNOTATION as OLD,
            ROTATION_STAGE_ANNOTATION as STAGE,
        };
        use crate::mesh::rotation::fingerprint;
        let retired = pki::RootCa::generate(&pki::RootOptions::default()).unwrap();
        let current = pki::RootCa::generate(&pki::RootOptions::default()).unwrap();
        let secret = |stage: Option<&str>| {
            let mut a = serde_json::Map::new();
            if let Some(s) = stage {
                a.insert(STAGE.into(), json!(s));
                a.insert(OLD.into(), json!(fingerprint(retired.cert_der())));
                a.insert(NEW.into(), json!(fingerprint(current.cert_der())));
            }
            json!({"metadata": {"annotations": a}})
        };
        let old_bundle = [retired.cert_der().to_vec()];
        let said = |stage| root_refusal("west", "istio-system", &secret(stage), &old_bundle);
        let finished = said(Some("finished"));
        assert!(
            finished.contains("finished a root rotation away"),
            "{finished}"
        );
        assert!(
            finished.contains("meshctl certs intermediate --root-cert"),
            "{finished}"
        );
        assert!(!finished.contains("--force"), "{finished}");
        for stage in ["prepared", "activated"] {
            let t = said(Some(stage));
            assert!(
                t.contains(&format!("in a root rotation (stage {stage}")),
                "{t}"
            );
            assert!(!t.contains("--force"), "{t}");
        }
        // No rotation recorded: another root, which --force may replace on purpose.
        assert!(said(None).contains("Pass --force"));
    }

    /// The Secret carries each file's exact bytes when the files are canonical PEM (as
    /// meshctl writes them), and its root compares by DER, not by PEM text.
    #[test]
    fn secret_data_is_each_files_bytes() {
        let dir = bundle_dir();
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

    fn bundle_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = pki::RootCa::generate(&pki::RootOptions::default()).unwrap();
        let ca = root
            .issue_intermediate(&pki::IntermediateOptions::new("west"))
            .unwrap();
        pki::write_files(&ca.files(dir.path()), false).unwrap();
        dir
    }

    /// The Secret is built from the bytes that were verified, not from a second read: after
    /// loading, the files on disk are replaced by another valid bundle and the data still
    /// holds the first one.
    #[test]
    fn secret_data_is_the_verified_bytes_even_if_a_file_changes() {
        let dir = bundle_dir();
        let bundle = pki::Bundle::load_dir(dir.path()).unwrap();
        let other = bundle_dir();
        for name in [pki::CA_CERT, pki::CA_KEY, pki::ROOT_CERT, pki::CERT_CHAIN] {
            std::fs::copy(other.path().join(name), dir.path().join(name)).unwrap();
        }
        let data = bundle_data(&bundle).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        for (name, verified) in [
            (pki::CA_CERT, &bundle.ca_cert),
            (pki::CA_KEY, &bundle.ca_key),
            (pki::ROOT_CERT, &bundle.root_cert),
            (pki::CERT_CHAIN, &bundle.cert_chain),
        ] {
            let stored = b64.decode(&data[name]).unwrap();
            assert_eq!(stored, verified.as_bytes(), "{name}");
            assert_ne!(
                stored,
                std::fs::read(dir.path().join(name)).unwrap(),
                "{name}"
            );
        }
    }

    /// Verification judges the same in-memory bytes: a bundle whose CA certificate no longer
    /// matches its key is refused although the files on disk are still a valid bundle.
    #[test]
    fn the_bytes_verified_are_the_bytes_installed() {
        let dir = bundle_dir();
        let mut bundle = pki::Bundle::load_dir(dir.path()).unwrap();
        let other = pki::Bundle::load_dir(bundle_dir().path()).unwrap();
        bundle.ca_cert = other.ca_cert;
        let e = bundle_data(&bundle).unwrap_err().to_string();
        assert!(e.contains("is not a valid cluster bundle"), "{e}");
        assert!(verified_data(dir.path(), "istio-system").is_ok());
    }

    /// A missing file is refused with the loader's finding, before anything is encoded.
    #[test]
    fn a_missing_file_is_refused() {
        let dir = bundle_dir();
        std::fs::remove_file(dir.path().join(pki::CERT_CHAIN)).unwrap();
        let e = verified_data(dir.path(), "istio-system")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a valid cluster bundle"), "{e}");
    }
}
