//! Linked devices through the real programs: a relay and real daemons (alice's phone,
//! alice's desktop, bob). Linking by a one-time code carries the account (the same
//! identity key), contacts with their verification and aliases, and the account's
//! settings, never the device's own; the relay never holds the code, the device's name
//! or anything of what travelled; a wrong code links nothing and spends the code; a
//! removed device is logged out; every device has a name, and any device of the account
//! renames any of its devices (and no other account's).

use std::time::Duration;

use serde_json::json;

use letstalk_tests::{
    PASSWORD, World, error_of, eventually, files_containing, next_event, registered,
    wait_connected, wait_texts,
};

const LIMIT: Duration = Duration::from_secs(30);

/// A code for the same rendezvous with another secret part: the relay would route it to
/// the right slot, but it is not the code.
fn wrong_secret(code: &str) -> String {
    let mut chars: Vec<char> = code.chars().collect();
    let last = chars.len() - 1;
    chars[last] = if chars[last] == 'A' { 'B' } else { 'A' };
    chars.into_iter().collect()
}

#[tokio::test]
async fn a_linked_desktop_gets_the_account_and_only_what_belongs_to_it() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let phone = registered(&world, &relay, "alice").await;
    let bob = registered(&world, &relay, "bob").await;
    phone
        .call("contacts.add", json!({"user_id": "bob", "alias": "Canary-Alias-7731"}))
        .await
        .unwrap();
    bob.call("contacts.add", json!({"user_id": "alice"})).await.unwrap();
    // A message makes the session that reveals bob's identity key; then verify it.
    phone.call("messages.send", json!({"to": "user:bob", "text": "hi"})).await.unwrap();
    eventually(LIMIT, "bob's key known", || async {
        let v = phone.call("contacts.verify", json!({"user_id": "bob"})).await.ok()?;
        Some(v["safety_number"].as_str()?.to_owned())
    })
    .await
    .unwrap();
    phone
        .call("contacts.mark_verified", json!({"user_id": "bob", "verified": true}))
        .await
        .unwrap();
    // An account setting travels; a device setting does not.
    phone
        .call("settings.set", json!({"read_receipts": false, "keepalive_s": {"wifi": 77}}))
        .await
        .unwrap();

    let c = phone.client().await.unwrap();
    let mut phone_events = c.take_events().unwrap();
    c.call_value("events.subscribe", json!({"kinds": ["device.linked"]})).await.unwrap();
    let started = phone.call("devices.link_start", json!({})).await.unwrap();
    let code = started["code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 19, "four groups of four: {code}");

    let desktop = world.daemon("desktop").with_relay(&relay).start().unwrap();
    wait_connected(&desktop).await;
    // Typed by hand: lower case, no dashes.
    let typed = code.replace('-', "").to_lowercase();
    let account = desktop
        .call("account.link", json!({"code": typed, "device_name": "Desktop-Canary-5521"}))
        .await
        .unwrap();
    let phone_account = phone.call("account.info", json!({})).await.unwrap();
    assert_eq!(account["user_id"], "alice");
    assert_eq!(account["fingerprint"], phone_account["fingerprint"], "one identity key");

    let e = next_event(&mut phone_events, LIMIT).await.unwrap();
    assert_eq!(e["kind"], "device.linked");
    assert_eq!(e["device"]["name"], "Desktop-Canary-5521");

    let contacts = desktop.call("contacts.list", json!({})).await.unwrap();
    let b = contacts["contacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["user_id"] == "bob")
        .cloned()
        .expect("bob is a contact on the desktop");
    assert_eq!(b["alias"], "Canary-Alias-7731");
    assert_eq!(b["verified"], true);
    let settings = desktop.call("settings.get", json!({})).await.unwrap();
    assert_eq!(settings["read_receipts"], false);
    assert_ne!(settings["keepalive_s"]["wifi"], 77, "the keep-alive is the device's own");
    // The safety number with bob is the same on both devices.
    let on_phone = phone.call("contacts.verify", json!({"user_id": "bob"})).await.unwrap();
    let on_desktop = desktop.call("contacts.verify", json!({"user_id": "bob"})).await.unwrap();
    assert_eq!(on_phone["safety_number"], on_desktop["safety_number"]);

    for (d, this) in [(&phone, 1), (&desktop, 2)] {
        let list = d.call("devices.list", json!({})).await.unwrap();
        let devices = list["devices"].as_array().unwrap();
        assert_eq!(devices.len(), 2, "{list}");
        let mine: Vec<_> = devices.iter().filter(|d| d["this_device"] == true).collect();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0]["device_id"], this);
        assert!(devices.iter().any(|d| d["name"] == "Desktop-Canary-5521"));
    }

    // The relay never held the code, the device's name or what travelled (the alias).
    let secret = &code.replace('-', "")[6..];
    for needle in [code.as_str(), secret, "Desktop-Canary-5521", "Canary-Alias-7731"] {
        let found = files_containing(relay.data_dir(), needle.as_bytes());
        assert!(found.is_empty(), "{needle:?} found on the relay in {found:?}");
    }
    assert!(!relay.logs().contains(secret));

    // The code is spent: a third device cannot use it again.
    let third = world.daemon("third").with_relay(&relay).start().unwrap();
    wait_connected(&third).await;
    let again = third.call("account.link", json!({"code": code, "device_name": "third"})).await;
    assert_eq!(error_of(again).1.as_deref(), Some("not_found"));
    // A device with an account cannot link.
    let taken = desktop.call("account.link", json!({"code": code, "device_name": "x"})).await;
    assert_eq!(error_of(taken).1.as_deref(), Some("conflict"));
}

