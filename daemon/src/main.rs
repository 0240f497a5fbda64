//! The `letstalkd` binary: flags, logging and signals around [`letstalkd::run`].

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

use letstalkd::config::{Args, Config};

/// Runtime worker threads (see `main`).
const WORKERS: usize = 1;

fn main() -> ExitCode {
    // Everything the daemon creates (data directory, database, key file, socket) is
    // private to its user from the moment it exists.
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let args = Args::parse();
    let config = match Config::resolve(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("letstalkd: {e}");
            return ExitCode::from(2);
        }
    };
    let (filter, reload) = tracing_subscriber::reload::Layer::new(EnvFilter::new(&config.log));
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal()),
        )
        .init();

    // One worker (the store's work, file encryption and key derivation run on the
    // blocking pool, QUIC on the link's own thread): for a single user's traffic each
    // further worker is one more thread to wake and park around every packet, which
    // costs more than the little the async tasks do. With two, each message cost alice
    // about 56 context switches and bob 42; with one, 46 and 35, and 3 to 5 % less CPU
    // (`letstalk-bench messaging`, bench/README.md). `TOKIO_WORKER_THREADS` still
    // overrides it.
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(WORKERS);
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("letstalkd: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(serve(config, reload)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("letstalkd: {e:#}");
            ExitCode::from(2)
        }
    }
}

type ReloadHandle = tracing_subscriber::reload::Handle<EnvFilter, tracing_subscriber::Registry>;

async fn serve(config: Config, reload: ReloadHandle) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let reload_config = config.clone();
    let shutdown = async move {
        loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = int.recv() => return,
                _ = hup.recv() => reload_log(&reload_config, &reload),
            }
        }
    };
    // A StartError's message already names its cause; as an anyhow chain it would be
    // printed twice by `{:#}`.
    letstalkd::run(config, shutdown, |_| {}).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

/// SIGHUP: re-reads the config file. The log filter changes at once; the other keys
/// (data directory, socket, relay) need a restart and are left as they are.
fn reload_log(config: &Config, reload: &ReloadHandle) {
    match config.reload_log_level() {
        Ok(Some(level)) => match reload.modify(|f| *f = EnvFilter::new(&level)) {
            Ok(()) => tracing::info!(level, "reloaded the log level"),
            Err(e) => tracing::warn!(error = %e, "cannot reload the log level"),
        },
        Ok(None) => tracing::info!("reloaded the config file; nothing to change"),
        Err(e) => {
            tracing::warn!(error = %e, "config reload failed; keeping the running configuration")
        }
    }
}
