//! [`State`]: what every connection of this node shares, built once at start.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio_util::sync::CancellationToken;

use crate::blobs::Blobs;
use crate::calls::Routes;
use crate::config::{Config, Limits};
use crate::hub::Hub;
use crate::password::Hasher;
use crate::ratelimit::{ConnSlots, Limiter};

/// What every connection shares.
#[derive(Debug)]
pub(crate) struct State<S> {
    pub(crate) storage: S,
    pub(crate) hub: Hub,
    pub(crate) limits: Limits,
    pub(crate) hasher: Hasher,
    pub(crate) register_ip: Limiter<IpAddr>,
    pub(crate) login_ip: Limiter<IpAddr>,
    pub(crate) login_account: Limiter<String>,
    /// Directory reads (lookup, avatar, bundle) per requesting account.
    pub(crate) directory: Limiter<String>,
    /// Reports and feedback per account.
    pub(crate) reports_account: Limiter<String>,
    /// Link rendezvous reads and writes per address (unauthenticated connections)...
    pub(crate) link_ip: Limiter<IpAddr>,
    /// ...and per account (authenticated ones).
    pub(crate) link_account: Limiter<String>,
    /// Concurrent connections per address.
    pub(crate) conn_slots: ConnSlots,
    pub(crate) node_id: String,
    pub(crate) next_conn: AtomicU64,
    pub(crate) cancel: CancellationToken,
    /// File blobs.
    pub(crate) blobs: Blobs,
    /// Call media routes.
    pub(crate) calls: Routes,
}

impl<S> State<S> {
    /// The state of a node serving `storage`, reaching devices through `hub`.
    pub(crate) fn new(storage: S, hub: Hub, blobs: Blobs, config: &Config) -> Arc<Self> {
        let limits = config.limits.clone();
        Arc::new(Self {
            storage,
            hub,
            register_ip: Limiter::new(limits.register_per_ip),
            login_ip: Limiter::new(limits.login_per_ip),
            login_account: Limiter::new(limits.login_per_account),
            directory: Limiter::new(limits.directory_per_account),
            reports_account: Limiter::new(limits.reports_per_account_rate),
            link_ip: Limiter::new(limits.link_rendezvous),
            link_account: Limiter::new(limits.link_rendezvous),
            conn_slots: ConnSlots::new(limits.connections_per_ip),
            limits,
            hasher: Hasher::new(),
            node_id: config.node_id.clone(),
            next_conn: AtomicU64::new(1),
            cancel: CancellationToken::new(),
            blobs,
            calls: Routes::default(),
        })
    }
}
