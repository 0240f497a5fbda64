//! The cluster back end: NATS JetStream, shared by every relay node of one relay
//! (`--cluster nats://…`). Nothing is kept on the node itself, so any node can serve any
//! user and a node can die at any moment.
//!
//! What lives where (names are fixed: every node of a relay must agree on them):
//!
//! - KV bucket `letstalk_accounts`, key `<user>`: the account record (password hash,
//!   email, nickname, bound device, timestamps, avatar metadata), changed by
//!   compare-and-set on its revision; `blocks.<user>` (whom the user blocks, its
//!   contacts and `share_presence`; present
//!   exactly while the account exists, so an enqueue checks both in one read) and
//!   `seen.<user>` (last seen), each replaced whole by one writer.
//! - KV bucket `letstalk_directory`, key `<user>`: the device's public keys (identity,
//!   signed prekey, last-resort key), tagged with the device key they belong to.
//! - Stream `LETSTALK_PREKEYS`, subject `letstalk.otk.<user>`: one message per one-time
//!   prekey. Taking one reads the oldest and deletes it by sequence; only the first
//!   delete of a sequence succeeds, so each key goes out once however many nodes race.
//! - KV bucket `letstalk_watches`, keys `of.<user>` (who watches the user) and
//!   `by.<user>` (whom the user watches, to clean up when the account is deleted).
//! - Object store `letstalk_avatars`, object `<user>`: avatar bytes (up to 1 MiB, over
//!   a NATS message's default size, hence the chunking object store).
//! - Object store `letstalk_blobs`, object `<blob id hex>-<owner>`: complete file blobs,
//!   with size and recipients in the object's metadata; `max_age` is the blob TTL.
//!   Uploads in progress stay on the node receiving them (see `crate::blobs`).
//! - Stream `LETSTALK_MAILBOX`, subject `letstalk.mbox.<recipient>.<c|s>.<sender>` (`c`
//!   from a contact of the recipient, `s` from anyone else): the offline queues.
//!   `max_age` is the message TTL (the server expires, [`Storage::expire`] has nothing
//!   to do), `max_msgs_per_subject` with "discard new per subject" is one sender's share
//!   of a mailbox (a quarter; the server refuses the message that would exceed it, never
//!   drops an accepted one); the total and the strangers' share are counted per subject
//!   before publishing (racing senders may overshoot them by what is in flight); a
//!   deleted account's mail, sent and received, is purged by subject; the duplicate window deduplicates retransmits by a
//!   `Nats-Msg-Id` derived from (sender, recipient, msg id), and an acknowledgement
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
//! duplicate window makes that exact); the per-device byte quota is not enforced (only
//! the message count is); retransmits are recognised for one hour ([`DEDUPE_WINDOW`]),
//! after which the recipient's daemon still recognises the message id.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store, stream};
use bytes::Bytes;
use letstalk_wire::{Avatar, AvatarMeta, AvatarUpdate, Bundle, PreKey, PresenceInfo, Profile};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{
    Blocks, Contacts, Credentials, Enqueued, Envelope, KeyUpload, NewAccount, ProfileUpdate,
    Queued, Quota, Report, Storage, StorageError, shows_presence,
};

/// The mailbox stream.
pub const MAILBOX_STREAM: &str = "LETSTALK_MAILBOX";
/// Subjects of the mailbox stream: `letstalk.mbox.<user>`.
const MAILBOX_PREFIX: &str = "letstalk.mbox";
const ACCOUNTS: &str = "letstalk_accounts";
const DIRECTORY: &str = "letstalk_directory";
const WATCHES: &str = "letstalk_watches";
const AVATARS: &str = "letstalk_avatars";
/// Complete file blobs, shared by every node (see `crate::blobs`).
const BLOBS: &str = "letstalk_blobs";
/// One-time prekeys: stream `LETSTALK_PREKEYS`, subject `letstalk.otk.<user>`.
const PREKEYS_STREAM: &str = "LETSTALK_PREKEYS";
const PREKEYS_PREFIX: &str = "letstalk.otk";
/// Headers of a one-time prekey message (the key is the payload).
const H_KEY_ID: &str = "Letstalk-Key-Id";
const H_DEVICE: &str = "Letstalk-Device";
/// How long the stream remembers a message id (the same window as the embedded back end).
pub use super::DEDUPE_WINDOW;
/// Compare-and-set attempts before a contended record gives up.
const CAS_ATTEMPTS: usize = 100;
/// How long start-up waits for JetStream (a new cluster elects its leaders first).
const STARTUP_PATIENCE: Duration = Duration::from_secs(30);

/// Diagnostics reports and feedback: stream `LETSTALK_REPORTS`.
const REPORTS_STREAM: &str = "LETSTALK_REPORTS";
const REPORTS_PREFIX: &str = "letstalk.report";

/// Headers of a mailbox message (the body is the payload).
const H_FROM: &str = "Letstalk-From";
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
    avatars: object_store::ObjectStore,
    blobs: object_store::ObjectStore,
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

