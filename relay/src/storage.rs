//! The storage trait: everything the relay keeps, behind one interface so that the
//! embedded SQLite back end ([`SqliteStorage`](sqlite::SqliteStorage)) and the cluster back end
//! ([`NatsStorage`](nats::NatsStorage), NATS JetStream: key-value buckets for accounts and prekeys, one
//! stream subject per device for mailboxes, the object store for avatars and blobs) are
//! interchangeable.
//!
//! The trait is async: a cluster back end does network I/O, and the embedded one runs
//! each call on tokio's blocking pool so SQLite never stalls the reactor (message
//! writes on its writer thread, which group-commits concurrent ones). Operations are
//! shaped for that future: each is one atomic step (take a prekey, enqueue with dedupe
//! and quota, delete acknowledged), never a transaction spanning calls.
//!
//! The value types are the plain structs from `letstalk-wire` where they match exactly
//! (profile, prekey, bundle): they carry no serde and no I/O.

pub mod nats;
pub mod sqlite;

use std::future::Future;
use std::time::Duration;

use letstalk_wire::{
    Avatar, AvatarUpdate, Bundle, DeviceInfo, LinkSlot, PreKey, PresenceInfo, Profile,
};

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The user id is taken.
    #[error("user id taken")]
    Conflict,
    /// No such account.
    #[error("no such account")]
    NotFound,
    /// The recipient's mailbox is full.
    #[error("mailbox full")]
    QuotaExceeded,
    /// The recipient blocks the sender, or blocks everyone.
    #[error("blocked")]
    Blocked,
    /// The copies of a message do not name exactly the recipient's target devices:
    /// `missing` have no copy, `extra` are not (or no longer) devices of it, or are named
    /// twice. Nothing was stored.
    #[error("copies do not match the recipient's devices")]
    Mismatch { missing: Vec<u32>, extra: Vec<u32> },
    /// The back end failed.
    #[error("storage: {0}")]
    Backend(String),
}

impl From<rusqlite::Error> for StorageError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Backend(e.to_string())
    }
}

/// A new account.
#[derive(Debug, Clone)]
pub struct NewAccount {
    /// Lowercased and validated.
    pub user_id: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Contact email.
    pub email: String,
    /// Display name.
    pub nickname: String,
    /// The registering device's Ed25519 key: device 1 of the account.
    pub device_key: [u8; 32],
    /// Opaque identity-key bytes (may be empty until uploaded).
    pub identity: Vec<u8>,
    /// Creation time, ms.
    pub now: u64,
}

/// What a password login needs to know about an account.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// Argon2id PHC string.
    pub password_hash: String,
}

/// The outcome of a password login: the account moved to the logging-in device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedIn {
    /// The logging-in device's id: its old one if its key already was a device of the
    /// account, else a fresh one.
    pub device_id: u32,
    /// Every other device of the account, removed with its mailbox and prekeys.
    pub removed: Vec<u32>,
}

/// Which devices' bundles [`Storage::take_bundles`] takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundlesOf {
    /// Every device of the account.
    All,
    /// These (ids that are not devices of the account are left out).
    Devices(Vec<u32>),
    /// The lowest-numbered device only (the legacy `FetchBundle`).
    Lowest,
}

/// A link rendezvous being opened ([`Storage::link_open`]).
#[derive(Debug, Clone)]
pub struct NewLinkSlot {
    /// The slot's name (derived from the link code by the devices).
    pub slot: [u8; 16],
    /// The opening account.
    pub user_id: String,
    /// The opening device's first message.
    pub hello: Vec<u8>,
    /// When it opens, ms.
    pub now: u64,
    /// When it ends, ms.
    pub expires_at: u64,
}

/// Keys a device uploads; `None` keeps what is stored.
#[derive(Debug, Clone, Default)]
pub struct KeyUpload {
    /// Opaque identity-key bytes: the account's, whichever device uploads them.
    pub identity: Option<Vec<u8>>,
    /// The signed prekey (replaces the old one).
    pub signed_prekey: Option<PreKey>,
    /// One-time prekeys to add (an id already present is replaced).
    pub one_time: Vec<PreKey>,
    /// The last-resort key (replaces the old one).
    pub last_resort: Option<PreKey>,
}

/// A profile change; `None` keeps a field.
#[derive(Debug, Clone)]
pub struct ProfileUpdate {
    /// New nickname.
    pub nickname: Option<String>,
    /// New email.
    pub email: Option<String>,
    /// Avatar change, with its SHA-256 computed by the caller.
    pub avatar: AvatarUpdate,
    /// Time of the change, ms.
    pub now: u64,
}

