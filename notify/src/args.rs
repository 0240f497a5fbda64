//! The command line of `letstalk-notify`, as clap types (also read by `letstalk-dist`
//! for the man page and completions).

use std::path::PathBuf;

use clap::Parser;

/// `--version`: the crate version and the commit it was built from.
pub const VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (", env!("LETSTALK_GIT_COMMIT"), ")");

/// Desktop notifications for letstalkd: incoming messages and calls become freedesktop
/// notifications (org.freedesktop.Notifications on the session bus), one per
/// conversation, none for muted conversations.
///
/// Runs until stopped (a systemd user service: letstalk-notify.service); reconnects to
/// the daemon when it restarts and resumes its event stream where it left off.
#[derive(Debug, Parser)]
#[command(name = "letstalk-notify", version = VERSION)]
pub struct Cli {
    /// The daemon's socket (default: $LETSTALK_SOCKET, then the config file's `socket`,
    /// then $XDG_RUNTIME_DIR/letstalk/letstalkd.sock, then /run/letstalk/letstalkd.sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Never show what a message says, only who sent it (config key `no_text`).
    #[arg(long, env = "LETSTALK_NOTIFY_NO_TEXT")]
    pub no_text: bool,
    /// The config file (default: $XDG_CONFIG_HOME/letstalk/letstalk-notify.toml; a
    /// missing default file is fine, a missing named one is an error).
    #[arg(long, value_name = "FILE", env = "LETSTALK_NOTIFY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Log level or filter directive (error, warn, info, debug, trace); logs go to
    /// stderr and never hold message content.
    #[arg(long, value_name = "LEVEL", env = "LETSTALK_LOG", default_value = "info")]
    pub log: String,
}
