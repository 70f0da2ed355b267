//! `meshctl certs ...`: root, per-cluster intermediates, workload certificates, verify, inspect
//! (the certificates themselves are `pki`'s, and so are the defaults of the flags).
//!
//! Private keys are written 0600 in 0700 directories (`pki::write_files`), replaced by a
//! rename so a symlink at a key path is never followed, and never printed. No file is
//! overwritten without `--force`, and every target is checked before anything is written.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::cli::{DeletionWaitArg, KubeArgs, MutateArgs, NamespaceArg};
use crate::cmd::progress::{Progress, say, tell};
use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};

mod renew;

use pki::{
    IntermediateCa, IntermediateOptions, KeyType, OutFile, PkiError, RootCa, RootOptions,
    VerifyOptions, WorkloadOptions,
};

#[derive(Debug, Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    command: CertsCommand,
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Create a root CA and one intermediate CA per cluster (Istio tools/certs layout).
    Init(InitArgs),
    /// Create a root CA only (root-cert.pem, root-key.pem).
    Root(RootArgs),
    /// Create a cluster intermediate CA from an existing root.
    Intermediate(IntermediateArgs),
    /// Renew a cluster's intermediate CA: same root and subject, new key; writes it in place
    /// and, with --apply, applies it as `cacerts` (like `cacerts apply`).
    Renew(RenewArgs),
    /// Issue a workload certificate (cert.pem, key.pem, cert-chain.pem, root-cert.pem).
    Workload(WorkloadArgs),
    /// Check cluster bundles the way istiod does, and that they share one root.
    Verify(VerifyArgs),
    /// Show every certificate of a PEM file in readable form.
    Inspect(InspectArgs),
}

/// Options shared by the commands that create keys.
#[derive(Debug, Args)]
struct KeyArgs {
    /// Key algorithm: ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096.
    #[arg(long, default_value = "ec-p256", value_parser = parse_key_type)]
    key_type: KeyType,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Args)]
struct InitArgs {
    /// Comma-separated cluster names (DNS-1123 labels), e.g. west-cluster,east-cluster.
    #[arg(long, value_delimiter = ',', required = true, value_parser = parse_cluster)]
    clusters: Vec<String>,
    /// Output directory.
    #[arg(long, default_value = "certs")]
    out: PathBuf,
    /// Root validity in days (1 to 36500, i.e. at most 100 years).
    #[arg(long, default_value_t = pki::DEFAULT_ROOT_DAYS, value_parser = days_parser())]
    root_days: u32,
    /// Intermediate validity in days (1 to 36500; never past the root's notAfter).
    #[arg(long, default_value_t = pki::DEFAULT_INTERMEDIATE_DAYS, value_parser = days_parser())]
    days: u32,
    /// Subject O of the root and the intermediates.
    #[arg(long, default_value = pki::DEFAULT_ORG)]
    org: String,
    #[command(flatten)]
    key: KeyArgs,
}

#[derive(Debug, Args)]
struct RootArgs {
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Validity in days (1 to 36500, i.e. at most 100 years).
    #[arg(long, default_value_t = pki::DEFAULT_ROOT_DAYS, value_parser = days_parser())]
    days: u32,
    /// Subject O.
    #[arg(long, default_value = pki::DEFAULT_ORG)]
    org: String,
    /// Subject CN.
    #[arg(long, default_value = pki::DEFAULT_ROOT_CN)]
    common_name: String,
    #[command(flatten)]
    key: KeyArgs,
}

