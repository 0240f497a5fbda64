//! The outbox: every statement on the `outbox` table (and on `resend`, the plaintext kept
//! for a retry receipt). Messages, receipts and signalling are queued here inside the
//! caller's transaction; the sender drains it in order (`sender`).

use rusqlite::{Connection, OptionalExtension, params};

use letstalk_ipc::types::{EventBody, MessageState};

use letstalk_wire::Copy;

use crate::content::{Content, ReceiptKind};
use crate::events;
use crate::messages;
use crate::store::StoreError;

/// A transmission ready to go to the relay.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub seq: i64,
    pub recipient: String,
    /// The relay's idempotency key: the same on every retransmission.
    pub relay_id: String,
    /// A group message's one ciphertext (empty for a pairwise row).
    pub envelope: Vec<u8>,
    /// A pairwise row's ciphertexts, one per device of the recipient we hold a session
    /// with (empty for a group message).
    pub copies: Vec<Copy>,
    /// A group message: every recipient of the one ciphertext.
    pub fanout: Option<Vec<String>>,
}

/// Encodes a pairwise row's copies for the `copies` column: per copy, the device id and
/// the envelope's length (both u32, big-endian), then the envelope.
pub fn encode_copies(copies: &[Copy]) -> Vec<u8> {
    let mut out = Vec::with_capacity(copies.iter().map(|c| c.body.len() + 8).sum());
    for c in copies {
        out.extend_from_slice(&c.device_id.to_be_bytes());
        out.extend_from_slice(&u32::try_from(c.body.len()).unwrap_or(u32::MAX).to_be_bytes());
        out.extend_from_slice(&c.body);
    }
    out
}

/// The copies [`encode_copies`] wrote, or `None` for bytes it did not write.
pub fn decode_copies(mut bytes: &[u8]) -> Option<Vec<Copy>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let device_id = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?);
        let len = u32::from_be_bytes(bytes.get(4..8)?.try_into().ok()?);
        let end = 8usize.checked_add(usize::try_from(len).ok()?)?;
        out.push(Copy { device_id, body: bytes.get(8..end)?.to_vec() });
        bytes = bytes.get(end..)?;
    }
    Some(out)
}

/// What [`prepare_next`] found.
#[derive(Debug)]
pub enum Prepared {
    /// Nothing queued for this recipient.
    Empty,
    /// There is no session yet: fetch the recipient's prekey bundle and call again.
    NeedBundle,
    /// In outbox order, and the event written on the way (a new identity key seen in the
    /// bundle), if any.
    Ready(Vec<Outgoing>, Option<u64>),
    /// The recipient's new identity key waits for the user's acceptance: nothing goes
    /// out to it; `event` is what recording the change wrote.
    Held { event: Option<u64> },
}

/// Queues `content` for `recipient` (inside the caller's transaction); returns the row's
/// relay id (the idempotency key it will carry to the relay).
pub fn enqueue(
    conn: &Connection,
    recipient: &str,
    message_id: Option<&str>,
    content: &Content,
    now: i64,
) -> Result<String, StoreError> {
    let relay_id = uuid::Uuid::now_v7().to_string();
    conn.prepare_cached(
        "INSERT INTO outbox (recipient, message_id, plaintext, relay_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![recipient, message_id, content.encode(), relay_id, now])?;
    Ok(relay_id)
}

/// Recipients with something in the outbox due at `now`, oldest first. A recipient whose
/// every row waits ([`RECEIPT_DELAY_MS`]) is left for later; one with any row due gets
/// all of them, in order.
pub fn pending_recipients(conn: &Connection, now: i64) -> Result<Vec<String>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT recipient FROM outbox GROUP BY recipient
         HAVING min(coalesce(not_before, 0)) <= ?1 ORDER BY min(seq)",
    )?;
    let rows = stmt.query_map([now], |r| r.get(0))?.collect::<Result<_, _>>()?;
    Ok(rows)
}

// The queries on the path of every message, each with its index (migration 14; the
// test `hot_queries_use_their_indexes` holds them to it).
const NEXT_DUE: &str = "SELECT min(not_before) FROM outbox WHERE not_before > ?1";
const UNSEALED_DUE: &str = "SELECT 1 FROM outbox WHERE recipient = ?1 AND envelope IS NULL
     AND copies IS NULL AND coalesce(not_before, 0) <= ?2 LIMIT 1";
