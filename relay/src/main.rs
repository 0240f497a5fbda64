//! `letstalk-relay`: parses the configuration, starts the relay, prints the certificate
//! path and the `listening on ADDR:PORT` line, notifies systemd, stops on SIGTERM/SIGINT.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use letstalk_relay::{Args, Config, Relay, TlsSource};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let config = match Config::resolve(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("letstalk-relay: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = match EnvFilter::try_new(&config.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("letstalk-relay: --log {:?}: {e}", config.log);
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("letstalk-relay: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Startup(e)) => {
            eprintln!("letstalk-relay: {e:#}");
            ExitCode::from(2)
        }
        Err(Failure::Runtime(e)) => {
            eprintln!("letstalk-relay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

enum Failure {
    /// Could not start (bad data directory, certificate, address): exit 2.
    Startup(anyhow::Error),
    Runtime(anyhow::Error),
}

async fn serve(config: Config) -> Result<(), Failure> {
    let generated = config.tls == TlsSource::SelfSigned;
    let relay = Relay::bind(config).await.context("starting").map_err(Failure::Startup)?;
    if generated {
        // On stderr, so that stdout carries exactly the one line scripts wait for.
        eprintln!("letstalk-relay: certificate {}", relay.cert_path().display());
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "listening on {}", relay.local_addr())
        .and_then(|()| out.flush())
        .context("stdout")
        .map_err(Failure::Runtime)?;
    drop(out);
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    let result = relay.serve(shutdown_signal()).await.context("serving").map_err(Failure::Runtime);
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    result
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
