//! The cluster back end: NATS JetStream, shared by every relay node of one relay
//! (`--cluster nats://…`). Nothing is kept on the node itself, so any node can serve any
//! user and a node can die at any moment.
//!
//! What lives where (names are fixed: every node of a relay must agree on them):
//!
//! - KV bucket `letstalk_accounts`, key `<user>`: the account record (password hash,
//!   email, nickname, its devices with key, sealed name and link time, the next device
//!   id, timestamps, avatar metadata), changed by compare-and-set on its revision; a
//!   record written before devices names one device (`device_key`), read as device 1;
//!   `blocks.<user>` (whom the user blocks, its contacts and `share_presence`; present
//!   exactly while the account exists, so an enqueue checks both in one read),
//!   `seen.<user>` and `seen.<user>.<device>` (last seen of the account and of each
//!   device), each replaced whole by one writer; `dk.<key hex>`: the accounts holding a
//!   device key (so `AddDevice` refuses a key that is a device of any account; racing
//!   adds of one key on two nodes may both pass, and keys of records written before
//!   devices are not in it until their account logs in again).
//! - KV bucket `letstalk_directory`, key `<user>`: the account's identity bytes (and,
//!   written before devices, device 1's keys); `<user>.<device>`: the device's public
//!   keys (signed prekey, last-resort key), tagged with the device key they belong to.
//! - KV bucket `letstalk_links` (`max_age` ten minutes): link rendezvous. `<slot hex>`
//!   names the opening account and the end; `<slot hex>.hello`, `.joined` and `.reply`
//!   are the cells, raw bytes, the last two written once by create (like the account
//!   record's compare-and-set, not exact under racing writers on nats-server 2.9);
//!   `by.<user>` the account's open slot, so a new one replaces it.
//! - Stream `LETSTALK_PREKEYS`, subject `letstalk.otk.<user>.<device>` (before devices
//!   `letstalk.otk.<user>`, device 1's): one message per one-time
//!   prekey. Taking one reads the oldest and deletes it by sequence; only the first
//!   delete of a sequence succeeds, so each key goes out once however many nodes race.
//! - KV bucket `letstalk_watches`, keys `of.<user>` (who watches the user) and
//!   `by.<user>` (whom the user watches, to clean up when the account is deleted).
//! - Object store `letstalk_avatars`, object `<user>`: avatar bytes (up to 1 MiB, over
//!   a NATS message's default size, hence the chunking object store).
//! - Object store `letstalk_blobs`, object `<blob id hex>-<owner>`: complete file blobs,
//!   with size and recipients in the object's metadata; `max_age` is the blob TTL.
//!   Uploads in progress stay on the node receiving them (see `crate::blobs`).
//! - KV bucket `letstalk_blob_waiting`, key `<blob id hex>-<owner>`: the recipient
//!   devices (`user#device`) that blob still waits for, taken off by compare-and-set as
//!   each releases it (the object's metadata cannot be changed that way); `max_age` is
//!   the blob TTL. A blob shared before the bucket existed reads its object's metadata.
//! - Stream `LETSTALK_MAILBOX`, subject `letstalk.mbox.<recipient>.<device>.<c|s>.<sender>`
//!   (`c` from a contact of the recipient, `s` from anyone else; before devices
//!   `letstalk.mbox.<recipient>.<c|s>.<sender>`, read as device 1's): the offline queues,
//!   one per device.
//!   `max_age` is the message TTL (the server expires, [`Storage::expire`] has nothing
//!   to do), `max_msgs_per_subject` with "discard new per subject" is one sender's share
//!   of a device's mailbox (a quarter; the server refuses the message that would exceed it, never
//!   drops an accepted one); the total and the strangers' share are counted per subject
//!   before publishing (racing senders may overshoot them by what is in flight); a
//!   deleted account's mail, sent and received, is purged by subject; the duplicate window deduplicates retransmits by a
//!   `Nats-Msg-Id` derived from (sender, recipient, msg id) and the device, and an acknowledgement
//!   deletes the message by its stream sequence, which is the delivery id. A device's
//!   queue is read by asking the stream leader for the next message on its subject: no
//!   consumer per device, so a reconnect storm costs reads, not cluster metadata.
//! - Stream `LETSTALK_REPORTS`, subject `letstalk.report.<kind>.<user>`: diagnostics
//!   reports and feedback for the operator (purged by subject with the account). `max_age` is the report
//!   retention (`report_ttl_days`: the server deletes, [`Storage::expire_reports`] has
//!   nothing to do); a resend within the duplicate window is stored once.
//!
//! `<user>` is the user id with `.` replaced by `=` (`=` never occurs in a user id), so
//! that it is one subject token and a valid key.
//!
//! Every bucket and the stream are replicated three ways when the NATS servers form a
//! cluster (an acknowledged write survives the loss of one server) and once on a single
//! server. Reads go to the stream leader (`allow_direct` off): a read right after a write
//! on another node must see it.
//!
//! Known limit: nats-server 2.9 (Debian's) does not make compare-and-set exact when
//! several writers race on one key across a cluster (both may win). Nothing that must
//! be exact depends on it: prekeys are claimed by delete, blocks and last-seen are
//! replaced whole, messages are in the stream. What remains on compare-and-set (the
//! account record, changed by its own device; the watch sets; a registration racing for
//! the same user id on two nodes) can lose one of two simultaneous updates there.
//!
//! Differences from the embedded back end, by design of the engine: a batch
//! ([`Storage::enqueue_many`]) is published in order but not atomically (a failure part
//! way leaves the first messages stored; the sender retransmits the batch and the
//! duplicate window makes that exact), and so are the copies of one message for several
//! devices (each copy has its own duplicate id, so a retransmit stores only the missing
//! ones); the recipient's devices are read before publishing, not in one transaction
//! with it, so a retransmit after a device change is checked against the new devices,
//! and a device linked during a send can miss its copy (its account's devices hear
//! `DevicesChanged`, and senders learn of it on their next `Mismatch`); the per-device
//! byte quota is not enforced (only the message count is); retransmits are recognised
//! for one hour ([`DEDUPE_WINDOW`]), after which the recipient's daemon still recognises
//! the message id; device removal deletes the device's keys and mail after its record
//! changed, in several steps (a failure part way leaves some for the message TTL).
//!
//! Here the names, the handle and the [`Storage`] impl; `setup.rs` connects and creates
//! what every node shares; `accounts.rs` the account writes of several steps;
//! `records.rs` the KV records and compare-and-set; `streams.rs` prekeys and the mailbox
//! on their streams.

