//! `letstalk-bench abuse`: what one abusive account can cost the relay.
//!
//! Memory: the relay's resident memory (from /proc) while one connection keeps 32
//! maximal `SendGroup` requests in flight (the most recipients and bytes the relay
//! accepts, to random names with two real users among them), beside the same relay
//! under 32 in flight honest one-to-one sends; meanwhile two other users talk, and their
//! round trips are printed. Rate: for each costly request, one account floods it from
//! one connection (paced under the connection's stream limit) and the bench prints how
//! many were accepted per second, how many refused, and the relay CPU they cost.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use letstalk_link::{Kind, Link};
use letstalk_wire::{ErrorKind as WireKind, ReportKind, Request, Response};

use crate::AbuseArgs;
use crate::ipc::exe_dir;
use crate::relay::connected_link;
use crate::servers::{RelayProcess, release_bin};
use crate::stats::{Latencies, ms};
use crate::sys;

/// Builds the i-th request of a flood.
type MakeRequest = fn(u64) -> Request;

/// The relay's defaults (letstalk-relay `Limits`): a group's size and the bytes one
/// group message may store.
const MAX_RECIPIENTS: usize = 256;
const MAX_FANOUT_BYTES: usize = 32 * 1024 * 1024;

pub(crate) async fn run(args: &AbuseArgs) -> Result<()> {
    if args.rounds == 0 || args.flood_s == 0 {
        bail!("--rounds and --flood-s must be at least 1");
    }
    let dir = exe_dir()?;
    let relay_bin = release_bin(args.relay.as_ref(), &dir, "letstalk-relay")?;
    let work = tempfile::Builder::new().prefix("letstalk-bench-").tempdir()?;
    println!("letstalk-bench abuse: {}", sys::host());
    println!(
        "  relay is a separate process on 127.0.0.1; one attacking connection, 32 requests \
         in flight, {} rounds each",
        args.rounds
    );
    println!();

    println!("== Relay memory under 32 concurrent maximal SendGroup (one connection) ==");
    let honest = memory_run(&relay_bin, &work.path().join("honest"), false, args.rounds).await?;
    let attack = memory_run(&relay_bin, &work.path().join("attack"), true, args.rounds).await?;
    honest.print("baseline: 32 in flight one-to-one sends of 64 B");
    attack.print(&format!(
        "attack: 32 in flight SendGroup, {MAX_RECIPIENTS} recipients x {} KiB",
        MAX_FANOUT_BYTES / MAX_RECIPIENTS / 1024
    ));
    println!();

    println!("== What one account can cost before it is limited ({} s floods) ==", args.flood_s);
    let relay = RelayProcess::start(&relay_bin, &work.path().join("rate"))?;
    let (victim, _p) = connected_link(relay.port, &relay.cert, "victim").await?;
    let (mallory, _m) = connected_link(relay.port, &relay.cert, "mallory").await?;
    drop(victim);
    let mallory = Arc::new(mallory);
    let flood = Duration::from_secs(args.flood_s);
    let kinds: [(&str, MakeRequest); 5] = [
        ("LookupUser (random names)", |i| Request::LookupUser { user_id: format!("guess{i}") }),
        ("FetchBundle", |_| Request::FetchBundle { user_id: "victim".into() }),
        ("SubmitReport", |i| Request::SubmitReport {
            id: format!("r{i}"),
            kind: ReportKind::Feedback,
            body: b"{\"text\":\"spam\"}".to_vec(),
        }),
        ("Send to an offline stranger (64 B)", |i| Request::Send {
            to: "victim".into(),
            msg_id: format!("s{i}"),
            body: vec![0; 64],
        }),
        ("SendGroup, maximal", |i| Request::SendGroup {
            to: random_recipients(),
            msg_id: format!("g{i}"),
            body: vec![0xA5; MAX_FANOUT_BYTES / MAX_RECIPIENTS],
        }),
    ];
    println!(
        "  {:<36} {:>10} {:>10} {:>10} {:>14}",
        "request", "sent/s", "accepted/s", "refused/s", "relay CPU %"
    );
    for (name, make) in kinds {
        let f = rate_run(&mallory, relay.pid(), flood, make).await?;
        let secs = f.elapsed.as_secs_f64();
        println!(
            "  {name:<36} {:>10.0} {:>10.1} {:>10.1} {:>14.1}",
            f.sent as f64 / secs,
            f.accepted as f64 / secs,
            f.refused as f64 / secs,
            f.cpu.as_secs_f64() / secs * 100.0
        );
    }
    println!(
        "  (refused = rate_limited or quota_exceeded; a connection opening over 500 streams/s \
         is closed, so floods are paced at 400/s)"
    );
    Ok(())
}

