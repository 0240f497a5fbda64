//! `letstalk-bench relay`: message delivery through `letstalk-relay` between many
//! connected clients, beside the mosquitto MQTT broker at QoS 1 measured in the same
//! run with the same shape.
//!
//! Shape: `--pairs` publishers and as many subscribers, each its own connection;
//! publisher i sends `--messages` opaque `--payload`-byte bodies to subscriber i with
//! `--window` sends in flight. The figure is delivered messages per second: from the
//! first send until every subscriber has received all of its messages.
//!
//! Letstalk side: the relay protocol spoken directly with `letstalk-link` (the daemon's
//! relay client; QUIC + TLS 1.3, one `Send` stream per message, answered once the relay
//! has committed it or the subscriber has acknowledged it; subscribers get pushes and acknowledge them in batches). No daemon,
//! so no end-to-end encryption of the bodies: the relay sees them as opaque bytes either
//! way. MQTT side: `rumqttc`, PUBLISH at QoS 1 (answered by PUBACK), subscriptions at
//! QoS 1 (the client acknowledges every delivery).
//!
//! `--offline` (letstalk-relay only): the subscribers' devices are offline while the
//! publishers send, so every message is stored; once all were confirmed the devices come
//! online and the relay drains their mailboxes. Two figures: stored and drained messages
//! per second.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use letstalk_link::{Identity, Link, LinkConfig, Push, Registration, SigningKey};
use rand_core::{OsRng, RngCore};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::RelayArgs;
use crate::ipc::exe_dir;
use crate::servers::{Mosquitto, RelayProcess, release_bin};
use crate::sys;

/// The target from the issue "Measure it": relay ≥ 2 × mosquitto QoS 1.
const TARGET_RATIO: f64 = 2.0;

/// Issue 16's target for offline recipients: messages stored, then drained, per second.
const OFFLINE_TARGET: f64 = 30_000.0;

/// What one run delivered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Delivery {
    /// Messages the subscribers received.
    delivered: usize,
    /// Messages the publishers had confirmed (relay `Sent` / MQTT PUBACK).
    confirmed: usize,
    /// From the first send to the last delivery (or to the time limit).
    elapsed: Duration,
    timed_out: bool,
}

impl Delivery {
    pub(crate) fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { self.delivered as f64 / secs } else { 0.0 }
    }
}

pub(crate) async fn run(args: &RelayArgs) -> Result<()> {
    if args.pairs == 0 || args.messages == 0 {
        bail!("--pairs and --messages must be at least 1");
    }
    let relay_bin = release_bin(args.relay.as_ref(), &exe_dir()?, "letstalk-relay")?;
    let work = tempfile::Builder::new().prefix("letstalk-bench-").tempdir()?;
    let limit = Duration::from_secs(args.limit_s);
    let total = args.pairs * args.messages;

    println!("letstalk-bench relay: {}", sys::host());
    println!(
        "  {} publishers → {} subscribers (one each), {} messages of {} bytes per publisher \
         ({total} in all), {} in flight per publisher, all on 127.0.0.1",
        args.pairs, args.pairs, args.messages, args.payload, args.window
    );
    println!("  clients: this bench, one thread; time limit {} s per run", args.limit_s);
    println!();
    if args.offline {
        return offline(&relay_bin, work.path(), args, limit).await;
    }

    progress("letstalk-relay (letstalk-link clients)");
    let ours = match letstalk_run(&relay_bin, &work.path().join("relay"), args, limit).await {
        Ok(d) => Some(d),
        Err(e) => {
            println!("letstalk-relay: the run through letstalk-link failed: {e:#}");
            None
        }
    };

    let theirs = match Mosquitto::find(args.mosquitto.as_ref()) {
        Some(bin) => {
            progress("mosquitto QoS 1 (rumqttc clients)");
            match mosquitto_run(&bin, &work.path().join("mosquitto"), args, limit).await {
                Ok((d, version)) => Some((d, version)),
                Err(e) => {
                    println!("mosquitto: the run failed: {e:#}");
                    None
                }
            }
        }
        None => {
            println!(
                "baseline unavailable: no mosquitto binary (install it with \
                 `apt-get install -y mosquitto`, or pass --mosquitto PATH)"
            );
            None
        }
    };

    println!("== Delivery between {} connected pairs, {}-byte bodies ==", args.pairs, args.payload);
    if let Some(d) = &ours {
        print_line("letstalk-relay (relay protocol via letstalk-link, durable)", d, total);
    }
    if let Some((d, version)) = &theirs {
        print_line(&format!("mosquitto QoS 1 ({version}, persistence off)"), d, total);
    }
    match (&ours, &theirs) {
        (Some(o), Some((t, _))) if t.rate() > 0.0 => {
            let ratio = o.rate() / t.rate();
            println!(
                "  ratio letstalk-relay ÷ mosquitto: {ratio:.2}×   target ≥ {TARGET_RATIO:.1}×   →  {}",
                if ratio >= TARGET_RATIO { "met" } else { "NOT met" }
            );
        }
        _ => println!("  ratio: not available (one of the runs did not complete)"),
    }
    println!(
        "  (mosquitto keeps QoS 1 messages in memory; letstalk-relay answers once a message \
         is committed to SQLite with synchronous=FULL, in shared transactions, or \
         acknowledged by its online recipient)"
    );
    Ok(())
}

