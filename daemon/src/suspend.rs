//! Suspend and resume: a phone suspends whenever its screen is off, and after resume the
//! relay connection's path may be dead (another Wi-Fi, a NAT binding forgotten, a relay
//! restarted meanwhile) with nothing noticing it until the idle timeout, up to a minute
//! later. logind announces both edges with `PrepareForSleep(bool)` on the system bus;
//! on resume (`false`) the link probes its path at once and reconnects if it is dead,
//! exactly as after a network change ([`crate::netwatch::OnChange`]).
//!
//! Like the other D-Bus use, nothing happens without a system bus: no connection is
//! attempted when the bus is not there ([`crate::bus::system_bus_may_exist`]), and a bus
//! that goes away ends the watch. While it runs, the watch is one blocked read on the
//! bus socket: no timer, no wake-up until logind speaks. Only logind can own
//! `org.freedesktop.login1` on a system bus (its policy), so only logind is listened to.

use std::sync::Arc;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::netwatch::OnChange;

const LOGIND: &str = "org.freedesktop.login1";
const LOGIND_PATH: &str = "/org/freedesktop/login1";
const LOGIND_MANAGER: &str = "org.freedesktop.login1.Manager";

/// Watches logind's sleep signal until `cancel`, telling `link` on every resume.
pub async fn run(link: Arc<dyn OnChange>, cancel: CancellationToken) {
    if !crate::bus::system_bus_may_exist() {
        return;
    }
    let mut resumes = match subscribe().await {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(error = %e, "no system bus: suspend and resume are not watched");
            return;
        }
    };
    loop {
        let message = tokio::select! {
            () = cancel.cancelled() => return,
            m = resumes.next() => m,
        };
        let Some(message) = message else {
            tracing::info!("the system bus went away: suspend and resume are no longer watched");
            return;
        };
        match message.and_then(|m| m.body().deserialize::<bool>()) {
            Ok(true) => tracing::info!("the device is going to sleep"),
            Ok(false) => {
                tracing::info!("the device resumed: checking the relay connection");
                link.network_changed().await;
            }
            Err(e) => tracing::debug!(error = %e, "an unreadable PrepareForSleep signal"),
        }
    }
}

/// The stream of logind's `PrepareForSleep` signals on a connection of its own.
async fn subscribe() -> zbus::Result<zbus::MessageStream> {
    let conn = zbus::connection::Builder::system()?.build().await?;
    let rule = zbus::MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(LOGIND)?
        .path(LOGIND_PATH)?
        .interface(LOGIND_MANAGER)?
        .member("PrepareForSleep")?
        .build();
    zbus::MessageStream::for_match_rule(rule, &conn, Some(8)).await
}
