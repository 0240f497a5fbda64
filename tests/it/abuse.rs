//! A hostile account against real daemons through a real relay: presence needs consent
//! (a stranger watching a user sees `hidden`, a contact sees `online`), and
//! `settings.share_presence: false` hides a user from its contacts too.

use serde_json::json;

use letstalk_tests::{World, presence_of, registered, wait_presence};

#[tokio::test]
async fn a_stranger_sees_hidden_a_contact_online_and_share_presence_off_hides_from_both() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let bob = registered(&world, &relay, "bob").await;
    let mallory = registered(&world, &relay, "mallory").await;
    // bob has alice as a contact; mallory adds bob, who never added her.
    bob.call("contacts.add", json!({"user_id": "alice"})).await.unwrap();
    alice.call("contacts.add", json!({"user_id": "bob"})).await.unwrap();
    let added = mallory.call("contacts.add", json!({"user_id": "bob"})).await.unwrap();
    assert_eq!(added["presence"], "hidden");
    assert_eq!(added["last_seen_at"], serde_json::Value::Null);
    wait_presence(&alice, "bob", "online").await;
    assert_eq!(presence_of(&mallory, "bob").await, "hidden");

    // bob stops sharing: his contact sees `hidden` too, until he shares again.
    let s = bob.call("settings.set", json!({"share_presence": false})).await.unwrap();
    assert_eq!(s["share_presence"], false);
    assert_eq!(bob.call("settings.get", json!({})).await.unwrap()["share_presence"], false);
    wait_presence(&alice, "bob", "hidden").await;
    bob.call("settings.set", json!({"share_presence": true})).await.unwrap();
    wait_presence(&alice, "bob", "online").await;
    assert_eq!(presence_of(&mallory, "bob").await, "hidden");
}
