//! The TEST SERVER refuses, over HTTP with a real kube-rs client, the writes a real API server
//! refuses: invalid names, labels, annotations, Secret/ConfigMap data, Service ports and
//! EndpointSlice fields, with the real 422 `Invalid` Status.

mod common;

use common::{admin_client, init, obj};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_test_server::TestApiServer;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::core::Status;
use serde_json::json;

/// The 422 Invalid Status of a refused write.
fn invalid<T: std::fmt::Debug>(r: Result<T, kube::Error>) -> Status {
    match r {
        Err(kube::Error::Api(s)) if s.code == 422 && s.reason == "Invalid" => *s,
        other => panic!("expected 422 Invalid, got {other:?}"),
    }
}

fn causes(s: &Status) -> Vec<(String, String)> {
    s.details
        .as_ref()
        .map(|d| {
            d.causes
                .iter()
                .map(|c| (c.field.clone(), c.reason.clone()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn invalid_creates_get_the_real_422() {
    init();
    let server = TestApiServer::start("valid").await.unwrap();
    let client = admin_client(&server).await;
    let pp = PostParams::default();

    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let s = invalid(
        services
            .create(
                &pp,
                &obj(json!({"metadata": {"name": "9bad"}, "spec": {"ports": [{"port": 80}]}})),
            )
            .await,
    );
    assert_eq!(
        s.message,
        "Service \"9bad\" is invalid: metadata.name: Invalid value: \"9bad\": a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
    );
    let d = s.details.as_ref().unwrap();
    assert_eq!((d.name.as_str(), d.kind.as_str()), ("9bad", "Service"));
    assert_eq!(
        causes(&s),
        [("metadata.name".to_string(), "FieldValueInvalid".to_string())]
    );

    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let long = "v".repeat(64);
    let s = invalid(
        configmaps
            .create(
                &pp,
                &obj(json!({"metadata": {"name": "c", "labels": {"app": long}}})),
            )
            .await,
    );
    assert_eq!(
        s.message,
        format!(
            "ConfigMap \"c\" is invalid: metadata.labels: Invalid value: \"{long}\": must be no more than 63 characters"
        )
    );

    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let s = invalid(
        secrets
            .create(
                &pp,
                &obj(json!({"metadata": {"name": "s"}, "stringData": {"a/b": "x"}})),
            )
            .await,
    );
    assert_eq!(
        s.message,
        "Secret \"s\" is invalid: data[a/b]: Invalid value: \"a/b\": a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"
    );

    let big = "x".repeat((1 << 20) + 1);
    let s = invalid(
        secrets
            .create(
                &pp,
                &obj(json!({"metadata": {"name": "big"}, "stringData": {"blob": big}})),
            )
            .await,
    );
    assert_eq!(
        s.message,
        "Secret \"big\" is invalid: data: Too long: must have at most 1048576 bytes"
    );
    assert_eq!(
        causes(&s),
        [("data".to_string(), "FieldValueTooLong".to_string())]
    );
    // Exactly 1 MiB is allowed.
    let fits = "x".repeat(1 << 20);
    secrets
        .create(
            &pp,
            &obj(json!({"metadata": {"name": "fits"}, "stringData": {"blob": fits}})),
        )
        .await
        .unwrap();

    // Several errors come back in one Status, and nothing was stored.
    let s = invalid(
        services
            .create(
                &pp,
                &obj(json!({"metadata": {"name": "web", "annotations": {"a/b/c": "x"}},
                    "spec": {"ports": [{"port": 0}, {"name": "http", "port": 80, "protocol": "HTTP"}]}})),
            )
            .await,
    );
    assert_eq!(
        causes(&s)
            .iter()
            .map(|(f, r)| format!("{f} {r}"))
            .collect::<Vec<_>>(),
        [
            "metadata.annotations FieldValueInvalid",
            "spec.ports[0].name FieldValueRequired",
            "spec.ports[0].port FieldValueInvalid",
            "spec.ports[0].targetPort FieldValueInvalid",
            "spec.ports[1].protocol FieldValueNotSupported",
        ]
    );
    assert!(
        s.message
            .starts_with("Service \"web\" is invalid: [metadata.annotations: "),
        "{}",
        s.message
    );
    assert!(services.get_opt("web").await.unwrap().is_none());

    // A dry run is validated too.
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    invalid(
        services
            .create(
                &dry,
                &obj(json!({"metadata": {"name": "Web"}, "spec": {"ports": [{"port": 80}]}})),
            )
            .await,
    );

    // generateName: the prefix may end in '-', the generated name is valid.
    let made = services
        .create(
            &pp,
            &obj(json!({"metadata": {"generateName": "web-"}, "spec": {"ports": [{"port": 80}]}})),
        )
        .await
        .unwrap();
    assert!(made.metadata.name.unwrap().starts_with("web-"));
    let s = invalid(
        services
            .create(
                &pp,
                &obj(json!({"metadata": {"generateName": "1web-"}, "spec": {"ports": [{"port": 80}]}})),
            )
            .await,
    );
    assert_eq!(causes(&s)[0].0, "metadata.generateName");
}

#[tokio::test]
async fn invalid_updates_patches_and_applies_get_the_real_422() {
    init();
    let server = TestApiServer::start("valid-upd").await.unwrap();
    let client = admin_client(&server).await;
    let pp = PostParams::default();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let mut s: Secret = secrets
        .create(
            &pp,
            &obj(json!({"metadata": {"name": "s"}, "immutable": true, "stringData": {"a": "1"}})),
        )
        .await
        .unwrap();

    // Replace: type and immutable data are frozen.
    s.type_ = Some("kubernetes.io/tls".into());
    s.data
        .as_mut()
        .unwrap()
        .insert("a".into(), k8s_openapi::ByteString(b"2".to_vec()));
    let st = invalid(secrets.replace("s", &pp, &s).await);
    assert_eq!(
        st.message,
        "Secret \"s\" is invalid: [type: Invalid value: \"kubernetes.io/tls\": field is immutable, data: Forbidden: field is immutable when `immutable` is set, data[tls.crt]: Required value, data[tls.key]: Required value]"
    );

    // Merge patch and server-side apply with a bad label.
    let bad = json!({"metadata": {"labels": {"-bad": "x"}}});
    let st = invalid(
        secrets
            .patch("s", &PatchParams::default(), &Patch::Merge(&bad))
            .await,
    );
    assert_eq!(
        causes(&st),
        [(
            "metadata.labels".to_string(),
            "FieldValueInvalid".to_string()
        )]
    );
    let apply = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "applied", "labels": {"ok": "a b"}}});
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let st = invalid(
        configmaps
            .patch(
                "applied",
                &PatchParams::apply("test"),
                &Patch::Apply(&apply),
            )
            .await,
    );
    assert!(
        st.message
            .starts_with("ConfigMap \"applied\" is invalid: metadata.labels: Invalid value: \"a b\": a valid label must be"),
        "{}",
        st.message
    );

    // EndpointSlice addressType cannot change.
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    slices
        .create(
            &pp,
            &obj(json!({"metadata": {"name": "e"}, "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.0.0.1"]}], "ports": [{"name": "http", "port": 80}]})),
        )
        .await
        .unwrap();
    let change = json!({"addressType": "FQDN", "endpoints": [{"addresses": ["a.example"]}]});
    let st = invalid(
        slices
            .patch("e", &PatchParams::default(), &Patch::Merge(&change))
            .await,
    );
    assert_eq!(
        st.message,
        "EndpointSlice.discovery.k8s.io \"e\" is invalid: addressType: Invalid value: \"FQDN\": field is immutable"
    );
}

#[tokio::test]
async fn direct_store_writes_are_validated_too() {
    let server = TestApiServer::start("valid-store").await.unwrap();
    let store = server.store();
    let e = store
        .create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "My_NS"}}))
        .unwrap_err();
    assert_eq!((e.code, e.reason), (422, "Invalid"));
    // `apply` (verbatim, status included) still refuses names and labels no cluster holds...
    let e = store
        .apply(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "svc", "namespace": "default", "labels": {"a/b/c": "x"}},
            "spec": {"ports": [{"port": 80}]}}))
        .unwrap_err();
    assert_eq!(e.code, 422, "{e}");
    // ...but may replace what an update may not change (a cluster could hold either).
    let secret = |ty: &str| {
        json!({"apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "t", "namespace": "default"}, "type": ty,
            "data": {"tls.crt": "", "tls.key": ""}})
    };
    store.apply(secret("Opaque")).unwrap();
    store.apply(secret("kubernetes.io/tls")).unwrap();
}
