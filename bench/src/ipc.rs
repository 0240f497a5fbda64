//! `letstalk-bench ipc`: the local JSON-RPC interface of `letstalkd`, beside the Delta
//! Chat JSON-RPC server's (`deltachat-rpc-server`, stdio) measured in the same run.
//!
//! Figures, for each server: the stripped binary size; the time from process start to
//! the first answer (median of `--starts`, on a fresh data directory and on a restart);
//! idle VmRSS after one call and `--idle-ms`, and again after the load runs; the round
//! trip of `system.status` / `get_system_info` (p50, p99, max, throughput) with one
//! client and with `--clients` at once.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::io::BufReader;
use tokio::net::UnixStream;
use tokio::task::JoinSet;

use crate::IpcArgs;
use crate::load::{Call, Shape, closed_loop};
use crate::servers::{DeltaChatSpec, LetstalkdSpec, StartSample};
use crate::stats::{Latencies, mb, median, mib_from_kib, ms};
use crate::sys;

/// Targets from the issue "Measure it", printed beside the figures.
const TARGET_RSS_MIB: f64 = 10.0;
const TARGET_FIRST_ANSWER: Duration = Duration::from_millis(20);
const TARGET_P50_RATIO: f64 = 0.8;
const TARGET_BINARY_MB: f64 = 15.0;

/// Where bench/baseline.sh installs the baseline, under the target directory.
const BASELINE_IN_TARGET: &str =
    "bench-baseline/node_modules/@deltachat/stdio-rpc-server-linux-x64/deltachat-rpc-server";

/// Everything measured for one server.
#[derive(Debug)]
struct Figures {
    name: String,
    version: String,
    size: u64,
    size_note: Option<&'static str>,
    /// Fresh data directory on every start.
    start_fresh: Vec<StartSample>,
    /// Restarts on an existing data directory.
    start_again: Vec<StartSample>,
    rss_idle_kib: u64,
    /// RssAnon and RssFile (+ RssShmem) at the idle reading: what VmRSS is made of.
    rss_idle_parts: (u64, u64),
    /// The proportional set size at the idle reading (see `sys::pss_kib`).
    pss_idle_kib: u64,
    rss_after_load_kib: u64,
    one: Latencies,
    many: Latencies,
    /// How "many clients" were run against this server.
    many_how: String,
    /// letstalkd only: one connection with `--clients` requests in flight, the baseline's
    /// shape, for a like-for-like comparison.
    pipelined: Option<Latencies>,
}

pub(crate) async fn run(args: &IpcArgs) -> Result<()> {
    if args.calls == 0 || args.clients == 0 || args.starts == 0 {
        bail!("--calls, --clients and --starts must be at least 1");
    }
    let daemon_bin = daemon_path(args)?;
    let baseline_bin = if args.no_baseline { None } else { baseline_path(args) };
    let work = tempfile::Builder::new().prefix("letstalk-bench-").tempdir()?;

    println!("letstalk-bench ipc: {}", sys::host());
    println!(
        "  {} measured calls per client after {} warm-up calls; {} starts per start-up figure; \
         RSS read after {} ms idle",
        args.calls, args.warmup, args.starts, args.idle_ms
    );
    println!("  client: one thread, raw JSON lines, one request line per write");
    println!();

    let ours = measure_letstalkd(&daemon_bin, &work.path().join("letstalkd"), args)
        .await
        .context("measuring letstalkd")?;
    print_figures(&ours);

    let theirs = match &baseline_bin {
        Some(bin) => match measure_deltachat(bin, &work.path().join("deltachat"), args).await {
            Ok(f) => {
                print_figures(&f);
                Some(f)
            }
            Err(e) => {
                println!("baseline: measuring {} failed: {e:#}", bin.display());
                println!();
                None
            }
        },
        None => None,
    };
    print_summary(&ours, theirs.as_ref(), args);
    Ok(())
}

