//! Groups through real relays and daemons: creation, sender-key messages to every
//! member, per-member state, admin rules, removal (the removed member never sees what
//! follows), rename and leave.

use std::time::Duration;

use serde_json::{Value, json};

use letstalk_tests::{Daemon, World, error_of, eventually, registered, texts, wait_texts};

const LIMIT: Duration = Duration::from_secs(30);

/// Waits until `d` knows group `gid` with `members`; returns the group.
async fn wait_group(d: &Daemon, gid: &str, members: &[&str]) -> Value {
    eventually(LIMIT, &format!("group with {members:?}"), || async {
        let g = d.call("groups.info", json!({"group_id": gid})).await.ok()?;
        (g["members"] == json!(members)).then_some(g)
    })
    .await
    .unwrap()
}

async fn system_texts(d: &Daemon, conversation: &str) -> Vec<String> {
    let page = d.call("messages.list", json!({"conversation": conversation})).await.unwrap();
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["kind"] == "system")
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_group_message_reaches_every_member_and_a_removed_member_reads_nothing_after() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let bob = registered(&world, &relay, "bob").await;
    let carol = registered(&world, &relay, "carol").await;

    // Bad input changes nothing.
    let bad = alice.call("groups.create", json!({"name": " ", "members": ["bob"]})).await;
    assert_eq!(error_of(bad).0, -32602);
    let stranger =
        alice.call("groups.create", json!({"name": "x", "members": ["nobody-here"]})).await;
    assert_eq!(error_of(stranger).1.as_deref(), Some("not_found"));
    assert_eq!(alice.call("groups.list", json!({})).await.unwrap()["groups"], json!([]));

    let group = alice
        .call("groups.create", json!({"name": "Climbing", "members": ["bob", "carol", "bob"]}))
        .await
        .unwrap();
    let gid = group["group_id"].as_str().unwrap().to_owned();
    let conv = format!("group:{gid}");
    assert_eq!(group["members"], json!(["alice", "bob", "carol"]));
    assert_eq!(group["admins"], json!(["alice"]));
    for d in [&bob, &carol] {
        let g = wait_group(d, &gid, &["alice", "bob", "carol"]).await;
        assert_eq!((g["name"].as_str(), &g["admins"]), (Some("Climbing"), &json!(["alice"])));
    }
    assert_eq!(
        system_texts(&bob, &conv).await,
        vec!["alice added you to the group \u{201c}Climbing\u{201d}"]
    );

    // One message, both members; its state per member ends at delivered.
    let sent = alice
        .call("messages.send", json!({"to": conv, "text": "meet at the wall at 6"}))
        .await
        .unwrap();
    let id = sent["message"]["message_id"].as_str().unwrap().to_owned();
    assert_eq!(sent["message"]["states"], json!({"bob": "queued", "carol": "queued"}));
    for d in [&bob, &carol] {
        assert_eq!(wait_texts(d, &conv, 1, LIMIT).await, vec!["meet at the wall at 6"]);
    }
    let m = eventually(LIMIT, "delivered to both", || async {
        let m = alice.call("messages.get", json!({"message_id": id})).await.ok()?;
        (m["message"]["state"] == "delivered").then_some(m)
    })
    .await
    .unwrap();
    assert_eq!(m["message"]["states"], json!({"bob": "delivered", "carol": "delivered"}));
    // bob reads it: his read receipt moves his own state only.
    bob.call("messages.mark_read", json!({"conversation": conv})).await.unwrap();
    eventually(LIMIT, "bob read", || async {
        let m = alice.call("messages.get", json!({"message_id": id})).await.ok()?;
        (m["message"]["states"]["bob"] == "read").then_some(())
    })
    .await
    .unwrap();
    let m = alice.call("messages.get", json!({"message_id": id})).await.unwrap();
    assert_eq!(m["message"]["state"], "delivered", "the least advanced member");

    // Members write too, and the conversation list names the group.
    bob.call("messages.send", json!({"to": conv, "text": "I'll bring the rope"})).await.unwrap();
    for d in [&alice, &carol] {
        wait_texts(d, &conv, 2, LIMIT).await;
    }
    let convs = carol.call("conversations.list", json!({})).await.unwrap();
    assert_eq!(convs["conversations"][0]["title"], "Climbing");

    // Only admins change the group.
    let refused = bob.call("groups.rename", json!({"group_id": gid, "name": "Mine"})).await;
    assert_eq!(error_of(refused).1.as_deref(), Some("invalid_state"));
    let refused =
        bob.call("groups.remove_members", json!({"group_id": gid, "members": ["alice"]})).await;
    assert_eq!(error_of(refused).1.as_deref(), Some("invalid_state"));
    let dup = alice.call("groups.add_members", json!({"group_id": gid, "members": ["bob"]})).await;
    assert_eq!(error_of(dup).1.as_deref(), Some("conflict"));

    // carol is removed; what follows never reaches her daemon.
    let g = alice
        .call("groups.remove_members", json!({"group_id": gid, "members": ["carol"]}))
        .await
        .unwrap();
    assert_eq!(g["members"], json!(["alice", "bob"]));
    wait_group(&bob, &gid, &["alice", "bob"]).await;
    eventually(LIMIT, "carol knows she was removed", || async {
        let list = carol.call("groups.list", json!({})).await.ok()?;
        (list["groups"] == json!([])).then_some(())
    })
    .await
    .unwrap();
    assert!(system_texts(&carol, &conv).await.contains(&"alice removed you".to_owned()));
    assert!(system_texts(&bob, &conv).await.contains(&"alice removed carol".to_owned()));
    let after = ["after carol left: the secret crag", "bob's secret too"];
    alice.call("messages.send", json!({"to": conv, "text": after[0]})).await.unwrap();
    bob.call("messages.send", json!({"to": conv, "text": after[1]})).await.unwrap();
    wait_texts(&bob, &conv, 4, LIMIT).await;
    wait_texts(&alice, &conv, 4, LIMIT).await;
    let send_to_left = carol.call("messages.send", json!({"to": conv, "text": "hello?"})).await;
    assert_eq!(error_of(send_to_left).1.as_deref(), Some("not_found"));
    // A barrier instead of a sleep: bob (and alice) have both texts, so the relay took
    // them and fanned each out in one transaction; anything misrouted to carol is in her
    // mailbox ahead of the direct messages sent now, and her daemon applies its mailbox in
    // order. Once she shows the direct ones, she has seen whatever came before.
    alice.call("messages.send", json!({"to": "user:carol", "text": "barrier a"})).await.unwrap();
    bob.call("messages.send", json!({"to": "user:carol", "text": "barrier b"})).await.unwrap();
    wait_texts(&carol, "user:alice", 1, LIMIT).await;
    wait_texts(&carol, "user:bob", 1, LIMIT).await;
    let seen = texts(&carol, &conv).await;
    assert_eq!(seen, vec!["meet at the wall at 6", "I'll bring the rope"]);

    // Rename and leave.
    alice.call("groups.rename", json!({"group_id": gid, "name": "Crag crew"})).await.unwrap();
    eventually(LIMIT, "renamed at bob", || async {
        let g = bob.call("groups.info", json!({"group_id": gid})).await.ok()?;
        (g["name"] == "Crag crew").then_some(())
    })
    .await
    .unwrap();
    bob.call("groups.leave", json!({"group_id": gid})).await.unwrap();
    assert_eq!(bob.call("groups.list", json!({})).await.unwrap()["groups"], json!([]));
    wait_group(&alice, &gid, &["alice"]).await;
    assert!(system_texts(&alice, &conv).await.contains(&"bob left".to_owned()));
    // History stays on the device that left.
    assert_eq!(texts(&bob, &conv).await.len(), 4);
}
