//! The relay's lifecycle: bind everything (data directory, storage, certificate, UDP
//! socket), then serve until the shutdown future completes, then drain.
//!
//! The storage back end is chosen at start: embedded SQLite, or with `--cluster` the
//! NATS JetStream cluster shared with the other nodes (and its bus between nodes).
//! Everything after that is generic over [`Storage`].

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::blobs::Blobs;
use crate::clock::now_ms;
use crate::cluster::bus::Bus;
use crate::config::Config;
use crate::error::RelayError;
use crate::hub::Hub;
use crate::state::State;
use crate::storage::nats::{ClusterOptions, NatsStorage, redact_url};
use crate::storage::sqlite::SqliteStorage;
use crate::storage::{DEDUPE_WINDOW, Storage};
use crate::{close, conn, endpoint, tls};

/// A bound relay, ready to serve.
#[derive(Debug)]
pub struct Relay {
    endpoint: quinn::Endpoint,
    state: Backend,
    local_addr: SocketAddr,
    cert_path: PathBuf,
}

/// The shared state, typed by the storage chosen at start.
#[derive(Debug)]
enum Backend {
    Embedded(Arc<State<SqliteStorage>>),
    Cluster(Arc<State<NatsStorage>>),
}

/// Binds and serves until `shutdown` completes.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RelayError> {
    Relay::bind(config).await?.serve(shutdown).await
}

impl Relay {
    /// Creates the data directory (0700), opens storage, loads or generates the
    /// certificate and binds the UDP socket.
    pub async fn bind(config: Config) -> Result<Self, RelayError> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&config.data_dir).map_err(
            |e| RelayError::Io(format!("data directory {}: {e}", config.data_dir.display())),
        )?;
        let blobs = Blobs::open(&config.data_dir, config.limits.blob_quota)?;
        let state = match &config.cluster {
            None => {
                let (dir, delay) = (config.data_dir.clone(), config.limits.commit_delay);
                let storage =
                    tokio::task::spawn_blocking(move || SqliteStorage::open_with(&dir, delay))
                        .await
                        .map_err(|e| RelayError::Io(e.to_string()))??;
                Backend::Embedded(State::new(storage, Hub::default(), blobs, &config))
            }
            Some(url) => {
                let options = ClusterOptions {
                    node_id: config.node_id.clone(),
                    message_ttl: config.limits.message_ttl,
                    mailbox_max_messages: config.limits.mailbox_max_messages,
                    report_ttl: config.limits.report_ttl,
                    blob_ttl: config.limits.blob_ttl,
                };
                let storage = NatsStorage::connect(url, &options).await?;
                info!(
                    cluster = %redact_url(url),
                    replicas = storage.replicas(),
                    node_id = %config.node_id,
                    "cluster storage ready"
                );
                let hub = Hub::with_bus(Bus::new(storage.client().clone()));
                let blobs = blobs.shared_through(&storage);
                Backend::Cluster(State::new(storage, hub, blobs, &config))
            }
        };
        let identity = tls::load(&config)?;
        let cert_path = identity.cert_path.clone();
        let endpoint = endpoint::server(config.listen, identity, &config.limits, &config.data_dir)?;
        let local_addr = endpoint.local_addr().map_err(|e| RelayError::Io(e.to_string()))?;
        Ok(Self { endpoint, state, local_addr, cert_path })
    }

    /// The bound UDP address (the real port when port 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The certificate file clients should trust.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// The embedded storage (for tests and tools); `None` for a cluster node.
    pub fn storage(&self) -> Option<&SqliteStorage> {
        match &self.state {
            Backend::Embedded(st) => Some(&st.storage),
            Backend::Cluster(_) => None,
        }
    }

    /// The cluster storage (for tests and tools); `None` for an embedded relay.
    pub fn cluster_storage(&self) -> Option<&NatsStorage> {
        match &self.state {
            Backend::Embedded(_) => None,
            Backend::Cluster(st) => Some(&st.storage),
        }
    }

    /// Serves until `shutdown` completes, then closes every connection and waits (a few
    /// seconds at most) for the connection tasks to finish.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), RelayError> {
        let Self { endpoint, state, local_addr, .. } = self;
        match state {
            Backend::Embedded(st) => serve_with(endpoint, st, local_addr, shutdown).await,
            Backend::Cluster(st) => serve_with(endpoint, st, local_addr, shutdown).await,
        }
    }
}

async fn serve_with<S: Storage>(
    endpoint: quinn::Endpoint,
    state: Arc<State<S>>,
    local_addr: SocketAddr,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RelayError> {
    let tracker = TaskTracker::new();
    // Expiry runs often enough that nothing outlives its TTL (or the dedupe window, or a
    // link rendezvous's ten minutes) by more than a quarter.
    let link_slot = Duration::from_millis(letstalk_wire::LINK_SLOT_TTL_MS);
    let ttl = state.limits.message_ttl.min(state.limits.blob_ttl).min(DEDUPE_WINDOW).min(link_slot);
    let period = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    let mut expiry = tokio::time::interval(period);
    tokio::pin!(shutdown);
    info!(%local_addr, "relay serving");
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => {
                    // Refused before the handshake costs anything: one address (an IPv6
                    // /64) holds at most `connections_per_ip` connections.
                    match state.conn_slots.take(incoming.remote_address().ip()) {
                        Some(slot) => {
                            let st = state.clone();
                            tracker.spawn(async move {
                                conn::serve(st, incoming).await;
                                drop(slot);
                            });
                        }
                        None => incoming.refuse(),
                    }
                }
                None => break,
            },
            _ = expiry.tick() => {
                let st = state.clone();
                tracker.spawn(async move {
                    let ttl = u64::try_from(st.limits.message_ttl.as_millis()).unwrap_or(u64::MAX);
                    match st.storage.expire(now_ms().saturating_sub(ttl)).await {
                        Ok(0) => {}
                        Ok(n) => info!(expired = n, "expired undelivered messages"),
                        Err(e) => warn!(error = %e, "expiry failed"),
                    }
                    let keep = u64::try_from(st.limits.report_ttl.as_millis()).unwrap_or(u64::MAX);
                    match st.storage.expire_reports(now_ms().saturating_sub(keep)).await {
                        Ok(0) => {}
                        Ok(n) => info!(expired = n, "deleted old reports and feedback"),
                        Err(e) => warn!(error = %e, "report expiry failed"),
                    }
                    let ttl = u64::try_from(st.limits.blob_ttl.as_millis()).unwrap_or(u64::MAX);
                    match st.blobs.expire(now_ms().saturating_sub(ttl)).await {
                        Ok(0) => {}
                        Ok(n) => info!(expired = n, "expired file blobs"),
                        Err(e) => warn!(error = ?e, "blob expiry failed"),
                    }
                });
            }
        }
    }
    info!(connected = state.hub.len(), "shutting down");
    state.cancel.cancel();
    endpoint.close(close::SHUTDOWN.into(), b"relay shutting down");
    tracker.close();
    if tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await.is_err() {
        warn!("connection tasks still running after 5 s");
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    Ok(())
}
