//! What a failed Kubernetes request means: its text (each cause once) and its class, so that a
//! refused credential (401) or one that could not be used (a credential plugin that failed, a
//! token that fits in no HTTP header) is named with its fix instead of "cannot reach".

use std::path::Path;

use kube::client::AuthError;

use super::credential::shown;
use super::retry::{MAX_RETRIES, WAIT_BUDGET};
use super::unreached::{Unreached, innermost, unreached};

/// The message of a kube error without kube's nesting noise: the cause chain joined by
/// ": ", each cause once (kube and hyper errors repeat their source in their own text). A
/// credential error anywhere in the chain is told by [`auth_text`] alone.
pub fn error_text(e: &kube::Error) -> String {
    if let Some(a) = auth_error(e) {
        return auth_text(a, None);
    }
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
        other if let Some(u) = unreached(other) => {
            // The resolver's own words say which failure (no such name, no server); the TLS
            // stack's or the kernel's, how a connection was dropped (a handshake cut, a reset).
            if matches!(u, Unreached::NoSuchHost | Unreached::Dropped) {
                format!("{}: {}", u.text(), innermost(other))
            } else {
                u.text()
            }
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

/// kube's credential error in `e` or its causes: at build time it is `Error::Auth`; a
/// token refreshed per request (exec plugin, token file) fails inside the service stack and
/// comes back boxed in `Error::Service`.
pub(super) fn auth_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a AuthError> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(a) = err.downcast_ref::<AuthError>() {
            return Some(a);
        }
        cur = err.source();
    }
    None
}

/// What a credential error means, naming the credential plugin by its command only
/// (`plugin`, when known) and never its arguments, environment or output: kube's own text
/// quotes them (`AuthExecRun` prints the command line with its arguments and
/// `KUBERNETES_EXEC_INFO`, and the captured stdout and stderr; `AuthExecParse` the output
/// around the fault), and that output is the credential. kubectl does not print it either.
pub fn auth_text(e: &AuthError, plugin: Option<&str>) -> String {
    let (plugin, token) = match plugin {
        Some(p) => (
            format!("the credential plugin {}", shown(p)),
            format!("the token printed by the credential plugin {}", shown(p)),
        ),
        None => ("the credential plugin".to_string(), "the token".to_string()),
    };
    match e {
        AuthError::AuthExecStart(io) => format!("{plugin} could not be started: {io}"),
        AuthError::AuthExecRun { out, .. } => format!(
            "{plugin} failed ({}); run it by hand to see its message",
            out.status
        ),
        AuthError::AuthExecParse(_) => {
            format!("{plugin} printed something that is not an ExecCredential (JSON with a status)")
        }
        AuthError::ExecPluginFailed => {
            format!("{plugin} printed an ExecCredential without a status")
        }
        AuthError::ParseTokenKey(_) => format!("{plugin} printed something that is not JSON"),
        AuthError::MalformedTokenExpirationDate(_) => {
            "the credential's expiry time is not an RFC 3339 time".to_string()
        }
        AuthError::AuthExecSerialize(_) => format!("{plugin} could not be given its input"),
        AuthError::InvalidBearerToken(_) => format!(
            "{token} cannot be sent in an HTTP header: it contains a line break or another \
             control character"
        ),
        // The other texts quote no output: a provider's name, a path, an I/O error.
        other => other.to_string(),
    }
}

/// What a failed request means for the fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 401: the server answered and did not accept the token or client certificate.
    CredentialRefused,
    /// The credential could not be used, so nothing was sent: its plugin failed or printed
    /// no usable token, or the token fits in no HTTP header.
    CredentialUnusable,
    /// Any other answer from the API server (403, 404, 500, ...).
    Answered,
    /// No answer: connection, TLS or timeout.
    Unreachable,
}

pub fn classify(e: &kube::Error) -> Failure {
    match e {
        kube::Error::Api(s) if s.code == 401 => Failure::CredentialRefused,
        kube::Error::Api(_) => Failure::Answered,
        e if auth_error(e).is_some() => Failure::CredentialUnusable,
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

/// What [`ConnectError::Unreachable`] says before its fix (`check` shows the fix apart).
pub fn cannot_reach(context: &str, server: &str, detail: &str) -> String {
    format!("cannot reach the API server of context {context:?} at {server}: {detail}")
}

/// The fix for a context whose API server gave no answer for a reason not recognised.
pub const UNREACHED_FIX: &str =
    "check that the cluster is running and that the kubeconfig's server address is right";

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
    #[error(
        "the credential of kubeconfig user {user:?} (context {context:?}) in {kubeconfig} \
         cannot be used: {detail}"
    )]
    Unusable {
        context: String,
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
    #[error("{}; {fix}", cannot_reach(context, server, detail))]
    Unreachable {
        context: String,
        server: String,
        detail: String,
        /// What to do, for the cause in `detail` when it is recognised.
        fix: String,
    },
}

impl ConnectError {
    /// `plugin`: the command of the user's credential plugin, if it has one.
    pub(super) fn new(
        e: &kube::Error,
        (context, server): (&str, &str),
        (user, path): (&str, &Path),
        plugin: Option<&str>,
    ) -> Self {
        let (context, server, detail) = (context.to_string(), server.to_string(), error_text(e));
        match classify(e) {
            Failure::CredentialUnusable => ConnectError::Unusable {
                context,
                user: user.to_string(),
                kubeconfig: path.display().to_string(),
                detail: auth_error(e).map_or(detail, |a| auth_text(a, plugin)),
            },
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
                fix: unreached(e).map_or_else(|| UNREACHED_FIX.to_string(), |u| u.kubeconfig_fix()),
            },
        }
    }
}