mod accounts;
mod records;
mod setup;
mod streams;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store, stream};
use bytes::Bytes;
use letstalk_wire::{
    Avatar, AvatarUpdate, Bundle, DeviceInfo, LINK_SLOT_TTL_MS, LinkSlot, MAX_DEVICES, PreKey,
    PresenceInfo, Profile,
};
use sha2::{Digest, Sha256};

use self::records::{
    AccountRec, AvatarRec, BlocksRec, CAS_ATTEMPTS, Change, DeviceRec, DirectoryRec, LinkRec,
    backend, base64_url, dedupe_id, erase, key32, modify, prekey, put, read, read_raw, set_member,
    unhex,
};
use self::streams::publish_error;
use super::{
    Blocks, BundlesOf, Contacts, Credentials, Enqueued, Envelope, KeyUpload, LoggedIn, NewAccount,
    NewLinkSlot, ProfileUpdate, Queued, Quota, Report, Storage, StorageError, shows_presence,
    target_devices,
};

/// The mailbox stream.
pub const MAILBOX_STREAM: &str = "LETSTALK_MAILBOX";
/// Subjects of the mailbox stream: `letstalk.mbox.<user>`.
const MAILBOX_PREFIX: &str = "letstalk.mbox";
const ACCOUNTS: &str = "letstalk_accounts";
const DIRECTORY: &str = "letstalk_directory";
const WATCHES: &str = "letstalk_watches";
const AVATARS: &str = "letstalk_avatars";
/// Link rendezvous: KV bucket `letstalk_links`, `max_age` = a slot's life.
const LINKS: &str = "letstalk_links";
/// Complete file blobs, shared by every node (see `crate::blobs`).
const BLOBS: &str = "letstalk_blobs";
/// The recipients' devices each shared blob still waits for, by object name, changed
/// by compare-and-set (two nodes may release at once; see `crate::blobs`).
const BLOB_WAITING: &str = "letstalk_blob_waiting";
/// One-time prekeys: stream `LETSTALK_PREKEYS`, subject `letstalk.otk.<user>`.
const PREKEYS_STREAM: &str = "LETSTALK_PREKEYS";
const PREKEYS_PREFIX: &str = "letstalk.otk";
/// Headers of a one-time prekey message (the key is the payload).
const H_KEY_ID: &str = "Letstalk-Key-Id";
const H_DEVICE: &str = "Letstalk-Device";
/// How long the stream remembers a message id (the same window as the embedded back end).
pub use super::DEDUPE_WINDOW;
/// How long start-up waits for JetStream (a new cluster elects its leaders first).
const STARTUP_PATIENCE: Duration = Duration::from_secs(30);

