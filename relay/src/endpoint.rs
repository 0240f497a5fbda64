//! The QUIC endpoint: a UDP socket with large buffers (handshake rates collapse with the
//! default ones) and a transport config that bounds what one connection can buffer.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::{IdleTimeout, TransportConfig, VarInt};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Limits;
use crate::error::RelayError;
use crate::tls::Identity;

/// UDP socket buffers: measured on this kind of machine, handshakes go from ~100/s with
/// the defaults to ~1,250/s with 8 MiB.
const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// A bound UDP socket with large buffers, dual-stack when bound to `[::]`.
pub(crate) fn udp_socket(addr: SocketAddr) -> Result<std::net::UdpSocket, RelayError> {
    let io = |e: std::io::Error| RelayError::Io(format!("UDP socket {addr}: {e}"));
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(io)?;
    if addr.is_ipv6() {
        // Serve IPv4 clients on `[::]` too; failing that is not fatal.
        let _ = socket.set_only_v6(false);
    }
    // The kernel caps these at net.core.{r,w}mem_max; best effort by design.
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into()).map_err(io)?;
    Ok(socket.into())
}

/// quinn's defaults let a connection buffer hundreds of MB; these keep one connection to
/// a few MiB: enough for a 1 MiB avatar frame and steady message flow.
pub(crate) fn transport_config(limits: &Limits) -> Result<TransportConfig, RelayError> {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(limits.max_concurrent_streams));
    // Clients never need to open unidirectional streams (the relay opens the push stream).
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.stream_receive_window(VarInt::from_u32(1536 * 1024));
    t.receive_window(VarInt::from_u32(4 * 1024 * 1024));
    t.send_window(4 * 1024 * 1024);
    t.datagram_receive_buffer_size(Some(64 * 1024));
    t.datagram_send_buffer_size(64 * 1024);
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(letstalk_wire::MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    t.max_idle_timeout(Some(
        IdleTimeout::try_from(limits.idle_timeout)
            .map_err(|e| RelayError::Config(format!("idle timeout: {e}")))?,
    ));
    Ok(t)
}

/// The server endpoint on `addr`, speaking TLS 1.3 with ALPN `letstalk/1` only.
pub(crate) fn server(
    addr: SocketAddr,
    identity: Identity,
    limits: &Limits,
    data_dir: &std::path::Path,
) -> Result<quinn::Endpoint, RelayError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| RelayError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(identity.certs, identity.key)
        .map_err(|e| RelayError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![letstalk_wire::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| RelayError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(limits)?));
    let socket = udp_socket(addr)?;
    let mut endpoint_config = quinn::EndpointConfig::new(reset_key(data_dir)?);
    endpoint_config
        .max_udp_payload_size(letstalk_wire::MAX_UDP_PAYLOAD)
        .map_err(|e| RelayError::Config(format!("UDP payload size: {e}")))?;
    quinn::Endpoint::new(endpoint_config, Some(config), socket, Arc::new(quinn::TokioRuntime))
        .map_err(|e| RelayError::Io(format!("QUIC endpoint {addr}: {e}")))
}

/// The key that derives stateless-reset tokens, kept in the data directory (0600) so it
/// survives a restart: after a crash, a client's next packet on its old connection is
/// answered with a valid stateless reset and it reconnects at once, instead of waiting
/// for its idle timeout.
fn reset_key(data_dir: &std::path::Path) -> Result<Arc<dyn quinn::crypto::HmacKey>, RelayError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("quic-reset-key");
    let io = |e: std::io::Error| RelayError::Io(format!("{}: {e}", path.display()));
    let secret: [u8; 32] = match std::fs::read(&path) {
        Ok(bytes) => bytes
            .try_into()
            .map_err(|_| RelayError::Io(format!("{}: expected 32 bytes", path.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret: [u8; 32] = rand::random();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io)?;
            f.write_all(&secret).map_err(io)?;
            f.sync_all().map_err(io)?;
            secret
        }
        Err(e) => return Err(io(e)),
    };
    Ok(Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret)))
}
