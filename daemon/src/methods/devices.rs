//! `devices.*` and `account.link`: one account on several devices. A logged-in device
//! makes a one-time code (`devices.link_start`) and waits in the background for a new
//! device to use it; the new device (`account.link`) joins with the code and receives the
//! account's identity key and state, sealed under a key only the two devices agreed on
//! (SPAKE2 from the code, `letstalk_crypto::link`). The relay holds the rendezvous and
//! sees only the slot id, the SPAKE2 messages and ciphertext.
//!
//! Every device has a name, sealed under a key from the identity key before the relay
//! sees it: a linked device's comes with `AddDevice`; a device that registered or logged
//! in names itself (`OwnName`, kept in `meta` until the relay took it, so a relay out of
//! reach gets it at the next connection, `name_own_device`); `devices.rename` renames
//! any device of the account.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use rand_core::{OsRng, RngCore};
use rusqlite::OptionalExtension;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use letstalk_crypto::IdentityKeyPair;
use letstalk_crypto::link::{LinkCode, LinkJoiner, LinkOpener, open_device_name, seal_device_name};
use letstalk_ipc::types::{
    Account as IpcAccount, DeviceIdParams, DeviceRenameParams, DevicesList, Empty, EventBody,
    LinkParams, LinkStartResult, LinkedDevice,
};
use letstalk_ipc::{ErrorKind, RpcError};
use letstalk_wire::{
    DeviceInfo, ErrorKind as WireKind, LINK_SLOT_TTL_MS, LinkSlot, Request, Response,
};

use super::account::{credentials, current, relay, store_account, upload_keys};
use super::internal;
use crate::account::{Account, generate_prekeys};
use crate::linking::{self, Snapshot};
use crate::relay::{RelayApi, RelayError, check, expect_ok};
use crate::{Daemon, events, now_ms, validate};

/// How often each side looks at the rendezvous while it waits for the other.
const POLL: Duration = Duration::from_secs(1);
/// How long a joining device waits for the linking device's answer once it has joined
/// (the answer is built and sealed at once, so this covers a slow network only).
const REPLY_WAIT: Duration = Duration::from_secs(60);
/// Longest device name, in characters.
const NAME_MAX: usize = 64;

fn code_error() -> RpcError {
    RpcError::new(ErrorKind::NotFound, "unknown or expired link code")
}

