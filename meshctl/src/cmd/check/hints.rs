//! The flags `check` was run with that its hints must repeat: a command in a hint runs
//! against the same clusters and namespace as the check that printed it. `-n` when it is not
//! the default (else a hint would act on `istio-system`), `--kubeconfig` when one was given
//! (else on the clusters of `$KUBECONFIG`), and, for a remote secret made again, the token
//! lifetime and reader account the stored one has (else an expiring token would be replaced
//! by a never-expiring one, or a reader by the default one).

use crate::cli::{MAX_TOKEN_TTL_SECS, MIN_TOKEN_TTL_SECS};
use crate::istio::{DEFAULT_NAMESPACE, DEFAULT_READER_SA};

/// How `check` was invoked, for the commands its hints print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// istiod's namespace (`-n`).
    pub ns: String,
    /// `--kubeconfig`, when given.
    pub kubeconfig: Option<String>,
}

impl Default for Invocation {
    fn default() -> Self {
        Invocation {
            ns: DEFAULT_NAMESPACE.into(),
            kubeconfig: None,
        }
    }
}

impl Invocation {
    /// ` --kubeconfig <path>` when one was given, else "" (for meshctl and kubectl alike).
    pub fn kubeconfig(&self) -> String {
        self.kubeconfig
            .as_deref()
            .map(|k| format!(" --kubeconfig {}", shell_word(k)))
            .unwrap_or_default()
    }

    /// ` -n <ns>` unless it is the default, else "" (for meshctl commands).
    pub fn namespace(&self) -> String {
        if self.ns == DEFAULT_NAMESPACE {
            String::new()
        } else {
            format!(" -n {}", self.ns)
        }
    }

    /// What a meshctl command in a hint needs: [`Invocation::namespace`] and
    /// [`Invocation::kubeconfig`].
    pub fn meshctl(&self) -> String {
        format!("{}{}", self.namespace(), self.kubeconfig())
    }

    /// `kubectl [--kubeconfig K] --context <ctx> -n <ns>`: the start of a kubectl command on
    /// istiod's namespace of one cluster.
    pub fn kubectl(&self, ctx: &str) -> String {
        format!(
            "kubectl{} --context {} -n {}",
            self.kubeconfig(),
            shell_word(ctx),
            self.ns
        )
    }
}

/// What the stored remote secret was made with, repeated when it is made again: its token's
/// lifetime (seconds) when it expires, and its reader account when not the default one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reissue {
    pub token_ttl: Option<u64>,
    pub service_account: Option<String>,
}

impl Reissue {
    /// ` --token-ttl <ttl>` and ` --service-account <sa>` as they apply.
    pub fn flags(&self) -> String {
        let mut out = String::new();
        if let Some(ttl) = self.token_ttl {
            out.push_str(&format!(" --token-ttl {}", ttl_flag(ttl)));
        }
        if let Some(sa) = self.service_account.as_deref()
            && sa != DEFAULT_READER_SA
        {
            out.push_str(&format!(" --service-account {}", shell_word(sa)));
        }
        out
    }
}

/// A token lifetime as `--token-ttl` takes it (`24h`, `90m`, `3601s`), within what the
/// TokenRequest API accepts.
pub fn ttl_flag(secs: u64) -> String {
    let secs = secs.clamp(MIN_TOKEN_TTL_SECS, MAX_TOKEN_TTL_SECS);
    if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// `s` as one POSIX shell word: as is when it holds only characters no shell treats
/// specially, else single-quoted.
pub fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_add_nothing_and_the_rest_is_repeated() {
        let d = Invocation::default();
        assert_eq!(d.meshctl(), "");
        assert_eq!(d.kubectl("west"), "kubectl --context west -n istio-system");
        let i = Invocation {
            ns: "esc".into(),
            kubeconfig: Some("/tmp/my kc".into()),
        };
        assert_eq!(i.meshctl(), " -n esc --kubeconfig '/tmp/my kc'");
        assert_eq!(
            i.kubectl("west"),
            "kubectl --kubeconfig '/tmp/my kc' --context west -n esc"
        );
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }

    #[test]
    fn token_lifetimes_as_the_flag_takes_them() {
        assert_eq!(ttl_flag(86400), "24h");
        assert_eq!(ttl_flag(5400), "90m");
        assert_eq!(ttl_flag(3601), "3601s");
        assert_eq!(ttl_flag(5), "10m");
        let r = Reissue {
            token_ttl: Some(3600),
            service_account: Some("istio-reader-service-account".into()),
        };
        assert_eq!(r.flags(), " --token-ttl 1h");
        let r = Reissue {
            token_ttl: None,
            service_account: Some("mesh-reader".into()),
        };
        assert_eq!(r.flags(), " --service-account mesh-reader");
    }
}
