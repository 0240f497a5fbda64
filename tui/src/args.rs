//! The command line of `letstalk-tui`, as clap types (also read by `letstalk-dist` for the
//! man page and completions).

use std::path::PathBuf;

use clap::Parser;

/// `--version`: the crate version and the commit it was built from.
pub const VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (", env!("LETSTALK_GIT_COMMIT"), ")");

/// Chat in a terminal with letstalkd, the Letstalk daemon.
///
/// Keys: Enter sends the input line to the open conversation; Up/Down or Tab/Shift-Tab
/// switch conversations; PageUp/PageDown scroll; Esc closes a popup or clears the input;
/// Ctrl-C quits. Commands: /open CONVERSATION, /file PATH, /verify, /help, /quit.
#[derive(Debug, Parser)]
#[command(name = "letstalk-tui", version = VERSION)]
pub struct Cli {
    /// The daemon's socket (default: $LETSTALK_SOCKET, then
    /// $XDG_RUNTIME_DIR/letstalk/letstalkd.sock, then /run/letstalk/letstalkd.sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The conversation to open at start: user:ID, group:ID, or a bare user ID.
    #[arg(long, value_name = "CONVERSATION")]
    pub open: Option<String>,
}
