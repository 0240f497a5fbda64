//! The session: a connection made to act for one device of an account after
//! authentication (it becomes that device's current connection here and, in a cluster,
//! on the bus; the account's other devices keep theirs), the push stream and the
//! delivery task that feeds it the device's queued messages, presence announcements
//! (the account's: online while any device is), the check every request of an account
//! goes through ([`require_auth`], [`require_device`]), and the cut-off of a removed
//! device ([`log_out`]).

use std::collections::BTreeSet;
use std::sync::Arc;

use letstalk_wire::{ErrorKind, PresenceInfo, Push};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use crate::clock::now_ms;
use crate::close;
use crate::cluster::bus::Signal;
use crate::cluster::follow::follow;
use crate::ctx::{ConnCtx, Session};
use crate::fail::{Fail, fail};
use crate::hub::{Ahead, Device, PushCmd};
use crate::state::State;
use crate::storage::{Queued, Storage, shows_presence};

/// Pushes queued per connection before presence pushes are dropped and message delivery
/// waits: a device that does not read its push stream only slows itself.
const PUSH_QUEUE: usize = 64;
/// Queued messages read from storage per round.
const DELIVERY_BATCH: u32 = 32;

/// The account this connection acts for; refused if it authenticated as none, or if its
/// device has since been removed or reconnected on another connection.
pub(crate) fn require_auth<S>(st: &State<S>, ctx: &ConnCtx) -> Result<String, Fail> {
    require_device(st, ctx).map(|(user, _)| user)
}

/// The account and device this connection acts for, checked as by [`require_auth`].
pub(crate) fn require_device<S>(st: &State<S>, ctx: &ConnCtx) -> Result<(String, u32), Fail> {
    let (user, device) =
        ctx.device().ok_or_else(|| fail(ErrorKind::Unauthenticated, "authenticate first"))?;
    if !st.hub.is_current(&user, device, ctx.id) {
        return Err(fail(
            ErrorKind::UnknownDevice,
            "this connection no longer acts for the account",
        ));
    }
    Ok((user, device))
}

/// Cuts off a device that was removed from its account (by a login elsewhere, another
/// device's `RemoveDevice`, or the account's deletion), wherever it is connected: it
/// gets `LoggedOut` and its connection stops acting for the account.
pub(crate) async fn log_out<S>(st: &State<S>, user_id: &str, device_id: u32) {
    if let Some(old) = st.hub.take(user_id, device_id)
        && old.tx.try_send(PushCmd::LoggedOut).is_err()
    {
        old.conn.close(close::LOGGED_OUT.into(), b"logged out");
    }
    st.calls.drop_device((user_id, device_id));
    if let Some(bus) = st.hub.bus() {
        bus.send_device(user_id, device_id, &Signal::LoggedOut).await;
    }
}

/// A device left its account (removed, logged out, or replaced by a login elsewhere):
/// the blobs held on this node that wait for it wait no more (deleted when nobody else
/// does). Best effort: a blob left behind still goes at expiry.
pub(crate) async fn release_blobs<S>(st: &State<S>, user_id: &str, device_id: u32) {
    if let Err(e) = st.blobs.release_device(user_id, device_id).await {
        debug!(error = ?e, "releasing a removed device's blobs");
    }
}

/// Tells the account's connected devices (but `except`) that its list of devices changed.
pub(crate) async fn devices_changed<S>(st: &State<S>, user_id: &str, except: Option<u32>) {
    if let Ok(frame) = Push::DevicesChanged.encode() {
        st.hub.push(user_id, except, frame).await;
    }
}

