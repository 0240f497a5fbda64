//! The end-to-end test harness: a [`World`] (a temp directory) in which real `letstalkd`
//! (and, later, `letstalk-relay`) processes are started on private sockets and driven
//! through the IPC socket, as a UI would.
//!
//! Readiness is never guessed with sleeps: each daemon gets a `NOTIFY_SOCKET` and the
//! harness waits for its `READY=1`, exactly as systemd would.
//!
//! [`Bus`] is a private D-Bus bus: the system bus of the device tests, and, with
//! gnome-keyring's Secret Service on it, the session bus of the tests of the database key
//! in the OS keyring ([`SecretService`]); daemons never see the caller's own buses.
//!
//! The binaries are the workspace's own debug builds (`target/debug/`), which
//! `cargo nextest run --workspace` / `cargo test --workspace` build before any test runs.
#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test harness: a panic is a failed test"
)]

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

pub mod layering;
pub mod peer;

pub use letstalk_ipc::Client;
pub use letstalk_relay::testing::NatsCluster;

/// The directory holding the workspace's binaries: `$LETSTALK_TEST_BIN_DIR` when set
/// (worktrees sharing one target directory overwrite each other's `target/debug`
/// binaries, so a run can point at a private copy), else the test executable's profile
/// directory.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LETSTALK_TEST_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // The test executable is target/<profile>/deps/it-<hash>; the binaries are in
    // target/<profile>/.
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The path of one of the workspace's programs; panics with advice when it is missing.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is not built: run the tests with `cargo nextest run --workspace` (or build it with `cargo build --bins`)",
        path.display()
    );
    path
}

/// A temporary world of processes. Everything lives in one temp dir, removed at the end.
#[derive(Debug)]
pub struct World {
    dir: tempfile::TempDir,
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

/// A failed test leaves its world behind and prints the end of every log in it (relays,
/// daemons, nats-server), so that a failure seen only in CI can be read from CI's output.
impl Drop for World {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        self.dir.disable_cleanup(true);
        eprintln!("the test's world is kept at {}", self.path().display());
        for log in logs_under(self.path()) {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL)..];
            eprintln!("──── {} (last {} of {} lines)", log.display(), tail.len(), lines.len());
            for line in tail {
                eprintln!("    {line}");
            }
        }
    }
}

/// How many lines of each log a failed test prints.
const LOG_TAIL: usize = 25;

/// Every `*.log` file under `dir`, sorted by path.
fn logs_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "log") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

impl World {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("letstalk-it-").tempdir().expect("temp dir");
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A daemon named `name` (its data dir and socket are derived from the name), not
    /// yet started.
    pub fn daemon(&self, name: &str) -> DaemonSpec {
        let home = self.path().join(name);
        DaemonSpec {
            name: name.to_owned(),
            data_dir: home.join("data"),
            socket: home.join("run").join("letstalkd.sock"),
            home,
            args: Vec::new(),
            env: Vec::new(),
            netns: None,
            foreign: None,
        }
    }
}

/// How to start a daemon.
#[derive(Debug, Clone)]
pub struct DaemonSpec {
    pub name: String,
    pub home: PathBuf,
    pub data_dir: PathBuf,
    pub socket: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Run inside this network namespace (see [`Netns`]).
    pub netns: Option<String>,
    /// Run another architecture's build under an emulator (see [`Foreign`]).
    pub foreign: Option<Foreign>,
}

/// The programs built for another architecture (aarch64 for phones), run under an
/// emulator: `LETSTALK_FOREIGN_BIN_DIR` holds their `letstalkd` and `letstalk`,
/// `LETSTALK_FOREIGN_RUNNER` is the emulator's command line (e.g. `qemu-aarch64`;
/// qemu-user runs the program in its own process, so the daemon's pid and signals are
/// as native). `.ci/run` cross-builds them and sets both.
#[derive(Debug, Clone)]
pub struct Foreign {
    pub runner: Vec<String>,
    pub bin_dir: PathBuf,
}

