//! `letstalk-bench`: benchmarks that print figures (never pass/fail), each beside the
//! same figure measured for a baseline in the same run.
//!
//! Every benchmark is a subcommand; `ipc` (the default) measures the daemon's local
//! JSON-RPC interface. Later benchmarks (relay handshakes, message throughput, calls)
//! are added as further subcommands with their own module.

mod ipc;
mod load;
mod servers;
mod stats;
mod sys;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Letstalk benchmarks: prints figures beside a baseline's",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Without a subcommand, `ipc` runs with these flags.
    #[command(flatten)]
    ipc: IpcArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// IPC round trip (1 and 16 clients), start-up time, idle RSS and binary size of
    /// letstalkd, beside the Delta Chat JSON-RPC server's (the default).
    Ipc(IpcArgs),
}

/// Flags of `letstalk-bench ipc`.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "ipc options")]
pub(crate) struct IpcArgs {
    /// The letstalkd binary [default: target/release/letstalkd beside this executable].
    #[arg(long, value_name = "PATH")]
    pub(crate) daemon: Option<PathBuf>,

    /// The baseline's deltachat-rpc-server binary [default: the one bench/baseline.sh
    /// installs into target/bench-baseline/].
    #[arg(long, value_name = "PATH", env = "DELTACHAT_RPC_SERVER")]
    pub(crate) baseline: Option<PathBuf>,

    /// Measure letstalkd only, even when the baseline is installed.
    #[arg(long)]
    pub(crate) no_baseline: bool,

    /// Measured calls per client (after the warm-up).
    #[arg(long, default_value_t = 2000, value_name = "N")]
    pub(crate) calls: usize,

    /// Warm-up calls per client, not measured.
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub(crate) warmup: usize,

    /// Concurrent clients of the "many clients" run.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub(crate) clients: usize,

    /// Process starts measured for the start-up figure (the median is reported).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub(crate) starts: usize,

    /// Idle time before VmRSS is read, in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub(crate) idle_ms: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("letstalk-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // One client thread: the bench must leave the (few) cores to the server under test,
    // and a single thread keeps the client's own cost small and the same for every
    // server it measures.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    match cli.command.unwrap_or(Command::Ipc(cli.ipc)) {
        Command::Ipc(args) => runtime.block_on(ipc::run(&args)),
    }
}
