//! The credential inside a remote secret, read without ever exposing it: which cluster and
//! server the stored kubeconfig reads, how it authenticates, when that expires, whether it
//! is due for a refresh, and the kubeconfig with a new token. Pure: `cmd/credentials.rs`
//! talks to the clusters (minting through `reader::request_token`).
//!
//! The expiry comes from the token itself: the `exp` and `iat` claims of the JWT, decoded
//! without verifying the signature. That is the expiry the API server enforces, it is in
//! every TokenRequest token (whoever minted it: `join --token-ttl`, `kubectl create token`,
//! another tool), and it cannot go stale the way an annotation written at mint time can when
//! someone else rewrites the Secret.
//!
//! Unverified claims are what whoever last wrote the Secret put there (anyone who may write
//! Secrets in istiod's namespace of the cluster storing it), so they are used only to
//! schedule: when a token is due, and the lifetime of the next one within a cap
//! ([`derived_ttl`], [`MAX_DERIVED_TTL_SECS`]). They never choose what a refresh is issued
//! for: the account comes from the operator (`credentials refresh --service-account`, the
//! reader `join` made), and a stored token naming any other account is refused
//! ([`check_account`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow, bail};
use base64::Engine as _;
use k8s_openapi::api::core::v1::Secret;
use serde::Serialize;
use serde_json::Value;

use super::terminating::{self, Terminating};

/// How a stored kubeconfig authenticates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Method {
    /// A bound token from the TokenRequest API: it expires (`exp`) and was issued at `iat`.
    TokenRequest {
        service_account: String,
        namespace: String,
        issued: u64,
    },
    /// A legacy `kubernetes.io/service-account-token` Secret token: no expiry.
    LegacySecretToken { service_account: Option<String> },
    /// A bearer token that is not a service-account JWT (expiry unknown to meshctl).
    OpaqueToken,
    /// A JWT whose `exp` claim is not a Unix time up to 9999-12-31 (e.g. `1e300`, `-1`,
    /// `"soon"`): its expiry cannot be read, so it is neither "never expires" nor refreshed.
    InvalidExpiry {
        service_account: Option<String>,
        /// The `exp` claim as found (JSON).
        exp: String,
    },
    /// A client certificate (`client-certificate-data`), valid until its notAfter.
    ClientCertificate,
    /// An exec plugin or auth provider mints the credential at use (expiry unknown).
    Plugin { command: String },
    /// No credential in the kubeconfig.
    None,
}

impl Method {
    pub fn describe(&self) -> String {
        match self {
            Method::TokenRequest {
                service_account,
                namespace,
                ..
            } => format!("TokenRequest token of {namespace}/{service_account}"),
            Method::LegacySecretToken {
                service_account: Some(sa),
            } => format!("legacy long-lived Secret token of {sa}"),
            Method::LegacySecretToken { .. } => "legacy long-lived Secret token".into(),
            Method::OpaqueToken => "bearer token (not a service-account JWT)".into(),
            Method::InvalidExpiry {
                service_account: Some(sa),
                exp,
            } => format!("token of {sa} with an invalid exp claim {exp}"),
            Method::InvalidExpiry { exp, .. } => format!("token with an invalid exp claim {exp}"),
            Method::ClientCertificate => "client certificate".into(),
            Method::Plugin { command } => format!("exec/auth plugin {command}"),
            Method::None => "no credential".into(),
        }
    }
}

/// The credential of one stored kubeconfig; `expires` in Unix seconds when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub method: Method,
    pub expires: Option<u64>,
}

impl Credential {
    /// The token's lifetime as issued (`exp - iat`), for TokenRequest tokens.
    pub fn ttl(&self) -> Option<u64> {
        match (&self.method, self.expires) {
            (Method::TokenRequest { issued, .. }, Some(exp)) => Some(exp.saturating_sub(*issued)),
            _ => None,
        }
    }
}

