//! End-to-end encrypted messaging through real processes: receipts, offline recipients,
//! relay outages, crashes, and what stays on disk.

use std::time::Duration;

use serde_json::{Value, json};

use letstalk_tests::{
    Daemon, PASSWORD, World, error_of, eventually, files_containing, next_event, registered,
    wait_connected, wait_drained, wait_texts,
};

#[tokio::test]
async fn a_round_trip_through_delivered_and_read() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let bob = registered(&world, &relay, "bob").await;

    let a = alice.client().await.unwrap();
    let mut a_events = a.take_events().unwrap();
    a.call_value("events.subscribe", json!({"kinds": ["message.state"]})).await.unwrap();
    let b = bob.client().await.unwrap();
    let mut b_events = b.take_events().unwrap();
    b.call_value("events.subscribe", json!({"kinds": ["message.received"]})).await.unwrap();

    let sent = a
        .call_value(
            "messages.send",
            json!({"to": "user:bob", "text": "hello bob", "client_msg_id": "c-1"}),
        )
        .await
        .unwrap();
    let m = &sent["message"];
    assert_eq!(
        (m["direction"].as_str(), m["state"].as_str(), m["from"].as_str()),
        (Some("out"), Some("queued"), Some("alice"))
    );
    let id = m["message_id"].as_str().unwrap().to_owned();
    // A retry with the same client_msg_id is the same message.
    let again = a
        .call_value(
            "messages.send",
            json!({"to": "user:bob", "text": "hello bob", "client_msg_id": "c-1"}),
        )
        .await
        .unwrap();
    assert_eq!(again["message"]["message_id"], id.as_str());

    let got = next_event(&mut b_events, Duration::from_secs(20)).await.unwrap();
    assert_eq!(
        (got["message"]["text"].as_str(), got["message"]["from"].as_str()),
        (Some("hello bob"), Some("alice"))
    );
    assert_eq!(got["message"]["message_id"], id.as_str());

    let mut states = Vec::new();
    while states.last().map(String::as_str) != Some("delivered") {
        let e = next_event(&mut a_events, Duration::from_secs(20)).await.unwrap();
        assert_eq!(e["message_id"], id.as_str());
        states.push(e["state"].as_str().unwrap().to_owned());
    }
    let convs = bob.call("conversations.list", json!({})).await.unwrap();
    assert_eq!(
        (
            convs["conversations"][0]["conversation"].as_str(),
            convs["conversations"][0]["unread"].as_u64()
        ),
        (Some("user:alice"), Some(1))
    );
    assert_eq!(
        bob.call("messages.mark_read", json!({"conversation": "user:alice"})).await.unwrap()["marked"],
        1
    );
    let e = next_event(&mut a_events, Duration::from_secs(20)).await.unwrap();
    assert_eq!(e["state"], "read");
    assert_eq!(
        alice.call("messages.get", json!({"message_id": id})).await.unwrap()["message"]["state"],
        "read"
    );
    assert_eq!(
        bob.call("conversations.list", json!({})).await.unwrap()["conversations"][0]["unread"],
        0
    );
    // Delivered means gone from the relay: the message, the delivery receipt and the read
    // receipt were each acknowledged and deleted from the mailboxes.
    eventually(Duration::from_secs(20), "empty relay mailboxes", || async {
        (relay.mailbox_len().unwrap() == 0).then_some(())
    })
    .await
    .unwrap();

    // Both sides compute the same safety number (verifying needs a contact; before this
    // the check sat inside an `if let (Ok, Ok)` and never ran).
    alice.call("contacts.add", json!({"user_id": "bob"})).await.unwrap();
    bob.call("contacts.add", json!({"user_id": "alice"})).await.unwrap();
    let x = alice.call("contacts.verify", json!({"user_id": "bob"})).await.unwrap();
    let y = bob.call("contacts.verify", json!({"user_id": "alice"})).await.unwrap();
    assert_eq!(x["safety_number"], y["safety_number"]);
    let digits = x["safety_number"].as_str().unwrap().replace(' ', "");
    assert_eq!(digits.len(), 60);
    assert!(digits.chars().all(|c| c.is_ascii_digit()), "{digits}");
    // Sizes and names are checked.
    let (_, kind, _) = error_of(
        alice.call("messages.send", json!({"to": "user:bob", "text": "x".repeat(65 * 1024)})).await,
    );
    assert_eq!(kind.as_deref(), Some("too_large"));
    let (code, _, field) =
        error_of(alice.call("messages.send", json!({"to": "bob", "text": "x"})).await);
    assert_eq!((code, field.as_deref()), (-32602, Some("to")));
}

