//! What `join` and `unjoin` may touch: unjoin of one namespace leaves another's objects,
//! join uses a service account it did not create as it is (and unjoin leaves it), two
//! contexts of one cluster are refused, the API server's refusals come before the first
//! change (or are named as refusals, not as something a re-run resumes), the HBONE gateway
//! dials the istiod of its own namespace, and `--dry-run -o json` prints one JSON document.
//! Through the real binary, against two TEST API servers.

mod common;

use std::collections::BTreeMap;

use common::runs::{interrupted, says, succeeds};
use common::*;
use k8s_test_server::{Fault, FaultRule, TestApiServer};
use serde_json::{Value, json};

const RBAC: &str = "rbac.authorization.k8s.io/v1";

/// The stored objects (`kind ns/name` → resourceVersion) whose key mentions `what`.
fn objects_of(s: &TestApiServer, what: &str) -> BTreeMap<String, String> {
    snapshot(s)
        .into_iter()
        .filter(|(k, _)| k.contains(what))
        .collect()
}

/// Creates namespace `ns` as someone else would (not labelled by meshctl).
fn namespace(s: &TestApiServer, ns: &str) {
    s.store()
        .create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
        .unwrap();
}

/// `join -n ns` of west and east.
async fn join_ns(m: &Mesh, ns: &str, extra: &[&str]) -> String {
    let mut args = m.join_args(&["-n", ns]);
    args.extend_from_slice(extra);
    succeeds(&args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unjoin_of_one_namespace_leaves_every_other_namespaces_objects() {
    let m = mesh().await;
    join_ns(&m, "prod-istio", &[]).await;
    join_ns(&m, "test-istio", &["--service-account", "other-reader"]).await;
    let prod = (
        objects_of(&m.west, "prod-istio"),
        objects_of(&m.east, "prod-istio"),
    );
    for s in [&m.west, &m.east] {
        for what in [
            "Secret prod-istio/cacerts",
            "Deployment prod-istio/istio-eastwestgateway",
            "ServiceAccount prod-istio/istio-reader-service-account",
            "ClusterRole /meshctl-istio-reader-prod-istio",
            "ClusterRoleBinding /meshctl-eastwestgateway-prod-istio",
        ] {
            assert!(objects_of(s, what).len() == 1, "{what}");
        }
    }

    // The dry run names test-istio's objects only (its JSON is checked by
    // `unjoin_dry_run_json_is_one_document_with_the_notice_on_stderr`).
    let out = meshctl(&m.unjoin_args(&["-n", "test-istio", "--dry-run", "-o", "json"])).await;
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: String = stdout
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let plan: Value = serde_json::from_str(&json).unwrap();
    let listed: Vec<String> = plan["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["objects"].as_array().unwrap().clone())
        .map(|o| format!("{} {}", o["metadata"]["namespace"], o["metadata"]["name"]))
        .collect();
    assert!(!listed.is_empty());
    for o in &listed {
        assert!(o.contains("test-istio"), "{o} is not test-istio's");
    }

    let out = succeeds(&m.unjoin_args(&["-n", "test-istio"])).await;
    assert!(out.contains("removed"), "{out}");
    assert_eq!(
        (
            objects_of(&m.west, "prod-istio"),
            objects_of(&m.east, "prod-istio")
        ),
        prod,
        "prod-istio is untouched"
    );
    for s in [&m.west, &m.east] {
        let left: Vec<String> = objects_of(s, "test-istio")
            .into_keys()
            .filter(|k| !k.starts_with("Namespace ") && !k.contains("/default"))
            .filter(|k| !k.contains("kube-root-ca.crt"))
            .collect();
        assert!(left.is_empty(), "test-istio leftovers: {left:?}");
    }
    // The same listing as the dry run: what it named is what went.
    assert_eq!(
        listed.len(),
        out.lines()
            .filter_map(|l| l.split("removed ").nth(1))
            .map(|l| l.split(' ').next().unwrap().parse::<usize>().unwrap())
            .sum::<usize>()
    );
    // The cluster-scoped objects carry their namespace (unjoin goes by it).
    let role = m
        .west
        .store()
        .get(
            RBAC,
            "ClusterRole",
            None,
            "meshctl-eastwestgateway-prod-istio",
        )
        .unwrap();
    assert_eq!(
        role["metadata"]["labels"]["meshctl.io/namespace"],
        "prod-istio"
    );
}

/// Roles and bindings made before they carried `meshctl.io/namespace` are told by name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unjoin_tells_unlabelled_roles_of_older_joins_by_their_names() {
    let m = mesh().await;
    join_ns(&m, "prod", &[]).await;
    join_ns(&m, "prod-istio", &["--service-account", "sa2"]).await;
    for s in [&m.west, &m.east] {
        for kind in ["ClusterRole", "ClusterRoleBinding"] {
            for mut o in s.store().list(RBAC, kind, None) {
                let labels = o["metadata"]["labels"].as_object_mut().unwrap();
                if labels.remove("meshctl.io/namespace").is_some() {
                    s.store().apply(o).unwrap();
                }
            }
        }
    }
    let roles = |s: &TestApiServer| -> Vec<String> {
        objects_of(s, "meshctl-")
            .into_keys()
            .filter(|k| k.starts_with("ClusterRole"))
            .collect()
    };
    let before = roles(&m.west);
    assert_eq!(before.len(), 8, "{before:?}");
    succeeds(&m.unjoin_args(&["-n", "prod"])).await;
    let after = roles(&m.west);
    assert_eq!(
        after,
        [
            "ClusterRole /meshctl-eastwestgateway-prod-istio",
            "ClusterRole /meshctl-istio-reader-prod-istio.sa2",
            "ClusterRoleBinding /meshctl-eastwestgateway-prod-istio",
            "ClusterRoleBinding /meshctl-istio-reader-prod-istio.sa2",
        ]
    );
    succeeds(&m.unjoin_args(&["-n", "prod-istio"])).await;
    assert!(roles(&m.west).is_empty());
}

/// A service account of the namespace that Helm made (Istio's base chart makes
/// `istio-reader-service-account`).
fn helm_service_account(s: &TestApiServer, ns: &str, name: &str) {
    s.store()
        .create(json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": ns,
                "labels": {"app.kubernetes.io/managed-by": "Helm"},
                "annotations": {"meta.helm.sh/release-name": "istio-base"}}}))
        .unwrap();
}

