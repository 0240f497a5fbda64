//! The sender against a fake relay that keeps several devices per account: sealing per
//! device, `Mismatch` handled (extra devices dropped, missing ones given a fresh session
//! and a new encryption of what is queued), and no copy ever encrypted twice.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use letstalk_crypto::{Envelope, IdentityKeyPair, PreKeyBundle, PreKeySecret};
use letstalk_ipc::types::{Direction, MessageKind, MessageState};
use letstalk_wire::Copy;
use proptest::prelude::*;
use rand_core::OsRng;

use super::{CopiesSent, Transport, TransportError, drain};
use crate::Daemon;
use crate::account::{self, Account, generate_prekeys};
use crate::content::Content;
use crate::e2e::{self, DeviceBundle};
use crate::inbox::receive::{Received, receive};
use crate::messages::{self, NewMessage};
use crate::outbox;
use crate::store::Store;

/// One device of an account: its own store, device key and prekeys; the account's
/// identity key.
struct Device {
    _dir: tempfile::TempDir,
    store: Arc<Store>,
    account: Account,
    prekeys: Vec<PreKeySecret>,
    /// One-time prekeys handed out so far.
    handed: Mutex<usize>,
}

impl Device {
    fn new(user: &str, identity: Option<&IdentityKeyPair>) -> Arc<Self> {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let mut account = Account::generate(
            user.into(),
            format!("{user}@x.org"),
            user.into(),
            None,
            1,
            &mut OsRng,
        );
        if let Some(identity) = identity {
            account.identity = identity.clone();
        }
        let prekeys = generate_prekeys(&account.identity, &mut OsRng);
        store
            .with(|c| {
                account.save(c)?;
                for k in &prekeys {
                    account::save_prekey(c, k, 1)?;
                }
                Ok(())
            })
            .unwrap();
        Arc::new(Self { _dir: dir, store, account, prekeys, handed: Mutex::new(0) })
    }

    fn device_key(&self) -> [u8; 32] {
        letstalk_link::SigningKey::from_bytes(&self.account.device_key).verifying_key().to_bytes()
    }

    /// The relay's bundle of this device, with a one-time prekey not handed out before.
    fn bundle(&self, id: u32) -> DeviceBundle {
        let mut handed = self.handed.lock().unwrap();
        *handed += 1;
        DeviceBundle {
            device: id,
            device_key: self.device_key(),
            bundle: PreKeyBundle {
                identity: self.account.identity.public(),
                signed_prekey: self.prekeys[0].signed_public().unwrap(),
                one_time_prekey: self.prekeys[1 + *handed].one_time_public(),
            },
        }
    }

    fn text(&self, id: &str) -> Option<String> {
        self.store.with(|c| messages::get(c, id)).unwrap().and_then(|m| m.text)
    }
}

/// An (account, device) or a (relay id, device).
type Key = (String, u32);
/// A mailbox: (relay id, body), in the order stored.
type Mailbox = Vec<(String, Vec<u8>)>;

/// A relay with many devices per account, as wire v2 describes it.
#[derive(Default)]
struct FakeRelay {
    /// Each account's devices by id.
    accounts: Mutex<BTreeMap<String, BTreeMap<u32, Arc<Device>>>>,
    /// What was stored for each (account, device), in order: (relay id, body).
    mailboxes: Mutex<BTreeMap<Key, Mailbox>>,
    /// Every body offered for a (relay id, device), stored or not.
    offered: Mutex<BTreeMap<Key, BTreeSet<Vec<u8>>>>,
    /// The sending device (left out of its own account's copies).
    sender: Mutex<Option<(String, u32)>>,
    mismatches: Mutex<usize>,
    /// `SendCopiesBatch` requests.
    batches: Mutex<usize>,
}

impl FakeRelay {
    fn link(&self, user: &str, id: u32, device: Arc<Device>) {
        self.accounts.lock().unwrap().entry(user.into()).or_default().insert(id, device);
    }

    fn remove(&self, user: &str, id: u32) {
        if let Some(devices) = self.accounts.lock().unwrap().get_mut(user) {
            devices.remove(&id);
        }
        self.mailboxes.lock().unwrap().remove(&(user.to_owned(), id));
    }

    /// The devices a message to `to` must have a copy for.
    fn expected(&self, to: &str) -> BTreeSet<u32> {
        let sender = self.sender.lock().unwrap().clone();
        let accounts = self.accounts.lock().unwrap();
        accounts
            .get(to)
            .map(|d| d.keys().copied().filter(|id| sender != Some((to.to_owned(), *id))).collect())
            .unwrap_or_default()
    }

    /// Delivers what `user`'s device `id` has waiting, from `from`'s device 1; returns
    /// the relay ids it applied.
    fn deliver(&self, user: &str, id: u32, from: &str) -> Vec<String> {
        let device = self.accounts.lock().unwrap()[user][&id].clone();
        let waiting =
            self.mailboxes.lock().unwrap().remove(&(user.to_owned(), id)).unwrap_or_default();
        let mut applied = Vec::new();
        for (relay_id, body) in waiting {
            let got = device
                .store
                .with(|c| receive(c, &device.account, from, 1, &relay_id, &body, 9))
                .unwrap();
            assert!(matches!(got, Received::Applied { .. }), "{user}/{id}: {got:?}");
            applied.push(relay_id);
        }
        applied
    }

