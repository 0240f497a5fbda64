//! `account.*`: register, login, logout, info, update, change_password, avatar.

use std::sync::Arc;

use rand_core::OsRng;

use letstalk_ipc::types::{
    Account as IpcAccount, AvatarParams, AvatarResult, ChangePasswordParams, Empty, EventBody,
    LoginParams, RegisterParams, UpdateParams,
};
use letstalk_ipc::{ErrorKind, RpcError};
use letstalk_wire::{AvatarUpdate, Request, Response};

use super::devices::{OwnName, name_own_device, save_own_name};
use super::{internal, logged_in};
use crate::account::{self, Account, generate_prekeys};
use crate::relay::{Credentials, RelayApi, check, expect_ok};
use crate::{Daemon, events, keys, now_ms, validate};

/// The relay, or `relay_unavailable` when none is configured.
pub(super) fn relay(daemon: &Daemon) -> Result<Arc<dyn RelayApi>, RpcError> {
    daemon.relay.clone().ok_or_else(|| {
        RpcError::new(ErrorKind::RelayUnavailable, "no relay is configured (--relay)")
    })
}

pub(super) fn credentials(a: &Account) -> Credentials {
    Credentials { user_id: a.user_id.clone(), device_seed: a.device_key.clone() }
}

/// Publishes our identity and prekeys in the relay's directory.
pub(super) async fn upload_keys(
    relay: &dyn RelayApi,
    a: &Account,
    prekeys: &[letstalk_crypto::PreKeySecret],
) -> Result<(), RpcError> {
    let mut signed = None;
    let mut last_resort = None;
    let mut one_time = Vec::new();
    for k in prekeys {
        match k.kind() {
            letstalk_crypto::PreKeyKind::Signed => signed = Some(keys::to_wire(k)),
            letstalk_crypto::PreKeyKind::LastResort => last_resort = Some(keys::to_wire(k)),
            letstalk_crypto::PreKeyKind::OneTime => one_time.push(keys::to_wire(k)),
        }
    }
    let request = Request::UploadKeys {
        identity: Some(a.identity.public().to_bytes().to_vec()),
        signed_prekey: signed,
        one_time_prekeys: one_time,
        last_resort,
    };
    match relay.request(request).await.and_then(check) {
        Ok(Response::KeyCount { .. } | Response::Ok) => Ok(()),
        Ok(_) => Err(RpcError::internal("unexpected answer from the relay")),
        Err(e) => Err(e.to_rpc("")),
    }
}

/// Saves a freshly bound account with its prekeys and emits `account.changed`. When the
/// device held another account (another user, or the same user id registered anew with
/// new keys), nothing of it stays: see [`forget_previous_account`].
///
/// A linked device also takes over the account's state from the device that linked it
/// (`linked`), in the same transaction. `own_name` is what this device still has to
/// tell the relay its name is (see [`super::devices::name_own_device`]).
pub(super) async fn store_account(
    daemon: &Arc<Daemon>,
    a: Account,
    prekeys: Vec<letstalk_crypto::PreKeySecret>,
    linked: Option<crate::linking::Snapshot>,
    own_name: OwnName,
) -> Result<IpcAccount, RpcError> {
    let ipc = a.to_ipc();
    let body = EventBody::AccountChanged { account: ipc.clone() };
    let user = a.user_id.clone();
    let previous = daemon.store.call(|c| Account::load(c)).await.map_err(internal)?;
    // A linked device starts from the account's state as sent, whatever it held before.
    let switching = linked.is_some()
        || previous.is_some_and(|p| {
            p.user_id != a.user_id
                || p.identity.public().to_bytes() != a.identity.public().to_bytes()
        });
    // Nothing may send, download or ring for the old account while it is deleted.
    let gate = if switching {
        let gate = daemon.outbox_gate.lock().await;
        daemon.transfers.stop_all().await;
        crate::calls::stop_all_media(daemon, daemon.relay.as_ref());
        Some(gate)
    } else {
        None
    };
    let seq = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let now = now_ms();
            if switching {
                account::forget_previous(&tx)?;
            }
            // A different account than before on this device: its keys are not ours.
            tx.execute("DELETE FROM prekeys", [])?;
            if let Some(snapshot) = &linked {
                crate::linking::import(&tx, snapshot)?;
            }
            a.save(&tx)?;
            save_own_name(&tx, &own_name)?;
            for k in &prekeys {
                account::save_prekey(&tx, k, now)?;
            }
            if linked.is_some() {
                // A linked device introduces itself to its groups with a sender key of
                // its own; the members hand it theirs in return.
                crate::groups::distribute_keys(&tx, &a.user_id, &mut OsRng, now)?;
            }
            let seq = events::append(&tx, &body, now)?;
            tx.commit()?;
            if switching {
                // The deleted rows' pages are zeroed (`secure_delete`); the WAL that
                // still holds them goes too.
                c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            }
            Ok(seq)
        })
        .await
        .map_err(internal)?;
    if switching {
        forget_previous_account(daemon);
        daemon.forget_caches();
        tracing::info!("another account logged in: the previous one's data is deleted");
    }
    drop(gate);
    daemon.bus.published(seq);
    daemon.set_user(Some(user));
    daemon.wake_sender();
    Ok(ipc)
}

