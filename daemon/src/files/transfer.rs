//! Uploads and downloads on blob streams of their own, resuming where the relay's or the
//! local copy ends.

use super::*;

// ---------------------------------------------------------------------------------------
// The worker and the transfers

/// Reads one answer frame from a blob stream.
pub(super) async fn read_response(
    recv: &mut (impl tokio::io::AsyncRead + Unpin + ?Sized),
) -> Result<Response, TransferError> {
    let mut prefix = [0u8; LEN_PREFIX];
    recv.read_exact(&mut prefix).await.map_err(|_| TransferError::Unavailable)?;
    let len = letstalk_wire::frame_len(prefix, MAX_FRAME_LEN)
        .map_err(|e| TransferError::io("relay answer", e))?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|_| TransferError::Unavailable)?;
    Response::decode(&body).map_err(|e| TransferError::io("relay answer", e))
}

pub(super) fn refused(kind: WireKind, message: String) -> TransferError {
    match kind {
        WireKind::NotFound => TransferError::Gone,
        WireKind::Blocked => TransferError::Blocked,
        WireKind::Internal | WireKind::UnknownDevice | WireKind::Unauthenticated => {
            TransferError::Unavailable
        }
        _ => TransferError::Io(format!("relay: {message}")),
    }
}

pub(super) fn relay_err(e: RelayError) -> TransferError {
    match e {
        RelayError::Refused { kind, message, .. } => refused(kind, message),
        _ => TransferError::Unavailable,
    }
}

/// Writes a `file.progress` event (and the bytes reached) at most every
/// [`PROGRESS_EVERY`], and always for the last step.
pub(super) struct Progress<'a> {
    daemon: &'a Arc<Daemon>,
    message_id: String,
    direction: TransferDirection,
    size: u64,
    last: Option<Instant>,
}

impl Progress<'_> {
    async fn report(&mut self, blob_bytes: u64, force: bool) {
        if !force && self.last.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
            return;
        }
        self.last = Some(Instant::now());
        let body = EventBody::FileProgress {
            message_id: self.message_id.clone(),
            direction: self.direction,
            bytes: plain_progress(blob_bytes, self.size),
            total: self.size,
        };
        let id = self.message_id.clone();
        let seq = self
            .daemon
            .store
            .call(move |c| {
                let tx = c.transaction()?;
                tx.prepare_cached("UPDATE files SET bytes = ?2 WHERE message_id = ?1")?
                    .execute(params![id, blob_bytes as i64])?;
                let seq = events::append(&tx, &body, now_ms())?;
                tx.commit()?;
                Ok(seq)
            })
            .await;
        if let Ok(seq) = seq {
            self.daemon.bus.published(seq);
        }
    }
}