/// `--offline`: messages stored per second while every recipient device is offline,
/// then drained per second once they connect (issue 16: ≥ 30,000 msg/s).
async fn offline(bin: &Path, work: &Path, args: &RelayArgs, limit: Duration) -> Result<()> {
    let total = args.pairs * args.messages;
    progress("letstalk-relay, offline recipients (letstalk-link clients)");
    let (stored, drained) = offline_run(bin, &work.join("relay"), args, limit).await?;
    println!(
        "== Offline recipients: {} pairs, {}-byte bodies, stored then drained ==",
        args.pairs, args.payload
    );
    println!(
        "  {:<60} {:>8.0} msg/s  ({} of {total} confirmed to publishers, {:.2} s){}",
        "stored (all recipients offline; durable, synchronous=FULL)",
        stored.rate(),
        stored.confirmed,
        stored.elapsed.as_secs_f64(),
        if stored.timed_out { "  stopped at the time limit" } else { "" }
    );
    println!(
        "  {:<60} {:>8.0} msg/s  ({} of {} delivered and acknowledged, {:.2} s){}",
        "drained (the recipients connect, the relay pushes the backlog)",
        drained.rate(),
        drained.delivered,
        drained.confirmed,
        drained.elapsed.as_secs_f64(),
        if drained.timed_out { "  stopped at the time limit" } else { "" }
    );
    let slower = stored.rate().min(drained.rate());
    println!(
        "  target ≥ {OFFLINE_TARGET:.0} msg/s each   →  {}",
        if slower >= OFFLINE_TARGET { "met" } else { "NOT met" }
    );
    Ok(())
}

fn progress(what: &str) {
    eprintln!("  measuring {what} …");
}

pub(crate) fn print_line(label: &str, d: &Delivery, total: usize) {
    println!(
        "  {label:<60} {:>8.0} msg/s  ({} of {total} delivered, {} confirmed to publishers, \
         {:.2} s){}",
        d.rate(),
        d.delivered,
        d.confirmed,
        d.elapsed.as_secs_f64(),
        if d.timed_out { "  stopped at the time limit" } else { "" }
    );
}

// ---------------------------------------------------------------------------------------
// letstalk-relay through letstalk-link

/// A registered, authenticated link for the account `user`.
pub(crate) async fn connected_link(
    port: u16,
    cert: &Path,
    user: &str,
) -> Result<(Link, mpsc::Receiver<Push>)> {
    registered(LinkConfig::new(format!("localhost:{port}"), Some(cert.to_owned())), user).await
}

/// A registered, authenticated link for the account `user` on the relay `config` names.
pub(crate) async fn registered_link(config: LinkConfig, user: &str) -> Result<Link> {
    Ok(registered(config, user).await?.0)
}

