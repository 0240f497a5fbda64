//! `letstalkd`, the Letstalk daemon on the device: it keeps the encrypted local store and
//! the event log, and serves UIs, the CLI and scripts over a local JSON-RPC socket.
//!
//! [`run`] is the whole daemon: `main.rs` only parses flags, sets up logging and calls it
//! with a shutdown future, so tests and embedders can run it the same way.
//!
//! # Layout
//!
//! The modules form layers without a cycle (see `tests/it/layering.rs`): `methods` call
//! the domain, the domain sends through `outbox`, and nothing imports `inbox` or `sender`.
//! - [`account`]: this device's account, device key, identity key and prekeys.
//! - [`bus`]: where the session and system D-Bus buses are, without running D-Bus code.
//! - [`calls`]: call signalling, the call log, media sockets and datagrams.
//! - [`config`]: flags, environment and config file resolved into a validated `Config`.
//! - [`content`]: what travels inside an end-to-end envelope (messages, receipts).
//! - [`store`]: the SQLCipher database, its key (key file or OS keyring) and its migrations.
//! - [`contacts`]: contact rows, their IPC shape and safety numbers.
//! - [`events`]: the persisted event log and the bus that wakes subscribers.
//! - [`groups`]: group membership, sender keys, group messages in and out.
//! - [`relay`]: the relay operations the methods use (`RelayApi`) and the QUIC link.
//! - [`sender`]: drains the outbox to the relay in order, one copy per device of the
//!   recipient (`Mismatch` handled), against a `Transport`.
//! - [`server`]: the socket, peer checks, line framing, batching, subscriptions.
//! - [`inbox`]: applies what the relay pushes (messages, presence, profiles, logout);
//!   `inbox::receive` opens an envelope and routes its content to the handler of its kind.
//! - [`keys`]: our public keys in the relay directory's shape and back.
//! - [`localid`]: `LocalId`, the only id a local path is built from, and safe file names.
//! - [`messages`]: message rows, their IPC shape and the conversation queries.
//! - [`methods`]: one module per method namespace, turning typed params into results.
//! - [`notify`]: which incoming messages raise a `notification` (not muted ones).
//! - [`netwatch`]: network changes from routing netlink: history, events, link migration.
//! - [`e2e`]: the only code on pairwise sessions (one per peer device): open an envelope,
//!   seal for every device, archive, re-send.
//! - [`outbox`]: every statement on the outbox (and the plaintext kept for retries).
//! - [`texts`]: texts and receipts received.
//! - [`identities`]: the identity key known for each peer.
//! - [`state`]: [`Daemon`], the state every connection and task shares.
//! - [`settings`], [`client`], [`clock`], [`version`]: the settings rows, one IPC
//!   connection, `now_ms`, `VERSION`.
//! - [`suspend`]: logind's resume signal: the relay path probed at once.
//! - [`sync`]: contacts and account settings kept in step between our own devices.
//! - [`trust`]: peers' identity keys: changes shown, a verified contact's new key held.
//! - [`prekeys`]: one-time prekeys topped up, the signed prekey rotated.
//! - [`device`]: hardware, OS, network and the application-specific device ID.
//! - [`diagnostics`]: the history diagnostics reports are made of, and queued feedback.
//! - [`erase`]: deleting for good: withdrawn messages, their events and files, shredded
//!   plaintext, what is owed to the relay (blob releases, a restored device's account).
//! - [`files`]: file encryption, blob uploads and downloads (resuming), automatic
//!   download, cancel.
//! - [`typing`]: typing notifications sent and shown (`settings.typing`).
//! - [`validate`]: the input rules of the spec (user IDs, emails, passwords, avatars).
//! - [`systemd`]: readiness, watchdog and socket activation, no-ops without systemd.

pub mod account;
pub mod bus;
pub mod calls;
pub mod client;
pub mod clock;
pub mod config;
pub mod contacts;
pub mod content;
pub mod device;
pub mod diagnostics;
pub mod e2e;
pub mod erase;
pub mod events;
pub mod files;
pub mod groups;
pub mod identities;
pub mod inbox;
pub mod keys;
pub mod linking;
pub mod localid;
pub mod messages;
pub mod methods;
pub mod netwatch;
pub mod notify;
pub mod outbox;
pub mod prekeys;
pub mod relay;
pub mod sender;
pub mod server;
pub mod settings;
pub mod state;
pub mod store;
pub mod suspend;
pub mod sync;
pub mod systemd;
pub mod texts;
pub mod trust;
pub mod typing;
pub mod validate;
pub mod version;

pub use clock::now_ms;
pub use state::Daemon;
pub use version::VERSION;

use std::fs::File;
use std::future::Future;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::events::EventBus;
use crate::store::Store;