/// Diagnostics reports and feedback: stream `LETSTALK_REPORTS`.
const REPORTS_STREAM: &str = "LETSTALK_REPORTS";
const REPORTS_PREFIX: &str = "letstalk.report";

/// Headers of a mailbox message (the body is the payload).
const H_FROM: &str = "Letstalk-From";
/// The sending device (absent before devices: 1).
const H_FROM_DEVICE: &str = "Letstalk-From-Device";
const H_MSG_ID: &str = "Letstalk-Msg-Id";
const H_TS: &str = "Letstalk-Ts";

/// How to set up the shared engine.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// This node's name, for the NATS connection name.
    pub node_id: String,
    /// Undelivered messages expire after this (the stream's `max_age`).
    pub message_ttl: Duration,
    /// Most queued messages per device (the stream's per-subject cap).
    pub mailbox_max_messages: u64,
    /// Reports and feedback are kept this long (the reports stream's `max_age`).
    pub report_ttl: Duration,
    /// File blobs are kept at most this long (the blob object store's `max_age`).
    pub blob_ttl: Duration,
}

/// JetStream storage. Cheap to clone.
#[derive(Clone)]
pub struct NatsStorage {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    accounts: kv::Store,
    directory: kv::Store,
    watches: kv::Store,
    links: kv::Store,
    avatars: object_store::ObjectStore,
    blobs: object_store::ObjectStore,
    blob_waiting: kv::Store,
    mailbox: stream::Stream,
    prekeys: stream::Stream,
    reports: stream::Stream,
    replicas: usize,
}

impl std::fmt::Debug for NatsStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsStorage")
            .field("replicas", &self.inner.replicas)
            .finish_non_exhaustive()
    }
}

/// `url` without any `user:password@` part, for messages and logs.
pub fn redact_url(url: &str) -> String {
    url.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}{}", &u[..s + 3], &u[at + 1..]),
            (None, Some(at)) => u[at + 1..].to_owned(),
            _ => u.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A user id as one subject token and key: `.` becomes `=`.
pub fn token(user_id: &str) -> String {
    user_id.replace('.', "=")
}

/// The subject a message from `sender` to `recipient`'s device `device` is stored
/// under: `letstalk.mbox.<recipient>.<device>.c.<sender>` from a contact of the
/// recipient, `letstalk.mbox.<recipient>.<device>.s.<sender>` from anyone else. One
/// subject per (recipient device, sender), so the stream's per-subject cap is each
/// sender's share of a device's mailbox, and everything one account sent can be purged
/// by subject when it is deleted.
fn mailbox_subject(recipient: &str, device: u32, sender: &str, from_contact: bool) -> String {
    let kind = if from_contact { "c" } else { "s" };
    format!("{MAILBOX_PREFIX}.{}.{device}.{kind}.{}", token(recipient), token(sender))
}

/// Every subject of `recipient`'s mailboxes (all its devices).
fn mailbox_filter(recipient: &str) -> String {
    format!("{MAILBOX_PREFIX}.{}.>", token(recipient))
}

/// The subjects of one device's mailbox. Device 1's include those of the account's one
/// mailbox before devices (`letstalk.mbox.<recipient>.<c|s>.<sender>`, and before that
/// `letstalk.mbox.<recipient>`): still read, acknowledged and counted as device 1's, so
/// an upgrade loses nothing queued.
fn device_mailbox_filters(recipient: &str, device: u32) -> Vec<String> {
    let r = token(recipient);
    let mut filters = vec![format!("{MAILBOX_PREFIX}.{r}.{device}.>")];
    if device == 1 {
        filters.push(format!("{MAILBOX_PREFIX}.{r}.c.>"));
        filters.push(format!("{MAILBOX_PREFIX}.{r}.s.>"));
        filters.push(legacy_mailbox_subject(recipient));
    }
    filters
}

