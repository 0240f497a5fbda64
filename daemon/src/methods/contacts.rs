//! `contacts.*`: add, list, remove, verify, mark_verified, trust, block, unblock.

use std::sync::Arc;

use rusqlite::params;

use letstalk_ipc::types::{
    Contact, ContactsAddParams, ContactsList, Empty, MarkVerifiedParams, TrustParams, UserIdParams,
    VerifyResult,
};
use letstalk_ipc::{ErrorKind, RpcError};
use letstalk_wire::{Request, Response};

use super::account::relay;
use super::{internal, logged_in};
use crate::relay::check;
use crate::{Daemon, contacts, now_ms, sync, trust, validate};

fn not_found(user: &str) -> RpcError {
    RpcError::new(ErrorKind::NotFound, format!("{user} is not a contact"))
}

pub(super) async fn add(daemon: &Arc<Daemon>, p: ContactsAddParams) -> Result<Contact, RpcError> {
    let me = logged_in(daemon).await?;
    let user = validate::user_id("user_id", &p.user_id)?;
    if user == me {
        return Err(RpcError::invalid_params("user_id", "you cannot add yourself"));
    }
    let alias = p.alias.as_deref().map(|a| validate::nickname("alias", a)).transpose()?;
    let relay = relay(daemon)?;
    let profile =
        match relay.request(Request::LookupUser { user_id: user.clone() }).await.and_then(check) {
            Ok(Response::Profile(profile)) => profile,
            Ok(_) => return Err(RpcError::internal("unexpected answer from the relay")),
            Err(e) => return Err(e.to_rpc("user_id")),
        };
    let presence = match relay
        .request(Request::Watch { add: vec![user.clone()], remove: vec![] })
        .await
        .and_then(check)
    {
        Ok(Response::Presence { users }) => users.into_iter().find(|u| u.user_id == user),
        Ok(_) => None,
        Err(e) => return Err(e.to_rpc("user_id")),
    };
    let u = user.clone();
    let (contact, seq) = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let now = now_ms();
            let (state, last_seen) = match &presence {
                Some(p) if p.hidden => ("hidden", None),
                Some(p) if p.online => ("online", None),
                Some(p) => ("offline", i64::try_from(p.last_seen_at).ok().filter(|t| *t > 0)),
                None => ("offline", None),
            };
            tx.execute(
                "INSERT INTO contacts (user_id, nickname, alias, presence, last_seen_at, added_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (user_id) DO UPDATE SET nickname = excluded.nickname,
                    alias = coalesce(excluded.alias, contacts.alias), presence = excluded.presence,
                    last_seen_at = coalesce(excluded.last_seen_at, contacts.last_seen_at)",
                params![u, profile.nickname, alias, state, last_seen, now],
            )?;
            sync::queue_contact(&tx, &me, &u, now)?;
            let changed =
                contacts::changed(&tx, &u, now)?.ok_or_else(|| vanished("new contact"))?;
            tx.commit()?;
            Ok(changed)
        })
        .await
        .map_err(internal)?;
    daemon.bus.published(seq);
    daemon.wake_sender();
    // The new contact may now see our presence: the relay learns it from our list.
    sync_privacy(daemon).await;
    Ok(contact)
}

pub(super) async fn list(daemon: &Arc<Daemon>, _: Empty) -> Result<ContactsList, RpcError> {
    logged_in(daemon).await?;
    let contacts = daemon.store.call(|c| contacts::list(c)).await.map_err(internal)?;
    Ok(ContactsList { contacts })
}

pub(super) async fn remove(daemon: &Arc<Daemon>, p: UserIdParams) -> Result<Empty, RpcError> {
    let me = logged_in(daemon).await?;
    let user = validate::user_id("user_id", &p.user_id)?;
    let u = user.clone();
    let removed = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            if tx.execute("DELETE FROM contacts WHERE user_id = ?1", params![u])? != 1 {
                return Ok(false);
            }
            sync::queue_contact(&tx, &me, &u, now_ms())?;
            tx.commit()?;
            Ok(true)
        })
        .await
        .map_err(internal)?;
    if !removed {
        return Err(not_found(&user));
    }
    daemon.wake_sender();
    sync_privacy(daemon).await;
    if let Some(relay) = &daemon.relay
        && let Err(e) = relay.request(Request::Watch { add: vec![], remove: vec![user] }).await
    {
        // The watch list is re-sent on every connection, so a missed removal heals.
        tracing::debug!(error = %e, "unwatching failed");
    }
    Ok(Empty {})
}

