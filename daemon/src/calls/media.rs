//! The media path of live calls: sockets beside the IPC socket, sealed frames as paced
//! QUIC datagrams through the relay.

use super::*;

// ---------------------------------------------------------------------------------------
// Media

/// Where the media sockets of calls live: `calls/` beside the IPC socket.
pub fn socket_dir(daemon: &Daemon) -> PathBuf {
    crate::files::runtime_dir(daemon).join("calls")
}

/// Sets up this side's media for a live call: the socket (0600), the relay route, and
/// the task moving frames. Returns the socket's path.
pub async fn start_media(
    daemon: &Arc<Daemon>,
    relay: &Arc<dyn RelayApi>,
    call: &Call,
    key: CallKey,
) -> Result<PathBuf, String> {
    if let Some(l) = daemon.calls.lock().get(&call.call_id) {
        return Ok(l.socket.clone());
    }
    let route = route_id(&call.call_id).ok_or("bad call id")?;
    let dir = socket_dir(daemon);
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let path = dir.join(format!("{}.sock", uuid::Uuid::from_bytes(route).simple()));
    let _ = std::fs::remove_file(&path);
    let listener = tokio_seqpacket::UnixSeqpacketListener::bind(&path)
        .map_err(|e| format!("media socket {}: {e}", path.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("media socket {}: {e}", path.display()))?;
    }
    crate::relay::expect_ok(
        relay.as_ref(),
        Request::CallRoute { call_id: route, peer: call.peer.clone() },
    )
    .await
    .map_err(|e| {
        let _ = std::fs::remove_file(&path);
        e.to_string()
    })?;
    let me = match call.direction {
        Direction::Out => CALLER,
        Direction::In => callee_sender(relay.device_id().unwrap_or(1)),
    };
    let sealer = FrameSealer::new(&key, me).map_err(|e| e.to_string())?;
    let opener = FrameOpener::new(&key);
    let cancel = daemon.calls.root.child_token();
    let (inbound, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
    daemon.calls.lock().insert(
        call.call_id.clone(),
        Live { route, cancel: cancel.clone(), inbound, socket: path.clone() },
    );
    let media = Media { relay: relay.clone(), route, direction: call.direction, sealer, opener };
    tokio::spawn(media.run(listener, inbound_rx, cancel));
    tracing::info!(media = ?call.media, "call media up");
    Ok(path)
}

/// Ends a call as failed here and tells the peer; the event's seq.
pub fn failed(
    tx: &Connection,
    call_id: &str,
    peer: &str,
    now: i64,
) -> Result<Option<u64>, StoreError> {
    let seq = ended(tx, call_id, CallEndReason::Failed, now)?;
    let end = Content::CallEnd { call_id: call_id.to_owned(), reason: "failed".into() };
    signal(tx, peer, &end, now)?;
    Ok(seq)
}

/// Tears down the media of every call (restore defaults).
pub fn stop_all_media(daemon: &Daemon, relay: Option<&Arc<dyn RelayApi>>) {
    let ids: Vec<String> = daemon.calls.lock().keys().cloned().collect();
    for id in ids {
        stop_media(daemon, relay, &id);
    }
}

/// Tears down this side's media for a call: the task, the socket, the relay route.
pub fn stop_media(daemon: &Daemon, relay: Option<&Arc<dyn RelayApi>>, call_id: &str) {
    let live = daemon.calls.lock().remove(call_id);
    let Some(live) = live else { return };
    live.cancel.cancel();
    let _ = std::fs::remove_file(&live.socket);
    if let Some(relay) = relay {
        let relay = relay.clone();
        tokio::spawn(async move {
            let _ = crate::relay::expect_ok(
                relay.as_ref(),
                Request::CallUnroute { call_id: live.route },
            )
            .await;
        });
    }
    tracing::info!("call media down");
}

pub(super) struct Media {
    relay: Arc<dyn RelayApi>,
    route: [u8; 16],
    /// Which side of the call this is (whose frames are the peer's, `from_peer`).
    direction: Direction,
    sealer: FrameSealer,
    opener: FrameOpener,
}

impl Media {
    async fn run(
        self,
        mut listener: tokio_seqpacket::UnixSeqpacketListener,
        mut inbound: mpsc::Receiver<bytes::Bytes>,
        cancel: CancellationToken,
    ) {
        let Self { relay, route, direction, sealer, mut opener } = self;
        let (pace_tx, pace_rx) = mpsc::channel::<(Instant, Vec<u8>)>(PACE_QUEUE);
        tokio::spawn(pacer(relay, route, sealer, pace_rx, cancel.clone()));
        let mut socket: Option<tokio_seqpacket::UnixSeqpacket> = None;
        let mut last_delivered: Option<u64> = None;
        let mut buf = vec![0u8; 2048];
        let (mut late, mut bad) = (0u64, 0u64);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                accepted = listener.accept(), if socket.is_none() => match accepted {
                    Ok(s) => socket = Some(s),
                    Err(e) => {
                        tracing::warn!(error = %e, "media socket accept");
                        break;
                    }
                },
                n = async { match &socket { Some(s) => s.recv(&mut buf).await, None => std::future::pending().await } } => {
                    match n {
                        // The frontend went away: wait for it to connect again.
                        Err(_) => socket = None,
                        Ok(info) if info.bytes_read() == 0 => socket = None,
                        Ok(info) => {
                            let n = info.bytes_read();
                            let frame = buf.get(..n).unwrap_or_default();
                            if info.truncated()
                                || n > MAX_MEDIA_FRAME
                                || !matches!(frame.first(), Some(0 | 1))
                            {
                                bad += 1;
                                continue;
                            }
                            if pace_tx.try_send((Instant::now(), frame.to_vec())).is_err() {
                                late += 1;
                            }
                        }
                    }
                }
                Some(d) = inbound.recv() => {
                    let Ok(parsed) = MediaDatagram::decode(&d) else { bad += 1; continue };
                    let Ok(opened) = opener.open(parsed.sealed) else { bad += 1; continue };
                    if !from_peer(direction, opened.sender) {
                        bad += 1;
                        continue;
                    }
                    // Order is kept: a frame older than one already delivered is late.
                    if last_delivered.is_some_and(|l| opened.counter <= l) {
                        late += 1;
                        continue;
                    }
                    last_delivered = Some(opened.counter);
                    if let Some(s) = &socket {
                        // Never wait for the frontend: a frame it cannot take now is lost.
                        match s.send(&opened.payload).now_or_never() {
                            Some(Ok(_)) => {}
                            _ => late += 1,
                        }
                    }
                }
            }
        }
        if late + bad > 0 {
            tracing::debug!(late, bad, "media frames dropped");
        }
    }
}

