//! `meshctl credentials status|refresh|cronjob` and check's expiry horizon against two TEST
//! API servers. Tokens are made old with the servers' clocks: rewound while `join` mints a
//! token, then set right again, so the token was issued "in the past" and meshctl (which
//! judges by its own clock) sees little of its lifetime left.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use testkit::kube_client::token_claims;

const MIN: u64 = 60;

/// west's token (stored in east) was minted `age` ago with a 1h lifetime; east's (stored in
/// west) is fresh.
async fn joined_with_west_token_aged(age: Duration) -> Mesh {
    let m = mesh().await;
    m.west.clock().rewind(age);
    m.join(&["--token-ttl", "1h"]).await;
    m.west.clock().advance(age);
    m
}

/// `cmd` (its words) of west and east ([`both_contexts`]).
fn two(m: &Mesh, cmd: &[&'static str]) -> Vec<String> {
    let (last, first) = cmd.split_last().expect("a command");
    let rest = both_contexts(last, m.kc());
    first.iter().chain(&rest).map(|s| s.to_string()).collect()
}

async fn run_json(m: &Mesh, cmd: &[&'static str], extra: &[&str]) -> (i32, Value, String) {
    let mut args = two(m, cmd);
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(["-o".to_string(), "json".to_string()]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = meshctl(&a).await;
    let all = text(&out);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {all}"));
    (out.status.code().unwrap(), v, all)
}

/// The entry of `list` stored in `stored_in` for cluster `cluster`.
fn entry<'a>(list: &'a Value, stored_in: &str, cluster: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|e| e["stored_in"] == stored_in && e["cluster"] == cluster)
        .unwrap_or_else(|| panic!("no {stored_in}/{cluster} in {list:#}"))
}

fn remote(m: &Mesh, stored_in: &str, cluster: &str) -> Value {
    let s = if stored_in == "east" {
        &m.east
    } else {
        &m.west
    };
    secret(s, &format!("istio-remote-secret-{cluster}")).expect("remote secret")
}

/// Seconds until `token` expires (its `exp` claim), by this machine's clock.
fn exp_in(token: &str) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    token_claims(token)["exp"].as_i64().unwrap() - now
}

