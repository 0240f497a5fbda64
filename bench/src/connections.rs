//! `letstalk-bench connections`: what one idle authenticated connection costs the relay in
//! memory, and how many full handshakes with device authentication it takes per second
//! (issue 16, item 5: at most 40 KiB each; at least 1,000/s).
//!
//! A release `letstalk-relay` on 127.0.0.1 (its default limits, only `register_per_ip`
//! raised for the bench's own accounts, as in `servers.rs`). `--connections` accounts are
//! registered first, each on a short-lived connection (Argon2id each: this takes a
//! while), then the relay is left to settle and its VmRSS read. Then every account's
//! device connects again at once, `--in-flight` handshakes at a time, the way a daemon
//! does (`letstalk-link`: QUIC + TLS 1.3, `Hello`, `Auth` signing the relay's challenge
//! and the TLS exporter with the device key): the handshakes per second are the
//! connections over the time from the first start until the last one is authenticated.
//! The connections then stay, idle, for `--idle-s`, and VmRSS is read again: the growth
//! divided by the connections is what one idle authenticated connection costs.
//!
//! The relay allows `connections_per_ip` (64) connections per address, so the clients
//! send from their own loopback addresses, `--per-address` on each of 127.0.0.2,
//! 127.0.0.3, …, as that many separate hosts would: no relay limit is raised for this.
//! The clients run in this process, on one thread, on the same cores as the relay: the
//! handshake rate is what both sides together manage on this machine. The relay's CPU
//! time over the same span, per handshake, is printed too, and the rate it would allow
//! with the cores to itself.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use letstalk_link::{Identity, Link, LinkConfig, Push};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::ConnectionsArgs;
use crate::ipc::exe_dir;
use crate::relay::registered_link;
use crate::servers::{RelayProcess, release_bin};
use crate::sys;

/// Issue 16's targets.
const TARGET_KIB: f64 = 40.0;
const TARGET_HANDSHAKES: f64 = 1_000.0;

/// Registrations in flight: the relay hashes passwords on one thread per core and
/// answers `rate_limited` once 32 wait.
const REGISTER_IN_FLIGHT: usize = 16;

/// Patience for one connection or registration (never a speed assertion).
const PATIENCE: Duration = Duration::from_secs(30);

pub(crate) async fn run(args: &ConnectionsArgs) -> Result<()> {
    if args.connections == 0 || args.in_flight == 0 {
        bail!("--connections and --in-flight must be at least 1");
    }
    if args.per_address == 0 || args.per_address > 64 {
        bail!("--per-address must be 1 to 64 (the relay's connections_per_ip)");
    }
    let addresses = args.connections.div_ceil(args.per_address);
    if addresses > 250 {
        bail!("--connections over --per-address needs more than 250 loopback addresses");
    }
    let bin = release_bin(args.relay.as_ref(), &exe_dir()?, "letstalk-relay")?;
    let work = tempfile::Builder::new().prefix("letstalk-bench-").tempdir()?;
    raise_fd_limit(args.connections);

    println!("letstalk-bench connections: {}", sys::host());
    println!(
        "  {} authenticated device connections to one relay on 127.0.0.1, {} per client \
         address (127.0.0.2 to 127.0.0.{}), {} handshakes in flight; idle {} s",
        args.connections,
        args.per_address,
        addresses + 1,
        args.in_flight,
        args.idle_s
    );
    println!("  clients: letstalk-link in this bench, one thread, on the same cores as the relay");
    println!();

    let mut relay = RelayProcess::start(&bin, &work.path().join("relay"))?;
    let result = measure(&relay, args).await;
    relay.stop()?;
    let m = result?;

    let per_conn = m.rss_after.saturating_sub(m.rss_before) as f64 / args.connections as f64;
    let anon_per_conn = m.anon_after.saturating_sub(m.anon_before) as f64 / args.connections as f64;
    let rate = args.connections as f64 / m.opening.as_secs_f64();
    let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    println!("== {} idle authenticated connections ==", args.connections);
    println!(
        "  relay VmRSS {} KiB before, {} KiB with the connections idle ({} KiB anonymous \
         before, {} after)",
        m.rss_before, m.rss_after, m.anon_before, m.anon_after
    );
    println!(
        "  per idle authenticated connection: {per_conn:.1} KiB (anonymous {anon_per_conn:.1} \
         KiB)   target ≤ {TARGET_KIB:.0} KiB   →  {}",
        if per_conn <= TARGET_KIB { "met" } else { "NOT met" }
    );
    println!("== Full handshakes with device auth, {} in flight ==", args.in_flight);
    println!(
        "  {rate:.0} handshakes/s ({} in {:.2} s)   target ≥ {TARGET_HANDSHAKES:.0}/s   →  {}",
        args.connections,
        m.opening.as_secs_f64(),
        if rate >= TARGET_HANDSHAKES { "met" } else { "NOT met" }
    );
    println!(
        "  CPU meanwhile: relay {:.2} s, this bench's clients {:.2} s (of {:.2} s × {cores} \
         cores)",
        m.relay_cpu.as_secs_f64(),
        m.bench_cpu.as_secs_f64(),
        m.opening.as_secs_f64()
    );
    // The clients share the cores with the relay (and the machine may be busy), so the
    // rate above is what both sides manage together; the relay's own CPU per handshake
    // says what it would take with the cores to itself.
    let per_handshake = m.relay_cpu.as_secs_f64() / args.connections as f64;
    if per_handshake > 0.0 {
        println!(
            "  relay CPU per handshake {:.2} ms: with the {cores} cores to itself at most \
             {:.0} handshakes/s",
            per_handshake * 1e3,
            cores as f64 / per_handshake
        );
    }
    Ok(())
}