    /// No (relay id, device) was ever offered two different ciphertexts.
    fn assert_never_reencrypted(&self) {
        for (key, bodies) in self.offered.lock().unwrap().iter() {
            assert_eq!(bodies.len(), 1, "{key:?} was encrypted {} times", bodies.len());
        }
    }
}

impl Transport for FakeRelay {
    async fn fetch_bundles(
        &self,
        user: &str,
        devices: &[u32],
    ) -> Result<Vec<DeviceBundle>, TransportError> {
        let accounts = self.accounts.lock().unwrap();
        let Some(all) = accounts.get(user) else {
            return Err(TransportError::Refused("no such user".into()));
        };
        Ok(all
            .iter()
            .filter(|(id, _)| devices.is_empty() || devices.contains(id))
            .map(|(id, d)| d.bundle(*id))
            .collect())
    }

    async fn send_copies(
        &self,
        to: &str,
        msg_id: &str,
        copies: &[Copy],
    ) -> Result<CopiesSent, TransportError> {
        for c in copies {
            self.offered
                .lock()
                .unwrap()
                .entry((msg_id.to_owned(), c.device_id))
                .or_default()
                .insert(c.body.clone());
        }
        let expected = self.expected(to);
        let given: BTreeSet<u32> = copies.iter().map(|c| c.device_id).collect();
        if given != expected {
            *self.mismatches.lock().unwrap() += 1;
            return Ok(CopiesSent::Mismatch {
                missing: expected.difference(&given).copied().collect(),
                extra: given.difference(&expected).copied().collect(),
            });
        }
        let mut boxes = self.mailboxes.lock().unwrap();
        for c in copies {
            let mailbox = boxes.entry((to.to_owned(), c.device_id)).or_default();
            if !mailbox.iter().any(|(id, _)| id == msg_id) {
                mailbox.push((msg_id.to_owned(), c.body.clone()));
            }
        }
        Ok(CopiesSent::Sent)
    }

    /// As the relay does: every message's copies must fit, or nothing is stored.
    async fn send_copies_batch(
        &self,
        to: &str,
        batch: &[(&str, &[Copy])],
    ) -> Option<Result<CopiesSent, TransportError>> {
        *self.batches.lock().unwrap() += 1;
        let expected = self.expected(to);
        for (_, copies) in batch {
            let given: BTreeSet<u32> = copies.iter().map(|c| c.device_id).collect();
            if given != expected || given.len() != copies.len() {
                // Counted where the rows are then sent one by one.
                return Some(Ok(CopiesSent::Mismatch {
                    missing: expected.difference(&given).copied().collect(),
                    extra: given.difference(&expected).copied().collect(),
                }));
            }
        }
        for (msg_id, copies) in batch {
            let sent = self.send_copies(to, msg_id, copies).await;
            debug_assert_eq!(sent.ok(), Some(CopiesSent::Sent));
        }
        Some(Ok(CopiesSent::Sent))
    }

    async fn send(&self, _to: &str, _batch: &[(&str, &[u8])]) -> Result<(), TransportError> {
        Err(TransportError::Unavailable)
    }

    async fn send_group(
        &self,
        _to: &[String],
        _msg_id: &str,
        _body: &[u8],
    ) -> Result<Vec<(String, String)>, TransportError> {
        Err(TransportError::Unavailable)
    }

    async fn submit_report(
        &self,
        _id: &str,
        _kind: letstalk_wire::ReportKind,
        _body: &[u8],
    ) -> Result<(), TransportError> {
        Err(TransportError::Unavailable)
    }
}

/// Queues text `id` from `from` to `to` as `messages.send` does.
fn queue_text(from: &Device, to: &str, id: &str) {
    from.store
        .with(|c| {
            let content = Content::Text { id: id.into(), at: 5, text: id.into(), reply_to: None };
            let new = NewMessage {
                message_id: id,
                conversation: &format!("user:{to}"),
                sender: &from.account.user_id,
                direction: Direction::Out,
                kind: MessageKind::Text,
                text: Some(id),
                reply_to: None,
                client_msg_id: None,
                created_at: 5,
                received_at: None,
                state: MessageState::Queued,
                read: true,
            };
            messages::insert(c, &new)?;
            outbox::enqueue(c, to, Some(id), &content, 5)
        })
        .unwrap();
}

/// Whether a copy starts a session (X3DH) rather than continuing one.
fn is_prekey_message(body: &[u8]) -> bool {
    matches!(Envelope::decode(body), Ok(Envelope::PreKey(_)))
}

fn state_of(d: &Device, id: &str) -> MessageState {
    d.store.with(|c| messages::get(c, id)).unwrap().unwrap().state
}