/// How long a stop may take before the rest is abandoned (the contract says 5 s).
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Why the daemon could not start. All of these end the process with exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("another letstalkd is already using data directory {0}")]
    Locked(PathBuf),
    #[error("cannot lock data directory {path}: {source}")]
    Lock { path: PathBuf, source: std::io::Error },
    #[error("cannot open the store in {path}: {source}")]
    Store { path: PathBuf, source: store::StoreError },
    #[error(transparent)]
    Socket(#[from] server::BindError),
    #[error("relay link: {0}")]
    Relay(#[from] relay::link::LinkError),
}

/// Things the running daemon tells its caller.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The socket path, when the daemon bound one itself.
    pub socket: Option<PathBuf>,
}

/// Runs the daemon until `shutdown` resolves. `on_ready` is called once the socket
/// accepts connections.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(Ready),
) -> Result<(), StartError> {
    let data_dir = config.data_dir.clone();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&data_dir)
        .map_err(|source| StartError::DataDir { path: data_dir.clone(), source })?;
    let _lock = lock_data_dir(&data_dir)?;

    // The key comes first (from the key file, or over D-Bus from the OS keyring; see
    // store::key) and is zeroized as soon as SQLCipher has it.
    let (key, location) = store::key::load_or_create(&data_dir, config.keyring)
        .await
        .map_err(|source| StartError::Store { path: data_dir.clone(), source })?;
    let store = Store::open_with_key(&data_dir, &key)
        .map_err(|source| StartError::Store { path: data_dir.clone(), source })?;
    drop(key);
    tracing::debug!(key = ?location, "database key found");
    let store = Arc::new(store);
    let (last_seq, _) = store
        .with(|c| events::bounds(c))
        .map_err(|source| StartError::Store { path: data_dir.clone(), source })?;
    let user = store
        .with(|c| Ok(account::Account::load(c)?.filter(|a| a.logged_in).map(|a| a.user_id)))
        .map_err(|source| StartError::Store { path: data_dir.clone(), source })?;

    let (listener, socket_path) = server::bind(&config.socket)?;
    let credentials = store
        .with(|c| Ok(account::Account::load(c)?.filter(|a| a.logged_in)))
        .map_err(|source| StartError::Store { path: data_dir.clone(), source })?
        .map(|a| relay::Credentials {
            user_id: a.user_id.clone(),
            device_seed: a.device_key.clone(),
        });
    let (push_tx, mut push_rx) = tokio::sync::mpsc::unbounded_channel();
    let link = if config.relays.is_empty() {
        None
    } else {
        let keepalive = store
            .with(|c| settings::Settings::load(c))
            .map(|s| s.keepalive_for(device::network().kind))
            .unwrap_or(Duration::from_secs(20));
        Some(relay::link::LinkRelay::start(
            &config.relays,
            config.relay_cert.as_deref(),
            keepalive,
            credentials,
        )?)
    };
    let seed = store
        .with(|c| device::install_seed(c))
        .map_err(|source| StartError::Store { path: data_dir.clone(), source })?;
    // What a group of sends queued is encrypted in the transaction that accepts it; a
    // recipient whose new identity key waits for the user's acceptance gets nothing (the
    // sender holds its rows, and seals them under the session the user accepts).
    let seal: store::Finish = Box::new(|tx, recipient| {
        if trust::is_untrusted(tx, recipient)? {
            return Ok(());
        }
        e2e::seal_queued(tx, recipient, e2e::SEAL_MAX, &mut rand_core::OsRng, now_ms()).map(drop)
    });
    let (writes, group_task) = store::GroupCommit::start(store.clone(), seal);
    let cancel = CancellationToken::new();
    let daemon = Arc::new(Daemon {
        writes,
        device_id: Mutex::new(device::device_id(&seed)),
        config,
        store: store.clone(),
        bus: EventBus::new(last_seq),
        started: Instant::now(),
        frontends: Mutex::default(),
        network: Mutex::default(),
        user: Mutex::new(user),
        queued: Mutex::default(),
        relay: link.clone().map(|l| l as Arc<dyn relay::RelayApi>),
        sender_wake: tokio::sync::Notify::new(),
        prekey_wake: tokio::sync::Notify::new(),
        outbox_gate: tokio::sync::Mutex::new(()),
        transfers: files::Transfers::new(cancel.child_token()),
        calls: calls::Calls::new(cancel.child_token()),
        erasure: tokio::sync::Notify::new(),
        typing: Mutex::default(),
        last_preview: Mutex::default(),
        linking: state::Linking::new(cancel.child_token()),
    });

    let tasks = TaskTracker::new();
    tasks.spawn(server::accept_loop(daemon.clone(), listener, cancel.clone(), tasks.clone()));
    tasks.spawn(maintenance(daemon.clone(), cancel.clone()));
    let on_change = link.clone().map(|l| l as Arc<dyn netwatch::OnChange>);
    if let Some(link) = on_change.clone() {
        tasks.spawn(suspend::run(link, cancel.clone()));
    }
    tasks.spawn(netwatch::run(daemon.clone(), on_change, cancel.clone()));
    // Ends when the last handle (the daemon's) is dropped, after every caller is answered.
    tokio::spawn(group_task);
    if let (Some(link), Some(api)) = (link, daemon.relay.clone()) {
        tasks.spawn(link.run(push_tx, cancel.clone()));
        let (d, c) = (daemon.clone(), cancel.clone());
        let inbox_api = api.clone();
        let (acks, ack_task) = inbox::Acks::start(api.clone(), cancel.clone());
        tasks.spawn(ack_task);
        tasks.spawn(async move {
            let mut pending: Option<relay::Pushed> = None;
            loop {
                let push = match pending.take() {
                    Some(p) => p,
                    None => tokio::select! {
                        () = c.cancelled() => return,
                        p = push_rx.recv() => match p { Some(p) => p, None => return },
                    },
                };
                // Messages that arrived together are stored together (one disk sync).
                if let relay::Pushed::Message { delivery_id, from, from_device, msg_id, body } =
                    push
                {
                    let first = inbox::Incoming { delivery_id, from, from_device, msg_id, body };
                    let mut batch = vec![first];
                    while batch.len() < 64 {
                        match push_rx.try_recv() {
                            Ok(relay::Pushed::Message {
                                delivery_id,
                                from,
                                from_device,
                                msg_id,
                                body,
                            }) => {
                                batch.push(inbox::Incoming {
                                    delivery_id,
                                    from,
                                    from_device,
                                    msg_id,
                                    body,
                                });
                            }
                            Ok(other) => {
                                pending = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    inbox::apply_messages(&d, &acks, batch).await;
                } else {
                    inbox::apply(&d, &inbox_api, &acks, push).await;
                }
            }
        });
        tasks.spawn(files::run(daemon.clone(), api.clone(), cancel.clone()));
        tasks.spawn(calls::run(daemon.clone(), api.clone(), cancel.clone()));
        tasks.spawn(prekeys::run(daemon.clone(), api.clone(), cancel.clone()));
        tasks.spawn(erase::run(daemon.clone(), api.clone(), cancel.clone()));
        tasks.spawn(sender::run(
            daemon.clone(),
            Arc::new(sender::RelayTransport::new(api)),
            cancel.clone(),
        ));
    }
    if let Some(interval) = systemd::watchdog_interval() {
        tasks.spawn(watchdog(interval, cancel.clone()));
    }

    tracing::info!(socket = ?socket_path, data_dir = %data_dir.display(), "letstalkd ready");
    systemd::ready();
    on_ready(Ready { socket: socket_path.clone() });

    shutdown.await;
    tracing::info!("stopping");
    systemd::stopping();
    cancel.cancel();
    tasks.close();
    if tokio::time::timeout(STOP_GRACE, tasks.wait()).await.is_err() {
        tracing::warn!("some tasks did not finish in time");
    }
    if let Some(path) = socket_path {
        let _ = std::fs::remove_file(path);
    }
    if let Err(e) = store.close() {
        tracing::warn!(error = %e, "closing the store");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Takes the data directory's lock file, so a second daemon never touches this one's data.
fn lock_data_dir(dir: &std::path::Path) -> Result<File, StartError> {
    let path = dir.join("letstalkd.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StartError::Lock { path: path.clone(), source })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StartError::Locked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(source)) => Err(StartError::Lock { path, source }),
    }
}

/// Periodic housekeeping: event log pruning, kept plaintext past its retry window.
async fn maintenance(daemon: Arc<Daemon>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        match daemon.store.call(move |c| events::prune(c, now)).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "pruned old events"),
            Err(e) => tracing::warn!(error = %e, "pruning events"),
        }
        if let Err(e) = daemon.store.call(move |c| outbox::prune_resend(c, now)).await {
            tracing::warn!(error = %e, "pruning kept plaintext");
        }
    }
}

/// Pets the watchdog now and every `interval`, each time with one wake-up of one worker
/// (a `timerfd`, not tokio's timer wheel: a phone's idle daemon wakes for little else).
async fn watchdog(interval: Duration, cancel: CancellationToken) {
    loop {
        systemd::watchdog();
        tokio::select! {
            () = cancel.cancelled() => return,
            () = letstalk_link::sleep_until(Instant::now() + interval) => {}
        }
    }
}
