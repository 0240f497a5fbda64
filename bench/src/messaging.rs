//! `letstalk-bench messaging`: end-to-end encrypted messaging between two `letstalkd`
//! processes through one `letstalk-relay` process, all on 127.0.0.1, and the cost of
//! one Double Ratchet step measured on the crypto crate directly.
//!
//! Figures: UI-to-UI latency (alice's `messages.send` until bob's `message.received`,
//! p50/p99 over sequential messages); sustained throughput with many sends in flight
//! (messages/s until bob has received them all) and the send-side acceptance rate
//! (`messages.send` answers, durable); ns per encrypt and per decrypt with and without
//! a DH ratchet turn.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use letstalk_crypto::{Envelope, IdentityKeyPair, PreKeyBundle, PreKeySecret, Session};
use letstalk_ipc::Client;
use rand_core::OsRng;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinSet;

use crate::MessagingArgs;
use crate::ipc::exe_dir;
use crate::servers::{Letstalkd, LetstalkdSpec, RelayProcess, release_bin};
use crate::stats::{Latencies, ms};
use crate::sys;
use crate::trace;

/// Targets from the issue "Measure it", printed beside the figures.
const TARGET_P50: Duration = Duration::from_millis(1);
const TARGET_P99: Duration = Duration::from_millis(10);
const TARGET_RATE: f64 = 10_000.0;

const PASSWORD: &str = "correct horse battery staple";
/// How long one message may take to arrive before the latency run gives up.
const PER_MESSAGE_LIMIT: Duration = Duration::from_secs(10);

pub(crate) async fn run(args: &MessagingArgs) -> Result<()> {
    let dir = exe_dir()?;
    let daemon_bin = release_bin(args.daemon.as_ref(), &dir, "letstalkd")?;
    let relay_bin = release_bin(args.relay.as_ref(), &dir, "letstalk-relay")?;
    let work = tempfile::Builder::new().prefix("letstalk-bench-").tempdir()?;

    println!("letstalk-bench messaging: {}", sys::host());
    println!(
        "  letstalkd alice → letstalk-relay → letstalkd bob, separate processes on 127.0.0.1; \
         the UIs are this bench (one thread, letstalk_ipc::Client)"
    );
    println!();

    progress("ratchet step (letstalk-crypto, in process)");
    let ratchet = ratchet_figures(args.ratchet_steps)?;

    progress("starting relay and two daemons, registering alice and bob");
    let mut relay = RelayProcess::start(&relay_bin, &work.path().join("relay"))?;
    let log: &[&str] = if args.trace { &["--log", trace::DAEMON_LOG] } else { &[] };
    let mut alice = start_daemon_with(&daemon_bin, &work.path().join("alice"), &relay, log).await?;
    let mut bob = start_daemon_with(&daemon_bin, &work.path().join("bob"), &relay, log).await?;
    let a = Arc::new(Client::connect(&alice.socket).await?);
    let b = Client::connect(&bob.socket).await?;
    register(&a, "alice").await?;
    register(&b, "bob").await?;
    // Contacts are not needed to send, but a real UI would have added them.
    let _ = a.call_value("contacts.add", json!({"user_id": "bob"})).await;
    let _ = b.call_value("contacts.add", json!({"user_id": "alice"})).await;
    let mut events = b.take_events().context("bob's events were taken")?;
    b.call_value("events.subscribe", json!({"kinds": ["message.received"]})).await?;

    progress(&format!("latency: {} warm-up + {} sequential messages", args.warmup, args.messages));
    let pids = [
        ("alice", alice.pid()),
        ("relay", relay.pid()),
        ("bob", bob.pid()),
        ("bench (both UIs)", std::process::id()),
    ];
    let before = Cost::read(&pids)?;
    let (latency, stamps) = latency_run(&a, &mut events, args.warmup, args.messages).await?;
    let cost = Cost::read(&pids)?.since(&before);

    let tp = if args.trace {
        None
    } else {
        progress(&format!(
            "throughput: {} messages, {} in flight (limit {} s)",
            args.throughput, args.window, args.limit_s
        ));
        let before = Cost::read(&pids)?;
        let tp = throughput_run(
            a.clone(),
            &mut events,
            args.throughput,
            args.window,
            Duration::from_secs(args.limit_s),
        )
        .await?;
        Some((tp, Cost::read(&pids)?.since(&before)))
    };
    drop((a, b));
    alice.stop()?;
    bob.stop()?;
    relay.stop()?;
    if args.trace {
        let read = |d: &Letstalkd| std::fs::read_to_string(d.log()).unwrap_or_default();
        trace::print_breakdown(&stamps, &read(&alice), &read(&bob));
    }

    println!("== UI-to-UI latency (messages.send on alice → message.received on bob) ==");
    println!(
        "  p50 {}  p99 {}  max {}  ({} messages after {} warm-up)",
        ms(latency.p50()),
        ms(latency.p99()),
        ms(latency.max()),
        latency.len(),
        args.warmup
    );
    println!(
        "  target: p50 ≤ {}  p99 ≤ {}   →  p50 {}, p99 {}",
        ms(TARGET_P50),
        ms(TARGET_P99),
        verdict(latency.p50() <= TARGET_P50),
        verdict(latency.p99() <= TARGET_P99)
    );
    cost.print(args.warmup + args.messages);
    println!();
    if let Some((tp, cost)) = &tp {
        print_throughput(args, tp);
        cost.print(tp.received);
        println!();
    }
    println!("== One Double Ratchet step (letstalk-crypto Session, 256-byte plaintext) ==");
    println!(
        "  same sender (symmetric chain step only): encrypt {:.0} ns, decrypt {:.0} ns  ({} messages)",
        ratchet.chain_encrypt, ratchet.chain_decrypt, args.ratchet_steps
    );
    println!(
        "  alternating senders (DH ratchet turn):   encrypt {:.0} ns, decrypt {:.0} ns  ({} steps)",
        ratchet.turn_encrypt, ratchet.turn_decrypt, args.ratchet_steps
    );
    println!("  (no target; for scale: 10,000 msg/s leaves 100 µs per message on each side)");
    Ok(())
}

