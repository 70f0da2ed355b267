//! Building a kube client: the one place meshctl does (`connect` for a kubeconfig context,
//! `check` for a kubeconfig stored in a cluster). kube's retries are replaced by `retry`'s
//! bounded ones; kube's panic on a token that fits in no HTTP header (tower-http's
//! `AddAuthorizationLayer::bearer` expects one that does) becomes an error: static tokens are
//! checked before (`credential.rs`), but a credential plugin's token is only known here; and
//! credential errors are told without the plugin's arguments or output (`errors::auth_text`);
//! and a server URL without a scheme or host, on which kube panics at the first request, is
//! refused.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

use kube::client::ClientBuilder;
use kube::config::AuthInfo;
use kube::{Client, Config};

use super::errors::{auth_error, auth_text, error_text};
use super::retry::Retry;

/// Why no client could be built.
#[derive(Debug)]
pub struct BuildError {
    /// The credential could not be used (its plugin failed, its token fits in no header).
    pub credential: bool,
    /// The reason, free of credentials.
    pub detail: String,
}

/// The command of the credential plugin kube would run for `auth`, by kube's precedence
/// (auth-provider, basic auth, token, token file, exec): the gcp auth-provider's `cmd-path`,
/// or `exec`'s command.
pub fn plugin_of(auth: &AuthInfo) -> Option<String> {
    if let Some(p) = &auth.auth_provider {
        return p.config.get("cmd-path").cloned();
    }
    let static_credential = (auth.username.is_some() && auth.password.is_some())
        || auth.token.is_some()
        || auth.token_file.is_some();
    if static_credential {
        return None;
    }
    auth.exec.as_ref().and_then(|e| e.command.clone())
}

/// A client for `cfg`, with `retry`'s bounded retries; `who` names the server in their
/// messages (`context "west"`). Runs the credential plugin, if any.
pub fn client(mut cfg: Config, who: &str) -> Result<Client, BuildError> {
    // kube joins each request's path to this URL when the request is sent and panics
    // (`base_uri.rs`: "Valid Uri") if it has no scheme or host.
    let url = &cfg.cluster_url;
    if url.scheme().is_none() || url.authority().is_none_or(|a| a.host().is_empty()) {
        return Err(BuildError {
            credential: false,
            detail: format!(
                "the API server address {url} is not a URL: write it as https://HOST:PORT"
            ),
        });
    }
    let plugin = plugin_of(&cfg.auth_info);
    cfg.default_retry = false;
    let builder = match quietly(|| ClientBuilder::try_from(cfg)) {
        Ok(Ok(b)) => b,
        Ok(Err(e)) => {
            return Err(match auth_error(&e) {
                Some(a) => BuildError {
                    credential: true,
                    detail: auth_text(a, plugin.as_deref()),
                },
                None => BuildError {
                    credential: false,
                    detail: error_text(&e),
                },
            });
        }
        Err(panic) if panic.contains("not valid header") => {
            let token = match &plugin {
                Some(p) => format!(
                    "the token printed by the credential plugin {}",
                    super::credential::shown(p)
                ),
                None => "the token".to_string(),
            };
            return Err(BuildError {
                credential: true,
                detail: format!(
                    "{token} cannot be sent in an HTTP header: it contains a line break or \
                     another control character"
                ),
            });
        }
        Err(panic) => {
            return Err(BuildError {
                credential: false,
                detail: format!("kube failed while building the client ({panic})"),
            });
        }
    };
    Ok(builder
        .with_layer(&tower::buffer::BufferLayer::new(64))
        .with_layer(&tower::retry::RetryLayer::new(Retry::new(who)))
        .build())
}

thread_local! {
    static QUIET: Cell<bool> = const { Cell::new(false) };
}
static HOOK: Once = Once::new();

/// `f()`, or its panic message when it panicked, which is then not printed (the caller says
/// what went wrong). Panics elsewhere print as before.
fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(Cell::get) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let out = catch_unwind(AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    out.map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_caught_silently_and_its_message_kept() {
        assert_eq!(quietly(|| 7), Ok(7));
        let e = quietly(|| -> u8 { panic!("token is not valid header: x") }).unwrap_err();
        assert!(e.contains("not valid header"), "{e}");
        assert!(!QUIET.with(Cell::get));
    }

    #[test]
    fn a_server_url_without_a_scheme_or_host_is_refused_not_left_to_panic() {
        for server in ["10.0.0.1:6443", "/api"] {
            let Err(e) = client(Config::new(server.parse().unwrap()), "test") else {
                panic!("{server}: a client was built");
            };
            assert!(!e.credential && e.detail.contains("is not a URL"), "{e:?}");
        }
    }

    #[test]
    fn the_plugin_is_the_one_kube_runs() {
        let auth = |yaml: &str| -> AuthInfo { serde_yaml::from_str(yaml).unwrap() };
        let exec = "exec: {command: my-plugin, args: [--token=x]}";
        assert_eq!(plugin_of(&auth(exec)).as_deref(), Some("my-plugin"));
        assert_eq!(plugin_of(&auth(&format!("token: t\n{exec}"))), None);
        let gcp = "auth-provider: {name: gcp, config: {cmd-path: gcloud, cmd-args: x}}";
        assert_eq!(plugin_of(&auth(gcp)).as_deref(), Some("gcloud"));
    }
}
