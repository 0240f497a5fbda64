//! The servers under test, as processes: `letstalkd` (a Unix socket, readiness by
//! `READY=1` on `NOTIFY_SOCKET`, stopped by SIGTERM) and the Delta Chat JSON-RPC server
//! (one channel on its stdin/stdout, stopped by closing stdin).
//!
//! For the messaging and relay benchmarks also `letstalk-relay` (readiness by its
//! `listening on ADDR:PORT` line on stdout, stopped by SIGTERM) and the mosquitto MQTT
//! broker (readiness by accepting a TCP connection, stopped by SIGTERM).
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
    /// Extra command-line arguments (e.g. `--relay HOST:PORT --relay-cert PEM`).
    pub(crate) args: Vec<std::ffi::OsString>,
    /// Run inside this network namespace (`ip netns exec`).
    pub(crate) netns: Option<String>,
    /// Extra environment (e.g. `WATCHDOG_USEC`, as systemd sets it).
    pub(crate) env: Vec<(String, String)>,
}

/// A running `letstalkd`; killed when dropped.
#[derive(Debug)]
pub(crate) struct Letstalkd {
    child: Option<Child>,
    pub(crate) socket: PathBuf,
    log: PathBuf,
}

impl Letstalkd {
    /// Its stderr log.
    pub(crate) fn log(&self) -> &Path {
        &self.log
    }
}

impl LetstalkdSpec {
    pub(crate) fn new(bin: &Path, home: PathBuf) -> Self {
        Self { bin: bin.to_owned(), home, args: Vec::new(), netns: None, env: Vec::new() }
    }

    /// The same daemon, linked to the relay listening on `port` (its certificate `cert`).
    pub(crate) fn with_relay(mut self, port: u16, cert: &Path) -> Self {
        self.args.push("--relay".into());
        self.args.push(format!("localhost:{port}").into());
        self.args.push("--relay-cert".into());
        self.args.push(cert.as_os_str().to_owned());
        self
    }

    pub(crate) fn socket(&self) -> PathBuf {
        self.home.join("run").join("letstalkd.sock")
    }

    fn command(&self) -> Command {
        let mut cmd = in_netns(self.netns.as_deref(), &self.bin);
        cmd.arg("--data-dir").arg(self.home.join("data")).arg("--socket").arg(self.socket());
        cmd.args(&self.args);
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("LETSTALK_") || k == "NOTIFY_SOCKET" || k.starts_with("LISTEN_") {
                cmd.env_remove(&*k);
            }
        }
        cmd.env("XDG_CONFIG_HOME", self.home.join("config"));
        cmd.env("HOME", &self.home);
        cmd.env("LETSTALK_LOG", "warn");
        // No session bus: each run's fresh data directory would otherwise put a key into
        // the caller's keyring. The daemon then keeps its key in a file, as on a device
        // without a desktop session.
        cmd.env_remove("DBUS_SESSION_BUS_ADDRESS");
        cmd.env("XDG_RUNTIME_DIR", self.home.join("xdg-runtime"));
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
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

// ---------------------------------------------------------------------------------------
// Binaries

/// `explicit`, or `name` in `dir` (target/release/); an error telling how to build it
/// when it is missing.
pub(crate) fn release_bin(explicit: Option<&PathBuf>, dir: &Path, name: &str) -> Result<PathBuf> {
    let path = explicit.cloned().unwrap_or_else(|| dir.join(name));
    if !path.is_file() {
        bail!(
            "{name} not found at {}: build it with `cargo build --release -p {name}`",
            path.display()
        );
    }
    Ok(path)
}

/// Removes the caller's `LETSTALK_*`, `NOTIFY_SOCKET` and `LISTEN_*` from `cmd`.
fn scrub_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("LETSTALK_") || k == "NOTIFY_SOCKET" || k.starts_with("LISTEN_") {
            cmd.env_remove(&*k);
        }
    }
}

/// SIGTERM to `child`, then waits for it (killing it after `PATIENCE`).
fn terminate(child: &mut Child) -> Result<()> {
    if let Some(pid) = Pid::from_raw(child.id() as i32) {
        let _ = kill_process(pid, Signal::TERM);
    }
    reap(child, PATIENCE)
}

// ---------------------------------------------------------------------------------------
// letstalk-relay

/// A running `letstalk-relay` on 127.0.0.1; killed when dropped.
#[derive(Debug)]
pub(crate) struct RelayProcess {
    child: Option<Child>,
    /// Its UDP port.
    pub(crate) port: u16,
    /// Its self-signed certificate (`relay-cert.pem` in its data directory).
    pub(crate) cert: PathBuf,
}

