//! The session layer under stress: a verified contact's identity key changing, sessions
//! started from both sides at once, a peer that lost its session, and a device drained
//! of one-time prekeys.

use std::time::Duration;

use serde_json::{Value, json};

use letstalk_tests::{PASSWORD, World, error_of, eventually, registered, wait_connected};

const LIMIT: Duration = Duration::from_secs(60);

/// Every message of a conversation (one page is enough here), oldest first.
async fn messages(d: &letstalk_tests::Daemon, conversation: &str) -> Vec<Value> {
    let page =
        d.call("messages.list", json!({"conversation": conversation, "limit": 500})).await.unwrap();
    page["messages"].as_array().unwrap().clone()
}

/// The texts `from` wrote in a conversation, in the order shown.
async fn texts_from(d: &letstalk_tests::Daemon, conversation: &str, from: &str) -> Vec<String> {
    messages(d, conversation)
        .await
        .iter()
        .filter(|m| m["kind"] == "text" && m["from"] == from)
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

async fn wait_texts_from(
    d: &letstalk_tests::Daemon,
    conversation: &str,
    from: &str,
    n: usize,
) -> Vec<String> {
    eventually(LIMIT, &format!("{n} texts from {from}"), || async {
        let t = texts_from(d, conversation, from).await;
        (t.len() >= n).then_some(t)
    })
    .await
    .unwrap()
}

async fn contact(d: &letstalk_tests::Daemon, user: &str) -> Value {
    let list = d.call("contacts.list", json!({})).await.unwrap();
    list["contacts"].as_array().unwrap().iter().find(|c| c["user_id"] == user).unwrap().clone()
}

async fn send(d: &letstalk_tests::Daemon, to: &str, text: &str) {
    d.call("messages.send", json!({"to": format!("user:{to}"), "text": text})).await.unwrap();
}

/// alice and bob, contacts of each other, with a session both ways.
async fn acquainted(world: &World, relay: &letstalk_tests::Relay) -> [letstalk_tests::Daemon; 2] {
    let alice = registered(world, relay, "alice").await;
    let bob = registered(world, relay, "bob").await;
    alice.call("contacts.add", json!({"user_id": "bob"})).await.unwrap();
    bob.call("contacts.add", json!({"user_id": "alice"})).await.unwrap();
    send(&alice, "bob", "hello bob").await;
    wait_texts_from(&bob, "user:alice", "alice", 1).await;
    send(&bob, "alice", "hello alice").await;
    wait_texts_from(&alice, "user:bob", "bob", 1).await;
    [alice, bob]
}

/// Wipes bob's device and account (`privacy.restore_defaults`) and registers bob again:
/// the same user id with a new identity key and no sessions.
async fn bob_starts_over(bob: &letstalk_tests::Daemon) {
    let done = bob.call("privacy.restore_defaults", json!({"confirm": true})).await.unwrap();
    assert_eq!(done["relay_account_deleted"], true);
    wait_connected(bob).await;
    bob.call(
        "account.register",
        json!({"user_id": "bob", "email": "bob@example.org", "nickname": "bob again",
            "password": PASSWORD}),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_verified_contact_with_a_new_key_is_untrusted_until_accepted() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let [alice, bob] = acquainted(&world, &relay).await;
    let a = alice.client().await.unwrap();
    let mut events = a.take_events().unwrap();
    a.call_value("events.subscribe", json!({"kinds": ["contact.changed"]})).await.unwrap();

    let old = alice.call("contacts.verify", json!({"user_id": "bob"})).await.unwrap();
    let c = alice
        .call("contacts.mark_verified", json!({"user_id": "bob", "verified": true}))
        .await
        .unwrap();
    assert_eq!((c["verified"].as_bool(), &c["identity_changed_at"]), (Some(true), &Value::Null));

    bob_starts_over(&bob).await;
    send(&bob, "alice", "it is me, new phone").await;
    wait_texts_from(&alice, "user:bob", "bob", 2).await;

    // Shown: unverified, when it changed, a system message and a contact.changed event.
    let c = contact(&alice, "bob").await;
    assert_eq!(c["verified"], false);
    assert!(c["identity_changed_at"].as_i64().is_some(), "{c}");
    assert_ne!(c["safety_number"], old["safety_number"]);
    // (Presence and profile changes of bob's new account come as contact.changed too.)
    loop {
        let changed = letstalk_tests::next_event(&mut events, LIMIT).await.unwrap();
        assert_eq!(changed["contact"]["user_id"], "bob");
        if changed["contact"]["verified"] == false {
            assert!(changed["contact"]["identity_changed_at"].as_i64().is_some());
            break;
        }
    }
    let system: Vec<Value> =
        messages(&alice, "user:bob").await.into_iter().filter(|m| m["kind"] == "system").collect();
    assert_eq!(system.len(), 1, "{system:?}");
    assert!(system[0]["text"].as_str().unwrap().contains("safety number"));

    // Nothing goes to the new key: messages, files and calls answer untrusted_identity.
    let e = error_of(alice.call("messages.send", json!({"to": "user:bob", "text": "x"})).await);
    assert_eq!((e.0, e.1.as_deref()), (-32011, Some("untrusted_identity")));
    let file = world.path().join("note.txt");
    std::fs::write(&file, b"a file for bob").unwrap();
    let e = error_of(
        alice.call("files.send", json!({"to": "user:bob", "path": file.to_str().unwrap()})).await,
    );
    assert_eq!(e.1.as_deref(), Some("untrusted_identity"));
    let e = error_of(alice.call("calls.start", json!({"to": "user:bob", "media": "audio"})).await);
    assert_eq!(e.1.as_deref(), Some("untrusted_identity"));

    // A wrong safety number is refused and changes nothing.
    let wrong = "1".repeat(60);
    let e = error_of(
        alice.call("contacts.trust", json!({"user_id": "bob", "safety_number": wrong})).await,
    );
    assert_eq!(e.1.as_deref(), Some("conflict"));
    let e = error_of(alice.call("messages.send", json!({"to": "user:bob", "text": "x"})).await);
    assert_eq!(e.1.as_deref(), Some("untrusted_identity"));

    // Accepting with the current safety number (here with the CLI, its groups of five
    // as separate arguments) verifies the new key; messages flow.
    let now = alice.call("contacts.verify", json!({"user_id": "bob"})).await.unwrap();
    let mut args = vec!["trust", "bob"];
    args.extend(now["safety_number"].as_str().unwrap().split(' '));
    let (code, out, err) = letstalk_tests::cli(alice.socket(), &args);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("key verified"), "{out}");
    assert_eq!(contact(&alice, "bob").await["verified"], true);
    send(&alice, "bob", "welcome back").await;
    let got = wait_texts_from(&bob, "user:alice", "alice", 1).await;
    assert_eq!(got, ["welcome back"]);
}

#[tokio::test]
async fn a_message_to_a_lost_session_is_resent_after_a_retry_receipt() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let [alice, bob] = acquainted(&world, &relay).await;
    // bob's device loses every session (and its identity key); alice still writes under
    // the old session, which bob can no longer open.
    bob_starts_over(&bob).await;
    send(&alice, "bob", "are you there?").await;
    send(&alice, "bob", "second try").await;
    // bob asks again (a retry receipt); alice re-sends under a fresh session.
    let got = wait_texts_from(&bob, "user:alice", "alice", 2).await;
    assert_eq!(got, ["are you there?", "second try"]);
    // Not verified before, so the change is shown but nothing is held.
    let c = contact(&alice, "bob").await;
    assert_eq!(c["verified"], false);
    assert!(c["identity_changed_at"].as_i64().is_some());
    send(&alice, "bob", "and later").await;
    send(&bob, "alice", "all here").await;
    assert_eq!(wait_texts_from(&bob, "user:alice", "alice", 3).await.len(), 3);
    assert_eq!(wait_texts_from(&alice, "user:bob", "bob", 2).await[1], "all here");
    // Delivered, in the end.
    eventually(LIMIT, "delivered", || async {
        let out: Vec<Value> = messages(&alice, "user:bob")
            .await
            .into_iter()
            .filter(|m| m["direction"] == "out" && m["kind"] == "text")
            .collect();
        out.iter().all(|m| m["state"] == "delivered" || m["state"] == "read").then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn sessions_started_from_both_sides_at_once_deliver_everything_once_in_order() {
    let world = World::new();
    let mut relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let bob = registered(&world, &relay, "bob").await;
    alice.call("contacts.add", json!({"user_id": "bob"})).await.unwrap();
    bob.call("contacts.add", json!({"user_id": "alice"})).await.unwrap();

    // Both write first while the relay is down: when it returns, each starts a session
    // to the other at the same moment.
    relay.stop();
    let a_first: Vec<String> = (1..=5).map(|i| format!("a{i}")).collect();
    let b_first: Vec<String> = (1..=5).map(|i| format!("b{i}")).collect();
    for (a, b) in a_first.iter().zip(&b_first) {
        send(&alice, "bob", a).await;
        send(&bob, "alice", b).await;
    }
    relay.restart().unwrap();
    assert_eq!(wait_texts_from(&bob, "user:alice", "alice", 5).await, a_first);
    assert_eq!(wait_texts_from(&alice, "user:bob", "bob", 5).await, b_first);

    // And everything after, both ways, interleaved.
    let mut a_all = a_first.clone();
    let mut b_all = b_first.clone();
    for i in 6..=12 {
        let (a, b) = (format!("a{i}"), format!("b{i}"));
        send(&alice, "bob", &a).await;
        send(&bob, "alice", &b).await;
        a_all.push(a);
        b_all.push(b);
    }
    assert_eq!(wait_texts_from(&bob, "user:alice", "alice", 12).await, a_all);
    assert_eq!(wait_texts_from(&alice, "user:bob", "bob", 12).await, b_all);
    // Exactly once: nothing more arrives.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(texts_from(&bob, "user:alice", "alice").await, a_all);
    assert_eq!(texts_from(&alice, "user:bob", "bob").await, b_all);
}

#[tokio::test]
async fn a_device_drained_of_one_time_prekeys_is_refilled_when_it_comes_online() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let mut victim = registered(&world, &relay, "victim").await;
    victim.stop(Duration::from_secs(10)).unwrap();

    // 200 bundle fetches while the victim is offline: every one-time prekey is taken,
    // then only the last-resort key is left.
    let mallory = letstalk_tests::peer::Peer::register(&relay, "mallory").await.unwrap();
    let mallory = &mallory.link;
    let mut one_time = 0;
    for _ in 0..200 {
        let b = mallory.fetch_bundle("victim").await.unwrap();
        if !b.last_resort && b.one_time_prekey.is_some() {
            one_time += 1;
        }
    }
    assert_eq!(one_time, 100);
    assert!(mallory.fetch_bundle("victim").await.unwrap().last_resort);

    // The victim comes back online and tops up.
    let victim = world.daemon("victim").with_relay(&relay).start().unwrap();
    wait_connected(&victim).await;
    let fresh = eventually(LIMIT, "one-time prekeys refilled", || async {
        let b = mallory.fetch_bundle("victim").await.ok()?;
        (!b.last_resort).then_some(b)
    })
    .await
    .unwrap();
    let id = fresh.one_time_prekey.unwrap().id;
    assert!(id >= 116, "a new one-time prekey id, got {id}");
    // The refill went above the low-water mark (25): 30 more fetches all get one-time
    // prekeys.
    for _ in 0..30 {
        assert!(!mallory.fetch_bundle("victim").await.unwrap().last_resort);
    }
    // And a new key works: a message encrypted to it arrives.
    let alice = registered(&world, &relay, "alice").await;
    send(&alice, "victim", "after the drain").await;
    assert_eq!(wait_texts_from(&victim, "user:alice", "alice", 1).await, ["after the drain"]);
}
