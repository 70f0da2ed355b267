//! Verification of cluster bundles (`ca-cert.pem`, `ca-key.pem`, `root-cert.pem`,
//! `cert-chain.pem`), with the checks istiod makes and the mistakes users make.
//!
//! Pure: a [`Bundle`] holds the four texts, wherever they came from (a directory, see
//! [`Bundle::load_dir`](crate::files), or a Secret's `data`), so no key touches the disk.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;

use crate::files::{CA_CERT, CA_KEY, CERT_CHAIN, ROOT_CERT};
use crate::inspect::fingerprint;
use crate::pem::{cert_ders, parse_x509};

mod chain;

pub(crate) use chain::anchor_of;
pub use chain::signing_root;

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// istiod would reject the bundle, or clusters would not trust each other.
    Error,
    /// Works today, but deserves attention (e.g. expires soon).
    Warning,
}

/// One problem, naming the file it is about.
#[derive(Debug, Clone)]
pub struct Finding {
    pub severity: Severity,
    pub file: PathBuf,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{label}: {}: {}", self.file.display(), self.message)
    }
}

/// One cluster bundle in memory: the four files of Istio's `cacerts`. `root-cert.pem` may
/// hold several roots (during a root rotation); `cert-chain.pem` is `ca-cert.pem`, any
/// intermediate CAs above it (e.g. an offline intermediate), then the root it chains to.
#[derive(Clone)]
pub struct Bundle {
    /// Where the bundle came from (a directory, or e.g. `cacerts` of a cluster); findings
    /// name `source/<file>`.
    pub source: PathBuf,
    pub ca_cert: String,
    pub ca_key: String,
    pub root_cert: String,
    pub cert_chain: String,
}

impl fmt::Debug for Bundle {
    // Never print the CA key, not even in a debug dump.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle")
            .field("source", &self.source)
            .field("ca_cert", &self.ca_cert)
            .field("ca_key", &"<redacted>")
            .field("root_cert", &self.root_cert)
            .field("cert_chain", &self.cert_chain)
            .finish()
    }
}

/// Options for [`verify`].
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Warn when a certificate expires within this period (default 30 days).
    pub warn_within: Duration,
    /// The time to check validity against (default: now).
    pub now: Option<OffsetDateTime>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions {
            warn_within: Duration::from_secs(30 * 24 * 60 * 60),
            now: None,
        }
    }
}

/// The findings for a set of bundles.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The bundles checked (their sources), in order.
    pub bundles: Vec<PathBuf>,
    pub findings: Vec<Finding>,
}

impl Report {
    /// True when there is no error (warnings allowed).
    pub fn is_ok(&self) -> bool {
        self.errors().next().is_none()
    }

    pub fn errors(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            writeln!(f, "{finding}")?;
        }
        for dir in &self.bundles {
            let errors = self.errors().filter(|x| x.file.starts_with(dir)).count();
            let status = if errors == 0 {
                "OK".to_string()
            } else {
                format!("FAILED ({errors} error(s))")
            };
            writeln!(f, "{}: {status}", dir.display())?;
        }
        Ok(())
    }
}

/// Verifies each bundle, then that all bundles share one root.
pub fn verify(bundles: &[Bundle], opts: &VerifyOptions) -> Report {
    let mut report = Report::default();
    let mut roots = Vec::new();
    for b in bundles {
        let texts = [&b.ca_cert, &b.ca_key, &b.root_cert, &b.cert_chain].map(|t| Some(t.as_str()));
        roots.extend(verify_one(&b.source, texts, opts, &mut report));
    }
    compare_roots(&roots, &mut report);
    report
}

/// Checks one bundle into `report`: `texts` are ca-cert, ca-key, root-cert and cert-chain,
/// `None` for a file the loader could not provide (and already reported). Returns the roots
/// (path, DERs) for the cross-bundle comparison.
pub(crate) fn verify_one(
    source: &Path,
    texts: [Option<&str>; 4],
    opts: &VerifyOptions,
    report: &mut Report,
) -> Option<(PathBuf, Vec<Vec<u8>>)> {
    report.bundles.push(source.to_path_buf());
    let mut ctx = Ctx {
        source,
        texts,
        now: opts.now.unwrap_or_else(OffsetDateTime::now_utc),
        opts,
        dates: true,
        out: &mut report.findings,
    };
    ctx.bundle().map(|root| (source.join(ROOT_CERT), root))
}