fn istiod(s: &k8s_test_server::TestApiServer, tag: &str) {
    s.store()
        .apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "istiod", "namespace": "istio-system", "labels": {"app": "istiod"}},
            "spec": {"selector": {"matchLabels": {"app": "istiod"}},
                "template": {"metadata": {"labels": {"app": "istiod"}},
                    "spec": {"containers": [{"name": "discovery", "image": format!("docker.io/istio/pilot:{tag}")}]}}}}))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_reissues_a_token_under_the_threshold_and_leaves_a_fresh_one_alone() {
    let m = joined_with_west_token_aged(Duration::from_secs(50 * MIN)).await;
    istiod(&m.east, "1.29.5");
    let old = stored_kubeconfig(&remote(&m, "east", "west"), "west");
    let old_token = token_of(&old);
    assert!(exp_in(&old_token) <= 10 * MIN as i64 + 5);
    let west_before = remote(&m, "west", "east");

    // status: the cluster each secret reads, how, and when it expires.
    let (code, v, all) = run_json(&m, &["credentials", "status"], &[]).await;
    assert_eq!(code, 0, "{all}");
    let e = entry(&v["credentials"], "east", "west");
    assert_eq!(e["credential"]["kind"], "token-request", "{e}");
    assert_eq!(
        e["credential"]["service_account"],
        "istio-reader-service-account"
    );
    assert_eq!(e["reads_context"], "west");
    assert_eq!(e["server"], m.west.url());
    let left = e["remaining"].as_str().unwrap();
    assert!(
        (left.starts_with("9m ") && left.ends_with(" left")) || left == "10m left",
        "{e}"
    );
    assert!(!all.contains(&old_token), "status printed a token");

    // 10m left of 1h: under a third of its lifetime. east's fresh token: above.
    let (code, v, all) = run_json(&m, &["credentials", "refresh"], &[]).await;
    assert_eq!(code, 0, "{all}");
    let done = entry(&v["secrets"], "east", "west");
    assert_eq!(done["action"], "refreshed", "{done}");
    let kept = entry(&v["secrets"], "west", "east");
    assert_eq!(kept["action"], "left-alone", "{kept}");
    assert!(
        kept["reason"]
            .as_str()
            .unwrap()
            .contains("not under the threshold"),
        "{kept}"
    );
    assert_eq!(
        remote(&m, "west", "east"),
        west_before,
        "west's secret changed"
    );
    // istiod 1.29.5 in east needs a restart to use the new token (istio/istio#60612).
    let note = &v["istiod"][0];
    assert_eq!(note["context"], "east");
    assert_eq!(note["restart_needed"], true, "{note}");
    assert!(
        note["advice"]
            .as_str()
            .unwrap()
            .contains("kubectl --context east -n istio-system rollout restart deployment/istiod")
    );

    let new = stored_kubeconfig(&remote(&m, "east", "west"), "west");
    let new_token = token_of(&new);
    assert_ne!(new_token, old_token);
    assert!(!all.contains(&new_token), "refresh printed the token");
    // Same lifetime as before (1h), everything else in the kubeconfig as stored.
    let left = exp_in(&new_token);
    assert!(
        (3590..=3600).contains(&left),
        "new token expires in {left}s"
    );
    assert_eq!(
        serde_yaml::from_str::<Value>(&new.replace(&new_token, "T")).unwrap(),
        serde_yaml::from_str::<Value>(&old.replace(&old_token, "T")).unwrap()
    );
    // The refreshed remote secret works: a client built from it lists namespaces.
    let client = client_from_yaml(&new).await;
    Api::<Namespace>::all(client)
        .list(&ListParams::default())
        .await
        .expect("the refreshed kubeconfig lists namespaces");

    // Idempotent: a second run changes nothing.
    let (before_w, before_e) = m.settled_snapshots().await;
    let (code, v, all) = run_json(&m, &["credentials", "refresh"], &[]).await;
    assert_eq!(code, 0, "{all}");
    for e in v["secrets"].as_array().unwrap() {
        assert_eq!(e["action"], "left-alone", "{e}");
    }
    assert_eq!(snapshot(&m.east), before_e);
    assert_eq!(snapshot(&m.west), before_w);

    // An explicit threshold above the remaining lifetime refreshes; --token-ttl sets the new one.
    let (code, v, all) = run_json(
        &m,
        &["credentials", "refresh"],
        &["--threshold", "2h", "--token-ttl", "3h"],
    )
    .await;
    assert_eq!(code, 0, "{all}");
    assert_eq!(entry(&v["secrets"], "west", "east")["action"], "refreshed");
    let t = token_of(&stored_kubeconfig(&remote(&m, "west", "east"), "east"));
    assert!(exp_in(&t) > 3 * 3600 - 10, "{}", exp_in(&t));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_credential_is_reported_fails_check_and_refresh_revives_it() {
    let m = joined_with_west_token_aged(Duration::from_secs(2 * 3600)).await;
    m.make_gateways_ready();
    let (_, v, _) = run_json(&m, &["credentials", "status"], &[]).await;
    let e = entry(&v["credentials"], "east", "west");
    assert!(
        e["remaining"].as_str().unwrap().starts_with("expired "),
        "{e}"
    );
    let (code, v, _) = run_json(&m, &["check"], &["--allow-loopback-server"]).await;
    assert_eq!(code, 1);
    let i = check_item(&v, "secret for west in east", "token expiry");
    assert_eq!(i["status"], "fail", "{i}");
    // The refresh command line (check may add --kubeconfig or -n between its words).
    let hint = i["hint"].as_str().unwrap();
    let refresh = hint
        .split_once("issue a new token: meshctl credentials refresh")
        .map(|(_, rest)| rest.split(" (or ").next().unwrap_or(rest))
        .unwrap_or_else(|| panic!("{i}"));
    assert!(refresh.ends_with("--context west --context east"), "{i}");
    let (code, v, all) = run_json(&m, &["credentials", "refresh"], &[]).await;
    assert_eq!(code, 0, "{all}");
    let done = entry(&v["secrets"], "east", "west");
    assert!(
        done["reason"].as_str().unwrap().starts_with("expired "),
        "{done}"
    );
    // No istiod Deployment: the version cannot be told, so the restart is advised.
    assert_eq!(v["istiod"][0]["restart_needed"], Value::Null);
    let (code, _, all) = run_json(&m, &["check"], &["--allow-loopback-server"]).await;
    assert_eq!(code, 0, "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_changes_nothing_and_prints_no_token() {
    let m = joined_with_west_token_aged(Duration::from_secs(55 * MIN)).await;
    istiod(&m.east, "1.30.3");
    let tokens = [
        token_of(&stored_kubeconfig(&remote(&m, "east", "west"), "west")),
        token_of(&stored_kubeconfig(&remote(&m, "west", "east"), "east")),
    ];
    let (before_w, before_e) = m.settled_snapshots().await;
    let (code, v, all) = run_json(&m, &["credentials", "refresh"], &["--dry-run"]).await;
    assert_eq!(code, 0, "{all}");
    let e = entry(&v["secrets"], "east", "west");
    assert_eq!(e["action"], "would-refresh", "{e}");
    assert!(e["reason"].as_str().unwrap().contains(
        "would request a 1h token for istio-system/istio-reader-service-account from context west"
    ));
    let note = &v["istiod"][0];
    assert_eq!(note["restart_needed"], false, "{note}");
    assert!(
        note["advice"]
            .as_str()
            .unwrap()
            .contains("no restart needed")
    );
    // The table form too.
    let args = {
        let mut a = two(&m, &["credentials", "refresh"]);
        a.push("--dry-run".into());
        a
    };
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let table = m.ok(&a).await;
    assert!(table.contains("would refresh"), "{table}");
    assert!(
        table.contains("picks up the rewritten remote secrets by itself"),
        "{table}"
    );
    for out in [&all, &table] {
        for t in &tokens {
            assert!(!out.contains(t.as_str()), "a token was printed:\n{out}");
        }
        assert!(
            !out.contains("eyJ"),
            "something JWT-like was printed:\n{out}"
        );
    }
    assert_eq!(snapshot(&m.west), before_w);
    assert_eq!(snapshot(&m.east), before_e);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_tokens_are_listed_and_left_alone() {
    let m = mesh().await;
    m.join(&[]).await;
    let args = two(&m, &["credentials", "status"]);
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    let table = m.ok(&a).await;
    assert!(table.starts_with("STORED IN"), "{table}");
    assert!(table.contains("legacy long-lived Secret token"), "{table}");
    assert!(table.contains("never expires"), "{table}");
    let before = settled_snapshot(&m.east).await;
    let (code, v, all) = run_json(&m, &["credentials", "refresh"], &["--threshold", "1000d"]).await;
    assert_eq!(code, 0, "{all}");
    for e in v["secrets"].as_array().unwrap() {
        assert_eq!(e["action"], "left-alone", "{e}");
        assert!(
            e["reason"].as_str().unwrap().contains("TokenRequest"),
            "{e}"
        );
    }
    assert_eq!(snapshot(&m.east), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_whose_cluster_is_not_given_fails_with_the_fix() {
    let m = joined_with_west_token_aged(Duration::from_secs(50 * MIN)).await;
    let out = meshctl(&[
        "credentials",
        "refresh",
        "--kubeconfig",
        m.kc(),
        "--context",
        "east",
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("FAILED"), "{t}");
    assert!(
        t.contains("cluster west is not one of the --context clusters"),
        "{t}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_warns_on_a_soon_expiring_intermediate() {
    let m = mesh().await;
    // Intermediates that end in 10 days (the root in ten years).
    m.ok(&[
        "certs",
        "init",
        "--clusters",
        "west,east",
        "--days",
        "10",
        "--out",
        p(&m.certs),
        "--force",
    ])
    .await;
    m.join(&[]).await;
    m.make_gateways_ready();
    let (code, v, all) = run_json(&m, &["check"], &["--allow-loopback-server"]).await;
    assert_eq!(code, 0, "{all}");
    let find = |scope: &str, name: &str| check_item(&v, scope, name);
    for ctx in ["west", "east"] {
        let i = find(&format!("cluster {ctx}"), "intermediate expiry");
        assert_eq!(i["status"], "warn", "{i}");
        assert!(
            i["detail"]
                .as_str()
                .unwrap()
                .contains("ca-cert.pem expires in")
        );
        assert_eq!(
            find(&format!("cluster {ctx}"), "root expiry")["status"],
            "pass"
        );
    }
    // A shorter horizon: nothing to warn about.
    let (_, v, _) = run_json(
        &m,
        &["check"],
        &["--allow-loopback-server", "--warn-before", "5d"],
    )
    .await;
    let i = check_item(&v, "cluster west", "intermediate expiry");
    assert_eq!(i["status"], "pass", "{i}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cronjob_prints_a_job_that_runs_refresh_and_no_secret() {
    let m = mesh().await;
    let out = m
        .ok(&[
            "credentials",
            "cronjob",
            "--context",
            "west",
            "--context",
            "east",
            "--image",
            "example.com/meshctl:1",
            "--threshold",
            "6h",
        ])
        .await;
    assert!(
        out.contains("create secret generic meshctl-kubeconfigs"),
        "{out}"
    );
    let docs: Vec<Value> = out
        .split("\n---\n")
        .filter_map(|d| serde_yaml::from_str::<Value>(d).ok())
        .filter(|d| d.is_object())
        .collect();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["ServiceAccount", "CronJob"], "{out}");
    let pod = &docs[1]["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"], false);
    let cmd: Vec<&str> = pod["containers"][0]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(
        cmd,
        [
            "meshctl",
            "credentials",
            "refresh",
            "--kubeconfig",
            "/etc/meshctl/kubeconfig",
            "-n",
            "istio-system",
            "-o",
            "json",
            "--context",
            "west",
            "--context",
            "east",
            "--threshold",
            "6h"
        ]
    );
    // Readable by the job's user: the kubelet gives a Secret volume's files to the pod's
    // fsGroup only (root's otherwise; found by an audit session).
    assert_eq!(pod["volumes"][0]["secret"]["defaultMode"], 0o440);
    assert_eq!(pod["securityContext"]["fsGroup"], 65532);
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    // Bad input (`--schedule hourly`): usage_exit_codes.rs.
}

/// A schedule that lets a token expire between runs is refused before anything is printed;
/// one where a single failed run would is warned of; Kubernetes' schedule syntax is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cronjob_refuses_a_schedule_slower_than_the_tokens() {
    init();
    let cronjob = |extra: &[&'static str]| {
        let mut args = vec![
            "credentials",
            "cronjob",
            "--context",
            "west",
            "--image",
            "example.com/meshctl:1",
        ];
        args.extend_from_slice(extra);
        args
    };
    // Hourly (the default) with one-hour tokens: renewed only in their last 20 minutes.
    let out = meshctl(&cronjob(&["--token-ttl", "1h"])).await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("waits up to 1h between runs, but refresh renews a token only in its last 20m"),
        "{t}"
    );
    assert!(t.contains("Run at least every 10m"), "{t}");
    assert!(out.stdout.is_empty(), "{t}");
    // An explicit threshold is what counts, also in Kubernetes' descriptor form.
    let out = meshctl(&cronjob(&[
        "--threshold",
        "30m",
        "--schedule",
        "@every 45m",
    ]))
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    // Weekdays only leaves the weekend: 64 hours.
    let out = meshctl(&cronjob(&[
        "--threshold",
        "24h",
        "--schedule",
        "0 9-17 * * MON-FRI",
    ]))
    .await;
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("waits up to 2days 16h between runs"), "{t}");
    // Within the threshold but over half of it: printed, with a warning.
    let out = meshctl(&cronjob(&[
        "--token-ttl",
        "1h",
        "--schedule",
        "*/15 * * * *",
    ]))
    .await;
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("one failed run would let a token expire"),
        "{t}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("kind: CronJob"),
        "{t}"
    );
    // Every ten minutes: no warning. A schedule that never runs, or one Kubernetes refuses.
    let out = meshctl(&cronjob(&[
        "--token-ttl",
        "1h",
        "--schedule",
        "*/10 * * * *",
    ]))
    .await;
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        text(&out)
    );
    let out = meshctl(&cronjob(&["--schedule", "0 0 30 2 *"])).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("runs less than twice in nine years"));
    for bad in ["TZ=UTC 0 * * * *", "0 0 L * *", "60 * * * *"] {
        let out = meshctl(&cronjob(&["--schedule", bad])).await;
        assert_eq!(out.status.code(), Some(2), "{bad}: {}", text(&out));
        assert!(out.stdout.is_empty());
    }
    let out = meshctl(&cronjob(&["--schedule", "@hourly"])).await;
    assert!(out.status.success(), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_failing_secret_does_not_stop_the_others_and_exits_1() {
    let m = mesh().await;
    let age = Duration::from_secs(50 * MIN);
    m.west.clock().rewind(age);
    m.east.clock().rewind(age);
    m.join(&["--token-ttl", "1h"]).await;
    m.west.clock().advance(age);
    m.east.clock().advance(age);
    // west's reader is gone: no token can be issued for it.
    m.west
        .store()
        .delete(
            "v1",
            "ServiceAccount",
            Some("istio-system"),
            "istio-reader-service-account",
        )
        .unwrap();
    let (code, v, all) = run_json(&m, &["credentials", "refresh"], &[]).await;
    assert_eq!(code, 1, "{all}");
    let failed = entry(&v["secrets"], "east", "west");
    assert_eq!(failed["action"], "failed", "{failed}");
    let why = failed["reason"].as_str().unwrap();
    assert!(
        why.contains(
            "TokenRequest for istio-system/istio-reader-service-account in context \"west\""
        ),
        "{why}"
    );
    assert_eq!(entry(&v["secrets"], "west", "east")["action"], "refreshed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_warns_on_a_credential_within_the_horizon_only() {
    let m = mesh().await;
    m.join(&["--token-ttl", "1000h"]).await; // about 41 days
    m.make_gateways_ready();
    let judge = |v: &Value| check_item(v, "secret for west in east", "token expiry");
    let (code, v, all) = run_json(&m, &["check"], &["--allow-loopback-server"]).await;
    assert_eq!(code, 0, "{all}");
    assert_eq!(judge(&v)["status"], "pass", "{}", judge(&v));
    let (code, v, all) = run_json(
        &m,
        &["check"],
        &["--allow-loopback-server", "--warn-before", "50d"],
    )
    .await;
    assert_eq!(code, 0, "{all}");
    let i = judge(&v);
    assert_eq!(i["status"], "warn", "{i}");
    assert!(
        i["hint"]
            .as_str()
            .unwrap()
            .contains("meshctl credentials cronjob"),
        "{i}"
    );
}

/// Switching to `--token-ttl` leaves the never-expiring token Secret an earlier join made,
/// which authenticates until deleted: join says so, with the command that revokes it, and
/// says no more once it is gone (found by an audit session, 2026-12-06).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_to_expiring_tokens_names_the_never_expiring_one_left() {
    let m = mesh().await;
    m.join(&[]).await;
    let name = "istio-reader-service-account-istio-remote-secret-token";
    let out = meshctl(&m.join_args(&["--token-ttl", "24h"])).await;
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    for ctx in ["west", "east"] {
        let revoke = format!("kubectl --context {ctx} -n istio-system delete secret {name}");
        assert!(t.contains(&revoke), "{t}");
    }
    assert!(t.contains("never-expiring token Secret"), "{t}");
    for s in [&m.west, &m.east] {
        s.store()
            .delete("v1", "Secret", Some("istio-system"), name)
            .unwrap();
    }
    let out = meshctl(&m.join_args(&["--token-ttl", "24h"])).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("never-expiring"), "{}", text(&out));
}