/// The previous account's files: its attachments (ciphertext), the files it opened
/// (plaintext, in the runtime directory) and the avatars it fetched. The rows are gone
/// already; what cannot be deleted is logged, never kept silently.
fn forget_previous_account(daemon: &Daemon) {
    let dirs = [
        daemon.config.data_dir.join(crate::files::ATTACHMENTS),
        daemon.config.data_dir.join(AVATARS),
        crate::files::runtime_dir(daemon).join(crate::files::OPENED),
    ];
    for dir in dirs {
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(error = %e, dir = %dir.display(), "removing the previous account's files")
            }
        }
    }
}

/// Fetched avatars, in the data directory, named by validated user id.
const AVATARS: &str = "avatars";

pub(super) async fn register(
    daemon: &Arc<Daemon>,
    p: RegisterParams,
) -> Result<IpcAccount, RpcError> {
    let user_id = validate::user_id("user_id", &p.user_id)?;
    let email = validate::email("email", &p.email)?;
    let nickname = validate::nickname("nickname", &p.nickname)?;
    validate::password("password", &p.password.0)?;
    let avatar = match &p.avatar {
        Some(path) => Some(validate::avatar("avatar", path)?),
        None => None,
    };
    let own_name = OwnName::from_param(p.device_name.as_deref())?;
    if let Some(current) = daemon.user() {
        return Err(RpcError::new(
            ErrorKind::InvalidState,
            format!("logged in as {current}: log out first"),
        ));
    }
    let relay = relay(daemon)?;
    let a = Account::generate(
        user_id,
        email.clone(),
        nickname.clone(),
        avatar.map(|(bytes, mime)| (bytes, mime.to_owned())),
        now_ms(),
        &mut OsRng,
    );
    let prekeys = generate_prekeys(&a.identity, &mut OsRng);
    let identity = a.identity.public().to_bytes().to_vec();
    relay
        .register(credentials(&a), p.password.0, email, nickname, identity)
        .await
        .map_err(|e| e.to_rpc("user_id"))?;
    if let Some((data, mime)) = &a.avatar {
        let update = Request::UpdateProfile {
            nickname: None,
            email: None,
            avatar: AvatarUpdate::Set(letstalk_wire::Avatar {
                mime: mime.clone(),
                data: data.clone(),
            }),
        };
        relay.request(update).await.and_then(check).map_err(|e| e.to_rpc("avatar"))?;
    }
    upload_keys(relay.as_ref(), &a, &prekeys).await?;
    let account = store_account(daemon, a, prekeys, None, own_name).await?;
    name_now(daemon).await;
    Ok(account)
}

/// Names this device on the relay before `account.register` or `account.login` answers,
/// so `devices.list` shows the name at once. Bounded: a relay gone meanwhile gets the
/// name at the next connection, and the account works without it.
async fn name_now(daemon: &Arc<Daemon>) {
    if tokio::time::timeout(NAME_WAIT, name_own_device(daemon)).await.is_err() {
        tracing::debug!("naming this device on the relay timed out; tried again later");
    }
}

/// How long `account.register` and `account.login` wait for the device's name to be set.
const NAME_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