async fn registered(config: LinkConfig, user: &str) -> Result<(Link, mpsc::Receiver<Push>)> {
    let (link, pushes) = Link::start(config, None)?;
    link.wait_connected(Duration::from_secs(20)).await.context("connecting")?;
    let mut seed = [0u8; 32];
    OsRng.fill_bytes(&mut seed);
    let key = SigningKey::from_bytes(&seed);
    let reg = Registration {
        user_id: user.to_owned(),
        password: "correct horse battery staple".to_owned(),
        email: format!("{user}@example.org"),
        nickname: user.to_owned(),
        identity: Vec::new(),
    };
    link.register(reg, key).await.with_context(|| format!("registering {user}"))?;
    link.wait_connected(Duration::from_secs(20)).await.context("authenticating")?;
    let id: Option<Identity> = link.identity();
    if id.is_none() {
        bail!("{user}: no identity after registering");
    }
    Ok((link, pushes))
}

async fn letstalk_run(
    bin: &Path,
    home: &Path,
    args: &RelayArgs,
    limit: Duration,
) -> Result<Delivery> {
    let (mut relay, publishers, subscribers) = relay_and_clients(bin, home, args).await?;
    let result = deliver(publishers, subscribers, args, limit).await;
    relay.stop()?;
    result
}

/// `--offline`: (stored, drained).
async fn offline_run(
    bin: &Path,
    home: &Path,
    args: &RelayArgs,
    limit: Duration,
) -> Result<(Delivery, Delivery)> {
    let (mut relay, publishers, subscribers) = relay_and_clients(bin, home, args).await?;
    let result = store_then_drain(publishers, subscribers, args, limit).await;
    relay.stop()?;
    result
}

type Subscriber = (Link, mpsc::Receiver<Push>);

/// A relay and `--pairs` registered publishers (`pub{i}`) and subscribers (`sub{i}`).
async fn relay_and_clients(
    bin: &Path,
    home: &Path,
    args: &RelayArgs,
) -> Result<(RelayProcess, Vec<Link>, Vec<Subscriber>)> {
    let relay = RelayProcess::start(bin, home)?;
    let mut publishers = Vec::with_capacity(args.pairs);
    let mut subscribers = Vec::with_capacity(args.pairs);
    for i in 0..args.pairs {
        subscribers.push(connected_link(relay.port, &relay.cert, &format!("sub{i}")).await?);
        let (link, _pushes) = connected_link(relay.port, &relay.cert, &format!("pub{i}")).await?;
        publishers.push(link);
    }
    Ok((relay, publishers, subscribers))
}

/// What the client tasks of one run counted.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    delivered: usize,
    confirmed: usize,
    /// The last delivery, from the start.
    last_delivery: Duration,
    /// The last confirmation of a send, from the start.
    last_confirm: Duration,
}

type Clients = JoinSet<Result<Tally>>;

/// Publisher i sends `--messages` bodies to subscriber i (`sub{i}`), `--window` in flight;
/// subscribers acknowledge in batches. Measured from the first send to the last delivery.
pub(crate) async fn deliver(
    publishers: Vec<Link>,
    subscribers: Vec<Subscriber>,
    args: &RelayArgs,
    limit: Duration,
) -> Result<Delivery> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + limit;
    let mut tasks = Clients::new();
    subscribe(&mut tasks, subscribers, args.messages, started, deadline);
    publish(&mut tasks, publishers, args, started, deadline);
    let t = join("letstalk-relay", tasks).await;
    let timed_out = t.delivered < args.pairs * args.messages;
    Ok(Delivery {
        delivered: t.delivered,
        confirmed: t.confirmed,
        elapsed: if timed_out { started.elapsed() } else { t.last_delivery },
        timed_out,
    })
}

