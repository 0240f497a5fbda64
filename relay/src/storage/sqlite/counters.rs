//! The mailbox's counters, and every write of the mailbox that moves them.
//!
//! `mailbox_usage` holds the messages and bytes each device mailbox holds per (sender,
//! from a contact or not), `mailbox_totals` what it holds in all and from non-contacts
//! (migrations 6 and 7). The quota check of every enqueue reads them ([`usage`]): one
//! totals row and one sender's one or two rows, never the mailbox itself.
//!
//! They are not kept by triggers (a trigger runs once per mail row) but here, in the
//! transaction that writes the mail: a write records
//! what it changes in a [`Tally`], summed per (device mailbox, sender, from a contact),
//! and [`Tally::write`] adds the sums to the counters, once per group. The group commit
//! writer keeps one tally per job (per recipient in a fan-out), absorbed into the
//! batch's when the job's savepoint is released and dropped with it when it is rolled
//! back; the batch's is written right before the commit, so a refused job, a rolled-back
//! savepoint or a failed commit leaves the counters as untouched as the mail. Until
//! then the quota checks of the batch read the counters plus the pending tallies.
//!
//! Every row of the mailbox is inserted by [`insert`] and deleted by [`delete_delivered`]
//! or [`delete_mail`], which count what they write; no other code writes the mailbox
//! (a test of the sources checks it). An update of a counted column is refused by a
//! trigger, and an account's deletion, whose cascade would delete its mail uncounted, by
//! another while mail is queued for it. Debug builds check the counters of every device
//! a tally touched against the mailbox (so a path that forgot shows in the tests); a
//! counter found below zero (in any build) is logged and repaired by counting the
//! device's mailbox again ([`recount`]).

use std::collections::HashMap;

use rusqlite::{Connection, Params, params};

use super::rows::i;
use crate::storage::StorageError;

/// Messages and bytes: what a counter holds, or a change of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Amount {
    pub(super) messages: i64,
    pub(super) bytes: i64,
}

impl Amount {
    /// One message of `len` bytes, stored (`1`) or deleted (`-1`).
    fn one(sign: i64, len: i64) -> Self {
        Self { messages: sign, bytes: sign * len }
    }

    fn add(&mut self, by: Amount) {
        self.messages += by.messages;
        self.bytes += by.bytes;
    }

    fn is_zero(&self) -> bool {
        *self == Self::default()
    }

    /// Whether a counter holding this is impossible (it drifted).
    fn impossible(&self) -> bool {
        self.messages < 0 || self.bytes < 0 || (self.messages == 0 && self.bytes != 0)
    }
}

/// The changes to one device mailbox's counters.
#[derive(Debug, Default)]
struct DeviceTally {
    total: Amount,
    strangers: Amount,
    /// Per sender: [from a non-contact, from a contact].
    senders: HashMap<String, [Amount; 2]>,
}

/// Changes to the counters not written yet: per recipient, per device.
#[derive(Debug, Default)]
pub(super) struct Tally {
    boxes: HashMap<String, HashMap<u32, DeviceTally>>,
}

impl Tally {
    /// Records a change of one (device mailbox, sender, from a contact) group.
    fn change(&mut self, recipient: &str, device: u32, sender: &str, contact: bool, by: Amount) {
        if !self.boxes.contains_key(recipient) {
            self.boxes.insert(recipient.to_owned(), HashMap::new());
        }
        let Some(devices) = self.boxes.get_mut(recipient) else { return };
        let d = devices.entry(device).or_default();
        d.total.add(by);
        if !contact {
            d.strangers.add(by);
        }
        if let Some(amounts) = d.senders.get_mut(sender) {
            amounts[usize::from(contact)].add(by);
        } else {
            let mut amounts = [Amount::default(); 2];
            amounts[usize::from(contact)] = by;
            d.senders.insert(sender.to_owned(), amounts);
        }
    }

    /// Takes over `other`'s changes (a job's, once its savepoint is released).
    pub(super) fn absorb(&mut self, other: Tally) {
        if self.boxes.is_empty() {
            *self = other;
            return;
        }
        for (recipient, devices) in other.boxes {
            for (device, d) in devices {
                for (sender, amounts) in d.senders {
                    for (contact, by) in [(false, amounts[0]), (true, amounts[1])] {
                        if !by.is_zero() {
                            self.change(&recipient, device, &sender, contact, by);
                        }
                    }
                }
            }
        }
    }

