//! The link against a real relay (in-process, on loopback): reconnection after a relay
//! restart, failover between candidates, device authentication, pushes, requests that
//! wait for a reconnect, keep-alive changes, network changes, a node gone silent (left in
//! seconds), and deleting an account on a connection of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use letstalk_link::{
    ConnState, Identity, Kind, Link, LinkConfig, LinkStatus, Push, Registration, SigningKey,
};
use letstalk_relay::Config;
use letstalk_relay::testing::{self, TestRelay};
use tokio::sync::mpsc::Receiver;

/// Patience for anything that should happen (never a speed assertion).
const T: Duration = Duration::from_secs(20);

/// One relay node with its own data directory, restartable on the same port.
struct Node {
    dir: tempfile::TempDir,
    relay: Option<TestRelay>,
    addr: SocketAddr,
}

impl Node {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let relay = launch(&dir, None).await;
        let addr = relay.addr;
        Self { dir, relay: Some(relay), addr }
    }
    fn cert(&self) -> std::path::PathBuf {
        self.relay.as_ref().unwrap().cert_path.clone()
    }
    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.addr.port())
    }
    fn config(&self) -> LinkConfig {
        quick(LinkConfig::new(self.address(), Some(self.cert())))
    }
    async fn stop(&mut self) {
        if let Some(r) = self.relay.take() {
            r.stop().await;
        }
    }
    /// Stops the node and starts it again on the same port and data.
    async fn restart(&mut self) {
        self.stop().await;
        self.relay = Some(launch(&self.dir, Some(self.addr)).await);
    }
}

async fn launch(dir: &tempfile::TempDir, listen: Option<SocketAddr>) -> TestRelay {
    let mut config = Config::for_tests(dir.path().join("relay"));
    if let Some(addr) = listen {
        config.listen = addr;
    }
    testing::start(config).await.unwrap()
}

/// Test timings: short backoff and handshake timeout, so a dead candidate costs a second.
fn quick(mut c: LinkConfig) -> LinkConfig {
    c.backoff_min = Duration::from_millis(100);
    c.backoff_max = Duration::from_millis(500);
    c.connect_timeout = Duration::from_secs(1);
    c
}

fn registration(user: &str) -> Registration {
    Registration {
        user_id: user.into(),
        password: "correct horse battery".into(),
        email: format!("{user}@example.org"),
        nickname: user.into(),
        identity: vec![7; 32],
    }
}

fn new_key() -> SigningKey {
    SigningKey::from_bytes(&rand::random())
}

/// A connected link with a fresh account `user`, and its pushes.
async fn user(config: LinkConfig, user: &str) -> (Link, Receiver<Push>, Identity) {
    let (link, rx) = Link::start(config, None).unwrap();
    link.wait_connected(T).await.unwrap();
    let key = new_key();
    link.register(registration(user), key.clone()).await.unwrap();
    (link, rx, Identity { user_id: user.into(), key })
}

/// The next push matching `what`, skipping the others.
async fn next(rx: &mut Receiver<Push>, what: impl Fn(&Push) -> bool) -> Push {
    tokio::time::timeout(T, async {
        loop {
            let p = rx.recv().await.expect("push channel closed");
            if what(&p) {
                return p;
            }
        }
    })
    .await
    .expect("no such push in time")
}

async fn wait_status(link: &Link, what: impl Fn(&LinkStatus) -> bool) -> LinkStatus {
    let mut status = link.status();
    tokio::time::timeout(T, status.wait_for(what)).await.unwrap().unwrap().clone()
}

/// A loopback UDP port nobody answers on: a dead node.
fn dead_address() -> String {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", socket.local_addr().unwrap().port())
}

#[tokio::test]
async fn reconnects_and_authenticates_again_after_the_relay_restarts() {
    let mut node = Node::start().await;
    let (alice, mut rx, _) = user(node.config(), "alice").await;
    node.restart().await;
    next(&mut rx, |p| *p == Push::State(ConnState::Offline)).await;
    next(&mut rx, |p| *p == Push::State(ConnState::Connected)).await;
    let status = wait_status(&alice, |s| s.state == ConnState::Connected).await;
    assert_eq!(status.user_id.as_deref(), Some("alice"));
    // Authenticated on the new connection: a request that needs the account works.
    assert_eq!(alice.profile().await.unwrap().user_id, "alice");
}

