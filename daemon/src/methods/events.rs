//! `events.subscribe` and `events.unsubscribe`.

use std::sync::Arc;

use letstalk_ipc::types::{Empty, SubscribeParams, SubscribeResult};
use letstalk_ipc::{ErrorKind, RpcError};

use super::{Reply, SubscriptionStart, internal};
use crate::client::Connection;
use crate::{Daemon, events};

pub(super) async fn subscribe(daemon: &Arc<Daemon>, p: SubscribeParams) -> Result<Reply, RpcError> {
    let (last_seq, pruned_through) =
        daemon.store.call(|c| events::bounds(c)).await.map_err(internal)?;
    let cursor = match p.since {
        None => last_seq,
        Some(since) if since < pruned_through => {
            return Err(RpcError::new(
                ErrorKind::ResyncRequired,
                format!(
                    "events after {since} are no longer kept (oldest kept follows {pruned_through}); reload state and subscribe without since"
                ),
            ));
        }
        Some(since) if since > last_seq => {
            return Err(RpcError::new(
                ErrorKind::ResyncRequired,
                format!(
                    "since {since} is newer than the newest event {last_seq}: this daemon's history was reset; reload state and subscribe without since"
                ),
            ));
        }
        Some(since) => since,
    };
    let result = serde_json::to_value(SubscribeResult { last_seq })
        .map_err(|e| RpcError::internal(e.to_string()))?;
    Ok(Reply::Subscribe {
        result,
        start: SubscriptionStart { cursor, replay_until: last_seq, kinds: p.kinds },
    })
}

pub(super) fn unsubscribe(conn: &Connection, _: Empty) -> Result<Empty, RpcError> {
    crate::client::unsubscribe(conn);
    Ok(Empty {})
}
