//! The row helpers the trait's methods share: conversions, reads inside a connection
//! or transaction (a profile, blocks, contacts, devices), a device's removal, and the
//! enqueue of one message inside the caller's transaction (dedupe, blocks, the target
//! devices, each mailbox's fair shares).

use letstalk_wire::{AvatarMeta, Profile};
use rusqlite::{Connection, OptionalExtension, params};

use super::counters::{self, Mail, Scope, Tally};
use crate::storage::{
    Blocks, Contacts, DEDUPE_WINDOW, Enqueued, Envelope, Quota, StorageError, dedupe_id,
    target_devices,
};

pub(super) fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(super) fn key32(v: Option<Vec<u8>>) -> Option<[u8; 32]> {
    v.and_then(|v| <[u8; 32]>::try_from(v.as_slice()).ok())
}

pub(super) fn read_profile(c: &Connection, user_id: &str) -> Result<Option<Profile>, StorageError> {
    let row = c
        .prepare_cached(
            "SELECT a.nickname, a.email, a.created_at, a.updated_at, v.mime, v.sha256, length(v.data)
             FROM accounts a LEFT JOIN avatars v ON v.user_id = a.user_id WHERE a.user_id = ?1",
        )?
        .query_row([user_id], |r| {
            let mime: Option<String> = r.get(4)?;
            let sha: Option<Vec<u8>> = r.get(5)?;
            let size: Option<i64> = r.get(6)?;
            let avatar = match (mime, key32(sha), size) {
                (Some(mime), Some(sha256), Some(size)) => {
                    Some(AvatarMeta { mime, sha256, size: u32::try_from(size).unwrap_or(u32::MAX) })
                }
                _ => None,
            };
            Ok(Profile {
                user_id: user_id.to_owned(),
                nickname: r.get(0)?,
                email: Some(r.get(1)?),
                avatar,
                created_at: r.get::<_, i64>(2)? as u64,
                updated_at: r.get::<_, i64>(3)? as u64,
            })
        })
        .optional()?;
    Ok(row)
}

pub(super) fn exists(c: &Connection, user_id: &str) -> Result<bool, StorageError> {
    Ok(c.prepare_cached("SELECT 1 FROM accounts WHERE user_id = ?1")?.exists([user_id])?)
}

pub(super) fn count_one_time(
    c: &Connection,
    user_id: &str,
    device_id: u32,
) -> Result<u32, StorageError> {
    let n: i64 = c
        .prepare_cached(
            "SELECT COUNT(*) FROM device_prekeys WHERE user_id = ?1 AND device_id = ?2",
        )?
        .query_row(params![user_id, device_id], |r| r.get(0))?;
    Ok(u32::try_from(n).unwrap_or(u32::MAX))
}

