//! Message requests: `SendCopies` (one ciphertext per target device of the recipient,
//! exactly those devices or `Mismatch`, in one transaction) and `SendCopiesBatch`
//! (several, in one transaction), the legacy `Send` and
//! `SendBatch` (one relay transaction; for an account with one target device), `SendGroup`
//! (one body fanned out to every device of each recipient, everything checked before
//! anything is stored) and `Ack` (the recipient device's acknowledgement, which
//! deletes). Each stored message wakes the recipient's delivery tasks, wherever they
//! run.

use std::sync::Arc;

use letstalk_wire::{ErrorKind, Refusal, Request, Response};

use crate::clock::now_ms;
use crate::ctx::ConnCtx;
use crate::fail::{Reply, fail, misrouted, storage_fail, user_arg};
use crate::session::require_device;
use crate::state::State;
use tokio::sync::oneshot;

use crate::storage::{Copies, Enqueued, Envelope, Queued, Quota, Storage, StorageError};

/// A message request.
pub(super) async fn handle<S: Storage>(
    st: &Arc<State<S>>,
    ctx: &Arc<ConnCtx>,
    req: Request,
) -> Reply {
    match req {
        Request::Send { to, msg_id, body } => {
            let (user, device) = require_device(st, ctx)?;
            let to = user_arg(&to)?;
            if msg_id.is_empty() {
                return Err(fail(ErrorKind::Invalid, "empty msg id"));
            }
            if body.is_empty() {
                return Err(fail(ErrorKind::Invalid, "empty message"));
            }
            let envelope = Envelope {
                sender: user,
                sender_device: device,
                recipient: to,
                msg_id,
                copies: Copies::Single(body.into()),
                now: now_ms(),
            };
            send_one(st, envelope).await
        }
        Request::SendBatch { to, messages } => {
            if messages.iter().any(|m| m.body.is_empty()) {
                return Err(fail(ErrorKind::Invalid, "empty message"));
            }
            let messages =
                messages.into_iter().map(|m| (m.msg_id, Copies::Single(m.body.into()))).collect();
            send_batch(st, ctx, &to, messages).await
        }
        Request::SendCopiesBatch { to, messages } => {
            if messages.iter().any(|m| m.copies.iter().any(|c| c.body.is_empty())) {
                return Err(fail(ErrorKind::Invalid, "empty message"));
            }
            let messages = messages
                .into_iter()
                .map(|m| {
                    let copies = m.copies.into_iter().map(|c| (c.device_id, c.body.into()));
                    (m.msg_id, Copies::Exact(copies.collect()))
                })
                .collect();
            send_batch(st, ctx, &to, messages).await
        }
        Request::SendCopies { to, msg_id, copies } => {
            // Checked like `Send` (each body, the msg id); the copies are checked against
            // the recipient's devices by the storage, in the transaction that stores them.
            // It takes the online fast path like `Send`, each copy pushed to its own
            // device (`send_online`).
            let (user, device) = require_device(st, ctx)?;
            let to = user_arg(&to)?;
            if msg_id.is_empty() || copies.iter().any(|c| c.body.is_empty()) {
                return Err(fail(ErrorKind::Invalid, "empty msg id or message"));
            }
            let envelope = Envelope {
                sender: user,
                sender_device: device,
                recipient: to,
                msg_id,
                copies: Copies::Exact(
                    copies.into_iter().map(|c| (c.device_id, c.body.into())).collect(),
                ),
                now: now_ms(),
            };
            send_one(st, envelope).await
        }
        Request::SendGroup { to, msg_id, body } => {
            let (user, device) = require_device(st, ctx)?;
            if msg_id.is_empty() || body.is_empty() || to.is_empty() {
                return Err(fail(ErrorKind::Invalid, "empty recipients, msg id or message"));
            }
            // Everything is checked before anything is copied or stored: the count, the
            // total the fan-out would store, duplicates, then which recipients exist.
            // The total counts one copy per member: a member's devices share one body
            // (`Bytes`), and at most MAX_DEVICES rows of it are written.
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
                        sender_device: device,
                        recipient: to,
                        msg_id: msg_id.clone(),
                        copies: Copies::Every(body.clone()),
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
                    Err(e) => refused.push(Refusal { user_id: to, kind: storage_fail(e).kind() }),
                }
            }
            refused.sort_by(|a, b| a.user_id.cmp(&b.user_id));
            Ok(Response::GroupSent { server_ts: now, refused })
        }
        Request::Ack { delivery_ids } => {
            let (user, device) = require_device(st, ctx)?;
            // The device holds them now: senders waiting on a commit may hear at once.
            st.hub.acknowledged(&user, device, &delivery_ids);
            st.storage.ack(&user, device, delivery_ids).await.map_err(storage_fail)?;
            Ok(Response::Ok)
        }
        other => Err(misrouted(&other)),
    }
}

