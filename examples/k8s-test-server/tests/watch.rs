//! Watches against the TEST SERVER with kube-runtime: events, 410 Gone re-lists, bookmarks
//! and a restarted API server.

mod common;

use common::{admin_client, init};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_test_server::{Options, TestApiServer};
use kube::api::{Api, DeleteParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;
use testkit::wait::eventually_some;

fn cm(name: &str, v: &str) -> ConfigMap {
    serde_json::from_value(
        json!({"metadata": {"name": name, "labels": {"app": "t"}}, "data": {"v": v}}),
    )
    .unwrap()
}

async fn next_event<S>(stream: &mut S) -> watcher::Event<ConfigMap>
where
    S: futures::Stream<Item = Result<watcher::Event<ConfigMap>, watcher::Error>> + Unpin,
{
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("event within 5s")
            .expect("stream open");
        if let Ok(ev) = ev {
            return ev;
        }
    }
}

/// Opens a watch from `rv` and returns its first event (`None` when it ends first), within
/// 5 s.
async fn first_watch_event(
    api: &Api<ConfigMap>,
    wp: &WatchParams,
    rv: &str,
) -> Option<WatchEvent<ConfigMap>> {
    let mut s = api.watch(wp, rv).await.unwrap().boxed();
    tokio::time::timeout(Duration::from_secs(5), s.try_next())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn watcher_sees_added_modified_deleted() {
    init();
    let server = TestApiServer::start("w1").await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(admin_client(&server).await, "default");
    let cfg = watcher::Config::default().labels("app=t");
    let mut stream = watcher(api.clone(), cfg).boxed();
    assert!(matches!(
        next_event(&mut stream).await,
        watcher::Event::Init
    ));
    assert!(matches!(
        next_event(&mut stream).await,
        watcher::Event::InitDone
    ));

    api.create(&PostParams::default(), &cm("a", "1"))
        .await
        .unwrap();
    let watcher::Event::Apply(o) = next_event(&mut stream).await else {
        panic!("expected apply")
    };
    assert_eq!(o.data.unwrap()["v"], "1");
    let mut cur = api.get("a").await.unwrap();
    cur.data.as_mut().unwrap().insert("v".into(), "2".into());
    api.replace("a", &PostParams::default(), &cur)
        .await
        .unwrap();
    let watcher::Event::Apply(o) = next_event(&mut stream).await else {
        panic!("expected apply")
    };
    assert_eq!(o.data.unwrap()["v"], "2");
    api.delete("a", &DeleteParams::default()).await.unwrap();
    let watcher::Event::Delete(o) = next_event(&mut stream).await else {
        panic!("expected delete")
    };
    assert_eq!(o.metadata.name.as_deref(), Some("a"));

    // label changes move objects in and out of a selector's view
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "b"}})).unwrap(),
    )
    .await
    .unwrap();
    let mut b = api.get("b").await.unwrap();
    b.metadata.labels = Some([("app".to_string(), "t".to_string())].into());
    api.replace("b", &PostParams::default(), &b).await.unwrap();
    let watcher::Event::Apply(o) = next_event(&mut stream).await else {
        panic!("expected apply")
    };
    assert_eq!(o.metadata.name.as_deref(), Some("b"));
}

#[tokio::test]
async fn raw_watch_gets_bookmarks_and_410_for_compacted_versions() {
    init();
    let mut opts = Options::new("w2");
    opts.bookmark_interval = Duration::from_millis(100);
    let server = TestApiServer::start_with(opts).await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(admin_client(&server).await, "default");
    let rv = api
        .create(&PostParams::default(), &cm("a", "1"))
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();

    let wp = WatchParams::default().timeout(10);
    let mut s = api.watch(&wp, &rv).await.unwrap().boxed();
    let ev = tokio::time::timeout(Duration::from_secs(5), s.try_next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(ev, WatchEvent::Bookmark(_)), "got {ev:?}");

    api.create(&PostParams::default(), &cm("b", "1"))
        .await
        .unwrap();
    server.expire_watches();
    let ev = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.try_next().await.unwrap() {
                Some(WatchEvent::Bookmark(_) | WatchEvent::Added(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .unwrap();
    let Some(WatchEvent::Error(e)) = ev else {
        panic!("expected ERROR, got {ev:?}")
    };
    assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));

    // a new watch from the old resourceVersion is told 410 Gone right away
    let ev = first_watch_event(&api, &WatchParams::default(), &rv).await;
    assert!(
        matches!(ev, Some(WatchEvent::Error(ref e)) if e.code == 410),
        "got {ev:?}"
    );

    // the timeout ends the stream
    let wp = WatchParams::default().timeout(1);
    let mut s = api
        .watch(&wp, &server.store().resource_version().to_string())
        .await
        .unwrap()
        .boxed();
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(_ev) = s.try_next().await.unwrap() {}
    })
    .await;
    assert!(end.is_ok(), "watch did not end at its timeout");
}

fn names(reader: &reflector::Store<ConfigMap>) -> BTreeSet<String> {
    reader
        .state()
        .iter()
        .filter_map(|c| c.metadata.name.clone())
        .filter(|n| n.starts_with("cm-"))
        .collect()
}

fn server_names(server_store: &k8s_test_server::Store) -> BTreeSet<String> {
    server_store
        .list("v1", "ConfigMap", Some("default"))
        .iter()
        .filter_map(|c| c["metadata"]["name"].as_str().map(str::to_string))
        .filter(|n| n.starts_with("cm-"))
        .collect()
}