fn print_throughput(args: &MessagingArgs, tp: &Throughput) {
    println!("== Sustained throughput, alice → bob, {} in flight ==", args.window);
    println!(
        "  send-side acceptance (messages.send answered, durable): {} of {} in {:.2} s = {:.0} msg/s",
        tp.accepted,
        args.throughput,
        tp.accept_time.as_secs_f64(),
        rate(tp.accepted, tp.accept_time)
    );
    println!(
        "  delivered end to end (message.received on bob):         {} of {} in {:.2} s = {:.0} msg/s{}",
        tp.received,
        args.throughput,
        tp.receive_time.as_secs_f64(),
        rate(tp.received, tp.receive_time),
        if tp.timed_out { "  (stopped at the time limit: not all arrived)" } else { "" }
    );
    if let Some(e) = &tp.send_error {
        println!("  first send error: {e}");
    }
    println!(
        "  target: ≥ {TARGET_RATE:.0} msg/s delivered   →  {}",
        verdict(rate(tp.received, tp.receive_time) >= TARGET_RATE && !tp.timed_out)
    );
}

pub(crate) fn progress(what: &str) {
    eprintln!("  measuring {what} …");
}

pub(crate) fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

fn rate(n: usize, d: Duration) -> f64 {
    let secs = d.as_secs_f64();
    if secs > 0.0 { n as f64 / secs } else { 0.0 }
}

/// Starts a daemon linked to `relay` and waits until `system.status` says connected.
pub(crate) async fn start_daemon(
    bin: &Path,
    home: &Path,
    relay: &RelayProcess,
) -> Result<Letstalkd> {
    start_daemon_with(bin, home, relay, &[]).await
}

/// [`start_daemon`] with extra command-line arguments.
async fn start_daemon_with(
    bin: &Path,
    home: &Path,
    relay: &RelayProcess,
    extra: &[&str],
) -> Result<Letstalkd> {
    let mut spec = LetstalkdSpec::new(bin, PathBuf::from(home)).with_relay(relay.port, &relay.cert);
    spec.args.extend(extra.iter().map(Into::into));
    start_connected(&spec).await
}

