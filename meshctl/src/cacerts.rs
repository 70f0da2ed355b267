//! `meshctl cacerts DIR [-n NS]`: prints the `cacerts` Secret that istiod reads;
//! `meshctl cacerts apply DIR`: creates or updates it in a cluster.
//!
//! The Secret uses `data` (base64 of each file's exact bytes), the same as
//! `kubectl create secret generic cacerts --from-file=...` produces. The bundle is
//! verified first; a bundle with errors is refused so that istiod never sees it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::kube_client::{self as kc, Cluster, KubeArgs, KubeconfigFile, Output};
use crate::redact::Secrets;

/// `meshctl cacerts DIR` prints; `meshctl cacerts apply DIR` applies.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct CacertsArgs {
    #[command(subcommand)]
    cmd: Option<CacertsCmd>,
    /// Cluster bundle directory (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem).
    #[arg(required = true)]
    dir: Option<PathBuf>,
    /// Namespace of the Secret (istiod's namespace).
    #[arg(long, short = 'n', default_value = "istio-system")]
    namespace: String,
    /// Required: the printed Secret holds the CA private key (`ca-key.pem`).
    #[arg(long)]
    show_secrets: bool,
}

#[derive(Debug, Subcommand)]
enum CacertsCmd {
    /// Create or update the `cacerts` Secret in a cluster (and its namespace if missing).
    Apply(ApplyArgs),
}

#[derive(Debug, Args)]
struct ApplyArgs {
    /// Cluster bundle directory, e.g. certs/west-cluster.
    dir: PathBuf,
    #[arg(long, short = 'n', default_value = "istio-system")]
    namespace: String,
    #[command(flatten)]
    kube: KubeArgs,
    /// Replace a `cacerts` whose root differs (workloads signed by the old root stop being trusted).
    #[arg(long)]
    force: bool,
    /// Print the Secret and change nothing (`ca-key.pem` redacted).
    #[arg(long)]
    dry_run: bool,
    /// Print `ca-key.pem` in the --dry-run output instead of a placeholder.
    #[arg(long)]
    show_secrets: bool,
    #[arg(long, short = 'o', value_enum, default_value = "yaml")]
    output: Output,
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

use serde::Serialize;

/// The hint printed whenever cacerts changed.
pub const RESTART_HINT: &str = "istiod reads cacerts only when it starts: restart it to use the new CA: \
     kubectl -n istio-system rollout restart deploy/istiod";

pub fn run(a: CacertsArgs) -> Result<ExitCode> {
    match a.cmd {
        Some(CacertsCmd::Apply(args)) => apply_cmd(args),
        None => print_cmd(
            a.dir.expect("clap requires DIR"),
            a.namespace,
            a.show_secrets,
        ),
    }
}

fn print_cmd(dir: PathBuf, namespace: String, show_secrets: bool) -> Result<ExitCode> {
    // A redacted Secret piped into `kubectl apply` would break istiod, so refuse instead.
    if !show_secrets {
        bail!(
            "`meshctl cacerts DIR` prints the CA private key (ca-key.pem); pass --show-secrets to print it \
             (for example to pipe into kubectl apply), or apply it without printing: \
             meshctl cacerts apply {} --context CTX",
            dir.display()
        );
    }
    let data = verified_data(&dir, &namespace)?;
    let secret = Secret {
        api_version: "v1",
        kind: "Secret",
        metadata: Metadata {
            name: "cacerts",
            namespace,
        },
        type_: "Opaque",
        data,
    };
    print!("{}", serde_yaml::to_string(&secret)?);
    Ok(ExitCode::SUCCESS)
}

/// Verifies the bundle and returns its files, base64-encoded.
fn verified_data(dir: &Path, namespace: &str) -> Result<BTreeMap<&'static str, String>> {
    pki::validate_dns_label(namespace).map_err(|e| anyhow::anyhow!("namespace {e}"))?;
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
        data.insert(name, base64(&bytes));
    }
    Ok(data)
}

/// The `cacerts` Secret for a verified bundle, labelled as managed by meshctl.
pub fn secret_object(dir: &Path, namespace: &str) -> Result<Value> {
    let data = verified_data(dir, namespace)?;
    Ok(
        json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "cacerts", "namespace": namespace, "labels": kc::managed_labels()},
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
    use base64::Engine as _;
    let b64 = secret.get("data")?.get(pki::ROOT_CERT)?.as_str()?;
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// Applies `cacerts` unless an existing one has a different root (and not `force`).
/// Returns true when the Secret was created or changed.
pub async fn apply_secret(c: &Cluster, secret: &Value, force: bool, dry_run: bool) -> Result<bool> {
    let ns = secret["metadata"]["namespace"]
        .as_str()
        .unwrap_or("istio-system");
    let existing = if kc::get(c, "v1", "Namespace", None, ns).await?.is_some() {
        kc::get(c, "v1", "Secret", Some(ns), "cacerts").await?
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

fn apply_cmd(a: ApplyArgs) -> Result<ExitCode> {
    let secret = secret_object(&a.dir, &a.namespace)?;
    let file = KubeconfigFile::load(a.kube.kubeconfig.as_deref())?;
    let ctx = file.context_name(a.kube.context.as_deref())?;
    file.require_contexts(std::slice::from_ref(&ctx))?;
    let changed = kc::block_on(async {
        let c = file.connect(&ctx).await?;
        apply_secret(&c, &secret, a.force, a.dry_run).await
    })
    .map_err(|e| anyhow!("{e:#}"))?;
    if a.dry_run {
        let secrets = Secrets::from_flag(a.show_secrets);
        print!(
            "{}",
            kc::render_plan_with(&[(ctx, vec![secret])], a.output, secrets)?
        );
        return Ok(ExitCode::SUCCESS);
    }
    if changed {
        println!(
            "cacerts applied in context {ctx:?} (namespace {})",
            a.namespace
        );
        eprintln!("{RESTART_HINT}");
    } else {
        println!("cacerts in context {ctx:?} is up to date");
    }
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