#[tokio::test]
async fn a_dead_first_candidate_is_passed_over() {
    let node = Node::start().await;
    let config =
        quick(LinkConfig::with_relays(vec![dead_address(), node.address()], Some(node.cert())));
    let (link, _rx) = Link::start(config, None).unwrap();
    link.wait_connected(T).await.unwrap();
    assert_eq!(link.status().borrow().remote, Some(node.addr));
    link.ping().await.unwrap();
}

#[tokio::test]
async fn a_lost_node_fails_over_to_the_next_candidate() {
    let mut first = Node::start().await;
    let second = Node::start().await;
    // One certificate per node: trust both.
    let both = first.dir.path().join("both.pem");
    let pem = [std::fs::read(first.cert()).unwrap(), std::fs::read(second.cert()).unwrap()];
    std::fs::write(&both, pem.concat()).unwrap();
    let config =
        quick(LinkConfig::with_relays(vec![first.address(), second.address()], Some(both)));
    let (link, _rx) = Link::start(config, None).unwrap();
    wait_status(&link, |s| s.remote == Some(first.addr)).await;
    first.stop().await;
    // Still down when the link tries again: only the second node can take it.
    wait_status(&link, |s| s.state == ConnState::Connected && s.remote == Some(second.addr)).await;
    link.ping().await.unwrap();
}

#[tokio::test]
async fn a_device_key_the_account_does_not_know_is_refused() {
    let node = Node::start().await;
    let (_alice, _rx, alice_id) = user(node.config(), "alice").await;

    // The right key is accepted...
    let (right, _rx2) = Link::start(node.config(), Some(alice_id)).unwrap();
    right.wait_connected(T).await.unwrap();
    assert_eq!(right.status().borrow().user_id.as_deref(), Some("alice"));
    assert_eq!(right.key_count().await.unwrap(), 0);

    // ...another one is not: the device is told it is logged out and acts for nobody.
    let wrong = Identity { user_id: "alice".into(), key: new_key() };
    let (mallory, mut rx) = Link::start(node.config(), Some(wrong)).unwrap();
    next(&mut rx, |p| *p == Push::LoggedOut).await;
    wait_status(&mallory, |s| s.state == ConnState::Connected).await;
    assert_eq!(mallory.status().borrow().user_id, None);
    assert!(mallory.identity().is_none());
    assert_eq!(mallory.key_count().await.unwrap_err().kind(), Kind::NotLoggedIn);
}

#[tokio::test]
async fn pushes_arrive_after_their_connection_state() {
    let node = Node::start().await;
    let (alice, _arx, _) = user(node.config(), "alice").await;
    let (bob, mut rx, _) = user(node.config(), "bob").await;
    alice.send("bob", "m1", b"sealed".to_vec()).await.unwrap();
    let Push::Message(m) = next(&mut rx, |p| matches!(p, Push::Message(_))).await else {
        unreachable!()
    };
    assert_eq!((m.from.as_str(), m.msg_id.as_str(), &m.body[..]), ("alice", "m1", &b"sealed"[..]));

    // Unacknowledged, it comes again on the next connection, after `Connected`.
    bob.reconnect_now();
    next(&mut rx, |p| *p == Push::State(ConnState::Offline)).await;
    let mut seen = Vec::new();
    while !seen.iter().any(|p| matches!(p, Push::Message(_))) {
        seen.push(tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap());
    }
    let connected = seen.iter().position(|p| *p == Push::State(ConnState::Connected));
    let message = seen.iter().position(|p| matches!(p, Push::Message(_)));
    assert!(connected.is_some() && connected < message, "{seen:?}");
}

#[tokio::test]
async fn a_request_during_a_reconnect_waits_for_the_connection() {
    let mut node = Node::start().await;
    let mut config = node.config();
    config.wait_for_connection = T;
    let (alice, mut rx) = Link::start(config, None).unwrap();
    alice.wait_connected(T).await.unwrap();
    node.stop().await;
    next(&mut rx, |p| *p == Push::State(ConnState::Offline)).await;
    assert_ne!(alice.status().borrow().state, ConnState::Connected);
    // The ping is sent first, while the relay is down; it gets its answer once the link
    // is back.
    let (ping, ()) = tokio::join!(alice.ping(), node.restart());
    ping.unwrap();
}

