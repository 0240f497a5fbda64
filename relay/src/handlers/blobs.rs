//! Blob requests: `BlobStat`, `BlobRelease` (a device the blob waits for is done) and
//! `BlobCancel` (the owner deletes it), and the `BlobPut` and `BlobGet` streams that carry a blob's bytes after
//! their request frame, resuming from an offset. The bytes and what is known of them are
//! kept by the blob store (`blobs.rs`).

use std::sync::Arc;

use letstalk_wire::{ErrorKind, LEN_PREFIX, MAX_BLOB_LEN, MAX_LIST, Request, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tracing::{debug, info, warn};

use crate::blobs::{Meta, account_of, backend, entry};
use crate::clock::now_ms;
use crate::ctx::ConnCtx;
use crate::fail::{Fail, Reply, fail, misrouted, storage_fail};
use crate::session::{require_auth, require_device};
use crate::state::State;
use crate::storage::Storage;
use crate::userid::normalize_user_id;

/// Bytes read or written per step while streaming a blob.
const IO_CHUNK: usize = 1024 * 1024;

/// `BlobStat`, `BlobRelease` or `BlobCancel`.
pub(super) async fn handle<S: Storage>(
    st: &Arc<State<S>>,
    ctx: &Arc<ConnCtx>,
    req: Request,
) -> Reply {
    match req {
        Request::BlobStat { owner, blob_id } => {
            let user = require_auth(st, ctx)?;
            stat(st, &user, &owner, blob_id).await
        }
        Request::BlobRelease { owner, blob_id } => {
            let (user, device) = require_device(st, ctx)?;
            release(st, &user, device, &owner, blob_id).await
        }
        Request::BlobCancel { blob_id } => {
            let user = require_auth(st, ctx)?;
            cancel(st, &user, blob_id).await
        }
        other => Err(misrouted(&other)),
    }
}

/// May `user` read `owner`'s blob? The owner's account and every device of a
/// recipient's account may (a device linked after the upload too).
fn may_read(user: &str, owner: &str, meta: &Meta) -> bool {
    user == owner || meta.recipients.iter().any(|r| account_of(r) == user)
}

fn owner_arg(raw: &str) -> Result<String, Fail> {
    normalize_user_id(raw).ok_or_else(|| fail(ErrorKind::Invalid, "invalid owner"))
}

/// `BlobStat`.
async fn stat<S: Storage>(
    st: &Arc<State<S>>,
    user: &str,
    owner: &str,
    id: [u8; 16],
) -> Result<Response, Fail> {
    let owner = owner_arg(owner)?;
    let meta = st.blobs.meta(&owner, id).await?;
    let Some(meta) = meta.filter(|m| may_read(user, &owner, m)) else {
        return Err(fail(ErrorKind::NotFound, "no such blob"));
    };
    let stored = if meta.complete { meta.size } else { st.blobs.stored(&owner, &id).await };
    Ok(Response::Blob { size: meta.size, stored: stored.min(meta.size) })
}

/// `BlobRelease`: a device the blob waits for is done with it (deleted when no device is
/// left to fetch it). From a device of the owner's account it takes off that device's
/// entry only (the owner's other devices fetch what one of them sent): a release never
/// cancels, whoever sends it. Releasing what is gone is fine.
async fn release<S: Storage>(
    st: &Arc<State<S>>,
    user: &str,
    device: u32,
    owner: &str,
    id: [u8; 16],
) -> Result<Response, Fail> {
    let owner = owner_arg(owner)?;
    let Some(meta) = st.blobs.meta(&owner, id).await? else { return Ok(Response::Ok) };
    if !may_read(user, &owner, &meta) {
        return Err(fail(ErrorKind::NotFound, "no such blob"));
    }
    let left = st.blobs.release_recipient(&owner, id, user, Some(device)).await?;
    if left == 0 {
        st.blobs.delete(&owner, id).await?;
        info!(size = meta.size, "blob fetched by every recipient: deleted");
    }
    Ok(Response::Ok)
}

/// `BlobCancel`: the owner deletes its blob at once. Also when nothing is here yet: an
/// upload may be on its way, and it is refused from now on.
async fn cancel<S: Storage>(
    st: &Arc<State<S>>,
    owner: &str,
    id: [u8; 16],
) -> Result<Response, Fail> {
    st.blobs.mark_cancelled(owner, id);
    if let Some(meta) = st.blobs.meta(owner, id).await? {
        st.blobs.delete(owner, id).await?;
        info!(size = meta.size, "blob cancelled by its owner");
    }
    Ok(Response::Ok)
}

/// Serves a `BlobPut` or `BlobGet` stream to its end: the answer frame and, for a get,
/// the bytes.
pub(super) async fn serve_stream<S: Storage>(
    st: &Arc<State<S>>,
    ctx: &Arc<ConnCtx>,
    req: Request,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let result = match require_device(st, ctx) {
        Err(f) => Err(f),
        Ok((user, device)) => match req {
            Request::BlobPut { blob_id, size, offset, recipients } => {
                let up = Upload { owner: &user, device, id: blob_id, size, offset };
                let r = put(st, up, recipients, &mut recv).await;
                if st.blobs.is_cancelled(&user, blob_id) {
                    // Cancelled while it streamed in: whatever arrived goes.
                    let _ = st.blobs.delete(&user, blob_id).await;
                    Err(fail(ErrorKind::NotFound, "the blob was cancelled"))
                } else {
                    r
                }
            }
            Request::BlobGet { owner, blob_id, offset } => {
                match get(st, &user, &owner, blob_id, offset, &mut send).await {
                    // The answer and the bytes are written: done.
                    Ok(None) => {
                        let _ = send.finish();
                        return;
                    }
                    Ok(Some(r)) => Ok(r),
                    Err(f) => Err(f),
                }
            }
            _ => Err(fail(ErrorKind::Invalid, "not a blob stream request")),
        },
    };
    let response = result.unwrap_or_else(Response::from);
    // Whatever the client still sends is not read: stop it.
    let _ = recv.stop(0u32.into());
    if let Ok(frame) = response.encode()
        && send.write_all(&frame).await.is_ok()
    {
        let _ = send.finish();
    }
}

/// Who uploads which blob, and from where on.
struct Upload<'a> {
    owner: &'a str,
    /// The uploading device.
    device: u32,
    id: [u8; 16],
    size: u64,
    offset: u64,
}

