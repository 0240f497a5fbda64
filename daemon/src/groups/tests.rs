//! Groups between devices on their own stores: membership, admin proofs, sender keys.

use super::*;
use crate::content::Origin;
use crate::messages::NewMessage;
use crate::store::Store;
use letstalk_crypto::{SenderKey, SenderKeyReceiver};
use letstalk_ipc::types::{Direction, MessageKind, MessageState};
use rand_core::OsRng;

struct Device {
    _dir: tempfile::TempDir,
    store: Store,
    me: &'static str,
}

fn device(me: &'static str) -> Device {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    Device { _dir: dir, store, me }
}

/// An outbox row: recipient, decoded plaintext, envelope, relay id.
type Row = (String, Option<Content>, Option<Vec<u8>>, String);

/// Takes every outbox row of `d`.
fn take_outbox(d: &Device) -> Vec<Row> {
    d.store
        .with(|c| {
            let rows = c
                .prepare(
                    "SELECT recipient, plaintext, envelope, relay_id FROM outbox ORDER BY seq",
                )?
                .query_map([], |r| {
                    let plain: Option<Vec<u8>> = r.get(1)?;
                    Ok((r.get(0)?, plain.and_then(|p| Content::decode(&p)), r.get(2)?, r.get(3)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            c.execute("DELETE FROM outbox", [])?;
            Ok(rows)
        })
        .unwrap()
}

fn send(d: &Device, g: &GroupState, id: &str, text: &str) {
    d.store
        .with(|c| {
            let conversation = g.conversation();
            let new = NewMessage {
                message_id: id,
                conversation: &conversation,
                sender: d.me,
                direction: Direction::Out,
                kind: MessageKind::Text,
                text: Some(text),
                reply_to: None,
                client_msg_id: None,
                created_at: 1,
                received_at: None,
                state: MessageState::Queued,
                read: true,
            };
            messages::insert(c, &new)?;
            let content = Content::Text { id: id.into(), at: 1, text: text.into(), reply_to: None };
            enqueue_text(c, d.me, g, id, &content, &mut OsRng, 1)
        })
        .unwrap();
}

/// Hands `from`'s queued sender keys for `to` to `to`.
fn deliver_keys(rows: &[Row], from: &str, to: &Device) {
    deliver_keys_of(rows, from, 1, to);
}

/// Hands the sender keys that `from`'s device `device` queued for `to` to `to`.
fn deliver_keys_of(rows: &[Row], from: &str, device: u32, to: &Device) {
    for (recipient, content, _, _) in rows {
        if let (true, Some(Content::SenderKey { gid, key })) = (recipient == to.me, content) {
            to.store.with(|c| on_sender_key(c, to.me, from, device, gid, key, 2)).unwrap().unwrap();
        }
    }
}

/// A group message as the relay delivers it: from `from`'s device `device`.
fn on_group(d: &Device, from: &str, device: u32, body: &[u8]) -> Result<Effects, String> {
    let (gid, message) = parse_frame(body).unwrap();
    d.store.with(|c| on_message(c, from, device, "relay-id", gid, message, 2)).unwrap()
}

fn group_frame(rows: &[Row]) -> Vec<u8> {
    rows.iter()
        .find_map(|(r, _, e, _)| r.starts_with("group:").then(|| e.clone()))
        .flatten()
        .unwrap()
}

fn shown(d: &Device, id: &str) -> Option<String> {
    d.store.with(|c| messages::get(c, id)).unwrap().and_then(|m| m.text)
}

#[test]
fn a_removed_member_holding_every_old_key_cannot_read_what_follows() {
    let (alice, bob, carol) = (device("alice"), device("bob"), device("carol"));
    let g = GroupState {
        id: "g1".into(),
        name: "Crew".into(),
        created_at: 1,
        version: 1,
        members: ["alice", "bob", "carol"].map(String::from).into(),
        admins: ["alice"].map(String::from).into(),
        proof: None,
    };
    for d in [&alice, &bob, &carol] {
        d.store.with(|c| apply(c, d.me, None, &g, "alice", 1)).unwrap();
    }

    send(&alice, &g, "m1", "before");
    let rows = take_outbox(&alice);
    deliver_keys(&rows, "alice", &carol);
    deliver_keys(&rows, "alice", &bob);
    let first = group_frame(&rows);
    let (gid, message) = parse_frame(&first).unwrap();
    for d in [&bob, &carol] {
        d.store.with(|c| on_message(c, "alice", 1, "r", gid, message, 2)).unwrap().unwrap();
        assert_eq!(shown(d, "m1").as_deref(), Some("before"));
    }

    // carol is removed; alice's next message rotates her key, for bob only.
    let after = GroupState { version: 2, ..without(&g, "carol") };
    alice.store.with(|c| apply(c, "alice", Some(&g), &after, "alice", 3)).unwrap();
    send(&alice, &after, "m2", "after carol");
    let rows = take_outbox(&alice);
    assert!(rows.iter().all(|(r, _, _, _)| r != "carol"), "nothing at all is queued for carol");
    let second = group_frame(&rows);
    assert!(!second.windows(11).any(|w| w == b"after carol"));
    let (gid, message) = parse_frame(&second).unwrap();

    // carol, who never heard of her removal and keeps every key she had, reads nothing.
    carol.store.with(|c| on_message(c, "alice", 1, "r", gid, message, 4)).unwrap().unwrap();
    assert_eq!(shown(&carol, "m2"), None);
    let old_keys: Vec<Vec<u8>> = carol
        .store
        .with(|c| {
            Ok(c.prepare("SELECT state FROM group_receivers")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?)
        })
        .unwrap();
    assert!(!old_keys.is_empty());
    for state in old_keys {
        let mut receiver = SenderKeyReceiver::from_bytes(&state).unwrap();
        assert!(receiver.decrypt(message).is_err());
    }

    // bob gets the new generation and reads it.
    deliver_keys(&rows, "alice", &bob);
    bob.store.with(|c| on_message(c, "alice", 1, "r", gid, message, 4)).unwrap().unwrap();
    assert_eq!(shown(&bob, "m2").as_deref(), Some("after carol"));
}

#[test]
fn a_message_before_its_key_waits_and_is_shown_when_the_key_comes() {
    let (alice, bob) = (device("alice"), device("bob"));
    let alice_id = IdentityKeyPair::generate(&mut OsRng);
    let (gid, proof) = new_origin("alice", &alice_id, &mut OsRng);
    let g = GroupState {
        id: gid,
        name: "Two".into(),
        created_at: 1,
        version: 1,
        members: ["alice", "bob"].map(String::from).into(),
        admins: ["alice"].map(String::from).into(),
        proof: Some(proof),
    };
    alice.store.with(|c| apply(c, "alice", None, &g, "alice", 1)).unwrap();
    send(&alice, &g, "m1", "early");
    let rows = take_outbox(&alice);
    let frame = group_frame(&rows);
    let (gid, message) = parse_frame(&frame).unwrap();
    // Neither the group nor the key is known yet: kept, not shown, not lost.
    bob.store.with(|c| on_message(c, "alice", 1, "r", gid, message, 2)).unwrap().unwrap();
    assert_eq!(shown(&bob, "m1"), None);
    // The key comes before the snapshot: held, not yet a key.
    deliver_keys(&rows, "alice", &bob);
    assert_eq!(shown(&bob, "m1"), None);
    assert_eq!(count(&bob, "group_receivers"), 0);
    assert_eq!(count(&bob, "group_keys_held"), 1);
    let update = g.content("alice");
    let alice_pub = alice_id.public();
    bob.store.with(|c| on_update(c, "bob", "alice", &alice_pub, &update, 3)).unwrap().unwrap();
    assert_eq!(shown(&bob, "m1").as_deref(), Some("early"));
    assert_eq!(count(&bob, "group_keys_held"), 0);
    // A stranger cannot rewrite the group.
    let forged = GroupState { version: 9, name: "Mine".into(), ..g.clone() }.content("alice");
    let mallory = IdentityKeyPair::generate(&mut OsRng).public();
    let refused = bob.store.with(|c| on_update(c, "bob", "mallory", &mallory, &forged, 4)).unwrap();
    assert!(refused.is_err());
}

fn count(d: &Device, table: &str) -> i64 {
    d.store
        .with(|c| Ok(c.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))?))
        .unwrap()
}

fn snapshot(g: &GroupState, members: &[&str], admins: &[&str], origin: Option<Origin>) -> Content {
    Content::Group {
        gid: g.id.clone(),
        name: g.name.clone(),
        members: members.iter().map(|m| (*m).to_owned()).collect(),
        admins: admins.iter().map(|m| (*m).to_owned()).collect(),
        ver: g.version + 1,
        created: 1,
        origin,
    }
}

#[test]
fn only_a_proven_admin_can_introduce_a_group_and_a_member_cannot_forge_one() {
    let alice_id = IdentityKeyPair::generate(&mut OsRng);
    let mallory_id = IdentityKeyPair::generate(&mut OsRng);
    let (alice_pub, mallory_pub) = (alice_id.public(), mallory_id.public());
    let (gid, proof) = new_origin("alice", &alice_id, &mut OsRng);
    let g = GroupState {
        id: gid.clone(),
        name: "Crew".into(),
        created_at: 1,
        version: 1,
        members: ["alice", "bob", "mallory"].map(String::from).into(),
        admins: ["alice"].map(String::from).into(),
        proof: Some(proof.clone()),
    };
    let real = proof.origin_for("alice").unwrap();
    assert!(proves_admin(&gid, &real, "alice", &alice_pub));
    assert!(!proves_admin(&gid, &real, "alice", &mallory_pub), "a new key is not alice's");
    assert!(!proves_admin(&gid, &real, "mallory", &mallory_pub));

    // carol has not seen the group; mallory (a member, not an admin) tries to add
    // carol and eve, every way she can.
    let carol = device("carol");
    let mut self_granted = real.clone();
    self_granted.grants.push(sign_grant(&gid, &mallory_id, "mallory", &mallory_pub));
    let (other_gid, mine) = new_origin("mallory", &mallory_id, &mut OsRng);
    let claims_creator = Origin { creator: "mallory".into(), ..real.clone() };
    let forged = |origin| snapshot(&g, &["mallory", "carol", "eve"], &["mallory"], origin);
    for attempt in [
        forged(None),
        forged(Some(real.clone())),
        forged(Some(self_granted)),
        forged(Some(claims_creator)),
        forged(mine.origin_for("mallory")),
    ] {
        let r = carol.store.with(|c| on_update(c, "carol", "mallory", &mallory_pub, &attempt, 2));
        assert!(r.unwrap().is_err());
    }
    assert_ne!(other_gid, gid);
    assert!(carol.store.with(|c| load(c, &gid)).unwrap().is_none());
    assert_eq!(count(&carol, "group_members"), 0);

    // bob knows the group: a non-admin's newer snapshot changes nothing.
    let bob = device("bob");
    bob.store.with(|c| apply(c, "bob", None, &g, "alice", 1)).unwrap();
    let attempt = snapshot(&g, &["alice", "bob", "mallory", "eve"], &["alice"], None);
    let r = bob.store.with(|c| on_update(c, "bob", "mallory", &mallory_pub, &attempt, 2));
    assert!(r.unwrap().is_err());
    assert_eq!(bob.store.with(|c| load(c, &gid)).unwrap().unwrap().0, g);

    // eve's sender keys are held, never stored, and bounded.
    for generation in 0..(MAX_HELD_KEYS_PER_SENDER + 2) {
        let mut key = SenderKey::generate(gid.as_bytes(), &mut OsRng).unwrap();
        for _ in 0..generation {
            key = key.rotate(&mut OsRng).unwrap();
        }
        let hex_key = hex::encode(key.distribution().encode().as_slice());
        let _ = bob.store.with(|c| on_sender_key(c, "bob", "eve", 1, &gid, &hex_key, 3)).unwrap();
    }
    assert_eq!(count(&bob, "group_receivers"), 0);
    assert_eq!(count(&bob, "group_keys_held"), MAX_HELD_KEYS_PER_SENDER);
    // A snapshot from the admin that does not name eve leaves them held, not keys.
    let renamed = Content::Group {
        gid: gid.clone(),
        name: "Crew 2".into(),
        members: g.members.iter().cloned().collect(),
        admins: vec!["alice".into()],
        ver: 2,
        created: 1,
        origin: Some(real.clone()),
    };
    bob.store.with(|c| on_update(c, "bob", "alice", &alice_pub, &renamed, 4)).unwrap().unwrap();
    assert_eq!(count(&bob, "group_receivers"), 0);

    // Messages from strangers wait only within bounds.
    for i in 0..(MAX_PENDING_STRANGER + 5) {
        let body = format!("junk {i}");
        let _ =
            carol.store.with(|c| on_message(c, "eve", 1, "r", "unknown-group", body.as_bytes(), 5));
    }
    assert_eq!(count(&carol, "group_pending"), MAX_PENDING_STRANGER);
    let big = vec![0u8; MAX_PENDING_BODY + 1];
    let r = carol.store.with(|c| on_message(c, "dave", 1, "r", "unknown-group", &big, 5)).unwrap();
    assert!(r.is_err());
}

#[test]
fn the_last_admin_leaving_hands_a_checked_grant_to_its_successor() {
    let alice_id = IdentityKeyPair::generate(&mut OsRng);
    let bob_id = IdentityKeyPair::generate(&mut OsRng);
    let mallory_id = IdentityKeyPair::generate(&mut OsRng);
    let (gid, proof) = new_origin("alice", &alice_id, &mut OsRng);
    let g = GroupState {
        id: gid.clone(),
        name: "Crew".into(),
        created_at: 1,
        version: 1,
        members: ["alice", "bob", "mallory"].map(String::from).into(),
        admins: ["alice"].map(String::from).into(),
        proof: Some(proof),
    };
    let mallory = device("mallory");
    mallory.store.with(|c| apply(c, "mallory", None, &g, "alice", 1)).unwrap();
    // A grant not signed by alice is ignored; alice's grant for bob is kept.
    let fake = sign_grant(&gid, &mallory_id, "bob", &mallory_id.public());
    let after = mallory
        .store
        .with(|c| {
            on_leave(c, "mallory", "alice", &gid, Some(&fake), 2)?;
            Ok(load(c, &gid)?.unwrap().0)
        })
        .unwrap();
    assert_eq!(after.admins, ["bob"].map(String::from).into());
    assert!(after.proof.as_ref().unwrap().chains.is_empty());

    let bob = device("bob");
    bob.store.with(|c| apply(c, "bob", None, &g, "alice", 1)).unwrap();
    let grant = sign_grant(&gid, &alice_id, "bob", &bob_id.public());
    let after = bob
        .store
        .with(|c| {
            on_leave(c, "bob", "alice", &gid, Some(&grant), 2)?;
            Ok(load(c, &gid)?.unwrap().0)
        })
        .unwrap();
    let origin = after.proof.as_ref().unwrap().origin_for("bob").unwrap();
    assert!(proves_admin(&gid, &origin, "bob", &bob_id.public()));
    assert!(!proves_admin(&gid, &origin, "bob", &mallory_id.public()));

    // dave, new, accepts bob's snapshot adding him: the chain leads back to alice.
    let dave = device("dave");
    let add = Content::Group {
        gid: gid.clone(),
        name: "Crew".into(),
        members: ["bob", "dave", "mallory"].map(String::from).into(),
        admins: vec!["bob".into()],
        ver: 3,
        created: 1,
        origin: Some(origin),
    };
    dave.store.with(|c| on_update(c, "dave", "bob", &bob_id.public(), &add, 3)).unwrap().unwrap();
    let seen = dave.store.with(|c| load(c, &gid)).unwrap().unwrap();
    assert!(seen.1);
    assert_eq!(seen.0.admins, ["bob"].map(String::from).into());
}

#[test]
fn frames_round_trip_and_refuse_garbage() {
    let body = frame("g-1", b"ciphertext");
    assert_eq!(parse_frame(&body), Some(("g-1", &b"ciphertext"[..])));
    assert_eq!(parse_frame(b""), None);
    assert_eq!(parse_frame(b"G"), None);
    assert_eq!(parse_frame(b"G\x05abc"), None);
    assert_eq!(parse_frame(b"G\x03g-1"), None, "no message");
    assert_eq!(parse_frame(b"G\x03g 1x"), None, "bad id");
    assert_eq!(parse_frame(b"\x01\x03g-1x"), None, "a pairwise envelope");
}

#[test]
fn leaving_admin_hands_over_to_the_first_member() {
    let g = GroupState {
        id: "g".into(),
        name: "n".into(),
        created_at: 1,
        version: 1,
        members: ["alice", "bob", "carol"].map(String::from).into(),
        admins: ["alice"].map(String::from).into(),
        proof: None,
    };
    let after = without(&g, "alice");
    assert_eq!(after.admins, ["bob"].map(String::from).into());
    assert_eq!(without(&after, "carol").admins, ["bob"].map(String::from).into());
}

fn group_of(members: &[&str]) -> GroupState {
    GroupState {
        id: "g1".into(),
        name: "Crew".into(),
        created_at: 1,
        version: 1,
        members: members.iter().map(|m| (*m).to_owned()).collect(),
        admins: ["alice"].map(String::from).into(),
        proof: None,
    }
}

fn join(devices: &[&Device], g: &GroupState) {
    for d in devices {
        d.store.with(|c| apply(c, d.me, None, g, "alice", 1)).unwrap();
    }
}

/// The group message row's relay id.
fn group_relay_id(rows: &[Row]) -> String {
    rows.iter().find(|(r, ..)| r.starts_with("group:")).map(|(.., id)| id.clone()).unwrap()
}

/// What `rows` queue for `to`.
fn for_member<'a>(rows: &'a [Row], to: &str) -> Vec<&'a Content> {
    rows.iter().filter(|(r, ..)| r == to).filter_map(|(_, c, ..)| c.as_ref()).collect()
}

