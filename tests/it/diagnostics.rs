//! Diagnostics with consent and in-app feedback through a real relay: the preview is
//! exactly the upload and never holds message content; no upload without consent;
//! feedback written offline reaches the relay when it comes back.

use std::time::Duration;

use serde_json::json;

use letstalk_tests::{
    World, error_of, eventually, files_containing, registered, wait_connected, wait_texts,
};

#[tokio::test]
async fn the_preview_is_the_upload_holds_no_content_and_needs_consent() {
    let world = World::new();
    let mut relay = world.relay("relay").unwrap();
    let alice = registered(&world, &relay, "alice").await;
    let bob = registered(&world, &relay, "bob").await;
    let canary = "diagnostics-canary-7f3e9a";
    bob.call("messages.send", json!({"to": "user:alice", "text": canary})).await.unwrap();
    alice.call("messages.send", json!({"to": "user:bob", "text": canary})).await.unwrap();
    wait_texts(&alice, "user:bob", 2, Duration::from_secs(30)).await;
    let a = alice.client().await.unwrap();
    a.call_value("system.hello", json!({"client": "Test UI 1.2"})).await.unwrap();

    let preview = alice.call("diagnostics.preview", json!({})).await.unwrap();
    let report = &preview["report"];
    let text = report.to_string();
    assert!(!text.contains(canary), "message text in the report: {text}");
    assert!(report["daemon"].as_str().unwrap().starts_with("letstalkd "));
    assert_eq!(report["device"]["device_id"].as_str().unwrap().len(), 32);
    assert!(report["frontends"].as_array().unwrap().iter().any(|f| f["client"] == "Test UI 1.2"));
    let events: Vec<&str> = report["connection_log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(events.contains(&"connected"), "{events:?}");
    assert!(report["network_history"].as_array().is_some());
    assert!(report["calls"].as_array().is_some());

    // Without consent nothing leaves the device.
    let refused = alice.call("diagnostics.upload", json!({})).await;
    assert_eq!(error_of(refused).1.as_deref(), Some("confirm_required"));
    let device_id = report["device"]["device_id"].as_str().unwrap().to_owned();
    assert!(files_containing(&relay.data_dir, device_id.as_bytes()).is_empty());
    alice.call("settings.set", json!({"diagnostics_upload": true})).await.unwrap();
    let up = alice.call("diagnostics.upload", json!({})).await.unwrap();
    assert!(up["report_id"].as_str().is_some());
    eventually(Duration::from_secs(10), "the report at the relay", || async {
        (!files_containing(&relay.data_dir, device_id.as_bytes()).is_empty()).then_some(())
    })
    .await
    .unwrap();
    assert!(files_containing(&relay.data_dir, canary.as_bytes()).is_empty());

    // Feedback written while the relay is away is queued and arrives later.
    relay.stop();
    let note = "feedback-note: the new group screen is lovely";
    let sent = alice.call("feedback.send", json!({"text": note})).await.unwrap();
    assert!(sent["feedback_id"].as_str().is_some());
    let empty = alice.call("feedback.send", json!({"text": "  "})).await;
    assert_eq!(error_of(empty).0, -32602);
    relay.restart().unwrap();
    wait_connected(&alice).await;
    eventually(Duration::from_secs(30), "the feedback at the relay", || async {
        (!files_containing(&relay.data_dir, note.as_bytes()).is_empty()).then_some(())
    })
    .await
    .unwrap();
}
