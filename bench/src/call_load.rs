//! How many concurrent calls one relay carries: N pairs of relay clients (`letstalk-link`,
//! no daemons: the daemons' own cost is measured by the calls bench), each pair with a
//! route for its call and audio-sized media (50 datagrams a second of 160 sealed bytes)
//! both ways, like a call. For each N: the datagrams the relay forwarded per second,
//! the loss, the latency p50/p99 from one client to the other, and the relay's CPU.
//!
//! The clients run in this process on the same cores as the relay, so the figures are a
//! floor for the relay alone: at high N the bench competes with what it measures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use letstalk_link::Link;
use letstalk_wire::{MediaDatagram, Request, Response};

use crate::relay::connected_link;
use crate::servers::RelayProcess;
use crate::stats::{Latencies, ms};
use crate::sys;

/// Audio: 50 frames a second of 160 bytes (a 20 ms Opus frame, sealed).
const FPS: u32 = 50;
const SEALED: usize = 160;

/// What one level of concurrency gave.
pub(crate) struct Level {
    pub(crate) calls: usize,
    pub(crate) sent: u64,
    pub(crate) latencies: Latencies,
    pub(crate) forwarded_per_s: f64,
    pub(crate) relay_cpu: f64,
}

impl Level {
    pub(crate) fn loss(&self) -> f64 {
        let got = self.latencies.len() as f64;
        100.0 * (self.sent as f64 - got) / (self.sent as f64).max(1.0)
    }
}

/// Registers `2 × max(levels)` clients once, then runs each level for `seconds`.
pub(crate) async fn run(
    relay: &RelayProcess,
    levels: &[usize],
    seconds: u64,
) -> Result<Vec<Level>> {
    let most = levels.iter().copied().max().unwrap_or(0);
    let mut links = Vec::with_capacity(2 * most);
    // Each link's received datagrams; a link receives in one call per level.
    let mut inboxes = Vec::with_capacity(2 * most);
    for i in 0..2 * most {
        let (link, _pushes) = connected_link(relay.port, &relay.cert, &format!("load{i}")).await?;
        let inbox = link.take_datagrams().context("datagrams already taken")?;
        inboxes.push(Arc::new(tokio::sync::Mutex::new(inbox)));
        links.push(link);
    }
    let base = Instant::now();
    let mut out = Vec::new();
    for &calls in levels {
        let pairs: Vec<(Link, Link)> =
            (0..calls).map(|i| (links[2 * i].clone(), links[2 * i + 1].clone())).collect();
        for (i, (a, b)) in pairs.iter().enumerate() {
            let call_id = call_id(calls, i);
            route(a, call_id, &format!("load{}", 2 * i + 1)).await?;
            route(b, call_id, &format!("load{}", 2 * i)).await?;
        }
        let cpu0 = sys::cpu_time(relay.pid())?;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for (i, (a, b)) in pairs.iter().enumerate() {
            let call_id = call_id(calls, i);
            for (from, to) in [(a, 2 * i + 1), (b, 2 * i)] {
                let inbox = inboxes[to].clone();
                tasks.push(tokio::spawn(stream(from.clone(), inbox, call_id, base, seconds)));
            }
        }
        let mut sent = 0;
        let mut samples = Vec::new();
        for t in tasks {
            let (s, l) = t.await.context("a media task")?;
            sent += s;
            samples.extend(l);
        }
        let wall = started.elapsed();
        let cpu = sys::cpu_time(relay.pid())?.saturating_sub(cpu0);
        for (i, (a, b)) in pairs.iter().enumerate() {
            for link in [a, b] {
                let _ = link.request(Request::CallUnroute { call_id: call_id(calls, i) }).await;
            }
        }
        let got = samples.len();
        out.push(Level {
            calls,
            sent,
            latencies: Latencies::new(samples, wall, got),
            forwarded_per_s: got as f64 / wall.as_secs_f64(),
            relay_cpu: 100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
        });
    }
    for l in links {
        l.shutdown().await;
    }
    Ok(out)
}

fn call_id(level: usize, i: usize) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&(level as u64).to_be_bytes());
    id[8..].copy_from_slice(&(i as u64).to_be_bytes());
    id
}

async fn route(link: &Link, call_id: [u8; 16], peer: &str) -> Result<()> {
    match link.request(Request::CallRoute { call_id, peer: peer.to_owned() }).await? {
        Response::Ok => Ok(()),
        other => anyhow::bail!("CallRoute answered {other:?}"),
    }
}

/// Sends `seconds` of audio from `from` to the link whose `inbox` it is and collects what arrives (and for half
/// a second after): (datagrams sent, latencies of those received).
async fn stream(
    from: Link,
    inbox: Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Bytes>>>,
    call_id: [u8; 16],
    base: Instant,
    seconds: u64,
) -> (u64, Vec<Duration>) {
    let frames = FPS as u64 * seconds;
    let period = Duration::from_secs(1) / FPS;
    let end = Instant::now() + Duration::from_secs(seconds) + Duration::from_millis(500);
    let recv = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut rx = inbox.lock().await;
        while let Ok(Some(d)) = tokio::time::timeout_at(end.into(), rx.recv()).await {
            let Ok(m) = MediaDatagram::decode(&d) else { continue };
            if m.call_id != call_id {
                continue;
            }
            let Some(stamp) = m.sealed.get(..8) else { continue };
            let sent_ns = u64::from_be_bytes(stamp.try_into().unwrap_or_default());
            let now_ns = base.elapsed().as_nanos() as u64;
            got.push(Duration::from_nanos(now_ns.saturating_sub(sent_ns)));
        }
        got
    });
    let start = Instant::now();
    let mut sent = 0;
    for n in 0..frames {
        let mut sealed = vec![0u8; SEALED];
        sealed[..8].copy_from_slice(&(base.elapsed().as_nanos() as u64).to_be_bytes());
        if let Ok(d) = (MediaDatagram { call_id, sealed: &sealed }).encode()
            && from.send_datagram(Bytes::from(d)).is_ok()
        {
            sent += 1;
        }
        tokio::time::sleep_until((start + period * (n as u32 + 1)).into()).await;
    }
    (sent, recv.await.unwrap_or_default())
}

/// Prints one line per level and the verdict.
pub(crate) fn print(levels: &[Level]) {
    println!("== Concurrent calls through one relay (audio both ways, letstalk-link clients) ==");
    for l in levels {
        println!(
            "  {:>4} calls: {:>7.0} datagrams/s forwarded, loss {:>5.2} %, latency p50 {} p99 {}, relay CPU {:>3.0} %",
            l.calls,
            l.forwarded_per_s,
            l.loss(),
            ms(l.latencies.p50()),
            ms(l.latencies.p99()),
            l.relay_cpu
        );
    }
    let carried = levels
        .iter()
        .filter(|l| l.loss() < 1.0 && l.latencies.p99() < Duration::from_millis(100))
        .map(|l| l.calls)
        .max();
    match carried {
        Some(n) => println!(
            "  carried with < 1 % loss and p99 < 100 ms: {n} concurrent calls (the most tried that held)"
        ),
        None => println!("  no level held < 1 % loss and p99 < 100 ms"),
    }
}
