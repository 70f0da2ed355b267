//! The gateway's workload identity on 15008 and who may connect to it.
//!
//! It comes from one of two sources:
//! - files in Istio's file-mounted layout (`FILE_MOUNTED_CERTS`, as `meshctl certs workload`
//!   writes them): `cert-chain.pem` (leaf first), `key.pem`, `root-cert.pem` (one or more
//!   roots, so a root can rotate), reloaded when they change;
//! - istiod ([`super::ca`]): a key made in memory and the chain istiod signed for it, checked
//!   against the `--ca-root` roots before use ([`Identity::install`]).
//!
//! The rustls config is built once; the certificate and the client verifier behind it are
//! swapped through `ArcSwap` (one swap path for both sources), so new handshakes use the new
//! identity while open connections stay up. Until istiod's first certificate arrives there is
//! none: handshakes are refused (no certificate to offer) and readiness says why.
//!
//! A client must present a certificate chaining to a root and carrying a SPIFFE URI SAN in an
//! allowed trust domain: Istio's gateway matches the prefix `spiffe://<td>/`, so any identity
//! of the mesh is accepted (no authorization policy on this hop).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use tokio_util::sync::CancellationToken;

pub const CERT_CHAIN: &str = "cert-chain.pem";
pub const KEY: &str = "key.pem";
pub const ROOT_CERT: &str = "root-cert.pem";

/// The largest certificate or key file read: far above a chain, a key or a bundle of roots.
pub const MAX_CERT_FILE_BYTES: u64 = 4 << 20;

/// ALPN on 15008: HTTP/2 only, as ztunnel offers it.
pub const ALPN_H2: &[u8] = b"h2";

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "reading {path}: {source} (give --hbone-certs a directory holding {CERT_CHAIN}, {KEY} and {ROOT_CERT})"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Invalid { path: PathBuf, msg: String },
    /// A chain from istiod that cannot be served; the current identity stays.
    #[error("the certificate from istiod is not usable: {0}")]
    Issued(String),
}

/// What is served: from one read of the three files, or from one answer of istiod.
#[derive(Clone)]
struct Loaded {
    key: Arc<CertifiedKey>,
    verifier: Arc<dyn ClientCertVerifier>,
    /// The gateway's own SPIFFE id, for logs.
    spiffe_id: Option<String>,
    /// The files' contents, to notice a change (empty for istiod's certificates).
    contents: [Vec<u8>; 3],
    /// The leaf's notAfter, Unix seconds (read once, for the expiry gauge).
    not_after: Option<i64>,
}

/// Where the identity comes from.
enum Source {
    /// `--hbone-certs DIR`.
    Files(PathBuf),
    /// istiod: the client verifier of the `--ca-root` roots, which also check istiod's chains;
    /// reread when the file changes (the kubelet updates the mounted `istio-ca-root-cert`
    /// ConfigMap during a root rotation, when it holds both roots and then the new one).
    Istiod {
        roots: ArcSwap<Roots>,
        roots_path: PathBuf,
        /// Why there is no certificate yet (or the last renewal error), for readiness.
        waiting: Mutex<String>,
    },
}

/// The `--ca-root` roots as last read, and their client verifier.
struct Roots {
    pem: Vec<u8>,
    verifier: Arc<dyn ClientCertVerifier>,
}

/// The gateway's identity and its client policy, reloadable.
pub struct Identity {
    source: Source,
    trust_domains: Vec<String>,
    provider: Arc<CryptoProvider>,
    current: ArcSwapOption<Loaded>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.source {
            Source::Files(dir) => format!("files in {}", dir.display()),
            Source::Istiod { .. } => "istiod".into(),
        };
        f.debug_struct("Identity")
            .field("source", &source)
            .field("trust_domains", &self.trust_domains)
            .field("spiffe_id", &self.spiffe_id())
            .finish()
    }
}

/// The crypto ztunnel offers: TLS 1.3 AES-GCM suites; X25519, P-256, P-384 and the
/// X25519+ML-KEM-768 hybrid.
pub fn provider() -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::{self as aws, cipher_suite, kx_group};
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            cipher_suite::TLS13_AES_256_GCM_SHA384,
            cipher_suite::TLS13_AES_128_GCM_SHA256,
        ],
        kx_groups: vec![
            kx_group::X25519MLKEM768,
            kx_group::X25519,
            kx_group::SECP256R1,
            kx_group::SECP384R1,
        ],
        ..aws::default_provider()
    })
}