impl Foreign {
    /// From the environment; an error names what is missing.
    pub fn from_env() -> Result<Foreign> {
        let bin_dir = std::env::var_os("LETSTALK_FOREIGN_BIN_DIR")
            .context("LETSTALK_FOREIGN_BIN_DIR is not set (see .ci/run)")?;
        let runner = std::env::var("LETSTALK_FOREIGN_RUNNER")
            .context("LETSTALK_FOREIGN_RUNNER is not set (see .ci/run)")?;
        let runner: Vec<String> = runner.split_whitespace().map(str::to_owned).collect();
        if runner.is_empty() {
            bail!("LETSTALK_FOREIGN_RUNNER is empty");
        }
        Ok(Foreign { runner, bin_dir: bin_dir.into() })
    }

    /// `name` of the foreign build, run through the emulator.
    pub fn command(&self, name: &str) -> Command {
        let mut cmd = Command::new(&self.runner[0]);
        cmd.args(&self.runner[1..]).arg(self.bin_dir.join(name));
        cmd
    }

    /// The foreign `letstalk` CLI against `socket`, as [`cli_env`].
    pub fn cli(&self, socket: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
        run_cli(self.command("letstalk"), socket, args, env)
    }
}

impl DaemonSpec {
    /// Runs the foreign build of the daemon under its emulator.
    pub fn foreign(mut self, foreign: &Foreign) -> Self {
        self.foreign = Some(foreign.clone());
        self
    }

