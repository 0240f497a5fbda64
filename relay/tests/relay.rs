//! The relay end to end over loopback: an in-process relay (or the real binary) and
//! `letstalk-link` clients acting as named devices.

// Test helpers outside `#[test]` functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use letstalk_link::{
    AvatarUpdate, ConnState, Identity, KeyUpload, Kind, Link, LinkConfig, LinkError, PreKey, Push,
    Registration, SigningKey,
};
use letstalk_relay::testing::{self, TestRelay};
use letstalk_relay::{Config, Limits, RateLimit};
use letstalk_wire::{Avatar, Request, Response};
use tokio::sync::mpsc::Receiver;

const T: Duration = Duration::from_secs(10);

struct World {
    dir: tempfile::TempDir,
    relay: Option<TestRelay>,
    addr: SocketAddr,
    limits: Limits,
}

impl World {
    async fn new() -> Self {
        Self::with_limits(Limits::default()).await
    }
    async fn with_limits(limits: Limits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_tests(dir.path().join("relay"));
        config.limits = limits.clone();
        let relay = testing::start(config).await.unwrap();
        let addr = relay.addr;
        Self { dir, relay: Some(relay), addr, limits }
    }
    fn relay(&self) -> &TestRelay {
        self.relay.as_ref().unwrap()
    }
    fn link_config(&self) -> LinkConfig {
        let mut c = LinkConfig::new(
            format!("127.0.0.1:{}", self.addr.port()),
            Some(self.relay().cert_path.clone()),
        );
        c.backoff_min = Duration::from_millis(100);
        c.backoff_max = Duration::from_millis(500);
        c
    }
    async fn stop(&mut self) {
        if let Some(r) = self.relay.take() {
            r.stop().await;
        }
    }
    async fn restart(&mut self) {
        self.stop().await;
        let mut config = Config::for_tests(self.dir.path().join("relay"));
        config.listen = self.addr;
        config.limits = self.limits.clone();
        self.relay = Some(testing::start(config).await.unwrap());
    }

    /// A connected device without an account.
    async fn device(&self, identity: Option<Identity>) -> (Link, Receiver<Push>) {
        let (link, rx) = Link::start(self.link_config(), identity).unwrap();
        link.wait_connected(T).await.unwrap();
        (link, rx)
    }

    /// A device with a fresh account `name`.
    async fn user(&self, name: &str) -> Device {
        let (link, pushes) = self.device(None).await;
        let key = new_key();
        link.register(registration(name, "correct horse battery"), key.clone()).await.unwrap();
        Device { link, pushes, key }
    }
}

struct Device {
    link: Link,
    pushes: Receiver<Push>,
    key: SigningKey,
}

impl Device {
    async fn next(&mut self, what: impl Fn(&Push) -> bool) -> Push {
        tokio::time::timeout(T, async {
            loop {
                let p = self.pushes.recv().await.expect("push channel closed");
                if what(&p) {
                    return p;
                }
            }
        })
        .await
        .expect("expected push did not arrive")
    }
}

fn new_key() -> SigningKey {
    SigningKey::from_bytes(&rand::random())
}

fn registration(name: &str, password: &str) -> Registration {
    Registration {
        user_id: name.into(),
        password: password.into(),
        email: format!("{name}@example.org"),
        nickname: name.to_uppercase(),
        identity: vec![7; 32],
    }
}

fn kind(r: Result<impl std::fmt::Debug, LinkError>) -> Kind {
    r.unwrap_err().kind()
}

