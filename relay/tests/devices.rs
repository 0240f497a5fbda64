//! Linked devices through the relay protocol, as an attacker would try them: several
//! devices of one account, each with its own mailbox (a copy for one device never
//! reaches another), copies that must name exactly the recipient's devices, a removed
//! device cut off at once, the device limit, the link rendezvous (write-once cells,
//! another account cannot answer for the opener, scanning is rate limited), a password
//! login that takes the account over. The same tests run on the embedded relay and on
//! two cluster nodes sharing one `nats-server` (devices of one account on different
//! nodes).

// Test helpers outside `#[test]` functions unwrap too: a failure is a test failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use letstalk_link::{
    ConnState, Identity, KeyUpload, Kind, Link, LinkConfig, PreKey, Push, Registration, SigningKey,
};
use letstalk_relay::testing::{self, NatsCluster, TestRelay};
use letstalk_relay::{Config, Limits, NatsStorage, RateLimit, Relay};
use letstalk_wire::{
    Copy, DeviceInfo, ErrorKind, LinkSlot, MAX_DEVICES, OutboundCopies, Request, Response,
};
use tokio::sync::mpsc::Receiver;
use tokio::sync::oneshot;

const T: Duration = Duration::from_secs(20);

/// One relay node: where it listens and the certificate to trust.
struct Node {
    addr: SocketAddr,
    cert: PathBuf,
    _stop: Option<oneshot::Sender<()>>,
}

/// An embedded relay (one node) or two cluster nodes on one `nats-server`.
struct Net {
    _dir: tempfile::TempDir,
    nodes: Vec<Node>,
    embedded: Option<TestRelay>,
    cluster: Option<(NatsCluster, NatsStorage)>,
}

impl Net {
    async fn embedded(limits: Limits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::for_tests(dir.path().join("relay"));
        config.limits = limits;
        let relay = testing::start(config).await.unwrap();
        let node = Node { addr: relay.addr, cert: relay.cert_path.clone(), _stop: None };
        Self { _dir: dir, nodes: vec![node], embedded: Some(relay), cluster: None }
    }

    async fn cluster(limits: Limits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let nats = NatsCluster::start(&dir.path().join("nats"), 1).unwrap();
        let mut nodes = Vec::new();
        let mut storage = None;
        for name in ["node-a", "node-b"] {
            let mut config = Config::for_tests(dir.path().join(name));
            config.cluster = Some(nats.url());
            config.node_id = name.into();
            config.limits = limits.clone();
            let relay = Relay::bind(config).await.unwrap();
            storage = storage.or_else(|| relay.cluster_storage().cloned());
            let (stop, stopped) = oneshot::channel::<()>();
            let node = Node {
                addr: relay.local_addr(),
                cert: relay.cert_path().to_owned(),
                _stop: Some(stop),
            };
            tokio::spawn(relay.serve(async move {
                let _ = stopped.await;
            }));
            nodes.push(node);
        }
        Self { _dir: dir, nodes, embedded: None, cluster: Some((nats, storage.unwrap())) }
    }

    /// Both back ends, one after the other.
    async fn each(limits: Limits) -> [Self; 2] {
        [Self::embedded(limits.clone()).await, Self::cluster(limits).await]
    }

    /// The `n`th node (the last one when there are fewer).
    fn link_config(&self, n: usize) -> LinkConfig {
        let node = &self.nodes[n.min(self.nodes.len() - 1)];
        link_config(node.addr.port(), &node.cert)
    }

    /// Messages queued in every mailbox.
    async fn mailbox_len(&self) -> u64 {
        match (&self.embedded, &self.cluster) {
            (Some(r), _) => r.storage.mailbox_len().await.unwrap(),
            (_, Some((_, s))) => s.mailbox_len().await.unwrap(),
            _ => unreachable!(),
        }
    }

    /// A fresh account `name` on node `n`, as its device 1.
    async fn user(&self, n: usize, name: &str) -> Device {
        let (link, pushes) = Link::start(self.link_config(n), None).unwrap();
        link.wait_connected(T).await.unwrap();
        let key = new_key();
        let reg = Registration {
            user_id: name.into(),
            password: "correct horse battery".into(),
            email: format!("{name}@example.org"),
            nickname: name.to_uppercase(),
            identity: vec![7; 32],
        };
        link.register(reg, key.clone()).await.unwrap();
        Device { link, pushes, key, user: name.into(), id: 1 }
    }

    /// A connection on node `n` that never authenticates.
    async fn anonymous(&self, n: usize) -> Link {
        let (link, _pushes) = Link::start(self.link_config(n), None).unwrap();
        link.wait_connected(T).await.unwrap();
        link
    }

    /// `by` adds a new device to its account; it connects to node `n`.
    async fn add_device(&self, by: &Device, n: usize) -> Device {
        let key = new_key();
        let added = by
            .link
            .request(Request::AddDevice {
                device_key: key.verifying_key().to_bytes(),
                name: b"sealed name".to_vec(),
            })
            .await
            .unwrap();
        let Response::DeviceAdded { device_id } = added else { panic!("{added:?}") };
        self.connect(&by.user, key, device_id, n).await
    }

    /// Connects a device of `user` with `key` to node `n`.
    async fn connect(&self, user: &str, key: SigningKey, id: u32, n: usize) -> Device {
        let identity = Identity { user_id: user.into(), key: key.clone() };
        let (link, pushes) = Link::start(self.link_config(n), Some(identity)).unwrap();
        link.wait_connected(T).await.unwrap();
        Device { link, pushes, key, user: user.into(), id }
    }
}

