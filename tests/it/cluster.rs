//! The relay beyond one machine: relay nodes sharing one NATS JetStream cluster
//! (`letstalk-relay --cluster`), real `nats-server` processes on loopback, real daemons.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};

use letstalk_tests::{
    Daemon, DaemonSpec, PASSWORD, Relay, World, error_of, eventually, next_event, texts,
    wait_connected, wait_presence, wait_texts,
};

const LIMIT: Duration = Duration::from_secs(60);

/// A daemon named `name` on the given relay nodes (preferred first), registered.
async fn registered_on(world: &World, nodes: &[&Relay], name: &str) -> Daemon {
    let d = world.daemon(name).with_relays(nodes).start().unwrap();
    wait_connected(&d).await;
    d.call(
        "account.register",
        json!({"user_id": name, "email": format!("{name}@example.org"),
            "nickname": format!("{name} nick"), "password": PASSWORD}),
    )
    .await
    .unwrap();
    d
}

/// Restarts `d` with the shortest keepalive (5 s), so that a relay node that dies
/// without closing its connections is noticed within 15 s.
async fn with_quick_keepalive(mut d: Daemon) -> Daemon {
    d.call("settings.set", json!({"keepalive_s": {"wifi": 5, "cellular": 5}})).await.unwrap();
    let spec: DaemonSpec = d.spec.clone();
    d.stop(Duration::from_secs(5)).unwrap();
    let d = spec.start().unwrap();
    wait_connected(&d).await;
    d
}

/// Sends and waits for the message's final state at the sender.
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

async fn wait_drained(d: &Daemon) {
    letstalk_tests::wait_drained(d, LIMIT).await;
}

