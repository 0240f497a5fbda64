//! The embedded back end on a temporary directory.

use rusqlite::types::FromSql;

use super::*;
use crate::storage::Copies;

fn account(user_id: &str) -> NewAccount {
    NewAccount {
        user_id: user_id.into(),
        password_hash: "$argon2id$x".into(),
        email: "a@b.c".into(),
        nickname: "A".into(),
        device_key: [1; 32],
        identity: vec![],
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

const QUOTA: Quota = Quota { max_messages: 100, max_bytes: 1 << 20 };

#[tokio::test]
async fn migrations_run_once_and_data_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStorage::open(dir.path()).unwrap();
    s.create_account(account("alice")).await.unwrap();
    drop(s);
    let s = SqliteStorage::open(dir.path()).unwrap();
    assert!(matches!(s.create_account(account("alice")).await, Err(StorageError::Conflict)));
    let v: i64 =
        s.with(|c| Ok(c.pragma_query_value(None, "user_version", |r| r.get(0))?)).await.unwrap();
    assert_eq!(v, MIGRATIONS.len() as i64);
}

#[tokio::test]
async fn expiry_drops_old_messages_and_their_dedupe_records() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStorage::open(dir.path()).unwrap();
    s.create_account(account("alice")).await.unwrap();
    s.create_account(account("bob")).await.unwrap();
    s.enqueue(envelope("old", 1_000), QUOTA).await.unwrap();
    s.enqueue(envelope("new", 5_000), QUOTA).await.unwrap();
    assert_eq!(s.expire(2_000).await.unwrap(), 1);
    let left = s.pending("bob", 1, 0, 10).await.unwrap();
    assert_eq!(left.iter().map(|m| m.msg_id.as_str()).collect::<Vec<_>>(), ["new"]);
    assert_eq!(s.mailbox_len().await.unwrap(), 1);
}

#[tokio::test]
async fn byte_quota_counts_queued_bytes() {
    let (_dir, s) = alice_and_bob().await;
    // One sender may fill a quarter: 3 of 12 bytes.
    let quota = Quota { max_messages: 100, max_bytes: 12 };
    s.enqueue(envelope("a", 1), quota).await.unwrap();
    assert!(matches!(s.enqueue(envelope("b", 1), quota).await, Err(StorageError::QuotaExceeded)));
    // A retransmit of an accepted message is still acknowledged when the box is full.
    assert!(s.enqueue(envelope("a", 2), quota).await.unwrap().duplicate);
}

#[tokio::test]
async fn a_login_keeps_its_own_device_and_removes_the_others_with_their_keys_and_mail() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStorage::open(dir.path()).unwrap();
    s.create_account(account("alice")).await.unwrap();
    s.create_account(account("bob")).await.unwrap();
    let keys = KeyUpload {
        identity: Some(vec![9]),
        signed_prekey: Some(PreKey { id: 1, key: vec![1] }),
        one_time: vec![PreKey { id: 2, key: vec![2] }],
        last_resort: None,
    };
    assert_eq!(s.upload_keys("alice", 1, keys).await.unwrap(), 1);
    let moved = s.login_device("alice", [1; 32], 5).await.unwrap();
    assert_eq!(moved, LoggedIn { device_id: 1, removed: vec![] });
    assert_eq!(s.one_time_count("alice", 1).await.unwrap(), 1, "same device keeps its keys");
    let second = s.add_device("alice", [2; 32], b"sealed".to_vec(), 6).await.unwrap();
    assert_eq!(second, 2);
    // A rename touches the named device of the named account only.
    assert!(s.rename_device("alice", 1, b"renamed".to_vec()).await.unwrap());
    assert!(!s.rename_device("alice", 9, b"x".to_vec()).await.unwrap());
    assert!(!s.rename_device("nobody", 1, b"x".to_vec()).await.unwrap());
    let names: Vec<Vec<u8>> =
        s.devices("alice").await.unwrap().unwrap().into_iter().map(|d| d.name).collect();
    assert_eq!(names, [b"renamed".to_vec(), b"sealed".to_vec()]);
    assert!(s.devices("bob").await.unwrap().unwrap()[0].name.is_empty());
    let to_alice = Envelope { sender: "bob".into(), recipient: "alice".into(), ..envelope("m", 7) };
    let both = Copies::Exact(vec![(1, vec![1].into()), (2, vec![2].into())]);
    s.enqueue(Envelope { copies: both, ..to_alice }, QUOTA).await.unwrap();
    // A third key logs in: both devices go, with their mail and keys; it gets id 3.
    let moved = s.login_device("alice", [3; 32], 8).await.unwrap();
    assert_eq!(moved, LoggedIn { device_id: 3, removed: vec![1, 2] });
    assert_eq!(s.mailbox_len().await.unwrap(), 0);
    assert_eq!(s.one_time_count("alice", 1).await.unwrap(), 0);
    assert_eq!(s.device_by_key("alice", [1; 32]).await.unwrap(), None);
    assert_eq!(s.device_by_key("alice", [3; 32]).await.unwrap(), Some(3));
    let b = s.take_bundles("alice", BundlesOf::All).await.unwrap().unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!((b[0].device_id, b[0].identity.as_slice()), (3, &[9u8][..]), "identity stays");
    assert_eq!((b[0].signed_prekey.as_ref(), b[0].one_time_prekey.as_ref()), (None, None));
    // Logged out everywhere: no device, no bundle, ids still never reused.
    assert!(s.remove_device("alice", 3).await.unwrap());
    assert!(!s.remove_device("alice", 3).await.unwrap());
    assert!(s.take_bundles("alice", BundlesOf::Lowest).await.unwrap().unwrap().is_empty());
    // A legacy send to an account without a device is not swallowed: it is a mismatch.
    let to_alice = Envelope { sender: "bob".into(), recipient: "alice".into(), ..envelope("z", 8) };
    assert!(matches!(
        s.enqueue(to_alice, QUOTA).await,
        Err(StorageError::Mismatch { missing, extra }) if missing.is_empty() && extra.is_empty()
    ));
    assert_eq!(s.login_device("alice", [1; 32], 9).await.unwrap().device_id, 4);
    assert!(s.take_bundles("nobody", BundlesOf::All).await.unwrap().is_none());
}