fn receiver_state(d: &Device, sender: &str, device: u32) -> Vec<u8> {
    d.store
        .with(|c| {
            Ok(c.query_row(
                "SELECT state FROM group_receivers WHERE sender = ?1 AND device = ?2",
                params![sender, device],
                |r| r.get(0),
            )?)
        })
        .unwrap()
}

/// The generation of the sender key in a `SenderKey` content.
fn generation_of(content: &Content) -> u32 {
    let Content::SenderKey { key, .. } = content else { panic!("{content:?}") };
    SenderKeyDistribution::decode(&hex::decode(key).unwrap()).unwrap().generation()
}

use letstalk_crypto::SenderKeyDistribution;

#[test]
fn each_device_of_a_member_has_its_own_key_and_neither_replaces_the_other() {
    let (phone, desktop, bob) = (device("alice"), device("alice"), device("bob"));
    let g = group_of(&["alice", "bob"]);
    join(&[&phone, &desktop, &bob], &g);
    // Both devices make a key of their own: both generation 0, which one key per member
    // could not tell apart.
    send(&phone, &g, "p1", "from the phone");
    let from_phone = take_outbox(&phone);
    send(&desktop, &g, "d1", "from the desktop");
    let from_desktop = take_outbox(&desktop);
    assert_eq!(generation_of(for_member(&from_phone, "bob")[0]), 0);
    assert_eq!(generation_of(for_member(&from_desktop, "bob")[0]), 0);
    deliver_keys_of(&from_phone, "alice", 1, &bob);
    let phone_key = receiver_state(&bob, "alice", 1);
    deliver_keys_of(&from_desktop, "alice", 2, &bob);
    assert_eq!(count(&bob, "group_receivers"), 2);
    assert_eq!(receiver_state(&bob, "alice", 1), phone_key, "the desktop's key left the phone's");

    // Each message opens with the key of the device that sent it, whatever the order.
    on_group(&bob, "alice", 2, &group_frame(&from_desktop)).unwrap();
    on_group(&bob, "alice", 1, &group_frame(&from_phone)).unwrap();
    assert_eq!(shown(&bob, "p1").as_deref(), Some("from the phone"));
    assert_eq!(shown(&bob, "d1").as_deref(), Some("from the desktop"));

    // A message passed off as the other device's (a relay lying about the device) opens
    // with neither key, and changes neither.
    send(&phone, &g, "p2", "second");
    let second = take_outbox(&phone);
    let before = receiver_state(&bob, "alice", 2);
    assert!(on_group(&bob, "alice", 2, &group_frame(&second)).is_err());
    assert_eq!(shown(&bob, "p2"), None);
    assert_eq!(receiver_state(&bob, "alice", 2), before);
    on_group(&bob, "alice", 1, &group_frame(&second)).unwrap();
    assert_eq!(shown(&bob, "p2").as_deref(), Some("second"));

    // The phone's key handed out again (same chain, a later iteration) leaves bob's state
    // where it is: it still reads what is on its way.
    assert!(phone.store.with(|c| keys::hand_key(c, "g1", "bob", 3)).unwrap());
    let resent = take_outbox(&phone);
    let state = receiver_state(&bob, "alice", 1);
    deliver_keys_of(&resent, "alice", 1, &bob);
    assert_eq!(receiver_state(&bob, "alice", 1), state);
}

