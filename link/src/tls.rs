//! The client's TLS and QUIC configuration: TLS 1.3 with ring, ALPN `letstalk/1`, the
//! relay's certificate (or its CA) from a PEM file as the trust root.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::{IdleTimeout, TransportConfig, VarInt};

use crate::{LinkConfig, LinkError};

pub(crate) fn client_config(config: &LinkConfig) -> Result<quinn::ClientConfig, LinkError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = &config.trusted_cert {
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
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let mut t = TransportConfig::default();
    t.keep_alive_interval(Some(config.keepalive));
    t.max_idle_timeout(Some(
        IdleTimeout::try_from(config.idle_timeout)
            .map_err(|e| LinkError::Config(format!("idle timeout: {e}")))?,
    ));
    // The relay opens one push stream; the link opens no more than a handful at once.
    t.max_concurrent_uni_streams(VarInt::from_u32(4));
    t.max_concurrent_bidi_streams(VarInt::from_u32(0));
    t.stream_receive_window(VarInt::from_u32(1536 * 1024));
    t.receive_window(VarInt::from_u32(4 * 1024 * 1024));
    t.initial_rtt(Duration::from_millis(100));
    client.transport_config(Arc::new(t));
    Ok(client)
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