/// `Send` and `SendCopies`: one message for its recipient, on the online fast path when
/// a device of theirs is connected here, else stored; `Mismatch` (nothing stored) when
/// its copies do not fit the recipient's target devices.
async fn send_one<S: Storage>(st: &Arc<State<S>>, envelope: Envelope) -> Reply {
    let to = envelope.recipient.clone();
    let quota = st.limits.mailbox_quota();
    let done = if st.hub.is_local(&to) {
        send_online(st, envelope, quota).await
    } else {
        st.storage.enqueue(envelope, quota).await
    };
    let done = match done {
        Err(StorageError::Mismatch { missing, extra }) => {
            return Ok(Response::Mismatch { missing, extra });
        }
        other => other.map_err(storage_fail)?,
    };
    if !done.duplicate {
        st.hub.wake(&to).await;
    }
    Ok(Response::Sent { server_ts: done.server_ts, duplicate: done.duplicate })
}

/// `SendBatch` and `SendCopiesBatch`: the messages for `to`, in order, in one
/// transaction; `Mismatch` (nothing stored) when any one's copies do not fit the
/// recipient's target devices.
async fn send_batch<S: Storage>(
    st: &Arc<State<S>>,
    ctx: &Arc<ConnCtx>,
    to: &str,
    messages: Vec<(String, Copies)>,
) -> Reply {
    let (user, device) = require_device(st, ctx)?;
    let to = user_arg(to)?;
    if messages.is_empty() || messages.iter().any(|(msg_id, _)| msg_id.is_empty()) {
        return Err(fail(ErrorKind::Invalid, "empty batch or msg id"));
    }
    let quota = st.limits.mailbox_quota();
    let now = now_ms();
    let envelopes = messages
        .into_iter()
        .map(|(msg_id, copies)| Envelope {
            sender: user.clone(),
            sender_device: device,
            recipient: to.clone(),
            msg_id,
            copies,
            now,
        })
        .collect();
    let done = match st.storage.enqueue_many(envelopes, quota).await {
        Err(StorageError::Mismatch { missing, extra }) => {
            return Ok(Response::Mismatch { missing, extra });
        }
        other => other.map_err(storage_fail)?,
    };
    if done.iter().any(|d| !d.duplicate) {
        st.hub.wake(&to).await;
    }
    Ok(Response::Sent { server_ts: now, duplicate: done.iter().all(|d| d.duplicate) })
}

/// The online fast path: a device of the recipient is connected here, so each copy of
/// the message (`Send`'s single copy, or `SendCopies`' one per device) is pushed to its
/// device as soon as it is written, while the commit runs, and the sender is answered on
/// whichever comes first: the commit, or the acknowledgement of every copy by its own
/// device (each device holds its copy then). Either way nothing the sender is told was
/// delivered can be lost in a crash of the relay: one copy not acknowledged, or one
/// device not connected here, and the answer waits for the commit. An acknowledgement
/// that comes before the commit is applied after it (the writer takes jobs in order):
/// the message is deleted in the same transaction or the next.
async fn send_online<S: Storage>(
    st: &State<S>,
    envelope: Envelope,
    quota: Quota,
) -> Result<Enqueued, StorageError> {
    // Each device's body: for `Single`, the one device the storage finds.
    let bodies: Vec<(Option<u32>, bytes::Bytes)> = match &envelope.copies {
        Copies::Single(body) => vec![(None, body.clone())],
        Copies::Exact(copies) => copies.iter().map(|(d, b)| (Some(*d), b.clone())).collect(),
        Copies::Every(_) => return st.storage.enqueue(envelope, quota).await,
    };
    let (staged_tx, staged) = oneshot::channel();
    let (to, now) = (envelope.recipient.clone(), envelope.now);
    let (sender, sender_device, msg_id) =
        (envelope.sender.clone(), envelope.sender_device, envelope.msg_id.clone());
    let write = st.storage.enqueue_staged(envelope, quota, staged_tx);
    tokio::pin!(write);
    let rows = tokio::select! {
        biased;
        done = &mut write => return done,
        rows = staged => match rows {
            Ok(rows) => rows,
            // Not staged (a duplicate, a refusal, or a back end without it).
            Err(_) => return write.await,
        },
    };
    // The waits are registered before any push, so an acknowledgement cannot come first.
    let mut guards = Vec::with_capacity(rows.len());
    let mut acks = Vec::with_capacity(rows.len());
    for (device, delivery_id) in &rows {
        let (guard, acked) = st.hub.await_ack(&to, *device, *delivery_id);
        guards.push(guard);
        acks.push(acked);
    }
    for (device, delivery_id) in rows {
        let body = match bodies.as_slice() {
            [(None, body)] => Some(body),
            _ => bodies.iter().find(|(d, _)| *d == Some(device)).map(|(_, b)| b),
        };
        let Some(body) = body else { return write.await };
        let ahead = Queued {
            delivery_id,
            sender: sender.clone(),
            sender_device,
            msg_id: msg_id.clone(),
            server_ts: now,
            body: body.to_vec(),
        };
        // A device not connected here (or busy) gets its copy once committed; the copies
        // already pushed are not pushed again.
        if !st.hub.push_ahead(&to, device, ahead) {
            return write.await;
        }
    }
    let every_ack = async {
        for acked in acks {
            if acked.await.is_err() {
                // Its wait ended without the acknowledgement: only the commit answers.
                std::future::pending::<()>().await;
            }
        }
    };
    let answer = tokio::select! {
        biased;
        done = &mut write => done,
        () = every_ack => Ok(Enqueued { server_ts: now, duplicate: false }),
    };
    drop(guards);
    answer
}
