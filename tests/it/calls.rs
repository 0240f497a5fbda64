//! Calls through real processes: signalling, media frames through the relay, hang-up
//! from either side, missed and busy calls, the call log, and bad input.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_seqpacket::UnixSeqpacket;

use letstalk_tests::{World, error_of, eventually, next_event, registered, registered_with};

/// In every frame: what must never be seen outside the two daemons.
pub(crate) const MARKER: &[u8; 16] = b"PLAINTEXT-FRAME!";

/// The next event of `kind` for `call_id`.
pub(crate) async fn call_event(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Value>,
    kind: &str,
    call_id: Option<&str>,
) -> Value {
    loop {
        let e = next_event(events, Duration::from_secs(60)).await.unwrap();
        if e["kind"] == kind && call_id.is_none_or(|id| e["call"]["call_id"] == id) {
            return e;
        }
    }
}

/// An audio-sized frame (160 bytes): track 0, the sequence number, the marker.
fn frame(track: u8, seq: u32, len: usize) -> Vec<u8> {
    let mut f = vec![track];
    f.extend_from_slice(&seq.to_be_bytes());
    while f.len() < len {
        f.extend_from_slice(MARKER);
    }
    f.truncate(len);
    f
}

/// Sends `n` frames at `fps` and collects what the other side receives meanwhile (and
/// for half a second after); returns the sequence numbers received, in arrival order.
pub(crate) async fn stream(
    from: &UnixSeqpacket,
    to: &UnixSeqpacket,
    n: u32,
    fps: u32,
    len: usize,
) -> Vec<u32> {
    let period = Duration::from_secs(1) / fps;
    let send = async {
        let start = Instant::now();
        for seq in 0..n {
            from.send(&frame(0, seq, len)).await.unwrap();
            tokio::time::sleep_until((start + period * (seq + 1)).into()).await;
        }
    };
    let recv = async {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 2048];
        let deadline = Instant::now() + period * n + Duration::from_millis(500);
        while let Ok(Ok(info)) = tokio::time::timeout_at(deadline.into(), to.recv(&mut buf)).await {
            let p = &buf[..info.bytes_read()];
            assert_eq!(p, frame(0, u32::from_be_bytes(p[1..5].try_into().unwrap()), len));
            got.push(u32::from_be_bytes(p[1..5].try_into().unwrap()));
        }
        got
    };
    let ((), got) = tokio::join!(send, recv);
    got
}