    fn device(&self, recipient: &str, device: u32) -> Option<&DeviceTally> {
        self.boxes.get(recipient)?.get(&device)
    }

    /// Adds the changes to the counters, once per group, inside the caller's
    /// transaction; a counter that reaches zero messages goes.
    pub(super) fn write(self, c: &Connection) -> Result<(), StorageError> {
        let mut usage = c.prepare_cached(
            "INSERT INTO mailbox_usage (recipient, device_id, sender, from_contact, messages, bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (recipient, device_id, sender, from_contact)
             DO UPDATE SET messages = messages + excluded.messages, bytes = bytes + excluded.bytes
             RETURNING messages, bytes",
        )?;
        let mut usage_gone = c.prepare_cached(
            "DELETE FROM mailbox_usage WHERE recipient = ?1 AND device_id = ?2 AND sender = ?3
               AND from_contact = ?4",
        )?;
        let mut totals = c.prepare_cached(
            "INSERT INTO mailbox_totals (recipient, device_id, messages, bytes, stranger_messages,
                                         stranger_bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (recipient, device_id)
             DO UPDATE SET messages = messages + excluded.messages, bytes = bytes + excluded.bytes,
                 stranger_messages = stranger_messages + excluded.stranger_messages,
                 stranger_bytes = stranger_bytes + excluded.stranger_bytes
             RETURNING messages, bytes, stranger_messages, stranger_bytes",
        )?;
        let mut totals_gone =
            c.prepare_cached("DELETE FROM mailbox_totals WHERE recipient = ?1 AND device_id = ?2")?;
        for (recipient, devices) in &self.boxes {
            for (&device, d) in devices {
                let mut drifted = false;
                for (sender, amounts) in &d.senders {
                    for (contact, by) in [(false, amounts[0]), (true, amounts[1])] {
                        if by.is_zero() {
                            continue;
                        }
                        let now = usage.query_row(
                            params![recipient, device, sender, contact, by.messages, by.bytes],
                            |r| Ok(Amount { messages: r.get(0)?, bytes: r.get(1)? }),
                        )?;
                        drifted |= now.impossible();
                        if now.messages == 0 {
                            usage_gone.execute(params![recipient, device, sender, contact])?;
                        }
                    }
                }
                if !(d.total.is_zero() && d.strangers.is_zero()) {
                    let (total, strangers) = totals.query_row(
                        params![
                            recipient,
                            device,
                            d.total.messages,
                            d.total.bytes,
                            d.strangers.messages,
                            d.strangers.bytes
                        ],
                        |r| {
                            Ok((
                                Amount { messages: r.get(0)?, bytes: r.get(1)? },
                                Amount { messages: r.get(2)?, bytes: r.get(3)? },
                            ))
                        },
                    )?;
                    drifted |= total.impossible() || strangers.impossible();
                    if total.messages == 0 {
                        totals_gone.execute(params![recipient, device])?;
                    }
                }
                if drifted {
                    // A path wrote the mailbox without counting it (a bug): count this
                    // mailbox again rather than let its quota go wrong for good.
                    tracing::error!(device, "mailbox counters drifted below zero; counted again");
                    recount(c, recipient, device)?;
                }
            }
        }
        #[cfg(debug_assertions)]
        for (recipient, devices) in &self.boxes {
            for &device in devices.keys() {
                debug_assert!(
                    exact(c, recipient, device)?,
                    "the mailbox counters of a device differ from its mailbox"
                );
            }
        }
        Ok(())
    }
}

/// What a device mailbox holds, as its quota check sees it.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Usage {
    pub(super) total: Amount,
    /// The one sender's part (from a contact or not).
    pub(super) sender: Amount,
    /// The non-contacts' part.
    pub(super) strangers: Amount,
}

