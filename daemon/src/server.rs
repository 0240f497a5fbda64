//! The IPC server: the listening socket, peer checks, and one task per connection that
//! turns bytes into lines, lines into requests, and writes responses and events back.
//!
//! Per connection: a reader loop (framing only), a task per request line (so requests run
//! concurrently and answer out of order), a writer task fed by a bounded queue, and at
//! most one event subscription. Backpressure is local: a client that stops reading fills
//! its own queue, then its own requests wait, then its reader stops; its subscription is
//! dropped with `events.overflow`. Nothing it does can stall another client.

use std::collections::BTreeSet;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use letstalk_ipc::framing::{Frame, LineFramer};
use letstalk_ipc::jsonrpc::{self, Line, Message, Request};
use letstalk_ipc::{MAX_LINE, RpcError};

use crate::client::{Connection, lock};
use crate::config::SocketSource;
use crate::methods::{self, Reply};
use crate::{Daemon, events, systemd};

/// Lines waiting to be written to one client (responses and events together).
const OUT_QUEUE: usize = 1024;
/// How long a live event may wait for room in a full queue before the subscriber is
/// declared too slow.
const LIVE_GRACE: Duration = Duration::from_secs(1);
/// Requests of one connection being worked on at once.
const MAX_IN_FLIGHT: usize = 256;
/// Events read from the database per query by a subscription.
const EVENT_BATCH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another letstalkd is serving on {0}")]
    Live(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("cannot create socket directory {path}: {source}")]
    Dir { path: PathBuf, source: std::io::Error },
    #[error("cannot bind socket {path}: {source}")]
    Bind { path: PathBuf, source: std::io::Error },
    #[error("no socket was passed by socket activation: {0}")]
    Activation(String),
}

/// Binds the IPC socket; returns the listener and the path to remove at exit (none for
/// an activated socket, which belongs to systemd).
pub fn bind(source: &SocketSource) -> Result<(UnixListener, Option<PathBuf>), BindError> {
    let path = match source {
        SocketSource::Activated => {
            let std = systemd::activated_listener()
                .map_err(|e| BindError::Activation(e.to_string()))?
                .ok_or_else(|| BindError::Activation("LISTEN_FDS holds no Unix socket".into()))?;
            std.set_nonblocking(true).map_err(|e| BindError::Activation(e.to_string()))?;
            let listener =
                UnixListener::from_std(std).map_err(|e| BindError::Activation(e.to_string()))?;
            return Ok((listener, None));
        }
        SocketSource::Path(p) => p.clone(),
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| BindError::Dir { path: dir.to_path_buf(), source })?;
    }
    replace_stale(&path)?;
    // The process umask is 077 (set in main), so the socket is 0600 from the moment it
    // exists; the chmod below only matters when embedded with another umask.
    let listener = UnixListener::bind(&path)
        .map_err(|source| BindError::Bind { path: path.clone(), source })?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .map_err(|source| BindError::Bind { path: path.clone(), source })?;
    Ok((listener, Some(path)))
}

/// Removes a socket file nobody is listening on; refuses a live one.
fn replace_stale(path: &Path) -> Result<(), BindError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return Ok(()) };
    if !meta.file_type().is_socket() {
        return Err(BindError::NotASocket(path.to_path_buf()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(BindError::Live(path.to_path_buf())),
        Err(_) => {
            tracing::info!(path = %path.display(), "replacing a stale socket");
            std::fs::remove_file(path)
                .map_err(|source| BindError::Bind { path: path.to_path_buf(), source })
        }
    }
}

/// Accepts connections until cancelled.
pub async fn accept_loop(
    daemon: Arc<Daemon>,
    listener: UnixListener,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    let own_uid = rustix::process::getuid().as_raw();
    let next_id = AtomicU64::new(1);
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            r = listener.accept() => r,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == own_uid || cred.uid() == 0 => {}
            Ok(cred) => {
                tracing::warn!(uid = cred.uid(), "refused a connection from another user");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot check a peer's credentials; refused");
                continue;
            }
        }
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(serve(daemon.clone(), stream, id, cancel.child_token()));
    }
}