#[tokio::test]
async fn audio_frames_arrive_in_order_and_hangup_from_either_side_ends_both() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let bob = registered(&world, &relay, "bob").await;
    let a = alice.client().await.unwrap();
    let mut a_events = a.take_events().unwrap();
    a.call_value("events.subscribe", json!({"kinds": ["call.state"]})).await.unwrap();
    let b = bob.client().await.unwrap();
    let mut b_events = b.take_events().unwrap();
    b.call_value("events.subscribe", json!({"kinds": ["call.incoming", "call.state"]}))
        .await
        .unwrap();

    for (round, hangs_up) in ["bob", "alice"].into_iter().enumerate() {
        let started =
            a.call_value("calls.start", json!({"to": "user:bob", "media": "audio"})).await.unwrap();
        let call = &started["call"];
        assert_eq!(
            (call["state"].as_str(), call["direction"].as_str(), call["peer"].as_str()),
            (Some("ringing"), Some("out"), Some("bob"))
        );
        let id = call["call_id"].as_str().unwrap().to_owned();
        let a_path = started["media_socket"].as_str().unwrap().to_owned();
        let mode = std::fs::metadata(&a_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "media socket mode");

        let incoming = call_event(&mut b_events, "call.incoming", Some(&id)).await;
        assert_eq!(
            (incoming["call"]["peer"].as_str(), incoming["call"]["media"].as_str()),
            (Some("alice"), Some("audio"))
        );
        let accepted = b.call_value("calls.accept", json!({"call_id": id})).await.unwrap();
        assert_eq!(accepted["call"]["state"], "active");
        let b_path = accepted["media_socket"].as_str().unwrap().to_owned();
        let e = call_event(&mut a_events, "call.state", Some(&id)).await;
        assert_eq!(e["call"]["state"], "active");

        let a_sock = UnixSeqpacket::connect(&a_path).await.unwrap();
        let b_sock = UnixSeqpacket::connect(&b_path).await.unwrap();
        if round == 0 {
            // 200 audio-sized frames at 50 per second, alice → bob.
            let got = stream(&a_sock, &b_sock, 200, 50, 160).await;
            assert!(got.len() >= 198, "only {} of 200 frames arrived", got.len());
            assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order: {got:?}");
            // And the other way.
            let back = stream(&b_sock, &a_sock, 50, 50, 160).await;
            assert!(back.len() >= 49, "only {} of 50 frames came back", back.len());
            // Bad frames from a frontend are dropped, the call goes on.
            a_sock.send(&[9, 1, 2, 3]).await.unwrap();
            a_sock.send(&vec![0u8; 1200]).await.unwrap();
            let after = stream(&a_sock, &b_sock, 10, 50, 1101).await;
            assert!(after.len() >= 9, "video-sized frames after bad ones: {after:?}");
        }

        let (hanger, other_events) =
            if hangs_up == "bob" { (&b, &mut a_events) } else { (&a, &mut b_events) };
        let ended = hanger.call_value("calls.hangup", json!({"call_id": id})).await.unwrap();
        assert_eq!(
            (ended["call"]["state"].as_str(), ended["call"]["end_reason"].as_str()),
            (Some("ended"), Some("hangup"))
        );
        // (bob's own accept is a `call.state` too: skip to the end.)
        let mut e = call_event(other_events, "call.state", Some(&id)).await;
        while e["call"]["state"] == "active" {
            e = call_event(other_events, "call.state", Some(&id)).await;
        }
        assert_eq!(
            (e["call"]["state"].as_str(), e["call"]["end_reason"].as_str()),
            (Some("ended"), Some("hangup"))
        );
        // The media sockets go away on both sides.
        eventually(Duration::from_secs(10), "media sockets removed", || async {
            (!std::path::Path::new(&a_path).exists() && !std::path::Path::new(&b_path).exists())
                .then_some(())
        })
        .await
        .unwrap();
        let (_, kind, _) = error_of(alice.call("calls.hangup", json!({"call_id": id})).await);
        assert_eq!(kind.as_deref(), Some("invalid_state"));
    }

    // The call log on both sides: peer, direction, start, answer, end, duration.
    for (d, peer, direction) in [(&alice, "bob", "out"), (&bob, "alice", "in")] {
        let log = d.call("calls.list", json!({})).await.unwrap();
        let calls = log["calls"].as_array().unwrap();
        assert_eq!(calls.len(), 2);
        for c in calls {
            assert_eq!(
                (c["peer"].as_str(), c["direction"].as_str()),
                (Some(peer), Some(direction))
            );
            assert_eq!(
                (c["state"].as_str(), c["end_reason"].as_str()),
                (Some("ended"), Some("hangup"))
            );
            assert!(c["answered_at"].as_i64().unwrap() >= c["started_at"].as_i64().unwrap());
            assert!(c["ended_at"].as_i64().unwrap() >= c["answered_at"].as_i64().unwrap());
            assert!(c["duration_s"].is_u64());
        }
    }
    // That the relay only ever handles the frames as ciphertext is checked where its
    // bytes can be read: on the bus between a cluster's nodes (`cluster.rs`).
}

