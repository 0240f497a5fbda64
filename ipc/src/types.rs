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