pub(super) async fn login(daemon: &Arc<Daemon>, p: LoginParams) -> Result<IpcAccount, RpcError> {
    let user_id = validate::user_id("user_id", &p.user_id)?;
    if p.password.0.is_empty() {
        return Err(RpcError::invalid_params("password", "password is empty"));
    }
    let own_name = OwnName::from_param(p.device_name.as_deref())?;
    if let Some(current) = daemon.user() {
        return Err(RpcError::new(
            ErrorKind::InvalidState,
            format!("logged in as {current}: log out first"),
        ));
    }
    let relay = relay(daemon)?;
    let previous = daemon.store.call(|c| Account::load(c)).await.map_err(internal)?;
    // The same account logging back in on this device keeps its keys (and sessions);
    // anything else starts with new ones.
    let (mut a, reuse) = match previous {
        Some(prev) if prev.user_id == user_id => (prev, true),
        _ => (
            Account::generate(user_id, String::new(), String::new(), None, now_ms(), &mut OsRng),
            false,
        ),
    };
    relay.login(credentials(&a), p.password.0).await.map_err(|e| e.to_rpc("user_id"))?;
    if let Response::Profile(profile) =
        relay.request(Request::GetProfile).await.and_then(check).map_err(|e| e.to_rpc(""))?
    {
        a.email = profile.email.unwrap_or_default();
        a.nickname = profile.nickname;
        a.created_at = i64::try_from(profile.created_at).unwrap_or(a.created_at);
        a.avatar = match profile.avatar {
            None => None,
            Some(_) => {
                match relay.request(Request::FetchAvatar { user_id: a.user_id.clone() }).await {
                    Ok(Response::Avatar(av)) => Some((av.data, av.mime)),
                    _ => a.avatar.take(),
                }
            }
        };
    }
    a.logged_in = true;
    let prekeys = if reuse {
        let stored = daemon
            .store
            .call(|c| {
                // By id: a rotated signed prekey's id is above the first one's, so the
                // newest signed prekey is the one published.
                let ids: Vec<u32> = c
                    .prepare("SELECT id FROM prekeys ORDER BY id")?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                let mut keys = Vec::new();
                for id in ids {
                    keys.extend(account::load_prekey(c, id)?);
                }
                Ok(keys)
            })
            .await
            .map_err(internal)?;
        if stored.is_empty() { generate_prekeys(&a.identity, &mut OsRng) } else { stored }
    } else {
        generate_prekeys(&a.identity, &mut OsRng)
    };
    upload_keys(relay.as_ref(), &a, &prekeys).await?;
    let account = store_account(daemon, a, prekeys, None, own_name).await?;
    name_now(daemon).await;
    Ok(account)
}

pub(super) async fn logout(daemon: &Arc<Daemon>, _: Empty) -> Result<Empty, RpcError> {
    logged_in(daemon).await?;
    if let Some(relay) = &daemon.relay {
        // Unbinding on the relay is best effort: offline, the local logout still holds
        // and the next login moves the account anyway.
        if let Err(e) = expect_ok(relay.as_ref(), Request::Logout).await {
            tracing::info!(error = %e, "relay logout failed; logged out locally");
        }
        relay.set_credentials(None);
    }
    mark_logged_out(daemon, false).await?;
    Ok(Empty {})
}

/// Marks the account logged out; with `event`, emits `account.logged_out` (the account
/// moved to another device).
pub(crate) async fn mark_logged_out(daemon: &Arc<Daemon>, event: bool) -> Result<(), RpcError> {
    let seq = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            tx.execute("UPDATE account SET logged_in = 0", [])?;
            let seq = if event {
                Some(events::append(&tx, &EventBody::AccountLoggedOut {}, now_ms())?)
            } else {
                None
            };
            tx.commit()?;
            Ok(seq)
        })
        .await
        .map_err(internal)?;
    if let Some(seq) = seq {
        daemon.bus.published(seq);
    }
    daemon.set_user(None);
    Ok(())
}

pub(super) async fn current(daemon: &Arc<Daemon>) -> Result<Account, RpcError> {
    logged_in(daemon).await?;
    daemon
        .store
        .call(|c| Account::load(c))
        .await
        .map_err(internal)?
        .ok_or_else(|| RpcError::new(ErrorKind::NotLoggedIn, "no account on this device"))
}