/// The CA that signs a new intermediate: a root, or (`--parent`) an intermediate directory.
#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
struct SignerArgs {
    /// Root certificate (PEM).
    #[arg(long, requires = "root_key", conflicts_with = "parent")]
    root_cert: Option<PathBuf>,
    /// Root private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, requires = "root_cert", conflicts_with = "parent")]
    root_key: Option<PathBuf>,
    /// An intermediate directory (ca-cert.pem, ca-key.pem, cert-chain.pem, root-cert.pem) with
    /// pathlen ≥ 1, e.g. an offline intermediate, to sign with instead of the root.
    #[arg(long)]
    parent: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct IntermediateArgs {
    #[command(flatten)]
    signer: SignerArgs,
    /// Cluster name (DNS-1123 label), written as the subject L.
    #[arg(long, value_parser = parse_cluster)]
    cluster: String,
    /// CA levels allowed below this one: 0 for a cluster CA (signs workloads), 1 for an
    /// offline intermediate that signs cluster CAs (`--parent`).
    #[arg(long, default_value_t = 0)]
    path_len: u8,
    /// Subject CN.
    #[arg(long, default_value = "Intermediate CA")]
    common_name: String,
    /// Output directory (e.g. certs/<cluster>).
    #[arg(long)]
    out: PathBuf,
    /// Validity in days (1 to 36500; never past the root's notAfter).
    #[arg(long, default_value_t = pki::DEFAULT_INTERMEDIATE_DAYS, value_parser = days_parser())]
    days: u32,
    /// Subject O.
    #[arg(long, default_value = pki::DEFAULT_ORG)]
    org: String,
    #[command(flatten)]
    key: KeyArgs,
}

#[derive(Debug, Args)]
struct RenewArgs {
    /// The cluster bundle directory to renew (e.g. certs/west-cluster); rewritten in place.
    #[arg(long)]
    ca: PathBuf,
    #[command(flatten)]
    signer: SignerArgs,
    /// Validity in days, 1 to 36500 (default: the old CA's; never past the root's notAfter).
    #[arg(long, value_parser = days_parser())]
    days: Option<u32>,
    /// Key algorithm of the new CA key.
    #[arg(long, default_value = "ec-p256", value_parser = parse_key_type)]
    key_type: KeyType,
    /// Also apply the renewed bundle as the `cacerts` Secret of --context.
    #[arg(long)]
    apply: bool,
    #[command(flatten)]
    kube: KubeArgs,
    #[command(flatten)]
    ns: NamespaceArg,
    /// Print ca-key.pem in the --dry-run output instead of a placeholder.
    #[arg(long)]
    show_secrets: bool,
    #[command(flatten)]
    mutate: MutateArgs,
    /// With --apply: a `cacerts` (or its namespace) being deleted is waited for before the
    /// bundle is written or applied (`mesh::terminating`).
    #[command(flatten)]
    deletion: DeletionWaitArg,
}

#[derive(Debug, Args)]
struct WorkloadArgs {
    /// Cluster bundle directory (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem).
    #[arg(long)]
    ca: PathBuf,
    /// The workload's Kubernetes namespace (a DNS-1123 label).
    #[arg(long, short = 'n', value_parser = parse_namespace)]
    namespace: String,
    /// The workload's Kubernetes service account (a DNS-1123 subdomain).
    #[arg(long, short = 's', value_parser = parse_service_account)]
    service_account: String,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// SPIFFE trust domain.
    #[arg(long, default_value = "cluster.local", value_parser = parse_trust_domain)]
    trust_domain: String,
    /// Validity in hours, 1 to 87600 (10 years; never past the CA's notAfter).
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u32).range(1..=MAX_HOURS))]
    hours: u32,
    /// Extra DNS SAN (repeatable): a DNS name, `*.` allowed as its first label.
    #[arg(long = "dns", value_parser = parse_dns_san)]
    dns_names: Vec<String>,
    #[command(flatten)]
    key: KeyArgs,
}

#[derive(Debug, Args)]
struct VerifyArgs {
    /// Cluster bundle directories; with several, their roots must be identical.
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Warn when a certificate expires within this many days.
    #[arg(long, default_value_t = 30)]
    warn_days: u32,
}

#[derive(Debug, Args)]
struct InspectArgs {
    /// PEM file with one or more certificates.
    file: PathBuf,
}

/// The longest `--days`/`--root-days` accepted: 100 years (a notAfter far before X.509's
/// 9999-12-31 limit, from any start date this tool can see).
pub(crate) const MAX_DAYS: i64 = 36_500;
/// The longest `certs workload --hours`: 10 years.
pub(crate) const MAX_HOURS: i64 = 87_600;

/// `--days` and `--root-days`: 1 to [`MAX_DAYS`] (clap refuses others with a usage error).
pub(crate) fn days_parser() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=MAX_DAYS)
}

fn parse_key_type(s: &str) -> Result<KeyType, PkiError> {
    s.parse()
}

fn parse_dns_san(s: &str) -> Result<String, String> {
    let name = s.strip_prefix("*.").unwrap_or(s);
    if crate::kube::names::is_dns_name(name) && !name.contains('_') {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a DNS name (labels of letters, digits and '-', e.g. catalog.example.com \
             or *.example.com)"
        ))
    }
}

fn parse_cluster(s: &str) -> Result<String, String> {
    pki::validate_dns_label(s).map(|()| s.to_string())
}