/// alice writes to bob, who has two devices, then links a third and removes the second
/// while messages are queued: each device gets every message sent while it is bob's,
/// the new one under a fresh session, and no copy is ever encrypted twice.
#[tokio::test]
async fn copies_follow_the_recipients_devices() {
    let alice = Device::new("alice", None);
    let bob1 = Device::new("bob", None);
    let bob2 = Device::new("bob", Some(&bob1.account.identity));
    let relay = FakeRelay::default();
    *relay.sender.lock().unwrap() = Some(("alice".into(), 1));
    relay.link("alice", 1, alice.clone());
    relay.link("bob", 1, bob1.clone());
    relay.link("bob", 2, bob2.clone());
    let daemon = Daemon::for_tests(alice.store.clone());
    let sessions = || alice.store.with(|c| e2e::current_devices(c, "bob")).unwrap();

    // No session yet: bundles of all of bob's devices, one copy each.
    queue_text(&alice, "bob", "m1");
    queue_text(&alice, "bob", "m2");
    drain(&daemon, &relay).await.unwrap();
    assert_eq!(sessions(), vec![1, 2]);
    for id in [1, 2] {
        assert_eq!(relay.deliver("bob", id, "alice").len(), 2);
    }
    assert_eq!((bob1.text("m1"), bob2.text("m2")), (Some("m1".into()), Some("m2".into())));
    assert_eq!(state_of(&alice, "m2"), MessageState::Sent);
    assert_eq!(*relay.mismatches.lock().unwrap(), 0);
    assert_eq!(*relay.batches.lock().unwrap(), 1, "both rows in one request");

    // bob links a third device; m3 and m4 are sealed for the two alice knows.
    let bob3 = Device::new("bob", Some(&bob1.account.identity));
    relay.link("bob", 3, bob3.clone());
    queue_text(&alice, "bob", "m3");
    queue_text(&alice, "bob", "m4");
    let sealed = alice.store.with(|c| e2e::seal_queued(c, "bob", 64, &mut OsRng, 6)).unwrap();
    assert_eq!(sealed, 2);
    drain(&daemon, &relay).await.unwrap();
    assert_eq!(*relay.mismatches.lock().unwrap(), 1, "one mismatch, then every copy");
    // The batch was refused whole (nothing stored), then went row by row, then whole.
    assert_eq!(*relay.batches.lock().unwrap(), 3);
    assert_eq!(sessions(), vec![1, 2, 3]);
    // The new device's first copy starts a session of its own.
    let waiting = relay.mailboxes.lock().unwrap()[&("bob".to_owned(), 3)].clone();
    assert_eq!(waiting.len(), 2);
    assert!(is_prekey_message(&waiting[0].1));
    for id in [1, 2, 3] {
        relay.deliver("bob", id, "alice");
    }
    assert_eq!(bob3.text("m3"), Some("m3".into()));
    assert_eq!(bob3.text("m4"), Some("m4".into()));
    assert_eq!(bob3.text("m1"), None, "sent before it was linked");
    assert_eq!(bob2.text("m4"), Some("m4".into()));

    // bob removes his second device: its session and copies go.
    relay.remove("bob", 2);
    queue_text(&alice, "bob", "m5");
    alice.store.with(|c| e2e::seal_queued(c, "bob", 64, &mut OsRng, 7)).unwrap();
    drain(&daemon, &relay).await.unwrap();
    assert_eq!(*relay.mismatches.lock().unwrap(), 2);
    assert_eq!(sessions(), vec![1, 3]);
    for id in [1, 3] {
        relay.deliver("bob", id, "alice");
    }
    assert_eq!((bob1.text("m5"), bob3.text("m5")), (Some("m5".into()), Some("m5".into())));
    assert_eq!(state_of(&alice, "m5"), MessageState::Sent);
    relay.assert_never_reencrypted();
    // Nothing is left queued, and no plaintext is left in the outbox.
    let left: i64 = alice
        .store
        .with(|c| Ok(c.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))?))
        .unwrap();
    assert_eq!(left, 0);
}

/// Queues what `messages.send` queues for a text to `to` on `from`: the message, and a
/// "sent" copy for our account's other devices unless there are known to be none.
fn send_text(from: &Device, to: &str, id: &str) {
    queue_text(from, to, id);
    let me = from.account.user_id.clone();
    from.store
        .with(|c| {
            if outbox::own_devices_may_exist(c, &me)? {
                let copy = Content::Sent {
                    to: format!("user:{to}"),
                    id: id.into(),
                    at: 5,
                    text: id.into(),
                    reply_to: None,
                };
                outbox::enqueue(c, &me, None, &copy, 5)?;
            }
            Ok(())
        })
        .unwrap();
}

fn queued_to(d: &Device, to: &str) -> Vec<Option<Content>> {
    d.store
        .with(|c| {
            Ok(c.prepare("SELECT plaintext FROM outbox WHERE recipient = ?1 ORDER BY seq")?
                .query_map([to], |r| r.get::<_, Option<Vec<u8>>>(0))?
                .map(|p| p.map(|p| p.and_then(|p| Content::decode(&p))))
                .collect::<Result<_, _>>()?)
        })
        .unwrap()
}

fn events_of(d: &Device, kind: &str) -> Vec<String> {
    d.store
        .with(|c| {
            Ok(c.prepare("SELECT body FROM events WHERE kind = ?1 ORDER BY seq")?
                .query_map([kind], |r| r.get(0))?
                .collect::<Result<_, _>>()?)
        })
        .unwrap()
}

