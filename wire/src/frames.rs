//! The frames: requests (client → relay), responses (relay → client) and pushes (relay →
//! client on the push stream), with their encoders and decoders.

use std::fmt;

use crate::codec::{LEN_PREFIX, Reader, Writer};
use crate::{
    MAX_AVATAR_LEN, MAX_BLOB_LEN, MAX_DEVICE_NAME_LEN, MAX_DEVICES, MAX_FRAME_LEN,
    MAX_IDENTITY_LEN, MAX_LINK_LEN, MAX_LIST, MAX_MESSAGE_LEN, MAX_PREKEY_LEN, MAX_SHORT_STR,
    MAX_TEXT_STR, WireError,
};

/// A prekey in the directory: the daemon's id for it and its opaque public bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreKey {
    /// The daemon's id for the key (it finds its secret half by this id).
    pub id: u32,
    /// Opaque public key bytes (the relay never interprets them).
    pub key: Vec<u8>,
}

/// What is known about an avatar without its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AvatarMeta {
    /// MIME type as uploaded (`image/png`, ...).
    pub mime: String,
    /// SHA-256 of the bytes, so a client fetches only a changed avatar.
    pub sha256: [u8; 32],
    /// Size in bytes.
    pub size: u32,
}

/// An avatar with its bytes (at most [`MAX_AVATAR_LEN`]).
#[derive(Clone, PartialEq, Eq)]
pub struct Avatar {
    /// MIME type.
    pub mime: String,
    /// The image.
    pub data: Vec<u8>,
}

impl fmt::Debug for Avatar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Avatar").field("mime", &self.mime).field("len", &self.data.len()).finish()
    }
}

/// A change to the avatar in a profile update.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AvatarUpdate {
    /// Leave it as it is.
    Keep,
    /// Remove it.
    Remove,
    /// Replace it.
    Set(Avatar),
}

/// A user's public profile; `email` is present only in one's own profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    /// Lowercased user id.
    pub user_id: String,
    /// Display name.
    pub nickname: String,
    /// Only for the account's own device.
    pub email: Option<String>,
    /// The avatar's metadata, if one is set.
    pub avatar: Option<AvatarMeta>,
    /// Account creation, ms since the Unix epoch.
    pub created_at: u64,
    /// Last profile change, ms since the Unix epoch.
    pub updated_at: u64,
}

/// A user's presence as the relay sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceInfo {
    /// Whose presence.
    pub user_id: String,
    /// Whether their device is connected now.
    pub online: bool,
    /// When their device was last connected (ms), 0 if never.
    pub last_seen_at: u64,
    /// The user hides their presence from the watcher (blocks them, or blocks everyone):
    /// `online` is false and `last_seen_at` 0.
    pub hidden: bool,
}

/// What a sender needs to start a session with `user_id`'s device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    /// Whose bundle.
    pub user_id: String,
    /// Which of the account's devices it is for.
    pub device_id: u32,
    /// The device's Ed25519 public key (its relay identity).
    pub device_key: [u8; 32],
    /// The opaque identity-key bytes the device uploaded.
    pub identity: Vec<u8>,
    /// The current signed prekey, if uploaded.
    pub signed_prekey: Option<PreKey>,
    /// A one-time prekey (taken: never handed out again) or, when they ran out, the
    /// last-resort key.
    pub one_time_prekey: Option<PreKey>,
    /// True when `one_time_prekey` is the last-resort key.
    pub last_resort: bool,
}

/// One of an account's devices, as [`Request::ListDevices`] answers it. For another
/// account only `device_id` is told (`name` empty, times 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The relay's number for the device: never reused within the account.
    pub device_id: u32,
    /// The device's name, sealed by the account's devices (opaque to the relay).
    pub name: Vec<u8>,
    /// When the device joined the account, ms since the Unix epoch.
    pub linked_at: u64,
    /// When the device was last connected (ms), 0 if never.
    pub last_seen_at: u64,
}

/// One device's ciphertext of a [`Request::SendCopies`].
#[derive(Clone, PartialEq, Eq)]
pub struct Copy {
    /// The recipient's device.
    pub device_id: u32,
    /// The opaque (end-to-end encrypted) body for that device.
    pub body: Vec<u8>,
}

impl fmt::Debug for Copy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Copy")
            .field("device_id", &self.device_id)
            .field("len", &self.body.len())
            .finish()
    }
}

/// One message of a [`Request::SendCopiesBatch`]: its idempotency key and one
/// ciphertext per target device, as in [`Request::SendCopies`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboundCopies {
    /// The sender's idempotency key.
    pub msg_id: String,
    /// One ciphertext per target device.
    pub copies: Vec<Copy>,
}

/// A link rendezvous as [`Request::LinkGet`] answers it: what each side has put there.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkSlot {
    /// The opening device's first message (`LinkOpen`).
    pub hello: Vec<u8>,
    /// The joining device's message (`LinkPut` from outside the account), once put.
    pub joined: Option<Vec<u8>>,
    /// The opening account's answer (`LinkPut` from the account), once put.
    pub reply: Option<Vec<u8>>,
}

impl fmt::Debug for LinkSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkSlot")
            .field("hello", &self.hello.len())
            .field("joined", &self.joined.as_ref().map(Vec::len))
            .field("reply", &self.reply.as_ref().map(Vec::len))
            .finish()
    }
}

/// One message of a [`Request::SendBatch`].
#[derive(Clone, PartialEq, Eq)]
pub struct Outbound {
    /// The sender's idempotency key.
    pub msg_id: String,
    /// The opaque (end-to-end encrypted) body.
    pub body: Vec<u8>,
}

impl fmt::Debug for Outbound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Outbound")
            .field("msg_id", &self.msg_id)
            .field("len", &self.body.len())
            .finish()
    }
}

/// A recipient of a [`Request::SendGroup`] that refused the message, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The recipient.
    pub user_id: String,
    /// Why (`Blocked`, `NotFound`, `QuotaExceeded`, ...).
    pub kind: ErrorKind,
}

/// The machine-readable reason of an error response.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Malformed or unacceptable input.
    Invalid,
    /// Wrong password or bad signature.
    AuthFailed,
    /// User id taken.
    Conflict,
    /// No such user (or avatar, or bundle).
    NotFound,
    /// Too many attempts; see `retry_after_ms`.
    RateLimited,
    /// A field or frame over its limit.
    TooLarge,
    /// The recipient's mailbox is full.
    QuotaExceeded,
    /// The recipient blocks the sender (later).
    Blocked,
    /// The device key is not (or no longer) bound to the account: logged in elsewhere.
    UnknownDevice,
    /// The request needs an authenticated connection.
    Unauthenticated,
    /// No common protocol version.
    Unsupported,
    /// The relay failed; retry later.
    Internal,
    /// A kind this version does not know (a newer relay); treat like `Internal`.
    Other(u8),
}

impl ErrorKind {
    /// The byte on the wire.
    pub fn code(self) -> u8 {
        match self {
            Self::Invalid => 1,
            Self::AuthFailed => 2,
            Self::Conflict => 3,
            Self::NotFound => 4,
            Self::RateLimited => 5,
            Self::TooLarge => 6,
            Self::QuotaExceeded => 7,
            Self::Blocked => 8,
            Self::UnknownDevice => 9,
            Self::Unauthenticated => 10,
            Self::Unsupported => 11,
            Self::Internal => 12,
            Self::Other(c) => c,
        }
    }