impl Identity {
    /// Loads the files in `dir`; errors name the file and the fix.
    pub fn load(dir: &Path, trust_domains: Vec<String>) -> Result<Arc<Identity>, IdentityError> {
        let provider = provider();
        let loaded = load_files(dir, &provider)?;
        Ok(Arc::new(Identity {
            source: Source::Files(dir.to_path_buf()),
            trust_domains,
            provider,
            current: ArcSwapOption::from_pointee(loaded),
        }))
    }

    /// An identity that istiod will fill: no certificate yet. `roots_pem` (read from
    /// `roots_path`, the `--ca-root` file) holds the mesh root(s): they check istiod's chains
    /// and the clients on 15008.
    pub fn from_istiod(
        roots_path: &Path,
        roots_pem: &[u8],
        trust_domains: Vec<String>,
    ) -> Result<Arc<Identity>, IdentityError> {
        let provider = provider();
        let verifier = verifier_of(roots_path, roots_pem, &provider)?;
        Ok(Arc::new(Identity {
            source: Source::Istiod {
                roots: ArcSwap::from_pointee(Roots {
                    pem: roots_pem.to_vec(),
                    verifier,
                }),
                roots_path: roots_path.to_path_buf(),
                waiting: Mutex::new("no certificate requested yet".into()),
            },
            trust_domains,
            provider,
            current: ArcSwapOption::empty(),
        }))
    }

    pub fn spiffe_id(&self) -> Option<String> {
        self.current
            .load()
            .as_ref()
            .and_then(|l| l.spiffe_id.clone())
    }

    /// `Ok` once a certificate is served; otherwise why not (for the readiness endpoint). A
    /// certificate from istiod that expired (istiod unreachable for longer than its
    /// lifetime) is not one: every handshake would fail.
    pub fn readiness(&self) -> Result<(), String> {
        if let Some(l) = self.current.load().as_ref() {
            let now = i64::try_from(UnixTime::now().as_secs()).unwrap_or(i64::MAX);
            return match (&self.source, l.not_after) {
                (Source::Istiod { waiting, .. }, Some(t)) if t < now => Err(format!(
                    "the HBONE certificate from istiod expired and none replaced it: {}",
                    waiting.lock().map(|w| w.clone()).unwrap_or_default()
                )),
                _ => Ok(()),
            };
        }
        match &self.source {
            Source::Istiod { waiting, .. } => Err(format!(
                "no HBONE certificate from istiod yet: {}",
                waiting.lock().map(|w| w.clone()).unwrap_or_default()
            )),
            Source::Files(_) => Err("no HBONE certificate loaded".into()),
        }
    }

    /// Records why istiod's certificate is not there yet (shown by readiness until the first
    /// certificate; later failures leave the current certificate in use).
    pub fn set_waiting(&self, why: String) {
        if let Source::Istiod { waiting, .. } = &self.source
            && let Ok(mut w) = waiting.lock()
        {
            *w = why;
        }
    }

    /// Serves `chain` (leaf first, as istiod answers) with `key`, after checking that the
    /// chain leads to a `--ca-root` root, is valid now, names a SPIFFE id, and that `key` is
    /// the leaf's. On any failure the current identity stays. Only for the istiod source.
    pub fn install(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), IdentityError> {
        let Source::Istiod { roots, .. } = &self.source else {
            return Err(IdentityError::Issued(
                "this identity is read from --hbone-certs files".into(),
            ));
        };
        let roots = roots.load().verifier.clone();
        let issued = |m: String| IdentityError::Issued(m);
        let Some((leaf, rest)) = chain.split_first() else {
            return Err(issued("an empty certificate chain".into()));
        };
        roots
            .verify_client_cert(leaf, rest, UnixTime::now())
            .map_err(|e| issued(format!("it does not chain to a --ca-root root: {e}")))?;
        let spiffe_id = spiffe_ids(leaf).into_iter().next();
        if spiffe_id.is_none() {
            return Err(issued("the leaf has no SPIFFE URI SAN".into()));
        }
        let not_after = not_after_of(leaf);
        // Served without the root(s) istiod appends, as ztunnel serves its chain: the peer
        // has them, and istiod may send several.
        let mut served = chain;
        while served.len() > 1 && served.last().is_some_and(self_signed) {
            served.pop();
        }
        let key = CertifiedKey::from_der(served, key, &self.provider)
            .map_err(|e| issued(format!("the leaf is not for our key: {e}")))?;
        self.current.store(Some(Arc::new(Loaded {
            key: Arc::new(key),
            verifier: roots.clone(),
            spiffe_id,
            contents: Default::default(),
            not_after,
        })));
        Ok(())
    }