/// `--offline`: the subscribers' devices go offline (their links unauthenticated) before
/// anything is sent, so the publishers' sends are all stored (measured from the first
/// send until the last was confirmed); once every send was confirmed the devices come
/// online again and the relay drains their mailboxes (measured from then until the last
/// delivery). Returns (stored, drained).
async fn store_then_drain(
    publishers: Vec<Link>,
    subscribers: Vec<Subscriber>,
    args: &RelayArgs,
    limit: Duration,
) -> Result<(Delivery, Delivery)> {
    let total = args.pairs * args.messages;
    let identities: Vec<Option<Identity>> = subscribers.iter().map(|(l, _)| l.identity()).collect();
    for (link, _) in &subscribers {
        link.set_identity(None);
    }
    // Setup, not measured: the relay sees the authenticated connections go.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = Instant::now();
    let mut tasks = Clients::new();
    publish(&mut tasks, publishers, args, started, tokio::time::Instant::now() + limit);
    let sent = join("letstalk-relay (offline: storing)", tasks).await;
    let timed_out = sent.confirmed < total;
    let stored = Delivery {
        delivered: sent.confirmed,
        confirmed: sent.confirmed,
        elapsed: if timed_out { started.elapsed() } else { sent.last_confirm },
        timed_out,
    };

    let started = Instant::now();
    for ((link, _), identity) in subscribers.iter().zip(identities) {
        link.set_identity(identity);
    }
    let mut tasks = Clients::new();
    let deadline = tokio::time::Instant::now() + limit;
    subscribe(&mut tasks, subscribers, args.messages, started, deadline);
    let got = join("letstalk-relay (offline: draining)", tasks).await;
    let timed_out = got.delivered < sent.confirmed;
    let drained = Delivery {
        delivered: got.delivered,
        confirmed: sent.confirmed,
        elapsed: if timed_out { started.elapsed() } else { got.last_delivery },
        timed_out,
    };
    Ok((stored, drained))
}

/// Each subscriber takes its pushes until it has `expect` messages (or the deadline),
/// acknowledging what arrived together in one batch.
fn subscribe(
    tasks: &mut Clients,
    subscribers: Vec<Subscriber>,
    expect: usize,
    started: Instant,
    deadline: tokio::time::Instant,
) {
    for (link, mut pushes) in subscribers {
        tasks.spawn(async move {
            let mut got = 0usize;
            let mut ids = Vec::new();
            let mut last = Duration::ZERO;
            while got < expect {
                let Ok(Some(push)) = tokio::time::timeout_at(deadline, pushes.recv()).await else {
                    break;
                };
                let mut next = Some(push);
                while let Some(p) = next {
                    if let Push::Message(m) = p {
                        got += 1;
                        ids.push(m.delivery_id);
                    }
                    next = pushes.try_recv().ok();
                }
                last = started.elapsed();
                link.ack(&ids).await.context("acknowledging")?;
                ids.clear();
            }
            Ok(Tally { delivered: got, last_delivery: last, ..Tally::default() })
        });
    }
}

/// Publisher i sends `--messages` bodies to `sub{i}`, `--window` in flight.
fn publish(
    tasks: &mut Clients,
    publishers: Vec<Link>,
    args: &RelayArgs,
    started: Instant,
    deadline: tokio::time::Instant,
) {
    let body = Arc::new(vec![0xa5u8; args.payload]);
    for (i, link) in publishers.into_iter().enumerate() {
        let window = args.window.max(1);
        let per = args.messages;
        for w in 0..window {
            let (link, body) = (link.clone(), body.clone());
            let to = format!("sub{i}");
            tasks.spawn(async move {
                let mut confirmed = 0usize;
                for k in (w..per).step_by(window) {
                    let msg_id = format!("p{i}-{k}");
                    let send = link.send(&to, &msg_id, body.to_vec());
                    match tokio::time::timeout_at(deadline, send).await {
                        Ok(r) => {
                            r.with_context(|| format!("publisher {i}: sending message {k}"))?;
                        }
                        Err(_) => break,
                    }
                    confirmed += 1;
                }
                Ok(Tally { confirmed, last_confirm: started.elapsed(), ..Tally::default() })
            });
        }
    }
}

/// Waits for every client task and adds up what they counted; the first error is
/// printed (the figures still count what was done).
async fn join(what: &str, mut tasks: Clients) -> Tally {
    let mut sum = Tally::default();
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(t)) => {
                sum.delivered += t.delivered;
                sum.confirmed += t.confirmed;
                sum.last_delivery = sum.last_delivery.max(t.last_delivery);
                sum.last_confirm = sum.last_confirm.max(t.last_confirm);
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(anyhow::anyhow!("a client task failed: {e}"));
            }
        }
    }
    if let Some(e) = first_error {
        println!("{what}: an error during the run: {e:#}");
    }
    sum
}

