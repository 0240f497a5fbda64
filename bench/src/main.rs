//! `letstalk-bench`: benchmarks that print figures (never pass/fail), each beside the
//! same figure measured for a baseline in the same run.
//!
//! Every benchmark is a subcommand with its own module: `ipc` (the default) measures the
//! daemon's local JSON-RPC interface, `messaging` end-to-end messaging between two
//! daemons through a relay (and the ratchet step), `relay` the relay's delivery between
//! many clients beside mosquitto at QoS 1, `groups` the cost of one group message to
//! N members on the sender and on the relay, `device` a connected daemon's idle cost and
//! the interruption by a network switch (`idle` the first part alone), `files` a file through the relay beside a raw
//! copy of the same bytes, `calls` call media loss and latency, `cluster` delivery
//! through relay nodes sharing NATS JetStream beside the single embedded relay, `abuse`
//! what one hostile account can cost the relay (memory under a `SendGroup` attack,
//! requests per second before it is limited), `devices` one message to an account with
//! 1, 2 and 5 devices, `connections` the relay's memory per idle authenticated connection
//! and its full handshakes with device auth per second.

mod abuse;
mod call_load;
mod calls;
mod cluster;
mod connections;
mod device;
mod devices;
mod files;
mod groups;
mod ipc;
mod load;
mod messaging;
mod relay;
mod servers;
mod sessions;
mod stats;
mod sys;
mod trace;

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
    /// UI-to-UI latency and sustained throughput between two letstalkd through
    /// letstalk-relay, and the cost of one Double Ratchet step.
    Messaging(MessagingArgs),
    /// Delivery rate through letstalk-relay between many connected clients, beside
    /// mosquitto at QoS 1 with the same shape.
    Relay(RelayArgs),
    /// The cost of one group message to N members, sender and relay side.
    Groups(GroupsArgs),
    /// Idle wake-ups and CPU of a connected daemon; interruption by a network switch.
    Device(DeviceArgs),
    /// An idle connected daemon alone (the first part of `device`): wake-ups per
    /// minute, threads and RSS, beside the phone's target.
    Idle(DeviceArgs),
    /// A file from one letstalkd to another through letstalk-relay (encrypt, upload,
    /// download) in MiB/s, beside a raw copy of the same bytes.
    Files(FilesArgs),
    /// Call media through letstalk-relay: frame loss and latency p50/p99 for 50 fps
    /// audio-sized and 30 fps video-sized frames, beside a bare socket pair.
    Calls(CallsArgs),
    /// Delivery through relay nodes sharing a NATS JetStream cluster (one node, two
    /// nodes) beside the single embedded relay.
    Cluster(ClusterArgs),
    /// What one hostile account can cost the relay: its memory under 32 concurrent
    /// maximal SendGroup requests, and requests per second before it is limited.
    Abuse(AbuseArgs),
    /// One message to an account with 1, 2 and 5 devices: latency, sender CPU and bytes
    /// on the wire (issue 19).
    Devices(DevicesArgs),
    /// The relay's memory per idle authenticated device connection, and full handshakes
    /// with device auth per second (issue 16: ≤ 40 KiB, ≥ 1,000/s).
    Connections(ConnectionsArgs),
    /// Decrypt cost with 40 previous sessions against one; prekey top-up traffic per day
    /// at given bundle-fetch rates.
    Sessions(SessionsArgs),
}

#[derive(Debug, Clone, Args)]
pub(crate) struct AbuseArgs {
    /// The letstalk-relay binary [default: beside this executable].
    #[arg(long, value_name = "PATH")]
    pub(crate) relay: Option<PathBuf>,

    /// Requests per attacking stream in the memory run.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub(crate) rounds: usize,