    /// The kind for a byte; unknown bytes are kept as [`ErrorKind::Other`].
    pub fn from_code(c: u8) -> Self {
        match c {
            1 => Self::Invalid,
            2 => Self::AuthFailed,
            3 => Self::Conflict,
            4 => Self::NotFound,
            5 => Self::RateLimited,
            6 => Self::TooLarge,
            7 => Self::QuotaExceeded,
            8 => Self::Blocked,
            9 => Self::UnknownDevice,
            10 => Self::Unauthenticated,
            11 => Self::Unsupported,
            12 => Self::Internal,
            c => Self::Other(c),
        }
    }
}

/// A client's request: one per bidirectional stream.
#[derive(Clone, PartialEq, Eq)]
pub enum Request {
    /// First request on a connection: the versions the client speaks.
    Hello { versions: Vec<u16>, client: String },
    /// Proves the device: `signature` is Ed25519 over [`crate::auth_message`].
    Auth { user_id: String, device_key: [u8; 32], signature: [u8; 64] },
    /// Creates an account and binds this device (signature as for `Auth`).
    Register {
        user_id: String,
        password: String,
        email: String,
        nickname: String,
        device_key: [u8; 32],
        signature: [u8; 64],
        identity: Vec<u8>,
    },
    /// Binds this device to an existing account, moving the account here: every other
    /// device is removed (each connected one gets `LoggedOut`). A key that already is one
    /// of the account's devices keeps its id, keys and mail; another gets a fresh id.
    Login { user_id: String, password: String, device_key: [u8; 32], signature: [u8; 64] },
    /// Removes this device from the account (its mailbox and prekeys go with it).
    Logout,
    /// Deletes the account and everything the relay keeps for it; every other connected
    /// device gets `LoggedOut`.
    DeleteAccount,
    /// Changes the password.
    ChangePassword { old_password: String, new_password: String },
    /// One's own profile (with email).
    GetProfile,
    /// Changes one's own profile; `None` leaves a field as it is.
    UpdateProfile { nickname: Option<String>, email: Option<String>, avatar: AvatarUpdate },
    /// Another user's public profile.
    LookupUser { user_id: String },
    /// A user's avatar bytes.
    FetchAvatar { user_id: String },
    /// Uploads identity bytes (the account's) and this device's prekeys; `None` leaves
    /// the stored one.
    UploadKeys {
        identity: Option<Vec<u8>>,
        signed_prekey: Option<PreKey>,
        one_time_prekeys: Vec<PreKey>,
        last_resort: Option<PreKey>,
    },
    /// How many one-time prekeys the directory still holds for this account.
    KeyCount,
    /// A user's prekey bundle; takes one one-time prekey.
    FetchBundle { user_id: String },
    /// Changes the list of users whose presence and profile this device watches.
    Watch { add: Vec<String>, remove: Vec<String> },
    /// Hands a message to the relay; answered once it is persisted. For an account with
    /// one target device (every device, less the sending one for one's own account);
    /// with several, `Mismatch` naming them all as missing and nothing stored (use
    /// `SendCopies`); with none (an account whose devices all left), `Mismatch` with
    /// both lists empty.
    Send { to: String, msg_id: String, body: Vec<u8> },
    /// Hands several messages for one recipient to the relay, in order; answered
    /// (`Sent`) once all of them are persisted, in one transaction. Each is deduplicated by
    /// its msg id like `Send`, and for one target device like `Send` (else `Mismatch`).
    SendBatch { to: String, messages: Vec<Outbound> },
    /// The device has the pushed messages with these delivery ids: delete them.
    Ack { delivery_ids: Vec<u64> },
    /// Round-trip probe.
    Ping { nonce: u64 },
    /// Stores (part of) a file blob: this frame opens a blob stream, and the bytes
    /// `offset..size` of the blob follow it raw on the same stream, which the client then
    /// finishes. `offset` must not exceed what the relay already holds (see `BlobStat`):
    /// an interrupted upload resumes. Only `recipients` (and the owner) may fetch it;
    /// the owner's own account among them makes it wait for the owner's other devices.
    /// Answered with `Blob` once the bytes are durable.
    BlobPut { blob_id: [u8; 16], size: u64, offset: u64, recipients: Vec<String> },
    /// How much of `owner`'s blob the relay holds (owner or a recipient).
    BlobStat { owner: String, blob_id: [u8; 16] },
    /// Fetches a complete blob from `offset`: answered with `Blob`, then the bytes
    /// `offset..size` follow raw on the same stream.
    BlobGet { owner: String, blob_id: [u8; 16], offset: u64 },
    /// This device has the blob (or gives it up): the relay deletes the blob once every
    /// device it waits for released it. A device of the owner's account releases only
    /// its own entry (the owner's other devices fetch what one of them sent): a release
    /// never cancels.
    BlobRelease { owner: String, blob_id: [u8; 16] },
    /// The owner cancels its blob `blob_id`: deleted at once (also one still being
    /// uploaded), for every recipient.
    BlobCancel { blob_id: [u8; 16] },
    /// Forward this call's media datagrams between this device and `peer`. A route
    /// carries datagrams only once both sides asked for it, each naming the other.
    CallRoute { call_id: [u8; 16], peer: String },
    /// Stop forwarding this call's datagrams.
    CallUnroute { call_id: [u8; 16] },
    /// Replaces who this account blocks: the relay refuses their messages (`Blocked`)
    /// and hides this account's presence from them; with `block_all`, from everyone.
    SetBlocks { block_all: bool, users: Vec<String> },
    /// Replaces this account's contact list and whether it shares its presence: the
    /// relay tells this account's presence and last-seen only to its contacts (those it
    /// does not block), and to nobody when `share_presence` is false; everyone else sees
    /// `hidden`. Contacts also get their own share of this account's mailbox quota.
    SetContacts { share_presence: bool, users: Vec<String> },
    /// Hands one message to several recipients (a group message: the same sender-key
    /// ciphertext for all), to every device of each; answered with `GroupSent` once every
    /// accepted copy is persisted. Deduplicated per recipient by `msg_id` like `Send`.
    SendGroup { to: Vec<String>, msg_id: String, body: Vec<u8> },
    /// A diagnostics report or a feedback note for the relay's operator (not end-to-end
    /// encrypted: its reader is the service). `id` makes a resend idempotent.
    SubmitReport { id: String, kind: ReportKind, body: Vec<u8> },
    /// The devices of `user_id` (one's own: with names and times).
    ListDevices { user_id: String },
    /// Adds a device to this account (at most [`crate::MAX_DEVICES`]: `QuotaExceeded`
    /// beyond; `Conflict` when the key already is a device of any account); `name` is
    /// sealed by the account's devices. Answered `DeviceAdded`; the account's other
    /// devices get `DevicesChanged`.
    AddDevice { device_key: [u8; 32], name: Vec<u8> },
    /// Removes one of this account's devices (this one too): its mailbox, prekeys and
    /// credentials go, and it gets `LoggedOut` if it is connected (removing the device of
    /// this very connection ends its session like `Logout`: the answer is its notice).
    /// The account's other devices get `DevicesChanged`.
    RemoveDevice { device_id: u32 },
    /// Replaces the sealed name of one of this account's devices (any of them, this one
    /// too; `NotFound` for no such device of the account). Answered `Ok`; the account's
    /// other devices get `DevicesChanged`.
    RenameDevice { device_id: u32, name: Vec<u8> },
    /// Opens a link rendezvous for this account, named by `slot` (derived from the link
    /// code), holding the first message of the opening device; it lasts
    /// [`crate::LINK_SLOT_TTL_MS`]. Needs no more than `Hello` on the joining side. An
    /// account has one rendezvous open at a time (a new one replaces the old);
    /// `Conflict` when another account holds the name.
    LinkOpen { slot: [u8; 16], hello: Vec<u8> },
    /// Puts a message into a rendezvous: from the account that opened it, its reply;
    /// from anyone else (no authentication needed), the joining device's message. Each
    /// is written once (`Conflict` after); `NotFound` once it expired. Without an
    /// account, rate limited per address (slot names come from short codes).
    LinkPut { slot: [u8; 16], data: Vec<u8> },
    /// Reads a rendezvous (`LinkSlot`), or `NotFound` once it expired. Rate limited like
    /// `LinkPut`.
    LinkGet { slot: [u8; 16] },
    /// Prekey bundles of `user_id`'s devices (`devices` empty: all of them); takes one
    /// one-time prekey of each. Answered `Bundles`.
    FetchBundles { user_id: String, devices: Vec<u32> },
    /// Hands one message to every device of `to` (to one's own account: every other
    /// device), one ciphertext each, stored in one transaction; answered `Sent` once
    /// persisted, or `Mismatch` (nothing stored) when the copies do not name exactly
    /// the account's devices (each once). Deduplicated by msg id like `Send`. Blocks,
    /// quotas and sizes as for `Send` (none of the blocks to one's own account).
    SendCopies { to: String, msg_id: String, copies: Vec<Copy> },
    /// Several `SendCopies` for one recipient, stored in order in one transaction (one
    /// round trip and one disk sync for a backlog); answered `Sent` once all are
    /// persisted, or `Mismatch` (nothing stored) for the first message whose copies do
    /// not name exactly the account's target devices. Each is deduplicated by its msg id.
    SendCopiesBatch { to: String, messages: Vec<OutboundCopies> },
}

