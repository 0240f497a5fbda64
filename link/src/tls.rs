//! The client's TLS and QUIC configuration: TLS 1.3 with ring, ALPN `letstalk/1`, the
//! relay's certificate (or its CA) from a PEM file as the trust root; the transport
//! settings of each connection (keep-alive, idle timeout, windows) and the endpoint.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::{IdleTimeout, TransportConfig, VarInt};

use crate::LinkError;

/// The TLS side of every connection: TLS 1.3 only, ALPN `letstalk/1`, the relay's
/// certificate (or its CA) as the only trust root.
pub(crate) fn client_config(trusted_cert: Option<&Path>) -> Result<quinn::ClientConfig, LinkError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = trusted_cert {
        add_pem(&mut roots, path)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| LinkError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![letstalk_wire::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| LinkError::Config(e.to_string()))?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}

/// `client` with the transport settings of one new connection: `keepalive`, and an idle
/// timeout of one keep-alive and a margin (the relay's own idle timeout caps it). QUIC
/// sends the keep-alive a full interval after it last heard from the relay, so a node
/// that died without closing the connection is noticed within [`idle_timeout`] of its
/// death, while a keep-alive lost on the way is still retransmitted in time.
pub(crate) fn with_transport(
    client: &quinn::ClientConfig,
    keepalive: Duration,
) -> Result<quinn::ClientConfig, LinkError> {
    let mut t = TransportConfig::default();
    t.keep_alive_interval(Some(keepalive));
    t.max_idle_timeout(Some(
        IdleTimeout::try_from(idle_timeout(keepalive))
            .map_err(|e| LinkError::Config(format!("idle timeout: {e}")))?,
    ));
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(letstalk_wire::MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    // The relay opens one push stream; it opens no request streams towards the device.
    t.max_concurrent_uni_streams(VarInt::from_u32(4));
    t.max_concurrent_bidi_streams(VarInt::from_u32(0));
    // A file download keeps the relay sending while a chunk is written to disk (quinn's
    // default is sized for 12.5 MB/s at 100 ms); memory is taken only while one runs.
    t.stream_receive_window(VarInt::from_u32(STREAM_WINDOW));
    t.initial_rtt(Duration::from_millis(100));
    let mut client = client.clone();
    client.transport_config(Arc::new(t));
    Ok(client)
}

/// The idle timeout for `keepalive`: the interval and a quarter of it, at least 2 s more
/// (several of QUIC's probe timeouts on any usable path).
pub(crate) fn idle_timeout(keepalive: Duration) -> Duration {
    keepalive.saturating_add((keepalive / 4).max(Duration::from_secs(2)))
}

/// Bytes of one stream the relay may send ahead of what was read.
const STREAM_WINDOW: u32 = 8 * 1024 * 1024;

/// The client endpoint on `socket`, carrying datagrams up to the protocol's UDP payload,
/// on a thread of its own if `own_thread` (see `net.rs`).
pub(crate) fn endpoint(
    socket: std::net::UdpSocket,
    own_thread: bool,
) -> Result<quinn::Endpoint, LinkError> {
    let mut config = quinn::EndpointConfig::default();
    config
        .max_udp_payload_size(letstalk_wire::MAX_UDP_PAYLOAD)
        .map_err(|e| LinkError::Config(format!("UDP payload size: {e}")))?;
    quinn::Endpoint::new(config, None, socket, crate::net::runtime(own_thread))
        .map_err(|e| LinkError::Config(format!("UDP socket: {e}")))
}

fn add_pem(roots: &mut rustls::RootCertStore, path: &Path) -> Result<(), LinkError> {
    let pem =
        std::fs::read(path).map_err(|e| LinkError::Config(format!("{}: {e}", path.display())))?;
    let mut n = 0;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| LinkError::Config(format!("{}: {e}", path.display())))?;
        roots.add(cert).map_err(|e| LinkError::Config(format!("{}: {e}", path.display())))?;
        n += 1;
    }
    if n == 0 {
        return Err(LinkError::Config(format!("{}: no certificate", path.display())));
    }
    Ok(())
}