/// The rendezvous, or `None` once it expired.
async fn slot(relay: &dyn RelayApi, slot: [u8; 16]) -> Result<Option<LinkSlot>, RelayError> {
    match relay.request(Request::LinkGet { slot }).await.and_then(check) {
        Ok(Response::LinkSlot(s)) => Ok(Some(s)),
        Ok(_) => Err(RelayError::Unexpected),
        Err(RelayError::Refused { kind: WireKind::NotFound, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

pub(super) async fn link_start(
    daemon: &Arc<Daemon>,
    _: Empty,
) -> Result<LinkStartResult, RpcError> {
    let me = current(daemon).await?;
    let relay = relay(daemon)?;
    let code = LinkCode::generate(&mut OsRng);
    let (opener, hello) = LinkOpener::start(&code, &mut OsRng);
    let slot = code.slot();
    expect_ok(relay.as_ref(), Request::LinkOpen { slot, hello }).await.map_err(|e| e.to_rpc(""))?;
    let expires_at = now_ms().saturating_add(i64::try_from(LINK_SLOT_TTL_MS).unwrap_or(i64::MAX));
    // One code at a time: the relay replaced the previous rendezvous, so its waiter ends.
    let cancel = daemon.start_linking();
    tokio::spawn(serve_link(daemon.clone(), relay, me, slot, opener, expires_at, cancel));
    Ok(LinkStartResult { code: code.display(), expires_at })
}

/// The linking device's side, in the background: waits for a device to join, checks that
/// it knew the code, adds it to the account and sends it the account's state.
async fn serve_link(
    daemon: Arc<Daemon>,
    relay: Arc<dyn RelayApi>,
    me: Account,
    slot: [u8; 16],
    opener: LinkOpener,
    expires_at: i64,
    cancel: CancellationToken,
) {
    let joined = loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(POLL) => {}
        }
        if now_ms() >= expires_at {
            return;
        }
        match self::slot(relay.as_ref(), slot).await {
            Ok(Some(LinkSlot { joined: Some(joined), .. })) => break joined,
            Ok(Some(_)) => {}
            Ok(None) => return,
            // Offline for now: the code stays good until it expires.
            Err(e) => tracing::debug!(error = %e, "waiting for a device to link"),
        }
    };
    // One attempt per code: a wrong code spends it (each attempt is a guess at it).
    let (claim, reply) = match opener.accept(&joined) {
        Ok(x) => x,
        Err(e) => {
            tracing::info!(error = %e, "a device tried to link with a wrong code; the code is spent");
            // An answer that opens for nobody: the joining device learns at once that
            // its code was wrong instead of waiting for one.
            let mut spent = vec![0u8; 48];
            OsRng.fill_bytes(&mut spent);
            if let Err(e) = expect_ok(relay.as_ref(), Request::LinkPut { slot, data: spent }).await
            {
                tracing::debug!(error = %e, "closing a spent link code");
            }
            return;
        }
    };
    if let Err(e) = admit(&daemon, relay.as_ref(), &me, slot, &claim, reply).await {
        tracing::warn!(error = %e.message, "linking a device failed");
    }
}

/// Adds the device that proved the code and sends it the account's state.
async fn admit(
    daemon: &Arc<Daemon>,
    relay: &dyn RelayApi,
    me: &Account,
    slot: [u8; 16],
    claim: &[u8],
    reply: letstalk_crypto::link::LinkReply,
) -> Result<(), RpcError> {
    let (device_key, name) = parse_claim(claim)
        .ok_or_else(|| RpcError::invalid_params("device", "malformed device claim"))?;
    let sealed_name = seal_device_name(&me.identity, &name, &mut OsRng)
        .map_err(|_| RpcError::internal("sealing the device name"))?;
    let answer = relay
        .request(Request::AddDevice { device_key, name: sealed_name })
        .await
        .and_then(check)
        .map_err(|e| e.to_rpc("device"))?;
    let Response::DeviceAdded { device_id } = answer else {
        return Err(RpcError::internal("unexpected answer from the relay"));
    };
    let snapshot = {
        let user = me.user_id.clone();
        daemon
            .store
            .read(move |c| {
                let account = Account::load(c)?.filter(|a| a.user_id == user);
                account.map(|a| linking::export(c, &a, device_id)).transpose()
            })
            .await
            .map_err(internal)?
            .ok_or_else(|| RpcError::new(ErrorKind::NotLoggedIn, "the account left this device"))?
    };
    let payload = Zeroizing::new(
        serde_json::to_vec(&snapshot).map_err(|_| RpcError::internal("encoding the account"))?,
    );
    let sealed = reply.seal(&payload).map_err(|_| RpcError::internal("sealing the account"))?;
    expect_ok(relay, Request::LinkPut { slot, data: sealed }).await.map_err(|e| e.to_rpc(""))?;
    let device = LinkedDevice {
        device_id,
        name,
        linked_at: now_ms(),
        last_seen_at: None,
        this_device: false,
    };
    let user = me.user_id.clone();
    let seq = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            // The relay tells the account's other devices (`DevicesChanged`), not the one
            // that added it: what this device knew of its own devices (perhaps that
            // there are none, so no sent copies) is forgotten here.
            crate::outbox::forget_known_devices(&tx, &user)?;
            let seq = events::append(&tx, &EventBody::DeviceLinked { device }, now_ms())?;
            tx.commit()?;
            Ok(seq)
        })
        .await
        .map_err(internal)?;
    daemon.bus.published(seq);
    tracing::info!(device_id, "a device joined the account");
    Ok(())
}

/// The joining device's claim: its Ed25519 public key, then its name.
fn claim(device_key: &[u8; 32], name: &str) -> Vec<u8> {
    let mut c = device_key.to_vec();
    c.extend_from_slice(name.as_bytes());
    c
}

fn parse_claim(claim: &[u8]) -> Option<([u8; 32], String)> {
    let (key, name) = claim.split_first_chunk::<32>()?;
    let name = std::str::from_utf8(name).ok()?;
    device_name("device_name", name).ok().map(|n| (*key, n))
}