/// What `recipient`'s `device` mailbox holds: its counters (one totals row and the
/// sender's one or two usage rows) plus the `pending` changes not written yet.
pub(super) fn usage(
    c: &Connection,
    pending: &[&Tally],
    recipient: &str,
    device: u32,
    sender: &str,
) -> Result<Usage, StorageError> {
    let mut out = c
        .prepare_cached(
            "SELECT COALESCE(t.messages, 0), COALESCE(t.bytes, 0), COALESCE(t.stranger_messages, 0),
                    COALESCE(t.stranger_bytes, 0), COALESCE(u.messages, 0), COALESCE(u.bytes, 0)
             FROM (SELECT SUM(messages) AS messages, SUM(bytes) AS bytes FROM mailbox_usage
                   WHERE recipient = ?1 AND device_id = ?2 AND sender = ?3) AS u
             LEFT JOIN mailbox_totals t ON t.recipient = ?1 AND t.device_id = ?2",
        )?
        .query_row(params![recipient, device, sender], |r| {
            Ok(Usage {
                total: Amount { messages: r.get(0)?, bytes: r.get(1)? },
                strangers: Amount { messages: r.get(2)?, bytes: r.get(3)? },
                sender: Amount { messages: r.get(4)?, bytes: r.get(5)? },
            })
        })?;
    for d in pending.iter().filter_map(|t| t.device(recipient, device)) {
        out.total.add(d.total);
        out.strangers.add(d.strangers);
        if let Some([stranger, contact]) = d.senders.get(sender) {
            out.sender.add(*stranger);
            out.sender.add(*contact);
        }
    }
    Ok(out)
}

/// One message as it is queued for each target device.
pub(super) struct Mail<'a> {
    pub(super) recipient: &'a str,
    pub(super) sender: &'a str,
    pub(super) sender_device: u32,
    pub(super) msg_id: &'a str,
    pub(super) server_ts: u64,
    pub(super) from_contact: bool,
}

/// Queues `m`'s copy `body` for `device`, counted in `counts`; its delivery id.
pub(super) fn insert(
    c: &Connection,
    m: &Mail<'_>,
    device: u32,
    body: &[u8],
    counts: &mut Tally,
) -> Result<u64, StorageError> {
    let row = c
        .prepare_cached(
            "INSERT INTO mailbox (recipient, device_id, sender, sender_device, msg_id, server_ts,
                                  body, from_contact)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .insert(params![
            m.recipient,
            device,
            m.sender,
            m.sender_device,
            m.msg_id,
            i(m.server_ts),
            body,
            m.from_contact
        ])?;
    let len = i64::try_from(body.len()).unwrap_or(i64::MAX);
    counts.change(m.recipient, device, m.sender, m.from_contact, Amount::one(1, len));
    Ok(u64::try_from(row).unwrap_or(0))
}