/// `--daemon`, or target/release/letstalkd beside this executable.
fn daemon_path(args: &IpcArgs) -> Result<PathBuf> {
    let path = match &args.daemon {
        Some(p) => p.clone(),
        None => exe_dir()?.join("letstalkd"),
    };
    if !path.is_file() {
        bail!(
            "letstalkd not found at {}: build it with `cargo build --release -p letstalkd` \
             (or pass --daemon PATH)",
            path.display()
        );
    }
    Ok(path)
}

/// The directory of this executable (target/release/), leaving a deps/ subdirectory.
pub(crate) fn exe_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this executable")?;
    let mut dir = exe.parent().map(Path::to_path_buf).context("this executable has no dir")?;
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

/// `--baseline`/`$DELTACHAT_RPC_SERVER`, or where bench/baseline.sh installs it. When it
/// is missing, says so and how to install it.
fn baseline_path(args: &IpcArgs) -> Option<PathBuf> {
    let path = match &args.baseline {
        Some(p) => p.clone(),
        None => {
            let target = exe_dir().ok().and_then(|d| d.parent().map(Path::to_path_buf));
            target.unwrap_or_else(|| PathBuf::from("target")).join(BASELINE_IN_TARGET)
        }
    };
    if path.is_file() {
        return Some(path);
    }
    println!("baseline unavailable: no deltachat-rpc-server at {}", path.display());
    println!(
        "  install it with `bench/baseline.sh` (npm install of \
         @deltachat/stdio-rpc-server-linux-x64 into target/bench-baseline/),"
    );
    println!("  or point $DELTACHAT_RPC_SERVER / --baseline at the binary.");
    println!("  continuing with letstalkd's own figures.");
    println!();
    None
}

async fn measure_letstalkd(bin: &Path, work: &Path, args: &IpcArgs) -> Result<Figures> {
    let call = Call::new("system.status", "{}");
    progress("letstalkd: binary size");
    let (size, size_note) = sys::stripped_size(bin)?;

    // Start-up. The first start of the restart series creates its data directory and is
    // not recorded; it also brings the binary into the page cache.
    progress("letstalkd: start-up");
    let again = LetstalkdSpec::new(bin, work.join("restart"));
    again.measure_start(&call)?;
    let mut start_again = Vec::with_capacity(args.starts);
    for _ in 0..args.starts {
        start_again.push(again.measure_start(&call)?);
    }
    let mut start_fresh = Vec::with_capacity(args.starts);
    for i in 0..args.starts {
        let spec = LetstalkdSpec::new(bin, work.join(format!("fresh-{i}")));
        start_fresh.push(spec.measure_start(&call)?);
    }

    // One long-running daemon for the idle RSS and the load runs.
    progress("letstalkd: idle RSS");
    let spec = LetstalkdSpec::new(bin, work.join("load"));
    let (mut daemon, _, _) = spec.start()?;
    let version = {
        let client = letstalk_ipc::Client::connect(&daemon.socket).await?;
        let status = client.call_value("system.status", serde_json::json!({})).await?;
        status.get("version").and_then(|v| v.as_str()).unwrap_or("?").to_owned()
    };
    tokio::time::sleep(Duration::from_millis(args.idle_ms)).await;
    let rss_idle_kib = sys::proc_status_kib(daemon.pid(), "VmRSS")?;
    let rss_idle_parts = sys::rss_parts(daemon.pid())?;
    let pss_idle_kib = sys::pss_kib(daemon.pid())?;

    let shape = Shape { window: 1, warmup: args.warmup, calls: args.calls };
    progress("letstalkd: 1 client");
    let one = clients(&daemon.socket, 1, &call, shape).await?;
    progress(&format!("letstalkd: {} clients", args.clients));
    let many = clients(&daemon.socket, args.clients, &call, shape).await?;
    progress(&format!("letstalkd: 1 connection, {} in flight", args.clients));
    let pipelined = clients(
        &daemon.socket,
        1,
        &call,
        Shape { window: args.clients, warmup: args.warmup, calls: args.calls * args.clients },
    )
    .await?;

    tokio::time::sleep(Duration::from_millis(args.idle_ms)).await;
    let rss_after_load_kib = sys::proc_status_kib(daemon.pid(), "VmRSS")?;
    daemon.stop()?;

    Ok(Figures {
        name: "letstalkd".to_owned(),
        version,
        size,
        size_note,
        start_fresh,
        start_again,
        rss_idle_kib,
        rss_idle_parts,
        pss_idle_kib,
        rss_after_load_kib,
        one,
        many,
        many_how: format!("{} connections, 1 request in flight on each", args.clients),
        pipelined: Some(pipelined),
    })
}

