//! Hostile input: random bytes and malicious JSON from many connections at once; the
//! daemon answers what it can, drops nothing it accepted, and keeps serving.

use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use letstalk_tests::World;

fn hostile_lines(rng: &mut impl Rng) -> Vec<Vec<u8>> {
    let deep_array = "[".repeat(100_000);
    let deep_object = "{\"a\":".repeat(50_000);
    let mut lines: Vec<Vec<u8>> = vec![
        deep_array.into_bytes(),
        deep_object.into_bytes(),
        b"{\"jsonrpc\":\"2.0\",\"id\":1e999999,\"method\":\"system.status\"}".to_vec(),
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"settings.set\",\"params\":{\"keepalive_s\":{\"wifi\":99999999999999999999}}}".to_vec(),
        b"{\"jsonrpc\":\"2.0\",\"id\":\"\xff\xfe\",\"method\":\"system.status\"}".to_vec(),
        b"\x00\x00\x00\x00".to_vec(),
        b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"events.subscribe\",\"params\":{\"since\":-1}}".to_vec(),
        b"{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"events.subscribe\",\"params\":{\"kinds\":[null,1,{}]}}".to_vec(),
        format!("[{}]", vec!["{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"system.status\"}"; 2000].join(",")).into_bytes(),
        b"{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":\"system.hello\",\"params\":{\"client\":\"".iter().copied()
            .chain(std::iter::repeat_n(b'A', 900_000)).chain(b"\"}}".iter().copied()).collect(),
    ];
    for _ in 0..20 {
        let n = rng.random_range(1..5000);
        let mut bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
        if rng.random_bool(0.5) {
            bytes.retain(|b| *b != b'\n');
        }
        lines.push(bytes);
    }
    lines
}

#[tokio::test]
async fn two_hundred_hostile_connections_then_it_still_answers() {
    let world = World::new();
    let mut d = world.daemon("alice").start().unwrap();
    let socket = d.socket().to_path_buf();
    let mut tasks = Vec::new();
    for seed in 0..200u64 {
        let socket = socket.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut stream = UnixStream::connect(&socket).await.unwrap();
            let (mut r, mut w) = stream.split();
            let lines = hostile_lines(&mut rng);
            let pick = rng.random_range(0..lines.len());
            let writer = async {
                for (i, line) in lines.iter().enumerate() {
                    if i % 3 != (seed as usize) % 3 && i != pick {
                        continue;
                    }
                    if w.write_all(line).await.is_err() || w.write_all(b"\n").await.is_err() {
                        break;
                    }
                }
                let _ = w.shutdown().await;
            };
            // Drain answers concurrently so the daemon is never blocked on us.
            let reader = async {
                let mut sink = Vec::new();
                let _ = r.read_to_end(&mut sink).await;
            };
            tokio::join!(writer, reader);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(d.is_running(), "the daemon died:\n{}", d.logs());
    let c = d.client().await.unwrap();
    let st = c.call_value("system.status", json!({})).await.unwrap();
    assert!(st["version"].is_string());
    // Hostile settings changed nothing.
    assert_eq!(c.call_value("settings.get", json!({})).await.unwrap()["keepalive_s"]["wifi"], 25);
}

/// The hostile peer the attacker tests use speaks the protocol well enough to reach a
/// daemon both ways: what it sends is shown, and what the daemon sends back (the
/// delivery receipt, a reply) it can read. Without this, an attack test that "changes
/// nothing" could pass only because its crafted content never arrived.
#[tokio::test]
async fn the_hostile_peer_reaches_a_daemon_both_ways() {
    use letstalk_tests::peer::Peer;
    use letstalk_tests::{registered, wait_texts};

    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let mut mallory = Peer::register(&relay, "mallory").await.unwrap();

    let id = uuid_like(1);
    mallory
        .send_content("alice", json!({"t": "text", "id": id, "at": 1, "text": "from the peer"}))
        .await
        .unwrap();
    let shown = wait_texts(&alice, "user:mallory", 1, std::time::Duration::from_secs(20)).await;
    assert_eq!(shown, vec!["from the peer".to_owned()]);
    let receipt = mallory
        .recv_matching(std::time::Duration::from_secs(20), |from, c| {
            from == "alice" && c["t"] == "receipt"
        })
        .await
        .unwrap()
        .expect("alice's daemon sent no receipt");
    assert_eq!(
        (receipt["state"].as_str(), receipt["ids"][0].as_str()),
        (Some("delivered"), Some(id.as_str()))
    );

    alice.call("messages.send", json!({"to": "user:mallory", "text": "a reply"})).await.unwrap();
    let reply = mallory
        .recv_matching(std::time::Duration::from_secs(20), |_, c| c["t"] == "text")
        .await
        .unwrap()
        .expect("the reply never reached the peer");
    assert_eq!(reply["text"], "a reply");
}

fn uuid_like(n: u8) -> String {
    format!("0190a000-0000-7000-8000-0000000000{n:02x}")
}
