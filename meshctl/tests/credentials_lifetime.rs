//! The lifetime `credentials refresh` asks for without `--token-ttl`: the stored token's
//! `exp - iat`, which is unverified (anyone who may write the remote Secret sets it), capped
//! at 8760h (365 days) with a warning naming the cap and `--token-ttl`. A forged claim
//! (issued in 1970, due now: about 56 years) no longer buys a reader token for as long; an
//! explicit `--token-ttl` is the operator's choice and is not capped. Against two TEST API servers (whose TokenRequest,
//! like a real API server without `--service-account-max-token-expiration`, grants any
//! lifetime up to 2^32 s), with the real meshctl binary.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};
use testkit::kube_client::token_claims;

const READER: &str = "system:serviceaccount:istio-system:istio-reader-service-account";
const YEAR: i64 = 8760 * 3600;

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// An unsigned JWT with these claims (what anyone who may write the Secret can store).
fn unsigned_jwt(claims: Value) -> String {
    let b = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string().as_bytes())
    };
    format!("{}.{}.", b(&json!({"alg": "none"})), b(&claims))
}

/// The remote secret for west, as stored in east.
fn west_secret(m: &Mesh) -> Value {
    secret(&m.east, "istio-remote-secret-west").expect("west's remote secret in east")
}

/// Rewrites the token of west's remote secret in east (everything else as stored).
fn store_token(m: &Mesh, token: &str) {
    let mut s = west_secret(m);
    let kc = stored_kubeconfig(&s, "west");
    let kc = kc.replace(&token_of(&kc), token);
    s["data"]["west"] = json!(base64::engine::general_purpose::STANDARD.encode(kc));
    m.east.store().apply(s).unwrap();
}

/// The reader's token claiming `lifetime` seconds (`exp - iat`; at most since 1970: `iat`
/// is a Unix time), 2 minutes from expiry (so it is due under the default threshold).
fn claiming(lifetime: i64) -> String {
    let exp = now() + 120;
    unsigned_jwt(json!({"sub": READER, "iat": (exp - lifetime).max(0), "exp": exp}))
}

/// `meshctl credentials refresh` of west and east, `-o json`, plus `extra`.
async fn refresh(m: &Mesh, extra: &[&str]) -> (i32, Value, String) {
    let mut args = both_contexts("credentials", m.kc());
    args.insert(1, "refresh");
    args.extend(["-o", "json"]);
    args.extend_from_slice(extra);
    let out = meshctl(&args).await;
    let all = text(&out);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {all}"));
    (out.status.code().unwrap(), v, all)
}

/// The outcome for west's remote secret stored in east.
fn west_in_east(v: &Value) -> Value {
    v["secrets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["stored_in"] == "east" && e["cluster"] == "west")
        .unwrap_or_else(|| panic!("no east/west outcome in {v:#}"))
        .clone()
}

/// `exp - iat` of the token stored now for west in east, and seconds until its `exp`.
fn stored_lifetime(m: &Mesh) -> (i64, i64) {
    let claims = token_claims(&token_of(&stored_kubeconfig(&west_secret(m), "west")));
    let (iat, exp) = (
        claims["iat"].as_i64().unwrap(),
        claims["exp"].as_i64().unwrap(),
    );
    (exp - iat, exp - now())
}

async fn joined() -> Mesh {
    let m = mesh().await;
    m.join(&["--token-ttl", "1h"]).await;
    m
}

/// A stored token claiming to be issued in 1970 (a lifetime of about 56 years, which
/// TokenRequest grants: up to 2^32 s): the new token is for 8760h, with a warning on stderr
/// and in the JSON naming the cap and `--token-ttl`; a dry run says the same. (Before the
/// cap, refresh asked for the 56 years and west granted them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_lifetime_is_capped_at_a_year_with_a_warning() {
    let m = joined().await;
    store_token(&m, &claiming(1 << 32));

    let (code, v, all) = refresh(&m, &["--dry-run"]).await;
    assert_eq!(code, 0, "{all}");
    let e = west_in_east(&v);
    assert_eq!(e["action"], "would-refresh", "{e}");
    assert!(
        e["reason"]
            .as_str()
            .unwrap()
            .contains("would request a 8760h token"),
        "{e}"
    );
    assert!(
        e["warning"].as_str().unwrap().contains("--token-ttl"),
        "{e}"
    );

    let (code, v, all) = refresh(&m, &[]).await;
    assert_eq!(code, 0, "{all}");
    let e = west_in_east(&v);
    assert_eq!(e["action"], "refreshed", "{e}");
    assert!(
        e["reason"].as_str().unwrap().contains("new 8760h token"),
        "{e}"
    );
    let warning = e["warning"].as_str().expect("a warning in the JSON");
    for want in [
        "Secret istio-system/istio-remote-secret-west key west",
        "claims a lifetime of 5",
        "unverified",
        "8760h (365 days)",
        "the new token is for 8760h",
        "Pass --token-ttl to choose the lifetime",
    ] {
        assert!(warning.contains(want), "{want:?} not in: {warning}");
    }
    assert!(
        all.contains(&format!("warning: {warning}")),
        "on stderr: {all}"
    );
    let (lifetime, left) = stored_lifetime(&m);
    assert_eq!(lifetime, YEAR, "the new token's exp - iat");
    assert!((YEAR - 60..=YEAR + 5).contains(&left), "expires in {left}s");
}

/// A claim within the cap is kept as it is, without a warning; an explicit `--token-ttl`
/// longer than the cap is the operator's choice and is granted as asked, without a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifetime_within_the_cap_and_an_explicit_token_ttl_are_kept() {
    let m = joined().await;
    store_token(&m, &claiming(720 * 3600));
    let (code, v, all) = refresh(&m, &[]).await;
    assert_eq!(code, 0, "{all}");
    let e = west_in_east(&v);
    assert_eq!(e["action"], "refreshed", "{e}");
    assert!(e.get("warning").is_none(), "{e}");
    assert!(!all.contains("warning:"), "{all}");
    assert_eq!(stored_lifetime(&m).0, 720 * 3600);

    store_token(&m, &claiming(1 << 32));
    let (code, v, all) = refresh(&m, &["--token-ttl", "20000h"]).await;
    assert_eq!(code, 0, "{all}");
    let e = west_in_east(&v);
    assert_eq!(e["action"], "refreshed", "{e}");
    assert!(e.get("warning").is_none(), "{e}");
    assert!(!all.contains("warning:"), "{all}");
    assert_eq!(stored_lifetime(&m).0, 20000 * 3600);
}