#[tokio::test]
async fn accounts_conflict_wrong_password_and_password_change() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let _bob = w.user("bob").await;
    assert_eq!(alice.link.status().borrow().user_id.as_deref(), Some("alice"));

    let (anon, _rx) = w.device(None).await;
    assert_eq!(
        kind(anon.register(registration("alice", "another password"), new_key()).await),
        Kind::Conflict
    );
    assert_eq!(
        kind(anon.register(registration("ALICE", "another password"), new_key()).await),
        Kind::Conflict
    );
    assert_eq!(kind(anon.login("alice", "wrong password", new_key()).await), Kind::AuthFailed);
    assert_eq!(kind(anon.login("nobody", "wrong password", new_key()).await), Kind::AuthFailed);
    assert_eq!(kind(anon.profile().await), Kind::NotLoggedIn);
    assert_eq!(
        kind(anon.register(registration("x", "correct horse"), new_key()).await),
        Kind::Invalid
    );
    assert_eq!(kind(anon.register(registration("carol", "short"), new_key()).await), Kind::Invalid);

    assert_eq!(kind(alice.link.change_password("not it", "new password!").await), Kind::AuthFailed);
    alice.link.change_password("correct horse battery", "new password!").await.unwrap();
    // The same device logs in again with the new password; the old one is refused.
    let (again, _rx2) = w.device(None).await;
    assert_eq!(
        kind(again.login("Alice", "correct horse battery", alice.key.clone()).await),
        Kind::AuthFailed
    );
    assert_eq!(again.login("Alice", "new password!", alice.key.clone()).await.unwrap(), "alice");
    let profile = again.profile().await.unwrap();
    assert_eq!(
        (profile.nickname.as_str(), profile.email.as_deref()),
        ("ALICE", Some("alice@example.org"))
    );
}

#[tokio::test]
async fn login_on_a_second_device_logs_the_first_out() {
    let w = World::new().await;
    let mut first = w.user("alice").await;
    let (second, _rx) = w.device(None).await;
    second.login("alice", "correct horse battery", new_key()).await.unwrap();
    assert_eq!(first.next(|p| matches!(p, Push::LoggedOut)).await, Push::LoggedOut);
    assert!(first.link.identity().is_none());
    assert_eq!(second.profile().await.unwrap().user_id, "alice");

    // The old device key is refused on a later connection, as an unknown device.
    let (old, mut old_rx) = Link::start(
        w.link_config(),
        Some(Identity { user_id: "alice".into(), key: first.key.clone() }),
    )
    .unwrap();
    let p = tokio::time::timeout(T, old_rx.recv()).await.unwrap().unwrap();
    assert_eq!(p, Push::LoggedOut);
    assert_eq!(kind(old.profile().await), Kind::NotLoggedIn);
    // The new device is still fine.
    second.ping().await.unwrap();
}

#[tokio::test]
async fn one_time_prekeys_go_out_once_then_last_resort() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let keys = KeyUpload {
        identity: Some(vec![1; 32]),
        signed_prekey: Some(PreKey { id: 1, key: vec![2; 32] }),
        one_time_prekeys: (100..140).map(|id| PreKey { id, key: vec![id as u8; 32] }).collect(),
        last_resort: Some(PreKey { id: 9, key: vec![9; 32] }),
    };
    assert_eq!(alice.link.upload_keys(keys).await.unwrap(), 40);

    let mut fetchers = Vec::new();
    for name in ["bob", "carol", "dave", "erin"] {
        fetchers.push(w.user(name).await);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for f in &fetchers {
        for _ in 0..12 {
            let link = f.link.clone();
            tasks.spawn(async move { link.fetch_bundle("alice").await.unwrap() });
        }
    }
    let mut one_time = Vec::new();
    let mut last_resort = 0;
    while let Some(b) = tasks.join_next().await {
        let b = b.unwrap();
        assert_eq!(b.identity, vec![1; 32]);
        assert_eq!(b.signed_prekey, Some(PreKey { id: 1, key: vec![2; 32] }));
        assert_eq!(b.device_key, alice.key.verifying_key().to_bytes());
        let k = b.one_time_prekey.unwrap();
        if b.last_resort {
            assert_eq!(k.id, 9);
            last_resort += 1;
        } else {
            one_time.push(k.id);
        }
    }
    one_time.sort_unstable();
    assert_eq!(one_time, (100..140).collect::<Vec<_>>(), "each one-time prekey exactly once");
    assert_eq!(last_resort, 8);
    assert_eq!(alice.link.key_count().await.unwrap(), 0);
    assert_eq!(kind(alice.link.fetch_bundle("nobody").await), Kind::NotFound);
}