/// Which device of `recipient` a mailbox subject is for, and whether it came from a
/// stranger; `None` for a subject of another recipient.
fn subject_device(subject: &str, recipient: &str) -> Option<(u32, bool)> {
    let base = legacy_mailbox_subject(recipient);
    let rest = subject.strip_prefix(base.as_str())?;
    if rest.is_empty() {
        return Some((1, false));
    }
    let mut tokens = rest.strip_prefix('.')?.split('.');
    let first = tokens.next()?;
    let (device, kind) = match first.parse::<u32>() {
        Ok(d) => (d, tokens.next()?),
        Err(_) => (1, first),
    };
    match kind {
        "c" => Some((device, false)),
        "s" => Some((device, true)),
        _ => None,
    }
}

/// The subject of the account's one mailbox before per-sender subjects.
fn legacy_mailbox_subject(recipient: &str) -> String {
    format!("{MAILBOX_PREFIX}.{}", token(recipient))
}

/// Reports of one account: `letstalk.report.<kind>.<user>`.
fn report_subject(kind: &str, user_id: &str) -> String {
    format!("{REPORTS_PREFIX}.{kind}.{}", token(user_id))
}

/// One device's one-time prekeys: `letstalk.otk.<user>.<device>`.
fn prekeys_subject(user_id: &str, device_id: u32) -> String {
    format!("{PREKEYS_PREFIX}.{}.{device_id}", token(user_id))
}

/// The account's prekeys before devices (device 1's, read as such).
fn legacy_prekeys_subject(user_id: &str) -> String {
    format!("{PREKEYS_PREFIX}.{}", token(user_id))
}

/// The subjects of one device's one-time prekeys.
fn device_prekey_subjects(user_id: &str, device_id: u32) -> Vec<String> {
    let mut subjects = vec![prekeys_subject(user_id, device_id)];
    if device_id == 1 {
        subjects.push(legacy_prekeys_subject(user_id));
    }
    subjects
}

/// One device's entry in the directory bucket, `<user>.<device>` (`<user>` holds the
/// account's identity, and before devices device 1's keys as well).
fn dir_key(user_id: &str, device_id: u32) -> String {
    format!("{}.{device_id}", token(user_id))
}

/// The accounts holding a device key, `dk.<key hex>`: so that `AddDevice` can refuse a
/// key that already is a device of any account.
fn key_index(key_hex: &str) -> String {
    format!("dk.{key_hex}")
}

/// The account's open link rendezvous, `by.<user>` in the links bucket.
fn link_owner_key(user_id: &str) -> String {
    format!("by.{}", token(user_id))
}

/// A device's last-seen time, `seen.<user>.<device>`.
fn device_seen_key(user_id: &str, device_id: u32) -> String {
    format!("seen.{}.{device_id}", token(user_id))
}

/// Keys of the accounts bucket besides the account record itself: written whole by one
/// writer each (`put`), never read-modify-written.
fn seen_key(user_id: &str) -> String {
    format!("seen.{}", token(user_id))
}

fn blocks_key(user_id: &str) -> String {
    format!("blocks.{}", token(user_id))
}

impl NatsStorage {
    /// The NATS connection (the relay's cross-node bus uses it too).
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// How many copies of everything the cluster keeps.
    pub fn replicas(&self) -> usize {
        self.inner.replicas
    }

    /// The object store of complete file blobs (the relay's blob store shares it).
    pub fn blob_store(&self) -> object_store::ObjectStore {
        self.inner.blobs.clone()
    }

    /// Records the recipient entries shared blob `name` waits for.
    pub(crate) async fn blob_waiting_set(
        &self,
        name: &str,
        entries: &[String],
    ) -> Result<(), StorageError> {
        put(&self.inner.blob_waiting, name, &entries).await
    }

    /// The entries shared blob `name` still waits for; `None` when there is no record
    /// (a blob shared before the record existed: its object's metadata tells).
    pub(crate) async fn blob_waiting(
        &self,
        name: &str,
    ) -> Result<Option<Vec<String>>, StorageError> {
        Ok(read(&self.inner.blob_waiting, name).await?.map(|(v, _)| v))
    }