pub(super) async fn info(daemon: &Arc<Daemon>, _: Empty) -> Result<IpcAccount, RpcError> {
    Ok(current(daemon).await?.to_ipc())
}

pub(super) async fn update(daemon: &Arc<Daemon>, p: UpdateParams) -> Result<IpcAccount, RpcError> {
    let mut a = current(daemon).await?;
    let nickname = p.nickname.as_deref().map(|n| validate::nickname("nickname", n)).transpose()?;
    let email = p.email.as_deref().map(|e| validate::email("email", e)).transpose()?;
    let avatar = match &p.avatar {
        None => None,
        Some(None) => Some(None),
        Some(Some(path)) => Some(Some(validate::avatar("avatar", path)?)),
    };
    let relay = relay(daemon)?;
    let update = Request::UpdateProfile {
        nickname: nickname.clone(),
        email: email.clone(),
        avatar: match &avatar {
            None => AvatarUpdate::Keep,
            Some(None) => AvatarUpdate::Remove,
            Some(Some((data, mime))) => AvatarUpdate::Set(letstalk_wire::Avatar {
                mime: (*mime).to_owned(),
                data: data.clone(),
            }),
        },
    };
    relay.request(update).await.and_then(check).map_err(|e| e.to_rpc(""))?;
    if let Some(n) = nickname {
        a.nickname = n;
    }
    if let Some(e) = email {
        a.email = e;
    }
    if let Some(av) = avatar {
        a.avatar = av.map(|(data, mime)| (data, mime.to_owned()));
    }
    let ipc = a.to_ipc();
    let body = EventBody::AccountChanged { account: ipc.clone() };
    let seq = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            a.save(&tx)?;
            let seq = events::append(&tx, &body, now_ms())?;
            tx.commit()?;
            Ok(seq)
        })
        .await
        .map_err(internal)?;
    daemon.bus.published(seq);
    Ok(ipc)
}

pub(super) async fn change_password(
    daemon: &Arc<Daemon>,
    p: ChangePasswordParams,
) -> Result<Empty, RpcError> {
    current(daemon).await?;
    validate::password("new_password", &p.new_password.0)?;
    let relay = relay(daemon)?;
    expect_ok(
        relay.as_ref(),
        Request::ChangePassword { old_password: p.old_password.0, new_password: p.new_password.0 },
    )
    .await
    .map_err(|e| e.to_rpc("new_password"))?;
    Ok(Empty {})
}

pub(super) async fn avatar(
    daemon: &Arc<Daemon>,
    p: AvatarParams,
) -> Result<AvatarResult, RpcError> {
    let me = current(daemon).await?;
    let user = match &p.user_id {
        Some(u) => validate::user_id("user_id", u)?,
        None => me.user_id.clone(),
    };
    let (data, mime) = if user == me.user_id {
        me.avatar.clone().ok_or_else(|| RpcError::new(ErrorKind::NotFound, "no avatar"))?
    } else {
        match relay(daemon)?
            .request(Request::FetchAvatar { user_id: user.clone() })
            .await
            .and_then(check)
        {
            Ok(Response::Avatar(av)) => (av.data, av.mime),
            Ok(_) => return Err(RpcError::internal("unexpected answer from the relay")),
            Err(e) => return Err(e.to_rpc("user_id")),
        }
    };
    let ext = match mime.as_str() {
        "image/png" => "png",
        "image/jpeg" => "jpg",
        _ => "webp",
    };
    let path = match &p.dest {
        Some(d) if std::path::Path::new(d).is_absolute() => std::path::PathBuf::from(d),
        Some(_) => return Err(RpcError::invalid_params("dest", "dest must be an absolute path")),
        None => {
            // Beside the opened files in the runtime directory (0700, normally a tmpfs),
            // never in the data directory: a photo is plaintext, and "restore defaults"
            // shreds this directory.
            let dir = crate::files::runtime_dir(daemon).join("avatars");
            {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(&dir)
                    .map_err(|e| RpcError::internal(e.to_string()))?;
            }
            dir.join(format!("{user}.{ext}"))
        }
    };
    std::fs::write(&path, &data).map_err(|e| {
        RpcError::invalid_params("dest", format!("cannot write {}: {e}", path.display()))
    })?;
    Ok(AvatarResult { path: path.display().to_string(), sha256: account::sha256_hex(&data), mime })
}