#[tokio::test]
async fn profile_changes_and_presence_reach_watchers() {
    let w = World::new().await;
    let mut bob = w.user("bob").await;
    let alice = w.user("alice").await;
    // Presence needs consent: alice has bob as a contact.
    alice.link.set_contacts(true, vec!["bob".into()]).await.unwrap();
    let watched = bob.link.watch(vec!["alice".into(), "nobody".into()], vec![]).await.unwrap();
    assert_eq!(watched.len(), 1);
    assert!(watched[0].online);

    let avatar = Avatar { mime: "image/png".into(), data: vec![0x89, b'P', b'N', b'G', 1, 2, 3] };
    alice
        .link
        .update_profile(Some("Alice A.".into()), None, AvatarUpdate::Set(avatar.clone()))
        .await
        .unwrap();
    let Push::ProfileChanged(p) = bob.next(|p| matches!(p, Push::ProfileChanged(_))).await else {
        unreachable!()
    };
    assert_eq!(p.nickname, "Alice A.");
    assert_eq!(p.email, None);
    assert_eq!(p.avatar.as_ref().map(|a| a.size), Some(7));
    assert_eq!(bob.link.fetch_avatar("alice").await.unwrap(), avatar);
    let looked = bob.link.lookup_user("ALICE").await.unwrap();
    assert_eq!((looked.nickname.as_str(), looked.email), ("Alice A.", None));
    assert_eq!(kind(bob.link.lookup_user("nobody").await), Kind::NotFound);
    let big = Avatar { mime: "image/png".into(), data: vec![0; 1024 * 1024 + 1] };
    assert_eq!(
        kind(alice.link.update_profile(None, None, AvatarUpdate::Set(big)).await),
        Kind::TooLarge
    );

    // Offline when alice's device goes away, online when it comes back.
    let alice_id = Identity { user_id: "alice".into(), key: alice.key.clone() };
    alice.link.shutdown().await;
    let Push::Presence(off) = bob.next(|p| matches!(p, Push::Presence(_))).await else {
        unreachable!()
    };
    assert_eq!((off.user_id.as_str(), off.online), ("alice", false));
    assert!(off.last_seen_at > 0);
    let (_alice2, _rx) = w.device(Some(alice_id)).await;
    let Push::Presence(on) = bob.next(|p| matches!(p, Push::Presence(_))).await else {
        unreachable!()
    };
    assert_eq!((on.user_id.as_str(), on.online), ("alice", true));
}

#[tokio::test]
async fn offline_messages_are_stored_pushed_in_order_and_deleted_on_ack() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    let bob_id = Identity { user_id: "bob".into(), key: bob.key.clone() };
    bob.link.shutdown().await;

    let mut stamps = Vec::new();
    for i in 0..5u8 {
        let sent = alice.link.send("bob", &format!("m{i}"), vec![i; 100]).await.unwrap();
        assert!(!sent.duplicate);
        stamps.push(sent.server_ts);
    }
    let again = alice.link.send("bob", "m2", vec![2; 100]).await.unwrap();
    assert!(again.duplicate);
    assert_eq!(again.server_ts, stamps[2]);
    assert_eq!(w.relay().storage.mailbox_len().await.unwrap(), 5);
    assert_eq!(kind(alice.link.send("nobody", "m9", vec![1]).await), Kind::NotFound);
    assert_eq!(kind(alice.link.send("bob", "big", vec![0; 256 * 1024 + 1]).await), Kind::TooLarge);

    let (bob, mut rx) = w.device(Some(bob_id)).await;
    let mut got = Vec::new();
    while got.len() < 5 {
        if let Push::Message(m) = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap() {
            got.push(m);
        }
    }
    let ids: Vec<_> = got.iter().map(|m| m.msg_id.as_str()).collect();
    assert_eq!(ids, ["m0", "m1", "m2", "m3", "m4"]);
    assert!(got.iter().all(|m| m.from == "alice"));
    assert_eq!(got[3].body, vec![3; 100]);
    bob.ack(&got.iter().map(|m| m.delivery_id).collect::<Vec<_>>()).await.unwrap();
    assert_eq!(w.relay().storage.mailbox_len().await.unwrap(), 0);

    // A retransmit after delivery is acknowledged again, not stored again.
    assert!(alice.link.send("bob", "m4", vec![4; 100]).await.unwrap().duplicate);
    assert_eq!(w.relay().storage.mailbox_len().await.unwrap(), 0);

    // Live delivery while connected.
    alice.link.send("bob", "live", b"hello".to_vec()).await.unwrap();
    let m = loop {
        if let Push::Message(m) = tokio::time::timeout(T, rx.recv()).await.unwrap().unwrap() {
            break m;
        }
    };
    assert_eq!(m.msg_id, "live");
    // Someone else's ack cannot delete bob's mail.
    alice.link.ack(&[m.delivery_id]).await.unwrap();
    assert_eq!(w.relay().storage.mailbox_len().await.unwrap(), 1);
    bob.ack(&[m.delivery_id]).await.unwrap();
    assert_eq!(w.relay().storage.mailbox_len().await.unwrap(), 0);
}