    /// Takes the entries `released` picks off blob `name`'s record, by compare-and-set;
    /// how many are left, or `None` when there is no record.
    pub(crate) async fn blob_waiting_release(
        &self,
        name: &str,
        released: impl Fn(&str) -> bool,
    ) -> Result<Option<usize>, StorageError> {
        modify(&self.inner.blob_waiting, name, |now: Option<Vec<String>>| {
            let Some(now) = now else { return Ok(Change::Keep(None)) };
            let left: Vec<String> = now.iter().filter(|e| !released(e)).cloned().collect();
            let n = left.len();
            Ok(if n == now.len() { Change::Keep(Some(n)) } else { Change::Put(left, Some(n)) })
        })
        .await
    }

    /// Forgets blob `name`'s record (the blob is deleted).
    pub(crate) async fn blob_waiting_forget(&self, name: &str) -> Result<(), StorageError> {
        erase(&self.inner.blob_waiting, name).await
    }

    /// Reports and feedback notes held: for tests and metrics.
    pub async fn reports_len(&self) -> Result<u64, StorageError> {
        let mut s = self.inner.reports.clone();
        Ok(s.info().await.map_err(|e| backend("reports stream", e))?.state.messages)
    }

    /// Messages in all mailboxes: for tests and metrics.
    pub async fn mailbox_len(&self) -> Result<u64, StorageError> {
        let mut s = self
            .inner
            .js
            .get_stream(MAILBOX_STREAM)
            .await
            .map_err(|e| backend("mailbox stream", e))?;
        Ok(s.info().await.map_err(|e| backend("mailbox stream", e))?.state.messages)
    }

    async fn account(&self, user_id: &str) -> Result<Option<AccountRec>, StorageError> {
        let rec: Option<(AccountRec, u64)> = read(&self.inner.accounts, &token(user_id)).await?;
        Ok(rec.map(|(r, _)| r.normalize()))
    }
}

impl Storage for NatsStorage {
    async fn create_account(&self, a: NewAccount) -> Result<(), StorageError> {
        self.insert_account(a).await
    }

    async fn credentials(&self, user_id: &str) -> Result<Option<Credentials>, StorageError> {
        Ok(self.account(user_id).await?.map(|a| Credentials { password_hash: a.password_hash }))
    }

    async fn device_by_key(
        &self,
        user_id: &str,
        device_key: [u8; 32],
    ) -> Result<Option<u32>, StorageError> {
        let key = hex::encode(device_key);
        Ok(self.account(user_id).await?.and_then(|a| a.device_with_key(&key)))
    }

    async fn login_device(
        &self,
        user_id: &str,
        device_key: [u8; 32],
        now: u64,
    ) -> Result<LoggedIn, StorageError> {
        self.move_account(user_id, device_key, now).await
    }

    async fn add_device(
        &self,
        user_id: &str,
        device_key: [u8; 32],
        name: Vec<u8>,
        now: u64,
    ) -> Result<u32, StorageError> {
        self.insert_device(user_id, device_key, name, now).await
    }

    async fn remove_device(&self, user_id: &str, device_id: u32) -> Result<bool, StorageError> {
        self.delete_device(user_id, device_id).await
    }

    async fn rename_device(
        &self,
        user_id: &str,
        device_id: u32,
        name: Vec<u8>,
    ) -> Result<bool, StorageError> {
        self.set_device_name(user_id, device_id, name).await
    }

    async fn devices(&self, user_id: &str) -> Result<Option<Vec<DeviceInfo>>, StorageError> {
        let Some(a) = self.account(user_id).await? else { return Ok(None) };
        let mut out = Vec::with_capacity(a.devices.len());
        for (id, d) in a.devices {
            let seen: Option<(u64, u64)> =
                read(&self.inner.accounts, &device_seen_key(user_id, id)).await?;
            out.push(DeviceInfo {
                device_id: id,
                name: unhex(&d.name)?,
                linked_at: d.linked_at,
                last_seen_at: seen.map_or(0, |(t, _)| t),
            });
        }
        Ok(Some(out))
    }

    async fn set_password_hash(&self, user_id: &str, hash: String) -> Result<(), StorageError> {
        modify(&self.inner.accounts, &token(user_id), |cur: Option<AccountRec>| {
            let mut a = cur.ok_or(StorageError::NotFound)?;
            a.password_hash.clone_from(&hash);
            Ok(Change::Put(a, ()))
        })
        .await
    }

