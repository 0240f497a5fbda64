//! The OS keyring on Linux: a freedesktop Secret Service (`org.freedesktop.secrets` on
//! the session D-Bus: gnome-keyring, KWallet, KeePassXC…), through the `secret-service`
//! crate on zbus and tokio.
//!
//! Each operation connects, does its work and drops the connection, all within
//! [`TIMEOUT`]: the daemon calls these only at start (and to destroy a key), so nothing
//! D-Bus stays in memory while it is idle. The session is the Secret Service's
//! Diffie-Hellman one: the key crosses the bus encrypted, and the one plaintext copy we
//! receive is zeroized. The daemon never answers an unlock prompt (it has no window): a
//! locked collection is reported, not unlocked.
//!
//! An item is found by two attributes, `application = "letstalk"` and a random
//! `letstalk-key-id`; a third, `data-dir`, names the data directory it was made for, so
//! `secret-tool search application letstalk` shows people which key is which.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use secret_service::{EncryptionType, SecretService};
use zeroize::Zeroizing;

/// How long one keyring operation may take, connection and D-Bus activation of the
/// service included, before the start gives up on it.
pub(super) const TIMEOUT: Duration = Duration::from_secs(10);

/// The `application` attribute of our items.
pub(super) const APPLICATION: &str = "letstalk";

/// Why the keyring could not do what was asked. Each message reads after "but " (see
/// `StoreError::Keyring`) and is one line.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    #[error(
        "no Secret Service is reachable on the session D-Bus ({0}); start letstalkd in the session that holds that keyring"
    )]
    Unreachable(String),
    #[error("the Secret Service did not answer within {} s", TIMEOUT.as_secs())]
    Timeout,
    #[error("the keyring collection holding it is locked; unlock it and start again")]
    Locked,
    #[error("the Secret Service has no default collection")]
    NoDefaultCollection,
    #[error("the Secret Service's default collection is locked")]
    DefaultLocked,
    #[error("the keyring no longer holds it (the item was deleted): the data cannot be read")]
    NotFound,
    #[error("the keyring item does not hold a database key (expected 64 hex digits)")]
    Malformed,
    #[error("the Secret Service failed: {0}")]
    Failed(String),
}

/// Reads the secret of the item with `id`.
pub(super) async fn load(id: &str) -> Result<Zeroizing<Vec<u8>>, KeyringError> {
    bounded(async {
        let ss = connect().await?;
        let found = ss.search_items(attributes(id)).await.map_err(failed)?;
        let Some(item) = found.unlocked.first() else {
            return Err(if found.locked.is_empty() {
                KeyringError::NotFound
            } else {
                KeyringError::Locked
            });
        };
        Ok(Zeroizing::new(item.get_secret().await.map_err(failed)?))
    })
    .await
}

/// Stores `secret` as a new item with `id` in the default collection, which must exist
/// and be unlocked already.
pub(super) async fn store(id: &str, data_dir: &Path, secret: &[u8]) -> Result<(), KeyringError> {
    bounded(async {
        let ss = connect().await?;
        let collection = match ss.get_default_collection().await {
            Ok(c) => c,
            Err(secret_service::Error::NoResult) => return Err(KeyringError::NoDefaultCollection),
            Err(e) => return Err(failed(e)),
        };
        if collection.is_locked().await.map_err(failed)? {
            return Err(KeyringError::DefaultLocked);
        }
        let dir = data_dir.to_string_lossy();
        let mut attrs = attributes(id);
        attrs.insert("data-dir", &dir);
        let label = format!("Letstalk database key ({dir})");
        collection.create_item(&label, attrs, secret, true, "text/plain").await.map_err(failed)?;
        Ok(())
    })
    .await
}

/// Deletes the item with `id`; one that does not exist is already deleted.
pub(super) async fn delete(id: &str) -> Result<(), KeyringError> {
    bounded(async {
        let ss = connect().await?;
        let found = ss.search_items(attributes(id)).await.map_err(failed)?;
        if !found.locked.is_empty() {
            return Err(KeyringError::Locked);
        }
        for item in &found.unlocked {
            item.delete().await.map_err(failed)?;
        }
        Ok(())
    })
    .await
}

fn attributes(id: &str) -> HashMap<&str, &str> {
    HashMap::from([("application", APPLICATION), ("letstalk-key-id", id)])
}

async fn connect() -> Result<SecretService<'static>, KeyringError> {
    SecretService::connect(EncryptionType::Dh)
        .await
        .map_err(|e| KeyringError::Unreachable(one_line(&e)))
}

async fn bounded<T>(op: impl Future<Output = Result<T, KeyringError>>) -> Result<T, KeyringError> {
    tokio::time::timeout(TIMEOUT, op).await.map_err(|_| KeyringError::Timeout)?
}

fn failed(e: secret_service::Error) -> KeyringError {
    match e {
        secret_service::Error::Locked => KeyringError::Locked,
        e => KeyringError::Failed(one_line(&e)),
    }
}

/// Errors from D-Bus may carry a service's multi-line text; start errors are one line.
fn one_line(e: &dyn std::fmt::Display) -> String {
    e.to_string().split_whitespace().collect::<Vec<_>>().join(" ")
}
