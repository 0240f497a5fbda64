//! `letstalk-bench devices`: the cost of one message to an account with 1, 2 and 5
//! devices (issue 19, "Measure it").
//!
//! alice (one device) writes to bob, who has N devices linked with `devices.link_start`
//! and `account.link`; each message is sealed once per device of bob's (Signal's Sesame:
//! a session per device). For each N, after five unmeasured messages that set up the
//! sessions: `messages.send` until it answers (durable on alice's device), until the relay
//! holds it for every device (state `sent`), and until every one of bob's devices has shown
//! it (`message.received`); alice's daemon CPU per message; and, as root, the bytes on the
//! wire per message. For those the relay and all daemons run in a network namespace of
//! their own, so the loopback counters of that namespace are exactly this system's QUIC
//! traffic: alice's upload, the relay's pushes to every device, the delivery receipts and
//! every acknowledgement. The one-device figures are the reference each line is compared
//! with.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use letstalk_ipc::Client;
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;

use crate::DevicesArgs;
use crate::device::Netns;
use crate::ipc::exe_dir;
use crate::messaging::{register, start_connected};
use crate::servers::{Letstalkd, LetstalkdSpec, RelayProcess, release_bin};
use crate::stats::{Latencies, ms};
use crate::sys;

const TEXT: &str = "Meet at the climbing wall at six; bring the long rope and the quickdraws.";
const WARMUP: usize = 5;
const LIMIT: Duration = Duration::from_secs(15);

pub(crate) async fn run(args: &DevicesArgs) -> Result<()> {
    if args.devices.is_empty() || args.devices.contains(&0) || args.messages == 0 {
        bail!("--devices needs sizes of at least 1 and --messages at least 1");
    }
    let dir = exe_dir()?;
    let daemon_bin = release_bin(args.daemon.as_ref(), &dir, "letstalkd")?;
    let relay_bin = release_bin(args.relay.as_ref(), &dir, "letstalk-relay")?;
    let work = tempfile::Builder::new().prefix("letstalk-bench-").tempdir()?;

    println!("letstalk-bench devices: {}", sys::host());
    println!(
        "  alice (1 device) → bob with {:?} devices, {} sequential messages of {} bytes per \
         size; relay and daemons are separate processes",
        args.devices,
        args.messages,
        TEXT.len()
    );
    println!();
    let mut reference: Option<Figures> = None;
    for &n in &args.devices {
        let home = work.path().join(format!("n{n}"));
        match one_size(&daemon_bin, &relay_bin, &home, n, args.messages).await {
            Ok(f) => {
                f.print(n, args.messages, reference.as_ref());
                if reference.is_none() {
                    reference = Some(f);
                }
            }
            Err(e) => println!("== bob on {n} devices: the run failed: {e:#}\n"),
        }
    }
    Ok(())
}

struct Figures {
    devices: usize,
    durable: Latencies,
    accepted: Latencies,
    everywhere: Latencies,
    /// alice's daemon CPU time per message.
    cpu: Duration,
    /// Bytes on the wire per message, when measured in a namespace of our own.
    wire: Option<f64>,
}

impl Figures {
    fn print(&self, n: usize, messages: usize, reference: Option<&Figures>) {
        let vs = |now: f64, then: Option<f64>| match then {
            Some(then) if then > 0.0 && reference.is_some_and(|r| r.devices != n) => {
                format!(
                    "  ({:.2}× the {}-device figure)",
                    now / then,
                    reference.map_or(0, |r| r.devices)
                )
            }
            _ => String::new(),
        };
        let secs = |d: Duration| d.as_secs_f64();
        let line = |label: String, value: String| println!("  {label:<55} {value}");
        println!("== One message to bob on {n} device(s) ({messages} messages) ==");
        for (label, l, r) in [
            (
                "messages.send answered (durable on alice's device)".to_owned(),
                &self.durable,
                reference.map(|r| &r.durable),
            ),
            (
                format!("held by the relay for all {n} device(s) (state sent)"),
                &self.accepted,
                reference.map(|r| &r.accepted),
            ),
            (
                "shown on every one of bob's devices".to_owned(),
                &self.everywhere,
                reference.map(|r| &r.everywhere),
            ),
        ] {
            let value = format!("p50 {}  p99 {}", ms(l.p50()), ms(l.p99()));
            line(label, value + &vs(secs(l.p50()), r.map(|r| secs(r.p50()))));
        }
        line(
            "alice's daemon CPU per message".to_owned(),
            format!("{:.2} ms", secs(self.cpu) * 1e3)
                + &vs(secs(self.cpu), reference.map(|r| secs(r.cpu))),
        );
        line(
            "bytes on the wire per message (all QUIC traffic)".to_owned(),
            match self.wire {
                Some(bytes) => format!("{bytes:.0} B") + &vs(bytes, reference.and_then(|r| r.wire)),
                None => "not measured (needs root for a network namespace)".to_owned(),
            },
        );
        println!(
            "  (the text is {} bytes; each device of bob's gets its own sealed copy)",
            TEXT.len()
        );
        println!();
    }
}

/// The received bytes of `lo` in the network namespace of `pid`.
fn loopback_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/net/dev");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("lo:"))
        .with_context(|| format!("{path} has no lo line"))?;
    let first = line.split_whitespace().next().unwrap_or_default();
    first.parse().with_context(|| format!("{path}: lo received {first:?}"))
}

