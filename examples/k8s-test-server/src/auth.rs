//! Bearer-token authentication: the admin token, legacy Secret tokens filled by the token
//! controller, and TokenRequest tokens with an expiry. Tokens are shaped like the real
//! JWTs (header.payload.signature, readable claims such as `exp` and `sub`), but the
//! signature is random: this TEST SERVER recognises tokens by lookup, not by verification.

use crate::error::ApiError;
use crate::store::{ObjKey, Store};
use crate::util;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Who a request is from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub groups: Vec<String>,
}

impl Identity {
    /// The kubeconfig admin (member of `system:masters`).
    pub fn admin() -> Identity {
        Identity {
            user: "kubernetes-admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        }
    }

    pub fn service_account(ns: &str, name: &str) -> Identity {
        Identity {
            user: format!("system:serviceaccount:{ns}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{ns}"),
                "system:authenticated".into(),
            ],
        }
    }
}

/// What a service-account token stands for.
#[derive(Clone, Debug)]
pub struct TokenRecord {
    pub namespace: String,
    pub service_account: String,
    /// The token dies with the ServiceAccount it was issued for (a new SA of the same name
    /// has another uid).
    pub sa_uid: String,
    pub expires: Option<SystemTime>,
    /// The Secret holding a legacy token; the token dies with it.
    pub secret: Option<String>,
    /// The `aud` claim of a TokenRequest token (empty for legacy tokens, which have none).
    /// Like the real authenticator, a token none of whose audiences is the API server's is
    /// refused (401): a token minted for another audience cannot call this server.
    pub audiences: Vec<String>,
}

/// The API server's audience: what TokenRequest defaults `spec.audiences` to, and what a
/// token's `aud` must include to authenticate here (`--api-audiences`, which defaults to the
/// issuer).
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// The service-account tokens this server issued (by the token controller and TokenRequest),
/// by token. Shared; it outlives a stop and restart like the store does.
#[derive(Clone, Default)]
pub(crate) struct Tokens(Arc<Mutex<HashMap<String, TokenRecord>>>);

impl Tokens {
    pub fn insert(&self, token: String, record: TokenRecord) {
        self.lock().insert(token, record);
    }