#[tokio::test]
async fn devices_are_capped_keys_are_unique_and_bundles_come_per_device() {
    let (_dir, s) = alice_and_bob().await;
    // Registered with key [1; 32] too: bob's device has it.
    assert!(matches!(s.add_device("alice", [1; 32], vec![], 2).await, Err(StorageError::Conflict)));
    for n in 2..=5u8 {
        assert_eq!(s.add_device("alice", [n + 10; 32], vec![n], 2).await.unwrap(), u32::from(n));
    }
    assert!(matches!(
        s.add_device("alice", [99; 32], vec![], 2).await,
        Err(StorageError::QuotaExceeded)
    ));
    for d in [2, 4] {
        let keys = KeyUpload {
            one_time: vec![PreKey { id: 7, key: vec![d as u8] }],
            last_resort: Some(PreKey { id: 8, key: vec![0] }),
            ..KeyUpload::default()
        };
        assert_eq!(s.upload_keys("alice", d, keys).await.unwrap(), 1);
    }
    assert!(matches!(
        s.upload_keys("alice", 9, KeyUpload::default()).await,
        Err(StorageError::NotFound)
    ));
    let b = s.take_bundles("alice", BundlesOf::Devices(vec![4, 2, 9])).await.unwrap().unwrap();
    let got: Vec<_> =
        b.iter().map(|b| (b.device_id, b.one_time_prekey.clone(), b.last_resort)).collect();
    assert_eq!(
        got,
        [
            (2, Some(PreKey { id: 7, key: vec![2] }), false),
            (4, Some(PreKey { id: 7, key: vec![4] }), false)
        ]
    );
    let again = s.take_bundles("alice", BundlesOf::Devices(vec![2])).await.unwrap().unwrap();
    assert_eq!(
        (again[0].one_time_prekey.as_ref().map(|p| p.id), again[0].last_resort),
        (Some(8), true)
    );
    let list = s.devices("alice").await.unwrap().unwrap();
    assert_eq!(list.iter().map(|d| d.device_id).collect::<Vec<_>>(), [1, 2, 3, 4, 5]);
    assert_eq!(list[2].name, vec![3]);
    assert!(s.devices("nobody").await.unwrap().is_none());
}