/// What one run measured.
#[derive(Debug)]
struct Measured {
    rss_before: u64,
    anon_before: u64,
    rss_after: u64,
    anon_after: u64,
    /// From the first connection started until the last one authenticated.
    opening: Duration,
    relay_cpu: Duration,
    bench_cpu: Duration,
}

async fn measure(relay: &RelayProcess, args: &ConnectionsArgs) -> Result<Measured> {
    let config = |i: usize| {
        let mut c = LinkConfig::new(format!("127.0.0.1:{}", relay.port), Some(relay.cert.clone()));
        c.local_ip = Some(client_ip(i, args.per_address));
        c
    };

    eprintln!("  registering {} accounts …", args.connections);
    let started = Instant::now();
    let identities = register(args.connections, &config).await?;
    eprintln!("  … in {:.1} s", started.elapsed().as_secs_f64());

    // Let the registration connections end and the relay's memory settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = relay.pid();
    let rss_before = sys::proc_status_kib(pid, "VmRSS")?;
    let anon_before = sys::proc_status_kib(pid, "RssAnon")?;

    eprintln!("  connecting {} devices …", args.connections);
    let relay_cpu = sys::cpu_time(pid)?;
    let bench_cpu = sys::cpu_time(std::process::id())?;
    let started = Instant::now();
    let links = connect_all(identities, args.in_flight, &config).await?;
    let opening = started.elapsed();
    let relay_cpu = sys::cpu_time(pid)?.saturating_sub(relay_cpu);
    let bench_cpu = sys::cpu_time(std::process::id())?.saturating_sub(bench_cpu);

    tokio::time::sleep(Duration::from_secs(args.idle_s)).await;
    let rss_after = sys::proc_status_kib(pid, "VmRSS")?;
    let anon_after = sys::proc_status_kib(pid, "RssAnon")?;
    let still = links.iter().filter(|(l, _)| l.identity().is_some() && l.rtt().is_some()).count();
    if still < links.len() {
        bail!("{} of {} connections were lost while idle", links.len() - still, links.len());
    }
    shut_down(links).await;
    Ok(Measured { rss_before, anon_before, rss_after, anon_after, opening, relay_cpu, bench_cpu })
}

/// Client `i`'s source address: `per_address` clients on each of 127.0.0.2, 127.0.0.3, …
fn client_ip(i: usize, per_address: usize) -> IpAddr {
    let host = u8::try_from(2 + i / per_address).unwrap_or(u8::MAX);
    IpAddr::from([127, 0, 0, host])
}

/// Registers `n` accounts (`conn{i}`), each on a connection of its own that is closed
/// once the account exists, `REGISTER_IN_FLIGHT` at a time; returns their identities.
async fn register(n: usize, config: &impl Fn(usize) -> LinkConfig) -> Result<Vec<Identity>> {
    let mut identities: Vec<Option<Identity>> = vec![None; n];
    let mut tasks = JoinSet::new();
    let mut next = 0;
    while next < n || !tasks.is_empty() {
        while next < n && tasks.len() < REGISTER_IN_FLIGHT {
            let (i, c) = (next, config(next));
            tasks.spawn(async move {
                let link = tokio::time::timeout(PATIENCE, registered_link(c, &format!("conn{i}")))
                    .await
                    .with_context(|| format!("registering conn{i}: timed out"))??;
                let identity = link.identity();
                link.shutdown().await;
                anyhow::Ok((i, identity.with_context(|| format!("conn{i}: no identity"))?))
            });
            next += 1;
        }
        if let Some(joined) = tasks.join_next().await {
            let (i, identity) = joined.context("a registration task failed")??;
            if let Some(slot) = identities.get_mut(i) {
                *slot = Some(identity);
            }
        }
    }
    identities.into_iter().map(|i| i.context("an account was not registered")).collect()
}

/// A connected link and its pushes (kept, so that the link keeps reading them).
type Client = (Link, mpsc::Receiver<Push>);

/// Starts a link for every identity, `in_flight` handshakes at a time, and waits until
/// each is authenticated.
async fn connect_all(
    identities: Vec<Identity>,
    in_flight: usize,
    config: &impl Fn(usize) -> LinkConfig,
) -> Result<Vec<Client>> {
    let n = identities.len();
    let mut links = Vec::with_capacity(n);
    let mut tasks = JoinSet::new();
    let mut pending = identities.into_iter().enumerate();
    loop {
        while tasks.len() < in_flight {
            let Some((i, identity)) = pending.next() else { break };
            let (link, pushes) = Link::start(config(i), Some(identity))?;
            tasks.spawn(async move {
                link.wait_connected(PATIENCE)
                    .await
                    .with_context(|| format!("conn{i}: authenticating"))?;
                anyhow::Ok((link, pushes))
            });
        }
        match tasks.join_next().await {
            Some(joined) => links.push(joined.context("a connection task failed")??),
            None => break,
        }
    }
    Ok(links)
}

/// Closes every link at once.
async fn shut_down(links: Vec<Client>) {
    let mut tasks = JoinSet::new();
    for (link, _pushes) in links {
        tasks.spawn(async move { link.shutdown().await });
    }
    while tasks.join_next().await.is_some() {}
}

/// One descriptor per client's UDP socket: the soft limit is raised to the hard one when
/// it is too low for the run.
fn raise_fd_limit(connections: usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let want = u64::try_from(connections).unwrap_or(u64::MAX).saturating_add(256);
    if limit.current.is_some_and(|c| c < want) {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
}