/// A message handed to the relay.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// The sending account.
    pub sender: String,
    /// The sending device.
    pub sender_device: u32,
    /// The receiving account.
    pub recipient: String,
    /// The sender's idempotency key.
    pub msg_id: String,
    /// What goes to which of the recipient's devices.
    pub copies: Copies,
    /// Acceptance time, ms.
    pub now: u64,
}

/// The copies of one message for the recipient's *target devices*: every device of the
/// recipient account, but the sending device when the recipient is the sender's own
/// account. The target set is read in the transaction that stores the copies, so it is
/// exact at that moment.
#[derive(Debug, Clone)]
pub enum Copies {
    /// One ciphertext per device (`SendCopies`): they must name exactly the target
    /// devices, each once, else [`StorageError::Mismatch`] and nothing is stored.
    Exact(Vec<(u32, bytes::Bytes)>),
    /// One ciphertext for an account with one target device (`Send`, `SendBatch`, from a
    /// sender that knows no devices): with several, [`StorageError::Mismatch`] naming
    /// them all as missing; with none, a mismatch naming none.
    Single(bytes::Bytes),
    /// The same ciphertext to every target device (`SendGroup`'s sender-key message).
    /// Shared, not copied, between the copies of a fan-out.
    Every(bytes::Bytes),
}

impl Copies {
    /// The bytes of one copy of each ciphertext (for batching limits).
    pub fn body_len(&self) -> usize {
        match self {
            Self::Exact(c) => c.iter().map(|(_, b)| b.len()).sum(),
            Self::Single(b) | Self::Every(b) => b.len(),
        }
    }

    /// The copies for `targets` (the recipient's target devices, ascending), or the
    /// mismatch.
    pub fn resolve(self, targets: &[u32]) -> Result<Vec<(u32, bytes::Bytes)>, StorageError> {
        match self {
            Self::Exact(copies) => {
                let mut named = std::collections::BTreeSet::new();
                let mut extra = std::collections::BTreeSet::new();
                for (d, _) in &copies {
                    if !named.insert(*d) || !targets.contains(d) {
                        extra.insert(*d);
                    }
                }
                let missing: Vec<u32> =
                    targets.iter().copied().filter(|t| !named.contains(t)).collect();
                if missing.is_empty() && extra.is_empty() {
                    Ok(copies)
                } else {
                    Err(StorageError::Mismatch { missing, extra: extra.into_iter().collect() })
                }
            }
            // With no target device a single copy has nowhere to go; a mismatch naming
            // none says so (a legacy sender retries, and reaches the next device linked),
            // where `Sent` would drop the message unseen.
            Self::Single(body) => match targets {
                [one] => Ok(vec![(*one, body)]),
                several => {
                    Err(StorageError::Mismatch { missing: several.to_vec(), extra: Vec::new() })
                }
            },
            Self::Every(body) => Ok(targets.iter().map(|&t| (t, body.clone())).collect()),
        }
    }
}

/// The target devices of a message from `sender`'s `sender_device` among `recipient`'s
/// `devices` (ascending): all of them, but the sending device itself when the recipient
/// is the sender's own account.
pub fn target_devices(
    sender: &str,
    sender_device: u32,
    recipient: &str,
    devices: impl IntoIterator<Item = u32>,
) -> Vec<u32> {
    devices.into_iter().filter(|&d| sender != recipient || d != sender_device).collect()
}

/// How long a retransmit (same sender, recipient and msg id) is recognised and answered
/// `duplicate` instead of stored again: a sender retries within seconds to minutes; an
/// older retransmit is stored again and the recipient's daemon recognises its message id.
/// The cluster's stream keeps its ids as long, in the server's memory.
pub const DEDUPE_WINDOW: Duration = Duration::from_secs(3600);

/// The de-duplication key of a message: a hash of (sender, recipient, msg id), so the
/// dedupe records name no user.
pub fn dedupe_id(sender: &str, recipient: &str, msg_id: &str) -> [u8; 16] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for part in [sender, recipient, msg_id] {
        h.update(u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        h.update(part.as_bytes());
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize()[..16]);
    out
}

/// Per-mailbox limits (a mailbox is one device's). The quota is shared fairly: one sender may fill at most
/// [`Quota::sender_share`] of it, and all senders the recipient has not added as
/// contacts together at most [`Quota::stranger_share`], so a stranger (or a crowd of
/// them) can never fill the mailbox against the recipient's contacts. A sender is an
/// account (its devices share its share); the account's own other devices count as a
/// contact.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    /// Most queued messages per recipient device.
    pub max_messages: u64,
    /// Most queued bytes per recipient device.
    pub max_bytes: u64,
}