#[tokio::test]
async fn copies_must_name_exactly_the_target_devices_and_are_stored_all_or_none() {
    let (_dir, s) = alice_and_bob().await;
    s.add_device("bob", [2; 32], vec![], 1).await.unwrap();
    s.add_device("alice", [3; 32], vec![], 1).await.unwrap();
    let copies =
        |ids: &[u32]| Copies::Exact(ids.iter().map(|&d| (d, vec![d as u8].into())).collect());
    let send = |ids: &[u32]| Envelope { copies: copies(ids), ..envelope("c1", 5) };
    for (ids, missing, extra) in [
        (&[1][..], vec![2], vec![]),
        (&[1, 2, 3][..], vec![], vec![3]),
        (&[1, 1, 2][..], vec![], vec![1]),
        (&[][..], vec![1, 2], vec![]),
    ] {
        match s.enqueue(send(ids), QUOTA).await {
            Err(StorageError::Mismatch { missing: m, extra: e }) => {
                assert_eq!((m, e), (missing, extra), "{ids:?}");
            }
            other => panic!("{ids:?}: {other:?}"),
        }
    }
    // A single-copy send to an account of two devices is a mismatch naming both.
    assert!(matches!(
        s.enqueue(envelope("s1", 5), QUOTA).await,
        Err(StorageError::Mismatch { missing, .. }) if missing == [1, 2]
    ));
    assert_eq!(s.mailbox_len().await.unwrap(), 0);
    assert!(!s.enqueue(send(&[2, 1]), QUOTA).await.unwrap().duplicate);
    assert!(s.enqueue(send(&[2, 1]), QUOTA).await.unwrap().duplicate);
    let one = s.pending("bob", 1, 0, 10).await.unwrap();
    let two = s.pending("bob", 2, 0, 10).await.unwrap();
    assert_eq!((one.len(), two.len()), (1, 1));
    assert_eq!((one[0].body.as_slice(), two[0].body.as_slice()), (&[1u8][..], &[2u8][..]));
    // A device acknowledges only its own copy.
    assert_eq!(s.ack("bob", 2, vec![one[0].delivery_id]).await.unwrap(), 0);
    assert_eq!(s.ack("bob", 1, vec![one[0].delivery_id]).await.unwrap(), 1);
    // To one's own account: every device but the sending one, blocks or not.
    s.set_blocks("alice", Blocks { all: true, users: Default::default() }).await.unwrap();
    let own = Envelope { recipient: "alice".into(), copies: copies(&[2]), ..envelope("o1", 6) };
    s.enqueue(own, QUOTA).await.unwrap();
    let own = Envelope { recipient: "alice".into(), msg_id: "o2".into(), ..envelope("o2", 6) };
    assert!(!s.enqueue(own, QUOTA).await.unwrap().duplicate, "one other device: a plain send");
    assert_eq!(s.pending("alice", 2, 0, 10).await.unwrap().len(), 2);
    assert!(s.pending("alice", 1, 0, 10).await.unwrap().is_empty());
    // A removed device's mailbox goes with it.
    assert!(s.remove_device("bob", 2).await.unwrap());
    assert!(s.pending("bob", 2, 0, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn link_slots_are_per_account_write_once_and_expire() {
    let (_dir, s) = alice_and_bob().await;
    let open = |user: &str, slot: u8, now: u64| NewLinkSlot {
        slot: [slot; 16],
        user_id: user.into(),
        hello: vec![slot],
        now,
        expires_at: now + 100,
    };
    s.link_open(open("alice", 1, 0)).await.unwrap();
    assert!(matches!(s.link_open(open("bob", 1, 10)).await, Err(StorageError::Conflict)));
    s.link_put([1; 16], None, b"join".to_vec(), 10).await.unwrap();
    assert!(matches!(
        s.link_put([1; 16], Some("bob".into()), b"x".to_vec(), 10).await,
        Err(StorageError::Conflict)
    ));
    s.link_put([1; 16], Some("alice".into()), b"reply".to_vec(), 10).await.unwrap();
    assert!(matches!(
        s.link_put([1; 16], Some("alice".into()), b"x".to_vec(), 10).await,
        Err(StorageError::Conflict)
    ));
    let got = s.link_get([1; 16], 10).await.unwrap().unwrap();
    assert_eq!(
        (got.hello, got.joined, got.reply),
        (vec![1], Some(b"join".to_vec()), Some(b"reply".to_vec()))
    );
    assert!(s.link_get([1; 16], 100).await.unwrap().is_none(), "expired");
    assert!(matches!(s.link_put([1; 16], None, vec![], 100).await, Err(StorageError::NotFound)));
    // Expired, the name is free for another account; a new slot replaces the account's old.
    s.link_open(open("bob", 1, 100)).await.unwrap();
    s.link_open(open("bob", 2, 101)).await.unwrap();
    assert!(s.link_get([1; 16], 101).await.unwrap().is_none());
    assert!(s.link_get([2; 16], 101).await.unwrap().is_some());
}

/// An old relay's database (version 4) is migrated: its device becomes device 1 with
/// its keys and its mail, and what it had becomes per device.
#[tokio::test]
async fn the_migration_from_version_4_keeps_the_device_as_device_1_with_its_mailbox() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = SqliteStorage::open_at_version(dir.path(), 4).unwrap();
        c.execute_batch(
            "INSERT INTO accounts (user_id, password_hash, email, nickname, device_key, identity,
                signed_prekey_id, signed_prekey, last_resort_id, last_resort, created_at, updated_at, last_seen_at)
             VALUES ('alice', 'h', 'a@b.c', 'A', x'0101010101010101010101010101010101010101010101010101010101010101',
                x'09', 5, x'05', 6, x'06', 1, 1, 42),
                    ('carol', 'h', 'c@b.c', 'C', NULL, x'', NULL, NULL, NULL, NULL, 1, 1, 0),
                    ('bob', 'h', 'b@b.c', 'B', x'0202020202020202020202020202020202020202020202020202020202020202',
                x'', NULL, NULL, NULL, NULL, 1, 1, 0);
             INSERT INTO one_time_prekeys (user_id, key_id, key) VALUES ('alice', 7, x'07'), ('carol', 8, x'08');
             INSERT INTO mailbox (recipient, sender, msg_id, server_ts, body, from_contact)
             VALUES ('alice', 'bob', 'm1', 3, x'aa', 1), ('alice', 'bob', 'm2', 4, x'bb', 0),
                    ('carol', 'bob', 'lost', 4, x'cc', 1);",
        )
        .unwrap();
    }
    let s = SqliteStorage::open(dir.path()).unwrap();
    assert_eq!(s.device_by_key("alice", [1; 32]).await.unwrap(), Some(1));
    let mail = s.pending("alice", 1, 0, 10).await.unwrap();
    assert_eq!(mail.iter().map(|m| m.msg_id.as_str()).collect::<Vec<_>>(), ["m1", "m2"]);
    assert_eq!(
        (mail[0].sender.as_str(), mail[0].sender_device, mail[0].body.as_slice()),
        ("bob", 1, &[0xaa][..])
    );
    assert_eq!(s.one_time_count("alice", 1).await.unwrap(), 1);
    let b = s.take_bundles("alice", BundlesOf::Lowest).await.unwrap().unwrap();
    assert_eq!(
        (
            b[0].device_id,
            b[0].identity.clone(),
            b[0].signed_prekey.clone(),
            b[0].one_time_prekey.clone()
        ),
        (1, vec![9], Some(PreKey { id: 5, key: vec![5] }), Some(PreKey { id: 7, key: vec![7] }))
    );
    let list = s.devices("alice").await.unwrap().unwrap();
    assert_eq!((list.len(), list[0].linked_at, list[0].last_seen_at), (1, 1, 42));
    // A logged-out account has no device, and its mail had nobody left to read it.
    assert!(s.devices("carol").await.unwrap().unwrap().is_empty());
    assert_eq!(s.mailbox_len().await.unwrap(), 2);
    // The next device of a migrated account is 2, never 1 again.
    assert_eq!(s.add_device("alice", [3; 32], vec![], 5).await.unwrap(), 2);
    assert_eq!(s.login_device("carol", [4; 32], 5).await.unwrap().device_id, 2);
    // Its acknowledgement deletes what was queued before the migration.
    let ids = mail.iter().map(|m| m.delivery_id).collect();
    assert_eq!(s.ack("alice", 1, ids).await.unwrap(), 2);
}

#[tokio::test]
async fn blocks_refuse_messages_hide_presence_and_fan_out_per_recipient() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStorage::open(dir.path()).unwrap();
    for u in ["alice", "bob", "carol"] {
        s.create_account(account(u)).await.unwrap();
    }
    let blocks = Blocks { all: false, users: ["alice".to_owned()].into() };
    assert_eq!(s.set_blocks("bob", blocks.clone()).await.unwrap(), Blocks::default());
    assert_eq!(s.blocks("bob").await.unwrap(), blocks);
    assert!(matches!(s.enqueue(envelope("m1", 1), QUOTA).await, Err(StorageError::Blocked)));
    // Presence needs consent: both have alice as a contact, but bob's block wins.
    for u in ["bob", "carol"] {
        let contacts = Contacts { share_presence: true, users: ["alice".to_owned()].into() };
        s.set_contacts(u, contacts).await.unwrap();
    }
    let seen = s.watch("alice", vec!["bob".into(), "carol".into()], vec![]).await.unwrap();
    assert_eq!(
        seen.iter().map(|p| (p.user_id.as_str(), p.hidden)).collect::<Vec<_>>(),
        [("bob", true), ("carol", false)]
    );
    // One group message: carol gets it, bob refuses it, nothing else changes.
    let fan =
        ["bob", "carol"].map(|to| Envelope { recipient: to.into(), ..envelope("g1", 2) }).to_vec();
    let out = s.enqueue_fanout(fan, QUOTA).await.unwrap();
    assert!(matches!(out[0], Err(StorageError::Blocked)));
    assert!(out[1].as_ref().is_ok_and(|d| !d.duplicate));
    assert_eq!(s.mailbox_len().await.unwrap(), 1);
    // "Block everyone" refuses carol too; turning it off lets alice through again.
    s.set_blocks("carol", Blocks { all: true, users: Default::default() }).await.unwrap();
    let to_carol = Envelope { recipient: "carol".into(), ..envelope("m2", 3) };
    assert!(matches!(s.enqueue(to_carol.clone(), QUOTA).await, Err(StorageError::Blocked)));
    s.set_blocks("carol", Blocks::default()).await.unwrap();
    assert!(s.enqueue(to_carol, QUOTA).await.is_ok());
    s.set_blocks("bob", Blocks::default()).await.unwrap();
    assert!(s.enqueue(envelope("m1", 4), QUOTA).await.is_ok());
    assert!(matches!(s.set_blocks("nobody", Blocks::default()).await, Err(StorageError::NotFound)));
}

