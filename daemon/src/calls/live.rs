//! The calls carrying media now: the registry the daemon state holds.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

/// One live call's media on this side.
#[derive(Debug)]
pub(super) struct Live {
    pub(super) route: [u8; 16],
    pub(super) cancel: CancellationToken,
    pub(super) inbound: mpsc::Sender<bytes::Bytes>,
    pub(super) socket: PathBuf,
}

/// The calls of this daemon that carry media now, and the manager's wake-up.
#[derive(Debug, Default)]
pub struct Calls {
    pub(super) live: Mutex<BTreeMap<String, Live>>,
    pub(super) wake: Notify,
    pub(super) root: CancellationToken,
}

impl Calls {
    pub fn new(root: CancellationToken) -> Self {
        Self { live: Mutex::default(), wake: Notify::new(), root }
    }

    /// Tells the manager to look at the calls again (signalling arrived).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Live>> {
        self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
