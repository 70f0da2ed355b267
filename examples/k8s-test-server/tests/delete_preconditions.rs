//! A DELETE's preconditions as kube-apiserver's `rest.BeforeDelete` answers them: a uid that
//! is not the stored object's (409, qualified by the Kind, "might have been deleted and then
//! recreated"), then a stale resourceVersion (409, "might have been modified"); either way
//! nothing is deleted. An interleaved write
//! (`Faults::interleave`) replaces an object between a client's read and its delete, as
//! another client would.

mod common;

use common::server_with;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use kube::api::{Api, DeleteParams, Preconditions};
use serde_json::{Value, json};

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

fn sa(name: &str, managed_by: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name,
        "namespace": "mesh", "labels": {"app.kubernetes.io/managed-by": managed_by}}})
}

fn with(uid: Option<&str>, rv: Option<&str>) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions {
            uid: uid.map(str::to_string),
            resource_version: rv.map(str::to_string),
        }),
        ..DeleteParams::default()
    }
}

/// The message of a refused request, which must be a 409 Conflict.
fn conflict<T: std::fmt::Debug>(r: kube::Result<T>) -> String {
    match r {
        Err(kube::Error::Api(s)) if s.code == 409 => {
            assert_eq!(s.reason, "Conflict");
            s.message
        }
        other => panic!("expected a 409, got {other:?}"),
    }
}

#[tokio::test]
async fn a_uid_or_resource_version_that_does_not_hold_deletes_nothing() {
    let (_server, client) = server_with("del-pre", [namespace("mesh"), sa("r", "meshctl")]).await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "mesh");
    let stored = sas.get("r").await.unwrap();
    let (uid, rv) = (
        stored.metadata.uid.clone().unwrap(),
        stored.metadata.resource_version.clone().unwrap(),
    );

    let e = conflict(sas.delete("r", &with(Some("0000-other"), None)).await);
    assert_eq!(
        e,
        format!(
            "Operation cannot be fulfilled on ServiceAccount \"r\": the UID in the precondition \
             (0000-other) does not match the UID in record ({uid}). The object might have been \
             deleted and then recreated"
        )
    );
    // The uid is checked first, as BeforeDelete checks it.
    let both = conflict(sas.delete("r", &with(Some("0000-other"), Some("1"))).await);
    assert_eq!(both, e);

    let e = conflict(sas.delete("r", &with(Some(&uid), Some("1"))).await);
    assert_eq!(
        e,
        format!(
            "Operation cannot be fulfilled on ServiceAccount \"r\": the ResourceVersion in the \
             precondition (1) does not match the ResourceVersion in record ({rv}). The object \
             might have been modified"
        )
    );
    assert_eq!(
        sas.get("r").await.unwrap().metadata.uid.as_deref(),
        Some(uid.as_str()),
        "a refused delete deletes nothing"
    );

    sas.delete("r", &with(Some(&uid), Some(&rv))).await.unwrap();
    assert!(sas.get_opt("r").await.unwrap().is_none());
}

#[tokio::test]
async fn an_interleaved_write_replaces_the_object_between_read_and_delete() {
    let (server, client) = server_with("del-race", [namespace("mesh"), sa("r", "meshctl")]).await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "mesh");
    let read = sas.get("r").await.unwrap().metadata.uid.unwrap();

    // Another installer deletes it and makes its own under the name, just before the delete.
    let store = server.store().clone();
    server
        .faults()
        .interleave("delete", "serviceaccounts", move || {
            store
                .delete("v1", "ServiceAccount", Some("mesh"), "r")
                .unwrap();
            store.create(sa("r", "Helm")).unwrap();
        });
    // Other requests do not run it.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "mesh");
    assert!(cms.get_opt("nothing").await.unwrap().is_none());
    assert_eq!(server.faults().interleaved_pending(), 1);

    let e = conflict(sas.delete("r", &with(Some(&read), None)).await);
    assert!(e.contains(&format!("the UID in the precondition ({read})")));
    assert_eq!(server.faults().interleaved_pending(), 0, "run once");
    let now = sas.get("r").await.unwrap();
    assert_ne!(now.metadata.uid.as_deref(), Some(read.as_str()));
    assert_eq!(
        now.metadata.labels.unwrap()["app.kubernetes.io/managed-by"],
        "Helm"
    );

    // Without a precondition the same delete would have taken the other installer's object.
    sas.delete("r", &DeleteParams::default()).await.unwrap();
    assert!(sas.get_opt("r").await.unwrap().is_none());
}
