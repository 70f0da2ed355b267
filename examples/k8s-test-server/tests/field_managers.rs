//! Field managers as kube-apiserver keeps them, over real HTTPS with kube-rs clients:
//! server-side apply conflicts (409 naming each field and its manager) unless forced, force
//! taking ownership, the same value shared, writes without `fieldManager` recorded under the
//! User-Agent's manager, and the RBAC escalation check before validation on a patch.

mod common;

use common::{obj, role_and_binding, server_with, service_account_client, started, status_code};
use hyper::header::{HeaderValue, USER_AGENT};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_test_server::TestApiServer;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, core::Status};
use serde_json::{Value, json};

const KUBECTL_UA: &str = "kubectl/v1.31.0 (linux/amd64) kubernetes/abc1234";

/// An admin client of `server` that sends `User-Agent: ua` (kube-rs sends none of its own).
async fn client_with_user_agent(server: &TestApiServer, ua: &str) -> Client {
    common::init();
    let kc = Kubeconfig::from_yaml(&server.kubeconfig(server.cluster_name())).unwrap();
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    cfg.headers
        .push((USER_AGENT, HeaderValue::from_str(ua).unwrap()));
    Client::try_from(cfg).unwrap()
}

fn cm(data: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": data})
}

async fn apply(
    cms: &Api<ConfigMap>,
    manager: &str,
    force: bool,
    data: Value,
) -> kube::Result<ConfigMap> {
    let mut pp = PatchParams::apply(manager);
    pp.force = force;
    cms.patch("cfg", &pp, &Patch::Apply(cm(data))).await
}

/// The Status of a failed request, which must be `code`.
fn status(r: kube::Result<ConfigMap>, code: u16) -> Status {
    match r {
        Err(kube::Error::Api(s)) if s.code == code => *s,
        other => panic!("expected a {code}, got {other:?}"),
    }
}

/// Each cause of a conflict Status as (reason, message, field).
fn causes(s: &Status) -> Vec<(String, String, String)> {
    s.details
        .as_ref()
        .expect("details")
        .causes
        .iter()
        .map(|c| (c.reason.clone(), c.message.clone(), c.field.clone()))
        .collect()
}

fn conflict(manager: &str, field: &str) -> (String, String, String) {
    (
        "FieldManagerConflict".into(),
        format!("conflict with {manager}"),
        field.into(),
    )
}

async fn data(cms: &Api<ConfigMap>) -> Value {
    json!(cms.get("cfg").await.unwrap().data)
}

/// Fails without the conflict check: every apply here succeeded and changed the field.
#[tokio::test]
async fn an_apply_changing_another_managers_field_is_a_409_naming_each_field() {
    let (_server, admin) = started("conflict").await;
    let cms: Api<ConfigMap> = Api::namespaced(admin, "default");
    apply(
        &cms,
        "other-manager",
        false,
        json!({"foo": "a", "keep": "k"}),
    )
    .await
    .unwrap();

    let s = status(
        apply(&cms, "meshctl", false, json!({"foo": "b"})).await,
        409,
    );
    assert_eq!(s.reason, "Conflict");
    assert_eq!(
        s.message,
        "Apply failed with 1 conflict: conflict with \"other-manager\": .data.foo"
    );
    assert_eq!(causes(&s), [conflict("\"other-manager\"", ".data.foo")]);
    assert_eq!(data(&cms).await, json!({"foo": "a", "keep": "k"}));

    // An updater owns what it changed: its name, apiVersion and the fields, by manager.
    let edit = PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..PatchParams::default()
    };
    cms.patch("cfg", &edit, &Patch::Merge(json!({"data": {"bar": "x"}})))
        .await
        .unwrap();
    let s = status(
        apply(
            &cms,
            "meshctl",
            false,
            json!({"foo": "b", "bar": "y", "new": "n"}),
        )
        .await,
        409,
    );
    assert_eq!(
        s.message,
        "Apply failed with 2 conflicts: conflicts with \"kubectl-edit\" using v1:\n- .data.bar\n\
         conflicts with \"other-manager\":\n- .data.foo"
    );
    assert_eq!(
        causes(&s),
        [
            conflict("\"kubectl-edit\" using v1", ".data.bar"),
            conflict("\"other-manager\"", ".data.foo"),
        ]
    );
    assert_eq!(
        data(&cms).await,
        json!({"foo": "a", "keep": "k", "bar": "x"})
    );
    // A dry run conflicts too.
    let dry = PatchParams::apply("meshctl").dry_run();
    let e = cms
        .patch("cfg", &dry, &Patch::Apply(cm(json!({"foo": "b"}))))
        .await
        .unwrap_err();
    assert_eq!(status_code(&e), Some(409));
}

