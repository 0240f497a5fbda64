//! One QUIC connection: accepting request streams (bounded in rate and count), reading
//! one frame per stream, the device session after authentication, and the push stream
//! with its delivery task.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use letstalk_wire::{
    AUTH_EXPORTER_LABEL, AUTH_EXPORTER_LEN, ErrorKind, MAX_FRAME_LEN, PresenceInfo, Push, Response,
    frame_len,
};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use crate::handlers::{Fail, fail};
use crate::hub::{Device, PushCmd};
use crate::storage::Storage;
use crate::{State, handlers, now_ms};

/// Application close codes, visible to the client.
pub mod close {
    /// The relay is shutting down.
    pub const SHUTDOWN: u32 = 0;
    /// A frame's length prefix exceeded the limit.
    pub const FRAME_TOO_LARGE: u32 = 1;
    /// Too many streams too fast.
    pub const TOO_MANY_STREAMS: u32 = 2;
    /// The account was logged in on another device.
    pub const LOGGED_OUT: u32 = 3;
    /// The same device connected again; this older connection is dropped.
    pub const REPLACED: u32 = 4;
}

/// Pushes queued per connection before presence pushes are dropped and message delivery
/// waits: a device that does not read its push stream only slows itself.
const PUSH_QUEUE: usize = 64;
/// Queued messages read from storage per round.
const DELIVERY_BATCH: u32 = 32;

/// Per-connection state shared by its stream tasks.
#[derive(Debug)]
pub(crate) struct ConnCtx {
    pub(crate) id: u64,
    pub(crate) conn: quinn::Connection,
    pub(crate) remote: SocketAddr,
    /// Fresh per connection: a signature over it is good for this connection only.
    pub(crate) challenge: [u8; 32],
    /// This TLS session's exporter value (RFC 5705): signed with the challenge, so a
    /// signature relayed from another connection (another TLS session) is refused.
    pub(crate) exporter: [u8; AUTH_EXPORTER_LEN],
    pub(crate) hello: AtomicBool,
    pub(crate) session: Mutex<Option<Session>>,
    pub(crate) cancel: CancellationToken,
}

/// The account this connection acts for, after authentication.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) user_id: String,
    /// Stops the push writer and delivery task of this session.
    pub(crate) cancel: CancellationToken,
}

impl ConnCtx {
    pub(crate) fn user(&self) -> Option<String> {
        self.session.lock().ok()?.as_ref().map(|s| s.user_id.clone())
    }
}

/// Serves one incoming connection to its end.
pub(crate) async fn serve<S: Storage>(st: Arc<State<S>>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            debug!(%remote, error = %e, "handshake failed");
            return;
        }
    };
    let mut exporter = [0u8; AUTH_EXPORTER_LEN];
    if conn.export_keying_material(&mut exporter, AUTH_EXPORTER_LABEL, &[]).is_err() {
        debug!(%remote, "no TLS exporter: closing");
        conn.close(close::SHUTDOWN.into(), b"no TLS exporter");
        return;
    }
    let id = st.next_conn.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("conn", id, %remote);
    let ctx = Arc::new(ConnCtx {
        id,
        conn: conn.clone(),
        remote,
        challenge: rand::random(),
        exporter,
        hello: AtomicBool::new(false),
        session: Mutex::new(None),
        cancel: st.cancel.child_token(),
    });
    async move {
        debug!("connected");
        let mut tasks = JoinSet::new();
        tasks.spawn(crate::calls::forward(st.clone(), ctx.clone()));
        let mut bucket = StreamBucket::new(st.limits.stream_burst, st.limits.streams_per_sec);
        loop {
            let (send, recv) = tokio::select! {
                () = ctx.cancel.cancelled() => break,
                s = conn.accept_bi() => match s {
                    Ok(s) => s,
                    Err(e) => {
                        debug!(reason = %e, "connection ended");
                        break;
                    }
                },
            };
            if !bucket.take() {
                warn!("too many streams: closing the connection");
                conn.close(close::TOO_MANY_STREAMS.into(), b"too many streams");
                break;
            }
            tasks.spawn(serve_stream(st.clone(), ctx.clone(), send, recv));
            while tasks.try_join_next().is_some() {}
        }
        ctx.cancel.cancel();
        tasks.shutdown().await;
        end_session(&st, &ctx).await;
    }
    .instrument(span)
    .await;
}

/// Streams a connection may open: `burst` at once, refilled at `per_sec`.
struct StreamBucket {
    tokens: f64,
    burst: f64,
    per_sec: f64,
    at: Instant,
}

impl StreamBucket {
    fn new(burst: u32, per_sec: u32) -> Self {
        Self {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            per_sec: f64::from(per_sec),
            at: Instant::now(),
        }
    }
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + self.per_sec * now.duration_since(self.at).as_secs_f64())
            .min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

enum ReadError {
    TooLarge(usize),
    Stream(String),
}

/// Reads one frame body; the length is checked before anything is allocated.
async fn read_frame(recv: &mut quinn::RecvStream) -> Result<Vec<u8>, ReadError> {
    let mut prefix = [0u8; 4];
    recv.read_exact(&mut prefix).await.map_err(|e| ReadError::Stream(e.to_string()))?;
    let len = frame_len(prefix, MAX_FRAME_LEN)
        .map_err(|_| ReadError::TooLarge(u32::from_be_bytes(prefix) as usize))?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|e| ReadError::Stream(e.to_string()))?;
    Ok(body)
}