/// One kubeconfig stored in a remote secret (a Secret may hold several, one per data key).
#[derive(Debug, Clone)]
pub struct Stored {
    /// The Secret's name and namespace, in the cluster that stores it.
    pub secret: String,
    pub namespace: String,
    pub resource_version: Option<String>,
    /// The data key: the cluster ID istiod registers it under.
    pub cluster: String,
    /// The API server the kubeconfig reads.
    pub server: String,
    /// The kubeconfig as stored (holds the token: never printed).
    pub kubeconfig: String,
    pub credential: Credential,
    /// The Secret as listed is being deleted (a `deletionTimestamp`, held by finalizers): a
    /// write to it would be lost when it goes (`mesh::terminating`).
    pub deleting: Option<Terminating>,
}

/// Every kubeconfig in a remote secret (`data`, else `stringData`). Keys that are not a
/// kubeconfig come back as errors naming the key, so one bad key does not hide the others.
pub fn read_secret(s: &Secret) -> Vec<std::result::Result<Stored, String>> {
    let name = s.metadata.name.clone().unwrap_or_default();
    let namespace = s.metadata.namespace.clone().unwrap_or_default();
    let deleting = s.metadata.deletion_timestamp.as_ref().and_then(|_| {
        let stub = serde_json::json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace}});
        terminating::of(&stub, &serde_json::to_value(s).ok()?)
    });
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(d) = &s.data {
        entries.extend(d.iter().map(|(k, v)| (k.clone(), v.0.clone())));
    } else if let Some(d) = &s.string_data {
        entries.extend(d.iter().map(|(k, v)| (k.clone(), v.clone().into_bytes())));
    }
    entries
        .into_iter()
        .map(|(key, bytes)| {
            let yaml = String::from_utf8(bytes)
                .map_err(|_| format!("{namespace}/{name} key {key}: not UTF-8 text"))?;
            let (server, credential) = read_kubeconfig(&yaml)
                .map_err(|e| format!("{namespace}/{name} key {key}: {e:#}"))?;
            Ok(Stored {
                secret: name.clone(),
                namespace: namespace.clone(),
                resource_version: s.metadata.resource_version.clone(),
                cluster: key,
                server,
                kubeconfig: yaml,
                credential,
                deleting: deleting.clone(),
            })
        })
        .collect()
}

/// The current context's cluster and user of a kubeconfig.
fn current<'a>(doc: &'a Value, list: &str, field: &str) -> Option<&'a Value> {
    let ctx_name = doc["current-context"].as_str();
    let contexts = doc["contexts"].as_array()?;
    let ctx = match ctx_name {
        Some(n) => contexts.iter().find(|c| c["name"] == n)?,
        None => contexts.first()?,
    };
    let wanted = ctx["context"][field].as_str()?;
    doc[list].as_array()?.iter().find(|e| e["name"] == wanted)
}

/// The server and credential of a kubeconfig (its current context).
pub fn read_kubeconfig(yaml: &str) -> Result<(String, Credential)> {
    let doc: Value = crate::kube::parse_secret_yaml(yaml)
        .map_err(|e| anyhow!("the kubeconfig does not parse: {e}"))?;
    let cluster = current(&doc, "clusters", "cluster")
        .ok_or_else(|| anyhow!("the kubeconfig's current context names no cluster"))?;
    let server = cluster["cluster"]["server"]
        .as_str()
        .ok_or_else(|| anyhow!("the kubeconfig's cluster has no server"))?
        .to_string();
    let user = current(&doc, "users", "user").map(|u| &u["user"]);
    Ok((server, user.map_or_else(no_credential, credential_of_user)))
}

fn no_credential() -> Credential {
    Credential {
        method: Method::None,
        expires: None,
    }
}