#[tokio::test]
async fn a_wrong_code_links_nothing_and_spends_the_code() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let phone = registered(&world, &relay, "alice").await;
    let desktop = world.daemon("desktop").with_relay(&relay).start().unwrap();
    wait_connected(&desktop).await;

    let (code, _, field) =
        error_of(desktop.call("account.link", json!({"code": "nope", "device_name": "d"})).await);
    assert_eq!((code, field.as_deref()), (-32602, Some("code")));
    let (_, kind, _) = error_of(
        desktop
            .call("account.link", json!({"code": "0000-0000-0000-0000", "device_name": "d"}))
            .await,
    );
    assert_eq!(kind.as_deref(), Some("not_found"), "no such rendezvous");

    let code = phone.call("devices.link_start", json!({})).await.unwrap()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, kind, _) = error_of(
        desktop
            .call("account.link", json!({"code": wrong_secret(&code), "device_name": "d"}))
            .await,
    );
    assert_eq!(kind.as_deref(), Some("not_found"), "the wrong secret opens nothing");
    let (_, kind, _) =
        error_of(desktop.call("account.link", json!({"code": code, "device_name": "d"})).await);
    assert_eq!(kind.as_deref(), Some("not_found"), "the code is spent after one guess");
    let list = phone.call("devices.list", json!({})).await.unwrap();
    assert_eq!(list["devices"].as_array().unwrap().len(), 1, "no device was added: {list}");
    let (_, kind, _) = error_of(desktop.call("account.info", json!({})).await);
    assert_eq!(kind.as_deref(), Some("not_logged_in"));
}

#[tokio::test]
async fn a_removed_device_is_logged_out() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let phone = registered(&world, &relay, "alice").await;
    let desktop = world.daemon("desktop").with_relay(&relay).start().unwrap();
    wait_connected(&desktop).await;
    let code = phone.call("devices.link_start", json!({})).await.unwrap()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    desktop.call("account.link", json!({"code": code, "device_name": "desktop"})).await.unwrap();

    let c = desktop.client().await.unwrap();
    let mut events = c.take_events().unwrap();
    c.call_value("events.subscribe", json!({"kinds": ["account.logged_out"]})).await.unwrap();
    phone.call("devices.remove", json!({"device_id": 2})).await.unwrap();
    let e = next_event(&mut events, LIMIT).await.unwrap();
    assert_eq!(e["kind"], "account.logged_out");
    let (_, kind, _) = error_of(desktop.call("devices.list", json!({})).await);
    assert_eq!(kind.as_deref(), Some("not_logged_in"));
    let list = phone.call("devices.list", json!({})).await.unwrap();
    let devices = list["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0]["this_device"], true);
    let (_, kind, _) = error_of(phone.call("devices.remove", json!({"device_id": 2})).await);
    assert_eq!(kind.as_deref(), Some("not_found"));
}

/// alice's phone and a desktop linked to it, and bob, all on `relay`.
async fn alice_on_two_devices(
    world: &World,
    relay: &letstalk_tests::Relay,
) -> (letstalk_tests::Daemon, letstalk_tests::Daemon, letstalk_tests::Daemon) {
    let phone = registered(world, relay, "alice").await;
    let bob = registered(world, relay, "bob").await;
    phone.call("contacts.add", json!({"user_id": "bob"})).await.unwrap();
    bob.call("contacts.add", json!({"user_id": "alice"})).await.unwrap();
    let desktop = world.daemon("desktop").with_relay(relay).start().unwrap();
    wait_connected(&desktop).await;
    let code = phone.call("devices.link_start", json!({})).await.unwrap()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    desktop.call("account.link", json!({"code": code, "device_name": "desktop"})).await.unwrap();
    (phone, desktop, bob)
}

/// The names `d` lists, by device id.
async fn names(d: &letstalk_tests::Daemon) -> Vec<(u64, String)> {
    let list = d.call("devices.list", json!({})).await.unwrap();
    let devices = list["devices"].as_array().unwrap().iter();
    devices
        .map(|d| (d["device_id"].as_u64().unwrap(), d["name"].as_str().unwrap().into()))
        .collect()
}