#[tokio::test]
async fn without_waiting_a_request_fails_as_relay_unavailable() {
    let mut node = Node::start().await;
    let mut config = node.config();
    config.wait_for_connection = Duration::ZERO;
    let (alice, mut rx) = Link::start(config, None).unwrap();
    alice.wait_connected(T).await.unwrap();
    node.stop().await;
    next(&mut rx, |p| *p == Push::State(ConnState::Offline)).await;
    assert_eq!(alice.ping().await.unwrap_err().kind(), Kind::RelayUnavailable);
}

#[tokio::test]
async fn a_new_keepalive_reconnects_only_when_it_differs() {
    let node = Node::start().await;
    let (link, mut rx) = Link::start(node.config(), None).unwrap();
    next(&mut rx, |p| *p == Push::State(ConnState::Connected)).await;
    // The interval it was made with: nothing happens (the ping would fail on a
    // connection being closed, and the state change would be waiting).
    link.set_keepalive(Duration::from_secs(20));
    link.ping().await.unwrap();
    assert!(rx.try_recv().is_err());
    // Another one: the connection is made again with it.
    link.set_keepalive(Duration::from_secs(7));
    assert_eq!(rx.recv().await, Some(Push::State(ConnState::Offline)));
    next(&mut rx, |p| *p == Push::State(ConnState::Connected)).await;
    link.set_keepalive(Duration::from_secs(7));
    link.ping().await.unwrap();
    assert!(rx.try_recv().is_err());
}

#[tokio::test]
async fn a_network_change_keeps_a_working_connection() {
    let node = Node::start().await;
    let (link, mut rx) = Link::start(node.config(), None).unwrap();
    next(&mut rx, |p| *p == Push::State(ConnState::Connected)).await;
    link.network_changed().await;
    link.ping().await.unwrap();
    // Migrated, not re-established: no state change since.
    assert!(rx.try_recv().is_err());
    assert_eq!(link.status().borrow().state, ConnState::Connected);
}

#[tokio::test]
async fn an_account_is_deleted_on_a_connection_of_its_own() {
    let node = Node::start().await;
    let (alice, _rx, alice_id) = user(node.config(), "alice").await;
    alice.shutdown().await;
    let (other, _rx2, _) = user(node.config(), "bob").await;

    let wrong = Identity { user_id: "alice".into(), key: new_key() };
    assert!(other.delete_account_as(&wrong).await.is_err());
    assert_eq!(other.lookup_user("alice").await.unwrap().user_id, "alice");

    other.delete_account_as(&alice_id).await.unwrap();
    assert_eq!(other.lookup_user("alice").await.unwrap_err().kind(), Kind::NotFound);
    // The link's own connection and account are untouched.
    assert_eq!(other.profile().await.unwrap().user_id, "bob");
}