#[tokio::test]
async fn fifty_messages_to_an_offline_recipient_arrive_once_in_order() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let mut bob = registered(&world, &relay, "bob").await;
    bob.stop(Duration::from_secs(5)).unwrap();
    let c = alice.client().await.unwrap();
    for i in 0..50 {
        c.call_value("messages.send", json!({"to": "user:bob", "text": format!("offline {i}")}))
            .await
            .unwrap();
    }
    // All accepted by the relay while bob is away.
    wait_drained(&alice, Duration::from_secs(30)).await;
    let bob = world.daemon("bob").with_relay(&relay).start().unwrap();
    let got = wait_texts(&bob, "user:alice", 50, Duration::from_secs(60)).await;
    assert_eq!(got, (0..50).map(|i| format!("offline {i}")).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_message_sent_while_the_relay_is_down_is_delivered_when_it_returns() {
    let world = World::new();
    let mut relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let bob = registered(&world, &relay, "bob").await;
    relay.kill9();
    send_queued(&alice, "through the outage").await;
    relay.restart().unwrap();
    let got = wait_texts(&bob, "user:alice", 1, Duration::from_secs(90)).await;
    assert_eq!(got, vec!["through the outage".to_owned()]);
}

#[tokio::test]
async fn crashes_and_restarts_during_300_sends_lose_and_duplicate_nothing() {
    let world = World::new();
    let mut relay = world.relay("relay").unwrap();
    let mut alice = registered(&world, &relay, "alice").await;
    let mut bob = registered(&world, &relay, "bob").await;
    let mut accepted = Vec::new();
    for i in 0..300 {
        if i == 100 {
            alice.kill9();
            alice = world.daemon("alice").with_relay(&relay).start().unwrap();
        }
        if i == 150 {
            bob.kill9();
        }
        if i == 200 {
            relay.crash_restart().unwrap();
        }
        if i == 250 {
            bob = world.daemon("bob").with_relay(&relay).start().unwrap();
        }
        let text = format!("crash test {i:03}");
        if alice.call("messages.send", json!({"to": "user:bob", "text": text})).await.is_ok() {
            accepted.push(text);
        }
    }
    assert_eq!(accepted.len(), 300, "messages.send never refuses while the daemon runs");
    let got = wait_texts(&bob, "user:alice", 300, Duration::from_secs(120)).await;
    assert_eq!(got, accepted);
}

/// Sends `text` from `d` to bob while the relay is away: answered, and queued.
async fn send_queued(d: &Daemon, text: &str) {
    let r = d.call("messages.send", json!({"to": "user:bob", "text": text})).await.unwrap();
    assert_eq!(r["message"]["state"], "queued");
}

/// Issue 17: a message is encrypted in the transaction that accepts it. Killed (-9) just
/// after `messages.send` answered, while the relay is away so nothing has left, the
/// daemon sends that stored ciphertext after a restart, once; the message after it opens
/// too (the ratchet was committed with the ciphertext, so no message key is used twice).
#[tokio::test]
async fn a_send_answered_then_kill_9_is_delivered_once_after_the_restart() {
    let world = World::new();
    let mut relay = world.relay("relay").unwrap();
    let mut alice = registered(&world, &relay, "alice").await;
    let bob = registered(&world, &relay, "bob").await;
    // A session first: the next message is sealed where it is accepted.
    alice.call("messages.send", json!({"to": "user:bob", "text": "first"})).await.unwrap();
    wait_texts(&bob, "user:alice", 1, Duration::from_secs(30)).await;
    relay.kill9();
    send_queued(&alice, "sealed, then killed").await;
    alice.kill9();
    relay.restart().unwrap();
    let alice = world.daemon("alice").with_relay(&relay).start().unwrap();
    alice
        .call("messages.send", json!({"to": "user:bob", "text": "after the restart"}))
        .await
        .unwrap();
    wait_drained(&alice, Duration::from_secs(60)).await;
    // bob's link comes back after its own reconnection backoff (as in the outage test).
    let got = wait_texts(&bob, "user:alice", 3, Duration::from_secs(120)).await;
    assert_eq!(got, ["first", "sealed, then killed", "after the restart"]);
}

#[tokio::test]
async fn a_disconnected_ui_catches_up_and_no_plaintext_touches_the_disk() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let bob = registered(&world, &relay, "bob").await;
    let ui = bob.client().await.unwrap();
    let r = ui.call_value("events.subscribe", json!({})).await.unwrap();
    let since = r["last_seq"].as_u64().unwrap();
    drop(ui);
    let canary = "CANARY-7f3a9c-unique-message-text";
    for i in 0..20 {
        alice
            .call("messages.send", json!({"to": "user:bob", "text": format!("{canary} {i}")}))
            .await
            .unwrap();
    }
    wait_texts(&bob, "user:alice", 20, Duration::from_secs(60)).await;
    // The UI comes back and gets every event it missed, in order.
    let ui = bob.client().await.unwrap();
    let mut events = ui.take_events().unwrap();
    ui.call_value("events.subscribe", json!({"since": since, "kinds": ["message.received"]}))
        .await
        .unwrap();
    for i in 0..20 {
        let e = next_event(&mut events, Duration::from_secs(20)).await.unwrap();
        assert_eq!(e["message"]["text"], format!("{canary} {i}"));
    }
    // Neither daemon's files (database, WAL, keys) nor the relay's hold the text.
    for dir in [alice.data_dir(), bob.data_dir(), relay.data_dir.as_path()] {
        let hits = files_containing(dir, canary.as_bytes());
        assert!(hits.is_empty(), "plaintext found in {hits:?}");
    }
    // Nor does any log, at debug level.
    for logs in [alice.logs(), bob.logs(), relay.logs()] {
        assert!(!logs.contains(canary), "message text reached a log");
        assert!(!logs.contains(PASSWORD), "a password reached a log");
    }
    let _: Value = alice.call("system.status", json!({})).await.unwrap();
}