#[tokio::test]
async fn mailbox_quota_is_a_clear_error() {
    // Twelve per mailbox: three (a quarter) from any one sender.
    let limits = Limits { mailbox_max_messages: 12, ..Limits::default() };
    let w = World::with_limits(limits).await;
    let alice = w.user("alice").await;
    let _bob = w.user("bob").await.link.shutdown().await;
    for i in 0..3 {
        alice.link.send("bob", &format!("q{i}"), vec![1]).await.unwrap();
    }
    assert_eq!(kind(alice.link.send("bob", "q3", vec![1]).await), Kind::QuotaExceeded);
}

#[tokio::test]
async fn a_link_reconnects_by_itself_after_a_relay_restart() {
    let mut w = World::new().await;
    let alice = w.user("alice").await;
    let mut status = alice.link.status();
    w.restart().await;
    tokio::time::timeout(T, status.wait_for(|s| s.state != ConnState::Connected))
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(
        T,
        status
            .wait_for(|s| s.state == ConnState::Connected && s.user_id.as_deref() == Some("alice")),
    )
    .await
    .unwrap()
    .unwrap();
    alice.link.ping().await.unwrap();
    assert_eq!(alice.link.profile().await.unwrap().user_id, "alice");
}

#[tokio::test]
async fn no_password_anywhere_in_the_data_directory() {
    let mut w = World::new().await;
    let (link, _rx) = w.device(None).await;
    link.register(registration("alice", "canary-password-4f1c9"), new_key()).await.unwrap();
    link.change_password("canary-password-4f1c9", "canary-password-8e2d7").await.unwrap();
    let data_dir = w.relay().data_dir.clone();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&data_dir).unwrap() {
        files.push(entry.unwrap().path());
    }
    // Read while running (WAL present) and after a clean stop.
    let scan = |files: &[std::path::PathBuf]| {
        for f in files {
            let Ok(bytes) = std::fs::read(f) else { continue };
            for canary in [&b"canary-password-4f1c9"[..], b"canary-password-8e2d7"] {
                assert!(
                    !bytes.windows(canary.len()).any(|w| w == canary),
                    "password found in {}",
                    f.display()
                );
            }
        }
    };
    assert!(
        files.iter().any(|f| f.to_string_lossy().ends_with("-wal")),
        "expected a WAL file: {files:?}"
    );
    scan(&files);
    link.shutdown().await;
    w.stop().await;
    scan(&files);
}

#[tokio::test]
async fn random_udp_datagrams_do_not_hurt() {
    let w = World::new().await;
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for i in 0..5000usize {
        let len = 1 + (i * 7919) % 1400;
        let junk: Vec<u8> = (0..len).map(|_| rand::random()).collect();
        let _ = sock.send_to(&junk, w.addr);
    }
    let alice = w.user("alice").await;
    alice.link.ping().await.unwrap();
}

/// A raw QUIC connection offering `alpn`.
async fn raw_conn(w: &World, alpn: &[u8]) -> Result<quinn::Connection, String> {
    let pem = std::fs::read(&w.relay().cert_path).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    ep.connect(w.addr, "localhost").unwrap().await.map_err(|e| e.to_string())
}

async fn raw_request(conn: &quinn::Connection, req: &Request) -> Result<Response, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(&req.encode().unwrap()).await.map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    let data = recv.read_to_end(2 << 20).await.map_err(|e| e.to_string())?;
    Response::decode(&data[4..]).map_err(|e| e.to_string())
}

#[tokio::test]
async fn alpn_is_required() {
    let w = World::new().await;
    assert!(raw_conn(&w, b"h3").await.is_err());
    let ok = raw_conn(&w, b"letstalk/1").await.unwrap();
    assert!(matches!(
        raw_request(&ok, &Request::Ping { nonce: 5 }).await,
        Ok(Response::Pong { nonce: 5 })
    ));
    // Malformed frame: an error answer, and the connection stays usable.
    let (mut send, mut recv) = ok.open_bi().await.unwrap();
    send.write_all(&[0, 0, 0, 3, 0xFF, 1, 2]).await.unwrap();
    send.finish().unwrap();
    let data = recv.read_to_end(1 << 16).await.unwrap();
    assert!(matches!(Response::decode(&data[4..]), Ok(Response::Error { .. })));
    assert!(matches!(
        raw_request(&ok, &Request::GetProfile).await,
        Ok(Response::Error { kind: letstalk_wire::ErrorKind::Invalid, .. })
    ));
}