/// Issue 19, device names: a device that registered has a name without being given one;
/// the desktop renames the phone and both list the new name; a bad name or a device that
/// is not the account's changes nothing; names given at registration and login are used.
/// The relay, and every log, hold none of them in plaintext.
#[tokio::test]
async fn every_device_has_a_name_and_any_device_of_the_account_renames_any() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let (phone, desktop, bob) = alice_on_two_devices(&world, &relay).await;
    let first = names(&phone).await;
    assert_eq!(first.len(), 2);
    assert_eq!((first[0].0, first[1].0), (1, 2));
    assert!(!first[0].1.is_empty(), "the registered device has a name: {first:?}");
    assert_eq!(first[1].1, "desktop");

    // The desktop renames the phone: both devices list the new name.
    let renamed = desktop
        .call("devices.rename", json!({"device_id": 1, "name": "  Kitchen-Phone-Canary "}))
        .await
        .unwrap();
    assert_eq!(renamed["device_id"], 1);
    assert_eq!(renamed["name"], "Kitchen-Phone-Canary");
    assert_eq!(renamed["this_device"], false);
    let want = vec![(1, "Kitchen-Phone-Canary".to_owned()), (2, "desktop".to_owned())];
    for d in [&phone, &desktop] {
        assert_eq!(names(d).await, want);
    }
    // And the phone renames itself.
    let own = phone.call("devices.rename", json!({"device_id": 1, "name": "Phone"})).await;
    assert_eq!(own.unwrap()["this_device"], true);
    let want = vec![(1, "Phone".to_owned()), (2, "desktop".to_owned())];

    // A bad name is refused and changes nothing.
    let long = "x".repeat(65);
    for bad in ["", "   ", long.as_str(), "bell\u{7}"] {
        let r = desktop.call("devices.rename", json!({"device_id": 1, "name": bad})).await;
        let (code, _, field) = error_of(r);
        assert_eq!((code, field.as_deref()), (-32602, Some("name")), "{bad:?}");
    }
    let r = desktop.call("devices.rename", json!({"device_id": 9, "name": "nine"})).await;
    assert_eq!(error_of(r).1.as_deref(), Some("not_found"));
    // bob cannot rename alice's devices: her desktop's id is no device of his.
    let r = bob.call("devices.rename", json!({"device_id": 2, "name": "Owned-By-Bob"})).await;
    assert_eq!(error_of(r).1.as_deref(), Some("not_found"));
    for d in [&phone, &desktop] {
        assert_eq!(names(d).await, want);
    }

    // Names given at registration and at login are the device's.
    let carol = world.daemon("carol").with_relay(&relay).start().unwrap();
    wait_connected(&carol).await;
    let register = |device_name: &str| {
        json!({"user_id": "carol", "email": "c@example.org", "nickname": "C",
               "password": PASSWORD, "device_name": device_name})
    };
    let r = carol.call("account.register", register(&long)).await;
    assert_eq!(error_of(r).2.as_deref(), Some("device_name"));
    let r = carol.call("account.info", json!({})).await;
    assert_eq!(error_of(r).1.as_deref(), Some("not_logged_in"), "a bad name registers nothing");
    carol.call("account.register", register("Carol-Laptop")).await.unwrap();
    assert_eq!(names(&carol).await, [(1, "Carol-Laptop".to_owned())]);
    let laptop = world.daemon("bob-laptop").with_relay(&relay).start().unwrap();
    wait_connected(&laptop).await;
    let login = json!({"user_id": "bob", "password": PASSWORD, "device_name": "Bob-Laptop"});
    laptop.call("account.login", login).await.unwrap();
    let on_laptop = names(&laptop).await;
    assert_eq!(on_laptop.len(), 1, "a login moves the account: {on_laptop:?}");
    assert_eq!(on_laptop[0].1, "Bob-Laptop");

    // Sealed on the relay, and never logged.
    for needle in ["Kitchen-Phone-Canary", "Carol-Laptop", "Bob-Laptop"] {
        let found = files_containing(relay.data_dir(), needle.as_bytes());
        assert!(found.is_empty(), "{needle:?} found on the relay in {found:?}");
        assert!(!relay.logs().contains(needle), "{needle:?} in the relay's log");
        for d in [&phone, &desktop, &carol, &laptop] {
            assert!(!d.logs().contains(needle), "{needle:?} in a daemon's log");
        }
    }
}