/// Makes this connection act for `user_id`'s device `device_id`: registers it, opens the
/// push stream, starts delivery of the device's queued messages and announces presence.
pub(crate) async fn start_session<S: Storage>(
    st: &Arc<State<S>>,
    ctx: &Arc<ConnCtx>,
    user_id: &str,
    device_id: u32,
) -> Result<(), Fail> {
    let cancel = ctx.cancel.child_token();
    {
        let Ok(mut guard) = ctx.session.lock() else {
            return Err(fail(ErrorKind::Internal, "session lock"));
        };
        if let Some(s) = guard.as_ref() {
            return if (s.user_id.as_str(), s.device_id) == (user_id, device_id) {
                Ok(())
            } else {
                Err(fail(ErrorKind::Invalid, "connection already acts for another device"))
            };
        }
        *guard = Some(Session { user_id: user_id.to_owned(), device_id, cancel: cancel.clone() });
    }
    let send = match ctx.conn.open_uni().await {
        Ok(s) => s,
        Err(e) => {
            if let Ok(mut g) = ctx.session.lock() {
                *g = None;
            }
            return Err(fail(ErrorKind::Internal, format!("push stream: {e}")));
        }
    };
    let (tx, rx) = mpsc::channel(PUSH_QUEUE);
    let wake = Arc::new(Notify::new());
    let ahead = Arc::new(Ahead::new(PUSH_QUEUE));
    let device = Device {
        conn_id: ctx.id,
        tx: tx.clone(),
        wake: wake.clone(),
        ahead: ahead.clone(),
        conn: ctx.conn.clone(),
    };
    if let Some(old) = st.hub.register(user_id, device_id, device)
        && old.conn_id != ctx.id
    {
        old.conn.close(close::REPLACED.into(), b"replaced by a newer connection");
    }
    if let Some(bus) = st.hub.bus() {
        // In a cluster: reachable from every node, and any older connection of the
        // device on another node is dropped.
        match bus.claim(user_id, device_id, ctx.id).await {
            Ok(subs) => {
                let me = (user_id.to_owned(), device_id);
                let follow = follow(st.clone(), me, ctx.id, subs, cancel.clone());
                tokio::spawn(follow.instrument(tracing::Span::current()));
            }
            Err(e) => warn!(error = %e, "cluster bus: cannot subscribe for the device"),
        }
    }
    let span = tracing::Span::current();
    tokio::spawn(push_writer(send, rx, cancel.clone(), ctx.conn.clone()).instrument(span.clone()));
    let delivery = Delivery { tx, wake, ahead, cancel };
    let me = (user_id.to_owned(), device_id);
    tokio::spawn(deliver(st.clone(), me, delivery).instrument(span));
    // No user id at info level: the connection's span carries the address.
    info!(device_id, "device authenticated");
    debug!(user_id, device_id, "device authenticated");
    announce(st, (user_id, device_id), true).await;
    Ok(())
}

/// Ends this connection's session, if any: stops its tasks and, if it was the device's
/// current connection, drops its call routes and announces the account offline unless
/// another of its devices is still connected.
pub(crate) async fn end_session<S: Storage>(st: &Arc<State<S>>, ctx: &Arc<ConnCtx>) {
    let session = ctx.session.lock().ok().and_then(|mut g| g.take());
    let Some(session) = session else { return };
    session.cancel.cancel();
    let me = (session.user_id.as_str(), session.device_id);
    if st.hub.unregister(me.0, me.1, ctx.id) {
        st.calls.drop_device(me);
        // Presence is the account's: online while any of its devices is connected.
        if st.hub.is_online(me.0).await {
            if let Err(e) = st.storage.set_last_seen(me.0, me.1, now_ms()).await {
                warn!(error = %e, "last seen not stored");
            }
        } else {
            announce(st, me, false).await;
        }
    }
}

/// Tells everyone watching `user_id` that it went online or offline (a device of it
/// connected, or its last one went away).
pub(crate) async fn announce<S: Storage>(
    st: &Arc<State<S>>,
    (user_id, device_id): (&str, u32),
    online: bool,
) {
    let now = now_ms();
    if let Err(e) = st.storage.set_last_seen(user_id, device_id, now).await {
        warn!(error = %e, "last seen not stored");
    }
    let Ok(watchers) = st.storage.watchers(user_id).await else { return };
    let Ok(blocks) = st.storage.blocks(user_id).await else { return };
    let Ok(contacts) = st.storage.contacts(user_id).await else { return };
    let info =
        PresenceInfo { user_id: user_id.to_owned(), online, last_seen_at: now, hidden: false };
    let Ok(frame) = Push::Presence(info).encode() else {
        return;
    };
    // Only the user's contacts it does not block hear it (and nobody when it does not
    // share presence); the others were told `hidden` and hear nothing more.
    for w in watchers.iter().filter(|w| shows_presence(&blocks, &contacts, w)) {
        st.hub.push(w, None, frame.clone()).await;
    }
}

