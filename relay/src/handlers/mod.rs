//! The request router: what each request means is decided by the handler of its area,
//! and this module only sends it there. `Hello` and `Ping` are answered here; every other
//! request needs a `Hello` first, and each area's handler takes the account from the
//! session (a connection acts only for the account it authenticated as), never from the
//! request.
//!
//! - `account.rs`: authentication, logout, account deletion, password, own profile.
//! - `devices.rs`: the account's devices and the link rendezvous a new one joins by.
//! - `directory.rs`: other accounts' profiles and avatars, keys and prekey bundles.
//! - `presence.rs`: watches, blocks, contacts and the presence they let through.
//! - `messages.rs`: sends (copies per device, single, batch, group fan-out) and
//!   acknowledgements.
//! - `reports.rs`: diagnostics reports and feedback.
//! - `blobs.rs`: blob stat and release, and the upload and download streams.
//! - `calls.rs`: call media routes.
//!
//! The areas know nothing of each other: what they share (the session, the state, the
//! storage, refusals) is below them.

mod account;
mod blobs;
mod calls;
mod devices;
mod directory;
mod messages;
mod presence;
mod reports;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use letstalk_wire::{ErrorKind, PROTOCOL_VERSION, Request, Response};

use crate::ctx::ConnCtx;
use crate::fail::{Reply, fail};
use crate::state::State;
use crate::storage::Storage;

/// Answers one request that fits in one frame.
pub(crate) async fn dispatch<S: Storage>(
    st: &Arc<State<S>>,
    ctx: &Arc<ConnCtx>,
    req: Request,
) -> Response {
    route(st, ctx, req).await.unwrap_or_else(Response::from)
}

/// Whether `req` carries bytes on its stream (served by [`serve_stream`], not
/// [`dispatch`]).
pub(crate) fn is_stream_request(req: &Request) -> bool {
    matches!(req, Request::BlobPut { .. } | Request::BlobGet { .. })
}

/// Serves a request that carries bytes on its stream to the stream's end.
pub(crate) async fn serve_stream<S: Storage>(
    st: &Arc<State<S>>,
    ctx: &Arc<ConnCtx>,
    req: Request,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
) {
    blobs::serve_stream(st, ctx, req, send, recv).await;
}

async fn route<S: Storage>(st: &Arc<State<S>>, ctx: &Arc<ConnCtx>, req: Request) -> Reply {
    match req {
        Request::Hello { versions, client: _ } => {
            if !versions.contains(&PROTOCOL_VERSION) {
                return Err(fail(
                    ErrorKind::Unsupported,
                    format!("this relay speaks version {PROTOCOL_VERSION}"),
                ));
            }
            ctx.hello.store(true, Ordering::Relaxed);
            Ok(Response::HelloOk {
                version: PROTOCOL_VERSION,
                challenge: ctx.challenge,
                server: format!("letstalk-relay {} {}", env!("CARGO_PKG_VERSION"), st.node_id),
            })
        }
        Request::Ping { nonce } => Ok(Response::Pong { nonce }),
        _ if !ctx.hello.load(Ordering::Relaxed) => {
            Err(fail(ErrorKind::Invalid, "send Hello first"))
        }
        Request::Auth { .. }
        | Request::Register { .. }
        | Request::Login { .. }
        | Request::Logout
        | Request::DeleteAccount
        | Request::ChangePassword { .. }
        | Request::GetProfile
        | Request::UpdateProfile { .. } => account::handle(st, ctx, req).await,
        Request::LookupUser { .. }
        | Request::FetchAvatar { .. }
        | Request::UploadKeys { .. }
        | Request::KeyCount
        | Request::FetchBundle { .. }
        | Request::FetchBundles { .. } => directory::handle(st, ctx, req).await,
        Request::Watch { .. } | Request::SetBlocks { .. } | Request::SetContacts { .. } => {
            presence::handle(st, ctx, req).await
        }
        Request::Send { .. }
        | Request::SendBatch { .. }
        | Request::SendGroup { .. }
        | Request::SendCopies { .. }
        | Request::SendCopiesBatch { .. }
        | Request::Ack { .. } => messages::handle(st, ctx, req).await,
        Request::SubmitReport { .. } => reports::handle(st, ctx, req).await,
        Request::BlobStat { .. } | Request::BlobRelease { .. } | Request::BlobCancel { .. } => {
            blobs::handle(st, ctx, req).await
        }
        Request::CallRoute { .. } | Request::CallUnroute { .. } => calls::handle(st, ctx, req),
        Request::BlobPut { .. } | Request::BlobGet { .. } => {
            Err(fail(ErrorKind::Invalid, "blob transfers need their own stream"))
        }
        Request::ListDevices { .. }
        | Request::AddDevice { .. }
        | Request::RemoveDevice { .. }
        | Request::RenameDevice { .. }
        | Request::LinkOpen { .. }
        | Request::LinkPut { .. }
        | Request::LinkGet { .. } => devices::handle(st, ctx, req).await,
    }
}
