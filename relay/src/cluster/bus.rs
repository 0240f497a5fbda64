//! The bus itself: [`Signal`], what one node tells another about a device, and [`Bus`],
//! this node's end (publish, ask whether a device is online, claim a device's subject).
//!
//! A signal on `letstalk.dev.<user>`, one byte of tag first:
//!
//! - `W`: its mailbox grew (a message was enqueued on another node): deliver.
//! - `P` + frame: a presence or profile push to write as is.
//! - `L`: the account logged in on another device: send `LoggedOut` and close.
//! - `R` + instance + connection: the same account now has a newer connection on
//!   another node (a reconnect, a failover): drop this one without announcing offline.
//! - `Q` (a request): is the device connected? "No responders" means offline.
//! - `M` + sender length + sender + datagram: a call media datagram from a device on
//!   another node, delivered only if this device routed the call naming that sender.

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
    Frame(Vec<u8>),
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
            Self::Frame(f) => {
                out.push(b'P');
                out.extend_from_slice(f);
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
            b'P' => Self::Frame(rest.to_vec()),
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

fn subject(user_id: &str) -> String {
    format!("letstalk.dev.{}", token(user_id))
}

impl Bus {
    pub(crate) fn new(client: async_nats::Client) -> Self {
        Self { client, instance: rand::random() }
    }

    /// Tells the node where `user_id` is connected, if any.
    pub(crate) async fn send(&self, user_id: &str, signal: &Signal) {
        if let Err(e) = self.client.publish(subject(user_id), signal.encode()).await {
            debug!(error = %e, "cluster bus: publish failed");
        }
    }

    /// Whether `user_id` is connected to some node.
    pub(crate) async fn online(&self, user_id: &str) -> bool {
        let ask = self.client.request(subject(user_id), Signal::Ping.encode());
        matches!(tokio::time::timeout(PING_TIMEOUT, ask).await, Ok(Ok(_)))
    }

    /// Takes the device's subject for connection `conn`: subscribes, then tells any
    /// other node still holding an older connection of the account to drop it.
    pub(crate) async fn claim(&self, user_id: &str, conn: u64) -> Result<Subscriber, String> {
        let sub = self.client.subscribe(subject(user_id)).await.map_err(|e| e.to_string())?;
        self.send(user_id, &Signal::Replaced { instance: self.instance, conn }).await;
        // Once flushed, the server has the subscription: a ping from any node finds it.
        self.client.flush().await.map_err(|e| e.to_string())?;
        Ok(sub)
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
            Signal::Frame(vec![1, 2, 3]),
            Signal::LoggedOut,
            Signal::Replaced { instance: 7, conn: u64::MAX },
            Signal::Ping,
            Signal::Media { from: "alice".into(), datagram: Bytes::from_static(b"\x01frame") },
        ] {
            assert_eq!(Signal::decode(&s.encode()), Some(s));
        }
        for bad in [&b""[..], b"X", b"W1", b"R123", b"Qx", b"M", b"M\x09abc", b"M\x00x"] {
            assert_eq!(Signal::decode(bad), None);
        }
    }
}
