//! An in-process relay on loopback for tests: start it, get its address and certificate,
//! stop it (or drop it).

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{Config, Relay, RelayError, SqliteStorage};

/// A running in-process relay.
#[derive(Debug)]
pub struct TestRelay {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its certificate (PEM file) for clients to trust.
    pub cert_path: PathBuf,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its storage, for inspecting tables.
    pub storage: SqliteStorage,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), RelayError>>>,
}

/// Starts a relay with `config` (see [`Config::for_tests`]).
pub async fn start(config: Config) -> Result<TestRelay, RelayError> {
    let data_dir = config.data_dir.clone();
    let relay = Relay::bind(config).await?;
    let (stop, stopped) = oneshot::channel::<()>();
    let addr = relay.local_addr();
    let cert_path = relay.cert_path().to_path_buf();
    let storage = relay.storage().clone();
    let task = tokio::spawn(relay.serve(async move {
        let _ = stopped.await;
    }));
    Ok(TestRelay { addr, cert_path, data_dir, storage, stop: Some(stop), task: Some(task) })
}

impl TestRelay {
    /// Stops the relay and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