/// Fails without the conflict check and ownership transfer: the loser's re-apply succeeded
/// and its stopping to apply the field removed it.
#[tokio::test]
async fn force_takes_ownership_of_the_conflicting_fields() {
    let (_server, admin) = started("force").await;
    let cms: Api<ConfigMap> = Api::namespaced(admin, "default");
    apply(
        &cms,
        "other-manager",
        false,
        json!({"foo": "a", "keep": "k"}),
    )
    .await
    .unwrap();
    apply(&cms, "meshctl", true, json!({"foo": "b"}))
        .await
        .unwrap();
    assert_eq!(data(&cms).await, json!({"foo": "b", "keep": "k"}));

    // The field is meshctl's alone now: the other manager's value conflicts with it ...
    let s = status(
        apply(
            &cms,
            "other-manager",
            false,
            json!({"foo": "a", "keep": "k"}),
        )
        .await,
        409,
    );
    assert_eq!(
        s.message,
        "Apply failed with 1 conflict: conflict with \"meshctl\": .data.foo"
    );
    // ... meshctl changes it without force ...
    apply(&cms, "meshctl", false, json!({"foo": "c"}))
        .await
        .unwrap();
    // ... and the other manager no longer applying it leaves it (not its field any more).
    apply(&cms, "other-manager", false, json!({"keep": "k"}))
        .await
        .unwrap();
    assert_eq!(data(&cms).await, json!({"foo": "c", "keep": "k"}));
}

/// Fails without shared ownership: the second applier's same value conflicted, or the first
/// one stopping removed the field the second still applies, or the third saw one owner.
#[tokio::test]
async fn the_same_value_is_shared_and_stays_while_one_owner_applies_it() {
    let (_server, admin) = started("shared").await;
    let cms: Api<ConfigMap> = Api::namespaced(admin, "default");
    apply(&cms, "a", false, json!({"foo": "1"})).await.unwrap();
    apply(&cms, "b", false, json!({"foo": "1"})).await.unwrap();

    let s = status(apply(&cms, "c", false, json!({"foo": "2"})).await, 409);
    assert_eq!(
        s.message,
        "Apply failed with 2 conflicts: conflicts with \"a\":\n- .data.foo\n\
         conflicts with \"b\":\n- .data.foo"
    );

    apply(&cms, "a", false, json!({"other": "x"}))
        .await
        .unwrap();
    assert_eq!(data(&cms).await, json!({"foo": "1", "other": "x"}));
    apply(&cms, "b", false, json!({})).await.unwrap();
    assert_eq!(data(&cms).await, json!({"other": "x"}));
}

