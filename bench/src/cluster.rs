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
//! 4. two cluster nodes, half the pairs on each (the load spread over two nodes).
//!
//! The NATS servers (`--nats-servers`, three by default: a JetStream cluster keeping
//! three copies of everything) run on the same machine as the relays and the clients,
//! so these figures are what one box does, not what a cluster of machines does.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use letstalk_relay::testing::NatsCluster;

use crate::relay::{Delivery, connected_link, deliver, print_line};
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
    Ok(())
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