    /// TLS 1.3 only, ALPN `h2`, client certificate required; no session resumption (ztunnel
    /// uses none).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<ServerConfig>, rustls::Error> {
        let mut cfg = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(Verifier(self.clone())))
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
        cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        cfg.send_tls13_tickets = 0;
        Ok(Arc::new(cfg))
    }

    /// Rereads the files (istiod: the `--ca-root` file); swaps them in when they changed and
    /// are valid. Returns whether a new identity (or new roots) is now in use.
    pub fn reload(&self) -> Result<bool, IdentityError> {
        let dir = match &self.source {
            Source::Files(dir) => dir,
            Source::Istiod {
                roots, roots_path, ..
            } => return self.reload_roots(roots, roots_path),
        };
        let contents = read_all(dir)?;
        if self
            .current
            .load()
            .as_ref()
            .is_some_and(|l| l.contents == contents)
        {
            return Ok(false);
        }
        let loaded = parse(dir, contents, &self.provider)?;
        self.current.store(Some(Arc::new(loaded)));
        Ok(true)
    }

    /// The `--ca-root` file read again; new roots check istiod's next chain and the clients on
    /// 15008 from now on (the certificate served stays).
    fn reload_roots(&self, roots: &ArcSwap<Roots>, path: &Path) -> Result<bool, IdentityError> {
        let pem = read_bounded(path)?;
        if roots.load().pem == pem {
            return Ok(false);
        }
        let verifier = verifier_of(path, &pem, &self.provider)?;
        roots.store(Arc::new(Roots {
            pem,
            verifier: verifier.clone(),
        }));
        if let Some(l) = self.current.load_full() {
            self.current.store(Some(Arc::new(Loaded {
                verifier,
                ..Loaded::clone(&l)
            })));
        }
        Ok(true)
    }

    /// Polls the files every `every` until `stop`, counting each refused reread (a bad,
    /// expired or unreadable file; the previous certificate stays) in `failures`, and keeping
    /// `expiry` at the served leaf's notAfter (Unix seconds), with a warning once it has
    /// passed: files nobody renews expire while the gateway looks healthy. Polling, not
    /// inotify: Kubernetes swaps mounted secrets through a `..data` symlink, which file events
    /// report unreliably.
    pub async fn watch(
        self: Arc<Self>,
        every: Duration,
        stop: CancellationToken,
        failures: Counter,
        expiry: Gauge,
    ) {
        let mut warned_expired = false;
        // The last reload error logged: a bad file is read again at every poll, and logging
        // each would flood the log at a short `--hbone-cert-poll`. The counter counts each.
        let mut logged: Option<String> = None;
        loop {
            let not_after = self.leaf_not_after();
            expiry.set(not_after.unwrap_or(0));
            let now = i64::try_from(UnixTime::now().as_secs()).unwrap_or(i64::MAX);
            let expired = not_after.is_some_and(|t| t < now);
            if expired && !warned_expired {
                tracing::warn!(source = ?self, "the HBONE certificate served has expired: every handshake will fail until the files are renewed");
            }
            warned_expired = expired;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self.reload() {
                Ok(true) => {
                    logged = None;
                    tracing::info!(source = ?self, "HBONE certificates reloaded")
                }
                Ok(false) => logged = None,
                Err(e) => {
                    failures.inc();
                    let text = e.to_string();
                    if logged.as_ref() != Some(&text) {
                        tracing::warn!(error = %text, "HBONE certificates not reloaded; still serving the previous ones (logged again when the error changes)");
                        logged = Some(text);
                    }
                }
            }
        }
    }

    /// The served leaf certificate's notAfter, Unix seconds.
    pub fn leaf_not_after(&self) -> Option<i64> {
        self.current.load().as_ref()?.not_after
    }

    /// The current client verifier; none before the first certificate.
    fn verifier(&self) -> Result<Arc<dyn ClientCertVerifier>, rustls::Error> {
        self.current
            .load()
            .as_ref()
            .map(|l| l.verifier.clone())
            .ok_or_else(|| rustls::Error::General("no HBONE certificate yet".into()))
    }

    /// Whether `cert` names a SPIFFE identity in an allowed trust domain.
    fn trust_domain_allowed(&self, cert: &CertificateDer<'_>) -> bool {
        self.client_id(cert).is_some()
    }

    /// The client's identity: the first SPIFFE id of `cert` in an allowed trust domain (the
    /// one the handshake accepted), not merely its first, which may be in another domain.
    pub fn client_id(&self, cert: &CertificateDer<'_>) -> Option<String> {
        spiffe_ids(cert).into_iter().find(|id| {
            self.trust_domains.iter().any(|td| {
                id.strip_prefix("spiffe://")
                    .and_then(|rest| rest.strip_prefix(td.as_str()))
                    .is_some_and(|rest| rest.starts_with('/'))
            })
        })
    }
}

