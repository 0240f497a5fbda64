//! The embedded back end on a temporary directory.

use super::*;

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
        recipient: "bob".into(),
        msg_id: msg_id.into(),
        body: vec![1, 2, 3].into(),
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
    let left = s.pending("bob", 0, 10).await.unwrap();
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
async fn binding_a_new_device_drops_the_old_devices_keys() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStorage::open(dir.path()).unwrap();
    s.create_account(account("alice")).await.unwrap();
    let keys = KeyUpload {
        identity: Some(vec![9]),
        signed_prekey: Some(PreKey { id: 1, key: vec![1] }),
        one_time: vec![PreKey { id: 2, key: vec![2] }],
        last_resort: None,
    };
    assert_eq!(s.upload_keys("alice", keys).await.unwrap(), 1);
    s.bind_device("alice", Some([1; 32])).await.unwrap();
    assert_eq!(s.one_time_count("alice").await.unwrap(), 1, "same device keeps its keys");
    s.bind_device("alice", Some([2; 32])).await.unwrap();
    assert_eq!(s.one_time_count("alice").await.unwrap(), 0);
    let b = s.take_bundle("alice").await.unwrap().unwrap();
    assert_eq!((b.identity.len(), b.signed_prekey, b.one_time_prekey), (0, None, None));
    s.bind_device("alice", None).await.unwrap();
    assert!(s.take_bundle("alice").await.unwrap().is_none());
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
        s.pending("victim", 0, 10).await.unwrap().into_iter().map(|m| m.msg_id).collect();
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
    let left = s.pending("bob", 0, 10).await.unwrap();
    assert_eq!(left.iter().map(|m| m.msg_id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
    assert!(s.pending("alice", 0, 10).await.unwrap().is_empty());
}

/// Acknowledgements go through the same writer: queued together, deleted in one commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_acks_share_one_commit() {
    let (_dir, s) = alice_and_bob().await;
    for n in 0..8 {
        s.enqueue(envelope(&format!("m{n}"), 10), QUOTA).await.unwrap();
    }
    let ids: Vec<u64> =
        s.pending("bob", 0, 10).await.unwrap().iter().map(|m| m.delivery_id).collect();
    let before = s.write_transactions();
    let guard = stall(&s);
    let tasks: Vec<_> = ids
        .iter()
        .map(|&id| {
            let s = s.clone();
            tokio::spawn(async move { s.ack("bob", vec![id]).await })
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
