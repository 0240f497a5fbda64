//! What the operating system tells about a process or a binary: resident memory and CPU
//! time from /proc, stripped binary size, and a one-line description of the host.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// A field of /proc/PID/status in kibibytes ("VmRSS", "VmHWM").
pub(crate) fn proc_status_kib(pid: u32, field: &str) -> Result<u64> {
    proc_kib(&format!("/proc/{pid}/status"), field)
}

/// The proportional set size in kibibytes (/proc/PID/smaps_rollup): each resident page
/// divided by the number of processes mapping it, so the C library's pages, which every
/// process maps, count for little and a static binary's own pages in full. What the
/// process costs the machine, where VmRSS is what it touches.
pub(crate) fn pss_kib(pid: u32) -> Result<u64> {
    proc_kib(&format!("/proc/{pid}/smaps_rollup"), "Pss")
}

fn proc_kib(path: &str, field: &str) -> Result<u64> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(field).and_then(|r| r.strip_prefix(':')) {
            let number = rest.trim().trim_end_matches("kB").trim();
            return number.parse().with_context(|| format!("{path}: {field} is {rest:?}"));
        }
    }
    bail!("{path} has no {field} line")
}

/// (RssAnon, RssFile + RssShmem) in kibibytes: the private heap and stacks, and the
/// pages shared with the page cache (mostly the mapped binary itself).
pub(crate) fn rss_parts(pid: u32) -> Result<(u64, u64)> {
    let anon = proc_status_kib(pid, "RssAnon")?;
    let file = proc_status_kib(pid, "RssFile")?;
    let shmem = proc_status_kib(pid, "RssShmem")?;
    Ok((anon, file + shmem))
}

/// The size of `bin` once stripped: a copy is run through `strip` (the release profile
/// already strips symbols, so usually nothing changes). When `strip` is not installed,
/// the file's size as it is, and a note saying so.
pub(crate) fn stripped_size(bin: &Path) -> Result<(u64, Option<&'static str>)> {
    let dir = tempfile::Builder::new().prefix("letstalk-bench-strip-").tempdir()?;
    let copy = dir.path().join("bin");
    std::fs::copy(bin, &copy).with_context(|| format!("copying {}", bin.display()))?;
    let note = match Command::new("strip").arg("--strip-all").arg(&copy).output() {
        Ok(out) if out.status.success() => None,
        Ok(_) => Some("strip failed on it: size as shipped"),
        Err(_) => Some("strip not installed: size as shipped"),
    };
    let size = std::fs::metadata(&copy)?.len();
    Ok((size, note))
}

/// "Linux 6.1.0, 2 CPUs, AMD EPYC ..." for the report's header.
pub(crate) fn host() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned());
    let cpus = std::thread::available_parallelism().map(usize::from).unwrap_or(0);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    format!("Linux {kernel}, {cpus} CPUs, {model}")
}

/// The CPU time `pid` used so far (all threads, also finished ones).
pub(crate) fn cpu_time(pid: u32) -> Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12].iter().filter_map(|i| fields.get(*i)?.parse::<u64>().ok()).sum();
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Ok(Duration::from_millis(ticks * 1000 / hz))
}

/// Context switches of `pid` so far, voluntary and not, summed over its live threads
/// (/proc/PID/task/*/status; a thread that already exited is not counted).
pub(crate) fn context_switches(pid: u32) -> Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))?.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
        total += status
            .lines()
            .filter(|l| {
                l.starts_with("voluntary_ctxt_switches")
                    || l.starts_with("nonvoluntary_ctxt_switches")
            })
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Ok(total)
}