#[tokio::test]
async fn strangers_fill_only_their_share_and_contacts_still_get_through() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStorage::open(dir.path()).unwrap();
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
    s.enqueue(to_victim("mallory", "a"), quota).await.unwrap();
    s.enqueue(to_victim("mallory", "b"), quota).await.unwrap();
    for (from, id) in [("mallory", "c"), ("mallory2", "d")] {
        assert!(matches!(
            s.enqueue(to_victim(from, id), quota).await,
            Err(StorageError::QuotaExceeded)
        ));
    }
    s.enqueue(to_victim("friend", "e"), quota).await.unwrap();
    s.enqueue(to_victim("friend", "f"), quota).await.unwrap();
    assert!(matches!(
        s.enqueue(to_victim("friend", "g"), quota).await,
        Err(StorageError::QuotaExceeded)
    ));
    let ids: Vec<String> =
        s.pending("victim", 1, 0, 10).await.unwrap().into_iter().map(|m| m.msg_id).collect();
    assert_eq!(ids, ["a", "b", "e", "f"]);
}

/// A storage with the accounts alice and bob.
async fn alice_and_bob() -> (tempfile::TempDir, SqliteStorage) {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStorage::open(dir.path()).unwrap();
    s.create_account(account("alice")).await.unwrap();
    s.create_account(account("bob")).await.unwrap();
    (dir, s)
}

/// Holds the connection on a thread of its own until the returned sender is dropped: the
/// writer stalls, and every write queues behind it.
fn stall(s: &SqliteStorage) -> std::sync::mpsc::Sender<()> {
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (held, is_held) = std::sync::mpsc::channel();
    let conn = s.conn.clone();
    std::thread::spawn(move || {
        let _guard = conn.lock().unwrap();
        held.send(()).unwrap();
        let _ = released.recv();
    });
    is_held.recv().unwrap();
    release
}

/// `alice` sends `msg_id` to `to` from a task of its own; the answer comes with whether
/// the message was visible, right then, to another connection (that is: committed).
fn send_from_task(
    s: &SqliteStorage,
    dir: &Path,
    to: &str,
    msg_id: &str,
    quota: Quota,
) -> tokio::task::JoinHandle<(Result<Enqueued, StorageError>, bool)> {
    let (s, db, mut e) = (s.clone(), dir.join("relay.db"), envelope(msg_id, 10));
    e.recipient = to.into();
    tokio::spawn(async move {
        let msg_id = e.msg_id.clone();
        let out = s.enqueue(e, quota).await;
        let reader = Connection::open(db).unwrap();
        let seen: i64 = reader
            .query_row("SELECT COUNT(*) FROM mailbox WHERE msg_id = ?1", [&msg_id], |r| r.get(0))
            .unwrap();
        (out, seen == 1)
    })
}

/// Issue 16: concurrent sends share transactions (one sync for many), and nobody is
/// answered before the transaction holding their message committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sends_share_one_commit_and_are_answered_after_it() {
    let (dir, s) = alice_and_bob().await;
    let before = s.write_transactions();
    const N: usize = 32;
    const BIG: Quota = Quota { max_messages: 1000, max_bytes: 1 << 20 };
    let guard = stall(&s);
    let tasks: Vec<_> =
        (0..N).map(|n| send_from_task(&s, dir.path(), "bob", &format!("m{n}"), BIG)).collect();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(tasks.iter().all(|t| !t.is_finished()), "a sender was answered before any commit");
    drop(guard);
    for t in tasks {
        let (out, committed) = t.await.unwrap();
        assert!(!out.unwrap().duplicate);
        assert!(committed, "answered before its message was committed");
    }
    let commits = s.write_transactions() - before;
    assert!(commits <= 2, "{N} concurrent sends took {commits} transactions");
    assert_eq!(s.mailbox_len().await.unwrap(), N as u64);
}

