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
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2))
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
