//! What each request means: validation, authorisation (a connection acts only for the
//! account it authenticated as), storage calls and the pushes they cause.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ed25519_dalek::{Signature, VerifyingKey};
use letstalk_wire::{
    AvatarUpdate, ErrorKind, MAX_AVATAR_LEN, PROTOCOL_VERSION, PresenceInfo, Push, Refusal,
    Request, Response, auth_message,
};
use tracing::{debug, info, warn};

use crate::conn::{ConnCtx, end_session, start_session};
use crate::hub::PushCmd;
use crate::storage::{
    Blocks, Contacts, Envelope, KeyUpload, NewAccount, ProfileUpdate, Report, Storage,
    StorageError, shows_presence,
};
use crate::{State, now_ms};

type Reply = Result<Response, Fail>;

/// A refused request; becomes a `Response::Error`. Kept small (a `Response` is large) so
/// `Result`s stay cheap to move.
#[derive(Debug)]
pub(crate) struct Fail {
    kind: ErrorKind,
    retry_after_ms: u64,
    message: String,
}

impl From<Fail> for Response {
    fn from(f: Fail) -> Self {
        Self::Error { kind: f.kind, retry_after_ms: f.retry_after_ms, message: f.message }
    }
}

pub(crate) fn fail(kind: ErrorKind, message: impl Into<String>) -> Fail {
    Fail { kind, retry_after_ms: 0, message: message.into() }
}

pub(crate) fn storage_fail(e: StorageError) -> Fail {
    match e {
        StorageError::Conflict => fail(ErrorKind::Conflict, "user id taken"),
        StorageError::NotFound => fail(ErrorKind::NotFound, "no such user"),
        StorageError::QuotaExceeded => {
            fail(ErrorKind::QuotaExceeded, "the recipient's mailbox is full")
        }
        StorageError::Blocked => {
            fail(ErrorKind::Blocked, "the recipient does not accept your messages")
        }
        StorageError::Backend(e) => {
            warn!(error = %e, "storage failure");
            fail(ErrorKind::Internal, "storage failure")
        }
    }
}

fn rate_limited(wait: std::time::Duration) -> Fail {
    Fail {
        kind: ErrorKind::RateLimited,
        retry_after_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1),
        message: "too many attempts".into(),
    }
}

/// Lowercases and checks a user id: 3 to 32 of `a-z 0-9 . _ -`, starting with a letter.
pub fn normalize_user_id(raw: &str) -> Option<String> {
    let id = raw.to_ascii_lowercase();
    let ok_len = (3..=32).contains(&id.len());
    let first_letter = id.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    let ok_chars = id
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    (ok_len && first_letter && ok_chars).then_some(id)
}

fn user_arg(raw: &str) -> Result<String, Fail> {
    normalize_user_id(raw).ok_or_else(|| fail(ErrorKind::Invalid, "invalid user id"))
}

fn check_password(p: &str) -> Result<(), Fail> {
    if p.chars().count() < 8 {
        return Err(fail(ErrorKind::Invalid, "password must be at least 8 characters"));
    }
    Ok(())
}

fn check_email(e: &str) -> Result<(), Fail> {
    let ok = e.len() <= 254
        && e.split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.') && !d.starts_with('.'))
        && !e.chars().any(char::is_whitespace);
    if ok { Ok(()) } else { Err(fail(ErrorKind::Invalid, "invalid email")) }
}

fn check_nickname(n: &str) -> Result<(), Fail> {
    let len = n.chars().count();
    if n.trim().is_empty() || len > 64 || n.chars().any(char::is_control) {
        return Err(fail(ErrorKind::Invalid, "nickname must be 1 to 64 printable characters"));
    }
    Ok(())
}

/// Whether `sig` is `key`'s signature over this connection's challenge and TLS exporter
/// value for `user_id`.
fn verify_device(key: &[u8; 32], ctx: &ConnCtx, user_id: &str, sig: &[u8; 64]) -> bool {
    let Ok(vk) = VerifyingKey::from_bytes(key) else { return false };
    let message = auth_message(&ctx.challenge, &ctx.exporter, user_id);
    vk.verify_strict(&message, &Signature::from_bytes(sig)).is_ok()
}