/// Seals and sends queued frames, spaced by [`PACE_GAP`] (a burst of [`PACE_BURST`]
/// may go at once): unpaced datagram bursts lose far more on real paths. A frame that
/// waited over [`MAX_FRAME_AGE`] is dropped.
pub(super) async fn pacer(
    relay: Arc<dyn RelayApi>,
    route: [u8; 16],
    mut sealer: FrameSealer,
    mut rx: mpsc::Receiver<(Instant, Vec<u8>)>,
    cancel: CancellationToken,
) {
    let mut next = Instant::now();
    let mut dropped = 0u64;
    loop {
        let (queued_at, frame) = tokio::select! {
            () = cancel.cancelled() => break,
            f = rx.recv() => match f { Some(f) => f, None => break },
        };
        if queued_at.elapsed() > MAX_FRAME_AGE {
            dropped += 1;
            continue;
        }
        let now = Instant::now();
        let earliest = next.checked_sub(PACE_GAP * PACE_BURST).unwrap_or(next);
        if now < earliest {
            tokio::time::sleep_until((earliest).into()).await;
        }
        next = next.max(now - PACE_GAP * PACE_BURST) + PACE_GAP;
        let Ok(sealed) = sealer.seal(&frame) else { break };
        let Ok(datagram) = (MediaDatagram { call_id: route, sealed: &sealed }).encode() else {
            dropped += 1;
            continue;
        };
        if relay.send_datagram(datagram).is_err() {
            dropped += 1;
        }
    }
    if dropped > 0 {
        tracing::debug!(dropped, "outgoing media frames dropped");
    }
}

