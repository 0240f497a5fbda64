//! One QUIC connection: accepting request streams (bounded in rate and count), reading
//! one frame per stream and handing the request to the router (`handlers`), or a blob
//! stream to its handler; the connection's call media loop (`media.rs`). What happens
//! once a device authenticates is in `session.rs`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use letstalk_wire::{
    AUTH_EXPORTER_LABEL, AUTH_EXPORTER_LEN, ErrorKind, MAX_FRAME_LEN, Response, frame_len,
};
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, warn};

use crate::close;
use crate::ctx::ConnCtx;
use crate::handlers;
use crate::media;
use crate::session::end_session;
use crate::state::State;
use crate::storage::Storage;

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
        tasks.spawn(media::forward(st.clone(), ctx.clone()));
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
        // Boxed: ending the session (storage writes, presence announcements) is the
        // largest future this task awaits, once, at its end; inline, the task of every
        // idle connection would carry its size for the connection's whole life.
        Box::pin(end_session(&st, &ctx)).await;
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
        Ok(req) if handlers::is_stream_request(&req) => {
            debug!(?req, "blob stream");
            handlers::serve_stream(&st, &ctx, req, send, recv).await;
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
