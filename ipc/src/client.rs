//! An async client of the daemon: many requests in flight on one connection, responses
//! matched by `id`, and event notifications on a channel. Used by the CLI, the tests and
//! Rust frontends.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::RpcError;

/// What can go wrong for a client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached: the daemon is not running or not accessible.
    #[error("cannot connect to {path}: {source}")]
    Connect { path: String, source: std::io::Error },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon answered with an error.
    #[error("{0}")]
    Rpc(#[from] RpcError),
    /// The connection closed before the answer arrived.
    #[error("the daemon closed the connection")]
    Closed,
    #[error("unexpected answer: {0}")]
    Decode(#[from] serde_json::Error),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, RpcError>>>>>;

/// A connection to `letstalkd`.
#[derive(Debug)]
pub struct Client {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    events: Mutex<Option<mpsc::UnboundedReceiver<Value>>>,
    reader: JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Client {
    /// Connects to the socket at `path`.
    pub async fn connect(path: &Path) -> Result<Self, ClientError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| ClientError::Connect { path: path.display().to_string(), source })?;
        let (read, write) = stream.into_split();
        let pending: Pending = Arc::default();
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        let reader = tokio::spawn(read_loop(BufReader::new(read), pending.clone(), event_tx));
        Ok(Self {
            writer: tokio::sync::Mutex::new(write),
            pending,
            next_id: AtomicU64::new(1),
            events: Mutex::new(Some(event_rx)),
            reader,
        })
    }

    /// Calls `method` with JSON `params` and returns the raw result.
    pub async fn call_value(&self, method: &str, params: Value) -> Result<Value, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(id, tx);
        let line = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        if let Err(e) = self.send_line(line.to_string().as_bytes()).await {
            lock(&self.pending).remove(&id);
            return Err(e);
        }
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(ClientError::Rpc(e)),
            Err(_) => Err(ClientError::Closed),
        }
    }

    /// Calls `method` with typed params and result.
    pub async fn call<P: Serialize, R: DeserializeOwned>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<R, ClientError> {
        let value = self.call_value(method, serde_json::to_value(params)?).await?;
        Ok(serde_json::from_value(value)?)
    }

    /// Writes raw bytes followed by a newline (for tests and tools that speak JSON
    /// themselves).
    pub async fn send_line(&self, line: &[u8]) -> Result<(), ClientError> {
        let mut w = self.writer.lock().await;
        w.write_all(line).await?;
        w.write_all(b"\n").await?;
        Ok(())
    }

    /// The event notifications' params, in order; available once.
    pub fn take_events(&self) -> Option<mpsc::UnboundedReceiver<Value>> {
        lock(&self.events).take()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means another task panicked mid-update of a map of channels;
    // the map itself is still consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn read_loop(
    mut reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    pending: Pending,
    events: mpsc::UnboundedSender<Value>,
) {
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let Ok(value) = serde_json::from_slice::<Value>(&line) else { continue };
        let items = match value {
            Value::Array(items) => items,
            other => vec![other],
        };
        for item in items {
            dispatch(item, &pending, &events);
        }
    }
    lock(&pending).clear();
}

fn dispatch(item: Value, pending: &Pending, events: &mpsc::UnboundedSender<Value>) {
    if item.get("method").and_then(Value::as_str) == Some("event") {
        let _ = events.send(item.get("params").cloned().unwrap_or(Value::Null));
        return;
    }
    let Some(id) = item.get("id").and_then(Value::as_u64) else { return };
    let Some(tx) = lock(pending).remove(&id) else { return };
    let answer = match (item.get("result"), item.get("error")) {
        (_, Some(err)) => Err(serde_json::from_value(err.clone())
            .unwrap_or_else(|_| RpcError::internal(format!("malformed error: {err}")))),
        (Some(result), None) => Ok(result.clone()),
        (None, None) => Err(RpcError::internal("response without result or error")),
    };
    let _ = tx.send(answer);
}
