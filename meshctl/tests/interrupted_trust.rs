//! `rotate prepare|activate|finish` and `credentials refresh` interrupted part-way by a
//! persistent API server failure in one cluster (the TEST SERVER's injected faults): exit 1
//! within a bounded time, what each cluster is left at and what that means for traffic, and a
//! re-run that completes; and a 409 Conflict on refresh's conditional write.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::runs::*;
use common::*;
use k8s_test_server::{Fault, FaultRule, TestApiServer};
use serde_json::Value;

fn file(s: &TestApiServer, f: &str) -> String {
    let secret = secret(s, "cacerts").unwrap();
    let b = base64::engine::general_purpose::STANDARD
        .decode(secret["data"][f].as_str().unwrap())
        .unwrap();
    String::from_utf8(b).unwrap()
}

fn stage(s: &TestApiServer) -> String {
    let secret = secret(s, "cacerts").unwrap();
    secret["metadata"]["annotations"]["meshctl.io/rotation-stage"]
        .as_str()
        .unwrap_or("none")
        .to_string()
}

/// `check -o json`'s verdict on cross-cluster trust (exit code aside: no gateways here).
async fn trust_holds(m: &Mesh) -> bool {
    let (_, items) = check_json(m.kc(), &[], true).await;
    item(&items, "mesh", "cross-cluster trust of signing roots")["status"] == "pass"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rotation_step_interrupted_says_where_each_cluster_is_and_resumes() {
    let m = mesh_with_cacerts().await;
    let dir = m.dir.path().join("rotation");
    let step = |s: &'static str| m.rotate_args(s, &dir);
    // Reading east fails: nothing changes, and the message says so.
    outage(&m.east, Fault::Internal, "get", "secrets");
    let all = interrupted(&step("prepare")).await;
    says(
        &all,
        &[
            "reading Secret cacerts in context \"east\"",
            "500 InternalError",
            "nothing was changed",
        ],
    );
    assert_eq!(
        (stage(&m.west), stage(&m.east)),
        ("none".into(), "none".into())
    );
    m.east.faults().clear();

    let half_done = [
        (
            "prepare",
            "none",
            "prepared",
            "every cluster still signs with the old root, so traffic between them is unaffected",
        ),
        (
            "activate",
            "prepared",
            "activated",
            "every cluster trusts both roots since prepare, so traffic between them keeps working",
        ),
        (
            "finish",
            "activated",
            "finished",
            "every cluster already signs with the new root, so traffic between them keeps working",
        ),
    ];
    for (s, before, after, traffic) in half_done {
        outage(&m.east, Fault::Unavailable, "patch", "secrets");
        let all = interrupted(&step(s)).await;
        says(
            &all,
            &[
                "applying Secret istio-system/cacerts in context \"east\"",
                "503 ServiceUnavailable",
                "interrupted: updated 1 of 2 cluster(s) that needed it (west); re-run the same command to resume",
                &format!("not updated: east (still {before})"),
                traffic,
            ],
        );
        assert_eq!(
            (stage(&m.west), stage(&m.east)),
            (after.to_string(), before.to_string()),
            "{s}"
        );
        assert!(
            trust_holds(&m).await,
            "{s}: the half-done state keeps trust"
        );
        m.east.faults().clear();
        let all = succeeds(&step(s)).await;
        says(
            &all,
            &[
                "cacerts updated in context \"east\"",
                &format!("context \"west\" is already {after}"),
            ],
        );
        assert_eq!(stage(&m.east), after);
    }
    // The end state of an uninterrupted rotation: the new root only, everywhere, and east
    // signs with the intermediate the interrupted activate kept for it.
    let new_root = std::fs::read_to_string(dir.join("root-cert.pem")).unwrap();
    for s in [&m.west, &m.east] {
        assert_eq!(file(s, "root-cert.pem").trim(), new_root.trim());
    }
    assert_eq!(
        file(&m.east, "ca-cert.pem"),
        std::fs::read_to_string(dir.join("east/ca-cert.pem")).unwrap()
    );
    assert!(trust_holds(&m).await);
}

/// Another writer changes east's `cacerts` after `rotate prepare` read it and before its
/// write lands (inside the retry after a 503): the write is conditional on what was read, so
/// it is refused (409) instead of overwriting a state the step did not decide from, and a
/// re-run decides afresh and completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_step_never_overwrites_a_cacerts_changed_since_it_was_read() {
    let m = mesh_with_cacerts().await;
    let dir = m.dir.path().join("rotation");
    let args = m.rotate_args("prepare", &dir);
    m.east.faults().inject(
        FaultRule::new(Fault::Unavailable)
            .verb("patch")
            .resource("secrets")
            .times(1),
    );
    let step = tokio::spawn({
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            run(&args).await
        }
    });
    // The 503 answered east's write; its retry waits at least 250 ms: write in between.
    let started = Instant::now();
    while m.east.faults().injected() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no write reached east"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut other = secret(&m.east, "cacerts").unwrap();
    other["metadata"]["annotations"]["example.com/other-writer"] = "was here".into();
    m.east.store().apply(other).unwrap();
    let (code, took, all) = step.await.unwrap();
    assert_eq!(code, Some(1), "{all}");
    assert!(took < Duration::from_secs(30), "{took:?}");
    says(
        &all,
        &[
            "the object has been modified",
            "interrupted: updated 1 of 2 cluster(s) that needed it (west)",
            "not updated: east (still none)",
        ],
    );
    assert_eq!(stage(&m.east), "none");
    let all = succeeds(&args).await;
    says(&all, &["cacerts updated in context \"east\""]);
    assert_eq!(stage(&m.east), "prepared");
    let east = secret(&m.east, "cacerts").unwrap();
    assert_eq!(
        east["metadata"]["annotations"]["example.com/other-writer"],
        "was here"
    );
}

