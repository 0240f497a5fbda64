//! The servers under test, as processes: `letstalkd` (a Unix socket, readiness by
//! `READY=1` on `NOTIFY_SOCKET`, stopped by SIGTERM) and the Delta Chat JSON-RPC server
//! (one channel on its stdin/stdout, stopped by closing stdin).
//!
//! Each process gets private directories and a stderr log under the bench's temp dir,
//! and no ambient configuration leaks in from the caller's environment.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustix::process::{Pid, Signal, kill_process};

use crate::load::{Call, answer_id};

/// How long a server may take to become ready or to stop before the bench gives up.
const PATIENCE: Duration = Duration::from_secs(30);

/// When one start was measured: from just before the spawn.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StartSample {
    /// Until the server said it is ready (letstalkd's `READY=1`); none for servers that
    /// have no readiness signal.
    pub(crate) ready: Option<Duration>,
    /// Until the first answer was read.
    pub(crate) first_answer: Duration,
}

/// The tail of a log file, for error messages.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    if tail.is_empty() { "(its log is empty)".to_owned() } else { tail }
}

/// Waits for `child` to exit, at most `limit`; kills it after that.
fn reap(child: &mut Child, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.kill();
    let _ = child.wait();
    bail!("the process did not stop within {limit:?} and was killed")
}

// ---------------------------------------------------------------------------------------
// letstalkd

/// How to start `letstalkd` in one home directory (data dir, socket, config, log).
#[derive(Debug, Clone)]
pub(crate) struct LetstalkdSpec {
    pub(crate) bin: PathBuf,
    pub(crate) home: PathBuf,
}

/// A running `letstalkd`; killed when dropped.
#[derive(Debug)]
pub(crate) struct Letstalkd {
    child: Option<Child>,
    pub(crate) socket: PathBuf,
    log: PathBuf,
}

impl LetstalkdSpec {
    pub(crate) fn new(bin: &Path, home: PathBuf) -> Self {
        Self { bin: bin.to_owned(), home }
    }

    pub(crate) fn socket(&self) -> PathBuf {
        self.home.join("run").join("letstalkd.sock")
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--data-dir").arg(self.home.join("data")).arg("--socket").arg(self.socket());
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("LETSTALK_") || k == "NOTIFY_SOCKET" || k.starts_with("LISTEN_") {
                cmd.env_remove(&*k);
            }
        }
        cmd.env("XDG_CONFIG_HOME", self.home.join("config"));
        cmd.env("HOME", &self.home);
        cmd.env("LETSTALK_LOG", "warn");
        cmd
    }

    /// Starts the daemon and waits for its `READY=1`; returns it, the moment just before
    /// the spawn and the time from then to the notification.
    pub(crate) fn start(&self) -> Result<(Letstalkd, Instant, Duration)> {
        std::fs::create_dir_all(&self.home)
            .with_context(|| format!("creating {}", self.home.display()))?;
        let log = self.home.join("letstalkd.log");
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let notify_path = self.home.join("notify.sock");
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path)
            .with_context(|| format!("binding {}", notify_path.display()))?;
        notify.set_read_timeout(Some(Duration::from_millis(20)))?;
        let mut cmd = self.command();
        cmd.env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);

        let started = Instant::now();
        let child = cmd.spawn().with_context(|| format!("spawning {}", self.bin.display()))?;
        let mut daemon = Letstalkd { child: Some(child), socket: self.socket(), log };
        let mut buf = [0u8; 4096];
        loop {
            if let Ok(n) = notify.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1")
            {
                return Ok((daemon, started, started.elapsed()));
            }
            if let Some(status) = daemon.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!(
                    "letstalkd exited with {status} before it was ready:\n{}",
                    log_tail(&daemon.log)
                );
            }
            if started.elapsed() > PATIENCE {
                bail!("letstalkd was not ready within {PATIENCE:?}:\n{}", log_tail(&daemon.log));
            }
        }
    }

    /// One measured start: spawn, `READY=1`, connect, one call, its answer; then SIGTERM.
    pub(crate) fn measure_start(&self, call: &Call) -> Result<StartSample> {
        let (mut daemon, started, ready) = self.start()?;
        let stream = UnixStream::connect(&daemon.socket)
            .with_context(|| format!("connecting to {}", daemon.socket.display()))?;
        let first_answer = first_answer(&stream, &stream, call, started)?;
        daemon.stop()?;
        Ok(StartSample { ready: Some(ready), first_answer })
    }
}

