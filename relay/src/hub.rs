//! The connected devices of this relay node: where to push a message, presence or
//! profile change, and which connection currently acts for an account. In a cluster, a
//! device connected to another node is reached over the bus (`cluster/bus.rs`).
//!
//! A std `Mutex` around a map, never held across an `.await`: operations are a lookup or
//! an insert, far shorter than a task switch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc, oneshot};

use crate::cluster::bus::{Bus, Signal};
use crate::storage::Queued;

/// What the push writer of a connection is asked to do.
#[derive(Debug)]
pub(crate) enum PushCmd {
    /// Write this encoded push frame.
    Frame(Vec<u8>),
    /// Write `LoggedOut`, then close the connection.
    LoggedOut,
}

/// One connected, authenticated device.
#[derive(Debug, Clone)]
pub(crate) struct Device {
    pub(crate) conn_id: u64,
    pub(crate) tx: mpsc::Sender<PushCmd>,
    /// Wakes the connection's delivery task when a message was queued for it.
    pub(crate) wake: Arc<Notify>,
    /// Messages written but not yet committed, for the delivery task to push at once
    /// (the online fast path).
    pub(crate) ahead: mpsc::Sender<Queued>,
    pub(crate) conn: quinn::Connection,
}

/// Senders waiting for a recipient's acknowledgement of a message pushed before its
/// commit: delivery id → (recipient, the waiter).
type AwaitingAck = HashMap<u64, (String, oneshot::Sender<()>)>;

/// The map from account to its connected device, and the bus to the other nodes.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    devices: Mutex<HashMap<String, Device>>,
    awaiting_ack: Mutex<AwaitingAck>,
    bus: Option<Bus>,
}

/// Stops waiting for an acknowledgement when dropped.
pub(crate) struct AckWait<'a> {
    hub: &'a Hub,
    delivery_id: u64,
}

impl Drop for AckWait<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.hub.awaiting_ack.lock() {
            m.remove(&self.delivery_id);
        }
    }
}

impl Hub {
    /// A hub that reaches devices on other nodes through `bus`.
    pub(crate) fn with_bus(bus: Bus) -> Self {
        Self { devices: Mutex::default(), awaiting_ack: Mutex::default(), bus: Some(bus) }
    }

    /// The bus, in a cluster.
    pub(crate) fn bus(&self) -> Option<&Bus> {
        self.bus.as_ref()
    }

    /// Makes `device` the account's connection; returns the one it replaces.
    pub(crate) fn register(&self, user_id: &str, device: Device) -> Option<Device> {
        self.devices.lock().ok()?.insert(user_id.to_owned(), device)
    }

    /// Removes the account's entry if it still is connection `conn_id`.
    pub(crate) fn unregister(&self, user_id: &str, conn_id: u64) -> bool {
        let Ok(mut map) = self.devices.lock() else { return false };
        if map.get(user_id).is_some_and(|d| d.conn_id == conn_id) {
            map.remove(user_id);
            true
        } else {
            false
        }
    }

    /// Removes and returns the account's entry, whatever connection it is.
    pub(crate) fn take(&self, user_id: &str) -> Option<Device> {
        self.devices.lock().ok()?.remove(user_id)
    }

    /// Removes and returns the account's entry if it still is connection `conn_id`.
    pub(crate) fn take_if(&self, user_id: &str, conn_id: u64) -> Option<Device> {
        let mut map = self.devices.lock().ok()?;
        if map.get(user_id).is_some_and(|d| d.conn_id == conn_id) {
            map.remove(user_id)
        } else {
            None
        }
    }

    /// Whether connection `conn_id` acts for `user_id` right now.
    pub(crate) fn is_current(&self, user_id: &str, conn_id: u64) -> bool {
        self.devices.lock().is_ok_and(|m| m.get(user_id).is_some_and(|d| d.conn_id == conn_id))
    }