/// Reads the three files; each must be a regular file (or a symlink to one, as in a mounted
/// Secret) of at most [`MAX_CERT_FILE_BYTES`]: the poll runs on the runtime, and a FIFO or a
/// device must neither block it nor fill the memory.
fn read_all(dir: &Path) -> Result<[Vec<u8>; 3], IdentityError> {
    let read = |f: &str| read_bounded(&dir.join(f));
    Ok([read(CERT_CHAIN)?, read(KEY)?, read(ROOT_CERT)?])
}

/// One certificate or key file, as [`read_all`] reads each.
fn read_bounded(path: &Path) -> Result<Vec<u8>, IdentityError> {
    use crate::bounded_read::{ReadRefused, read_regular};
    let path = path.to_path_buf();
    read_regular(&path, MAX_CERT_FILE_BYTES).map_err(|e| match e {
        ReadRefused::Io(source) => IdentityError::Read { path, source },
        ReadRefused::NotRegular(what) => IdentityError::Invalid {
            path,
            msg: format!("it is {what}, not a regular file"),
        },
        ReadRefused::TooLarge => IdentityError::Invalid {
            path,
            msg: format!(
                "larger than {} MiB: not a certificate or key file",
                MAX_CERT_FILE_BYTES >> 20
            ),
        },
    })
}

fn load_files(dir: &Path, provider: &Arc<CryptoProvider>) -> Result<Loaded, IdentityError> {
    parse(dir, read_all(dir)?, provider)
}

fn parse(
    dir: &Path,
    contents: [Vec<u8>; 3],
    provider: &Arc<CryptoProvider>,
) -> Result<Loaded, IdentityError> {
    let invalid = |f: &str, msg: String| IdentityError::Invalid {
        path: dir.join(f),
        msg,
    };
    let chain = CertificateDer::pem_slice_iter(&contents[0])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(CERT_CHAIN, format!("not PEM certificates: {e}")))?;
    if chain.is_empty() {
        return Err(invalid(CERT_CHAIN, "no certificate found".into()));
    }
    let not_after =
        check_validity(&chain, UnixTime::now()).map_err(|msg| invalid(CERT_CHAIN, msg))?;
    let key = PrivateKeyDer::from_pem_slice(&contents[1])
        // Never echo key material: the error names the file only.
        .map_err(|_| invalid(KEY, "no PEM private key found".into()))?;
    let verifier = verifier_of(&dir.join(ROOT_CERT), &contents[2], provider)?;
    let spiffe_id = spiffe_ids(&chain[0]).into_iter().next();
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        invalid(
            KEY,
            format!("does not match the leaf of {CERT_CHAIN} or is unusable: {e}"),
        )
    })?;
    Ok(Loaded {
        key: Arc::new(key),
        verifier,
        spiffe_id,
        contents,
        not_after: Some(not_after),
    })
}

