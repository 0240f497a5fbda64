//! The privacy policy kept to the letter (issue 15), through real relays and daemons:
//! deleting deletes (also what the relay has not taken yet), restore defaults leaves
//! nothing (here, and on a relay that was away), diagnostics send exactly what the
//! preview showed, and the settings for receipts, typing and muted conversations do
//! what their names say.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use letstalk_tests::{
    Daemon, PASSWORD, Relay, World, error_of, eventually, files_containing, next_event, registered,
    wait_connected, wait_texts,
};

const LIMIT: Duration = Duration::from_secs(30);

/// Every persisted event of `d`, replayed from `since: 0`.
async fn replay(d: &Daemon) -> Vec<Value> {
    let c = d.client().await.unwrap();
    let mut events = c.take_events().unwrap();
    let r = c.call_value("events.subscribe", json!({"since": 0})).await.unwrap();
    let last = r["last_seq"].as_u64().unwrap();
    let mut out = Vec::new();
    while out.last().and_then(|e: &Value| e["seq"].as_u64()).unwrap_or(0) < last {
        out.push(next_event(&mut events, Duration::from_secs(10)).await.unwrap());
    }
    out
}

/// The runtime directory of a test daemon (its socket's directory).
fn runtime_dir(d: &Daemon) -> PathBuf {
    d.socket().parent().unwrap().to_path_buf()
}

/// Random bytes in a file under the world's directory; returns the path and the bytes.
fn random_file(world: &World, name: &str, prefix: &[u8], len: usize) -> (PathBuf, Vec<u8>) {
    let mut data = prefix.to_vec();
    let mut rest = vec![0u8; len];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut rest);
    data.extend(rest);
    let path = world.path().join(name);
    std::fs::write(&path, &data).unwrap();
    (path, data)
}

/// Files of the relay's blob store (the bytes of files it holds).
fn relay_blobs(relay: &Relay) -> usize {
    fn count(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| if e.path().is_dir() { count(&e.path()) } else { 1 })
                    .sum()
            })
            .unwrap_or(0)
    }
    count(&relay.data_dir.join("blobs"))
}

/// Rows of the relay's embedded database.
fn relay_db(relay: &Relay) -> rusqlite::Connection {
    rusqlite::Connection::open(relay.data_dir.join("relay.db")).unwrap()
}

