//! `letstalk-demo`: the whole system on one machine. An embedded relay and two daemons
//! (alice and bob) start in a temporary directory; the demo drives them through their
//! real IPC sockets exactly as a UI would, over real QUIC to the relay, and prints the
//! conversation, the timings and where the data lives.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use letstalk_ipc::Client;

#[derive(Debug, Parser)]
#[command(
    name = "letstalk-demo",
    about = "Runs a relay and two daemons locally and lets them talk."
)]
struct Args {
    /// Keep the temporary directory (and print how to talk to the daemons) instead of
    /// removing it at the end.
    #[arg(long)]
    keep: bool,
    /// How many messages to time for the round-trip figures.
    #[arg(long, default_value_t = 50)]
    rounds: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let args = Args::parse();
    let dir = tempfile::Builder::new().prefix("letstalk-demo-").tempdir().context("temp dir")?;
    let root = dir.path().to_path_buf();
    println!("Letstalk demo in {}\n", root.display());

    // The relay, embedded, on a free loopback port.
    let t = Instant::now();
    let relay_dir = root.join("relay");
    let relay =
        letstalk_relay::Relay::bind(letstalk_relay::Config::for_tests(relay_dir.clone())).await?;
    let relay_addr = format!("localhost:{}", relay.local_addr().port());
    let cert = relay.cert_path().to_path_buf();
    let (stop_relay, relay_stopped) = oneshot::channel::<()>();
    let relay_task = tokio::spawn(relay.serve(async move {
        let _ = relay_stopped.await;
    }));
    println!(
        "relay       listening on {relay_addr} (QUIC, ALPN letstalk/1), started in {:?}",
        t.elapsed()
    );

    let alice = start_daemon(&root, "alice", &relay_addr, &cert).await?;
    let bob = start_daemon(&root, "bob", &relay_addr, &cert).await?;

    let a = Client::connect(&alice.socket).await?;
    let b = Client::connect(&bob.socket).await?;
    for c in [&a, &b] {
        c.call_value("system.hello", json!({"client": "letstalk-demo"})).await?;
        wait_connected(c).await?;
    }
    let mut b_events = b.take_events().context("events")?;
    b.call_value("events.subscribe", json!({"kinds": ["message.received"]})).await?;
    let mut a_events = a.take_events().context("events")?;
    a.call_value("events.subscribe", json!({"kinds": ["message.received", "message.state"]}))
        .await?;

    println!();
    let password = "demo password, not a real one";
    for (c, name) in [(&a, "alice"), (&b, "bob")] {
        let t = Instant::now();
        let acc = c
            .call_value(
                "account.register",
                json!({"user_id": name, "email": format!("{name}@example.org"), "nickname": capitalize(name), "password": password}),
            )
            .await?;
        println!(
            "{name:<11} registered in {:>7.1} ms, identity {}",
            ms(t.elapsed()),
            short(&acc["fingerprint"])
        );
    }
    a.call_value("contacts.add", json!({"user_id": "bob"})).await?;
    b.call_value("contacts.add", json!({"user_id": "alice"})).await?;

    // A conversation.
    let lines = [
        ("alice", "Hi Bob! This message is end-to-end encrypted."),
        ("bob", "Hi Alice. The relay only ever saw ciphertext."),
        ("alice", "And it forgets it as soon as your device has it."),
        ("bob", "Perfect. Talk soon!"),
    ];
    for (who, text) in lines {
        let (from, to_events, to) =
            if who == "alice" { (&a, &mut b_events, "bob") } else { (&b, &mut a_events, "alice") };
        from.call_value("messages.send", json!({"to": format!("user:{to}"), "text": text})).await?;
        wait_received(to_events, text).await?;
    }
    // Round trips: UI to UI through both daemons and the relay.
    let mut samples = Vec::with_capacity(args.rounds);
    for i in 0..args.rounds {
        let text = format!("timing {i}");
        let t = Instant::now();
        a.call_value("messages.send", json!({"to": "user:bob", "text": text})).await?;
        wait_received(&mut b_events, &text).await?;
        samples.push(t.elapsed());
    }
    b.call_value("messages.mark_read", json!({"conversation": "user:alice"})).await?;
    a.call_value("messages.mark_read", json!({"conversation": "user:bob"})).await?;
    // Read receipts travel back end to end; give them a moment.
    let page =
        a.call_value("messages.list", json!({"conversation": "user:bob", "limit": 500})).await?;
    let last_out = page["messages"]
        .as_array()
        .and_then(|v| v.iter().rev().find(|m| m["direction"] == "out"))
        .cloned();
    if let Some(m) = last_out {
        settle_state(&a, &m, "read").await;
    }

