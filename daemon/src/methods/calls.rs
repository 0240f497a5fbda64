//! `calls.*`: start, accept, reject, hang up, and the call log.

use std::sync::Arc;

use letstalk_crypto::media::CallKey;
use letstalk_ipc::types::{
    Call, CallEndReason, CallIdParams, CallResult, CallSocketResult, CallState, CallsList,
    CallsListParams, CallsStartParams, Direction,
};
use letstalk_ipc::{ErrorKind, RpcError};

use super::{internal, logged_in};
use crate::calls;
use crate::content::Content;
use crate::relay::RelayApi;
use crate::store::StoreError;
use crate::{Daemon, now_ms, validate};

fn relay(daemon: &Daemon) -> Result<Arc<dyn RelayApi>, RpcError> {
    daemon.relay.clone().ok_or_else(|| {
        RpcError::new(ErrorKind::RelayUnavailable, "no relay is configured on this daemon")
    })
}

fn vanished() -> StoreError {
    StoreError::Io { context: "call".into(), source: std::io::Error::other("vanished") }
}

async fn load(daemon: &Daemon, call_id: &str) -> Result<Call, RpcError> {
    let id = call_id.to_owned();
    daemon
        .store
        .call(move |c| calls::get(c, &id))
        .await
        .map_err(internal)?
        .ok_or_else(|| RpcError::new(ErrorKind::NotFound, "no such call"))
}

/// Media could not be set up: the call fails on both sides.
async fn media_failed(daemon: &Arc<Daemon>, call: &Call, why: String) -> RpcError {
    tracing::warn!(error = %why, "call media");
    let (id, peer) = (call.call_id.clone(), call.peer.clone());
    let seq = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let now = now_ms();
            let seq = calls::failed(&tx, &id, &peer, now)?;
            tx.commit()?;
            Ok(seq)
        })
        .await;
    if let Ok(Some(seq)) = seq {
        daemon.bus.published(seq);
    }
    daemon.wake_sender();
    if why.contains("cannot be reached") {
        RpcError::new(ErrorKind::RelayUnavailable, "the relay cannot be reached now")
    } else {
        RpcError::internal(format!("call media: {why}"))
    }
}

pub(super) async fn start(
    daemon: &Arc<Daemon>,
    p: CallsStartParams,
) -> Result<CallSocketResult, RpcError> {
    let me = logged_in(daemon).await?;
    let peer = match p.to.split_once(':') {
        Some(("user", id)) => validate::user_id("to", id)?,
        _ => return Err(RpcError::invalid_params("to", "to must be \"user:<user_id>\"")),
    };
    if peer == me {
        return Err(RpcError::invalid_params("to", "you cannot call yourself"));
    }
    let relay = relay(daemon)?;
    let key = CallKey::generate(&mut rand_core::OsRng);
    let call_id = uuid::Uuid::now_v7().to_string();
    let (id, pr, k) = (call_id.clone(), peer.clone(), key.clone());
    let media = p.media;
    let created = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            // Hook for blocking: a blocked contact cannot be called.
            let blocked = crate::contacts::is_blocked(&tx, &pr)?;
            if blocked {
                return Ok(Err(RpcError::new(ErrorKind::Blocked, "you block this contact")));
            }
            if let Err(e) = crate::trust::check_sendable(&tx, [pr.as_str()])? {
                return Ok(Err(e));
            }
            if calls::busy(&tx, None)? {
                return Ok(Err(RpcError::new(ErrorKind::Conflict, "already in a call")));
            }
            let now = now_ms();
            calls::insert(&tx, &id, &pr, Direction::Out, media, Some(&k), now)?;
            calls::signal(&tx, &pr, &calls::offer(&id, media, &k, now), now)?;
            let call = calls::get(&tx, &id)?.ok_or_else(vanished)?;
            tx.commit()?;
            Ok(Ok(call))
        })
        .await
        .map_err(internal)??;
    daemon.wake_sender();
    // The manager enforces the ring timeout: it looks at the calls while one rings.
    daemon.calls.wake();
    match calls::start_media(daemon, &relay, &created, key).await {
        Ok(path) => Ok(CallSocketResult {
            call: created,
            media_socket: path.to_string_lossy().into_owned(),
        }),
        Err(why) => Err(media_failed(daemon, &created, why).await),
    }
}

