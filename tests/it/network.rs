//! Moving between networks, in network namespaces the test creates: a "phone"
//! namespace with two links (think Wi-Fi and cellular) to a "network" namespace where the
//! relay and the other user live. Needs root, like any test that makes namespaces.

use std::time::{Duration, Instant};

use serde_json::json;

use letstalk_tests::{
    Daemon, Netns, PASSWORD, World, eventually, next_event, texts, wait_connected,
};

async fn register(d: &Daemon, name: &str) {
    d.call(
        "account.register",
        json!({"user_id": name, "email": format!("{name}@example.org"), "nickname": name, "password": PASSWORD}),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn switching_networks_mid_conversation_loses_nothing() {
    let phone = Netns::new("phone").expect("network namespaces (run the tests as root)");
    let net = Netns::new("net").unwrap();
    // Two links between the phone and the network, and the relay's own address.
    for (dev, gw) in [("wlan0", "gw-a"), ("wwan0", "gw-b")] {
        phone
            .ip(&["link", "add", dev, "type", "veth", "peer", "name", gw, "netns", &net.name])
            .unwrap();
    }
    for args in [
        &["addr", "add", "10.61.1.2/24", "dev", "wlan0"][..],
        &["addr", "add", "10.61.2.2/24", "dev", "wwan0"],
        &["link", "set", "wlan0", "up"],
        &["link", "set", "wwan0", "up"],
        &["route", "add", "default", "via", "10.61.1.1", "dev", "wlan0"],
    ] {
        phone.ip(args).unwrap();
    }
    for args in [
        &["addr", "add", "10.61.1.1/24", "dev", "gw-a"][..],
        &["addr", "add", "10.61.2.1/24", "dev", "gw-b"],
        &["addr", "add", "10.61.9.1/32", "dev", "lo"],
        &["link", "set", "gw-a", "up"],
        &["link", "set", "gw-b", "up"],
    ] {
        net.ip(args).unwrap();
    }

    let world = World::new();
    let relay = world.relay_in("relay", &net, "10.61.9.1:0").unwrap();
    let alice = world.daemon("alice").in_netns(&phone).with_relay_at_ip(&relay).start().unwrap();
    let bob = world.daemon("bob").in_netns(&net).with_relay_at_ip(&relay).start().unwrap();
    for (d, name) in [(&alice, "alice"), (&bob, "bob")] {
        wait_connected(d).await;
        register(d, name).await;
    }
    let st = alice.call("system.status", json!({})).await.unwrap();
    assert_eq!(st["network"]["interface"], "wlan0");

    let a = alice.client().await.unwrap();
    let mut changes = a.take_events().unwrap();
    a.call_value("events.subscribe", json!({"kinds": ["network.changed"]})).await.unwrap();

    let limit = Duration::from_secs(30);
    for i in 0..20 {
        alice
            .call("messages.send", json!({"to": "user:bob", "text": format!("m{i}")}))
            .await
            .unwrap();
    }
    eventually(limit, "20 before the switch", || async {
        (texts(&bob, "user:alice").await.len() == 20).then_some(())
    })
    .await
    .unwrap();

    // Wi-Fi goes away; the cellular link carries the default route. The conversation
    // goes on meanwhile.
    let switched = Instant::now();
    phone.ip(&["link", "set", "wlan0", "down"]).unwrap();
    phone.ip(&["route", "add", "default", "via", "10.61.2.1", "dev", "wwan0"]).unwrap();
    for i in 20..40 {
        alice
            .call("messages.send", json!({"to": "user:bob", "text": format!("m{i}")}))
            .await
            .unwrap();
    }
    let first_after = eventually(limit, "traffic after the switch", || async {
        (texts(&bob, "user:alice").await.len() > 20).then(|| switched.elapsed())
    })
    .await
    .unwrap();
    let all = eventually(limit, "all 40", || async {
        let t = texts(&bob, "user:alice").await;
        (t.len() >= 40).then_some(t)
    })
    .await
    .unwrap();
    let expected: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    assert_eq!(all, expected, "every message once, in order");
    println!("traffic flowed again {} ms after the switch", first_after.as_millis());
    assert!(first_after < Duration::from_secs(3), "resumed after {first_after:?}");

    let change = next_event(&mut changes, Duration::from_secs(10)).await.unwrap();
    assert_eq!(change["network"]["interface"], "wwan0");
    // One change, one event.
    assert!(next_event(&mut changes, Duration::from_secs(2)).await.is_err());
    let report = alice.call("diagnostics.preview", json!({})).await.unwrap();
    let history: Vec<&str> = report["report"]["network_history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["interface"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(history, ["wlan0", "wwan0"]);
}
