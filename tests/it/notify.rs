//! `letstalk-notify` against a fake `org.freedesktop.Notifications` served from this
//! process on a private session bus, and a real relay and daemon pair: a message becomes a
//! notification naming its sender (with its text, or without it under `--no-text`), the
//! messages of one conversation replace one notification, a muted conversation stays
//! silent while an unmuted one still notifies, a call rings, and a daemon restart is
//! caught up with `since`.

use std::collections::HashMap;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use zbus::zvariant::OwnedValue;

use letstalk_tests::{Bus, Daemon, World, bin, eventually, registered, wait_texts};

const LIMIT: Duration = Duration::from_secs(30);

/// One `Notify` call as the server saw it, with the ID it answered.
#[derive(Debug, Clone)]
struct Shown {
    replaces_id: u32,
    summary: String,
    body: String,
    id: u32,
}

#[derive(Debug, Default)]
struct Seen {
    shown: Vec<Shown>,
    closed: Vec<u32>,
}

type Record = Arc<Mutex<Seen>>;

/// The fake notification server: records calls, answers `replaces_id` when it is set
/// (replacing) and a new ID otherwise, as the specification says.
struct Server(Record);

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl Server {
    #[allow(clippy::too_many_arguments, reason = "the D-Bus method's signature")]
    fn notify(
        &self,
        _app_name: String,
        replaces_id: u32,
        _app_icon: String,
        summary: String,
        body: String,
        _actions: Vec<String>,
        _hints: HashMap<String, OwnedValue>,
        _expire_timeout: i32,
    ) -> u32 {
        let mut seen = self.0.lock().unwrap();
        let id = if replaces_id != 0 { replaces_id } else { 100 + seen.shown.len() as u32 };
        seen.shown.push(Shown { replaces_id, summary, body, id });
        id
    }

    fn close_notification(&self, id: u32) {
        self.0.lock().unwrap().closed.push(id);
    }

    fn get_capabilities(&self) -> Vec<String> {
        vec!["body".into()]
    }

    fn get_server_information(&self) -> (String, String, String, String) {
        ("fake".into(), "letstalk-tests".into(), "1".into(), "1.2".into())
    }
}

async fn serve(bus: &Bus, record: &Record) -> zbus::Connection {
    zbus::connection::Builder::address(bus.address())
        .unwrap()
        .name("org.freedesktop.Notifications")
        .unwrap()
        .serve_at("/org/freedesktop/Notifications", Server(record.clone()))
        .unwrap()
        .build()
        .await
        .unwrap()
}

/// `letstalk-notify` on `bus` against `daemon`, killed when dropped.
struct Notifier(Child);

