//! Bearer-token authentication: the admin token, legacy Secret tokens filled by the token
//! controller, and TokenRequest tokens with an expiry. Tokens are shaped like the real
//! JWTs (header.payload.signature, readable claims such as `exp` and `sub`), but the
//! signature is random: this TEST SERVER recognises tokens by lookup, not by verification.
//! Successful authentications are cached for 10 s as kube-apiserver caches them
//! (`token_cache.rs`): a revoked token used in the last 10 s keeps working that long.

use crate::error::ApiError;
use crate::store::{ObjKey, Store};
use crate::token_cache::TokenCache;
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
/// by token, and the cache of successful authentications. Shared; it outlives a stop and
/// restart like the store does.
#[derive(Clone, Default)]
pub(crate) struct Tokens {
    issued: Arc<Mutex<HashMap<String, Issued>>>,
    cache: TokenCache<Authenticated>,
}

impl Tokens {
    /// Empties the authentication cache, as a restarted API server starts without one.
    pub(crate) fn forget_authentications(&self) {
        self.cache.clear();
    }
}

#[derive(Clone, Debug)]
struct Issued {
    record: TokenRecord,
    /// A TokenRequest's `boundObjectRef`: the token dies with that object.
    bound: Option<BoundRef>,
}

/// The object a token is bound to (Pod, Secret or Node), by uid as when it was issued.
#[derive(Clone, Debug)]
struct BoundRef {
    resource: &'static str,
    name: String,
    uid: String,
}

/// A successful authentication, as the cache keeps it.
#[derive(Clone, Debug)]
struct Authenticated {
    id: Identity,
    /// The audiences asked for that the token has.
    audiences: Vec<String>,
}

impl Tokens {
    pub fn insert(&self, token: String, record: TokenRecord) {
        self.lock().insert(
            token,
            Issued {
                record,
                bound: None,
            },
        );
    }

