//! `letstalk-bench calls`: call media between two `letstalkd` through `letstalk-relay`
//! on 127.0.0.1, beside the same frames over a bare `SOCK_SEQPACKET` pair.
//!
//! Figures, for 50 fps audio-sized frames (160 bytes) and 30 fps video-sized frames
//! (1,101 bytes, the largest a media socket takes): frames lost, and latency p50/p99
//! from alice's media socket to bob's (the added latency of sealing, datagrams, the
//! relay, opening), beside the latency of the socket alone.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use letstalk_ipc::Client;
use serde_json::{Value, json};
use tokio_seqpacket::UnixSeqpacket;

use crate::CallsArgs;
use crate::ipc::exe_dir;
use crate::messaging::{progress, register, start_daemon};
use crate::servers::{RelayProcess, release_bin};
use crate::stats::{Latencies, ms};
use crate::sys;

/// One kind of media.
struct Profile {
    name: &'static str,
    fps: u32,
    len: usize,
}

const PROFILES: [Profile; 2] = [
    Profile { name: "audio, 50 fps × 160 B", fps: 50, len: 160 },
    Profile { name: "video, 30 fps × 1,101 B", fps: 30, len: 1101 },
];

struct Run {
    sent: u32,
    latencies: Latencies,
}

pub(crate) async fn run(args: &CallsArgs) -> Result<()> {
    let dir = exe_dir()?;
    let daemon_bin = release_bin(args.daemon.as_ref(), &dir, "letstalkd")?;
    let relay_bin = release_bin(args.relay.as_ref(), &dir, "letstalk-relay")?;
    let work = tempfile::Builder::new().prefix("letstalk-bench-").tempdir()?;
    println!("letstalk-bench calls: {}", sys::host());
    println!(
        "  letstalkd alice → letstalk-relay → letstalkd bob on 127.0.0.1, {} s per run",
        args.seconds
    );
    println!();

    progress("starting relay and two daemons, registering alice and bob");
    let mut relay = RelayProcess::start(&relay_bin, &work.path().join("relay"))?;
    let mut alice = start_daemon(&daemon_bin, &work.path().join("alice"), &relay).await?;
    let mut bob = start_daemon(&daemon_bin, &work.path().join("bob"), &relay).await?;
    let a = Client::connect(&alice.socket).await?;
    let b = Client::connect(&bob.socket).await?;
    register(&a, "alice").await?;
    register(&b, "bob").await?;
    let mut b_events = b.take_events().context("bob's events")?;
    b.call_value("events.subscribe", json!({"kinds": ["call.incoming"]})).await?;

    let mut results = Vec::new();
    for p in &PROFILES {
        progress(&format!("{} through the relay", p.name));
        let started =
            a.call_value("calls.start", json!({"to": "user:bob", "media": "video"})).await?;
        let id = started["call"]["call_id"].as_str().context("call id")?.to_owned();
        loop {
            let e: Value = tokio::time::timeout(Duration::from_secs(20), b_events.recv())
                .await
                .context("no incoming call")?
                .context("bob's events ended")?;
            if e["call"]["call_id"] == id.as_str() {
                break;
            }
        }
        let accepted = b.call_value("calls.accept", json!({"call_id": id})).await?;
        let a_sock =
            UnixSeqpacket::connect(started["media_socket"].as_str().context("socket")?).await?;
        let b_sock =
            UnixSeqpacket::connect(accepted["media_socket"].as_str().context("socket")?).await?;
        // Let the answer reach alice before the measured frames.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let relayed = measure(&a_sock, &b_sock, p, args.seconds).await?;
        a.call_value("calls.hangup", json!({"call_id": id})).await?;
        progress(&format!("{} over a bare socket pair", p.name));
        let (x, y) = UnixSeqpacket::pair()?;
        let bare = measure(&x, &y, p, args.seconds).await?;
        results.push((p, relayed, bare));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop((a, b));
    alice.stop()?;
    bob.stop()?;
    relay.stop()?;

    println!("== Call media, alice's media socket → bob's ==");
    for (p, relayed, bare) in results {
        let got = relayed.latencies.len();
        let lost = f64::from(relayed.sent) - got as f64;
        println!("  {}:", p.name);
        println!(
            "    through the relay: {} of {} frames, loss {:.2} %, latency p50 {} p99 {} max {}",
            got,
            relayed.sent,
            100.0 * lost / f64::from(relayed.sent).max(1.0),
            ms(relayed.latencies.p50()),
            ms(relayed.latencies.p99()),
            ms(relayed.latencies.max())
        );
        println!(
            "    bare socket pair:  {} of {} frames,             latency p50 {} p99 {}",
            bare.latencies.len(),
            bare.sent,
            ms(bare.latencies.p50()),
            ms(bare.latencies.p99())
        );
        println!(
            "    added by the call path: p50 {} p99 {}",
            ms(relayed.latencies.p50().saturating_sub(bare.latencies.p50())),
            ms(relayed.latencies.p99().saturating_sub(bare.latencies.p99()))
        );
    }
    if !args.concurrent.is_empty() {
        println!();
        progress("concurrent calls: registering the clients, then one run per level");
        let mut relay = RelayProcess::start(&relay_bin, &work.path().join("load-relay"))?;
        let levels = crate::call_load::run(&relay, &args.concurrent, args.load_seconds).await;
        relay.stop()?;
        crate::call_load::print(&levels?);
    }
    Ok(())
}

/// Sends frames at the profile's rate for `seconds`, each stamped with its send time,
/// and reads them on the other side meanwhile.
async fn measure(
    from: &UnixSeqpacket,
    to: &UnixSeqpacket,
    p: &Profile,
    seconds: u64,
) -> Result<Run> {
    let n = p.fps * u32::try_from(seconds).unwrap_or(5);
    let period = Duration::from_secs(1) / p.fps;
    let origin = Instant::now();
    let send = async {
        for seq in 0..n {
            let mut f = vec![0u8; p.len];
            f[1..5].copy_from_slice(&seq.to_be_bytes());
            let at = u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
            f[5..13].copy_from_slice(&at.to_be_bytes());
            from.send(&f).await?;
            tokio::time::sleep_until((origin + period * (seq + 1)).into()).await;
        }
        anyhow::Ok(())
    };
    let recv = async {
        let mut samples = Vec::new();
        let mut buf = vec![0u8; 2048];
        let deadline = origin + period * n + Duration::from_millis(500);
        while let Ok(Ok(info)) = tokio::time::timeout_at(deadline.into(), to.recv(&mut buf)).await {
            if info.bytes_read() < 13 {
                continue;
            }
            let at = u64::from_be_bytes(buf[5..13].try_into().unwrap_or([0; 8]));
            let now = u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
            samples.push(Duration::from_nanos(now.saturating_sub(at)));
        }
        samples
    };
    let (sent, samples) = tokio::join!(send, recv);
    sent?;
    if samples.is_empty() {
        bail!("no frame arrived");
    }
    let wall = origin.elapsed();
    let count = samples.len();
    Ok(Run { sent: n, latencies: Latencies::new(samples, wall, count) })
}