    /// The account's current connection, if it is connected (call media forwarding).
    pub(crate) fn connection(&self, user_id: &str) -> Option<quinn::Connection> {
        self.devices.lock().ok()?.get(user_id).map(|d| d.conn.clone())
    }

    /// Whether the account's device is connected to this node.
    pub(crate) fn is_local(&self, user_id: &str) -> bool {
        self.devices.lock().is_ok_and(|m| m.contains_key(user_id))
    }

    /// Whether the account's device is connected, here or (in a cluster) to another node.
    pub(crate) async fn is_online(&self, user_id: &str) -> bool {
        if self.is_local(user_id) {
            return true;
        }
        match &self.bus {
            Some(bus) => bus.online(user_id).await,
            None => false,
        }
    }

    /// Tells the account's delivery task, wherever it runs, that its mailbox grew.
    pub(crate) async fn wake(&self, user_id: &str) {
        if self.wake_local(user_id) {
            return;
        }
        if let Some(bus) = &self.bus {
            bus.send(user_id, &Signal::Wake).await;
        }
    }

    /// Wakes the delivery task of the account's device on this node; false if none.
    pub(crate) fn wake_local(&self, user_id: &str) -> bool {
        if let Ok(m) = self.devices.lock()
            && let Some(d) = m.get(user_id)
        {
            d.wake.notify_one();
            return true;
        }
        false
    }

    /// Hands a message written but not yet committed to the delivery task of the
    /// account's device here, to push at once; false if there is none or it is busy
    /// (then the message goes out once committed, as any other).
    pub(crate) fn push_ahead(&self, user_id: &str, message: Queued) -> bool {
        let tx = match self.devices.lock() {
            Ok(m) => m.get(user_id).map(|d| d.ahead.clone()),
            Err(_) => None,
        };
        tx.is_some_and(|tx| tx.try_send(message).is_ok())
    }

    /// Waits for `recipient`'s acknowledgement of `delivery_id`: the receiver fires when
    /// [`Hub::acknowledged`] names it, until the guard is dropped.
    pub(crate) fn await_ack(
        &self,
        recipient: &str,
        delivery_id: u64,
    ) -> (AckWait<'_>, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut m) = self.awaiting_ack.lock() {
            m.insert(delivery_id, (recipient.to_owned(), tx));
        }
        (AckWait { hub: self, delivery_id }, rx)
    }

    /// `recipient`'s device acknowledged these deliveries: it holds them now.
    pub(crate) fn acknowledged(&self, recipient: &str, delivery_ids: &[u64]) {
        let Ok(mut m) = self.awaiting_ack.lock() else { return };
        if m.is_empty() {
            return;
        }
        for id in delivery_ids {
            // Only the recipient's own acknowledgement counts.
            if m.get(id).is_some_and(|(to, _)| to == recipient)
                && let Some((_, waiter)) = m.remove(id)
            {
                let _ = waiter.send(());
            }
        }
    }

    /// Queues a push frame for the account's device, here or on another node.
    pub(crate) async fn push(&self, user_id: &str, frame: Vec<u8>) {
        if self.is_local(user_id) {
            self.push_local(user_id, frame);
        } else if let Some(bus) = &self.bus {
            bus.send(user_id, &Signal::Frame(frame)).await;
        }
    }

    /// Queues a push frame for the account's device on this node, if connected. A device
    /// whose queue is full misses this push (presence and profile pushes are hints; the
    /// state can be fetched again) rather than stalling the sender.
    pub(crate) fn push_local(&self, user_id: &str, frame: Vec<u8>) {
        let tx = match self.devices.lock() {
            Ok(m) => m.get(user_id).map(|d| d.tx.clone()),
            Err(_) => None,
        };
        if let Some(tx) = tx
            && tx.try_send(PushCmd::Frame(frame)).is_err()
        {
            tracing::debug!(user_id, "push queue full: dropped a push");
        }
    }

    /// Number of connected devices.
    pub(crate) fn len(&self) -> usize {
        self.devices.lock().map(|m| m.len()).unwrap_or(0)
    }
}
