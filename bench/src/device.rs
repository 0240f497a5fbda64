//! `letstalk-bench device`: what a connected daemon costs a phone while nothing
//! happens, and how long a network switch interrupts traffic.
//!
//! Idle: a registered daemon connected to a relay on 127.0.0.1, left alone for
//! `--idle-s` seconds; its threads' context switches (each one a wake-up) and CPU time
//! from `/proc`, beside the keep-alives the QUIC connection is expected to send in that
//! time. Target: nothing between keep-alives.
//!
//! Switch (root only: it makes network namespaces): a "phone" namespace with two links to
//! a "network" namespace holding the relay and the peer; the default route moves from
//! one link to the other, a message is sent at once, and the time until the peer has it
//! is the interruption. Repeated `--switches` times, back and forth.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use letstalk_ipc::Client;
use serde_json::{Value, json};

use crate::DeviceArgs;
use crate::ipc::exe_dir;
use crate::messaging::{register, start_connected};
use crate::servers::{LetstalkdSpec, RelayProcess, release_bin};
use crate::stats::{Latencies, ms};
use crate::sys;

/// The daemon's default keep-alive on Wi-Fi and wired networks (settings.keepalive_s.wifi).
const KEEPALIVE_S: f64 = 25.0;

/// The watchdog of systemd/letstalkd.service (`WatchdogSec=3min`), which the daemon pets
/// every half of it: the idle run is given the same, so its pets are counted.
const WATCHDOG_USEC: &str = "180000000";

/// The binaries and a scratch directory; prints the header of `name`'s run.
fn setup(args: &DeviceArgs, name: &str) -> Result<(PathBuf, PathBuf, tempfile::TempDir)> {
    let dir = exe_dir()?;
    let daemon_bin = release_bin(args.daemon.as_ref(), &dir, "letstalkd")?;
    let relay_bin = release_bin(args.relay.as_ref(), &dir, "letstalk-relay")?;
    let work = tempfile::Builder::new().prefix("letstalk-bench-").tempdir()?;
    println!("letstalk-bench {name}: {}", sys::host());
    println!();
    Ok((daemon_bin, relay_bin, work))
}

pub(crate) async fn run(args: &DeviceArgs) -> Result<()> {
    let (daemon_bin, relay_bin, work) = setup(args, "device")?;
    idle_section(&daemon_bin, &relay_bin, work.path(), args.idle_s).await?;
    sizes_section(&daemon_bin)?;

    if !rustix::process::geteuid().is_root() {
        println!("== Network switch: not measured (it needs root to make network namespaces) ==");
        return Ok(());
    }
    eprintln!("  measuring {} network switches …", args.switches);
    match switch_run(&daemon_bin, &relay_bin, work.path(), args.switches).await {
        Ok(l) => {
            println!("== Network switch (default route moves between two links) ==");
            println!(
                "  link change → message delivered on the new path: p50 {}  max {}  ({} switches)",
                ms(l.p50()),
                ms(l.max()),
                l.len()
            );
            println!("  target (issue): traffic flowing again within 3 s");
        }
        Err(e) => println!("== Network switch: the run failed: {e:#}"),
    }
    Ok(())
}

/// `letstalk-bench idle`: only the idle measurement, beside the phone's target, and the
/// binaries' sizes per architecture.
pub(crate) async fn run_idle(args: &DeviceArgs) -> Result<()> {
    let (daemon_bin, relay_bin, work) = setup(args, "idle")?;
    idle_section(&daemon_bin, &relay_bin, work.path(), args.idle_s).await?;
    sizes_section(&daemon_bin)
}

/// The phone's architectures, as `target/cross/<triple>/release` holds their builds.
const CROSS: [(&str, &str); 2] =
    [("aarch64", "aarch64-unknown-linux-gnu"), ("armv7", "armv7-unknown-linux-gnueabihf")];