/// Issue 16: one refused item (unknown recipient, quota) in a shared transaction fails
/// alone; the others in the same batch are stored and answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_send_in_a_batch_fails_alone() {
    let (dir, s) = alice_and_bob().await;
    // One sender may queue a quarter of 8: two messages.
    let quota = Quota { max_messages: 8, max_bytes: 1 << 20 };
    let before = s.write_transactions();
    let guard = stall(&s);
    let mut tasks = Vec::new();
    for (to, id) in [("bob", "a"), ("carol", "x"), ("bob", "b"), ("bob", "c"), ("bob", "a")] {
        tasks.push(send_from_task(&s, dir.path(), to, id, quota));
        // In this order in the queue.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // An all-or-none batch with one bad message stores none of it.
    let many = {
        let s = s.clone();
        let mut good = envelope("many-1", 10);
        (good.sender, good.recipient) = ("bob".into(), "alice".into());
        let mut bad = good.clone();
        (bad.msg_id, bad.recipient) = ("many-2".into(), "nobody".into());
        tokio::spawn(async move { s.enqueue_many(vec![good, bad], quota).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    drop(guard);
    let mut outs = Vec::new();
    for t in tasks {
        outs.push(t.await.unwrap().0);
    }
    assert!(matches!(outs[0], Ok(Enqueued { duplicate: false, .. })));
    assert!(matches!(outs[1], Err(StorageError::NotFound)));
    assert!(matches!(outs[2], Ok(Enqueued { duplicate: false, .. })));
    assert!(matches!(outs[3], Err(StorageError::QuotaExceeded)));
    assert!(matches!(outs[4], Ok(Enqueued { duplicate: true, .. })));
    assert!(matches!(many.await.unwrap(), Err(StorageError::NotFound)));
    assert!(s.write_transactions() - before <= 2);
    let left = s.pending("bob", 1, 0, 10).await.unwrap();
    assert_eq!(left.iter().map(|m| m.msg_id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert!(s.pending("alice", 1, 0, 10).await.unwrap().is_empty());
}

/// Acknowledgements go through the same writer: queued together, deleted in one commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_acks_share_one_commit() {
    let (_dir, s) = alice_and_bob().await;
    for n in 0..8 {
        s.enqueue(envelope(&format!("m{n}"), 10), QUOTA).await.unwrap();
    }
    let ids: Vec<u64> =
        s.pending("bob", 1, 0, 10).await.unwrap().iter().map(|m| m.delivery_id).collect();
    let before = s.write_transactions();
    let guard = stall(&s);
    let tasks: Vec<_> = ids
        .iter()
        .map(|&id| {
            let s = s.clone();
            tokio::spawn(async move { s.ack("bob", 1, vec![id]).await })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    drop(guard);
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), 1);
    }
    assert!(s.write_transactions() - before <= 2);
    assert_eq!(s.mailbox_len().await.unwrap(), 0);
}

/// The mailbox's counters (`mailbox_usage`) and the aggregate they stand for, each as
/// (recipient, device, sender, from contact, messages, bytes) ordered.
type Usage = Vec<(String, u32, String, bool, i64, i64)>;
/// The per-device totals (`mailbox_totals`) and the aggregate they stand for, each as
/// (recipient, device, messages, bytes, strangers' messages, strangers' bytes) ordered.
type Totals = Vec<(String, u32, i64, i64, i64, i64)>;

/// The rows of six columns `sql` reads.
#[allow(clippy::type_complexity)]
fn six<A: FromSql, B: FromSql, C: FromSql, D: FromSql, E: FromSql, F: FromSql>(
    c: &Connection,
    sql: &str,
) -> Result<Vec<(A, B, C, D, E, F)>, StorageError> {
    let mut st = c.prepare(sql)?;
    let rows = st.query_map([], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn usage_and_aggregate(c: &Connection) -> Result<(Usage, Usage, Totals, Totals), StorageError> {
    let read = |sql: &str| six(c, sql);
    let read_totals = |sql: &str| six(c, sql);
    let usage = read(
        "SELECT recipient, device_id, sender, from_contact, messages, bytes FROM mailbox_usage
         ORDER BY 1, 2, 3, 4",
    )?;
    let aggregate = read(
        "SELECT recipient, device_id, sender, from_contact, COUNT(*), SUM(length(body))
         FROM mailbox GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
    )?;
    let totals = read_totals(
        "SELECT recipient, device_id, messages, bytes, stranger_messages, stranger_bytes
         FROM mailbox_totals ORDER BY 1, 2",
    )?;
    let totals_aggregate = read_totals(
        "SELECT recipient, device_id, COUNT(*), SUM(length(body)), SUM(from_contact = 0),
                SUM(CASE WHEN from_contact = 0 THEN length(body) ELSE 0 END)
         FROM mailbox GROUP BY 1, 2 ORDER BY 1, 2",
    )?;
    Ok((usage, aggregate, totals, totals_aggregate))
}

/// One row of [`Usage`].
fn usage_row(
    recipient: &str,
    device: u32,
    sender: &str,
    contact: bool,
    messages: i64,
    bytes: i64,
) -> (String, u32, String, bool, i64, i64) {
    (recipient.to_owned(), device, sender.to_owned(), contact, messages, bytes)
}

async fn assert_usage_exact(s: &SqliteStorage, after: &str) {
    let (usage, aggregate, totals, totals_aggregate) =
        s.with(|c| usage_and_aggregate(c)).await.unwrap();
    assert_eq!(usage, aggregate, "mailbox_usage differs from the mailbox after {after}");
    assert_eq!(totals, totals_aggregate, "mailbox_totals differs from the mailbox after {after}");
    // The debug check of the writer says the same, device by device.
    let devices: Vec<(String, u32)> = totals_aggregate.iter().map(|t| (t.0.clone(), t.1)).collect();
    let exact = s
        .with(move |c| {
            devices.iter().try_fold(true, |all, (r, d)| Ok(all && counters::exact(c, r, *d)?))
        })
        .await
        .unwrap();
    assert!(exact, "counters::exact disagrees after {after}");
}

/// Property-style: random sends (contacts and strangers, several devices, one's own
/// account, retransmits, group fan-outs, all-or-none batches refused half-way, refusals
/// at the quota), bursts of sends and acknowledgements that share one writer batch,
/// acknowledgements (also of ids that are not the device's), and every path that deletes
/// mail: expiry, device removal, a password login that removes the other devices,
/// account deletion (mail to it and from it); and contact and block changes, from
/// several seeds. After every operation the counters equal the aggregate recomputed from
/// `mailbox`.
#[tokio::test]
async fn usage_counters_stay_exact_through_random_operations() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];
    let quota = Quota { max_messages: 12, max_bytes: 400 };
    for seed in 0..8u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStorage::open(dir.path()).unwrap();
        for u in USERS {
            s.create_account(account(u)).await.unwrap();
        }
        let mut key = 10u8;
        let (mut now, mut msg) = (1_000u64, 0u32);
        let mut stored = 0usize;
        let user = |rng: &mut StdRng| USERS[rng.random_range(0..USERS.len())];
        // A send; several devices get the same body (`Every`); now and then a retransmit
        // of an earlier message id.
        let send = |rng: &mut StdRng, msg: &mut u32, now: u64| {
            let id = if *msg > 0 && rng.random_bool(0.15) {
                rng.random_range(1..=*msg)
            } else {
                *msg += 1;
                *msg
            };
            Envelope {
                sender: user(rng).into(),
                recipient: user(rng).into(),
                msg_id: format!("m{id}"),
                copies: Copies::Every(vec![0x5a; rng.random_range(1..60)].into()),
                now,
                ..envelope("", 0)
            }
        };
        for _ in 0..150 {
            now += rng.random_range(1..50);
            let op = rng.random_range(0..100);
            let what = if op < 38 {
                if s.enqueue(send(&mut rng, &mut msg, now), quota).await.is_ok() {
                    stored += 1;
                }
                "a send"
            } else if op < 45 {
                // A group send: one refusal fails only its copy.
                msg += 1;
                let from = user(&mut rng);
                let body = bytes::Bytes::from(vec![0xa5; rng.random_range(1..60)]);
                let fan = USERS
                    .iter()
                    .filter(|u| **u != from)
                    .map(|to| Envelope {
                        sender: from.into(),
                        recipient: (*to).into(),
                        msg_id: format!("g{msg}"),
                        copies: Copies::Every(body.clone()),
                        now,
                        ..envelope("", 0)
                    })
                    .collect();
                s.enqueue_fanout(fan, quota).await.unwrap();
                "a group send"
            } else if op < 51 {
                // A batch of one sender to one recipient, all or none; now and then its
                // last message is refused (an unknown recipient) after the others were
                // written and counted.
                let first = send(&mut rng, &mut msg, now);
                let mut batch = vec![first.clone()];
                for _ in 0..rng.random_range(0..3) {
                    msg += 1;
                    batch.push(Envelope { msg_id: format!("m{msg}"), ..first.clone() });
                }
                if rng.random_bool(0.3) {
                    msg += 1;
                    let bad = Envelope { msg_id: format!("m{msg}"), ..first.clone() };
                    batch.push(Envelope { recipient: "nobody".into(), ..bad });
                }
                if s.enqueue_many(batch, quota).await.is_ok() {
                    stored += 1;
                }
                "a batch of sends"
            } else if op < 57 {
                // A burst: sends and acknowledgements queued together, one writer batch.
                let mut sends = Vec::new();
                for _ in 0..rng.random_range(2..8) {
                    sends.push(s.enqueue(send(&mut rng, &mut msg, now), quota));
                }
                let to = user(&mut rng);
                let queued = s.pending(to, 1, 0, 100).await.unwrap();
                let ids: Vec<u64> = queued.iter().map(|m| m.delivery_id).collect();
                let (sent, acked) =
                    tokio::join!(futures::future::join_all(sends), s.ack(to, 1, ids));
                stored += sent.iter().filter(|r| r.is_ok()).count();
                acked.unwrap();
                "a burst of sends and an acknowledgement"
            } else if op < 72 {
                // An acknowledgement of a random part of one device's mailbox, and of some
                // ids that are not that device's (they delete and count nothing).
                let to = user(&mut rng);
                let devices = s.devices(to).await.unwrap().unwrap();
                if let Some(d) = devices.get(rng.random_range(0..devices.len().max(1))) {
                    let queued = s.pending(to, d.device_id, 0, 100).await.unwrap();
                    let mut ids: Vec<u64> = queued
                        .iter()
                        .filter(|_| rng.random_bool(0.5))
                        .map(|m| m.delivery_id)
                        .collect();
                    let other = user(&mut rng);
                    let theirs = s.pending(other, 1, 0, 100).await.unwrap();
                    if other != to || d.device_id != 1 {
                        ids.extend(theirs.iter().take(2).map(|m| m.delivery_id));
                    }
                    s.ack(to, d.device_id, ids).await.unwrap();
                }
                "an acknowledgement"
            } else if op < 77 {
                s.expire(now.saturating_sub(rng.random_range(0..400))).await.unwrap();
                "expiry"
            } else if op < 83 {
                // A device linked or removed.
                let who = user(&mut rng);
                let devices = s.devices(who).await.unwrap().unwrap();
                if devices.len() < 3 && rng.random_bool(0.6) {
                    key = key.wrapping_add(1);
                    s.add_device(who, [key; 32], vec![], now).await.unwrap();
                } else if let Some(d) = devices.get(rng.random_range(0..devices.len().max(1))) {
                    assert!(s.remove_device(who, d.device_id).await.unwrap());
                }
                "a device change"
            } else if op < 86 {
                // A password login from a new key: every other device goes with its mail.
                let who = user(&mut rng);
                key = key.wrapping_add(1);
                s.login_device(who, [key; 32], now).await.unwrap();
                "a password login"
            } else if op < 90 {
                // Contacts change: later sends from them count as a contact's or not.
                let who = user(&mut rng);
                let users = USERS.iter().filter(|_| rng.random_bool(0.5)).map(|u| (*u).into());
                let contacts = Contacts { share_presence: true, users: users.collect() };
                s.set_contacts(who, contacts).await.unwrap();
                "a contacts change"
            } else if op < 95 {
                // Blocks change: later sends from them are refused.
                let who = user(&mut rng);
                let all = rng.random_bool(0.1);
                let users = USERS.iter().filter(|_| rng.random_bool(0.2)).map(|u| (*u).into());
                let blocks = Blocks { all, users: users.collect() };
                s.set_blocks(who, blocks).await.unwrap();
                "a blocks change"
            } else {
                // An account deleted (its mail, received and sent, goes) and registered again.
                let who = user(&mut rng);
                s.delete_account(who).await.unwrap();
                key = key.wrapping_add(1);
                s.create_account(NewAccount { device_key: [key; 32], ..account(who) })
                    .await
                    .unwrap();
                "an account deletion"
            };
            assert_usage_exact(&s, what).await;
        }
        assert!(stored > 20, "seed {seed}: too few sends were stored ({stored}) to test much");
    }
}

/// The counters are what the quota reads: the device's total refuses at the limit, and
/// an acknowledgement frees the room again.
#[tokio::test]
async fn the_total_quota_refuses_at_the_limit_and_an_ack_frees_room() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStorage::open(dir.path()).unwrap();
    let senders = ["s1", "s2", "s3", "s4", "s5"];
    for u in senders.iter().chain(&["bob"]) {
        s.create_account(account(u)).await.unwrap();
    }
    let users = senders.iter().map(|u| (*u).to_owned()).collect();
    s.set_contacts("bob", Contacts { share_presence: true, users }).await.unwrap();
    // Eight messages, a sender's share is two: four contacts fill the box.
    let quota = Quota { max_messages: 8, max_bytes: 1 << 20 };
    let send = |from: &str, id: &str| Envelope { sender: from.into(), ..envelope(id, 1) };
    for from in &senders[..4] {
        for k in 0..2 {
            s.enqueue(send(from, &format!("{from}-{k}")), quota).await.unwrap();
        }
    }
    assert!(matches!(s.enqueue(send("s5", "x"), quota).await, Err(StorageError::QuotaExceeded)));
    let first = s.pending("bob", 1, 0, 1).await.unwrap()[0].delivery_id;
    assert_eq!(s.ack("bob", 1, vec![first]).await.unwrap(), 1);
    s.enqueue(send("s5", "x"), quota).await.unwrap();
    assert!(matches!(s.enqueue(send("s5", "y"), quota).await, Err(StorageError::QuotaExceeded)));
    // Bytes the same way: 3 bytes a message, a box of 24 is full after eight.
    let quota = Quota { max_messages: 100, max_bytes: 24 };
    assert!(matches!(s.enqueue(send("s5", "z"), quota).await, Err(StorageError::QuotaExceeded)));
    assert_usage_exact(&s, "the sends").await;
}

/// Accounts, devices and queued mail as an old relay's database (version 5 or 6) holds
/// them: bob's device 1 has two messages from alice, one from carol as a stranger and
/// one from carol as a contact; his device 2 one from alice.
const OLD_MAIL: &str = "
    INSERT INTO accounts (user_id, password_hash, email, nickname, identity, created_at, updated_at)
    VALUES ('alice', 'h', 'a@b.c', 'A', x'', 1, 1), ('bob', 'h', 'b@b.c', 'B', x'', 1, 1),
           ('carol', 'h', 'c@b.c', 'C', x'', 1, 1);
    INSERT INTO devices (user_id, device_id, device_key, linked_at)
    VALUES ('bob', 1, x'01', 1), ('bob', 2, x'02', 1), ('alice', 1, x'03', 1),
           ('carol', 1, x'04', 1);
    INSERT INTO mailbox (recipient, device_id, sender, msg_id, server_ts, body, from_contact)
    VALUES ('bob', 1, 'alice', 'm1', 3, x'aabb', 1), ('bob', 1, 'alice', 'm2', 3, x'cc', 1),
           ('bob', 2, 'alice', 'm1', 3, x'aabbcc', 1), ('bob', 1, 'carol', 'm3', 4, x'dd', 0),
           ('bob', 1, 'carol', 'm4', 4, x'ee', 1);";

/// The usage rows [`OLD_MAIL`] counts to.
fn old_mail_usage() -> Usage {
    vec![
        usage_row("bob", 1, "alice", true, 2, 3),
        usage_row("bob", 1, "carol", false, 1, 1),
        usage_row("bob", 1, "carol", true, 1, 1),
        usage_row("bob", 2, "alice", true, 1, 3),
    ]
}

/// A database of version 5 with queued mail (written before the counters existed) gets
/// its counters from the mailbox, and the quota counts that mail at once.
#[tokio::test]
async fn the_migration_to_version_6_counts_the_queued_mail() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = SqliteStorage::open_at_version(dir.path(), 5).unwrap();
        c.execute_batch(OLD_MAIL).unwrap();
    }
    let s = SqliteStorage::open(dir.path()).unwrap();
    assert_usage_exact(&s, "the migration").await;
    let (usage, ..) = s.with(|c| usage_and_aggregate(c)).await.unwrap();
    assert_eq!(usage, old_mail_usage());
    // alice already holds her share (two of eight) of bob's device 1.
    let quota = Quota { max_messages: 8, max_bytes: 1 << 20 };
    let one = Envelope {
        copies: Copies::Exact(vec![(1, vec![1].into()), (2, vec![2].into())]),
        ..envelope("m5", 5)
    };
    assert!(matches!(s.enqueue(one, quota).await, Err(StorageError::QuotaExceeded)));
    // Their acknowledgement takes them off the counters.
    let ids = s.pending("bob", 1, 0, 10).await.unwrap().iter().map(|m| m.delivery_id).collect();
    assert_eq!(s.ack("bob", 1, ids).await.unwrap(), 4);
    assert_usage_exact(&s, "the acknowledgement").await;
    let left = s.with(|c| usage_and_aggregate(c)).await.unwrap().0;
    assert_eq!(left, [usage_row("bob", 2, "alice", true, 1, 3)]);
    // Nothing may change what a queued message counts for behind the counters' back.
    let update = s.with(|c| Ok(c.execute("UPDATE mailbox SET from_contact = 0", [])?)).await;
    assert!(update.is_err(), "an update of a counted column must be refused");
    assert_usage_exact(&s, "the refused update").await;
}