fn credential_of_user(user: &Value) -> Credential {
    if let Some(token) = user["token"].as_str() {
        return credential_of_token(token);
    }
    if let Some(b64) = user["client-certificate-data"].as_str() {
        let expires = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .and_then(|pem| cert_not_after(&pem));
        return Credential {
            method: Method::ClientCertificate,
            expires,
        };
    }
    if let Some(cmd) = user["exec"]["command"].as_str() {
        return Credential {
            method: Method::Plugin {
                command: cmd.to_string(),
            },
            expires: None,
        };
    }
    if let Some(name) = user["auth-provider"]["name"].as_str() {
        return Credential {
            method: Method::Plugin {
                command: name.to_string(),
            },
            expires: None,
        };
    }
    no_credential()
}

/// The claims of a JWT, decoded without verifying its signature.
pub fn jwt_claims(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// What a bearer token is: a TokenRequest token (with `exp`), a legacy Secret token, or
/// something else.
pub fn credential_of_token(token: &str) -> Credential {
    let Some(claims) = jwt_claims(token) else {
        return Credential {
            method: Method::OpaqueToken,
            expires: None,
        };
    };
    let sub = claims["sub"].as_str().unwrap_or_default();
    let sa = sub
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'));
    // An `exp` that is there but not a readable time (a float, negative, past year 9999, a
    // string) is said as such: read as "no exp" it would pass for a never-expiring token.
    let exp = match &claims["exp"] {
        Value::Null => None,
        v => match v.as_u64().filter(|e| *e <= MAX_UNIX_TIME) {
            Some(e) => Some(e),
            None => {
                return Credential {
                    method: Method::InvalidExpiry {
                        service_account: sa.map(|(ns, name)| format!("{ns}/{name}")),
                        exp: v.to_string(),
                    },
                    expires: None,
                };
            }
        },
    };
    match (exp, sa) {
        (Some(exp), Some((ns, name))) => Credential {
            method: Method::TokenRequest {
                service_account: name.to_string(),
                namespace: ns.to_string(),
                issued: claims["iat"].as_u64().unwrap_or(exp),
            },
            expires: Some(exp),
        },
        (None, Some((ns, name))) => Credential {
            method: Method::LegacySecretToken {
                service_account: Some(format!("{ns}/{name}")),
            },
            expires: None,
        },
        (exp, None) => Credential {
            method: Method::OpaqueToken,
            expires: exp,
        },
    }
}

/// Whether a stored TokenRequest token is one of the reader `ns/sa` that the operator names
/// (`credentials refresh -n NS --service-account SA`), before a new token is issued for it.
/// The claims are not verified, so this only refuses: a token naming another account (a
/// forged `sub`, or a remote secret made for another account) is never re-issued for that
/// account, and the error names it and the fix. Anything but a TokenRequest token is refused.
pub fn check_account(c: &Credential, ns: &str, sa: &str) -> std::result::Result<(), String> {
    let Method::TokenRequest {
        service_account,
        namespace,
        ..
    } = &c.method
    else {
        return Err(format!(
            "{}: refresh only re-issues TokenRequest tokens",
            c.method.describe()
        ));
    };
    if namespace == ns && service_account == sa {
        return Ok(());
    }
    Err(format!(
        "refused: the stored token claims service account {namespace}/{service_account}, but \
         refresh issues tokens only for the reader {ns}/{sa} (the account `meshctl join` made \
         in namespace {ns}, or --service-account). No token was requested for \
         {namespace}/{service_account} and this key is unchanged: the claims are unverified, \
         and anyone who may write Secrets in namespace {ns} of the cluster storing it can set \
         them. Find out who changed this Secret, then re-create it with `meshctl join` (or \
         `meshctl create-remote-secret` applied here); if join made it with \
         --service-account NAME, pass the same --service-account NAME to refresh"
    ))
}

/// The notAfter (Unix seconds) of the first certificate in a PEM text.
pub fn cert_not_after(pem_text: &[u8]) -> Option<u64> {
    let der = super::cacerts::pem_ders(pem_text).into_iter().next()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    u64::try_from(cert.validity().not_after.timestamp()).ok()
}

/// The longest lifetime `credentials refresh` gives a new token when it takes the lifetime
/// from the stored token (no `--token-ttl`): 365 days (8760h).
///
/// The stored token's `exp - iat` is unverified: whoever may write the remote Secret sets
/// it, and the TokenRequest API grants anything up to 2^32 s (about 136 years) unless the
/// cluster runs kube-apiserver with `--service-account-max-token-expiration` (unset by
/// default; when set, the API server shortens a longer request to it with a warning). So
/// one forged claim would make every later reader token of that cluster all but
/// everlasting, without any further write. `join` has no default TokenRequest lifetime to
/// copy (without `--token-ttl` it stores a non-expiring Secret token, which refresh leaves
/// alone), so the cap is the longest lifetime Kubernetes gives a bound token of its own
/// accord: one year, `ExpirationExtensionSeconds` (kubernetes/kubernetes
/// `pkg/serviceaccount/claims.go`, the extension of admission-injected pod tokens). It is
/// far above the lifetimes meshctl suggests (24h, 720h), so an honest token keeps its
/// lifetime; anything longer is the operator's to ask for with `--token-ttl`.
pub const MAX_DERIVED_TTL_SECS: u64 = 365 * 86400;

/// The new token's lifetime taken from the stored token's claimed lifetime (`exp - iat`):
/// at least what TokenRequest accepts (10m) and at most [`MAX_DERIVED_TTL_SECS`]; the flag
/// says the claim was longer than the cap (then refresh warns).
pub fn derived_ttl(claimed: u64) -> (Duration, bool) {
    let secs = claimed.clamp(crate::cli::MIN_TOKEN_TTL_SECS, MAX_DERIVED_TTL_SECS);
    (Duration::from_secs(secs), claimed > MAX_DERIVED_TTL_SECS)
}

/// The default refresh threshold when `--threshold` is not given: a third of the token's
/// lifetime (so a job running every sixth of it refreshes about twice before expiry).
pub const DEFAULT_THRESHOLD_FRACTION: u64 = 3;

/// Whether a stored credential is refreshed, and why (said per secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Refresh(String),
    Keep(String),
}