    /// Runs the daemon inside `ns`.
    pub fn in_netns(mut self, ns: &Netns) -> Self {
        self.netns = Some(ns.name.clone());
        self
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn env(mut self, k: &str, v: impl Into<String>) -> Self {
        self.env.push((k.to_owned(), v.into()));
        self
    }

    /// The command, with no ambient LETSTALK_* or XDG variables leaking in.
    pub fn command(&self) -> Command {
        let mut cmd = match &self.foreign {
            Some(foreign) => foreign.command("letstalkd"),
            None => netns_command(self.netns.as_deref(), "letstalkd"),
        };
        cmd.arg("--data-dir").arg(&self.data_dir).arg("--socket").arg(&self.socket);
        cmd.args(&self.args);
        for (k, _) in std::env::vars() {
            if k.starts_with("LETSTALK_") || k == "NOTIFY_SOCKET" || k.starts_with("LISTEN_") {
                cmd.env_remove(k);
            }
        }
        cmd.env("XDG_CONFIG_HOME", self.home.join("config"));
        cmd.env("HOME", &self.home);
        cmd.env("LETSTALK_LOG", "debug");
        no_dbus(&mut cmd, &self.home);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts the daemon and waits for its `READY=1`.
    pub fn start(&self) -> Result<Daemon> {
        std::fs::create_dir_all(&self.home)?;
        let log = self.home.join(format!("letstalkd-{}.log", Instant::now().elapsed().as_nanos()));
        let log = unique(log);
        let notify_path = self.home.join("notify.sock");
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path)?;
        let mut cmd = self.command();
        cmd.env("NOTIFY_SOCKET", &notify_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        let child = cmd.spawn().context("spawning letstalkd")?;
        let mut daemon = Daemon { spec: self.clone(), child: Some(child), log };
        daemon.wait_ready(&notify)?;
        Ok(daemon)
    }

    /// Runs the daemon expecting it to fail at start; returns its exit status and stderr.
    pub fn start_failing(&self) -> Result<(ExitStatus, String)> {
        let out = self.command().stdin(Stdio::null()).output()?;
        Ok((out.status, String::from_utf8_lossy(&out.stderr).into_owned()))
    }
}

/// Keeps a daemon away from the caller's D-Bus buses, so a test run on a desktop never
/// puts keys into the developer's keyring and never reports the machine's own network
/// manager: no `DBUS_SESSION_BUS_ADDRESS`, an `XDG_RUNTIME_DIR` (where the session bus
/// would otherwise be looked for) under `home`, and a `DBUS_SYSTEM_BUS_ADDRESS` naming a
/// socket that does not exist. [`DaemonSpec::in_session`] and
/// [`DaemonSpec::with_system_bus`] point a daemon at a test's own buses instead.
pub fn no_dbus(cmd: &mut Command, home: &Path) {
    cmd.env_remove("DBUS_SESSION_BUS_ADDRESS");
    cmd.env("XDG_RUNTIME_DIR", home.join("xdg-runtime"));
    cmd.env(
        "DBUS_SYSTEM_BUS_ADDRESS",
        format!("unix:path={}", home.join("no-system-bus").display()),
    );
}

fn unique(mut path: PathBuf) -> PathBuf {
    let mut n = 0;
    let stem = path.clone();
    while path.exists() {
        n += 1;
        path = stem.with_extension(format!("{n}.log"));
    }
    path
}

/// A running daemon process; killed when dropped.
#[derive(Debug)]
pub struct Daemon {
    pub spec: DaemonSpec,
    child: Option<Child>,
    log: PathBuf,
}

impl Daemon {
    fn wait_ready(&mut self, notify: &UnixDatagram) -> Result<()> {
        // An emulated build runs several times slower (its crypto most of all).
        let limit = Duration::from_secs(if self.spec.foreign.is_some() { 120 } else { 30 });
        let deadline = Instant::now() + limit;
        notify.set_read_timeout(Some(Duration::from_millis(100)))?;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = notify.recv(&mut buf)
                && String::from_utf8_lossy(&buf[..n]).lines().any(|l| l == "READY=1")
            {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("letstalkd exited with {status} before it was ready:\n{}", self.logs());
            }
        }
        bail!("letstalkd did not become ready within {limit:?}:\n{}", self.logs())
    }

    pub fn socket(&self) -> &Path {
        &self.spec.socket
    }

    pub fn data_dir(&self) -> &Path {
        &self.spec.data_dir
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// A new client connection.
    pub async fn client(&self) -> Result<Client> {
        Ok(Client::connect(self.socket()).await?)
    }

    /// One call on a fresh connection.
    pub async fn call(&self, method: &str, params: Value) -> Result<Value> {
        Ok(self.client().await?.call_value(method, params).await?)
    }

    /// Everything the daemon has logged so far (this run).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (e.g. "TERM", "HUP", "KILL") to the process.
    pub fn signal(&self, signal: &str) {
        send_signal(signal, self.pid());
    }

    /// SIGTERM, then waits for the exit (at most `limit`); returns the status and how long
    /// it took.
    pub fn stop(&mut self, limit: Duration) -> Result<(ExitStatus, Duration)> {
        let started = Instant::now();
        self.signal("TERM");
        let mut child = self.child.take().context("already stopped")?;
        while started.elapsed() < limit {
            if let Some(status) = child.try_wait()? {
                return Ok((status, started.elapsed()));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        bail!("letstalkd did not stop within {limit:?}")
    }

    /// kill -9: no chance to clean up. Panics if there was no process to kill, so a
    /// crash test cannot pass without its crash.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("kill9: the daemon is not running");
        child.kill().expect("kill9: the daemon could not be killed");
        child.wait().expect("kill9: waiting for the killed daemon");
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `kill -SIGNAL PID`, checked: a signal that was not delivered fails the test.
fn send_signal(signal: &str, pid: u32) {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -{signal} {pid} failed: {status}");
}

/// A running `letstalk-relay`; killed when dropped.
#[derive(Debug)]
pub struct Relay {
    child: Option<Child>,
    pub data_dir: PathBuf,
    /// `127.0.0.1:PORT`, as the relay printed it.
    pub addr: String,
    pub cert: PathBuf,
    log: PathBuf,
    args: Vec<String>,
    netns: Option<String>,
}

impl World {
    /// Starts a relay inside network namespace `ns`, listening on `listen` (an address
    /// of that namespace, port 0 for a free one).
    pub fn relay_in(&self, name: &str, ns: &Netns, listen: &str) -> Result<Relay> {
        let data_dir = self.path().join(name);
        std::fs::create_dir_all(&data_dir)?;
        Relay::spawn(data_dir, listen, Vec::new(), Some(ns.name.clone()))
    }

    /// Starts a relay on 127.0.0.1 with a free port, its data in `<world>/<name>`.
    pub fn relay(&self, name: &str) -> Result<Relay> {
        self.relay_with(name, &[])
    }

    /// Starts a relay with extra flags.
    pub fn relay_with(&self, name: &str, extra: &[&str]) -> Result<Relay> {
        let data_dir = self.path().join(name);
        std::fs::create_dir_all(&data_dir)?;
        let args: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        Relay::spawn(data_dir, "127.0.0.1:0", args, None)
    }
}

impl Relay {
    fn spawn(
        data_dir: PathBuf,
        listen: &str,
        args: Vec<String>,
        netns: Option<String>,
    ) -> Result<Relay> {
        use std::io::BufRead;
        let log = unique(data_dir.join("relay.log"));
        let mut cmd = netns_command(netns.as_deref(), "letstalk-relay");
        cmd.arg("--listen").arg(listen).arg("--data-dir").arg(&data_dir).args(&args);
        for (k, _) in std::env::vars() {
            if k.starts_with("LETSTALK_") || k == "NOTIFY_SOCKET" {
                cmd.env_remove(k);
            }
        }
        cmd.env("LETSTALK_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?);
        let mut child = cmd.spawn().context("spawning letstalk-relay")?;
        let stdout = child.stdout.take().context("relay stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("listening on ") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let Ok(addr) = rx.recv_timeout(Duration::from_secs(30)) else {
            let _ = child.kill();
            bail!(
                "letstalk-relay did not print `listening on`:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        };
        let cert = data_dir.join("relay-cert.pem");
        Ok(Relay { child: Some(child), data_dir, addr, cert, log, args, netns })
    }

    /// `localhost:PORT`: the address daemons use (the certificate names localhost).
    pub fn address(&self) -> String {
        let port = self.addr.rsplit(':').next().unwrap_or("0");
        format!("localhost:{port}")
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The relay's data directory (its database, certificate and logs).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Messages waiting in the embedded relay's mailboxes, read from its database file
    /// as any other process could (the relay keeps running).
    pub fn mailbox_len(&self) -> Result<usize> {
        let db = rusqlite::Connection::open_with_flags(
            self.data_dir.join("relay.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )?;
        let n: i64 = db.query_row("SELECT count(*) FROM mailbox", [], |r| r.get(0))?;
        Ok(usize::try_from(n)?)
    }

    /// kill -9. Panics if there was no relay process to kill.
    pub fn kill9(&mut self) {
        let mut c = self.child.take().expect("kill9: the relay is not running");
        c.kill().expect("kill9: the relay could not be killed");
        c.wait().expect("kill9: waiting for the killed relay");
    }

    /// Stops the relay with SIGTERM (it closes its connections) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            send_signal("TERM", c.id());
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A clean restart: SIGTERM, then start again on the same address and data directory.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.start_again()
    }

    /// A crash and restart: kill -9, then start again.
    pub fn crash_restart(&mut self) -> Result<()> {
        self.kill9();
        self.start_again()
    }

    fn start_again(&mut self) -> Result<()> {
        let mut again = Relay::spawn(
            self.data_dir.clone(),
            &self.addr.clone(),
            self.args.clone(),
            self.netns.clone(),
        )?;
        // A cluster node may serve another node's certificate: keep pointing at it.
        again.cert.clone_from(&self.cert);
        *self = again;
        Ok(())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl World {
    /// `n` nats-server processes with JetStream on loopback (1: a single server; 3: a
    /// JetStream cluster), their stores under `<world>/<name>`. Panics when nats-server is
    /// not installed: the cluster tests fail loudly rather than skip.
    pub fn nats(&self, name: &str, n: usize) -> NatsCluster {
        NatsCluster::start(&self.path().join(name), n)
            .unwrap_or_else(|e| panic!("starting {n} nats-server: {e}"))
    }

    /// A relay node named `name` of the cluster relay on `nats`. With `identity`, it
    /// serves that node's certificate and key (nodes of one relay share one identity, as
    /// behind one name); without, it generates its own.
    pub fn cluster_relay(
        &self,
        name: &str,
        nats: &NatsCluster,
        identity: Option<&Relay>,
    ) -> Result<Relay> {
        let url = nats.url();
        let mut args = vec!["--cluster", url.as_str(), "--node-id", name];
        let (cert, key);
        if let Some(first) = identity {
            cert = first.cert.to_string_lossy().into_owned();
            key = first.data_dir.join("relay-key.pem").to_string_lossy().into_owned();
            args.extend(["--cert", cert.as_str(), "--key", key.as_str()]);
        }
        let mut relay = self.relay_with(name, &args)?;
        if let Some(first) = identity {
            relay.cert.clone_from(&first.cert);
        }
        Ok(relay)
    }
}

impl DaemonSpec {
    /// Points the daemon at `relay` by the address it printed (for a relay listening on
    /// a namespace's address: its certificate names that address).
    pub fn with_relay_at_ip(self, relay: &Relay) -> Self {
        self.arg("--relay")
            .arg(relay.addr.clone())
            .arg("--relay-cert")
            .arg(relay.cert.to_string_lossy().into_owned())
    }

    /// Points the daemon at the nodes of one relay, in order of preference.
    pub fn with_relays(mut self, relays: &[&Relay]) -> Self {
        for r in relays {
            self = self.arg("--relay").arg(r.address());
        }
        match relays.first() {
            Some(r) => self.arg("--relay-cert").arg(r.cert.to_string_lossy().into_owned()),
            None => self,
        }
    }

    /// Points the daemon at `relay`.
    pub fn with_relay(self, relay: &Relay) -> Self {
        self.arg("--relay")
            .arg(relay.address())
            .arg("--relay-cert")
            .arg(relay.cert.to_string_lossy().into_owned())
    }
}

/// Waits until `check` returns `Some`, polling every 20 ms, failing after `limit`.
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every file under `dir` (recursively) whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                hits.push(p);
            }
        }
    }
    hits
}

/// Runs the `letstalk` CLI against `socket`; returns (exit code, stdout, stderr).
pub fn cli(socket: &Path, args: &[&str]) -> (i32, String, String) {
    cli_env(socket, args, &[])
}

/// [`cli`] with extra environment variables.
pub fn cli_env(socket: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    run_cli(Command::new(bin("letstalk")), socket, args, env)
}

fn run_cli(
    mut cli: Command,
    socket: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let out = cli
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("LETSTALK_SOCKET")
        .env_remove("LETSTALK_PASSWORD")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("running letstalk");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Receives the next event notification's params, failing after `limit`.
pub async fn next_event(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<Value>,
    limit: Duration,
) -> Result<Value> {
    match tokio::time::timeout(limit, events.recv()).await {
        Ok(Some(e)) => Ok(e),
        Ok(None) => bail!("event stream closed"),
        Err(_) => bail!("no event within {limit:?}"),
    }
}

/// The error `kind` of a failed call, or the code when it has none.
pub fn error_of(result: Result<Value>) -> (i64, Option<String>, Option<String>) {
    match result {
        Ok(v) => panic!("expected an error, got {v}"),
        Err(e) => match e.downcast::<letstalk_ipc::ClientError>() {
            Ok(letstalk_ipc::ClientError::Rpc(rpc)) => (
                rpc.code,
                rpc.kind().map(|k| k.as_str().to_owned()),
                rpc.field().map(str::to_owned),
            ),
            other => panic!("expected an RPC error, got {other:?}"),
        },
    }
}

/// The password every test account uses.
pub const PASSWORD: &str = "correct horse battery staple";

/// Waits until `d` reports nothing left in its outbox (`queued_out` 0: every message
/// accepted by the relay).
pub async fn wait_drained(d: &Daemon, limit: Duration) {
    eventually(limit, "outbox drained", || async {
        let st = d.call("system.status", serde_json::json!({})).await.ok()?;
        (st["queued_out"] == 0).then_some(())
    })
    .await
    .unwrap();
}

/// Waits until `d` reports its relay link connected.
pub async fn wait_connected(d: &Daemon) {
    eventually(Duration::from_secs(30), "relay connected", || async {
        let st = d.call("system.status", serde_json::json!({})).await.ok()?;
        (st["relay"]["state"] == "connected").then_some(())
    })
    .await
    .unwrap();
}

/// A daemon named `name` on `relay`, registered as user `name` (nickname "NAME nick",
/// email NAME@example.org).
pub async fn registered(world: &World, relay: &Relay, name: &str) -> Daemon {
    registered_with(world.daemon(name), relay).await
}

/// [`registered`] for a daemon started from `spec` (extra flags, environment).
pub async fn registered_with(spec: DaemonSpec, relay: &Relay) -> Daemon {
    let name = spec.name.clone();
    let d = spec.with_relay(relay).start().unwrap();
    wait_connected(&d).await;
    let account = d
        .call(
            "account.register",
            serde_json::json!({"user_id": name, "email": format!("{name}@example.org"),
                "nickname": format!("{name} nick"), "password": PASSWORD}),
        )
        .await
        .unwrap();
    assert_eq!(account["user_id"], name);
    d
}

/// `user`'s presence as `d` shows it in `contacts.list` ("" when not a contact).
pub async fn presence_of(d: &Daemon, user: &str) -> String {
    let list = d.call("contacts.list", serde_json::json!({})).await.unwrap();
    let c = list["contacts"].as_array().unwrap().iter().find(|c| c["user_id"] == user).cloned();
    c.map(|c| c["presence"].as_str().unwrap().to_owned()).unwrap_or_default()
}

/// Waits (30 s at most) until `d` shows `user` as `want`.
pub async fn wait_presence(d: &Daemon, user: &str, want: &str) {
    eventually(Duration::from_secs(30), &format!("{user} {want}"), || async {
        (presence_of(d, user).await == want).then_some(())
    })
    .await
    .unwrap();
}

/// Every text message of a conversation, oldest first (all pages).
pub async fn texts(d: &Daemon, conversation: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut p = serde_json::json!({"conversation": conversation, "limit": 500});
        if let Some(b) = &before {
            p["before"] = serde_json::json!(b);
        }
        let page = d.call("messages.list", p).await.unwrap();
        let msgs = page["messages"].as_array().unwrap().clone();
        let mut chunk: Vec<String> = msgs
            .iter()
            .filter(|m| m["kind"] == "text")
            .map(|m| m["text"].as_str().unwrap().to_owned())
            .collect();
        chunk.extend(out);
        out = chunk;
        if page["has_more"] != true {
            return out;
        }
        before = msgs.first().map(|m| m["message_id"].as_str().unwrap().to_owned());
    }
}

/// Waits until a conversation holds at least `n` text messages; returns them.
pub async fn wait_texts(d: &Daemon, conversation: &str, n: usize, limit: Duration) -> Vec<String> {
    eventually(limit, &format!("{n} messages"), || async {
        let t = texts(d, conversation).await;
        (t.len() >= n).then_some(t)
    })
    .await
    .unwrap()
}

/// `bin(name)`, run inside network namespace `ns` when given (`ip netns exec` execs the
/// program, so the child's pid is the program's).
fn netns_command(ns: Option<&str>, name: &str) -> Command {
    match ns {
        Some(ns) => {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns]).arg(bin(name));
            cmd
        }
        None => Command::new(bin(name)),
    }
}

/// A network namespace the test creates, deleted (with its interfaces) when dropped.
/// Needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN): network tests only ever send traffic
/// inside namespaces they made.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A fresh namespace with `lo` up.
    pub fn new(tag: &str) -> Result<Netns> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("lt-{}-{n}-{tag}", std::process::id());
        run_ip(&["netns", "add", &name])
            .context("creating a network namespace (the network tests need root)")?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// `ip -n NAME ARGS…`, failing with ip's message.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        run_ip(&all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run_ip(&["netns", "del", &self.name]);
    }
}

fn run_ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// A private D-Bus bus: `dbus-daemon` with its own config (no service activation, anyone
/// may own any name, a socket in the world's directory). Stands in for the session bus
/// (the keyring tests) or the system bus (the device tests). Killed when dropped.
#[derive(Debug)]
pub struct Bus {
    dir: PathBuf,
    address: String,
    child: Option<Child>,
}

/// A private D-Bus session bus ([`Bus`]) with `gnome-keyring-daemon` serving the Secret
/// Service on it, its login collection created and unlocked with a password on stdin.
/// HOME and the XDG directories point into the world, so nothing touches the user's
/// keyring. Both processes are killed when this is dropped.
#[derive(Debug)]
pub struct SecretService {
    bus: Bus,
    keyring: Option<Child>,
}

/// The programs a private bus needs, with their Debian packages.
const BUS_TOOLS: &[(&str, &str)] = &[("dbus-daemon", "dbus"), ("dbus-send", "dbus")];

/// The programs the keyring tests need besides the bus, with their Debian packages.
const SECRET_SERVICE_TOOLS: &[(&str, &str)] =
    &[("gnome-keyring-daemon", "gnome-keyring"), ("secret-tool", "libsecret-tools")];

/// Panics, rather than skipping, when one of `tools` is missing: CI installs them
/// (`.ci/run`).
fn require(tools: &[(&str, &str)]) {
    for (program, package) in tools {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .any(|d| d.join(program).exists());
        assert!(
            found,
            "{program} is required for the D-Bus tests (Debian package {package}; .ci/run installs it)"
        );
    }
}

impl World {
    /// Starts a private bus in the world's directory `name`.
    pub fn bus(&self, name: &str) -> Result<Bus> {
        require(BUS_TOOLS);
        let dir = self.path().join(name);
        for sub in ["home", "runtime", "data", "config", "cache"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let socket = dir.join("runtime").join("bus");
        let address = format!("unix:path={}", socket.display());
        let config = dir.join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>{address}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#
            ),
        )?;
        let mut bus = Bus { dir, address, child: None };
        let child = bus
            .command("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .arg("--nofork")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(bus.dir.join("dbus-daemon.log"))?)
            .spawn()
            .context("spawning dbus-daemon")?;
        bus.child = Some(child);
        bus.wait_until("the bus", |b| b.name_has_owner("org.freedesktop.DBus"))?;
        Ok(bus)
    }

    /// Starts a private session bus and an unlocked gnome-keyring on it.
    pub fn secret_service(&self) -> Result<SecretService> {
        require(SECRET_SERVICE_TOOLS);
        let bus = self.bus("session")?;
        let mut keyring = bus
            .command("gnome-keyring-daemon")
            .args(["--foreground", "--unlock", "--components=secrets"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(bus.dir.join("gnome-keyring.log"))?)
            .spawn()
            .context("spawning gnome-keyring-daemon")?;
        {
            use std::io::Write;
            let mut stdin = keyring.stdin.take().context("gnome-keyring stdin")?;
            stdin.write_all(b"letstalk-test-keyring-password")?;
        }
        let session = SecretService { bus, keyring: Some(keyring) };
        session.bus.wait_until("an unlocked default collection", |b| {
            b.dbus_send(&[
                "--dest=org.freedesktop.secrets",
                "/org/freedesktop/secrets",
                "org.freedesktop.Secret.Service.ReadAlias",
                "string:default",
            ])
            .is_some_and(|out| out.contains("/org/freedesktop/secrets/collection/"))
        })?;
        Ok(session)
    }
}

impl Bus {
    /// The bus address, for `DBUS_SESSION_BUS_ADDRESS` or `DBUS_SYSTEM_BUS_ADDRESS`.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// `program` with an empty environment but PATH, HOME and XDG directories in the
    /// bus's directory, and the bus as its session bus.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.join("home"))
            .env("XDG_RUNTIME_DIR", self.dir.join("runtime"))
            .env("XDG_DATA_HOME", self.dir.join("data"))
            .env("XDG_CONFIG_HOME", self.dir.join("config"))
            .env("XDG_CACHE_HOME", self.dir.join("cache"))
            .env("DBUS_SESSION_BUS_ADDRESS", &self.address);
        cmd
    }

    /// Whether someone owns `name` on the bus.
    pub fn name_has_owner(&self, name: &str) -> bool {
        self.dbus_send(&[
            "--dest=org.freedesktop.DBus",
            "/org/freedesktop/DBus",
            "org.freedesktop.DBus.NameHasOwner",
            &format!("string:{name}"),
        ])
        .is_some_and(|out| out.contains("boolean true"))
    }

    /// One method call with `dbus-send`; its printed reply, or `None` on an error.
    pub fn dbus_send(&self, args: &[&str]) -> Option<String> {
        let out = self
            .command("dbus-send")
            .args(["--session", "--print-reply", "--reply-timeout=5000"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Polls `ready` (the bus and the programs on it have no readiness notification) for
    /// up to 20 s; the error carries the logs in the bus's directory.
    pub fn wait_until(&self, what: &str, ready: impl Fn(&Self) -> bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if ready(self) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut logs = String::new();
        for entry in std::fs::read_dir(&self.dir)?.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                logs.push_str(&format!("\n{}: {text}", path.display()));
            }
        }
        bail!("timed out waiting for {what}{logs}")
    }

    /// Stops the bus: every connection to it ends.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.stop();
    }
}

impl SecretService {
    /// The session bus address, for `DBUS_SESSION_BUS_ADDRESS`.
    pub fn address(&self) -> &str {
        self.bus.address()
    }

    /// `program` with an empty environment but PATH, the session's HOME and XDG
    /// directories and its bus address.
    pub fn command(&self, program: &str) -> Command {
        self.bus.command(program)
    }

    /// `secret-tool lookup ATTR VALUE…`: the secret of the matching item, if any.
    pub fn lookup(&self, attributes: &[(&str, &str)]) -> Result<Option<String>> {
        let mut cmd = self.command("secret-tool");
        cmd.arg("lookup");
        for (k, v) in attributes {
            cmd.args([k, v]);
        }
        let out = cmd.stdin(Stdio::null()).output()?;
        Ok(out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    /// `secret-tool search --all ATTR VALUE…`: how many items match.
    pub fn count(&self, attributes: &[(&str, &str)]) -> Result<usize> {
        let mut cmd = self.command("secret-tool");
        cmd.args(["search", "--all"]);
        for (k, v) in attributes {
            cmd.args([k, v]);
        }
        let out = cmd.stdin(Stdio::null()).output()?;
        // It prints each item's attributes on stderr and its label and secret on stdout.
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("label = "))
            .count())
    }

    /// `secret-tool clear ATTR VALUE…`: deletes the matching items.
    pub fn clear(&self, attributes: &[(&str, &str)]) -> Result<()> {
        let mut cmd = self.command("secret-tool");
        cmd.arg("clear");
        for (k, v) in attributes {
            cmd.args([k, v]);
        }
        let status = cmd.stdin(Stdio::null()).status()?;
        anyhow::ensure!(status.success(), "secret-tool clear failed: {status}");
        Ok(())
    }

    /// Locks the login collection (the default one), as a screen lock might.
    pub fn lock(&self) -> Result<()> {
        self.bus
            .dbus_send(&[
                "--dest=org.freedesktop.secrets",
                "/org/freedesktop/secrets",
                "org.freedesktop.Secret.Service.Lock",
                "array:objpath:/org/freedesktop/secrets/collection/login",
            ])
            .context("locking the login collection")?;
        Ok(())
    }

    /// Stops gnome-keyring; the bus stays, with nobody owning org.freedesktop.secrets.
    pub fn stop_keyring(&mut self) -> Result<()> {
        if let Some(mut child) = self.keyring.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.bus.wait_until("the Secret Service to leave the bus", |b| {
            !b.name_has_owner("org.freedesktop.secrets")
        })
    }
}

impl Drop for SecretService {
    fn drop(&mut self) {
        // The keyring first, then (as the field drops) the bus.
        if let Some(mut child) = self.keyring.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl DaemonSpec {
    /// Runs the daemon in `session`: its Secret Service is the daemon's OS keyring.
    pub fn in_session(self, session: &SecretService) -> Self {
        self.env("DBUS_SESSION_BUS_ADDRESS", session.address())
    }

    /// Runs the daemon with `bus` as its system bus.
    pub fn with_system_bus(self, bus: &Bus) -> Self {
        self.env("DBUS_SYSTEM_BUS_ADDRESS", bus.address())
    }
}