/// Prints the size of `letstalkd` and `letstalk` as built for this machine (beside
/// `daemon_bin`) and for each phone architecture (`target/cross`, README "Building for a
/// phone"); the release profile strips symbols, so the sizes are as shipped.
fn sizes_section(daemon_bin: &Path) -> Result<()> {
    let dir = daemon_bin.parent().context("the daemon binary's directory")?;
    let sizes = |dir: &Path| -> Vec<Option<u64>> {
        ["letstalkd", "letstalk"]
            .iter()
            .map(|name| std::fs::metadata(dir.join(name)).ok().map(|m| m.len()))
            .collect()
    };
    let show = |size: Option<u64>| {
        size.map_or("not built".to_owned(), |s| format!("{:.2} MB", s as f64 / 1e6))
    };
    println!("== Binary sizes (release profile, symbols stripped) ==");
    let native = sizes(dir);
    println!(
        "  {:<8} letstalkd {:>10}   letstalk {:>10}",
        "x86-64",
        show(native[0]),
        show(native[1])
    );
    // target/release/letstalkd → target/cross/<triple>/release/.
    let cross = dir.parent().map(|target| target.join("cross"));
    for (arch, triple) in CROSS {
        let built = cross.as_ref().map(|c| sizes(&c.join(triple).join("release")));
        let built = built.unwrap_or_else(|| vec![None, None]);
        let ratio = match (built[0], native[0]) {
            (Some(b), Some(n)) if n > 0 => format!("  ({:.2}× x86-64)", b as f64 / n as f64),
            _ => String::new(),
        };
        println!(
            "  {arch:<8} letstalkd {:>10}   letstalk {:>10}{ratio}",
            show(built[0]),
            show(built[1])
        );
    }
    println!(
        "  (cross builds: RUSTC=/usr/bin/rustc CARGO_TARGET_DIR=target/cross cargo build \
         --release --target TRIPLE -p letstalkd -p letstalk-cli; see the README)"
    );
    Ok(())
}

/// Wake-ups a phone's CPU may spend on an idle daemon (issue 22: keep-alive and
/// watchdog included).
const IDLE_TARGET_PER_MIN: f64 = 6.0;

/// Measures an idle connected daemon for `secs` and prints the section.
async fn idle_section(daemon_bin: &Path, relay_bin: &Path, work: &Path, secs: u64) -> Result<()> {
    eprintln!("  measuring an idle connected daemon for {secs} s …");
    let idle = idle_run(daemon_bin, relay_bin, work, secs).await?;
    let minutes = secs as f64 / 60.0;
    let per_minute = idle.wakeups as f64 / minutes;
    println!("== Idle, connected, over {secs} s ==");
    println!(
        "  wake-ups (context switches, all threads): {} = {per_minute:.1} per minute  \
         (target ≤ {IDLE_TARGET_PER_MIN:.0}: {})",
        idle.wakeups,
        if per_minute <= IDLE_TARGET_PER_MIN { "met" } else { "NOT met" }
    );
    println!(
        "  threads at the end: {}  RSS: {:.1} MiB",
        idle.threads,
        idle.rss_kib as f64 / 1024.0
    );
    let by_thread: Vec<String> =
        idle.by_thread.iter().map(|(name, n)| format!("{name} {n}")).collect();
    println!("  wake-ups by thread: {}", by_thread.join(", "));
    println!(
        "  CPU: {:.1} ms = {:.2} ms per minute",
        idle.cpu.as_secs_f64() * 1000.0,
        idle.cpu.as_secs_f64() * 1000.0 / minutes
    );
    println!(
        "  keep-alives expected (every {KEEPALIVE_S:.0} s): {:.1} per minute; each costs a few \
         wake-ups (timer, send, the relay's acknowledgement)",
        60.0 / KEEPALIVE_S
    );
    println!(
        "  seconds in which it woke at all: {} of {secs} (at s {:?})",
        idle.busy_seconds.len(),
        idle.busy_seconds
    );
    // A keep-alive is a cluster: tokio's timer wheel wakes a couple of times as the
    // 20 s timer cascades to finer slots (e.g. 16.8 s, then 3.2 s, then the last ms),
    // then the PING goes out and its ACK comes back. Clusters further apart than 5 s
    // are separate events.
    let clusters = idle.busy_seconds.windows(2).filter(|w| w[1] - w[0] > 5).count()
        + usize::from(!idle.busy_seconds.is_empty());
    let expected = (secs as f64 / KEEPALIVE_S).ceil() as usize;
    println!(
        "  wake-up clusters: {clusters}, keep-alives in the window: {expected}  →  nothing \
         between keep-alives: {}  ({:.1} wake-ups per keep-alive)",
        if clusters <= expected { "met" } else { "NOT met" },
        idle.wakeups as f64 / (secs as f64 / KEEPALIVE_S).max(1.0)
    );
    println!();
    Ok(())
}