    async fn delete_account(&self, user_id: &str) -> Result<(), StorageError> {
        self.erase_account(user_id).await
    }

    async fn profile(&self, user_id: &str) -> Result<Option<Profile>, StorageError> {
        self.account(user_id).await?.map(|a| a.profile(user_id)).transpose()
    }

    async fn update_profile(
        &self,
        user_id: &str,
        u: ProfileUpdate,
    ) -> Result<Profile, StorageError> {
        self.change_profile(user_id, u).await
    }

    async fn avatar(&self, user_id: &str) -> Result<Option<Avatar>, StorageError> {
        use tokio::io::AsyncReadExt;
        let Some(meta) = self.account(user_id).await?.and_then(|a| a.avatar) else {
            return Ok(None);
        };
        let Ok(mut object) = self.inner.avatars.get(token(user_id).as_str()).await else {
            return Ok(None);
        };
        let mut data = Vec::with_capacity(meta.size as usize);
        object.read_to_end(&mut data).await.map_err(|e| backend("reading the avatar", e))?;
        Ok(Some(Avatar { mime: meta.mime, data }))
    }

    async fn upload_keys(
        &self,
        user_id: &str,
        device_id: u32,
        k: KeyUpload,
    ) -> Result<u32, StorageError> {
        self.store_keys(user_id, device_id, k).await
    }

    async fn one_time_count(&self, user_id: &str, device_id: u32) -> Result<u32, StorageError> {
        self.count_one_time(user_id, device_id).await
    }

    async fn take_bundles(
        &self,
        user_id: &str,
        of: BundlesOf,
    ) -> Result<Option<Vec<Bundle>>, StorageError> {
        let Some(account) = self.account(user_id).await? else { return Ok(None) };
        let shared: Option<(DirectoryRec, u64)> =
            read(&self.inner.directory, &token(user_id)).await?;
        let identity = unhex(&shared.map(|(d, _)| d.identity).unwrap_or_default())?;
        let mut devices: Vec<(u32, DeviceRec)> = account.devices.into_iter().collect();
        match &of {
            BundlesOf::All => {}
            BundlesOf::Devices(ids) => devices.retain(|(id, _)| ids.contains(id)),
            BundlesOf::Lowest => devices.truncate(1),
        }
        let mut bundles = Vec::with_capacity(devices.len());
        for (device_id, d) in devices {
            let Some(device_key) = key32(Some(&d.key))? else { continue };
            let dir = self.device_directory(user_id, device_id, &d.key).await?;
            let mut bundle = Bundle {
                device_id,
                user_id: user_id.to_owned(),
                device_key,
                identity: identity.clone(),
                signed_prekey: prekey(dir.signed_prekey.as_ref())?,
                one_time_prekey: None,
                last_resort: false,
            };
            match self.claim_one_time(user_id, device_id, &d.key).await? {
                Some(p) => bundle.one_time_prekey = Some(p),
                None => {
                    bundle.one_time_prekey = prekey(dir.last_resort.as_ref())?;
                    bundle.last_resort = bundle.one_time_prekey.is_some();
                }
            }
            bundles.push(bundle);
        }
        Ok(Some(bundles))
    }

    async fn watch(
        &self,
        watcher: &str,
        add: Vec<String>,
        remove: Vec<String>,
    ) -> Result<Vec<PresenceInfo>, StorageError> {
        let w = &self.inner.watches;
        let by = format!("by.{}", token(watcher));
        for u in &remove {
            set_member(w, &format!("of.{}", token(u)), watcher, false).await?;
            set_member(w, &by, u, false).await?;
        }
        let mut out = Vec::new();
        for u in add {
            if self.account(&u).await?.is_none() {
                continue;
            }
            set_member(w, &format!("of.{}", token(&u)), watcher, true).await?;
            set_member(w, &by, &u, true).await?;
            let rec: Option<(BlocksRec, u64)> = read(&self.inner.accounts, &blocks_key(&u)).await?;
            let rec = rec.map(|(r, _)| r).unwrap_or_default();
            let hidden = !shows_presence(&rec.blocks(), &rec.contacts(), watcher);
            let seen: Option<(u64, u64)> = read(&self.inner.accounts, &seen_key(&u)).await?;
            out.push(PresenceInfo {
                online: false,
                last_seen_at: if hidden { 0 } else { seen.map_or(0, |(t, _)| t) },
                hidden,
                user_id: u,
            });
        }
        Ok(out)
    }

