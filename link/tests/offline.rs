//! The link without a reachable relay: requests fail fast as `relay_unavailable`, the
//! status says so, and bad configuration is refused up front.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use letstalk_link::{ConnState, Kind, Link, LinkConfig, LinkError};

#[tokio::test]
async fn requests_fail_as_relay_unavailable_when_offline() {
    // A port nobody listens on (bound and dropped).
    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut config = LinkConfig::new(format!("127.0.0.1:{port}"), None);
    config.backoff_min = Duration::from_millis(50);
    let (link, _rx) = Link::start(config, None).unwrap();
    let err = link.ping().await.unwrap_err();
    assert_eq!(err.kind(), Kind::RelayUnavailable);
    assert_eq!(err.kind().as_str(), "relay_unavailable");
    let status = link.status().borrow().clone();
    assert_ne!(status.state, ConnState::Connected);
    assert_eq!(status.address, format!("127.0.0.1:{port}"));
    assert!(link.wait_connected(Duration::from_millis(200)).await.is_err());
    // Rebinding to a new socket is accepted (network change).
    link.rebind(std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).unwrap();
    link.shutdown().await;
}

#[tokio::test]
async fn a_missing_certificate_file_is_a_configuration_error() {
    let config = LinkConfig::new("localhost:4433", Some("/nonexistent/relay-cert.pem".into()));
    let err = Link::start(config, None).unwrap_err();
    assert!(matches!(err, LinkError::Config(_)));
    assert_eq!(err.kind(), Kind::Internal);
}