/// A database of version 6 with queued mail (counted by the triggers of migration 6,
/// and one counter gone wrong) is counted again by migration 7: usage rows and the new
/// totals rows equal the mailbox, the triggers that counted per row are gone, the
/// update guard stays, and the quota and acknowledgements work on the result.
#[tokio::test]
async fn the_migration_to_version_7_counts_the_queued_mail_and_drops_the_row_triggers() {
    let dir = tempfile::tempdir().unwrap();
    {
        let c = SqliteStorage::open_at_version(dir.path(), 6).unwrap();
        c.execute_batch(OLD_MAIL).unwrap();
        c.execute_batch(
            "INSERT INTO mailbox (recipient, device_id, sender, msg_id, server_ts, body, from_contact)
             VALUES ('alice', 1, 'carol', 'm5', 4, x'0102', 0);
             -- A counter of before gone wrong: the migration counts again, it does not trust it.
             UPDATE mailbox_usage SET messages = 9 WHERE recipient = 'bob' AND sender = 'carol';",
        )
        .unwrap();
    }
    let s = SqliteStorage::open(dir.path()).unwrap();
    assert_usage_exact(&s, "the migration").await;
    let (usage, _, totals, _) = s.with(|c| usage_and_aggregate(c)).await.unwrap();
    let mut want = vec![usage_row("alice", 1, "carol", false, 1, 2)];
    want.extend(old_mail_usage());
    assert_eq!(usage, want);
    let total = |r: &str, d: u32, n: i64, b: i64, sn: i64, sb: i64| (r.to_owned(), d, n, b, sn, sb);
    assert_eq!(
        totals,
        [total("alice", 1, 1, 2, 1, 2), total("bob", 1, 4, 5, 1, 1), total("bob", 2, 1, 3, 0, 0)]
    );
    let triggers: Vec<String> = s
        .with(|c| {
            let mut st =
                c.prepare("SELECT name FROM sqlite_master WHERE type = 'trigger' ORDER BY 1")?;
            Ok(st.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?)
        })
        .await
        .unwrap();
    assert_eq!(triggers, ["accounts_delete_mail_first", "mailbox_usage_update"]);
    // alice already holds her share (two of eight) of bob's device 1.
    let quota = Quota { max_messages: 8, max_bytes: 1 << 20 };
    let both = |id: &str| Envelope {
        copies: Copies::Exact(vec![(1, vec![1].into()), (2, vec![2].into())]),
        ..envelope(id, 5)
    };
    assert!(matches!(s.enqueue(both("m6"), quota).await, Err(StorageError::QuotaExceeded)));
    let ids = s.pending("bob", 1, 0, 10).await.unwrap().iter().map(|m| m.delivery_id).collect();
    assert_eq!(s.ack("bob", 1, ids).await.unwrap(), 4);
    assert_usage_exact(&s, "the acknowledgement").await;
    s.enqueue(both("m6"), quota).await.unwrap();
    assert_usage_exact(&s, "a send after the migration").await;
    let (_, _, totals, _) = s.with(|c| usage_and_aggregate(c)).await.unwrap();
    // From alice, not a contact of bob's: the strangers' part.
    assert_eq!(
        totals,
        [total("alice", 1, 1, 2, 1, 2), total("bob", 1, 1, 1, 1, 1), total("bob", 2, 2, 4, 1, 1)]
    );
}

