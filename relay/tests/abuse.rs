//! Attacker tests through the relay protocol: a hostile account (with `letstalk-link`
//! clients or raw QUIC connections) cannot make the relay hold unbounded memory, watch a
//! user's presence without consent, fill a victim's mailbox against its contacts, replay
//! an auth signature on another connection, leave its id behind after deletion, or answer
//! another user's sender by acknowledging a delivery id that is not its own.

// Test helpers outside `#[test]` functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use letstalk_link::{Identity, Kind, Link, LinkConfig, LinkError, Push, Registration, SigningKey};
use letstalk_relay::testing::{self, TestRelay};
use letstalk_relay::{Config, Limits};
use letstalk_wire::{
    AUTH_EXPORTER_LABEL, AUTH_EXPORTER_LEN, Copy, ErrorKind, PROTOCOL_VERSION, PresenceInfo,
    Request, Response, auth_message,
};
use tokio::sync::mpsc::Receiver;

const T: Duration = Duration::from_secs(20);

/// What one connection may make the relay hold, as ARCHITECTURE.md states it.
const CONNECTION_MEMORY_BOUND: u64 = 96 * 1024 * 1024;

struct World {
    _dir: tempfile::TempDir,
    relay: TestRelay,
}

struct Device {
    link: Link,
    pushes: Receiver<Push>,
    key: SigningKey,
}

impl World {
    async fn new(limits: Limits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_tests(dir.path().join("relay"));
        config.limits = limits;
        let relay = testing::start(config).await.unwrap();
        Self { _dir: dir, relay }
    }

    fn link_config(&self) -> LinkConfig {
        link_config(self.relay.addr.port(), &self.relay.cert_path)
    }

    async fn user(&self, name: &str) -> Device {
        user(self.link_config(), name).await
    }
}

fn link_config(port: u16, cert: &Path) -> LinkConfig {
    let mut c = LinkConfig::new(format!("127.0.0.1:{port}"), Some(cert.to_owned()));
    c.backoff_min = Duration::from_millis(100);
    c.backoff_max = Duration::from_millis(500);
    c
}

async fn user(config: LinkConfig, name: &str) -> Device {
    let (link, pushes) = Link::start(config, None).unwrap();
    link.wait_connected(T).await.unwrap();
    let key = SigningKey::from_bytes(&rand::random());
    let reg = Registration {
        user_id: name.into(),
        password: "correct horse battery".into(),
        email: format!("{name}@example.org"),
        nickname: name.to_uppercase(),
        identity: vec![7; 32],
    };
    link.register(reg, key.clone()).await.unwrap();
    Device { link, pushes, key }
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

    async fn presence_of(&mut self, user: &str) -> PresenceInfo {
        let user = user.to_owned();
        match self.next(move |p| matches!(p, Push::Presence(i) if i.user_id == user)).await {
            Push::Presence(p) => p,
            _ => unreachable!(),
        }
    }
}

fn kind<T: std::fmt::Debug>(r: Result<T, LinkError>) -> Kind {
    r.unwrap_err().kind()
}

/// The refusal a raw request (`Link::request`) got.
fn refused(r: Result<Response, LinkError>) -> ErrorKind {
    match r.unwrap() {
        Response::Error { kind, .. } => kind,
        other => panic!("not refused: {other:?}"),
    }
}