/// `n` connections to `socket`, each running `shape` at the same time.
async fn clients(socket: &Path, n: usize, call: &Call, shape: Shape) -> Result<Latencies> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let stream = UnixStream::connect(socket)
            .await
            .with_context(|| format!("connecting to {}", socket.display()))?;
        streams.push(stream.into_split());
    }
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (read, mut write) in streams {
        let call = call.clone();
        tasks.spawn(async move {
            let mut read = BufReader::new(read);
            closed_loop(&mut read, &mut write, &call, shape).await
        });
    }
    let mut samples = Vec::with_capacity(n * shape.calls);
    while let Some(result) = tasks.join_next().await {
        samples.extend(result.context("a client task failed")??);
    }
    let wall = started.elapsed();
    Ok(Latencies::new(samples, wall, n * (shape.warmup + shape.calls)))
}

async fn measure_deltachat(bin: &Path, work: &Path, args: &IpcArgs) -> Result<Figures> {
    let call = Call::new("get_system_info", "[]");
    progress("baseline: binary size");
    let (size, size_note) = sys::stripped_size(bin)?;

    progress("baseline: start-up");
    let again = DeltaChatSpec::new(bin, work.join("restart"));
    again.measure_start(&call)?;
    let mut start_again = Vec::with_capacity(args.starts);
    for _ in 0..args.starts {
        start_again.push(again.measure_start(&call)?);
    }
    let mut start_fresh = Vec::with_capacity(args.starts);
    for i in 0..args.starts {
        let spec = DeltaChatSpec::new(bin, work.join(format!("fresh-{i}")));
        start_fresh.push(spec.measure_start(&call)?);
    }

    progress("baseline: idle RSS");
    let spec = DeltaChatSpec::new(bin, work.join("load"));
    let mut server = spec.start()?;
    // The first call also tells the version (get_system_info's deltachat_core_version).
    let version = {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let stdin = server.stdin.as_mut().context("stdin already closed")?;
        stdin.write_all(call.line(1).as_bytes()).await?;
        stdin.flush().await?;
        let mut line = String::new();
        loop {
            line.clear();
            if server.stdout.read_line(&mut line).await? == 0 {
                bail!("deltachat-rpc-server closed stdout before answering");
            }
            if crate::load::answer_id(line.as_bytes())?.is_some() {
                break;
            }
        }
        let answer: serde_json::Value = serde_json::from_str(&line)?;
        answer
            .pointer("/result/deltachat_core_version")
            .and_then(|v| v.as_str())
            .unwrap_or("?")
            .to_owned()
    };
    tokio::time::sleep(Duration::from_millis(args.idle_ms)).await;
    let rss_idle_kib = sys::proc_status_kib(server.pid(), "VmRSS")?;
    let rss_idle_parts = sys::rss_parts(server.pid())?;
    let pss_idle_kib = sys::pss_kib(server.pid())?;

    let shape = Shape { window: 1, warmup: args.warmup, calls: args.calls };
    progress("baseline: 1 client");
    let one = stdio_run(&mut server, &call, shape).await?;
    progress(&format!("baseline: {} in flight on stdio", args.clients));
    let many = stdio_run(
        &mut server,
        &call,
        Shape { window: args.clients, warmup: args.warmup, calls: args.calls * args.clients },
    )
    .await?;

    tokio::time::sleep(Duration::from_millis(args.idle_ms)).await;
    let rss_after_load_kib = sys::proc_status_kib(server.pid(), "VmRSS")?;
    server.stop().await?;

    Ok(Figures {
        name: "deltachat-rpc-server".to_owned(),
        version,
        size,
        size_note,
        start_fresh,
        start_again,
        rss_idle_kib,
        rss_idle_parts,
        pss_idle_kib,
        rss_after_load_kib,
        one,
        many,
        many_how: format!(
            "{} requests in flight on its single stdio channel (it has no way to accept \
             {} clients)",
            args.clients, args.clients
        ),
        pipelined: None,
    })
}

