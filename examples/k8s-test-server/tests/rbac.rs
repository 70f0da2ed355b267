//! Service-account tokens, RBAC and SelfSubjectAccessReview against the TEST SERVER.

mod common;

use common::{admin_client, client_from_yaml, filled_token_secret, init, obj, status_code};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_test_server::TestApiServer;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::{Client, Discovery};
use serde_json::{Value, json};
use std::time::Duration;
use testkit::kube_client::self_access;
use testkit::wait::eventually_some;

/// A test server `name` and its admin client, with a ServiceAccount `reader` in
/// `istio-system` that may get/list/watch services only.
async fn with_reader(name: &str) -> (TestApiServer, Client) {
    init();
    let server = TestApiServer::start(name).await.unwrap();
    let admin = admin_client(&server).await;
    reader_setup(&admin).await;
    (server, admin)
}

/// The ServiceAccount `reader` of [`with_reader`].
async fn reader_setup(admin: &Client) {
    let pp = PostParams::default();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(admin.clone())
        .create(&pp, &obj(json!({"metadata": {"name": "istio-system"}})))
        .await
        .unwrap();
    Api::<ServiceAccount>::namespaced(admin.clone(), "istio-system")
        .create(&pp, &obj(json!({"metadata": {"name": "reader"}})))
        .await
        .unwrap();
    grant(
        admin,
        None,
        "svc-reader",
        json!({"apiGroups": [""], "resources": ["services"], "verbs": ["get", "list", "watch"]}),
        json!({"kind": "ServiceAccount", "name": "reader", "namespace": "istio-system"}),
    )
    .await;
}

/// Grants `subject` one `rule` named `name`: a ClusterRole and its ClusterRoleBinding, or
/// with a `namespace` a Role and its RoleBinding there.
async fn grant(admin: &Client, namespace: Option<&str>, name: &str, rule: Value, subject: Value) {
    let pp = PostParams::default();
    let role = json!({"metadata": {"name": name}, "rules": [rule]});
    let kind = if namespace.is_some() {
        "Role"
    } else {
        "ClusterRole"
    };
    let binding = json!({"metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name},
        "subjects": [subject]});
    match namespace {
        None => {
            Api::<ClusterRole>::all(admin.clone())
                .create(&pp, &obj(role))
                .await
                .unwrap();
            Api::<ClusterRoleBinding>::all(admin.clone())
                .create(&pp, &obj(binding))
                .await
                .unwrap();
        }
        Some(ns) => {
            Api::<Role>::namespaced(admin.clone(), ns)
                .create(&pp, &obj(role))
                .await
                .unwrap();
            Api::<RoleBinding>::namespaced(admin.clone(), ns)
                .create(&pp, &obj(binding))
                .await
                .unwrap();
        }
    }
}

/// Lists Services cluster-wide as `client`: `Ok` or the error's HTTP status.
async fn list_services(client: &Client) -> Result<(), Option<u16>> {
    Api::<Service>::all(client.clone())
        .list(&ListParams::default())
        .await
        .map(drop)
        .map_err(|e| status_code(&e))
}

async fn token_request(admin: &Client, secs: i64) -> TokenRequest {
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "istio-system");
    let tr: TokenRequest = obj(
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"audiences": [], "expirationSeconds": secs}}),
    );
    sas.create_token_request("reader", &PostParams::default(), &tr)
        .await
        .unwrap()
}

async fn ssar(client: &Client, verb: &str, resource: &str, ns: &str) -> bool {
    let group = if resource == "endpointslices" {
        "discovery.k8s.io"
    } else {
        ""
    };
    self_access(
        client,
        json!({"verb": verb, "resource": resource, "namespace": ns, "group": group}),
    )
    .await
}