/// What one device of alice's sends to bob shows on her other device as an outgoing
/// message (once), and what she reads there is read on the other (which sends bob no
/// second receipt).
#[tokio::test]
async fn sent_copies_and_read_sync_reach_our_other_device() {
    let alice1 = Device::new("alice", None);
    let alice2 = Device::new("alice", Some(&alice1.account.identity));
    let bob = Device::new("bob", None);
    let relay = FakeRelay::default();
    relay.link("alice", 1, alice1.clone());
    relay.link("alice", 2, alice2.clone());
    relay.link("bob", 1, bob.clone());
    let daemon = Daemon::for_tests(alice1.store.clone());
    *relay.sender.lock().unwrap() = Some(("alice".into(), 1));

    send_text(&alice1, "bob", "m1");
    drain(&daemon, &relay).await.unwrap();
    // Our own device (1) is left out of our account's sessions: only device 2.
    assert_eq!(alice1.store.with(|c| e2e::current_devices(c, "alice")).unwrap(), vec![2]);
    assert_eq!(alice1.store.with(|c| outbox::known_devices(c, "alice")).unwrap(), Some(vec![2]));
    relay.deliver("bob", 1, "alice");
    assert_eq!(bob.text("m1").as_deref(), Some("m1"));
    assert_eq!(relay.deliver("alice", 2, "alice").len(), 1);
    let shown = alice2.store.with(|c| messages::get(c, "m1")).unwrap().unwrap();
    assert_eq!(
        (shown.direction, shown.state, shown.conversation.as_str(), shown.text.as_deref()),
        (Direction::Out, MessageState::Sent, "user:bob", Some("m1"))
    );
    assert_eq!(events_of(&alice2, "message.received").len(), 1);
    assert!(events_of(&alice2, "notification").is_empty(), "what we sent alerts no one");

    // bob answers; both of alice's devices get it.
    let bob_daemon = Daemon::for_tests(bob.store.clone());
    *relay.sender.lock().unwrap() = Some(("bob".into(), 1));
    queue_text(&bob, "alice", "n1");
    drain(&bob_daemon, &relay).await.unwrap();
    for id in [1, 2] {
        relay.deliver("alice", id, "bob");
    }
    assert_eq!(alice2.text("n1").as_deref(), Some("n1"));
    // Each owes bob a delivery receipt; forget those.
    for d in [&alice1, &alice2] {
        d.store.with(|c| Ok(c.execute("DELETE FROM outbox WHERE recipient = 'bob'", [])?)).unwrap();
    }

    // alice reads n1 on device 1 (as `messages.mark_read` does): the read receipt goes
    // to bob from there, the read sync to device 2.
    alice1
        .store
        .with(|c| {
            let marked = messages::mark_read(c, "user:bob", None)?.unwrap();
            assert_eq!(marked.len(), 1);
            let ids = vec!["n1".to_owned()];
            let sync = Content::ReadSync { conversation: "user:bob".into(), ids: ids.clone() };
            outbox::enqueue(c, "alice", None, &sync, 8)?;
            let receipt = Content::Receipt { state: crate::content::ReceiptKind::Read, ids };
            outbox::enqueue(c, "bob", None, &receipt, 8)
        })
        .unwrap();
    *relay.sender.lock().unwrap() = Some(("alice".into(), 1));
    drain(&daemon, &relay).await.unwrap();
    relay.deliver("alice", 2, "alice");
    let n1 = alice2.store.with(|c| messages::get(c, "n1")).unwrap().unwrap();
    assert!(n1.read);
    assert!(events_of(&alice2, "message.state").iter().any(|e| e.contains("\"read\"")));
    assert!(queued_to(&alice2, "bob").is_empty(), "device 2 sends bob no read receipt");
    // m1 (ours, from device 1) and n1 (bob's), each announced once.
    assert_eq!(events_of(&alice2, "message.received").len(), 2);
    relay.assert_never_reencrypted();
}

/// An account with one device pays for its "sent" copies once: the relay's bundles show
/// no other device, the copies queued are dropped, and none is queued after that.
#[tokio::test]
async fn a_single_device_account_queues_no_sent_copies() {
    let alice = Device::new("alice", None);
    let bob = Device::new("bob", None);
    let relay = FakeRelay::default();
    relay.link("alice", 1, alice.clone());
    relay.link("bob", 1, bob.clone());
    *relay.sender.lock().unwrap() = Some(("alice".into(), 1));
    let daemon = Daemon::for_tests(alice.store.clone());

    send_text(&alice, "bob", "m1");
    assert_eq!(queued_to(&alice, "alice").len(), 1);
    drain(&daemon, &relay).await.unwrap();
    assert!(queued_to(&alice, "alice").is_empty());
    assert_eq!(alice.store.with(|c| outbox::known_devices(c, "alice")).unwrap(), Some(vec![]));
    send_text(&alice, "bob", "m2");
    assert!(queued_to(&alice, "alice").is_empty());
    drain(&daemon, &relay).await.unwrap();
    assert_eq!(relay.deliver("bob", 1, "alice").len(), 2);
    assert!(relay.offered.lock().unwrap().keys().all(|(_, device)| *device == 1));

    // The relay says the account's devices changed: copies are queued again.
    alice.store.with(|c| outbox::forget_known_devices(c, "alice")).unwrap();
    send_text(&alice, "bob", "m3");
    assert_eq!(queued_to(&alice, "alice").len(), 1);
}