    fn get(&self, token: &str) -> Option<Issued> {
        self.lock().get(token).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Issued>> {
        self.issued.lock().expect("token table lock poisoned")
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

/// The identity of a bearer token, as a request is authenticated: the admin, or a service
/// account whose token authenticated within the last 10 s (the cache), or else is known,
/// has the API server's audience, is unexpired, and whose ServiceAccount (same uid), token
/// Secret and bound object still exist.
pub(crate) fn authenticate(store: &Store, tokens: &Tokens, token: &str) -> Option<Identity> {
    if token.is_empty() {
        return None;
    }
    if token == store.admin_token() {
        return Some(Identity::admin());
    }
    authenticate_for(store, tokens, token, &[API_AUDIENCE.to_string()]).map(|a| a.id)
}

/// A service-account token's authentication for the audiences `wanted`, through the cache
/// (successes only, as kube-apiserver's failure TTL is 0).
fn authenticate_for(
    store: &Store,
    tokens: &Tokens,
    token: &str,
    wanted: &[String],
) -> Option<Authenticated> {
    let now = store.clock().now();
    if let Some(hit) = tokens.cache.get(token, wanted, now) {
        return Some(hit);
    }
    let issued = tokens.get(token)?;
    // Legacy tokens have no `aud`: they count as the API server's (audience-agnostic).
    let has = |a: &String| {
        issued.record.audiences.iter().any(|t| t == a)
            || (issued.record.audiences.is_empty() && a == API_AUDIENCE)
    };
    let audiences: Vec<String> = wanted.iter().filter(|a| has(a)).cloned().collect();
    if audiences.is_empty() {
        return None;
    }
    let id = verify(store, &issued, token, now)?;
    let answer = Authenticated { id, audiences };
    tokens.cache.insert(token, wanted, now, answer.clone());
    Some(answer)
}

/// What kubernetes `pkg/serviceaccount/claims.go` (`Validate`) checks of a token against the
/// stored objects: expiry, the ServiceAccount and its uid, a legacy token's Secret, and the
/// object a bound token names (same uid).
fn verify(store: &Store, issued: &Issued, token: &str, now: SystemTime) -> Option<Identity> {
    let rec = &issued.record;
    if rec.expires.is_some_and(|e| e <= now) {
        return None;
    }
    let st = store.lock();
    let core = |resource: &str, namespace: &str, name: &str| ObjKey {
        group: String::new(),
        resource: resource.into(),
        namespace: namespace.into(),
        name: name.into(),
    };
    let uid_of = |key: &ObjKey| {
        st.objects
            .get(key)
            .and_then(|o| o.pointer("/metadata/uid"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let sa_key = core("serviceaccounts", &rec.namespace, &rec.service_account);
    if uid_of(&sa_key)? != rec.sa_uid {
        return None;
    }
    if let Some(secret) = &rec.secret {
        let stored = st
            .objects
            .get(&core("secrets", &rec.namespace, secret))?
            .pointer("/data/token")
            .and_then(Value::as_str)?;
        if util::b64_decode(stored)? != token.as_bytes() {
            return None;
        }
    }
    if let Some(b) = &issued.bound {
        let ns = if b.resource == "nodes" {
            ""
        } else {
            rec.namespace.as_str()
        };
        if uid_of(&core(b.resource, ns, &b.name))? != b.uid {
            return None;
        }
    }
    Some(Identity::service_account(
        &rec.namespace,
        &rec.service_account,
    ))
}

/// A TokenRequest's `spec.boundObjectRef`, checked as kubernetes
/// `pkg/registry/core/serviceaccount/storage/token.go` does: a core Pod (running as this
/// service account), Secret or Node that exists (404 otherwise), whose uid matches the one
/// given (409 otherwise).
fn bound_object(
    store: &Store,
    ns: &str,
    sa: &str,
    body: &Value,
) -> Result<Option<BoundRef>, ApiError> {
    let Some(r) = body
        .pointer("/spec/boundObjectRef")
        .filter(|r| !r.is_null())
    else {
        return Ok(None);
    };
    let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("");
    let (group, version) = s("apiVersion")
        .split_once('/')
        .unwrap_or(("", s("apiVersion")));
    let resource = match (group, s("kind")) {
        ("", "Pod") => "pods",
        ("", "Secret") => "secrets",
        ("", "Node") => "nodes",
        (g, k) => {
            return Err(ApiError::bad_request(format!(
                "cannot bind token to object of type {g}/{version}, Kind={k}"
            )));
        }
    };
    let obj = if resource == "nodes" {
        store.get("v1", "Node", None, s("name"))
    } else {
        store.get("v1", s("kind"), Some(ns), s("name"))
    }
    .ok_or_else(|| ApiError::not_found("", resource, s("name")))?;
    if resource == "pods" {
        let runs_as = obj
            .pointer("/spec/serviceAccountName")
            .and_then(Value::as_str)
            .unwrap_or("default");
        if runs_as != sa {
            return Err(ApiError::bad_request(format!(
                "cannot bind token for serviceaccount {sa:?} to pod running with different serviceaccount name."
            )));
        }
    }
    let uid = obj
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if !s("uid").is_empty() && s("uid") != uid {
        let mut e = ApiError::conflict("", s("kind"), s("name"));
        e.message = format!(
            "Operation cannot be fulfilled on {} \"{}\": the UID in the bound object reference ({}) does not match the UID in record. The object might have been deleted and then recreated",
            s("kind"),
            s("name"),
            s("uid")
        );
        return Err(e);
    }
    Ok(Some(BoundRef {
        resource,
        name: s("name").to_string(),
        uid,
    }))
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
    let bound = bound_object(store, ns, sa_name, body)?;
    let now = store.clock().now();
    let exp = now + Duration::from_secs(secs as u64);
    let audiences = body
        .pointer("/spec/audiences")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .cloned()
        .unwrap_or_else(|| vec![json!(API_AUDIENCE)]);
    let mut private = json!({"namespace": ns, "serviceaccount": {"name": sa_name, "uid": sa_uid}});
    if let Some(b) = &bound {
        // `pod`, `secret` or `node`, as kubernetes `pkg/serviceaccount/claims.go` names them.
        let claim = b.resource.trim_end_matches('s');
        private[claim] = json!({"name": b.name, "uid": b.uid});
    }
    let token = jwt(&json!({
        "aud": audiences,
        "exp": util::unix(exp),
        "iat": util::unix(now),
        "nbf": util::unix(now),
        "iss": "https://kubernetes.default.svc.cluster.local",
        "jti": util::uuid(),
        "kubernetes.io": private,
        "sub": format!("system:serviceaccount:{ns}:{sa_name}"),
    }));
    if !dry_run {
        let record = TokenRecord {
            namespace: ns.into(),
            service_account: sa_name.into(),
            sa_uid,
            expires: Some(exp),
            secret: None,
            audiences: audiences
                .iter()
                .filter_map(|a| a.as_str().map(str::to_string))
                .collect(),
        };
        tokens
            .lock()
            .insert(token.clone(), Issued { record, bound });
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
/// never an HTTP error. Reviews go through the same 10 s cache as requests (the real
/// TokenReview storage uses the server's own authenticator), keyed by the audiences asked.
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
    // The admin's token is audience-agnostic: the API server's audience only.
    let answer = if token == store.admin_token() {
        wanted
            .iter()
            .any(|a| a == API_AUDIENCE)
            .then(|| Authenticated {
                id: Identity::admin(),
                audiences: vec![API_AUDIENCE.to_string()],
            })
    } else {
        authenticate_for(store, tokens, token, &wanted)
    };
    let spec = body.get("spec").cloned().unwrap_or(json!({}));
    let status = match answer {
        Some(a) => json!({
            "authenticated": true,
            "user": {"username": a.id.user, "groups": a.id.groups},
            "audiences": a.audiences,
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