async fn serve_stream<S: Storage>(
    st: Arc<State<S>>,
    ctx: Arc<ConnCtx>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let body = match tokio::time::timeout(st.limits.request_timeout, read_frame(&mut recv)).await {
        Err(_) => {
            debug!("request not received in time: resetting the stream");
            let _ = send.reset(0u32.into());
            return;
        }
        Ok(Err(ReadError::TooLarge(len))) => {
            warn!(len, "frame over the limit: closing the connection");
            ctx.conn.close(close::FRAME_TOO_LARGE.into(), b"frame too large");
            return;
        }
        Ok(Err(ReadError::Stream(e))) => {
            debug!(error = %e, "request stream failed");
            return;
        }
        Ok(Ok(body)) => body,
    };
    let response = match letstalk_wire::Request::decode(&body) {
        Ok(req) if crate::blobs::is_stream_request(&req) => {
            debug!(?req, "blob stream");
            crate::blobs::serve_stream(&st, &ctx, req, send, recv).await;
            return;
        }
        Ok(req) => {
            debug!(?req, "request");
            handlers::dispatch(&st, &ctx, req).await
        }
        Err(e) => {
            info!(error = %e, "malformed request frame");
            Response::error(ErrorKind::Invalid, format!("malformed frame: {e}"))
        }
    };
    let frame = match response.encode() {
        Ok(f) => f,
        Err(e) => {
            warn!(error = %e, "response could not be encoded");
            Response::error(ErrorKind::Internal, "response too large").encode().unwrap_or_default()
        }
    };
    if send.write_all(&frame).await.is_ok() {
        let _ = send.finish();
    }
}

/// Makes this connection act for `user_id`: registers it, opens the push stream, starts
/// delivery of queued messages and announces presence.
pub(crate) async fn start_session<S: Storage>(
    st: &Arc<State<S>>,
    ctx: &Arc<ConnCtx>,
    user_id: &str,
) -> Result<(), Fail> {
    let cancel = ctx.cancel.child_token();
    {
        let Ok(mut guard) = ctx.session.lock() else {
            return Err(fail(ErrorKind::Internal, "session lock"));
        };
        if let Some(s) = guard.as_ref() {
            return if s.user_id == user_id {
                Ok(())
            } else {
                Err(fail(ErrorKind::Invalid, "connection already acts for another account"))
            };
        }
        *guard = Some(Session { user_id: user_id.to_owned(), cancel: cancel.clone() });
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
    let device =
        Device { conn_id: ctx.id, tx: tx.clone(), wake: wake.clone(), conn: ctx.conn.clone() };
    if let Some(old) = st.hub.register(user_id, device)
        && old.conn_id != ctx.id
    {
        old.conn.close(close::REPLACED.into(), b"replaced by a newer connection");
    }
    if let Some(bus) = st.hub.bus() {
        // In a cluster: reachable from every node, and any older connection of the
        // account on another node is dropped.
        match bus.claim(user_id, ctx.id).await {
            Ok(sub) => {
                let follow = crate::cluster::follow(
                    st.clone(),
                    user_id.to_owned(),
                    ctx.id,
                    sub,
                    cancel.clone(),
                );
                tokio::spawn(follow.instrument(tracing::Span::current()));
            }
            Err(e) => warn!(error = %e, "cluster bus: cannot subscribe for the device"),
        }
    }
    let span = tracing::Span::current();
    tokio::spawn(push_writer(send, rx, cancel.clone(), ctx.conn.clone()).instrument(span.clone()));
    tokio::spawn(deliver(st.clone(), user_id.to_owned(), tx, wake, cancel).instrument(span));
    // No user id at info level: the connection's span carries the address.
    info!("device authenticated");
    debug!(user_id, "device authenticated");
    announce(st, user_id, true).await;
    Ok(())
}

/// Ends this connection's session, if any: stops its tasks and, if it was the account's
/// current connection, announces it offline.
pub(crate) async fn end_session<S: Storage>(st: &Arc<State<S>>, ctx: &Arc<ConnCtx>) {
    let session = ctx.session.lock().ok().and_then(|mut g| g.take());
    let Some(session) = session else { return };
    session.cancel.cancel();
    if st.hub.unregister(&session.user_id, ctx.id) {
        st.calls.drop_user(&session.user_id);
        announce(st, &session.user_id, false).await;
    }
}

/// Tells everyone watching `user_id` that it went online or offline.
pub(crate) async fn announce<S: Storage>(st: &Arc<State<S>>, user_id: &str, online: bool) {
    let now = now_ms();
    if let Err(e) = st.storage.set_last_seen(user_id, now).await {
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
    for w in watchers.iter().filter(|w| crate::storage::shows_presence(&blocks, &contacts, w)) {
        st.hub.push(w, frame.clone()).await;
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

/// Pushes the account's queued messages, oldest first, and waits for more. Each message
/// is pushed once per connection; what is not acknowledged is pushed again on the next.
async fn deliver<S: Storage>(
    st: Arc<State<S>>,
    user_id: String,
    tx: mpsc::Sender<PushCmd>,
    wake: Arc<Notify>,
    cancel: CancellationToken,
) {
    let mut after = 0u64;
    let poll = st.storage.poll_interval();
    loop {
        match st.storage.pending(&user_id, after, DELIVERY_BATCH).await {
            Ok(batch) if batch.is_empty() => {
                let look_again = async {
                    match poll {
                        Some(p) => tokio::time::sleep(p).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = wake.notified() => {}
                    () = look_again => {}
                }
            }
            Ok(batch) => {
                for m in batch {
                    after = m.delivery_id;
                    let push = Push::Message {
                        delivery_id: m.delivery_id,
                        from: m.sender,
                        msg_id: m.msg_id,
                        server_ts: m.server_ts,
                        body: m.body,
                    };
                    let Ok(frame) = push.encode() else { continue };
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        r = tx.send(PushCmd::Frame(frame)) => if r.is_err() { return },
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, "reading the mailbox failed; retrying");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
        }
    }
}
