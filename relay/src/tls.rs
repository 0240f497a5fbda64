//! The relay's TLS identity: operator-provided PEM files, or a self-signed certificate
//! generated once into the data directory and reused on restart.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{Config, TlsSource, host_name};
use crate::error::RelayError;

/// File name of the generated certificate.
pub const CERT_FILE: &str = "relay-cert.pem";
/// File name of the generated key.
pub const KEY_FILE: &str = "relay-key.pem";

/// A loaded identity.
#[derive(Debug)]
pub(crate) struct Identity {
    /// Certificate chain, leaf first.
    pub(crate) certs: Vec<CertificateDer<'static>>,
    /// The private key.
    pub(crate) key: PrivateKeyDer<'static>,
    /// Path of the certificate file (the one daemons trust).
    pub(crate) cert_path: PathBuf,
}

/// Loads or generates the identity for `config`.
pub(crate) fn load(config: &Config) -> Result<Identity, RelayError> {
    match &config.tls {
        TlsSource::Files { cert, key } => read_pair(cert, key),
        TlsSource::SelfSigned => {
            let cert = config.data_dir.join(CERT_FILE);
            let key = config.data_dir.join(KEY_FILE);
            if cert.exists() && key.exists() {
                return read_pair(&cert, &key);
            }
            let mut names =
                vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned(), host_name()];
            let ip = config.listen.ip();
            if !ip.is_unspecified() {
                names.push(ip.to_string());
            }
            names.dedup();
            let generated = rcgen::generate_simple_self_signed(names)
                .map_err(|e| RelayError::Tls(format!("generating a certificate: {e}")))?;
            write_private(&key, generated.signing_key.serialize_pem().as_bytes())?;
            write_private(&cert, generated.cert.pem().as_bytes())?;
            read_pair(&cert, &key)
        }
    }
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), RelayError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| RelayError::Io(format!("{}: {e}", path.display())))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(|e| RelayError::Io(format!("{}: {e}", path.display())))
}

fn read_pair(cert: &Path, key: &Path) -> Result<Identity, RelayError> {
    let cert_pem =
        fs::read(cert).map_err(|e| RelayError::Tls(format!("{}: {e}", cert.display())))?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| RelayError::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(RelayError::Tls(format!("{}: no certificate", cert.display())));
    }
    let key_pem = fs::read(key).map_err(|e| RelayError::Tls(format!("{}: {e}", key.display())))?;
    let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| RelayError::Tls(format!("{}: {e}", key.display())))?
        .ok_or_else(|| RelayError::Tls(format!("{}: no private key", key.display())))?;
    Ok(Identity { certs, key: key_der, cert_path: cert.to_path_buf() })
}