/// What a [`Request::SubmitReport`] carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportKind {
    /// `diagnostics.upload`: sent only with the user's consent.
    Diagnostics,
    /// `feedback.send`.
    Feedback,
}

/// The relay's answer to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// Answer to `Hello`: the chosen version and this connection's auth challenge.
    HelloOk { version: u16, challenge: [u8; 32], server: String },
    /// Success without data.
    Ok,
    /// Failure.
    Error { kind: ErrorKind, retry_after_ms: u64, message: String },
    /// Answer to `Auth`, `Register` and `Login`: the connection now acts for `user_id`'s
    /// device `device_id`.
    Authenticated { user_id: String, device_id: u32 },
    /// Answer to `GetProfile`, `UpdateProfile` and `LookupUser`.
    Profile(Profile),
    /// Answer to `FetchAvatar`.
    Avatar(Avatar),
    /// Answer to `UploadKeys` and `KeyCount`.
    KeyCount { one_time_remaining: u32 },
    /// Answer to `FetchBundle`.
    Bundle(Bundle),
    /// Answer to `Watch`: the current presence of every watched user.
    Presence { users: Vec<PresenceInfo> },
    /// Answer to `Send`: persisted at `server_ts`; `duplicate` when it was a retransmit.
    Sent { server_ts: u64, duplicate: bool },
    /// Answer to `Ping`.
    Pong { nonce: u64 },
    /// Answer to `SendGroup`: persisted at `server_ts` for every recipient but `refused`.
    GroupSent { server_ts: u64, refused: Vec<Refusal> },
    /// Answer to the blob requests: the blob's full size and the bytes held so far
    /// (`stored == size` once complete).
    Blob { size: u64, stored: u64 },
    /// Answer to `ListDevices`, in device id order.
    Devices { devices: Vec<DeviceInfo> },
    /// Answer to `AddDevice`.
    DeviceAdded { device_id: u32 },
    /// Answer to `LinkGet`.
    LinkSlot(LinkSlot),
    /// Answer to `FetchBundles`, in device id order.
    Bundles { bundles: Vec<Bundle> },
    /// Answer to `SendCopies` whose copies were not for exactly the recipient's devices:
    /// nothing was stored. `missing` have no copy; `extra` are no (longer) devices of it.
    Mismatch { missing: Vec<u32>, extra: Vec<u32> },
}

/// What the relay sends on its own initiative, in order, on the push stream.
#[derive(Clone, PartialEq, Eq)]
pub enum Push {
    /// A message for this device; ack it with `Request::Ack { delivery_ids }`.
    Message {
        delivery_id: u64,
        from: String,
        from_device: u32,
        msg_id: String,
        server_ts: u64,
        body: Vec<u8>,
    },
    /// A watched user's presence changed.
    Presence(PresenceInfo),
    /// A watched user's profile changed (no email).
    ProfileChanged(Profile),
    /// The account was logged in on another device, or this device was removed from
    /// it: this one is unbound.
    LoggedOut,
    /// The account's list of devices changed (one was linked or removed).
    DevicesChanged,
}