/// west's and east's tokens (1h) were minted 50 minutes ago: both are due for a refresh.
async fn joined_with_old_tokens() -> Mesh {
    let m = mesh().await;
    let age = Duration::from_secs(50 * 60);
    m.west.clock().rewind(age);
    m.east.clock().rewind(age);
    m.join(&["--token-ttl", "1h"]).await;
    m.west.clock().advance(age);
    m.east.clock().advance(age);
    m
}

fn refresh(m: &Mesh) -> Vec<&str> {
    let mut a = vec!["credentials"];
    a.extend(both_contexts("refresh", m.kc()));
    a
}

fn stored_token(s: &TestApiServer, cluster: &str) -> String {
    let kc = stored_kubeconfig(
        &secret(s, &format!("istio-remote-secret-{cluster}")).unwrap(),
        cluster,
    );
    let v: Value = serde_yaml::from_str(&kc).unwrap();
    v["users"][0]["user"]["token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_interrupted_in_one_cluster_says_so_and_a_rerun_completes() {
    let m = joined_with_old_tokens().await;
    let (west_old, east_old) = (stored_token(&m.west, "east"), stored_token(&m.east, "west"));
    outage(&m.east, Fault::Unavailable, "patch", "secrets");
    let all = interrupted(&refresh(&m)).await;
    says(
        &all,
        &[
            "updating Secret istio-system/istio-remote-secret-west in context \"east\"",
            "503 ServiceUnavailable",
            "1 remote secret(s) FAILED (see why above), 1 refreshed and stored",
            "once that expires, the istiod of the cluster storing it stops discovering",
            "Re-run the same command once the cause is fixed",
        ],
    );
    let west_new = stored_token(&m.west, "east");
    assert_ne!(west_new, west_old);
    assert_eq!(stored_token(&m.east, "west"), east_old);
    m.east.faults().clear();
    let all = succeeds(&refresh(&m)).await;
    assert!(all.contains("left alone"), "{all}");
    assert_eq!(
        stored_token(&m.west, "east"),
        west_new,
        "not refreshed twice"
    );
    assert_ne!(stored_token(&m.east, "west"), east_old);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rereads_a_secret_that_changed_meanwhile_and_stops_on_a_persistent_conflict() {
    let m = joined_with_old_tokens().await;
    let east_old = stored_token(&m.east, "west");
    // One 409: the Secret is read again and the key written on top of it.
    m.east.faults().inject(
        FaultRule::new(Fault::conflict())
            .verb("patch")
            .resource("secrets")
            .times(1),
    );
    let all = succeeds(&refresh(&m)).await;
    assert_eq!(m.east.faults().injected(), 1);
    assert!(!all.contains("FAILED"), "{all}");
    assert_ne!(stored_token(&m.east, "west"), east_old);

    // A conflict every time: a few re-reads, then FAILED with the server's words.
    let m = joined_with_old_tokens().await;
    outage(&m.east, Fault::conflict(), "patch", "secrets");
    let all = interrupted(&refresh(&m)).await;
    says(
        &all,
        &[
            "Operation cannot be fulfilled on secrets \"istio-remote-secret-west\": the object has been modified",
            "409 Conflict",
            "1 remote secret(s) FAILED",
        ],
    );
    assert_eq!(m.east.faults().injected(), 4, "one try and 3 re-reads");
}

/// east stops taking requests up after the run connected (503 on minting and on writing):
/// the first request that meets it waits out its retries, and the rest of the run does not
/// ask it again (each would wait as long), saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_does_not_wait_twice_on_a_cluster_that_stopped_answering() {
    let m = joined_with_old_tokens().await;
    outage(&m.east, Fault::Unavailable, "create", "serviceaccounts");
    outage(&m.east, Fault::Unavailable, "patch", "secrets");
    let all = interrupted(&refresh(&m)).await;
    says(
        &all,
        &[
            "TokenRequest for istio-system/istio-reader-service-account in context \"east\"",
            "not tried: context \"east\" did not take a request up earlier in this run",
            "2 remote secret(s) FAILED",
        ],
    );
    // One request and its 4 retries, not two.
    assert_eq!(m.east.faults().injected(), 5, "{all}");
    m.east.faults().clear();
    succeeds(&refresh(&m)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_with_one_cluster_down_says_to_rerun_not_to_add_its_context() {
    let m = joined_with_old_tokens().await;
    let east_old = stored_token(&m.east, "west");
    m.east.faults().inject(FaultRule::new(Fault::Unavailable));
    let all = interrupted(&refresh(&m)).await;
    says(
        &all,
        &[
            "error: context east: the API server of context \"east\"",
            "503 ServiceUnavailable",
            "context(s) east could not be reached (see below): if it is one of them, re-run the \
             same command once it answers",
        ],
    );
    m.east.faults().clear();
    succeeds(&refresh(&m)).await;
    assert_ne!(stored_token(&m.east, "west"), east_old);
}
