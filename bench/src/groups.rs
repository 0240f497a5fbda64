//! `letstalk-bench groups`: the cost of one group message to N members, on the sender
//! and on the relay, for each N of `--members` (10 and 50 by default).
//!
//! Sender side: the sender-key encryption alone (letstalk-crypto, in process), and the
//! real daemon: `messages.send` to a group of N until it answers (durable on the device:
//! encrypted once, one outbox row) and until the relay has accepted it for all N
//! (`message.state` `sent`). Relay side: one `SendGroup` request with the same
//! ciphertext for N recipients, straight through `letstalk-link`, answered once every
//! copy is stored. The pairwise alternative (N−1 Double Ratchet encryptions and N−1
//! requests) is printed for scale.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use letstalk_crypto::SenderKey;
use letstalk_ipc::Client;
use letstalk_wire::{Request, Response};
use rand_core::OsRng;
use serde_json::{Value, json};

use crate::GroupsArgs;
use crate::ipc::exe_dir;
use crate::messaging::{register, start_daemon};
use crate::relay::connected_link;
use crate::servers::{RelayProcess, release_bin};
use crate::stats::{Latencies, ms};
use crate::sys;

const TEXT: &str = "Meet at the climbing wall at six; bring the long rope and the quickdraws.";

pub(crate) async fn run(args: &GroupsArgs) -> Result<()> {
    if args.members.is_empty() || args.messages == 0 {
        bail!("--members needs at least one size and --messages at least 1");
    }
    let dir = exe_dir()?;
    let daemon_bin = release_bin(args.daemon.as_ref(), &dir, "letstalkd")?;
    let relay_bin = release_bin(args.relay.as_ref(), &dir, "letstalk-relay")?;
    let work = tempfile::Builder::new().prefix("letstalk-bench-").tempdir()?;

    println!("letstalk-bench groups: {}", sys::host());
    println!(
        "  one sender, groups of {:?} members, {} sequential messages of {} bytes per size; \
         relay and daemon are separate processes on 127.0.0.1",
        args.members,
        args.messages,
        TEXT.len()
    );
    println!();
    let (encrypt_ns, body_len) = sender_key_cost(args.messages.max(1000))?;
    println!("== Sender key (letstalk-crypto, in process) ==");
    println!(
        "  encrypt + sign one group message: {encrypt_ns:.0} ns, {body_len} bytes on the wire, \
         whatever the group's size"
    );
    println!();
    for &n in &args.members {
        let home = work.path().join(format!("n{n}"));
        match one_size(&daemon_bin, &relay_bin, &home, n, args.messages).await {
            Ok(f) => f.print(n, args.messages),
            Err(e) => println!("== {n} members: the run failed: {e:#}"),
        }
    }
    Ok(())
}

/// ns per sender-key encryption of the benchmark text, and the ciphertext's length.
fn sender_key_cost(rounds: usize) -> Result<(f64, usize)> {
    let mut key = SenderKey::generate(b"bench-group", &mut OsRng)?;
    let mut len = 0;
    let started = Instant::now();
    for _ in 0..rounds {
        len = key.encrypt(TEXT.as_bytes())?.len();
    }
    Ok((started.elapsed().as_nanos() as f64 / rounds as f64, len + 2 + 32))
}

struct Figures {
    durable: Latencies,
    accepted: Latencies,
    relay: Latencies,
}

impl Figures {
    fn print(&self, n: usize, messages: usize) {
        println!("== One group message to {n} members ({messages} messages) ==");
        println!(
            "  sender, messages.send answered (durable, encrypted once):   p50 {}  p99 {}",
            ms(self.durable.p50()),
            ms(self.durable.p99())
        );
        println!(
            "  sender, until the relay holds it for all {n} (state sent): p50 {}  p99 {}",
            ms(self.accepted.p50()),
            ms(self.accepted.p99())
        );
        println!(
            "  relay, one SendGroup for {n} recipients (stored for all):   p50 {}  p99 {}  \
             = {:.0} mailbox deliveries/s",
            ms(self.relay.p50()),
            ms(self.relay.p99()),
            n as f64 / self.relay.p50().as_secs_f64().max(1e-9)
        );
        println!(
            "  (pairwise fan-out instead would cost {} Double Ratchet encryptions and {} relay \
             requests per message)",
            n.saturating_sub(1),
            n.saturating_sub(1)
        );
        println!();
    }
}

async fn one_size(
    daemon_bin: &Path,
    relay_bin: &Path,
    home: &Path,
    n: usize,
    messages: usize,
) -> Result<Figures> {
    eprintln!("  measuring a group of {n} …");
    let mut relay = RelayProcess::start(relay_bin, &home.join("relay"))?;
    // The members: accounts on the relay (links kept open so they count as online).
    let mut members = Vec::with_capacity(n);
    let mut links = Vec::with_capacity(n);
    for i in 1..n {
        let name = format!("member{i}");
        let (link, _pushes) = connected_link(relay.port, &relay.cert, &name).await?;
        links.push(link);
        members.push(name);
    }
    let mut daemon = start_daemon(daemon_bin, &home.join("sender"), &relay).await?;
    let client = Client::connect(&daemon.socket).await?;
    register(&client, "sender").await?;
    let group = client
        .call_value("groups.create", json!({"name": "Bench", "members": members}))
        .await
        .context("creating the group")?;
    let conversation = format!("group:{}", group["group_id"].as_str().unwrap_or_default());
    let mut events = client.take_events().context("events taken")?;
    client.call_value("events.subscribe", json!({"kinds": ["message.state"]})).await?;

    let mut durable = Vec::with_capacity(messages);
    let mut accepted = Vec::with_capacity(messages);
    let wall = Instant::now();
    for _ in 0..messages + 5 {
        let t0 = Instant::now();
        let sent =
            client.call_value("messages.send", json!({"to": conversation, "text": TEXT})).await?;
        let t1 = t0.elapsed();
        let id = sent.pointer("/message/message_id").and_then(Value::as_str).unwrap_or_default();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let Ok(Some(e)) = tokio::time::timeout_at(deadline, events.recv()).await else {
                bail!("message {id} was not accepted by the relay within 10 s");
            };
            if e["message_id"] == id && e["state"] != "queued" {
                break;
            }
        }
        durable.push(t1);
        accepted.push(t0.elapsed());
    }
    // The first messages also hand out the sender key: left out as warm-up.
    let skip = 5.min(durable.len());
    let durable = Latencies::new(durable.split_off(skip), wall.elapsed(), messages);
    let accepted = Latencies::new(accepted.split_off(skip), wall.elapsed(), messages);

    // Relay side alone: the same shape of request from a plain link.
    let (direct, _pushes) = connected_link(relay.port, &relay.cert, "direct").await?;
    let mut body = vec![b'G', 4];
    body.extend_from_slice(b"g-01");
    body.extend(vec![0xa5u8; 150]);
    let mut to = members.clone();
    to.push("sender".to_owned());
    let mut relay_times = Vec::with_capacity(messages);
    let wall = Instant::now();
    for i in 0..messages {
        let request =
            Request::SendGroup { to: to.clone(), msg_id: format!("bench-{i}"), body: body.clone() };
        let t0 = Instant::now();
        match direct.request(request).await? {
            Response::GroupSent { refused, .. } if refused.is_empty() => {}
            other => bail!("SendGroup answered {other:?}"),
        }
        relay_times.push(t0.elapsed());
    }
    let relay_lat = Latencies::new(relay_times, wall.elapsed(), messages);
    drop(client);
    daemon.stop()?;
    relay.stop()?;
    Ok(Figures { durable, accepted, relay: relay_lat })
}