/// The errors of one bundle (ca-cert, ca-key, root-cert, cert-chain texts) that make it unfit
/// to sign with, dates aside (the signer checks its own validity and says what to do).
pub(crate) fn signing_errors(source: &Path, texts: [&str; 4]) -> Vec<Finding> {
    let opts = VerifyOptions::default();
    let mut out = Vec::new();
    let mut ctx = Ctx {
        source,
        texts: texts.map(Some),
        now: OffsetDateTime::now_utc(),
        opts: &opts,
        dates: false,
        out: &mut out,
    };
    ctx.bundle();
    out.retain(|f| f.severity == Severity::Error);
    out
}

/// Every trust bundle (the roots of `root-cert.pem`) must equal the first one.
pub(crate) fn compare_roots(roots: &[(PathBuf, Vec<Vec<u8>>)], report: &mut Report) {
    if let Some((first_path, first)) = roots.first() {
        for (path, root) in &roots[1..] {
            if root != first {
                report.findings.push(Finding {
                    severity: Severity::Error,
                    file: path.clone(),
                    message: format!(
                        "differs from {} (SHA-256 {} vs {}): clusters with different roots \
                         do not trust each other's workloads",
                        first_path.display(),
                        short_fp(root),
                        short_fp(first)
                    ),
                });
            }
        }
    }
}

fn short_fp(ders: &[Vec<u8>]) -> String {
    ders.iter()
        .map(|der| fingerprint(der)[..23].to_string())
        .collect::<Vec<_>>()
        .join(" + ")
}

struct Ctx<'a> {
    source: &'a Path,
    texts: [Option<&'a str>; 4],
    now: OffsetDateTime,
    opts: &'a VerifyOptions,
    /// Whether validity dates are checked.
    dates: bool,
    out: &'a mut Vec<Finding>,
}

impl<'a> Ctx<'a> {
    fn push(&mut self, severity: Severity, file: &str, message: impl Into<String>) {
        self.out.push(Finding {
            severity,
            file: self.source.join(file),
            message: message.into(),
        });
    }

    fn error(&mut self, file: &str, message: impl Into<String>) {
        self.push(Severity::Error, file, message);
    }

    fn warn(&mut self, file: &str, message: impl Into<String>) {
        self.push(Severity::Warning, file, message);
    }