// ---------------------------------------------------------------------------------------
// The manager

/// Dispatches received datagrams to their calls, enforces the ring timeout, and tears
/// down media of calls that ended (on either side), until `cancel`.
pub async fn run(daemon: Arc<Daemon>, relay: Arc<dyn RelayApi>, cancel: CancellationToken) {
    let Some(mut datagrams) = relay.take_datagrams() else { return };
    // Media of calls live before a restart cannot resume (the frontend's socket is gone):
    // such calls end as failed on start.
    fail_stale(&daemon).await;
    // The manager looks again every RECONCILE_EVERY only while a call is not over (a
    // ring timeout to enforce, media to tear down when the peer hangs up); with no call
    // it waits for a wake (signalling received, a call started or answered here), so an
    // idle daemon has no timer here.
    let mut busy = reconcile(&daemon, &relay).await;
    loop {
        let recheck = async {
            if busy {
                tokio::time::sleep(RECONCILE_EVERY).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            Some(d) = datagrams.recv() => {
                let Ok(parsed) = MediaDatagram::decode(&d) else { continue };
                let target = daemon
                    .calls
                    .lock()
                    .values()
                    .find(|l| l.route == parsed.call_id)
                    .map(|l| l.inbound.clone());
                if let Some(tx) = target {
                    let _ = tx.try_send(d);
                }
            }
            () = daemon.calls.wake.notified() => busy = reconcile(&daemon, &relay).await,
            () = recheck => busy = reconcile(&daemon, &relay).await,
        }
    }
    let ids: Vec<String> = daemon.calls.lock().keys().cloned().collect();
    for id in ids {
        stop_media(&daemon, None, &id);
    }
}

pub(super) async fn fail_stale(daemon: &Arc<Daemon>) {
    let seqs = daemon
        .store
        .call(|c| {
            let tx = c.transaction()?;
            let ids: Vec<(String, String)> = tx
                .prepare_cached("SELECT call_id, peer FROM calls WHERE state = 'active'")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let mut last = None;
            let now = now_ms();
            for (id, peer) in ids {
                last = failed(&tx, &id, &peer, now)?.or(last);
            }
            tx.commit()?;
            Ok(last)
        })
        .await;
    if let Ok(Some(seq)) = seqs {
        daemon.bus.published(seq);
        daemon.wake_sender();
    }
}

/// Ends calls that rang too long and stops the media of calls that ended; `true` while
/// some call is not over (or the store could not be read: look again soon).
pub(super) async fn reconcile(daemon: &Arc<Daemon>, relay: &Arc<dyn RelayApi>) -> bool {
    let timeout = i64::try_from(daemon.config.ring_timeout.as_millis()).unwrap_or(i64::MAX);
    let outcome = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let now = now_ms();
            let expired: Vec<(String, String, String)> = tx
                .prepare_cached(
                    "SELECT call_id, peer, direction FROM calls
                     WHERE state = 'ringing' AND started_at <= ?1",
                )?
                .query_map(params![now - timeout], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?;
            let mut last = None;
            let mut queued = false;
            for (id, peer, direction) in expired {
                last = ended(&tx, &id, CallEndReason::Missed, now)?.or(last);
                if direction == "out" {
                    signal(
                        &tx,
                        &peer,
                        &Content::CallEnd { call_id: id, reason: "missed".into() },
                        now,
                    )?;
                    queued = true;
                }
            }
            let live: Vec<String> = tx
                .prepare_cached("SELECT call_id FROM calls WHERE state != 'ended'")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            tx.commit()?;
            Ok((last, queued, live))
        })
        .await;
    let Ok((last, queued, live)) = outcome else { return true };
    if let Some(seq) = last {
        daemon.bus.published(seq);
    }
    if queued {
        daemon.wake_sender();
    }
    let gone: Vec<String> =
        daemon.calls.lock().keys().filter(|id| !live.contains(id)).cloned().collect();
    for id in gone {
        stop_media(daemon, Some(relay), &id);
    }
    !live.is_empty()
}
