//! The bus itself: [`Signal`], what one node tells another about a device, and [`Bus`],
//! this node's end (publish, ask whether a device is online, claim a device's subject).
//!
//! Two subjects per connected device: the account's, `letstalk.dev.<user>`, which every
//! connected device of the account follows (wherever it is connected), and the
//! device's own, `letstalk.dev.<user>.<device>`. A signal is one byte of tag first:
//!
//! - `W` (account): a mailbox of the account grew (a message was enqueued on another
//!   node): each device looks at its own.
//! - `P` + frame (account): a presence, profile or device-list push to write as is;
//!   `O` + device (4 bytes) + frame: the same for every device but that one.
//! - `L` (device): the device was removed (logged in elsewhere, removed by another
//!   device): send `LoggedOut` and close.
//! - `R` + instance + connection (device): the same device now has a newer connection
//!   on another node (a reconnect, a failover): drop this one without announcing
//!   offline.
//! - `Q` (account, a request): is a device of the account connected? "No responders"
//!   means offline.
//! - `M` + sender length + sender + datagram (account): a call media datagram from a
//!   device on another node, delivered only to a device that routed the call naming
//!   that sender.

use std::time::Duration;

use async_nats::Subscriber;
use bytes::Bytes;
use tracing::debug;

use crate::storage::nats::token;

/// How long "is this device connected?" waits for the node that has it.
const PING_TIMEOUT: Duration = Duration::from_millis(500);

/// What one node tells the node where a device is connected.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Signal {
    Wake,
    Frame { except: Option<u32>, frame: Vec<u8> },
    LoggedOut,
    Replaced { instance: u64, conn: u64 },
    Ping,
    Media { from: String, datagram: Bytes },
}

impl Signal {
    fn encode(&self) -> Bytes {
        let mut out = Vec::new();
        match self {
            Self::Wake => out.push(b'W'),
            Self::Frame { except: None, frame } => {
                out.push(b'P');
                out.extend_from_slice(frame);
            }
            Self::Frame { except: Some(d), frame } => {
                out.push(b'O');
                out.extend_from_slice(&d.to_be_bytes());
                out.extend_from_slice(frame);
            }
            Self::LoggedOut => out.push(b'L'),
            Self::Replaced { instance, conn } => {
                out.push(b'R');
                out.extend_from_slice(&instance.to_be_bytes());
                out.extend_from_slice(&conn.to_be_bytes());
            }
            Self::Ping => out.push(b'Q'),
            Self::Media { from, datagram } => {
                out.push(b'M');
                out.push(u8::try_from(from.len()).unwrap_or(0));
                out.extend_from_slice(from.as_bytes());
                out.extend_from_slice(datagram);
            }
        }
        Bytes::from(out)
    }

    pub(crate) fn decode(b: &[u8]) -> Option<Self> {
        let (&tag, rest) = b.split_first()?;
        Some(match tag {
            b'W' if rest.is_empty() => Self::Wake,
            b'P' => Self::Frame { except: None, frame: rest.to_vec() },
            b'O' => {
                let (d, frame) = rest.split_at_checked(4)?;
                let except = u32::from_be_bytes(d.try_into().ok()?);
                Self::Frame { except: Some(except), frame: frame.to_vec() }
            }
            b'L' if rest.is_empty() => Self::LoggedOut,
            b'R' if rest.len() == 16 => {
                let (i, c) = rest.split_at(8);
                Self::Replaced {
                    instance: u64::from_be_bytes(i.try_into().ok()?),
                    conn: u64::from_be_bytes(c.try_into().ok()?),
                }
            }
            b'Q' if rest.is_empty() => Self::Ping,
            b'M' => {
                let (&len, rest) = rest.split_first()?;
                let (from, datagram) = rest.split_at_checked(usize::from(len))?;
                let from = std::str::from_utf8(from).ok().filter(|f| !f.is_empty())?;
                Self::Media { from: from.to_owned(), datagram: Bytes::copy_from_slice(datagram) }
            }
            _ => return None,
        })
    }
}

