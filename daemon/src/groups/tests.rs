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

/// An outbox row: recipient, decoded plaintext, envelope.
type Row = (String, Option<Content>, Option<Vec<u8>>);

/// Takes every outbox row of `d`.
fn take_outbox(d: &Device) -> Vec<Row> {
    d.store
        .with(|c| {
            let rows = c
                .prepare("SELECT recipient, plaintext, envelope FROM outbox ORDER BY seq")?
                .query_map([], |r| {
                    let plain: Option<Vec<u8>> = r.get(1)?;
                    Ok((r.get(0)?, plain.and_then(|p| Content::decode(&p)), r.get(2)?))
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
    for (recipient, content, _) in rows {
        if let (true, Some(Content::SenderKey { gid, key })) = (recipient == to.me, content) {
            to.store.with(|c| on_sender_key(c, to.me, from, gid, key, 2)).unwrap().unwrap();
        }
    }
}

fn group_frame(rows: &[Row]) -> Vec<u8> {
    rows.iter().find_map(|(r, _, e)| r.starts_with("group:").then(|| e.clone())).flatten().unwrap()
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
        d.store.with(|c| on_message(c, "alice", gid, message, 2)).unwrap().unwrap();
        assert_eq!(shown(d, "m1").as_deref(), Some("before"));
    }

    // carol is removed; alice's next message rotates her key, for bob only.
    let after = GroupState { version: 2, ..without(&g, "carol") };
    alice.store.with(|c| apply(c, "alice", Some(&g), &after, "alice", 3)).unwrap();
    send(&alice, &after, "m2", "after carol");
    let rows = take_outbox(&alice);
    assert!(rows.iter().all(|(r, _, _)| r != "carol"), "nothing at all is queued for carol");
    let second = group_frame(&rows);
    assert!(!second.windows(11).any(|w| w == b"after carol"));
    let (gid, message) = parse_frame(&second).unwrap();

    // carol, who never heard of her removal and keeps every key she had, reads nothing.
    carol.store.with(|c| on_message(c, "alice", gid, message, 4)).unwrap().unwrap();
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
    bob.store.with(|c| on_message(c, "alice", gid, message, 4)).unwrap().unwrap();
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
    bob.store.with(|c| on_message(c, "alice", gid, message, 2)).unwrap().unwrap();
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
        let _ = bob.store.with(|c| on_sender_key(c, "bob", "eve", &gid, &hex_key, 3)).unwrap();
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
        let _ = carol.store.with(|c| on_message(c, "eve", "unknown-group", body.as_bytes(), 5));
    }
    assert_eq!(count(&carol, "group_pending"), MAX_PENDING_STRANGER);
    let big = vec![0u8; MAX_PENDING_BODY + 1];
    let r = carol.store.with(|c| on_message(c, "dave", "unknown-group", &big, 5)).unwrap();
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
