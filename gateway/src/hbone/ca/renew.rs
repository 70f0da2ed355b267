//! Keeping a certificate from istiod: the first request at start, then a new key and CSR at
//! half of each certificate's lifetime (as ztunnel's `SecretManager` and istio-agent do).
//! A failed request is retried with capped exponential back-off while the current
//! certificate stays in use; until the first one arrives, readiness reports the last error.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;

use super::client::{CaClient, CaError};
use super::csr;
use crate::config::CaConfig;
use crate::hbone::identity::{Identity, IdentityError};
use crate::hbone::metrics::HboneMetrics;

#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("{0}")]
    Key(String),
}

/// Requests and renews the identity's certificate until stopped.
pub struct Renewer {
    pub client: CaClient,
    /// What the client was built from, to build it again when `--ca-root` changes (istiod's
    /// own serving certificate moves to the new root during a rotation).
    pub cfg: CaConfig,
    pub roots_pem: Vec<u8>,
    pub identity: Arc<Identity>,
    /// The trust domain of the CSR's SAN (the first `--trust-domain`).
    pub trust_domain: String,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub metrics: HboneMetrics,
}

/// When to renew a certificate, counted from now: at half its lifetime. Past that point
/// (a backdated notBefore, a clock jump) at half of what is left, so a short-lived
/// certificate cannot make the renewal spin; once expired, at once.
pub fn renew_delay(not_before: SystemTime, not_after: SystemTime, now: SystemTime) -> Duration {
    let left = not_after.duration_since(now).unwrap_or_default();
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    match (not_before + lifetime / 2).duration_since(now) {
        Ok(d) if !d.is_zero() => d.min(left),
        _ => left / 2,
    }
}

/// The wait after `failures` (≥ 1) failed requests in a row: `initial`, doubled per further
/// failure, at most `max`.
pub fn backoff(initial: Duration, max: Duration, failures: u32) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(20);
    initial.saturating_mul(factor).min(max)
}

impl Renewer {
    pub fn new(
        (client, roots_pem): (CaClient, Vec<u8>),
        identity: Arc<Identity>,
        trust_domain: String,
        cfg: &CaConfig,
        metrics: HboneMetrics,
    ) -> Renewer {
        Renewer {
            client,
            cfg: cfg.clone(),
            roots_pem,
            identity,
            trust_domain,
            retry_initial: cfg.retry_initial,
            retry_max: cfg.retry_max,
            metrics,
        }
    }

    pub async fn run(mut self, stop: CancellationToken) {
        let mut failures = 0u32;
        loop {
            self.follow_roots();
            let wait = match self.renew_once().await {
                Ok((not_after, wait)) => {
                    failures = 0;
                    self.metrics.cert_renewals.inc();
                    let expiry = not_after
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_secs() as i64)
                        .unwrap_or_default();
                    self.metrics.cert_expiry_seconds.set(expiry);
                    tracing::info!(
                        spiffe_id = self.identity.spiffe_id().as_deref(),
                        renew_in = ?wait,
                        "HBONE certificate from istiod in use"
                    );
                    wait
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    self.metrics.cert_renewal_failures.inc();
                    let wait = backoff(self.retry_initial, self.retry_max, failures);
                    let serving = self.identity.readiness().is_ok();
                    tracing::warn!(
                        error = %e,
                        retry_in = ?wait,
                        serving_previous = serving,
                        "HBONE certificate request to istiod failed"
                    );
                    self.identity.set_waiting(e.to_string());
                    wait
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// A changed `--ca-root` file: a new channel to istiod trusting its roots (the old one
    /// stays on any error, said once per change).
    fn follow_roots(&mut self) {
        match std::fs::read(&self.cfg.root) {
            Ok(pem) if pem == self.roots_pem => {}
            Ok(read) => match CaClient::new(&self.cfg) {
                Ok((client, pem)) => {
                    tracing::info!(root = %self.cfg.root.display(), "--ca-root changed: istiod's TLS is checked against the new roots");
                    (self.client, self.roots_pem) = (client, pem);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "--ca-root changed but cannot be used; keeping the previous roots for istiod's TLS");
                    // Said once per change: the same unusable file is not tried again.
                    self.roots_pem = read;
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, root = %self.cfg.root.display(), "--ca-root cannot be read; keeping the previous roots")
            }
        }
    }

    /// One request: a new key and CSR, the call, the checks, the swap. Returns the new
    /// certificate's notAfter and when to renew it.
    async fn renew_once(&self) -> Result<(SystemTime, Duration), RenewError> {
        let token = self.client.token()?;
        let (ns, sa) = csr::token_service_account(&token).ok_or_else(|| CaError::NotAToken {
            path: self.client.token_path().to_path_buf(),
        })?;
        let spiffe_id = format!("spiffe://{}/ns/{ns}/sa/{sa}", self.trust_domain);
        let k = csr::generate(&spiffe_id).map_err(RenewError::Key)?;
        let chain = self.client.create_certificate(k.csr_pem, &token).await?;
        let (not_before, not_after) = validity(&chain[0])?;
        self.identity.install(chain, k.key)?;
        Ok((
            not_after,
            renew_delay(not_before, not_after, SystemTime::now()),
        ))
    }
}

fn validity(leaf: &CertificateDer<'_>) -> Result<(SystemTime, SystemTime), CaError> {
    let (_, x) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| CaError::Answer(format!("the leaf does not parse: {e}")))?;
    let t = |secs: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    Ok((
        t(x.validity().not_before.timestamp()),
        t(x.validity().not_after.timestamp()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_half_the_lifetime() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let h = Duration::from_secs(3600);
        assert_eq!(renew_delay(t0, t0 + 24 * h, t0), 12 * h);
        assert_eq!(renew_delay(t0, t0 + 24 * h, t0 + 2 * h), 10 * h);
        // past the half: half of what is left; expired or inverted: at once
        assert_eq!(renew_delay(t0, t0 + 4 * h, t0 + 3 * h), h / 2);
        assert_eq!(renew_delay(t0, t0 + 4 * h, t0 + 5 * h), Duration::ZERO);
        assert_eq!(renew_delay(t0 + h, t0, t0), Duration::ZERO);
        // istiod's shape: notBefore backdated 2 minutes, 24 h from now.
        let m = Duration::from_secs(60);
        assert_eq!(renew_delay(t0 - 2 * m, t0 + 24 * h, t0), 12 * h - m);
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let s = Duration::from_secs;
        let b = |n| backoff(s(1), s(60), n);
        assert_eq!(
            [b(1), b(2), b(3), b(6), b(7), b(1000)],
            [s(1), s(2), s(4), s(32), s(60), s(60)]
        );
    }
}