#[tokio::test]
async fn messages_reach_every_device_and_what_one_sends_shows_on_the_other() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let (phone, desktop, bob) = alice_on_two_devices(&world, &relay).await;

    // bob → alice: on both of alice's devices.
    bob.call("messages.send", json!({"to": "user:alice", "text": "to both"})).await.unwrap();
    for d in [&phone, &desktop] {
        let got = wait_texts(d, "user:bob", 1, LIMIT).await;
        assert_eq!(got, vec!["to both"]);
    }
    // alice's desktop → bob: bob gets it, and the phone shows it as sent by alice.
    desktop
        .call("messages.send", json!({"to": "user:bob", "text": "from the desktop"}))
        .await
        .unwrap();
    let got = wait_texts(&bob, "user:alice", 2, LIMIT).await;
    assert_eq!(got.last().map(String::as_str), Some("from the desktop"));
    let on_phone = wait_texts(&phone, "user:bob", 2, LIMIT).await;
    assert_eq!(on_phone, vec!["to both", "from the desktop"]);
    let page = phone.call("messages.list", json!({"conversation": "user:bob"})).await.unwrap();
    let sent = page["messages"].as_array().unwrap().last().cloned().unwrap();
    assert_eq!(sent["direction"], "out");

    // Read on the phone: read on the desktop too.
    phone.call("messages.mark_read", json!({"conversation": "user:bob"})).await.unwrap();
    eventually(LIMIT, "read on the desktop", || async {
        let list = desktop.call("conversations.list", json!({})).await.ok()?;
        let c = list["conversations"]
            .as_array()?
            .iter()
            .find(|c| c["conversation"] == "user:bob")?
            .clone();
        (c["unread"] == 0).then_some(())
    })
    .await
    .unwrap();

    // The relay holds no plaintext of any of it.
    for needle in ["to both", "from the desktop"] {
        assert!(files_containing(relay.data_dir(), needle.as_bytes()).is_empty());
    }
}

/// Subscribes to the call events of `d`.
async fn call_events(
    d: &letstalk_tests::Daemon,
) -> (letstalk_tests::Client, tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>) {
    let c = d.client().await.unwrap();
    let events = c.take_events().unwrap();
    c.call_value("events.subscribe", json!({"kinds": ["call.incoming", "call.state"]}))
        .await
        .unwrap();
    (c, events)
}

/// bob's audio call to alice ringing on both of her devices (each showed
/// `call.incoming` from bob), with the call events of all three. Fields drop in order:
/// the daemons before the relay, the relay before the world's directories.
struct Ringing {
    phone: letstalk_tests::Daemon,
    desktop: letstalk_tests::Daemon,
    on_phone: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    on_desktop: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    on_bob: tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
    /// bob's connection, subscribed to his call events.
    b: letstalk_tests::Client,
    /// bob's `calls.start` answer, and the call id.
    started: serde_json::Value,
    id: String,
    _clients: (letstalk_tests::Client, letstalk_tests::Client),
    _bob: letstalk_tests::Daemon,
    _relay: letstalk_tests::Relay,
    _world: World,
}

async fn bob_rings_alice_on_two_devices() -> Ringing {
    use crate::calls::call_event;

    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let (phone, desktop, bob) = alice_on_two_devices(&world, &relay).await;
    let (p, mut on_phone) = call_events(&phone).await;
    let (d, mut on_desktop) = call_events(&desktop).await;
    let (b, on_bob) = call_events(&bob).await;
    let started =
        b.call_value("calls.start", json!({"to": "user:alice", "media": "audio"})).await.unwrap();
    let id = started["call"]["call_id"].as_str().unwrap().to_owned();
    for events in [&mut on_phone, &mut on_desktop] {
        let ringing = call_event(events, "call.incoming", Some(&id)).await;
        assert_eq!(ringing["call"]["peer"], "bob");
    }
    Ringing {
        phone,
        desktop,
        on_phone,
        on_desktop,
        on_bob,
        b,
        started,
        id,
        _clients: (p, d),
        _bob: bob,
        _relay: relay,
        _world: world,
    }
}