fn backend(what: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(format!("{what}: {e}"))
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

/// The subject a message from `sender` to `recipient` is stored under:
/// `letstalk.mbox.<recipient>.c.<sender>` from a contact of the recipient,
/// `letstalk.mbox.<recipient>.s.<sender>` from anyone else. One subject per (recipient,
/// sender), so the stream's per-subject cap is each sender's share of the mailbox, and
/// everything one account sent can be purged by subject when it is deleted.
fn mailbox_subject(recipient: &str, sender: &str, from_contact: bool) -> String {
    let kind = if from_contact { "c" } else { "s" };
    format!("{MAILBOX_PREFIX}.{}.{kind}.{}", token(recipient), token(sender))
}

/// Every subject of `recipient`'s mailbox.
fn mailbox_filter(recipient: &str) -> String {
    format!("{MAILBOX_PREFIX}.{}.>", token(recipient))
}

/// The subject of a mailbox before per-sender subjects (still read and acknowledged, so
/// an upgrade loses nothing queued).
fn legacy_mailbox_subject(recipient: &str) -> String {
    format!("{MAILBOX_PREFIX}.{}", token(recipient))
}

/// Reports of one account: `letstalk.report.<kind>.<user>`.
fn report_subject(kind: &str, user_id: &str) -> String {
    format!("{REPORTS_PREFIX}.{kind}.{}", token(user_id))
}

fn prekeys_subject(user_id: &str) -> String {
    format!("{PREKEYS_PREFIX}.{}", token(user_id))
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
    /// Connects to the NATS servers at `url` (one URL or several, comma-separated) and
    /// creates (or checks) the buckets and the stream. Waits up to 30 s for JetStream to
    /// be available; fails at once when no server answers.
    pub async fn connect(url: &str, options: &ClusterOptions) -> Result<Self, StorageError> {
        let shown = redact_url(url);
        let servers = url
            .split(',')
            .map(|u| u.trim().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| backend(&format!("--cluster {shown}"), e))?;
        let client = async_nats::ConnectOptions::new()
            .name(format!("letstalk-relay {}", options.node_id))
            .connection_timeout(Duration::from_secs(5))
            // A node outlives any one NATS server: it reconnects forever, to any of the
            // cluster's servers (the client learns them from the one it reached).
            .max_reconnects(None)
            .connect(servers)
            .await
            .map_err(|e| backend(&format!("cannot reach the cluster at {shown}"), e))?;
        let js = jetstream::new(client.clone());
        let deadline = tokio::time::Instant::now() + STARTUP_PATIENCE;
        let mut replicas = 3;
        loop {
            match Self::setup(&client, &js, options, replicas).await {
                Ok(s) => return Ok(s),
                Err(Setup::NotClustered) if replicas > 1 => replicas = 1,
                Err(Setup::NotClustered) => {
                    return Err(StorageError::Backend("JetStream refused one replica".into()));
                }
                Err(Setup::Failed(e)) => {
                    if tokio::time::Instant::now() > deadline {
                        return Err(backend(&format!("JetStream at {shown}"), e));
                    }
                    tracing::info!(error = %e, "JetStream not ready yet; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    async fn setup(
        client: &async_nats::Client,
        js: &jetstream::Context,
        options: &ClusterOptions,
        replicas: usize,
    ) -> Result<Self, Setup> {
        let accounts = ensure_kv(js, ACCOUNTS, replicas).await?;
        let directory = ensure_kv(js, DIRECTORY, replicas).await?;
        let watches = ensure_kv(js, WATCHES, replicas).await?;
        let avatars = ensure_object_store(js, AVATARS, replicas, Duration::ZERO).await?;
        let blobs = ensure_object_store(js, BLOBS, replicas, options.blob_ttl).await?;
        let ttl = options.message_ttl;
        let config = stream::Config {
            name: MAILBOX_STREAM.into(),
            subjects: vec![format!("{MAILBOX_PREFIX}.>")],
            storage: stream::StorageType::File,
            num_replicas: replicas,
            retention: stream::RetentionPolicy::Limits,
            max_age: ttl,
            // One subject per (recipient, sender): the cap is one sender's share.
            max_messages_per_subject: i64::try_from(options.mailbox_max_messages.div_ceil(4))
                .unwrap_or(i64::MAX),
            discard: stream::DiscardPolicy::New,
            discard_new_per_subject: true,
            duplicate_window: DEDUPE_WINDOW.min(ttl),
            allow_direct: false,
            ..Default::default()
        };
        let mailbox = ensure_stream(js, config).await?;
        let prekeys = ensure_stream(
            js,
            stream::Config {
                name: PREKEYS_STREAM.into(),
                subjects: vec![format!("{PREKEYS_PREFIX}.>")],
                storage: stream::StorageType::File,
                num_replicas: replicas,
                // An upload retransmitted within the hour is not stored twice.
                duplicate_window: DEDUPE_WINDOW,
                allow_direct: false,
                ..Default::default()
            },
        )
        .await?;
        let reports = ensure_stream(
            js,
            stream::Config {
                name: REPORTS_STREAM.into(),
                subjects: vec![format!("{REPORTS_PREFIX}.>")],
                storage: stream::StorageType::File,
                num_replicas: replicas,
                max_age: options.report_ttl,
                duplicate_window: DEDUPE_WINDOW.min(options.report_ttl),
                allow_direct: false,
                ..Default::default()
            },
        )
        .await?;
        Ok(Self {
            inner: Arc::new(Inner {
                client: client.clone(),
                js: js.clone(),
                accounts,
                directory,
                watches,
                avatars,
                blobs,
                mailbox,
                prekeys,
                reports,
                replicas,
            }),
        })
    }

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
        Ok(read(&self.inner.accounts, &token(user_id)).await?.map(|(r, _)| r))
    }
}

/// Why setting up failed: a single server (retry with one replica) or anything else.
enum Setup {
    NotClustered,
    Failed(String),
}

impl Setup {
    fn from_error(e: impl std::fmt::Display) -> Self {
        let text = e.to_string();
        if text.contains("replicas > 1 not supported") || text.contains("non-clustered") {
            Self::NotClustered
        } else {
            Self::Failed(text)
        }
    }
}

/// A KV bucket whose reads go to the leader: the stream is made here rather than by
/// `create_key_value`, which turns on direct reads that a lagging replica may answer.
async fn ensure_kv(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
) -> Result<kv::Store, Setup> {
    let config = stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        max_messages_per_subject: 1,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: false,
        max_message_size: -1,
        max_bytes: -1,
        max_messages: -1,
        ..Default::default()
    };
    ensure_stream(js, config).await?;
    js.get_key_value(bucket).await.map_err(Setup::from_error)
}

/// The stream as configured: created when missing, its limits updated when a node
/// starts with other ones (every node of a relay should share its limits).
async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<stream::Stream, Setup> {
    match js.get_stream(&config.name).await {
        Ok(mut s) => {
            let current = s.info().await.map_err(Setup::from_error)?.config.clone();
            if current.max_age != config.max_age
                || current.max_messages_per_subject != config.max_messages_per_subject
                || current.duplicate_window != config.duplicate_window
            {
                let mut wanted = current;
                wanted.max_age = config.max_age;
                wanted.max_messages_per_subject = config.max_messages_per_subject;
                wanted.duplicate_window = config.duplicate_window;
                js.update_stream(wanted).await.map_err(Setup::from_error)?;
                return js.get_stream(&config.name).await.map_err(Setup::from_error);
            }
            Ok(s)
        }
        Err(_) => js.create_stream(config).await.map_err(Setup::from_error),
    }
}

// ---------------------------------------------------------------------------------------
// Records. Private to this back end: JSON in KV values, bytes as hex.

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AccountRec {
    password_hash: String,
    email: String,
    nickname: String,
    device_key: Option<String>,
    created_at: u64,
    updated_at: u64,
    avatar: Option<AvatarRec>,
}

/// `blocks.<user>`: whom the user blocks. Present exactly while the account exists, so
/// an enqueue learns both from one read.
/// Also whom the user has as contacts and whether it shares presence (the same record,
/// so an enqueue or a watch learns everything from one read).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct BlocksRec {
    all: bool,
    users: BTreeSet<String>,
    #[serde(default)]
    contacts: BTreeSet<String>,
    #[serde(default = "yes")]
    share_presence: bool,
}

impl Default for BlocksRec {
    fn default() -> Self {
        Self { all: false, users: BTreeSet::new(), contacts: BTreeSet::new(), share_presence: true }
    }
}

fn yes() -> bool {
    true
}

impl BlocksRec {
    fn blocks(&self) -> Blocks {
        Blocks { all: self.all, users: self.users.clone() }
    }

    fn contacts(&self) -> Contacts {
        Contacts { share_presence: self.share_presence, users: self.contacts.clone() }
    }

    fn refuses(&self, sender: &str) -> bool {
        self.all || self.users.contains(sender)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct AvatarRec {
    mime: String,
    sha256: String,
    size: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct DirectoryRec {
    device_key: Option<String>,
    identity: String,
    signed_prekey: Option<(u32, String)>,
    last_resort: Option<(u32, String)>,
}

impl DirectoryRec {
    fn for_device(device_key: Option<&String>) -> Self {
        Self { device_key: device_key.cloned(), ..Self::default() }
    }
}

fn unhex(s: &str) -> Result<Vec<u8>, StorageError> {
    hex::decode(s).map_err(|e| backend("stored record", e))
}

fn key32(s: Option<&String>) -> Result<Option<[u8; 32]>, StorageError> {
    match s {
        None => Ok(None),
        Some(s) => Ok(Some(
            <[u8; 32]>::try_from(unhex(s)?.as_slice())
                .map_err(|_| StorageError::Backend("stored device key".into()))?,
        )),
    }
}

fn prekey(p: Option<&(u32, String)>) -> Result<Option<PreKey>, StorageError> {
    p.map(|(id, key)| Ok(PreKey { id: *id, key: unhex(key)? })).transpose()
}

impl AccountRec {
    fn profile(&self, user_id: &str) -> Result<Profile, StorageError> {
        let avatar = match &self.avatar {
            Some(a) => Some(AvatarMeta {
                mime: a.mime.clone(),
                sha256: <[u8; 32]>::try_from(unhex(&a.sha256)?.as_slice())
                    .map_err(|_| StorageError::Backend("stored avatar hash".into()))?,
                size: a.size,
            }),
            None => None,
        };
        Ok(Profile {
            user_id: user_id.to_owned(),
            nickname: self.nickname.clone(),
            email: Some(self.email.clone()),
            avatar,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

/// The record under `key` and its revision; `None` when missing or deleted.
async fn read<T: DeserializeOwned>(
    store: &kv::Store,
    key: &str,
) -> Result<Option<(T, u64)>, StorageError> {
    match store.entry(key).await {
        Ok(Some(e)) if e.operation == kv::Operation::Put => {
            let v = serde_json::from_slice(&e.value).map_err(|e| backend("stored record", e))?;
            Ok(Some((v, e.revision)))
        }
        Ok(_) => Ok(None),
        Err(e) => Err(backend("reading a record", e)),
    }
}

/// What a read-modify-write decided.
enum Change<T, R> {
    /// Write `T` (if nobody wrote in between), then answer `R`.
    Put(T, R),
    /// Write nothing, answer `R`.
    Keep(R),
}

/// Read, decide, compare-and-set; again from the start when another writer came first.
async fn modify<T, R>(
    store: &kv::Store,
    key: &str,
    mut decide: impl FnMut(Option<T>) -> Result<Change<T, R>, StorageError>,
) -> Result<R, StorageError>
where
    T: Serialize + DeserializeOwned,
{
    for _ in 0..CAS_ATTEMPTS {
        let entry = store.entry(key).await.map_err(|e| backend("reading a record", e))?;
        let revision = entry.as_ref().map(|e| e.revision);
        let current = match entry {
            Some(e) if e.operation == kv::Operation::Put => {
                Some(serde_json::from_slice(&e.value).map_err(|e| backend("stored record", e))?)
            }
            _ => None,
        };
        let (value, answer) = match decide(current)? {
            Change::Keep(r) => return Ok(r),
            Change::Put(v, r) => (v, r),
        };
        let bytes = Bytes::from(serde_json::to_vec(&value).map_err(|e| backend("record", e))?);
        let written = match revision {
            Some(rev) => store.update(key, bytes, rev).await.map_err(|e| {
                if e.kind() == kv::UpdateErrorKind::WrongLastRevision {
                    None
                } else {
                    Some(e.to_string())
                }
            }),
            None => store.create(key, bytes).await.map_err(|e| {
                if e.kind() == kv::CreateErrorKind::AlreadyExists {
                    None
                } else {
                    Some(e.to_string())
                }
            }),
        };
        match written {
            Ok(_) => return Ok(answer),
            // Someone else wrote first: decide again on what they wrote.
            Err(None) => {}
            Err(Some(e)) => return Err(backend("writing a record", e)),
        }
    }
    Err(StorageError::Backend(format!("record {key}: too much contention")))
}

/// Writes `value` under `key` whatever was there.
async fn put<T: Serialize>(store: &kv::Store, key: &str, value: &T) -> Result<(), StorageError> {
    let bytes = Bytes::from(serde_json::to_vec(value).map_err(|e| backend("record", e))?);
    store.put(key, bytes).await.map_err(|e| backend("writing a record", e))?;
    Ok(())
}

/// Removes every revision of `key` and its delete marker from the bucket's stream, so
/// no message (not even a subject) names it any more.
async fn erase(store: &kv::Store, key: &str) -> Result<(), StorageError> {
    store
        .stream
        .purge()
        .filter(format!("{}{key}", store.prefix))
        .await
        .map_err(|e| backend("erasing a record", e))?;
    Ok(())
}

/// URL-safe base64 with padding: how the object store names an object's metadata subject.
fn base64_url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Adds or removes `member` in the set under `key`.
async fn set_member(
    store: &kv::Store,
    key: &str,
    member: &str,
    present: bool,
) -> Result<(), StorageError> {
    modify(store, key, |set: Option<BTreeSet<String>>| {
        let mut set = set.unwrap_or_default();
        let changed = if present { set.insert(member.to_owned()) } else { set.remove(member) };
        Ok(if changed { Change::Put(set, ()) } else { Change::Keep(()) })
    })
    .await
}

/// The duplicate-window id of a message: one per (sender, recipient, msg id).
fn dedupe_id(e: &Envelope) -> String {
    hex::encode(super::dedupe_id(&e.sender, &e.recipient, &e.msg_id))
}

fn header<'a>(m: &'a jetstream::message::StreamMessage, name: &str) -> Option<&'a str> {
    m.headers.get(name).map(async_nats::HeaderValue::as_str)
}

impl NatsStorage {
    /// Drops every one-time prekey of the account (its device is gone).
    async fn purge_one_time(&self, user_id: &str) -> Result<(), StorageError> {
        self.inner
            .prekeys
            .purge()
            .filter(prekeys_subject(user_id))
            .await
            .map_err(|e| backend("purging prekeys", e))?;
        Ok(())
    }

    /// Takes the oldest one-time prekey of `device`: reads it, then deletes it by its
    /// sequence. The stream applies deletes in one order on every replica and only the
    /// first delete of a sequence succeeds, so each key goes to one taker however many
    /// nodes race (compare-and-set on a KV revision is not exact under concurrency on
    /// the nats-server 2.9 that Debian ships; this is).
    async fn claim_one_time(
        &self,
        user_id: &str,
        device: &str,
    ) -> Result<Option<PreKey>, StorageError> {
        let subject = prekeys_subject(user_id);
        let prekeys = &self.inner.prekeys;
        let mut next = 1u64;
        for _ in 0..CAS_ATTEMPTS {
            let got = prekeys
                .raw_message_builder()
                .sequence(next)
                .next_by_subject(subject.clone())
                .send()
                .await;
            let m = match got {
                Ok(m) => m,
                Err(e) if matches!(e.kind(), stream::RawMessageErrorKind::NoMessageFound) => {
                    return Ok(None);
                }
                Err(e) => return Err(backend("reading prekeys", e)),
            };
            next = m.sequence.saturating_add(1);
            let won = match prekeys.delete_message(m.sequence).await {
                Ok(won) => won,
                Err(e) if e.to_string().contains("no message found") => false,
                Err(e) => return Err(backend("taking a prekey", e)),
            };
            if !won {
                continue;
            }
            let id = header(&m, H_KEY_ID).and_then(|v| v.parse().ok());
            match id {
                // A key of a device that is gone (uploaded in a race with a login) is
                // deleted and skipped.
                Some(id) if header(&m, H_DEVICE) == Some(device) => {
                    return Ok(Some(PreKey { id, key: m.payload.to_vec() }));
                }
                _ => {}
            }
        }
        Err(StorageError::Backend("prekeys: too much contention".into()))
    }

    /// Publishes `envelopes` (one recipient, already checked) in order and waits for
    /// every acknowledgement; the first refusal or failure is the answer.
    async fn publish_in_order(
        &self,
        envelopes: Vec<Envelope>,
        from_contact: bool,
    ) -> Result<Vec<Enqueued>, StorageError> {
        let mut acks = Vec::with_capacity(envelopes.len());
        for e in &envelopes {
            let publish = jetstream::message::PublishMessage::build()
                .payload(e.body.clone())
                .message_id(dedupe_id(e))
                .header(H_FROM, e.sender.as_str())
                .header(H_MSG_ID, e.msg_id.as_str())
                .header(H_TS, e.now.to_string().as_str());
            let ack = self
                .inner
                .js
                .send_publish(mailbox_subject(&e.recipient, &e.sender, from_contact), publish)
                .await
                .map_err(publish_error)?;
            acks.push((ack, e.now));
        }
        let mut out = Vec::with_capacity(acks.len());
        let mut first_error = None;
        // Every acknowledgement is awaited, so none is left behind; the first error wins.
        for (ack, now) in acks {
            match ack.await {
                Ok(a) => out.push(Enqueued { server_ts: now, duplicate: a.duplicate }),
                Err(e) => {
                    if first_error.is_none() {
                        first_error = Some(publish_error(e));
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Erases the metadata message a deleted object leaves behind (it carries the name).
    async fn erase_object_meta(&self, bucket: &str, name: &str) -> Result<(), StorageError> {
        let stream = self
            .inner
            .js
            .get_stream(format!("OBJ_{bucket}"))
            .await
            .map_err(|e| backend("object store", e))?;
        stream
            .purge()
            .filter(format!("$O.{bucket}.M.{}", base64_url(name.as_bytes())))
            .await
            .map_err(|e| backend("erasing an object", e))?;
        Ok(())
    }

    /// Up to `limit` messages on `subject` (a filter) with a sequence above `after`.
    async fn pending_on(
        &self,
        subject: String,
        after: u64,
        limit: u32,
    ) -> Result<Vec<Queued>, StorageError> {
        let mut out = Vec::new();
        let mut next = after.saturating_add(1);
        while out.len() < limit as usize {
            let got = self
                .inner
                .mailbox
                .raw_message_builder()
                .sequence(next)
                .next_by_subject(subject.clone())
                .send()
                .await;
            let m = match got {
                Ok(m) => m,
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => break,
                Err(e) => return Err(backend("reading a mailbox", e)),
            };
            next = m.sequence.saturating_add(1);
            let (Some(sender), Some(msg_id)) = (header(&m, H_FROM), header(&m, H_MSG_ID)) else {
                tracing::warn!(seq = m.sequence, "mailbox message without its headers: skipped");
                continue;
            };
            let server_ts = header(&m, H_TS).and_then(|t| t.parse().ok()).unwrap_or(0);
            out.push(Queued {
                delivery_id: m.sequence,
                sender: sender.to_owned(),
                msg_id: msg_id.to_owned(),
                server_ts,
                body: m.payload.to_vec(),
            });
        }
        Ok(out)
    }

    /// Checks that `recipient` exists and accepts `sender`, and that `adding` more
    /// messages fit in the mailbox and in the strangers' share (the per-sender share is
    /// the stream's per-subject cap); returns whether `sender` is a contact. The counts
    /// are read before publishing, so racing senders may overshoot the total and the
    /// strangers' share by the messages in flight; the per-sender cap is exact.
    async fn check_recipient(
        &self,
        recipient: &str,
        sender: &str,
        adding: u64,
        quota: Quota,
    ) -> Result<bool, StorageError> {
        let blocks: Option<(BlocksRec, u64)> =
            read(&self.inner.accounts, &blocks_key(recipient)).await?;
        let from_contact = match blocks {
            None => return Err(StorageError::NotFound),
            Some((b, _)) if b.refuses(sender) => return Err(StorageError::Blocked),
            Some((b, _)) => b.contacts.contains(sender),
        };
        let mut subjects = self
            .inner
            .mailbox
            .clone()
            .info_with_subjects(mailbox_filter(recipient))
            .await
            .map_err(|e| backend("counting a mailbox", e))?;
        let strangers_prefix = format!("{MAILBOX_PREFIX}.{}.s.", token(recipient));
        let (mut total, mut strangers) = (0u64, 0u64);
        while let Some(item) = futures::StreamExt::next(&mut subjects).await {
            let (subject, n) = item.map_err(|e| backend("counting a mailbox", e))?;
            total += n as u64;
            if subject.starts_with(&strangers_prefix) {
                strangers += n as u64;
            }
        }
        if total + adding > quota.max_messages
            || (!from_contact && strangers + adding > quota.stranger_share().0)
        {
            return Err(StorageError::QuotaExceeded);
        }
        Ok(from_contact)
    }
}

/// Opens object store `bucket`, creating it (`max_age` zero: kept until deleted).
async fn ensure_object_store(
    js: &jetstream::Context,
    bucket: &str,
    replicas: usize,
    max_age: Duration,
) -> Result<object_store::ObjectStore, Setup> {
    match js.get_object_store(bucket).await {
        Ok(s) => Ok(s),
        Err(_) => js
            .create_object_store(object_store::Config {
                bucket: bucket.into(),
                storage: stream::StorageType::File,
                num_replicas: replicas,
                max_age,
                ..Default::default()
            })
            .await
            .map_err(Setup::from_error),
    }
}

fn publish_error(e: jetstream::context::PublishError) -> StorageError {
    let text = e.to_string();
    if text.contains("maximum messages per subject") {
        StorageError::QuotaExceeded
    } else {
        backend("storing a message", text)
    }
}

impl Storage for NatsStorage {
    async fn create_account(&self, a: NewAccount) -> Result<(), StorageError> {
        let key = token(&a.user_id);
        let device = hex::encode(a.device_key);
        let rec = AccountRec {
            password_hash: a.password_hash,
            email: a.email,
            nickname: a.nickname,
            device_key: Some(device.clone()),
            created_at: a.now,
            updated_at: a.now,
            avatar: None,
        };
        let mut rec = Some(rec);
        modify(&self.inner.accounts, &key, |cur: Option<AccountRec>| match (cur, rec.take()) {
            (Some(_), _) => Err(StorageError::Conflict),
            (None, Some(r)) => Ok(Change::Put(r, ())),
            (None, None) => Err(StorageError::Backend("account record retried".into())),
        })
        .await?;
        let dir = DirectoryRec {
            device_key: Some(device),
            identity: hex::encode(&a.identity),
            ..DirectoryRec::default()
        };
        put(&self.inner.directory, &key, &dir).await?;
        put(&self.inner.accounts, &blocks_key(&a.user_id), &BlocksRec::default()).await?;
        Ok(())
    }

    async fn credentials(&self, user_id: &str) -> Result<Option<Credentials>, StorageError> {
        match self.account(user_id).await? {
            None => Ok(None),
            Some(a) => Ok(Some(Credentials {
                device_key: key32(a.device_key.as_ref())?,
                password_hash: a.password_hash,
            })),
        }
    }

    async fn bind_device(
        &self,
        user_id: &str,
        device_key: Option<[u8; 32]>,
    ) -> Result<(), StorageError> {
        let key = token(user_id);
        let wanted = device_key.map(hex::encode);
        let changed = modify(&self.inner.accounts, &key, |cur: Option<AccountRec>| {
            let mut a = cur.ok_or(StorageError::NotFound)?;
            if a.device_key == wanted {
                return Ok(Change::Keep(false));
            }
            a.device_key.clone_from(&wanted);
            Ok(Change::Put(a, true))
        })
        .await?;
        if changed {
            // The old device's keys go with it. The record names its device, so a reader
            // in between sees the old device's complete bundle, never a mixture.
            self.purge_one_time(user_id).await?;
            put(&self.inner.directory, &key, &DirectoryRec::for_device(wanted.as_ref())).await?;
        }
        Ok(())
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
        let key = token(user_id);
        let inner = &self.inner;
        // Erased, not just purged: a purge leaves a marker whose subject names the key.
        erase(&inner.accounts, &key).await?;
        erase(&inner.accounts, &blocks_key(user_id)).await?;
        erase(&inner.accounts, &seen_key(user_id)).await?;
        erase(&inner.directory, &key).await?;
        self.purge_one_time(user_id).await?;
        // Watches both ways, like the embedded back end's cascades.
        let watched: BTreeSet<String> =
            read(&inner.watches, &format!("by.{key}")).await?.map(|(s, _)| s).unwrap_or_default();
        for w in &watched {
            set_member(&inner.watches, &format!("of.{}", token(w)), user_id, false).await?;
        }
        let watchers: BTreeSet<String> =
            read(&inner.watches, &format!("of.{key}")).await?.map(|(s, _)| s).unwrap_or_default();
        for w in &watchers {
            set_member(&inner.watches, &format!("by.{}", token(w)), user_id, false).await?;
        }
        erase(&inner.watches, &format!("by.{key}")).await?;
        erase(&inner.watches, &format!("of.{key}")).await?;
        // Its mailbox, and what it sent that is still queued for others (it names the
        // account); then its reports.
        let t = token(user_id);
        for filter in [
            mailbox_filter(user_id),
            legacy_mailbox_subject(user_id),
            format!("{MAILBOX_PREFIX}.*.c.{t}"),
            format!("{MAILBOX_PREFIX}.*.s.{t}"),
        ] {
            inner
                .mailbox
                .purge()
                .filter(filter)
                .await
                .map_err(|e| backend("purging a mailbox", e))?;
        }
        inner
            .reports
            .purge()
            .filter(format!("{REPORTS_PREFIX}.*.{t}"))
            .await
            .map_err(|e| backend("purging reports", e))?;
        let _ = inner.avatars.delete(key.as_str()).await;
        self.erase_object_meta(AVATARS, &key).await?;
        // Its file blobs (`<blob id hex>-<owner>`, the owner compared whole).
        let mut owned = Vec::new();
        {
            let mut list = inner.blobs.list().await.map_err(|e| backend("listing blobs", e))?;
            while let Some(info) = futures::StreamExt::next(&mut list).await {
                let info = info.map_err(|e| backend("listing blobs", e))?;
                if info.name.split_once('-').is_some_and(|(_, o)| o == user_id) {
                    owned.push(info.name);
                }
            }
        }
        for name in owned {
            let _ = inner.blobs.delete(name.as_str()).await;
            self.erase_object_meta(BLOBS, &name).await?;
        }
        Ok(())
    }

    async fn profile(&self, user_id: &str) -> Result<Option<Profile>, StorageError> {
        self.account(user_id).await?.map(|a| a.profile(user_id)).transpose()
    }

    async fn update_profile(
        &self,
        user_id: &str,
        u: ProfileUpdate,
    ) -> Result<Profile, StorageError> {
        let key = token(user_id);
        let avatar = match &u.avatar {
            AvatarUpdate::Keep => None,
            AvatarUpdate::Remove => Some(None),
            AvatarUpdate::Set(a) => {
                if self.account(user_id).await?.is_none() {
                    return Err(StorageError::NotFound);
                }
                // The bytes first: a record never names an avatar that is not stored.
                self.inner
                    .avatars
                    .put(key.as_str(), &mut a.data.as_slice())
                    .await
                    .map_err(|e| backend("storing the avatar", e))?;
                Some(Some(AvatarRec {
                    mime: a.mime.clone(),
                    sha256: hex::encode(Sha256::digest(&a.data)),
                    size: u32::try_from(a.data.len()).unwrap_or(u32::MAX),
                }))
            }
        };
        let profile = modify(&self.inner.accounts, &key, |cur: Option<AccountRec>| {
            let mut a = cur.ok_or(StorageError::NotFound)?;
            if let Some(n) = &u.nickname {
                a.nickname.clone_from(n);
            }
            if let Some(e) = &u.email {
                a.email.clone_from(e);
            }
            if let Some(av) = &avatar {
                a.avatar.clone_from(av);
            }
            a.updated_at = u.now;
            let p = a.profile(user_id)?;
            Ok(Change::Put(a, p))
        })
        .await?;
        if matches!(u.avatar, AvatarUpdate::Remove) {
            let _ = self.inner.avatars.delete(key.as_str()).await;
        }
        Ok(profile)
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

    async fn upload_keys(&self, user_id: &str, k: KeyUpload) -> Result<u32, StorageError> {
        let account = self.account(user_id).await?.ok_or(StorageError::NotFound)?;
        let device = account.device_key;
        let key = token(user_id);
        // The record is written by the account's own device only (and by a login that
        // replaces it): a plain read and put.
        let current: Option<(DirectoryRec, u64)> = read(&self.inner.directory, &key).await?;
        let mut d = match current {
            Some((d, _)) if d.device_key == device => d,
            _ => DirectoryRec::for_device(device.as_ref()),
        };
        if let Some(identity) = &k.identity {
            d.identity = hex::encode(identity);
        }
        if let Some(p) = &k.signed_prekey {
            d.signed_prekey = Some((p.id, hex::encode(&p.key)));
        }
        if let Some(p) = &k.last_resort {
            d.last_resort = Some((p.id, hex::encode(&p.key)));
        }
        put(&self.inner.directory, &key, &d).await?;
        let device = device.unwrap_or_default();
        let mut acks = Vec::with_capacity(k.one_time.len());
        for p in &k.one_time {
            let mut h = Sha256::new();
            h.update(user_id.as_bytes());
            h.update([0]);
            h.update(device.as_bytes());
            h.update(p.id.to_be_bytes());
            let publish = jetstream::message::PublishMessage::build()
                .payload(Bytes::from(p.key.clone()))
                .message_id(hex::encode(&h.finalize()[..16]))
                .header(H_KEY_ID, p.id.to_string().as_str())
                .header(H_DEVICE, device.as_str());
            let ack = self
                .inner
                .js
                .send_publish(prekeys_subject(user_id), publish)
                .await
                .map_err(|e| backend("storing a prekey", e))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(|e| backend("storing a prekey", e))?;
        }
        self.one_time_count(user_id).await
    }

    async fn one_time_count(&self, user_id: &str) -> Result<u32, StorageError> {
        use futures::TryStreamExt;
        let subject = prekeys_subject(user_id);
        let mut subjects = self
            .inner
            .prekeys
            .info_with_subjects(&subject)
            .await
            .map_err(|e| backend("counting prekeys", e))?;
        let mut n = 0;
        while let Some((s, count)) =
            subjects.try_next().await.map_err(|e| backend("counting prekeys", e))?
        {
            if s == subject {
                n += count;
            }
        }
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    async fn take_bundle(&self, user_id: &str) -> Result<Option<Bundle>, StorageError> {
        let d: Option<(DirectoryRec, u64)> = read(&self.inner.directory, &token(user_id)).await?;
        let Some((d, _)) = d else { return Ok(None) };
        let Some(device_key) = key32(d.device_key.as_ref())? else { return Ok(None) };
        let mut bundle = Bundle {
            user_id: user_id.to_owned(),
            device_key,
            identity: unhex(&d.identity)?,
            signed_prekey: prekey(d.signed_prekey.as_ref())?,
            one_time_prekey: None,
            last_resort: false,
        };
        match self.claim_one_time(user_id, d.device_key.as_deref().unwrap_or_default()).await? {
            Some(p) => bundle.one_time_prekey = Some(p),
            None => {
                bundle.one_time_prekey = prekey(d.last_resort.as_ref())?;
                bundle.last_resort = bundle.one_time_prekey.is_some();
            }
        }
        Ok(Some(bundle))
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

    async fn set_last_seen(&self, user_id: &str, at: u64) -> Result<(), StorageError> {
        if self.account(user_id).await?.is_none() {
            return Ok(());
        }
        put(&self.inner.accounts, &seen_key(user_id), &at).await
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
        let Some(first) = envelopes.first() else { return Ok(Vec::new()) };
        let adding = envelopes.len() as u64;
        let from_contact =
            self.check_recipient(&first.recipient, &first.sender, adding, quota).await?;
        self.publish_in_order(envelopes, from_contact).await
    }

    async fn enqueue_fanout(
        &self,
        envelopes: Vec<Envelope>,
        quota: Quota,
    ) -> Result<Vec<Result<Enqueued, StorageError>>, StorageError> {
        let one = |e: Envelope| async move {
            let from_contact = self.check_recipient(&e.recipient, &e.sender, 1, quota).await?;
            let mut done = self.publish_in_order(vec![e], from_contact).await?;
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
        after: u64,
        limit: u32,
    ) -> Result<Vec<Queued>, StorageError> {
        let mut out = self.pending_on(mailbox_filter(recipient), after, limit).await?;
        // An upgrade's leftovers, merged in delivery order.
        out.extend(self.pending_on(legacy_mailbox_subject(recipient), after, limit).await?);
        out.sort_by_key(|m| m.delivery_id);
        out.truncate(limit as usize);
        Ok(out)
    }

    async fn ack(&self, recipient: &str, delivery_ids: Vec<u64>) -> Result<u64, StorageError> {
        let own = format!("{MAILBOX_PREFIX}.{}.", token(recipient));
        let legacy = legacy_mailbox_subject(recipient);
        let mailbox = &self.inner.mailbox;
        let one = |seq: u64| {
            let (own, legacy) = (&own, &legacy);
            async move {
                // A device can only delete its own mail: the subject is checked first.
                match mailbox.get_raw_message(seq).await {
                    Ok(m)
                        if m.subject.as_str().starts_with(own.as_str())
                            || m.subject.as_str() == legacy.as_str() => {}
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
        // The stream's max_age expires messages and the duplicate window forgets ids:
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
mod tests {
    //! Against real `nats-server` processes on loopback (installed by `.ci/run`; a
    //! missing server fails these tests with the command that installs it).
    use super::*;
    use crate::testing::NatsCluster;

    const QUOTA: Quota = Quota { max_messages: 100, max_bytes: 1 << 20 };

    fn options(max: u64) -> ClusterOptions {
        ClusterOptions {
            node_id: "test".into(),
            message_ttl: Duration::from_secs(3600),
            mailbox_max_messages: max,
            report_ttl: Duration::from_secs(86_400),
            blob_ttl: Duration::from_secs(3600),
        }
    }

    async fn one_server(max: u64) -> (tempfile::TempDir, NatsCluster, NatsStorage) {
        let dir = tempfile::tempdir().unwrap();
        let nats = NatsCluster::start(dir.path(), 1).unwrap();
        let s = NatsStorage::connect(&nats.url(), &options(max)).await.unwrap();
        (dir, nats, s)
    }

    fn account(user_id: &str) -> NewAccount {
        NewAccount {
            user_id: user_id.into(),
            password_hash: "$argon2id$x".into(),
            email: "a@b.c".into(),
            nickname: "A".into(),
            device_key: [1; 32],
            identity: vec![7],
            now: 1,
        }
    }

    fn envelope(msg_id: &str, now: u64) -> Envelope {
        Envelope {
            sender: "alice".into(),
            recipient: "bob".into(),
            msg_id: msg_id.into(),
            body: vec![1, 2, 3].into(),
            now,
        }
    }

    fn ids(q: &[Queued]) -> Vec<&str> {
        q.iter().map(|m| m.msg_id.as_str()).collect()
    }

    #[tokio::test]
    async fn reports_are_kept_once_per_id() {
        let (_dir, nats, s) = one_server(100).await;
        let report = |id: &str| Report {
            id: id.into(),
            user_id: "alice".into(),
            kind: letstalk_wire::ReportKind::Feedback,
            body: b"{}".to_vec(),
            now: 5,
        };
        s.store_report(report("r1")).await.unwrap();
        s.store_report(report("r1")).await.unwrap();
        s.store_report(report("r2")).await.unwrap();
        assert_eq!(s.reports_len().await.unwrap(), 2);
        drop(nats);
    }

    #[tokio::test]
    async fn accounts_and_the_directory_behave_like_the_embedded_back_end() {
        let (_dir, nats, s) = one_server(100).await;
        assert_eq!(s.replicas(), 1);
        s.create_account(account("alice")).await.unwrap();
        assert!(matches!(s.create_account(account("alice")).await, Err(StorageError::Conflict)));
        let c = s.credentials("alice").await.unwrap().unwrap();
        assert_eq!((c.password_hash.as_str(), c.device_key), ("$argon2id$x", Some([1; 32])));
        assert!(s.credentials("nobody").await.unwrap().is_none());
        s.set_password_hash("alice", "$argon2id$y".into()).await.unwrap();
        assert!(matches!(
            s.set_password_hash("nobody", "h".into()).await,
            Err(StorageError::NotFound)
        ));

        let keys = KeyUpload {
            identity: Some(vec![9]),
            signed_prekey: Some(PreKey { id: 1, key: vec![1] }),
            one_time: vec![PreKey { id: 3, key: vec![3] }, PreKey { id: 2, key: vec![2] }],
            last_resort: Some(PreKey { id: 4, key: vec![4] }),
        };
        assert_eq!(s.upload_keys("alice", keys).await.unwrap(), 2);
        s.bind_device("alice", Some([1; 32])).await.unwrap();
        assert_eq!(s.one_time_count("alice").await.unwrap(), 2, "same device keeps its keys");
        // Oldest upload first (the embedded back end takes the lowest id: the daemon
        // uploads ids in increasing order, so the two agree), then the last-resort key.
        let mut got = Vec::new();
        for _ in 0..3 {
            let b = s.take_bundle("alice").await.unwrap().unwrap();
            assert_eq!((b.identity.as_slice(), b.device_key), (&[9u8][..], [1; 32]));
            got.push((b.one_time_prekey.unwrap().id, b.last_resort));
        }
        assert_eq!(got, [(3, false), (2, false), (4, true)]);

        s.bind_device("alice", Some([2; 32])).await.unwrap();
        let b = s.take_bundle("alice").await.unwrap().unwrap();
        assert_eq!((b.identity.len(), b.signed_prekey, b.one_time_prekey), (0, None, None));
        s.bind_device("alice", None).await.unwrap();
        assert!(s.take_bundle("alice").await.unwrap().is_none());
        assert!(s.take_bundle("nobody").await.unwrap().is_none());

        // Profile and avatar.
        let avatar = Avatar { mime: "image/png".into(), data: vec![5; 2_000_000] };
        let p = s
            .update_profile(
                "alice",
                ProfileUpdate {
                    nickname: Some("Alice".into()),
                    email: None,
                    avatar: AvatarUpdate::Set(avatar),
                    now: 5,
                },
            )
            .await
            .unwrap();
        assert_eq!((p.nickname.as_str(), p.updated_at), ("Alice", 5));
        assert_eq!(p.avatar.as_ref().map(|a| a.size), Some(2_000_000));
        assert_eq!(s.avatar("alice").await.unwrap().unwrap().data.len(), 2_000_000);

        // Everything survives a new connection (another node, or a restart).
        let again = NatsStorage::connect(&nats.url(), &options(100)).await.unwrap();
        assert_eq!(again.profile("alice").await.unwrap().unwrap().nickname, "Alice");
        again.delete_account("alice").await.unwrap();
        assert!(s.profile("alice").await.unwrap().is_none());
        assert!(s.avatar("alice").await.unwrap().is_none());
        s.create_account(account("alice")).await.unwrap();
    }

    #[tokio::test]
    async fn concurrent_takers_on_three_nodes_get_each_one_time_prekey_once() {
        const SERVERS: usize = 3;
        let dir = tempfile::tempdir().unwrap();
        let nats = NatsCluster::start(dir.path(), SERVERS).unwrap();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let url = format!("nats://127.0.0.1:{}", nats.servers[i % SERVERS].port);
            nodes.push(NatsStorage::connect(&url, &options(100)).await.unwrap());
        }
        assert_eq!(nodes[0].replicas(), SERVERS);
        nodes[0].create_account(account("bob")).await.unwrap();
        let keys = KeyUpload {
            one_time: (1..=30).map(|id| PreKey { id, key: vec![1] }).collect(),
            last_resort: Some(PreKey { id: 99, key: vec![9] }),
            ..KeyUpload::default()
        };
        nodes[1].upload_keys("bob", keys).await.unwrap();
        let takers = (0..40).map(|i| {
            let s = nodes[i % 3].clone();
            async move { s.take_bundle("bob").await.unwrap().unwrap() }
        });
        let bundles = futures::future::join_all(takers).await;
        let mut one_time: Vec<u32> = bundles
            .iter()
            .filter(|b| !b.last_resort)
            .map(|b| b.one_time_prekey.as_ref().unwrap().id)
            .collect();
        one_time.sort_unstable();
        assert_eq!(one_time, (1..=30).collect::<Vec<_>>(), "each key once");
        assert_eq!(bundles.iter().filter(|b| b.last_resort).count(), 10);
    }

    #[tokio::test]
    async fn mailboxes_keep_order_dedupe_delete_on_ack_and_cap_per_device() {
        // Three per sender (a quarter of twelve).
        let (_dir, _nats, s) = one_server(12).await;
        for u in ["alice", "bob", "carol", "dot.ted"] {
            s.create_account(account(u)).await.unwrap();
        }
        let done =
            s.enqueue_many(vec![envelope("m1", 10), envelope("m2", 11)], QUOTA).await.unwrap();
        assert!(done.iter().all(|d| !d.duplicate));
        // A retransmit is acknowledged again, never stored twice.
        assert!(s.enqueue(envelope("m1", 12), QUOTA).await.unwrap().duplicate);
        s.enqueue(envelope("m3", 13), QUOTA).await.unwrap();
        // The sender's share (3 here) refuses the next message, keeps the accepted ones,
        // and still recognises a retransmit.
        assert!(matches!(
            s.enqueue(envelope("m4", 14), QUOTA).await,
            Err(StorageError::QuotaExceeded)
        ));
        assert!(s.enqueue(envelope("m3", 15), QUOTA).await.unwrap().duplicate);
        let q = s.pending("bob", 0, 10).await.unwrap();
        assert_eq!(ids(&q), ["m1", "m2", "m3"]);
        assert_eq!(
            (q[0].sender.as_str(), q[0].server_ts, q[0].body.as_slice()),
            ("alice", 10, &[1u8, 2, 3][..])
        );
        assert_eq!(ids(&s.pending("bob", q[0].delivery_id, 1).await.unwrap()), ["m2"]);
        // Someone else's acknowledgement deletes nothing; the recipient's does.
        assert_eq!(s.ack("carol", vec![q[0].delivery_id]).await.unwrap(), 0);
        assert_eq!(
            s.ack("bob", vec![q[0].delivery_id, q[1].delivery_id, 999_999]).await.unwrap(),
            2
        );
        assert_eq!(ids(&s.pending("bob", 0, 10).await.unwrap()), ["m3"]);
        assert_eq!(s.mailbox_len().await.unwrap(), 1);
        s.enqueue(envelope("m4", 16), QUOTA).await.unwrap();
        // A user id with a dot is one subject token.
        let to_ted = Envelope { recipient: "dot.ted".into(), ..envelope("t1", 17) };
        s.enqueue(to_ted, QUOTA).await.unwrap();
        assert_eq!(ids(&s.pending("dot.ted", 0, 10).await.unwrap()), ["t1"]);
        assert!(matches!(
            s.enqueue(Envelope { recipient: "nobody".into(), ..envelope("x", 1) }, QUOTA).await,
            Err(StorageError::NotFound)
        ));
        // Deleting the account empties its mailbox.
        s.delete_account("bob").await.unwrap();
        assert!(s.pending("bob", 0, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn blocks_refuse_messages_hide_presence_and_fan_out_per_recipient() {
        let (_dir, _nats, s) = one_server(100).await;
        for u in ["alice", "bob", "carol"] {
            s.create_account(account(u)).await.unwrap();
        }
        let blocks = Blocks { all: false, users: ["alice".to_owned()].into() };
        assert_eq!(s.set_blocks("bob", blocks.clone()).await.unwrap(), Blocks::default());
        assert_eq!(s.blocks("bob").await.unwrap(), blocks);
        assert!(matches!(s.enqueue(envelope("m1", 1), QUOTA).await, Err(StorageError::Blocked)));
        s.set_last_seen("carol", 42).await.unwrap();
        // Presence needs consent: carol has alice as a contact (bob too, but blocks win).
        for u in ["bob", "carol"] {
            let contacts = Contacts { share_presence: true, users: ["alice".to_owned()].into() };
            s.set_contacts(u, contacts).await.unwrap();
        }
        let seen = s
            .watch("alice", vec!["bob".into(), "carol".into(), "nobody".into()], vec![])
            .await
            .unwrap();
        assert_eq!(
            seen.iter().map(|p| (p.user_id.as_str(), p.hidden, p.last_seen_at)).collect::<Vec<_>>(),
            [("bob", true, 0), ("carol", false, 42)]
        );
        assert_eq!(s.watchers("carol").await.unwrap(), ["alice"]);
        let fan = ["bob", "carol"]
            .map(|to| Envelope { recipient: to.into(), ..envelope("g1", 2) })
            .to_vec();
        let out = s.enqueue_fanout(fan, QUOTA).await.unwrap();
        assert!(matches!(out[0], Err(StorageError::Blocked)));
        assert!(out[1].as_ref().is_ok_and(|d| !d.duplicate));
        assert_eq!(s.mailbox_len().await.unwrap(), 1);
        s.set_blocks("bob", Blocks::default()).await.unwrap();
        assert!(s.enqueue(envelope("m1", 4), QUOTA).await.is_ok());
        assert!(matches!(
            s.set_blocks("nobody", Blocks::default()).await,
            Err(StorageError::NotFound)
        ));
        // Unwatching, and deleting the watcher, clean up both directions.
        s.watch("alice", vec![], vec!["carol".into()]).await.unwrap();
        assert!(s.watchers("carol").await.unwrap().is_empty());
        s.delete_account("alice").await.unwrap();
        assert!(s.watchers("bob").await.unwrap().is_empty());
    }

    #[test]
    fn object_names_are_encoded_like_the_object_store_does() {
        assert_eq!(base64_url(b"dora"), "ZG9yYQ==");
        assert_eq!(base64_url(b"ab-c?"), "YWItYz8=");
        assert_eq!(base64_url(b"abc"), "YWJj");
    }

    #[tokio::test]
    async fn strangers_fill_only_their_share_and_contacts_still_get_through() {
        let (_dir, _nats, s) = one_server(8).await;
        for u in ["victim", "friend", "mallory", "mallory2"] {
            s.create_account(account(u)).await.unwrap();
        }
        let contacts = Contacts { share_presence: true, users: ["friend".to_owned()].into() };
        s.set_contacts("victim", contacts).await.unwrap();
        let quota = Quota { max_messages: 8, max_bytes: 1 << 20 };
        let to_victim = |from: &str, id: &str| Envelope {
            sender: from.into(),
            recipient: "victim".into(),
            ..envelope(id, 1)
        };
        // Two (a quarter of eight) from all strangers together.
        s.enqueue(to_victim("mallory", "a"), quota).await.unwrap();
        s.enqueue(to_victim("mallory", "b"), quota).await.unwrap();
        for (from, id) in [("mallory", "c"), ("mallory2", "d")] {
            assert!(matches!(
                s.enqueue(to_victim(from, id), quota).await,
                Err(StorageError::QuotaExceeded)
            ));
        }
        // The contact has its own share.
        s.enqueue(to_victim("friend", "e"), quota).await.unwrap();
        s.enqueue(to_victim("friend", "f"), quota).await.unwrap();
        assert!(matches!(
            s.enqueue(to_victim("friend", "g"), quota).await,
            Err(StorageError::QuotaExceeded)
        ));
        assert_eq!(ids(&s.pending("victim", 0, 10).await.unwrap()), ["a", "b", "e", "f"]);
    }

    /// Every message of every stream (KV buckets and object stores are streams too)
    /// whose subject, headers or payload contain `needle`, but for those whose payload
    /// contains `except`.
    async fn messages_naming(s: &NatsStorage, needle: &[u8], except: &[u8]) -> Vec<String> {
        use futures::StreamExt;
        let js = &s.inner.js;
        let mut found = Vec::new();
        let names: Vec<String> = js.stream_names().map(|n| n.unwrap()).collect().await;
        for name in names {
            let stream = js.get_stream(&name).await.unwrap();
            let state = stream.cached_info().state.clone();
            for seq in state.first_sequence..=state.last_sequence {
                let Ok(m) = stream.get_raw_message(seq).await else { continue };
                let headers = format!("{:?}", m.headers);
                let has = |b: &[u8], n: &[u8]| b.windows(n.len()).any(|w| w == n);
                if has(&m.payload, except) {
                    continue;
                }
                let hit = |b: &[u8]| has(b, needle);
                if hit(m.subject.as_bytes()) || hit(headers.as_bytes()) || hit(&m.payload) {
                    found.push(format!("{name} #{seq} {}", m.subject));
                }
            }
        }
        found
    }

    #[tokio::test]
    async fn deleting_an_account_leaves_nothing_naming_it_in_any_stream_or_bucket() {
        let (_dir, _nats, s) = one_server(100).await;
        for u in ["dorazq", "erinqx"] {
            s.create_account(account(u)).await.unwrap();
        }
        let keys = KeyUpload {
            identity: Some(vec![9]),
            signed_prekey: Some(PreKey { id: 1, key: vec![1] }),
            one_time: vec![PreKey { id: 2, key: vec![2] }],
            last_resort: None,
        };
        s.upload_keys("dorazq", keys).await.unwrap();
        let avatar = Avatar { mime: "image/png".into(), data: vec![1, 2, 3] };
        let update = ProfileUpdate {
            nickname: None,
            email: None,
            avatar: AvatarUpdate::Set(avatar),
            now: 2,
        };
        s.update_profile("dorazq", update).await.unwrap();
        let contacts = Contacts { share_presence: true, users: ["erinqx".to_owned()].into() };
        s.set_contacts("dorazq", contacts).await.unwrap();
        s.set_blocks("dorazq", Blocks { all: false, users: ["mallory".to_owned()].into() })
            .await
            .unwrap();
        s.set_last_seen("dorazq", 5).await.unwrap();
        s.watch("dorazq", vec!["erinqx".into()], vec![]).await.unwrap();
        s.watch("erinqx", vec!["dorazq".into()], vec![]).await.unwrap();
        let mail = |from: &str, to: &str| Envelope {
            sender: from.into(),
            recipient: to.into(),
            ..envelope("m", 3)
        };
        s.enqueue(mail("dorazq", "erinqx"), QUOTA).await.unwrap();
        s.enqueue(mail("erinqx", "dorazq"), QUOTA).await.unwrap();
        let report = Report {
            id: "r1".into(),
            user_id: "dorazq".into(),
            kind: letstalk_wire::ReportKind::Feedback,
            body: b"{}".to_vec(),
            now: 4,
        };
        s.store_report(report).await.unwrap();
        s.inner
            .blobs
            .put("00112233445566778899aabbccddeeff-dorazq", &mut &b"blob"[..])
            .await
            .unwrap();
        // A blob of another owner whose name ends the same way is not touched.
        s.inner
            .blobs
            .put("00112233445566778899aabbccddeeff-alice-dorazq", &mut &b"other"[..])
            .await
            .unwrap();
        let other = b"alice-dorazq";
        assert!(!messages_naming(&s, b"dorazq", other).await.is_empty());

        s.delete_account("dorazq").await.unwrap();
        let left = messages_naming(&s, b"dorazq", other).await;
        assert!(left.is_empty(), "still naming the account: {left:?}");
        assert!(s.inner.blobs.info("00112233445566778899aabbccddeeff-alice-dorazq").await.is_ok());
        assert!(s.inner.blobs.info("00112233445566778899aabbccddeeff-dorazq").await.is_err());
        assert!(s.profile("erinqx").await.unwrap().is_some());
    }
}