// ---------------------------------------------------------------------------------------
// mosquitto through rumqttc

fn mqtt_options(id: &str, port: u16, inflight: usize) -> MqttOptions {
    let mut o = MqttOptions::new(id, "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(u16::try_from(inflight.clamp(1, 65_535)).unwrap_or(u16::MAX));
    o.set_max_packet_size(1 << 20, 1 << 20);
    o
}

async fn mosquitto_run(
    bin: &Path,
    home: &Path,
    args: &RelayArgs,
    limit: Duration,
) -> Result<(Delivery, String)> {
    let mut broker = Mosquitto::start(bin, home)?;
    let port = broker.port;
    let deadline = tokio::time::Instant::now() + limit;
    let mut tasks: JoinSet<Result<(usize, usize, Duration)>> = JoinSet::new();

    // Subscribers first; each reports on `ready` once its SUBACK has arrived.
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(args.pairs);
    let (go_tx, go_rx) = tokio::sync::watch::channel::<Option<Instant>>(None);
    for i in 0..args.pairs {
        let (client, mut events) =
            AsyncClient::new(mqtt_options(&format!("sub{i}"), port, args.window), 1024);
        let expect = args.messages;
        let (ready, mut go) = (ready_tx.clone(), go_rx.clone());
        tasks.spawn(async move {
            client.subscribe(format!("bench/{i}"), QoS::AtLeastOnce).await?;
            let mut got = 0usize;
            let mut last = Duration::ZERO;
            while got < expect {
                let event = match tokio::time::timeout_at(deadline, events.poll()).await {
                    Ok(e) => e.context("subscriber connection")?,
                    Err(_) => break,
                };
                match event {
                    Event::Incoming(Packet::SubAck(_)) => {
                        let _ = ready.send(()).await;
                    }
                    Event::Incoming(Packet::Publish(_)) => {
                        got += 1;
                        if let Some(start) = *go.borrow_and_update() {
                            last = start.elapsed();
                        }
                    }
                    _ => {}
                }
            }
            // Let the last PUBACKs go out.
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
            Ok((got, 0, last))
        });
    }
    drop(ready_tx);
    for _ in 0..args.pairs {
        tokio::time::timeout_at(deadline, ready_rx.recv())
            .await
            .context("the subscribers did not all get their SUBACK")?
            .context("a subscriber stopped before its SUBACK")?;
    }

    let started = Instant::now();
    let _ = go_tx.send(Some(started));
    for i in 0..args.pairs {
        let (client, mut events) =
            AsyncClient::new(mqtt_options(&format!("pub{i}"), port, args.window), 1024);
        let (n, size) = (args.messages, args.payload);
        tasks.spawn(async move {
            let publisher = client.clone();
            let publishing = tokio::spawn(async move {
                let body = vec![0xa5u8; size];
                for _ in 0..n {
                    if publisher
                        .publish(format!("bench/{i}"), QoS::AtLeastOnce, false, body.clone())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
            let mut acked = 0usize;
            while acked < n {
                match tokio::time::timeout_at(deadline, events.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        publishing.abort();
                        return Err(anyhow::anyhow!("publisher {i} connection: {e}"));
                    }
                    Err(_) => break,
                }
            }
            publishing.abort();
            let _ = client.disconnect().await;
            let _ = tokio::time::timeout(Duration::from_millis(200), events.poll()).await;
            Ok((0, acked, Duration::ZERO))
        });
    }
    let (mut delivered, mut confirmed, mut last) = (0, 0, Duration::ZERO);
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok((d, c, l))) => {
                delivered += d;
                confirmed += c;
                last = last.max(l);
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(anyhow::anyhow!("a client task failed: {e}"));
            }
        }
    }
    let version = broker.version.clone();
    broker.stop()?;
    if let Some(e) = first_error {
        println!("mosquitto: an error during the run: {e:#}");
    }
    let timed_out = delivered < args.pairs * args.messages;
    Ok((
        Delivery {
            delivered,
            confirmed,
            elapsed: if timed_out { started.elapsed() } else { last },
            timed_out,
        },
        version,
    ))
}
