//! [`ConnCtx`]: what the tasks of one connection share (its QUIC connection, the
//! authentication challenge, the session once authenticated). Plain data: the session is
//! started and ended in `session.rs`.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use letstalk_wire::AUTH_EXPORTER_LEN;
use tokio_util::sync::CancellationToken;

/// Per-connection state shared by its stream tasks.
#[derive(Debug)]
pub(crate) struct ConnCtx {
    pub(crate) id: u64,
    pub(crate) conn: quinn::Connection,
    pub(crate) remote: SocketAddr,
    /// Fresh per connection: a signature over it is good for this connection only.
    pub(crate) challenge: [u8; 32],
    /// This TLS session's exporter value (RFC 5705): signed with the challenge, so a
    /// signature relayed from another connection (another TLS session) is refused.
    pub(crate) exporter: [u8; AUTH_EXPORTER_LEN],
    pub(crate) hello: AtomicBool,
    pub(crate) session: Mutex<Option<Session>>,
    pub(crate) cancel: CancellationToken,
}

/// The account and device this connection acts for, after authentication.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) user_id: String,
    pub(crate) device_id: u32,
    /// Stops the push writer and delivery task of this session.
    pub(crate) cancel: CancellationToken,
}

impl ConnCtx {
    pub(crate) fn user(&self) -> Option<String> {
        self.session.lock().ok()?.as_ref().map(|s| s.user_id.clone())
    }

    /// The account and device this connection authenticated as, if any.
    pub(crate) fn device(&self) -> Option<(String, u32)> {
        self.session.lock().ok()?.as_ref().map(|s| (s.user_id.clone(), s.device_id))
    }
}