#[tokio::test]
async fn a_call_rings_on_every_device_and_the_first_to_answer_takes_it() {
    use tokio_seqpacket::UnixSeqpacket;

    use crate::calls::{call_event, stream};

    // bob calls alice: it rings on both of her devices; the desktop takes it.
    let r = bob_rings_alice_on_two_devices().await;
    let b_path = r.started["media_socket"].as_str().unwrap().to_owned();
    // Moved out of `r` (a place, not a temporary): the rest stays there to the end.
    let Ringing { phone, desktop, mut on_phone, mut on_desktop, mut on_bob, b, id, .. } = r;
    let accepted = desktop.call("calls.accept", json!({"call_id": id})).await.unwrap();
    assert_eq!(accepted["call"]["state"], "active");
    let d_path = accepted["media_socket"].as_str().unwrap().to_owned();

    // The phone stops ringing: answered elsewhere. bob's call is active.
    let e = call_event(&mut on_phone, "call.state", Some(&id)).await;
    assert_eq!(
        (e["call"]["state"].as_str(), e["call"]["end_reason"].as_str()),
        (Some("ended"), Some("answered_elsewhere"))
    );
    let e = call_event(&mut on_bob, "call.state", Some(&id)).await;
    assert_eq!(e["call"]["state"], "active");
    // The phone can no longer take it.
    let (_, kind, _) = error_of(phone.call("calls.accept", json!({"call_id": id})).await);
    assert_eq!(kind.as_deref(), Some("invalid_state"));

    // Media flows between bob and the desktop that took the call.
    let b_sock = UnixSeqpacket::connect(&b_path).await.unwrap();
    let d_sock = UnixSeqpacket::connect(&d_path).await.unwrap();
    let got = stream(&b_sock, &d_sock, 50, 50, 160).await;
    assert!(got.len() >= 49, "only {} of 50 frames reached the desktop", got.len());
    b.call_value("calls.hangup", json!({"call_id": id})).await.unwrap();
    let mut e = call_event(&mut on_desktop, "call.state", Some(&id)).await;
    while e["call"]["state"] == "active" {
        e = call_event(&mut on_desktop, "call.state", Some(&id)).await;
    }
    assert_eq!(e["call"]["end_reason"], "hangup");

    // A second call, declined on the phone: declined on the desktop too, and for bob.
    let again = eventually(LIMIT, "bob free to call again", || async {
        b.call_value("calls.start", json!({"to": "user:alice", "media": "video"})).await.ok()
    })
    .await
    .unwrap();
    let id = again["call"]["call_id"].as_str().unwrap().to_owned();
    for events in [&mut on_phone, &mut on_desktop] {
        call_event(events, "call.incoming", Some(&id)).await;
    }
    let declined = phone.call("calls.reject", json!({"call_id": id})).await.unwrap();
    assert_eq!(declined["call"]["end_reason"], "rejected");
    for events in [&mut on_desktop, &mut on_bob] {
        let e = call_event(events, "call.state", Some(&id)).await;
        assert_eq!(
            (e["call"]["state"].as_str(), e["call"]["end_reason"].as_str()),
            (Some("ended"), Some("rejected"))
        );
    }
}

/// The state and end reason ("" while none) of call `id` as `d` lists it.
async fn call_on(d: &letstalk_tests::Daemon, id: &str) -> Option<(String, String)> {
    let list = d.call("calls.list", json!({})).await.ok()?;
    let call = list["calls"].as_array()?.iter().find(|c| c["call_id"] == id)?.clone();
    let reason = call["end_reason"].as_str().unwrap_or_default().to_owned();
    Some((call["state"].as_str()?.to_owned(), reason))
}

/// Both of alice's devices accept bob's call at the same instant: each is in the call
/// before it hears of the other. The lower device id (the phone) keeps it and the desktop
/// ends it as answered elsewhere; bob's call stays up and his hang-up ends the phone's.
#[tokio::test]
async fn two_devices_accepting_a_call_at_once_leave_exactly_one_in_it() {
    use crate::calls::call_event;

    let r = bob_rings_alice_on_two_devices().await;
    let Ringing { phone, desktop, mut on_bob, b, id, .. } = r;
    let accept = json!({"call_id": id});
    let (p, d) = tokio::join!(
        phone.call("calls.accept", accept.clone()),
        desktop.call("calls.accept", accept)
    );
    assert!(p.is_ok() || d.is_ok(), "neither device took the call: {p:?} {d:?}");

    let (on_p, on_d) = eventually(LIMIT, "exactly one device in the call", || async {
        let (p, d) = (call_on(&phone, &id).await?, call_on(&desktop, &id).await?);
        let states = [p.0.as_str(), d.0.as_str()];
        (states.contains(&"active") && states.contains(&"ended")).then_some((p, d))
    })
    .await
    .unwrap();
    let left = if on_p.0 == "ended" { &on_p } else { &on_d };
    assert_eq!(left.1, "answered_elsewhere", "phone {on_p:?}, desktop {on_d:?}");
    if p.is_ok() && d.is_ok() {
        // Both were in the call: the rule chose, the same way on both devices.
        assert_eq!((on_p.0.as_str(), on_d.0.as_str()), ("active", "ended"));
    }
    let e = call_event(&mut on_bob, "call.state", Some(&id)).await;
    assert_eq!(e["call"]["state"], "active");

    // bob hangs up: the device in the call ends it as hung up; the other stays as it was.
    b.call_value("calls.hangup", json!({"call_id": id})).await.unwrap();
    let (kept, gone) = if on_p.0 == "active" { (&phone, &desktop) } else { (&desktop, &phone) };
    eventually(LIMIT, "the call over on the device that kept it", || async {
        let (state, reason) = call_on(kept, &id).await?;
        (state == "ended").then_some(reason)
    })
    .await
    .map(|reason| assert_eq!(reason, "hangup"))
    .unwrap();
    assert_eq!(call_on(gone, &id).await.unwrap().1, "answered_elsewhere");
}

/// The contact `user` as `d` lists it.
async fn contact(d: &letstalk_tests::Daemon, user: &str) -> Option<serde_json::Value> {
    let list = d.call("contacts.list", json!({})).await.ok()?;
    list["contacts"].as_array()?.iter().find(|c| c["user_id"] == user).cloned()
}

