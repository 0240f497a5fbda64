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
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStorage::open(dir.path()).unwrap();
    s.create_account(account("alice")).await.unwrap();
    s.create_account(account("bob")).await.unwrap();
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