const UNSEALED: &str = "SELECT seq, relay_id, plaintext, message_id, attempt FROM outbox
     WHERE recipient = ?1 AND envelope IS NULL AND copies IS NULL ORDER BY seq LIMIT ?2";

/// When the first row still waiting at `now` is due, if any waits. (A row already due
/// but not sent waits for the sender's retry, not for this.)
pub fn next_due(conn: &Connection, now: i64) -> Result<Option<i64>, StoreError> {
    Ok(conn.prepare_cached(NEXT_DUE)?.query_row([now], |r| r.get(0))?)
}

/// Whether `recipient` has a row not sealed yet that is due at `now`: what the queue is
/// sealed for where a transaction is open anyway. Rows that only wait are left to merge
/// (a delivery receipt) and are sealed when they go.
pub fn unsealed_due(conn: &Connection, recipient: &str, now: i64) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached(UNSEALED_DUE)?
        .query_row(params![recipient, now], |_| Ok(()))
        .optional()?
        .is_some())
}

/// How long a delivery receipt waits before it is sent, so that the receipts for the
/// messages that arrive meanwhile merge into it. Short enough that the sender's
/// "delivered" still looks immediate; long enough that a conversation in full flow (a
/// message every few milliseconds) costs one receipt for dozens of messages: a receipt
/// is a message of its own (sealed, relayed, stored and opened on the other side), and
/// one each doubled what a message cost both devices and the relay.
pub const RECEIPT_DELAY_MS: i64 = 100;

/// How long the plaintext of a sent message is kept for a retry receipt (unless its
/// delivery receipt comes first).
pub const RESEND_WINDOW_MS: i64 = 14 * 24 * 3600 * 1000;
/// Re-sends of one message after retry receipts before it is marked failed.
pub const MAX_RESENDS: i64 = 3;

/// How long the plaintext of a group message is kept for a member's device that could
/// not read it (one linked while it was on its way): shorter, as it is kept for every
/// group message and no delivery receipt ends it.
pub const GROUP_RESEND_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// Forgets kept plaintext older than the retry window (a group message's, older than
/// [`GROUP_RESEND_WINDOW_MS`]).
pub fn prune_resend(conn: &Connection, now: i64) -> Result<usize, StoreError> {
    Ok(conn
        .prepare_cached(
            "DELETE FROM resend WHERE created_at < ?1
             OR (recipient LIKE 'group:%' AND created_at < ?2)",
        )?
        .execute(params![now - RESEND_WINDOW_MS, now - GROUP_RESEND_WINDOW_MS])?)
}

/// The relay accepted these outbox rows: drop them and mark their messages `sent`,
/// inside the caller's transaction (the sender's shares the group commit of
/// `messages.send`). Returns the last event seq written, if any.
pub fn sent(tx: &Connection, seqs: &[i64], now: i64) -> Result<Option<u64>, StoreError> {
    let mut event = None;
    for seq in seqs {
        let message_id: Option<Option<String>> = tx
            .prepare_cached("DELETE FROM outbox WHERE seq = ?1 RETURNING message_id")?
            .query_row(params![seq], |r| r.get(0))
            .optional()?;
        if let Some(Some(id)) = message_id
            && let Some(conversation) = messages::advance_state(tx, &id, MessageState::Sent)?
        {
            let body =
                EventBody::MessageState { message_id: id, conversation, state: MessageState::Sent };
            event = Some(events::append(tx, &body, now)?);
        }
    }
    Ok(event)
}

/// The relay refused outbox row `seq` for good (e.g. no such user): the message fails.
pub fn failed(
    conn: &mut Connection,
    seq: i64,
    error: &str,
    now: i64,
) -> Result<Option<u64>, StoreError> {
    let tx = conn.transaction()?;
    let event = failed_in(&tx, seq, error, now)?;
    tx.commit()?;
    Ok(event)
}

