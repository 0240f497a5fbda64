//! systemd integration: readiness, stopping and watchdog notifications, and the socket
//! passed by socket activation. Every call is a no-op without systemd (no
//! `NOTIFY_SOCKET`, no `LISTEN_FDS`), which is how the daemon runs under OpenRC, in
//! containers and in tests.

use std::time::Duration;

use sd_notify::NotifyState;

/// Tells the service manager the daemon is ready (the socket accepts connections).
pub fn ready() {
    notify(&[NotifyState::Ready]);
}

/// Tells the service manager the daemon is stopping.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// Pets the watchdog.
pub fn watchdog() {
    notify(&[NotifyState::Watchdog]);
}

/// The interval at which to pet the watchdog (half of `WATCHDOG_USEC`), if enabled.
pub fn watchdog_interval() -> Option<Duration> {
    let var = |k| std::env::var(k).ok();
    watchdog_from(
        var("WATCHDOG_USEC").as_deref(),
        var("WATCHDOG_PID").as_deref(),
        std::process::id(),
    )
}

/// As `sd_watchdog_enabled(3)` reads them: a positive `WATCHDOG_USEC`, and `WATCHDOG_PID`
/// naming this process if it is set at all (the `sd-notify` crate also demands it be set,
/// which a service manager other than systemd, or a bench, may not do).
fn watchdog_from(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    let usec: u64 = usec?.parse().ok().filter(|&u| u > 0)?;
    if let Some(pid) = pid
        && pid.parse::<u32>().ok()? != me
    {
        return None;
    }
    Some(Duration::from_micros(usec / 2))
}

fn notify(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// The first socket passed by socket activation, if any.
pub fn activated_listener() -> std::io::Result<Option<std::os::unix::net::UnixListener>> {
    listenfd::ListenFd::from_env().take_unix_listener(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_is_ours_when_its_pid_is_ours_or_unset() {
        let half = Some(Duration::from_secs(90));
        assert_eq!(watchdog_from(Some("180000000"), None, 7), half);
        assert_eq!(watchdog_from(Some("180000000"), Some("7"), 7), half);
        // Another process's watchdog (inherited from a parent), or a malformed one.
        assert_eq!(watchdog_from(Some("180000000"), Some("8"), 7), None);
        assert_eq!(watchdog_from(Some("180000000"), Some("x"), 7), None);
        assert_eq!(watchdog_from(Some("0"), None, 7), None);
        assert_eq!(watchdog_from(Some("soon"), None, 7), None);
        assert_eq!(watchdog_from(None, Some("7"), 7), None);
    }
}