/// Issue 16, an attacker's burst: sends queued together share one writer batch, whose
/// counters are written once, at its end; the quota checks inside the batch still see
/// what the batch stored before them, so a burst stores no more than the sender's share,
/// retransmits in it are acknowledged, not stored, and the counters stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_in_one_batch_stores_no_more_than_the_share() {
    let (dir, s) = alice_and_bob().await;
    // A sender's share of 8 is two messages.
    let quota = Quota { max_messages: 8, max_bytes: 1 << 20 };
    let before = s.write_transactions();
    let guard = stall(&s);
    let mut tasks = Vec::new();
    for id in ["a", "b", "a", "c", "d", "b", "e"] {
        tasks.push(send_from_task(&s, dir.path(), "bob", id, quota));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    drop(guard);
    let mut outs = Vec::new();
    for t in tasks {
        outs.push(t.await.unwrap().0);
    }
    assert!(s.write_transactions() - before <= 2, "not one batch");
    let stored = outs.iter().filter(|o| matches!(o, Ok(Enqueued { duplicate: false, .. })));
    let again = outs.iter().filter(|o| matches!(o, Ok(Enqueued { duplicate: true, .. })));
    let full = outs.iter().filter(|o| matches!(o, Err(StorageError::QuotaExceeded)));
    assert_eq!((stored.count(), again.count(), full.count()), (2, 2, 3), "{outs:?}");
    assert_eq!(s.mailbox_len().await.unwrap(), 2);
    assert_usage_exact(&s, "the burst").await;
}