/// `-n`: what Kubernetes accepts as a Namespace name (kubernetes
/// `staging/src/k8s.io/apimachinery/pkg/api/validation/generic.go`: `NameIsDNSLabel`).
fn parse_namespace(s: &str) -> Result<String, String> {
    pki::validate_dns_label(s)
        .map(|()| s.to_string())
        .map_err(|e| format!("{e}, as Kubernetes requires of a namespace name"))
}

/// `-s`: what Kubernetes accepts as a ServiceAccount name (same file:
/// `ValidateServiceAccountName = NameIsDNSSubdomain`).
/// Checked when parsed, as `-n` and `-s` are (exit 2).
fn parse_trust_domain(s: &str) -> Result<String, String> {
    pki::validate_trust_domain(s).map(|()| s.to_string())
}

fn parse_service_account(s: &str) -> Result<String, String> {
    pki::validate_dns_subdomain(s)
        .map(|()| s.to_string())
        .map_err(|e| format!("{e}, as Kubernetes requires of a service account name"))
}

/// Refuses an output directory that is the CA directory `ca` given to `flag` (compared by
/// real path, so `dir/.` or a symlink to it count), whose `replaced` files the output would
/// overwrite with `--force`.
fn refuse_out_in_ca(out: &Path, ca: &Path, flag: &str, replaced: &str) -> Result<()> {
    let same = match (std::fs::canonicalize(out), std::fs::canonicalize(ca)) {
        (Ok(o), Ok(c)) => o == c,
        _ => false,
    };
    if same {
        bail!(
            "--out {} is the CA directory given to {flag} ({}): the output would replace its \
             {replaced}; nothing was written. Pass another --out, e.g. a new directory beside it",
            out.display(),
            ca.display()
        );
    }
    Ok(())
}

pub fn run(args: CertsArgs) -> Result<ExitCode> {
    match args.command {
        CertsCommand::Init(a) => init(a),
        CertsCommand::Root(a) => root(a),
        CertsCommand::Intermediate(a) => intermediate(a),
        CertsCommand::Renew(a) => renew::run(a),
        CertsCommand::Workload(a) => workload(a),
        CertsCommand::Verify(a) => Ok(verify(a)),
        CertsCommand::Inspect(a) => inspect(a),
    }
}