/// A `BlobPut`: the recipients' devices it waits for, then the bytes. The owner's own
/// account may be among the recipients: the blob then waits for the owner's other
/// devices too (they show what this one sent), never for the uploading device.
async fn put<S: Storage>(
    st: &Arc<State<S>>,
    up: Upload<'_>,
    recipients: Vec<String>,
    recv: &mut quinn::RecvStream,
) -> Result<Response, Fail> {
    let Upload { owner, device: uploader, id, size, offset } = up;
    if size > MAX_BLOB_LEN {
        return Err(fail(ErrorKind::TooLarge, "blob over the size limit"));
    }
    if recipients.is_empty() || recipients.len() > MAX_LIST {
        return Err(fail(ErrorKind::Invalid, "a blob needs 1 to 1000 recipients"));
    }
    let mut recips = Vec::with_capacity(recipients.len());
    for r in &recipients {
        recips.push(
            normalize_user_id(r).ok_or_else(|| fail(ErrorKind::Invalid, "invalid recipient"))?,
        );
    }
    recips.sort_unstable();
    recips.dedup();
    // Recipients who block the owner never get to fetch it; when that is all of them
    // (the owner's own account aside), the upload is refused as their messages would be.
    let others = recips.iter().filter(|r| *r != owner).count();
    let mut allowed = Vec::with_capacity(recips.len());
    for r in recips {
        if r == owner || !st.storage.blocks(&r).await.map_err(storage_fail)?.refuses(owner) {
            allowed.push(r);
        }
    }
    if others > 0 && allowed.iter().all(|r| r == owner) {
        return Err(fail(ErrorKind::Blocked, "the recipient blocks you"));
    }
    // One entry per device the recipient has now: the blob waits for each of them (for
    // the owner's account, each but the uploading device).
    let mut recips = Vec::with_capacity(allowed.len());
    for r in allowed {
        let own = r == owner;
        match st.storage.devices(&r).await.map_err(storage_fail)? {
            Some(devices) if !devices.is_empty() => recips.extend(
                devices
                    .iter()
                    .filter(|d| !own || d.device_id != uploader)
                    .map(|d| entry(&r, d.device_id)),
            ),
            _ if own => {}
            _ => recips.push(r),
        }
    }
    let blobs = &st.blobs;
    let Some(_mark) = blobs.begin_upload(owner, id) else {
        return Err(fail(ErrorKind::Conflict, "this blob is being uploaded on another stream"));
    };
    if blobs.is_cancelled(owner, id) {
        return Err(fail(ErrorKind::NotFound, "the blob was cancelled"));
    }

    // Already complete in the shared store (a retransmit after the answer was lost).
    if let Some(shared) = blobs.shared_meta(owner, &id).await? {
        if shared.size != size {
            return Err(fail(ErrorKind::Conflict, "a blob with this id and another size exists"));
        }
        return Ok(Response::Blob { size, stored: size });
    }
    let meta = Meta { size, complete: true, recipients: recips.clone() };
    // Create the row (or check it matches), within the owner's quota.
    let existing = blobs.reserve(owner, id, size, recips, now_ms()).await?;
    match existing {
        Some((s, _)) if u64::try_from(s).ok() != Some(size) => {
            return Err(fail(ErrorKind::Conflict, "a blob with this id and another size exists"));
        }
        Some((_, true)) => {
            // Complete here but not yet shared (the move failed last time): move it now.
            blobs.publish(owner, id, &meta).await?;
            return Ok(Response::Blob { size, stored: size });
        }
        _ => {}
    }

    let path = blobs.path(owner, &id);
    let io = |e: std::io::Error| backend(format!("{}: {e}", path.display()));
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(&path)
        .await
        .map_err(io)?;
    let held = file.metadata().await.map_err(io)?.len();
    if offset > held {
        return Err(fail(
            ErrorKind::Invalid,
            format!("offset {offset} is past the {held} bytes held: resume from there"),
        ));
    }
    file.set_len(offset).await.map_err(io)?;
    file.seek(std::io::SeekFrom::Start(offset)).await.map_err(io)?;
    let mut at = offset;
    // QUIC hands data over about a packet at a time: gather a large buffer before each
    // file write, or the blocking-pool round trip per write caps the rate.
    let mut buf = vec![0u8; IO_CHUNK];
    loop {
        let (filled, ended) = match read_full(recv, &mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // The uploader went away: keep what arrived, it resumes from there.
                let _ = file.flush().await;
                debug!(error = %e, at, "blob upload interrupted");
                return Err(fail(ErrorKind::Internal, "upload interrupted"));
            }
        };
        let end = at.saturating_add(filled as u64);
        if end > size {
            let _ = file.flush().await;
            let _ = file.set_len(at).await;
            return Err(fail(ErrorKind::Invalid, "more bytes than the blob's size"));
        }
        file.write_all(buf.get(..filled).unwrap_or_default()).await.map_err(io)?;
        at = end;
        if ended {
            break;
        }
    }
    file.flush().await.map_err(io)?;
    if at < size {
        return Err(fail(ErrorKind::Invalid, format!("stream ended at {at} of {size} bytes")));
    }
    // Durable before it is acknowledged, like a message.
    file.sync_all().await.map_err(io)?;
    blobs.mark_complete(owner, id).await?;
    blobs.publish(owner, id, &meta).await?;
    info!(size, resumed_at = offset, "blob stored");
    Ok(Response::Blob { size, stored: size })
}