#[tokio::test]
async fn contacts_blocks_verification_and_account_settings_stay_in_step() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let (mut phone, desktop, bob) = alice_on_two_devices(&world, &relay).await;
    let _carol = registered(&world, &relay, "carol").await;
    // Both of alice's devices learn bob's identity key from a message of his.
    bob.call("messages.send", json!({"to": "user:alice", "text": "hi"})).await.unwrap();
    for d in [&phone, &desktop] {
        wait_texts(d, "user:bob", 1, LIMIT).await;
    }

    // Added with an alias on the phone: on the desktop too.
    phone.call("contacts.add", json!({"user_id": "carol", "alias": "Caz"})).await.unwrap();
    let c = eventually(LIMIT, "carol on the desktop", || contact(&desktop, "carol")).await.unwrap();
    assert_eq!(c["alias"], "Caz");

    // Verified on the phone: verified on the desktop, which knows the same key.
    let number =
        phone.call("contacts.verify", json!({"user_id": "bob"})).await.unwrap()["safety_number"]
            .as_str()
            .unwrap()
            .to_owned();
    phone.call("contacts.trust", json!({"user_id": "bob", "safety_number": number})).await.unwrap();
    eventually(LIMIT, "bob verified on the desktop", || async {
        let v = desktop.call("contacts.verify", json!({"user_id": "bob"})).await.ok()?;
        (v["verified"] == true).then_some(())
    })
    .await
    .unwrap();

    // Blocked on the desktop: blocked on the phone, and bob's next message reaches neither.
    desktop.call("contacts.block", json!({"user_id": "bob"})).await.unwrap();
    eventually(LIMIT, "bob blocked on the phone", || async {
        (contact(&phone, "bob").await?["blocked"] == true).then_some(())
    })
    .await
    .unwrap();
    // The phone re-sends its lists after the sync: they must say the same.
    phone.stop(Duration::from_secs(5)).unwrap();
    let phone = world.daemon("alice").with_relay(&relay).start().unwrap();
    wait_connected(&phone).await;
    let refused = bob.call("messages.send", json!({"to": "user:alice", "text": "let me in"})).await;
    let refused = match refused {
        Ok(m) => {
            let id = m["message"]["message_id"].as_str().unwrap().to_owned();
            eventually(LIMIT, "bob's message refused", || async {
                let m = bob.call("messages.get", json!({"message_id": id})).await.ok()?;
                (m["message"]["state"] == "failed").then(|| m["message"].clone())
            })
            .await
            .unwrap()
        }
        Err(e) => panic!("messages.send: {e}"),
    };
    assert_eq!(refused["error"]["data"]["kind"], "blocked");

    // An account setting changed on the phone: on the desktop. A device setting: not.
    phone
        .call("settings.set", json!({"read_receipts": false, "keepalive_s": {"wifi": 90}}))
        .await
        .unwrap();
    eventually(LIMIT, "read receipts off on the desktop", || async {
        let s = desktop.call("settings.get", json!({})).await.ok()?;
        (s["read_receipts"] == false).then_some(s)
    })
    .await
    .map(|s| assert_ne!(s["keepalive_s"]["wifi"], 90))
    .unwrap();

    // Removed on the desktop: gone from the phone.
    desktop.call("contacts.remove", json!({"user_id": "carol"})).await.unwrap();
    eventually(LIMIT, "carol gone from the phone", || async {
        contact(&phone, "carol").await.is_none().then_some(())
    })
    .await
    .unwrap();
}

/// Waits until `d` shows exactly `want` in `conversation`, in that order.
async fn wait_exactly(d: &letstalk_tests::Daemon, conversation: &str, want: &[&str]) {
    let got = wait_texts(d, conversation, want.len(), LIMIT).await;
    assert_eq!(got, want, "in {conversation}");
}

/// The direction `d` shows the text `text` of `conversation` with.
async fn direction_of(d: &letstalk_tests::Daemon, conversation: &str, text: &str) -> String {
    let page = d.call("messages.list", json!({"conversation": conversation})).await.unwrap();
    let m = page["messages"].as_array().unwrap().iter().find(|m| m["text"] == text).cloned();
    m.unwrap_or_else(|| panic!("{text:?} not in {page}"))["direction"].as_str().unwrap().to_owned()
}