#[tokio::test]
async fn an_unanswered_call_is_missed_on_both_logs_and_a_second_call_is_busy() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let quick = |name: &str| world.daemon(name).arg("--ring-timeout-s").arg("5");
    let alice = registered_with(quick("alice"), &relay).await;
    let bob = registered_with(quick("bob"), &relay).await;
    let carol = registered_with(quick("carol"), &relay).await;
    let b = bob.client().await.unwrap();
    let mut b_events = b.take_events().unwrap();
    b.call_value("events.subscribe", json!({"kinds": ["call.incoming", "call.state"]}))
        .await
        .unwrap();

    let started =
        alice.call("calls.start", json!({"to": "user:bob", "media": "video"})).await.unwrap();
    let id = started["call"]["call_id"].as_str().unwrap().to_owned();
    call_event(&mut b_events, "call.incoming", Some(&id)).await;
    // alice is in a call already.
    let (_, kind, _) =
        error_of(alice.call("calls.start", json!({"to": "user:carol", "media": "audio"})).await);
    assert_eq!(kind.as_deref(), Some("conflict"));
    // carol calls bob while bob's phone rings: busy.
    let c2 = carol.call("calls.start", json!({"to": "user:bob", "media": "audio"})).await.unwrap();
    let id2 = c2["call"]["call_id"].as_str().unwrap().to_owned();
    eventually(Duration::from_secs(20), "carol's call busy", || async {
        let log = carol.call("calls.list", json!({})).await.ok()?;
        (log["calls"][0]["end_reason"] == "busy").then_some(())
    })
    .await
    .unwrap();
    let e = call_event(&mut b_events, "call.state", Some(&id2)).await;
    assert_eq!(e["call"]["end_reason"], "busy");

    // Nobody answers alice's call: missed on both sides.
    for d in [&alice, &bob] {
        eventually(Duration::from_secs(30), "missed", || async {
            let log = d.call("calls.list", json!({})).await.ok()?;
            let c = log["calls"].as_array()?.iter().find(|c| c["call_id"] == id.as_str())?.clone();
            (c["state"] == "ended" && c["end_reason"] == "missed").then_some(c)
        })
        .await
        .unwrap();
    }
    let c = &bob.call("calls.list", json!({"limit": 1})).await.unwrap()["calls"][0];
    assert_eq!((c["answered_at"].clone(), c["duration_s"].as_u64()), (Value::Null, Some(0)));
    let (_, kind, _) = error_of(bob.call("calls.accept", json!({"call_id": id})).await);
    assert_eq!(kind.as_deref(), Some("invalid_state"));

    // A rejected call.
    let started =
        alice.call("calls.start", json!({"to": "user:bob", "media": "audio"})).await.unwrap();
    let id3 = started["call"]["call_id"].as_str().unwrap().to_owned();
    call_event(&mut b_events, "call.incoming", Some(&id3)).await;
    let r = bob.call("calls.reject", json!({"call_id": id3})).await.unwrap();
    assert_eq!(r["call"]["end_reason"], "rejected");
    eventually(Duration::from_secs(20), "rejected on alice's side", || async {
        let log = alice.call("calls.list", json!({"limit": 1})).await.ok()?;
        (log["calls"][0]["end_reason"] == "rejected").then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn bad_call_requests_get_clear_errors() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let check = |r, code: i64, kind: Option<&str>, field: Option<&str>| {
        let got = error_of(r);
        assert_eq!((got.0, got.1.as_deref(), got.2.as_deref()), (code, kind, field));
    };
    check(
        alice.call("calls.start", json!({"to": "bob", "media": "audio"})).await,
        -32602,
        None,
        Some("to"),
    );
    check(
        alice.call("calls.start", json!({"to": "user:bob", "media": "smell"})).await,
        -32602,
        None,
        Some("media"),
    );
    check(
        alice.call("calls.start", json!({"to": "user:alice", "media": "audio"})).await,
        -32602,
        None,
        Some("to"),
    );
    check(
        alice.call("calls.accept", json!({"call_id": "nope"})).await,
        -32002,
        Some("not_found"),
        None,
    );
    check(
        alice.call("calls.hangup", json!({"call_id": "nope"})).await,
        -32002,
        Some("not_found"),
        None,
    );
    check(alice.call("calls.list", json!({"limit": 0})).await, -32602, None, Some("limit"));
    let started =
        alice.call("calls.start", json!({"to": "user:bob", "media": "audio"})).await.unwrap();
    let id = started["call"]["call_id"].as_str().unwrap();
    // One's own outgoing call cannot be accepted or rejected.
    check(
        alice.call("calls.accept", json!({"call_id": id})).await,
        -32009,
        Some("invalid_state"),
        None,
    );
    check(
        alice.call("calls.reject", json!({"call_id": id})).await,
        -32009,
        Some("invalid_state"),
        None,
    );
    alice.call("calls.hangup", json!({"call_id": id})).await.unwrap();
    assert_eq!(
        alice.call("calls.list", json!({})).await.unwrap()["calls"].as_array().unwrap().len(),
        1
    );
}