fn link_config(port: u16, cert: &Path) -> LinkConfig {
    let mut c = LinkConfig::new(format!("127.0.0.1:{port}"), Some(cert.to_owned()));
    c.backoff_min = Duration::from_millis(100);
    c.backoff_max = Duration::from_millis(500);
    c
}

fn new_key() -> SigningKey {
    SigningKey::from_bytes(&rand::random())
}

struct Device {
    link: Link,
    pushes: Receiver<Push>,
    key: SigningKey,
    user: String,
    id: u32,
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

    /// The next message pushed to this device (pushes of other kinds are skipped).
    async fn message(&mut self) -> letstalk_link::IncomingMessage {
        match self.next(|p| matches!(p, Push::Message(_))).await {
            Push::Message(m) => m,
            _ => unreachable!(),
        }
    }

    async fn request(&self, req: Request) -> Response {
        self.link.request(req).await.unwrap()
    }

    async fn copies(&self, to: &str, msg_id: &str, copies: &[(u32, &[u8])]) -> Response {
        let copies = copies.iter().map(|(d, b)| Copy { device_id: *d, body: b.to_vec() }).collect();
        self.request(Request::SendCopies { to: to.into(), msg_id: msg_id.into(), copies }).await
    }

    async fn devices(&self, of: &str) -> Vec<DeviceInfo> {
        match self.request(Request::ListDevices { user_id: of.into() }).await {
            Response::Devices { devices } => devices,
            other => panic!("{other:?}"),
        }
    }
}

fn refused(r: Response) -> ErrorKind {
    match r {
        Response::Error { kind, .. } => kind,
        other => panic!("not refused: {other:?}"),
    }
}

fn sent(r: &Response) -> bool {
    matches!(r, Response::Sent { duplicate: false, .. })
}