    async fn watchers(&self, user_id: &str) -> Result<Vec<String>, StorageError> {
        let set: Option<(BTreeSet<String>, u64)> =
            read(&self.inner.watches, &format!("of.{}", token(user_id))).await?;
        Ok(set.map(|(s, _)| s.into_iter().collect()).unwrap_or_default())
    }

    async fn set_blocks(&self, user_id: &str, blocks: Blocks) -> Result<Blocks, StorageError> {
        // The device replaces the whole set each time: a plain put, no read-modify-write
        // that another writer could interleave with.
        let old: Option<(BlocksRec, u64)> =
            read(&self.inner.accounts, &blocks_key(user_id)).await?;
        let Some((old, _)) = old else { return Err(StorageError::NotFound) };
        let new = BlocksRec { all: blocks.all, users: blocks.users, ..old.clone() };
        put(&self.inner.accounts, &blocks_key(user_id), &new).await?;
        Ok(old.blocks())
    }

    async fn blocks(&self, user_id: &str) -> Result<Blocks, StorageError> {
        let b: Option<(BlocksRec, u64)> = read(&self.inner.accounts, &blocks_key(user_id)).await?;
        Ok(b.map(|(b, _)| b.blocks()).unwrap_or_default())
    }

    async fn set_contacts(
        &self,
        user_id: &str,
        contacts: Contacts,
    ) -> Result<Contacts, StorageError> {
        // Like the blocks (same record, same single writer: the account's device).
        let old: Option<(BlocksRec, u64)> =
            read(&self.inner.accounts, &blocks_key(user_id)).await?;
        let Some((old, _)) = old else { return Err(StorageError::NotFound) };
        let new = BlocksRec {
            contacts: contacts.users,
            share_presence: contacts.share_presence,
            ..old.clone()
        };
        put(&self.inner.accounts, &blocks_key(user_id), &new).await?;
        Ok(old.contacts())
    }

    async fn contacts(&self, user_id: &str) -> Result<Contacts, StorageError> {
        let b: Option<(BlocksRec, u64)> = read(&self.inner.accounts, &blocks_key(user_id)).await?;
        Ok(b.map(|(b, _)| b.contacts()).unwrap_or_default())
    }

    async fn existing(&self, users: Vec<String>) -> Result<BTreeSet<String>, StorageError> {
        let mut out = BTreeSet::new();
        for u in users {
            let rec: Option<(BlocksRec, u64)> = read(&self.inner.accounts, &blocks_key(&u)).await?;
            if rec.is_some() {
                out.insert(u);
            }
        }
        Ok(out)
    }

    async fn reports_held(&self, user_id: &str) -> Result<u64, StorageError> {
        let mut subjects = self
            .inner
            .reports
            .clone()
            .info_with_subjects(format!("{REPORTS_PREFIX}.*.{}", token(user_id)))
            .await
            .map_err(|e| backend("counting reports", e))?;
        let mut n = 0u64;
        while let Some(item) = futures::StreamExt::next(&mut subjects).await {
            n += item.map_err(|e| backend("counting reports", e))?.1 as u64;
        }
        Ok(n)
    }

    async fn set_last_seen(
        &self,
        user_id: &str,
        device_id: u32,
        at: u64,
    ) -> Result<(), StorageError> {
        let Some(a) = self.account(user_id).await? else { return Ok(()) };
        put(&self.inner.accounts, &seen_key(user_id), &at).await?;
        if a.devices.contains_key(&device_id) {
            put(&self.inner.accounts, &device_seen_key(user_id, device_id), &at).await?;
        }
        Ok(())
    }

    async fn enqueue(&self, e: Envelope, quota: Quota) -> Result<Enqueued, StorageError> {
        let mut done = self.enqueue_many(vec![e], quota).await?;
        done.pop().ok_or(StorageError::NotFound)
    }

    async fn enqueue_many(
        &self,
        envelopes: Vec<Envelope>,
        quota: Quota,
    ) -> Result<Vec<Enqueued>, StorageError> {
        self.enqueue_for_one(envelopes, quota).await
    }

