//! Params, results, objects and events of the implemented methods, exactly as they look
//! on the wire. These are the only serde types of the IPC boundary: the daemon converts
//! its domain types to and from these explicitly.
//!
//! Param structs ignore unknown fields (the spec's rule) and results always carry every
//! field, with `null` where a value is absent.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `{}`: for methods without params or with an empty result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Empty {}

// ---------------------------------------------------------------------------------------
// system

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HelloParams {
    /// The frontend's name and version (or a browser's user agent), kept for diagnostics.
    #[serde(default)]
    pub client: Option<String>,
    /// The protocol version the client speaks; only 1 exists.
    #[serde(default)]
    pub protocol: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HelloResult {
    /// `"letstalkd X.Y.Z"`.
    pub daemon: String,
    pub protocol: u32,
    /// Every method this daemon implements.
    pub methods: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RelayState {
    Connected,
    Connecting,
    Offline,
    /// No relay is configured.
    Disabled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RelayStatus {
    pub state: RelayState,
    /// `HOST:PORT`, or null without a relay.
    pub address: Option<String>,
    /// The last measured round-trip time, while connected.
    pub rtt_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StatusResult {
    pub version: String,
    pub user_id: Option<String>,
    pub relay: RelayStatus,
    pub network: Network,
    /// Outgoing messages stored on the device and not yet accepted by the relay.
    pub queued_out: u64,
    pub uptime_s: u64,
}

// ---------------------------------------------------------------------------------------
// settings

/// Automatic download of received files, per network type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AutoDownload {
    pub wifi: bool,
    pub cellular: bool,
}

/// Keepalive interval towards the relay, in seconds, per network type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct KeepaliveS {
    pub wifi: u32,
    pub cellular: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Settings {
    /// "Block everyone": every incoming message and call is refused at the relay and
    /// presence is hidden until this is turned off.
    pub block_all: bool,
    pub read_receipts: bool,
    pub typing: bool,
    /// Whether contacts see this user's presence; false shows it as `hidden` to
    /// everyone, contacts included (enforced by the relay).
    pub share_presence: bool,
    /// Consent to upload diagnostics; `diagnostics.upload` is refused without it.
    pub diagnostics_upload: bool,
    pub auto_download: AutoDownload,
    pub keepalive_s: KeepaliveS,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AutoDownloadPatch {
    #[serde(default)]
    pub wifi: Option<bool>,
    #[serde(default)]
    pub cellular: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct KeepalivePatch {
    #[serde(default)]
    pub wifi: Option<u32>,
    #[serde(default)]
    pub cellular: Option<u32>,
}

/// `settings.set` params: any subset of [`Settings`], nested objects too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SettingsPatch {
    #[serde(default)]
    pub block_all: Option<bool>,
    #[serde(default)]
    pub read_receipts: Option<bool>,
    #[serde(default)]
    pub typing: Option<bool>,
    #[serde(default)]
    pub share_presence: Option<bool>,
    #[serde(default)]
    pub diagnostics_upload: Option<bool>,
    #[serde(default)]
    pub auto_download: Option<AutoDownloadPatch>,
    /// Each value 5 to 3600 seconds.
    #[serde(default)]
    pub keepalive_s: Option<KeepalivePatch>,
}

// ---------------------------------------------------------------------------------------
// events

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SubscribeParams {
    /// Replay every persisted event after this `seq` first.
    #[serde(default)]
    pub since: Option<u64>,
    /// Only these kinds (all when absent).
    #[serde(default)]
    pub kinds: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SubscribeResult {
    /// The `seq` of the newest persisted event at the time of subscribing.
    pub last_seq: u64,
}

/// The params of an `event` notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Event {
    pub seq: u64,
    /// Milliseconds since the Unix epoch.
    pub at: i64,
    #[serde(flatten)]
    pub body: EventBody,
}

/// Event kinds and their fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind")]
pub enum EventBody {
    #[serde(rename = "settings.changed")]
    SettingsChanged { settings: Settings },
    #[serde(rename = "connection.state")]
    ConnectionState { state: RelayState, address: Option<String> },
    #[serde(rename = "network.changed")]
    NetworkChanged { network: Network },
    #[serde(rename = "message.received")]
    MessageReceived { message: Message },
    #[serde(rename = "message.state")]
    MessageState { message_id: String, conversation: String, state: MessageState },
    #[serde(rename = "contact.presence")]
    ContactPresence { user_id: String, presence: Presence },
    #[serde(rename = "contact.changed")]
    ContactChanged { contact: Contact },
    #[serde(rename = "account.changed")]
    AccountChanged { account: Account },
    #[serde(rename = "account.logged_out")]
    AccountLoggedOut {},
    #[serde(rename = "group.changed")]
    GroupChanged { group: Group },
    /// A device joined the account with a code from `devices.link_start`.
    #[serde(rename = "device.linked")]
    DeviceLinked { device: LinkedDevice },
    #[serde(rename = "history.cleared")]
    HistoryCleared { deleted: u64 },
    /// A file transfer advanced; `bytes == total` when it completed.
    #[serde(rename = "file.progress")]
    FileProgress { message_id: String, direction: TransferDirection, bytes: u64, total: u64 },
    /// A file transfer changed state (an addition to the spec: cancelled, failed, done).
    #[serde(rename = "file.state")]
    FileState { message_id: String, conversation: String, transfer: FileTransfer },
    #[serde(rename = "call.incoming")]
    CallIncoming { call: Call },
    #[serde(rename = "call.state")]
    CallState { call: Call },
    /// An addition to the spec: a contact is typing in a conversation (`typing: true` on
    /// both sides; at most one every few seconds per conversation and contact).
    #[serde(rename = "conversation.typing")]
    Typing { conversation: String, user_id: String },
    /// An addition to the spec: an incoming message that should alert the user (a
    /// frontend shows a notification for it). Not raised for muted conversations, for
    /// system messages or for what this account sent.
    #[serde(rename = "notification")]
    Notification { conversation: String, message_id: String, from: String },
    /// The subscription was dropped because the client read too slowly; `seq` is the
    /// last event it was sent. Re-subscribe with `since` to catch up.
    #[serde(rename = "events.overflow")]
    Overflow {},
}

impl EventBody {
    /// The `kind` string of this event.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::SettingsChanged { .. } => "settings.changed",
            Self::ConnectionState { .. } => "connection.state",
            Self::NetworkChanged { .. } => "network.changed",
            Self::MessageReceived { .. } => "message.received",
            Self::MessageState { .. } => "message.state",
            Self::ContactPresence { .. } => "contact.presence",
            Self::ContactChanged { .. } => "contact.changed",
            Self::AccountChanged { .. } => "account.changed",
            Self::AccountLoggedOut {} => "account.logged_out",
            Self::GroupChanged { .. } => "group.changed",
            Self::DeviceLinked { .. } => "device.linked",
            Self::HistoryCleared { .. } => "history.cleared",
            Self::FileProgress { .. } => "file.progress",
            Self::FileState { .. } => "file.state",
            Self::CallIncoming { .. } => "call.incoming",
            Self::CallState { .. } => "call.state",
            Self::Typing { .. } => "conversation.typing",
            Self::Notification { .. } => "notification",
            Self::Overflow {} => "events.overflow",
        }
    }
}

// ---------------------------------------------------------------------------------------
// device

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Chassis {
    Handset,
    Tablet,
    Laptop,
    Desktop,
    Server,
    Embedded,
    Vm,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Hardware {
    pub model: Option<String>,
    pub vendor: Option<String>,
    pub chassis: Chassis,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Os {
    pub name: Option<String>,
    pub version: Option<String>,
    pub kernel: Option<String>,
    pub arch: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NetworkType {
    Wifi,
    Cellular,
    Ethernet,
    None,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CellularTechnology {
    #[serde(rename = "2g")]
    G2,
    #[serde(rename = "3g")]
    G3,
    #[serde(rename = "4g")]
    G4,
    #[serde(rename = "5g")]
    G5,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Cellular {
    pub technology: Option<CellularTechnology>,
    pub operator: Option<String>,
    pub signal_percent: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Network {
    #[serde(rename = "type")]
    pub kind: NetworkType,
    /// The interface carrying the default route.
    pub interface: Option<String>,
    pub cellular: Option<Cellular>,
    pub metered: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Frontend {
    /// The `client` string the frontend gave in `system.hello`.
    pub client: String,
    pub connected_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeviceInfo {
    pub hardware: Hardware,
    pub os: Os,
    pub network: Network,
    pub online: bool,
    /// Derived from the machine ID for this application alone; never the raw ID.
    pub device_id: String,
    pub frontends: Vec<Frontend>,
}

// ---------------------------------------------------------------------------------------
// diagnostics and feedback

/// What `diagnostics.upload` sends, exactly: the device, its network-type history, call
/// log entries, connection events and the frontends that introduced themselves. Never
/// any message content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DiagnosticsReport {
    pub generated_at: i64,
    /// `letstalkd X.Y.Z`.
    pub daemon: String,
    pub device: DeviceInfo,
    /// Frontends that introduced themselves with `system.hello`, most recent first.
    pub frontends: Vec<FrontendSeen>,
    /// Network-type changes, oldest first.
    pub network_history: Vec<NetworkEntry>,
    /// Call log entries: time, duration and receiver only.
    pub calls: Vec<CallEntry>,
    /// Relay connection events and errors, oldest first.
    pub connection_log: Vec<ConnectionEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FrontendSeen {
    pub client: String,
    pub first_seen: i64,
    pub last_seen: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NetworkEntry {
    pub at: i64,
    #[serde(rename = "type")]
    pub kind: NetworkType,
    pub interface: Option<String>,
    /// The cellular generation (`2g` to `5g`) on a cellular network, when known.
    #[serde(default)]
    pub technology: Option<CellularTechnology>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CallEntry {
    pub started_at: i64,
    pub duration_s: u64,
    /// `out`: this account called `receiver`; `in`: `caller` called this account.
    pub direction: Direction,
    /// Who placed the call.
    pub caller: String,
    /// Who was called.
    pub receiver: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConnectionEntry {
    pub at: i64,
    /// `connected`, `connecting`, `offline`, ...
    pub event: String,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PreviewResult {
    pub report: DiagnosticsReport,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UploadResult {
    pub report_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FeedbackParams {
    /// 1 byte to 64 KiB of UTF-8.
    pub text: String,
    /// Attach the diagnostics report (consent for this one report).
    #[serde(default)]
    pub include_diagnostics: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FeedbackResult {
    pub feedback_id: String,
}

// ---------------------------------------------------------------------------------------
// account

/// A password in params. Its `Debug` never shows it, so it cannot reach a log by
/// accident.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(transparent)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AvatarMeta {
    pub sha256: String,
    pub size: u64,
    pub mime: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Account {
    pub user_id: String,
    pub email: String,
    pub nickname: String,
    pub avatar: Option<AvatarMeta>,
    pub created_at: i64,
    /// The fingerprint of this device's identity key.
    pub fingerprint: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RegisterParams {
    pub user_id: String,
    pub email: String,
    pub nickname: String,
    pub password: Password,
    /// An absolute path to a PNG, JPEG or WebP image of at most 1 MiB.
    #[serde(default)]
    pub avatar: Option<String>,
    /// How this device is shown in `devices.list` (1 to 64 characters); absent: the
    /// daemon names it (host name, else hardware model).
    #[serde(default)]
    pub device_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LoginParams {
    pub user_id: String,
    pub password: Password,
    /// As for `account.register`; absent: a device already named keeps its name, an
    /// unnamed one is named by the daemon.
    #[serde(default)]
    pub device_name: Option<String>,
}

/// `devices.link_start`: the code to type (or scan) on the new device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LinkStartResult {
    /// 16 characters in four dash-separated groups; case, spaces and dashes do not
    /// matter when it is typed.
    pub code: String,
    /// ms since the Unix epoch.
    pub expires_at: i64,
}

/// `account.link`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LinkParams {
    pub code: String,
    /// How this device is shown in `devices.list` (1 to 64 characters).
    pub device_name: String,
}

/// One of the account's devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LinkedDevice {
    /// The relay's number for the device within the account (never reused).
    pub device_id: u32,
    pub name: String,
    /// ms since the Unix epoch.
    pub linked_at: i64,
    /// ms since the Unix epoch; null if never seen connected.
    pub last_seen_at: Option<i64>,
    pub this_device: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DevicesList {
    pub devices: Vec<LinkedDevice>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeviceIdParams {
    pub device_id: u32,
}

/// `devices.rename`: any device of the account, this one too.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DeviceRenameParams {
    pub device_id: u32,
    /// 1 to 64 characters, no control characters (surrounding spaces are trimmed).
    pub name: String,
}

/// `account.update`: absent fields stay; `avatar: null` removes the avatar.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UpdateParams {
    #[serde(default)]
    pub nickname: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub avatar: Option<Option<String>>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ChangePasswordParams {
    pub old_password: Password,
    pub new_password: Password,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AvatarParams {
    /// Whose avatar (default: one's own).
    #[serde(default)]
    pub user_id: Option<String>,
    /// Where to write it (default: the daemon's data directory).
    #[serde(default)]
    pub dest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AvatarResult {
    pub path: String,
    pub sha256: String,
    pub mime: String,
}

// ---------------------------------------------------------------------------------------
// contacts

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    Online,
    Offline,
    /// The contact blocks us, blocks everyone, or we block them.
    Hidden,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Contact {
    pub user_id: String,
    pub nickname: String,
    pub alias: Option<String>,
    pub blocked: bool,
    pub presence: Presence,
    pub last_seen_at: Option<i64>,
    /// 60 digits in groups of five; null until the contact's identity key is known.
    pub safety_number: Option<String>,
    /// The user compared the safety number of the contact's current identity key.
    pub verified: bool,
    /// When the contact's identity key last changed (ms since the epoch), if it did.
    pub identity_changed_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ContactsAddParams {
    pub user_id: String,
    #[serde(default)]
    pub alias: Option<String>,
}

// ---------------------------------------------------------------------------------------
// groups

/// A group as this device knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Group {
    pub group_id: String,
    pub name: String,
    /// Every member, this device's user included, sorted.
    pub members: Vec<String>,
    /// Members who may add, remove and rename; the creator to begin with.
    pub admins: Vec<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GroupsCreateParams {
    /// 1 to 64 printable characters.
    pub name: String,
    /// User IDs to add besides the creator (at most 255).
    pub members: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GroupIdParams {
    pub group_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GroupMembersParams {
    pub group_id: String,
    pub members: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GroupRenameParams {
    pub group_id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GroupsList {
    pub groups: Vec<Group>,
}

// ---------------------------------------------------------------------------------------
// privacy

/// Params of a destructive call: without `confirm: true` it answers `confirm_required`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConfirmParams {
    #[serde(default)]
    pub confirm: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClearHistoryResult {
    /// Messages deleted.
    pub deleted: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RestoreDefaultsResult {
    /// Whether the account was deleted on the relay (false when it could not be reached
    /// or there was no account).
    pub relay_account_deleted: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserIdParams {
    pub user_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ContactsList {
    pub contacts: Vec<Contact>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VerifyResult {
    pub safety_number: String,
    pub fingerprint: String,
    pub verified: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MarkVerifiedParams {
    pub user_id: String,
    pub verified: bool,
}

/// `contacts.trust`: accepts the contact's current identity key, as verified when
/// `safety_number` is given (and equals the current one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TrustParams {
    pub user_id: String,
    #[serde(default)]
    pub safety_number: Option<String>,
}

// ---------------------------------------------------------------------------------------
// messages and conversations

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    In,
    Out,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    Text,
    File,
    Call,
    System,
}

/// The delivery state of a message. Incoming messages are `delivered` (they are here).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum MessageState {
    Failed,
    Queued,
    Sent,
    Delivered,
    Read,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FileInfo {
    pub name: String,
    /// Bytes of the file itself (not its encrypted form).
    pub size: u64,
    pub mime: String,
    /// SHA-256 of the file, 64 hex digits.
    pub sha256: String,
    /// Where the file is readable on this device (the sender's original, or where
    /// `files.download` wrote it); null until then.
    pub path: Option<String>,
    /// Where the transfer stands (an addition to the spec's object).
    #[serde(default)]
    pub transfer: Option<FileTransfer>,
}

/// Where a file's transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FileTransfer {
    /// Outgoing: being streamed to the relay.
    Uploading,
    /// Outgoing: on the relay; the message carrying its key follows the usual states.
    Uploaded,
    /// Incoming: on the relay, not downloaded (automatic download did not apply).
    Available,
    /// Incoming: being downloaded.
    Downloading,
    /// Incoming: downloaded and checked; kept encrypted on this device.
    Done,
    /// Cancelled on this side or the other.
    Cancelled,
    /// Failed for good (e.g. the relay no longer has it, or the hash did not match).
    Failed,
}

/// Which way a file moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransferDirection {
    Up,
    Down,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FilesSendParams {
    /// `user:<id>`.
    pub to: String,
    /// An absolute path to a regular file of at most 2 GiB.
    pub path: String,
    /// Text shown with the file (at most 64 KiB of UTF-8).
    #[serde(default)]
    pub caption: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FilesDownloadParams {
    pub message_id: String,
    /// An absolute path to write the file to (default: the daemon's directory of
    /// opened files, see PROTOCOL.md).
    #[serde(default)]
    pub dest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct FilesDownloadResult {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Message {
    pub message_id: String,
    /// `user:<id>` or `group:<id>`.
    pub conversation: String,
    pub from: String,
    pub direction: Direction,
    pub kind: MessageKind,
    pub text: Option<String>,
    pub reply_to: Option<String>,
    pub file: Option<FileInfo>,
    pub created_at: i64,
    pub received_at: Option<i64>,
    pub state: MessageState,
    pub read: bool,
    /// Why a message `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<crate::RpcError>,
    /// An outgoing group message: each member's own state (`state` is the least
    /// advanced of these).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub states: Option<std::collections::BTreeMap<String, MessageState>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SendParams {
    pub to: String,
    pub text: String,
    #[serde(default)]
    pub reply_to: Option<String>,
    /// Makes retries safe: a repeated call with the same value returns the first
    /// call's message.
    #[serde(default)]
    pub client_msg_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MessageResult {
    pub message: Message,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ListParams {
    pub conversation: String,
    #[serde(default)]
    pub before: Option<String>,
    /// 1 to 500, default 50.
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ListResult {
    pub messages: Vec<Message>,
    pub has_more: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MessageIdParams {
    pub message_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MarkReadParams {
    pub conversation: String,
    #[serde(default)]
    pub up_to: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MarkedResult {
    pub marked: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationSummary {
    pub conversation: String,
    pub title: String,
    pub unread: u64,
    pub last_message: Option<Message>,
    pub muted: bool,
}

/// `messages.typing`: tell the conversation's other members that this user is typing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TypingParams {
    pub conversation: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TypingResult {
    /// Whether a typing notification went out (false with `settings.typing` off, or
    /// within a few seconds of the last one for this conversation).
    pub sent: bool,
}

/// `conversations.mute`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MuteParams {
    pub conversation: String,
    pub muted: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConversationsList {
    pub conversations: Vec<ConversationSummary>,
}

// ---------------------------------------------------------------------------------------
// calls

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallMedia {
    Audio,
    Video,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    Ringing,
    Active,
    Ended,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CallEndReason {
    Hangup,
    Rejected,
    Missed,
    Failed,
    Busy,
    /// Another device of this account took (or declined) the call that rang here too.
    AnsweredElsewhere,
}

/// A call, and its entry in the call log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Call {
    pub call_id: String,
    /// The other side's user ID.
    pub peer: String,
    pub direction: Direction,
    pub media: CallMedia,
    pub state: CallState,
    pub started_at: i64,
    pub answered_at: Option<i64>,
    pub ended_at: Option<i64>,
    /// Seconds from answer to end (0 for a call never answered); null until it ends.
    pub duration_s: Option<u64>,
    pub end_reason: Option<CallEndReason>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CallsStartParams {
    /// `user:<id>`.
    pub to: String,
    pub media: CallMedia,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CallIdParams {
    pub call_id: String,
}

/// A call and the path of its media socket (`SOCK_SEQPACKET`, mode 0600).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CallSocketResult {
    pub call: Call,
    pub media_socket: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CallResult {
    pub call: Call,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CallsListParams {
    /// 1 to 1000, default 100.
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CallsList {
    /// Most recent first.
    pub calls: Vec<Call>,
}