/// [`failed`] inside the caller's transaction.
pub fn failed_in(
    tx: &Connection,
    seq: i64,
    error: &str,
    now: i64,
) -> Result<Option<u64>, StoreError> {
    let row: Option<(Option<String>, String)> = tx
        .prepare_cached("DELETE FROM outbox WHERE seq = ?1 RETURNING message_id, recipient")?
        .query_row(params![seq], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let mut event = None;
    if let Some((Some(id), recipient)) = row {
        tx.prepare_cached(
            "UPDATE messages SET state = 'failed', error = ?2 WHERE message_id = ?1",
        )?
        .execute(params![id, error])?;
        tx.prepare_cached(
            "UPDATE message_members SET state = 'failed', error = ?2 WHERE message_id = ?1",
        )?
        .execute(params![id, error])?;
        let conversation =
            if recipient.starts_with("group:") { recipient } else { format!("user:{recipient}") };
        let body =
            EventBody::MessageState { message_id: id, conversation, state: MessageState::Failed };
        event = Some(events::append(tx, &body, now)?);
    }
    Ok(event)
}

/// `recipient`'s rows sealed before devices (one envelope, for device 1, and no
/// plaintext kept): no copy can be made of them for another device.
pub fn sealed_before_devices(conn: &Connection, recipient: &str) -> Result<Vec<i64>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT seq FROM outbox WHERE recipient = ?1 AND envelope IS NOT NULL
             AND copies IS NULL AND fanout IS NULL AND plaintext IS NULL ORDER BY seq",
        )?
        .query_map(params![recipient], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// The relay took group message row `seq` for every recipient but `refused` (each with
/// its stored error): each member's state moves to `sent` or `failed`, the message's to
/// the least advanced. Returns the event seq written, if any.
pub fn group_sent(
    conn: &mut Connection,
    seq: i64,
    refused: &[(String, String)],
    now: i64,
) -> Result<Option<u64>, StoreError> {
    let tx = conn.transaction()?;
    let message_id: Option<Option<String>> = tx
        .prepare_cached("DELETE FROM outbox WHERE seq = ?1 RETURNING message_id")?
        .query_row(params![seq], |r| r.get(0))
        .optional()?;
    let mut event = None;
    if let Some(Some(id)) = message_id {
        tx.prepare_cached(
            "UPDATE message_members SET state = 'sent' WHERE message_id = ?1 AND state = 'queued'",
        )?
        .execute(params![id])?;
        for (member, error) in refused {
            tx.prepare_cached(
                "UPDATE message_members SET state = 'failed', error = ?3
                 WHERE message_id = ?1 AND member = ?2",
            )?
            .execute(params![id, member, error])?;
        }
        if let Some((conversation, state)) = messages::settle_group_state(&tx, &id)? {
            let body = EventBody::MessageState { message_id: id, conversation, state };
            event = Some(events::append(&tx, &body, now)?);
        }
    }
    tx.commit()?;
    Ok(event)
}

/// Outgoing messages not yet accepted by the relay.
pub fn queued_count(conn: &Connection) -> Result<u64, StoreError> {
    let n: i64 =
        conn.query_row("SELECT count(*) FROM outbox WHERE message_id IS NOT NULL", [], |r| {
            r.get(0)
        })?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// An outbox row as the sender reads it.
#[derive(Debug)]
pub struct Row {
    pub seq: i64,
    pub relay_id: String,
    /// Until the row is sent (a pairwise row keeps it for a device that joins meanwhile).
    pub plaintext: Option<zeroize::Zeroizing<Vec<u8>>>,
    /// A group message's ciphertext, or a pairwise row sealed before devices (device 1's).
    pub envelope: Option<Vec<u8>>,
    /// A sealed pairwise row's copies.
    pub copies: Option<Vec<Copy>>,
    pub fanout: Option<String>,
    pub message_id: Option<String>,
    pub attempt: i64,
}

impl Row {
    /// The row as it goes to the relay, if it is sealed.
    fn outgoing(self, recipient: &str) -> Option<Outgoing> {
        let fanout = self.fanout.as_deref().and_then(|f| serde_json::from_str(f).ok());
        let (envelope, copies) = match (self.copies, self.envelope) {
            (Some(copies), _) => (Vec::new(), copies),
            (None, Some(envelope)) if fanout.is_some() => (envelope, Vec::new()),
            // Sealed before devices: the copy for device 1, the only one there was.
            (None, Some(envelope)) => (Vec::new(), vec![Copy { device_id: 1, body: envelope }]),
            (None, None) => return None,
        };
        Some(Outgoing {
            seq: self.seq,
            recipient: recipient.to_owned(),
            relay_id: self.relay_id,
            envelope,
            copies,
            fanout,
        })
    }
}

/// The oldest rows for `recipient`, at most `max`.
pub fn oldest(conn: &Connection, recipient: &str, max: usize) -> Result<Vec<Row>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT seq, relay_id, plaintext, envelope, copies, fanout, message_id, attempt
             FROM outbox WHERE recipient = ?1 ORDER BY seq LIMIT ?2",
        )?
        .query_map(params![recipient, max as i64], |r| {
            let copies: Option<Vec<u8>> = r.get(4)?;
            Ok(Row {
                seq: r.get(0)?,
                relay_id: r.get(1)?,
                plaintext: r.get::<_, Option<Vec<u8>>>(2)?.map(zeroize::Zeroizing::new),
                envelope: r.get(3)?,
                // Unreadable copies read as none made: the relay's mismatch names every
                // device, and each gets a new encryption of the kept plaintext.
                copies: copies.map(|c| decode_copies(&c).unwrap_or_default()),
                fanout: r.get(5)?,
                message_id: r.get(6)?,
                attempt: r.get(7)?,
            })
        })?
        .collect::<Result<_, _>>()?)
}