impl fmt::Debug for Request {
    // By hand, so that passwords, signatures and message bytes never reach a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hello { versions, client } => {
                f.debug_struct("Hello").field("versions", versions).field("client", client).finish()
            }
            Self::Auth { user_id, .. } => {
                f.debug_struct("Auth").field("user_id", user_id).finish_non_exhaustive()
            }
            Self::Register { user_id, .. } => {
                f.debug_struct("Register").field("user_id", user_id).finish_non_exhaustive()
            }
            Self::Login { user_id, .. } => {
                f.debug_struct("Login").field("user_id", user_id).finish_non_exhaustive()
            }
            Self::Logout => f.write_str("Logout"),
            Self::DeleteAccount => f.write_str("DeleteAccount"),
            Self::ChangePassword { .. } => f.write_str("ChangePassword { .. }"),
            Self::GetProfile => f.write_str("GetProfile"),
            Self::UpdateProfile { .. } => f.write_str("UpdateProfile { .. }"),
            Self::LookupUser { user_id } => {
                f.debug_struct("LookupUser").field("user_id", user_id).finish()
            }
            Self::FetchAvatar { user_id } => {
                f.debug_struct("FetchAvatar").field("user_id", user_id).finish()
            }
            Self::UploadKeys { one_time_prekeys, .. } => f
                .debug_struct("UploadKeys")
                .field("one_time_prekeys", &one_time_prekeys.len())
                .finish_non_exhaustive(),
            Self::KeyCount => f.write_str("KeyCount"),
            Self::FetchBundle { user_id } => {
                f.debug_struct("FetchBundle").field("user_id", user_id).finish()
            }
            Self::Watch { add, remove } => f
                .debug_struct("Watch")
                .field("add", &add.len())
                .field("remove", &remove.len())
                .finish(),
            Self::Send { to, msg_id, body } => f
                .debug_struct("Send")
                .field("to", to)
                .field("msg_id", msg_id)
                .field("len", &body.len())
                .finish(),
            Self::SendBatch { to, messages } => {
                f.debug_struct("SendBatch").field("to", to).field("count", &messages.len()).finish()
            }
            Self::Ack { delivery_ids } => {
                f.debug_struct("Ack").field("count", &delivery_ids.len()).finish()
            }
            Self::Ping { nonce } => f.debug_struct("Ping").field("nonce", nonce).finish(),
            Self::SetBlocks { block_all, users } => f
                .debug_struct("SetBlocks")
                .field("block_all", block_all)
                .field("count", &users.len())
                .finish(),
            Self::SetContacts { share_presence, users } => f
                .debug_struct("SetContacts")
                .field("share_presence", share_presence)
                .field("count", &users.len())
                .finish(),
            Self::SubmitReport { id, kind, body } => f
                .debug_struct("SubmitReport")
                .field("id", id)
                .field("kind", kind)
                .field("len", &body.len())
                .finish(),
            Self::SendGroup { to, msg_id, body } => f
                .debug_struct("SendGroup")
                .field("to", &to.len())
                .field("msg_id", msg_id)
                .field("len", &body.len())
                .finish(),
            Self::BlobPut { size, offset, recipients, .. } => f
                .debug_struct("BlobPut")
                .field("size", size)
                .field("offset", offset)
                .field("recipients", &recipients.len())
                .finish_non_exhaustive(),
            Self::BlobStat { owner, .. } => {
                f.debug_struct("BlobStat").field("owner", owner).finish_non_exhaustive()
            }
            Self::BlobGet { owner, offset, .. } => f
                .debug_struct("BlobGet")
                .field("owner", owner)
                .field("offset", offset)
                .finish_non_exhaustive(),
            Self::BlobRelease { owner, .. } => {
                f.debug_struct("BlobRelease").field("owner", owner).finish_non_exhaustive()
            }
            Self::BlobCancel { .. } => f.write_str("BlobCancel { .. }"),
            Self::CallRoute { peer, .. } => {
                f.debug_struct("CallRoute").field("peer", peer).finish_non_exhaustive()
            }
            Self::CallUnroute { .. } => f.write_str("CallUnroute { .. }"),
            Self::ListDevices { user_id } => {
                f.debug_struct("ListDevices").field("user_id", user_id).finish()
            }
            Self::AddDevice { .. } => f.write_str("AddDevice { .. }"),
            Self::RemoveDevice { device_id } => {
                f.debug_struct("RemoveDevice").field("device_id", device_id).finish()
            }
            // The name is sealed, but its length still says something: never shown.
            Self::RenameDevice { device_id, .. } => {
                f.debug_struct("RenameDevice").field("device_id", device_id).finish_non_exhaustive()
            }
            Self::LinkOpen { hello, .. } => {
                f.debug_struct("LinkOpen").field("len", &hello.len()).finish_non_exhaustive()
            }
            Self::LinkPut { data, .. } => {
                f.debug_struct("LinkPut").field("len", &data.len()).finish_non_exhaustive()
            }
            Self::LinkGet { .. } => f.write_str("LinkGet { .. }"),
            Self::FetchBundles { user_id, devices } => f
                .debug_struct("FetchBundles")
                .field("user_id", user_id)
                .field("devices", devices)
                .finish(),
            Self::SendCopies { to, msg_id, copies } => f
                .debug_struct("SendCopies")
                .field("to", to)
                .field("msg_id", msg_id)
                .field("copies", copies)
                .finish(),
            Self::SendCopiesBatch { to, messages } => f
                .debug_struct("SendCopiesBatch")
                .field("to", to)
                .field("count", &messages.len())
                .finish(),
        }
    }
}

impl fmt::Debug for Push {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Message { delivery_id, from, from_device, msg_id, server_ts, body } => f
                .debug_struct("Message")
                .field("delivery_id", delivery_id)
                .field("from", from)
                .field("from_device", from_device)
                .field("msg_id", msg_id)
                .field("server_ts", server_ts)
                .field("len", &body.len())
                .finish(),
            Self::Presence(p) => f.debug_tuple("Presence").field(p).finish(),
            Self::ProfileChanged(p) => f.debug_tuple("ProfileChanged").field(p).finish(),
            Self::LoggedOut => f.write_str("LoggedOut"),
            Self::DevicesChanged => f.write_str("DevicesChanged"),
        }
    }
}

// Tags. Requests 0x01.., responses 0x80.., pushes 0xC0..: a frame sent on the wrong kind
// of stream fails to decode instead of meaning something else.
mod tag {
    pub(super) const HELLO: u8 = 0x01;
    pub(super) const AUTH: u8 = 0x02;
    pub(super) const REGISTER: u8 = 0x03;
    pub(super) const LOGIN: u8 = 0x04;
    pub(super) const LOGOUT: u8 = 0x05;
    pub(super) const DELETE_ACCOUNT: u8 = 0x06;
    pub(super) const CHANGE_PASSWORD: u8 = 0x07;
    pub(super) const GET_PROFILE: u8 = 0x08;
    pub(super) const UPDATE_PROFILE: u8 = 0x09;
    pub(super) const LOOKUP_USER: u8 = 0x0A;
    pub(super) const FETCH_AVATAR: u8 = 0x0B;
    pub(super) const UPLOAD_KEYS: u8 = 0x0C;
    pub(super) const KEY_COUNT: u8 = 0x0D;
    pub(super) const FETCH_BUNDLE: u8 = 0x0E;
    pub(super) const WATCH: u8 = 0x0F;
    pub(super) const SEND: u8 = 0x10;
    pub(super) const ACK: u8 = 0x11;
    pub(super) const PING: u8 = 0x12;
    pub(super) const SEND_BATCH: u8 = 0x13;
    pub(super) const SET_BLOCKS: u8 = 0x20;
    pub(super) const SEND_GROUP: u8 = 0x21;
    pub(super) const SET_CONTACTS: u8 = 0x22;
    pub(super) const SUBMIT_REPORT: u8 = 0x28;
    pub(super) const BLOB_PUT: u8 = 0x14;
    pub(super) const BLOB_STAT: u8 = 0x15;
    pub(super) const BLOB_GET: u8 = 0x16;
    pub(super) const BLOB_RELEASE: u8 = 0x17;
    pub(super) const BLOB_CANCEL: u8 = 0x1A;
    pub(super) const CALL_ROUTE: u8 = 0x18;
    pub(super) const CALL_UNROUTE: u8 = 0x19;
    pub(super) const LIST_DEVICES: u8 = 0x30;
    pub(super) const ADD_DEVICE: u8 = 0x31;
    pub(super) const REMOVE_DEVICE: u8 = 0x32;
    pub(super) const LINK_OPEN: u8 = 0x33;
    pub(super) const LINK_PUT: u8 = 0x34;
    pub(super) const LINK_GET: u8 = 0x35;
    pub(super) const FETCH_BUNDLES: u8 = 0x36;
    pub(super) const SEND_COPIES: u8 = 0x37;
    pub(super) const RENAME_DEVICE: u8 = 0x38;
    pub(super) const SEND_COPIES_BATCH: u8 = 0x39;

