//! [`RelayApi`] over the relay protocol's client, `letstalk_link::Link`: the daemon's
//! credentials become the link's identity, its pushes and state changes are forwarded in
//! order to the inbox's channel, and the link's errors become [`RelayError`]s.
//!
//! Everything about the connection (failover between the relay's nodes, reconnection,
//! keep-alive, network changes, device authentication, timeouts) lives in the link crate.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use letstalk_ipc::types::RelayState;
pub use letstalk_link::LinkError;
use letstalk_link::{ConnState, Identity, Link, LinkConfig, Push, Registration};
use letstalk_wire::{Request, Response};

use super::{Credentials, Pushed, RelayApi, RelayError, RelayStream};
use crate::config::RelayAddr;

/// The daemon's relay link.
#[derive(Debug)]
pub struct LinkRelay {
    link: Link,
    /// The addresses as configured, for events and `system.status`.
    address: String,
    /// The link's pushes, until [`LinkRelay::run`] takes them.
    pushes: Mutex<Option<mpsc::Receiver<Push>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LinkRelay {
    /// Starts connecting to `addrs` (preferred first; each host is its TLS name) at once,
    /// authenticating with `credentials` when given.
    pub fn start(
        addrs: &[RelayAddr],
        cert: Option<&std::path::Path>,
        keepalive: Duration,
        credentials: Option<Credentials>,
    ) -> Result<Arc<Self>, LinkError> {
        let relays: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        let address = relays.join(",");
        let mut config = LinkConfig::with_relays(relays, cert.map(std::path::Path::to_path_buf));
        config.keepalive = keepalive;
        config.client_name = format!("letstalkd/{}", crate::VERSION);
        // The phone's daemon: an idle link wakes the CPU only for its keep-alive.
        config.own_thread = true;
        let (link, pushes) = Link::start(config, credentials.as_ref().map(identity))?;
        Ok(Arc::new(Self { link, address, pushes: Mutex::new(Some(pushes)) }))
    }

    /// Hands the link's pushes and state changes to `out`, in order, until cancelled;
    /// then closes the link.
    pub async fn run(
        self: Arc<Self>,
        out: mpsc::UnboundedSender<Pushed>,
        cancel: CancellationToken,
    ) {
        let pushes = lock(&self.pushes).take();
        if let Some(mut pushes) = pushes {
            loop {
                let push = tokio::select! {
                    () = cancel.cancelled() => break,
                    p = pushes.recv() => match p { Some(p) => p, None => break },
                };
                if let Push::Message(m) = &push {
                    tracing::debug!(target: crate::clock::PATH, relay = %m.msg_id, "pushed");
                }
                if out.send(pushed(push)).is_err() {
                    break;
                }
            }
        }
        cancel.cancelled().await;
        self.link.shutdown().await;
    }
}

fn identity(c: &Credentials) -> Identity {
    Identity::from_seed(c.user_id.clone(), &c.device_seed)
}

fn pushed(push: Push) -> Pushed {
    match push {
        Push::Message(m) => Pushed::Message {
            delivery_id: m.delivery_id,
            from: m.from,
            from_device: m.from_device,
            msg_id: m.msg_id,
            body: m.body,
        },
        Push::Presence(p) => Pushed::Presence(p),
        Push::ProfileChanged(p) => Pushed::ProfileChanged(p),
        Push::LoggedOut => Pushed::LoggedOut,
        Push::DevicesChanged => Pushed::DevicesChanged,
        Push::State(s) => Pushed::State(state(s)),
    }
}

fn state(s: ConnState) -> RelayState {
    match s {
        ConnState::Connecting => RelayState::Connecting,
        ConnState::Connected => RelayState::Connected,
        ConnState::Offline => RelayState::Offline,
    }
}

/// The daemon's view of a link failure.
fn relay_error(e: LinkError) -> RelayError {
    match e {
        LinkError::Unavailable(why) => {
            tracing::debug!(error = %why, "relay request failed");
            RelayError::Unavailable
        }
        LinkError::Relay { kind, message, retry_after_ms } => {
            RelayError::Refused { kind, retry_after_ms, message }
        }
        LinkError::NotLoggedIn => RelayError::Refused {
            kind: letstalk_wire::ErrorKind::Unauthenticated,
            retry_after_ms: 0,
            message: "not logged in".into(),
        },
        other => {
            tracing::debug!(error = %other, "relay request failed");
            RelayError::Unexpected
        }
    }
}

impl RelayApi for LinkRelay {
    fn register(
        &self,
        credentials: Credentials,
        password: String,
        email: String,
        nickname: String,
        identity: Vec<u8>,
    ) -> BoxFuture<'_, Result<(), RelayError>> {
        Box::pin(async move {
            let key = self::identity(&credentials).key;
            let registration = Registration {
                user_id: credentials.user_id.clone(),
                password,
                email,
                nickname,
                identity,
            };
            self.link.register(registration, key).await.map(drop).map_err(relay_error)
        })
    }