impl RelayProcess {
    /// Starts the relay with a data directory and a config file under `home` that raises
    /// `register_per_ip` (the bench registers every account from 127.0.0.1); every other
    /// limit is the default. Waits for its `listening on` line.
    pub(crate) fn start(bin: &Path, home: &Path) -> Result<Self> {
        Self::start_at(bin, home, None, "127.0.0.1:0", &[])
    }

    /// [`RelayProcess::start`] with extra flags (e.g. `--cluster URL --node-id NAME`).
    pub(crate) fn start_with(bin: &Path, home: &Path, extra: &[&str]) -> Result<Self> {
        Self::start_at(bin, home, None, "127.0.0.1:0", extra)
    }

    /// [`RelayProcess::start`] listening on `listen`, inside network namespace `netns`,
    /// with `extra` flags.
    pub(crate) fn start_at(
        bin: &Path,
        home: &Path,
        netns: Option<&str>,
        listen: &str,
        extra: &[&str],
    ) -> Result<Self> {
        let data = home.join("data");
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        let config = home.join("relay.toml");
        std::fs::write(&config, "[register_per_ip]\nburst = 1000\nper_minute = 6000\n")?;
        let log = home.join("relay.log");
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let mut cmd = in_netns(netns, bin);
        scrub_env(&mut cmd);
        cmd.arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(&data)
            .arg("--config")
            .arg(&config)
            .arg("--log")
            .arg("warn")
            .args(extra)
            .env("HOME", home)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = cmd.spawn().with_context(|| format!("spawning {}", bin.display()))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the first line, then drains stdout until the relay exits.
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = tx.send(reader.read_line(&mut line).map(|_| line));
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let mut relay = Self { child: Some(child), port: 0, cert: data.join("relay-cert.pem") };
        let Ok(Ok(line)) = rx.recv_timeout(PATIENCE) else {
            bail!("letstalk-relay did not say where it listens:\n{}", log_tail(&log));
        };
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            .with_context(|| format!("letstalk-relay printed {line:?}:\n{}", log_tail(&log)))?;
        relay.port = addr.port();
        Ok(relay)
    }

    /// The relay's process id (0 once stopped).
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// SIGTERM, then waits for the exit.
    pub(crate) fn stop(&mut self) -> Result<()> {
        match self.child.take() {
            Some(mut child) => terminate(&mut child).context("stopping letstalk-relay"),
            None => Ok(()),
        }
    }

    /// SIGKILL (a crash: nothing is closed, its peers hear nothing), then waits for it.
    pub(crate) fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().context("killing letstalk-relay")?;
            child.wait().context("waiting for the killed letstalk-relay")?;
        }
        Ok(())
    }
}

/// `bin`, run inside network namespace `ns` when given.
pub(crate) fn in_netns(ns: Option<&str>, bin: &Path) -> Command {
    match ns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(bin);
            cmd
        }
        None => Command::new(bin),
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------
// mosquitto (the relay benchmark's baseline)

/// A running mosquitto broker on 127.0.0.1; killed when dropped.
#[derive(Debug)]
pub(crate) struct Mosquitto {
    child: Option<Child>,
    /// Its TCP port.
    pub(crate) port: u16,
    pub(crate) version: String,
}

impl Mosquitto {
    /// `explicit`, or `mosquitto` on PATH or in /usr/sbin.
    pub(crate) fn find(explicit: Option<&PathBuf>) -> Option<PathBuf> {
        if let Some(p) = explicit {
            return p.is_file().then(|| p.clone());
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
            .map(|d| d.join("mosquitto"))
            .find(|p| p.is_file())
    }

    /// Starts mosquitto with a config under `home`: one listener on a free loopback port,
    /// anonymous clients, no persistence (its default), no limit on queued QoS 1
    /// messages per client (so that none is dropped). Waits until it accepts TCP.
    pub(crate) fn start(bin: &Path, home: &Path) -> Result<Self> {
        std::fs::create_dir_all(home).with_context(|| format!("creating {}", home.display()))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config = home.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_queued_messages 0\nlog_dest stderr\nlog_type error\n"
            ),
        )?;
        let log = home.join("mosquitto.log");
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let version = Command::new(bin)
            .arg("-h")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout).lines().next().map(|l| l.trim().to_owned())
            })
            .unwrap_or_default();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let mut broker = Self { child: Some(child), port, version };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(status) = broker.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("mosquitto exited with {status}:\n{}", log_tail(&log));
            }
            if started.elapsed() > PATIENCE {
                bail!("mosquitto did not accept connections:\n{}", log_tail(&log));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(broker)
    }

    /// SIGTERM, then waits for the exit.
    pub(crate) fn stop(&mut self) -> Result<()> {
        match self.child.take() {
            Some(mut child) => terminate(&mut child).context("stopping mosquitto"),
            None => Ok(()),
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