/// Writes one request and reads lines until its answer; returns the time since `started`.
fn first_answer(
    mut writer: impl Write,
    reader: impl std::io::Read,
    call: &Call,
    started: Instant,
) -> Result<Duration> {
    writer.write_all(call.line(1).as_bytes()).context("writing the first request")?;
    writer.flush()?;
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).context("reading the first answer")? == 0 {
            bail!("the server closed the channel before answering");
        }
        if answer_id(&line)?.is_some() {
            return Ok(started.elapsed());
        }
    }
}

impl Letstalkd {
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// SIGTERM, then waits for the exit.
    pub(crate) fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else { return Ok(()) };
        if let Some(pid) = Pid::from_raw(child.id() as i32) {
            let _ = kill_process(pid, Signal::TERM);
        }
        reap(&mut child, PATIENCE).context("stopping letstalkd")
    }
}

impl Drop for Letstalkd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// The Delta Chat JSON-RPC server (the baseline)

/// How to start `deltachat-rpc-server` with one accounts directory.
#[derive(Debug, Clone)]
pub(crate) struct DeltaChatSpec {
    pub(crate) bin: PathBuf,
    pub(crate) home: PathBuf,
}

/// A running `deltachat-rpc-server` and its one channel; killed when dropped.
#[derive(Debug)]
pub(crate) struct DeltaChat {
    child: tokio::process::Child,
    pub(crate) stdin: Option<tokio::process::ChildStdin>,
    pub(crate) stdout: tokio::io::BufReader<tokio::process::ChildStdout>,
}

impl DeltaChatSpec {
    pub(crate) fn new(bin: &Path, home: PathBuf) -> Self {
        Self { bin: bin.to_owned(), home }
    }

    fn command(&self) -> Result<Command> {
        std::fs::create_dir_all(&self.home)
            .with_context(|| format!("creating {}", self.home.display()))?;
        let log = self.home.join("deltachat-rpc-server.log");
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let mut cmd = Command::new(&self.bin);
        cmd.env("DC_ACCOUNTS_PATH", self.home.join("accounts"))
            .env("HOME", &self.home)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        Ok(cmd)
    }

    /// One measured start: spawn, one call on stdin, its answer on stdout; then closes
    /// stdin (which stops it).
    pub(crate) fn measure_start(&self, call: &Call) -> Result<StartSample> {
        let mut cmd = self.command()?;
        let started = Instant::now();
        let mut child = cmd.spawn().with_context(|| format!("spawning {}", self.bin.display()))?;
        let result = match (child.stdin.take(), child.stdout.take()) {
            (Some(stdin), Some(stdout)) => {
                let r = first_answer(&stdin, stdout, call, started);
                drop(stdin);
                r
            }
            _ => Err(anyhow::anyhow!("no pipes to the child")),
        };
        let stopped = reap(&mut child, PATIENCE).context("stopping deltachat-rpc-server");
        let first_answer = result?;
        stopped?;
        Ok(StartSample { ready: None, first_answer })
    }

    /// Starts the server for the load runs.
    pub(crate) fn start(&self) -> Result<DeltaChat> {
        let mut cmd = tokio::process::Command::from(self.command()?);
        cmd.kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| format!("spawning {}", self.bin.display()))?;
        let stdin = child.stdin.take().context("no stdin pipe")?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        Ok(DeltaChat { child, stdin: Some(stdin), stdout: tokio::io::BufReader::new(stdout) })
    }
}

impl DeltaChat {
    pub(crate) fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Closes stdin, which makes the server exit; kills it if it does not.
    pub(crate) async fn stop(mut self) -> Result<()> {
        drop(self.stdin.take());
        match tokio::time::timeout(PATIENCE, self.child.wait()).await {
            Ok(status) => {
                status?;
                Ok(())
            }
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("deltachat-rpc-server did not stop within {PATIENCE:?} and was killed")
            }
        }
    }
}