/// The oldest rows for `recipient` (at most `max`) when every one of them is sealed:
/// what the sender hands to the relay without a transaction of its own. `None` when one
/// of them is still plaintext.
pub fn ready(
    conn: &Connection,
    recipient: &str,
    max: usize,
) -> Result<Option<Vec<Outgoing>>, StoreError> {
    let rows = oldest(conn, recipient, max)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let Some(o) = row.outgoing(recipient) else { return Ok(None) };
        out.push(o);
    }
    Ok(Some(out))
}

/// The oldest rows for `recipient` that are sealed, up to the first one that is not (at
/// most `max`), and whether any row is queued at all.
pub fn ready_prefix(
    conn: &Connection,
    recipient: &str,
    max: usize,
) -> Result<(Vec<Outgoing>, bool), StoreError> {
    let rows = oldest(conn, recipient, max)?;
    let any = !rows.is_empty();
    Ok((rows.into_iter().map_while(|r| r.outgoing(recipient)).collect(), any))
}

/// A queued pairwise row still in plaintext, as [`unsealed`] reads it.
#[derive(Debug)]
pub struct Unsealed {
    pub seq: i64,
    pub relay_id: String,
    pub plaintext: zeroize::Zeroizing<Vec<u8>>,
    pub message_id: Option<String>,
    /// How many times it was sent again after retry receipts.
    pub attempt: i64,
}

/// The oldest rows for `recipient` still in plaintext, at most `max`. Rows are sealed in
/// `seq` order, so these follow every sealed row of the recipient.
pub fn unsealed(
    conn: &Connection,
    recipient: &str,
    max: usize,
) -> Result<Vec<Unsealed>, StoreError> {
    Ok(conn
        .prepare_cached(UNSEALED)?
        .query_map(params![recipient, max as i64], |r| {
            Ok(Unsealed {
                seq: r.get(0)?,
                relay_id: r.get(1)?,
                plaintext: zeroize::Zeroizing::new(
                    r.get::<_, Option<Vec<u8>>>(2)?.unwrap_or_default(),
                ),
                message_id: r.get(3)?,
                attempt: r.get(4)?,
            })
        })?
        .collect::<Result<_, _>>()?)
}

/// Row `row` to `recipient` is encrypted: `copies` (one per device we hold a session
/// with) are sent on every transmission (a retransmission never encrypts again). The
/// plaintext stays with the row until the relay took it, for a device of the recipient
/// that the relay says is missing ([`lacking`]). Content a retry receipt may ask for
/// again keeps its plaintext in `resend` too: the peer may fail to open it (a session it
/// lost). Call it in the transaction that saves the advanced sessions.
pub fn sealed(
    conn: &Connection,
    recipient: &str,
    row: &Unsealed,
    copies: &[Copy],
    now: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE outbox SET copies = ?2 WHERE seq = ?1")?
        .execute(params![row.seq, encode_copies(copies)])?;
    if !recipient.starts_with("group:")
        && Content::decode(&row.plaintext).is_some_and(|c| c.resendable())
    {
        keep_for_resend(
            conn,
            &row.relay_id,
            recipient,
            row.message_id.as_deref(),
            &row.plaintext,
            row.attempt,
            now,
        )?;
    }
    tracing::debug!(target: crate::clock::PATH, relay = %row.relay_id, "encrypted");
    Ok(())
}