/// The account this connection acts for; refused if it authenticated as none, or if the
/// account has since moved to another device or connection.
pub(crate) fn require_auth<S: Storage>(st: &State<S>, ctx: &ConnCtx) -> Result<String, Fail> {
    let user = ctx.user().ok_or_else(|| fail(ErrorKind::Unauthenticated, "authenticate first"))?;
    if !st.hub.is_current(&user, ctx.id) {
        return Err(fail(
            ErrorKind::UnknownDevice,
            "this connection no longer acts for the account",
        ));
    }
    Ok(user)
}

/// Answers one request.
pub(crate) async fn dispatch<S: Storage>(
    st: &Arc<State<S>>,
    ctx: &Arc<ConnCtx>,
    req: Request,
) -> Response {
    handle(st, ctx, req).await.unwrap_or_else(Response::from)
}

async fn handle<S: Storage>(st: &Arc<State<S>>, ctx: &Arc<ConnCtx>, req: Request) -> Reply {
    match req {
        Request::Hello { versions, client: _ } => {
            if !versions.contains(&PROTOCOL_VERSION) {
                return Err(fail(
                    ErrorKind::Unsupported,
                    format!("this relay speaks version {PROTOCOL_VERSION}"),
                ));
            }
            ctx.hello.store(true, Ordering::Relaxed);
            Ok(Response::HelloOk {
                version: PROTOCOL_VERSION,
                challenge: ctx.challenge,
                server: format!("letstalk-relay {} {}", env!("CARGO_PKG_VERSION"), st.node_id),
            })
        }
        Request::Ping { nonce } => Ok(Response::Pong { nonce }),
        _ if !ctx.hello.load(Ordering::Relaxed) => {
            Err(fail(ErrorKind::Invalid, "send Hello first"))
        }
        Request::Auth { user_id, device_key, signature } => {
            let user = user_arg(&user_id)?;
            let creds = st.storage.credentials(&user).await.map_err(storage_fail)?;
            if creds.and_then(|c| c.device_key) != Some(device_key) {
                return Err(fail(
                    ErrorKind::UnknownDevice,
                    "this device is not bound to the account",
                ));
            }
            if !verify_device(&device_key, ctx, &user, &signature) {
                return Err(fail(ErrorKind::AuthFailed, "bad device signature"));
            }
            start_session(st, ctx, &user).await?;
            Ok(Response::Authenticated { user_id: user })
        }
        Request::Register {
            user_id,
            password,
            email,
            nickname,
            device_key,
            signature,
            identity,
        } => {
            if ctx.user().is_some() {
                return Err(fail(ErrorKind::Invalid, "connection already authenticated"));
            }
            let user = user_arg(&user_id)?;
            check_password(&password)?;
            check_email(&email)?;
            check_nickname(&nickname)?;
            if !verify_device(&device_key, ctx, &user, &signature) {
                return Err(fail(ErrorKind::AuthFailed, "bad device signature"));
            }
            st.register_ip
                .check(&crate::ratelimit::ip_key(ctx.remote.ip()))
                .map_err(rate_limited)?;
            let password_hash = st.hasher.hash(password).await.map_err(hash_fail)?;
            let account = NewAccount {
                user_id: user.clone(),
                password_hash,
                email,
                nickname,
                device_key,
                identity,
                now: now_ms(),
            };
            st.storage.create_account(account).await.map_err(storage_fail)?;
            // No user id at info level: the connection's span carries the address.
            info!("account registered");
            debug!(user_id = user, "account registered");
            start_session(st, ctx, &user).await?;
            Ok(Response::Authenticated { user_id: user })
        }
        Request::Login { user_id, password, device_key, signature } => {
            if ctx.user().is_some() {
                return Err(fail(ErrorKind::Invalid, "connection already authenticated"));
            }
            let user = user_arg(&user_id)?;
            st.login_ip.check(&crate::ratelimit::ip_key(ctx.remote.ip())).map_err(rate_limited)?;
            st.login_account.check(&user).map_err(rate_limited)?;
            let creds = st.storage.credentials(&user).await.map_err(storage_fail)?;
            let bound = creds.as_ref().and_then(|c| c.device_key);
            if !st
                .hasher
                .verify(password, creds.map(|c| c.password_hash))
                .await
                .map_err(hash_fail)?
            {
                return Err(fail(ErrorKind::AuthFailed, "wrong user id or password"));
            }
            if !verify_device(&device_key, ctx, &user, &signature) {
                return Err(fail(ErrorKind::AuthFailed, "bad device signature"));
            }
            if bound != Some(device_key) {
                st.storage.bind_device(&user, Some(device_key)).await.map_err(storage_fail)?;
                // The account moves here: the old device, if connected, is told and cut off.
                if let Some(old) = st.hub.take(&user)
                    && old.tx.try_send(PushCmd::LoggedOut).is_err()
                {
                    old.conn.close(
                        crate::conn::close::LOGGED_OUT.into(),
                        b"logged in on another device",
                    );
                }
                // ...wherever it is connected. This session subscribes after this, so it
                // never hears its own signal.
                if let Some(bus) = st.hub.bus() {
                    bus.send(&user, &crate::cluster::Signal::LoggedOut).await;
                }
                info!("account moved to a new device");
                debug!(user_id = user, "account moved to a new device");
            }
            start_session(st, ctx, &user).await?;
            Ok(Response::Authenticated { user_id: user })
        }
        Request::Logout => {
            let user = require_auth(st, ctx)?;
            st.storage.bind_device(&user, None).await.map_err(storage_fail)?;
            end_session(st, ctx).await;
            Ok(Response::Ok)
        }
        Request::DeleteAccount => {
            let user = require_auth(st, ctx)?;
            end_session(st, ctx).await;
            st.storage.delete_account(&user).await.map_err(storage_fail)?;
            st.blobs.delete_owner(&user).await?;
            st.calls.drop_user(&user);
            info!("account deleted");
            Ok(Response::Ok)
        }
        Request::ChangePassword { old_password, new_password } => {
            let user = require_auth(st, ctx)?;
            st.login_account.check(&user).map_err(rate_limited)?;
            check_password(&new_password)?;
            let creds = st.storage.credentials(&user).await.map_err(storage_fail)?;
            if !st
                .hasher
                .verify(old_password, creds.map(|c| c.password_hash))
                .await
                .map_err(hash_fail)?
            {
                return Err(fail(ErrorKind::AuthFailed, "wrong password"));
            }
            let hash = st.hasher.hash(new_password).await.map_err(hash_fail)?;
            st.storage.set_password_hash(&user, hash).await.map_err(storage_fail)?;
            Ok(Response::Ok)
        }
        Request::GetProfile => {
            let user = require_auth(st, ctx)?;
            let p = st.storage.profile(&user).await.map_err(storage_fail)?;
            p.map(Response::Profile).ok_or_else(|| fail(ErrorKind::NotFound, "no such user"))
        }
        Request::UpdateProfile { nickname, email, avatar } => {
            let user = require_auth(st, ctx)?;
            if let Some(n) = &nickname {
                check_nickname(n)?;
            }
            if let Some(e) = &email {
                check_email(e)?;
            }
            if let AvatarUpdate::Set(a) = &avatar {
                if a.data.len() > MAX_AVATAR_LEN {
                    return Err(fail(ErrorKind::TooLarge, "avatar over 1 MiB"));
                }
                if !matches!(a.mime.as_str(), "image/png" | "image/jpeg" | "image/webp") {
                    return Err(fail(ErrorKind::Invalid, "avatar must be PNG, JPEG or WebP"));
                }
            }
            let update = ProfileUpdate { nickname, email, avatar, now: now_ms() };
            let profile = st.storage.update_profile(&user, update).await.map_err(storage_fail)?;
            let mut public = profile.clone();
            public.email = None;
            if let Ok(frame) = Push::ProfileChanged(public).encode()
                && let Ok(watchers) = st.storage.watchers(&user).await
            {
                for w in watchers {
                    st.hub.push(&w, frame.clone()).await;
                }
            }
            Ok(Response::Profile(profile))
        }
        Request::LookupUser { user_id } => {
            let me = require_auth(st, ctx)?;
            st.directory.check(&me).map_err(rate_limited)?;
            let user = user_arg(&user_id)?;
            let mut p = st.storage.profile(&user).await.map_err(storage_fail)?;
            if let Some(p) = p.as_mut() {
                p.email = None;
            }
            p.map(Response::Profile).ok_or_else(|| fail(ErrorKind::NotFound, "no such user"))
        }
        Request::FetchAvatar { user_id } => {
            let me = require_auth(st, ctx)?;
            st.directory.check(&me).map_err(rate_limited)?;
            let user = user_arg(&user_id)?;
            let a = st.storage.avatar(&user).await.map_err(storage_fail)?;
            a.map(Response::Avatar).ok_or_else(|| fail(ErrorKind::NotFound, "no avatar"))
        }
        Request::UploadKeys { identity, signed_prekey, one_time_prekeys, last_resort } => {
            let user = require_auth(st, ctx)?;
            let keys =
                KeyUpload { identity, signed_prekey, one_time: one_time_prekeys, last_resort };
            let n = st.storage.upload_keys(&user, keys).await.map_err(storage_fail)?;
            Ok(Response::KeyCount { one_time_remaining: n })
        }
        Request::KeyCount => {
            let user = require_auth(st, ctx)?;
            let n = st.storage.one_time_count(&user).await.map_err(storage_fail)?;
            Ok(Response::KeyCount { one_time_remaining: n })
        }
        Request::FetchBundle { user_id } => {
            let me = require_auth(st, ctx)?;
            st.directory.check(&me).map_err(rate_limited)?;
            let user = user_arg(&user_id)?;
            let b = st.storage.take_bundle(&user).await.map_err(storage_fail)?;
            b.map(Response::Bundle)
                .ok_or_else(|| fail(ErrorKind::NotFound, "no such user or no device"))
        }
        Request::Watch { add, remove } => {
            let user = require_auth(st, ctx)?;
            let add =
                add.iter().filter_map(|u| normalize_user_id(u)).filter(|u| *u != user).collect();
            let remove = remove.iter().filter_map(|u| normalize_user_id(u)).collect();
            let mut users = st.storage.watch(&user, add, remove).await.map_err(storage_fail)?;
            let online = futures::future::join_all(
                users.iter().map(|u| async { !u.hidden && st.hub.is_online(&u.user_id).await }),
            )
            .await;
            for (u, online) in users.iter_mut().zip(online) {
                u.online = online;
            }
            Ok(Response::Presence { users })
        }
        Request::Send { to, msg_id, body } => {
            let user = require_auth(st, ctx)?;
            let to = user_arg(&to)?;
            if msg_id.is_empty() {
                return Err(fail(ErrorKind::Invalid, "empty msg id"));
            }
            if body.is_empty() {
                return Err(fail(ErrorKind::Invalid, "empty message"));
            }
            let quota = st.limits.mailbox_quota();
            let envelope = Envelope {
                sender: user,
                recipient: to.clone(),
                msg_id,
                body: body.into(),
                now: now_ms(),
            };
            let done = st.storage.enqueue(envelope, quota).await.map_err(storage_fail)?;
            if !done.duplicate {
                st.hub.wake(&to).await;
            }
            Ok(Response::Sent { server_ts: done.server_ts, duplicate: done.duplicate })
        }
        Request::SendBatch { to, messages } => {
            let user = require_auth(st, ctx)?;
            let to = user_arg(&to)?;
            if messages.is_empty()
                || messages.iter().any(|m| m.msg_id.is_empty() || m.body.is_empty())
            {
                return Err(fail(ErrorKind::Invalid, "empty batch, msg id or message"));
            }
            let quota = st.limits.mailbox_quota();
            let now = now_ms();
            let envelopes = messages
                .into_iter()
                .map(|m| Envelope {
                    sender: user.clone(),
                    recipient: to.clone(),
                    msg_id: m.msg_id,
                    body: m.body.into(),
                    now,
                })
                .collect();
            let done = st.storage.enqueue_many(envelopes, quota).await.map_err(storage_fail)?;
            if done.iter().any(|d| !d.duplicate) {
                st.hub.wake(&to).await;
            }
            Ok(Response::Sent { server_ts: now, duplicate: done.iter().all(|d| d.duplicate) })
        }
        Request::SetBlocks { block_all, users } => {
            let user = require_auth(st, ctx)?;
            let users = users.iter().map(|u| user_arg(u)).collect::<Result<_, _>>()?;
            let new = Blocks { all: block_all, users };
            let contacts = st.storage.contacts(&user).await.map_err(storage_fail)?;
            let old = st.storage.set_blocks(&user, new.clone()).await.map_err(storage_fail)?;
            reannounce(st, &user, (&old, &contacts), (&new, &contacts)).await;
            debug!(user_id = user, block_all, "blocks changed");
            Ok(Response::Ok)
        }
        Request::SetContacts { share_presence, users } => {
            let user = require_auth(st, ctx)?;
            let users = users.iter().map(|u| user_arg(u)).collect::<Result<_, _>>()?;
            let new = Contacts { share_presence, users };
            let blocks = st.storage.blocks(&user).await.map_err(storage_fail)?;
            let old = st.storage.set_contacts(&user, new.clone()).await.map_err(storage_fail)?;
            reannounce(st, &user, (&blocks, &old), (&blocks, &new)).await;
            debug!(user_id = user, share_presence, "contacts changed");
            Ok(Response::Ok)
        }
        Request::SendGroup { to, msg_id, body } => {
            let user = require_auth(st, ctx)?;
            if msg_id.is_empty() || body.is_empty() || to.is_empty() {
                return Err(fail(ErrorKind::Invalid, "empty recipients, msg id or message"));
            }
            // Everything is checked before anything is copied or stored: the count, the
            // total the fan-out would store, duplicates, then which recipients exist.
            let max = st.limits.max_group_recipients;
            if to.len() > max {
                return Err(fail(ErrorKind::Invalid, format!("at most {max} recipients")));
            }
            let total = (body.len() as u64).saturating_mul(to.len() as u64);
            if total > st.limits.max_fanout_bytes {
                return Err(fail(
                    ErrorKind::TooLarge,
                    format!("a group message stores at most {} bytes", st.limits.max_fanout_bytes),
                ));
            }
            let mut recipients: Vec<String> =
                to.iter().map(|u| user_arg(u)).collect::<Result<_, _>>()?;
            drop(to);
            recipients.sort();
            if recipients.windows(2).any(|w| w[0] == w[1]) {
                return Err(fail(ErrorKind::Invalid, "a recipient is named twice"));
            }
            let existing = st.storage.existing(recipients.clone()).await.map_err(storage_fail)?;
            let mut refused = Vec::new();
            let body = bytes::Bytes::from(body);
            let quota = st.limits.mailbox_quota();
            let now = now_ms();
            let mut envelopes = Vec::with_capacity(existing.len());
            for to in recipients {
                if existing.contains(&to) {
                    // The body is shared by reference, never copied per recipient.
                    envelopes.push(Envelope {
                        sender: user.clone(),
                        recipient: to,
                        msg_id: msg_id.clone(),
                        body: body.clone(),
                        now,
                    });
                } else {
                    refused.push(Refusal { user_id: to, kind: ErrorKind::NotFound });
                }
            }
            let names: Vec<String> = envelopes.iter().map(|e| e.recipient.clone()).collect();
            let done = st.storage.enqueue_fanout(envelopes, quota).await.map_err(storage_fail)?;
            for (to, outcome) in names.into_iter().zip(done) {
                match outcome {
                    Ok(d) if !d.duplicate => st.hub.wake(&to).await,
                    Ok(_) => {}
                    Err(e) => refused.push(Refusal { user_id: to, kind: storage_fail(e).kind }),
                }
            }
            refused.sort_by(|a, b| a.user_id.cmp(&b.user_id));
            Ok(Response::GroupSent { server_ts: now, refused })
        }
        Request::SubmitReport { id, kind, body } => {
            let user = require_auth(st, ctx)?;
            if id.is_empty() || body.is_empty() {
                return Err(fail(ErrorKind::Invalid, "empty report id or body"));
            }
            if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
                return Err(fail(ErrorKind::Invalid, "a report is a JSON document"));
            }
            st.reports_account.check(&user).map_err(rate_limited)?;
            let held = st.storage.reports_held(&user).await.map_err(storage_fail)?;
            if held >= st.limits.reports_per_account {
                return Err(fail(
                    ErrorKind::QuotaExceeded,
                    "this account has sent as many reports as the relay keeps",
                ));
            }
            let report = Report { id, user_id: user, kind, body, now: now_ms() };
            st.storage.store_report(report).await.map_err(storage_fail)?;
            Ok(Response::Ok)
        }
        Request::Ack { delivery_ids } => {
            let user = require_auth(st, ctx)?;
            st.storage.ack(&user, delivery_ids).await.map_err(storage_fail)?;
            Ok(Response::Ok)
        }
        Request::BlobStat { owner, blob_id } => {
            let user = require_auth(st, ctx)?;
            crate::blobs::stat(st, &user, &owner, blob_id).await
        }
        Request::BlobRelease { owner, blob_id } => {
            let user = require_auth(st, ctx)?;
            crate::blobs::release(st, &user, &owner, blob_id).await
        }
        // Hook for blocking (on main): a blocked caller's route must be refused here too.
        Request::CallRoute { call_id, peer } => {
            let user = require_auth(st, ctx)?;
            crate::calls::route(st, &user, call_id, &peer)
        }
        Request::CallUnroute { call_id } => {
            let user = require_auth(st, ctx)?;
            Ok(crate::calls::unroute(st, &user, call_id))
        }
        Request::BlobPut { .. } | Request::BlobGet { .. } => {
            Err(fail(ErrorKind::Invalid, "blob transfers need their own stream"))
        }
    }
}