/// A certificate's notAfter, Unix seconds; `None` if it does not parse.
fn not_after_of(der: &CertificateDer<'_>) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// Refuses a chain to serve with a certificate outside its validity at `now`: ztunnel would
/// refuse every handshake with it, and the gateway would look healthy meanwhile. The message
/// names the certificate, its date and the fix. Returns the leaf's notAfter (Unix seconds).
fn check_validity(chain: &[CertificateDer<'_>], now: UnixTime) -> Result<i64, String> {
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let mut leaf_not_after = 0;
    for (i, der) in chain.iter().enumerate() {
        let which = if i == 0 {
            "the leaf certificate".to_string()
        } else {
            format!("certificate {} of the chain (an intermediate CA)", i + 1)
        };
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| format!("{which} is not a valid X.509 certificate: {e}"))?;
        let validity = cert.validity();
        let renew = "issue a new one (`meshctl certs workload --ca DIR -n NAMESPACE -s \
                     SERVICE_ACCOUNT --out DIR`, into the --hbone-certs directory)";
        if validity.not_after.timestamp() < now {
            return Err(format!(
                "{which} expired: notAfter {}; {renew}",
                validity.not_after
            ));
        }
        if validity.not_before.timestamp() > now {
            return Err(format!(
                "{which} is not valid yet: notBefore {} is in the future (check this host's \
                 clock); {renew}",
                validity.not_before
            ));
        }
        if i == 0 {
            leaf_not_after = validity.not_after.timestamp();
        }
    }
    Ok(leaf_not_after)
}

/// The client verifier of the roots in `pem` (one or more certificates), read from `path`.
fn verifier_of(
    path: &Path,
    pem: &[u8],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, IdentityError> {
    let invalid = |msg: String| IdentityError::Invalid {
        path: path.to_path_buf(),
        msg,
    };
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem) {
        let c = c.map_err(|e| invalid(format!("not PEM certificates: {e}")))?;
        roots
            .add(c)
            .map_err(|e| invalid(format!("not a usable root: {e}")))?;
    }
    if roots.is_empty() {
        return Err(invalid("no certificate found".into()));
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| invalid(e.to_string()))
}

/// Whether `cert` is a root (its subject its issuer); an unparsable one is not.
fn self_signed(cert: &CertificateDer<'_>) -> bool {
    x509_parser::parse_x509_certificate(cert.as_ref())
        .is_ok_and(|(_, x)| x.subject().as_raw() == x.issuer().as_raw())
}

/// SPIFFE URIs in a certificate's subjectAltName; none for an unparsable certificate.
pub fn spiffe_ids(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, x)) = x509_parser::parse_x509_certificate(cert.as_ref()) else {
        return vec![];
    };
    let Ok(Some(san)) = x.subject_alternative_name() else {
        return vec![];
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) if u.starts_with("spiffe://") => {
                Some(u.to_string())
            }
            _ => None,
        })
        .collect()
}

#[derive(Debug)]
struct Resolver(Arc<Identity>);

impl ResolvesServerCert for Resolver {
    /// `None` before istiod's first certificate: rustls then refuses the handshake.
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current.load().as_ref().map(|l| l.key.clone())
    }
}

/// Chain check by the current roots (webpki), then the trust-domain check. A trust-domain
/// refusal is `ApplicationVerificationFailure`, which webpki never returns, so the listener
/// can count the two apart.
#[derive(Debug)]
struct Verifier(Arc<Identity>);