#[test]
fn a_key_counts_only_for_its_group_its_device_and_a_member() {
    let (alice, bob, mallory) = (device("alice"), device("bob"), device("mallory"));
    let g = group_of(&["alice", "bob"]);
    join(&[&alice, &bob], &g);
    send(&alice, &g, "m1", "hello");
    let rows = take_outbox(&alice);
    deliver_keys(&rows, "alice", &bob);
    let alice_key = receiver_state(&bob, "alice", 1);

    // A key made for another group, handed in as this group's: refused.
    let other = SenderKey::generate(b"g2", &mut OsRng).unwrap();
    let other_hex = hex::encode(other.distribution().encode().as_slice());
    let r = bob.store.with(|c| on_sender_key(c, "bob", "alice", 1, "g1", &other_hex, 3)).unwrap();
    assert!(r.is_err());
    // Our own account's: refused (our devices never hold each other's keys).
    let own = SenderKey::generate(b"g1", &mut OsRng).unwrap();
    let own_hex = hex::encode(own.distribution().encode().as_slice());
    let r = bob.store.with(|c| on_sender_key(c, "bob", "bob", 2, "g1", &own_hex, 3)).unwrap();
    assert!(r.is_err());
    // A non-member's: held, never a key, and its messages are never read.
    mallory
        .store
        .with(|c| apply(c, "mallory", None, &group_of(&["mallory", "bob"]), "alice", 1))
        .unwrap();
    send(&mallory, &group_of(&["mallory", "bob"]), "x1", "let me in");
    let forged = take_outbox(&mallory);
    deliver_keys_of(&forged, "mallory", 1, &bob);
    assert_eq!(count(&bob, "group_keys_held"), 1);
    on_group(&bob, "mallory", 1, &group_frame(&forged)).unwrap();
    assert_eq!(shown(&bob, "x1"), None);
    // alice's other device (or anyone's) handing in a key lands under that device, never
    // under the phone's: alice's phone's state is what it was, and its messages open.
    deliver_keys_of(&forged, "alice", 2, &bob);
    assert_eq!(receiver_state(&bob, "alice", 1), alice_key);
    on_group(&bob, "alice", 1, &group_frame(&rows)).unwrap();
    assert_eq!(shown(&bob, "m1").as_deref(), Some("hello"));
    // The group mallory's message claims stays unreadable under alice's name too.
    assert!(on_group(&bob, "alice", 1, &group_frame(&forged)).is_err());
}