#[tokio::test]
async fn abusive_connections_are_cut_off_and_others_unaffected() {
    let limits = Limits { stream_burst: 300, streams_per_sec: 50, ..Limits::default() };
    let w = World::with_limits(limits).await;
    let bob = w.user("bob").await;

    // A 100 MB frame announcement closes that connection at once.
    let big = raw_conn(&w, b"letstalk/1").await.unwrap();
    let (mut send, _recv) = big.open_bi().await.unwrap();
    send.write_all(&(100u32 * 1024 * 1024).to_be_bytes()).await.unwrap();
    let reason = tokio::time::timeout(T, big.closed()).await.unwrap();
    assert!(
        matches!(&reason, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == letstalk_relay::close::FRAME_TOO_LARGE.into()),
        "{reason:?}"
    );
    bob.link.ping().await.unwrap();

    // Thousands of streams: cut off; bob keeps working meanwhile.
    let flood = raw_conn(&w, b"letstalk/1").await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..3000u64 {
        let c = flood.clone();
        tasks.spawn(async move { raw_request(&c, &Request::Ping { nonce: i }).await });
    }
    let reason = tokio::time::timeout(T, flood.closed()).await.unwrap();
    assert!(
        matches!(&reason, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == letstalk_relay::close::TOO_MANY_STREAMS.into()),
        "{reason:?}"
    );
    let mut failed = 0;
    while let Some(r) = tasks.join_next().await {
        failed += usize::from(r.unwrap().is_err());
    }
    assert!(failed > 2000, "only {failed} streams were refused");
    for _ in 0..20 {
        bob.link.ping().await.unwrap();
    }
}

#[tokio::test]
async fn login_and_register_are_rate_limited() {
    let limits = Limits {
        login_per_account: RateLimit { burst: 2, per_minute: 1 },
        register_per_ip: RateLimit { burst: 2, per_minute: 1 },
        ..Limits::default()
    };
    let w = World::with_limits(limits).await;
    let _alice = w.user("alice").await;
    let _bob = w.user("bob").await;
    let (anon, _rx) = w.device(None).await;
    let e = anon.register(registration("carol", "correct horse"), new_key()).await.unwrap_err();
    assert_eq!(e.kind(), Kind::RateLimited);
    assert!(e.retry_after_ms().unwrap() > 1000);
    assert_eq!(kind(anon.login("alice", "wrong password", new_key()).await), Kind::AuthFailed);
    assert_eq!(kind(anon.login("alice", "wrong password", new_key()).await), Kind::AuthFailed);
    let e = anon.login("alice", "correct horse battery", new_key()).await.unwrap_err();
    assert_eq!(e.kind(), Kind::RateLimited);
    let ms = e.retry_after_ms().unwrap();
    assert!((1..=60_000).contains(&ms), "{ms}");
}

#[tokio::test]
async fn delete_account_and_logout() {
    let w = World::new().await;
    let alice = w.user("alice").await;
    let bob = w.user("bob").await;
    bob.link.logout().await.unwrap();
    assert_eq!(kind(bob.link.profile().await), Kind::NotLoggedIn);
    bob.link.login("bob", "correct horse battery", bob.key.clone()).await.unwrap();
    alice.link.send("bob", "x", vec![1]).await.unwrap();
    bob.link.delete_account().await.unwrap();
    assert_eq!(w.relay().storage.mailbox_len().await.unwrap(), 0);
    assert_eq!(kind(alice.link.lookup_user("bob").await), Kind::NotFound);
    // The id is free again.
    let (anon, _rx) = w.device(None).await;
    anon.register(registration("bob", "correct horse"), new_key()).await.unwrap();
}

/// Starts the real binary and returns it with the address from its `listening on` line.
fn spawn_relay(args: &[&str], stderr: Stdio) -> (std::process::Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_letstalk-relay"))
        .args(args)
        .env_remove("LETSTALK_LOG")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("bad line {line:?}"))
        .to_owned();
    (child, addr)
}