fn entries(o: &ConfigMap) -> Vec<(String, String, String)> {
    o.metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|e| {
            (
                e.manager.clone().unwrap_or_default(),
                e.operation.clone().unwrap_or_default(),
                e.api_version.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// Fails without the User-Agent fallback: the writes were recorded under no manager, and
/// meshctl's apply over kubectl's field succeeded without force.
#[tokio::test]
async fn writes_without_a_field_manager_belong_to_the_user_agents_manager() {
    let (server, admin) = started("useragent").await;
    let kubectl: Api<ConfigMap> =
        Api::namespaced(client_with_user_agent(&server, KUBECTL_UA).await, "default");
    let created = kubectl
        .create(&PostParams::default(), &obj(cm(json!({"foo": "a"}))))
        .await
        .unwrap();
    assert_eq!(
        entries(&created),
        [("kubectl".into(), "Update".into(), "v1".into())]
    );

    // A patch by another tool, no slash in its User-Agent: the whole of it.
    let tool: Api<ConfigMap> = Api::namespaced(
        client_with_user_agent(&server, "label-tool").await,
        "default",
    );
    let patched = tool
        .patch(
            "cfg",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"bar": "b"}})),
        )
        .await
        .unwrap();
    assert!(
        entries(&patched).contains(&("label-tool".into(), "Update".into(), "v1".into())),
        "{:?}",
        entries(&patched)
    );
    // An explicit fieldManager wins over the User-Agent.
    let named = PatchParams {
        field_manager: Some("named".into()),
        ..PatchParams::default()
    };
    let patched = tool
        .patch("cfg", &named, &Patch::Merge(json!({"data": {"baz": "c"}})))
        .await
        .unwrap();
    assert!(entries(&patched).iter().any(|e| e.0 == "named"));

    // meshctl applying another value to kubectl's field conflicts, as on a real cluster.
    let cms: Api<ConfigMap> = Api::namespaced(admin, "default");
    let s = status(
        apply(&cms, "meshctl", false, json!({"foo": "m"})).await,
        409,
    );
    assert_eq!(
        s.message,
        "Apply failed with 1 conflict: conflict with \"kubectl\" using v1: .data.foo"
    );
    apply(&cms, "meshctl", true, json!({"foo": "m"}))
        .await
        .unwrap();
    assert_eq!(data(&cms).await["foo"], "m");
}