/// A UDP path to `to` (one client at a time) that can be cut: afterwards it swallows
/// every packet both ways, as a node killed with -9 or a path gone dead does; nothing is
/// closed, nothing answers.
struct Path {
    addr: SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Path {
    async fn to(to: SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        back.connect(to).await.unwrap();
        let addr = front.local_addr().unwrap();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = cut.clone();
        let task = tokio::spawn(async move {
            let (mut up, mut down) = (vec![0u8; 65536], vec![0u8; 65536]);
            let mut client = None;
            loop {
                tokio::select! {
                    Ok((n, from)) = front.recv_from(&mut up) => {
                        client = Some(from);
                        if !open.load(Ordering::Relaxed) {
                            let _ = back.send(&up[..n]).await;
                        }
                    }
                    Ok(n) = back.recv(&mut down) => {
                        if let (Some(c), false) = (client, open.load(Ordering::Relaxed)) {
                            let _ = front.send_to(&down[..n], c).await;
                        }
                    }
                }
            }
        });
        Self { addr, cut, task }
    }
    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.addr.port())
    }
    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Path {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_dead_first_candidate_costs_no_handshake_timeout() {
    let node = Node::start().await;
    let mut config =
        LinkConfig::with_relays(vec![dead_address(), node.address()], Some(node.cert()));
    // Were the candidates tried one after the other, the dead one would cost all of this.
    config.connect_timeout = Duration::from_secs(60);
    let (link, _rx) = Link::start(config, None).unwrap();
    link.wait_connected(Duration::from_secs(20)).await.unwrap();
    assert_eq!(link.status().borrow().remote, Some(node.addr));
}

#[tokio::test]
async fn a_request_to_a_node_gone_silent_fails_in_seconds_and_the_link_moves_on() {
    gone_silent(false).await;
}

/// The same with QUIC on the link's own thread and its `timerfd` timers (the daemon's
/// configuration): the silence, the handshakes and the failover keep their timings.
#[tokio::test]
async fn on_its_own_thread_a_node_gone_silent_is_left_in_seconds() {
    gone_silent(true).await;
}

async fn gone_silent(own_thread: bool) {
    let node = Node::start().await;
    let path = Path::to(node.addr).await;
    let mut config =
        quick(LinkConfig::with_relays(vec![path.address(), node.address()], Some(node.cert())));
    config.own_thread = own_thread;
    // Only the silence may end the request below, not its own timeout nor the idle one.
    config.request_timeout = Duration::from_secs(120);
    config.keepalive = Duration::from_secs(60);
    let (alice, _rx, _) = user(config, "alice").await;
    assert_eq!(alice.status().borrow().remote, Some(path.addr));

    path.cut();
    let outcome = tokio::time::timeout(Duration::from_secs(30), alice.ping()).await;
    let err = outcome.expect("the request waited for its own timeout").unwrap_err();
    assert_eq!(err.kind(), Kind::RelayUnavailable, "{err}");
    // The link left the silent path for the next candidate, authenticated again.
    let status = wait_status(&alice, |s| {
        s.state == ConnState::Connected && s.remote == Some(node.addr) && s.user_id.is_some()
    })
    .await;
    assert_eq!(status.user_id.as_deref(), Some("alice"));
    alice.ping().await.unwrap();
}

/// Whether this process has a thread named `name`.
fn has_thread(name: &str) -> bool {
    std::fs::read_dir("/proc/self/task").unwrap().any(|t| {
        let comm = std::fs::read_to_string(t.unwrap().path().join("comm")).unwrap_or_default();
        comm.trim() == name
    })
}

#[tokio::test]
async fn a_link_on_its_own_thread_carries_requests_pushes_a_migration_and_a_reconnect() {
    let mut node = Node::start().await;
    let own = |mut c: LinkConfig| {
        c.own_thread = true;
        quick(c)
    };
    let (alice, _arx, _) = user(own(node.config()), "alice").await;
    let (bob, mut rx, _) = user(own(node.config()), "bob").await;
    assert!(has_thread("letstalk-net"), "QUIC is not on its own thread");
    let received =
        |id: &'static str| move |p: &Push| matches!(p, Push::Message(m) if m.msg_id == id);

    alice.send("bob", "m1", b"sealed".to_vec()).await.unwrap();
    next(&mut rx, received("m1")).await;
    // A rebind registers the new socket with the network thread's reactor.
    bob.network_changed().await;
    bob.ping().await.unwrap();
    assert_eq!(bob.status().borrow().state, ConnState::Connected);
    // A new connection after the relay restarts, authenticated again.
    node.restart().await;
    next(&mut rx, |p| *p == Push::State(ConnState::Connected)).await;
    alice.send("bob", "m2", b"sealed".to_vec()).await.unwrap();
    next(&mut rx, received("m2")).await;
}

#[tokio::test]
async fn a_link_sends_from_its_local_ip() {
    // A bare UDP socket stands for the relay: the first packet it gets is the handshake's.
    let relay = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut config =
        quick(LinkConfig::new(format!("127.0.0.1:{}", relay.local_addr().unwrap().port()), None));
    config.local_ip = Some([127, 0, 0, 3].into());
    let (_link, _pushes) = Link::start(config, None).unwrap();
    let mut buf = vec![0u8; 2048];
    let (_, from) = tokio::time::timeout(T, relay.recv_from(&mut buf)).await.unwrap().unwrap();
    assert_eq!(from.ip(), std::net::IpAddr::from([127, 0, 0, 3]));
}