#[tokio::test]
async fn least_privilege_service_account_can_list_services_but_not_secrets() {
    let (server, admin) = with_reader("rbac").await;
    let tr = token_request(&admin, 3600).await;
    let token = tr.status.unwrap().token.unwrap();
    let sa = client_from_yaml(&server.kubeconfig_with_token("rbac", &token)).await;

    assert_eq!(list_services(&sa).await, Ok(()));
    assert!(
        Api::<Service>::namespaced(sa.clone(), "default")
            .get_opt("x")
            .await
            .unwrap()
            .is_none()
    );
    let err = Api::<Secret>::all(sa.clone())
        .list(&ListParams::default())
        .await
        .unwrap_err();
    let kube::Error::Api(s) = &err else {
        panic!("{err:?}")
    };
    assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
    assert!(
        s.message
            .contains("system:serviceaccount:istio-system:reader"),
        "{}",
        s.message
    );
    assert!(
        s.message.contains("cannot list resource \"secrets\""),
        "{}",
        s.message
    );
    let err = Api::<Service>::namespaced(sa.clone(), "default")
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "x"}})),
        )
        .await
        .unwrap_err();
    assert_eq!(status_code(&err), Some(403));

    // discovery and version work for every authenticated identity
    sa.apiserver_version().await.unwrap();
    Discovery::new(sa.clone()).run().await.unwrap();

    assert!(ssar(&sa, "list", "services", "default").await);
    assert!(ssar(&sa, "watch", "services", "").await);
    assert!(!ssar(&sa, "get", "secrets", "istio-system").await);
    assert!(!ssar(&sa, "list", "endpointslices", "default").await);
    assert!(ssar(&admin, "get", "secrets", "istio-system").await);

    // namespaced grants through a RoleBinding to a Role
    grant(
        &admin,
        Some("istio-system"),
        "one-secret",
        json!({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"], "resourceNames": ["cacerts"]}),
        json!({"kind": "ServiceAccount", "name": "reader"}),
    )
    .await;
    Api::<Secret>::namespaced(admin.clone(), "istio-system")
        .create(
            &PostParams::default(),
            &obj(json!({"metadata": {"name": "cacerts"}})),
        )
        .await
        .unwrap();
    let sa_secrets = Api::<Secret>::namespaced(sa.clone(), "istio-system");
    assert!(sa_secrets.get("cacerts").await.is_ok());
    assert_eq!(
        status_code(&sa_secrets.get("other").await.unwrap_err()),
        Some(403)
    );
    assert_eq!(
        status_code(&sa_secrets.list(&ListParams::default()).await.unwrap_err()),
        Some(403)
    );
    assert_eq!(
        status_code(
            &Api::<Secret>::namespaced(sa, "default")
                .get("cacerts")
                .await
                .unwrap_err()
        ),
        Some(403)
    );
}

#[tokio::test]
async fn token_request_tokens_expire_on_the_server_clock() {
    let (server, admin) = with_reader("ttl").await;

    // like a real API server, less than 10 minutes is refused
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "istio-system");
    let tr: TokenRequest = obj(json!({"spec": {"audiences": [], "expirationSeconds": 2}}));
    let err = sas
        .create_token_request("reader", &PostParams::default(), &tr)
        .await
        .unwrap_err();
    assert_eq!(status_code(&err), Some(422));

    let tr = token_request(&admin, 600).await;
    let status = tr.status.unwrap();
    let exp = status.expiration_timestamp.clone().unwrap().0;
    let now = k8s_openapi::jiff::Timestamp::now();
    let secs = exp.duration_since(now).as_secs();
    assert!((590..=610).contains(&secs), "expires in {secs}s");
    // the token is JWT-shaped with readable claims
    let token = status.token.clone().unwrap();
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);

    let sa = client_from_yaml(&server.kubeconfig_with_token("ttl", &token)).await;
    let services = Api::<Service>::all(sa);
    assert!(services.list(&ListParams::default()).await.is_ok());
    server.clock().advance(Duration::from_secs(599));
    assert!(services.list(&ListParams::default()).await.is_ok());
    // Expired at 600 s, but authenticated at 599 s: the API server's 10 s cache of successful
    // authentications still answers for it until 609 s.
    server.clock().advance(Duration::from_secs(2));
    assert!(services.list(&ListParams::default()).await.is_ok());
    server.clock().advance(Duration::from_secs(9));
    assert_eq!(
        status_code(&services.list(&ListParams::default()).await.unwrap_err()),
        Some(401)
    );

    // deleting the ServiceAccount revokes its tokens, once the cached success has expired
    let tr = token_request(&admin, 3600).await;
    let sa =
        client_from_yaml(&server.kubeconfig_with_token("ttl", &tr.status.unwrap().token.unwrap()))
            .await;
    assert_eq!(list_services(&sa).await, Ok(()));
    sas.delete("reader", &DeleteParams::default())
        .await
        .unwrap();
    assert_eq!(list_services(&sa).await, Ok(()));
    server.clock().advance(Duration::from_secs(10));
    assert_eq!(list_services(&sa).await, Err(Some(401)));
}