/// A sealed row that has no copy for a device yet, as [`lacking`] reads it.
#[derive(Debug)]
pub struct Lacking {
    pub seq: i64,
    pub plaintext: zeroize::Zeroizing<Vec<u8>>,
    pub copies: Vec<Copy>,
}

/// `recipient`'s sealed rows (oldest first) that still have their plaintext and no copy
/// for `device`: what a device the relay named missing must get, in order.
pub fn lacking(
    conn: &Connection,
    recipient: &str,
    device: u32,
) -> Result<Vec<Lacking>, StoreError> {
    let rows: Vec<(i64, Vec<u8>, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT seq, plaintext, copies FROM outbox
             WHERE recipient = ?1 AND copies IS NOT NULL AND plaintext IS NOT NULL ORDER BY seq",
        )?
        .query_map(params![recipient], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    Ok(rows
        .into_iter()
        .filter_map(|(seq, plaintext, copies)| {
            let copies = decode_copies(&copies).unwrap_or_default();
            (!copies.iter().any(|c| c.device_id == device)).then(|| Lacking {
                seq,
                plaintext: zeroize::Zeroizing::new(plaintext),
                copies,
            })
        })
        .collect())
}

/// Replaces the copies of sealed row `seq`.
pub fn set_copies(conn: &Connection, seq: i64, copies: &[Copy]) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE outbox SET copies = ?2 WHERE seq = ?1")?
        .execute(params![seq, encode_copies(copies)])?;
    Ok(())
}

