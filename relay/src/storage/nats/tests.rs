//! Against real `nats-server` processes on loopback (installed by `.ci/run`; a
//! missing server fails these tests with the command that installs it).

use super::*;
use crate::storage::Copies;
use crate::testing::NatsCluster;

const QUOTA: Quota = Quota { max_messages: 100, max_bytes: 1 << 20 };

fn options(max: u64) -> ClusterOptions {
    ClusterOptions {
        node_id: "test".into(),
        message_ttl: Duration::from_secs(3600),
        mailbox_max_messages: max,
        report_ttl: Duration::from_secs(86_400),
        blob_ttl: Duration::from_secs(3600),
    }
}

async fn one_server(max: u64) -> (tempfile::TempDir, NatsCluster, NatsStorage) {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsCluster::start(dir.path(), 1).unwrap();
    let s = NatsStorage::connect(&nats.url(), &options(max)).await.unwrap();
    (dir, nats, s)
}

fn account(user_id: &str) -> NewAccount {
    NewAccount {
        user_id: user_id.into(),
        password_hash: "$argon2id$x".into(),
        email: "a@b.c".into(),
        nickname: "A".into(),
        device_key: [1; 32],
        identity: vec![7],
        now: 1,
    }
}

fn envelope(msg_id: &str, now: u64) -> Envelope {
    Envelope {
        sender: "alice".into(),
        sender_device: 1,
        recipient: "bob".into(),
        msg_id: msg_id.into(),
        copies: Copies::Single(vec![1, 2, 3].into()),
        now,
    }
}

fn ids(q: &[Queued]) -> Vec<&str> {
    q.iter().map(|m| m.msg_id.as_str()).collect()
}

#[tokio::test]
async fn reports_are_kept_once_per_id() {
    let (_dir, nats, s) = one_server(100).await;
    let report = |id: &str| Report {
        id: id.into(),
        user_id: "alice".into(),
        kind: letstalk_wire::ReportKind::Feedback,
        body: b"{}".to_vec(),
        now: 5,
    };
    s.store_report(report("r1")).await.unwrap();
    s.store_report(report("r1")).await.unwrap();
    s.store_report(report("r2")).await.unwrap();
    assert_eq!(s.reports_len().await.unwrap(), 2);
    drop(nats);
}

