//! `diagnostics.preview`, `diagnostics.upload` and `feedback.send`.

use std::sync::Arc;

use letstalk_ipc::types::{
    DiagnosticsReport, Empty, FeedbackParams, FeedbackResult, PreviewResult, UploadResult,
};
use letstalk_ipc::{ErrorKind, RpcError};
use letstalk_wire::{ReportKind, Request};

use super::{Settings, internal, logged_in};
use crate::{Daemon, diagnostics, now_ms};

/// The largest feedback text, in bytes of UTF-8 (as for a message).
const MAX_FEEDBACK: usize = 64 * 1024;

/// How long a preview stands for the next upload: the user saw it, so that is what
/// is sent, byte for byte, rather than a report built a moment later.
const PREVIEW_STANDS: std::time::Duration = std::time::Duration::from_secs(600);

/// The report as it would be sent now. The network in use (with its cellular
/// generation, which only the system bus knows) joins the network history first.
async fn build(daemon: &Arc<Daemon>) -> Result<DiagnosticsReport, RpcError> {
    let device = super::device::info(daemon, Empty {}).await?;
    let me = daemon.user().unwrap_or_default();
    daemon
        .store
        .call(move |c| {
            let now = now_ms();
            diagnostics::record_network(c, &device.network, now)?;
            diagnostics::report(c, device, crate::calls::log_entries(c, &me)?, now)
        })
        .await
        .map_err(internal)
}

fn encode(value: &impl serde::Serialize) -> Result<Vec<u8>, RpcError> {
    serde_json::to_vec(value).map_err(|e| RpcError::internal(format!("encoding the report: {e}")))
}

/// The bytes a report is sent as: its JSON, compact, keys in sorted order. A client
/// that serialises the `report` of `diagnostics.preview` the same way gets these bytes.
fn canonical(report: &DiagnosticsReport) -> Result<Vec<u8>, RpcError> {
    let value = serde_json::to_value(report)
        .map_err(|e| RpcError::internal(format!("encoding the report: {e}")))?;
    encode(&value)
}

/// Shows the report and keeps its bytes: the next `diagnostics.upload` (within
/// [`PREVIEW_STANDS`]) sends exactly these.
pub(super) async fn preview(daemon: &Arc<Daemon>, _: Empty) -> Result<PreviewResult, RpcError> {
    let report = build(daemon).await?;
    let bytes = canonical(&report)?;
    *daemon.last_preview.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
        Some((std::time::Instant::now(), bytes));
    Ok(PreviewResult { report })
}

/// Sends the report now, only with the user's standing consent
/// (`settings.diagnostics_upload`): the one last previewed (if it was shown within
/// [`PREVIEW_STANDS`]), else one built now.
pub(super) async fn upload(daemon: &Arc<Daemon>, _: Empty) -> Result<UploadResult, RpcError> {
    logged_in(daemon).await?;
    let consent = daemon.store.call(|c| Settings::load(c)).await.map_err(internal)?;
    if !consent.diagnostics_upload {
        return Err(RpcError::new(
            ErrorKind::ConfirmRequired,
            "diagnostics are shared only with consent: turn on settings.diagnostics_upload first",
        ));
    }
    let relay = super::account::relay(daemon)?;
    let previewed = daemon
        .last_preview
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .filter(|(at, _)| at.elapsed() < PREVIEW_STANDS);
    let body = match previewed {
        Some((_, bytes)) => bytes,
        None => canonical(&build(daemon).await?)?,
    };
    let id = uuid::Uuid::now_v7().to_string();
    let request = Request::SubmitReport { id: id.clone(), kind: ReportKind::Diagnostics, body };
    crate::relay::expect_ok(relay.as_ref(), request).await.map_err(|e| e.to_rpc("report"))?;
    Ok(UploadResult { report_id: id })
}

/// Queues the note (with the report when asked: that is consent for this one report)
/// and returns at once; it goes to the relay when it can, like a message.
pub(super) async fn feedback(
    daemon: &Arc<Daemon>,
    p: FeedbackParams,
) -> Result<FeedbackResult, RpcError> {
    let user = logged_in(daemon).await?;
    if p.text.trim().is_empty() {
        return Err(RpcError::invalid_params("text", "text is empty"));
    }
    if p.text.len() > MAX_FEEDBACK {
        return Err(RpcError::new(
            ErrorKind::TooLarge,
            format!("text is longer than {MAX_FEEDBACK} bytes"),
        ));
    }
    let report = if p.include_diagnostics { Some(build(daemon).await?) } else { None };
    let body = encode(&serde_json::json!({
        "user_id": user,
        "text": p.text,
        "diagnostics": report,
    }))?;
    let id = uuid::Uuid::now_v7().to_string();
    let row = id.clone();
    daemon
        .store
        .call(move |c| diagnostics::enqueue(c, &row, ReportKind::Feedback, &body, now_ms()))
        .await
        .map_err(internal)?;
    daemon.wake_sender();
    Ok(FeedbackResult { feedback_id: id })
}
