//! `groups.*`: create, list, info, add_members, remove_members, rename, leave.
//!
//! Every change is made on this device first (with its system messages and its
//! `group.changed` event, in one transaction with the outbox rows that announce it), so
//! it works offline and reaches the other members when the relay does.

use std::collections::BTreeSet;
use std::sync::Arc;

use letstalk_ipc::types::{
    Empty, Group, GroupIdParams, GroupMembersParams, GroupRenameParams, GroupsCreateParams,
    GroupsList, RelayState,
};
use letstalk_ipc::{ErrorKind, RpcError};
use letstalk_wire::Request;

use super::{internal, logged_in};
use rand_core::OsRng;

use crate::account::Account;
use crate::content::Content;
use crate::groups::{self, GroupState, MAX_MEMBERS};
use crate::store::StoreError;
use crate::{Daemon, now_ms, validate};

fn no_group() -> RpcError {
    RpcError::new(ErrorKind::NotFound, "no such group")
}

fn group_id(raw: &str) -> Result<String, RpcError> {
    if groups::valid_id(raw) {
        Ok(raw.to_owned())
    } else {
        Err(RpcError::invalid_params("group_id", "group_id must be 1 to 64 of A-Z a-z 0-9 - _"))
    }
}

fn name(raw: &str) -> Result<String, RpcError> {
    validate::nickname("name", raw)
}

/// Checked, normalised user IDs, without duplicates.
fn user_ids(raw: &[String]) -> Result<BTreeSet<String>, RpcError> {
    if raw.len() >= MAX_MEMBERS {
        return Err(RpcError::new(
            ErrorKind::TooLarge,
            format!("a group has at most {MAX_MEMBERS} members"),
        ));
    }
    raw.iter().map(|u| validate::user_id("members", u)).collect()
}

/// With the relay connected, every user must exist (`not_found` names the first that
/// does not); offline, the check is skipped and a bad member simply never receives.
async fn check_exist(daemon: &Daemon, users: &BTreeSet<String>) -> Result<(), RpcError> {
    let Some(relay) = &daemon.relay else { return Ok(()) };
    if relay.status().0 != RelayState::Connected {
        return Ok(());
    }
    for user in users {
        let answer = relay.request(Request::LookupUser { user_id: user.clone() }).await;
        match answer.and_then(crate::relay::check) {
            Ok(_) => {}
            Err(crate::relay::RelayError::Refused {
                kind: letstalk_wire::ErrorKind::NotFound,
                ..
            }) => {
                return Err(RpcError::new(ErrorKind::NotFound, format!("no such user: {user}")));
            }
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// A change an admin makes: from the current state to the next.
type Change = Box<dyn FnOnce(&GroupState) -> Result<GroupState, RpcError> + Send>;

/// Loads the group, checks that we are an admin in it, applies `change` (next version),
/// and queues the snapshot to every member old and new.
async fn admin_change(
    daemon: &Arc<Daemon>,
    me: String,
    gid: String,
    change: Change,
) -> Result<Group, RpcError> {
    let outcome = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let Some((old, true)) = groups::load(&tx, &gid)? else { return Ok(Err(no_group())) };
            if !old.admins.contains(&me) {
                return Ok(Err(RpcError::new(
                    ErrorKind::InvalidState,
                    "only an admin of the group can change it",
                )));
            }
            let mut new = match change(&old) {
                Ok(new) => new,
                Err(e) => return Ok(Err(e)),
            };
            new.version = old.version + 1;
            let now = now_ms();
            let seq = groups::apply(&tx, &me, Some(&old), &new, &me, now)?;
            let to: BTreeSet<&String> =
                old.members.union(&new.members).filter(|m| **m != me).collect();
            let queued = groups::announce(&tx, &new, &me, to, now)?;
            tx.commit()?;
            Ok(Ok((new.to_ipc(), seq, queued)))
        })
        .await
        .map_err(internal)??;
    let (group, seq, queued) = outcome;
    daemon.bus.published(seq);
    if queued {
        daemon.wake_sender();
    }
    Ok(group)
}

pub(super) async fn create(daemon: &Arc<Daemon>, p: GroupsCreateParams) -> Result<Group, RpcError> {
    let me = logged_in(daemon).await?;
    let name = name(&p.name)?;
    let mut members = user_ids(&p.members)?;
    members.remove(&me);
    check_exist(daemon, &members).await?;
    members.insert(me.clone());
    let (group, seq, queued) = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let account = Account::load(&tx)?.ok_or_else(|| StoreError::Io {
                context: "groups.create".into(),
                source: std::io::Error::other("no account"),
            })?;
            // The id is bound to us, so a device that has not seen the group can check
            // that its snapshot comes from its admin (`groups::proves_admin`).
            let (id, proof) = groups::new_origin(&me, &account.identity, &mut OsRng);
            let now = now_ms();
            let state = GroupState {
                id,
                name,
                created_at: now,
                version: 1,
                members,
                admins: BTreeSet::from([me.clone()]),
                proof: Some(proof),
            };
            let seq = groups::apply(&tx, &me, None, &state, &me, now)?;
            let others: Vec<&String> = state.members.iter().filter(|m| **m != me).collect();
            let queued = groups::announce(&tx, &state, &me, others, now)?;
            tx.commit()?;
            Ok((state.to_ipc(), seq, queued))
        })
        .await
        .map_err(internal)?;
    daemon.bus.published(seq);
    if queued {
        daemon.wake_sender();
    }
    Ok(group)
}

