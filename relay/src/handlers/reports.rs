//! `SubmitReport`: diagnostics reports and feedback a user chose to send, kept for the
//! operator (a JSON document, rate-limited and capped per account).

use std::sync::Arc;

use letstalk_wire::{ErrorKind, Request, Response};

use crate::clock::now_ms;
use crate::ctx::ConnCtx;
use crate::fail::{Reply, fail, misrouted, rate_limited, storage_fail};
use crate::session::require_auth;
use crate::state::State;
use crate::storage::{Report, Storage};

/// A report request.
pub(super) async fn handle<S: Storage>(
    st: &Arc<State<S>>,
    ctx: &Arc<ConnCtx>,
    req: Request,
) -> Reply {
    match req {
        Request::SubmitReport { id, kind, body } => {
            let user = require_auth(st, ctx)?;
            if id.is_empty() || body.is_empty() {
                return Err(fail(ErrorKind::Invalid, "empty report id or body"));
            }
            if serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_err() {
                return Err(fail(ErrorKind::Invalid, "a report is a JSON document"));
            }
            st.reports_account.check(&user).map_err(rate_limited)?;
            let held = st.storage.reports_held(&user).await.map_err(storage_fail)?;
            if held >= st.limits.reports_per_account {
                return Err(fail(
                    ErrorKind::QuotaExceeded,
                    "this account has sent as many reports as the relay keeps",
                ));
            }
            let report = Report { id, user_id: user, kind, body, now: now_ms() };
            st.storage.store_report(report).await.map_err(storage_fail)?;
            Ok(Response::Ok)
        }
        other => Err(misrouted(&other)),
    }
}
