//! `letstalk-bench cluster`: delivery through relay nodes that share a NATS JetStream
//! cluster (`letstalk-relay --cluster`), beside the single embedded relay measured in
//! the same run with the same shape as `relay` (publisher i → subscriber i, each its
//! own `letstalk-link` connection, `--window` sends in flight, batched acks).
//!
//! Runs, each on fresh servers so that no run inherits another's accounts or queues:
//!
//! 1. the embedded relay (SQLite, `synchronous=FULL`), every client on it;
//! 2. one cluster node, every client on it;
//! 3. two cluster nodes, every publisher on node a and every subscriber on node b, so
//!    that every message crosses nodes (stored by a, woken on the bus, read by b);
//! 4. two cluster nodes, half the pairs on each (the load spread over two nodes);
//! 5. failover: a sender on node a (node b its second candidate), node a killed with -9,
//!    a message sent right after: the time until its recipient on node b has it, with
//!    the link's default timings (the daemon's relay client; target ≤ 5 s).
//!
//! The NATS servers (`--nats-servers`, three by default: a JetStream cluster keeping
//! three copies of everything) run on the same machine as the relays and the clients,
//! so these figures are what one box does, not what a cluster of machines does.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use letstalk_link::{Kind, Link, LinkConfig, Push};
use letstalk_relay::testing::NatsCluster;
use tokio::sync::mpsc;

use crate::relay::{Delivery, connected_link, deliver, print_line, registered_link};
use crate::servers::{RelayProcess, release_bin};
use crate::{ClusterArgs, RelayArgs, sys};

pub(crate) async fn run(args: &ClusterArgs) -> Result<()> {
    if args.pairs < 2 || args.messages == 0 {
        bail!("--pairs must be at least 2 and --messages at least 1");
    }
    let relay_bin = release_bin(args.relay.as_ref(), &crate::ipc::exe_dir()?, "letstalk-relay")?;
    letstalk_relay::testing::nats_server_bin().map_err(anyhow::Error::msg)?;
    let work = tempfile::Builder::new().prefix("letstalk-bench-cluster-").tempdir()?;
    let limit = Duration::from_secs(args.limit_s);
    let shape = RelayArgs {
        relay: None,
        mosquitto: None,
        pairs: args.pairs,
        messages: args.messages,
        payload: args.payload,
        window: args.window,
        limit_s: args.limit_s,
        offline: false,
    };
    let total = args.pairs * args.messages;

    println!("letstalk-bench cluster: {}", sys::host());
    println!(
        "  {} publishers → {} subscribers, {} messages of {} bytes each ({total} in all), {} in \
         flight per publisher; NATS: {} server(s) on this machine; all on 127.0.0.1",
        args.pairs, args.pairs, args.messages, args.payload, args.window, args.nats_servers
    );
    println!();

    let mut results: Vec<(String, Option<Delivery>)> = Vec::new();
    let runs: [(&str, Layout); 4] = [
        ("embedded relay (SQLite), one process", Layout::Embedded),
        ("cluster, 1 node", Layout::OneNode),
        ("cluster, 2 nodes, publishers on a → subscribers on b", Layout::Across),
        ("cluster, 2 nodes, half the pairs on each", Layout::Split),
    ];
    for (i, (label, layout)) in runs.into_iter().enumerate() {
        eprintln!("  measuring {label} …");
        let home = work.path().join(format!("run{i}"));
        let d = match one_run(&relay_bin, &home, args, &shape, layout, limit).await {
            Ok(d) => Some(d),
            Err(e) => {
                println!("{label}: the run failed: {e:#}");
                None
            }
        };
        results.push((label.to_owned(), d));
    }

    println!("== Delivery between {} pairs, {}-byte bodies ==", args.pairs, args.payload);
    for (label, d) in &results {
        if let Some(d) = d {
            print_line(label, d, total);
        }
    }
    let rate = |i: usize| results.get(i).and_then(|(_, d)| d.as_ref()).map(Delivery::rate);
    if let (Some(embedded), Some(across)) = (rate(0), rate(2))
        && embedded > 0.0
    {
        println!("  across two nodes ÷ embedded relay: {:.2}×", across / embedded);
    }
    if let (Some(one), Some(two)) = (rate(1), rate(3))
        && one > 0.0
    {
        println!("  two nodes ÷ one node (same machine): {:.2}×", two / one);
    }
    println!(
        "  (each accepted message is stored with {} cop{} before the sender hears back; the \
         embedded relay commits to one SQLite file)",
        args.nats_servers.min(3),
        if args.nats_servers.min(3) == 1 { "y" } else { "ies" }
    );

    eprintln!("  measuring failover …");
    println!();
    println!("== Failover after kill -9 of the sender's node ({FAILOVER_ROUNDS} rounds) ==");
    match failover(&relay_bin, &work.path().join("failover"), args).await {
        Ok(mut times) => {
            times.sort();
            let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
            let listed: Vec<String> = times.iter().map(|d| format!("{:.0}", ms(d))).collect();
            println!(
                "  sent right after the kill → delivered on the other node: median {:.0} ms, \
                 max {:.0} ms (each: {} ms; target ≤ 5,000 ms)",
                times.get(times.len() / 2).map_or(0.0, ms),
                times.last().map_or(0.0, ms),
                listed.join(", ")
            );
            println!(
                "  (the link's default timings, as in the daemon: a request silent for 3 s \
                 gives the node up, the next candidate is tried at once)"
            );
        }
        Err(e) => println!("  the run failed: {e:#}"),
    }
    Ok(())
}