    pub(super) const R_HELLO_OK: u8 = 0x80;
    pub(super) const R_OK: u8 = 0x81;
    pub(super) const R_ERROR: u8 = 0x82;
    pub(super) const R_AUTHENTICATED: u8 = 0x83;
    pub(super) const R_PROFILE: u8 = 0x84;
    pub(super) const R_AVATAR: u8 = 0x85;
    pub(super) const R_KEY_COUNT: u8 = 0x86;
    pub(super) const R_BUNDLE: u8 = 0x87;
    pub(super) const R_PRESENCE: u8 = 0x88;
    pub(super) const R_SENT: u8 = 0x89;
    pub(super) const R_PONG: u8 = 0x8A;
    pub(super) const R_GROUP_SENT: u8 = 0x90;
    pub(super) const R_BLOB: u8 = 0x8B;
    pub(super) const R_DEVICES: u8 = 0x91;
    pub(super) const R_DEVICE_ADDED: u8 = 0x92;
    pub(super) const R_LINK_SLOT: u8 = 0x93;
    pub(super) const R_BUNDLES: u8 = 0x94;
    pub(super) const R_MISMATCH: u8 = 0x95;

    pub(super) const P_MESSAGE: u8 = 0xC0;
    pub(super) const P_PRESENCE: u8 = 0xC1;
    pub(super) const P_PROFILE_CHANGED: u8 = 0xC2;
    pub(super) const P_LOGGED_OUT: u8 = 0xC3;
    pub(super) const P_DEVICES_CHANGED: u8 = 0xC4;
}

