//! What a failed Kubernetes request means: its text (each cause once) and its class, so that a
//! refused credential (401) is named with its fix instead of "cannot reach".

use std::path::Path;

use super::retry::{MAX_RETRIES, WAIT_BUDGET};

/// The message of a kube error without kube's nesting noise: the cause chain joined by
/// ": ", each cause once (kube and hyper errors repeat their source in their own text).
pub fn error_text(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => {
            // kube's reason for a body that is not a Status (APF's 429 is plain text).
            let reason = match s.reason.as_str() {
                "" | "Failed to parse error data" => http::StatusCode::from_u16(s.code)
                    .ok()
                    .and_then(|c| c.canonical_reason())
                    .unwrap_or(""),
                r => r,
            };
            let mut text = format!("{} ({} {reason})", s.message.trim(), s.code);
            if matches!(s.code, 429 | 503 | 504) {
                text.push_str(&format!(
                    "; the API server is overloaded or unavailable (meshctl retries this up to \
                     {MAX_RETRIES} times within {} s, honouring Retry-After): try again later",
                    WAIT_BUDGET.as_secs()
                ));
            }
            text
        }
        other => {
            let mut text = other.to_string();
            let mut src = std::error::Error::source(other);
            while let Some(s) = src {
                let part = s.to_string();
                if !text.contains(&part) {
                    text.push_str(": ");
                    text.push_str(&part);
                }
                src = s.source();
            }
            text
        }
    }
}

/// What a failed request means for the fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 401: the server answered and did not accept the token or client certificate.
    CredentialRefused,
    /// Any other answer from the API server (403, 404, 500, ...).
    Answered,
    /// No answer: connection, TLS or timeout.
    Unreachable,
}

pub fn classify(e: &kube::Error) -> Failure {
    match e {
        kube::Error::Api(s) if s.code == 401 => Failure::CredentialRefused,
        kube::Error::Api(_) => Failure::Answered,
        _ => Failure::Unreachable,
    }
}

/// Whether the API server did not take the request up at all: unreachable, or overloaded
/// (429, 503, 504, past meshctl's retries). Later requests to it in the same run would
/// most likely wait the same way.
pub fn unanswered(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => matches!(s.code, 429 | 503 | 504),
        _ => true,
    }
}

/// Why `connect` could not use a context, with the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "the API server of context {context:?} at {server} refused the credential of \
         kubeconfig user {user:?} ({detail}): its token or client certificate is wrong, expired \
         or revoked. Put new credentials for user {user:?} in {kubeconfig} (kind: kind export \
         kubeconfig --name <cluster>; a cloud: its get-credentials command; a service-account \
         token: mint a new one) and retry"
    )]
    CredentialRefused {
        context: String,
        server: String,
        user: String,
        kubeconfig: String,
        detail: String,
    },
    #[error("the API server of context {context:?} at {server} answered: {detail}")]
    Answered {
        context: String,
        server: String,
        detail: String,
    },
    #[error("cannot reach the API server of context {context:?} at {server}: {detail}")]
    Unreachable {
        context: String,
        server: String,
        detail: String,
    },
}

impl ConnectError {
    pub(super) fn new(
        e: &kube::Error,
        context: &str,
        server: &str,
        user: &str,
        path: &Path,
    ) -> Self {
        let (context, server, detail) = (context.to_string(), server.to_string(), error_text(e));
        match classify(e) {
            Failure::CredentialRefused => ConnectError::CredentialRefused {
                context,
                server,
                user: user.to_string(),
                kubeconfig: path.display().to_string(),
                detail: match e {
                    kube::Error::Api(s) => format!("{} {}", s.code, s.reason),
                    _ => detail,
                },
            },
            Failure::Answered => ConnectError::Answered {
                context,
                server,
                detail,
            },
            Failure::Unreachable => ConnectError::Unreachable {
                context,
                server,
                detail,
            },
        }
    }
}