/// Deletes the acknowledged `ids` of `recipient`'s `device` (only that device's own
/// mail: the recipient device is in the WHERE clause), counted in `counts`; how many
/// there were. One statement for all the ids (a JSON array), not one per id.
pub(super) fn delete_delivered(
    c: &Connection,
    recipient: &str,
    device: u32,
    ids: &[u64],
    counts: &mut Tally,
) -> Result<u64, StorageError> {
    let mut list = String::with_capacity(ids.len() * 8 + 2);
    list.push('[');
    for (n, id) in ids.iter().enumerate() {
        if n > 0 {
            list.push(',');
        }
        list.push_str(&i(*id).to_string());
    }
    list.push(']');
    let mut del = c.prepare_cached(
        "DELETE FROM mailbox
         WHERE delivery_id IN (SELECT value FROM json_each(?1)) AND recipient = ?2
           AND device_id = ?3
         RETURNING sender, from_contact, length(body)",
    )?;
    let mut rows = del.query(params![list, recipient, device])?;
    let mut n = 0;
    while let Some(r) = rows.next()? {
        let (sender, contact, len): (String, bool, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
        counts.change(recipient, device, &sender, contact, Amount::one(-1, len));
        n += 1;
    }
    Ok(n)
}

/// Which mail [`delete_mail`] deletes.
#[derive(Debug, Clone, Copy)]
pub(super) enum Scope<'a> {
    /// One device's mailbox (the device is removed).
    Device(&'a str, u32),
    /// Everything queued for an account (it is deleted).
    Recipient(&'a str),
    /// Everything an account sent that is still queued (it is deleted).
    Sender(&'a str),
    /// Everything queued before this time, ms (expiry).
    Before(u64),
}

/// Deletes the mail in `scope` and takes it off the counters, in the caller's
/// transaction; how many messages went.
pub(super) fn delete_mail(c: &Connection, scope: Scope<'_>) -> Result<u64, StorageError> {
    match scope {
        Scope::Device(user, device) => {
            delete_counted(c, "recipient = ?1 AND device_id = ?2", params![user, device])
        }
        Scope::Recipient(user) => delete_counted(c, "recipient = ?1", [user]),
        Scope::Sender(user) => delete_counted(c, "sender = ?1", [user]),
        Scope::Before(ts) => delete_counted(c, "server_ts < ?1", [i(ts)]),
    }
}

fn delete_counted(c: &Connection, filter: &str, p: impl Params) -> Result<u64, StorageError> {
    let mut counts = Tally::default();
    let mut n = 0;
    {
        let mut del = c.prepare_cached(&format!(
            "DELETE FROM mailbox WHERE {filter}
             RETURNING recipient, device_id, sender, from_contact, length(body)"
        ))?;
        let mut rows = del.query(p)?;
        while let Some(r) = rows.next()? {
            let (recipient, device, sender): (String, u32, String) =
                (r.get(0)?, r.get(1)?, r.get(2)?);
            let (contact, len): (bool, i64) = (r.get(3)?, r.get(4)?);
            counts.change(&recipient, device, &sender, contact, Amount::one(-1, len));
            n += 1;
        }
    }
    counts.write(c)?;
    Ok(n)
}

/// Counts `recipient`'s `device` mailbox again from its rows (the repair of a drift).
pub(super) fn recount(c: &Connection, recipient: &str, device: u32) -> Result<(), StorageError> {
    let p = params![recipient, device];
    c.execute("DELETE FROM mailbox_usage WHERE recipient = ?1 AND device_id = ?2", p)?;
    c.execute("DELETE FROM mailbox_totals WHERE recipient = ?1 AND device_id = ?2", p)?;
    c.execute(
        "INSERT INTO mailbox_usage (recipient, device_id, sender, from_contact, messages, bytes)
         SELECT recipient, device_id, sender, from_contact, COUNT(*), SUM(length(body))
         FROM mailbox WHERE recipient = ?1 AND device_id = ?2
         GROUP BY recipient, device_id, sender, from_contact",
        p,
    )?;
    c.execute(
        "INSERT INTO mailbox_totals (recipient, device_id, messages, bytes, stranger_messages,
                                     stranger_bytes)
         SELECT recipient, device_id, COUNT(*), SUM(length(body)), SUM(from_contact = 0),
                SUM(CASE WHEN from_contact = 0 THEN length(body) ELSE 0 END)
         FROM mailbox WHERE recipient = ?1 AND device_id = ?2 GROUP BY recipient, device_id",
        p,
    )?;
    Ok(())
}

/// Whether the counters of `recipient`'s `device` mailbox equal what its rows add up to.
#[cfg(any(test, debug_assertions))]
pub(super) fn exact(c: &Connection, recipient: &str, device: u32) -> Result<bool, StorageError> {
    Ok(c.prepare_cached(
        "WITH
           rows AS (SELECT * FROM mailbox WHERE recipient = ?1 AND device_id = ?2),
           usage AS (SELECT sender, from_contact, messages, bytes FROM mailbox_usage
                     WHERE recipient = ?1 AND device_id = ?2),
           usage_want AS (SELECT sender, from_contact, COUNT(*), SUM(length(body)) FROM rows
                          GROUP BY sender, from_contact),
           totals AS (SELECT messages, bytes, stranger_messages, stranger_bytes
                      FROM mailbox_totals WHERE recipient = ?1 AND device_id = ?2),
           totals_want AS (SELECT COUNT(*), SUM(length(body)), SUM(from_contact = 0),
                                  SUM(CASE WHEN from_contact = 0 THEN length(body) ELSE 0 END)
                           FROM rows HAVING COUNT(*) > 0)
         SELECT NOT EXISTS (SELECT * FROM usage EXCEPT SELECT * FROM usage_want)
            AND NOT EXISTS (SELECT * FROM usage_want EXCEPT SELECT * FROM usage)
            AND NOT EXISTS (SELECT * FROM totals EXCEPT SELECT * FROM totals_want)
            AND NOT EXISTS (SELECT * FROM totals_want EXCEPT SELECT * FROM totals)",
    )?
    .query_row(params![recipient, device], |r| r.get(0))?)
}