async fn stdio_run(
    server: &mut crate::servers::DeltaChat,
    call: &Call,
    shape: Shape,
) -> Result<Latencies> {
    let stdin = server.stdin.as_mut().context("stdin already closed")?;
    let started = Instant::now();
    let samples = closed_loop(&mut server.stdout, stdin, call, shape).await?;
    Ok(Latencies::new(samples, started.elapsed(), shape.warmup + shape.calls))
}

fn progress(what: &str) {
    eprintln!("  measuring {what} …");
}

fn first_answers(samples: &[StartSample]) -> Duration {
    median(&samples.iter().map(|s| s.first_answer).collect::<Vec<_>>())
}

fn readies(samples: &[StartSample]) -> Option<Duration> {
    let r: Option<Vec<Duration>> = samples.iter().map(|s| s.ready).collect();
    r.map(|r| median(&r))
}

fn latency_line(label: &str, l: &Latencies) -> String {
    format!(
        "  {label:<38} p50 {}  p99 {}  max {}  ({} calls, {:.0} calls/s)",
        ms(l.p50()),
        ms(l.p99()),
        ms(l.max()),
        l.len(),
        l.throughput()
    )
}

fn print_figures(f: &Figures) {
    println!("== {} {} ==", f.name, f.version);
    let note = f.size_note.map(|n| format!(" ({n})")).unwrap_or_default();
    println!("  {:<38} {} ({} bytes){note}", "binary, stripped", mb(f.size), f.size);
    for (label, samples) in [("restart", &f.start_again), ("fresh data dir", &f.start_fresh)] {
        let min = samples.iter().map(|s| s.first_answer).min().unwrap_or_default();
        let max = samples.iter().map(|s| s.first_answer).max().unwrap_or_default();
        let ready = readies(samples).map(|r| format!(", READY=1 at {}", ms(r))).unwrap_or_default();
        println!(
            "  {:<38} median {} (min {}, max {}, n={}){ready}",
            format!("start → first answer, {label}"),
            ms(first_answers(samples)),
            ms(min),
            ms(max),
            samples.len()
        );
    }
    println!(
        "  {:<38} {} (anonymous {}, file-backed and shared {})",
        "idle VmRSS",
        mib_from_kib(f.rss_idle_kib),
        mib_from_kib(f.rss_idle_parts.0),
        mib_from_kib(f.rss_idle_parts.1)
    );
    println!("  {:<38} {}", "idle PSS (shared pages divided)", mib_from_kib(f.pss_idle_kib));
    println!("  {:<38} {}", "idle VmRSS after the load runs", mib_from_kib(f.rss_after_load_kib));
    println!("{}", latency_line("round trip, 1 client", &f.one));
    println!("{}", latency_line("round trip, many clients", &f.many));
    println!("    (many clients: {})", f.many_how);
    if let Some(p) = &f.pipelined {
        println!("{}", latency_line("round trip, 1 conn pipelined", p));
        println!("    (pipelined: one connection, as many requests in flight as clients above)");
    }
    println!();
}

