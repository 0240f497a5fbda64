//! `system.*`: hello, schema and status.

use std::sync::Arc;

use letstalk_ipc::types::{
    Empty, Frontend, HelloParams, HelloResult, RelayState, RelayStatus, StatusResult,
};
use letstalk_ipc::{PROTOCOL_VERSION, RpcError};
use serde_json::Value;

use crate::client::Connection;
use crate::{Daemon, VERSION, now_ms};

pub(super) fn hello(
    daemon: &Arc<Daemon>,
    conn: &Connection,
    p: HelloParams,
) -> Result<HelloResult, RpcError> {
    if let Some(v) = p.protocol
        && v != PROTOCOL_VERSION
    {
        return Err(RpcError::invalid_params(
            "protocol",
            format!("protocol {v} is not supported; this daemon speaks {PROTOCOL_VERSION}"),
        ));
    }
    if let Some(client) = p.client {
        // The frontend's identity is kept for diagnostics; bound it like any input.
        let client: String = client.chars().take(256).collect();
        let mut frontends =
            daemon.frontends.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        frontends.insert(conn.id, Frontend { client: client.clone(), connected_at: now_ms() });
        // Remembered for diagnostics reports; off the answer's path.
        let d = daemon.clone();
        tokio::spawn(async move {
            let at = now_ms();
            if let Err(e) =
                d.store.call(move |c| crate::diagnostics::record_frontend(c, &client, at)).await
            {
                tracing::debug!(error = %e, "recording the frontend");
            }
        });
    }
    Ok(HelloResult {
        daemon: format!("letstalkd {VERSION}"),
        protocol: PROTOCOL_VERSION,
        methods: letstalk_ipc::methods::method_names(),
    })
}

pub(super) fn schema(_: Empty) -> Result<Value, RpcError> {
    Ok(letstalk_ipc::methods::openrpc(VERSION))
}

pub(super) async fn status(daemon: &Arc<Daemon>, _: Empty) -> Result<StatusResult, RpcError> {
    let relay = match &daemon.relay {
        None => RelayStatus { state: RelayState::Disabled, address: None, rtt_ms: None },
        Some(r) => {
            let (state, rtt_ms) = r.status();
            RelayStatus { state, address: Some(r.address()), rtt_ms }
        }
    };
    let queued_out = daemon.queued_out().await.map_err(super::internal)?;
    Ok(StatusResult {
        version: VERSION.to_owned(),
        user_id: daemon.user(),
        relay,
        network: daemon.network(),
        queued_out,
        uptime_s: daemon.started.elapsed().as_secs(),
    })
}
