//! The status listener (`--status-listen`) serves only the health paths, so the port a load
//! balancer exposes does not give out the metrics or the route table; and the admin
//! listener's large responses are bounded in number, so concurrent or stalled readers of a
//! large table cannot multiply the gateway's memory.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

#[tokio::test]
async fn the_status_listener_serves_health_and_nothing_else() {
    let gw = gateway_with(&big_endpoints_yaml(2, 1), |c| {
        c.status_listen = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    gw.wait_generation(1).await;
    let status = gw.bound().status_addr.expect("status listener bound");
    assert_ne!(status, gw.admin);
    assert_eq!(
        http_get(status, "/healthz/ready").await,
        (200, "ready\n".into())
    );
    assert_eq!(http_get(status, "/healthz/live").await.0, 200);
    for path in [
        "/metrics",
        "/debug/routes",
        "/debug/routes?host=svc-0.big.local",
        "/",
    ] {
        let (code, body) = http_get(status, path).await;
        assert_eq!(code, 404, "{path}: {body}");
        assert!(body.contains("--admin"), "{path}: {body}");
        assert!(!body.contains("10.0.0."), "{path} gave an endpoint: {body}");
    }
    // The admin listener still serves everything.
    let (code, body) = http_get(gw.admin, "/debug/routes").await;
    assert_eq!(code, 200);
    assert!(body.contains("svc-0.big.local"), "{body}");
    assert_eq!(http_get(gw.admin, "/metrics").await.0, 200);
    assert_eq!(http_get(gw.admin, "/healthz/ready").await.0, 200);
}

#[tokio::test]
async fn without_the_flag_there_is_no_status_listener() {
    let gw = gateway(&big_endpoints_yaml(1, 1)).await;
    assert_eq!(gw.bound().status_addr, None);
}

/// A GET of /debug/routes from a client that reads the status line and then stops reading,
/// with a small receive buffer so that the gateway cannot finish sending.
async fn stalled_reader(admin: std::net::SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(admin).await.unwrap();
    s.write_all(b"GET /debug/routes HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut head))
        .await
        .expect("the response starts")
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    s
}

#[tokio::test]
async fn large_responses_in_flight_are_bounded_and_freed_by_their_readers() {
    // 4,000 services of 4 endpoints: a route table of several MB as JSON, more than the
    // loopback socket buffers of a stalled reader take.
    let gw = gateway(&big_endpoints_yaml(4000, 4)).await;
    gw.wait_generation(1).await;
    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(stalled_reader(gw.admin).await);
    }
    let (code, body) = http_get(gw.admin, "/debug/routes").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("retry"), "{body}");
    let (code, _) = http_get(gw.admin, "/metrics").await;
    assert_eq!(code, 503, "/metrics shares the bound");
    // Health stays answered while the budget is spent.
    assert_eq!(http_get(gw.admin, "/healthz/ready").await.0, 200);
    // The readers go away: their responses end and the budget comes back.
    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, body) = http_get(gw.admin, "/debug/routes?limit=1").await;
        if code == 200 {
            assert!(body.contains("svc-"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {code} after the readers left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