fn print_summary(ours: &Figures, theirs: Option<&Figures>, args: &IpcArgs) {
    let base_name = theirs
        .map(|t| format!("{} {}", t.name, t.version))
        .unwrap_or_else(|| "baseline unavailable".to_owned());
    println!("== Summary: letstalkd {} vs {base_name} ==", ours.version);
    println!("{:<40} {:>12} {:>12} {:>8}   target", "figure", "letstalkd", "baseline", "ratio");

    let dash = || "-".to_owned();
    let row = |label: &str, a: String, b: Option<String>, ratio: Option<f64>, target: String| {
        println!(
            "{label:<40} {a:>12} {:>12} {:>8}   {target}",
            b.unwrap_or_else(dash),
            ratio.map(|r| format!("{r:.2}x")).unwrap_or_else(dash)
        );
    };
    let ratio =
        |a: Duration, b: Duration| (b > Duration::ZERO).then(|| a.as_secs_f64() / b.as_secs_f64());
    let p50_target = |b: Option<Duration>| match b {
        Some(b) => {
            format!("<= {TARGET_P50_RATIO}x baseline (<= {})", ms(b.mul_f64(TARGET_P50_RATIO)))
        }
        None => format!("<= {TARGET_P50_RATIO}x baseline"),
    };

    let n = args.clients;
    let one = "1 client".to_owned();
    let many = format!("{n} clients*");
    for (label, a, b) in
        [(one, &ours.one, theirs.map(|t| &t.one)), (many, &ours.many, theirs.map(|t| &t.many))]
    {
        row(
            &format!("round trip p50, {label}"),
            ms(a.p50()),
            b.map(|b| ms(b.p50())),
            b.and_then(|b| ratio(a.p50(), b.p50())),
            p50_target(b.map(Latencies::p50)),
        );
        row(
            &format!("round trip p99, {label}"),
            ms(a.p99()),
            b.map(|b| ms(b.p99())),
            b.and_then(|b| ratio(a.p99(), b.p99())),
            String::new(),
        );
    }
    if let Some(p) = &ours.pipelined {
        let b = theirs.map(|t| &t.many);
        row(
            &format!("round trip p50, 1 conn, {n} in flight"),
            ms(p.p50()),
            b.map(|b| ms(b.p50())),
            b.and_then(|b| ratio(p.p50(), b.p50())),
            p50_target(b.map(Latencies::p50)),
        );
    }
    let first_target = format!("<= {} ms", TARGET_FIRST_ANSWER.as_millis());
    for (label, a, b) in [
        ("restart", &ours.start_again, theirs.map(|t| &t.start_again)),
        ("fresh dir", &ours.start_fresh, theirs.map(|t| &t.start_fresh)),
    ] {
        let a = first_answers(a);
        let b = b.map(|b| first_answers(b));
        row(
            &format!("start → first answer, {label} (median)"),
            ms(a),
            b.map(ms),
            b.and_then(|b| ratio(a, b)),
            first_target.clone(),
        );
    }
    let kib_ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
    row(
        "idle VmRSS",
        mib_from_kib(ours.rss_idle_kib),
        theirs.map(|t| mib_from_kib(t.rss_idle_kib)),
        theirs.and_then(|t| kib_ratio(ours.rss_idle_kib, t.rss_idle_kib)),
        format!("<= {TARGET_RSS_MIB:.0} MiB"),
    );
    row(
        "idle PSS",
        mib_from_kib(ours.pss_idle_kib),
        theirs.map(|t| mib_from_kib(t.pss_idle_kib)),
        theirs.and_then(|t| kib_ratio(ours.pss_idle_kib, t.pss_idle_kib)),
        String::new(),
    );
    row(
        "idle VmRSS after load",
        mib_from_kib(ours.rss_after_load_kib),
        theirs.map(|t| mib_from_kib(t.rss_after_load_kib)),
        theirs.and_then(|t| kib_ratio(ours.rss_after_load_kib, t.rss_after_load_kib)),
        String::new(),
    );
    row(
        "binary size, stripped",
        mb(ours.size),
        theirs.map(|t| mb(t.size)),
        theirs.and_then(|t| kib_ratio(ours.size, t.size)),
        format!("<= {TARGET_BINARY_MB:.0} MB"),
    );
    println!();
    println!("* letstalkd: {}.", ours.many_how);
    if let Some(t) = theirs {
        println!("  baseline: {}.", t.many_how);
    } else {
        println!("  baseline unavailable: run bench/baseline.sh to measure it in the same run.");
    }
    println!("  ratio = letstalkd / baseline (below 1: letstalkd is faster, smaller or leaner).");
}