    fn login(
        &self,
        credentials: Credentials,
        password: String,
    ) -> BoxFuture<'_, Result<(), RelayError>> {
        Box::pin(async move {
            let key = identity(&credentials).key;
            self.link
                .login(&credentials.user_id, &password, key)
                .await
                .map(drop)
                .map_err(relay_error)
        })
    }

    fn delete_account_as(&self, credentials: Credentials) -> BoxFuture<'_, Result<(), RelayError>> {
        Box::pin(async move {
            self.link.delete_account_as(&identity(&credentials)).await.map_err(relay_error)
        })
    }

    fn set_credentials(&self, credentials: Option<Credentials>) {
        // Dropping credentials reconnects unauthenticated, so nothing more is pushed.
        self.link.set_identity(credentials.as_ref().map(identity));
    }

    fn request(&self, request: Request) -> BoxFuture<'_, Result<Response, RelayError>> {
        Box::pin(async move { self.link.request(request).await.map_err(relay_error) })
    }

    fn authenticate(&self, credentials: Credentials) -> BoxFuture<'_, Result<(), RelayError>> {
        Box::pin(async move {
            let key = identity(&credentials).key;
            self.link.authenticate(&credentials.user_id, key).await.map(drop).map_err(relay_error)
        })
    }

    fn device_id(&self) -> Option<u32> {
        self.link.status().borrow().device_id
    }

    fn status(&self) -> (RelayState, Option<u64>) {
        let state = state(self.link.status().borrow().state);
        let rtt = self
            .link
            .rtt()
            .filter(|_| state == RelayState::Connected)
            .map(|rtt| u64::try_from(rtt.as_millis()).unwrap_or(u64::MAX));
        (state, rtt)
    }

    fn set_keepalive(&self, keepalive: Duration) {
        self.link.set_keepalive(keepalive);
    }

    fn address(&self) -> String {
        self.address.clone()
    }

    fn open_stream(&self, header: Request) -> BoxFuture<'_, Result<RelayStream, RelayError>> {
        Box::pin(async move {
            let (send, recv) = self.link.open_stream(header).await.map_err(relay_error)?;
            Ok(RelayStream { send: Box::pin(send), recv: Box::pin(recv) })
        })
    }

    fn send_datagram(&self, datagram: Vec<u8>) -> Result<(), RelayError> {
        self.link.send_datagram(datagram.into()).map_err(relay_error)
    }

    fn take_datagrams(&self) -> Option<mpsc::Receiver<bytes::Bytes>> {
        self.link.take_datagrams()
    }

    fn max_datagram_size(&self) -> Option<usize> {
        self.link.max_datagram_size()
    }
}

impl crate::netwatch::OnChange for LinkRelay {
    fn network_changed(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.link.network_changed())
    }
}
