//! The privacy policy's controls through real relays and daemons: blocking one user,
//! "block everyone", "clear chat history" and "restore defaults".

use std::time::Duration;

use serde_json::{Value, json};

use letstalk_tests::{
    Daemon, PASSWORD, World, error_of, eventually, files_containing, next_event, registered,
    registered_with, texts, wait_connected, wait_drained, wait_presence, wait_texts,
};

const LIMIT: Duration = Duration::from_secs(30);

/// Sends and waits for the message's final state at the sender (`delivered` or `failed`).
async fn send_and_settle(from: &Daemon, to: &str, text: &str) -> Value {
    let sent = from.call("messages.send", json!({"to": to, "text": text})).await.unwrap();
    let id = sent["message"]["message_id"].as_str().unwrap().to_owned();
    eventually(LIMIT, &format!("{text:?} settled"), || async {
        let m = from.call("messages.get", json!({"message_id": id})).await.ok()?;
        matches!(m["message"]["state"].as_str(), Some("delivered" | "failed"))
            .then(|| m["message"].clone())
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn blocking_one_user_and_everyone_stops_messages_and_presence_until_undone() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let bob = registered(&world, &relay, "bob").await;
    alice.call("contacts.add", json!({"user_id": "bob"})).await.unwrap();
    bob.call("contacts.add", json!({"user_id": "alice"})).await.unwrap();
    wait_presence(&alice, "bob", "online").await;
    assert_eq!(send_and_settle(&alice, "user:bob", "before").await["state"], "delivered");

    // bob blocks alice: her messages are refused with `blocked`, she sees no presence.
    let c = bob.call("contacts.block", json!({"user_id": "alice"})).await.unwrap();
    assert_eq!(c["blocked"], true);
    wait_presence(&alice, "bob", "hidden").await;
    let m = send_and_settle(&alice, "user:bob", "while blocked").await;
    assert_eq!(
        (m["state"].as_str(), m["error"]["data"]["kind"].as_str()),
        (Some("failed"), Some("blocked"))
    );
    assert_eq!(m["error"]["code"], -32005);
    // bob cannot write to someone he blocks either.
    let own = bob.call("messages.send", json!({"to": "user:alice", "text": "x"})).await;
    assert_eq!(error_of(own).1.as_deref(), Some("blocked"));

    bob.call("contacts.unblock", json!({"user_id": "alice"})).await.unwrap();
    wait_presence(&alice, "bob", "online").await;
    assert_eq!(send_and_settle(&alice, "user:bob", "after unblock").await["state"], "delivered");

    // "Block everyone": the same for every sender, until turned off.
    let s = bob.call("settings.set", json!({"block_all": true})).await.unwrap();
    assert_eq!(s["block_all"], true);
    wait_presence(&alice, "bob", "hidden").await;
    let m = send_and_settle(&alice, "user:bob", "while everyone is blocked").await;
    assert_eq!(m["error"]["data"]["kind"], "blocked");
    bob.call("settings.set", json!({"block_all": false})).await.unwrap();
    wait_presence(&alice, "bob", "online").await;
    assert_eq!(send_and_settle(&alice, "user:bob", "back").await["state"], "delivered");

    assert_eq!(texts(&bob, "user:alice").await, vec!["before", "after unblock", "back"]);
    // Blocking a stranger works; unblocking one does not exist.
    let none = bob.call("contacts.unblock", json!({"user_id": "nobody-here"})).await;
    assert_eq!(error_of(none).1.as_deref(), Some("not_found"));
}

#[tokio::test]
async fn clear_history_deletes_unsent_and_unread_and_the_unsent_never_go_out() {
    let world = World::new();
    let mut relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let bob = registered(&world, &relay, "bob").await;
    for t in ["read one", "unread one"] {
        bob.call("messages.send", json!({"to": "user:alice", "text": t})).await.unwrap();
    }
    let got = wait_texts(&alice, "user:bob", 2, LIMIT).await;
    assert_eq!(got, vec!["read one", "unread one"]);
    let page = alice.call("messages.list", json!({"conversation": "user:bob"})).await.unwrap();
    let first = page["messages"][0]["message_id"].as_str().unwrap().to_owned();
    alice
        .call("messages.mark_read", json!({"conversation": "user:bob", "up_to": first}))
        .await
        .unwrap();
    assert_eq!(
        send_and_settle(&alice, "user:bob", "sent and delivered").await["state"],
        "delivered"
    );

    // The relay goes away; what alice writes now stays queued on her device.
    relay.stop();
    alice.call("messages.send", json!({"to": "user:bob", "text": "unsent secret"})).await.unwrap();
    let refused = alice.call("privacy.clear_history", json!({})).await;
    assert_eq!(error_of(refused).1.as_deref(), Some("confirm_required"));
    let cleared = alice.call("privacy.clear_history", json!({"confirm": true})).await.unwrap();
    assert_eq!(cleared["deleted"], 2, "the unread and the unsent message");
    assert_eq!(texts(&alice, "user:bob").await, vec!["read one", "sent and delivered"]);
    let st = alice.call("system.status", json!({})).await.unwrap();
    assert_eq!(st["queued_out"], 0);

    // Back online: a later message arrives, the cleared one never does.
    relay.restart().unwrap();
    wait_connected(&alice).await;
    alice.call("messages.send", json!({"to": "user:bob", "text": "later"})).await.unwrap();
    let at_bob = wait_texts(&bob, "user:alice", 4, LIMIT).await;
    assert_eq!(at_bob, vec!["read one", "unread one", "sent and delivered", "later"]);
}

#[tokio::test]
async fn restore_defaults_deletes_everything_here_and_on_the_relay() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let bob = registered(&world, &relay, "bob").await;
    alice.call("contacts.add", json!({"user_id": "bob"})).await.unwrap();
    let text = "restore-defaults canary text";
    bob.call("messages.send", json!({"to": "user:alice", "text": text})).await.unwrap();
    wait_texts(&alice, "user:bob", 1, LIMIT).await;
    alice.call("groups.create", json!({"name": "Secret club", "members": ["bob"]})).await.unwrap();
    alice.call("settings.set", json!({"read_receipts": false})).await.unwrap();
    let key_before = std::fs::read(alice.data_dir().join("db.key")).unwrap();

    let refused = alice.call("privacy.restore_defaults", json!({"confirm": false})).await;
    assert_eq!(error_of(refused).1.as_deref(), Some("confirm_required"));
    let done = alice.call("privacy.restore_defaults", json!({"confirm": true})).await.unwrap();
    assert_eq!(done["relay_account_deleted"], true);

    // As freshly installed: no account, default settings, a new database key.
    let e = alice.call("account.info", json!({})).await;
    assert_eq!(error_of(e).1.as_deref(), Some("not_logged_in"));
    assert_eq!(alice.call("settings.get", json!({})).await.unwrap()["read_receipts"], true);
    let st = alice.call("system.status", json!({})).await.unwrap();
    assert_eq!(st["user_id"], Value::Null);
    assert_ne!(std::fs::read(alice.data_dir().join("db.key")).unwrap(), key_before);
    for needle in ["alice@example.org", "alice nick", "Secret club", text, "bob nick"] {
        let found = files_containing(alice.data_dir(), needle.as_bytes());
        assert!(found.is_empty(), "{needle:?} found in {found:?}");
    }
    // The relay forgot the account: bob cannot find it, and the ID is free again.
    let gone = bob.call("contacts.add", json!({"user_id": "alice"})).await;
    assert_eq!(error_of(gone).1.as_deref(), Some("not_found"));
    let again = alice
        .call(
            "account.register",
            json!({"user_id": "alice", "email": "new@example.org", "nickname": "New Alice", "password": PASSWORD}),
        )
        .await
        .unwrap();
    assert_eq!(again["user_id"], "alice");
    assert_eq!(alice.call("contacts.list", json!({})).await.unwrap()["contacts"], json!([]));
    assert_eq!(alice.call("groups.list", json!({})).await.unwrap()["groups"], json!([]));
    assert_eq!(texts(&alice, "user:bob").await, Vec::<String>::new());
}

/// A file of random bytes in the world's directory.
fn file_of(world: &World, name: &str, len: usize) -> std::path::PathBuf {
    let mut data = vec![0u8; len];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut data);
    let path = world.path().join(name);
    std::fs::write(&path, &data).unwrap();
    path
}