impl Quota {
    /// The part (messages, bytes) any one sender may fill: a quarter.
    pub fn sender_share(&self) -> (u64, u64) {
        (self.max_messages.div_ceil(4), self.max_bytes.div_ceil(4))
    }

    /// The part (messages, bytes) all non-contacts together may fill: a quarter, so
    /// three quarters always stay for the recipient's contacts.
    pub fn stranger_share(&self) -> (u64, u64) {
        self.sender_share()
    }
}

/// The outcome of an enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    /// When the relay first accepted the message, ms.
    pub server_ts: u64,
    /// True when this (sender, recipient, msg id) had been accepted before.
    pub duplicate: bool,
}

/// A queued message.
#[derive(Debug, Clone)]
pub struct Queued {
    /// Never reused; the recipient acknowledges by it.
    pub delivery_id: u64,
    /// The sending account.
    pub sender: String,
    /// The sending device.
    pub sender_device: u32,
    /// The sender's id for it.
    pub msg_id: String,
    /// When accepted, ms.
    pub server_ts: u64,
    /// Opaque ciphertext.
    pub body: Vec<u8>,
}

/// Whom an account blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Blocks {
    /// "Block everyone".
    pub all: bool,
    /// Blocked users.
    pub users: std::collections::BTreeSet<String>,
}

impl Blocks {
    /// Whether the account refuses `sender`'s messages and hides its presence from them.
    pub fn refuses(&self, sender: &str) -> bool {
        self.all || self.users.contains(sender)
    }
}

/// Whom an account has added as contacts, and whether it shares its presence at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contacts {
    /// `settings.share_presence`: false hides this account from everyone.
    pub share_presence: bool,
    /// Contacts (blocked ones may be among them; blocks win).
    pub users: std::collections::BTreeSet<String>,
}

impl Default for Contacts {
    fn default() -> Self {
        Self { share_presence: true, users: Default::default() }
    }
}

/// Whether an account with these blocks and contacts lets `watcher` see its presence
/// and last-seen: only a contact it does not block, and only while it shares presence.
pub fn shows_presence(blocks: &Blocks, contacts: &Contacts, watcher: &str) -> bool {
    contacts.share_presence && contacts.users.contains(watcher) && !blocks.refuses(watcher)
}

/// A diagnostics report or feedback note for the operator.
#[derive(Debug, Clone)]
pub struct Report {
    /// The device's id for it (a resend is stored once).
    pub id: String,
    /// The sending account.
    pub user_id: String,
    /// Diagnostics or feedback.
    pub kind: letstalk_wire::ReportKind,
    /// JSON as the device sent it.
    pub body: Vec<u8>,
    /// Receipt time, ms.
    pub now: u64,
}

/// The stored name of a report kind.
pub fn report_kind_name(kind: letstalk_wire::ReportKind) -> &'static str {
    match kind {
        letstalk_wire::ReportKind::Diagnostics => "diagnostics",
        letstalk_wire::ReportKind::Feedback => "feedback",
    }
}

