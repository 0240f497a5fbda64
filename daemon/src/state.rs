//! [`Daemon`], the state shared by every connection and task: the store, the event bus,
//! the relay (when one is configured) and the registries of running transfers and calls.
//! Built by the composition root (`lib.rs`); the modules that run tasks take it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::calls::live::Calls;
use crate::config::Config;
use crate::events::EventBus;
use crate::files::transfers::Transfers;
use crate::store::{self, Store};
use crate::{device, outbox, relay, settings};

/// State shared by every connection and task.
#[derive(Debug)]
pub struct Daemon {
    pub config: Config,
    pub store: Arc<Store>,
    pub bus: EventBus,
    pub started: Instant,
    /// The application-specific device ID (new after "restore defaults").
    pub(crate) device_id: Mutex<String>,
    /// Frontends that introduced themselves with `system.hello`, by connection.
    pub frontends: Mutex<BTreeMap<u64, letstalk_ipc::types::Frontend>>,
    pub(crate) network: Mutex<Option<(Instant, letstalk_ipc::types::Network)>>,
    pub(crate) queued: Mutex<Option<(Instant, u64)>>,
    /// The relay, when one is configured.
    pub relay: Option<Arc<dyn relay::RelayApi>>,
    /// The logged-in user, cached from the `account` table.
    pub(crate) user: Mutex<Option<String>>,
    /// Group-committed writes (`messages.send`).
    pub writes: store::GroupCommit,
    /// Wakes the sender task when the outbox got something.
    pub(crate) sender_wake: tokio::sync::Notify,
    /// Wakes the prekey upkeep (every relay connection).
    pub(crate) prekey_wake: tokio::sync::Notify,
    /// Held by the sender from reading outbox rows until the relay's answer is recorded,
    /// and by "clear chat history" while it withdraws rows: a withdrawn message can never
    /// be half-way out.
    pub(crate) outbox_gate: tokio::sync::Mutex<()>,
    /// File transfers running now, and the wake-up of their worker.
    pub transfers: Transfers,
    /// Calls carrying media now, and the wake-up of their manager.
    pub calls: Calls,
    /// Wakes the task that pays what deletions owe the relay (`erase::run`).
    pub erasure: tokio::sync::Notify,
    /// When this device last told each conversation it is typing (`messages.typing`).
    pub typing: Mutex<BTreeMap<String, Instant>>,
    /// The last `diagnostics.preview`, as the bytes `diagnostics.upload` sends.
    pub last_preview: Mutex<Option<(Instant, Vec<u8>)>>,
    /// The wait for a device to use this device's link code (`devices.link_start`), a
    /// child of the daemon's shutdown; a new code ends the previous wait.
    pub(crate) linking: Linking,
}

/// The one link code a device has open at a time.
#[derive(Debug)]
pub struct Linking {
    root: tokio_util::sync::CancellationToken,
    current: Mutex<Option<tokio_util::sync::CancellationToken>>,
}

impl Linking {
    pub fn new(root: tokio_util::sync::CancellationToken) -> Self {
        Self { root, current: Mutex::default() }
    }
}

impl Daemon {
    /// Ends the wait for the previous link code, if any, and returns the token of the
    /// new one's.
    pub(crate) fn start_linking(&self) -> tokio_util::sync::CancellationToken {
        let token = self.linking.root.child_token();
        let previous = self
            .linking
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .replace(token.clone());
        if let Some(previous) = previous {
            previous.cancel();
        }
        token
    }