#[test]
fn a_linked_device_gets_every_members_key_and_what_it_could_not_read() {
    let (phone, bob, carol) = (device("alice"), device("bob"), device("carol"));
    let g = group_of(&["alice", "bob", "carol"]);
    join(&[&phone, &bob, &carol], &g);
    // The phone wrote before; bob got its key, carol did not yet.
    send(&phone, &g, "p1", "hello");
    let rows = take_outbox(&phone);
    deliver_keys(&rows, "alice", &bob);
    on_group(&bob, "alice", 1, &group_frame(&rows)).unwrap();

    // alice links a desktop (it gets the group, no key): it introduces itself with a
    // key of its own, to every member.
    let desktop = device("alice");
    join(&[&desktop], &g);
    assert!(desktop.store.with(|c| distribute_keys(c, "alice", &mut OsRng, 2)).unwrap());
    let intro = take_outbox(&desktop);
    assert_eq!(for_member(&intro, "bob").len(), 1);
    assert_eq!(for_member(&intro, "carol").len(), 1);
    // bob knows alice's phone: a device of hers new to him gets his key back (he has
    // one once he wrote).
    send(&bob, &g, "b1", "bob here");
    let from_bob = take_outbox(&bob);
    deliver_keys_of(&intro, "alice", 2, &bob);
    let back = take_outbox(&bob);
    assert!(matches!(for_member(&back, "alice")[..], [Content::SenderKey { .. }]), "{back:?}");
    deliver_keys_of(&back, "bob", 1, &desktop);
    deliver_keys_of(&back, "bob", 1, &phone);
    // b1 was sent before bob handed his key again: the desktop cannot read it, so it
    // asks bob, who sends it again pairwise.
    let b1 = group_relay_id(&from_bob);
    let (gid, message) =
        parse_frame(&group_frame(&from_bob)).map(|(a, b)| (a.to_owned(), b.to_vec())).unwrap();
    let asked = desktop.store.with(|c| on_message(c, "bob", 1, &b1, &gid, &message, 3));
    assert!(asked.unwrap().unwrap().queued);
    assert_eq!(shown(&desktop, "b1"), None);
    let question = take_outbox(&desktop);
    let [Content::SenderKeyRequest { ids, .. }] = &for_member(&question, "bob")[..] else {
        panic!("{question:?}")
    };
    assert_eq!(ids, &vec![b1]);
    bob.store.with(|c| on_key_request(c, "bob", "alice", "g1", ids, 4)).unwrap().unwrap();
    for content in for_member(&take_outbox(&bob), "alice") {
        if let Content::GroupResend { gid, content } = content {
            let r = desktop.store.with(|c| on_resend(c, "bob", gid, (**content).clone(), 5));
            r.unwrap().unwrap();
        }
    }
    assert_eq!(shown(&desktop, "b1").as_deref(), Some("bob here"));
    // carol had no key of alice's at all: the desktop's key asks for nothing back.
    deliver_keys_of(&intro, "alice", 2, &carol);
    assert!(take_outbox(&carol).is_empty());

    // carol writes; the desktop cannot read it, keeps it, and asks carol.
    send(&carol, &g, "c1", "carol here");
    let from_carol = take_outbox(&carol);
    let (gid, message) =
        parse_frame(&group_frame(&from_carol)).map(|(a, b)| (a.to_owned(), b.to_vec())).unwrap();
    let relay_id = group_relay_id(&from_carol);
    let asked = desktop
        .store
        .with(|c| on_message(c, "carol", 1, &relay_id, &gid, &message, 3))
        .unwrap()
        .unwrap();
    assert!(asked.queued);
    assert_eq!(shown(&desktop, "c1"), None);
    let question = take_outbox(&desktop);
    let [Content::SenderKeyRequest { gid: asked_gid, ids }] = &for_member(&question, "carol")[..]
    else {
        panic!("{question:?}")
    };
    assert_eq!((asked_gid.as_str(), ids.clone()), ("g1", vec![relay_id.clone()]));
    // The same message again (a redelivery) asks nothing more.
    desktop
        .store
        .with(|c| on_message(c, "carol", 1, &relay_id, &gid, &message, 3))
        .unwrap()
        .unwrap();
    assert!(take_outbox(&desktop).is_empty());

    // carol answers with her key and the message, pairwise.
    carol.store.with(|c| on_key_request(c, "carol", "alice", "g1", ids, 4)).unwrap().unwrap();
    let answer = take_outbox(&carol);
    let to_alice = for_member(&answer, "alice");
    assert_eq!(to_alice.len(), 2, "{answer:?}");
    for content in to_alice {
        match content {
            Content::GroupResend { gid, content } => {
                let r = desktop.store.with(|c| on_resend(c, "carol", gid, (**content).clone(), 5));
                r.unwrap().unwrap();
            }
            Content::SenderKey { gid, key } => {
                let r = desktop.store.with(|c| on_sender_key(c, "alice", "carol", 1, gid, key, 5));
                r.unwrap().unwrap();
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(shown(&desktop, "c1").as_deref(), Some("carol here"));
    assert_eq!(count(&desktop, "group_pending"), 0);

    // From now on the desktop reads both as they write, nothing waits.
    send(&carol, &g, "c2", "again");
    on_group(&desktop, "carol", 1, &group_frame(&take_outbox(&carol))).unwrap();
    send(&bob, &g, "b2", "me too");
    on_group(&desktop, "bob", 1, &group_frame(&take_outbox(&bob))).unwrap();
    assert_eq!(shown(&desktop, "c2").as_deref(), Some("again"));
    assert_eq!(shown(&desktop, "b2").as_deref(), Some("me too"));
}

#[test]
fn key_requests_are_answered_once_each_within_bounds_and_only_to_recipients() {
    let (alice, carol) = (device("alice"), device("carol"));
    let g = group_of(&["alice", "bob", "carol"]);
    join(&[&alice, &carol], &g);
    let mut ids = Vec::new();
    for i in 0..(keys::MAX_REQUESTS + 5) {
        send(&carol, &g, &format!("c{i}"), "text");
        ids.push(group_relay_id(&take_outbox(&carol)));
    }
    // A non-member, a group carol is not in, and our own account: refused.
    let ask = |who: &str, gid: &str, ids: &[String]| {
        carol.store.with(|c| on_key_request(c, "carol", who, gid, ids, 10)).unwrap()
    };
    assert!(ask("mallory", "g1", &ids[..1]).is_err());
    assert!(ask("bob", "g9", &ids[..1]).is_err());
    assert!(ask("carol", "g1", &ids[..1]).is_err());
    assert!(take_outbox(&carol).is_empty());
    // A made-up relay id: nothing to answer.
    ask("bob", "g1", &["no-such".to_owned()]).unwrap();
    assert!(take_outbox(&carol).is_empty());

    // bob floods: every id, one by one, three times over, and all at once.
    for _ in 0..3 {
        for id in &ids {
            ask("bob", "g1", std::slice::from_ref(id)).unwrap();
        }
    }
    ask("bob", "g1", &ids).unwrap();
    let answers = take_outbox(&carol);
    let resent: Vec<&Content> = for_member(&answers, "bob")
        .into_iter()
        .filter(|c| matches!(c, Content::GroupResend { .. }))
        .collect();
    let keys_sent = for_member(&answers, "bob")
        .iter()
        .filter(|c| matches!(c, Content::SenderKey { .. }))
        .count();
    assert_eq!(resent.len(), keys::MAX_REQUESTS as usize, "each message once, within the bound");
    assert_eq!(keys_sent, 1, "one key while it waits to go");
    let mut texts: Vec<String> = resent
        .iter()
        .filter_map(|c| match c {
            Content::GroupResend { content, .. } => match &**content {
                Content::Text { id, .. } => Some(id.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    texts.dedup();
    assert_eq!(texts.len(), keys::MAX_REQUESTS as usize);
    // After the window, the rest are answered; what was answered is never again.
    let later = 10 + keys::REQUEST_WINDOW_MS + 1;
    let rest = &ids[keys::MAX_REQUESTS as usize - 2..];
    carol.store.with(|c| on_key_request(c, "carol", "bob", "g1", rest, later)).unwrap().unwrap();
    let rest = take_outbox(&carol);
    let n = for_member(&rest, "bob")
        .iter()
        .filter(|c| matches!(c, Content::GroupResend { .. }))
        .count();
    assert_eq!(n, 5);

    // dave, added since, cannot have what was sent before he was in by asking for it.
    let with_dave = GroupState { version: 2, ..group_of(&["alice", "bob", "carol", "dave"]) };
    carol.store.with(|c| apply(c, "carol", Some(&g), &with_dave, "alice", 11)).unwrap();
    carol.store.with(|c| on_key_request(c, "carol", "dave", "g1", &ids[..3], 12)).unwrap().unwrap();
    assert!(for_member(&take_outbox(&carol), "dave").is_empty());

    // The asking side is bounded too: a member flooding us with messages from a device
    // we hold no key of makes us ask at most MAX_REQUESTS times.
    let mut key = SenderKey::generate(b"g1", &mut OsRng).unwrap();
    for i in 0..(keys::MAX_REQUESTS + 10) {
        let relay_id = format!("flood-{i}");
        let body = key.encrypt(b"junk").unwrap();
        let _ = alice.store.with(|c| on_message(c, "carol", 7, &relay_id, "g1", &body, 5));
    }
    let questions = for_member(&take_outbox(&alice), "carol")
        .iter()
        .filter(|c| matches!(c, Content::SenderKeyRequest { .. }))
        .count();
    assert_eq!(questions, keys::MAX_REQUESTS as usize);
}

#[test]
fn a_members_new_device_gets_our_key_and_a_removed_one_makes_it_rotate() {
    let (alice, bob) = (device("alice"), device("bob"));
    let g = group_of(&["alice", "bob"]);
    join(&[&alice, &bob], &g);
    send(&alice, &g, "m1", "one");
    take_outbox(&alice);
    // The relay's mismatch named a new device of bob's: our key goes to bob again, once
    // while it waits.
    assert!(alice.store.with(|c| devices_added(c, "bob", 2)).unwrap());
    assert!(!alice.store.with(|c| devices_added(c, "bob", 2)).unwrap());
    let rows = take_outbox(&alice);
    let to_bob = for_member(&rows, "bob");
    assert_eq!(to_bob.len(), 1);
    assert_eq!(generation_of(to_bob[0]), 0);
    // Someone we share no group with gets nothing.
    assert!(!alice.store.with(|c| devices_added(c, "zoe", 2)).unwrap());

    // A device of bob's is removed: his key of that device goes, ours rotates before the
    // next message, and the new generation goes to bob.
    deliver_keys(&rows, "alice", &bob);
    send(&bob, &g, "b1", "hi");
    deliver_keys_of(&take_outbox(&bob), "bob", 2, &alice);
    assert_eq!(count(&alice, "group_receivers"), 1);
    alice.store.with(|c| devices_removed(c, "bob", &[2])).unwrap();
    assert_eq!(count(&alice, "group_receivers"), 0);
    send(&alice, &g, "m2", "two");
    let rows = take_outbox(&alice);
    let to_bob = for_member(&rows, "bob");
    assert_eq!(to_bob.len(), 1);
    assert_eq!(generation_of(to_bob[0]), 1);
    deliver_keys(&rows, "alice", &bob);
    on_group(&bob, "alice", 1, &group_frame(&rows)).unwrap();
    assert_eq!(shown(&bob, "m2").as_deref(), Some("two"));
}

#[test]
fn a_group_text_sent_on_another_of_our_devices_shows_as_ours() {
    let desktop = device("alice");
    let g = group_of(&["alice", "bob"]);
    join(&[&desktop], &g);
    let copy = |to: &str| Content::Sent {
        to: to.into(),
        id: "p1".into(),
        at: 1,
        text: "from the phone".into(),
        reply_to: None,
    };
    let r = desktop.store.with(|c| apply_sent(c, "alice", copy("group:g1"), 2));
    r.unwrap().unwrap();
    let m = desktop.store.with(|c| messages::get(c, "p1")).unwrap().unwrap();
    assert_eq!((m.conversation.as_str(), m.direction), ("group:g1", Direction::Out));
    // Not for a group we are not in.
    let r = desktop.store.with(|c| apply_sent(c, "alice", copy("group:g2"), 2));
    assert!(r.unwrap().is_err());
}

#[test]
fn a_group_texts_kept_plaintext_goes_with_the_message() {
    let alice = device("alice");
    let g = group_of(&["alice", "bob"]);
    join(&[&alice], &g);
    send(&alice, &g, "m1", "kept a while");
    assert_eq!(count(&alice, "resend"), 1, "kept for a member's device that cannot read it");
    alice.store.with(|c| crate::erase::erase(c, "alice", &["m1".to_owned()]).map(drop)).unwrap();
    assert_eq!(count(&alice, "resend"), 0);
    // And it goes after a day in any case.
    send(&alice, &g, "m2", "kept a while");
    let day = crate::outbox::GROUP_RESEND_WINDOW_MS;
    alice.store.with(|c| crate::outbox::prune_resend(c, 2 + day)).unwrap();
    assert_eq!(count(&alice, "resend"), 0);
}
