//! The TEST SERVER's failure answers: injected overload and outage faults (429 with
//! `Retry-After`, 503, 500, 504) at the place kube-apiserver's filter chain gives them, a
//! watch ended by its timeout, and lists at a resourceVersion that is too old or too new.
//! Requests go through kube clients without kube's retry layer, to see the raw answers.

mod common;

use common::init;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_test_server::{Fault, FaultRule, TestApiServer};
use kube::api::{Api, ListParams, PostParams, VersionMatch, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// A client for `token` that does not retry (kube's default retries 429/503/504).
async fn raw_client(server: &TestApiServer, token: &str) -> Client {
    init();
    let kc = Kubeconfig::from_yaml(&server.kubeconfig_with_token("t", token)).unwrap();
    let mut cfg = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    cfg.default_retry = false;
    Client::try_from(cfg).unwrap()
}

/// A token of ServiceAccount `default/ops`, which has no RBAC rights (and is not in
/// `system:masters`).
async fn ops_token(admin: &Client) -> String {
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "default");
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "ops"}})).unwrap(),
    )
    .await
    .unwrap();
    testkit::kube_client::service_account_token(admin, "default", "ops", &[], None).await
}

/// Status code, `Retry-After`, `Connection`, body.
async fn raw_get(c: &Client, path: &str) -> (u16, Option<String>, Option<String>, String) {
    let req = hyper::Request::get(path).body(Vec::new()).unwrap();
    let resp = c.send(req.map(Into::into)).await.unwrap();
    let header = |h: &str| {
        resp.headers()
            .get(h)
            .map(|v| v.to_str().unwrap().to_string())
    };
    let (code, retry, conn) = (
        resp.status().as_u16(),
        header("retry-after"),
        header("connection"),
    );
    use http_body_util::BodyExt as _;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        code,
        retry,
        conn,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

const CONFIGMAPS: &str = "/api/v1/namespaces/default/configmaps";

#[tokio::test]
async fn overload_is_a_plain_text_429_with_retry_after_and_system_masters_are_exempt() {
    let server = TestApiServer::start("f1").await.unwrap();
    let admin = raw_client(&server, server.admin_token()).await;
    let ops = raw_client(&server, &ops_token(&admin).await).await;
    let rule = FaultRule::new(Fault::TooManyRequests { retry_after: 1 })
        .verb("list")
        .resource("configmaps")
        .times(1);
    server.faults().inject(rule);
    // APF exempts system:masters; the rule stays armed for the next caller.
    assert_eq!(raw_get(&admin, CONFIGMAPS).await.0, 200);
    // APF runs before authorization: ops, who may not list, is told 429, not 403.
    let (code, retry, _, body) = raw_get(&ops, CONFIGMAPS).await;
    assert_eq!(
        (code, retry.as_deref(), body.trim()),
        (429, Some("1"), "Too many requests, please try again later.")
    );
    assert_eq!(raw_get(&ops, CONFIGMAPS).await.0, 403, "the rule is spent");
    assert_eq!(server.faults().injected(), 1);
}

#[tokio::test]
async fn shutting_down_answers_before_authentication_and_closes_the_connection() {
    let server = TestApiServer::start("f2").await.unwrap();
    server
        .faults()
        .inject(FaultRule::new(Fault::ShuttingDown).times(1));
    let stranger = raw_client(&server, "not-a-token").await;
    let (code, retry, conn, body) = raw_get(&stranger, CONFIGMAPS).await;
    assert_eq!(
        (code, retry.as_deref(), conn.as_deref()),
        (429, Some("5"), Some("close"))
    );
    assert!(body.contains("shutting down"), "{body}");
    assert_eq!(raw_get(&stranger, CONFIGMAPS).await.0, 401);
}

#[tokio::test]
async fn outages_are_status_bodies_after_authorization() {
    let server = TestApiServer::start("f3").await.unwrap();
    let admin = raw_client(&server, server.admin_token()).await;
    let ops = raw_client(&server, &ops_token(&admin).await).await;
    for (fault, code, reason) in [
        (Fault::Unavailable, 503, "ServiceUnavailable"),
        (Fault::Internal, 500, "InternalError"),
        (Fault::Timeout, 504, "Timeout"),
    ] {
        server.faults().clear();
        server
            .faults()
            .inject(FaultRule::new(fault).verb("list").resource("configmaps"));
        assert_eq!(
            raw_get(&ops, CONFIGMAPS).await.0,
            403,
            "authorization first"
        );
        let (got, _, _, body) = raw_get(&admin, CONFIGMAPS).await;
        let status: Value = serde_json::from_str(&body).unwrap();
        assert_eq!((got, status["reason"].as_str()), (code, Some(reason)));
        assert_eq!(status["kind"], "Status");
        // Only the matching verb fails.
        assert_eq!(raw_get(&admin, &format!("{CONFIGMAPS}/x")).await.0, 404);
    }
    server.faults().clear();
    assert_eq!(raw_get(&admin, CONFIGMAPS).await.0, 200);
}

#[tokio::test]
async fn an_ended_watch_closes_cleanly_and_later_watches_are_unaffected() {
    let server = TestApiServer::start("f4").await.unwrap();
    let api: Api<ConfigMap> =
        Api::namespaced(raw_client(&server, server.admin_token()).await, "default");
    let rv = server.store().resource_version().to_string();
    let wp = WatchParams::default().timeout(120);
    let mut old = Box::pin(api.watch(&wp, &rv).await.unwrap());
    server.end_watches();
    let mut fresh = Box::pin(api.watch(&wp, &rv).await.unwrap());
    use futures::TryStreamExt as _;
    let end = tokio::time::timeout(Duration::from_secs(5), old.try_next())
        .await
        .expect("the ended watch closes");
    assert!(
        end.unwrap().is_none(),
        "no ERROR event, the stream just ends"
    );
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "a"}})).unwrap();
    api.create(&PostParams::default(), &cm).await.unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), fresh.try_next())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(ev, Some(WatchEvent::Added(_))), "got {ev:?}");
}