/// Rounds of the failover measurement.
const FAILOVER_ROUNDS: usize = 3;

/// Two cluster nodes; per round a fresh sender whose candidates are a then b, a warm-up
/// message, node a killed with -9, a message sent right after (retried as the daemon's
/// sender does), and the time until the recipient on node b has it. Node a is started
/// again on its port between rounds.
async fn failover(bin: &Path, home: &Path, args: &ClusterArgs) -> Result<Vec<Duration>> {
    let cluster = NatsCluster::start(&home.join("nats"), args.nats_servers)
        .context("starting nats-server")?;
    let url = cluster.url();
    let node = |name: &str, listen: &str| {
        let extra = ["--cluster", url.as_str(), "--node-id", name];
        RelayProcess::start_at(bin, &home.join(name), None, listen, &extra)
    };
    let mut a = node("node-a", "127.0.0.1:0")?;
    let b = node("node-b", "127.0.0.1:0")?;
    // Each node made its own certificate: the sender trusts both.
    let trust = home.join("both.pem");
    std::fs::write(&trust, [std::fs::read(&a.cert)?, std::fs::read(&b.cert)?].concat())?;
    let (bob, mut inbox) = connected_link(b.port, &b.cert, "bob").await?;
    let mut times = Vec::new();
    for round in 0..FAILOVER_ROUNDS {
        if round > 0 {
            a = node("node-a", &format!("127.0.0.1:{}", a.port))?;
        }
        let relays = vec![format!("localhost:{}", a.port), format!("localhost:{}", b.port)];
        let config = LinkConfig::with_relays(relays, Some(trust.clone()));
        let alice = registered_link(config, &format!("alice{round}")).await?;
        send_until_stored(&alice, &format!("warm{round}")).await?;
        received(&bob, &mut inbox, &format!("warm{round}")).await?;

        a.kill()?;
        let started = Instant::now();
        let id = format!("after{round}");
        send_until_stored(&alice, &id).await?;
        received(&bob, &mut inbox, &id).await?;
        times.push(started.elapsed());
        alice.shutdown().await;
    }
    Ok(times)
}

/// Sends one message to bob as `msg_id`, again 250 ms after each failure while the relay
/// is unavailable (as the daemon's sender does from its outbox), within a minute.
async fn send_until_stored(link: &Link, msg_id: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match link.send("bob", msg_id, vec![0x5a; 256]).await {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == Kind::RelayUnavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e).context("sending"),
        }
    }
}

/// Waits for the push of `msg_id` and acknowledges it, so that the recipient's mailbox is
/// empty again for the next round.
async fn received(link: &Link, inbox: &mut mpsc::Receiver<Push>, msg_id: &str) -> Result<()> {
    let wait = async {
        while let Some(push) = inbox.recv().await {
            if let Push::Message(m) = push
                && m.msg_id == msg_id
            {
                return Ok(m.delivery_id);
            }
        }
        bail!("the recipient's link stopped")
    };
    let delivery_id = tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .context("the message did not arrive within a minute")??;
    link.ack(&[delivery_id]).await.context("acknowledging")
}

#[derive(Debug, Clone, Copy)]
enum Layout {
    Embedded,
    OneNode,
    Across,
    Split,
}

async fn one_run(
    bin: &Path,
    home: &Path,
    args: &ClusterArgs,
    shape: &RelayArgs,
    layout: Layout,
    limit: Duration,
) -> Result<Delivery> {
    let mut nats = None;
    let mut nodes = Vec::new();
    match layout {
        Layout::Embedded => nodes.push(RelayProcess::start(bin, &home.join("relay"))?),
        Layout::OneNode | Layout::Across | Layout::Split => {
            let cluster = NatsCluster::start(&home.join("nats"), args.nats_servers)
                .context("starting nats-server")?;
            let url = cluster.url();
            let count = if matches!(layout, Layout::OneNode) { 1 } else { 2 };
            for n in 0..count {
                let name = format!("node-{n}");
                let extra = ["--cluster", url.as_str(), "--node-id", name.as_str()];
                nodes.push(RelayProcess::start_with(bin, &home.join(&name), &extra)?);
            }
            nats = Some(cluster);
        }
    }
    // Which node each pair's publisher and subscriber use.
    let node_of = |i: usize, subscriber: bool| match layout {
        Layout::Embedded | Layout::OneNode => 0,
        Layout::Across => usize::from(subscriber),
        Layout::Split => i % 2,
    };
    let mut publishers = Vec::new();
    let mut subscribers = Vec::new();
    for i in 0..args.pairs {
        let s = &nodes[node_of(i, true)];
        subscribers.push(connected_link(s.port, &s.cert, &format!("sub{i}")).await?);
        let p = &nodes[node_of(i, false)];
        let (link, _pushes) = connected_link(p.port, &p.cert, &format!("pub{i}")).await?;
        publishers.push(link);
    }
    let result = deliver(publishers, subscribers, shape, limit).await;
    for n in &mut nodes {
        n.stop()?;
    }
    drop(nats);
    result
}