/// What the property test does, one step at a time.
#[derive(Debug, Clone)]
enum Step {
    /// bob links a new device.
    Link,
    /// bob removes one of his devices (the n-th, modulo how many he has), keeping one.
    Remove(usize),
    /// alice queues texts to bob, sealed where they are queued (as `messages.send`).
    Queue(u8),
    /// alice's sender runs.
    Drain,
    /// bob's devices read what waits for them.
    Deliver,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        1 => Just(Step::Link),
        1 => any::<usize>().prop_map(Step::Remove),
        3 => (1u8..3).prop_map(Step::Queue),
        2 => Just(Step::Drain),
        2 => Just(Step::Deliver),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Whatever bob does with his devices while alice writes: every message reaches
    /// every device bob has when the relay takes it, each device opens every copy it
    /// gets, in order, and no copy is ever encrypted twice.
    #[test]
    fn every_device_gets_every_message_once_encrypted(steps in prop::collection::vec(step(), 1..20)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let alice = Device::new("alice", None);
            let bob1 = Device::new("bob", None);
            let identity = bob1.account.identity.clone();
            let relay = FakeRelay::default();
            *relay.sender.lock().unwrap() = Some(("alice".into(), 1));
            relay.link("alice", 1, alice.clone());
            relay.link("bob", 1, bob1);
            let daemon = Daemon::for_tests(alice.store.clone());
            let (mut next_device, mut next_msg) = (2u32, 0u32);
            // What each device of bob's has read, in order.
            let mut read: BTreeMap<u32, Vec<String>> = BTreeMap::new();
            for step in steps.into_iter().chain([Step::Drain, Step::Deliver]) {
                match step {
                    Step::Link => {
                        if relay.expected("bob").len() < 5 {
                            relay.link("bob", next_device, Device::new("bob", Some(&identity)));
                            next_device += 1;
                        }
                    }
                    Step::Remove(n) => {
                        let devices: Vec<u32> = relay.expected("bob").into_iter().collect();
                        if devices.len() > 1 {
                            relay.remove("bob", devices[n % devices.len()]);
                            read.remove(&devices[n % devices.len()]);
                        }
                    }
                    Step::Queue(n) => {
                        for _ in 0..n {
                            queue_text(&alice, "bob", &format!("m{next_msg}"));
                            next_msg += 1;
                        }
                        alice.store.with(|c| e2e::seal_queued(c, "bob", 64, &mut OsRng, 6)).unwrap();
                    }
                    Step::Drain => drain(&daemon, &relay).await.unwrap(),
                    Step::Deliver => {
                        for id in relay.expected("bob") {
                            let got = relay.deliver("bob", id, "alice");
                            read.entry(id).or_default().extend(got);
                        }
                    }
                }
            }
            relay.assert_never_reencrypted();
            let left: i64 = alice
                .store
                .with(|c| Ok(c.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))?))
                .unwrap();
            assert_eq!(left, 0, "everything was sent");
            // Each device read its copies in the order alice queued them.
            let order: Vec<String> = alice
                .store
                .with(|c| {
                    Ok(c.prepare("SELECT relay_id FROM resend ORDER BY rowid")?
                        .query_map([], |r| r.get(0))?
                        .collect::<Result<_, _>>()?)
                })
                .unwrap();
            for got in read.values() {
                let positions: Vec<usize> =
                    got.iter().map(|r| order.iter().position(|o| o == r).unwrap()).collect();
                assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
            }
            // The device alice knew first has every message.
            if let Some(first) = read.get(&1) {
                assert_eq!(first.len(), next_msg as usize);
            }
        });
    }
}

/// Today's relay: one device per account (device 1), the per-device requests answered
/// `Unsupported`.
#[derive(Debug)]
struct OneDeviceRelay {
    bundle: letstalk_wire::Bundle,
    requests: Mutex<Vec<String>>,
}