/// Issue 19, groups: sender keys per device. alice's phone, bob and carol share a group
/// and have written in it; alice links her desktop. From then on what each of the four
/// devices writes reaches the three others, in order (the desktop needed every member's
/// key, and each member the desktop's), and alice's two devices show each other's texts
/// as hers. Once the desktop is removed, bob's key rotates before his next message.
#[tokio::test]
async fn group_messages_reach_every_device_and_a_removed_device_makes_keys_rotate() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let phone = registered(&world, &relay, "alice").await;
    let bob = registered(&world, &relay, "bob").await;
    let carol = registered(&world, &relay, "carol").await;
    let group = phone
        .call("groups.create", json!({"name": "Crag", "members": ["bob", "carol"]}))
        .await
        .unwrap();
    let gid = group["group_id"].as_str().unwrap().to_owned();
    let conv = format!("group:{gid}");
    for d in [&bob, &carol] {
        eventually(LIMIT, "the group", || async {
            d.call("groups.info", json!({"group_id": gid})).await.ok()
        })
        .await
        .unwrap();
    }
    // Everyone writes before the desktop exists: each holds the others' keys.
    let mut before: Vec<&str> = Vec::new();
    for (d, text) in [(&phone, "phone before"), (&bob, "bob before"), (&carol, "carol before")] {
        d.call("messages.send", json!({"to": conv, "text": text})).await.unwrap();
        before.push(text);
        for d in [&phone, &bob, &carol] {
            wait_exactly(d, &conv, &before).await;
        }
    }

    let desktop = world.daemon("desktop").with_relay(&relay).start().unwrap();
    wait_connected(&desktop).await;
    let code = phone.call("devices.link_start", json!({})).await.unwrap()["code"]
        .as_str()
        .unwrap()
        .to_owned();
    desktop.call("account.link", json!({"code": code, "device_name": "desktop"})).await.unwrap();
    let g = desktop.call("groups.info", json!({"group_id": gid})).await.unwrap();
    assert_eq!(g["members"], json!(["alice", "bob", "carol"]), "linking carries the group");

    // Every device writes, each message right after the desktop appeared and in turns;
    // each reaches every other device, in order (the desktop has no history from before
    // it was linked).
    let mut after: Vec<&str> = Vec::new();
    let turns = [
        (&bob, "bob 1"),
        (&desktop, "desktop 1"),
        (&carol, "carol 1"),
        (&phone, "phone 1"),
        (&desktop, "desktop 2"),
        (&bob, "bob 2"),
        (&carol, "carol 2"),
        (&phone, "phone 2"),
    ];
    for (d, text) in turns {
        d.call("messages.send", json!({"to": conv, "text": text})).await.unwrap();
        after.push(text);
        let everything: Vec<&str> = before.iter().chain(after.iter()).copied().collect();
        for d in [&phone, &bob, &carol] {
            wait_exactly(d, &conv, &everything).await;
        }
        wait_exactly(&desktop, &conv, &after).await;
    }
    // alice's devices show each other's texts as hers; bob shows them as alice's.
    assert_eq!(direction_of(&phone, &conv, "desktop 1").await, "out");
    assert_eq!(direction_of(&desktop, &conv, "phone 1").await, "out");
    assert_eq!(direction_of(&desktop, &conv, "bob 1").await, "in");
    assert_eq!(direction_of(&bob, &conv, "desktop 2").await, "in");
    let page = bob.call("messages.list", json!({"conversation": conv})).await.unwrap();
    let from_desktop =
        page["messages"].as_array().unwrap().iter().find(|m| m["text"] == "desktop 2");
    assert_eq!(from_desktop.unwrap()["from"], "alice");

    // A group alice makes on her phone now reaches her desktop too (the snapshot goes to
    // her own devices), and both devices take part in it.
    let later =
        phone.call("groups.create", json!({"name": "Later", "members": ["bob"]})).await.unwrap();
    let later_id = later["group_id"].as_str().unwrap().to_owned();
    let later = format!("group:{later_id}");
    for d in [&bob, &desktop] {
        eventually(LIMIT, "the group made after the link", || async {
            d.call("groups.info", json!({"group_id": later_id})).await.ok()
        })
        .await
        .unwrap();
    }
    bob.call("messages.send", json!({"to": later, "text": "bob in later"})).await.unwrap();
    for d in [&phone, &desktop] {
        wait_exactly(d, &later, &["bob in later"]).await;
    }
    desktop.call("messages.send", json!({"to": later, "text": "desktop in later"})).await.unwrap();
    for d in [&phone, &bob] {
        wait_exactly(d, &later, &["bob in later", "desktop in later"]).await;
    }

    // alice removes the desktop. Her next message's delivery receipts from bob meet the
    // relay's answer that the desktop is gone: bob's key rotates before his next message,
    // whose new generation goes only to the devices there are.
    let rotated =
        |d: &letstalk_tests::Daemon| d.logs().matches("our group sender key rotated").count();
    let bob_rotations = rotated(&bob);
    phone.call("devices.remove", json!({"device_id": 2})).await.unwrap();
    eventually(LIMIT, "the desktop logged out", || async {
        let r = desktop.call("account.info", json!({})).await;
        (r.is_err() && error_of(r).1.as_deref() == Some("not_logged_in")).then_some(())
    })
    .await
    .unwrap();
    phone.call("messages.send", json!({"to": conv, "text": "phone after"})).await.unwrap();
    after.push("phone after");
    let everything: Vec<&str> = before.iter().chain(after.iter()).copied().collect();
    for d in [&bob, &carol] {
        wait_exactly(d, &conv, &everything).await;
    }
    eventually(LIMIT, "bob learns the desktop is gone", || async {
        bob.logs().contains("a member's device was removed").then_some(())
    })
    .await
    .unwrap();
    bob.call("messages.send", json!({"to": conv, "text": "bob after"})).await.unwrap();
    after.push("bob after");
    let everything: Vec<&str> = before.iter().chain(after.iter()).copied().collect();
    for d in [&phone, &carol] {
        wait_exactly(d, &conv, &everything).await;
    }
    assert_eq!(rotated(&bob), bob_rotations + 1, "bob's key rotated once");

    // The relay holds none of it in plaintext.
    for needle in ["desktop 1", "phone 2", "bob after"] {
        assert!(files_containing(relay.data_dir(), needle.as_bytes()).is_empty(), "{needle}");
    }
}