pub(super) async fn list(daemon: &Arc<Daemon>, _: Empty) -> Result<GroupsList, RpcError> {
    logged_in(daemon).await?;
    let groups = daemon.store.call(|c| groups::list(c)).await.map_err(internal)?;
    Ok(GroupsList { groups })
}

pub(super) async fn info(daemon: &Arc<Daemon>, p: GroupIdParams) -> Result<Group, RpcError> {
    logged_in(daemon).await?;
    let gid = group_id(&p.group_id)?;
    let found = daemon.store.call(move |c| groups::load(c, &gid)).await.map_err(internal)?;
    found.map(|(g, _)| g.to_ipc()).ok_or_else(no_group)
}

pub(super) async fn add_members(
    daemon: &Arc<Daemon>,
    p: GroupMembersParams,
) -> Result<Group, RpcError> {
    let me = logged_in(daemon).await?;
    let gid = group_id(&p.group_id)?;
    let add = user_ids(&p.members)?;
    if add.is_empty() {
        return Err(RpcError::invalid_params("members", "members is empty"));
    }
    check_exist(daemon, &add).await?;
    let change: Change = Box::new(move |old| {
        if let Some(dup) = add.iter().find(|u| old.members.contains(*u)) {
            return Err(RpcError::new(ErrorKind::Conflict, format!("{dup} is already a member")));
        }
        let mut new = old.clone();
        new.members.extend(add);
        if new.members.len() > MAX_MEMBERS {
            return Err(RpcError::new(
                ErrorKind::TooLarge,
                format!("a group has at most {MAX_MEMBERS} members"),
            ));
        }
        Ok(new)
    });
    admin_change(daemon, me, gid, change).await
}

pub(super) async fn remove_members(
    daemon: &Arc<Daemon>,
    p: GroupMembersParams,
) -> Result<Group, RpcError> {
    let me = logged_in(daemon).await?;
    let gid = group_id(&p.group_id)?;
    let remove = user_ids(&p.members)?;
    if remove.is_empty() {
        return Err(RpcError::invalid_params("members", "members is empty"));
    }
    if remove.contains(&me) {
        return Err(RpcError::invalid_params("members", "use groups.leave to leave a group"));
    }
    let change: Change = Box::new(move |old| {
        if let Some(stranger) = remove.iter().find(|u| !old.members.contains(*u)) {
            return Err(RpcError::new(ErrorKind::NotFound, format!("{stranger} is not a member")));
        }
        let mut new = old.clone();
        for u in &remove {
            new = groups::without(&new, u);
        }
        Ok(new)
    });
    admin_change(daemon, me, gid, change).await
}

pub(super) async fn rename(daemon: &Arc<Daemon>, p: GroupRenameParams) -> Result<Group, RpcError> {
    let me = logged_in(daemon).await?;
    let gid = group_id(&p.group_id)?;
    let name = name(&p.name)?;
    let change: Change = Box::new(move |old| Ok(GroupState { name, ..old.clone() }));
    admin_change(daemon, me, gid, change).await
}

pub(super) async fn leave(daemon: &Arc<Daemon>, p: GroupIdParams) -> Result<Empty, RpcError> {
    let me = logged_in(daemon).await?;
    let gid = group_id(&p.group_id)?;
    let outcome = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let Some((old, true)) = groups::load(&tx, &gid)? else { return Ok(None) };
            let now = now_ms();
            let new = groups::without(&old, &me);
            // The last admin leaving vouches for the member who takes over, so that
            // member can still introduce the group to devices that have not seen it.
            let grant = match Account::load(&tx)? {
                Some(a) => groups::successor_grant(&tx, &old, &new, &me, &a.identity)?,
                None => None,
            };
            let seq = groups::apply(&tx, &me, Some(&old), &new, &me, now)?;
            let content = Content::GroupLeave { gid: gid.clone(), grant };
            let mut queued = false;
            for member in &new.members {
                crate::outbox::enqueue(&tx, member, None, &content, now)?;
                queued = true;
            }
            // Our other devices leave with us.
            if crate::outbox::own_devices_may_exist(&tx, &me)? {
                crate::outbox::enqueue(&tx, &me, None, &content, now)?;
                queued = true;
            }
            tx.commit()?;
            Ok::<_, StoreError>(Some((seq, queued)))
        })
        .await
        .map_err(internal)?;
    let (seq, queued) = outcome.ok_or_else(no_group)?;
    daemon.bus.published(seq);
    if queued {
        daemon.wake_sender();
    }
    Ok(Empty {})
}