struct Idle {
    wakeups: u64,
    /// Threads of the daemon at the end of the window.
    threads: u64,
    rss_kib: u64,
    cpu: Duration,
    /// The seconds (from the start of the window) in which the daemon woke at all.
    busy_seconds: Vec<u64>,
    /// Wake-ups per thread name (tokio's workers share one), most first.
    by_thread: Vec<(String, u64)>,
}

/// A thread's name (`comm`), or its id if it is gone.
fn thread_name(pid: u32, tid: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
        .map_or_else(|_| format!("thread {tid}"), |n| n.trim().to_owned())
}

/// Context switches so far of each live thread of `pid`.
fn switches(pid: u32) -> Result<std::collections::HashMap<String, u64>> {
    let mut out = std::collections::HashMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let task = task?;
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let n: u64 = status
            .lines()
            .filter_map(|l| {
                l.strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            })
            .filter_map(|v| v.trim().parse::<u64>().ok())
            .sum();
        out.insert(task.file_name().to_string_lossy().into_owned(), n);
    }
    Ok(out)
}

async fn idle_run(daemon_bin: &Path, relay_bin: &Path, work: &Path, secs: u64) -> Result<Idle> {
    let mut relay = RelayProcess::start(relay_bin, &work.join("idle-relay"))?;
    let mut spec =
        LetstalkdSpec::new(daemon_bin, work.join("idle-alice")).with_relay(relay.port, &relay.cert);
    spec.env.push(("WATCHDOG_USEC".into(), WATCHDOG_USEC.into()));
    let mut daemon = start_connected(&spec).await?;
    {
        let client = Client::connect(&daemon.socket).await?;
        register(&client, "alice").await?;
    }
    // Let start-up work settle (key upload, first keep-alive timers).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = daemon.pid();
    // Threads come and go (tokio's blocking pool lets idle ones exit), so the count is
    // summed per thread from samples taken every second: a thread's increments between
    // samples, a new thread's whole count. Reading /proc does not wake the daemon.
    let c0 = sys::cpu_time(pid)?;
    let mut last = switches(pid)?;
    let mut wakeups = 0u64;
    let mut busy_seconds = Vec::new();
    let mut by_thread = std::collections::BTreeMap::<String, u64>::new();
    for second in 0..secs {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = switches(pid)?;
        let mut this = 0;
        for (tid, n) in &now {
            let woke = n.saturating_sub(last.get(tid).copied().unwrap_or(0));
            if woke > 0 {
                *by_thread.entry(thread_name(pid, tid)).or_default() += woke;
            }
            this += woke;
        }
        if this > 0 {
            busy_seconds.push(second + 1);
        }
        wakeups += this;
        last = now;
    }
    let c1 = sys::cpu_time(pid)?;
    let threads = std::fs::read_dir(format!("/proc/{pid}/task"))?.count() as u64;
    let rss_kib = sys::proc_status_kib(pid, "VmRSS")?;
    daemon.stop()?;
    relay.stop()?;
    let mut by_thread: Vec<(String, u64)> = by_thread.into_iter().collect();
    by_thread.sort_by_key(|t| std::cmp::Reverse(t.1));
    Ok(Idle { wakeups, threads, rss_kib, cpu: c1.saturating_sub(c0), busy_seconds, by_thread })
}

/// A network namespace, deleted when dropped.
pub(crate) struct Netns(pub(crate) String);

