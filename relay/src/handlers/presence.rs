//! Presence requests: `Watch` (whom this account follows, answered with what each may
//! show), `SetBlocks` and `SetContacts` (after which each watcher whose view changed is
//! told: `hidden`, or the real presence).

use std::sync::Arc;

use letstalk_wire::{PresenceInfo, Push, Request, Response};
use tracing::debug;

use crate::clock::now_ms;
use crate::ctx::ConnCtx;
use crate::fail::{Reply, misrouted, storage_fail, user_arg};
use crate::session::require_auth;
use crate::state::State;
use crate::storage::{Blocks, Contacts, Storage, shows_presence};
use crate::userid::normalize_user_id;

/// A presence request.
pub(super) async fn handle<S: Storage>(
    st: &Arc<State<S>>,
    ctx: &Arc<ConnCtx>,
    req: Request,
) -> Reply {
    match req {
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
        other => Err(misrouted(&other)),
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
            st.hub.push(&w, None, frame).await;
        }
    }
}