/// Everything the relay keeps. See the module doc for the concurrency model.
///
/// A device is named by its account and its id (`user_id`, `device_id`); ids start at 1
/// and are never reused within an account.
pub trait Storage: Send + Sync + 'static {
    /// Creates an account with the registering device as device 1;
    /// [`StorageError::Conflict`] if the id is taken.
    fn create_account(
        &self,
        account: NewAccount,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;
    /// The password hash of `user_id`, or `None`.
    fn credentials(
        &self,
        user_id: &str,
    ) -> impl Future<Output = Result<Option<Credentials>, StorageError>> + Send;
    /// The id of `user_id`'s device whose key is `device_key`, or `None`.
    fn device_by_key(
        &self,
        user_id: &str,
        device_key: [u8; 32],
    ) -> impl Future<Output = Result<Option<u32>, StorageError>> + Send;
    /// A password login moves the account to `device_key`: every other device is removed
    /// (mailbox, prekeys, credentials); the key keeps its device if it already was one of
    /// the account's, else it becomes a new device with a fresh id.
    fn login_device(
        &self,
        user_id: &str,
        device_key: [u8; 32],
        now: u64,
    ) -> impl Future<Output = Result<LoggedIn, StorageError>> + Send;
    /// Adds a device to the account and returns its id; [`StorageError::Conflict`] when
    /// the key already is a device of any account, [`StorageError::QuotaExceeded`] when
    /// the account has [`letstalk_wire::MAX_DEVICES`] already.
    fn add_device(
        &self,
        user_id: &str,
        device_key: [u8; 32],
        name: Vec<u8>,
        now: u64,
    ) -> impl Future<Output = Result<u32, StorageError>> + Send;
    /// Removes a device with its mailbox, prekeys and key; false when it is none of the
    /// account's.
    fn remove_device(
        &self,
        user_id: &str,
        device_id: u32,
    ) -> impl Future<Output = Result<bool, StorageError>> + Send;
    /// Replaces the sealed name of one of the account's devices; false when it is none of
    /// the account's (or there is no such account).
    fn rename_device(
        &self,
        user_id: &str,
        device_id: u32,
        name: Vec<u8>,
    ) -> impl Future<Output = Result<bool, StorageError>> + Send;
    /// The account's devices in id order, or `None` for no such account.
    fn devices(
        &self,
        user_id: &str,
    ) -> impl Future<Output = Result<Option<Vec<DeviceInfo>>, StorageError>> + Send;
    /// Replaces the password hash.
    fn set_password_hash(
        &self,
        user_id: &str,
        hash: String,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;
    /// Deletes the account and everything kept for it (devices, mailboxes, keys, avatar,
    /// watches, blocks, contacts, last-seen, link rendezvous, dedupe records, reports).
    fn delete_account(
        &self,
        user_id: &str,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;
    /// The profile, with email.
    fn profile(
        &self,
        user_id: &str,
    ) -> impl Future<Output = Result<Option<Profile>, StorageError>> + Send;
    /// Applies a profile change and returns the new profile.
    fn update_profile(
        &self,
        user_id: &str,
        update: ProfileUpdate,
    ) -> impl Future<Output = Result<Profile, StorageError>> + Send;
    /// The avatar bytes.
    fn avatar(
        &self,
        user_id: &str,
    ) -> impl Future<Output = Result<Option<Avatar>, StorageError>> + Send;
    /// Stores a device's keys (the identity bytes are the account's); returns how many
    /// one-time prekeys the device now holds. [`StorageError::NotFound`] for no such
    /// device.
    fn upload_keys(
        &self,
        user_id: &str,
        device_id: u32,
        keys: KeyUpload,
    ) -> impl Future<Output = Result<u32, StorageError>> + Send;
    /// How many one-time prekeys the device holds.
    fn one_time_count(
        &self,
        user_id: &str,
        device_id: u32,
    ) -> impl Future<Output = Result<u32, StorageError>> + Send;
    /// The bundles of `user_id`'s devices `of`, in device id order, each atomically
    /// taking one one-time prekey of its device (each is handed out exactly once), or its
    /// last-resort key when none are left. `None`: no such account.
    fn take_bundles(
        &self,
        user_id: &str,
        of: BundlesOf,
    ) -> impl Future<Output = Result<Option<Vec<Bundle>>, StorageError>> + Send;
    /// Adds and removes watched users (unknown ones are ignored); returns the watched
    /// users that exist among `add`, with their last-seen time, or `hidden` where the
    /// watched user does not show its presence to `watcher` ([`shows_presence`]); online
    /// is filled in by the caller, which knows the connections.
    fn watch(
        &self,
        watcher: &str,
        add: Vec<String>,
        remove: Vec<String>,
    ) -> impl Future<Output = Result<Vec<PresenceInfo>, StorageError>> + Send;
    /// Who watches `user_id`.
    fn watchers(
        &self,
        user_id: &str,
    ) -> impl Future<Output = Result<Vec<String>, StorageError>> + Send;
    /// Replaces whom `user_id` blocks; returns what it blocked before.
    fn set_blocks(
        &self,
        user_id: &str,
        blocks: Blocks,
    ) -> impl Future<Output = Result<Blocks, StorageError>> + Send;
    /// Whom `user_id` blocks.
    fn blocks(&self, user_id: &str) -> impl Future<Output = Result<Blocks, StorageError>> + Send;
    /// Replaces whom `user_id` has as contacts and whether it shares presence; returns
    /// what was stored before.
    fn set_contacts(
        &self,
        user_id: &str,
        contacts: Contacts,
    ) -> impl Future<Output = Result<Contacts, StorageError>> + Send;
    /// Whom `user_id` has as contacts.
    fn contacts(
        &self,
        user_id: &str,
    ) -> impl Future<Output = Result<Contacts, StorageError>> + Send;
    /// Which of `users` have an account.
    fn existing(
        &self,
        users: Vec<String>,
    ) -> impl Future<Output = Result<std::collections::BTreeSet<String>, StorageError>> + Send;
    /// How many of `user_id`'s reports are held: the per-account report quota.
    fn reports_held(&self, user_id: &str)
    -> impl Future<Output = Result<u64, StorageError>> + Send;
    /// Records when the device was last connected (and so the account: presence's
    /// last-seen is the latest of its devices').
    fn set_last_seen(
        &self,
        user_id: &str,
        device_id: u32,
        at: u64,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;
    /// Persists a message's copies in its target devices' mailboxes, all or none
    /// (deduplicated by sender, recipient and msg id; within each mailbox's quota).
    /// [`StorageError::NotFound`] if the recipient does not exist,
    /// [`StorageError::Blocked`] if it refuses the sender (never for one's own account),
    /// [`StorageError::Mismatch`] if the copies do not fit its devices.
    fn enqueue(
        &self,
        envelope: Envelope,
        quota: Quota,
    ) -> impl Future<Output = Result<Enqueued, StorageError>> + Send;
    /// [`Storage::enqueue`], and as soon as the message is checked and written but not
    /// yet committed, its rows on `staged`: (device, delivery id) for each copy (nothing
    /// for a duplicate, a refusal, or a back end that cannot tell). The caller may push
    /// them to the connected recipient devices while the commit runs. Such an id is never
    /// given to another message, even after a crash before the commit.
    fn enqueue_staged(
        &self,
        envelope: Envelope,
        quota: Quota,
        staged: tokio::sync::oneshot::Sender<Vec<(u32, u64)>>,
    ) -> impl Future<Output = Result<Enqueued, StorageError>> + Send {
        drop(staged);
        self.enqueue(envelope, quota)
    }
    /// Persists several messages for one recipient, in order, in one transaction (all or
    /// none), each deduplicated and within the quota like [`Storage::enqueue`].
    fn enqueue_many(
        &self,
        envelopes: Vec<Envelope>,
        quota: Quota,
    ) -> impl Future<Output = Result<Vec<Enqueued>, StorageError>> + Send;
    /// Persists one message for several recipients, each in its own step (one refusing
    /// does not stop the others); the outcome per recipient, in order.
    fn enqueue_fanout(
        &self,
        envelopes: Vec<Envelope>,
        quota: Quota,
    ) -> impl Future<Output = Result<Vec<Result<Enqueued, StorageError>>, StorageError>> + Send;
    /// Queued messages for the device with delivery id above `after`, oldest first.
    fn pending(
        &self,
        user_id: &str,
        device_id: u32,
        after: u64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<Queued>, StorageError>> + Send;
    /// Deletes acknowledged messages of the device; returns how many were deleted.
    fn ack(
        &self,
        user_id: &str,
        device_id: u32,
        delivery_ids: Vec<u64>,
    ) -> impl Future<Output = Result<u64, StorageError>> + Send;
    /// Opens a link rendezvous for the account, replacing the account's older one;
    /// [`StorageError::Conflict`] if another account holds an unexpired slot of that name.
    fn link_open(&self, slot: NewLinkSlot)
    -> impl Future<Output = Result<(), StorageError>> + Send;
    /// Writes a cell of a rendezvous: `reply` when `from` is the account that opened it,
    /// else `joined`. Each cell is written once ([`StorageError::Conflict`] after);
    /// [`StorageError::NotFound`] for no such (or an expired) slot.
    fn link_put(
        &self,
        slot: [u8; 16],
        from: Option<String>,
        data: Vec<u8>,
        now: u64,
    ) -> impl Future<Output = Result<(), StorageError>> + Send;
    /// A rendezvous as it stands, `None` when missing or expired at `now`.
    fn link_get(
        &self,
        slot: [u8; 16],
        now: u64,
    ) -> impl Future<Output = Result<Option<LinkSlot>, StorageError>> + Send;
    /// Keeps a report (once per id).
    fn store_report(&self, report: Report)
    -> impl Future<Output = Result<(), StorageError>> + Send;
    /// Deletes reports received before `before` (ms); returns how many.
    fn expire_reports(&self, before: u64)
    -> impl Future<Output = Result<u64, StorageError>> + Send;
    /// Deletes messages and idempotency records accepted before `before` (ms), and link
    /// rendezvous past their end.
    fn expire(&self, before: u64) -> impl Future<Output = Result<u64, StorageError>> + Send;
    /// How often a device's delivery task looks at its mailbox without being woken:
    /// `None` when every enqueue wakes it reliably (one process), a period when wakes
    /// cross a network and may be lost (a cluster).
    fn poll_interval(&self) -> Option<Duration> {
        None
    }
}