/// This node's end of the bus.
#[derive(Debug)]
pub(crate) struct Bus {
    client: async_nats::Client,
    /// Random per process: connection ids restart at 1 in every process, and two nodes
    /// may share a name.
    instance: u64,
}

/// The subject every connected device of the account follows.
fn account_subject(user_id: &str) -> String {
    format!("letstalk.dev.{}", token(user_id))
}

/// The subject of one device of the account.
fn device_subject(user_id: &str, device_id: u32) -> String {
    format!("letstalk.dev.{}.{device_id}", token(user_id))
}

impl Bus {
    pub(crate) fn new(client: async_nats::Client) -> Self {
        Self { client, instance: rand::random() }
    }

    /// Tells every node where a device of `user_id` is connected, if any.
    pub(crate) async fn send_account(&self, user_id: &str, signal: &Signal) {
        self.publish(account_subject(user_id), signal).await;
    }

    /// Tells the node where `user_id`'s device `device_id` is connected, if any.
    pub(crate) async fn send_device(&self, user_id: &str, device_id: u32, signal: &Signal) {
        self.publish(device_subject(user_id, device_id), signal).await;
    }

    async fn publish(&self, subject: String, signal: &Signal) {
        if let Err(e) = self.client.publish(subject, signal.encode()).await {
            debug!(error = %e, "cluster bus: publish failed");
        }
    }

    /// Whether a device of `user_id` is connected to some node.
    pub(crate) async fn online(&self, user_id: &str) -> bool {
        let ask = self.client.request(account_subject(user_id), Signal::Ping.encode());
        matches!(tokio::time::timeout(PING_TIMEOUT, ask).await, Ok(Ok(_)))
    }

    /// Takes the device's subjects for connection `conn`: subscribes to the account's
    /// and the device's, then tells any other node still holding an older connection of
    /// the device to drop it.
    pub(crate) async fn claim(
        &self,
        user_id: &str,
        device_id: u32,
        conn: u64,
    ) -> Result<(Subscriber, Subscriber), String> {
        let account =
            self.client.subscribe(account_subject(user_id)).await.map_err(|e| e.to_string())?;
        let device = self
            .client
            .subscribe(device_subject(user_id, device_id))
            .await
            .map_err(|e| e.to_string())?;
        self.send_device(user_id, device_id, &Signal::Replaced { instance: self.instance, conn })
            .await;
        // Once flushed, the server has the subscriptions: a ping from any node finds them.
        self.client.flush().await.map_err(|e| e.to_string())?;
        Ok((account, device))
    }

    /// This process's random instance number, sent with `Replaced`.
    pub(crate) fn instance(&self) -> u64 {
        self.instance
    }

    /// Answers a `Ping` whose reply subject is `reply`: the device is connected here.
    pub(crate) async fn answer_ping(&self, reply: async_nats::Subject) {
        let _ = self.client.publish(reply, Bytes::from_static(b"1")).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_round_trip_and_garbage_is_refused() {
        for s in [
            Signal::Wake,
            Signal::Frame { except: None, frame: vec![1, 2, 3] },
            Signal::Frame { except: Some(2), frame: vec![1, 2, 3] },
            Signal::LoggedOut,
            Signal::Replaced { instance: 7, conn: u64::MAX },
            Signal::Ping,
            Signal::Media { from: "alice".into(), datagram: Bytes::from_static(b"\x01frame") },
        ] {
            assert_eq!(Signal::decode(&s.encode()), Some(s));
        }
        for bad in
            [&b""[..], b"X", b"W1", b"R123", b"Qx", b"M", b"M\x09abc", b"M\x00x", b"O\x00\x01"]
        {
            assert_eq!(Signal::decode(bad), None);
        }
    }
}