fn service_account(s: &TestApiServer, ns: &str, name: &str) -> Option<Value> {
    s.store().get("v1", "ServiceAccount", Some(ns), name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_uses_a_service_account_it_did_not_create_as_is_and_unjoin_leaves_it() {
    let m = mesh().await;
    for s in [&m.west, &m.east] {
        namespace(s, "helmns");
        helm_service_account(s, "helmns", "istio-reader-service-account");
        helm_service_account(s, "helmns", "istiod");
    }
    let all = join_ns(&m, "helmns", &[]).await;
    // A re-run, and a join with another reader account: still not taken over.
    join_ns(&m, "helmns", &[]).await;
    join_ns(&m, "helmns", &["--service-account", "istiod"]).await;
    for s in [&m.west, &m.east] {
        for sa in ["istio-reader-service-account", "istiod"] {
            let got = service_account(s, "helmns", sa).unwrap();
            assert_eq!(
                got["metadata"]["labels"]["app.kubernetes.io/managed-by"],
                "Helm"
            );
        }
        // Its access is granted all the same, by meshctl's own role and binding.
        let binding = s
            .store()
            .get(
                RBAC,
                "ClusterRoleBinding",
                None,
                "meshctl-istio-reader-helmns.istiod",
            )
            .unwrap();
        assert_eq!(binding["subjects"][0]["name"], "istiod");
    }
    // ...and says so.
    says(
        &all,
        &[
            "service account helmns/istio-reader-service-account exists and was not created by meshctl",
        ],
    );
    // The dry run does not list them among what unjoin deletes.
    let out = meshctl(&m.unjoin_args(&["-n", "helmns", "--dry-run", "-o", "json"])).await;
    assert!(out.status.success(), "{}", text(&out));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let accounts: Vec<String> = plan["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["objects"].as_array().unwrap().clone())
        .filter(|o| o["kind"] == "ServiceAccount")
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(accounts, ["istio-eastwestgateway", "istio-eastwestgateway"]);
    succeeds(&m.unjoin_args(&["-n", "helmns"])).await;
    for s in [&m.west, &m.east] {
        for sa in ["istio-reader-service-account", "istiod"] {
            let got = service_account(s, "helmns", sa);
            assert!(got.is_some(), "{sa} was deleted");
        }
        assert!(service_account(s, "helmns", "istio-eastwestgateway").is_none());
        assert!(
            s.store()
                .get(
                    RBAC,
                    "ClusterRoleBinding",
                    None,
                    "meshctl-istio-reader-helmns.istiod"
                )
                .is_none()
        );
    }
    // One meshctl created is meshctl's, and goes with unjoin.
    join_ns(&m, "ownns", &[]).await;
    let got = service_account(&m.west, "ownns", "istio-reader-service-account").unwrap();
    assert_eq!(
        got["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "meshctl"
    );
    let all = join_ns(&m, "ownns", &[]).await;
    assert!(!all.contains("not created by meshctl"), "{all}");
    succeeds(&m.unjoin_args(&["-n", "ownns"])).await;
    assert!(service_account(&m.west, "ownns", "istio-reader-service-account").is_none());
}

/// The gateway's service account as Istio's gateway Helm chart makes it (release
/// `istio-eastwestgateway`: the chart's `app`/`istio` labels, Helm's own label and
/// release annotations).
fn helm_gateway_service_account(s: &TestApiServer, ns: &str) {
    s.store()
        .create(json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "istio-eastwestgateway", "namespace": ns,
                "labels": {"app": "istio-eastwestgateway", "istio": "eastwestgateway",
                    "app.kubernetes.io/managed-by": "Helm"},
                "annotations": {"meta.helm.sh/release-name": "istio-eastwestgateway",
                    "meta.helm.sh/release-namespace": ns}}}))
        .unwrap();
}

/// The objects of one kind in a `--dry-run -o json` plan or an `unjoin --dry-run -o json`
/// plan, by name, over every cluster.
fn planned(plan: &Value, kind: &str) -> Vec<String> {
    plan["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["objects"].as_array().unwrap().clone())
        .filter(|o| o["kind"] == kind)
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

/// The kinds of the objects in a `--dry-run -o json` plan.
fn planned_kinds(plan: &Value) -> Vec<&str> {
    plan["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["objects"].as_array().unwrap())
        .map(|o| o["kind"].as_str().unwrap())
        .collect()
}

async fn dry_run_plan(args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.extend(["--dry-run", "-o", "json"]);
    let out = meshctl(&args).await;
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Istio's gateway Helm chart makes the service account `istio-eastwestgateway` too: join
/// uses it as it is (no relabel, no apply: its resourceVersion stays), runs its gateway as
/// it and binds its role to it, and unjoin removes the rest of the gateway but leaves it.
/// A gateway service account meshctl creates is marked as created by meshctl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_uses_a_gateway_service_account_it_did_not_create_as_is_and_unjoin_leaves_it() {
    let m = mesh().await;
    for s in [&m.west, &m.east] {
        namespace(s, "helmns");
        helm_gateway_service_account(s, "helmns");
    }
    let rv = |s: &TestApiServer| {
        service_account(s, "helmns", "istio-eastwestgateway").unwrap()["metadata"]
            ["resourceVersion"]
            .clone()
    };
    let before = (rv(&m.west), rv(&m.east));
    // The dry run plans no gateway service account (and says why).
    let plan = dry_run_plan(&m.join_args(&["-n", "helmns"])).await;
    assert_eq!(
        planned(&plan, "ServiceAccount"),
        [
            "istio-reader-service-account",
            "istio-reader-service-account"
        ]
    );
    let all = join_ns(&m, "helmns", &[]).await;
    join_ns(&m, "helmns", &[]).await;
    says(
        &all,
        &[
            "west: service account helmns/istio-eastwestgateway exists and was not created by \
             meshctl (it has no label app.kubernetes.io/managed-by=meshctl): it is used as it \
             is, not relabelled, and unjoin leaves it in place",
        ],
    );
    assert_eq!((rv(&m.west), rv(&m.east)), before, "not written");
    for s in [&m.west, &m.east] {
        let sa = service_account(s, "helmns", "istio-eastwestgateway").unwrap();
        assert_eq!(
            sa["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "Helm"
        );
        assert!(
            sa["metadata"]["annotations"]
                .get("meshctl.io/created-by")
                .is_none()
        );
        let d = s
            .store()
            .get(
                "apps/v1",
                "Deployment",
                Some("helmns"),
                "istio-eastwestgateway",
            )
            .unwrap();
        assert_eq!(
            d["spec"]["template"]["spec"]["serviceAccountName"],
            "istio-eastwestgateway"
        );
        let binding = s
            .store()
            .get(
                RBAC,
                "ClusterRoleBinding",
                None,
                "meshctl-eastwestgateway-helmns",
            )
            .unwrap();
        assert_eq!(binding["subjects"][0]["name"], "istio-eastwestgateway");
    }
    // Only the reader's account, which join created, is among what unjoin deletes.
    let plan = dry_run_plan(&m.unjoin_args(&["-n", "helmns"])).await;
    assert_eq!(
        planned(&plan, "ServiceAccount"),
        [
            "istio-reader-service-account",
            "istio-reader-service-account"
        ]
    );
    succeeds(&m.unjoin_args(&["-n", "helmns"])).await;
    for s in [&m.west, &m.east] {
        assert!(service_account(s, "helmns", "istio-eastwestgateway").is_some());
        assert!(
            s.store()
                .get(
                    "apps/v1",
                    "Deployment",
                    Some("helmns"),
                    "istio-eastwestgateway"
                )
                .is_none()
        );
    }
    assert_eq!((rv(&m.west), rv(&m.east)), before, "untouched by unjoin");
    // One join creates is marked as its own (and goes with unjoin).
    join_ns(&m, "ownns", &[]).await;
    for sa in ["istio-eastwestgateway", "istio-reader-service-account"] {
        let got = service_account(&m.west, "ownns", sa).unwrap();
        assert_eq!(
            got["metadata"]["annotations"]["meshctl.io/created-by"], "meshctl",
            "{sa}"
        );
    }
    succeeds(&m.unjoin_args(&["-n", "ownns"])).await;
    assert!(service_account(&m.west, "ownns", "istio-eastwestgateway").is_none());
}

/// A service account as an older meshctl left it after applying its own over Helm's: its
/// managed-by label taken over (`meshctl`), no creation mark, Helm's release annotations
/// and the chart's labels still there.
fn relabelled_service_account(s: &TestApiServer, ns: &str, name: &str, chart_labels: Value) {
    let mut labels = chart_labels;
    labels["app.kubernetes.io/managed-by"] = json!("meshctl");
    s.store()
        .create(json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": ns, "labels": labels,
                "annotations": {"meta.helm.sh/release-name": "istio-base",
                    "meta.helm.sh/release-namespace": ns}}}))
        .unwrap();
}

/// Service accounts an older meshctl relabelled (Istio's reader account, Helm's gateway
/// account) look like meshctl's by their label: they are told apart by Helm's annotations,
/// so join does not write them and unjoin does not delete them. One an older meshctl
/// created (its label, nothing of another installer) is still meshctl's: unjoin deletes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_accounts_an_older_meshctl_relabelled_are_not_taken_for_meshctls() {
    let m = mesh().await;
    for s in [&m.west, &m.east] {
        namespace(s, "oldns");
        relabelled_service_account(
            s,
            "oldns",
            "istio-reader-service-account",
            json!({"app": "istio-reader", "release": "istio-base",
                "app.kubernetes.io/part-of": "istio"}),
        );
        relabelled_service_account(
            s,
            "oldns",
            "istio-eastwestgateway",
            json!({"app": "istio-eastwestgateway", "istio": "eastwestgateway"}),
        );
        // What an older meshctl created: its label only.
        s.store()
            .create(json!({"apiVersion": "v1", "kind": "ServiceAccount",
                "metadata": {"name": "old-reader", "namespace": "oldns",
                    "labels": {"app.kubernetes.io/managed-by": "meshctl"}}}))
            .unwrap();
    }
    let accounts = ["istio-reader-service-account", "istio-eastwestgateway"];
    let rvs = |s: &TestApiServer| -> Vec<Value> {
        accounts
            .iter()
            .map(|a| service_account(s, "oldns", a).unwrap()["metadata"]["resourceVersion"].clone())
            .collect()
    };
    let before = (rvs(&m.west), rvs(&m.east));
    let all = join_ns(&m, "oldns", &[]).await;
    join_ns(&m, "oldns", &["--service-account", "old-reader"]).await;
    says(
        &all,
        &[
            "west: service account oldns/istio-reader-service-account exists and was not \
             created by meshctl (it carries label app.kubernetes.io/managed-by=meshctl from an \
             older meshctl that relabelled it, but not meshctl's meshctl.io/created-by \
             annotation, and its annotation meta.helm.sh/release-name=istio-base says another \
             installer made it)",
            "east: service account oldns/istio-eastwestgateway exists and was not created by \
             meshctl",
        ],
    );
    assert_eq!((rvs(&m.west), rvs(&m.east)), before, "not written by join");
    // The older meshctl's own account is applied as meshctl's, not marked as created now.
    let old = service_account(&m.west, "oldns", "old-reader").unwrap();
    assert!(
        old["metadata"]["annotations"]
            .get("meshctl.io/created-by")
            .is_none()
    );
    let plan = dry_run_plan(&m.unjoin_args(&["-n", "oldns"])).await;
    assert_eq!(
        planned(&plan, "ServiceAccount"),
        ["old-reader", "old-reader"]
    );
    let all = succeeds(&m.unjoin_args(&["-n", "oldns"])).await;
    says(
        &all,
        &[
            "west: ServiceAccount oldns/istio-reader-service-account left in place, not made \
             by meshctl: it carries label app.kubernetes.io/managed-by=meshctl",
        ],
    );
    for s in [&m.west, &m.east] {
        for a in accounts {
            assert!(service_account(s, "oldns", a).is_some(), "{a} was deleted");
        }
        assert!(service_account(s, "oldns", "old-reader").is_none());
    }
    assert_eq!(
        (rvs(&m.west), rvs(&m.east)),
        before,
        "not written by unjoin"
    );
}

/// A kubeconfig whose contexts `west` and `east` both reach the west server.
fn alias_kubeconfig(m: &Mesh) {
    std::fs::write(
        &m.kubeconfig,
        kubeconfig_yaml(&[("west", &m.west), ("east", &m.west)]),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_refuses_two_contexts_of_one_cluster_before_any_change() {
    let m = mesh().await;
    let uid = m
        .west
        .store()
        .get("v1", "Namespace", None, "kube-system")
        .unwrap()["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!uid.is_empty());
    alias_kubeconfig(&m);
    let before = snapshot(&m.west);
    let all = usage_error(&m.join_args(&[])).await;
    says(
        &all,
        &[
            "contexts \"west\" and \"east\" reach the same cluster",
            &uid,
            "Nothing was changed",
        ],
    );
    assert_eq!(snapshot(&m.west), before);
    // When kube-system cannot be read, the API server URL and CA tell.
    m.west.faults().inject(
        FaultRule::new(Fault::Internal)
            .verb("get")
            .resource("namespaces")
            .times(2),
    );
    let all = usage_error(&m.join_args(&[])).await;
    says(
        &all,
        &[
            "cannot read the UID of namespace kube-system",
            "API server URL and CA instead",
            "reach the same cluster: both have the same API server URL and CA",
        ],
    );
    assert_eq!(snapshot(&m.west), before);
}

/// Three annotations of 100000 bytes: over the API server's 256 KiB for an object's
/// annotations (kubernetes apimachinery `ValidateAnnotationsSize`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotations_over_the_api_servers_limit_are_a_usage_error_before_anything() {
    let m = mesh().await;
    let before = m.settled_snapshots().await;
    let big: Vec<String> = (0..3)
        .map(|i| format!("k{i}={}", "v".repeat(100_000)))
        .collect();
    let mut args = m.join_args(&[]);
    for a in &big {
        args.extend(["--service-annotation", a.as_str()]);
    }
    let all = usage_error(&args).await;
    says(&all, &["300006 bytes", "262144"]);
    assert_eq!(m.settled_snapshots().await, before);
    // The limit is the API server's: keys plus values, 262144 bytes at most (over three
    // flags: one argument holds at most 128 KiB).
    async fn manifest(total: usize) -> std::process::Output {
        let third = (total - 3) / 3;
        let values = [third, third, total - 3 - 2 * third];
        let flags: Vec<String> = ["a", "b", "c"]
            .iter()
            .zip(values)
            .map(|(k, n)| format!("{k}={}", "v".repeat(n)))
            .collect();
        let mut args = vec!["gateway", "manifest", "--network", "n1"];
        for f in &flags {
            args.extend(["--service-annotation", f.as_str()]);
        }
        meshctl(&args).await
    }
    let at = manifest(262_144).await;
    assert!(at.status.success(), "{}", text(&at));
    let over = manifest(262_145).await;
    assert_eq!(over.status.code(), Some(2), "{}", text(&over));
    assert!(text(&over).contains("262145 bytes"), "{}", text(&over));
}

/// meshctl's gateway Service exists already (an earlier join's), with annotations another
/// tool added since: meshctl's own (valid alone) take the object over the API server's
/// limit, which only the server sees.
fn crowded_service(s: &TestApiServer) {
    namespace(s, "istio-system");
    s.store()
        .create(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "istio-eastwestgateway", "namespace": "istio-system",
                "labels": {"app.kubernetes.io/managed-by": "meshctl"},
                "annotations": {"other.example.com/blob": "x".repeat(200_000)}},
            "spec": {"type": "ClusterIP", "ports": [{"port": 80}]}}))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_side_refusal_is_found_by_a_dry_run_before_any_change() {
    let m = mesh().await;
    crowded_service(&m.east);
    let before = m.settled_snapshots().await;
    let big = format!("k={}", "v".repeat(100_000));
    let all = interrupted(&m.join_args(&["--service-annotation", &big])).await;
    says(
        &all,
        &[
            "context \"east\" refuses Service istio-system/istio-eastwestgateway",
            "server-side dry run",
            "422",
            "Nothing was changed",
        ],
    );
    assert!(!all.contains("re-run the same command to resume"), "{all}");
    assert_eq!(m.settled_snapshots().await, before, "nothing was changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_is_named_as_refused_not_as_something_a_rerun_resumes() {
    let m = mesh().await;
    crowded_service(&m.west);
    let big = format!("k={}", "v".repeat(100_000));
    // gateway install (no dry run first): the refusal is named, and no re-run is promised.
    let all = interrupted(&[
        "gateway",
        "install",
        "--network",
        "west-net",
        "--service-annotation",
        &big,
        "--kubeconfig",
        m.kc(),
        "--context",
        "west",
    ])
    .await;
    says(
        &all,
        &[
            "applied 4 of 7 gateway objects",
            "the API server refused Service istio-system/istio-eastwestgateway (422)",
            "refused the same way",
        ],
    );
    assert!(!all.contains("re-run the same command to resume"), "{all}");
    // join, when its dry run could not be made in west (its first write there answers 500
    // once, then the fault is spent; an outage, 503, would stop join before its first
    // change): the real writes meet the refusal.
    m.west.faults().inject(
        FaultRule::new(Fault::Internal)
            .verb("patch")
            .resource("namespaces")
            .times(1),
    );
    let all = interrupted(&m.join_args(&["--service-annotation", &big])).await;
    says(
        &all,
        &[
            "applying Service istio-system/istio-eastwestgateway in context \"west\"",
            "422",
            "interrupted after these changes: west: cacerts applied",
            "the API server refused that change (422): re-running the same command is refused \
             the same way",
            "meshctl unjoin",
        ],
    );
    assert!(!all.contains("re-run the same command to resume"), "{all}");
}

/// The Deployment's gateway args, from a `--dry-run -o json` plan.
fn deployment_args(plan: &Value, context: &str) -> String {
    let cluster = plan["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["context"] == context)
        .unwrap();
    let d = cluster["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["kind"] == "Deployment")
        .unwrap();
    d["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hbone_gateway_dials_the_istiod_of_its_namespace_and_dry_run_json_parses() {
    let m = mesh().await;
    // A dry run of --ambient refuses what the run refuses: clusters without the Gateway API.
    install_gateway_api(&m.west);
    install_gateway_api(&m.east);
    for (ns, want) in [
        ("mesh-ns", "--ca-address istiod.mesh-ns.svc:15012"),
        ("istio-system", "--ca-address istiod.istio-system.svc:15012"),
    ] {
        let args = m.join_args(&[
            "--ambient",
            "-n",
            ns,
            "--gateway-address",
            "west=10.0.0.1",
            "--gateway-address",
            "east=10.0.0.2",
            "--dry-run",
            "-o",
            "json",
        ]);
        let out = meshctl(&args).await;
        assert!(out.status.success(), "{}", text(&out));
        let plan: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", text(&out)));
        for ctx in ["west", "east"] {
            let got = deployment_args(&plan, ctx);
            assert!(got.contains(want), "{ns} {ctx}: {got}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unjoin_dry_run_json_is_one_document_with_the_notice_on_stderr() {
    let m = joined_mesh().await;
    let out = meshctl(&m.unjoin_args(&["--dry-run", "-o", "json"])).await;
    assert!(out.status.success(), "{}", text(&out));
    let plan: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", text(&out)));
    assert_eq!(plan["clusters"].as_array().unwrap().len(), 2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("# dry run: unjoin would delete"),
        "{}",
        text(&out)
    );
}

/// `gateway install` goes by the same rule as join: its dry-run plan and its `-o` output
/// list only what it applies, so a service account Helm made is not in them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_install_lists_only_what_it_applies() {
    let m = mesh().await;
    namespace(&m.west, "helmns");
    helm_gateway_service_account(&m.west, "helmns");
    let install = |extra: &'static [&'static str]| {
        let mut a = gateway_install_args(m.kc(), &["-n", "helmns", "-o", "json"]);
        a.extend_from_slice(extra);
        a
    };
    for extra in [&["--dry-run"][..], &[]] {
        let out = meshctl(&install(extra)).await;
        let all = text(&out);
        assert!(out.status.success(), "{all}");
        says(
            &all,
            &["service account helmns/istio-eastwestgateway exists and was not created by meshctl"],
        );
        // A plan (clusters[].objects[]) or the applied objects (a List's items[]).
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        let kinds: Vec<&str> = match doc["clusters"].as_array() {
            Some(_) => planned_kinds(&doc),
            None => doc["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["kind"].as_str().unwrap())
                .collect(),
        };
        assert!(kinds.contains(&"Deployment"), "{extra:?}: {kinds:?}");
        assert!(!kinds.contains(&"ServiceAccount"), "{extra:?}: {kinds:?}");
    }
    let sa = service_account(&m.west, "helmns", "istio-eastwestgateway").unwrap();
    assert_eq!(
        sa["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "Helm"
    );
}
