//! The records of this back end, private to it: JSON in KV values (bytes as hex), and
//! the key-value operations on them (read, compare-and-set, put, erase, set members).
//! It uses nothing of the rest of the back end.

use std::collections::{BTreeMap, BTreeSet};

use async_nats::jetstream::kv;
use bytes::Bytes;
use letstalk_wire::{AvatarMeta, PreKey, Profile};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::storage::{Blocks, Contacts, Envelope, StorageError};

/// Compare-and-set attempts before a contended record gives up.
pub(super) const CAS_ATTEMPTS: usize = 100;

/// A failure of the engine while doing `what`.
pub(super) fn backend(what: &str, e: impl std::fmt::Display) -> StorageError {
    StorageError::Backend(format!("{what}: {e}"))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct AccountRec {
    pub(super) password_hash: String,
    pub(super) email: String,
    pub(super) nickname: String,
    /// The one device of a record written before devices (it becomes device 1 when the
    /// record is read: [`AccountRec::normalize`]); never written any more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) device_key: Option<String>,
    pub(super) created_at: u64,
    pub(super) updated_at: u64,
    pub(super) avatar: Option<AvatarRec>,
    /// The account's devices by id.
    #[serde(default)]
    pub(super) devices: BTreeMap<u32, DeviceRec>,
    /// The next device id: ids are never reused within an account. 0 in a record
    /// written before devices.
    #[serde(default)]
    pub(super) next_device: u32,
}

/// One device of an account.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct DeviceRec {
    /// Its Ed25519 key, hex.
    pub(super) key: String,
    /// Its sealed name, hex.
    #[serde(default)]
    pub(super) name: String,
    pub(super) linked_at: u64,
}

/// `blocks.<user>`: whom the user blocks. Present exactly while the account exists, so
/// an enqueue learns both from one read.
/// Also whom the user has as contacts and whether it shares presence (the same record,
/// so an enqueue or a watch learns everything from one read).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct BlocksRec {
    pub(super) all: bool,
    pub(super) users: BTreeSet<String>,
    #[serde(default)]
    pub(super) contacts: BTreeSet<String>,
    #[serde(default = "yes")]
    pub(super) share_presence: bool,
}

impl Default for BlocksRec {
    fn default() -> Self {
        Self { all: false, users: BTreeSet::new(), contacts: BTreeSet::new(), share_presence: true }
    }
}

pub(super) fn yes() -> bool {
    true
}

impl BlocksRec {
    pub(super) fn blocks(&self) -> Blocks {
        Blocks { all: self.all, users: self.users.clone() }
    }

    pub(super) fn contacts(&self) -> Contacts {
        Contacts { share_presence: self.share_presence, users: self.contacts.clone() }
    }

    pub(super) fn refuses(&self, sender: &str) -> bool {
        self.all || self.users.contains(sender)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct AvatarRec {
    pub(super) mime: String,
    pub(super) sha256: String,
    pub(super) size: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct DirectoryRec {
    pub(super) device_key: Option<String>,
    pub(super) identity: String,
    pub(super) signed_prekey: Option<(u32, String)>,
    pub(super) last_resort: Option<(u32, String)>,
}

impl DirectoryRec {
    pub(super) fn for_device(device_key: Option<&String>) -> Self {
        Self { device_key: device_key.cloned(), ..Self::default() }
    }
}

pub(super) fn unhex(s: &str) -> Result<Vec<u8>, StorageError> {
    hex::decode(s).map_err(|e| backend("stored record", e))
}

pub(super) fn key32(s: Option<&String>) -> Result<Option<[u8; 32]>, StorageError> {
    match s {
        None => Ok(None),
        Some(s) => Ok(Some(
            <[u8; 32]>::try_from(unhex(s)?.as_slice())
                .map_err(|_| StorageError::Backend("stored device key".into()))?,
        )),
    }
}

pub(super) fn prekey(p: Option<&(u32, String)>) -> Result<Option<PreKey>, StorageError> {
    p.map(|(id, key)| Ok(PreKey { id: *id, key: unhex(key)? })).transpose()
}

impl AccountRec {
    /// A record written before devices, in today's shape: its device (if it had one)
    /// is device 1, and the next id is 2 (device 1 may have existed even if unbound).
    pub(super) fn normalize(mut self) -> Self {
        if self.next_device == 0 {
            if let Some(key) = self.device_key.take() {
                let linked_at = self.created_at;
                self.devices.insert(1, DeviceRec { key, name: String::new(), linked_at });
            }
            self.next_device = 2;
        }
        self.device_key = None;
        self
    }

    /// The id of the device whose key is `key` (hex).
    pub(super) fn device_with_key(&self, key: &str) -> Option<u32> {
        self.devices.iter().find(|(_, d)| d.key == key).map(|(id, _)| *id)
    }

    pub(super) fn profile(&self, user_id: &str) -> Result<Profile, StorageError> {
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
pub(super) async fn read<T: DeserializeOwned>(
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

/// The raw bytes under `key`; `None` when missing or deleted.
pub(super) async fn read_raw(
    store: &kv::Store,
    key: &str,
) -> Result<Option<Vec<u8>>, StorageError> {
    match store.entry(key).await {
        Ok(Some(e)) if e.operation == kv::Operation::Put => Ok(Some(e.value.to_vec())),
        Ok(_) => Ok(None),
        Err(e) => Err(backend("reading a record", e)),
    }
}

/// What a read-modify-write decided.
pub(super) enum Change<T, R> {
    /// Write `T` (if nobody wrote in between), then answer `R`.
    Put(T, R),
    /// Write nothing, answer `R`.
    Keep(R),
}

/// Read, decide, compare-and-set; again from the start when another writer came first.
pub(super) async fn modify<T, R>(
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
pub(super) async fn put<T: Serialize>(
    store: &kv::Store,
    key: &str,
    value: &T,
) -> Result<(), StorageError> {
    let bytes = Bytes::from(serde_json::to_vec(value).map_err(|e| backend("record", e))?);
    store.put(key, bytes).await.map_err(|e| backend("writing a record", e))?;
    Ok(())
}

/// Removes every revision of `key` and its delete marker from the bucket's stream, so
/// no message (not even a subject) names it any more.
pub(super) async fn erase(store: &kv::Store, key: &str) -> Result<(), StorageError> {
    store
        .stream
        .purge()
        .filter(format!("{}{key}", store.prefix))
        .await
        .map_err(|e| backend("erasing a record", e))?;
    Ok(())
}

/// URL-safe base64 with padding: how the object store names an object's metadata subject.
pub(super) fn base64_url(data: &[u8]) -> String {
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
pub(super) async fn set_member(
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

/// The duplicate-window id of one copy of a message: one per (sender, recipient, msg
/// id) and recipient device.
pub(super) fn dedupe_id(e: &Envelope, device: u32) -> String {
    let id = hex::encode(crate::storage::dedupe_id(&e.sender, &e.recipient, &e.msg_id));
    format!("{id}.{device}")
}

/// A link rendezvous's record (`<slot hex>` in the links bucket); its cells are keys of
/// their own (`<slot hex>.hello`, `.joined`, `.reply`: raw bytes, each up to 512 KiB,
/// more than one NATS message holds hex-encoded in one record).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct LinkRec {
    pub(super) user: String,
    pub(super) expires_at: u64,
}
