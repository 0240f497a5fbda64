//! Accounts, profiles, contacts and presence through real relays and daemons.

use std::time::Duration;

use serde_json::{Value, json};

use letstalk_tests::{
    PASSWORD, World, error_of, eventually, files_containing, next_event, registered, wait_connected,
};

#[tokio::test]
async fn register_conflicts_passwords_and_login_moves_the_account() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let info = alice.call("account.info", json!({})).await.unwrap();
    assert_eq!(
        (info["email"].as_str(), info["nickname"].as_str()),
        (Some("alice@example.org"), Some("alice nick"))
    );
    assert!(info["fingerprint"].as_str().is_some_and(|f| !f.is_empty()));
    let st = alice.call("system.status", json!({})).await.unwrap();
    assert_eq!(st["user_id"], "alice");
    assert!(st["relay"]["rtt_ms"].is_u64(), "{st}");

    // Taken, also with different case.
    let other = world.daemon("other").with_relay(&relay).start().unwrap();
    wait_connected(&other).await;
    for id in ["alice", "ALICE"] {
        let (_, kind, _) = error_of(
            other
                .call("account.register", json!({"user_id": id, "email": "x@example.org", "nickname": "x", "password": PASSWORD}))
                .await,
        );
        assert_eq!(kind.as_deref(), Some("conflict"), "{id}");
    }
    // Validation, field by field.
    for (params, field) in [
        (
            json!({"user_id": "1x", "email": "x@example.org", "nickname": "x", "password": PASSWORD}),
            "user_id",
        ),
        (
            json!({"user_id": "xavier", "email": "nope", "nickname": "x", "password": PASSWORD}),
            "email",
        ),
        (
            json!({"user_id": "xavier", "email": "x@example.org", "nickname": "x", "password": "short"}),
            "password",
        ),
        (json!({"user_id": "xavier", "email": "x@example.org", "nickname": "x"}), "password"),
        (
            json!({"user_id": "xavier", "email": "x@example.org", "nickname": "x", "password": PASSWORD, "avatar": "/etc/hostname"}),
            "avatar",
        ),
    ] {
        let (code, _, f) = error_of(other.call("account.register", params).await);
        assert_eq!((code, f.as_deref()), (-32602, Some(field)));
    }
    // A wrong password.
    let (_, kind, _) = error_of(
        other
            .call("account.login", json!({"user_id": "alice", "password": "wrong password"}))
            .await,
    );
    assert_eq!(kind.as_deref(), Some("auth_failed"));

    // Change the password; the old one stops working, the new one moves the account.
    let c = alice.client().await.unwrap();
    let mut alice_events = c.take_events().unwrap();
    c.call_value("events.subscribe", json!({"kinds": ["account.logged_out"]})).await.unwrap();
    let (_, kind, _) = error_of(
        alice
            .call(
                "account.change_password",
                json!({"old_password": "not it at all", "new_password": "another good one"}),
            )
            .await,
    );
    assert_eq!(kind.as_deref(), Some("auth_failed"));
    alice
        .call(
            "account.change_password",
            json!({"old_password": PASSWORD, "new_password": "another good one"}),
        )
        .await
        .unwrap();
    let (_, kind, _) = error_of(
        other.call("account.login", json!({"user_id": "alice", "password": PASSWORD})).await,
    );
    assert_eq!(kind.as_deref(), Some("auth_failed"));
    let moved = other
        .call("account.login", json!({"user_id": "Alice", "password": "another good one"}))
        .await
        .unwrap();
    assert_eq!(moved["user_id"], "alice");
    let e = next_event(&mut alice_events, Duration::from_secs(20)).await.unwrap();
    assert_eq!(e["kind"], "account.logged_out");
    let (_, kind, _) = error_of(alice.call("account.info", json!({})).await);
    assert_eq!(kind.as_deref(), Some("not_logged_in"));

    // Logout keeps history but needs a login again.
    other.call("account.logout", json!({})).await.unwrap();
    let (_, kind, _) = error_of(other.call("contacts.list", json!({})).await);
    assert_eq!(kind.as_deref(), Some("not_logged_in"));
    other
        .call("account.login", json!({"user_id": "alice", "password": "another good one"}))
        .await
        .unwrap();

    // The relay keeps no password, in any file.
    for secret in [PASSWORD, "another good one"] {
        let hits = files_containing(&relay.data_dir, secret.as_bytes());
        assert!(hits.is_empty(), "password found in {hits:?}");
    }
    // Nobody logged a password.
    for logs in [alice.logs(), other.logs(), relay.logs()] {
        assert!(
            !logs.contains(PASSWORD) && !logs.contains("another good one"),
            "a password reached a log"
        );
    }
}