    fn text(&self, file: &str) -> Option<&'a str> {
        match file {
            CA_CERT => self.texts[0],
            CA_KEY => self.texts[1],
            ROOT_CERT => self.texts[2],
            _ => self.texts[3],
        }
    }

    fn certs(&mut self, file: &str) -> Option<Vec<Vec<u8>>> {
        match cert_ders(self.text(file)?) {
            Ok(ders) => Some(ders),
            Err(e) => {
                self.error(file, e);
                None
            }
        }
    }

    /// Checks one bundle; returns the roots' DERs for the cross-bundle comparison.
    fn bundle(&mut self) -> Option<Vec<Vec<u8>>> {
        let ca = self.certs(CA_CERT);
        let roots = self.certs(ROOT_CERT);
        let chain = self.certs(CERT_CHAIN);
        let key = self.text(CA_KEY).and_then(|text| {
            crate::load_private_key_pem(text)
                .map_err(|e| self.error(CA_KEY, e.to_string()))
                .ok()
        });

        let ca = ca.map(|mut v| {
            if v.len() > 1 {
                self.warn(
                    CA_CERT,
                    format!("holds {} certificates; only the first is used", v.len()),
                );
            }
            v.swap_remove(0)
        });
        // cert_ders already parsed these successfully.
        let ca_x = ca.as_deref().and_then(|d| parse_x509(d).ok());
        if let Some(roots) = &roots {
            for (i, der) in roots.iter().enumerate() {
                if let Ok(root_x) = parse_x509(der) {
                    self.root_checks(&root_x, (roots.len() > 1).then_some(i + 1));
                }
            }
        }
        if let Some(ca_x) = &ca_x {
            self.ca_checks(ca_x);
            if let Some(key) = &key
                && ca_x.public_key().subject_public_key.data.as_ref() != key.public_key_raw()
            {
                self.error(
                    CA_KEY,
                    format!(
                        "does not match the public key of {CA_CERT} (it belongs to another certificate)"
                    ),
                );
            }
        }
        if let (Some(ca), Some(roots)) = (&ca, &roots) {
            self.chain(ca, chain.as_deref(), roots);
        }
        roots
    }

    /// `nth`: the root's position (1-based) when `root-cert.pem` holds several.
    fn root_checks(&mut self, root: &X509Certificate<'_>, nth: Option<usize>) {
        let which = nth.map(|n| format!("certificate {n} ")).unwrap_or_default();
        if !root.is_ca() {
            self.error(
                ROOT_CERT,
                format!("{which}is not a CA certificate (basicConstraints CA:TRUE missing)"),
            );
        }
        match root.key_usage() {
            Ok(Some(ku)) if !ku.value.key_cert_sign() => self.error(
                ROOT_CERT,
                format!(
                    "{which}has a keyUsage without keyCertSign: the CAs it signs are rejected \
                     (openssl: key usage does not include certificate signing)"
                ),
            ),
            Err(e) => self.error(ROOT_CERT, format!("{which}has an invalid keyUsage: {e}")),
            _ => {}
        }
        if !chain::self_signed(root) {
            self.warn(
                ROOT_CERT,
                format!(
                    "{which}is not self-signed (issuer \"{}\"); make sure every cluster trusts the same anchor",
                    root.issuer()
                ),
            );
        }
        self.validity(ROOT_CERT, root);
    }

    fn ca_checks(&mut self, ca: &X509Certificate<'_>) {
        match ca.basic_constraints() {
            Ok(Some(bc)) if bc.value.ca => {
                if !bc.critical {
                    self.warn(CA_CERT, "basicConstraints is not marked critical");
                }
                match bc.value.path_len_constraint {
                    Some(0) => {}
                    Some(n) => self.warn(
                        CA_CERT,
                        format!("pathlen is {n}; an intermediate that signs workloads should have pathlen:0"),
                    ),
                    None => self.warn(
                        CA_CERT,
                        "has no pathlen constraint; an intermediate that signs workloads should have pathlen:0",
                    ),
                }
            }
            Ok(_) => self.error(
                CA_CERT,
                "is not a CA certificate (basicConstraints CA:TRUE missing); istiod refuses to sign with it",
            ),
            Err(e) => self.error(CA_CERT, format!("invalid basicConstraints: {e}")),
        }
        match ca.key_usage() {
            Ok(Some(ku)) => {
                if !ku.value.key_cert_sign() {
                    self.error(
                        CA_CERT,
                        "keyUsage lacks keyCertSign: certificates it signs will be rejected",
                    );
                }
                if !ku.value.crl_sign() {
                    self.warn(CA_CERT, "keyUsage lacks cRLSign");
                }
                if !ku.critical {
                    self.warn(CA_CERT, "keyUsage is not marked critical");
                }
            }
            Ok(None) => self.warn(
                CA_CERT,
                "has no keyUsage extension (expected keyCertSign, cRLSign)",
            ),
            Err(e) => self.error(CA_CERT, format!("invalid keyUsage: {e}")),
        }
        self.validity(CA_CERT, ca);
    }

    fn validity(&mut self, file: &str, cert: &X509Certificate<'_>) {
        if !self.dates {
            return;
        }
        let nb = cert.validity().not_before.to_datetime();
        let na = cert.validity().not_after.to_datetime();
        if self.now < nb {
            self.error(file, format!("is not valid yet (notBefore {nb})"));
        } else if self.now > na {
            self.error(file, format!("expired on {na}"));
        } else if na - self.now < self.opts.warn_within {
            let days = (na - self.now).whole_days();
            self.warn(file, format!("expires on {na} (in {days} day(s))"));
        }
    }
}
