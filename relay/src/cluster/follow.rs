//! The follower: serves the bus subject of a device connected to this node, applying
//! each signal from the other nodes to the local device (wake its delivery, write a
//! push, hand over call media, answer pings, log out, give way to a newer connection).

use std::sync::Arc;

use async_nats::Subscriber;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::close;
use crate::cluster::bus::Signal;
use crate::hub::PushCmd;
use crate::media;
use crate::state::State;

/// Serves the device's subjects (the account's and its own) for connection `conn_id`
/// until the session ends or another node takes the device over.
pub(crate) async fn follow<S>(
    st: Arc<State<S>>,
    (user_id, device_id): (String, u32),
    conn_id: u64,
    (account, device): (Subscriber, Subscriber),
    cancel: CancellationToken,
) {
    let Some(bus) = st.hub.bus() else { return };
    let mut subs = futures::stream::select(account, device);
    loop {
        let msg = tokio::select! {
            () = cancel.cancelled() => break,
            m = subs.next() => match m {
                Some(m) => m,
                None => break,
            },
        };
        let Some(signal) = Signal::decode(&msg.payload) else {
            debug!("cluster bus: unknown signal ignored");
            continue;
        };
        match signal {
            Signal::Wake => st.hub.wake_local(&user_id, Some(device_id)),
            Signal::Frame { except, frame } => {
                if except != Some(device_id) && st.hub.is_current(&user_id, device_id, conn_id) {
                    st.hub.push_device(&user_id, device_id, frame);
                }
            }
            Signal::Media { from, datagram } => {
                media::deliver(&st, (&user_id, device_id), &from, datagram);
            }
            Signal::Ping => {
                if st.hub.is_current(&user_id, device_id, conn_id)
                    && let Some(reply) = msg.reply
                {
                    bus.answer_ping(reply).await;
                }
            }
            Signal::LoggedOut => {
                if let Some(old) = st.hub.take_if(&user_id, device_id, conn_id)
                    && old.tx.try_send(PushCmd::LoggedOut).is_err()
                {
                    old.conn.close(close::LOGGED_OUT.into(), b"logged out");
                }
                break;
            }
            Signal::Replaced { instance, conn } => {
                if (instance, conn) == (bus.instance(), conn_id) {
                    continue;
                }
                if let Some(old) = st.hub.take_if(&user_id, device_id, conn_id) {
                    debug!(user_id, device_id, "replaced by a connection on another node");
                    old.conn.close(close::REPLACED.into(), b"replaced by a newer connection");
                }
                break;
            }
        }
    }
    let (mut account, mut device) = subs.into_inner();
    let _ = account.unsubscribe().await;
    let _ = device.unsubscribe().await;
}
