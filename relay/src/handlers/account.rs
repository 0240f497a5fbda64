//! Account requests: authentication (`Auth` as one of the account's devices, `Register`
//! as its device 1, `Login`, which moves the account to this device), `Logout` (this
//! device leaves), `DeleteAccount` (every device is logged out), `ChangePassword`, and
//! the account's own profile (`GetProfile`, `UpdateProfile`, whose change is pushed to
//! the account's watchers).

use std::sync::Arc;

use ed25519_dalek::{Signature, VerifyingKey};
use letstalk_wire::{
    AvatarUpdate, ErrorKind, MAX_AVATAR_LEN, Push, Request, Response, auth_message,
};
use tracing::{debug, info, warn};

use crate::clock::now_ms;
use crate::ctx::ConnCtx;
use crate::fail::{Fail, Reply, fail, misrouted, rate_limited, storage_fail, user_arg};
use crate::password::HashError;
use crate::ratelimit::ip_key;
use crate::session::{
    devices_changed, end_session, log_out, release_blobs, require_auth, require_device,
    start_session,
};
use crate::state::State;
use crate::storage::{NewAccount, ProfileUpdate, Storage};

/// An account request.
pub(super) async fn handle<S: Storage>(
    st: &Arc<State<S>>,
    ctx: &Arc<ConnCtx>,
    req: Request,
) -> Reply {
    match req {
        Request::Auth { user_id, device_key, signature } => {
            let user = user_arg(&user_id)?;
            let device = st.storage.device_by_key(&user, device_key).await.map_err(storage_fail)?;
            let Some(device) = device else {
                return Err(fail(
                    ErrorKind::UnknownDevice,
                    "this device is not bound to the account",
                ));
            };
            if !verify_device(&device_key, ctx, &user, &signature) {
                return Err(fail(ErrorKind::AuthFailed, "bad device signature"));
            }
            start_session(st, ctx, &user, device).await?;
            Ok(Response::Authenticated { user_id: user, device_id: device })
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
            st.register_ip.check(&ip_key(ctx.remote.ip())).map_err(rate_limited)?;
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
            start_session(st, ctx, &user, 1).await?;
            Ok(Response::Authenticated { user_id: user, device_id: 1 })
        }
        Request::Login { user_id, password, device_key, signature } => {
            if ctx.user().is_some() {
                return Err(fail(ErrorKind::Invalid, "connection already authenticated"));
            }
            let user = user_arg(&user_id)?;
            st.login_ip.check(&ip_key(ctx.remote.ip())).map_err(rate_limited)?;
            st.login_account.check(&user).map_err(rate_limited)?;
            let creds = st.storage.credentials(&user).await.map_err(storage_fail)?;
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
            // The account moves here: every other device is removed (a key that already
            // is one of its devices keeps its id, keys and mail), and each connected one
            // is told and cut off, wherever it is connected. This session subscribes
            // after this, so it never hears those signals.
            let moved =
                st.storage.login_device(&user, device_key, now_ms()).await.map_err(storage_fail)?;
            for old in &moved.removed {
                log_out(st, &user, *old).await;
                release_blobs(st, &user, *old).await;
            }
            if !moved.removed.is_empty() {
                info!("account moved to a new device");
                debug!(user_id = user, removed = ?moved.removed, "account moved to a new device");
            }
            start_session(st, ctx, &user, moved.device_id).await?;
            Ok(Response::Authenticated { user_id: user, device_id: moved.device_id })
        }
        Request::Logout => {
            // Only this device leaves the account; the others are told their list changed.
            let (user, device) = require_device(st, ctx)?;
            st.storage.remove_device(&user, device).await.map_err(storage_fail)?;
            end_session(st, ctx).await;
            release_blobs(st, &user, device).await;
            devices_changed(st, &user, None).await;
            Ok(Response::Ok)
        }
        Request::DeleteAccount => {
            let (user, device) = require_device(st, ctx)?;
            let devices = st.storage.devices(&user).await.map_err(storage_fail)?;
            end_session(st, ctx).await;
            st.storage.delete_account(&user).await.map_err(storage_fail)?;
            for other in devices.unwrap_or_default().iter().filter(|d| d.device_id != device) {
                log_out(st, &user, other.device_id).await;
            }
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
                    st.hub.push(&w, None, frame.clone()).await;
                }
            }
            Ok(Response::Profile(profile))
        }
        other => Err(misrouted(&other)),
    }
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

/// A hashing failure: `rate_limited` when the Argon2 queue is full.
fn hash_fail(e: HashError) -> Fail {
    match e {
        HashError::Busy => rate_limited(std::time::Duration::from_secs(1)),
        HashError::Failed(e) => {
            warn!(error = %e, "hashing failed");
            fail(ErrorKind::Internal, "hashing failed")
        }
    }
}