pub(super) async fn verify(
    daemon: &Arc<Daemon>,
    p: UserIdParams,
) -> Result<VerifyResult, RpcError> {
    logged_in(daemon).await?;
    let user = validate::user_id("user_id", &p.user_id)?;
    let u = user.clone();
    let found = daemon
        .store
        .call(move |c| {
            let verified = match contacts::get(c, &u)? {
                Some(_) => Some(trust::is_verified(c, &u)?),
                None => None,
            };
            let number = contacts::safety_number(c, &u)?;
            let fingerprint = trust::known(c, &u)?.map(|k| k.fingerprint());
            Ok((verified, number, fingerprint))
        })
        .await
        .map_err(internal)?;
    match found {
        (Some(verified), Some(safety_number), Some(fingerprint)) => {
            Ok(VerifyResult { safety_number, fingerprint, verified })
        }
        (None, _, _) => Err(not_found(&user)),
        _ => Err(RpcError::new(
            ErrorKind::InvalidState,
            format!("no session with {user} yet: exchange a message first"),
        )),
    }
}

pub(super) async fn mark_verified(
    daemon: &Arc<Daemon>,
    p: MarkVerifiedParams,
) -> Result<Contact, RpcError> {
    accept_key(daemon, &p.user_id, p.verified, None).await
}

/// `contacts.trust`: accepts the contact's current identity key, as verified only with
/// the current safety number.
pub(super) async fn trust(daemon: &Arc<Daemon>, p: TrustParams) -> Result<Contact, RpcError> {
    let number = match &p.safety_number {
        Some(n) => Some(trust::normalize_safety_number(n).ok_or_else(|| {
            RpcError::invalid_params("safety_number", "a safety number is 60 digits")
        })?),
        None => None,
    };
    accept_key(daemon, &p.user_id, number.is_some(), number).await
}

/// Records the user's decision about a contact's current key (verified or only
/// accepted): either way, messages held for a changed key go out and held sender keys
/// apply. `expected` is the safety number the user compared, which must be current.
async fn accept_key(
    daemon: &Arc<Daemon>,
    raw: &str,
    verified: bool,
    expected: Option<String>,
) -> Result<Contact, RpcError> {
    let me = logged_in(daemon).await?;
    let user = validate::user_id("user_id", raw)?;
    let u = user.clone();
    let outcome = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            if contacts::get(&tx, &u)?.is_none() {
                return Ok(Err(not_found(&u)));
            }
            let current = contacts::safety_number(&tx, &u)?;
            if let (Some(expected), Some(current)) = (&expected, &current)
                && trust::normalize_safety_number(current).as_ref() != Some(expected)
            {
                return Ok(Err(RpcError::new(
                    ErrorKind::Conflict,
                    format!("that is not the current safety number with {u}"),
                )));
            }
            let now = now_ms();
            let effects = match trust::accept(&tx, &me, &u, verified, now)? {
                Ok(effects) => effects,
                Err(_) if !verified => {
                    // Nothing to accept yet; unverifying still clears the flag.
                    tx.execute(
                        "UPDATE contacts SET verified = 0, verified_identity = NULL WHERE user_id = ?1",
                        params![u],
                    )?;
                    crate::events::Effects::default()
                }
                Err(_) => {
                    return Ok(Err(RpcError::new(
                        ErrorKind::InvalidState,
                        format!("no session with {u} yet: exchange a message first"),
                    )));
                }
            };
            sync::queue_contact(&tx, &me, &u, now)?;
            let (contact, seq) =
                contacts::changed(&tx, &u, now)?.ok_or_else(|| vanished("contact"))?;
            tx.commit()?;
            Ok(Ok((contact, seq, effects)))
        })
        .await
        .map_err(internal)??;
    let (contact, seq, effects) = outcome;
    daemon.bus.published(seq.max(effects.last_event.unwrap_or(0)));
    // Messages held for the changed key may go now.
    daemon.wake_sender();
    Ok(contact)
}