#[tokio::test]
async fn list_resource_versions_too_old_too_new_and_expired_continue_tokens() {
    let server = TestApiServer::start("f5").await.unwrap();
    let client = raw_client(&server, server.admin_token()).await;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for name in ["a", "b", "c"] {
        let cm = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        api.create(&PostParams::default(), &cm).await.unwrap();
    }
    let old = server.store().resource_version();
    let first = api.list(&ListParams::default().limit(1)).await.unwrap();
    let token = first.metadata.continue_.clone().unwrap();

    // resourceVersionMatch needs a resourceVersion.
    let (code, _, _, body) =
        raw_get(&client, &format!("{CONFIGMAPS}?resourceVersionMatch=Exact")).await;
    assert_eq!(code, 422, "{body}");
    assert!(
        body.contains("resourceVersionMatch is forbidden unless resourceVersion is provided"),
        "{body}"
    );

    // A later write, then compaction there: `old` is gone (compaction keeps only its own
    // revision onwards).
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "default"}});
    server.store().create(secret).unwrap();
    server.expire_watches();
    let exact = ListParams::default()
        .at(&old.to_string())
        .matching(VersionMatch::Exact);
    let e = api.list(&exact).await.unwrap_err();
    assert!(matches!(&e, kube::Error::Api(s) if s.code == 410), "{e}");

    // An expired continue token: 410, with a token that continues at the latest state.
    let (code, _, _, body) =
        raw_get(&client, &format!("{CONFIGMAPS}?limit=1&continue={token}")).await;
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((code, status["reason"].as_str()), (410, Some("Expired")));
    let fresh = status["metadata"]["continue"].as_str().unwrap();
    let rest = api
        .list(&ListParams::default().continue_token(fresh))
        .await
        .unwrap();
    let names: Vec<_> = rest
        .items
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .collect();
    assert_eq!(names, ["b", "c", "kube-root-ca.crt"]);

    // A version the server has not reached: waited for, then 504.
    let future = ListParams::default()
        .at(&(old + 100).to_string())
        .matching(VersionMatch::NotOlderThan);
    let started = Instant::now();
    let e = api.list(&future).await.unwrap_err();
    assert!(matches!(&e, kube::Error::Api(s) if s.code == 504), "{e}");
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "it waited"
    );
}