#[tokio::test]
async fn cluster_nodes_carry_messages_groups_blocking_presence_and_logout_across_nodes() {
    let world = World::new();
    let nats = world.nats("nats", 3);
    let a = world.cluster_relay("node-a", &nats, None).unwrap();
    let b = world.cluster_relay("node-b", &nats, Some(&a)).unwrap();
    let alice = registered_on(&world, &[&a], "alice").await;
    let mut bob = registered_on(&world, &[&b], "bob").await;
    let carol = registered_on(&world, &[&b], "carol").await;

    // Messages both ways: enqueued on one node, pushed by the other.
    assert_eq!(
        send_and_settle(&alice, "user:bob", "hello from node a").await["state"],
        "delivered"
    );
    assert_eq!(wait_texts(&bob, "user:alice", 1, LIMIT).await, ["hello from node a"]);
    bob.call("messages.send", json!({"to": "user:alice", "text": "hello from node b"}))
        .await
        .unwrap();
    assert_eq!(
        wait_texts(&alice, "user:bob", 2, LIMIT).await,
        ["hello from node a", "hello from node b"]
    );

    // Presence and profile changes cross nodes.
    alice.call("contacts.add", json!({"user_id": "bob"})).await.unwrap();
    bob.call("contacts.add", json!({"user_id": "alice"})).await.unwrap();
    wait_presence(&alice, "bob", "online").await;
    let ui = alice.client().await.unwrap();
    let mut events = ui.take_events().unwrap();
    ui.call_value("events.subscribe", json!({"kinds": ["contact.changed"]})).await.unwrap();
    bob.call("account.update", json!({"nickname": "Robert"})).await.unwrap();
    let changed = next_event(&mut events, LIMIT).await.unwrap();
    assert_eq!(changed["contact"]["nickname"], "Robert");
    bob.stop(Duration::from_secs(5)).unwrap();
    wait_presence(&alice, "bob", "offline").await;
    // While bob is away his mailbox (in JetStream) keeps what alice sends.
    alice.call("messages.send", json!({"to": "user:bob", "text": "while away"})).await.unwrap();
    wait_drained(&alice).await;
    bob = world.daemon("bob").with_relays(&[&b]).start().unwrap();
    wait_presence(&alice, "bob", "online").await;
    assert_eq!(wait_texts(&bob, "user:alice", 3, LIMIT).await[2], "while away");

    // A group with members on both nodes.
    let group = alice
        .call("groups.create", json!({"name": "Across", "members": ["bob", "carol"]}))
        .await
        .unwrap();
    let conv = format!("group:{}", group["group_id"].as_str().unwrap());
    alice.call("messages.send", json!({"to": conv, "text": "to both nodes"})).await.unwrap();
    for d in [&bob, &carol] {
        assert_eq!(wait_texts(d, &conv, 1, LIMIT).await, ["to both nodes"]);
    }
    carol.call("messages.send", json!({"to": conv, "text": "carol from node b"})).await.unwrap();
    assert_eq!(wait_texts(&alice, &conv, 2, LIMIT).await[1], "carol from node b");

    // bob (node b) blocks alice (node a): refused at the relay, presence hidden.
    bob.call("contacts.block", json!({"user_id": "alice"})).await.unwrap();
    wait_presence(&alice, "bob", "hidden").await;
    let m = send_and_settle(&alice, "user:bob", "while blocked").await;
    assert_eq!(
        (m["state"].as_str(), m["error"]["data"]["kind"].as_str()),
        (Some("failed"), Some("blocked"))
    );
    bob.call("contacts.unblock", json!({"user_id": "alice"})).await.unwrap();
    wait_presence(&alice, "bob", "online").await;
    assert_eq!(send_and_settle(&alice, "user:bob", "unblocked").await["state"], "delivered");

    // Logging in on a device connected to node a logs out bob's device on node b.
    let ui = bob.client().await.unwrap();
    let mut bob_events = ui.take_events().unwrap();
    ui.call_value("events.subscribe", json!({"kinds": ["account.logged_out"]})).await.unwrap();
    let phone = world.daemon("bob-phone").with_relays(&[&a]).start().unwrap();
    wait_connected(&phone).await;
    phone.call("account.login", json!({"user_id": "bob", "password": PASSWORD})).await.unwrap();
    let e = next_event(&mut bob_events, LIMIT).await.unwrap();
    assert_eq!(e["kind"], "account.logged_out");
    let (_, kind, _) = error_of(bob.call("account.info", json!({})).await);
    assert_eq!(kind.as_deref(), Some("not_logged_in"));
    // The new device (node a) and carol (node b) talk; as on one relay, the new device
    // writes first so that carol learns its new identity.
    phone.call("messages.send", json!({"to": "user:carol", "text": "new phone"})).await.unwrap();
    assert_eq!(wait_texts(&carol, "user:bob", 1, LIMIT).await, ["new phone"]);
    carol.call("messages.send", json!({"to": "user:bob", "text": "to the phone"})).await.unwrap();
    assert_eq!(wait_texts(&phone, "user:carol", 2, LIMIT).await, ["new phone", "to the phone"]);

    // Nothing sensitive in any relay node's log.
    for r in [&a, &b] {
        let logs = r.logs();
        assert!(!logs.contains(PASSWORD), "a password reached a relay log");
        assert!(!logs.contains("to the phone"), "message text reached a relay log");
    }
}