/// Drops the copies for `devices` from every sealed row to `recipient` (devices the
/// relay says the account no longer has).
pub fn drop_copies(conn: &Connection, recipient: &str, devices: &[u32]) -> Result<(), StoreError> {
    let rows: Vec<(i64, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT seq, copies FROM outbox WHERE recipient = ?1 AND copies IS NOT NULL",
        )?
        .query_map(params![recipient], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (seq, bytes) in rows {
        let mut copies = decode_copies(&bytes).unwrap_or_default();
        let before = copies.len();
        copies.retain(|c| !devices.contains(&c.device_id));
        if copies.len() != before {
            set_copies(conn, seq, &copies)?;
        }
    }
    Ok(())
}

/// Every row queued for `recipient`, oldest first.
pub fn queued_seqs(conn: &Connection, recipient: &str) -> Result<Vec<i64>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT seq FROM outbox WHERE recipient = ?1 ORDER BY seq")?
        .query_map(params![recipient], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// Queues a receipt for `ids` to `recipient`, merged into the recipient's newest outbox
/// row when that is a receipt of the same kind still in plaintext: texts received in one
/// batch are acknowledged with one message, not one each.
pub fn enqueue_receipt(
    conn: &Connection,
    recipient: &str,
    state: ReceiptKind,
    ids: Vec<String>,
    now: i64,
) -> Result<(), StoreError> {
    // Only a row not sealed yet: a sealed one keeps its plaintext for a new device, but
    // what it says is fixed by the copies already made.
    let newest: Option<(i64, Option<Vec<u8>>)> = conn
        .prepare_cached(
            "SELECT seq, CASE WHEN envelope IS NULL AND copies IS NULL THEN plaintext END
             FROM outbox WHERE recipient = ?1 ORDER BY seq DESC LIMIT 1",
        )?
        .query_row(params![recipient], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    if let Some((seq, Some(plaintext))) = newest
        && let Some(Content::Receipt { state: kind, ids: mut queued }) = Content::decode(&plaintext)
        && kind == state
        && queued.len() + ids.len() <= MERGED_RECEIPT_IDS
    {
        queued.extend(ids);
        let merged = Content::Receipt { state, ids: queued };
        conn.prepare_cached("UPDATE outbox SET plaintext = ?2 WHERE seq = ?1")?
            .execute(params![seq, merged.encode()])?;
        return Ok(());
    }
    let relay_id = enqueue(conn, recipient, None, &Content::Receipt { state, ids }, now)?;
    // A read receipt goes at once (the user did something); a delivery receipt waits
    // for the ones after it.
    if state == ReceiptKind::Delivered {
        conn.prepare_cached("UPDATE outbox SET not_before = ?2 WHERE relay_id = ?1")?
            .execute(params![relay_id, now.saturating_add(RECEIPT_DELAY_MS)])?;
    }
    Ok(())
}

/// Message ids one receipt carries at most (what a receiver applies of one).
pub const MAX_RECEIPT_IDS: usize = 1000;

/// Message ids merged into one waiting receipt at most; the next one starts a new row.
/// Each merge decodes and rewrites the row, so its cost grows with the row: at 1,000
/// ids (36 KiB, an overflow chain of SQLCipher pages, all re-encrypted at every merge)
/// a conversation in full flow spent more on merging receipts than on the messages.
/// 64 ids keep the row inside one page, and a receipt still stands for 64 messages.
pub const MERGED_RECEIPT_IDS: usize = 64;

/// Keeps the plaintext of a sent row for a retry receipt: the peer may fail to open it
/// (a session it lost).
pub fn keep_for_resend(
    conn: &Connection,
    relay_id: &str,
    recipient: &str,
    message_id: Option<&str>,
    plaintext: &[u8],
    attempt: i64,
    now: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO resend (relay_id, recipient, message_id, plaintext, attempt, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (relay_id) DO NOTHING",
    )?
    .execute(params![relay_id, recipient, message_id, plaintext, attempt, now])?;
    Ok(())
}

/// A plaintext kept for a retry receipt.
#[derive(Debug)]
pub struct Kept {
    /// The message it carried, if it was one (not signalling).
    pub message_id: Option<String>,
    pub plaintext: zeroize::Zeroizing<Vec<u8>>,
    /// How many times it was sent again already.
    pub attempt: i64,
}

/// Takes the kept plaintext of our relay id `relay_id` to `peer`.
pub fn take_kept(
    conn: &Connection,
    relay_id: &str,
    peer: &str,
) -> Result<Option<Kept>, StoreError> {
    let row: Option<(Option<String>, Vec<u8>, i64)> = conn
        .prepare_cached(
            "DELETE FROM resend WHERE relay_id = ?1 AND recipient = ?2
             RETURNING message_id, plaintext, attempt",
        )?
        .query_row(params![relay_id, peer], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    Ok(row.map(|(message_id, p, attempt)| Kept {
        message_id,
        plaintext: zeroize::Zeroizing::new(p),
        attempt,
    }))
}

/// The peer opened message `message_id`: no retry will ask for it again.
pub fn forget_kept(conn: &Connection, message_id: &str, peer: &str) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM resend WHERE message_id = ?1 AND recipient = ?2")?
        .execute(params![message_id, peer])?;
    Ok(())
}

/// Queues a kept plaintext again (same message id, a new relay id), as attempt `attempt`.
pub fn requeue(
    conn: &Connection,
    peer: &str,
    message_id: Option<&str>,
    plaintext: &[u8],
    attempt: i64,
    now: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO outbox (recipient, message_id, plaintext, relay_id, created_at, attempt)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        peer,
        message_id,
        plaintext,
        uuid::Uuid::now_v7().to_string(),
        now,
        attempt
    ])?;
    Ok(())
}

/// Queues a group message: one ciphertext (already framed) that the relay fans out to
/// every member in `fanout`.
pub fn enqueue_fanout(
    conn: &Connection,
    conversation: &str,
    message_id: &str,
    envelope: &[u8],
    fanout: &[&String],
    now: i64,
) -> Result<(), StoreError> {
    let fanout = serde_json::to_string(fanout).unwrap_or_default();
    conn.prepare_cached(
        "INSERT INTO outbox (recipient, message_id, envelope, relay_id, created_at, fanout)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        conversation,
        message_id,
        envelope,
        uuid::Uuid::now_v7().to_string(),
        now,
        fanout
    ])?;
    Ok(())
}

/// The devices `user` was last known to have (for our own account: its other devices),
/// or `None` when not known.
pub fn known_devices(conn: &Connection, user: &str) -> Result<Option<Vec<u32>>, StoreError> {
    let list: Option<String> = conn
        .prepare_cached("SELECT devices FROM device_lists WHERE user_id = ?1")?
        .query_row(params![user], |r| r.get(0))
        .optional()?;
    Ok(list.map(|l| l.split(',').filter_map(|d| d.parse().ok()).collect()))
}

/// Records the devices `user` has, as the relay just told them.
pub fn set_known_devices(
    conn: &Connection,
    user: &str,
    devices: &[u32],
    now: i64,
) -> Result<(), StoreError> {
    let list = devices.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    conn.prepare_cached(
        "INSERT INTO device_lists (user_id, devices, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (user_id) DO UPDATE SET devices = excluded.devices, updated_at = excluded.updated_at",
    )?
    .execute(params![user, list, now])?;
    Ok(())
}