fn message_id_of(sent: Value) -> String {
    sent["message"]["message_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_message_deleted_before_the_relay_took_it_never_arrives_and_leaves_no_event() {
    let world = World::new();
    let mut relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let bob = registered(&world, &relay, "bob").await;
    alice.call("messages.send", json!({"to": "user:bob", "text": "first"})).await.unwrap();
    assert_eq!(wait_texts(&bob, "user:alice", 1, LIMIT).await, vec!["first"]);

    // The relay goes away: what alice writes now waits in her outbox.
    relay.stop();
    let secret = "deleted-before-sending canary 5b1c";
    let id = message_id_of(
        alice.call("messages.send", json!({"to": "user:bob", "text": secret})).await.unwrap(),
    );
    alice.call("messages.send", json!({"to": "user:bob", "text": "kept"})).await.unwrap();
    alice.call("messages.delete", json!({"message_id": id})).await.unwrap();
    let gone = alice.call("messages.get", json!({"message_id": id})).await;
    assert_eq!(error_of(gone).1.as_deref(), Some("not_found"));
    let again = alice.call("messages.delete", json!({"message_id": id})).await;
    assert_eq!(error_of(again).1.as_deref(), Some("not_found"));
    let status = alice.call("system.status", json!({})).await.unwrap();
    assert_eq!(status["queued_out"], 1, "only \"kept\" is still to go");
    for e in replay(&alice).await {
        assert!(!e.to_string().contains(secret), "the deleted text is in an event: {e}");
    }

    // Back online: the later message arrives, the deleted one never does (order within
    // a conversation holds, so it would have come first).
    relay.restart().unwrap();
    wait_connected(&alice).await;
    assert_eq!(wait_texts(&bob, "user:alice", 2, LIMIT).await, vec!["first", "kept"]);
    alice.call("messages.send", json!({"to": "user:bob", "text": "last"})).await.unwrap();
    assert_eq!(wait_texts(&bob, "user:alice", 3, LIMIT).await, vec!["first", "kept", "last"]);
    for e in replay(&bob).await {
        assert!(!e.to_string().contains(secret), "the deleted text reached bob: {e}");
    }

    // Deleting a message the relay already took is local: bob keeps it.
    let page = alice.call("messages.list", json!({"conversation": "user:bob"})).await.unwrap();
    let first = page["messages"][0]["message_id"].as_str().unwrap().to_owned();
    alice.call("messages.delete", json!({"message_id": first})).await.unwrap();
    assert_eq!(letstalk_tests::texts(&alice, "user:bob").await, vec!["kept", "last"]);
    assert_eq!(letstalk_tests::texts(&bob, "user:alice").await, vec!["first", "kept", "last"]);
}

#[tokio::test]
async fn deleting_a_received_file_releases_the_relay_copy_and_shreds_the_opened_one() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let bob = registered(&world, &relay, "bob").await;
    alice
        .call("settings.set", json!({"auto_download": {"wifi": false, "cellular": false}}))
        .await
        .unwrap();
    let (path, data) = random_file(&world, "report.pdf", b"", 200_000);

    // One file alice opens (downloads without a destination), one she never opens.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let sent = bob.call("files.send", json!({"to": "user:alice", "path": path})).await;
        let id = message_id_of(sent.unwrap());
        eventually(LIMIT, "the file at alice", || async {
            let m = alice.call("messages.get", json!({"message_id": id})).await.ok()?;
            (m["message"]["file"]["transfer"] == "available").then_some(())
        })
        .await
        .unwrap();
        ids.push(id);
    }
    assert_eq!(relay_blobs(&relay), 2, "the relay holds both files");
    let opened = alice.call("files.download", json!({"message_id": ids[0]})).await.unwrap();
    let opened = PathBuf::from(opened["path"].as_str().unwrap());
    assert!(opened.starts_with(runtime_dir(&alice)), "{opened:?}");
    assert_eq!(std::fs::read(&opened).unwrap(), data);
    let needle = &data[1000..1064];
    assert_eq!(files_containing(&runtime_dir(&alice), needle).len(), 1);

    // Deleting the opened one shreds its plaintext and its encrypted copy.
    alice.call("messages.delete", json!({"message_id": ids[0]})).await.unwrap();
    assert!(!opened.exists());
    assert!(files_containing(&runtime_dir(&alice), needle).is_empty());
    assert!(!alice.data_dir().join("attachments").join(format!("{}.age", ids[0])).exists());
    // Deleting the unopened one releases the relay's copy: the relay deletes it.
    alice.call("messages.delete", json!({"message_id": ids[1]})).await.unwrap();
    eventually(LIMIT, "the relay to delete the released file", || async {
        (relay_blobs(&relay) == 0).then_some(())
    })
    .await
    .unwrap();
    // The sender's view is unchanged: deleting on this device is local.
    let m = bob.call("messages.get", json!({"message_id": ids[1]})).await.unwrap();
    assert_eq!(m["message"]["state"], "delivered");
}