/// Prefixes `body` with its length, refusing a frame over [`MAX_FRAME_LEN`].
fn framed(w: Writer) -> Result<Vec<u8>, WireError> {
    let body = w.buf;
    if body.len() > MAX_FRAME_LEN {
        return Err(WireError::FrameTooLarge { len: body.len(), max: MAX_FRAME_LEN });
    }
    let mut out = Vec::with_capacity(LEN_PREFIX + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

fn put_prekey(w: &mut Writer, k: &PreKey) {
    w.u32(k.id);
    w.bytes(&k.key);
}
fn get_prekey(r: &mut Reader<'_>) -> Result<PreKey, WireError> {
    Ok(PreKey { id: r.u32()?, key: r.bytes(MAX_PREKEY_LEN, "prekey")? })
}
fn put_avatar_meta(w: &mut Writer, a: &AvatarMeta) {
    w.str(&a.mime);
    w.raw(&a.sha256);
    w.u32(a.size);
}
fn get_avatar_meta(r: &mut Reader<'_>) -> Result<AvatarMeta, WireError> {
    Ok(AvatarMeta { mime: r.str(MAX_SHORT_STR, "mime")?, sha256: r.array()?, size: r.u32()? })
}
fn put_avatar(w: &mut Writer, a: &Avatar) {
    w.str(&a.mime);
    w.bytes(&a.data);
}
fn get_avatar(r: &mut Reader<'_>) -> Result<Avatar, WireError> {
    Ok(Avatar { mime: r.str(MAX_SHORT_STR, "mime")?, data: r.bytes(MAX_AVATAR_LEN, "avatar")? })
}
fn put_profile(w: &mut Writer, p: &Profile) {
    w.str(&p.user_id);
    w.str(&p.nickname);
    w.opt(p.email.as_ref(), |w, e| w.str(e));
    w.opt(p.avatar.as_ref(), put_avatar_meta);
    w.u64(p.created_at);
    w.u64(p.updated_at);
}
fn get_profile(r: &mut Reader<'_>) -> Result<Profile, WireError> {
    Ok(Profile {
        user_id: r.str(MAX_SHORT_STR, "user_id")?,
        nickname: r.str(MAX_TEXT_STR, "nickname")?,
        email: r.opt(|r| r.str(MAX_TEXT_STR, "email"))?,
        avatar: r.opt(get_avatar_meta)?,
        created_at: r.u64()?,
        updated_at: r.u64()?,
    })
}
fn put_presence(w: &mut Writer, p: &PresenceInfo) {
    w.str(&p.user_id);
    w.bool(p.online);
    w.u64(p.last_seen_at);
    w.bool(p.hidden);
}
fn get_presence(r: &mut Reader<'_>) -> Result<PresenceInfo, WireError> {
    Ok(PresenceInfo {
        user_id: r.str(MAX_SHORT_STR, "user_id")?,
        online: r.bool()?,
        last_seen_at: r.u64()?,
        hidden: r.bool()?,
    })
}
fn put_bundle(w: &mut Writer, b: &Bundle) {
    w.str(&b.user_id);
    w.u32(b.device_id);
    w.raw(&b.device_key);
    w.bytes(&b.identity);
    w.opt(b.signed_prekey.as_ref(), put_prekey);
    w.opt(b.one_time_prekey.as_ref(), put_prekey);
    w.bool(b.last_resort);
}
fn get_bundle(r: &mut Reader<'_>) -> Result<Bundle, WireError> {
    Ok(Bundle {
        user_id: r.str(MAX_SHORT_STR, "user_id")?,
        device_id: r.u32()?,
        device_key: r.array()?,
        identity: r.bytes(MAX_IDENTITY_LEN, "identity")?,
        signed_prekey: r.opt(get_prekey)?,
        one_time_prekey: r.opt(get_prekey)?,
        last_resort: r.bool()?,
    })
}
fn get_device_ids(r: &mut Reader<'_>, field: &'static str) -> Result<Vec<u32>, WireError> {
    r.list(MAX_DEVICES, field, Reader::u32)
}
fn get_user_list(r: &mut Reader<'_>) -> Result<Vec<String>, WireError> {
    r.list(MAX_LIST, "users", |r| r.str(MAX_SHORT_STR, "user_id"))
}
fn put_copies(w: &mut Writer, copies: &[Copy]) {
    w.list(copies, |w, c| {
        w.u32(c.device_id);
        w.bytes(&c.body);
    });
}
fn get_copies(r: &mut Reader<'_>) -> Result<Vec<Copy>, WireError> {
    r.list(MAX_DEVICES, "copies", |r| {
        Ok(Copy { device_id: r.u32()?, body: r.bytes(MAX_MESSAGE_LEN, "body")? })
    })
}

impl Request {
    /// The frame (length prefix and body).
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut w = Writer::default();
        match self {
            Self::Hello { versions, client } => {
                w.u8(tag::HELLO);
                w.list(versions, |w, v| w.u16(*v));
                w.str(client);
            }
            Self::Auth { user_id, device_key, signature } => {
                w.u8(tag::AUTH);
                w.str(user_id);
                w.raw(device_key);
                w.raw(signature);
            }
            Self::Register {
                user_id,
                password,
                email,
                nickname,
                device_key,
                signature,
                identity,
            } => {
                w.u8(tag::REGISTER);
                w.str(user_id);
                w.str(password);
                w.str(email);
                w.str(nickname);
                w.raw(device_key);
                w.raw(signature);
                w.bytes(identity);
            }
            Self::Login { user_id, password, device_key, signature } => {
                w.u8(tag::LOGIN);
                w.str(user_id);
                w.str(password);
                w.raw(device_key);
                w.raw(signature);
            }
            Self::Logout => w.u8(tag::LOGOUT),
            Self::DeleteAccount => w.u8(tag::DELETE_ACCOUNT),
            Self::ChangePassword { old_password, new_password } => {
                w.u8(tag::CHANGE_PASSWORD);
                w.str(old_password);
                w.str(new_password);
            }
            Self::GetProfile => w.u8(tag::GET_PROFILE),
            Self::UpdateProfile { nickname, email, avatar } => {
                w.u8(tag::UPDATE_PROFILE);
                w.opt(nickname.as_ref(), |w, v| w.str(v));
                w.opt(email.as_ref(), |w, v| w.str(v));
                match avatar {
                    AvatarUpdate::Keep => w.u8(0),
                    AvatarUpdate::Remove => w.u8(1),
                    AvatarUpdate::Set(a) => {
                        w.u8(2);
                        put_avatar(&mut w, a);
                    }
                }
            }
            Self::LookupUser { user_id } => {
                w.u8(tag::LOOKUP_USER);
                w.str(user_id);
            }
            Self::FetchAvatar { user_id } => {
                w.u8(tag::FETCH_AVATAR);
                w.str(user_id);
            }
            Self::UploadKeys { identity, signed_prekey, one_time_prekeys, last_resort } => {
                w.u8(tag::UPLOAD_KEYS);
                w.opt(identity.as_ref(), |w, v| w.bytes(v));
                w.opt(signed_prekey.as_ref(), put_prekey);
                w.list(one_time_prekeys, put_prekey);
                w.opt(last_resort.as_ref(), put_prekey);
            }
            Self::KeyCount => w.u8(tag::KEY_COUNT),
            Self::FetchBundle { user_id } => {
                w.u8(tag::FETCH_BUNDLE);
                w.str(user_id);
            }
            Self::Watch { add, remove } => {
                w.u8(tag::WATCH);
                w.list(add, |w, v| w.str(v));
                w.list(remove, |w, v| w.str(v));
            }
            Self::Send { to, msg_id, body } => {
                w.u8(tag::SEND);
                w.str(to);
                w.str(msg_id);
                w.bytes(body);
            }
            Self::SendBatch { to, messages } => {
                w.u8(tag::SEND_BATCH);
                w.str(to);
                w.list(messages, |w, m| {
                    w.str(&m.msg_id);
                    w.bytes(&m.body);
                });
            }
            Self::Ack { delivery_ids } => {
                w.u8(tag::ACK);
                w.list(delivery_ids, |w, v| w.u64(*v));
            }
            Self::Ping { nonce } => {
                w.u8(tag::PING);
                w.u64(*nonce);
            }
            Self::SetBlocks { block_all, users } => {
                w.u8(tag::SET_BLOCKS);
                w.bool(*block_all);
                w.list(users, |w, v| w.str(v));
            }
            Self::SetContacts { share_presence, users } => {
                w.u8(tag::SET_CONTACTS);
                w.bool(*share_presence);
                w.list(users, |w, v| w.str(v));
            }
            Self::SendGroup { to, msg_id, body } => {
                w.u8(tag::SEND_GROUP);
                w.list(to, |w, v| w.str(v));
                w.str(msg_id);
                w.bytes(body);
            }
            Self::SubmitReport { id, kind, body } => {
                w.u8(tag::SUBMIT_REPORT);
                w.str(id);
                w.u8(match kind {
                    ReportKind::Diagnostics => 1,
                    ReportKind::Feedback => 2,
                });
                w.bytes(body);
            }
            Self::BlobPut { blob_id, size, offset, recipients } => {
                w.u8(tag::BLOB_PUT);
                w.raw(blob_id);
                w.u64(*size);
                w.u64(*offset);
                w.list(recipients, |w, v| w.str(v));
            }
            Self::BlobStat { owner, blob_id } => {
                w.u8(tag::BLOB_STAT);
                w.str(owner);
                w.raw(blob_id);
            }
            Self::BlobGet { owner, blob_id, offset } => {
                w.u8(tag::BLOB_GET);
                w.str(owner);
                w.raw(blob_id);
                w.u64(*offset);
            }
            Self::BlobRelease { owner, blob_id } => {
                w.u8(tag::BLOB_RELEASE);
                w.str(owner);
                w.raw(blob_id);
            }
            Self::BlobCancel { blob_id } => {
                w.u8(tag::BLOB_CANCEL);
                w.raw(blob_id);
            }
            Self::CallRoute { call_id, peer } => {
                w.u8(tag::CALL_ROUTE);
                w.raw(call_id);
                w.str(peer);
            }
            Self::CallUnroute { call_id } => {
                w.u8(tag::CALL_UNROUTE);
                w.raw(call_id);
            }
            Self::ListDevices { user_id } => {
                w.u8(tag::LIST_DEVICES);
                w.str(user_id);
            }
            Self::AddDevice { device_key, name } => {
                w.u8(tag::ADD_DEVICE);
                w.raw(device_key);
                w.bytes(name);
            }
            Self::RemoveDevice { device_id } => {
                w.u8(tag::REMOVE_DEVICE);
                w.u32(*device_id);
            }
            Self::RenameDevice { device_id, name } => {
                w.u8(tag::RENAME_DEVICE);
                w.u32(*device_id);
                w.bytes(name);
            }
            Self::LinkOpen { slot, hello } => {
                w.u8(tag::LINK_OPEN);
                w.raw(slot);
                w.bytes(hello);
            }
            Self::LinkPut { slot, data } => {
                w.u8(tag::LINK_PUT);
                w.raw(slot);
                w.bytes(data);
            }
            Self::LinkGet { slot } => {
                w.u8(tag::LINK_GET);
                w.raw(slot);
            }
            Self::FetchBundles { user_id, devices } => {
                w.u8(tag::FETCH_BUNDLES);
                w.str(user_id);
                w.list(devices, |w, d| w.u32(*d));
            }
            Self::SendCopies { to, msg_id, copies } => {
                w.u8(tag::SEND_COPIES);
                w.str(to);
                w.str(msg_id);
                put_copies(&mut w, copies);
            }
            Self::SendCopiesBatch { to, messages } => {
                w.u8(tag::SEND_COPIES_BATCH);
                w.str(to);
                w.list(messages, |w, m| {
                    w.str(&m.msg_id);
                    put_copies(w, &m.copies);
                });
            }
        }
        framed(w)
    }

    /// Decodes one frame body (without the length prefix).
    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let req = match r.u8()? {
            tag::HELLO => Self::Hello {
                versions: r.list(16, "versions", Reader::u16)?,
                client: r.str(MAX_TEXT_STR, "client")?,
            },
            tag::AUTH => Self::Auth {
                user_id: r.str(MAX_SHORT_STR, "user_id")?,
                device_key: r.array()?,
                signature: r.array()?,
            },
            tag::REGISTER => Self::Register {
                user_id: r.str(MAX_SHORT_STR, "user_id")?,
                password: r.str(MAX_TEXT_STR, "password")?,
                email: r.str(MAX_TEXT_STR, "email")?,
                nickname: r.str(MAX_TEXT_STR, "nickname")?,
                device_key: r.array()?,
                signature: r.array()?,
                identity: r.bytes(MAX_IDENTITY_LEN, "identity")?,
            },
            tag::LOGIN => Self::Login {
                user_id: r.str(MAX_SHORT_STR, "user_id")?,
                password: r.str(MAX_TEXT_STR, "password")?,
                device_key: r.array()?,
                signature: r.array()?,
            },
            tag::LOGOUT => Self::Logout,
            tag::DELETE_ACCOUNT => Self::DeleteAccount,
            tag::CHANGE_PASSWORD => Self::ChangePassword {
                old_password: r.str(MAX_TEXT_STR, "old_password")?,
                new_password: r.str(MAX_TEXT_STR, "new_password")?,
            },
            tag::GET_PROFILE => Self::GetProfile,
            tag::UPDATE_PROFILE => Self::UpdateProfile {
                nickname: r.opt(|r| r.str(MAX_TEXT_STR, "nickname"))?,
                email: r.opt(|r| r.str(MAX_TEXT_STR, "email"))?,
                avatar: match r.u8()? {
                    0 => AvatarUpdate::Keep,
                    1 => AvatarUpdate::Remove,
                    2 => AvatarUpdate::Set(get_avatar(&mut r)?),
                    _ => return Err(WireError::Invalid("avatar update")),
                },
            },
            tag::LOOKUP_USER => Self::LookupUser { user_id: r.str(MAX_SHORT_STR, "user_id")? },
            tag::FETCH_AVATAR => Self::FetchAvatar { user_id: r.str(MAX_SHORT_STR, "user_id")? },
            tag::UPLOAD_KEYS => Self::UploadKeys {
                identity: r.opt(|r| r.bytes(MAX_IDENTITY_LEN, "identity"))?,
                signed_prekey: r.opt(get_prekey)?,
                one_time_prekeys: r.list(MAX_LIST, "one_time_prekeys", get_prekey)?,
                last_resort: r.opt(get_prekey)?,
            },
            tag::KEY_COUNT => Self::KeyCount,
            tag::FETCH_BUNDLE => Self::FetchBundle { user_id: r.str(MAX_SHORT_STR, "user_id")? },
            tag::WATCH => {
                Self::Watch { add: get_user_list(&mut r)?, remove: get_user_list(&mut r)? }
            }
            tag::SEND => Self::Send {
                to: r.str(MAX_SHORT_STR, "to")?,
                msg_id: r.str(MAX_SHORT_STR, "msg_id")?,
                body: r.bytes(MAX_MESSAGE_LEN, "body")?,
            },
            tag::SEND_BATCH => Self::SendBatch {
                to: r.str(MAX_SHORT_STR, "to")?,
                messages: r.list(MAX_LIST, "messages", |r| {
                    Ok(Outbound {
                        msg_id: r.str(MAX_SHORT_STR, "msg_id")?,
                        body: r.bytes(MAX_MESSAGE_LEN, "body")?,
                    })
                })?,
            },
            tag::ACK => Self::Ack { delivery_ids: r.list(MAX_LIST, "delivery_ids", Reader::u64)? },
            tag::PING => Self::Ping { nonce: r.u64()? },
            tag::SET_BLOCKS => {
                Self::SetBlocks { block_all: r.bool()?, users: get_user_list(&mut r)? }
            }
            tag::SET_CONTACTS => {
                Self::SetContacts { share_presence: r.bool()?, users: get_user_list(&mut r)? }
            }
            tag::SUBMIT_REPORT => Self::SubmitReport {
                id: r.str(MAX_SHORT_STR, "id")?,
                kind: match r.u8()? {
                    1 => ReportKind::Diagnostics,
                    2 => ReportKind::Feedback,
                    _ => return Err(WireError::Invalid("report kind")),
                },
                body: r.bytes(MAX_MESSAGE_LEN, "body")?,
            },
            tag::SEND_GROUP => Self::SendGroup {
                to: get_user_list(&mut r)?,
                msg_id: r.str(MAX_SHORT_STR, "msg_id")?,
                body: r.bytes(MAX_MESSAGE_LEN, "body")?,
            },
            tag::BLOB_PUT => {
                let blob_id = r.array()?;
                let size = r.u64()?;
                let offset = r.u64()?;
                if size > MAX_BLOB_LEN {
                    return Err(WireError::FieldTooLong("size"));
                }
                if offset > size {
                    return Err(WireError::Invalid("offset"));
                }
                Self::BlobPut { blob_id, size, offset, recipients: get_user_list(&mut r)? }
            }
            tag::BLOB_STAT => {
                Self::BlobStat { owner: r.str(MAX_SHORT_STR, "owner")?, blob_id: r.array()? }
            }
            tag::BLOB_GET => Self::BlobGet {
                owner: r.str(MAX_SHORT_STR, "owner")?,
                blob_id: r.array()?,
                offset: r.u64()?,
            },
            tag::BLOB_RELEASE => {
                Self::BlobRelease { owner: r.str(MAX_SHORT_STR, "owner")?, blob_id: r.array()? }
            }
            tag::BLOB_CANCEL => Self::BlobCancel { blob_id: r.array()? },
            tag::CALL_ROUTE => {
                Self::CallRoute { call_id: r.array()?, peer: r.str(MAX_SHORT_STR, "peer")? }
            }
            tag::CALL_UNROUTE => Self::CallUnroute { call_id: r.array()? },
            tag::LIST_DEVICES => Self::ListDevices { user_id: r.str(MAX_SHORT_STR, "user_id")? },
            tag::ADD_DEVICE => Self::AddDevice {
                device_key: r.array()?,
                name: r.bytes(MAX_DEVICE_NAME_LEN, "name")?,
            },
            tag::REMOVE_DEVICE => Self::RemoveDevice { device_id: r.u32()? },
            tag::RENAME_DEVICE => Self::RenameDevice {
                device_id: r.u32()?,
                name: r.bytes(MAX_DEVICE_NAME_LEN, "name")?,
            },
            tag::LINK_OPEN => {
                Self::LinkOpen { slot: r.array()?, hello: r.bytes(MAX_LINK_LEN, "hello")? }
            }
            tag::LINK_PUT => {
                Self::LinkPut { slot: r.array()?, data: r.bytes(MAX_LINK_LEN, "data")? }
            }
            tag::LINK_GET => Self::LinkGet { slot: r.array()? },
            tag::FETCH_BUNDLES => Self::FetchBundles {
                user_id: r.str(MAX_SHORT_STR, "user_id")?,
                devices: get_device_ids(&mut r, "devices")?,
            },
            tag::SEND_COPIES => Self::SendCopies {
                to: r.str(MAX_SHORT_STR, "to")?,
                msg_id: r.str(MAX_SHORT_STR, "msg_id")?,
                copies: get_copies(&mut r)?,
            },
            tag::SEND_COPIES_BATCH => Self::SendCopiesBatch {
                to: r.str(MAX_SHORT_STR, "to")?,
                messages: r.list(MAX_LIST, "messages", |r| {
                    Ok(OutboundCopies {
                        msg_id: r.str(MAX_SHORT_STR, "msg_id")?,
                        copies: get_copies(r)?,
                    })
                })?,
            },
            t => return Err(WireError::UnknownTag(t)),
        };
        r.finish()?;
        Ok(req)
    }
}