#[tokio::test]
async fn accounts_and_the_directory_behave_like_the_embedded_back_end() {
    let (_dir, nats, s) = one_server(100).await;
    assert_eq!(s.replicas(), 1);
    s.create_account(account("alice")).await.unwrap();
    assert!(matches!(s.create_account(account("alice")).await, Err(StorageError::Conflict)));
    let c = s.credentials("alice").await.unwrap().unwrap();
    assert_eq!(c.password_hash.as_str(), "$argon2id$x");
    assert_eq!(s.device_by_key("alice", [1; 32]).await.unwrap(), Some(1));
    assert!(s.credentials("nobody").await.unwrap().is_none());
    s.set_password_hash("alice", "$argon2id$y".into()).await.unwrap();
    assert!(matches!(s.set_password_hash("nobody", "h".into()).await, Err(StorageError::NotFound)));

    let keys = KeyUpload {
        identity: Some(vec![9]),
        signed_prekey: Some(PreKey { id: 1, key: vec![1] }),
        one_time: vec![PreKey { id: 3, key: vec![3] }, PreKey { id: 2, key: vec![2] }],
        last_resort: Some(PreKey { id: 4, key: vec![4] }),
    };
    assert_eq!(s.upload_keys("alice", 1, keys).await.unwrap(), 2);
    let moved = s.login_device("alice", [1; 32], 2).await.unwrap();
    assert_eq!(moved, LoggedIn { device_id: 1, removed: vec![] });
    assert_eq!(s.one_time_count("alice", 1).await.unwrap(), 2, "same device keeps its keys");
    // Oldest upload first (the embedded back end takes the lowest id: the daemon
    // uploads ids in increasing order, so the two agree), then the last-resort key.
    let mut got = Vec::new();
    for _ in 0..3 {
        let b = s.take_bundles("alice", BundlesOf::Lowest).await.unwrap().unwrap().remove(0);
        assert_eq!((b.identity.as_slice(), b.device_key, b.device_id), (&[9u8][..], [1; 32], 1));
        got.push((b.one_time_prekey.unwrap().id, b.last_resort));
    }
    assert_eq!(got, [(3, false), (2, false), (4, true)]);

    // A new key logs in: the old device goes with its keys, the identity stays.
    let moved = s.login_device("alice", [2; 32], 3).await.unwrap();
    assert_eq!(moved, LoggedIn { device_id: 2, removed: vec![1] });
    let b = s.take_bundles("alice", BundlesOf::All).await.unwrap().unwrap().remove(0);
    assert_eq!(
        (b.device_id, b.identity.len(), b.signed_prekey, b.one_time_prekey),
        (2, 1, None, None)
    );
    assert!(s.remove_device("alice", 2).await.unwrap());
    assert!(s.take_bundles("alice", BundlesOf::All).await.unwrap().unwrap().is_empty());
    assert!(s.take_bundles("nobody", BundlesOf::All).await.unwrap().is_none());

    // Profile and avatar.
    let avatar = Avatar { mime: "image/png".into(), data: vec![5; 2_000_000] };
    let p = s
        .update_profile(
            "alice",
            ProfileUpdate {
                nickname: Some("Alice".into()),
                email: None,
                avatar: AvatarUpdate::Set(avatar),
                now: 5,
            },
        )
        .await
        .unwrap();
    assert_eq!((p.nickname.as_str(), p.updated_at), ("Alice", 5));
    assert_eq!(p.avatar.as_ref().map(|a| a.size), Some(2_000_000));
    assert_eq!(s.avatar("alice").await.unwrap().unwrap().data.len(), 2_000_000);

    // Everything survives a new connection (another node, or a restart).
    let again = NatsStorage::connect(&nats.url(), &options(100)).await.unwrap();
    assert_eq!(again.profile("alice").await.unwrap().unwrap().nickname, "Alice");
    again.delete_account("alice").await.unwrap();
    assert!(s.profile("alice").await.unwrap().is_none());
    assert!(s.avatar("alice").await.unwrap().is_none());
    s.create_account(account("alice")).await.unwrap();
}

#[tokio::test]
async fn concurrent_takers_on_three_nodes_get_each_one_time_prekey_once() {
    const SERVERS: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsCluster::start(dir.path(), SERVERS).unwrap();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let url = format!("nats://127.0.0.1:{}", nats.servers[i % SERVERS].port);
        nodes.push(NatsStorage::connect(&url, &options(100)).await.unwrap());
    }
    assert_eq!(nodes[0].replicas(), SERVERS);
    nodes[0].create_account(account("bob")).await.unwrap();
    let keys = KeyUpload {
        one_time: (1..=30).map(|id| PreKey { id, key: vec![1] }).collect(),
        last_resort: Some(PreKey { id: 99, key: vec![9] }),
        ..KeyUpload::default()
    };
    nodes[1].upload_keys("bob", 1, keys).await.unwrap();
    let takers = (0..40).map(|i| {
        let s = nodes[i % 3].clone();
        async move { s.take_bundles("bob", BundlesOf::Lowest).await.unwrap().unwrap().remove(0) }
    });
    let bundles = futures::future::join_all(takers).await;
    let mut one_time: Vec<u32> = bundles
        .iter()
        .filter(|b| !b.last_resort)
        .map(|b| b.one_time_prekey.as_ref().unwrap().id)
        .collect();
    one_time.sort_unstable();
    assert_eq!(one_time, (1..=30).collect::<Vec<_>>(), "each key once");
    assert_eq!(bundles.iter().filter(|b| b.last_resort).count(), 10);
}