fn random_recipients() -> Vec<String> {
    let mut to: Vec<String> = (0..MAX_RECIPIENTS - 1)
        .map(|i| format!("r{}x{i}", rand_core::RngCore::next_u32(&mut rand_core::OsRng)))
        .collect();
    to.push("victim".into());
    to
}

struct Memory {
    baseline_mib: f64,
    peak_mib: f64,
    served: Latencies,
}

fn latencies(samples: Vec<Duration>, wall: Duration) -> Latencies {
    let n = samples.len();
    Latencies::new(samples, wall, n)
}

impl Memory {
    fn print(&self, what: &str) {
        println!("  {what}");
        println!(
            "    relay RSS: {:.1} MiB before, {:.1} MiB peak (+{:.1} MiB); other users' \
             round trip meanwhile p50 {} p99 {} ({} messages)",
            self.baseline_mib,
            self.peak_mib,
            self.peak_mib - self.baseline_mib,
            ms(self.served.p50()),
            ms(self.served.p99()),
            self.served.len()
        );
    }
}

async fn memory_run(relay_bin: &Path, home: &Path, attack: bool, rounds: usize) -> Result<Memory> {
    let relay = RelayProcess::start(relay_bin, home)?;
    let pid = relay.pid();
    let (mallory, _m) = connected_link(relay.port, &relay.cert, "mallory").await?;
    let (alice, _a) = connected_link(relay.port, &relay.cert, "alice").await?;
    let (bob, _b) = connected_link(relay.port, &relay.cert, "bob").await?;
    drop(bob);
    alice.ping().await?;
    let kib = |pid| sys::proc_status_kib(pid, "VmRSS");
    let baseline = kib(pid)?;
    let mallory = Arc::new(mallory);
    let mut tasks = tokio::task::JoinSet::new();
    for stream in 0..32 {
        let mallory = mallory.clone();
        tasks.spawn(async move {
            for round in 0..rounds {
                let req = if attack {
                    let mut to = random_recipients();
                    to.push("alice".into());
                    to.retain(|u| u != "victim");
                    Request::SendGroup {
                        to,
                        msg_id: format!("a{stream}-{round}"),
                        body: vec![0xA5; MAX_FANOUT_BYTES / MAX_RECIPIENTS],
                    }
                } else {
                    Request::Send {
                        to: "alice".into(),
                        msg_id: format!("h{stream}-{round}"),
                        body: vec![0; 64],
                    }
                };
                let _ = mallory.request(req).await;
            }
        });
    }
    let mut peak = baseline;
    let mut served = Vec::new();
    let mut i = 0u64;
    let wall = Instant::now();
    while !tasks.is_empty() {
        peak = peak.max(kib(pid)?);
        let started = Instant::now();
        alice.send("bob", &format!("m{i}"), b"hello".to_vec()).await?;
        served.push(started.elapsed());
        i += 1;
        while tasks.try_join_next().is_some() {}
    }
    peak = peak.max(kib(pid)?);
    Ok(Memory {
        baseline_mib: baseline as f64 / 1024.0,
        peak_mib: peak as f64 / 1024.0,
        served: latencies(served, wall.elapsed()),
    })
}

struct Rate {
    sent: u64,
    accepted: u64,
    refused: u64,
    elapsed: Duration,
    cpu: Duration,
}

async fn rate_run(
    link: &Arc<Link>,
    pid: u32,
    flood: Duration,
    make: fn(u64) -> Request,
) -> Result<Rate> {
    // Let the previous flood's buckets and stream allowance refill a little.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_before = sys::cpu_time(pid)?;
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_micros(2500));
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent = 0u64;
    while started.elapsed() < flood {
        tick.tick().await;
        let link = link.clone();
        let req = make(sent);
        sent += 1;
        tasks.spawn(async move { link.request(req).await });
    }
    let (mut accepted, mut refused) = (0u64, 0u64);
    while let Some(r) = tasks.join_next().await {
        // Any answer but a refusal (a `not_found` too) is work the relay did.
        // `request` is raw: a refusal comes back as an error *response*.
        match r? {
            Ok(Response::Error {
                kind: WireKind::RateLimited | WireKind::QuotaExceeded, ..
            }) => refused += 1,
            Err(e) if matches!(e.kind(), Kind::RateLimited | Kind::QuotaExceeded) => refused += 1,
            Err(e) if e.kind() == Kind::RelayUnavailable => {}
            _ => accepted += 1,
        }
    }
    let elapsed = started.elapsed();
    let cpu = sys::cpu_time(pid)?.saturating_sub(cpu_before);
    Ok(Rate { sent, accepted, refused, elapsed, cpu })
}