/// Starts `spec` and waits until it is connected to its relay.
pub(crate) async fn start_connected(spec: &LetstalkdSpec) -> Result<Letstalkd> {
    let (daemon, _, _) = spec.start()?;
    let client = Client::connect(&daemon.socket).await?;
    let started = Instant::now();
    loop {
        let st = client.call_value("system.status", json!({})).await?;
        if st.pointer("/relay/state").and_then(Value::as_str) == Some("connected") {
            return Ok(daemon);
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("{} did not connect to the relay within 30 s: {st}", spec.home.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(crate) async fn register(client: &Client, name: &str) -> Result<()> {
    client
        .call_value(
            "account.register",
            json!({"user_id": name, "email": format!("{name}@example.org"),
                   "nickname": name, "password": PASSWORD}),
        )
        .await
        .with_context(|| format!("registering {name}"))?;
    Ok(())
}

/// The text of a `message.received` event, if it is one.
fn received_text(event: &Value) -> Option<&str> {
    if event.get("kind").and_then(Value::as_str) != Some("message.received") {
        return None;
    }
    event.pointer("/message/text").and_then(Value::as_str)
}

/// Waits for the `message.received` event with `text`, skipping others.
async fn wait_text(events: &mut UnboundedReceiver<Value>, text: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + PER_MESSAGE_LIMIT;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .with_context(|| format!("{text:?} did not arrive within {PER_MESSAGE_LIMIT:?}"))?
            .context("bob's connection closed")?;
        if received_text(&event) == Some(text) {
            return Ok(());
        }
    }
}

/// One message at a time: the time from just before `messages.send` until bob's event
/// has been read (the send's answer and the event are awaited together). Also returns
/// each measured message's id and wall-clock moments, for `--trace`.
async fn latency_run(
    a: &Client,
    events: &mut UnboundedReceiver<Value>,
    warmup: usize,
    n: usize,
) -> Result<(Latencies, Vec<trace::Stamp>)> {
    let started = Instant::now();
    let mut samples = Vec::with_capacity(n);
    let mut stamps = Vec::with_capacity(n);
    for i in 0..warmup + n {
        let text = format!("latency {i}");
        let (t0, sent_us) = (Instant::now(), trace::now_us());
        let send = a.call_value("messages.send", json!({"to": "user:bob", "text": text}));
        let (sent, got) = tokio::join!(send, wait_text(events, &text));
        let sent = sent.with_context(|| format!("sending {text:?}"))?;
        got?;
        if i >= warmup {
            samples.push(t0.elapsed());
            let message_id =
                sent.pointer("/message/message_id").and_then(Value::as_str).unwrap_or_default();
            stamps.push(trace::Stamp {
                message_id: message_id.to_owned(),
                sent_us,
                read_us: trace::now_us(),
            });
        }
    }
    Ok((Latencies::new(samples, started.elapsed(), warmup + n), stamps))
}

/// CPU time and context switches of each process, to tell what one message costs the
/// machine: on a shared or virtual CPU each wake-up of a parked thread costs more than
/// most of the work a message needs, so the count is a figure of its own.
struct Cost(Vec<(&'static str, Duration, u64)>);

impl Cost {
    fn read(pids: &[(&'static str, u32)]) -> Result<Self> {
        let each = |(name, pid): &(&'static str, u32)| -> Result<_> {
            Ok((*name, sys::cpu_time(*pid)?, sys::context_switches(*pid)?))
        };
        Ok(Self(pids.iter().map(each).collect::<Result<_>>()?))
    }

    fn since(&self, before: &Self) -> Self {
        let pairs = self.0.iter().zip(&before.0);
        Self(pairs.map(|(a, b)| (a.0, a.1.saturating_sub(b.1), a.2.saturating_sub(b.2))).collect())
    }

    fn print(&self, messages: usize) {
        let n = messages.max(1) as f64;
        let each: Vec<String> = self
            .0
            .iter()
            .map(|(name, cpu, switches)| {
                format!(
                    "{name} {:.0} µs, {:.1} switches",
                    cpu.as_secs_f64() * 1e6 / n,
                    *switches as f64 / n
                )
            })
            .collect();
        println!("  per message (CPU time, context switches): {}", each.join("; "));
    }
}

#[derive(Debug)]
struct Throughput {
    accepted: usize,
    accept_time: Duration,
    received: usize,
    receive_time: Duration,
    timed_out: bool,
    send_error: Option<String>,
}

/// `n` messages from `window` concurrent senders on one connection (pipelined); counts bob's events
/// until all have arrived or `limit` has passed.
async fn throughput_run(
    a: Arc<Client>,
    events: &mut UnboundedReceiver<Value>,
    n: usize,
    window: usize,
    limit: Duration,
) -> Result<Throughput> {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut senders = JoinSet::new();
    for _ in 0..window.max(1) {
        let (a, next) = (a.clone(), next.clone());
        senders.spawn(async move {
            let mut done = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(done);
                }
                a.call_value("messages.send", json!({"to": "user:bob", "text": format!("tp {i}")}))
                    .await
                    .with_context(|| format!("sending message {i}"))?;
                done += 1;
            }
        });
    }
    let deadline = tokio::time::Instant::now() + limit;
    let mut received = 0usize;
    let mut last_received = Duration::ZERO;
    let mut accepted = 0usize;
    let mut accept_time = Duration::ZERO;
    let mut send_error = None;
    let mut timed_out = false;
    let mut sending = true;
    while received < n {
        tokio::select! {
            joined = senders.join_next(), if sending => match joined {
                Some(Ok(Ok(k))) => accepted += k,
                Some(Ok(Err(e))) => { send_error.get_or_insert(format!("{e:#}")); }
                Some(Err(e)) => { send_error.get_or_insert(format!("{e}")); }
                None => {
                    sending = false;
                    accept_time = started.elapsed();
                }
            },
            event = tokio::time::timeout_at(deadline, events.recv()) => match event {
                Ok(Some(ev)) => {
                    if received_text(&ev).is_some_and(|t| t.starts_with("tp ")) {
                        received += 1;
                        last_received = started.elapsed();
                    }
                }
                Ok(None) => bail!("bob's connection closed"),
                Err(_) => { timed_out = true; break; }
            },
        }
    }
    if sending {
        // All arrived before every sender saw its last answer, or the time ran out.
        while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, senders.join_next()).await {
            match joined {
                Ok(Ok(k)) => accepted += k,
                Ok(Err(e)) => {
                    send_error.get_or_insert(format!("{e:#}"));
                }
                Err(e) => {
                    send_error.get_or_insert(format!("{e}"));
                }
            }
        }
        accept_time = started.elapsed();
        senders.abort_all();
    }
    Ok(Throughput {
        accepted,
        accept_time,
        received,
        receive_time: if timed_out { started.elapsed() } else { last_received },
        timed_out,
        send_error,
    })
}

#[derive(Debug)]
struct Ratchet {
    chain_encrypt: f64,
    chain_decrypt: f64,
    turn_encrypt: f64,
    turn_decrypt: f64,
}

/// ns per encrypt and per decrypt: `steps` messages from one sender (symmetric chain
/// steps), then `steps` with alternating senders (each one a DH ratchet turn).
fn ratchet_figures(steps: usize) -> Result<Ratchet> {
    let steps = steps.max(1);
    let alice_id = IdentityKeyPair::generate(&mut OsRng);
    let bob_id = IdentityKeyPair::generate(&mut OsRng);
    let spk = PreKeySecret::generate_signed(1, &bob_id, &mut OsRng);
    let bundle = PreKeyBundle {
        identity: bob_id.public(),
        signed_prekey: spk.signed_public().context("the signed prekey has no public half")?,
        one_time_prekey: None,
    };
    let mut alice = Session::initiate(&alice_id, &bundle, &mut OsRng)?;
    let first = alice.encrypt(b"hello", &mut OsRng)?;
    let Envelope::PreKey(msg) = Envelope::decode(&first)? else {
        bail!("the first message is not a prekey message");
    };
    let (mut bob, _) = Session::accept_prekey_message(&bob_id, &msg, &spk, None)?;
    // Bob answers once so both sides have a receiving chain.
    let reply = bob.encrypt(b"hi", &mut OsRng)?;
    alice.decrypt(&reply)?;
    let payload = [0x55u8; 256];

    // Same sender: encrypt all, then decrypt all, in order.
    let t = Instant::now();
    let mut sealed = Vec::with_capacity(steps);
    for _ in 0..steps {
        sealed.push(alice.encrypt(&payload, &mut OsRng)?);
    }
    let chain_encrypt = t.elapsed().as_nanos() as f64 / steps as f64;
    let t = Instant::now();
    for bytes in &sealed {
        bob.decrypt(bytes)?;
    }
    let chain_decrypt = t.elapsed().as_nanos() as f64 / steps as f64;

    // Alternating senders: every message starts a new sending chain (DH turn).
    let (mut enc, mut dec) = (Duration::ZERO, Duration::ZERO);
    for i in 0..steps {
        let (from, to) = if i % 2 == 0 { (&mut bob, &mut alice) } else { (&mut alice, &mut bob) };
        let t = Instant::now();
        let bytes = from.encrypt(&payload, &mut OsRng)?;
        enc += t.elapsed();
        let t = Instant::now();
        to.decrypt(&bytes)?;
        dec += t.elapsed();
    }
    Ok(Ratchet {
        chain_encrypt,
        chain_decrypt,
        turn_encrypt: enc.as_nanos() as f64 / steps as f64,
        turn_decrypt: dec.as_nanos() as f64 / steps as f64,
    })
}