#[tokio::test]
async fn the_binary_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Everything logged at trace level goes to a file that is searched for secrets below.
    let log_path = dir.path().join("relay.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let (mut child, addr) = spawn_relay(
        &["--listen", "127.0.0.1:0", "--data-dir", data.to_str().unwrap(), "--log", "trace"],
        Stdio::from(log),
    );
    let port: u16 = addr.rsplit_once(':').unwrap().1.parse().unwrap();
    assert_ne!(port, 0);
    let cert = data.join("relay-cert.pem");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(data.join("relay-key.pem")).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let mut config = LinkConfig::new(format!("localhost:{port}"), Some(cert.clone()));
    config.relays = vec![format!("127.0.0.1:{port}")];
    let (link, _rx) = Link::start(config, None).unwrap();
    link.wait_connected(T).await.unwrap();
    link.register(registration("alice", "canary-pass-71f3"), new_key()).await.unwrap();
    link.change_password("canary-pass-71f3", "canary-pass-92ab").await.unwrap();
    let mut to_bob = LinkConfig::new(format!("localhost:{port}"), Some(cert.clone()));
    to_bob.relays = vec![format!("127.0.0.1:{port}")];
    let (bob, _bob_rx) = Link::start(to_bob, None).unwrap();
    bob.wait_connected(T).await.unwrap();
    bob.register(registration("bob", "correct horse battery"), new_key()).await.unwrap();
    // To another account: a legacy send to one's own account has no target device.
    link.send("bob", "m1", b"canary-body-5c5c".to_vec()).await.unwrap();
    let cert_before = std::fs::read(&cert).unwrap();

    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "{exit:?}");
    let log = std::fs::read(&log_path).unwrap();
    assert!(log.len() > 1000, "expected trace logs");
    for canary in [&b"canary-pass-71f3"[..], b"canary-pass-92ab", b"canary-body-5c5c"] {
        let found = log.windows(canary.len()).any(|w| w == canary);
        assert!(!found, "{} in the log", String::from_utf8_lossy(canary));
    }

    // Restart on the same data directory: the certificate is reused, the account kept.
    let (mut child, _addr) = spawn_relay(
        &["--listen", &format!("127.0.0.1:{port}"), "--data-dir", data.to_str().unwrap()],
        Stdio::null(),
    );
    assert_eq!(std::fs::read(&cert).unwrap(), cert_before);
    let mut status = link.status();
    tokio::time::timeout(
        T,
        status.wait_for(|s| s.state == ConnState::Connected && s.user_id.is_some()),
    )
    .await
    .unwrap()
    .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn the_binary_rejects_bad_configuration_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad_toml = dir.path().join("bad.toml");
    std::fs::write(&bad_toml, "listen = \"127.0.0.1:0\"\nbogus_key = 1\n").unwrap();
    for args in [
        vec!["--listen", "not-an-address"],
        vec!["--cluster", "http://127.0.0.1:4222"],
        vec!["--cluster", "nats://127.0.0.1:0"],
        // Nothing listens there: the relay cannot start.
        vec!["--cluster", "nats://127.0.0.1:1"],
        vec!["--cert", "/nonexistent.pem"],
        vec!["--config", bad_toml.to_str().unwrap()],
        vec!["--config", "/nonexistent.toml"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_letstalk-relay"))
            .args(&args)
            .args(["--data-dir", dir.path().join("d").to_str().unwrap()])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn flags_override_environment_which_overrides_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    let data = dir.path().join("from-file");
    std::fs::write(
        &config,
        format!(
            "listen = \"not valid\"\ndata_dir = {:?}\nmessage_ttl_days = 7\n",
            data.to_str().unwrap()
        ),
    )
    .unwrap();
    // The environment's listen address beats the file's (invalid) one; the file's data
    // directory is used since neither flag nor environment names one.
    let mut child = Command::new(env!("CARGO_BIN_EXE_letstalk-relay"))
        .args(["--config", config.to_str().unwrap()])
        .env("LETSTALK_LISTEN", "127.0.0.1:0")
        .env_remove("LETSTALK_DATA_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.starts_with("listening on 127.0.0.1:"), "{line:?}");
    assert!(data.join("relay.db").exists());
    child.kill().unwrap();
    child.wait().unwrap();
    // A flag beats the environment: an invalid flag fails even with a valid variable.
    let out = Command::new(env!("CARGO_BIN_EXE_letstalk-relay"))
        .args(["--config", config.to_str().unwrap(), "--listen", "bad"])
        .env("LETSTALK_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