#[tokio::test]
async fn cluster_a_relay_node_killed_during_traffic_loses_and_duplicates_nothing() {
    let world = World::new();
    let nats = world.nats("nats", 3);
    let mut a = world.cluster_relay("node-a", &nats, None).unwrap();
    let mut b = world.cluster_relay("node-b", &nats, Some(&a)).unwrap();
    // alice prefers node a, bob node b; both know both.
    let alice = registered_on(&world, &[&a, &b], "alice").await;
    let bob = registered_on(&world, &[&b, &a], "bob").await;
    let alice = with_quick_keepalive(alice).await;
    let bob = with_quick_keepalive(bob).await;

    let mut accepted = Vec::new();
    for i in 0..150 {
        if i == 50 {
            // alice's node dies mid-stream: she fails over to node b.
            a.kill9();
        }
        if i == 100 {
            // Node a comes back; now bob's node dies: he fails over to node a.
            a.restart().unwrap();
            b.kill9();
        }
        let text = format!("failover {i:03}");
        if alice.call("messages.send", json!({"to": "user:bob", "text": text})).await.is_ok() {
            accepted.push(text);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(accepted.len(), 150, "messages.send never refuses while the daemon runs");
    let got = wait_texts(&bob, "user:alice", 150, Duration::from_secs(180)).await;
    assert_eq!(got, accepted, "every accepted message once, in order");
    b.restart().unwrap();
    let status = bob.call("system.status", json!({})).await.unwrap();
    assert_eq!(status["relay"]["state"], "connected");
}

#[tokio::test]
async fn cluster_a_message_sent_right_after_its_node_dies_goes_out_through_another_in_seconds() {
    let world = World::new();
    let nats = world.nats("nats", 1);
    let mut a = world.cluster_relay("node-a", &nats, None).unwrap();
    let b = world.cluster_relay("node-b", &nats, Some(&a)).unwrap();
    // The default keep-alive (20 s): only the unanswered request can reveal the death.
    let alice = registered_on(&world, &[&a, &b], "alice").await;
    let bob = registered_on(&world, &[&b, &a], "bob").await;
    assert_eq!(send_and_settle(&alice, "user:bob", "before").await["state"], "delivered");
    wait_texts(&bob, "user:alice", 1, LIMIT).await;

    a.kill9();
    let started = std::time::Instant::now();
    alice.call("messages.send", json!({"to": "user:bob", "text": "right after"})).await.unwrap();
    // A request silent for 3 s gives the node up; the next candidate answers at once. Were
    // the death noticed only by the request's own timeout (15 s) or the idle timeout, this
    // would fail.
    let got = wait_texts(&bob, "user:alice", 2, Duration::from_secs(10)).await;
    assert_eq!(got, ["before", "right after"]);
    eprintln!("delivered {:?} after the node's death", started.elapsed());
    let status = alice.call("system.status", json!({})).await.unwrap();
    assert_eq!(status["relay"]["state"], "connected");
}

#[tokio::test]
async fn cluster_losing_a_nats_server_loses_nothing_and_a_full_restart_keeps_mailboxes() {
    let world = World::new();
    let mut nats = world.nats("nats", 3);
    let mut a = world.cluster_relay("node-a", &nats, None).unwrap();
    let mut b = world.cluster_relay("node-b", &nats, Some(&a)).unwrap();
    let alice = registered_on(&world, &[&a, &b], "alice").await;
    let mut bob = registered_on(&world, &[&b, &a], "bob").await;

    let mut accepted = Vec::new();
    for i in 0..120 {
        if i == 40 {
            // One of three JetStream servers dies: quorum holds, the relay nodes'
            // connections move to the others.
            nats.servers[0].kill9();
        }
        if i == 80 {
            nats.servers[0].restart().unwrap();
        }
        let text = format!("nats loss {i:03}");
        if alice.call("messages.send", json!({"to": "user:bob", "text": text})).await.is_ok() {
            accepted.push(text);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = wait_texts(&bob, "user:alice", 120, Duration::from_secs(180)).await;
    assert_eq!(got, accepted, "every accepted message once, in order");

    // bob goes away; alice's next messages wait in his mailbox; then everything stops,
    // relay nodes and NATS servers alike, and starts again.
    bob.stop(Duration::from_secs(5)).unwrap();
    for i in 0..20 {
        alice
            .call("messages.send", json!({"to": "user:bob", "text": format!("kept {i:02}")}))
            .await
            .unwrap();
    }
    wait_drained(&alice).await;
    a.stop();
    b.stop();
    for s in &mut nats.servers {
        s.kill9();
    }
    for s in &mut nats.servers {
        s.restart().unwrap();
    }
    a.restart().unwrap();
    b.restart().unwrap();
    bob = world.daemon("bob").with_relays(&[&b, &a]).start().unwrap();
    let got = wait_texts(&bob, "user:alice", 140, Duration::from_secs(180)).await;
    let kept: Vec<String> = (0..20).map(|i| format!("kept {i:02}")).collect();
    assert_eq!(got[120..], kept[..], "the mailbox survived a restart of everything");
    assert_eq!(texts(&bob, "user:alice").await.len(), 140, "and nothing twice");
}

/// Names in a relay node's local blob directory (uploads in progress).
fn local_blobs(relay: &Relay) -> Vec<String> {
    std::fs::read_dir(relay.data_dir.join("blobs"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn cluster_files_and_calls_work_across_nodes() {
    use tokio_seqpacket::UnixSeqpacket;

    use crate::calls::{call_event, stream};

    let world = World::new();
    let nats = world.nats("nats", 3);
    let a = world.cluster_relay("node-a", &nats, None).unwrap();
    let b = world.cluster_relay("node-b", &nats, Some(&a)).unwrap();
    let alice = registered_on(&world, &[&a], "alice").await;
    let bob = registered_on(&world, &[&b], "bob").await;
    bob.call("settings.set", json!({"auto_download": {"wifi": false, "cellular": false}}))
        .await
        .unwrap();

    // A file uploaded to node a is downloaded from node b, intact.
    let mut data = vec![0u8; 3 * 1024 * 1024 + 17];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut data);
    let path = world.path().join("report.pdf");
    std::fs::write(&path, &data).unwrap();
    let sent = alice.call("files.send", json!({"to": "user:bob", "path": path})).await.unwrap();
    let id = sent["message"]["message_id"].as_str().unwrap().to_owned();
    eventually(LIMIT, "the file message at bob", || async {
        bob.call("messages.get", json!({"message_id": id})).await.ok()
    })
    .await
    .unwrap();
    // Complete blobs live in the shared store, not on the node that took the upload.
    assert_eq!(local_blobs(&a), Vec::<String>::new());
    let dest = world.path().join("at-bob.pdf");
    let r = bob.call("files.download", json!({"message_id": id, "dest": dest})).await.unwrap();
    assert_eq!(r["size"], data.len());
    assert_eq!(std::fs::read(&dest).unwrap(), data);

    // A call from a device on node a to one on node b: media flows both ways.
    let ac = alice.client().await.unwrap();
    let mut a_events = ac.take_events().unwrap();
    ac.call_value("events.subscribe", json!({"kinds": ["call.state"]})).await.unwrap();
    let bc = bob.client().await.unwrap();
    let mut b_events = bc.take_events().unwrap();
    bc.call_value("events.subscribe", json!({"kinds": ["call.incoming", "call.state"]}))
        .await
        .unwrap();
    let started =
        ac.call_value("calls.start", json!({"to": "user:bob", "media": "audio"})).await.unwrap();
    let call_id = started["call"]["call_id"].as_str().unwrap().to_owned();
    call_event(&mut b_events, "call.incoming", Some(&call_id)).await;
    let accepted = bc.call_value("calls.accept", json!({"call_id": call_id})).await.unwrap();
    let e = call_event(&mut a_events, "call.state", Some(&call_id)).await;
    assert_eq!(e["call"]["state"], "active");
    let a_sock = UnixSeqpacket::connect(started["media_socket"].as_str().unwrap()).await.unwrap();
    let b_sock = UnixSeqpacket::connect(accepted["media_socket"].as_str().unwrap()).await.unwrap();
    // Whoever can read the bus between the nodes (its operator) sees the media as the
    // relay handles it, after QUIC's decryption: it must be ciphertext there.
    let servers: Vec<async_nats::ServerAddr> =
        nats.url().split(',').map(|u| u.parse().unwrap()).collect();
    let bus = async_nats::connect(servers).await.unwrap();
    let mut tap = bus.subscribe("letstalk.dev.>").await.unwrap();
    bus.flush().await.unwrap();
    let got = stream(&a_sock, &b_sock, 100, 50, 160).await;
    assert!(got.len() >= 99, "only {} of 100 frames crossed the nodes", got.len());
    assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order: {got:?}");
    let back = stream(&b_sock, &a_sock, 50, 50, 160).await;
    assert!(back.len() >= 49, "only {} of 50 frames came back", back.len());
    let mut media = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), tap.next()).await {
        if m.payload.first() == Some(&b'M') {
            media.push(m.payload);
        }
    }
    assert!(media.len() >= 148, "only {} media datagrams seen on the bus", media.len());
    let plain = crate::calls::MARKER;
    for m in &media {
        assert!(!m.windows(plain.len()).any(|w| w == plain), "a frame in the clear on the bus");
    }
    let ended = bc.call_value("calls.hangup", json!({"call_id": call_id})).await.unwrap();
    assert_eq!(ended["call"]["end_reason"], "hangup");
    let mut e = call_event(&mut a_events, "call.state", Some(&call_id)).await;
    while e["call"]["state"] == "active" {
        e = call_event(&mut a_events, "call.state", Some(&call_id)).await;
    }
    assert_eq!(
        (e["call"]["state"].as_str(), e["call"]["end_reason"].as_str()),
        (Some("ended"), Some("hangup"))
    );
}
