//! The connected devices of this relay node, by account and device id (several devices of
//! one account are connected at once): where to push a message, presence, profile or
//! device-list change, and which connection currently acts for a device. In a cluster, a
//! device connected to another node is reached over the bus (`cluster/bus.rs`).
//!
//! A std `Mutex` around a map, never held across an `.await`: operations are a lookup or
//! an insert, far shorter than a task switch.

use std::collections::{BTreeMap, HashMap, VecDeque};
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
    pub(crate) ahead: Arc<Ahead>,
    pub(crate) conn: quinn::Connection,
}

/// Messages written but not yet committed, on their way to one device's delivery task
/// (the online fast path), at most `max` at once.
///
/// A queue under a lock rather than a tokio channel: a channel allocates a block of 32
/// slots when it is made, 32 `Queued` (about 4 KiB) for every authenticated connection,
/// idle or not; this queue holds memory only while it holds messages, and the delivery
/// task takes them all at once.
#[derive(Debug)]
pub(crate) struct Ahead {
    queue: Mutex<VecDeque<Queued>>,
    max: usize,
    /// Told when a message was queued; a notification nobody waits for is kept, so the
    /// delivery task never misses one between taking the queue and waiting again.
    pub(crate) ready: Notify,
}

impl Ahead {
    pub(crate) fn new(max: usize) -> Self {
        Self { queue: Mutex::default(), max, ready: Notify::new() }
    }

    /// Queues `message`; false when the queue is full (the message then goes out once
    /// committed, as any other).
    pub(crate) fn offer(&self, message: Queued) -> bool {
        let Ok(mut queue) = self.queue.lock() else { return false };
        if queue.len() >= self.max {
            return false;
        }
        queue.push_back(message);
        drop(queue);
        self.ready.notify_one();
        true
    }

    /// Everything queued, oldest first; the queue's memory goes with it.
    pub(crate) fn take(&self) -> VecDeque<Queued> {
        self.queue.lock().map(|mut q| std::mem::take(&mut *q)).unwrap_or_default()
    }
}

/// Senders waiting for a recipient device's acknowledgement of a message pushed before
/// its commit: delivery id → ((recipient, device), the waiter).
type AwaitingAck = HashMap<u64, ((String, u32), oneshot::Sender<()>)>;