impl crate::relay::RelayApi for OneDeviceRelay {
    fn register(
        &self,
        _: crate::relay::Credentials,
        _: String,
        _: String,
        _: String,
        _: Vec<u8>,
    ) -> futures::future::BoxFuture<'_, Result<(), crate::relay::RelayError>> {
        Box::pin(async { Err(crate::relay::RelayError::Unavailable) })
    }
    fn login(
        &self,
        _: crate::relay::Credentials,
        _: String,
    ) -> futures::future::BoxFuture<'_, Result<(), crate::relay::RelayError>> {
        Box::pin(async { Err(crate::relay::RelayError::Unavailable) })
    }
    fn delete_account_as(
        &self,
        _: crate::relay::Credentials,
    ) -> futures::future::BoxFuture<'_, Result<(), crate::relay::RelayError>> {
        Box::pin(async { Err(crate::relay::RelayError::Unavailable) })
    }
    fn set_credentials(&self, _: Option<crate::relay::Credentials>) {}
    fn authenticate(
        &self,
        _: crate::relay::Credentials,
    ) -> futures::future::BoxFuture<'_, Result<(), crate::relay::RelayError>> {
        Box::pin(async { Err(crate::relay::RelayError::Unavailable) })
    }
    fn device_id(&self) -> Option<u32> {
        Some(1)
    }
    fn request(
        &self,
        request: letstalk_wire::Request,
    ) -> futures::future::BoxFuture<'_, Result<letstalk_wire::Response, crate::relay::RelayError>>
    {
        use letstalk_wire::{Request as Q, Response as R};
        let name = format!("{request:?}").split([' ', '{']).next().unwrap_or_default().to_owned();
        self.requests.lock().unwrap().push(name);
        let answer = match request {
            Q::FetchBundles { .. } | Q::SendCopies { .. } | Q::ListDevices { .. } => R::Error {
                kind: letstalk_wire::ErrorKind::Unsupported,
                retry_after_ms: 0,
                message: "not served yet".into(),
            },
            Q::FetchBundle { .. } => R::Bundle(self.bundle.clone()),
            Q::Send { .. } | Q::SendBatch { .. } => R::Sent { server_ts: 1, duplicate: false },
            _ => R::Ok,
        };
        Box::pin(async move { Ok(answer) })
    }
    fn status(&self) -> (letstalk_ipc::types::RelayState, Option<u64>) {
        (letstalk_ipc::types::RelayState::Connected, None)
    }
    fn address(&self) -> String {
        String::new()
    }
    fn open_stream(
        &self,
        _: letstalk_wire::Request,
    ) -> futures::future::BoxFuture<'_, Result<crate::relay::RelayStream, crate::relay::RelayError>>
    {
        Box::pin(async { Err(crate::relay::RelayError::Unavailable) })
    }
    fn send_datagram(&self, _: Vec<u8>) -> Result<(), crate::relay::RelayError> {
        Ok(())
    }
    fn take_datagrams(&self) -> Option<tokio::sync::mpsc::Receiver<bytes::Bytes>> {
        None
    }
    fn max_datagram_size(&self) -> Option<usize> {
        None
    }
}

/// Against today's relay the sender uses the requests it knows: a probe answered
/// `Unsupported` once, then `FetchBundle`, and rows of one copy each in one `SendBatch`
/// (batching kept); a set of copies other than one for device 1 is answered as that
/// relay's mismatch would be.
#[tokio::test]
async fn a_relay_with_one_device_per_account_gets_the_requests_it_knows() {
    let alice = Device::new("alice", None);
    let bob = Device::new("bob", None);
    let wire = letstalk_wire::Bundle {
        user_id: "bob".into(),
        device_id: 1,
        device_key: bob.device_key(),
        identity: bob.account.identity.public().to_bytes().to_vec(),
        signed_prekey: Some(crate::keys::to_wire(&bob.prekeys[0])),
        one_time_prekey: Some(crate::keys::to_wire(&bob.prekeys[2])),
        last_resort: false,
    };
    let api = Arc::new(OneDeviceRelay { bundle: wire, requests: Mutex::default() });
    let transport = super::RelayTransport::new(api.clone());
    let daemon = Daemon::for_tests(alice.store.clone());
    // Known to have no other device, as after the first fetch of our own bundles.
    alice.store.with(|c| outbox::set_known_devices(c, "alice", &[], 1)).unwrap();
    for id in ["m1", "m2", "m3"] {
        send_text(&alice, "bob", id);
    }
    assert!(!transport.single_device());
    drain(&daemon, &transport).await.unwrap();
    assert!(transport.single_device());
    // Known from the probe before the first message (asked once).
    assert_eq!(*api.requests.lock().unwrap(), ["ListDevices", "FetchBundle", "SendBatch"]);
    send_text(&alice, "bob", "m4");
    drain(&daemon, &transport).await.unwrap();
    assert_eq!(api.requests.lock().unwrap().len(), 4);
    assert_eq!(state_of(&alice, "m3"), MessageState::Sent);

    let copy = |device_id| Copy { device_id, body: vec![1, 2, 3] };
    assert_eq!(
        transport.send_copies("bob", "r", &[copy(1), copy(4)]).await.unwrap(),
        CopiesSent::Mismatch { missing: vec![], extra: vec![4] }
    );
    assert_eq!(
        transport.send_copies("bob", "r", &[]).await.unwrap(),
        CopiesSent::Mismatch { missing: vec![1], extra: vec![] }
    );
    assert_eq!(transport.send_copies("bob", "r", &[copy(1)]).await.unwrap(), CopiesSent::Sent);
    assert_eq!(api.requests.lock().unwrap().last().map(String::as_str), Some("Send"));
}

/// A note to self on an account with no other device is sent at once (there is nowhere
/// else for it to go); on another of our devices it shows as ours, sent.
#[tokio::test]
async fn a_note_to_self_reaches_our_other_devices_only() {
    let alice1 = Device::new("alice", None);
    let relay = FakeRelay::default();
    relay.link("alice", 1, alice1.clone());
    *relay.sender.lock().unwrap() = Some(("alice".into(), 1));
    let daemon = Daemon::for_tests(alice1.store.clone());
    queue_text(&alice1, "alice", "n1");
    drain(&daemon, &relay).await.unwrap();
    assert_eq!(state_of(&alice1, "n1"), MessageState::Sent);
    assert!(relay.offered.lock().unwrap().is_empty());

    let alice2 = Device::new("alice", Some(&alice1.account.identity));
    relay.link("alice", 2, alice2.clone());
    alice1.store.with(|c| outbox::forget_known_devices(c, "alice")).unwrap();
    queue_text(&alice1, "alice", "n2");
    drain(&daemon, &relay).await.unwrap();
    relay.deliver("alice", 2, "alice");
    let shown = alice2.store.with(|c| messages::get(c, "n2")).unwrap().unwrap();
    assert_eq!(
        (shown.direction, shown.state, shown.conversation.as_str()),
        (Direction::Out, MessageState::Sent, "user:alice")
    );
}