/// Writes pushes, in order, on the connection's one push stream.
async fn push_writer(
    mut send: quinn::SendStream,
    mut rx: mpsc::Receiver<PushCmd>,
    cancel: CancellationToken,
    conn: quinn::Connection,
) {
    loop {
        let cmd = tokio::select! {
            () = cancel.cancelled() => break,
            cmd = rx.recv() => cmd,
        };
        match cmd {
            None => break,
            Some(PushCmd::Frame(f)) => {
                if send.write_all(&f).await.is_err() {
                    break;
                }
            }
            Some(PushCmd::LoggedOut) => {
                if let Ok(f) = Push::LoggedOut.encode()
                    && send.write_all(&f).await.is_ok()
                    && send.finish().is_ok()
                {
                    // Give the device a moment to read it before the connection goes.
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), send.stopped())
                        .await;
                }
                conn.close(close::LOGGED_OUT.into(), b"logged in on another device");
                break;
            }
        }
    }
}

/// What a delivery task listens to and writes to.
struct Delivery {
    tx: mpsc::Sender<PushCmd>,
    wake: Arc<Notify>,
    /// Messages written but not yet committed (the online fast path).
    ahead: Arc<Ahead>,
    cancel: CancellationToken,
}

/// Pushes the device's queued messages, oldest first, and waits for more. Each message
/// is pushed once per connection; what is not acknowledged is pushed again on the next.
///
/// The cursor `after` moves only over committed messages read from the mailbox, so a
/// message committed out of the fast path is never skipped. A message pushed ahead (once
/// caught up, while its commit runs) is remembered and not pushed again when it is read.
async fn deliver<S: Storage>(st: Arc<State<S>>, (user_id, device): (String, u32), d: Delivery) {
    let mut after = 0u64;
    let mut pushed_ahead = BTreeSet::new();
    let poll = st.storage.poll_interval();
    loop {
        // Boxed, once per mailbox read: the storage's future is the largest this task
        // awaits, and inline every idle device's task would carry its size.
        match Box::pin(st.storage.pending(&user_id, device, after, DELIVERY_BATCH)).await {
            Ok(batch) if batch.is_empty() => {
                let look_again = async {
                    match poll {
                        Some(p) => tokio::time::sleep(p).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::pin!(look_again);
                // Caught up: push what is written ahead of its commit as it comes, and read
                // the mailbox again only when woken (each commit wakes it).
                loop {
                    tokio::select! {
                        () = d.cancel.cancelled() => return,
                        () = d.wake.notified() => break,
                        () = &mut look_again => break,
                        () = d.ahead.ready.notified() => {
                            for m in d.ahead.take() {
                                if m.delivery_id > after && pushed_ahead.insert(m.delivery_id)
                                    && !push(&d, m).await
                                {
                                    return;
                                }
                            }
                        }
                    }
                }
            }
            Ok(batch) => {
                for m in batch {
                    after = m.delivery_id;
                    if pushed_ahead.remove(&m.delivery_id) {
                        continue;
                    }
                    if !push(&d, m).await {
                        return;
                    }
                }
                // Pushed ahead but acknowledged (deleted) before it was read.
                pushed_ahead.retain(|&id| id > after);
            }
            Err(e) => {
                warn!(error = %e, "reading the mailbox failed; retrying");
                tokio::select! {
                    () = d.cancel.cancelled() => return,
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// Queues one message on the push stream; false once the connection is gone.
async fn push(d: &Delivery, m: Queued) -> bool {
    let push = Push::Message {
        delivery_id: m.delivery_id,
        from: m.sender,
        from_device: m.sender_device,
        msg_id: m.msg_id,
        server_ts: m.server_ts,
        body: m.body,
    };
    let Ok(frame) = push.encode() else { return true };
    tokio::select! {
        () = d.cancel.cancelled() => false,
        r = d.tx.send(PushCmd::Frame(frame)) => r.is_ok(),
    }
}