    /// The logged-in user, if any.
    pub fn user(&self) -> Option<String> {
        self.user.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// The application-specific device ID.
    pub fn device_id(&self) -> String {
        self.device_id.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Derives the device ID again from the database's seed (after the store was reset).
    pub async fn refresh_device_id(&self) -> Result<(), store::StoreError> {
        let seed = self.store.call(|c| device::install_seed(c)).await?;
        *self.device_id.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            device::device_id(&seed);
        Ok(())
    }

    pub fn set_user(&self, user: Option<String>) {
        *self.user.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = user;
    }

    /// Gives the relay link the keep-alive interval for the current network type.
    pub async fn apply_keepalive(&self) {
        let Some(relay) = &self.relay else { return };
        let kind = self.network().kind;
        match self.store.call(|c| settings::Settings::load(c)).await {
            Ok(s) => relay.set_keepalive(s.keepalive_for(kind)),
            Err(e) => tracing::warn!(error = %e, "reading the keep-alive settings"),
        }
    }

    /// Drops cached figures (after the store was reset).
    pub fn forget_caches(&self) {
        *self.queued.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        *self.last_preview.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        self.typing.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    }

    /// Outgoing messages not yet accepted by the relay, for `system.status`. A UI polls
    /// this; a count up to 100 ms old is good enough and keeps concurrent status calls
    /// off the database.
    pub async fn queued_out(&self) -> Result<u64, store::StoreError> {
        {
            let cached = self.queued.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((at, n)) = *cached
                && at.elapsed() < Duration::from_millis(100)
            {
                return Ok(n);
            }
        }
        let n = match self.store.try_with(|c| outbox::queued_count(c)) {
            Some(r) => r?,
            None => self.store.call(|c| outbox::queued_count(c)).await?,
        };
        *self.queued.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((Instant::now(), n));
        Ok(n)
    }

    /// Tells the sender task to look at the outbox.
    pub fn wake_sender(&self) {
        self.sender_wake.notify_one();
    }

    /// The current network, re-read at most once a second (reading sysfs on every
    /// `system.status` would put file I/O on the hottest IPC path).
    /// Replaces the cached network (the watcher read it just now).
    pub fn set_network(&self, network: letstalk_ipc::types::Network) {
        *self.network.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some((Instant::now(), network));
    }

    pub fn network(&self) -> letstalk_ipc::types::Network {
        let mut cached = self.network.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &*cached {
            Some((at, net)) if at.elapsed() < Duration::from_secs(1) => net.clone(),
            _ => {
                let net = device::network();
                *cached = Some((Instant::now(), net.clone()));
                net
            }
        }
    }
}

#[cfg(test)]
impl Daemon {
    /// A daemon on `store` with no relay, socket or background task but its group
    /// commit: what the sender's tests drive through a fake `Transport`.
    pub(crate) fn for_tests(store: Arc<Store>) -> Arc<Self> {
        let user =
            store.with(|c| Ok(crate::account::Account::load(c)?.map(|a| a.user_id))).ok().flatten();
        let (writes, task) = store::GroupCommit::start(store.clone(), Box::new(|_, _| Ok(())));
        tokio::spawn(task);
        let root = tokio_util::sync::CancellationToken::new();
        Arc::new(Self {
            config: Config {
                config_file: None,
                data_dir: std::path::PathBuf::new(),
                socket: crate::config::SocketSource::Activated,
                relays: Vec::new(),
                relay_cert: None,
                log: String::new(),
                keyring: crate::config::Keyring::Off,
                ring_timeout: Duration::from_secs(30),
            },
            store,
            bus: EventBus::new(0),
            started: Instant::now(),
            device_id: Mutex::default(),
            frontends: Mutex::default(),
            network: Mutex::default(),
            queued: Mutex::default(),
            relay: None,
            user: Mutex::new(user),
            writes,
            sender_wake: tokio::sync::Notify::new(),
            prekey_wake: tokio::sync::Notify::new(),
            outbox_gate: tokio::sync::Mutex::new(()),
            transfers: Transfers::new(root.child_token()),
            calls: Calls::new(root.child_token()),
            erasure: tokio::sync::Notify::new(),
            typing: Mutex::default(),
            last_preview: Mutex::default(),
            linking: Linking::new(root.child_token()),
        })
    }
}