    println!("\nThe conversation, as alice's daemon has it:");
    let page =
        a.call_value("messages.list", json!({"conversation": "user:bob", "limit": 500})).await?;
    for m in page["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| !text_of(m).starts_with("timing "))
    {
        let who = if m["direction"] == "out" { "alice" } else { "bob" };
        let state = if m["direction"] == "out" {
            format!("  [{}]", m["state"].as_str().unwrap_or(""))
        } else {
            String::new()
        };
        println!("  {who:>5}: {}{state}", text_of(m));
    }

    samples.sort();
    let p = |q: f64| {
        samples
            .get(((samples.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or_default()
    };
    println!(
        "\nTimings ({} messages, UI to UI through both daemons and the relay):",
        samples.len()
    );
    println!("  p50 {:.2} ms   p99 {:.2} ms   max {:.2} ms", ms(p(0.5)), ms(p(0.99)), ms(p(1.0)));

    let verify = a.call_value("contacts.verify", json!({"user_id": "bob"})).await?;
    let verify_b = b.call_value("contacts.verify", json!({"user_id": "alice"})).await?;
    println!(
        "\nSafety number (compare on both phones):\n  alice sees {}\n  bob sees   {}",
        text(&verify["safety_number"]),
        text(&verify_b["safety_number"])
    );

    println!("\nWhere the data lives:");
    for d in [&alice, &bob] {
        println!(
            "  {:<6} {} (SQLCipher database letstalk.db, key db.key, socket {})",
            d.name,
            d.data_dir.display(),
            d.socket.display()
        );
    }
    println!(
        "  relay  {} (accounts, prekeys and undelivered ciphertext only)",
        relay_dir.display()
    );
    let leaked = ["end-to-end encrypted", "timing 1", password]
        .iter()
        .any(|needle| contains(&root, needle.as_bytes()));
    println!(
        "  a byte search of all three directories for the message texts and the password: {}",
        if leaked { "FOUND (this is a bug)" } else { "nothing found" }
    );

    if args.keep {
        let path = dir.keep();
        println!("\nKept {}. The daemons stop with this demo; restart one with:", path.display());
        println!(
            "  letstalkd --data-dir {} --socket {} --relay {relay_addr} --relay-cert {}",
            alice.data_dir.display(),
            alice.socket.display(),
            cert.display()
        );
    }
    drop((a, b));
    for d in [alice, bob] {
        let _ = d.stop.send(());
        let _ = d.task.await;
    }
    let _ = stop_relay.send(());
    let _ = relay_task.await;
    if leaked {
        bail!("plaintext found on disk");
    }
    Ok(())
}

struct Daemon {
    name: &'static str,
    data_dir: PathBuf,
    socket: PathBuf,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), letstalkd::StartError>>,
}

async fn start_daemon(root: &Path, name: &'static str, relay: &str, cert: &Path) -> Result<Daemon> {
    let t = Instant::now();
    let data_dir = root.join(name);
    let socket = root.join(format!("{name}.sock"));
    let config = letstalkd::config::Config {
        config_file: None,
        data_dir: data_dir.clone(),
        socket: letstalkd::config::SocketSource::Path(socket.clone()),
        relays: vec![letstalkd::config::parse_relay(relay)?],
        relay_cert: Some(cert.to_path_buf()),
        log: "warn".into(),
        // Temporary data directories: their keys belong in them, not in the user's keyring.
        keyring: letstalkd::config::Keyring::Off,
        ring_timeout: Duration::from_secs(letstalkd::config::DEFAULT_RING_TIMEOUT_S),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let (ready_tx, ready) = oneshot::channel();
    let task = tokio::spawn(letstalkd::run(
        config,
        async move {
            let _ = stopped.await;
        },
        move |r| {
            let _ = ready_tx.send(r);
        },
    ));
    ready.await.context("the daemon did not start")?;
    println!("{name:<11} daemon ready in {:>7.1} ms, socket {}", ms(t.elapsed()), socket.display());
    Ok(Daemon { name, data_dir, socket, stop, task })
}

async fn wait_connected(c: &Client) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let st = c.call_value("system.status", json!({})).await?;
        if st["relay"]["state"] == "connected" {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    bail!("the daemon did not reach the relay")
}

async fn wait_received(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Value>,
    text: &str,
) -> Result<()> {
    loop {
        let e = tokio::time::timeout(Duration::from_secs(20), events.recv())
            .await
            .context("no message within 20 s")?
            .context("event stream closed")?;
        if e["kind"] == "message.received" && e["message"]["text"] == text {
            return Ok(());
        }
    }
}

/// Waits briefly for a message to reach `state` (read receipts travel back).
async fn settle_state(c: &Client, m: &Value, state: &str) {
    let Some(id) = m["message_id"].as_str() else { return };
    for _ in 0..200 {
        if let Ok(r) = c.call_value("messages.get", json!({"message_id": id})).await
            && r["message"]["state"] == state
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn contains(dir: &Path, needle: &[u8]) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else { return false };
    entries.flatten().any(|e| {
        let p = e.path();
        if p.is_dir() {
            contains(&p, needle)
        } else {
            std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
        }
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn text(v: &Value) -> String {
    v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())
}

fn text_of(m: &Value) -> &str {
    m["text"].as_str().unwrap_or("")
}

fn short(v: &Value) -> String {
    text(v).chars().take(19).collect()
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}