/// The connected devices of each account here (by device id), and the bus to the other
/// nodes.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    devices: Mutex<HashMap<String, BTreeMap<u32, Device>>>,
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

    /// Makes `device` the connection of the account's device `device_id`; returns the
    /// one it replaces.
    pub(crate) fn register(&self, user_id: &str, device_id: u32, device: Device) -> Option<Device> {
        self.devices.lock().ok()?.entry(user_id.to_owned()).or_default().insert(device_id, device)
    }

    /// Removes the device's entry if it still is connection `conn_id`.
    pub(crate) fn unregister(&self, user_id: &str, device_id: u32, conn_id: u64) -> bool {
        self.take_if(user_id, device_id, conn_id).is_some()
    }

    /// Removes and returns the device's entry, whatever connection it is.
    pub(crate) fn take(&self, user_id: &str, device_id: u32) -> Option<Device> {
        let mut map = self.devices.lock().ok()?;
        let devices = map.get_mut(user_id)?;
        let taken = devices.remove(&device_id);
        if devices.is_empty() {
            map.remove(user_id);
        }
        taken
    }

    /// Removes and returns the device's entry if it still is connection `conn_id`.
    pub(crate) fn take_if(&self, user_id: &str, device_id: u32, conn_id: u64) -> Option<Device> {
        let current = self.is_current(user_id, device_id, conn_id);
        if current { self.take(user_id, device_id) } else { None }
    }

    /// Whether connection `conn_id` acts for the account's device `device_id` right now.
    pub(crate) fn is_current(&self, user_id: &str, device_id: u32, conn_id: u64) -> bool {
        self.devices.lock().is_ok_and(|m| {
            m.get(user_id).and_then(|d| d.get(&device_id)).is_some_and(|d| d.conn_id == conn_id)
        })
    }

    /// The connections of the account's devices here (call media forwarding).
    pub(crate) fn connections(&self, user_id: &str) -> Vec<(u32, quinn::Connection)> {
        let Ok(m) = self.devices.lock() else { return Vec::new() };
        m.get(user_id)
            .map(|d| d.iter().map(|(id, d)| (*id, d.conn.clone())).collect())
            .unwrap_or_default()
    }

    /// The connection of one device here, if it is connected here.
    pub(crate) fn connection(&self, user_id: &str, device_id: u32) -> Option<quinn::Connection> {
        self.devices.lock().ok()?.get(user_id)?.get(&device_id).map(|d| d.conn.clone())
    }

    /// Whether any device of the account is connected to this node.
    pub(crate) fn is_local(&self, user_id: &str) -> bool {
        self.devices.lock().is_ok_and(|m| m.contains_key(user_id))
    }

    /// Whether any device of the account is connected, here or (in a cluster) to
    /// another node: the account's presence.
    pub(crate) async fn is_online(&self, user_id: &str) -> bool {
        if self.is_local(user_id) {
            return true;
        }
        match &self.bus {
            Some(bus) => bus.online(user_id).await,
            None => false,
        }
    }

    /// Tells the delivery task of every device of the account, wherever it runs, that a
    /// mailbox grew (each looks at its own).
    pub(crate) async fn wake(&self, user_id: &str) {
        self.wake_local(user_id, None);
        if let Some(bus) = &self.bus {
            bus.send_account(user_id, &Signal::Wake).await;
        }
    }

    /// Wakes the delivery tasks of the account's devices on this node (or only of
    /// `device`).
    pub(crate) fn wake_local(&self, user_id: &str, device: Option<u32>) {
        if let Ok(m) = self.devices.lock()
            && let Some(devices) = m.get(user_id)
        {
            for (id, d) in devices {
                if device.is_none_or(|only| only == *id) {
                    d.wake.notify_one();
                }
            }
        }
    }

    /// Hands a message written but not yet committed to the delivery task of the device
    /// here, to push at once; false if there is none or it is busy (then the message
    /// goes out once committed, as any other).
    pub(crate) fn push_ahead(&self, user_id: &str, device_id: u32, message: Queued) -> bool {
        let ahead = match self.devices.lock() {
            Ok(m) => m.get(user_id).and_then(|d| d.get(&device_id)).map(|d| d.ahead.clone()),
            Err(_) => None,
        };
        ahead.is_some_and(|ahead| ahead.offer(message))
    }

    /// Waits for the recipient device's acknowledgement of `delivery_id`: the receiver
    /// fires when [`Hub::acknowledged`] names it, until the guard is dropped.
    pub(crate) fn await_ack(
        &self,
        recipient: &str,
        device_id: u32,
        delivery_id: u64,
    ) -> (AckWait<'_>, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut m) = self.awaiting_ack.lock() {
            m.insert(delivery_id, ((recipient.to_owned(), device_id), tx));
        }
        (AckWait { hub: self, delivery_id }, rx)
    }

    /// The recipient device acknowledged these deliveries: it holds them now.
    pub(crate) fn acknowledged(&self, recipient: &str, device_id: u32, delivery_ids: &[u64]) {
        let Ok(mut m) = self.awaiting_ack.lock() else { return };
        if m.is_empty() {
            return;
        }
        for id in delivery_ids {
            // Only the recipient device's own acknowledgement counts.
            if m.get(id).is_some_and(|((to, d), _)| to == recipient && *d == device_id)
                && let Some((_, waiter)) = m.remove(id)
            {
                let _ = waiter.send(());
            }
        }
    }

    /// Queues a push frame for every device of the account (but `except`), here or on
    /// other nodes. In a cluster the frame goes over the bus only, and each node's
    /// follower writes it to its devices, this node's included: pushing here as well
    /// would write it twice.
    pub(crate) async fn push(&self, user_id: &str, except: Option<u32>, frame: Vec<u8>) {
        match &self.bus {
            Some(bus) => bus.send_account(user_id, &Signal::Frame { except, frame }).await,
            None => self.push_local(user_id, except, frame),
        }
    }

    /// Queues a push frame for the account's devices on this node (but `except`). A
    /// device whose queue is full misses this push (presence, profile and device-list
    /// pushes are hints; the state can be fetched again) rather than stalling the sender.
    pub(crate) fn push_local(&self, user_id: &str, except: Option<u32>, frame: Vec<u8>) {
        let txs: Vec<_> = match self.devices.lock() {
            Ok(m) => m
                .get(user_id)
                .map(|d| {
                    d.iter()
                        .filter(|(id, _)| Some(**id) != except)
                        .map(|(_, d)| d.tx.clone())
                        .collect()
                })
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        for tx in txs {
            if tx.try_send(PushCmd::Frame(frame.clone())).is_err() {
                tracing::debug!(user_id, "push queue full: dropped a push");
            }
        }
    }

    /// Queues a push frame for one device on this node, if it is connected here.
    pub(crate) fn push_device(&self, user_id: &str, device_id: u32, frame: Vec<u8>) {
        let tx = match self.devices.lock() {
            Ok(m) => m.get(user_id).and_then(|d| d.get(&device_id)).map(|d| d.tx.clone()),
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
        self.devices.lock().map(|m| m.values().map(BTreeMap::len).sum()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(delivery_id: u64) -> Queued {
        Queued {
            delivery_id,
            sender: "alice".into(),
            sender_device: 1,
            msg_id: format!("m{delivery_id}"),
            server_ts: 0,
            body: vec![1, 2, 3],
        }
    }

    #[tokio::test]
    async fn ahead_is_bounded_taken_whole_and_keeps_its_notification() {
        let ahead = Ahead::new(2);
        assert!(ahead.offer(queued(1)));
        assert!(ahead.offer(queued(2)));
        assert!(!ahead.offer(queued(3)), "a full queue refuses");
        // Offered before anyone waited: the delivery task still hears of it.
        tokio::time::timeout(std::time::Duration::from_secs(5), ahead.ready.notified())
            .await
            .unwrap();
        let ids: Vec<u64> = ahead.take().into_iter().map(|m| m.delivery_id).collect();
        assert_eq!(ids, [1, 2]);
        assert!(ahead.take().is_empty());
        assert!(ahead.offer(queued(4)), "taking makes room");
    }
}