pub(super) fn read_contacts(c: &Connection, user_id: &str) -> Result<Contacts, StorageError> {
    let share: Option<bool> = c
        .prepare_cached("SELECT share_presence FROM accounts WHERE user_id = ?1")?
        .query_row([user_id], |r| r.get(0))
        .optional()?;
    let users = c
        .prepare_cached("SELECT contact FROM contacts WHERE owner = ?1")?
        .query_map([user_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(Contacts { share_presence: share.unwrap_or(true), users })
}

pub(super) fn read_blocks(c: &Connection, user_id: &str) -> Result<Blocks, StorageError> {
    let all: Option<bool> = c
        .prepare_cached("SELECT block_all FROM accounts WHERE user_id = ?1")?
        .query_row([user_id], |r| r.get(0))
        .optional()?;
    let users = c
        .prepare_cached("SELECT blocked FROM blocks WHERE blocker = ?1")?
        .query_map([user_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(Blocks { all: all.unwrap_or(false), users })
}

/// The ids of the account's devices, ascending.
pub(super) fn device_ids(c: &Connection, user_id: &str) -> Result<Vec<u32>, StorageError> {
    let ids = c
        .prepare_cached("SELECT device_id FROM devices WHERE user_id = ?1 ORDER BY device_id")?
        .query_map([user_id], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    Ok(ids)
}

/// Deletes one device's row (its prekeys cascade) and its mailbox; false if there was
/// no such device.
pub(super) fn delete_device(
    c: &Connection,
    user_id: &str,
    device_id: u32,
) -> Result<bool, StorageError> {
    let n = c
        .prepare_cached("DELETE FROM devices WHERE user_id = ?1 AND device_id = ?2")?
        .execute(params![user_id, device_id])?;
    counters::delete_mail(c, Scope::Device(user_id, device_id))?;
    Ok(n > 0)
}

/// What one envelope did inside the caller's transaction.
pub(super) struct Stored {
    pub(super) enqueued: Enqueued,
    /// The rows written: (device, delivery id), in device order.
    pub(super) rows: Vec<(u32, u64)>,
}

/// One message into the mailboxes of its target devices, inside the caller's
/// transaction: dedupe once per (sender, recipient, msg id), the recipient's blocks once
/// (not for one's own account), then each copy within its device mailbox's quota.
///
/// The copies are counted in `counts`, which the caller writes to the counters later
/// (with `pending`, the changes of the same transaction not written yet: the quota
/// checks add both to the counters).
pub(super) fn enqueue_in(
    tx: &Connection,
    e: Envelope,
    quota: Quota,
    pending: &[&Tally],
    counts: &mut Tally,
) -> Result<Stored, StorageError> {
    let id = dedupe_id(&e.sender, &e.recipient, &e.msg_id);
    let window = u64::try_from(DEDUPE_WINDOW.as_millis()).unwrap_or(u64::MAX);
    let before: Option<i64> = tx
        .prepare_cached("SELECT server_ts FROM sent_ids WHERE id = ?1 AND server_ts >= ?2")?
        .query_row(params![id, i(e.now.saturating_sub(window))], |r| r.get(0))
        .optional()?;
    if let Some(ts) = before {
        return Ok(Stored {
            enqueued: Enqueued { server_ts: ts as u64, duplicate: true },
            rows: Vec::new(),
        });
    }
    let refuses: Option<(bool, bool)> = tx
        .prepare_cached(
            "SELECT a.block_all OR EXISTS
                (SELECT 1 FROM blocks b WHERE b.blocker = a.user_id AND b.blocked = ?2),
                EXISTS (SELECT 1 FROM contacts c WHERE c.owner = a.user_id AND c.contact = ?2)
             FROM accounts a WHERE a.user_id = ?1",
        )?
        .query_row(params![e.recipient, e.sender], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    // One's own account never blocks itself, and its other devices are no strangers.
    let own = e.sender == e.recipient;
    let from_contact = match refuses {
        None => return Err(StorageError::NotFound),
        Some(_) if own => true,
        Some((true, _)) => return Err(StorageError::Blocked),
        Some((false, contact)) => contact,
    };
    let targets =
        target_devices(&e.sender, e.sender_device, &e.recipient, device_ids(tx, &e.recipient)?);
    let copies = e.copies.resolve(&targets)?;
    let over = |have: counters::Amount, (max_messages, max_bytes): (u64, u64), len: u64| {
        have.messages as u64 >= max_messages || have.bytes as u64 + len > max_bytes
    };
    {
        // The device's totals row and the sender's one or two usage rows (not the
        // mailbox), plus what this transaction changed and did not write yet.
        let mut layers = pending.to_vec();
        layers.push(&*counts);
        for (device, body) in &copies {
            let len = body.len() as u64;
            let usage = counters::usage(tx, &layers, &e.recipient, *device, &e.sender)?;
            // Fair shares: one sender, and non-contacts together, fill only a part of the box.
            if over(usage.total, (quota.max_messages, quota.max_bytes), len)
                || over(usage.sender, quota.sender_share(), len)
                || (!from_contact && over(usage.strangers, quota.stranger_share(), len))
            {
                return Err(StorageError::QuotaExceeded);
            }
        }
    }
    tx.prepare_cached(
        "INSERT INTO sent_ids (id, server_ts) VALUES (?1, ?2)
         ON CONFLICT (id) DO UPDATE SET server_ts = excluded.server_ts",
    )?
    .execute(params![id, i(e.now)])?;
    let mail = Mail {
        recipient: &e.recipient,
        sender: &e.sender,
        sender_device: e.sender_device,
        msg_id: &e.msg_id,
        server_ts: e.now,
        from_contact,
    };
    let mut rows = Vec::with_capacity(copies.len());
    for (device, body) in &copies {
        rows.push((*device, counters::insert(tx, &mail, *device, body, counts)?));
    }
    Ok(Stored { enqueued: Enqueued { server_ts: e.now, duplicate: false }, rows })
}