/// A device name as every method takes it: trimmed, 1 to 64 characters, no control
/// characters; `field` names the param in the error.
pub(super) fn device_name(field: &str, raw: &str) -> Result<String, RpcError> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > NAME_MAX || name.chars().any(char::is_control) {
        return Err(RpcError::invalid_params(
            field,
            format!("1 to {NAME_MAX} characters, no control characters"),
        ));
    }
    Ok(name.to_owned())
}

pub(super) async fn link(daemon: &Arc<Daemon>, p: LinkParams) -> Result<IpcAccount, RpcError> {
    if let Some(user) = daemon.user() {
        return Err(RpcError::new(
            ErrorKind::Conflict,
            format!("this device already has an account ({user}): log out first"),
        ));
    }
    let code = LinkCode::parse(&p.code)
        .map_err(|_| RpcError::invalid_params("code", "not a link code"))?;
    let name = device_name("device_name", &p.device_name)?;
    let relay = relay(daemon)?;
    let rendezvous = code.slot();
    let hello = match slot(relay.as_ref(), rendezvous).await.map_err(|e| e.to_rpc("code"))? {
        Some(s) if s.joined.is_none() => s.hello,
        // Used by another device already, or expired.
        _ => return Err(code_error()),
    };
    let mut seed = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(seed.as_mut());
    let public = SigningKey::from_bytes(&seed).verifying_key().to_bytes();
    let (joiner, joined) = LinkJoiner::join(&code, &hello, &claim(&public, &name), &mut OsRng)
        .map_err(|_| code_error())?;
    match expect_ok(relay.as_ref(), Request::LinkPut { slot: rendezvous, data: joined }).await {
        Ok(()) => {}
        Err(RelayError::Refused { kind: WireKind::Conflict | WireKind::NotFound, .. }) => {
            return Err(code_error());
        }
        Err(e) => return Err(e.to_rpc("code")),
    }
    let deadline = tokio::time::Instant::now() + REPLY_WAIT;
    let sealed = loop {
        tokio::time::sleep(POLL).await;
        match slot(relay.as_ref(), rendezvous).await {
            Ok(Some(LinkSlot { reply: Some(reply), .. })) => break reply,
            Ok(Some(_)) => {}
            Ok(None) => return Err(code_error()),
            Err(e) => tracing::debug!(error = %e, "waiting for the linking device"),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(RpcError::new(
                ErrorKind::RelayUnavailable,
                "the other device did not answer: is it online with the code still open?",
            ));
        }
    };
    // A device that did not know the code (the code was mistyped, or the relay played
    // the other side) cannot seal an answer that opens.
    let payload = joiner.open_reply(&sealed).map_err(|_| code_error())?;
    let snapshot: Snapshot = serde_json::from_slice(&payload)
        .map_err(|_| RpcError::internal("the linking device sent a malformed account"))?;
    let a = account_from(&snapshot, seed)?;
    relay.authenticate(credentials(&a)).await.map_err(|e| e.to_rpc(""))?;
    let prekeys = generate_prekeys(&a.identity, &mut OsRng);
    upload_keys(relay.as_ref(), &a, &prekeys).await?;
    // The device that added this one sealed its name into `AddDevice`.
    store_account(daemon, a, prekeys, Some(snapshot), OwnName::Sent).await
}

/// The account row a linked device keeps: the account's identity, its own device key.
fn account_from(s: &Snapshot, seed: Zeroizing<[u8; 32]>) -> Result<Account, RpcError> {
    let malformed = |what: &str| RpcError::internal(format!("the linked account's {what}"));
    let identity = hex::decode(&s.identity)
        .ok()
        .and_then(|b| IdentityKeyPair::from_bytes(&Zeroizing::new(b)).ok())
        .ok_or_else(|| malformed("identity key"))?;
    let avatar = match (&s.avatar, &s.avatar_mime) {
        (Some(data), Some(mime)) => {
            Some((hex::decode(data).map_err(|_| malformed("avatar"))?, mime.clone()))
        }
        _ => None,
    };
    Ok(Account {
        user_id: validate::user_id("user_id", &s.user_id)?,
        email: s.email.clone(),
        nickname: s.nickname.clone(),
        avatar,
        created_at: s.created_at,
        device_key: seed,
        identity,
        logged_in: true,
    })
}