impl Netns {
    pub(crate) fn new(tag: &str) -> Result<Self> {
        let name = format!("ltb-{}-{tag}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Self(name);
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", self.0.as_str()];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.0]);
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

async fn connected(client: &Client) -> Result<()> {
    let started = Instant::now();
    loop {
        let st = client.call_value("system.status", json!({})).await?;
        if st.pointer("/relay/state").and_then(Value::as_str) == Some("connected") {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("no relay connection within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn switch_run(
    daemon_bin: &Path,
    relay_bin: &Path,
    work: &Path,
    switches: usize,
) -> Result<Latencies> {
    let phone = Netns::new("phone")?;
    let net = Netns::new("net")?;
    for (dev, gw) in [("wlan0", "gw-a"), ("wwan0", "gw-b")] {
        phone.ip(&["link", "add", dev, "type", "veth", "peer", "name", gw, "netns", &net.0])?;
    }
    for args in [
        &["addr", "add", "10.62.1.2/24", "dev", "wlan0"][..],
        &["addr", "add", "10.62.2.2/24", "dev", "wwan0"],
        &["link", "set", "wlan0", "up"],
        &["link", "set", "wwan0", "up"],
        &["route", "add", "default", "via", "10.62.1.1", "dev", "wlan0"],
    ] {
        phone.ip(args)?;
    }
    for args in [
        &["addr", "add", "10.62.1.1/24", "dev", "gw-a"][..],
        &["addr", "add", "10.62.2.1/24", "dev", "gw-b"],
        &["addr", "add", "10.62.9.1/32", "dev", "lo"],
        &["link", "set", "gw-a", "up"],
        &["link", "set", "gw-b", "up"],
    ] {
        net.ip(args)?;
    }
    let mut relay = RelayProcess::start_at(
        relay_bin,
        &work.join("sw-relay"),
        Some(&net.0),
        "10.62.9.1:0",
        &[],
    )?;
    let relay_addr = format!("10.62.9.1:{}", relay.port);
    let start = |name: &str, ns: &Netns| {
        let mut spec = LetstalkdSpec::new(daemon_bin, work.join(name));
        spec.netns = Some(ns.0.clone());
        spec.args.extend(["--relay".into(), relay_addr.clone().into(), "--relay-cert".into()]);
        spec.args.push(relay.cert.as_os_str().to_owned());
        spec.start().map(|(d, _, _)| d)
    };
    let mut alice = start("sw-alice", &phone)?;
    let mut bob = start("sw-bob", &net)?;
    let a = Client::connect(&alice.socket).await?;
    let b = Client::connect(&bob.socket).await?;
    for (c, name) in [(&a, "alice"), (&b, "bob")] {
        connected(c).await?;
        register(c, name).await?;
    }
    let mut events = b.take_events().context("events taken")?;
    b.call_value("events.subscribe", json!({"kinds": ["message.received"]})).await?;
    let routes = [("10.62.2.1", "wwan0", "wlan0"), ("10.62.1.1", "wlan0", "wwan0")];
    let mut samples = Vec::with_capacity(switches);
    let wall = Instant::now();
    for i in 0..switches {
        let (via, dev, old) = routes[i % 2];
        tokio::time::sleep(Duration::from_millis(500)).await;
        let t0 = Instant::now();
        phone.ip(&["link", "set", old, "down"])?;
        phone.ip(&["route", "replace", "default", "via", via, "dev", dev])?;
        let text = format!("after switch {i}");
        a.call_value("messages.send", json!({"to": "user:bob", "text": text})).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let Ok(Some(e)) = tokio::time::timeout_at(deadline, events.recv()).await else {
                bail!("switch {i}: the message did not arrive within 30 s");
            };
            if e.pointer("/message/text").and_then(Value::as_str) == Some(text.as_str()) {
                break;
            }
        }
        samples.push(t0.elapsed());
        phone.ip(&["link", "set", old, "up"])?;
    }
    drop((a, b));
    alice.stop()?;
    bob.stop()?;
    relay.stop()?;
    Ok(Latencies::new(samples, wall.elapsed(), switches))
}