pub(super) async fn block(daemon: &Arc<Daemon>, p: UserIdParams) -> Result<Contact, RpcError> {
    set_blocked(daemon, &p.user_id, true).await
}

pub(super) async fn unblock(daemon: &Arc<Daemon>, p: UserIdParams) -> Result<Contact, RpcError> {
    set_blocked(daemon, &p.user_id, false).await
}

/// Records the block on this device (which from then on discards anything from the
/// user), then tells the relay, which refuses their messages and calls and hides our
/// presence from them. Offline, the relay hears it on the next connection.
async fn set_blocked(daemon: &Arc<Daemon>, raw: &str, blocked: bool) -> Result<Contact, RpcError> {
    let me = logged_in(daemon).await?;
    let user = validate::user_id("user_id", raw)?;
    if user == me {
        return Err(RpcError::invalid_params("user_id", "you cannot block yourself"));
    }
    let u = user.clone();
    let known =
        daemon.store.call(move |c| Ok(contacts::get(c, &u)?.is_some())).await.map_err(internal)?;
    // Blocking someone who is not a contact (a stranger writing to us) adds them as a
    // blocked contact, once the relay confirms the account exists.
    let mut nickname = String::new();
    if !known {
        if !blocked {
            return Err(not_found(&user));
        }
        let relay = relay(daemon)?;
        match relay.request(Request::LookupUser { user_id: user.clone() }).await.and_then(check) {
            Ok(Response::Profile(profile)) => nickname = profile.nickname,
            Ok(_) => return Err(RpcError::internal("unexpected answer from the relay")),
            Err(e) => return Err(e.to_rpc("user_id")),
        }
    }
    let u = user.clone();
    let (contact, seq) = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let now = now_ms();
            tx.execute(
                "INSERT INTO contacts (user_id, nickname, blocked, added_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (user_id) DO UPDATE SET blocked = excluded.blocked",
                params![u, nickname, blocked, now],
            )?;
            sync::queue_contact(&tx, &me, &u, now)?;
            let changed =
                contacts::changed(&tx, &u, now)?.ok_or_else(|| vanished("blocked contact"))?;
            tx.commit()?;
            Ok(changed)
        })
        .await
        .map_err(internal)?;
    daemon.bus.published(seq);
    daemon.wake_sender();
    sync_privacy(daemon).await;
    Ok(contact)
}

/// Sends the relay the whole block state (blocked contacts and "block everyone") and the
/// contact list with `settings.share_presence` (the relay shows our presence only to
/// contacts we do not block, and to nobody without `share_presence`). Runs after every
/// change and on every connection, so a change made offline, or one whose request was
/// lost, reaches the relay eventually.
pub(crate) async fn sync_privacy(daemon: &Arc<Daemon>) {
    let (Some(relay), Some(_)) = (&daemon.relay, daemon.user()) else { return };
    let state = daemon
        .store
        .call(|c| {
            let blocked: Vec<String> = c
                .prepare("SELECT user_id FROM contacts WHERE blocked = 1 ORDER BY user_id")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let contacts: Vec<String> = c
                .prepare("SELECT user_id FROM contacts ORDER BY user_id")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            Ok((super::Settings::load(c)?, blocked, contacts))
        })
        .await;
    let (settings, blocked, contacts) = match state {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "reading the block and contact lists");
            return;
        }
    };
    // Blocks first: a contact being blocked is never shown presence in between.
    let blocks = Request::SetBlocks { block_all: settings.block_all, users: blocked };
    let contacts =
        Request::SetContacts { share_presence: settings.share_presence, users: contacts };
    for request in [blocks, contacts] {
        if let Err(e) = crate::relay::expect_ok(relay.as_ref(), request).await {
            tracing::debug!(error = %e, "privacy lists not sent yet; re-sent on connection");
            return;
        }
    }
}

fn vanished(context: &str) -> crate::store::StoreError {
    crate::store::StoreError::Io {
        context: context.into(),
        source: std::io::Error::other("vanished"),
    }
}