pub(super) async fn list(daemon: &Arc<Daemon>, _: Empty) -> Result<DevicesList, RpcError> {
    let me = current(daemon).await?;
    let relay = relay(daemon)?;
    let this = relay.device_id();
    let devices = own_devices(relay.as_ref(), &me).await.map_err(|e| e.to_rpc(""))?;
    let devices = devices.into_iter().map(|d| linked_device(&me, this, d)).collect();
    Ok(DevicesList { devices })
}

/// The account's devices as the relay lists them (names sealed).
async fn own_devices(relay: &dyn RelayApi, me: &Account) -> Result<Vec<DeviceInfo>, RelayError> {
    let answer = relay.request(Request::ListDevices { user_id: me.user_id.clone() }).await;
    match answer.and_then(check)? {
        Response::Devices { devices } => Ok(devices),
        _ => Err(RelayError::Unexpected),
    }
}

/// One device as `devices.list` shows it.
fn linked_device(me: &Account, this: Option<u32>, d: DeviceInfo) -> LinkedDevice {
    LinkedDevice {
        device_id: d.device_id,
        // A name that does not open (sealed by no device of ours) is shown as unknown,
        // never as the relay's bytes.
        name: open_device_name(&me.identity, &d.name).unwrap_or_default(),
        linked_at: i64::try_from(d.linked_at).unwrap_or(i64::MAX),
        last_seen_at: (d.last_seen_at > 0)
            .then(|| i64::try_from(d.last_seen_at).unwrap_or(i64::MAX)),
        this_device: Some(d.device_id) == this,
    }
}

/// `devices.rename`: any device of the account, from any of its devices. The relay tells
/// the account's other devices (`DevicesChanged`); their `devices.list` reads the new
/// name from the relay.
pub(super) async fn rename(
    daemon: &Arc<Daemon>,
    p: DeviceRenameParams,
) -> Result<LinkedDevice, RpcError> {
    let name = device_name("name", &p.name)?;
    let me = current(daemon).await?;
    let relay = relay(daemon)?;
    let this = relay.device_id();
    let sealed = seal_device_name(&me.identity, &name, &mut OsRng)
        .map_err(|_| RpcError::internal("sealing the device name"))?;
    expect_ok(relay.as_ref(), Request::RenameDevice { device_id: p.device_id, name: sealed })
        .await
        .map_err(|e| e.to_rpc("device_id"))?;
    if this == Some(p.device_id) {
        // Named by hand: a name this device still meant to give itself never replaces it.
        daemon.store.call(|c| save_own_name(c, &OwnName::Sent)).await.map_err(internal)?;
    }
    let devices = own_devices(relay.as_ref(), &me).await.map_err(|e| e.to_rpc(""))?;
    let device = devices
        .into_iter()
        .find(|d| d.device_id == p.device_id)
        .ok_or_else(|| RpcError::new(ErrorKind::NotFound, "the device was removed meanwhile"))?;
    Ok(linked_device(&me, this, device))
}

/// The name this device gives itself on the relay after `account.register` or
/// `account.login`, kept in `meta` (`own_device_name`) until the relay has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OwnName {
    /// Chosen by the user: set it.
    Chosen(String),
    /// Made up by the daemon: set it only if the device has no name that opens (a device
    /// logging back in keeps the name it was given).
    IfUnnamed(String),
    /// The relay has it (or it was given by hand): nothing to do.
    Sent,
}

impl OwnName {
    /// For `account.register` and `account.login`: the name asked for, checked, or one
    /// the daemon makes from what it knows of the device.
    pub(super) fn from_param(param: Option<&str>) -> Result<Self, RpcError> {
        match param {
            Some(raw) => Ok(Self::Chosen(device_name("device_name", raw)?)),
            None => Ok(Self::IfUnnamed(crate::device::default_name())),
        }
    }

