//! One client connection of the IPC socket, as the server runs it and the methods see
//! it (its id, its subscription).

use std::sync::Mutex;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One client connection's state, shared by its request tasks.
#[derive(Debug)]
pub struct Connection {
    pub id: u64,
    pub(crate) out: mpsc::Sender<Bytes>,
    pub(crate) subscription: Mutex<Option<CancellationToken>>,
    pub(crate) cancel: CancellationToken,
}

impl Connection {
    pub(crate) async fn send(&self, value: &Value) {
        let mut line = value.to_string().into_bytes();
        line.push(b'\n');
        // An error means the writer is gone (client disconnected): nothing to do.
        let _ = self.out.send(Bytes::from(line)).await;
    }

    pub(crate) fn stop_subscription(&self) {
        if let Some(old) = lock(&self.subscription).take() {
            old.cancel();
        }
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Stops the connection's subscription (`events.unsubscribe`).
pub fn unsubscribe(conn: &Connection) {
    conn.stop_subscription();
}
