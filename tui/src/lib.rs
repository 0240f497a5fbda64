//! `letstalk-tui` as a library: its command line ([`args`]), the app state ([`model`]: a
//! pure model updated by daemon events, daemon replies and keys, with no I/O) and the
//! drawing of that state ([`view`]). The binary adds the terminal and the socket.

pub mod args;
pub mod model;
pub mod view;

/// The whole command line, as clap sees it (for the man page and completions).
pub fn command() -> clap::Command {
    <args::Cli as clap::CommandFactory>::command()
}