/// After `user` changed whom it blocks or has as contacts (or whether it shares its
/// presence), tells each watcher whose view changed: those who may no longer see it get
/// `hidden`, those who now may get the real presence.
async fn reannounce<S: Storage>(
    st: &Arc<State<S>>,
    user: &str,
    old: (&Blocks, &Contacts),
    new: (&Blocks, &Contacts),
) {
    let Ok(watchers) = st.storage.watchers(user).await else { return };
    let online = st.hub.is_online(user).await;
    let last_seen = if online { now_ms() } else { 0 };
    for w in watchers {
        let (was, is) = (shows_presence(old.0, old.1, &w), shows_presence(new.0, new.1, &w));
        if was == is {
            continue;
        }
        let info = PresenceInfo {
            user_id: user.to_owned(),
            online: online && is,
            last_seen_at: if is { last_seen } else { 0 },
            hidden: !is,
        };
        if let Ok(frame) = Push::Presence(info).encode() {
            st.hub.push(&w, frame).await;
        }
    }
}

/// A hashing failure: `rate_limited` when the Argon2 queue is full.
fn hash_fail(e: crate::password::HashError) -> Fail {
    match e {
        crate::password::HashError::Busy => rate_limited(std::time::Duration::from_secs(1)),
        crate::password::HashError::Failed(e) => {
            warn!(error = %e, "hashing failed");
            fail(ErrorKind::Internal, "hashing failed")
        }
    }
}