    fn get(&self, token: &str) -> Option<TokenRecord> {
        self.lock().get(token).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TokenRecord>> {
        self.0.lock().expect("token table lock poisoned")
    }
}

fn jwt(claims: &Value) -> String {
    let header = json!({"alg": "RS256", "kid": util::random_b64url(16)});
    format!(
        "{}.{}.{}",
        util::b64url(header.to_string().as_bytes()),
        util::b64url(claims.to_string().as_bytes()),
        util::random_b64url(256)
    )
}

/// A legacy (non-expiring) service-account token, as the token controller writes into
/// `kubernetes.io/service-account-token` Secrets.
pub fn legacy_token(ns: &str, sa: &str, sa_uid: &str, secret: &str) -> String {
    jwt(&json!({
        "iss": "kubernetes/serviceaccount",
        "kubernetes.io/serviceaccount/namespace": ns,
        "kubernetes.io/serviceaccount/secret.name": secret,
        "kubernetes.io/serviceaccount/service-account.name": sa,
        "kubernetes.io/serviceaccount/service-account.uid": sa_uid,
        "sub": format!("system:serviceaccount:{ns}:{sa}"),
    }))
}

/// The identity of a bearer token: the admin, or a service account whose token is known,
/// unexpired, and whose ServiceAccount (same uid) and token Secret still exist.
pub(crate) fn authenticate(store: &Store, tokens: &Tokens, token: &str) -> Option<Identity> {
    if token.is_empty() {
        return None;
    }
    if token == store.admin_token() {
        return Some(Identity::admin());
    }
    let now = store.clock().now();
    let rec = tokens.get(token)?;
    let st = store.lock();
    if rec.expires.is_some_and(|e| e <= now) {
        return None;
    }
    if !rec.audiences.is_empty() && !rec.audiences.iter().any(|a| a == API_AUDIENCE) {
        return None;
    }
    let sa_key = ObjKey {
        group: String::new(),
        resource: "serviceaccounts".into(),
        namespace: rec.namespace.clone(),
        name: rec.service_account.clone(),
    };
    let sa = st.objects.get(&sa_key)?;
    if sa.pointer("/metadata/uid").and_then(Value::as_str) != Some(rec.sa_uid.as_str()) {
        return None;
    }
    if let Some(secret) = &rec.secret {
        let key = ObjKey {
            group: String::new(),
            resource: "secrets".into(),
            namespace: rec.namespace.clone(),
            name: secret.clone(),
        };
        let stored = st
            .objects
            .get(&key)?
            .pointer("/data/token")
            .and_then(Value::as_str)?;
        if util::b64_decode(stored)? != token.as_bytes() {
            return None;
        }
    }
    Some(Identity::service_account(
        &rec.namespace,
        &rec.service_account,
    ))
}

/// `POST .../serviceaccounts/<sa>/token`: issues a token that expires.
pub(crate) fn token_request(
    store: &Store,
    tokens: &Tokens,
    ns: &str,
    sa_name: &str,
    body: &Value,
    dry_run: bool,
) -> Result<Value, ApiError> {
    // The real server requires a name or namespace in the body to match the URL's.
    for (field, want) in [("name", sa_name), ("namespace", ns)] {
        if let Some(got) = body
            .pointer(&format!("/metadata/{field}"))
            .and_then(Value::as_str)
            && !got.is_empty()
            && got != want
        {
            return Err(ApiError::invalid(
                "authentication.k8s.io",
                "TokenRequest",
                sa_name,
                &format!("metadata.{field}"),
                "FieldValueInvalid",
                &format!(
                    "Invalid value: {got:?}: must match the service account {field} if specified"
                ),
            ));
        }
    }
    let sa = store
        .get("v1", "ServiceAccount", Some(ns), sa_name)
        .ok_or_else(|| ApiError::not_found("", "serviceaccounts", sa_name))?;
    let sa_uid = sa
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let secs = body
        .pointer("/spec/expirationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(3600);
    let min = store.config().min_token_expiration_seconds;
    let invalid = |msg: &str| {
        ApiError::invalid(
            "authentication.k8s.io",
            "TokenRequest",
            sa_name,
            "spec.expirationSeconds",
            "FieldValueInvalid",
            &format!("Invalid value: {secs}: {msg}"),
        )
    };
    if secs < min {
        return Err(invalid("may not specify a duration less than 10 minutes"));
    }
    if secs > 1 << 32 {
        return Err(invalid(
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    // Shortened, not refused, as the real server does past validation.
    let secs = match store.config().max_token_expiration_seconds {
        Some(max) if max > 0 && secs > max => max,
        _ => secs,
    };
    let now = store.clock().now();
    let exp = now + Duration::from_secs(secs as u64);
    let audiences = body
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .cloned()
        .unwrap_or_else(|| vec![json!(API_AUDIENCE)]);
    let token = jwt(&json!({
        "aud": audiences,
        "exp": util::unix(exp),
        "iat": util::unix(now),
        "nbf": util::unix(now),
        "iss": "https://kubernetes.default.svc.cluster.local",
        "jti": util::uuid(),
        "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa_name, "uid": sa_uid}},
        "sub": format!("system:serviceaccount:{ns}:{sa_name}"),
    }));
    if !dry_run {
        tokens.insert(
            token.clone(),
            TokenRecord {
                namespace: ns.into(),
                service_account: sa_name.into(),
                sa_uid,
                expires: Some(exp),
                secret: None,
                audiences: audiences
                    .iter()
                    .filter_map(|a| a.as_str().map(str::to_string))
                    .collect(),
            },
        );
    }
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": sa_name, "namespace": ns, "creationTimestamp": util::rfc3339(now)},
        "spec": {"audiences": audiences, "expirationSeconds": secs, "boundObjectRef": body.pointer("/spec/boundObjectRef").cloned().unwrap_or(Value::Null)},
        "status": {"token": token, "expirationTimestamp": util::rfc3339(exp)},
    }))
}

/// The bearer token of an `Authorization` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let h = header?.trim();
    let (scheme, token) = h.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// `POST /apis/authentication.k8s.io/v1/tokenreviews`, as kubernetes
/// `pkg/registry/authentication/tokenreview/storage.go` answers it: an empty token is a 400;
/// otherwise 201 with `status.authenticated`, and for a service-account token the user
/// `system:serviceaccount:<ns>:<sa>` and the audiences it was accepted for. `spec.audiences`
/// defaults to the API server's; a token is accepted only for an audience in its `aud`
/// (audience-agnostic tokens, the admin's and legacy ones, only for the API server's, as
/// `WrapAudienceAgnosticToken` does). A refusal is `authenticated: false` with an `error`,
/// never an HTTP error.
pub(crate) fn token_review(
    store: &Store,
    tokens: &Tokens,
    body: &Value,
) -> Result<Value, ApiError> {
    let token = body
        .pointer("/spec/token")
        .and_then(Value::as_str)
        .unwrap_or("");
    if token.is_empty() {
        return Err(ApiError::bad_request(
            "token is required for TokenReview in authentication",
        ));
    }
    let wanted: Vec<String> = body
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .filter(|a: &Vec<String>| !a.is_empty())
        .unwrap_or_else(|| vec![API_AUDIENCE.to_string()]);
    let token_audiences = if token == store.admin_token() {
        vec![API_AUDIENCE.to_string()]
    } else {
        match tokens.get(token) {
            Some(rec) if rec.audiences.is_empty() => vec![API_AUDIENCE.to_string()],
            Some(rec) => rec.audiences,
            None => vec![],
        }
    };
    let accepted: Vec<String> = wanted
        .iter()
        .filter(|a| token_audiences.contains(a))
        .cloned()
        .collect();
    // `authenticate` checks expiry, the ServiceAccount's uid and a legacy token's Secret; the
    // audience is checked here against the review's audiences instead of the API server's.
    let id = if accepted.is_empty() {
        None
    } else {
        authenticate_any_audience(store, tokens, token)
    };
    let spec = body.get("spec").cloned().unwrap_or(json!({}));
    let status = match id {
        Some(id) => json!({
            "authenticated": true,
            "user": {"username": id.user, "groups": id.groups},
            "audiences": accepted,
        }),
        None => json!({
            "authenticated": false,
            "error": "[invalid bearer token, token lookup failed]",
            "user": {},
        }),
    };
    Ok(json!({
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": status,
    }))
}

/// [`authenticate`] without its API-audience check.
fn authenticate_any_audience(store: &Store, tokens: &Tokens, token: &str) -> Option<Identity> {
    if token == store.admin_token() {
        return Some(Identity::admin());
    }
    let mut rec = tokens.get(token)?;
    rec.audiences.clear();
    let probe = Tokens::default();
    probe.insert(token.to_string(), rec);
    authenticate(store, &probe, token)
}