pub(super) async fn upload(
    daemon: &Arc<Daemon>,
    relay: &Arc<dyn RelayApi>,
    row: &FileRow,
) -> Result<(), TransferError> {
    let me = daemon.user().ok_or(TransferError::Unavailable)?;
    let id = row.local_id().ok_or(TransferError::InvalidId)?;
    let path = encrypted_path(&daemon.config.data_dir, &id);
    let stat = relay.request(Request::BlobStat { owner: me.clone(), blob_id: row.blob_id }).await;
    let offset = match stat.map_err(relay_err)? {
        Response::Blob { size, stored } if size == row.blob_size => stored,
        Response::Blob { .. } => return Err(TransferError::Io("blob size mismatch".into())),
        Response::Error { kind: WireKind::NotFound, .. } => 0,
        Response::Error { kind, message, .. } => return Err(refused(kind, message)),
        _ => return Err(TransferError::Io("unexpected relay answer".into())),
    };
    let mut progress = Progress {
        daemon,
        message_id: row.message_id.clone(),
        direction: TransferDirection::Up,
        size: row.size,
        last: None,
    };
    if offset < row.blob_size {
        let (m, p) = (me.clone(), row.peer.clone());
        let recipients = daemon.store.call(move |c| blob_recipients(c, &m, &p)).await?;
        if recipients.is_empty() {
            // Alone in the group: nobody to fetch it.
            return Err(TransferError::Gone);
        }
        let header =
            Request::BlobPut { blob_id: row.blob_id, size: row.blob_size, offset, recipients };
        let mut stream = relay.open_stream(header).await.map_err(relay_err)?;
        let mut file =
            tokio::fs::File::open(&path).await.map_err(|e| TransferError::io("attachment", e))?;
        file.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| TransferError::io("attachment", e))?;
        let mut buf = vec![0u8; IO_CHUNK];
        let mut at = offset;
        progress.report(at, true).await;
        while at < row.blob_size {
            let n = file.read(&mut buf).await.map_err(|e| TransferError::io("attachment", e))?;
            if n == 0 {
                return Err(TransferError::Io("attachment shorter than its size".into()));
            }
            let data = buf.get(..n).unwrap_or_default();
            stream.send.write_all(data).await.map_err(|_| TransferError::Unavailable)?;
            at += n as u64;
            progress.report(at, false).await;
        }
        stream.send.shutdown().await.map_err(|_| TransferError::Unavailable)?;
        match read_response(&mut stream.recv).await? {
            Response::Blob { size, stored } if size == stored => {}
            Response::Error { kind, message, .. } => return Err(refused(kind, message)),
            _ => return Err(TransferError::Io("unexpected relay answer".into())),
        }
    }
    progress.report(row.blob_size, true).await;
    // The relay holds it all: the message with the key goes out, like any message.
    let r = row.clone();
    let seq = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let Some(current) = get(&tx, &r.message_id)? else { return Ok(None) };
            if current.transfer != FileTransfer::Uploading {
                return Ok(None);
            }
            let message = messages::get(&tx, &r.message_id)?;
            let now = now_ms();
            let (at, caption) = message.map(|m| (m.created_at, m.text)).unwrap_or((now, None));
            let content = Content::File {
                id: r.message_id.clone(),
                at,
                name: r.name.clone(),
                size: r.size,
                mime: r.mime.clone(),
                sha256: r.sha256.clone(),
                key: Secret(hex::encode(r.file_key.as_slice())),
                blob: hex::encode(r.blob_id),
                blob_size: r.blob_size,
                caption,
            };
            match r.peer.strip_prefix("group:") {
                Some(gid) => {
                    let Some((g, true)) = crate::groups::load(&tx, gid)? else { return Ok(None) };
                    let mut rng = rand_core::OsRng;
                    crate::groups::enqueue_text(
                        &tx,
                        &me,
                        &g,
                        &r.message_id,
                        &content,
                        &mut rng,
                        now,
                    )?;
                }
                None => {
                    crate::outbox::enqueue(&tx, &r.peer, Some(&r.message_id), &content, now)?;
                }
            }
            // Our account's other devices show it as sent, and fetch it (the blob waits
            // for them too, see `blob_recipients`).
            if r.peer != me && crate::outbox::own_devices_may_exist(&tx, &me)? {
                let to = conversation_of_peer(&r.peer);
                let copy = Content::SentFile { to, file: Box::new(content.clone()) };
                crate::outbox::enqueue(&tx, &me, None, &copy, now)?;
            }
            let seq = set_transfer(&tx, &r, FileTransfer::Uploaded, now)?;
            tx.commit()?;
            Ok(Some(seq))
        })
        .await?;
    if let Some(seq) = seq {
        daemon.bus.published(seq);
        daemon.wake_sender();
    }
    tracing::info!(size = row.size, resumed_at = offset, "file uploaded");
    Ok(())
}

