//! Double HBONE end to end with the `testkit::hbone` doubles: a client ztunnel opens the
//! outer mTLS + CONNECT to the gateway's HBONE port, then runs a second TLS + CONNECT inside
//! it to a destination ztunnel behind the gateway, which forwards to an app. The gateway
//! terminates only the outer leg: the destination sees the *client's* identity and the
//! inner CONNECT, and the app's bytes arrive intact.

mod common;
mod hbone_support;

use testkit::hbone::{ClientZtunnel, ConnectRequest, DestinationZtunnel, StreamEnd, TestApp};
use testkit::mtls::Identity;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use hbone_support::{TIMEOUT, hbone_yaml, pki};

const SVC: &str = "catalog.istioinaction.svc.cluster.local";

#[tokio::test]
async fn double_hbone_through_the_gateway() {
    let app = TestApp::echo().await.unwrap();
    // The destination pod's ztunnel: a catalog identity from the same mesh root.
    let dest_id = Identity::from_workload(&pki().destination).unwrap();
    let dest = DestinationZtunnel::start(&dest_id, app.addr())
        .await
        .unwrap();
    let gw = hbone_support::gateway(
        &hbone_yaml(&[(SVC, &[(dest.addr().ip(), dest.addr().port())])]),
        |_| {},
    )
    .await;

    let client_id = Identity::from_workload(&pki().client).unwrap();
    let outer_client =
        ClientZtunnel::from_identity(&client_id, &[pki().gateway.spiffe_id.clone()]).unwrap();
    let outer = outer_client.connect(gw.hbone).await.unwrap();
    assert_eq!(
        outer.peer_identity(),
        Some(pki().gateway.spiffe_id.as_str())
    );
    let authority = format!("{SVC}:80");
    let trace = "00-0123456789abcdef0123456789abcdef-0123456789abcdef-00";
    let outer_tunnel = outer
        .open(ConnectRequest::new(&authority).traceparent(trace))
        .await
        .unwrap();

    // The inner leg, end to end to the destination ztunnel, checked against its identity.
    let dest_spiffe = pki().destination.clone().spiffe_id;
    let inner_client = ClientZtunnel::from_identity(&client_id, &[dest_spiffe]).unwrap();
    let inner = tokio::time::timeout(TIMEOUT, inner_client.connect_over(outer_tunnel))
        .await
        .unwrap()
        .unwrap();
    let mut tunnel = inner
        .open(
            ConnectRequest::new(&authority)
                .traceparent(trace)
                .forwarded_network("west-network"),
        )
        .await
        .unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    tunnel.write_all(&data).await.unwrap();
    tunnel.shutdown().await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(TIMEOUT, tunnel.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert!(got == data, "bytes changed through two tunnels");

    // The destination saw the client, not the gateway: the inner TLS was never terminated.
    let seen = dest.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].peer.as_deref(),
        Some(pki().client.spiffe_id.as_str())
    );
    assert_eq!(seen[0].authority.as_deref(), Some(authority.as_str()));
    assert_eq!(seen[0].headers["x-forwarded-network"], "west-network");
    assert_eq!(
        dest.connections(),
        vec![Some(pki().client.spiffe_id.clone())]
    );
    hbone_support::eventually("destination tunnel ended", || {
        matches!(dest.seen()[0].end, Some(StreamEnd::Closed { .. }))
    })
    .await;
}