#[tokio::test]
async fn mailboxes_keep_order_dedupe_delete_on_ack_and_cap_per_device() {
    // Three per sender (a quarter of twelve).
    let (_dir, _nats, s) = one_server(12).await;
    for u in ["alice", "bob", "carol", "dot.ted"] {
        s.create_account(account(u)).await.unwrap();
    }
    let done = s.enqueue_many(vec![envelope("m1", 10), envelope("m2", 11)], QUOTA).await.unwrap();
    assert!(done.iter().all(|d| !d.duplicate));
    // A retransmit is acknowledged again, never stored twice.
    assert!(s.enqueue(envelope("m1", 12), QUOTA).await.unwrap().duplicate);
    s.enqueue(envelope("m3", 13), QUOTA).await.unwrap();
    // The sender's share (3 here) refuses the next message, keeps the accepted ones,
    // and still recognises a retransmit.
    assert!(matches!(s.enqueue(envelope("m4", 14), QUOTA).await, Err(StorageError::QuotaExceeded)));
    assert!(s.enqueue(envelope("m3", 15), QUOTA).await.unwrap().duplicate);
    let q = s.pending("bob", 1, 0, 10).await.unwrap();
    assert_eq!(ids(&q), ["m1", "m2", "m3"]);
    assert_eq!(
        (q[0].sender.as_str(), q[0].server_ts, q[0].body.as_slice()),
        ("alice", 10, &[1u8, 2, 3][..])
    );
    assert_eq!(ids(&s.pending("bob", 1, q[0].delivery_id, 1).await.unwrap()), ["m2"]);
    // Someone else's acknowledgement deletes nothing; the recipient's does.
    assert_eq!(s.ack("carol", 1, vec![q[0].delivery_id]).await.unwrap(), 0);
    assert_eq!(
        s.ack("bob", 1, vec![q[0].delivery_id, q[1].delivery_id, 999_999]).await.unwrap(),
        2
    );
    assert_eq!(ids(&s.pending("bob", 1, 0, 10).await.unwrap()), ["m3"]);
    assert_eq!(s.mailbox_len().await.unwrap(), 1);
    s.enqueue(envelope("m4", 16), QUOTA).await.unwrap();
    // A user id with a dot is one subject token.
    let to_ted = Envelope { recipient: "dot.ted".into(), ..envelope("t1", 17) };
    s.enqueue(to_ted, QUOTA).await.unwrap();
    assert_eq!(ids(&s.pending("dot.ted", 1, 0, 10).await.unwrap()), ["t1"]);
    assert!(matches!(
        s.enqueue(Envelope { recipient: "nobody".into(), ..envelope("x", 1) }, QUOTA).await,
        Err(StorageError::NotFound)
    ));
    // Deleting the account empties its mailbox.
    s.delete_account("bob").await.unwrap();
    assert!(s.pending("bob", 1, 0, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn blocks_refuse_messages_hide_presence_and_fan_out_per_recipient() {
    let (_dir, _nats, s) = one_server(100).await;
    for u in ["alice", "bob", "carol"] {
        s.create_account(account(u)).await.unwrap();
    }
    let blocks = Blocks { all: false, users: ["alice".to_owned()].into() };
    assert_eq!(s.set_blocks("bob", blocks.clone()).await.unwrap(), Blocks::default());
    assert_eq!(s.blocks("bob").await.unwrap(), blocks);
    assert!(matches!(s.enqueue(envelope("m1", 1), QUOTA).await, Err(StorageError::Blocked)));
    s.set_last_seen("carol", 1, 42).await.unwrap();
    // Presence needs consent: carol has alice as a contact (bob too, but blocks win).
    for u in ["bob", "carol"] {
        let contacts = Contacts { share_presence: true, users: ["alice".to_owned()].into() };
        s.set_contacts(u, contacts).await.unwrap();
    }
    let seen = s
        .watch("alice", vec!["bob".into(), "carol".into(), "nobody".into()], vec![])
        .await
        .unwrap();
    assert_eq!(
        seen.iter().map(|p| (p.user_id.as_str(), p.hidden, p.last_seen_at)).collect::<Vec<_>>(),
        [("bob", true, 0), ("carol", false, 42)]
    );
    assert_eq!(s.watchers("carol").await.unwrap(), ["alice"]);
    let fan =
        ["bob", "carol"].map(|to| Envelope { recipient: to.into(), ..envelope("g1", 2) }).to_vec();
    let out = s.enqueue_fanout(fan, QUOTA).await.unwrap();
    assert!(matches!(out[0], Err(StorageError::Blocked)));
    assert!(out[1].as_ref().is_ok_and(|d| !d.duplicate));
    assert_eq!(s.mailbox_len().await.unwrap(), 1);
    s.set_blocks("bob", Blocks::default()).await.unwrap();
    assert!(s.enqueue(envelope("m1", 4), QUOTA).await.is_ok());
    assert!(matches!(s.set_blocks("nobody", Blocks::default()).await, Err(StorageError::NotFound)));
    // Unwatching, and deleting the watcher, clean up both directions.
    s.watch("alice", vec![], vec!["carol".into()]).await.unwrap();
    assert!(s.watchers("carol").await.unwrap().is_empty());
    s.delete_account("alice").await.unwrap();
    assert!(s.watchers("bob").await.unwrap().is_empty());
}

#[test]
fn object_names_are_encoded_like_the_object_store_does() {
    assert_eq!(base64_url(b"dora"), "ZG9yYQ==");
    assert_eq!(base64_url(b"ab-c?"), "YWItYz8=");
    assert_eq!(base64_url(b"abc"), "YWJj");
}

#[tokio::test]
async fn strangers_fill_only_their_share_and_contacts_still_get_through() {
    let (_dir, _nats, s) = one_server(8).await;
    for u in ["victim", "friend", "mallory", "mallory2"] {
        s.create_account(account(u)).await.unwrap();
    }
    let contacts = Contacts { share_presence: true, users: ["friend".to_owned()].into() };
    s.set_contacts("victim", contacts).await.unwrap();
    let quota = Quota { max_messages: 8, max_bytes: 1 << 20 };
    let to_victim = |from: &str, id: &str| Envelope {
        sender: from.into(),
        recipient: "victim".into(),
        ..envelope(id, 1)
    };
    // Two (a quarter of eight) from all strangers together.
    s.enqueue(to_victim("mallory", "a"), quota).await.unwrap();
    s.enqueue(to_victim("mallory", "b"), quota).await.unwrap();
    for (from, id) in [("mallory", "c"), ("mallory2", "d")] {
        assert!(matches!(
            s.enqueue(to_victim(from, id), quota).await,
            Err(StorageError::QuotaExceeded)
        ));
    }
    // The contact has its own share.
    s.enqueue(to_victim("friend", "e"), quota).await.unwrap();
    s.enqueue(to_victim("friend", "f"), quota).await.unwrap();
    assert!(matches!(
        s.enqueue(to_victim("friend", "g"), quota).await,
        Err(StorageError::QuotaExceeded)
    ));
    assert_eq!(ids(&s.pending("victim", 1, 0, 10).await.unwrap()), ["a", "b", "e", "f"]);
}

/// Every message of every stream (KV buckets and object stores are streams too)
/// whose subject, headers or payload contain `needle`, but for those whose payload
/// contains `except`.
async fn messages_naming(s: &NatsStorage, needle: &[u8], except: &[u8]) -> Vec<String> {
    use futures::StreamExt;
    let js = &s.inner.js;
    let mut found = Vec::new();
    let names: Vec<String> = js.stream_names().map(|n| n.unwrap()).collect().await;
    for name in names {
        let stream = js.get_stream(&name).await.unwrap();
        let state = stream.cached_info().state.clone();
        for seq in state.first_sequence..=state.last_sequence {
            let Ok(m) = stream.get_raw_message(seq).await else { continue };
            let headers = format!("{:?}", m.headers);
            let has = |b: &[u8], n: &[u8]| b.windows(n.len()).any(|w| w == n);
            if has(&m.payload, except) {
                continue;
            }
            let hit = |b: &[u8]| has(b, needle);
            if hit(m.subject.as_bytes()) || hit(headers.as_bytes()) || hit(&m.payload) {
                found.push(format!("{name} #{seq} {}", m.subject));
            }
        }
    }
    found
}

#[tokio::test]
async fn deleting_an_account_leaves_nothing_naming_it_in_any_stream_or_bucket() {
    let (_dir, _nats, s) = one_server(100).await;
    for u in ["dorazq", "erinqx"] {
        s.create_account(account(u)).await.unwrap();
    }
    let keys = KeyUpload {
        identity: Some(vec![9]),
        signed_prekey: Some(PreKey { id: 1, key: vec![1] }),
        one_time: vec![PreKey { id: 2, key: vec![2] }],
        last_resort: None,
    };
    s.upload_keys("dorazq", 1, keys).await.unwrap();
    let avatar = Avatar { mime: "image/png".into(), data: vec![1, 2, 3] };
    let update =
        ProfileUpdate { nickname: None, email: None, avatar: AvatarUpdate::Set(avatar), now: 2 };
    s.update_profile("dorazq", update).await.unwrap();
    let contacts = Contacts { share_presence: true, users: ["erinqx".to_owned()].into() };
    s.set_contacts("dorazq", contacts).await.unwrap();
    s.set_blocks("dorazq", Blocks { all: false, users: ["mallory".to_owned()].into() })
        .await
        .unwrap();
    s.set_last_seen("dorazq", 1, 5).await.unwrap();
    s.watch("dorazq", vec!["erinqx".into()], vec![]).await.unwrap();
    s.watch("erinqx", vec!["dorazq".into()], vec![]).await.unwrap();
    let mail = |from: &str, to: &str| Envelope {
        sender: from.into(),
        recipient: to.into(),
        ..envelope("m", 3)
    };
    s.enqueue(mail("dorazq", "erinqx"), QUOTA).await.unwrap();
    s.enqueue(mail("erinqx", "dorazq"), QUOTA).await.unwrap();
    s.add_device("dorazq", [5; 32], b"phone".to_vec(), 5).await.unwrap();
    let open = NewLinkSlot {
        slot: [7; 16],
        user_id: "dorazq".into(),
        hello: vec![1],
        now: 5,
        expires_at: u64::MAX,
    };
    s.link_open(open).await.unwrap();
    let both = Copies::Exact(vec![(1, vec![1].into()), (2, vec![2].into())]);
    s.enqueue(Envelope { copies: both, msg_id: "m2".into(), ..mail("erinqx", "dorazq") }, QUOTA)
        .await
        .unwrap();
    let report = Report {
        id: "r1".into(),
        user_id: "dorazq".into(),
        kind: letstalk_wire::ReportKind::Feedback,
        body: b"{}".to_vec(),
        now: 4,
    };
    s.store_report(report).await.unwrap();
    s.inner.blobs.put("00112233445566778899aabbccddeeff-dorazq", &mut &b"blob"[..]).await.unwrap();
    // A blob of another owner whose name ends the same way is not touched.
    s.inner
        .blobs
        .put("00112233445566778899aabbccddeeff-alice-dorazq", &mut &b"other"[..])
        .await
        .unwrap();
    let other = b"alice-dorazq";
    assert!(!messages_naming(&s, b"dorazq", other).await.is_empty());

    s.delete_account("dorazq").await.unwrap();
    let left = messages_naming(&s, b"dorazq", other).await;
    assert!(left.is_empty(), "still naming the account: {left:?}");
    assert!(s.inner.blobs.info("00112233445566778899aabbccddeeff-alice-dorazq").await.is_ok());
    assert!(s.inner.blobs.info("00112233445566778899aabbccddeeff-dorazq").await.is_err());
    assert!(s.profile("erinqx").await.unwrap().is_some());
}

/// A cluster written before devices: the account record names one device, its keys
/// sit with the identity, its prekeys and mail on the account's subjects. Read now, that
/// device is device 1 with its keys and its mail, and the next device is 2.
#[tokio::test]
async fn records_written_before_devices_read_as_device_1_with_its_keys_and_mail() {
    let (_dir, _nats, s) = one_server(100).await;
    s.create_account(account("bob")).await.unwrap();
    let key = hex::encode([3u8; 32]);
    let old = serde_json::json!({
        "password_hash": "h", "email": "a@b.c", "nickname": "A", "device_key": key,
        "created_at": 1, "updated_at": 1, "avatar": null,
    });
    s.inner.accounts.put("alice", serde_json::to_vec(&old).unwrap().into()).await.unwrap();
    put(&s.inner.accounts, &blocks_key("alice"), &BlocksRec::default()).await.unwrap();
    let dir = DirectoryRec {
        device_key: Some(key.clone()),
        identity: hex::encode([9u8]),
        signed_prekey: Some((5, hex::encode([5u8]))),
        last_resort: Some((6, hex::encode([6u8]))),
    };
    put(&s.inner.directory, "alice", &dir).await.unwrap();
    let otk = jetstream::message::PublishMessage::build()
        .payload(Bytes::from_static(&[7]))
        .header(H_KEY_ID, "7")
        .header(H_DEVICE, key.as_str());
    s.inner.js.send_publish("letstalk.otk.alice", otk).await.unwrap().await.unwrap();
    let mail = jetstream::message::PublishMessage::build()
        .payload(Bytes::from_static(b"old mail"))
        .header(H_FROM, "bob")
        .header(H_MSG_ID, "m0")
        .header(H_TS, "2");
    s.inner.js.send_publish("letstalk.mbox.alice.c.bob", mail).await.unwrap().await.unwrap();

    assert_eq!(s.device_by_key("alice", [3; 32]).await.unwrap(), Some(1));
    let q = s.pending("alice", 1, 0, 10).await.unwrap();
    assert_eq!((ids(&q), q[0].sender_device), (vec!["m0"], 1));
    assert_eq!(s.one_time_count("alice", 1).await.unwrap(), 1);
    let b = s.take_bundles("alice", BundlesOf::All).await.unwrap().unwrap();
    assert_eq!(
        (
            b[0].device_id,
            b[0].identity.clone(),
            b[0].signed_prekey.clone(),
            b[0].one_time_prekey.clone()
        ),
        (1, vec![9], Some(PreKey { id: 5, key: vec![5] }), Some(PreKey { id: 7, key: vec![7] }))
    );
    // New mail for device 1 lands beside the old, and both are acknowledged as its.
    s.enqueue(
        Envelope { recipient: "alice".into(), sender: "bob".into(), ..envelope("m1", 3) },
        QUOTA,
    )
    .await
    .unwrap();
    let q = s.pending("alice", 1, 0, 10).await.unwrap();
    assert_eq!(ids(&q), ["m0", "m1"]);
    assert_eq!(s.ack("alice", 2, q.iter().map(|m| m.delivery_id).collect()).await.unwrap(), 0);
    assert_eq!(s.add_device("alice", [4; 32], vec![], 4).await.unwrap(), 2);
    assert_eq!(s.ack("alice", 1, q.iter().map(|m| m.delivery_id).collect()).await.unwrap(), 2);
    // Removing device 1 takes its keys kept with the identity, not the identity.
    assert!(s.remove_device("alice", 1).await.unwrap());
    let b = s.take_bundles("alice", BundlesOf::All).await.unwrap().unwrap();
    assert_eq!((b.len(), b[0].device_id, b[0].identity.clone()), (1, 2, vec![9]));
}

#[tokio::test]
async fn copies_devices_and_link_slots_behave_like_the_embedded_back_end() {
    let (_dir, _nats, s) = one_server(100).await;
    for u in ["alice", "bob"] {
        s.create_account(account(u)).await.unwrap();
    }
    // Registered with the same key: the key is taken.
    assert!(matches!(s.add_device("bob", [1; 32], vec![], 2).await, Err(StorageError::Conflict)));
    assert_eq!(s.add_device("bob", [2; 32], b"n".to_vec(), 2).await.unwrap(), 2);
    for k in 3..=5u8 {
        s.add_device("bob", [k; 32], vec![], 2).await.unwrap();
    }
    assert!(matches!(
        s.add_device("bob", [9; 32], vec![], 2).await,
        Err(StorageError::QuotaExceeded)
    ));
    assert!(s.remove_device("bob", 5).await.unwrap());
    assert!(s.remove_device("bob", 4).await.unwrap());
    assert!(s.remove_device("bob", 3).await.unwrap());
    let list = s.devices("bob").await.unwrap().unwrap();
    assert_eq!((list.len(), list[1].name.as_slice()), (2, &b"n"[..]));
    // A rename touches the named device of the named account only.
    assert!(s.rename_device("bob", 1, b"r".to_vec()).await.unwrap());
    assert!(!s.rename_device("bob", 3, b"x".to_vec()).await.unwrap(), "removed");
    assert!(!s.rename_device("nobody", 1, b"x".to_vec()).await.unwrap());
    let list = s.devices("bob").await.unwrap().unwrap();
    assert_eq!((list[0].name.as_slice(), list[1].name.as_slice()), (&b"r"[..], &b"n"[..]));
    assert!(s.devices("alice").await.unwrap().unwrap()[0].name.is_empty());
    let copies =
        |ids: &[u32]| Copies::Exact(ids.iter().map(|&d| (d, vec![d as u8].into())).collect());
    let send = |ids: &[u32]| Envelope { copies: copies(ids), ..envelope("c1", 5) };
    for (ids, missing, extra) in [
        (&[1][..], vec![2], vec![]),
        (&[1, 2, 3][..], vec![], vec![3]),
        (&[2, 2, 1][..], vec![], vec![2]),
    ] {
        match s.enqueue(send(ids), QUOTA).await {
            Err(StorageError::Mismatch { missing: m, extra: e }) => {
                assert_eq!((m, e), (missing, extra))
            }
            other => panic!("{ids:?}: {other:?}"),
        }
    }
    assert_eq!(s.mailbox_len().await.unwrap(), 0);
    assert!(!s.enqueue(send(&[1, 2]), QUOTA).await.unwrap().duplicate);
    assert!(s.enqueue(send(&[1, 2]), QUOTA).await.unwrap().duplicate);
    let (one, two) =
        (s.pending("bob", 1, 0, 9).await.unwrap(), s.pending("bob", 2, 0, 9).await.unwrap());
    assert_eq!((one[0].body.as_slice(), two[0].body.as_slice()), (&[1u8][..], &[2u8][..]));
    assert!(s.remove_device("bob", 2).await.unwrap());
    assert!(s.pending("bob", 2, 0, 9).await.unwrap().is_empty());
    assert_eq!(s.mailbox_len().await.unwrap(), 1);

    let open = |user: &str, slot: u8, now: u64| NewLinkSlot {
        slot: [slot; 16],
        user_id: user.into(),
        hello: vec![slot],
        now,
        expires_at: now + 100,
    };
    s.link_open(open("alice", 1, 0)).await.unwrap();
    assert!(matches!(s.link_open(open("bob", 1, 10)).await, Err(StorageError::Conflict)));
    s.link_put([1; 16], Some("bob".into()), b"join".to_vec(), 10).await.unwrap();
    assert!(matches!(s.link_put([1; 16], None, vec![1], 10).await, Err(StorageError::Conflict)));
    s.link_put([1; 16], Some("alice".into()), b"reply".to_vec(), 10).await.unwrap();
    assert!(matches!(
        s.link_put([1; 16], Some("alice".into()), vec![1], 10).await,
        Err(StorageError::Conflict)
    ));
    let got = s.link_get([1; 16], 10).await.unwrap().unwrap();
    assert_eq!((got.joined.unwrap(), got.reply.unwrap()), (b"join".to_vec(), b"reply".to_vec()));
    assert!(s.link_get([1; 16], 100).await.unwrap().is_none(), "expired");
    assert!(matches!(s.link_put([1; 16], None, vec![], 100).await, Err(StorageError::NotFound)));
    s.link_open(open("bob", 1, 100)).await.unwrap();
    let fresh = s.link_get([1; 16], 101).await.unwrap().unwrap();
    assert_eq!(
        (fresh.hello, fresh.joined, fresh.reply),
        (vec![1], None, None),
        "the old cells went"
    );
    s.link_open(open("bob", 2, 101)).await.unwrap();
    assert!(s.link_get([1; 16], 101).await.unwrap().is_none(), "replaced by the account's new one");
}
