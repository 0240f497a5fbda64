//! Shared files through real processes: integrity, what the relay sees, resume after a
//! crash, cancel on both sides, deletion from the relay, and bad input.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::RngCore;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use letstalk_tests::{
    Daemon, Relay, World, error_of, eventually, files_containing, next_event, registered,
    wait_texts,
};

/// A file of `len` random bytes in the world; returns its path and SHA-256 (hex).
pub(crate) fn random_file(world: &World, name: &str, len: usize) -> (PathBuf, String, Vec<u8>) {
    let mut data = vec![0u8; len];
    rand::rng().fill_bytes(&mut data);
    let path = world.path().join(name);
    std::fs::write(&path, &data).unwrap();
    let sha = hex::encode(Sha256::digest(&data));
    (path, sha, data)
}

pub(crate) fn sha_of(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

/// The incoming file message from `peer` with this SHA-256, once it is there.
pub(crate) async fn incoming(d: &Daemon, peer: &str, sha: &str) -> Value {
    eventually(Duration::from_secs(120), "the file message", || async {
        let page = d
            .call("messages.list", json!({"conversation": format!("user:{peer}"), "limit": 500}))
            .await
            .ok()?;
        page["messages"].as_array()?.iter().find(|m| m["file"]["sha256"] == sha).cloned()
    })
    .await
    .unwrap()
}

pub(crate) async fn transfer_of(d: &Daemon, id: &str) -> String {
    let m = d.call("messages.get", json!({"message_id": id})).await.unwrap();
    m["message"]["file"]["transfer"].as_str().unwrap_or_default().to_owned()
}

/// Blob files the relay keeps.
pub(crate) fn relay_blobs(relay: &Relay) -> Vec<PathBuf> {
    std::fs::read_dir(relay.data_dir.join("blobs"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

pub(crate) async fn no_auto_download(d: &Daemon) {
    d.call("settings.set", json!({"auto_download": {"wifi": false, "cellular": false}}))
        .await
        .unwrap();
}

/// Alice sends bob a file of `len` random bytes named `name`; returns its message id and
/// SHA-256 once bob has the message.
async fn send_to_bob(
    world: &World,
    alice: &Daemon,
    bob: &Daemon,
    name: &str,
    len: usize,
) -> (String, String) {
    let (path, sha, _) = random_file(world, name, len);
    let sent = alice
        .call("files.send", json!({"to": "user:bob", "path": path.to_str().unwrap()}))
        .await
        .unwrap();
    let id = sent["message"]["message_id"].as_str().unwrap().to_owned();
    incoming(bob, "alice", &sha).await;
    (id, sha)
}

#[tokio::test]
async fn an_8_mib_file_arrives_intact_and_the_relay_sees_no_plaintext() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let bob = registered(&world, &relay, "bob").await;
    no_auto_download(&bob).await;
    let (path, sha, data) = random_file(&world, "photo.jpg", 8 * 1024 * 1024);

    let a = alice.client().await.unwrap();
    let mut a_events = a.take_events().unwrap();
    a.call_value("events.subscribe", json!({"kinds": ["file.progress"]})).await.unwrap();
    let sent = a
        .call_value(
            "files.send",
            json!({"to": "user:bob", "path": path.to_str().unwrap(), "caption": "a picture"}),
        )
        .await
        .unwrap();
    let m = &sent["message"];
    assert_eq!((m["kind"].as_str(), m["text"].as_str()), (Some("file"), Some("a picture")));
    assert_eq!(m["file"]["sha256"], sha.as_str());
    assert_eq!(m["file"]["size"], 8 * 1024 * 1024);
    assert_eq!(m["file"]["mime"], "image/jpeg");
    assert_eq!(m["file"]["name"], "photo.jpg");
    let id = m["message_id"].as_str().unwrap().to_owned();
    // Upload progress up to the whole file.
    loop {
        let e = next_event(&mut a_events, Duration::from_secs(60)).await.unwrap();
        assert_eq!(
            (e["message_id"].as_str(), e["direction"].as_str()),
            (Some(id.as_str()), Some("up"))
        );
        if e["bytes"] == e["total"] {
            break;
        }
    }

    let got = incoming(&bob, "alice", &sha).await;
    assert_eq!(got["message_id"], id.as_str());
    assert_eq!(got["text"], "a picture");
    assert_eq!(got["file"]["path"], Value::Null);
    assert_eq!(got["file"]["transfer"], "available");

    // The relay holds the blob now: none of the plaintext is in its files, and the
    // sender's data directory holds only the encrypted copy.
    assert_eq!(relay_blobs(&relay).len(), 1);
    let needle = &data[4 * 1024 * 1024..4 * 1024 * 1024 + 32];
    assert_eq!(files_containing(&relay.data_dir, needle), Vec::<PathBuf>::new());
    assert_eq!(files_containing(alice.data_dir(), needle), Vec::<PathBuf>::new());

    let dest = world.path().join("received.jpg");
    let b = bob.client().await.unwrap();
    let mut b_events = b.take_events().unwrap();
    b.call_value("events.subscribe", json!({"kinds": ["file.progress"]})).await.unwrap();
    let r = b
        .call_value("files.download", json!({"message_id": id, "dest": dest.to_str().unwrap()}))
        .await
        .unwrap();
    assert_eq!((r["sha256"].as_str(), r["size"].as_u64()), (Some(sha.as_str()), Some(8 << 20)));
    assert_eq!(sha_of(&dest), sha);
    let mut last = json!(null);
    while let Ok(e) = next_event(&mut b_events, Duration::from_secs(2)).await {
        last = e;
    }
    assert_eq!((last["direction"].as_str(), &last["bytes"]), (Some("down"), &last["total"]));
    assert_eq!(transfer_of(&bob, &id).await, "done");
    let m = bob.call("messages.get", json!({"message_id": id})).await.unwrap();
    assert_eq!(m["message"]["file"]["path"], dest.to_str().unwrap());
    // Kept encrypted on the receiving device too.
    assert_eq!(files_containing(bob.data_dir(), needle), Vec::<PathBuf>::new());

    // Downloaded by its only recipient: gone from the relay.
    eventually(Duration::from_secs(20), "the blob deleted", || async {
        relay_blobs(&relay).is_empty().then_some(())
    })
    .await
    .unwrap();
    // Without dest, the file goes to the directory of opened files beside the socket.
    let again = bob.call("files.download", json!({"message_id": id})).await.unwrap();
    let opened = PathBuf::from(again["path"].as_str().unwrap());
    assert!(opened.starts_with(bob.socket().parent().unwrap()), "{opened:?}");
    assert_eq!(sha_of(&opened), sha);
    // The sender's message went the usual way.
    eventually(Duration::from_secs(20), "delivered", || async {
        let m = alice.call("messages.get", json!({"message_id": id})).await.ok()?;
        (m["message"]["state"] == "delivered").then_some(())
    })
    .await
    .unwrap();

    // A blob altered on the relay: the download fails its check, and nothing appears at
    // dest (the plaintext written on the way is removed with its temporary file).
    let (id, _) = send_to_bob(&world, &alice, &bob, "altered.bin", 1024 * 1024).await;
    let blobs = relay_blobs(&relay);
    assert_eq!(blobs.len(), 1);
    let mut bytes = std::fs::read(&blobs[0]).unwrap();
    bytes[512 * 1024] ^= 1;
    std::fs::write(&blobs[0], &bytes).unwrap();
    let out = world.path().join("altered");
    let dest = out.join("altered.bin");
    let r = bob.call("files.download", json!({"message_id": id, "dest": dest})).await;
    assert!(r.is_err(), "an altered file was accepted: {r:?}");
    assert!(!dest.exists());
    let left: Vec<_> = std::fs::read_dir(&out).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(left.is_empty(), "left beside dest: {left:?}");
    assert_eq!(transfer_of(&bob, &id).await, "failed");
}

#[tokio::test]
async fn a_200_mib_download_resumes_after_the_receiver_is_killed() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let mut bob = registered(&world, &relay, "bob").await;
    // Automatic download is on by default (Wi-Fi or wired): bob starts on his own.
    let (path, sha, _) = random_file(&world, "big.bin", 200 * 1024 * 1024);
    let b = bob.client().await.unwrap();
    let mut b_events = b.take_events().unwrap();
    b.call_value("events.subscribe", json!({"kinds": ["file.progress"]})).await.unwrap();

    let sent = alice
        .call("files.send", json!({"to": "user:bob", "path": path.to_str().unwrap()}))
        .await
        .unwrap();
    let id = sent["message"]["message_id"].as_str().unwrap().to_owned();
    // Kill bob as soon as part of the file has arrived.
    loop {
        let e = next_event(&mut b_events, Duration::from_secs(120)).await.unwrap();
        let (bytes, total) = (e["bytes"].as_u64().unwrap(), e["total"].as_u64().unwrap());
        assert!(bytes < total, "the download finished before it could be interrupted");
        if bytes > 0 {
            break;
        }
    }
    drop(b);
    bob.kill9();
    let bob = world.daemon("bob").with_relay(&relay).start().unwrap();
    let dest = world.path().join("big.out");
    let r = bob
        .call("files.download", json!({"message_id": id, "dest": dest.to_str().unwrap()}))
        .await
        .unwrap();
    assert_eq!(r["sha256"], sha.as_str());
    assert_eq!(sha_of(&dest), sha);
    // It resumed where the killed daemon stopped, not from the start.
    let logs = bob.logs();
    let resumed = logs
        .lines()
        .filter(|l| l.contains("file download started"))
        .any(|l| !l.contains("resume_at=0 "));
    assert!(resumed, "no resumed download in the log:\n{logs}");
    eventually(Duration::from_secs(20), "the blob deleted", || async {
        relay_blobs(&relay).is_empty().then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn cancel_works_on_both_sides() {
    let world = World::new();
    let mut relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let bob = registered(&world, &relay, "bob").await;
    no_auto_download(&bob).await;

    // The sender cancels after delivery: the receiver hears of it and cannot download.
    let b = bob.client().await.unwrap();
    let mut b_events = b.take_events().unwrap();
    b.call_value("events.subscribe", json!({"kinds": ["file.state"]})).await.unwrap();
    let (id, _) = send_to_bob(&world, &alice, &bob, "one.bin", 1024 * 1024).await;
    alice.call("files.cancel", json!({"message_id": id})).await.unwrap();
    assert_eq!(transfer_of(&alice, &id).await, "cancelled");
    let e = next_event(&mut b_events, Duration::from_secs(30)).await.unwrap();
    assert_eq!(
        (e["message_id"].as_str(), e["transfer"].as_str()),
        (Some(id.as_str()), Some("cancelled"))
    );
    let (_, kind, _) = error_of(bob.call("files.download", json!({"message_id": id})).await);
    assert_eq!(kind.as_deref(), Some("invalid_state"));
    eventually(Duration::from_secs(20), "the blob deleted", || async {
        relay_blobs(&relay).is_empty().then_some(())
    })
    .await
    .unwrap();
    // Cancelling twice is fine.
    alice.call("files.cancel", json!({"message_id": id})).await.unwrap();

    // The receiver cancels: its claim is released and the relay deletes the blob.
    let (id, _) = send_to_bob(&world, &alice, &bob, "two.bin", 1024 * 1024).await;
    assert_eq!(relay_blobs(&relay).len(), 1);
    bob.call("files.cancel", json!({"message_id": id})).await.unwrap();
    assert_eq!(transfer_of(&bob, &id).await, "cancelled");
    eventually(Duration::from_secs(20), "the blob deleted", || async {
        relay_blobs(&relay).is_empty().then_some(())
    })
    .await
    .unwrap();
    let (_, kind, _) = error_of(bob.call("files.download", json!({"message_id": id})).await);
    assert_eq!(kind.as_deref(), Some("invalid_state"));

    // A cancel before the upload finished (the relay is down, so it cannot have): the
    // message fails, its blob never reaches the relay and bob never hears of it.
    relay.stop();
    let (path, _, _) = random_file(&world, "three.bin", 1024 * 1024);
    let sent = alice
        .call("files.send", json!({"to": "user:bob", "path": path.to_str().unwrap()}))
        .await
        .unwrap();
    let id = sent["message"]["message_id"].as_str().unwrap().to_owned();
    alice.call("files.cancel", json!({"message_id": id})).await.unwrap();
    let m = &alice.call("messages.get", json!({"message_id": id})).await.unwrap()["message"];
    assert_eq!(
        (m["state"].as_str(), m["file"]["transfer"].as_str()),
        (Some("failed"), Some("cancelled"))
    );
    relay.restart().unwrap();
    // A barrier: alice's text after the cancel reaches bob, so anything of the cancelled
    // file would have come before it.
    alice
        .call("messages.send", json!({"to": "user:bob", "text": "after the cancel"}))
        .await
        .unwrap();
    wait_texts(&bob, "user:alice", 1, Duration::from_secs(30)).await;
    let (code, _, _) = error_of(bob.call("messages.get", json!({"message_id": id})).await);
    assert_eq!(code, -32002, "the cancelled file reached bob");
    assert!(relay_blobs(&relay).is_empty());
}

#[tokio::test]
async fn bad_file_requests_get_clear_errors_and_change_nothing() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let check = |r, want_code: i64, want_kind: Option<&str>, want_field: Option<&str>| {
        let (code, kind, field) = error_of(r);
        assert_eq!((code, kind.as_deref(), field.as_deref()), (want_code, want_kind, want_field));
    };
    check(
        alice.call("files.send", json!({"to": "user:bob", "path": "relative.txt"})).await,
        -32602,
        None,
        Some("path"),
    );
    let missing = world.path().join("missing");
    check(
        alice
            .call("files.send", json!({"to": "user:bob", "path": missing.to_str().unwrap()}))
            .await,
        -32602,
        None,
        Some("path"),
    );
    check(
        alice
            .call("files.send", json!({"to": "user:bob", "path": world.path().to_str().unwrap()}))
            .await,
        -32602,
        None,
        Some("path"),
    );
    // Over 2 GiB (a sparse file: no disk used).
    let huge = world.path().join("huge");
    std::fs::File::create(&huge).unwrap().set_len(2 * 1024 * 1024 * 1024 + 1).unwrap();
    check(
        alice.call("files.send", json!({"to": "user:bob", "path": huge.to_str().unwrap()})).await,
        -32008,
        Some("too_large"),
        None,
    );
    let (small, _, _) = random_file(&world, "small", 10);
    check(
        alice.call("files.send", json!({"to": "bob", "path": small.to_str().unwrap()})).await,
        -32602,
        None,
        Some("to"),
    );
    check(alice.call("files.send", json!({"to": "user:bob"})).await, -32602, None, Some("path"));
    check(
        alice.call("files.download", json!({"message_id": "nope"})).await,
        -32002,
        Some("not_found"),
        None,
    );
    check(
        alice.call("files.cancel", json!({"message_id": "nope"})).await,
        -32002,
        Some("not_found"),
        None,
    );
    // Nothing was queued or stored by any of these.
    let st = alice.call("system.status", json!({})).await.unwrap();
    assert_eq!(st["queued_out"], 0);
    let convs = alice.call("conversations.list", json!({})).await.unwrap();
    assert_eq!(convs["conversations"], json!([]));
}

#[tokio::test]
async fn a_file_to_a_group_reaches_every_member_and_leaves_the_relay_after_the_last() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let bob = registered(&world, &relay, "bob").await;
    let carol = registered(&world, &relay, "carol").await;
    for d in [&bob, &carol] {
        no_auto_download(d).await;
    }
    let group = alice
        .call("groups.create", json!({"name": "Trip", "members": ["bob", "carol"]}))
        .await
        .unwrap();
    let gid = group["group_id"].as_str().unwrap().to_owned();
    let conv = format!("group:{gid}");
    let (path, sha, _) = random_file(&world, "route.gpx", 700_000);
    let sent = alice.call("files.send", json!({"to": conv, "path": path})).await.unwrap();
    assert_eq!(sent["message"]["conversation"], conv.as_str());
    let id = sent["message"]["message_id"].as_str().unwrap().to_owned();

    for (i, d) in [&bob, &carol].into_iter().enumerate() {
        let m = eventually(Duration::from_secs(60), "the file in the group", || async {
            let page = d.call("messages.list", json!({"conversation": conv})).await.ok()?;
            page["messages"].as_array()?.iter().find(|m| m["message_id"] == id.as_str()).cloned()
        })
        .await
        .unwrap();
        assert_eq!(
            (m["from"].as_str(), m["file"]["sha256"].as_str()),
            (Some("alice"), Some(sha.as_str()))
        );
        let dest = world.path().join(format!("route-{i}.gpx"));
        d.call("files.download", json!({"message_id": id, "dest": dest})).await.unwrap();
        assert_eq!(sha_of(&dest), sha);
        if i == 0 {
            // carol has not fetched it yet: the relay keeps it for her.
            assert_eq!(relay_blobs(&relay).len(), 1);
        }
    }
    eventually(Duration::from_secs(20), "the blob deleted after the last member", || async {
        relay_blobs(&relay).is_empty().then_some(())
    })
    .await
    .unwrap();
    eventually(Duration::from_secs(20), "delivered to both", || async {
        let m = alice.call("messages.get", json!({"message_id": id})).await.ok()?;
        (m["message"]["state"] == "delivered").then_some(())
    })
    .await
    .unwrap();
    // Someone outside the group cannot send into it.
    let dave = registered(&world, &relay, "dave").await;
    let refused = dave.call("files.send", json!({"to": conv, "path": path})).await;
    assert_eq!(error_of(refused).1.as_deref(), Some("not_found"));
}