#[tokio::test]
async fn contacts_profiles_and_presence() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let mut bob = registered(&world, &relay, "bob").await;

    let (_, kind, _) = error_of(alice.call("contacts.add", json!({"user_id": "nobody"})).await);
    assert_eq!(kind.as_deref(), Some("not_found"));
    let contact =
        alice.call("contacts.add", json!({"user_id": "bob", "alias": "Bobby"})).await.unwrap();
    assert_eq!(
        (contact["nickname"].as_str(), contact["alias"].as_str()),
        (Some("bob nick"), Some("Bobby"))
    );
    assert_eq!(contact["blocked"], false);
    // Presence needs consent: alice sees bob's only once she is bob's contact.
    bob.call("contacts.add", json!({"user_id": "alice"})).await.unwrap();

    let c = alice.client().await.unwrap();
    let mut events = c.take_events().unwrap();
    c.call_value("events.subscribe", json!({"kinds": ["contact.presence", "contact.changed"]}))
        .await
        .unwrap();
    let online = |v: &Value| v["contacts"][0]["presence"] == "online";
    eventually(Duration::from_secs(20), "bob online", || async {
        let list = alice.call("contacts.list", json!({})).await.ok()?;
        online(&list).then_some(())
    })
    .await
    .unwrap();

    // A profile change reaches the contact.
    bob.call("account.update", json!({"nickname": "Robert"})).await.unwrap();
    let changed = loop {
        let e = next_event(&mut events, Duration::from_secs(20)).await.unwrap();
        if e["kind"] == "contact.changed" {
            break e;
        }
    };
    assert_eq!(changed["contact"]["nickname"], "Robert");

    // Presence goes offline when bob's daemon stops, online when it is back.
    bob.stop(Duration::from_secs(5)).unwrap();
    let offline = loop {
        let e = next_event(&mut events, Duration::from_secs(30)).await.unwrap();
        if e["kind"] == "contact.presence" && e["presence"] == "offline" {
            break e;
        }
    };
    assert_eq!(offline["user_id"], "bob");
    let list = alice.call("contacts.list", json!({})).await.unwrap();
    assert!(list["contacts"][0]["last_seen_at"].as_i64().is_some());
    let _bob = world.daemon("bob").with_relay(&relay).start().unwrap();
    loop {
        let e = next_event(&mut events, Duration::from_secs(30)).await.unwrap();
        if e["kind"] == "contact.presence" && e["presence"] == "online" {
            break;
        }
    }

    alice.call("contacts.remove", json!({"user_id": "bob"})).await.unwrap();
    assert_eq!(alice.call("contacts.list", json!({})).await.unwrap()["contacts"], json!([]));
    let (_, kind, _) = error_of(alice.call("contacts.remove", json!({"user_id": "bob"})).await);
    assert_eq!(kind.as_deref(), Some("not_found"));
}

#[tokio::test]
async fn daemons_reconnect_after_a_relay_restart() {
    let world = World::new();
    let mut relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let c = alice.client().await.unwrap();
    let mut events = c.take_events().unwrap();
    c.call_value("events.subscribe", json!({"kinds": ["connection.state"]})).await.unwrap();
    relay.restart().unwrap();
    let mut states = Vec::new();
    while states.last().map(String::as_str) != Some("connected") {
        let e = next_event(&mut events, Duration::from_secs(60)).await.unwrap();
        states.push(e["state"].as_str().unwrap_or("").to_owned());
    }
    assert!(states.iter().any(|s| s != "connected"), "no disconnection seen: {states:?}");
    // Still authenticated as alice after the reconnect.
    assert_eq!(alice.call("account.info", json!({})).await.unwrap()["user_id"], "alice");
    assert_eq!(
        alice.call("system.status", json!({})).await.unwrap()["relay"]["state"],
        "connected"
    );
}
