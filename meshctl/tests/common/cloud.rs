//! Clusters with a cloud controller: every LoadBalancer Service gets the load-balancer
//! cleanup finalizer (`StoreConfig::load_balancer_cleanup_finalizer`), which it never takes
//! off, so a DELETE only marks the Service and the test plays the teardown.

use k8s_test_server::{StoreConfig, TestApiServer};
use serde_json::Value;

use super::{Mesh, mesh_of, servers_with};

/// The finalizer the cloud controller puts on a LoadBalancer Service.
pub const LB_FINALIZER: &str = "service.kubernetes.io/load-balancer-cleanup";

/// west and east, both with the cloud controller.
pub async fn cloud_mesh() -> Mesh {
    let (west, east) = servers_with(StoreConfig {
        load_balancer_cleanup_finalizer: true,
        ..StoreConfig::default()
    })
    .await;
    mesh_of(west, east).await
}

/// The gateway Service as stored (also while it is being deleted).
pub fn stored_service(s: &TestApiServer) -> Option<Value> {
    s.store().get(
        "v1",
        "Service",
        Some("istio-system"),
        "istio-eastwestgateway",
    )
}
