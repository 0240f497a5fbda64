//! The `letstalk` command line as a library: its clap definition ([`args`]), for the
//! binary and for the tools that generate its man page and completions.

pub mod args;

/// The whole command line, as clap sees it.
pub fn command() -> clap::Command {
    <args::Cli as clap::CommandFactory>::command()
}