/// Issue 19, files: a file alice's phone sends to bob shows on her desktop as hers, and
/// the desktop can open it. The blob waits for the desktop as for bob: bob fetching it
/// first takes nothing from the desktop, and the desktop letting it go never deletes it
/// under bob; once everyone fetched it, the relay deletes it. The phone cancelling a file
/// stops the desktop's copy too. The relay never holds the file's plaintext.
#[tokio::test]
async fn a_file_sent_on_one_device_shows_and_opens_on_the_other() {
    use crate::files::{incoming, no_auto_download, random_file, relay_blobs, sha_of, transfer_of};
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let (phone, desktop, bob) = alice_on_two_devices(&world, &relay).await;
    no_auto_download(&desktop).await;
    no_auto_download(&bob).await;
    let send = |path: std::path::PathBuf| {
        let phone = &phone;
        async move {
            let sent = phone
                .call("files.send", json!({"to": "user:bob", "path": path.to_str().unwrap()}))
                .await
                .unwrap();
            sent["message"]["message_id"].as_str().unwrap().to_owned()
        }
    };
    async fn fetch(
        world: &World,
        d: &letstalk_tests::Daemon,
        id: &str,
        name: &str,
    ) -> anyhow::Result<String> {
        let dest = world.path().join(name);
        d.call("files.download", json!({"message_id": id, "dest": dest})).await?;
        Ok(sha_of(&dest))
    }
    let download = |d, id, name| fetch(&world, d, id, name);

    // bob fetches it first; the desktop still can, and shows it as alice's.
    let (path, sha, data) = random_file(&world, "notes.pdf", 300 * 1024);
    let id = send(path).await;
    incoming(&bob, "alice", &sha).await;
    let copy = incoming(&desktop, "bob", &sha).await;
    assert_eq!(
        (copy["message_id"].as_str(), copy["direction"].as_str(), copy["file"]["name"].as_str()),
        (Some(id.as_str()), Some("out"), Some("notes.pdf"))
    );
    assert_eq!(copy["file"]["transfer"], "available");
    assert!(files_containing(relay.data_dir(), data.get(..64).unwrap()).is_empty());
    assert_eq!(download(&bob, &id, "bob.pdf").await.unwrap(), sha);
    assert_eq!(download(&desktop, &id, "desktop.pdf").await.unwrap(), sha);
    eventually(LIMIT, "the blob deleted once both fetched it", || async {
        relay_blobs(&relay).is_empty().then_some(())
    })
    .await
    .unwrap();
    assert_eq!(transfer_of(&phone, &id).await, "uploaded");

    // The desktop lets one go: bob still gets it.
    let (path, sha, _) = random_file(&world, "two.bin", 64 * 1024);
    let id = send(path).await;
    incoming(&desktop, "bob", &sha).await;
    desktop.call("files.cancel", json!({"message_id": id})).await.unwrap();
    assert_eq!(transfer_of(&desktop, &id).await, "cancelled");
    incoming(&bob, "alice", &sha).await;
    assert_eq!(download(&bob, &id, "two.out").await.unwrap(), sha);
    assert_eq!(transfer_of(&phone, &id).await, "uploaded");
    eventually(LIMIT, "the blob deleted", || async {
        relay_blobs(&relay).is_empty().then_some(())
    })
    .await
    .unwrap();

    // The phone cancels one: the desktop's copy stops, and cannot be fetched.
    let (path, sha, _) = random_file(&world, "three.bin", 64 * 1024);
    let id = send(path).await;
    incoming(&desktop, "bob", &sha).await;
    phone.call("files.cancel", json!({"message_id": id})).await.unwrap();
    eventually(LIMIT, "the desktop's copy cancelled", || async {
        (transfer_of(&desktop, &id).await == "cancelled").then_some(())
    })
    .await
    .unwrap();
    let (_, kind, _) = error_of(download(&desktop, &id, "three.out").await.map(|_| json!({})));
    assert_eq!(kind.as_deref(), Some("invalid_state"));
}