#[tokio::test]
async fn token_controller_fills_service_account_token_secrets() {
    let (server, admin) = with_reader("legacy").await;
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), "istio-system");
    let created = secrets
        .create(&PostParams::default(), &obj(json!({"metadata": {"name": "reader-token", "annotations": {"kubernetes.io/service-account.name": "reader"}}, "type": "kubernetes.io/service-account-token"})))
        .await
        .unwrap();
    // filled asynchronously, like the real token controller
    assert!(
        created
            .data
            .as_ref()
            .is_none_or(|d| !d.contains_key("token"))
    );
    let filled = filled_token_secret(&secrets, "reader-token").await;
    let data = filled.data.unwrap();
    assert_eq!(
        String::from_utf8(data["ca.crt"].0.clone()).unwrap(),
        server.ca_pem()
    );
    assert_eq!(data["namespace"].0, b"istio-system");
    assert!(
        filled
            .metadata
            .annotations
            .unwrap()
            .contains_key("kubernetes.io/service-account.uid")
    );
    let token = String::from_utf8(data["token"].0.clone()).unwrap();

    let sa = client_from_yaml(&server.kubeconfig_with_token("legacy", &token)).await;
    assert_eq!(list_services(&sa).await, Ok(()));
    // the token lives as long as its Secret (plus the 10 s its last success stays cached)
    secrets
        .delete("reader-token", &DeleteParams::default())
        .await
        .unwrap();
    server.clock().advance(Duration::from_secs(10));
    assert_eq!(list_services(&sa).await, Err(Some(401)));

    // a token Secret for a missing ServiceAccount is removed by the controller
    secrets
        .create(&PostParams::default(), &obj(json!({"metadata": {"name": "orphan", "annotations": {"kubernetes.io/service-account.name": "nobody"}}, "type": "kubernetes.io/service-account-token"})))
        .await
        .unwrap();
    eventually_some(
        "the orphan token Secret to be removed",
        Duration::from_secs(5),
        || {
            let secrets = secrets.clone();
            async move {
                secrets
                    .get_opt("orphan")
                    .await
                    .unwrap()
                    .is_none()
                    .then_some(())
            }
        },
    )
    .await;
}

/// The controllers follow the store's change feed like an informer: when the history is
/// compacted before they read it, they re-list and still fill the Secret and the namespace.
#[tokio::test]
async fn controllers_relist_when_the_history_is_compacted_under_them() {
    init();
    let mut opts = k8s_test_server::Options::new("relist");
    opts.store.controller_delay = Duration::from_millis(300);
    let server = TestApiServer::start_with(opts).await.unwrap();
    let store = server.store();
    store
        .create(k8s_test_server::namespace_json("late"))
        .unwrap();
    store
        .create(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader", "namespace": "late"}}))
        .unwrap();
    store
        .create(json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/service-account-token",
            "metadata": {"name": "reader-token", "namespace": "late", "annotations": {"kubernetes.io/service-account.name": "reader"}}}))
        .unwrap();
    let secret = || {
        store
            .get("v1", "Secret", Some("late"), "reader-token")
            .unwrap()
    };
    assert!(
        secret().pointer("/data/token").is_none(),
        "not filled inside the write"
    );
    server.expire_watches();

    let token = eventually_some(
        "the delayed token controller to fill the Secret",
        Duration::from_secs(5),
        || async {
            secret()
                .pointer("/data/token")
                .and_then(|t| t.as_str())
                .map(str::to_string)
        },
    )
    .await;
    use base64::Engine as _;
    let token = base64::engine::general_purpose::STANDARD
        .decode(token)
        .unwrap();
    let id = server
        .authenticate(std::str::from_utf8(&token).unwrap())
        .expect("the filled token authenticates");
    assert_eq!(id.user, "system:serviceaccount:late:reader");
    for (kind, name) in [
        ("ServiceAccount", "default"),
        ("ConfigMap", "kube-root-ca.crt"),
    ] {
        assert!(
            store.get("v1", kind, Some("late"), name).is_some(),
            "namespace controller made {kind} {name}"
        );
    }
}