/// Forgets what was known of `user`'s devices (the relay said the list changed).
pub fn forget_known_devices(conn: &Connection, user: &str) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM device_lists WHERE user_id = ?1")?.execute(params![user])?;
    Ok(())
}

/// Whether our own account (`me`) may have other devices: unless the relay told us it
/// has none, what this device sends and reads is told to them too.
pub fn own_devices_may_exist(conn: &Connection, me: &str) -> Result<bool, StoreError> {
    Ok(known_devices(conn, me)?.is_none_or(|d| !d.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn text(n: usize) -> Content {
        Content::Text { id: format!("m{n}"), at: 1, text: "hi".into(), reply_to: None }
    }

    /// The plaintext rows are found through their own index, whatever is queued sealed
    /// before them: the search must not grow with the queue.
    #[test]
    fn hot_queries_use_their_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .with(|c| {
                for (sql, index) in [
                    (UNSEALED, "outbox_unsealed"),
                    (UNSEALED_DUE, "outbox_unsealed"),
                    (NEXT_DUE, "outbox_waiting"),
                ] {
                    // The plan does not depend on the values: the parameters stay unbound.
                    let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                    let mut rows = stmt.raw_query();
                    let mut plan = String::new();
                    while let Some(row) = rows.next()? {
                        plan.push_str(&row.get::<_, String>(3)?);
                        plan.push_str("; ");
                    }
                    let searched = plan.starts_with("SEARCH outbox USING")
                        && plan.contains(&format!("INDEX {index} ("));
                    assert!(searched, "{sql}: {plan}");
                }
                Ok(())
            })
            .unwrap();
    }

    /// Delivery receipts merge into the waiting row up to [`MERGED_RECEIPT_IDS`] ids, then
    /// start the next; every id is owed once, in order.
    #[test]
    fn receipts_merge_up_to_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let n = 2 * MERGED_RECEIPT_IDS + 2;
        store
            .with(|c| {
                for i in 0..n {
                    enqueue_receipt(c, "bob", ReceiptKind::Delivered, vec![format!("m{i}")], 1)?;
                }
                let rows: Vec<Vec<u8>> = c
                    .prepare("SELECT plaintext FROM outbox WHERE recipient = 'bob' ORDER BY seq")?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                let ids: Vec<Vec<String>> = rows
                    .iter()
                    .map(|p| match Content::decode(p) {
                        Some(Content::Receipt { state: ReceiptKind::Delivered, ids }) => ids,
                        other => panic!("not a delivery receipt: {other:?}"),
                    })
                    .collect();
                let sizes: Vec<usize> = ids.iter().map(Vec::len).collect();
                assert_eq!(sizes, [MERGED_RECEIPT_IDS, MERGED_RECEIPT_IDS, 2]);
                let all: Vec<String> = ids.concat();
                assert_eq!(all, (0..n).map(|i| format!("m{i}")).collect::<Vec<_>>());
                Ok(())
            })
            .unwrap();
    }

    /// Behind a long sealed queue, the plaintext rows are still the ones found, oldest
    /// first, and only they.
    #[test]
    fn unsealed_rows_behind_a_sealed_queue() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .with(|c| {
                for n in 0..300 {
                    enqueue(c, "bob", None, &text(n), 1)?;
                }
                let first = unsealed(c, "bob", 500)?;
                assert_eq!(first.len(), 300);
                let copy = Copy { device_id: 1, body: vec![7; 40] };
                for row in &first[..298] {
                    sealed(c, "bob", row, std::slice::from_ref(&copy), 1)?;
                }
                enqueue(c, "carol", None, &text(0), 1)?;
                let left = unsealed(c, "bob", 500)?;
                let seqs: Vec<i64> = left.iter().map(|r| r.seq).collect();
                assert_eq!(seqs, [first[298].seq, first[299].seq]);
                assert_eq!(unsealed(c, "bob", 1)?.len(), 1);
                assert!(unsealed_due(c, "bob", 1)?);
                for row in &left {
                    sealed(c, "bob", row, std::slice::from_ref(&copy), 1)?;
                }
                assert!(unsealed(c, "bob", 500)?.is_empty());
                assert!(!unsealed_due(c, "bob", 1)?);
                assert_eq!(unsealed(c, "carol", 500)?.len(), 1);
                Ok(())
            })
            .unwrap();
    }
}
