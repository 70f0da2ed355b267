//! The TEST SERVER's lists at an exact resourceVersion (`resourceVersionMatch=Exact`, and the
//! legacy `resourceVersion` + `limit`): the state as of that revision, with objects deleted
//! since and objects as they were before later changes, on every page of a paginated list;
//! 410 once the history no longer reaches back that far. Real kube-apiserver reads etcd at
//! that revision (`storage/etcd3/store.go` `GetList`). A revision not reached yet is waited
//! for, then 504, in every form, as the watch cache answers by default from 1.34
//! (`src/list_options.rs` has the sources).

mod common;

use common::{admin_client, init};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_test_server::{Options, StoreConfig, TestApiServer};
use kube::api::{Api, DeleteParams, ListParams, ObjectList, PostParams, VersionMatch};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const CONFIGMAPS: &str = "/api/v1/namespaces/default/configmaps";
/// Only the test's own ConfigMaps (not the namespace controller's `kube-root-ca.crt`).
const MINE: &str = "test=exact";

fn cm(name: &str, v: &str) -> ConfigMap {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"test": "exact"}},
        "data": {"v": v}}),
    )
    .unwrap()
}

/// Status code and JSON body of a GET.
async fn raw_get(c: &Client, path: &str) -> (u16, Value) {
    let req = hyper::Request::get(path).body(Vec::new()).unwrap();
    let resp = c.send(req.map(Into::into)).await.unwrap();
    let code = resp.status().as_u16();
    use http_body_util::BodyExt as _;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (code, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// `name=v` for each item, in list order.
fn shown(l: &ObjectList<ConfigMap>) -> Vec<String> {
    l.items
        .iter()
        .map(|c| {
            let v = c.data.as_ref().and_then(|d| d.get("v")).cloned();
            format!("{}={}", c.name_any(), v.unwrap_or_default())
        })
        .collect()
}

fn exact(rv: u64) -> ListParams {
    ListParams::default()
        .labels(MINE)
        .at(&rv.to_string())
        .matching(VersionMatch::Exact)
}

/// `name=v` of ConfigMaps read straight from the store.
fn names_and_values(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .filter(|o| o["metadata"]["labels"]["test"] == "exact")
        .map(|o| {
            format!(
                "{}={}",
                o["metadata"]["name"].as_str().unwrap(),
                o["data"]["v"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test]
async fn the_store_rebuilds_any_revision_its_history_still_reaches() {
    let mut opts = Options::new("x0");
    opts.store = StoreConfig {
        // Room for the namespace controller's writes, which may land in between.
        history_limit: 20,
        ..StoreConfig::default()
    };
    let server = TestApiServer::start_with(opts).await.unwrap();
    let store = server.store();
    let put = |name: &str, v: &str| {
        let obj = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "default", "labels": {"test": "exact"}},
            "data": {"v": v}});
        store.apply(obj).unwrap();
        store.resource_version()
    };
    let at = |rev: u64| {
        store
            .list_at_revision("v1", "ConfigMap", Some("default"), rev)
            .map(|items| names_and_values(&items))
    };
    put("a", "1");
    let r1 = put("b", "1");
    let r2 = put("b", "2");
    store
        .delete("v1", "ConfigMap", Some("default"), "a")
        .unwrap();
    let r3 = store.resource_version();
    let r4 = put("c", "1");
    assert_eq!(at(r1).unwrap(), ["a=1", "b=1"]);
    assert_eq!(at(r2).unwrap(), ["a=1", "b=2"]);
    assert_eq!(at(r3).unwrap(), ["b=2"]);
    assert_eq!(at(r4).unwrap(), ["b=2", "c=1"]);
    // More changes than the history keeps push r1 out: 410, as for a compacted revision.
    for v in 2..=25 {
        put("c", &v.to_string());
    }
    let e = at(r1).unwrap_err();
    assert_eq!((e.code, e.reason), (410, "Expired"), "{e:?}");
    assert_eq!(at(store.resource_version()).unwrap(), ["b=2", "c=25"]);
}

#[tokio::test]
async fn an_exact_list_shows_the_objects_as_they_were_at_that_revision() {
    let server = TestApiServer::start("x1").await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(admin_client(&server).await, "default");
    let pp = PostParams::default();
    for name in ["a", "b", "c"] {
        api.create(&pp, &cm(name, "1")).await.unwrap();
    }
    let first = server.store().resource_version();
    let b1 = api.get("b").await.unwrap().resource_version().unwrap();

    api.replace("b", &pp, &{
        let mut b = api.get("b").await.unwrap();
        b.data = cm("b", "2").data;
        b
    })
    .await
    .unwrap();
    let second = server.store().resource_version();
    api.delete("c", &DeleteParams::default()).await.unwrap();
    api.create(&pp, &cm("d", "1")).await.unwrap();
    api.delete("a", &DeleteParams::default()).await.unwrap();
    api.create(&pp, &cm("a", "new")).await.unwrap();

    let then = api.list(&exact(first)).await.unwrap();
    assert_eq!(shown(&then), ["a=1", "b=1", "c=1"]);
    assert_eq!(then.metadata.resource_version, Some(first.to_string()));
    let b_then = then.items.iter().find(|c| c.name_any() == "b").unwrap();
    assert_eq!(b_then.resource_version(), Some(b1), "b's own version then");

    let between = api.list(&exact(second)).await.unwrap();
    assert_eq!(shown(&between), ["a=1", "b=2", "c=1"]);
    assert_eq!(between.metadata.resource_version, Some(second.to_string()));

    let now = api.list(&ListParams::default().labels(MINE)).await.unwrap();
    assert_eq!(shown(&now), ["a=new", "b=2", "d=1"]);
    let current = server.store().resource_version();
    let at_current = api.list(&exact(current)).await.unwrap();
    assert_eq!(shown(&at_current), shown(&now));
    assert_eq!(
        at_current.metadata.resource_version,
        Some(current.to_string())
    );
}

#[tokio::test]
async fn every_page_of_a_paginated_list_shows_the_first_pages_snapshot() {
    init();
    let server = TestApiServer::start("x2").await.unwrap();
    let client = admin_client(&server).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    for name in ["a", "b", "c", "d"] {
        api.create(&pp, &cm(name, "1")).await.unwrap();
    }
    let rv = server.store().resource_version();
    // Changes after the snapshot, some behind and some ahead of the pages already read.
    api.delete("c", &DeleteParams::default()).await.unwrap();
    api.create(&pp, &cm("bb", "1")).await.unwrap();
    api.replace("d", &pp, &{
        let mut d = api.get("d").await.unwrap();
        d.data = cm("d", "2").data;
        d
    })
    .await
    .unwrap();

    // An Exact list with a limit, page by page.
    let mut names = Vec::new();
    let mut page = api.list(&exact(rv).limit(1)).await.unwrap();
    for _ in 0..10 {
        assert_eq!(page.metadata.resource_version, Some(rv.to_string()));
        names.extend(shown(&page));
        let Some(token) = page.metadata.continue_.clone() else {
            break;
        };
        let next = ListParams::default()
            .labels(MINE)
            .limit(1)
            .continue_token(&token);
        page = api.list(&next).await.unwrap();
    }
    assert_eq!(names, ["a=1", "b=1", "c=1", "d=1"]);

    // The legacy form (a resourceVersion and a limit, no match) is an exact read too.
    let legacy = ListParams::default()
        .labels(MINE)
        .at(&rv.to_string())
        .limit(10);
    let l = api.list(&legacy).await.unwrap();
    assert_eq!(shown(&l), ["a=1", "b=1", "c=1", "d=1"]);
    assert_eq!(l.metadata.resource_version, Some(rv.to_string()));

    // A list at the latest state with a limit: later pages keep its revision too.
    let first = api
        .list(&ListParams::default().labels(MINE).limit(2))
        .await
        .unwrap();
    assert_eq!(shown(&first), ["a=1", "b=1"]);
    let token = first.metadata.continue_.clone().unwrap();
    api.delete("d", &DeleteParams::default()).await.unwrap();
    api.create(&pp, &cm("e", "1")).await.unwrap();
    let rest = api
        .list(&ListParams::default().labels(MINE).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(shown(&rest), ["bb=1", "d=2"]);
    assert_eq!(
        rest.metadata.resource_version,
        first.metadata.resource_version
    );

    // A continue token with a resourceVersion is refused (etcd3 GetList).
    let token = token
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    let (code, body) = raw_get(
        &client,
        &format!("{CONFIGMAPS}?limit=1&continue={token}&resourceVersion={rv}"),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        body["message"],
        "specifying resource version is not allowed when using continue"
    );
}

#[tokio::test]
async fn an_exact_list_older_than_the_kept_history_is_410() {
    init();
    let mut opts = Options::new("x3");
    opts.store = StoreConfig {
        history_limit: 8,
        ..StoreConfig::default()
    };
    let server = TestApiServer::start_with(opts).await.unwrap();
    let client = admin_client(&server).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();
    api.create(&pp, &cm("a", "0")).await.unwrap();
    let early = server.store().resource_version();
    // The version of each change; the history keeps the last 8 events of the whole store
    // (a controller's write may be among them, hence the slack).
    let mut versions = Vec::new();
    for v in 1..=12 {
        let mut a = api.get("a").await.unwrap();
        a.data = cm("a", &v.to_string()).data;
        let stored = api.replace("a", &pp, &a).await.unwrap();
        versions.push(stored.resource_version().unwrap().parse::<u64>().unwrap());
    }
    let current = server.store().resource_version();

    // Three changes back is still known, the first one is not.
    let kept = api.list(&exact(versions[9])).await.unwrap();
    assert_eq!(shown(&kept), ["a=10"]);
    let (code, body) = raw_get(
        &client,
        &format!("{CONFIGMAPS}?resourceVersion={early}&resourceVersionMatch=Exact"),
    )
    .await;
    assert_eq!(code, 410, "{body}");
    assert_eq!(body["reason"], "Expired");
    assert_eq!(
        body["message"],
        "The resourceVersion for the provided list is too old."
    );
    // The legacy form is refused the same way.
    let (code, body) = raw_get(
        &client,
        &format!("{CONFIGMAPS}?resourceVersion={early}&limit=5"),
    )
    .await;
    assert_eq!(code, 410, "{body}");
    // Without a limit or a match, a version is "not older than": the latest state.
    let (code, body) = raw_get(&client, &format!("{CONFIGMAPS}?resourceVersion={early}")).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["metadata"]["resourceVersion"], current.to_string());
}

/// A page's `remainingItemCount` is given only for a list without selectors: etcd's count
/// includes the objects a selector drops, so the real server leaves it out then.
#[tokio::test]
async fn remaining_item_count_only_without_selectors() {
    let server = TestApiServer::start("x4").await.unwrap();
    let client = admin_client(&server).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for name in ["a", "b", "c"] {
        api.create(&PostParams::default(), &cm(name, "1"))
            .await
            .unwrap();
    }
    let (code, plain) = raw_get(&client, &format!("{CONFIGMAPS}?limit=1")).await;
    assert_eq!(code, 200, "{plain}");
    // Three of ours and the namespace's kube-root-ca.crt, one shown.
    assert_eq!(plain["metadata"]["remainingItemCount"], 3, "{plain}");
    for selector in [
        format!("labelSelector={MINE}"),
        "fieldSelector=metadata.name!=x".into(),
    ] {
        let (code, body) = raw_get(&client, &format!("{CONFIGMAPS}?limit=1&{selector}")).await;
        assert_eq!(code, 200, "{body}");
        assert!(body["metadata"]["continue"].is_string(), "{body}");
        assert!(
            body["metadata"].get("remainingItemCount").is_none(),
            "{selector}: {body}"
        );
    }
}

/// An admin client without kube's retry layer (it repeats 429/503/504 answers), to see the
/// server's own answer and timing.
async fn raw_admin_client(server: &TestApiServer) -> Client {
    init();
    let yaml = server.kubeconfig(server.cluster_name());
    let kc = Kubeconfig::from_yaml(&yaml).unwrap();
    let mut cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    cfg.default_retry = false;
    Client::try_from(cfg).unwrap()
}

/// A GET's status, JSON body, `Retry-After` header and how long it took.
async fn timed_get(c: &Client, path: &str) -> (u16, Value, Option<String>, Duration) {
    let started = Instant::now();
    let req = hyper::Request::get(path).body(Vec::new()).unwrap();
    let resp = c.send(req.map(Into::into)).await.unwrap();
    let code = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    use http_body_util::BodyExt as _;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (code, body, retry_after, started.elapsed())
}

/// A `continue` token (base64 `<revision>|<key>`) moved to revision `rev`, URL-encoded.
fn token_at(token: &str, rev: u64) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let raw = String::from_utf8(b64.decode(token).unwrap()).unwrap();
    let (_, key) = raw.split_once('|').unwrap();
    b64.encode(format!("{rev}|{key}"))
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

/// kube-apiserver (1.34+ defaults) serves a list at a revision it has not reached from the
/// watch cache in every form (`cacher/delegator.go`, `cacher.go` `shouldDelegateExactRV`):
/// it waits 3 s (`blockTimeout`), then answers `NewTooLargeResourceVersionError`.
#[tokio::test]
async fn a_list_at_a_future_revision_waits_3s_then_is_504_in_every_form() {
    init();
    let server = TestApiServer::start("x5").await.unwrap();
    let client = raw_admin_client(&server).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for name in ["a", "b"] {
        api.create(&PostParams::default(), &cm(name, "1"))
            .await
            .unwrap();
    }
    let page = api.list(&ListParams::default().limit(1)).await.unwrap();
    let token = page.metadata.continue_.unwrap();
    let future = server.store().resource_version() + 1000;
    let forms = [
        format!("resourceVersion={future}&resourceVersionMatch=Exact"),
        format!("resourceVersion={future}&resourceVersionMatch=Exact&limit=1"),
        format!("resourceVersion={future}&resourceVersionMatch=NotOlderThan"),
        format!("resourceVersion={future}"),
        format!("resourceVersion={future}&limit=1"),
        format!("limit=1&continue={}", token_at(&token, future)),
    ];
    let paths: Vec<String> = forms.iter().map(|q| format!("{CONFIGMAPS}?{q}")).collect();
    let answers = futures::future::join_all(paths.iter().map(|p| timed_get(&client, p))).await;
    let current = server.store().resource_version();
    for (q, (code, body, retry_after, took)) in forms.iter().zip(answers) {
        assert_eq!(retry_after.as_deref(), Some("1"), "{q}: Retry-After");
        assert_eq!(
            (code, &body["reason"]),
            (504, &json!("Timeout")),
            "{q}: {body}"
        );
        assert_eq!(
            body["message"],
            format!("Timeout: Too large resource version: {future}, current: {current}"),
            "{q}"
        );
        assert_eq!(
            body["details"],
            json!({"causes": [{"reason": "ResourceVersionTooLarge",
                "message": "Too large resource version"}], "retryAfterSeconds": 1}),
            "{q}"
        );
        assert!(
            took >= Duration::from_millis(2900) && took < Duration::from_secs(10),
            "{q}: answered after {took:?}, not after the 3 s wait"
        );
    }
}

/// The wait ends as soon as the server reaches the revision: the list is then served, an
/// exact one at that revision.
#[tokio::test]
async fn a_revision_reached_during_the_wait_is_served() {
    init();
    let server = TestApiServer::start("x6").await.unwrap();
    let client = raw_admin_client(&server).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &cm("a", "1"))
        .await
        .unwrap();
    let next = server.store().resource_version() + 1;
    let writer = {
        let api = api.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            api.create(&PostParams::default(), &cm("late", "1"))
                .await
                .unwrap();
        })
    };
    let (code, body, _, took) = timed_get(
        &client,
        &format!(
            "{CONFIGMAPS}?labelSelector={MINE}&resourceVersion={next}&resourceVersionMatch=Exact"
        ),
    )
    .await;
    writer.await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["metadata"]["resourceVersion"], next.to_string());
    let names: Vec<_> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "late"]);
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(2900),
        "answered after {took:?}"
    );
}

/// `continue` with a `resourceVersion` is refused at once (storage `ValidateListOptions`
/// runs before any wait), even for a version the server has not reached.
#[tokio::test]
async fn continue_with_a_future_resource_version_is_400_at_once() {
    init();
    let server = TestApiServer::start("x7").await.unwrap();
    let client = raw_admin_client(&server).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for name in ["a", "b"] {
        api.create(&PostParams::default(), &cm(name, "1"))
            .await
            .unwrap();
    }
    let page = api.list(&ListParams::default().limit(1)).await.unwrap();
    let rev = page.metadata.resource_version.unwrap().parse().unwrap();
    let token = token_at(&page.metadata.continue_.unwrap(), rev);
    let future = server.store().resource_version() + 1000;
    let (code, body, _, took) = timed_get(
        &client,
        &format!("{CONFIGMAPS}?limit=1&continue={token}&resourceVersion={future}"),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(
        body["message"],
        "specifying resource version is not allowed when using continue"
    );
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
}