fn init(a: InitArgs) -> Result<ExitCode> {
    let mut seen = std::collections::BTreeSet::new();
    for c in &a.clusters {
        if !seen.insert(c) {
            return Err(crate::cli::usage(format!(
                "--clusters: cluster {c:?} is listed twice; list each cluster once"
            )));
        }
    }
    let root = RootCa::generate(&RootOptions {
        org: a.org.clone(),
        days: a.root_days,
        key_type: a.key.key_type,
        ..Default::default()
    })
    .context("creating the root CA")?;
    let mut files = root.files(&a.out);
    for cluster in &a.clusters {
        let ca = root
            .issue_intermediate(&IntermediateOptions {
                org: a.org.clone(),
                days: a.days,
                key_type: a.key.key_type,
                ..IntermediateOptions::new(cluster)
            })
            .with_context(|| format!("creating the intermediate CA for {cluster}"))?;
        warn_clamped(&format!("of {cluster}"), &ca);
        files.extend(ca.files(&a.out.join(cluster)));
    }
    if !a.key.force
        && let Err(e) = pki::files::check_writable(&files, false)
    {
        return Err(init_refusal(e, &a));
    }
    write(&files, a.key.force)?;
    say(format_args!(
        "Next: meshctl certs verify {}",
        a.clusters
            .iter()
            .map(|c| a.out.join(c).display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    Ok(ExitCode::SUCCESS)
}

fn root(a: RootArgs) -> Result<ExitCode> {
    let root = RootCa::generate(&RootOptions {
        org: a.org,
        common_name: a.common_name,
        days: a.days,
        key_type: a.key.key_type,
        ..Default::default()
    })
    .context("creating the root CA")?;
    write(&root.files(&a.out), a.key.force)?;
    Ok(ExitCode::SUCCESS)
}

/// A root, or an intermediate that signs CAs below it.
enum Signer {
    Root(RootCa),
    Parent(IntermediateCa),
}

impl Signer {
    fn load(a: &SignerArgs) -> Result<Signer> {
        match (&a.root_cert, &a.root_key, &a.parent) {
            (_, _, Some(dir)) => {
                check_bundle_dir(dir, "--parent", true)?;
                Ok(Signer::Parent(IntermediateCa::load_dir(dir).with_context(
                    || format!("loading the parent CA from {}", dir.display()),
                )?))
            }
            (Some(cert), Some(key), None) => Ok(Signer::Root(
                RootCa::load_files(cert, key).with_context(|| {
                    format!(
                        "loading the root from {} and {}",
                        cert.display(),
                        key.display()
                    )
                })?,
            )),
            _ => bail!("pass --root-cert and --root-key, or --parent DIR"),
        }
    }

    /// The root this signer chains to (DER): of a root file holding several roots (during a
    /// rotation), the one whose key signs, wherever it is listed; of a parent, the root its
    /// chain ends with. `None` for a parent whose chain reaches none of its roots.
    fn signing_root(&self) -> Option<Vec<u8>> {
        match self {
            Signer::Root(r) => Some(r.cert_der().to_vec()),
            Signer::Parent(p) => pki::signing_root(p.cert_pem(), &p.cert_chain_pem(), p.root_pem()),
        }
    }

    /// Refuses a signer that has expired, saying how to replace it (pki would only say that
    /// it cannot sign); `for_renew`: the words of `certs renew`, else of `certs intermediate`.
    fn check_not_expired(&self, a: &SignerArgs, for_renew: bool) -> Result<()> {
        match (self, &a.root_cert, &a.parent) {
            (Signer::Root(r), Some(cert), _) => {
                // The root that signs, not the file's first (an old root listed first in
                // mid-rotation may have expired while the new one signs).
                if let Some(when) = expired_on(&pki::der_to_pem(r.cert_der())) {
                    if for_renew {
                        bail!(
                            "the root in {} expired on {when}: a root cannot be renewed in place; \
                             create a new one (meshctl certs init or certs root) and, for clusters \
                             that use the old one, move them with meshctl rotate \
                             prepare|activate|finish",
                            cert.display()
                        );
                    }
                    bail!(
                        "the root in {} expired on {when}, so it cannot sign a new intermediate \
                         (nothing would trust one); nothing was written. Create a new root \
                         (meshctl certs root --out DIR) and sign with it (--root-cert \
                         DIR/root-cert.pem --root-key DIR/root-key.pem); clusters that still use \
                         the expired root move to the new one with meshctl rotate \
                         prepare|activate|finish",
                        cert.display()
                    );
                }
            }
            (Signer::Parent(p), _, Some(dir)) => {
                if let Some(when) = expired_on(p.cert_pem()) {
                    bail!(
                        "the parent CA in {} expired on {when}: renew it with meshctl certs renew \
                         --ca {} --root-cert ROOT --root-key KEY",
                        dir.display(),
                        dir.display()
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn issue(&self, opts: &IntermediateOptions) -> pki::Result<IntermediateCa> {
        match self {
            Signer::Root(r) => r.issue_intermediate(opts),
            Signer::Parent(p) => p.issue_intermediate(opts),
        }
    }
}

/// A directory given to `flag` must be a cluster bundle directory: one without
/// `ca-cert.pem` is refused saying what the flag expects (a root directory, the usual mix-up,
/// is named as one) instead of the bare "No such file" of the first file read. `root_flags`:
/// the command also takes a root (`--root-cert`, `--root-key`), said when `dir` is one.
pub(super) fn check_bundle_dir(dir: &Path, flag: &str, root_flags: bool) -> Result<()> {
    // As every reader of a bundle does first: a write a crash interrupted is settled.
    if let Some(note) = pki::files::recover_dir(dir)? {
        eprintln!("note: {note}");
    }
    if dir.join(pki::CA_CERT).symlink_metadata().is_ok() {
        return Ok(());
    }
    let has = |f: &str| dir.join(f).symlink_metadata().is_ok();
    // Cluster bundles below it (a `certs init --out` directory), for the example.
    let mut below: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(pki::CA_CERT).is_file())
        .map(|e| e.path().display().to_string())
        .collect();
    below.sort();
    let is_root = has(pki::ROOT_CERT) && has(pki::ROOT_KEY);
    let (what, example) = if !dir.exists() {
        (
            format!("{} does not exist", dir.display()),
            "certs/west".to_string(),
        )
    } else if is_root {
        (
            format!(
                "{} looks like a root directory (root-cert.pem and root-key.pem, no ca-cert.pem)",
                dir.display()
            ),
            format!("{}/<cluster>", dir.display()),
        )
    } else {
        (
            format!("{} has no {}", dir.display(), pki::CA_CERT),
            format!("{}/<cluster>", dir.display()),
        )
    };
    let example = match below.as_slice() {
        [] => example,
        [one] => one.clone(),
        [first, ..] => format!("{first} (bundles there: {})", below.join(", ")),
    };
    let root_hint = if is_root && root_flags {
        format!(
            "; the root itself goes to --root-cert {} --root-key {}",
            dir.join(pki::ROOT_CERT).display(),
            dir.join(pki::ROOT_KEY).display()
        )
    } else {
        String::new()
    };
    bail!(
        "{what}: {flag} expects a cluster bundle directory (ca-cert.pem, ca-key.pem, \
         cert-chain.pem, root-cert.pem), e.g. {example}{root_hint}; nothing was changed"
    )
}

/// When the first certificate of `pem` has expired: its notAfter, else `None`.
pub(super) fn expired_on(pem: &str) -> Option<String> {
    let der = crate::mesh::cacerts::pem_ders(pem.as_bytes())
        .into_iter()
        .next()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    let not_after = cert.validity().not_after;
    (not_after.timestamp()
        <= i64::try_from(crate::mesh::credentials::unix_now()).unwrap_or(i64::MAX))
    .then(|| not_after.to_string())
}

/// `certs init`'s refusal to overwrite: when `--out` already holds a root, `--force` would
/// replace its key (every cluster signed by it would stop trusting the new one), so the
/// message says how to add a cluster to that root instead.
fn init_refusal(e: PkiError, a: &InitArgs) -> anyhow::Error {
    let PkiError::Exists(paths) = &e else {
        return output_error(e);
    };
    let key = a.out.join("root-key.pem");
    if !paths.contains(&key) {
        return output_error(e);
    }
    let (out, cert) = (a.out.display(), a.out.join("root-cert.pem"));
    let add: Vec<String> = a
        .clusters
        .iter()
        .map(|c| {
            format!(
                "meshctl certs intermediate --root-cert {} --root-key {} --cluster {c} --out {}",
                cert.display(),
                key.display(),
                a.out.join(c).display()
            )
        })
        .collect();
    anyhow!(
        "{out} already holds a root CA ({}); nothing was written. --force would replace its \
         key, and the clusters whose intermediates it signed would no longer share trust with \
         new ones. To add clusters to this root: {}. To start a new root on purpose, keep a \
         copy of {} and pass --force",
        paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        add.join("; "),
        key.display()
    )
}

/// The refusals of `pki::write_files` (and of `pki::files::check_targets`, which it calls
/// first) as the CLI words them.
pub(super) fn output_error(e: PkiError) -> anyhow::Error {
    match e {
        PkiError::Unwritable(problems) => anyhow!(
            "cannot write the output (nothing was written; choose another --out or move these \
             away): {}",
            problems.join("; ")
        ),
        PkiError::Exists(paths) => anyhow!(
            "refusing to overwrite existing file(s) (nothing was written; pass --force to overwrite): {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        e => e.into(),
    }
}

fn intermediate(a: IntermediateArgs) -> Result<ExitCode> {
    if let Some(parent) = &a.signer.parent {
        refuse_out_in_ca(
            &a.out,
            parent,
            "--parent",
            "ca-cert.pem and ca-key.pem (the parent CA and its key)",
        )?;
    }
    let signer = Signer::load(&a.signer)?;
    signer.check_not_expired(&a.signer, false)?;
    let ca = signer
        .issue(&IntermediateOptions {
            org: a.org,
            days: a.days,
            key_type: a.key.key_type,
            path_len: a.path_len,
            common_name: a.common_name,
            ..IntermediateOptions::new(&a.cluster)
        })
        .with_context(|| format!("creating the intermediate CA for {}", a.cluster))?;
    warn_clamped(&format!("of {}", a.cluster), &ca);
    write(&ca.files(&a.out), a.key.force)?;
    Ok(ExitCode::SUCCESS)
}

fn workload(a: WorkloadArgs) -> Result<ExitCode> {
    let replaced = "cert-chain.pem and root-cert.pem (the CA bundle would no longer verify)";
    refuse_out_in_ca(&a.out, &a.ca, "--ca", replaced)?;
    // Another cluster's CA bundle (its key beside the files a workload's would replace) is
    // no output directory either, `--force` or not.
    let key = a.out.join(pki::CA_KEY);
    if key.symlink_metadata().is_ok() {
        bail!(
            "--out {} holds a CA bundle ({}): the workload's files would replace its \
             {replaced}; nothing was written. Pass another --out, e.g. a new directory beside it",
            a.out.display(),
            key.display()
        );
    }
    check_bundle_dir(&a.ca, "--ca", false)?;
    let ca = IntermediateCa::load_dir(&a.ca)
        .with_context(|| format!("loading the cluster CA from {}", a.ca.display()))?;
    if let Some(when) = expired_on(ca.cert_pem()) {
        bail!(
            "the cluster CA in {} expired on {when}: renew it with meshctl certs renew --ca {} \
             --root-cert ROOT --root-key KEY",
            a.ca.display(),
            a.ca.display()
        );
    }
    let (cert, clamped) = ca
        .issue_workload_noting(&WorkloadOptions {
            trust_domain: a.trust_domain,
            validity: Duration::from_secs(u64::from(a.hours) * 3600),
            key_type: a.key.key_type,
            dns_names: a.dns_names,
            ..WorkloadOptions::new(a.namespace, a.service_account)
        })
        .context("issuing the workload certificate")?;
    if let Some(clamp) = clamped {
        tell(format_args!(
            "warning: the workload certificate: {clamp} (--hours {})",
            a.hours
        ));
    }
    write(&cert.files(&a.out), a.key.force)?;
    say(format_args!("SPIFFE id: {}", cert.spiffe_id));
    Ok(ExitCode::SUCCESS)
}

fn verify(a: VerifyArgs) -> ExitCode {
    let dirs: Vec<&Path> = a.dirs.iter().map(PathBuf::as_path).collect();
    let opts = VerifyOptions {
        warn_within: Duration::from_secs(u64::from(a.warn_days) * 24 * 3600),
        now: None,
    };
    let report = pki::verify_bundles(&dirs, &opts);
    if report.is_ok() {
        print!("{report}");
        ExitCode::SUCCESS
    } else {
        eprint!("{report}");
        ExitCode::FAILURE
    }
}

fn inspect(a: InspectArgs) -> Result<ExitCode> {
    let text = pki::files::read_input_string(&a.file)
        .with_context(|| format!("reading {}", a.file.display()))?;
    let certs = pki::inspect_pem(&text).with_context(|| a.file.display().to_string())?;
    // Shown anyway (the file may be a combined cert + key); said, since as a certificate
    // file it would publish the other blocks.
    if let Err(e) = pki::check_cert_pem(&text) {
        eprintln!("warning: {}: {e}", a.file.display());
    }
    for (i, c) in certs.iter().enumerate() {
        if certs.len() > 1 {
            println!("Certificate {} of {}:", i + 1, certs.len());
        }
        println!("{c}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Warns on stderr when the intermediate CA `which` (`of <cluster>`, `in <dir>`) was issued
/// to end when its signer does, earlier than asked (`--days`).
pub(super) fn warn_clamped(which: &str, ca: &IntermediateCa) {
    if let Some(clamp) = ca.clamped() {
        tell(format_args!(
            "warning: the intermediate CA {which}: {clamp}"
        ));
    }
}

/// Writes all files (or none), then lists them. Keys are never printed.
pub(super) fn write(files: &[OutFile], force: bool) -> Result<()> {
    write_saying(files, force, Progress::Stdout)
}

/// [`write`], listing the files on `to` (stderr when stdout carries an `-o` document).
pub(super) fn write_saying(files: &[OutFile], force: bool, to: Progress) -> Result<()> {
    pki::write_files(files, force).map_err(output_error)?;
    for f in files {
        let note = if f.secret { " (private key, 0600)" } else { "" };
        to.say(format_args!("wrote {}{note}", f.path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: CertsCommand,
    }

    /// The flags' defaults are pki's, not retyped: `certs root` with no options makes the
    /// same root as `RootOptions::default()`.
    #[test]
    fn root_defaults_are_pkis() {
        let d = RootOptions::default();
        let Ok(Cli {
            command: CertsCommand::Root(a),
        }) = Cli::try_parse_from(["certs", "root", "--out", "x"])
        else {
            panic!("certs root --out x parses")
        };
        assert_eq!(
            (a.org, a.common_name, a.days),
            (d.org.clone(), d.common_name, d.days)
        );
        let Ok(Cli {
            command: CertsCommand::Init(i),
        }) = Cli::try_parse_from(["certs", "init", "--clusters", "a"])
        else {
            panic!("certs init parses")
        };
        assert_eq!((i.org, i.root_days), (d.org, d.days));
        assert_eq!(i.days, IntermediateOptions::new("a").days);
    }
}