/// Reads until `buf` is full or the stream ends: (bytes read, ended). On an error, what
/// this call read is not written; the uploader resumes from what was.
async fn read_full(
    recv: &mut quinn::RecvStream,
    buf: &mut [u8],
) -> Result<(usize, bool), quinn::ReadError> {
    let mut filled = 0;
    while filled < buf.len() {
        let Some(slice) = buf.get_mut(filled..) else { break };
        match recv.read(slice).await? {
            Some(n) => filled += n,
            None => return Ok((filled, true)),
        }
    }
    Ok((filled, false))
}

/// Writes the `Blob` answer and the bytes from `offset`; `Ok(None)` when done, or an
/// answer to send instead (an error).
async fn get<S: Storage>(
    st: &Arc<State<S>>,
    user: &str,
    owner: &str,
    id: [u8; 16],
    offset: u64,
    send: &mut quinn::SendStream,
) -> Result<Option<Response>, Fail> {
    let owner = owner_arg(owner)?;
    let meta = st.blobs.meta(&owner, id).await?;
    let Some(meta) = meta.filter(|m| may_read(user, &owner, m)) else {
        return Err(fail(ErrorKind::NotFound, "no such blob"));
    };
    if !meta.complete {
        return Err(fail(ErrorKind::NotFound, "the blob is not complete yet"));
    }
    if offset > meta.size {
        return Err(fail(ErrorKind::Invalid, "offset past the end of the blob"));
    }
    let mut file = st.blobs.open_at(&owner, id, offset).await?;
    let Ok(head) = (Response::Blob { size: meta.size, stored: meta.size }).encode() else {
        return Err(fail(ErrorKind::Internal, "encoding"));
    };
    debug_assert!(head.len() > LEN_PREFIX);
    if send.write_all(&head).await.is_err() {
        return Ok(None);
    }
    let mut buf = vec![0u8; IO_CHUNK];
    let mut left = meta.size - offset;
    while left > 0 {
        let want = usize::try_from(left.min(IO_CHUNK as u64)).unwrap_or(IO_CHUNK);
        let Some(slice) = buf.get_mut(..want) else { break };
        let n = file.read(slice).await.map_err(backend)?;
        if n == 0 {
            warn!("blob file shorter than its size");
            let _ = send.reset(1u32.into());
            return Ok(None);
        }
        if send.write_all(buf.get(..n).unwrap_or_default()).await.is_err() {
            debug!("blob download interrupted");
            return Ok(None);
        }
        left -= n as u64;
    }
    Ok(None)
}