    /// The `meta` value: a mark, then the name.
    fn encode(&self) -> String {
        match self {
            Self::Chosen(n) => format!("={n}"),
            Self::IfUnnamed(n) => format!("?{n}"),
            Self::Sent => "sent".to_owned(),
        }
    }

    fn decode(value: &str) -> Option<Self> {
        if let Some(n) = value.strip_prefix('=') {
            return Some(Self::Chosen(n.to_owned()));
        }
        if let Some(n) = value.strip_prefix('?') {
            return Some(Self::IfUnnamed(n.to_owned()));
        }
        (value == "sent").then_some(Self::Sent)
    }
}

/// Records what this device still has to tell the relay of its name (in the caller's
/// transaction, for `store_account`).
pub(super) fn save_own_name(
    c: &rusqlite::Connection,
    name: &OwnName,
) -> Result<(), crate::store::StoreError> {
    c.execute(
        "INSERT INTO meta (key, value) VALUES ('own_device_name', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [name.encode()],
    )?;
    Ok(())
}

/// Gives this device the name it still owes the relay, if any: after `account.register`
/// and `account.login`, and at every connection until the relay has it. A device that
/// never recorded one (it registered before devices had names) names itself the same
/// way, only if it has no name. Best effort: a failure leaves it for the next time.
pub(crate) async fn name_own_device(daemon: &Arc<Daemon>) {
    if let Err(e) = try_name_own_device(daemon).await {
        tracing::debug!(error = %e, "naming this device on the relay; tried again at the next connection");
    }
}

async fn try_name_own_device(daemon: &Arc<Daemon>) -> Result<(), RelayError> {
    let Some(relay) = daemon.relay.clone() else { return Ok(()) };
    if daemon.user().is_none() {
        return Ok(());
    }
    let Ok(Some((me, owed))) = daemon
        .store
        .call(|c| {
            let owed: Option<String> = c
                .query_row("SELECT value FROM meta WHERE key = 'own_device_name'", [], |r| r.get(0))
                .optional()?;
            Ok(Account::load(c)?.map(|a| (a, owed)))
        })
        .await
    else {
        return Ok(());
    };
    let owed = match owed.as_deref().map(OwnName::decode) {
        None => OwnName::IfUnnamed(crate::device::default_name()),
        Some(None | Some(OwnName::Sent)) => return Ok(()),
        Some(Some(owed)) => owed,
    };
    let Some(this) = relay.device_id() else { return Err(RelayError::Unavailable) };
    let name = match owed {
        OwnName::Chosen(name) => Some(name),
        OwnName::IfUnnamed(name) => {
            let devices = own_devices(relay.as_ref(), &me).await?;
            let named = devices.iter().any(|d| {
                d.device_id == this
                    && !open_device_name(&me.identity, &d.name).unwrap_or_default().is_empty()
            });
            (!named).then_some(name)
        }
        OwnName::Sent => None,
    };
    if let Some(name) = name {
        let sealed = seal_device_name(&me.identity, &name, &mut OsRng)
            .map_err(|_| RelayError::Unexpected)?;
        expect_ok(relay.as_ref(), Request::RenameDevice { device_id: this, name: sealed }).await?;
    }
    let saved = daemon.store.call(|c| save_own_name(c, &OwnName::Sent)).await;
    if let Err(e) = saved {
        tracing::warn!(error = %e, "recording that this device is named");
    }
    Ok(())
}

pub(super) async fn remove(daemon: &Arc<Daemon>, p: DeviceIdParams) -> Result<Empty, RpcError> {
    current(daemon).await?;
    let relay = relay(daemon)?;
    let this = relay.device_id();
    expect_ok(relay.as_ref(), Request::RemoveDevice { device_id: p.device_id })
        .await
        .map_err(|e| e.to_rpc("device_id"))?;
    if this == Some(p.device_id) {
        // This device removed itself: as a logout, with the event that says so.
        relay.set_credentials(None);
        super::mark_logged_out(daemon, true).await?;
    } else if let Some(me) = daemon.user() {
        // As after linking: the relay tells only our other devices.
        daemon
            .store
            .call(move |c| crate::outbox::forget_known_devices(c, &me))
            .await
            .map_err(internal)?;
    }
    Ok(Empty {})
}