/// Fails without the PatchOptions check: the merge patch with `force` succeeded.
#[tokio::test]
async fn force_on_a_non_apply_patch_is_invalid() {
    let (server, admin) = started("forcepatch").await;
    let mut stored = cm(json!({"foo": "a"}));
    stored["metadata"]["namespace"] = json!("default");
    server.store().create(stored).unwrap();
    for force in ["true", "false"] {
        let req = hyper::Request::builder()
            .method("PATCH")
            .uri(format!(
                "/api/v1/namespaces/default/configmaps/cfg?force={force}"
            ))
            .header("Content-Type", "application/merge-patch+json")
            .body(br#"{"data": {"foo": "b"}}"#.to_vec())
            .unwrap();
        let e = admin.request::<ConfigMap>(req).await.unwrap_err();
        match e {
            kube::Error::Api(s) => {
                assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
                assert_eq!(
                    s.message,
                    "PatchOptions.meta.k8s.io \"\" is invalid: force: Forbidden: may not be specified for non-apply patch"
                );
            }
            other => panic!("expected a 422, got {other:?}"),
        }
    }
    let cms: Api<ConfigMap> = Api::namespaced(admin, "default");
    assert_eq!(data(&cms).await, json!({"foo": "a"}));
}

/// Fails with the check after validation: these patches were 422.
#[tokio::test]
async fn an_invalid_patch_that_escalates_is_forbidden_first() {
    const MAKER: (&str, &str) = ("team", "maker");
    let rules = json!([
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["clusterroles"],
         "verbs": ["get", "create", "update", "patch"]},
        {"apiGroups": [""], "resources": ["services"], "verbs": ["list"]}]);
    let objects = [
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}),
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": "maker", "namespace": "team"}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "svc"},
            "rules": [{"apiGroups": [""], "resources": ["services"], "verbs": ["list"]}]}),
    ]
    .into_iter()
    .chain(role_and_binding(None, "maker", rules, MAKER));
    let (server, admin) = server_with("escalate", objects).await;
    let maker = service_account_client(&server, &admin, MAKER.0, MAKER.1).await;

    // Grants everything and carries an invalid label value.
    let bad = json!({"metadata": {"labels": {"a": "not valid!"}},
        "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]});
    let as_maker: Api<ClusterRole> = Api::all(maker);
    let e = as_maker
        .patch("svc", &PatchParams::default(), &Patch::Merge(&bad))
        .await
        .unwrap_err();
    assert_eq!(status_code(&e), Some(403), "{e}");
    let mut applied = bad.clone();
    applied["apiVersion"] = json!("rbac.authorization.k8s.io/v1");
    applied["kind"] = json!("ClusterRole");
    applied["metadata"]["name"] = json!("svc");
    let e = as_maker
        .patch(
            "svc",
            &PatchParams::apply("maker").force(),
            &Patch::Apply(&applied),
        )
        .await
        .unwrap_err();
    assert_eq!(status_code(&e), Some(403), "{e}");
    // An apply that would create the role is checked the same way.
    applied["metadata"]["name"] = json!("new");
    let e = as_maker
        .patch(
            "new",
            &PatchParams::apply("maker").force(),
            &Patch::Apply(&applied),
        )
        .await
        .unwrap_err();
    assert_eq!(status_code(&e), Some(403), "{e}");

    // The patch is invalid indeed: for an admin, whom the check lets through, it is a 422.
    let as_admin: Api<ClusterRole> = Api::all(admin);
    let e = as_admin
        .patch("svc", &PatchParams::default(), &Patch::Merge(&bad))
        .await
        .unwrap_err();
    assert_eq!(status_code(&e), Some(422), "{e}");
}

/// A `/status` apply is its own manager (`BuildManagerIdentifier` includes the subresource):
/// it does not replace what the same manager applied to the main resource, so a label that
/// manager stops applying there is still pruned.
#[tokio::test]
async fn a_status_apply_does_not_replace_the_managers_main_apply() {
    let (server, client) = started("fm-status-apply").await;
    server.install_istio_gateway_crd();
    server
        .store()
        .create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "mesh"}}))
        .unwrap();
    let gvk = kube::api::GroupVersionKind::gvk("networking.istio.io", "v1", "Gateway");
    let gateways: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client,
        "mesh",
        &kube::api::ApiResource::from_gvk_with_plural(&gvk, "gateways"),
    );
    let gateway = |labels: Value| {
        json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": "mesh", "labels": labels},
            "spec": {"selector": {"istio": "eastwestgateway"}}})
    };
    let pp = PatchParams::apply("meshctl");
    gateways
        .patch(
            "gw",
            &pp,
            &Patch::Apply(gateway(json!({"x": "1", "keep": "1"}))),
        )
        .await
        .unwrap();
    let status = json!({"apiVersion": "networking.istio.io/v1", "kind": "Gateway",
        "metadata": {"name": "gw", "namespace": "mesh"}, "status": {"observedGeneration": 1}});
    gateways
        .patch_status("gw", &pp, &Patch::Apply(status))
        .await
        .unwrap();
    let gw = gateways
        .patch("gw", &pp, &Patch::Apply(gateway(json!({"keep": "1"}))))
        .await
        .unwrap();
    assert_eq!(
        gw.metadata
            .labels
            .unwrap_or_default()
            .into_keys()
            .collect::<Vec<_>>(),
        ["keep"],
        "the label meshctl stopped applying is pruned"
    );
    assert_eq!(gw.data["status"], json!({"observedGeneration": 1}));
    let mut managers: Vec<(String, Option<String>)> = gw
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.manager.unwrap_or_default(), e.subresource))
        .collect();
    managers.sort();
    assert_eq!(
        managers,
        [
            ("meshctl".to_string(), None),
            ("meshctl".to_string(), Some("status".to_string()))
        ]
    );
}

/// A raw request with `?fieldManager=<manager>` (kube-rs refuses long managers itself).
async fn with_manager(
    client: &Client,
    method: &str,
    path: &str,
    manager: &str,
    content_type: &str,
    body: Value,
) -> kube::Result<ConfigMap> {
    let enc: String = manager
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("{path}?fieldManager={enc}"))
        .header("content-type", content_type)
        .body(serde_json::to_vec(&body).unwrap())
        .unwrap();
    client.request(req).await
}