#[tokio::test]
async fn clear_history_releases_unread_files_at_the_relay_and_shreds_opened_copies() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let bob = registered(&world, &relay, "bob").await;
    alice
        .call("settings.set", json!({"auto_download": {"wifi": false, "cellular": false}}))
        .await
        .unwrap();
    let (path, data) = random_file(&world, "notes.txt", b"", 150_000);
    let mut ids = Vec::new();
    for _ in 0..2 {
        let sent = bob.call("files.send", json!({"to": "user:alice", "path": path})).await;
        let id = message_id_of(sent.unwrap());
        eventually(LIMIT, "the file at alice", || async {
            alice.call("messages.get", json!({"message_id": id})).await.ok()
        })
        .await
        .unwrap();
        ids.push(id);
    }
    let opened = alice.call("files.download", json!({"message_id": ids[0]})).await.unwrap();
    let opened = PathBuf::from(opened["path"].as_str().unwrap());
    assert!(opened.exists());
    let cleared = alice.call("privacy.clear_history", json!({"confirm": true})).await.unwrap();
    assert_eq!(cleared["deleted"], 2);
    assert!(!opened.exists());
    assert!(files_containing(&runtime_dir(&alice), &data[500..564]).is_empty());
    eventually(LIMIT, "the relay to delete the unread file", || async {
        (relay_blobs(&relay) == 0).then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn restore_defaults_leaves_nothing_and_deletes_the_relay_account_once_it_is_back() {
    let world = World::new();
    let mut relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let (photo_path, photo) = random_file(&world, "bob.png", b"\x89PNG\r\n\x1a\n", 4000);
    let bob = registered(&world, &relay, "bob").await;
    bob.call("account.update", json!({"avatar": photo_path})).await.unwrap();
    alice.call("contacts.add", json!({"user_id": "bob"})).await.unwrap();

    // A contact's photo and an opened file, as a frontend would fetch them.
    let fetched = alice.call("account.avatar", json!({"user_id": "bob"})).await.unwrap();
    assert_eq!(std::fs::read(fetched["path"].as_str().unwrap()).unwrap(), photo);
    let (file_path, file) = random_file(&world, "scan.bin", b"", 100_000);
    let sent = bob.call("files.send", json!({"to": "user:alice", "path": file_path})).await;
    let id = message_id_of(sent.unwrap());
    eventually(LIMIT, "the file at alice", || async {
        alice.call("files.download", json!({"message_id": id})).await.ok()
    })
    .await
    .unwrap();
    // A diagnostics report at the relay, which goes with the account.
    alice.call("settings.set", json!({"diagnostics_upload": true})).await.unwrap();
    alice.call("diagnostics.upload", json!({})).await.unwrap();
    let reports = |relay: &Relay| -> i64 {
        relay_db(relay)
            .query_row("SELECT count(*) FROM reports WHERE user_id = 'alice'", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(reports(&relay), 1);
    let device_id = alice.call("device.info", json!({})).await.unwrap()["device_id"].clone();
    let photo_needle = &photo[100..164];
    let file_needle = &file[100..164];
    // Plaintext copies live only in the runtime directory; the data directory holds
    // ciphertext.
    assert!(!files_containing(&runtime_dir(&alice), photo_needle).is_empty());
    assert!(!files_containing(&runtime_dir(&alice), file_needle).is_empty());
    assert!(files_containing(alice.data_dir(), photo_needle).is_empty());
    assert!(files_containing(alice.data_dir(), file_needle).is_empty());

    // The relay is away: restore defaults cannot delete the account there now.
    relay.stop();
    let done = alice.call("privacy.restore_defaults", json!({"confirm": true})).await.unwrap();
    assert_eq!(done["relay_account_deleted"], false);
    for dir in [alice.data_dir().to_path_buf(), runtime_dir(&alice)] {
        for needle in [photo_needle, file_needle, b"alice@example.org".as_slice()] {
            let found = files_containing(&dir, needle);
            assert!(found.is_empty(), "old account data survives in {found:?}");
        }
    }
    for gone in ["files", "avatars", "calls"] {
        assert!(!runtime_dir(&alice).join(gone).exists(), "{gone}/ survives");
    }
    let new_id = alice.call("device.info", json!({})).await.unwrap()["device_id"].clone();
    assert_ne!(new_id, device_id, "a reset device has a new device ID");

    // The relay comes back: the account is deleted there, with its reports, and the id
    // is free for someone else.
    relay.restart().unwrap();
    let carol = world.daemon("carol").with_relay(&relay).start().unwrap();
    wait_connected(&carol).await;
    eventually(LIMIT, "the old account to be deleted at the relay", || async {
        carol
            .call(
                "account.register",
                json!({"user_id": "alice", "email": "carol@example.org",
                       "nickname": "Carol", "password": PASSWORD}),
            )
            .await
            .ok()
    })
    .await
    .unwrap();
    assert_eq!(reports(&relay), 0, "the old account's reports are deleted with it");
}

#[tokio::test]
async fn the_preview_is_the_upload_byte_for_byte_and_the_call_log_says_who_called_whom() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let bob = registered(&world, &relay, "bob").await;
    alice.call("contacts.add", json!({"user_id": "bob"})).await.unwrap();
    bob.call("contacts.add", json!({"user_id": "alice"})).await.unwrap();

    // alice calls bob, then bob calls alice; each call is declined.
    for (caller, callee, to) in [(&alice, &bob, "user:bob"), (&bob, &alice, "user:alice")] {
        caller.call("calls.start", json!({"to": to, "media": "audio"})).await.unwrap();
        let ringing = eventually(LIMIT, "the call ringing", || async {
            let calls = callee.call("calls.list", json!({})).await.ok()?;
            calls["calls"]
                .as_array()?
                .iter()
                .find(|c| c["state"] == "ringing")
                .map(|c| c["call_id"].as_str().unwrap().to_owned())
        })
        .await
        .unwrap();
        callee.call("calls.reject", json!({"call_id": ringing})).await.unwrap();
        eventually(LIMIT, "the call ended at the caller", || async {
            let calls = caller.call("calls.list", json!({})).await.ok()?;
            calls["calls"].as_array()?.iter().all(|c| c["state"] == "ended").then_some(())
        })
        .await
        .unwrap();
    }

    alice.call("settings.set", json!({"diagnostics_upload": true})).await.unwrap();
    let preview = alice.call("diagnostics.preview", json!({})).await.unwrap();
    let log = preview["report"]["calls"].as_array().unwrap().clone();
    let who: Vec<(&str, &str, &str)> = log
        .iter()
        .map(|c| {
            (
                c["direction"].as_str().unwrap(),
                c["caller"].as_str().unwrap(),
                c["receiver"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(who, vec![("out", "alice", "bob"), ("in", "bob", "alice")]);

    let up = alice.call("diagnostics.upload", json!({})).await.unwrap();
    let report_id = up["report_id"].as_str().unwrap().to_owned();
    let stored: Vec<u8> = relay_db(&relay)
        .query_row("SELECT body FROM reports WHERE id = ?1", [&report_id], |r| r.get(0))
        .unwrap();
    let shown = serde_json::to_vec(&preview["report"]).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&stored),
        String::from_utf8_lossy(&shown),
        "the relay got something else than the preview"
    );
}

/// The per-member state of alice's group message `id`, as alice sees it.
async fn member_state(alice: &Daemon, id: &str, member: &str) -> String {
    let m = alice.call("messages.get", json!({"message_id": id})).await.unwrap();
    m["message"]["states"][member].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn read_receipts_off_sends_none_in_a_group() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let bob = registered(&world, &relay, "bob").await;
    let carol = registered(&world, &relay, "carol").await;
    carol.call("settings.set", json!({"read_receipts": false})).await.unwrap();
    let g = alice
        .call("groups.create", json!({"name": "Book club", "members": ["bob", "carol"]}))
        .await
        .unwrap();
    let conversation = format!("group:{}", g["group_id"].as_str().unwrap());
    let id = message_id_of(
        alice
            .call("messages.send", json!({"to": conversation, "text": "chapter 3?"}))
            .await
            .unwrap(),
    );
    for reader in [&bob, &carol] {
        wait_texts(reader, &conversation, 1, LIMIT).await;
        reader.call("messages.mark_read", json!({"conversation": conversation})).await.unwrap();
    }
    // carol writes to alice after reading: her read receipt, had one been sent, would
    // have gone before this message on the same way to alice.
    carol.call("messages.send", json!({"to": "user:alice", "text": "read it"})).await.unwrap();
    wait_texts(&alice, "user:carol", 1, LIMIT).await;
    eventually(LIMIT, "bob's read receipt", || async {
        (member_state(&alice, &id, "bob").await == "read").then_some(())
    })
    .await
    .unwrap();
    assert_eq!(member_state(&alice, &id, "carol").await, "delivered");
    let m = alice.call("messages.get", json!({"message_id": id})).await.unwrap();
    assert_eq!(m["message"]["state"], "delivered", "the least advanced member's state");
}

#[tokio::test]
async fn typing_is_sent_and_shown_and_a_muted_conversation_raises_no_notification() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let bob = registered(&world, &relay, "bob").await;
    bob.call("messages.send", json!({"to": "user:alice", "text": "hello"})).await.unwrap();
    wait_texts(&alice, "user:bob", 1, LIMIT).await;

    // bob types: alice sees it; a second notification within seconds is not sent.
    let t = bob.call("messages.typing", json!({"conversation": "user:alice"})).await.unwrap();
    assert_eq!(t["sent"], true);
    let t = bob.call("messages.typing", json!({"conversation": "user:alice"})).await.unwrap();
    assert_eq!(t["sent"], false);
    eventually(LIMIT, "alice to see bob typing", || async {
        replay(&alice)
            .await
            .iter()
            .any(|e| {
                e["kind"] == "conversation.typing"
                    && e["conversation"] == "user:bob"
                    && e["user_id"] == "bob"
            })
            .then_some(())
    })
    .await
    .unwrap();
    // With typing off, nothing is sent.
    bob.call("settings.set", json!({"typing": false})).await.unwrap();
    let g = bob.call("groups.create", json!({"name": "Two", "members": ["alice"]})).await.unwrap();
    let group = format!("group:{}", g["group_id"].as_str().unwrap());
    let t = bob.call("messages.typing", json!({"conversation": group})).await.unwrap();
    assert_eq!(t["sent"], false);
    let bad = bob.call("messages.typing", json!({"conversation": "nobody"})).await;
    assert_eq!(error_of(bad).0, -32602);

    // alice mutes bob: his message arrives but raises no notification; unmuted, it does.
    alice
        .call("conversations.mute", json!({"conversation": "user:bob", "muted": true}))
        .await
        .unwrap();
    let list = alice.call("conversations.list", json!({})).await.unwrap();
    let bob_chat = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["conversation"] == "user:bob")
        .cloned()
        .unwrap();
    assert_eq!(bob_chat["muted"], true);
    let quiet = message_id_of(
        bob.call("messages.send", json!({"to": "user:alice", "text": "quiet"})).await.unwrap(),
    );
    wait_texts(&alice, "user:bob", 2, LIMIT).await;
    alice
        .call("conversations.mute", json!({"conversation": "user:bob", "muted": false}))
        .await
        .unwrap();
    let loud = message_id_of(
        bob.call("messages.send", json!({"to": "user:alice", "text": "loud"})).await.unwrap(),
    );
    wait_texts(&alice, "user:bob", 3, LIMIT).await;
    let events = replay(&alice).await;
    let notified: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "notification")
        .map(|e| e["message_id"].as_str().unwrap())
        .collect();
    assert!(notified.contains(&loud.as_str()), "{notified:?}");
    assert!(!notified.contains(&quiet.as_str()), "a muted conversation notified: {notified:?}");
    let received: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "message.received")
        .map(|e| e["message"]["message_id"].as_str().unwrap())
        .collect();
    assert!(received.contains(&quiet.as_str()), "muted messages still arrive");
}