/// A device that claims to be one of ours but holds another identity key (one the relay
/// made up) is not believed: its "sent" copy is dropped and no session with it is kept.
#[tokio::test]
async fn a_sent_copy_under_another_identity_key_is_dropped() {
    let alice2 = Device::new("alice", None);
    let mallory = Device::new("alice", None);
    let body = mallory
        .store
        .with(|c| {
            e2e::start_session(c, &mallory.account, "alice", &alice2.bundle(2), &mut OsRng, 1)?;
            let copy = Content::Sent {
                to: "user:bob".into(),
                id: "fake".into(),
                at: 1,
                text: "not alice".into(),
                reply_to: None,
            };
            outbox::enqueue(c, "alice", None, &copy, 1)?;
            e2e::seal_queued(c, "alice", 64, &mut OsRng, 1)?;
            Ok(outbox::ready(c, "alice", 64)?.unwrap().remove(0).copies.remove(0).body)
        })
        .unwrap();
    let got =
        alice2.store.with(|c| receive(c, &alice2.account, "alice", 3, "r1", &body, 9)).unwrap();
    assert!(matches!(got, Received::Dropped(_)), "{got:?}");
    assert_eq!(alice2.text("fake"), None);
    assert!(alice2.store.with(|c| e2e::session_devices(c, "alice")).unwrap().is_empty());
}

/// A row sealed before this daemon knew devices (one envelope, no plaintext kept) cannot
/// reach a device the recipient linked since: it fails instead of blocking what follows.
#[tokio::test]
async fn a_row_sealed_before_devices_fails_when_a_device_is_missing() {
    let alice = Device::new("alice", None);
    let bob1 = Device::new("bob", None);
    let relay = FakeRelay::default();
    *relay.sender.lock().unwrap() = Some(("alice".into(), 1));
    relay.link("bob", 1, bob1.clone());
    alice.store.with(|c| outbox::set_known_devices(c, "alice", &[], 1)).unwrap();
    let daemon = Daemon::for_tests(alice.store.clone());
    queue_text(&alice, "bob", "m1");
    drain(&daemon, &relay).await.unwrap();
    // m2 as migration 0010 finds a row sealed before it: its envelope for device 1 only.
    queue_text(&alice, "bob", "m2");
    alice
        .store
        .with(|c| {
            e2e::seal_queued(c, "bob", 64, &mut OsRng, 6)?;
            let copies = outbox::ready(c, "bob", 64)?.unwrap().remove(0).copies;
            c.execute(
                "UPDATE outbox SET envelope = ?1, copies = NULL, plaintext = NULL",
                [&copies[0].body],
            )?;
            Ok(())
        })
        .unwrap();
    relay.link("bob", 2, Device::new("bob", Some(&bob1.account.identity)));
    queue_text(&alice, "bob", "m3");
    drain(&daemon, &relay).await.unwrap();
    assert_eq!(state_of(&alice, "m2"), MessageState::Failed);
    assert_eq!(state_of(&alice, "m3"), MessageState::Sent);
    assert_eq!(relay.deliver("bob", 2, "alice").len(), 1);
    relay.assert_never_reencrypted();
}

/// Deleting a message not yet sent withdraws its "sent" copy for our other devices too,
/// sealed or not; other rows for them stay.
#[test]
fn erasing_a_queued_message_withdraws_its_sent_copy() {
    let alice = Device::new("alice", None);
    send_text(&alice, "bob", "m1");
    send_text(&alice, "bob", "m2");
    assert_eq!(queued_to(&alice, "alice").len(), 2);
    alice
        .store
        .with(|c| {
            crate::erase::erase(c, "alice", &["m1".to_owned()])?;
            Ok(())
        })
        .unwrap();
    let left = queued_to(&alice, "alice");
    assert!(matches!(left.as_slice(), [Some(Content::Sent { id, .. })] if id == "m2"), "{left:?}");
    assert_eq!(queued_to(&alice, "bob").len(), 1);
}

/// What `from` (of account `user`) would deliver to `to`'s device 2: `content`, sealed
/// in a fresh session.
fn sealed(from: &Device, user: &str, to: &Device, content: &Content) -> Vec<u8> {
    from.store
        .with(|c| {
            e2e::start_session(c, &from.account, user, &to.bundle(2), &mut OsRng, 1)?;
            outbox::enqueue(c, user, None, content, 1)?;
            e2e::seal_queued(c, user, 64, &mut OsRng, 1)?;
            let body = outbox::ready(c, user, 64)?.unwrap().remove(0).copies.remove(0).body;
            c.execute("DELETE FROM outbox", [])?;
            Ok(body)
        })
        .unwrap()
}