#[tokio::test]
async fn a_new_identity_shows_a_system_message_and_a_new_safety_number() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let bob = registered(&world, &relay, "bob").await;
    alice.call("contacts.add", json!({"user_id": "bob"})).await.unwrap();
    bob.call("messages.send", json!({"to": "user:alice", "text": "from the old phone"}))
        .await
        .unwrap();
    wait_texts(&alice, "user:bob", 1, Duration::from_secs(30)).await;
    let before = alice.call("contacts.verify", json!({"user_id": "bob"})).await.unwrap();

    // Bob moves to a new device: new identity key.
    let bob2 = world.daemon("bob2").with_relay(&relay).start().unwrap();
    wait_connected(&bob2).await;
    bob2.call("account.login", json!({"user_id": "bob", "password": PASSWORD})).await.unwrap();
    bob2.call("messages.send", json!({"to": "user:alice", "text": "from the new phone"}))
        .await
        .unwrap();
    wait_texts(&alice, "user:bob", 2, Duration::from_secs(30)).await;
    let page = alice.call("messages.list", json!({"conversation": "user:bob"})).await.unwrap();
    let kinds: Vec<&str> =
        page["messages"].as_array().unwrap().iter().map(|m| m["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["text", "system", "text"], "{page}");
    let after = alice.call("contacts.verify", json!({"user_id": "bob"})).await.unwrap();
    assert_ne!(before["safety_number"], after["safety_number"]);
    // And alice's replies reach the new device.
    alice.call("messages.send", json!({"to": "user:bob", "text": "welcome back"})).await.unwrap();
    let texts = wait_texts(&bob2, "user:alice", 2, Duration::from_secs(30)).await;
    assert_eq!(texts, ["from the new phone", "welcome back"]);
    drop(bob);
}

#[tokio::test]
async fn read_receipts_follow_the_setting() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let bob = registered(&world, &relay, "bob").await;
    bob.call("settings.set", json!({"read_receipts": false})).await.unwrap();
    let id = alice
        .call("messages.send", json!({"to": "user:bob", "text": "private reading"}))
        .await
        .unwrap()["message"]["message_id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_texts(&bob, "user:alice", 1, Duration::from_secs(30)).await;
    eventually(Duration::from_secs(20), "delivered", || async {
        let m = alice.call("messages.get", json!({"message_id": id})).await.ok()?;
        (m["message"]["state"] == "delivered").then_some(())
    })
    .await
    .unwrap();
    assert_eq!(
        bob.call("messages.mark_read", json!({"conversation": "user:alice"})).await.unwrap()["marked"],
        1
    );
    // A later message proves the link is flowing; the first one still is not "read".
    bob.call("messages.send", json!({"to": "user:alice", "text": "after reading"})).await.unwrap();
    wait_texts(&alice, "user:bob", 2, Duration::from_secs(30)).await;
    let m = alice.call("messages.get", json!({"message_id": id})).await.unwrap();
    assert_eq!(m["message"]["state"], "delivered");
}