#[tokio::test]
async fn two_devices_of_one_account_each_get_only_their_own_copy() {
    for net in Net::each(Limits::default()).await {
        // In the cluster alice's devices are on different nodes, bob on the second.
        let mut alice1 = net.user(0, "alice").await;
        let mut alice2 = net.add_device(&alice1, 1).await;
        assert_eq!(alice2.id, 2);
        let bob = net.user(1, "bob").await;
        // The account's other devices hear of an added one (the daemon reads the list).
        let third = new_key().verifying_key().to_bytes();
        let r = alice1.request(Request::AddDevice { device_key: third, name: vec![] }).await;
        assert_eq!(r, Response::DeviceAdded { device_id: 3 });
        assert_eq!(alice2.next(|p| matches!(p, Push::DevicesChanged)).await, Push::DevicesChanged);
        assert_eq!(alice1.request(Request::RemoveDevice { device_id: 3 }).await, Response::Ok);

        let r = bob.copies("alice", "m1", &[(2, b"for two"), (1, b"for one")]).await;
        assert!(sent(&r), "{r:?}");
        let (m1, m2) = (alice1.message().await, alice2.message().await);
        assert_eq!((m1.from.as_str(), m1.from_device, m1.msg_id.as_str()), ("bob", 1, "m1"));
        assert_eq!((m1.body.as_slice(), m2.body.as_slice()), (&b"for one"[..], &b"for two"[..]));
        alice1.link.ack(&[m1.delivery_id]).await.unwrap();
        // The other device's copy cannot be acknowledged away by this one.
        alice1.link.ack(&[m2.delivery_id]).await.unwrap();
        assert_eq!(net.mailbox_len().await, 1, "alice1 deleted alice2's copy");
        alice2.link.ack(&[m2.delivery_id]).await.unwrap();

        // A "sent" copy to one's own account goes to every other device, from this one.
        let r = alice2.copies("alice", "own", &[(1, b"sent copy")]).await;
        assert!(sent(&r), "{r:?}");
        let own = alice1.message().await;
        assert_eq!(
            (own.from.as_str(), own.from_device, own.body.as_slice()),
            ("alice", 2, &b"sent copy"[..])
        );
        alice1.link.ack(&[own.delivery_id]).await.unwrap();
        // Nothing else was pushed to either device in between: the next message each
        // gets is the one sent after.
        let r = bob.copies("alice", "after", &[(1, b"a1"), (2, b"a2")]).await;
        assert!(sent(&r), "{r:?}");
        assert_eq!(alice1.message().await.msg_id, "after");
        assert_eq!(alice2.message().await.msg_id, "after");

        // Presence is the account's: online while either device is connected.
        alice1.link.set_contacts(true, vec!["bob".into()]).await.unwrap();
        let seen = bob.link.watch(vec!["alice".into()], vec![]).await.unwrap();
        assert!(seen[0].online, "{seen:?}");

        // Own list with names and times, another account's with ids only.
        let own = alice1.devices("alice").await;
        assert_eq!(own.iter().map(|d| d.device_id).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(own[1].name, b"sealed name");
        assert!(own[1].linked_at > 0 && own[1].last_seen_at > 0);
        let theirs = bob.devices("alice").await;
        assert_eq!(
            theirs,
            [1, 2].map(|d| DeviceInfo {
                device_id: d,
                name: vec![],
                linked_at: 0,
                last_seen_at: 0
            })
        );
        assert_eq!(
            refused(bob.request(Request::ListDevices { user_id: "nobody".into() }).await),
            ErrorKind::NotFound
        );
    }
}

#[tokio::test]
async fn copies_that_miss_add_or_repeat_a_device_are_refused_and_nothing_is_stored() {
    for net in Net::each(Limits::default()).await {
        let alice1 = net.user(0, "alice").await;
        let alice2 = net.add_device(&alice1, 1).await;
        let bob = net.user(0, "bob").await;
        alice1.link.shutdown().await;
        alice2.link.shutdown().await;
        for (copies, missing, extra) in [
            (&[(1, &b"x"[..])][..], vec![2], vec![]),
            (&[(1, &b"x"[..]), (2, b"x"), (3, b"x")][..], vec![], vec![3]),
            (&[(1, &b"x"[..]), (1, b"y"), (2, b"x")][..], vec![], vec![1]),
        ] {
            let r = bob.copies("alice", "m1", copies).await;
            assert_eq!(r, Response::Mismatch { missing, extra }, "{copies:?}");
        }
        // A legacy send to an account of two devices names both as missing.
        let legacy = Request::Send { to: "alice".into(), msg_id: "m1".into(), body: vec![1] };
        assert_eq!(
            bob.request(legacy).await,
            Response::Mismatch { missing: vec![1, 2], extra: vec![] }
        );
        assert_eq!(net.mailbox_len().await, 0, "a refused send stored something");

        // The right copies are stored once; a retransmit is acknowledged, not stored.
        assert!(sent(&bob.copies("alice", "m1", &[(1, b"x"), (2, b"y")]).await));
        let again = bob.copies("alice", "m1", &[(1, b"x"), (2, b"y")]).await;
        assert!(matches!(again, Response::Sent { duplicate: true, .. }), "{again:?}");
        assert_eq!(net.mailbox_len().await, 2);
        // To one's own account the sending device is no target.
        let own = alice1_copies_to_self(&net, &alice1).await;
        assert_eq!(own, Response::Mismatch { missing: vec![2], extra: vec![1] });
    }
}

/// A message's copies in a test: (device, body) each.
type Copies<'a> = &'a [(u32, &'a [u8])];

#[tokio::test]
async fn a_batch_of_copies_is_stored_whole_in_order_or_not_at_all() {
    for net in Net::each(Limits::default()).await {
        let mut alice1 = net.user(0, "alice").await;
        let mut alice2 = net.add_device(&alice1, 1).await;
        let bob = net.user(0, "bob").await;
        let batch = |messages: &[(&str, Copies<'_>)]| Request::SendCopiesBatch {
            to: "alice".into(),
            messages: messages
                .iter()
                .map(|(msg_id, copies)| OutboundCopies {
                    msg_id: (*msg_id).into(),
                    copies: copies
                        .iter()
                        .map(|(d, b)| Copy { device_id: *d, body: b.to_vec() })
                        .collect(),
                })
                .collect(),
        };
        // One message whose copies miss a device, behind two good ones: nothing stored.
        let bad = batch(&[
            ("b1", &[(1, b"1a"), (2, b"1b")]),
            ("b2", &[(1, b"2a"), (2, b"2b")]),
            ("b3", &[(1, b"3a")]),
        ]);
        assert_eq!(bob.request(bad).await, Response::Mismatch { missing: vec![2], extra: vec![] });
        // Another account's device, an empty body, an empty batch: refused or mismatched.
        let foreign = batch(&[("b1", &[(1, b"1a"), (2, b"1b"), (9, b"x")])]);
        assert_eq!(
            bob.request(foreign).await,
            Response::Mismatch { missing: vec![], extra: vec![9] }
        );
        assert_eq!(
            refused(bob.request(batch(&[("b1", &[(1, b""), (2, b"x")])])).await),
            ErrorKind::Invalid
        );
        assert_eq!(refused(bob.request(batch(&[])).await), ErrorKind::Invalid);
        assert_eq!(net.mailbox_len().await, 0, "a refused batch stored something");

        let good = batch(&[("b1", &[(2, b"1b"), (1, b"1a")]), ("b2", &[(1, b"2a"), (2, b"2b")])]);
        assert!(sent(&bob.request(good.clone()).await));
        // A retransmit of the whole batch is acknowledged, not stored again.
        let again = bob.request(good).await;
        assert!(matches!(again, Response::Sent { duplicate: true, .. }), "{again:?}");
        assert_eq!(net.mailbox_len().await, 4);
        for (device, own) in
            [(&mut alice1, [&b"1a"[..], b"2a"]), (&mut alice2, [&b"1b"[..], b"2b"])]
        {
            let (first, second) = (device.message().await, device.message().await);
            assert_eq!((first.msg_id.as_str(), second.msg_id.as_str()), ("b1", "b2"));
            assert_eq!([first.body.as_slice(), second.body.as_slice()], own);
        }
    }
}

/// alice's device 1 (offline) reconnects and names itself in a copy to its own account.
async fn alice1_copies_to_self(net: &Net, alice1: &Device) -> Response {
    let again = net.connect("alice", alice1.key.clone(), 1, 0).await;
    again.copies("alice", "self", &[(1, b"me")]).await
}

#[tokio::test]
async fn a_removed_device_is_logged_out_loses_its_mailbox_and_its_key_no_longer_works() {
    for net in Net::each(Limits::default()).await {
        let mut alice1 = net.user(0, "alice").await;
        let mut alice2 = net.add_device(&alice1, 1).await;
        let bob = net.user(0, "bob").await;
        assert!(sent(&bob.copies("alice", "m1", &[(1, b"x"), (2, b"y")]).await));
        let m1 = alice1.message().await;
        alice1.link.ack(&[m1.delivery_id]).await.unwrap();
        // alice2 has it pushed but not acknowledged: it is still queued for it.
        alice2.message().await;
        assert_eq!(net.mailbox_len().await, 1);

        assert_eq!(alice1.request(Request::RemoveDevice { device_id: 2 }).await, Response::Ok);
        assert_eq!(alice2.next(|p| matches!(p, Push::LoggedOut)).await, Push::LoggedOut);
        assert_eq!(alice1.next(|p| matches!(p, Push::DevicesChanged)).await, Push::DevicesChanged);
        assert_eq!(net.mailbox_len().await, 0, "the removed device's mailbox is left");
        assert_eq!(alice1.devices("alice").await.len(), 1);
        assert_eq!(
            refused(alice1.request(Request::RemoveDevice { device_id: 2 }).await),
            ErrorKind::NotFound
        );
        // Its key no longer authenticates, on any node; the link is told it is logged out.
        for n in 0..net.nodes.len() {
            let identity = Identity { user_id: "alice".into(), key: alice2.key.clone() };
            let (old, mut rx) = Link::start(net.link_config(n), Some(identity)).unwrap();
            let p = tokio::time::timeout(T, async {
                loop {
                    match rx.recv().await.unwrap() {
                        Push::State(_) => {}
                        other => return other,
                    }
                }
            })
            .await
            .unwrap();
            assert_eq!(p, Push::LoggedOut);
            assert_eq!(old.key_count().await.unwrap_err().kind(), Kind::NotLoggedIn);
        }
        // Another account cannot remove alice's devices: it only ever names its own.
        assert_eq!(
            refused(bob.request(Request::RemoveDevice { device_id: 2 }).await),
            ErrorKind::NotFound
        );
        alice1.link.ping().await.unwrap();
        assert_eq!(alice1.devices("alice").await.len(), 1);
    }
}

/// Any device of an account renames any device of it (the other devices hear of it);
/// another account's device ids name nothing for an attacker, and nothing changes.
#[tokio::test]
async fn a_device_is_renamed_only_by_its_own_account() {
    for net in Net::each(Limits::default()).await {
        // In the cluster alice's devices are on different nodes.
        let mut alice1 = net.user(0, "alice").await;
        let alice2 = net.add_device(&alice1, 1).await;
        let mut bob = net.user(1, "bob").await;
        let rename =
            |device_id: u32, name: &[u8]| Request::RenameDevice { device_id, name: name.to_vec() };

        // alice's desktop names her phone: the phone hears the list changed.
        assert_eq!(alice2.request(rename(1, b"sealed phone")).await, Response::Ok);
        assert_eq!(alice1.next(|p| matches!(p, Push::DevicesChanged)).await, Push::DevicesChanged);
        let names = |list: Vec<DeviceInfo>| list.into_iter().map(|d| d.name).collect::<Vec<_>>();
        let want = [b"sealed phone".to_vec(), b"sealed name".to_vec()];
        assert_eq!(names(alice1.devices("alice").await), want);
        assert_eq!(names(alice2.devices("alice").await), want);
        assert_eq!(refused(alice1.request(rename(3, b"x")).await), ErrorKind::NotFound);

        // bob tries alice's device ids: his account has no such device. His own device 1
        // is his, never alice's.
        assert_eq!(refused(bob.request(rename(2, b"pwned")).await), ErrorKind::NotFound);
        assert_eq!(bob.request(rename(1, b"bob's")).await, Response::Ok);
        assert_eq!(names(alice1.devices("alice").await), want, "bob changed alice's names");
        assert_eq!(bob.devices("bob").await[0].name, b"bob's");
        // Renaming is no way to learn names: another account's list still has none.
        assert!(bob.devices("alice").await.iter().all(|d| d.name.is_empty()));
        // bob's rename told nobody of alice's: the next push she gets is her own change.
        assert_eq!(alice1.request(rename(2, b"sealed desk")).await, Response::Ok);
        let told = tokio::time::timeout(Duration::from_millis(300), async {
            while let Some(p) = bob.pushes.recv().await {
                if p == Push::DevicesChanged {
                    return;
                }
            }
        });
        assert!(told.await.is_err(), "bob was told of alice's devices");
        // Without an account there is nothing to rename.
        let anon = net.anonymous(0).await;
        let r = anon.request(rename(1, b"x")).await.unwrap();
        assert_eq!(refused(r), ErrorKind::Unauthenticated);
        assert_eq!(alice1.devices("alice").await[1].name, b"sealed desk");
    }
}

#[tokio::test]
async fn adding_a_device_over_the_limit_or_with_a_taken_key_is_refused() {
    let net = Net::embedded(Limits::default()).await;
    let alice = net.user(0, "alice").await;
    let bob = net.user(0, "bob").await;
    let add = |key: [u8; 32]| Request::AddDevice { device_key: key, name: vec![] };
    let bobs_key = bob.key.verifying_key().to_bytes();
    assert_eq!(refused(alice.request(add(bobs_key)).await), ErrorKind::Conflict);
    assert_eq!(
        refused(alice.request(add(alice.key.verifying_key().to_bytes())).await),
        ErrorKind::Conflict
    );
    let not_a_key = (0..=255u8)
        .map(|b| [b; 32])
        .find(|k| ed25519_dalek::VerifyingKey::from_bytes(k).is_err())
        .unwrap();
    assert_eq!(refused(alice.request(add(not_a_key)).await), ErrorKind::Invalid);
    let mut ids = Vec::new();
    for _ in 1..MAX_DEVICES {
        match alice.request(add(new_key().verifying_key().to_bytes())).await {
            Response::DeviceAdded { device_id } => ids.push(device_id),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(ids, [2, 3, 4, 5]);
    assert_eq!(
        refused(alice.request(add(new_key().verifying_key().to_bytes())).await),
        ErrorKind::QuotaExceeded
    );
    assert_eq!(alice.devices("alice").await.len(), MAX_DEVICES);
    // Removing one frees a place, and the next device never takes a used id.
    assert_eq!(alice.request(Request::RemoveDevice { device_id: 3 }).await, Response::Ok);
    let Response::DeviceAdded { device_id } =
        alice.request(add(new_key().verifying_key().to_bytes())).await
    else {
        panic!()
    };
    assert_eq!(device_id, 6);
    // An unauthenticated connection cannot add anything.
    let anon = net.anonymous(0).await;
    let r = anon.request(add(new_key().verifying_key().to_bytes())).await.unwrap();
    assert_eq!(refused(r), ErrorKind::Unauthenticated);
}

#[tokio::test]
async fn a_link_rendezvous_is_write_once_and_only_the_account_answers_it() {
    for net in Net::each(Limits::default()).await {
        let alice = net.user(0, "alice").await;
        let mallory = net.user(1, "mallory").await;
        let joiner = net.anonymous(1).await;
        let slot = rand::random::<[u8; 16]>();
        let open = Request::LinkOpen { slot, hello: b"hello".to_vec() };
        assert_eq!(alice.request(open.clone()).await, Response::Ok);
        // Another account cannot take the name, nor can anyone without an account.
        let taken = mallory.request(Request::LinkOpen { slot, hello: vec![] }).await;
        assert_eq!(refused(taken), ErrorKind::Conflict);
        assert_eq!(refused(joiner.request(open).await.unwrap()), ErrorKind::Unauthenticated);

        let get = Request::LinkGet { slot };
        let put = |data: &[u8]| Request::LinkPut { slot, data: data.to_vec() };
        let slot_of = |r: Response| match r {
            Response::LinkSlot(s) => s,
            other => panic!("{other:?}"),
        };
        // The joining device (no account, on the other node) reads the hello and joins.
        let s = slot_of(joiner.request(get.clone()).await.unwrap());
        assert_eq!((s.hello.as_slice(), s.joined, s.reply), (&b"hello"[..], None, None));
        assert_eq!(joiner.request(put(b"joined")).await.unwrap(), Response::Ok);
        // Write-once: neither the joiner again nor another account replace it.
        assert_eq!(refused(joiner.request(put(b"again")).await.unwrap()), ErrorKind::Conflict);
        assert_eq!(refused(mallory.request(put(b"mallory")).await), ErrorKind::Conflict);
        // Only the account writes the reply, once.
        assert_eq!(alice.request(put(b"reply")).await, Response::Ok);
        assert_eq!(refused(alice.request(put(b"reply 2")).await), ErrorKind::Conflict);
        let s = slot_of(joiner.request(get.clone()).await.unwrap());
        assert_eq!(
            s,
            LinkSlot {
                hello: b"hello".to_vec(),
                joined: Some(b"joined".to_vec()),
                reply: Some(b"reply".to_vec())
            }
        );

        // A second rendezvous replaces the account's first. Another account putting
        // into it writes the joined cell, never the reply.
        let second = rand::random::<[u8; 16]>();
        assert_eq!(
            alice.request(Request::LinkOpen { slot: second, hello: vec![2] }).await,
            Response::Ok
        );
        assert_eq!(refused(joiner.request(get).await.unwrap()), ErrorKind::NotFound);
        let put2 = |data: &[u8]| Request::LinkPut { slot: second, data: data.to_vec() };
        assert_eq!(mallory.request(put2(b"evil")).await, Response::Ok);
        let s = slot_of(alice.request(Request::LinkGet { slot: second }).await);
        assert_eq!((s.joined.as_deref(), s.reply), (Some(&b"evil"[..]), None));
        assert_eq!(refused(mallory.request(put2(b"evil reply")).await), ErrorKind::Conflict);
        assert_eq!(alice.request(put2(b"reply")).await, Response::Ok);
        let unknown = Request::LinkGet { slot: rand::random() };
        assert_eq!(refused(joiner.request(unknown).await.unwrap()), ErrorKind::NotFound);
    }
}

#[tokio::test]
async fn scanning_for_link_slots_without_an_account_is_rate_limited() {
    let limits =
        Limits { link_rendezvous: RateLimit { burst: 5, per_minute: 1 }, ..Limits::default() };
    for net in Net::each(limits).await {
        let alice = net.user(0, "alice").await;
        let scanner = net.anonymous(0).await;
        let mut answered = 0;
        let limited = loop {
            let guess = if answered % 2 == 0 {
                Request::LinkGet { slot: rand::random() }
            } else {
                Request::LinkPut { slot: rand::random(), data: vec![1] }
            };
            match scanner.request(guess).await.unwrap() {
                Response::Error { kind: ErrorKind::NotFound, .. } => answered += 1,
                Response::Error { kind: ErrorKind::RateLimited, retry_after_ms, .. } => {
                    break retry_after_ms;
                }
                other => panic!("{other:?}"),
            }
            assert!(answered <= 5, "never limited");
        };
        assert_eq!(answered, 5);
        assert!(limited > 1000, "{limited}");
        // A second connection from the same address shares the bucket...
        let again = net.anonymous(0).await;
        let r = again.request(Request::LinkGet { slot: rand::random() }).await.unwrap();
        assert_eq!(refused(r), ErrorKind::RateLimited);
        // ...while the account's own reads are counted apart.
        let slot = rand::random();
        assert_eq!(alice.request(Request::LinkOpen { slot, hello: vec![1] }).await, Response::Ok);
        assert!(matches!(alice.request(Request::LinkGet { slot }).await, Response::LinkSlot(_)));
    }
}

#[tokio::test]
async fn a_password_login_removes_every_other_device() {
    for net in Net::each(Limits::default()).await {
        let mut alice1 = net.user(0, "alice").await;
        let mut alice2 = net.add_device(&alice1, 1).await;
        let bob = net.user(0, "bob").await;
        assert!(sent(&bob.copies("alice", "m", &[(1, b"x"), (2, b"y")]).await));
        let (fresh, _rx) = Link::start(net.link_config(1), None).unwrap();
        fresh.wait_connected(T).await.unwrap();
        let key = new_key();
        fresh.login("alice", "correct horse battery", key.clone()).await.unwrap();
        assert_eq!(alice1.next(|p| matches!(p, Push::LoggedOut)).await, Push::LoggedOut);
        assert_eq!(alice2.next(|p| matches!(p, Push::LoggedOut)).await, Push::LoggedOut);
        let me = Device { link: fresh, pushes: _rx, key, user: "alice".into(), id: 3 };
        assert_eq!(me.devices("alice").await.iter().map(|d| d.device_id).collect::<Vec<_>>(), [3]);
        assert_eq!(net.mailbox_len().await, 0, "the removed devices' mail is left");
        for old in [&alice1, &alice2] {
            let again = Identity { user_id: "alice".into(), key: old.key.clone() };
            let (link, _rx) = Link::start(net.link_config(0), Some(again)).unwrap();
            let status = tokio::time::timeout(T, async {
                let mut s = link.status();
                s.wait_for(|s| s.state == ConnState::Connected).await.unwrap().clone()
            })
            .await
            .unwrap();
            assert_eq!(status.user_id, None);
        }
    }
}

#[tokio::test]
async fn bundles_come_per_device_each_taking_its_own_one_time_prekey() {
    for net in Net::each(Limits::default()).await {
        let alice1 = net.user(0, "alice").await;
        let alice2 = net.add_device(&alice1, 1).await;
        let bob = net.user(1, "bob").await;
        for (d, base) in [(&alice1, 100), (&alice2, 200)] {
            let keys = KeyUpload {
                identity: None,
                signed_prekey: Some(PreKey { id: base, key: vec![1; 32] }),
                one_time_prekeys: vec![PreKey { id: base + 1, key: vec![2; 32] }],
                last_resort: Some(PreKey { id: base + 9, key: vec![9; 32] }),
            };
            assert_eq!(d.link.upload_keys(keys).await.unwrap(), 1);
        }
        let fetch = |devices: Vec<u32>| Request::FetchBundles { user_id: "alice".into(), devices };
        let Response::Bundles { bundles } = bob.request(fetch(vec![])).await else { panic!() };
        let got: Vec<_> = bundles
            .iter()
            .map(|b| {
                (
                    b.device_id,
                    b.identity.len(),
                    b.one_time_prekey.as_ref().unwrap().id,
                    b.last_resort,
                )
            })
            .collect();
        assert_eq!(got, [(1, 32, 101, false), (2, 32, 201, false)]);
        assert_eq!(bundles[1].device_key, alice2.key.verifying_key().to_bytes());
        let Response::Bundles { bundles } = bob.request(fetch(vec![2, 7])).await else { panic!() };
        let got: Vec<_> =
            bundles.iter().map(|b| (b.device_id, b.one_time_prekey.as_ref().unwrap().id)).collect();
        assert_eq!(got, [(2, 209)], "a device that is none of alice's is left out");
        assert_eq!(
            (alice1.link.key_count().await.unwrap(), alice2.link.key_count().await.unwrap()),
            (0, 0)
        );
        // The legacy request: the lowest-numbered device.
        let b = bob.link.fetch_bundle("alice").await.unwrap();
        assert_eq!((b.device_id, b.one_time_prekey.unwrap().id), (1, 109));
        let r =
            bob.request(Request::FetchBundles { user_id: "nobody".into(), devices: vec![] }).await;
        assert_eq!(refused(r), ErrorKind::NotFound);
    }
}

/// Sends `datagram` on `from` every 50 ms until `to` receives it.
async fn datagram_reaches(from: &Link, to: &mut Receiver<bytes::Bytes>, datagram: &[u8]) {
    tokio::time::timeout(T, async {
        loop {
            from.send_datagram(bytes::Bytes::copy_from_slice(datagram)).unwrap();
            tokio::select! {
                got = to.recv() => {
                    assert_eq!(got.unwrap().as_ref(), datagram);
                    return;
                }
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    })
    .await
    .expect("the datagram never arrived");
}

#[tokio::test]
async fn a_call_route_joins_the_two_devices_that_asked_for_it_and_no_other() {
    for net in Net::each(Limits::default()).await {
        let alice1 = net.user(0, "alice").await;
        let alice2 = net.add_device(&alice1, 1).await;
        let bob = net.user(0, "bob").await;
        let mut to_alice1 = alice1.link.take_datagrams().unwrap();
        let mut to_alice2 = alice2.link.take_datagrams().unwrap();
        let mut to_bob = bob.link.take_datagrams().unwrap();
        let call = rand::random::<[u8; 16]>();
        // bob calls alice; her second device takes the call, the first does not.
        let route = |peer: &str| Request::CallRoute { call_id: call, peer: peer.into() };
        assert_eq!(bob.request(route("alice")).await, Response::Ok);
        assert_eq!(alice2.request(route("bob")).await, Response::Ok);
        let media = |b: u8| {
            letstalk_wire::MediaDatagram { call_id: call, sealed: &[b; 40] }.encode().unwrap()
        };
        datagram_reaches(&bob.link, &mut to_alice2, &media(1)).await;
        datagram_reaches(&alice2.link, &mut to_bob, &media(2)).await;
        // The device that did not take the call gets none of it, and cannot send on it.
        alice1.link.send_datagram(media(3).into()).unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(to_alice1.try_recv().is_err(), "a device that did not take the call got its media");
        while let Ok(d) = to_bob.try_recv() {
            assert_ne!(d.as_ref(), media(3).as_slice(), "media from a device off the route");
        }
    }
}

/// Stores `bytes` as alice's blob `id` for `to`; answers the relay's `Blob`.
async fn put_blob(by: &Device, id: [u8; 16], bytes: &[u8], to: &str) -> Response {
    put_blob_for(by, id, bytes, &[to]).await
}

async fn put_blob_for(by: &Device, id: [u8; 16], bytes: &[u8], to: &[&str]) -> Response {
    let header = Request::BlobPut {
        blob_id: id,
        size: bytes.len() as u64,
        offset: 0,
        recipients: to.iter().map(|t| (*t).to_owned()).collect(),
    };
    let (mut send, mut recv) = by.link.open_stream(header).await.unwrap();
    send.write_all(bytes).await.unwrap();
    send.finish().unwrap();
    Link::read_response(&mut recv).await.unwrap()
}

fn blob_stat(owner: &str, id: [u8; 16]) -> Request {
    Request::BlobStat { owner: owner.into(), blob_id: id }
}

fn blob_release(owner: &str, id: [u8; 16]) -> Request {
    Request::BlobRelease { owner: owner.into(), blob_id: id }
}

/// Issue 19, files: one blob, keys to every device. bob's phone fetching and releasing
/// alice's file must not take it from bob's desktop (a release by the account would
/// have); the blob goes once every device bob had released it, or once the device still
/// waiting is removed. Another account's release changes nothing.
#[tokio::test]
async fn a_blob_waits_for_every_device_of_the_recipient() {
    for net in Net::each(Limits::default()).await {
        let alice = net.user(0, "alice").await;
        let phone = net.user(1, "bob").await;
        let desktop = net.add_device(&phone, 0).await;
        let mallory = net.user(1, "mallory").await;
        let stored = Response::Blob { size: 4, stored: 4 };

        let id = [1u8; 16];
        assert_eq!(put_blob(&alice, id, b"file", "bob").await, stored);
        assert_eq!(refused(mallory.request(blob_release("alice", id)).await), ErrorKind::NotFound);
        assert_eq!(phone.request(blob_release("alice", id)).await, Response::Ok);
        // The phone released it again (a retry): the desktop still finds it.
        assert_eq!(phone.request(blob_release("alice", id)).await, Response::Ok);
        assert_eq!(desktop.request(blob_stat("alice", id)).await, stored);
        assert_eq!(desktop.request(blob_release("alice", id)).await, Response::Ok);
        // Released by every device (in a cluster, the phone on one node and the desktop
        // on the other): gone.
        assert_eq!(refused(alice.request(blob_stat("alice", id)).await), ErrorKind::NotFound);

        // A device removed while the blob waits for it: released for it.
        let id = [2u8; 16];
        assert_eq!(put_blob(&alice, id, b"more", "bob").await, stored);
        assert_eq!(phone.request(blob_release("alice", id)).await, Response::Ok);
        assert_eq!(desktop.request(blob_stat("alice", id)).await, stored);
        let gone = Request::RemoveDevice { device_id: desktop.id };
        assert_eq!(phone.request(gone).await, Response::Ok);
        if net.cluster.is_none() {
            // The embedded relay holds the blob itself: deleted now. (A cluster's shared
            // blob waits for the removed device until it expires.)
            let r = alice.request(blob_stat("alice", id)).await;
            assert_eq!(refused(r), ErrorKind::NotFound);
        }

        // A device that logs out, or that a password login elsewhere replaces, waits
        // for nothing any more either.
        let laptop = net.add_device(&phone, 0).await;
        let id = [6u8; 16];
        assert_eq!(put_blob(&alice, id, b"more", "bob").await, stored);
        assert_eq!(laptop.request(Request::Logout).await, Response::Ok);
        assert_eq!(phone.request(blob_release("alice", id)).await, Response::Ok);
        if net.cluster.is_none() {
            let r = alice.request(blob_stat("alice", id)).await;
            assert_eq!(refused(r), ErrorKind::NotFound, "it waited for the logged-out device");
        }
        let id = [7u8; 16];
        assert_eq!(put_blob(&alice, id, b"more", "bob").await, stored);
        let (tablet, _pushes) = Link::start(net.link_config(0), None).unwrap();
        tablet.wait_connected(T).await.unwrap();
        tablet.login("bob", "correct horse battery", new_key()).await.unwrap();
        if net.cluster.is_none() {
            let r = alice.request(blob_stat("alice", id)).await;
            assert_eq!(refused(r), ErrorKind::NotFound, "it waited for the replaced device");
        }
    }
}

/// Issue 19, sent copies of files: alice's phone uploads a file for bob and for her own
/// account, so her desktop can show and fetch what the phone sent. The blob waits for
/// the desktop too (never for the uploading phone), and a release from alice's account
/// takes off only that device's entry: it never deletes the file under bob, whichever
/// device of hers sends it. Only `BlobCancel` deletes it at once, and only the owner's
/// blob: another account cancelling the same id touches nothing of alice's.
#[tokio::test]
async fn a_blob_waits_for_the_senders_other_devices_and_only_a_cancel_deletes_it_at_once() {
    for net in Net::each(Limits::default()).await {
        let phone = net.user(0, "alice").await;
        let desktop = net.add_device(&phone, 1).await;
        let bob = net.user(1, "bob").await;
        let mallory = net.user(0, "mallory").await;
        let stored = Response::Blob { size: 4, stored: 4 };
        let put = |by, id, to| put_blob_for(by, id, b"file", to);

        let id = [3u8; 16];
        assert_eq!(put(&phone, id, &["bob", "alice"]).await, stored);
        // The uploading phone holds no entry: its release deletes nothing.
        assert_eq!(phone.request(blob_release("alice", id)).await, Response::Ok);
        // The desktop's release is its own entry's, not a cancel: bob still has it.
        assert_eq!(desktop.request(blob_stat("alice", id)).await, stored);
        assert_eq!(desktop.request(blob_release("alice", id)).await, Response::Ok);
        assert_eq!(bob.request(blob_stat("alice", id)).await, stored);
        assert_eq!(bob.request(blob_release("alice", id)).await, Response::Ok);
        assert_eq!(refused(phone.request(blob_stat("alice", id)).await), ErrorKind::NotFound);

        // bob fetching first leaves it for the desktop.
        let id = [4u8; 16];
        assert_eq!(put(&phone, id, &["bob", "alice"]).await, stored);
        assert_eq!(bob.request(blob_release("alice", id)).await, Response::Ok);
        assert_eq!(desktop.request(blob_stat("alice", id)).await, stored);
        // mallory cancelling the same id cancels only a blob of hers (none).
        let cancel = Request::BlobCancel { blob_id: id };
        assert_eq!(mallory.request(cancel.clone()).await, Response::Ok);
        assert_eq!(desktop.request(blob_stat("alice", id)).await, stored);
        // The owner's cancel deletes it at once, for everyone.
        assert_eq!(phone.request(cancel).await, Response::Ok);
        assert_eq!(refused(desktop.request(blob_stat("alice", id)).await), ErrorKind::NotFound);
        assert_eq!(refused(bob.request(blob_stat("alice", id)).await), ErrorKind::NotFound);

        // A note to self on a one-device account waits for nobody but is kept until
        // the owner cancels it; a file for bob alone never waits for alice's desktop.
        let id = [5u8; 16];
        assert_eq!(put(&phone, id, &["bob"]).await, stored);
        assert_eq!(bob.request(blob_release("alice", id)).await, Response::Ok);
        assert_eq!(refused(desktop.request(blob_stat("alice", id)).await), ErrorKind::NotFound);
    }
}

/// The online fast path with several copies (an account with linked devices): each copy
/// is pushed to its own device while the commit runs (held 2 s here, a slow disk), and
/// the sender is answered before the commit only once every device has acknowledged its
/// own copy. A stranger's acknowledgement of the same delivery ids, or one device's
/// alone, answers nobody; with one of the devices not connected, the answer waits for
/// the commit. Nothing is left in the mailbox.
#[tokio::test]
async fn several_copies_answer_before_the_commit_only_on_every_devices_ack() {
    let delay = Duration::from_secs(2);
    let net = Net::embedded(Limits { commit_delay: delay, ..Limits::default() }).await;
    let alice = net.user(0, "alice").await;
    let mut bob1 = net.user(0, "bob").await;
    let mut bob2 = net.add_device(&bob1, 0).await;
    let mallory = net.user(0, "mallory").await;
    let started = std::time::Instant::now();
    let link = alice.link.clone();
    let copies = vec![
        Copy { device_id: 1, body: b"for one".to_vec() },
        Copy { device_id: bob2.id, body: b"for two".to_vec() },
    ];
    let send = tokio::spawn(async move {
        link.request(Request::SendCopies { to: "bob".into(), msg_id: "m1".into(), copies }).await
    });
    let (m1, m2) = (bob1.message().await, bob2.message().await);
    assert!(started.elapsed() < delay, "pushed only after the commit");
    assert_eq!((&m1.body[..], &m2.body[..]), (&b"for one"[..], &b"for two"[..]));
    let ack = |link: &Link, id: u64| {
        let link = link.clone();
        tokio::spawn(async move { link.ack(&[id]).await })
    };
    let strangers = [ack(&mallory.link, m1.delivery_id), ack(&mallory.link, m2.delivery_id)];
    let ones = ack(&bob1.link, m1.delivery_id);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!send.is_finished(), "answered before every device acknowledged");
    let twos = ack(&bob2.link, m2.delivery_id);
    let answer = tokio::time::timeout(delay / 2, send).await.unwrap().unwrap();
    assert!(sent(&answer.unwrap()));
    assert!(started.elapsed() < delay, "answered only at the commit");
    for done in strangers.into_iter().chain([ones, twos]) {
        done.await.unwrap().unwrap();
    }
    assert_eq!(net.mailbox_len().await, 0);

    // Bob's second device goes away: its copy waits in its mailbox, so the answer
    // waits for the commit even though the first device acknowledged at once.
    let bob2_id = bob2.id;
    bob2.link.shutdown().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let copies = [(1, &b"again one"[..]), (bob2_id, &b"again two"[..])];
    let (answer, ()) = tokio::join!(alice.copies("bob", "m2", &copies), async {
        let m = bob1.message().await;
        bob1.link.ack(&[m.delivery_id]).await.unwrap();
    });
    assert!(sent(&answer));
    assert!(started.elapsed() >= delay, "answered before the commit, a copy unacknowledged");
    assert_eq!(net.mailbox_len().await, 1, "the absent device's copy");
}