/// The names in a daemon's encrypted attachments directory.
fn attachments(d: &Daemon) -> Vec<String> {
    std::fs::read_dir(d.data_dir().join("attachments"))
        .map(|dir| dir.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn blocking_refuses_files_and_calls_and_clearing_history_deletes_unread_files() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let bob = registered_with(world.daemon("bob").arg("--ring-timeout-s").arg("5"), &relay).await;
    bob.call("settings.set", json!({"auto_download": {"wifi": false, "cellular": false}}))
        .await
        .unwrap();
    alice.call("contacts.add", json!({"user_id": "bob"})).await.unwrap();
    bob.call("contacts.add", json!({"user_id": "alice"})).await.unwrap();
    wait_presence(&alice, "bob", "online").await;

    // bob blocks alice: her file never reaches the relay's blob store for him and fails
    // with `blocked`; her call is never seen by bob and goes unanswered.
    bob.call("contacts.block", json!({"user_id": "alice"})).await.unwrap();
    wait_presence(&alice, "bob", "hidden").await;
    let path = file_of(&world, "photo.jpg", 300_000);
    let sent = alice.call("files.send", json!({"to": "user:bob", "path": path})).await.unwrap();
    let id = sent["message"]["message_id"].as_str().unwrap().to_owned();
    let m = eventually(LIMIT, "the file refused", || async {
        let m = alice.call("messages.get", json!({"message_id": id})).await.ok()?;
        (m["message"]["state"] == "failed").then(|| m["message"].clone())
    })
    .await
    .unwrap();
    assert_eq!(m["error"]["data"]["kind"], "blocked");
    assert_eq!(m["file"]["transfer"], "failed");
    let bc = bob.client().await.unwrap();
    let mut b_events = bc.take_events().unwrap();
    bc.call_value("events.subscribe", json!({"kinds": ["call.incoming"]})).await.unwrap();
    let call = alice.call("calls.start", json!({"to": "user:bob", "media": "audio"})).await;
    let blocked_call = call.unwrap()["call"]["call_id"].as_str().unwrap().to_owned();
    alice.call("calls.hangup", json!({"call_id": blocked_call})).await.unwrap();
    // The blocked call's signalling has met the relay (refused) before bob unblocks:
    // otherwise an offer still on its way (a device list to fetch first) would rightly
    // be delivered after the unblock.
    wait_drained(&alice, LIMIT).await;

    // Unblocked: a second call rings at bob, and it is the first call bob's daemon
    // hears of (alice's signalling reaches bob in order, so an offer let through while
    // blocked would have come first).
    bob.call("contacts.unblock", json!({"user_id": "alice"})).await.unwrap();
    wait_presence(&alice, "bob", "online").await;
    let call = alice.call("calls.start", json!({"to": "user:bob", "media": "audio"})).await;
    let second_call = call.unwrap()["call"]["call_id"].as_str().unwrap().to_owned();
    let incoming = next_event(&mut b_events, LIMIT).await.unwrap();
    assert_eq!(incoming["call"]["call_id"], second_call.as_str(), "bob heard of the blocked call");
    let calls = bob.call("calls.list", json!({})).await.unwrap();
    let ids: Vec<_> = calls["calls"].as_array().unwrap().iter().map(|c| &c["call_id"]).collect();
    assert_eq!(ids, vec![second_call.as_str()]);
    alice.call("calls.hangup", json!({"call_id": second_call})).await.unwrap();

    // A file arrives; bob downloads it without reading it. Clearing the history deletes
    // the unread message and its encrypted copy.
    let sent = alice.call("files.send", json!({"to": "user:bob", "path": path})).await.unwrap();
    let id = sent["message"]["message_id"].as_str().unwrap().to_owned();
    eventually(LIMIT, "the file at bob", || async {
        bob.call("messages.get", json!({"message_id": id})).await.ok()
    })
    .await
    .unwrap();
    let dest = world.path().join("at-bob.jpg");
    bob.call("files.download", json!({"message_id": id, "dest": dest})).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(&path).unwrap());
    assert_eq!(attachments(&bob), vec![format!("{id}.age")]);
    let cleared = bob.call("privacy.clear_history", json!({"confirm": true})).await.unwrap();
    assert_eq!(cleared["deleted"], 1);
    assert_eq!(attachments(&bob), Vec::<String>::new());
    let gone = bob.call("messages.get", json!({"message_id": id})).await;
    assert_eq!(error_of(gone).1.as_deref(), Some("not_found"));

    // The diagnostics call log has alice's two unanswered calls (receiver, no duration).
    let report = alice.call("diagnostics.preview", json!({})).await.unwrap();
    let log = report["report"]["calls"].as_array().unwrap().clone();
    assert_eq!(log.len(), 2, "{log:?}");
    for call in &log {
        assert_eq!(
            (call["receiver"].as_str(), call["duration_s"].as_u64()),
            (Some("bob"), Some(0))
        );
    }
}