impl Response {
    /// The frame (length prefix and body).
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut w = Writer::default();
        match self {
            Self::HelloOk { version, challenge, server } => {
                w.u8(tag::R_HELLO_OK);
                w.u16(*version);
                w.raw(challenge);
                w.str(server);
            }
            Self::Ok => w.u8(tag::R_OK),
            Self::Error { kind, retry_after_ms, message } => {
                w.u8(tag::R_ERROR);
                w.u8(kind.code());
                w.u64(*retry_after_ms);
                w.str(message);
            }
            Self::Authenticated { user_id, device_id } => {
                w.u8(tag::R_AUTHENTICATED);
                w.str(user_id);
                w.u32(*device_id);
            }
            Self::Profile(p) => {
                w.u8(tag::R_PROFILE);
                put_profile(&mut w, p);
            }
            Self::Avatar(a) => {
                w.u8(tag::R_AVATAR);
                put_avatar(&mut w, a);
            }
            Self::KeyCount { one_time_remaining } => {
                w.u8(tag::R_KEY_COUNT);
                w.u32(*one_time_remaining);
            }
            Self::Bundle(b) => {
                w.u8(tag::R_BUNDLE);
                put_bundle(&mut w, b);
            }
            Self::Presence { users } => {
                w.u8(tag::R_PRESENCE);
                w.list(users, put_presence);
            }
            Self::Sent { server_ts, duplicate } => {
                w.u8(tag::R_SENT);
                w.u64(*server_ts);
                w.bool(*duplicate);
            }
            Self::Pong { nonce } => {
                w.u8(tag::R_PONG);
                w.u64(*nonce);
            }
            Self::GroupSent { server_ts, refused } => {
                w.u8(tag::R_GROUP_SENT);
                w.u64(*server_ts);
                w.list(refused, |w, f| {
                    w.str(&f.user_id);
                    w.u8(f.kind.code());
                });
            }
            Self::Blob { size, stored } => {
                w.u8(tag::R_BLOB);
                w.u64(*size);
                w.u64(*stored);
            }
            Self::Devices { devices } => {
                w.u8(tag::R_DEVICES);
                w.list(devices, |w, d| {
                    w.u32(d.device_id);
                    w.bytes(&d.name);
                    w.u64(d.linked_at);
                    w.u64(d.last_seen_at);
                });
            }
            Self::DeviceAdded { device_id } => {
                w.u8(tag::R_DEVICE_ADDED);
                w.u32(*device_id);
            }
            Self::LinkSlot(s) => {
                w.u8(tag::R_LINK_SLOT);
                w.bytes(&s.hello);
                w.opt(s.joined.as_ref(), |w, v| w.bytes(v));
                w.opt(s.reply.as_ref(), |w, v| w.bytes(v));
            }
            Self::Bundles { bundles } => {
                w.u8(tag::R_BUNDLES);
                w.list(bundles, put_bundle);
            }
            Self::Mismatch { missing, extra } => {
                w.u8(tag::R_MISMATCH);
                w.list(missing, |w, d| w.u32(*d));
                w.list(extra, |w, d| w.u32(*d));
            }
        }
        framed(w)
    }

    /// Decodes one frame body (without the length prefix).
    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let resp = match r.u8()? {
            tag::R_HELLO_OK => Self::HelloOk {
                version: r.u16()?,
                challenge: r.array()?,
                server: r.str(MAX_TEXT_STR, "server")?,
            },
            tag::R_OK => Self::Ok,
            tag::R_ERROR => Self::Error {
                kind: ErrorKind::from_code(r.u8()?),
                retry_after_ms: r.u64()?,
                message: r.str(MAX_TEXT_STR, "message")?,
            },
            tag::R_AUTHENTICATED => Self::Authenticated {
                user_id: r.str(MAX_SHORT_STR, "user_id")?,
                device_id: r.u32()?,
            },
            tag::R_PROFILE => Self::Profile(get_profile(&mut r)?),
            tag::R_AVATAR => Self::Avatar(get_avatar(&mut r)?),
            tag::R_KEY_COUNT => Self::KeyCount { one_time_remaining: r.u32()? },
            tag::R_BUNDLE => Self::Bundle(get_bundle(&mut r)?),
            tag::R_PRESENCE => Self::Presence { users: r.list(MAX_LIST, "users", get_presence)? },
            tag::R_SENT => Self::Sent { server_ts: r.u64()?, duplicate: r.bool()? },
            tag::R_PONG => Self::Pong { nonce: r.u64()? },
            tag::R_GROUP_SENT => Self::GroupSent {
                server_ts: r.u64()?,
                refused: r.list(MAX_LIST, "refused", |r| {
                    Ok(Refusal {
                        user_id: r.str(MAX_SHORT_STR, "user_id")?,
                        kind: ErrorKind::from_code(r.u8()?),
                    })
                })?,
            },
            tag::R_BLOB => {
                let size = r.u64()?;
                let stored = r.u64()?;
                if size > MAX_BLOB_LEN || stored > size {
                    return Err(WireError::Invalid("blob size"));
                }
                Self::Blob { size, stored }
            }
            tag::R_DEVICES => Self::Devices {
                devices: r.list(MAX_DEVICES, "devices", |r| {
                    Ok(DeviceInfo {
                        device_id: r.u32()?,
                        name: r.bytes(MAX_DEVICE_NAME_LEN, "name")?,
                        linked_at: r.u64()?,
                        last_seen_at: r.u64()?,
                    })
                })?,
            },
            tag::R_DEVICE_ADDED => Self::DeviceAdded { device_id: r.u32()? },
            tag::R_LINK_SLOT => Self::LinkSlot(LinkSlot {
                hello: r.bytes(MAX_LINK_LEN, "hello")?,
                joined: r.opt(|r| r.bytes(MAX_LINK_LEN, "joined"))?,
                reply: r.opt(|r| r.bytes(MAX_LINK_LEN, "reply"))?,
            }),
            tag::R_BUNDLES => {
                Self::Bundles { bundles: r.list(MAX_DEVICES, "bundles", get_bundle)? }
            }
            tag::R_MISMATCH => Self::Mismatch {
                missing: get_device_ids(&mut r, "missing")?,
                extra: get_device_ids(&mut r, "extra")?,
            },
            t => return Err(WireError::UnknownTag(t)),
        };
        r.finish()?;
        Ok(resp)
    }

    /// An error response.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self::Error { kind, retry_after_ms: 0, message: message.into() }
    }
}

