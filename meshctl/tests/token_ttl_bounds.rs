//! `--token-ttl` is bounded to what the TokenRequest API accepts (10m to 2^32 s) when it is
//! parsed: a longer one is a usage error (exit 2) of every command that takes it, with
//! nothing written and no panic; 2^32 s itself works. `--token-ttl` without the kubeconfig's
//! CA is refused before the first write. Real meshctl processes against TEST API servers.

mod common;

use common::*;
use serde_json::Value;
use testkit::kube_client::token_claims;

/// Longer than 2^32 s: past u64 seconds as i64, hours that overflow nothing, one second over.
const TOO_LONG: [&str; 3] = ["18446744073709551615s", "99999999999h", "4294967297s"];

/// Runs meshctl and expects the usage error for `ttl`: exit 2, the bound named, no panic.
async fn refused(args: &[&str], ttl: &str) {
    let t = usage_error(args).await;
    assert!(
        t.contains(&format!("{ttl:?} is longer than 2^32 s")) && t.contains("--token-ttl"),
        "{args:?}:\n{t}"
    );
    assert!(!t.contains("panicked"), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_ttl_past_2_pow_32_seconds_is_refused_by_every_command_before_any_change() {
    let m = joined_mesh().await;
    let before = m.settled_snapshots().await;
    for ttl in TOO_LONG {
        let mut create = remote_secret_args(m.kc(), &["--token-ttl", ttl]);
        refused(&create, ttl).await;
        create.push("--dry-run");
        refused(&create, ttl).await;
        refused(&m.join_args(&["--token-ttl", ttl]), ttl).await;
        let mut refresh = both_contexts("credentials", m.kc());
        refresh.insert(1, "refresh");
        refresh.extend(["--token-ttl", ttl]);
        refused(&refresh, ttl).await;
        refused(
            &[
                "credentials",
                "cronjob",
                "--context",
                "west",
                "--image",
                "meshctl:dev",
                "--token-ttl",
                ttl,
            ],
            ttl,
        )
        .await;
    }
    assert_eq!(m.settled_snapshots().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_longest_lifetime_token_request_accepts_is_issued() {
    let m = mesh().await;
    let out = m
        .ok(&remote_secret_args(m.kc(), &["--token-ttl", "4294967296s"]))
        .await;
    let claims = token_claims(&token_of(&printed_kubeconfig(&out, "west")));
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        1 << 32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_ttl_without_the_kubeconfigs_ca_changes_nothing() {
    let m = mesh().await;
    // West's context without certificate-authority-data (TLS unchecked instead).
    let mut kc: Value =
        serde_yaml::from_str(&std::fs::read_to_string(&m.kubeconfig).unwrap()).unwrap();
    for c in kc["clusters"].as_array_mut().unwrap() {
        let cluster = c["cluster"].as_object_mut().unwrap();
        cluster.remove("certificate-authority-data");
        cluster.insert("insecure-skip-tls-verify".into(), Value::Bool(true));
    }
    let path = m.dir.path().join("no-ca");
    std::fs::write(&path, serde_yaml::to_string(&kc).unwrap()).unwrap();
    let before = settled_snapshot(&m.west).await;
    let out = meshctl(&remote_secret_args(p(&path), &["--token-ttl", "1h"])).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("no certificate-authority data")
            && t.contains("Nothing was changed in context \"west\""),
        "{t}"
    );
    assert_eq!(settled_snapshot(&m.west).await, before, "{t}");
}