/// `fieldManager` is validated as `ValidateFieldManager` does, on create, update and patch:
/// at most 128 bytes, every character printable, a 422 on the request's options.
#[tokio::test]
async fn an_unprintable_or_too_long_field_manager_is_invalid() {
    let (_server, client) = started("fm-validate").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let all = "/api/v1/namespaces/default/configmaps";
    let one = "/api/v1/namespaces/default/configmaps/cfg";
    let json = "application/json";
    let long = "m".repeat(129);
    let r = with_manager(&client, "POST", all, &long, json, cm(json!({"a": "1"}))).await;
    let s = status(r, 422);
    assert_eq!(
        s.message,
        r#"CreateOptions.meta.k8s.io "" is invalid: fieldManager: Too long: must have at most 128 bytes"#
    );
    assert_eq!(s.reason, "Invalid");
    // 128 bytes are fine.
    let ok = "m".repeat(128);
    with_manager(&client, "POST", all, &ok, json, cm(json!({"a": "1"})))
        .await
        .unwrap();

    let apply_ct = "application/apply-patch+yaml";
    let r = with_manager(
        &client,
        "PATCH",
        one,
        "bad\u{7}name",
        apply_ct,
        cm(json!({"a": "2"})),
    )
    .await;
    assert_eq!(
        status(r, 422).message,
        r#"PatchOptions.meta.k8s.io "" is invalid: fieldManager: Invalid value: "bad\aname": invalid character U+0007 (at position 3)"#
    );
    let both = format!("{long}\u{200b}");
    let current = serde_json::to_value(cms.get("cfg").await.unwrap()).unwrap();
    let r = with_manager(&client, "PUT", one, &both, json, current).await;
    assert_eq!(
        status(r, 422).message,
        format!(
            r#"UpdateOptions.meta.k8s.io "" is invalid: [fieldManager: Too long: must have at most 128 bytes, fieldManager: Invalid value: "{long}\u200b": invalid character U+200B (at position 129)]"#
        )
    );
    assert_eq!(data(&cms).await, json!({"a": "1"}), "nothing was written");
}

/// A manager that owns nothing has no managedFields entry (structured-merge-diff deletes
/// managers with an empty set after every update and apply): an update that only removes a
/// field owns nothing, and a manager whose every field another took loses its entry.
#[tokio::test]
async fn a_manager_that_owns_nothing_has_no_entry() {
    let (_server, admin) = started("empty-managers").await;
    let cms: Api<ConfigMap> = Api::namespaced(admin, "default");
    let pp = |m: &str| PatchParams {
        field_manager: Some(m.into()),
        ..PatchParams::default()
    };
    let names = |o: &ConfigMap| -> Vec<String> {
        let mut v: Vec<String> = entries(o).into_iter().map(|e| e.0).collect();
        v.sort();
        v
    };
    let created = cms
        .create(
            &PostParams {
                field_manager: Some("creator".into()),
                ..PostParams::default()
            },
            &obj(cm(json!({"a": "1", "b": "2"}))),
        )
        .await
        .unwrap();
    assert_eq!(names(&created), ["creator"]);
    // Removing a field owns nothing.
    let removed = cms
        .patch(
            "cfg",
            &pp("remover"),
            &Patch::Merge(json!({"data": {"b": null}})),
        )
        .await
        .unwrap();
    assert_eq!(names(&removed), ["creator"]);
    // Taking the creator's last field leaves it nothing.
    let taken = cms
        .patch(
            "cfg",
            &pp("taker"),
            &Patch::Merge(json!({"data": {"a": "9"}})),
        )
        .await
        .unwrap();
    assert_eq!(names(&taken), ["taker"]);
    // A forced apply takes an applier's only field: the applier's entry goes too.
    apply(&cms, "applier", true, json!({"c": "1"}))
        .await
        .unwrap();
    let forced = apply(&cms, "forcer", true, json!({"a": "9", "c": "2"}))
        .await
        .unwrap();
    // The taker's `a`, applied with the same value, is shared, not taken.
    assert_eq!(names(&forced), ["forcer", "taker"]);
    assert_eq!(data(&cms).await, json!({"a": "9", "c": "2"}));
}

