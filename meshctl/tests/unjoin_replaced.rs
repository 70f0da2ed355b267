//! `unjoin` deletes an object only as it listed and judged it: each delete carries the
//! object's uid (a precondition the API server checks), so an object another installer put
//! under the same name after the listing is not taken with it; unjoin judges that one
//! afresh, leaves another installer's and says so, and deletes one meshctl made again.
//! Through the real binary, against two TEST API servers whose interleaved write
//! (`Faults::interleave`) replaces the object just before unjoin's delete reaches it.

mod common;

use common::runs::{says, succeeds};
use common::*;
use k8s_test_server::TestApiServer;
use serde_json::{Value, json};

const NS: &str = "istio-system";
const GATEWAY_SA: &str = "istio-eastwestgateway";

fn service_account(s: &TestApiServer, name: &str) -> Option<Value> {
    s.store().get("v1", "ServiceAccount", Some(NS), name)
}

/// Just before west's first service account delete: `GATEWAY_SA` is deleted and made again
/// with `labels` and `annotations`, by another client.
fn replace_gateway_sa_before_delete(s: &TestApiServer, labels: Value, annotations: Value) {
    let store = s.store().clone();
    s.faults().interleave("delete", "serviceaccounts", move || {
        store
            .delete("v1", "ServiceAccount", Some(NS), GATEWAY_SA)
            .unwrap();
        store
            .create(json!({"apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": {"name": GATEWAY_SA, "namespace": NS,
                        "labels": labels, "annotations": annotations}}))
            .unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unjoin_leaves_what_another_installer_put_under_its_name_after_the_listing() {
    let m = joined_mesh().await;
    let listed = service_account(&m.west, GATEWAY_SA).unwrap();
    // Helm installs Istio's gateway chart in the meantime; a relabel by an older meshctl
    // would have put meshctl's label on it, and Helm's release annotations tell it apart.
    replace_gateway_sa_before_delete(
        &m.west,
        json!({"app": "istio-eastwestgateway", "app.kubernetes.io/managed-by": "meshctl"}),
        json!({"meta.helm.sh/release-name": "istio-eastwestgateway",
            "meta.helm.sh/release-namespace": NS}),
    );
    let all = succeeds(&m.unjoin_args(&[])).await;
    assert_eq!(m.west.faults().interleaved_pending(), 0, "the write ran");
    says(
        &all,
        &[&format!(
            "west: ServiceAccount {NS}/{GATEWAY_SA} left in place (replaced since unjoin \
             listed it), not made by meshctl"
        )],
    );
    let now = service_account(&m.west, GATEWAY_SA).expect("Helm's account is still there");
    assert_ne!(now["metadata"]["uid"], listed["metadata"]["uid"]);
    assert_eq!(
        now["metadata"]["annotations"]["meta.helm.sh/release-name"],
        "istio-eastwestgateway"
    );
    // The rest of what join made is gone, in both clusters.
    for s in [&m.west, &m.east] {
        assert!(service_account(s, "istio-reader-service-account").is_none());
        assert!(
            s.store()
                .get("apps/v1", "Deployment", Some(NS), GATEWAY_SA)
                .is_none()
        );
    }
    assert!(service_account(&m.east, GATEWAY_SA).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unjoin_deletes_its_own_object_made_again_after_the_listing() {
    let m = joined_mesh().await;
    // Another meshctl run makes the account again in the meantime, as its own.
    replace_gateway_sa_before_delete(
        &m.west,
        json!({"app.kubernetes.io/managed-by": "meshctl"}),
        json!({"meshctl.io/created-by": "meshctl"}),
    );
    let all = succeeds(&m.unjoin_args(&[])).await;
    assert_eq!(m.west.faults().interleaved_pending(), 0, "the write ran");
    assert!(!all.contains("left in place"), "{all}");
    for s in [&m.west, &m.east] {
        assert!(service_account(s, GATEWAY_SA).is_none());
    }
}