#[tokio::test]
async fn presence_goes_only_to_contacts_and_to_nobody_without_share_presence() {
    let w = World::new(Limits::default()).await;
    let alice = w.user("alice").await;
    let mut bob = w.user("bob").await;
    let mut mallory = w.user("mallory").await;
    alice.link.set_contacts(true, vec!["bob".into()]).await.unwrap();

    // The stranger watches first, so every announcement reaches her before bob.
    let seen = mallory.link.watch(vec!["alice".into()], vec![]).await.unwrap();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].hidden && !seen[0].online && seen[0].last_seen_at == 0, "{seen:?}");
    let seen = bob.link.watch(vec!["alice".into()], vec![]).await.unwrap();
    assert!(seen[0].online && !seen[0].hidden, "{seen:?}");

    // share_presence off: the contact is told `hidden` at once and sees it when asking.
    alice.link.set_contacts(false, vec!["bob".into()]).await.unwrap();
    let p = bob.presence_of("alice").await;
    assert!(p.hidden && !p.online && p.last_seen_at == 0, "{p:?}");
    let seen = bob.link.watch(vec!["alice".into()], vec![]).await.unwrap();
    assert!(seen[0].hidden && !seen[0].online, "{seen:?}");
    alice.link.set_contacts(true, vec!["bob".into()]).await.unwrap();
    let p = bob.presence_of("alice").await;
    assert!(p.online && !p.hidden, "{p:?}");

    // Going offline reaches the contact with the last-seen time...
    alice.link.shutdown().await;
    let p = bob.presence_of("alice").await;
    assert!(!p.online && !p.hidden && p.last_seen_at > 0, "{p:?}");
    // ...and never the stranger: a message sent after that arrives on her push stream
    // behind anything announced to her, and nothing of alice came before it.
    bob.link.send("mallory", "after", b"x".to_vec()).await.unwrap();
    loop {
        match tokio::time::timeout(T, mallory.pushes.recv()).await.unwrap().unwrap() {
            Push::Message(m) if m.msg_id == "after" => break,
            Push::Presence(p) => panic!("the stranger was told {p:?}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_stranger_flooding_an_offline_victim_cannot_stop_a_contacts_message() {
    // A quarter (10 messages) per sender, and a quarter for all strangers together.
    let limits = Limits { mailbox_max_messages: 40, ..Limits::default() };
    let w = World::new(limits).await;
    let victim = w.user("victim").await;
    let friend = w.user("friend").await;
    let mallory = w.user("mallory").await;
    let mallory2 = w.user("mallory2").await;
    victim.link.set_contacts(true, vec!["friend".into()]).await.unwrap();
    victim.link.shutdown().await;

    let mut accepted = 0;
    for i in 0..100 {
        match mallory.link.send("victim", &format!("flood{i}"), vec![0; 1000]).await {
            Ok(_) => accepted += 1,
            Err(e) => {
                assert_eq!(e.kind(), Kind::QuotaExceeded);
                break;
            }
        }
    }
    assert_eq!(accepted, 10, "one sender fills only its share");
    // A second stranger finds the strangers' share full, in a batch or a group message.
    assert_eq!(kind(mallory2.link.send("victim", "more", vec![0; 10]).await), Kind::QuotaExceeded);
    let group = Request::SendGroup { to: vec!["victim".into()], msg_id: "g".into(), body: vec![1] };
    match mallory2.link.request(group).await.unwrap() {
        Response::GroupSent { refused, .. } => {
            assert_eq!(refused.len(), 1);
            assert_eq!(refused[0].kind, ErrorKind::QuotaExceeded);
        }
        other => panic!("{other:?}"),
    }
    // The contact's messages are still queued.
    for i in 0..10 {
        friend.link.send("victim", &format!("hello{i}"), b"hi".to_vec()).await.unwrap();
    }
    assert_eq!(w.relay.storage.mailbox_len().await.unwrap(), 20);
}

#[tokio::test]
async fn send_group_is_checked_before_anything_is_stored() {
    let limits = Limits { max_group_recipients: 8, max_fanout_bytes: 4096, ..Limits::default() };
    let w = World::new(limits).await;
    let alice = w.user("alice").await;
    let _bob = w.user("bob").await;
    let _carol = w.user("carol").await;
    let send = |to: Vec<&str>, body: usize| {
        let req = Request::SendGroup {
            to: to.into_iter().map(str::to_owned).collect(),
            msg_id: "g1".into(),
            body: vec![1; body],
        };
        alice.link.request(req)
    };
    let many: Vec<String> = (0..9).map(|i| format!("user{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(refused(send(many, 10).await), ErrorKind::Invalid);
    assert_eq!(refused(send(vec!["bob", "carol", "BOB"], 10).await), ErrorKind::Invalid);
    // Two recipients of 2,049 bytes is over the 4,096 the fan-out may store.
    assert_eq!(refused(send(vec!["bob", "carol"], 2049).await), ErrorKind::TooLarge);
    assert_eq!(w.relay.storage.mailbox_len().await.unwrap(), 0);
    // Unknown recipients are refused one by one; the others get it.
    match send(vec!["nobody", "bob", "carol"], 1365).await.unwrap() {
        Response::GroupSent { refused, .. } => {
            assert_eq!(refused.len(), 1);
            assert_eq!(
                (refused[0].user_id.as_str(), refused[0].kind),
                ("nobody", ErrorKind::NotFound)
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(w.relay.storage.mailbox_len().await.unwrap(), 2);
}

#[tokio::test]
async fn directory_reads_are_rate_limited_per_account() {
    let limits = Limits {
        directory_per_account: letstalk_relay::RateLimit { burst: 5, per_minute: 1 },
        ..Limits::default()
    };
    let w = World::new(limits).await;
    let mallory = w.user("mallory").await;
    let bob = w.user("bob").await;
    let mut ok = 0;
    let limited = loop {
        let r = match ok % 3 {
            0 => mallory.link.lookup_user(&format!("guess{ok}")).await.map(|_| ()),
            1 => mallory.link.fetch_avatar("bob").await.map(|_| ()),
            _ => mallory.link.fetch_bundle("bob").await.map(|_| ()),
        };
        match r {
            Err(e) if e.kind() == Kind::RateLimited => break e,
            _ => ok += 1,
        }
        assert!(ok <= 5, "never limited");
    };
    assert_eq!(ok, 5);
    assert!(limited.retry_after_ms().unwrap() > 1000);
    // Another account is not limited by mallory's use.
    bob.link.lookup_user("mallory").await.unwrap();
}

#[tokio::test]
async fn reports_have_a_per_account_rate_and_quota() {
    let limits = Limits {
        reports_per_account_rate: letstalk_relay::RateLimit { burst: 3, per_minute: 1 },
        reports_per_account: 2,
        ..Limits::default()
    };
    let w = World::new(limits).await;
    let mallory = w.user("mallory").await;
    let report = |i: u32| Request::SubmitReport {
        id: format!("r{i}"),
        kind: letstalk_wire::ReportKind::Feedback,
        body: b"{}".to_vec(),
    };
    mallory.link.request(report(0)).await.unwrap();
    mallory.link.request(report(1)).await.unwrap();
    assert_eq!(refused(mallory.link.request(report(2)).await), ErrorKind::QuotaExceeded);
    assert_eq!(refused(mallory.link.request(report(3)).await), ErrorKind::RateLimited);
}

/// A raw QUIC connection speaking the relay protocol.
async fn raw_conn(addr: std::net::SocketAddr, cert: &Path) -> quinn::Connection {
    let pem = std::fs::read(cert).unwrap();
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
    tls.alpn_protocols = vec![letstalk_wire::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    ep.connect(addr, "localhost").unwrap().await.unwrap()
}

async fn raw_request(conn: &quinn::Connection, req: &Request) -> Response {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&req.encode().unwrap()).await.unwrap();
    send.finish().unwrap();
    let data = recv.read_to_end(4 << 20).await.unwrap();
    Response::decode(&data[4..]).unwrap()
}

/// Says hello; returns the connection's challenge and TLS exporter value.
async fn hello(conn: &quinn::Connection) -> ([u8; 32], [u8; AUTH_EXPORTER_LEN]) {
    let hello = Request::Hello { versions: vec![PROTOCOL_VERSION], client: "attacker".into() };
    let Response::HelloOk { challenge, .. } = raw_request(conn, &hello).await else {
        panic!("no hello")
    };
    let mut exporter = [0u8; AUTH_EXPORTER_LEN];
    conn.export_keying_material(&mut exporter, AUTH_EXPORTER_LABEL, &[]).unwrap();
    (challenge, exporter)
}

#[tokio::test]
async fn an_auth_signature_is_worthless_on_any_other_connection() {
    let w = World::new(Limits::default()).await;
    let alice = w.user("alice").await;
    alice.link.shutdown().await;
    let auth = |signature: ed25519_dalek::Signature| Request::Auth {
        user_id: "alice".into(),
        device_key: alice.key.verifying_key().to_bytes(),
        signature: signature.to_bytes(),
    };
    use ed25519_dalek::Signer;
    // The device signs for its own connection (a)...
    let a = raw_conn(w.relay.addr, &w.relay.cert_path).await;
    let (challenge_a, exporter_a) = hello(&a).await;
    let signed_a = alice.key.sign(&auth_message(&challenge_a, &exporter_a, "alice"));
    // ...an attacker replays it on its connection (b), and, in the middle, gets the
    // device to sign b's challenge over the device's own TLS session: both refused.
    let b = raw_conn(w.relay.addr, &w.relay.cert_path).await;
    let (challenge_b, exporter_b) = hello(&b).await;
    assert_ne!(exporter_a, exporter_b);
    let relayed = alice.key.sign(&auth_message(&challenge_b, &exporter_a, "alice"));
    for sig in [signed_a, relayed] {
        match raw_request(&b, &auth(sig)).await {
            Response::Error { kind: ErrorKind::AuthFailed, .. } => {}
            other => panic!("accepted a foreign signature: {other:?}"),
        }
    }
    // The signature made for a is good on a, and b's own signature on b.
    assert!(matches!(raw_request(&a, &auth(signed_a)).await, Response::Authenticated { .. }));
    let own_b = alice.key.sign(&auth_message(&challenge_b, &exporter_b, "alice"));
    assert!(matches!(raw_request(&b, &auth(own_b)).await, Response::Authenticated { .. }));
}

/// Every file under `dir` (names and contents) that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let name_hit = p
                .file_name()
                .unwrap()
                .as_encoded_bytes()
                .windows(needle.len())
                .any(|w| w == needle);
            if p.is_dir() {
                stack.push(p.clone());
            } else if name_hit
                || std::fs::read(&p).unwrap().windows(needle.len()).any(|w| w == needle)
            {
                found.push(p.display().to_string());
            }
        }
    }
    found
}

#[tokio::test]
async fn after_deleting_an_account_nothing_with_its_id_remains_in_the_data_directory() {
    let w = World::new(Limits::default()).await;
    let dora = w.user("dorazq").await;
    let erin = w.user("erinqx").await;
    // Everything the relay can hold about dora: keys, avatar, contacts, blocks, watches,
    // last-seen, mail to and from her, reports, dedupe records.
    dora.link
        .upload_keys(letstalk_link::KeyUpload {
            identity: Some(vec![9; 32]),
            signed_prekey: Some(letstalk_link::PreKey { id: 1, key: vec![1; 32] }),
            one_time_prekeys: vec![letstalk_link::PreKey { id: 2, key: vec![2; 32] }],
            last_resort: None,
        })
        .await
        .unwrap();
    let avatar = letstalk_link::Avatar { mime: "image/png".into(), data: vec![0x89, 1, 2, 3] };
    dora.link
        .update_profile(Some("Dora".into()), None, letstalk_link::AvatarUpdate::Set(avatar))
        .await
        .unwrap();
    dora.link.set_contacts(true, vec!["erinqx".into()]).await.unwrap();
    dora.link
        .request(Request::SetBlocks { block_all: false, users: vec!["mallory".into()] })
        .await
        .unwrap();
    dora.link.watch(vec!["erinqx".into()], vec![]).await.unwrap();
    erin.link.watch(vec!["dorazq".into()], vec![]).await.unwrap();
    erin.link.send("dorazq", "to-dora", b"x".to_vec()).await.unwrap();
    let report = Request::SubmitReport {
        id: "r1".into(),
        kind: letstalk_wire::ReportKind::Feedback,
        body: br#"{"text":"hi"}"#.to_vec(),
    };
    dora.link.request(report).await.unwrap();
    // Mail from her to erin, queued while erin is away.
    let erin_id = Identity { user_id: "erinqx".into(), key: erin.key.clone() };
    erin.link.shutdown().await;
    dora.link.send("erinqx", "from-dora", b"y".to_vec()).await.unwrap();

    dora.link.delete_account().await.unwrap();
    let left = files_containing(&w.relay.data_dir, b"dorazq");
    assert!(left.is_empty(), "dora's id is still in {left:?}");
    // Erin's own account is intact.
    let (erin, _rx) = Link::start(w.link_config(), Some(erin_id)).unwrap();
    erin.wait_connected(T).await.unwrap();
    erin.profile().await.unwrap();
}

/// The resident memory of process `pid`, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test]
async fn concurrent_maximal_group_sends_keep_the_relay_under_its_memory_bound() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_letstalk-relay"))
        .args(["--listen", "127.0.0.1:0", "--data-dir", data.to_str().unwrap(), "--log", "warn"])
        .env_remove("LETSTALK_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let port: u16 = line.trim().rsplit_once(':').unwrap().1.parse().unwrap();
    let config = link_config(port, &data.join("relay-cert.pem"));
    let pid = child.id();

    let attacker = user(config.clone(), "mallory").await;
    let alice = user(config.clone(), "alice").await;
    let mut bob = user(config.clone(), "bob").await;
    let real: Vec<String> = vec!["alice".into(), "bob".into()];
    alice.link.ping().await.unwrap();
    let baseline = rss_bytes(pid);

    // The largest group message the relay accepts: 256 recipients, 128 KiB each (the
    // 32 MiB fan-out limit), random names with two real users among them.
    let limits = Limits::default();
    let recipients = limits.max_group_recipients;
    let body_len = usize::try_from(limits.max_fanout_bytes).unwrap() / recipients;
    let attack = Arc::new(attacker.link);
    let mut tasks = tokio::task::JoinSet::new();
    for stream in 0..32 {
        let attack = attack.clone();
        let real = real.clone();
        tasks.spawn(async move {
            for round in 0..4 {
                let mut to: Vec<String> = (0..recipients - real.len())
                    .map(|i| format!("r{}x{i}", rand::random::<u32>()))
                    .collect();
                to.extend(real.iter().cloned());
                let req = Request::SendGroup {
                    to,
                    msg_id: format!("attack-{stream}-{round}"),
                    body: vec![0xA5; body_len],
                };
                let _ = attack.request(req).await;
            }
        });
    }
    // Meanwhile alice and bob talk, and the relay's memory is sampled.
    let mut peak = baseline;
    let mut served = 0;
    while !tasks.is_empty() {
        peak = peak.max(rss_bytes(pid));
        alice.link.send("bob", &format!("m{served}"), b"hello".to_vec()).await.unwrap();
        served += 1;
        while let Some(r) = tasks.try_join_next() {
            r.unwrap();
        }
    }
    peak = peak.max(rss_bytes(pid));
    let got = bob.next(|p| matches!(p, Push::Message(m) if m.from == "alice")).await;
    assert!(matches!(got, Push::Message(_)));
    let grew = peak.saturating_sub(baseline);
    println!(
        "relay RSS: baseline {} MiB, peak {} MiB (+{} MiB); {served} messages served meanwhile",
        baseline >> 20,
        peak >> 20,
        grew >> 20
    );
    assert!(grew < CONNECTION_MEMORY_BOUND, "the relay grew {} MiB", grew >> 20);
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Issue 16, the online fast path: a message to a connected device is pushed before its
/// commit (held 2 s here, a slow disk), and its sender is answered on the recipient's
/// acknowledgement, before the commit; a stranger naming the same delivery id answers
/// nobody; the acknowledged message is not left in the mailbox. The same for `Send` and
/// for `SendCopies` with one copy (what a daemon sends to an account with one device).
#[tokio::test]
async fn only_the_recipients_ack_answers_a_sender_before_the_commit() {
    let delay = Duration::from_secs(2);
    let w = World::new(Limits { commit_delay: delay, ..Limits::default() }).await;
    let alice = w.user("alice").await;
    let mut bob = w.user("bob").await;
    let mallory = w.user("mallory").await;
    let bobs_device = bob.link.status().borrow().device_id.unwrap();
    for copies in [false, true] {
        let started = std::time::Instant::now();
        let link = alice.link.clone();
        let send = tokio::spawn(async move {
            let body = vec![1; 32];
            if copies {
                let copies = vec![Copy { device_id: bobs_device, body }];
                let request = Request::SendCopies { to: "bob".into(), msg_id: "m2".into(), copies };
                assert!(matches!(link.request(request).await, Ok(Response::Sent { .. })));
            } else {
                link.send("bob", "m1", body).await.unwrap();
            }
        });
        let Push::Message(m) = bob.next(|p| matches!(p, Push::Message(_))).await else {
            unreachable!()
        };
        assert!(started.elapsed() < delay, "pushed only after the commit (copies: {copies})");
        let acks = |d: &Device| {
            let (link, id) = (d.link.clone(), m.delivery_id);
            tokio::spawn(async move { link.ack(&[id]).await })
        };
        let mallorys = acks(&mallory);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!send.is_finished(), "a stranger's acknowledgement answered the sender");
        let bobs = acks(&bob);
        tokio::time::timeout(delay / 2, send).await.unwrap().unwrap();
        assert!(started.elapsed() < delay, "answered only at the commit (copies: {copies})");
        mallorys.await.unwrap().unwrap();
        bobs.await.unwrap().unwrap();
        assert_eq!(w.relay.storage.mailbox_len().await.unwrap(), 0);
    }
}