#[tracing::instrument(name = "conn", skip_all, fields(id))]
async fn serve(daemon: Arc<Daemon>, stream: UnixStream, id: u64, cancel: CancellationToken) {
    tracing::debug!("connected");
    let (mut reader, writer) = stream.into_split();
    let (out, out_rx) = mpsc::channel(OUT_QUEUE);
    let conn =
        Arc::new(Connection { id, out, subscription: Mutex::new(None), cancel: cancel.clone() });
    let writer = tokio::spawn(write_loop(writer, out_rx));
    let requests = TaskTracker::new();
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut framer = LineFramer::new(MAX_LINE);
    let mut frames = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            () = cancel.cancelled() => break,
            r = reader.read(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
        };
        framer.push(buf.get(..n).unwrap_or_default(), &mut frames);
        for frame in frames.drain(..) {
            match frame {
                Frame::TooLong => {
                    conn.send(&jsonrpc::response_err(Value::Null, &RpcError::line_too_large()))
                        .await;
                }
                Frame::Line(line) if line.iter().all(u8::is_ascii_whitespace) => {}
                Frame::Line(line) => {
                    let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
                    let (daemon, conn) = (daemon.clone(), conn.clone());
                    requests.spawn(async move {
                        handle_line(&daemon, &conn, &line).await;
                        drop(permit);
                    });
                }
            }
        }
    }
    // Answer what was asked before the client closed its side (or we were stopped).
    requests.close();
    requests.wait().await;
    conn.stop_subscription();
    lock(&daemon.frontends).remove(&id);
    drop(conn);
    let _ = writer.await;
    tracing::debug!("disconnected");
}