impl ClientCertVerifier for Verifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: ztunnel sends its one certificate regardless.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .verifier()?
            .verify_client_cert(end_entity, intermediates, now)?;
        if !self.0.trust_domain_allowed(end_entity) {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .verifier()?
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .verifier()?
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Why a handshake on 15008 failed, from the error tokio-rustls returned.
pub fn classify_handshake_error(e: &std::io::Error) -> HandshakeFailure {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(
            CertificateError::ApplicationVerificationFailure,
        )) => HandshakeFailure::TrustDomain,
        Some(rustls::Error::NoCertificatesPresented | rustls::Error::InvalidCertificate(_)) => {
            HandshakeFailure::BadClientCert
        }
        _ => HandshakeFailure::Other,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    BadClientCert,
    TrustDomain,
    /// Anything else: a protocol error, no common ALPN or version, the client left.
    Other,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, w: &pki::WorkloadCert) {
        std::fs::write(dir.join(CERT_CHAIN), &w.chain_pem).unwrap();
        std::fs::write(dir.join(KEY), &w.key_pem).unwrap();
        std::fs::write(dir.join(ROOT_CERT), &w.root_pem).unwrap();
    }

    fn workload(td: &str) -> pki::WorkloadCert {
        let root = pki::RootCa::generate(&pki::RootOptions::default()).unwrap();
        let ca = root
            .issue_intermediate(&pki::IntermediateOptions::new("east"))
            .unwrap();
        let mut o = pki::WorkloadOptions::new("istio-system", "istio-eastwestgateway");
        o.trust_domain = td.into();
        ca.issue_workload(&o).unwrap()
    }

    #[test]
    fn loads_reloads_and_keeps_the_old_identity_on_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = workload("cluster.local");
        write(dir.path(), &a);
        let id = Identity::load(dir.path(), vec!["cluster.local".into()]).unwrap();
        assert_eq!(id.spiffe_id().as_deref(), Some(a.spiffe_id.as_str()));
        id.server_config().unwrap();
        assert!(!id.reload().unwrap(), "unchanged files are not a reload");
        let b = workload("other.td");
        write(dir.path(), &b);
        assert!(id.reload().unwrap());
        assert_eq!(id.spiffe_id().as_deref(), Some(b.spiffe_id.as_str()));
        // A key that does not match the chain is refused; the previous identity stays.
        std::fs::write(dir.path().join(KEY), &a.key_pem).unwrap();
        let e = id.reload().unwrap_err().to_string();
        assert!(e.contains("key.pem") && e.contains("does not match"), "{e}");
        assert!(!e.contains("PRIVATE KEY"), "{e}");
        assert_eq!(id.spiffe_id().as_deref(), Some(b.spiffe_id.as_str()));
    }

    #[test]
    fn missing_files_name_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let e = Identity::load(dir.path(), vec![]).unwrap_err().to_string();
        assert!(
            e.contains("cert-chain.pem") && e.contains("--hbone-certs"),
            "{e}"
        );
    }

    #[test]
    fn trust_domain_is_a_whole_path_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let w = workload("cluster.local");
        write(dir.path(), &w);
        let leaf = CertificateDer::from_pem_slice(w.cert_pem.as_bytes()).unwrap();
        let allowed = |tds: &[&str]| {
            let id =
                Identity::load(dir.path(), tds.iter().map(|s| s.to_string()).collect()).unwrap();
            id.trust_domain_allowed(&leaf)
        };
        assert!(allowed(&["cluster.local"]));
        assert!(allowed(&["other", "cluster.local"]));
        assert!(
            !allowed(&["cluster"]),
            "a prefix of the domain is not the domain"
        );
        assert!(!allowed(&["cluster.local.evil"]));
        assert!(!allowed(&[]));
    }

    /// A certificate with SANs in two trust domains is accepted by the allowed one (as
    /// ztunnel's and Envoy's matchers do), and that one is the client's identity.
    #[test]
    fn the_client_id_is_the_allowed_san() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &workload("cluster.local"));
        let id = Identity::load(dir.path(), vec!["cluster.local".into()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        let evil = "spiffe://evil.td/ns/x/sa/y";
        let ours = "spiffe://cluster.local/ns/default/sa/webapp";
        p.subject_alt_names = vec![
            rcgen::SanType::URI(evil.try_into().unwrap()),
            rcgen::SanType::URI(ours.try_into().unwrap()),
        ];
        let cert = p.self_signed(&key).unwrap();
        let der = CertificateDer::from(cert.der().to_vec());
        assert_eq!(spiffe_ids(&der)[0], evil);
        assert_eq!(id.client_id(&der).as_deref(), Some(ours));
        let other = Identity::load(dir.path(), vec!["other.td".into()]).unwrap();
        assert_eq!(other.client_id(&der), None);
    }

    /// `w`'s chain as istiod answers it: leaf, intermediate, root.
    fn pem_chain(w: &pki::WorkloadCert) -> Vec<CertificateDer<'static>> {
        let mut c: Vec<_> = CertificateDer::pem_slice_iter(w.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        c.push(CertificateDer::from_pem_slice(w.root_pem.as_bytes()).unwrap());
        c
    }

    fn key(w: &pki::WorkloadCert) -> PrivateKeyDer<'static> {
        PrivateKeyDer::from_pem_slice(w.key_pem.as_bytes()).unwrap()
    }

    /// istiod's chain is served only if it leads to a `--ca-root` root and is for our key;
    /// until then there is no certificate and readiness says why.
    #[test]
    fn istiod_chain_is_checked_before_use() {
        let ours = workload("cluster.local");
        let other = workload("cluster.local");
        let id = Identity::from_istiod(
            Path::new("/r.pem"),
            ours.root_pem.as_bytes(),
            vec!["cluster.local".into()],
        )
        .unwrap();
        id.set_waiting("istiod unreachable".into());
        let e = id.readiness().unwrap_err();
        assert!(e.contains("istiod unreachable"), "{e}");
        assert!(id.server_config().is_ok());

        let e = id
            .install(pem_chain(&other), key(&other))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--ca-root"), "{e}");
        let e = id
            .install(pem_chain(&ours), key(&other))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not for our key"), "{e}");
        assert!(!e.contains("PRIVATE KEY"), "{e}");
        assert!(id.readiness().is_err() && id.spiffe_id().is_none());
        id.install(pem_chain(&ours), key(&ours)).unwrap();
        assert!(id.readiness().is_ok());
        // Served as leaf and intermediate: the root istiod appends is left out.
        let served = id.current.load().as_ref().unwrap().key.cert.len();
        assert_eq!(served, pem_chain(&ours).len() - 1);
        assert_eq!(id.spiffe_id().as_deref(), Some(ours.spiffe_id.as_str()));
        // A file identity cannot take istiod's chain.
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &ours);
        let files = Identity::load(dir.path(), vec![]).unwrap();
        assert!(files.install(pem_chain(&ours), key(&ours)).is_err());
    }

    /// During a root rotation the kubelet updates the mounted `--ca-root` file (first both
    /// roots, then the new one): reread, the new root's chains from istiod are taken and its
    /// clients on 15008 accepted; before, the file was read once, so istiod's chains from the
    /// new root were refused until a restart (found by an audit session).
    #[test]
    fn a_changed_ca_root_file_is_followed() {
        let (old, new) = (workload("cluster.local"), workload("cluster.local"));
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root-cert.pem");
        std::fs::write(&root, &old.root_pem).unwrap();
        let id =
            Identity::from_istiod(&root, old.root_pem.as_bytes(), vec!["cluster.local".into()])
                .unwrap();
        id.install(pem_chain(&old), key(&old)).unwrap();
        let leaf =
            |w: &pki::WorkloadCert| CertificateDer::from_pem_slice(w.cert_pem.as_bytes()).unwrap();
        let accepts = |w: &pki::WorkloadCert| {
            let chain: Vec<CertificateDer> = CertificateDer::pem_slice_iter(w.chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .unwrap();
            id.verifier()
                .unwrap()
                .verify_client_cert(&leaf(w), &chain[1..], UnixTime::now())
                .is_ok()
        };
        assert!(id.install(pem_chain(&new), key(&new)).is_err());
        assert!(!accepts(&new));
        assert!(!id.reload().unwrap(), "an unchanged file is no reload");
        // Both roots, as istiod's ConfigMap during the rotation.
        std::fs::write(&root, format!("{}{}", old.root_pem, new.root_pem)).unwrap();
        assert!(id.reload().unwrap());
        assert!(accepts(&new) && accepts(&old), "clients of both roots");
        id.install(pem_chain(&new), key(&new)).unwrap();
        assert_eq!(id.spiffe_id().as_deref(), Some(new.spiffe_id.as_str()));
        // A broken file keeps the roots in use.
        std::fs::write(&root, "not PEM").unwrap();
        assert!(id.reload().is_err());
        assert!(accepts(&new));
    }

    /// A workload certificate valid from `nb` to `na` (days from now), under a CA that is
    /// valid now.
    fn workload_dated(nb: i64, na: i64) -> pki::WorkloadCert {
        let now = UnixTime::now().as_secs() as i64;
        let day = |d: i64| {
            let secs = u64::try_from(now + d * 86_400).unwrap();
            rcgen::date_time_ymd(1970, 1, 1) + Duration::from_secs(secs)
        };
        let root = pki::RootCa::generate(&pki::RootOptions {
            not_before: Some(day(-2000)),
            ..Default::default()
        })
        .unwrap();
        let mut io = pki::IntermediateOptions::new("east");
        io.not_before = Some(day(-1000));
        let ca = root.issue_intermediate(&io).unwrap();
        let mut o = pki::WorkloadOptions::new("istio-system", "istio-eastwestgateway");
        o.not_before = Some(day(nb));
        o.not_after = Some(day(na));
        ca.issue_workload(&o).unwrap()
    }

    /// An expired or not yet valid certificate is refused at start with the file, the date and
    /// the fix; on reload it is refused and the previous identity stays.
    #[test]
    fn a_certificate_outside_its_validity_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let expired = workload_dated(-400, -365);
        write(dir.path(), &expired);
        let e = Identity::load(dir.path(), vec![]).unwrap_err().to_string();
        assert!(
            e.contains("cert-chain.pem")
                && e.contains("the leaf certificate expired: notAfter ")
                && e.contains("meshctl certs workload"),
            "{e}"
        );
        write(dir.path(), &workload_dated(30, 60));
        let e = Identity::load(dir.path(), vec![]).unwrap_err().to_string();
        assert!(e.contains("not valid yet: notBefore "), "{e}");

        let good = workload("cluster.local");
        write(dir.path(), &good);
        let id = Identity::load(dir.path(), vec![]).unwrap();
        write(dir.path(), &workload_dated(-400, -365));
        let e = id.reload().unwrap_err().to_string();
        assert!(e.contains("expired"), "{e}");
        assert_eq!(id.spiffe_id().as_deref(), Some(good.spiffe_id.as_str()));
        assert!(id.readiness().is_ok());
    }

    /// A certificate file that is a FIFO or a device is refused without blocking the poll.
    #[test]
    fn only_regular_files_are_read() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &workload("cluster.local"));
        let id = Identity::load(dir.path(), vec![]).unwrap();
        std::fs::remove_file(dir.path().join(KEY)).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(dir.path().join(KEY))
            .status()
            .unwrap();
        assert!(made.success());
        let e = id.reload().unwrap_err().to_string();
        assert!(
            e.contains("key.pem: it is a FIFO, not a regular file"),
            "{e}"
        );
        std::fs::remove_file(dir.path().join(KEY)).unwrap();
        write(dir.path(), &workload("cluster.local"));
        std::fs::remove_file(dir.path().join(ROOT_CERT)).unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.path().join(ROOT_CERT)).unwrap();
        let e = Identity::load(dir.path(), vec![]).unwrap_err().to_string();
        assert!(e.contains("root-cert.pem: it is a character device"), "{e}");
    }

    /// The poll counts each refused reread and keeps serving the previous certificate.
    #[tokio::test]
    async fn the_poll_counts_refused_rereads() {
        let dir = tempfile::tempdir().unwrap();
        let good = workload("cluster.local");
        write(dir.path(), &good);
        let id = Identity::load(dir.path(), vec![]).unwrap();
        write(dir.path(), &workload_dated(-400, -365));
        let failures = Counter::default();
        let expiry = Gauge::default();
        let stop = CancellationToken::new();
        let poll = tokio::spawn(id.clone().watch(
            Duration::from_millis(20),
            stop.clone(),
            failures.clone(),
            expiry.clone(),
        ));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while failures.get() < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no refused reread counted"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        poll.await.unwrap();
        assert_eq!(id.spiffe_id().as_deref(), Some(good.spiffe_id.as_str()));
        // The gauge shows the served leaf's notAfter.
        let not_after = x509_parser::pem::parse_x509_pem(good.chain_pem.as_bytes())
            .unwrap()
            .1
            .parse_x509()
            .unwrap()
            .validity()
            .not_after
            .timestamp();
        assert_eq!(expiry.get(), not_after);
        assert_eq!(id.leaf_not_after(), Some(not_after));
    }
}