pub(super) async fn accept(
    daemon: &Arc<Daemon>,
    p: CallIdParams,
) -> Result<CallSocketResult, RpcError> {
    let me = logged_in(daemon).await?;
    let relay = relay(daemon)?;
    let call = load(daemon, &p.call_id).await?;
    if call.direction != Direction::In || call.state != CallState::Ringing {
        return Err(RpcError::new(ErrorKind::InvalidState, "the call is not ringing here"));
    }
    let id = call.call_id.clone();
    let key = daemon
        .store
        .call(move |c| calls::key(c, &id))
        .await
        .map_err(internal)?
        .ok_or_else(|| RpcError::new(ErrorKind::InvalidState, "the call has ended"))?;
    // Media first, so that the caller's first frames find the route.
    let path = calls::start_media(daemon, &relay, &call, key)
        .await
        .map_err(|e| RpcError::new(ErrorKind::RelayUnavailable, format!("call media: {e}")))?;
    let (id, peer) = (call.call_id.clone(), call.peer.clone());
    let answered = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let now = now_ms();
            let Some(seq) = calls::answered(&tx, &id, now)? else { return Ok(None) };
            let answer = Content::CallAnswer { call_id: id.clone() };
            calls::signal(&tx, &peer, &answer, now)?;
            calls::tell_own_devices(&tx, &me, &answer, now)?;
            let call = calls::get(&tx, &id)?.ok_or_else(vanished)?;
            tx.commit()?;
            Ok(Some((seq, call)))
        })
        .await
        .map_err(internal)?;
    let Some((seq, call)) = answered else {
        calls::stop_media(daemon, Some(&relay), &p.call_id);
        return Err(RpcError::new(ErrorKind::InvalidState, "the call has ended"));
    };
    daemon.bus.published(seq);
    daemon.wake_sender();
    Ok(CallSocketResult { call, media_socket: path.to_string_lossy().into_owned() })
}

/// Ends a call here with `reason` and tells the peer `told`.
async fn end(
    daemon: &Arc<Daemon>,
    call: &Call,
    reason: CallEndReason,
    told: &'static str,
) -> Result<Call, RpcError> {
    let (id, peer) = (call.call_id.clone(), call.peer.clone());
    // Declining a call that rings here declines it on our other devices too.
    let me = (call.direction == Direction::In && call.state == CallState::Ringing)
        .then(|| daemon.user())
        .flatten();
    let done = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let now = now_ms();
            let seq = calls::ended(&tx, &id, reason, now)?;
            if seq.is_some() {
                let end = Content::CallEnd { call_id: id.clone(), reason: told.into() };
                calls::signal(&tx, &peer, &end, now)?;
                if let Some(me) = &me {
                    calls::tell_own_devices(&tx, me, &end, now)?;
                }
            }
            let call = calls::get(&tx, &id)?.ok_or_else(vanished)?;
            tx.commit()?;
            Ok((seq, call))
        })
        .await
        .map_err(internal)?;
    if let Some(seq) = done.0 {
        daemon.bus.published(seq);
        daemon.wake_sender();
    }
    calls::stop_media(daemon, daemon.relay.as_ref(), &call.call_id);
    Ok(done.1)
}

pub(super) async fn reject(daemon: &Arc<Daemon>, p: CallIdParams) -> Result<CallResult, RpcError> {
    logged_in(daemon).await?;
    let call = load(daemon, &p.call_id).await?;
    if call.direction != Direction::In || call.state != CallState::Ringing {
        return Err(RpcError::new(ErrorKind::InvalidState, "the call is not ringing here"));
    }
    let call = end(daemon, &call, CallEndReason::Rejected, "rejected").await?;
    Ok(CallResult { call })
}

pub(super) async fn hangup(daemon: &Arc<Daemon>, p: CallIdParams) -> Result<CallResult, RpcError> {
    logged_in(daemon).await?;
    let call = load(daemon, &p.call_id).await?;
    if call.state == CallState::Ended {
        return Err(RpcError::new(ErrorKind::InvalidState, "the call has ended"));
    }
    // Hanging up a call ringing here is declining it.
    let (reason, told) = if call.direction == Direction::In && call.state == CallState::Ringing {
        (CallEndReason::Rejected, "rejected")
    } else {
        (CallEndReason::Hangup, "hangup")
    };
    let call = end(daemon, &call, reason, told).await?;
    Ok(CallResult { call })
}

pub(super) async fn list(daemon: &Arc<Daemon>, p: CallsListParams) -> Result<CallsList, RpcError> {
    logged_in(daemon).await?;
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(RpcError::invalid_params("limit", "limit must be 1 to 1000"));
    }
    let calls = daemon.store.call(move |c| calls::list(c, limit)).await.map_err(internal)?;
    Ok(CallsList { calls })
}