/// Downloads `row`'s blob into the attachments directory, checked; with `plain`, the
/// checker also writes the plaintext beside `plain.path` as it decrypts, and renames it
/// there once the file is checked and recorded (one decryption in all).
pub(super) async fn download(
    daemon: &Arc<Daemon>,
    relay: &Arc<dyn RelayApi>,
    row: &FileRow,
    plain: Option<WriteTo>,
) -> Result<(), TransferError> {
    let data_dir = &daemon.config.data_dir;
    let id = row.local_id().ok_or(TransferError::InvalidId)?;
    let part = partial_path(data_dir, &id);
    let done = encrypted_path(data_dir, &id);
    create_private_dir(&data_dir.join(ATTACHMENTS))
        .map_err(|e| TransferError::io("attachments", e))?;
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&part)
        .await
        .map_err(|e| TransferError::io("attachment", e))?;
    let mut offset = file.metadata().await.map_err(|e| TransferError::io("attachment", e))?.len();
    if offset > row.blob_size {
        file.set_len(0).await.map_err(|e| TransferError::io("attachment", e))?;
        offset = 0;
    }
    let mut progress = Progress {
        daemon,
        message_id: row.message_id.clone(),
        direction: TransferDirection::Down,
        size: row.size,
        last: None,
    };
    // The check (decrypt and hash) runs beside the transfer on a blocking thread: it
    // reads what an earlier attempt kept, then every chunk as it arrives, writing the
    // plaintext to a temporary file beside `plain.path` if asked. Whatever ends this
    // early (an error, a cancel) drops that file, which removes it.
    let (check_tx, check_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    let (p, key) = (part.clone(), row.file_key.clone());
    let to = plain.as_ref().map(|w| w.path.clone());
    let checker = tokio::task::spawn_blocking(move || {
        let out =
            to.and_then(|d| PlainFile::create(&d).map_err(|e| plain_later("creating", &e)).ok());
        check_stream(&p, offset, &key, out, check_rx)
    });
    if offset < row.blob_size {
        let me = daemon.user().ok_or(TransferError::Unavailable)?;
        let owner = row.owner(&me).to_owned();
        let header = Request::BlobGet { owner, blob_id: row.blob_id, offset };
        let mut stream = relay.open_stream(header).await.map_err(relay_err)?;
        let _ = stream.send.shutdown().await;
        match read_response(&mut stream.recv).await? {
            Response::Blob { size, .. } if size == row.blob_size => {}
            Response::Blob { .. } => return Err(TransferError::Corrupt),
            Response::Error { kind, message, .. } => return Err(refused(kind, message)),
            _ => return Err(TransferError::Io("unexpected relay answer".into())),
        }
        tracing::info!(resume_at = offset, size = row.blob_size, "file download started");
        let mut buf = vec![0u8; IO_CHUNK];
        let mut at = offset;
        progress.report(at, true).await;
        while at < row.blob_size {
            // Gather a large buffer per file write (QUIC hands over about a packet at
            // a time); on an error, what was written is kept and the next attempt
            // resumes after it.
            let mut n = 0;
            let mut ended = false;
            while n < buf.len() && !ended {
                let Some(slice) = buf.get_mut(n..) else { break };
                match stream.recv.read(slice).await {
                    Ok(0) => ended = true,
                    Ok(k) => n += k,
                    Err(_) if n > 0 => ended = true,
                    Err(_) => {
                        let _ = file.flush().await;
                        return Err(TransferError::Unavailable);
                    }
                }
            }
            if n == 0 {
                let _ = file.flush().await;
                return Err(TransferError::Unavailable);
            }
            let data = buf.get(..n).unwrap_or_default();
            if at + n as u64 > row.blob_size {
                return Err(TransferError::Corrupt);
            }
            file.write_all(data).await.map_err(|e| TransferError::io("attachment", e))?;
            // A checker that stopped has found the bytes bad: its answer says so below.
            let _ = check_tx.send(data.to_vec()).await;
            at += n as u64;
            progress.report(at, false).await;
        }
    }
    drop(check_tx);
    file.flush().await.map_err(|e| TransferError::io("attachment", e))?;
    file.sync_all().await.map_err(|e| TransferError::io("attachment", e))?;
    drop(file);
    // Kept only if it decrypts and matches the SHA-256 from the end-to-end message.
    let checked = checker.await.map_err(|e| TransferError::io("checking", e))?;
    let clear = match checked {
        Ok(c) if c.sha256 == row.sha256 => c.plain,
        _ => {
            let _ = std::fs::remove_file(&part);
            return Err(TransferError::Corrupt);
        }
    };
    std::fs::rename(&part, &done).map_err(|e| TransferError::io("attachment", e))?;
    progress.report(row.blob_size, true).await;
    let r = row.clone();
    let seq = daemon
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            tx.prepare_cached("UPDATE files SET release = 1 WHERE message_id = ?1")?
                .execute(params![r.message_id])?;
            let seq = set_transfer(&tx, &r, FileTransfer::Done, now_ms())?;
            tx.commit()?;
            Ok(seq)
        })
        .await?;
    daemon.bus.published(seq);
    // Checked and recorded: the plaintext goes onto its path (it is synced already),
    // unless nobody waits for it any more (then it is removed, as before this step).
    if let (Some(f), Some(w)) = (clear, plain)
        && !w.written.is_closed()
    {
        match f.persist() {
            Ok(()) => {
                let _ = w.written.send(());
            }
            Err(e) => {
                plain_later("renaming", &e);
            }
        }
    }
    release(daemon, relay, &FileRow { release: true, ..row.clone() }).await;
    tracing::info!(size = row.size, "file downloaded and checked");
    Ok(())
}