/// Waits (5 s at most) until the reflector has listed once.
async fn wait_ready(reader: &reflector::Store<ConfigMap>) {
    tokio::time::timeout(Duration::from_secs(5), reader.wait_until_ready())
        .await
        .unwrap()
        .unwrap();
}

/// Waits (`timeout` at most) until the reflector's `cm-` names are exactly `want`.
async fn eventually_reflects(
    what: &str,
    timeout: Duration,
    reader: &reflector::Store<ConfigMap>,
    want: BTreeSet<String>,
) {
    eventually_some(what, timeout, || {
        let got = names(reader);
        let want = want.clone();
        async move { (got == want).then_some(()) }
    })
    .await;
}

#[tokio::test]
async fn expire_watches_forces_a_relist_and_loses_nothing() {
    init();
    let server = TestApiServer::start("w3").await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(admin_client(&server).await, "default");
    for i in 0..3 {
        api.create(&PostParams::default(), &cm(&format!("cm-{i}"), "x"))
            .await
            .unwrap();
    }
    let (reader, writer) = reflector::store();
    let inits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let inits2 = inits.clone();
    let stream = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .inspect(move |ev| {
            if matches!(ev, Ok(watcher::Event::Init)) {
                inits2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
        .reflect(writer)
        .for_each(|_| async {});
    let task = tokio::spawn(stream);
    wait_ready(&reader).await;
    assert_eq!(names(&reader).len(), 3);

    for round in 0..3 {
        server.expire_watches();
        api.create(&PostParams::default(), &cm(&format!("cm-new-{round}"), "y"))
            .await
            .unwrap();
        api.delete(&format!("cm-{round}"), &DeleteParams::default())
            .await
            .unwrap();
        eventually_reflects(
            "the reflector to match the store",
            Duration::from_secs(10),
            &reader,
            server_names(server.store()),
        )
        .await;
    }
    assert!(
        inits.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "the watcher re-listed after 410"
    );
    task.abort();
}

#[tokio::test]
async fn reflector_survives_a_restart_on_the_same_port() {
    init();
    let server = TestApiServer::start("w4").await.unwrap();
    let addr = server.addr();
    let api: Api<ConfigMap> = Api::namespaced(admin_client(&server).await, "default");
    api.create(&PostParams::default(), &cm("cm-a", "1"))
        .await
        .unwrap();
    let (reader, writer) = reflector::store();
    let task = tokio::spawn(
        watcher(api.clone(), watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .for_each(|_| async {}),
    );
    wait_ready(&reader).await;

    let stopped = server.stop().await;
    assert_eq!(stopped.addr(), addr);
    // the cluster changes while the API server is down
    stopped.store().create(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm-b", "namespace": "default"}})).unwrap();
    stopped
        .store()
        .delete("v1", "ConfigMap", Some("default"), "cm-a")
        .unwrap();
    assert!(api.get("cm-b").await.is_err(), "server is down");
    let server = stopped.restart().await.unwrap();
    assert_eq!(server.addr(), addr);

    api.create(&PostParams::default(), &cm("cm-c", "1"))
        .await
        .unwrap();
    eventually_reflects(
        "the reflector to see cm-b and cm-c",
        Duration::from_secs(20),
        &reader,
        ["cm-b".to_string(), "cm-c".to_string()].into(),
    )
    .await;
    task.abort();
}

#[tokio::test]
async fn a_restarted_server_answers_an_old_resource_version_with_410() {
    init();
    let server = TestApiServer::start("w5").await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(admin_client(&server).await, "default");
    let old = api
        .create(&PostParams::default(), &cm("a", "1"))
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    api.create(&PostParams::default(), &cm("b", "1"))
        .await
        .unwrap();
    let current = server.store().resource_version().to_string();
    // Before the restart the history still covers `old`: the resume works.
    let ev = first_watch_event(&api, &WatchParams::default(), &old).await;
    assert!(matches!(ev, Some(WatchEvent::Added(_))), "got {ev:?}");
    assert_eq!(server.store().expired_watch_answers(), 0);

    let server = server.stop().await.restart().await.unwrap();
    // The watch cache starts at the current resourceVersion: older ones are too old, as
    // an ERROR event with a 410 Expired Status in a 200 response (the cacher's path).
    let ev = first_watch_event(&api, &WatchParams::default(), &old).await;
    let Some(WatchEvent::Error(e)) = ev else {
        panic!("expected a 410 ERROR event, got {ev:?}")
    };
    assert_eq!((e.code, e.reason.as_str()), (410, "Expired"));
    assert_eq!(
        e.message,
        format!("too old resource version: {old} ({current})")
    );
    assert_eq!(server.store().expired_watch_answers(), 1);
    // The current resourceVersion itself is not too old: that resume waits for changes.
    let wp = WatchParams::default().timeout(1);
    let mut s = api.watch(&wp, &current).await.unwrap().boxed();
    api.create(&PostParams::default(), &cm("c", "1"))
        .await
        .unwrap();
    let ev = tokio::time::timeout(Duration::from_secs(5), s.try_next())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(ev, Some(WatchEvent::Added(_))), "got {ev:?}");
    assert_eq!(server.store().expired_watch_answers(), 1);
}