    async fn enqueue_fanout(
        &self,
        envelopes: Vec<Envelope>,
        quota: Quota,
    ) -> Result<Vec<Result<Enqueued, StorageError>>, StorageError> {
        let one = |e: Envelope| async move {
            let mut done = self.enqueue_for_one(vec![e], quota).await?;
            done.pop().ok_or(StorageError::NotFound)
        };
        let outcomes = futures::future::join_all(envelopes.into_iter().map(one)).await;
        let mut out = Vec::with_capacity(outcomes.len());
        for o in outcomes {
            match o {
                Err(StorageError::Backend(e)) => return Err(StorageError::Backend(e)),
                other => out.push(other),
            }
        }
        Ok(out)
    }

    async fn pending(
        &self,
        recipient: &str,
        device: u32,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Queued>, StorageError> {
        let mut out = Vec::new();
        // Device 1's mailbox includes an upgrade's leftovers, merged in delivery order.
        for filter in device_mailbox_filters(recipient, device) {
            out.extend(self.pending_on(filter, after, limit).await?);
        }
        out.sort_by_key(|m| m.delivery_id);
        out.truncate(limit as usize);
        Ok(out)
    }

    async fn ack(
        &self,
        recipient: &str,
        device: u32,
        delivery_ids: Vec<u64>,
    ) -> Result<u64, StorageError> {
        let mailbox = &self.inner.mailbox;
        let one = |seq: u64| {
            async move {
                // A device can only delete its own mail: the subject is checked first.
                match mailbox.get_raw_message(seq).await {
                    Ok(m)
                        if subject_device(m.subject.as_str(), recipient)
                            .is_some_and(|(d, _)| d == device) => {}
                    Ok(_) => return Ok(0),
                    Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => {
                        return Ok(0);
                    }
                    Err(e) => return Err(backend("acknowledging", e)),
                }
                match mailbox.delete_message(seq).await {
                    Ok(true) => Ok(1),
                    Ok(false) => Ok(0),
                    // Deleted meanwhile (acknowledged twice at once, or expired).
                    Err(e) if e.to_string().contains("no message found") => Ok(0),
                    Err(e) => Err(backend("acknowledging", e)),
                }
            }
        };
        let mut n = 0;
        for r in futures::future::join_all(delivery_ids.into_iter().map(one)).await {
            n += r?;
        }
        Ok(n)
    }

    async fn link_open(&self, slot: NewLinkSlot) -> Result<(), StorageError> {
        self.open_link(slot).await
    }

    async fn link_put(
        &self,
        slot: [u8; 16],
        from: Option<String>,
        data: Vec<u8>,
        now: u64,
    ) -> Result<(), StorageError> {
        self.put_link(slot, from, data, now).await
    }

    async fn link_get(&self, slot: [u8; 16], now: u64) -> Result<Option<LinkSlot>, StorageError> {
        self.get_link(slot, now).await
    }

    async fn store_report(&self, r: Report) -> Result<(), StorageError> {
        let kind = crate::storage::report_kind_name(r.kind);
        let publish = jetstream::message::PublishMessage::build()
            .payload(Bytes::from(r.body))
            // A hash, so the duplicate window (held in the servers' memory) names no user.
            .message_id(format!(
                "report.{}",
                hex::encode(super::dedupe_id(&r.user_id, "report", &r.id))
            ))
            .header(H_TS, r.now.to_string().as_str());
        let ack = self
            .inner
            .js
            .send_publish(report_subject(kind, &r.user_id), publish)
            .await
            .map_err(publish_error)?;
        ack.await.map_err(publish_error)?;
        Ok(())
    }

    async fn expire_reports(&self, _before: u64) -> Result<u64, StorageError> {
        // The stream's `max_age` is the retention: the server deletes old reports.
        Ok(0)
    }

    async fn expire(&self, _before: u64) -> Result<u64, StorageError> {
        // The stream's max_age expires messages, the duplicate window forgets ids and
        // the links bucket's max_age drops rendezvous (reads check their end before):
        // the servers do it, on every replica.
        Ok(0)
    }

    fn poll_interval(&self) -> Option<Duration> {
        // A wake from another node travels on core NATS, at most once: a device's
        // delivery task also looks at its mailbox this often, so a lost wake only delays.
        Some(Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests;