async fn one_size(
    daemon_bin: &Path,
    relay_bin: &Path,
    home: &Path,
    n: usize,
    messages: usize,
) -> Result<Figures> {
    eprintln!("  measuring bob on {n} device(s) …");
    // Our own namespace when we may make one: its loopback carries only this run.
    let netns = Netns::new(&format!("dev{n}")).ok();
    let ns = netns.as_ref().map(|ns| ns.0.as_str());
    let mut relay = RelayProcess::start_at(relay_bin, &home.join("relay"), ns, "127.0.0.1:0", &[])?;
    let start = |name: &str| {
        let mut spec =
            LetstalkdSpec::new(daemon_bin, home.join(name)).with_relay(relay.port, &relay.cert);
        spec.netns = ns.map(str::to_owned);
        spec
    };

    let mut daemons: Vec<Letstalkd> = Vec::new();
    let mut bob: Vec<Client> = Vec::new();
    daemons.push(start_connected(&start("bob0")).await?);
    bob.push(Client::connect(&daemons[0].socket).await?);
    register(&bob[0], "bob").await?;
    for i in 1..n {
        let d = start_connected(&start(&format!("bob{i}"))).await?;
        let c = Client::connect(&d.socket).await?;
        let code = bob[0].call_value("devices.link_start", json!({})).await?;
        let code = code["code"].as_str().context("link_start gave no code")?.to_owned();
        c.call_value("account.link", json!({"code": code, "device_name": format!("bob {i}")}))
            .await
            .with_context(|| format!("linking bob's device {i}"))?;
        daemons.push(d);
        bob.push(c);
    }
    let mut alice_daemon = start_connected(&start("alice")).await?;
    let alice = Client::connect(&alice_daemon.socket).await?;
    register(&alice, "alice").await?;
    alice.call_value("contacts.add", json!({"user_id": "bob"})).await?;
    bob[0].call_value("contacts.add", json!({"user_id": "alice"})).await?;

    let mut received = Vec::with_capacity(n);
    for c in &bob {
        let events = c.take_events().context("events taken")?;
        c.call_value("events.subscribe", json!({"kinds": ["message.received"]})).await?;
        received.push(events);
    }
    let mut states = alice.take_events().context("events taken")?;
    alice.call_value("events.subscribe", json!({"kinds": ["message.state"]})).await?;

    let mut durable = Vec::with_capacity(messages);
    let mut accepted = Vec::with_capacity(messages);
    let mut everywhere = Vec::with_capacity(messages);
    let mut before = None;
    let mut wall = Instant::now();
    for i in 0..WARMUP + messages {
        if i == WARMUP {
            // Every session is set up: the measured part starts here.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let bytes = if ns.is_some() { Some(loopback_bytes(relay.pid())?) } else { None };
            before = Some((sys::cpu_time(alice_daemon.pid())?, bytes));
            wall = Instant::now();
        }
        let text = format!("{TEXT} #{i}");
        let t0 = Instant::now();
        let sent =
            alice.call_value("messages.send", json!({"to": "user:bob", "text": text})).await?;
        let t1 = t0.elapsed();
        let id = sent.pointer("/message/message_id").and_then(Value::as_str).unwrap_or_default();
        wait_state(&mut states, id).await?;
        let t2 = t0.elapsed();
        for events in &mut received {
            wait_text(events, &text).await?;
        }
        if i >= WARMUP {
            durable.push(t1);
            accepted.push(t2);
            everywhere.push(t0.elapsed());
        }
    }
    let elapsed = wall.elapsed();
    // The last delivery receipts travel too: they belong to the messages measured.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (cpu0, bytes0) = before.context("no message measured")?;
    let cpu = sys::cpu_time(alice_daemon.pid())?.saturating_sub(cpu0) / messages as u32;
    let wire = match bytes0 {
        Some(b0) => Some(loopback_bytes(relay.pid())?.saturating_sub(b0) as f64 / messages as f64),
        None => None,
    };
    drop((alice, bob));
    alice_daemon.stop()?;
    for mut d in daemons {
        d.stop()?;
    }
    relay.stop()?;
    Ok(Figures {
        devices: n,
        durable: Latencies::new(durable, elapsed, messages),
        accepted: Latencies::new(accepted, elapsed, messages),
        everywhere: Latencies::new(everywhere, elapsed, messages),
        cpu,
        wire,
    })
}

/// Waits until message `id` has left `queued` on alice's device.
async fn wait_state(events: &mut UnboundedReceiver<Value>, id: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let Ok(Some(e)) = tokio::time::timeout_at(deadline, events.recv()).await else {
            bail!("message {id} was not accepted by the relay within {LIMIT:?}");
        };
        if e["message_id"] == id && e["state"] != "queued" {
            return Ok(());
        }
    }
}

/// Waits until a device shows `text`.
async fn wait_text(events: &mut UnboundedReceiver<Value>, text: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let Ok(Some(e)) = tokio::time::timeout_at(deadline, events.recv()).await else {
            bail!("{text:?} did not reach one of bob's devices within {LIMIT:?}");
        };
        if e.pointer("/message/text").and_then(Value::as_str) == Some(text) {
            return Ok(());
        }
    }
}
