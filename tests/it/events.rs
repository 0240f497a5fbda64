//! Events: persisted with their change, replayed with `since` (also across restarts and
//! kill -9), and a slow subscriber never stalls anyone else.

use std::time::Duration;

use serde_json::json;

use letstalk_tests::{World, error_of, next_event};

use crate::Raw;

/// Makes `n` settings.changed events, pipelined: each call sets a value that differs from
/// every other call of the same batch, so each one is a change.
async fn make_events(c: &letstalk_tests::Client, batch: usize, n: usize) {
    let calls = (0..n).map(|i| {
        let wifi = 5 + ((batch * n + i) % 3000) as u32;
        c.call_value("settings.set", json!({"keepalive_s": {"wifi": wifi}}))
    });
    for r in futures::future::join_all(calls).await {
        r.unwrap();
    }
}

#[tokio::test]
async fn a_stalled_subscriber_overflows_alone_and_catches_up_with_since() {
    /// Most events to make while waiting for the stalled one's overflow.
    const CAP: usize = 40_000;
    let world = World::new();
    let d = world.daemon("alice").start().unwrap();

    // The stalled one subscribes and then does not read.
    let mut stalled = Raw::connect(d.socket()).await;
    let r = stalled.ask(r#"{"jsonrpc":"2.0","id":1,"method":"events.subscribe"}"#).await;
    let start = r["result"]["last_seq"].as_u64().unwrap();

    let good = d.client().await.unwrap();
    let mut good_events = good.take_events().unwrap();
    good.call_value("events.subscribe", json!({})).await.unwrap();

    // The good subscriber reads in the background until it has the last event made.
    let (last_tx, mut last_rx) = tokio::sync::oneshot::channel::<u64>();
    let reader = tokio::spawn(async move {
        let mut seqs: Vec<u64> = Vec::new();
        let mut last = None;
        while last.is_none() || seqs.last() != last.as_ref() {
            tokio::select! {
                l = &mut last_rx, if last.is_none() => last = Some(l.unwrap()),
                e = next_event(&mut good_events, Duration::from_secs(30)) => {
                    let e = e.unwrap_or_else(|e| panic!("after {} events: {e}", seqs.len()));
                    assert_eq!(e["kind"], "settings.changed");
                    seqs.push(e["seq"].as_u64().unwrap());
                }
            }
        }
        seqs
    });
    // Events are made until the daemon gives up on the stalled one: how many fit in its
    // queue and the socket's buffers depends on the kernel and on timing, not on us.
    let writer = d.client().await.unwrap();
    let mut made = 0;
    while !d.logs().contains("subscriber too slow") {
        assert!(made < CAP, "the stalled subscriber never overflowed in {CAP} events");
        make_events(&writer, made / 200, 200).await;
        made += 200;
    }
    last_tx.send(start + made as u64).unwrap();
    let good_seqs = reader.await.unwrap();
    assert_eq!(good_seqs, ((start + 1)..=(start + made as u64)).collect::<Vec<_>>());

    // Now the stalled one reads: events in order, then one overflow naming its last seq.
    let mut got = Vec::new();
    let overflow_seq = loop {
        let line = stalled.line().await;
        let params = &line["params"];
        match params["kind"].as_str() {
            Some("events.overflow") => break params["seq"].as_u64().unwrap(),
            Some("settings.changed") => got.push(params["seq"].as_u64().unwrap()),
            other => panic!("unexpected {other:?}: {line}"),
        }
    };
    assert!(got.len() < made, "the stalled subscriber never overflowed");
    assert_eq!(got.last().copied().unwrap_or(start), overflow_seq);
    // Re-subscribe with since and miss nothing.
    let line = json!({"jsonrpc": "2.0", "id": 2, "method": "events.subscribe", "params": {"since": overflow_seq}});
    let r = stalled.ask(&line.to_string()).await;
    assert_eq!(r["result"]["last_seq"].as_u64(), Some(start + made as u64));
    while got.last().copied() != Some(start + made as u64) {
        let line = stalled.line().await;
        got.push(line["params"]["seq"].as_u64().unwrap());
    }
    assert_eq!(got, ((start + 1)..=(start + made as u64)).collect::<Vec<_>>());
}

#[tokio::test]
async fn since_replays_across_restart_and_kill_9() {
    let world = World::new();
    let spec = world.daemon("alice");
    let mut d = spec.start().unwrap();
    let c = d.client().await.unwrap();
    for i in 0..5 {
        c.call_value("settings.set", json!({"keepalive_s": {"wifi": 10 + i}})).await.unwrap();
    }
    drop(c);
    let (status, _) = d.stop(Duration::from_secs(5)).unwrap();
    assert!(status.success());

    let mut d = spec.start().unwrap();
    let c = d.client().await.unwrap();
    let mut ev = c.take_events().unwrap();
    let r = c.call_value("events.subscribe", json!({"since": 2})).await.unwrap();
    assert_eq!(r["last_seq"], 5);
    for seq in 3..=5 {
        let e = next_event(&mut ev, Duration::from_secs(10)).await.unwrap();
        assert_eq!((e["seq"].as_u64(), &e["kind"]), (Some(seq), &json!("settings.changed")));
        assert_eq!(e["settings"]["keepalive_s"]["wifi"], 10 + seq - 1);
        assert!(e["at"].as_i64().unwrap() > 1_700_000_000_000);
    }
    // A committed change survives kill -9, with its event.
    c.call_value("settings.set", json!({"read_receipts": false})).await.unwrap();
    let e = next_event(&mut ev, Duration::from_secs(10)).await.unwrap();
    assert_eq!(e["seq"], 6);
    drop(c);
    d.kill9();
    let d = spec.start().unwrap();
    assert_eq!(d.call("settings.get", json!({})).await.unwrap()["read_receipts"], false);
    let c = d.client().await.unwrap();
    let mut ev = c.take_events().unwrap();
    c.call_value("events.subscribe", json!({"since": 5})).await.unwrap();
    let e = next_event(&mut ev, Duration::from_secs(10)).await.unwrap();
    assert_eq!((e["seq"].as_u64(), &e["settings"]["read_receipts"]), (Some(6), &json!(false)));
}

#[tokio::test]
async fn subscribe_filters_kinds_unsubscribes_and_refuses_an_impossible_since() {
    let world = World::new();
    let d = world.daemon("alice").start().unwrap();
    let c = d.client().await.unwrap();
    let mut ev = c.take_events().unwrap();
    // A `since` beyond the newest event cannot be honoured without a resync.
    let (code, kind, _) = error_of(d.call("events.subscribe", json!({"since": 99})).await);
    assert_eq!((code, kind.as_deref()), (-32010, Some("resync_required")));

    c.call_value("events.subscribe", json!({"kinds": ["connection.state"]})).await.unwrap();
    c.call_value("settings.set", json!({"typing": false})).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), ev.recv()).await.is_err(),
        "filtered kind delivered"
    );

    c.call_value("events.subscribe", json!({"since": 0, "kinds": ["settings.changed"]}))
        .await
        .unwrap();
    let e = next_event(&mut ev, Duration::from_secs(10)).await.unwrap();
    assert_eq!((e["seq"].as_u64(), &e["kind"]), (Some(1), &json!("settings.changed")));

    assert_eq!(c.call_value("events.unsubscribe", json!({})).await.unwrap(), json!({}));
    c.call_value("settings.set", json!({"typing": true})).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), ev.recv()).await.is_err(),
        "event after unsubscribe"
    );
}