/// An apply of the values its manager created with POST changes no field but makes the
/// manager an `Apply` owner: the real server writes that managedFields change (a new
/// resourceVersion); the same apply again changes nothing.
#[tokio::test]
async fn an_apply_that_only_adds_its_manager_as_an_owner_is_written() {
    let (_server, admin) = started("new-owner").await;
    let cms: Api<ConfigMap> = Api::namespaced(admin, "default");
    let pp = PostParams {
        field_manager: Some("m".into()),
        ..PostParams::default()
    };
    let created = cms.create(&pp, &obj(cm(json!({"a": "1"})))).await.unwrap();
    let rv = |o: &ConfigMap| o.metadata.resource_version.clone().unwrap();
    let first = apply(&cms, "m", false, json!({"a": "1"})).await.unwrap();
    assert_ne!(rv(&first), rv(&created), "the new Apply owner is a change");
    let ops: Vec<String> = first
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|e| {
            format!(
                "{}:{}",
                e.manager.as_deref().unwrap_or(""),
                e.operation.as_deref().unwrap_or("")
            )
        })
        .collect();
    assert!(ops.contains(&"m:Apply".to_string()), "{ops:?}");
    let again = apply(&cms, "m", false, json!({"a": "1"})).await.unwrap();
    assert_eq!(rv(&again), rv(&first), "nothing new: no write");
}

/// A write naming managedFields without an entry drops that manager's ownership, as the real
/// field manager takes a request's managedFields as the object's (`fieldmanager.go`, what
/// kubectl's `csaupgrade` relies on): a field only the dropped Update owner held is then
/// removed by the applier that stops applying it. `[{}]` resets them all; an entry the
/// server did not write is refused (the TEST SERVER takes removals only).
#[tokio::test]
async fn a_managed_fields_write_that_drops_an_entry_drops_its_ownership() {
    let (_server, admin) = started("west").await;
    let cms: Api<ConfigMap> = Api::namespaced(admin, "default");
    // Created by a POST (an Update owner), then applied with the same fields.
    let pp = PostParams {
        field_manager: Some("tool".into()),
        ..Default::default()
    };
    let created: ConfigMap = serde_json::from_value(cm(json!({"a": "1", "b": "2"}))).unwrap();
    cms.create(&pp, &created).await.unwrap();
    apply(&cms, "tool", false, json!({"a": "1", "b": "2"}))
        .await
        .unwrap();
    // The Update owner keeps b when the applier stops applying it.
    apply(&cms, "tool", false, json!({"a": "1"})).await.unwrap();
    assert_eq!(data(&cms).await, json!({"a": "1", "b": "2"}));
    apply(&cms, "tool", false, json!({"a": "1", "b": "2"}))
        .await
        .unwrap();

    // Its entry left out of a merge patch of managedFields (at the object's version).
    let live = cms.get("cfg").await.unwrap();
    let entries = json!(live.metadata.managed_fields);
    let kept: Vec<&Value> = entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["operation"] != "Update")
        .collect();
    assert_eq!(kept.len(), 1, "{entries:#}");
    let merge = json!({"metadata": {"managedFields": kept,
        "resourceVersion": live.metadata.resource_version}});
    let mp = PatchParams {
        field_manager: Some("tool".into()),
        ..Default::default()
    };
    let after = cms.patch("cfg", &mp, &Patch::Merge(&merge)).await.unwrap();
    let ops: Vec<Value> = json!(after.metadata.managed_fields)
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["operation"].clone())
        .collect();
    assert_eq!(ops, [json!("Apply")]);
    assert_ne!(
        after.metadata.resource_version,
        live.metadata.resource_version
    );
    // Now the applier's dropped field goes.
    apply(&cms, "tool", false, json!({"a": "1"})).await.unwrap();
    assert_eq!(data(&cms).await, json!({"a": "1"}));

    // An entry this server did not write is refused; `[{}]` resets every entry.
    let forged = json!({"metadata": {"managedFields": [
        {"manager": "someone", "operation": "Update", "apiVersion": "v1"}]}});
    let r = cms.patch("cfg", &mp, &Patch::Merge(&forged)).await;
    assert!(
        matches!(r, Err(kube::Error::Api(ref s)) if s.code == 500),
        "{r:?}"
    );
    let reset = json!({"metadata": {"managedFields": [{}]}});
    let after = cms.patch("cfg", &mp, &Patch::Merge(&reset)).await.unwrap();
    assert!(after.metadata.managed_fields.is_none(), "{after:?}");
}