/// A path that wrote the mailbox without counting (a bug) makes a counter drift below
/// zero at the next acknowledgement: the device's counters are counted again from its
/// mailbox instead of staying wrong.
#[tokio::test]
async fn a_counter_that_drifts_below_zero_is_counted_again() {
    let (_dir, s) = alice_and_bob().await;
    s.enqueue(envelope("counted", 1), QUOTA).await.unwrap();
    s.with(|c| {
        c.execute(
            "INSERT INTO mailbox (recipient, device_id, sender, sender_device, msg_id, server_ts, body)
             VALUES ('bob', 1, 'carol', 1, 'uncounted', 1, x'0102')",
            [],
        )?;
        c.execute(
            "INSERT INTO mailbox (recipient, device_id, sender, sender_device, msg_id, server_ts, body)
             VALUES ('bob', 1, 'carol', 1, 'uncounted2', 1, x'03')",
            [],
        )?;
        Ok(())
    })
    .await
    .unwrap();
    let queued = s.pending("bob", 1, 0, 10).await.unwrap();
    let carol: Vec<u64> =
        queued.iter().filter(|m| m.sender == "carol").map(|m| m.delivery_id).take(1).collect();
    assert_eq!(s.ack("bob", 1, carol).await.unwrap(), 1);
    assert_usage_exact(&s, "the repair").await;
}

/// Deleting an account would cascade to the mail queued for it without counting it: the
/// relay deletes that mail first, and a plain delete of an account with mail is refused.
#[tokio::test]
async fn an_account_with_queued_mail_cannot_be_deleted_behind_the_counters() {
    let (_dir, s) = alice_and_bob().await;
    s.enqueue(envelope("m1", 1), QUOTA).await.unwrap();
    let plain = s.with(|c| Ok(c.execute("DELETE FROM accounts WHERE user_id = 'bob'", [])?)).await;
    assert!(plain.is_err(), "the cascade would have deleted counted mail");
    s.delete_account("bob").await.unwrap();
    assert_eq!(s.mailbox_len().await.unwrap(), 0);
    assert_usage_exact(&s, "the account's deletion").await;
}

/// The guard against a future path that forgets the counters: no code of the back end
/// but `counters.rs` inserts into or deletes from the mailbox.
#[test]
fn only_the_counters_module_writes_the_mailbox() {
    let sources = [
        ("mod.rs", include_str!("mod.rs")),
        ("rows.rs", include_str!("rows.rs")),
        ("writer.rs", include_str!("writer.rs")),
        ("counters.rs", include_str!("counters.rs")),
    ];
    for (name, text) in sources {
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ").to_uppercase();
        let writes = [
            "DELETE FROM MAILBOX ",
            "INSERT INTO MAILBOX ",
            "INSERT INTO MAILBOX(",
            "REPLACE INTO MAILBOX ",
        ];
        let writes = writes.iter().filter(|w| text.contains(*w)).count();
        assert_eq!(writes > 0, name == "counters.rs", "{name} writes the mailbox");
    }
}
