//! Issue 16, the relay's durability rule end to end: nothing a sender was told is stored
//! (`Sent`) is lost when the relay process is killed with -9 mid-traffic. The recipient
//! is online, so the relay's online fast path is taken: messages are pushed while their
//! commit runs and a sender may be answered on the recipient's acknowledgement instead of
//! the commit. The relay holds each commit 20 ms (a slow disk, `test_commit_delay_ms`), so
//! the kill lands while batches are written but not committed, and most senders are
//! answered on bob's acknowledgement. Clients are `letstalk-link` links (no daemons), so the test counts
//! messages by the relay's msg id.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use letstalk_link::{Link, LinkConfig, Push, Registration, SigningKey};
use letstalk_tests::{Relay, World};
use rand::RngCore;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

const SENDERS: usize = 4;
/// Sends in flight per sender.
const WINDOW: usize = 8;

type Ids = Arc<Mutex<BTreeSet<String>>>;

/// A registered, authenticated link for `user`.
async fn client(relay: &Relay, user: &str) -> (Link, mpsc::Receiver<Push>) {
    let config = LinkConfig::new(relay.address(), Some(relay.cert.clone()));
    let (link, pushes) = Link::start(config, None).unwrap();
    link.wait_connected(Duration::from_secs(20)).await.unwrap();
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let registration = Registration {
        user_id: user.to_owned(),
        password: "correct horse battery staple".into(),
        email: format!("{user}@example.org"),
        nickname: user.to_owned(),
        identity: Vec::new(),
    };
    link.register(registration, SigningKey::from_bytes(&seed)).await.unwrap();
    link.wait_connected(Duration::from_secs(20)).await.unwrap();
    (link, pushes)
}

/// The recipient: holds every pushed message (in this process, which outlives the relay)
/// and acknowledges it at once, as a device does once it has stored it.
fn receive(link: Link, mut pushes: mpsc::Receiver<Push>, received: Ids) {
    tokio::spawn(async move {
        while let Some(push) = pushes.recv().await {
            if let Push::Message(m) = push {
                received.lock().unwrap().insert(m.msg_id);
                let link = link.clone();
                tokio::spawn(async move { link.ack(&[m.delivery_id]).await });
            }
        }
    });
}

/// A sender: `WINDOW` sends in flight to bob until `stop`; what the relay confirmed goes
/// into `confirmed`.
async fn send(link: Link, name: String, stop: Arc<AtomicBool>, confirmed: Ids) {
    let mut in_flight = JoinSet::new();
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        while in_flight.len() < WINDOW {
            let (link, msg_id) = (link.clone(), format!("{name}-{n}"));
            n += 1;
            in_flight.spawn(async move {
                let sent = link.send("bob", &msg_id, vec![7; 256]).await;
                (msg_id, sent.is_ok())
            });
        }
        if let Some(Ok((msg_id, true))) = in_flight.join_next().await {
            confirmed.lock().unwrap().insert(msg_id);
        }
    }
    // Sends already in flight may still be answered (by the restarted relay).
    while let Some(done) = in_flight.join_next().await {
        if let Ok((msg_id, true)) = done {
            confirmed.lock().unwrap().insert(msg_id);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_message_a_sender_was_told_is_stored_survives_kill_9_mid_traffic() {
    let world = World::new();
    let config = world.path().join("relay.toml");
    std::fs::write(&config, "test_commit_delay_ms = 20\n").unwrap();
    let mut relay = world.relay_with("relay", &["--config", config.to_str().unwrap()]).unwrap();
    let (bob, bob_pushes) = client(&relay, "bob").await;
    let received = Ids::default();
    receive(bob, bob_pushes, received.clone());
    let (stop, confirmed) = (Arc::new(AtomicBool::new(false)), Ids::default());
    let mut senders = JoinSet::new();
    for i in 0..SENDERS {
        let (link, _) = client(&relay, &format!("alice{i}")).await;
        senders.spawn(send(link, format!("alice{i}"), stop.clone(), confirmed.clone()));
    }
    // Mid-traffic: once a few hundred messages were confirmed.
    let deadline = Instant::now() + Duration::from_secs(60);
    while confirmed.lock().unwrap().len() < 300 {
        assert!(Instant::now() < deadline, "the senders got nothing through");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::SeqCst);
    relay.crash_restart().unwrap();
    let drained = tokio::time::timeout(Duration::from_secs(90), async {
        while senders.join_next().await.is_some() {}
    });
    assert!(drained.await.is_ok(), "sends in flight at the crash never ended");
    let confirmed = confirmed.lock().unwrap().clone();
    // bob's link comes back after its reconnection backoff, then gets the rest.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let missing: Vec<String> =
            confirmed.difference(&received.lock().unwrap()).cloned().collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} confirmed messages lost, e.g. {:?}",
            missing.len(),
            confirmed.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