#[tokio::test]
async fn token_request_refuses_a_mismatched_name_and_tokens_for_another_audience() {
    let (server, admin) = with_reader("aud").await;
    let sas: Api<ServiceAccount> = Api::namespaced(admin.clone(), "istio-system");
    // Like the real server: a name or namespace in the body must match the URL's.
    for meta in [json!({"name": "other"}), json!({"namespace": "default"})] {
        let tr: TokenRequest = obj(json!({"metadata": meta, "spec": {"audiences": []}}));
        let err = sas
            .create_token_request("reader", &PostParams::default(), &tr)
            .await
            .unwrap_err();
        assert_eq!(status_code(&err), Some(422), "{meta}");
    }
    // A token for another audience is issued, but this API server refuses it (401).
    let token = testkit::kube_client::service_account_token(
        &admin,
        "istio-system",
        "reader",
        &["istio-ca"],
        None,
    )
    .await;
    let other = client_from_yaml(&server.kubeconfig_with_token("aud", &token)).await;
    let err = Api::<Service>::all(other)
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert_eq!(status_code(&err), Some(401));
    // The default audience (the API server's) authenticates.
    let tr = token_request(&admin, 3600).await;
    let token = tr.status.unwrap().token.unwrap();
    let ok = client_from_yaml(&server.kubeconfig_with_token("aud", &token)).await;
    assert!(
        Api::<Service>::all(ok)
            .list(&ListParams::default())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_max_token_expiration_shortens_longer_requests() {
    init();
    let mut opts = k8s_test_server::Options::new("max");
    opts.store.max_token_expiration_seconds = Some(3600);
    let server = TestApiServer::start_with(opts).await.unwrap();
    let admin = admin_client(&server).await;
    reader_setup(&admin).await;
    let tr = token_request(&admin, 7200).await;
    assert_eq!(tr.spec.as_ref().unwrap().expiration_seconds, Some(3600));
    let exp = tr.status.unwrap().expiration_timestamp.unwrap().0;
    let secs = exp
        .duration_since(k8s_openapi::jiff::Timestamp::now())
        .as_secs();
    assert!((3590..=3600).contains(&secs), "expires in {secs}s");
    // Below the cap: as asked.
    let tr = token_request(&admin, 1200).await;
    assert_eq!(tr.spec.as_ref().unwrap().expiration_seconds, Some(1200));
}

async fn token_review(admin: &Client, token: &str, audiences: &[&str]) -> Value {
    let review: k8s_openapi::api::authentication::v1::TokenReview =
        obj(json!({"spec": {"token": token, "audiences": audiences}}));
    let out = Api::<k8s_openapi::api::authentication::v1::TokenReview>::all(admin.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap();
    serde_json::to_value(out.status.unwrap()).unwrap()
}

/// TokenReview as istiod uses it (audience `istio-ca`): the user and the accepted audiences
/// for a good token; `authenticated: false` for another audience, an unknown token, an
/// expired one; 400 for an empty token, as kubernetes' tokenreview storage answers.
#[tokio::test]
async fn token_review_checks_audience_expiry_and_existence() {
    let (server, admin) = with_reader("review").await;
    let token = testkit::kube_client::service_account_token(
        &admin,
        "istio-system",
        "reader",
        &["istio-ca"],
        Some(600),
    )
    .await;

    let ok = token_review(&admin, &token, &["istio-ca"]).await;
    assert_eq!(ok["authenticated"], json!(true), "{ok}");
    assert_eq!(
        ok["user"]["username"],
        json!("system:serviceaccount:istio-system:reader")
    );
    assert_eq!(ok["audiences"], json!(["istio-ca"]));
    // default audiences are the API server's, which this token is not for
    let other = token_review(&admin, &token, &[]).await;
    assert_eq!(other["authenticated"], json!(false), "{other}");
    assert!(other["error"].as_str().is_some_and(|e| !e.is_empty()));
    let unknown = token_review(&admin, "a.b.c", &["istio-ca"]).await;
    assert_eq!(unknown["authenticated"], json!(false), "{unknown}");
    server.clock().advance(Duration::from_secs(601));
    let expired = token_review(&admin, &token, &["istio-ca"]).await;
    assert_eq!(expired["authenticated"], json!(false), "{expired}");

    let review: k8s_openapi::api::authentication::v1::TokenReview =
        obj(json!({"spec": {"token": ""}}));
    let err = Api::<k8s_openapi::api::authentication::v1::TokenReview>::all(admin.clone())
        .create(&PostParams::default(), &review)
        .await
        .unwrap_err();
    assert_eq!(status_code(&err), Some(400));
}

/// POSTs a SubjectAccessReview as `client`; the answer's `status.allowed`, or the error's code.
async fn sar(client: &Client, spec: Value) -> Result<bool, Option<u16>> {
    use k8s_openapi::api::authorization::v1::SubjectAccessReview;
    let review: SubjectAccessReview = serde_json::from_value(json!({"spec": spec})).unwrap();
    Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map(|r| r.status.is_some_and(|s| s.allowed))
        .map_err(|e| status_code(&e))
}

/// A SubjectAccessReview answers for the user and groups it names (a service account's
/// bindings by its user name, a Group subject by the groups given), is refused 422 as the API
/// server refuses one without a user or group or with both or neither kind of attributes, and
/// needs `create` on subjectaccessreviews (the reader has none).
#[tokio::test]
async fn a_subject_access_review_answers_for_the_named_account() {
    let (server, admin) = with_reader("sar").await;
    let reader = "system:serviceaccount:istio-system:reader";
    let attrs =
        |verb: &str, resource: &str| json!({"verb": verb, "resource": resource, "group": ""});
    let spec = |user: &str, groups: Value, a: Value| json!({"user": user, "groups": groups, "resourceAttributes": a});
    assert_eq!(
        sar(&admin, spec(reader, json!([]), attrs("watch", "services"))).await,
        Ok(true)
    );
    assert_eq!(
        sar(&admin, spec(reader, json!([]), attrs("list", "secrets"))).await,
        Ok(false)
    );
    // A grant to the group of every service account of the namespace.
    grant(
        &admin,
        None,
        "sa-group",
        json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}),
        json!({"kind": "Group", "name": "system:serviceaccounts:istio-system", "apiGroup": "rbac.authorization.k8s.io"}),
    )
    .await;
    let sa_groups = json!([
        "system:serviceaccounts",
        "system:serviceaccounts:istio-system",
        "system:authenticated"
    ]);
    assert_eq!(
        sar(&admin, spec(reader, sa_groups, attrs("list", "pods"))).await,
        Ok(true)
    );
    assert_eq!(
        sar(&admin, spec(reader, json!([]), attrs("list", "pods"))).await,
        Ok(false)
    );
    // Invalid specs.
    let invalid = [
        json!({"resourceAttributes": attrs("list", "pods")}),
        json!({"user": reader}),
        json!({"user": reader, "resourceAttributes": attrs("list", "pods"),
            "nonResourceAttributes": {"verb": "get", "path": "/healthz"}}),
    ];
    for spec in invalid {
        assert_eq!(sar(&admin, spec.clone()).await, Err(Some(422)), "{spec}");
    }
    // The reader may not ask.
    let tr = token_request(&admin, 3600).await;
    let token = tr.status.unwrap().token.unwrap();
    let sa = client_from_yaml(&server.kubeconfig_with_token("sar", &token)).await;
    assert_eq!(
        sar(&sa, spec(reader, json!([]), attrs("list", "services"))).await,
        Err(Some(403))
    );
}