async fn write_loop(writer: OwnedWriteHalf, mut rx: mpsc::Receiver<Bytes>) {
    let mut w = BufWriter::with_capacity(64 * 1024, writer);
    while let Some(first) = rx.recv().await {
        if w.write_all(&first).await.is_err() {
            return;
        }
        // Coalesce whatever else is queued into the same write.
        while let Ok(more) = rx.try_recv() {
            if w.write_all(&more).await.is_err() {
                return;
            }
        }
        if w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

async fn handle_line(daemon: &Arc<Daemon>, conn: &Arc<Connection>, line: &[u8]) {
    match jsonrpc::decode_line(line) {
        Line::Reject(err) => conn.send(&jsonrpc::response_err(Value::Null, &err)).await,
        Line::Single(message) => {
            let (response, follow_up) = handle_message(daemon, conn, message).await;
            if let Some(response) = response {
                conn.send(&response).await;
            }
            if let Some(start) = follow_up {
                start_subscription(daemon, conn, start);
            }
        }
        Line::Batch(messages) => {
            let results = futures::future::join_all(
                messages.into_iter().map(|m| handle_message(daemon, conn, m)),
            )
            .await;
            let mut responses = Vec::new();
            let mut follow_ups = Vec::new();
            for (response, follow_up) in results {
                responses.extend(response);
                follow_ups.extend(follow_up);
            }
            if !responses.is_empty() {
                conn.send(&Value::Array(responses)).await;
            }
            for start in follow_ups {
                start_subscription(daemon, conn, start);
            }
        }
    }
}

/// Runs one message; returns its response (none for a notification) and a subscription
/// to start once that response is queued.
async fn handle_message(
    daemon: &Arc<Daemon>,
    conn: &Arc<Connection>,
    message: Message,
) -> (Option<Value>, Option<methods::SubscriptionStart>) {
    let Request { id, method, params } = match message {
        Message::Invalid { id, error } => return (Some(jsonrpc::response_err(id, &error)), None),
        Message::Request(r) => r,
    };
    let outcome = methods::call(daemon, conn, &method, params).await;
    let (result, follow_up) = match outcome {
        Ok(Reply::Value(v)) => (Ok(v), None),
        Ok(Reply::Subscribe { result, start }) => (Ok(result), Some(start)),
        Err(e) => (Err(e), None),
    };
    let Some(id) = id else { return (None, follow_up) };
    let response = match result {
        Ok(v) => jsonrpc::response_ok(id, v),
        Err(e) => jsonrpc::response_err(id, &e),
    };
    (Some(response), follow_up)
}

/// Replaces the connection's subscription with a new one starting after `start.cursor`.
fn start_subscription(
    daemon: &Arc<Daemon>,
    conn: &Arc<Connection>,
    start: methods::SubscriptionStart,
) {
    let token = conn.cancel.child_token();
    {
        let mut slot = lock(&conn.subscription);
        if let Some(old) = slot.replace(token.clone()) {
            old.cancel();
        }
    }
    tokio::spawn(subscription(daemon.clone(), conn.out.clone(), start, token));
}

/// Feeds persisted events to one subscriber until cancelled, the client goes away, or
/// the client falls behind by a full queue (then: one `events.overflow`, and stop).
async fn subscription(
    daemon: Arc<Daemon>,
    out: mpsc::Sender<Bytes>,
    start: methods::SubscriptionStart,
    cancel: CancellationToken,
) {
    let kinds: Option<BTreeSet<String>> = start.kinds.map(|k| k.into_iter().collect());
    let mut cursor = start.cursor;
    let mut wake = daemon.bus.watch();
    loop {
        wake.borrow_and_update();
        let after = cursor;
        let batch =
            match daemon.store.read(move |c| events::read_after(c, after, EVENT_BATCH)).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "reading events");
                    return;
                }
            };
        let more = batch.len() == EVENT_BATCH;
        for event in batch {
            if cancel.is_cancelled() {
                return;
            }
            if kinds.as_ref().is_some_and(|k| !k.contains(&event.kind)) {
                cursor = event.seq;
                continue;
            }
            let mut line = jsonrpc::notification("event", &event.params).to_string().into_bytes();
            line.push(b'\n');
            let line = Bytes::from(line);
            let queued = if event.seq <= start.replay_until {
                // A replay the client asked for: the rows are in the database anyway, so
                // wait for the client to read instead of dropping it.
                tokio::select! {
                    () = cancel.cancelled() => return,
                    r = out.send(line) => r.is_ok(),
                }
            } else {
                match out.try_send(line) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                    Err(mpsc::error::TrySendError::Full(line)) => {
                        // A short grace absorbs a burst; a client still not reading after
                        // it has fallen behind by a full queue and is dropped.
                        match tokio::time::timeout(LIVE_GRACE, out.send(line)).await {
                            Ok(r) => r.is_ok(),
                            Err(_) => {
                                overflow(&out, cursor, &cancel).await;
                                return;
                            }
                        }
                    }
                }
            };
            if !queued {
                return;
            }
            cursor = event.seq;
        }
        if !more {
            tokio::select! {
                () = cancel.cancelled() => return,
                r = wake.changed() => if r.is_err() { return },
            }
        }
    }
}

/// Sends the final `events.overflow` (its `seq` is the last event queued) and gives up.
async fn overflow(out: &mpsc::Sender<Bytes>, last_queued: u64, cancel: &CancellationToken) {
    tracing::info!(last_seq = last_queued, "subscriber too slow; dropping its subscription");
    let event =
        serde_json::json!({"seq": last_queued, "kind": "events.overflow", "at": crate::now_ms()});
    let mut line = jsonrpc::notification("event", event).to_string().into_bytes();
    line.push(b'\n');
    tokio::select! {
        () = cancel.cancelled() => {}
        _ = out.send(Bytes::from(line)) => {}
    }
}
