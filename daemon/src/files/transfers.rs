//! The transfers running now and why one ended: the registry the daemon state holds.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::store::StoreError;

/// Why a transfer did not complete.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("the relay cannot be reached")]
    Unavailable,
    #[error("the relay no longer has this file")]
    Gone,
    #[error("the file does not match its SHA-256: discarded")]
    Corrupt,
    #[error("cancelled")]
    Cancelled,
    /// The relay refused the upload for good: the recipient blocks us.
    #[error("the recipient blocks you")]
    Blocked,
    /// The row's id is not one a local path may be made from (see `localid.rs`).
    #[error("the file's id is not valid")]
    InvalidId,
    #[error("{0}")]
    Io(String),
}

impl TransferError {
    pub(super) fn io(context: &str, e: impl std::fmt::Display) -> Self {
        Self::Io(format!("{context}: {e}"))
    }
}

impl From<StoreError> for TransferError {
    fn from(e: StoreError) -> Self {
        Self::Io(e.to_string())
    }
}

/// One transfer running now.
#[derive(Debug)]
pub(super) struct Active {
    pub(super) cancel: CancellationToken,
    pub(super) outcome: watch::Receiver<Option<Result<(), TransferError>>>,
}

/// The transfers of this daemon: which run, and the worker's wake-up.
#[derive(Debug, Default)]
pub struct Transfers {
    pub(super) wake: Notify,
    pub(super) active: Mutex<BTreeMap<String, Active>>,
    pub(super) root: CancellationToken,
}

impl Transfers {
    /// Transfers stop when `root` is cancelled (daemon shutdown).
    pub fn new(root: CancellationToken) -> Self {
        Self { wake: Notify::new(), active: Mutex::default(), root }
    }

    /// Tells the worker to look at the rows again.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Active>> {
        self.active.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn is_active(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    /// Stops every running transfer and waits (briefly) for each to end.
    pub async fn stop_all(&self) {
        let ids: Vec<String> = self.lock().keys().cloned().collect();
        for id in ids {
            self.stop(&id).await;
        }
    }

    /// Stops a running transfer and waits (briefly) for it to end.
    pub async fn stop(&self, id: &str) {
        let active = self.lock().remove(id);
        if let Some(a) = active {
            a.cancel.cancel();
            let mut rx = a.outcome;
            let _ =
                tokio::time::timeout(Duration::from_secs(5), rx.wait_for(Option::is_some)).await;
        }
    }
}