    /// Seconds each request kind is flooded.
    #[arg(long, default_value_t = 5, value_name = "S")]
    pub(crate) flood_s: u64,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ConnectionsArgs {
    /// The letstalk-relay binary [default: beside this executable].
    #[arg(long, value_name = "PATH")]
    pub(crate) relay: Option<PathBuf>,

    /// Authenticated device connections (one account each, registered first).
    #[arg(long, default_value_t = 2000, value_name = "N")]
    pub(crate) connections: usize,

    /// Handshakes in flight while the devices connect.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub(crate) in_flight: usize,

    /// Clients per source address (127.0.0.2, 127.0.0.3, …); the relay takes 64 from one.
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub(crate) per_address: usize,

    /// Seconds the connections stay idle before the relay's memory is read.
    #[arg(long, default_value_t = 5, value_name = "S")]
    pub(crate) idle_s: u64,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct DevicesArgs {
    /// The daemon binary (default: the release build beside this one).
    #[arg(long, value_name = "PATH")]
    pub(crate) daemon: Option<PathBuf>,

    /// The relay binary (default: the release build beside this one).
    #[arg(long, value_name = "PATH")]
    pub(crate) relay: Option<PathBuf>,

    /// How many devices bob has, one run each; the first is the reference.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 2, 5])]
    pub(crate) devices: Vec<usize>,

    /// Measured messages per size.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub(crate) messages: usize,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct SessionsArgs {
    /// Decryptions per figure.
    #[arg(long, default_value_t = 2000, value_name = "N")]
    pub(crate) rounds: usize,

    /// Bundle fetches per day by others to compute top-up traffic for.
    #[arg(long, value_delimiter = ',', default_values_t = vec![10u64, 100, 1_000, 10_000], value_name = "N,..")]
    pub(crate) fetch_rates: Vec<u64>,

    /// The daemon's low-water mark (daemon/src/prekeys.rs LOW_WATER).
    #[arg(long, default_value_t = 25, value_name = "N")]
    pub(crate) low_water: u32,

    /// The daemon's refill target (daemon/src/prekeys.rs TARGET).
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub(crate) target: u32,

    /// The daemon's check interval while connected (daemon/src/prekeys.rs CHECK_EVERY).
    #[arg(long, default_value_t = 900, value_name = "S")]
    pub(crate) check_every_s: u64,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct DeviceArgs {
    /// The daemon binary (default: the release build beside this one).
    #[arg(long, value_name = "PATH")]
    pub(crate) daemon: Option<PathBuf>,

    /// The relay binary (default: the release build beside this one).
    #[arg(long, value_name = "PATH")]
    pub(crate) relay: Option<PathBuf>,

    /// How long to watch the idle daemon, in seconds.
    /// (90 s: the window holds one watchdog pet, every 90 s as under systemd.)
    #[arg(long, default_value_t = 90, value_name = "S")]
    pub(crate) idle_s: u64,

    /// Network switches to measure (needs root).
    #[arg(long, default_value_t = 6, value_name = "N")]
    pub(crate) switches: usize,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct ClusterArgs {
    /// The letstalk-relay binary [default: beside this executable].
    #[arg(long, value_name = "PATH")]
    pub(crate) relay: Option<PathBuf>,

    /// nats-server processes forming the JetStream cluster (3 keeps three copies).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub(crate) nats_servers: usize,

    /// Publisher → subscriber pairs (at least 2: the split run puts half on each node).
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub(crate) pairs: usize,

    /// Messages per publisher.
    #[arg(long, default_value_t = 500, value_name = "N")]
    pub(crate) messages: usize,

    /// Body size in bytes.
    #[arg(long, default_value_t = 256, value_name = "BYTES")]
    pub(crate) payload: usize,

    /// Sends in flight per publisher.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub(crate) window: usize,

    /// Each run stops after this many seconds even if not all was delivered.
    #[arg(long, default_value_t = 60, value_name = "S")]
    pub(crate) limit_s: u64,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct GroupsArgs {
    /// The daemon binary (default: the release build beside this one).
    #[arg(long, value_name = "PATH")]
    pub(crate) daemon: Option<PathBuf>,

    /// The relay binary (default: the release build beside this one).
    #[arg(long, value_name = "PATH")]
    pub(crate) relay: Option<PathBuf>,

    /// Group sizes to measure, the sender included.
    #[arg(long, value_delimiter = ',', default_values_t = [10usize, 50])]
    pub(crate) members: Vec<usize>,

    /// Messages per group size.
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub(crate) messages: usize,
}

/// Flags of `letstalk-bench calls`.
#[derive(Debug, Clone, Args)]
pub(crate) struct CallsArgs {
    /// The letstalkd binary [default: target/release/letstalkd beside this executable].
    #[arg(long, value_name = "PATH")]
    pub(crate) daemon: Option<PathBuf>,

    /// The letstalk-relay binary [default: beside this executable].
    #[arg(long, value_name = "PATH")]
    pub(crate) relay: Option<PathBuf>,

    /// Seconds of media per run.
    #[arg(long, default_value_t = 10, value_name = "S")]
    pub(crate) seconds: u64,

    /// Concurrent calls to put through one relay, one run each (empty: skip).
    #[arg(long, value_delimiter = ',', default_values_t = [25usize, 50, 100, 200, 400])]
    pub(crate) concurrent: Vec<usize>,

    /// Seconds of media per concurrency level.
    #[arg(long, default_value_t = 5, value_name = "S")]
    pub(crate) load_seconds: u64,
}

/// Flags of `letstalk-bench files`.
#[derive(Debug, Clone, Args)]
pub(crate) struct FilesArgs {
    /// The letstalkd binary [default: target/release/letstalkd beside this executable].
    #[arg(long, value_name = "PATH")]
    pub(crate) daemon: Option<PathBuf>,

    /// The letstalk-relay binary [default: beside this executable].
    #[arg(long, value_name = "PATH")]
    pub(crate) relay: Option<PathBuf>,

    /// The file's size in MiB.
    #[arg(long, default_value_t = 256, value_name = "MIB")]
    pub(crate) mib: usize,

    /// Each leg stops after this many seconds.
    #[arg(long, default_value_t = 120, value_name = "S")]
    pub(crate) limit_s: u64,
}

/// Flags of `letstalk-bench messaging`.
#[derive(Debug, Clone, Args)]
pub(crate) struct MessagingArgs {
    /// The letstalkd binary [default: target/release/letstalkd beside this executable].
    #[arg(long, value_name = "PATH")]
    pub(crate) daemon: Option<PathBuf>,

    /// The letstalk-relay binary [default: beside this executable].
    #[arg(long, value_name = "PATH")]
    pub(crate) relay: Option<PathBuf>,

    /// Measured sequential messages of the latency run.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub(crate) messages: usize,

    /// Unmeasured messages before the latency run.
    #[arg(long, default_value_t = 100, value_name = "N")]
    pub(crate) warmup: usize,

    /// Messages of the throughput run.
    #[arg(long, default_value_t = 5000, value_name = "N")]
    pub(crate) throughput: usize,

    /// `messages.send` calls in flight during the throughput run.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub(crate) window: usize,

    /// The throughput run stops after this many seconds even if not all arrived.
    #[arg(long, default_value_t = 30, value_name = "S")]
    pub(crate) limit_s: u64,

    /// Messages per ratchet figure.
    #[arg(long, default_value_t = 2000, value_name = "N")]
    pub(crate) ratchet_steps: usize,

    /// Where the time goes: the daemons log each message's path (debug events of target
    /// `letstalkd::path`) and the latency run prints the median of every stage; the
    /// throughput run is skipped (the logging would slow it).
    #[arg(long)]
    pub(crate) trace: bool,
}

/// Flags of `letstalk-bench relay`.
#[derive(Debug, Clone, Args)]
pub(crate) struct RelayArgs {
    /// The letstalk-relay binary [default: beside this executable].
    #[arg(long, value_name = "PATH")]
    pub(crate) relay: Option<PathBuf>,

    /// The mosquitto binary [default: `mosquitto` on PATH or in /usr/sbin].
    #[arg(long, value_name = "PATH")]
    pub(crate) mosquitto: Option<PathBuf>,

    /// Publisher → subscriber pairs, each client its own connection.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub(crate) pairs: usize,

    /// Messages per publisher. The relay lets one connection open 2,000 streams at once
    /// and 500/s after that (one per send), so more than ~2,000 here measures that limit.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub(crate) messages: usize,

    /// Body size in bytes.
    #[arg(long, default_value_t = 256, value_name = "BYTES")]
    pub(crate) payload: usize,

    /// Sends in flight per publisher (the relay allows 32 concurrent streams).
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub(crate) window: usize,

    /// Each run stops after this many seconds even if not all was delivered.
    #[arg(long, default_value_t = 30, value_name = "S")]
    pub(crate) limit_s: u64,

    /// Offline recipients instead: the subscribers' devices are offline while all is
    /// sent (every message is stored), then come online and are drained. Prints messages
    /// stored per second and drained per second (letstalk-relay only, no baseline).
    #[arg(long)]
    pub(crate) offline: bool,
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
        Command::Messaging(args) => runtime.block_on(messaging::run(&args)),
        Command::Relay(args) => runtime.block_on(relay::run(&args)),
        Command::Groups(args) => runtime.block_on(groups::run(&args)),
        Command::Device(args) => runtime.block_on(device::run(&args)),
        Command::Idle(args) => runtime.block_on(device::run_idle(&args)),
        Command::Files(args) => runtime.block_on(files::run(&args)),
        Command::Calls(args) => runtime.block_on(calls::run(&args)),
        Command::Cluster(args) => runtime.block_on(cluster::run(&args)),
        Command::Abuse(args) => runtime.block_on(abuse::run(&args)),
        Command::Devices(args) => runtime.block_on(devices::run(&args)),
        Command::Connections(args) => runtime.block_on(connections::run(&args)),
        Command::Sessions(args) => sessions::run(&args),
    }
}