/// `refresh`'s decision at `now` (Unix seconds): TokenRequest tokens whose remaining
/// lifetime is under `threshold` (default: a third of their lifetime) are refreshed;
/// everything else is left alone, with the reason.
pub fn decide(c: &Credential, now: u64, threshold: Option<Duration>) -> Decision {
    let Method::TokenRequest { .. } = &c.method else {
        return Decision::Keep(format!(
            "{}: refresh only re-issues TokenRequest tokens (meshctl join --token-ttl makes them)",
            c.method.describe()
        ));
    };
    let (Some(exp), Some(ttl)) = (c.expires, c.ttl()) else {
        return Decision::Keep("the token has no expiry".into());
    };
    let threshold = threshold.map_or(ttl / DEFAULT_THRESHOLD_FRACTION, |t| t.as_secs());
    if exp <= now {
        return Decision::Refresh(format!("expired {} ago", human(now - exp)));
    }
    let left = exp - now;
    if left < threshold {
        Decision::Refresh(format!(
            "expires in {}, under the threshold {}",
            human(left),
            human(threshold)
        ))
    } else {
        Decision::Keep(format!(
            "expires in {}, not under the threshold {}",
            human(left),
            human(threshold)
        ))
    }
}

/// The kubeconfig with the current user's token replaced (everything else kept as stored).
pub fn with_token(yaml: &str, token: &str) -> Result<String> {
    let mut doc: Value = crate::kube::parse_secret_yaml(yaml)
        .map_err(|e| anyhow!("the kubeconfig does not parse: {e}"))?;
    let user = current(&doc, "users", "user")
        .and_then(|u| u["name"].as_str())
        .map(str::to_string)
        .ok_or_else(|| anyhow!("the kubeconfig's current context names no user"))?;
    let users = doc["users"]
        .as_array_mut()
        .ok_or_else(|| anyhow!("the kubeconfig has no users"))?;
    let Some(u) = users.iter_mut().find(|u| u["name"] == user.as_str()) else {
        bail!("the kubeconfig has no user {user:?}");
    };
    if !u["user"]["token"].is_string() {
        bail!("the kubeconfig's user {user:?} has no bearer token to replace");
    }
    u["user"]["token"] = Value::String(token.to_string());
    Ok(serde_yaml::to_string(&doc)?)
}