impl Push {
    /// The frame (length prefix and body).
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut w = Writer::default();
        match self {
            Self::Message { delivery_id, from, from_device, msg_id, server_ts, body } => {
                w.u8(tag::P_MESSAGE);
                w.u64(*delivery_id);
                w.str(from);
                w.u32(*from_device);
                w.str(msg_id);
                w.u64(*server_ts);
                w.bytes(body);
            }
            Self::Presence(p) => {
                w.u8(tag::P_PRESENCE);
                put_presence(&mut w, p);
            }
            Self::ProfileChanged(p) => {
                w.u8(tag::P_PROFILE_CHANGED);
                put_profile(&mut w, p);
            }
            Self::LoggedOut => w.u8(tag::P_LOGGED_OUT),
            Self::DevicesChanged => w.u8(tag::P_DEVICES_CHANGED),
        }
        framed(w)
    }

    /// Decodes one frame body (without the length prefix).
    pub fn decode(body: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(body);
        let push = match r.u8()? {
            tag::P_MESSAGE => Self::Message {
                delivery_id: r.u64()?,
                from: r.str(MAX_SHORT_STR, "from")?,
                from_device: r.u32()?,
                msg_id: r.str(MAX_SHORT_STR, "msg_id")?,
                server_ts: r.u64()?,
                body: r.bytes(MAX_MESSAGE_LEN, "body")?,
            },
            tag::P_PRESENCE => Self::Presence(get_presence(&mut r)?),
            tag::P_PROFILE_CHANGED => Self::ProfileChanged(get_profile(&mut r)?),
            tag::P_LOGGED_OUT => Self::LoggedOut,
            tag::P_DEVICES_CHANGED => Self::DevicesChanged,
            t => return Err(WireError::UnknownTag(t)),
        };
        r.finish()?;
        Ok(push)
    }
}
