//! An in-process relay on loopback for tests: start it, get its address and certificate,
//! stop it (or drop it). And `nats-server` processes (one, or a JetStream cluster) for
//! the tests and benchmarks of the cluster back end.

use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::{Config, Relay, RelayError, SqliteStorage};

/// A running in-process relay.
#[derive(Debug)]
pub struct TestRelay {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its certificate (PEM file) for clients to trust.
    pub cert_path: PathBuf,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its storage, for inspecting tables.
    pub storage: SqliteStorage,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), RelayError>>>,
}

/// Starts a relay with `config` (see [`Config::for_tests`]).
pub async fn start(config: Config) -> Result<TestRelay, RelayError> {
    let data_dir = config.data_dir.clone();
    let relay = Relay::bind(config).await?;
    let (stop, stopped) = oneshot::channel::<()>();
    let addr = relay.local_addr();
    let cert_path = relay.cert_path().to_path_buf();
    let storage = relay
        .storage()
        .cloned()
        .ok_or_else(|| RelayError::Config("testing::start runs embedded relays only".into()))?;
    let task = tokio::spawn(relay.serve(async move {
        let _ = stopped.await;
    }));
    Ok(TestRelay { addr, cert_path, data_dir, storage, stop: Some(stop), task: Some(task) })
}

impl TestRelay {
    /// Stops the relay and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// `nats-server` for tests and benchmarks: found on `PATH` or in `/usr/sbin` (where
/// Debian's package puts it). An error that says how to install it otherwise: tests
/// of the cluster fail loudly rather than skip.
pub fn nats_server_bin() -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "nats-server is not installed: `apt-get install nats-server` (.ci/run does it)".into()
        })
}

/// A free TCP port on 127.0.0.1 (bound and released: a tiny race, fine for tests).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One `nats-server` process of a [`NatsCluster`].
#[derive(Debug)]
pub struct NatsServer {
    child: Option<std::process::Child>,
    /// Client port on 127.0.0.1.
    pub port: u16,
    config: PathBuf,
    log: PathBuf,
}

impl NatsServer {
    fn spawn(config: &std::path::Path, log: &std::path::Path, port: u16) -> std::io::Result<Self> {
        let bin = nats_server_bin().map_err(std::io::Error::other)?;
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let child = std::process::Command::new(bin)
            .arg("-c")
            .arg(config)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()?;
        let mut server =
            Self { child: Some(child), port, config: config.to_owned(), log: log.to_owned() };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(Ok(Some(status))) = server.child.as_mut().map(std::process::Child::try_wait)
            {
                return Err(std::io::Error::other(format!(
                    "nats-server exited with {status}:\n{}",
                    server.logs()
                )));
            }
            if std::time::Instant::now() > deadline {
                return Err(std::io::Error::other(format!(
                    "nats-server did not accept connections:\n{}",
                    server.logs()
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Ok(server)
    }

    /// Its log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// kill -9: the server loses whatever it had not written.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts it again with the same ports and store (after [`NatsServer::kill9`]).
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill9();
        *self = Self::spawn(&self.config.clone(), &self.log.clone(), self.port)?;
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `nats-server` processes with JetStream on loopback, their stores in `dir`: one server,
/// or several joined by cluster routes (three make a JetStream cluster that survives the
/// loss of one).
#[derive(Debug)]
pub struct NatsCluster {
    /// The servers, in start order.
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `n` servers (1 = no clustering) and waits until each accepts connections.
    /// JetStream may still be electing its leaders: clients retry (the relay does).
    pub fn start(dir: &std::path::Path, n: usize) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let ports = (0..n)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<std::io::Result<Vec<_>>>()?;
        let mut configs = Vec::new();
        for (i, (port, cport)) in ports.iter().enumerate() {
            let store = dir.join(format!("n{i}"));
            let mut text = format!(
                "server_name: n{i}\nlisten: 127.0.0.1:{port}\n\
                 jetstream {{\n  store_dir: {store:?}\n  max_memory_store: 256MB\n  max_file_store: 4GB\n}}\n"
            );
            if n > 1 {
                let routes: Vec<String> = ports
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, (_, c))| format!("nats-route://127.0.0.1:{c}"))
                    .collect();
                text.push_str(&format!(
                    "cluster {{\n  name: letstalk-test\n  listen: 127.0.0.1:{cport}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                ));
            }
            let config = dir.join(format!("n{i}.conf"));
            std::fs::write(&config, text)?;
            configs.push((config, dir.join(format!("n{i}.log")), *port));
        }
        let mut servers = Vec::new();
        for (config, log, port) in configs {
            servers.push(NatsServer::spawn(&config, &log, port)?);
        }
        Ok(Self { servers })
    }

    /// The `--cluster` URL: every server, comma-separated.
    pub fn url(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("nats://127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(",")
    }
}