/// A `file` content as `files.send` makes it.
fn file_content(id: &str) -> Content {
    Content::File {
        id: id.into(),
        at: 5,
        name: "../../notes.pdf".into(),
        size: 3,
        mime: "application/pdf".into(),
        sha256: "ab".repeat(32),
        key: crate::content::Secret("11".repeat(16)),
        blob: "22".repeat(16),
        blob_size: crate::files::payload_len(3),
        caption: None,
    }
}

/// A file one device of alice's sent shows on another as hers, fetched from the relay as
/// alice's blob and never cancelled from there. Only alice's own account is believed:
/// bob cannot plant a "sent" file on her device, nor can a copy name a path (the id must
/// be a UUID, the name is made safe) or a group she is not in; a cancel from her own
/// device stops only such a copy, never a file someone sent her.
#[tokio::test]
async fn a_sent_file_copy_is_believed_only_from_our_own_account() {
    let alice1 = Device::new("alice", None);
    let alice2 = Device::new("alice", Some(&alice1.account.identity));
    let bob = Device::new("bob", None);
    let id = "01a250c3-21d0-7544-a55e-7ffdd4c1ee2f";
    let copy = |to: &str, file: Content| Content::SentFile { to: to.into(), file: Box::new(file) };
    let receive_from = |user: &str, from: &Device, content: &Content, relay_id: &str| {
        let body = sealed(from, user, &alice2, content);
        alice2.store.with(|c| receive(c, &alice2.account, user, 3, relay_id, &body, 9)).unwrap()
    };

    // From bob: dropped.
    let got = receive_from("bob", &bob, &copy("user:bob", file_content(id)), "r1");
    assert!(matches!(got, Received::Dropped(_)), "{got:?}");
    // From alice, but no UUID, or no conversation, or a group alice is not in: dropped.
    for (n, (to, file_id)) in
        [("user:bob", "../../x"), ("bob", id), ("user:B O B", id), ("group:nowhere", id)]
            .into_iter()
            .enumerate()
    {
        let relay_id = format!("r2.{n}");
        let got = receive_from("alice", &alice1, &copy(to, file_content(file_id)), &relay_id);
        assert!(matches!(got, Received::Dropped(_)), "{to} {file_id}: {got:?}");
    }
    assert!(alice2.store.with(|c| crate::files::get(c, id)).unwrap().is_none());

    // From alice: shown as hers, to fetch as her blob, with a safe name.
    let got = receive_from("alice", &alice1, &copy("user:bob", file_content(id)), "r3");
    assert!(matches!(got, Received::Applied { .. }), "{got:?}");
    let shown = alice2.store.with(|c| messages::get(c, id)).unwrap().unwrap();
    assert_eq!(
        (shown.direction, shown.state, shown.kind, shown.conversation.as_str()),
        (Direction::Out, MessageState::Sent, MessageKind::File, "user:bob")
    );
    let row = alice2.store.with(|c| crate::files::get(c, id)).unwrap().unwrap();
    assert!(row.remote && !row.uploads_here());
    assert_eq!((row.owner("alice"), row.peer.as_str()), ("alice", "bob"));
    assert!(!row.name.contains('/'), "{}", row.name);
    assert_eq!(row.transfer, letstalk_ipc::types::FileTransfer::Available);

    // Deleting the copy here owes the relay a release of this device's entry, never a
    // cancel (which would delete the file under bob).
    let copy2 = "01a250c3-21d0-7544-a55e-7ffdd4c1ee31";
    receive_from("alice", &alice1, &copy("user:bob", file_content(copy2)), "r3.1");
    alice2.store.with(|c| crate::erase::erase(c, "alice", &[copy2.to_owned()]).map(drop)).unwrap();
    let owed: Vec<(String, bool)> = alice2
        .store
        .with(|c| {
            let mut q = c.prepare("SELECT owner, cancel FROM blob_releases")?;
            Ok(q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?)
        })
        .unwrap();
    assert_eq!(owed, vec![("alice".to_owned(), false)]);

    // A file to self from another of alice's devices: hers, in her own conversation.
    let to_self = "01a250c3-21d0-7544-a55e-7ffdd4c1ee32";
    receive_from("alice", &alice1, &file_content(to_self), "r3.2");
    let shown = alice2.store.with(|c| messages::get(c, to_self)).unwrap().unwrap();
    assert_eq!((shown.direction, shown.conversation.as_str()), (Direction::Out, "user:alice"));
    let row = alice2.store.with(|c| crate::files::get(c, to_self)).unwrap().unwrap();
    assert!(row.remote && row.owner("alice") == "alice");

    // bob's own file to alice cannot be cancelled by a "cancel" from alice's device.
    let theirs = "01a250c3-21d0-7544-a55e-7ffdd4c1ee30";
    receive_from("bob", &bob, &file_content(theirs), "r4");
    let cancel = |id: &str| Content::FileCancel { id: id.into() };
    receive_from("alice", &alice1, &cancel(theirs), "r5");
    let row = alice2.store.with(|c| crate::files::get(c, theirs)).unwrap().unwrap();
    assert_eq!(row.transfer, letstalk_ipc::types::FileTransfer::Available);
    // alice's cancel of her own file stops the copy.
    receive_from("alice", &alice1, &cancel(id), "r6");
    let row = alice2.store.with(|c| crate::files::get(c, id)).unwrap().unwrap();
    assert_eq!(row.transfer, letstalk_ipc::types::FileTransfer::Cancelled);
}