/// The first Istio release that picks up a rewritten remote secret without an istiod
/// restart: 1.30.3 fixed istio/istio#60612 ("istiod did not pick up updated remote cluster
/// secrets ... until restarted"; the 1.30.3 release notes, istio/istio.io#17482).
pub const ROTATION_FIXED_IN: (u32, u32, u32) = (1, 30, 3);

/// The Istio version in an istiod image reference (`docker.io/istio/pilot:1.30.3`,
/// `...:1.29.6-distroless`, `...@sha256:..` has none).
pub fn istio_version(image: &str) -> Option<(u32, u32, u32)> {
    let tag = image.split('@').next()?.rsplit_once(':')?.1;
    if tag.contains('/') {
        return None; // a registry port, not a tag
    }
    let core = tag.split(['-', '+']).next()?;
    let mut nums = core.split('.').map(|n| n.parse::<u32>().ok());
    Some((
        nums.next()??,
        nums.next()??,
        nums.next().flatten().unwrap_or(0),
    ))
}

/// `ROTATION_FIXED_IN` as text.
pub fn rotation_fixed_in() -> String {
    let (a, b, c) = ROTATION_FIXED_IN;
    format!("{a}.{b}.{c}")
}

/// Whether istiod of that version reloads a rewritten remote secret by itself.
pub fn picks_up_rotation(version: (u32, u32, u32)) -> bool {
    version >= ROTATION_FIXED_IN
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// 9999-12-31T23:59:59Z: the latest Unix time meshctl reads as an expiry (the latest an
/// RFC 3339 or X.509 time can hold).
pub const MAX_UNIX_TIME: u64 = pki::MAX_NOT_AFTER_UNIX as u64;

/// RFC 3339 (seconds) of a Unix time; "invalid (N)" past 9999-12-31, never a panic.
pub fn rfc3339(secs: u64) -> String {
    if secs > MAX_UNIX_TIME {
        return format!("invalid ({secs})");
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

pub fn human(secs: u64) -> String {
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

/// "expires in 3h" / "expired 2m ago" / "never" / "unknown".
pub fn remaining(c: &Credential, now: u64) -> String {
    match (c.expires, &c.method) {
        (Some(e), _) if e <= now => format!("expired {} ago", human(now - e)),
        (Some(e), _) => format!("{} left", human(e - now)),
        (None, Method::LegacySecretToken { .. }) => "never expires".into(),
        (None, Method::InvalidExpiry { .. }) => "invalid expiry".into(),
        (None, _) => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn jwt(claims: Value) -> String {
        let b = |v: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
        };
        format!("{}.{}.sig", b(&json!({"alg": "RS256"})), b(&claims))
    }

    fn token_request(iat: u64, exp: u64) -> Credential {
        credential_of_token(&jwt(json!({"iat": iat, "exp": exp,
            "sub": "system:serviceaccount:istio-system:istio-reader-service-account"})))
    }

    #[test]
    fn tells_token_request_legacy_and_opaque_tokens_apart() {
        let c = token_request(1000, 4600);
        assert_eq!(c.expires, Some(4600));
        assert_eq!(c.ttl(), Some(3600));
        assert_eq!(
            c.method,
            Method::TokenRequest {
                service_account: "istio-reader-service-account".into(),
                namespace: "istio-system".into(),
                issued: 1000
            }
        );
        let legacy = credential_of_token(&jwt(json!({"sub": "system:serviceaccount:a:b"})));
        assert_eq!(
            legacy.method,
            Method::LegacySecretToken {
                service_account: Some("a/b".into())
            }
        );
        assert_eq!(legacy.expires, None);
        assert_eq!(credential_of_token("not-a-jwt").method, Method::OpaqueToken);
    }

    #[test]
    fn an_unreadable_exp_is_invalid_not_never_expiring() {
        let sub = "system:serviceaccount:istio-system:istio-reader-service-account";
        for exp in [
            json!(1e300),
            json!(253_402_300_800u64),
            json!(u64::MAX),
            json!(-1),
            json!(1.5),
            json!("soon"),
        ] {
            let want = exp.to_string();
            let c = credential_of_token(&jwt(json!({"iat": 0, "exp": exp, "sub": sub})));
            assert!(
                matches!(&c.method, Method::InvalidExpiry { exp: e, .. } if *e == want),
                "{exp}: {c:?}"
            );
            assert_eq!(c.expires, None);
            assert_eq!(remaining(&c, 0), "invalid expiry");
            assert!(c.method.describe().contains("invalid exp claim"), "{exp}");
            assert!(matches!(decide(&c, 0, None), Decision::Keep(_)));
        }
        // The last second of year 9999 is still a time.
        let c = token_request(0, MAX_UNIX_TIME);
        assert_eq!(c.expires, Some(MAX_UNIX_TIME));
        assert_eq!(rfc3339(MAX_UNIX_TIME), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn only_the_operators_reader_passes_whatever_the_token_claims() {
        let reader = "istio-reader-service-account";
        let c = token_request(0, 3600);
        check_account(&c, "istio-system", reader).unwrap();
        let of = |sub: &str| credential_of_token(&jwt(json!({"iat": 0, "exp": 3600, "sub": sub})));
        for (sub, names) in [
            (
                "system:serviceaccount:kube-system:powerful",
                "kube-system/powerful",
            ),
            (
                "system:serviceaccount:kube-system:istio-reader-service-account",
                "kube-system/istio-reader-service-account",
            ),
            (
                "system:serviceaccount:istio-system:istiod",
                "istio-system/istiod",
            ),
            (
                "system:serviceaccount:istio-system:istio-reader-service-account:x",
                "istio-system/istio-reader-service-account:x",
            ),
        ] {
            let e = check_account(&of(sub), "istio-system", reader).unwrap_err();
            assert!(
                e.contains(&format!("claims service account {names},")),
                "{e}"
            );
            assert!(
                e.contains("istio-system/istio-reader-service-account"),
                "{e}"
            );
            assert!(e.contains("meshctl join"), "{e}");
        }
        // Another reader when the operator names it; the namespace is always -n's.
        let other = of("system:serviceaccount:istio-system:other");
        check_account(&other, "istio-system", "other").unwrap();
        check_account(&other, "esc", "other").unwrap_err();
        let legacy = credential_of_token(&jwt(json!({"sub": "system:serviceaccount:a:b"})));
        check_account(&legacy, "a", "b").unwrap_err();
    }

    #[test]
    fn a_claimed_lifetime_is_capped_at_a_year_and_raised_to_ten_minutes() {
        let year = MAX_DERIVED_TTL_SECS;
        assert_eq!(year, 8760 * 3600);
        for (claimed, want, capped) in [
            (3600, 3600, false),
            (720 * 3600, 720 * 3600, false),
            (year, year, false),
            (year + 1, year, true),
            (1 << 32, year, true),
            (u64::MAX, year, true),
            (0, 600, false),
            (599, 600, false),
        ] {
            assert_eq!(
                derived_ttl(claimed),
                (Duration::from_secs(want), capped),
                "{claimed}"
            );
        }
    }

    #[test]
    fn rfc3339_never_panics() {
        for secs in [MAX_UNIX_TIME + 1, u64::MAX] {
            assert_eq!(rfc3339(secs), format!("invalid ({secs})"));
        }
    }

    #[test]
    fn refreshes_under_the_threshold_only() {
        let c = token_request(0, 3600);
        // Default threshold: a third of the lifetime (1200 s).
        assert!(matches!(decide(&c, 2300, None), Decision::Keep(_)));
        assert!(matches!(decide(&c, 2500, None), Decision::Refresh(_)));
        assert!(matches!(decide(&c, 4000, None), Decision::Refresh(r) if r.contains("expired")));
        let t = Some(Duration::from_secs(600));
        assert!(matches!(decide(&c, 2500, t), Decision::Keep(_)));
        assert!(matches!(decide(&c, 3100, t), Decision::Refresh(_)));
        let legacy = credential_of_token(&jwt(json!({"sub": "system:serviceaccount:a:b"})));
        assert!(matches!(decide(&legacy, 0, t), Decision::Keep(r) if r.contains("legacy")));
    }

    #[test]
    fn replaces_only_the_current_users_token() {
        let yaml = serde_yaml::to_string(&json!({"apiVersion": "v1", "kind": "Config",
            "current-context": "west",
            "clusters": [{"name": "west", "cluster": {"server": "https://w:6443", "certificate-authority-data": "Q0E="}}],
            "contexts": [{"name": "west", "context": {"cluster": "west", "user": "west"}}],
            "users": [{"name": "other", "user": {"token": "keep"}}, {"name": "west", "user": {"token": "old"}}]}))
        .unwrap();
        let out = with_token(&yaml, "new").unwrap();
        let doc: Value = serde_yaml::from_str(&out).unwrap();
        assert_eq!(doc["users"][1]["user"]["token"], "new");
        assert_eq!(doc["users"][0]["user"]["token"], "keep");
        assert_eq!(doc["clusters"][0]["cluster"]["server"], "https://w:6443");
        let (server, _) = read_kubeconfig(&out).unwrap();
        assert_eq!(server, "https://w:6443");
    }

    #[test]
    fn a_client_certificate_expires_at_its_not_after_and_exec_is_unknown() {
        let root = pki::RootCa::generate(&pki::RootOptions::default()).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(root.cert_pem());
        let kc = |user: Value| {
            serde_yaml::to_string(&json!({"current-context": "c",
                "clusters": [{"name": "c", "cluster": {"server": "https://c:6443"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "users": [{"name": "u", "user": user}]}))
            .unwrap()
        };
        let (_, c) = read_kubeconfig(&kc(
            json!({"client-certificate-data": b64, "client-key-data": "x"}),
        ))
        .unwrap();
        assert_eq!(c.method, Method::ClientCertificate);
        // The root's validity (pki::DEFAULT_ROOT_DAYS from now), to within a day.
        let days = (c.expires.unwrap() - unix_now()) as f64 / (24.0 * 3600.0);
        let want = f64::from(pki::DEFAULT_ROOT_DAYS);
        assert!((days - want).abs() < 1.0, "{days} days");
        assert!(
            matches!(decide(&c, 0, None), Decision::Keep(r) if r.contains("client certificate"))
        );
        let (_, c) =
            read_kubeconfig(&kc(json!({"exec": {"command": "gke-gcloud-auth-plugin"}}))).unwrap();
        assert_eq!(c.expires, None);
        assert_eq!(remaining(&c, 0), "unknown");
        assert!(read_kubeconfig("current-context: c\n").is_err());
    }

    #[test]
    fn istio_versions_from_image_tags() {
        assert_eq!(
            istio_version("docker.io/istio/pilot:1.30.3"),
            Some((1, 30, 3))
        );
        assert_eq!(
            istio_version("gcr.io/istio-release/pilot:1.29.6-distroless"),
            Some((1, 29, 6))
        );
        assert_eq!(istio_version("localhost:5000/pilot"), None);
        assert_eq!(istio_version("istio/pilot@sha256:abc"), None);
        assert_eq!(istio_version("istio/pilot:latest"), None);
        assert!(picks_up_rotation((1, 30, 3)));
        assert!(picks_up_rotation((1, 31, 0)));
        assert!(!picks_up_rotation((1, 30, 2)));
        assert!(!picks_up_rotation((1, 29, 9)));
    }
}