impl Notifier {
    fn start(bus: &Bus, daemon: &Daemon, extra: &[&str]) -> Notifier {
        let log = std::fs::File::create(
            daemon.spec.home.join(format!("letstalk-notify{}.log", extra.join(""))),
        )
        .unwrap();
        let child = bus
            .command(bin("letstalk-notify").to_str().unwrap())
            .arg("--socket")
            .arg(daemon.socket())
            .args(["--log", "debug"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Notifier(child)
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `daemon` lists `n` frontends named letstalk-notify (each has subscribed
/// once it said hello: it does both on connecting).
async fn wait_notifiers(daemon: &Daemon, n: usize) {
    eventually(LIMIT, "letstalk-notify connected", || async {
        let info = daemon.call("device.info", json!({})).await.ok()?;
        let count = info["frontends"]
            .as_array()?
            .iter()
            .filter(|f| f["client"].as_str().is_some_and(|c| c.starts_with("letstalk-notify")))
            .count();
        (count >= n).then_some(())
    })
    .await
    .unwrap();
}

/// Waits until `record` holds `n` notifications; returns them.
async fn wait_shown(record: &Record, n: usize) -> Vec<Shown> {
    eventually(LIMIT, &format!("{n} notifications"), || async {
        let shown = record.lock().unwrap().shown.clone();
        (shown.len() >= n).then_some(shown)
    })
    .await
    .unwrap()
}

async fn send(from: &Daemon, text: &str) {
    from.call("messages.send", json!({"to": "user:alice", "text": text})).await.unwrap();
}

#[tokio::test]
async fn notify_messages_mute_calls_and_restart() {
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let mut alice = registered(&world, &relay, "alice").await;
    let bob = registered(&world, &relay, "bob").await;
    alice.call("contacts.add", json!({"user_id": "bob"})).await.unwrap();
    bob.call("contacts.add", json!({"user_id": "alice"})).await.unwrap();

    // Two notifiers on two buses: one shows text, one runs with --no-text.
    let (bus, quiet_bus) = (world.bus("session").unwrap(), world.bus("quiet").unwrap());
    let (record, quiet) = (Record::default(), Record::default());
    let _server = serve(&bus, &record).await;
    let _quiet_server = serve(&quiet_bus, &quiet).await;
    let _notifier = Notifier::start(&bus, &alice, &[]);
    let _quiet_notifier = Notifier::start(&quiet_bus, &alice, &["--no-text"]);
    wait_notifiers(&alice, 2).await;

    // A message: the summary names the sender, the body has the text (or not).
    send(&bob, "meet at the harbour").await;
    let first = wait_shown(&record, 1).await[0].clone();
    assert!(first.summary.contains("bob nick"), "{first:?}");
    assert_eq!(first.body, "meet at the harbour");
    assert_eq!(first.replaces_id, 0);
    let hidden = wait_shown(&quiet, 1).await[0].clone();
    assert!(hidden.summary.contains("bob nick"), "{hidden:?}");
    assert!(!hidden.body.contains("harbour"), "--no-text showed the text: {hidden:?}");

    // A second message in the conversation replaces the first notification.
    send(&bob, "bring a rope").await;
    let second = wait_shown(&record, 2).await[1].clone();
    assert_eq!((second.replaces_id, second.id), (first.id, first.id), "{second:?}");
    assert_eq!(second.body, "bring a rope");
    let hidden = wait_shown(&quiet, 2).await[1].clone();
    assert_eq!(hidden.replaces_id, quiet.lock().unwrap().shown[0].id);
    assert!(!hidden.body.contains("rope"), "{hidden:?}");

    // Muted: the message arrives, nothing is shown. Then unmuted: shown again, so the
    // silence was the mute's doing.
    alice
        .call("conversations.mute", json!({"conversation": "user:bob", "muted": true}))
        .await
        .unwrap();
    send(&bob, "psst muted").await;
    wait_texts(&alice, "user:bob", 3, LIMIT).await;
    alice
        .call("conversations.mute", json!({"conversation": "user:bob", "muted": false}))
        .await
        .unwrap();
    send(&bob, "loud again").await;
    // The notifier handles events in order, so a notification for the muted message
    // would have come before this one: the third is the unmuted message.
    let shown = wait_shown(&record, 3).await;
    assert_eq!(shown[2].body, "loud again", "{shown:?}");
    assert!(shown.iter().all(|s| !s.body.contains("muted")), "{shown:?}");

    // A call rings; when it stops ringing its notification goes (closed, or replaced by
    // a missed call notice).
    let started =
        bob.call("calls.start", json!({"to": "user:alice", "media": "audio"})).await.unwrap();
    let ring = eventually(LIMIT, "the call notification", || async {
        let seen = record.lock().unwrap();
        seen.shown.iter().find(|s| s.summary == "Incoming call").cloned()
    })
    .await
    .unwrap();
    assert_eq!((ring.replaces_id, ring.body.as_str()), (0, "from bob nick"));
    let call_id = started["call"]["call_id"].as_str().unwrap();
    bob.call("calls.hangup", json!({"call_id": call_id})).await.unwrap();
    eventually(LIMIT, "the call notification withdrawn", || async {
        let seen = record.lock().unwrap();
        let missed =
            seen.shown.iter().any(|s| s.replaces_id == ring.id && s.summary == "Missed call");
        (missed || seen.closed.contains(&ring.id)).then_some(())
    })
    .await
    .unwrap();

    // The daemon restarts: the notifier reconnects and announces what comes after.
    let before = record.lock().unwrap().shown.len();
    alice.stop(Duration::from_secs(10)).unwrap();
    send(&bob, "after the restart").await;
    alice = alice.spec.start().unwrap();
    wait_notifiers(&alice, 2).await;
    // One more message after the catch-up: a replay that announced something twice
    // would show before it, in event order.
    send(&bob, "and one more").await;
    let shown = wait_shown(&record, before + 2).await;
    let bodies: Vec<&str> = shown[before..].iter().map(|s| s.body.as_str()).collect();
    assert_eq!(bodies, ["after the restart", "and one more"], "nothing lost, nothing twice");
    // Message content never reaches the notifier's log.
    let log = std::fs::read_to_string(alice.spec.home.join("letstalk-notify.log")).unwrap();
    for text in ["harbour", "rope", "loud again", "after the restart", "and one more"] {
        assert!(!log.contains(text), "the log holds message content: {log}");
    }
}
