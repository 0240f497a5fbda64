//! Configuration: flags (clap, each with its `LETSTALK_…` variable) over a TOML file over
//! defaults, resolved once into a validated [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// `--version`: the crate version and the commit it was built from (`build.rs`).
pub(crate) const VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (", env!("LETSTALK_GIT_COMMIT"), ")");

/// The command line, exactly as in `programs.md`. clap reads each flag's environment
/// variable when the flag is absent, which gives flag > environment; the file comes next.
#[derive(Debug, Clone, Default, clap::Parser)]
#[command(name = "letstalk-relay", version = VERSION, about = "The Letstalk store-and-forward relay")]
pub struct Args {
    /// TOML configuration file.
    #[arg(long, env = "LETSTALK_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// UDP address for QUIC (default [::]:4433).
    #[arg(long, env = "LETSTALK_LISTEN", value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// Where everything the relay keeps lives.
    #[arg(long, env = "LETSTALK_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// TLS certificate chain (PEM); requires --key.
    #[arg(long, env = "LETSTALK_CERT", value_name = "PEM_FILE")]
    pub cert: Option<PathBuf>,
    /// TLS private key (PEM); requires --cert.
    #[arg(long, env = "LETSTALK_KEY", value_name = "PEM_FILE")]
    pub key: Option<PathBuf>,
    /// Run as one node of a multi-node relay whose state lives in the NATS JetStream
    /// cluster at URL (nats://HOST:PORT, several comma-separated).
    #[arg(long, env = "LETSTALK_CLUSTER", value_name = "URL")]
    pub cluster: Option<String>,
    /// This node's name.
    #[arg(long, env = "LETSTALK_NODE_ID", value_name = "NAME")]
    pub node_id: Option<String>,
    /// Log level or filter directive.
    #[arg(long, env = "LETSTALK_LOG", value_name = "LEVEL")]
    pub log: Option<String>,
}

/// The configuration file: the same keys as the flags, plus the limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    cluster: Option<String>,
    node_id: Option<String>,
    log: Option<String>,
    message_ttl_days: Option<u64>,
    report_ttl_days: Option<u64>,
    blob_ttl_hours: Option<u64>,
    blob_quota_bytes: Option<u64>,
    mailbox_max_messages: Option<u64>,
    mailbox_max_bytes: Option<u64>,
    register_per_ip: Option<RateLimit>,
    login_per_ip: Option<RateLimit>,
    login_per_account: Option<RateLimit>,
    directory_per_account: Option<RateLimit>,
    reports_per_account_rate: Option<RateLimit>,
    link_rendezvous: Option<RateLimit>,
    reports_per_account: Option<u64>,
    connections_per_ip: Option<usize>,
    test_commit_delay_ms: Option<u64>,
}

/// A token bucket: `burst` attempts at once, refilled at `per_minute`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Bucket size.
    pub burst: u32,
    /// Refill rate.
    pub per_minute: u32,
}

/// Where the TLS identity comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// Generate (or reuse) `relay-cert.pem` / `relay-key.pem` in the data directory.
    SelfSigned,
    /// Operator-provided files.
    Files { cert: PathBuf, key: PathBuf },
}

/// Limits that bound what one client or account can cost.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Undelivered messages expire after this.
    pub message_ttl: Duration,
    /// Diagnostics reports and feedback are deleted after this.
    pub report_ttl: Duration,
    /// Most queued messages per device.
    pub mailbox_max_messages: u64,
    /// Most queued bytes per device.
    pub mailbox_max_bytes: u64,
    /// Registrations per source IP.
    pub register_per_ip: RateLimit,
    /// Logins (and password changes) per source IP.
    pub login_per_ip: RateLimit,
    /// Logins (and password changes) per account.
    pub login_per_account: RateLimit,
    /// Streams a connection may open at once before being cut off...
    pub stream_burst: u32,
    /// ...and per second after that.
    pub streams_per_sec: u32,
    /// Concurrent bidirectional streams per connection.
    pub max_concurrent_streams: u32,
    /// A connection silent for this long is dropped.
    pub idle_timeout: Duration,
    /// A request must arrive in full within this time after its stream opens.
    pub request_timeout: Duration,
    /// File blobs are deleted this long after their upload started, fetched or not.
    pub blob_ttl: Duration,
    /// Most blob bytes one account may hold on the relay at once.
    pub blob_quota: u64,
    /// `LookupUser`, `FetchAvatar` and `FetchBundle` per requesting account, so the
    /// directory cannot be enumerated quickly.
    pub directory_per_account: RateLimit,
    /// Link rendezvous reads and writes (`LinkGet`, `LinkPut`) per source address when
    /// unauthenticated, and per account when authenticated. A slot's name is derived
    /// from a short link code: without a limit anyone could try codes until one names
    /// an open slot, read its first message and answer it before the real device does.
    /// One a second on average lets a device poll a rendezvous for its ten minutes.
    pub link_rendezvous: RateLimit,
    /// Reports and feedback notes per account...
    pub reports_per_account_rate: RateLimit,
    /// ...and how many of them the relay holds per account at once.
    pub reports_per_account: u64,
    /// Most recipients of one `SendGroup` (a group's size).
    pub max_group_recipients: usize,
    /// Most bytes one `SendGroup` may store (body × recipients).
    pub max_fanout_bytes: u64,
    /// Concurrent connections from one IPv4 address or IPv6 /64.
    pub connections_per_ip: usize,
    /// How long the embedded back end waits between writing a batch of messages and
    /// committing it: zero, except in tests that simulate a slow disk to widen the
    /// window of the online fast path (the file's `test_commit_delay_ms`, honoured only
    /// in debug builds).
    pub commit_delay: Duration,
}

impl Limits {
    /// The per-device mailbox quota every enqueue is checked against.
    pub fn mailbox_quota(&self) -> crate::storage::Quota {
        crate::storage::Quota {
            max_messages: self.mailbox_max_messages,
            max_bytes: self.mailbox_max_bytes,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            message_ttl: Duration::from_secs(30 * 24 * 3600),
            report_ttl: Duration::from_secs(90 * 24 * 3600),
            mailbox_max_messages: 10_000,
            mailbox_max_bytes: 256 * 1024 * 1024,
            register_per_ip: RateLimit { burst: 10, per_minute: 10 },
            login_per_ip: RateLimit { burst: 20, per_minute: 20 },
            login_per_account: RateLimit { burst: 10, per_minute: 5 },
            stream_burst: 2000,
            streams_per_sec: 500,
            max_concurrent_streams: 32,
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(10),
            blob_ttl: Duration::from_secs(48 * 3600),
            blob_quota: 8 * 1024 * 1024 * 1024,
            // A new conversation with every member of a full group costs one bundle each.
            directory_per_account: RateLimit { burst: 300, per_minute: 120 },
            reports_per_account_rate: RateLimit { burst: 10, per_minute: 2 },
            link_rendezvous: RateLimit { burst: 60, per_minute: 60 },
            reports_per_account: 100,
            max_group_recipients: 256,
            // A full group (256) of the largest text (64 KiB) with room for its encryption.
            max_fanout_bytes: 32 * 1024 * 1024,
            connections_per_ip: 64,
            commit_delay: Duration::ZERO,
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// UDP address to bind.
    pub listen: SocketAddr,
    /// Data directory (created 0700 if missing).
    pub data_dir: PathBuf,
    /// TLS identity.
    pub tls: TlsSource,
    /// This node's name (logs, the Hello answer).
    pub node_id: String,
    /// The NATS servers of the cluster this node belongs to; `None`: embedded storage.
    pub cluster: Option<String>,
    /// Log filter.
    pub log: String,
    /// Resource limits.
    pub limits: Limits,
}

/// A configuration problem: reported on one line, exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Anything invalid.
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// A configuration for tests: loopback, port 0, `data_dir`, default limits.
    pub fn for_tests(data_dir: PathBuf) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            tls: TlsSource::SelfSigned,
            node_id: "test".into(),
            cluster: None,
            log: "warn".into(),
            limits: Limits::default(),
        }
    }

    /// Resolves flags (with environment) and the config file into a `Config`.
    pub fn resolve(args: Args) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError::Invalid(format!("config file {}: {e}", path.display()))
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|e| {
                    ConfigError::Invalid(format!(
                        "config file {}: {}",
                        path.display(),
                        one_line(&e.to_string())
                    ))
                })?
            }
            None => FileConfig::default(),
        };
        let cluster = args.cluster.or(file.cluster).map(|c| check_cluster(&c)).transpose()?;
        let listen_s = args.listen.or(file.listen).unwrap_or_else(|| "[::]:4433".into());
        let listen: SocketAddr = listen_s.parse().map_err(|_| {
            ConfigError::Invalid(format!("--listen {listen_s:?}: expected ADDR:PORT"))
        })?;
        let data_dir = args.data_dir.or(file.data_dir).unwrap_or_else(|| {
            std::env::var_os("STATE_DIRECTORY")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/lib/letstalk-relay"))
        });
        let tls = match (args.cert.or(file.cert), args.key.or(file.key)) {
            (None, None) => TlsSource::SelfSigned,
            (Some(cert), Some(key)) => TlsSource::Files { cert, key },
            _ => {
                return Err(ConfigError::Invalid("--cert and --key must be given together".into()));
            }
        };
        let node_id = args.node_id.or(file.node_id).unwrap_or_else(host_name);
        let log = args.log.or(file.log).unwrap_or_else(|| "info".into());
        let mut limits = Limits::default();
        if let Some(d) = file.message_ttl_days {
            if d == 0 {
                return Err(ConfigError::Invalid("message_ttl_days must be at least 1".into()));
            }
            limits.message_ttl = Duration::from_secs(d.saturating_mul(24 * 3600));
        }
        if let Some(d) = file.report_ttl_days {
            if d == 0 {
                return Err(ConfigError::Invalid("report_ttl_days must be at least 1".into()));
            }
            limits.report_ttl = Duration::from_secs(d.saturating_mul(24 * 3600));
        }
        if let Some(h) = file.blob_ttl_hours {
            if h == 0 {
                return Err(ConfigError::Invalid("blob_ttl_hours must be at least 1".into()));
            }
            limits.blob_ttl = Duration::from_secs(h.saturating_mul(3600));
        }
        if let Some(n) = file.blob_quota_bytes {
            limits.blob_quota = n;
        }
        if let Some(n) = file.mailbox_max_messages {
            limits.mailbox_max_messages = n;
        }
        if let Some(n) = file.mailbox_max_bytes {
            limits.mailbox_max_bytes = n;
        }
        if let Some(n) = file.reports_per_account {
            limits.reports_per_account = n;
        }
        if let Some(n) = file.connections_per_ip {
            if n == 0 {
                return Err(ConfigError::Invalid("connections_per_ip must be at least 1".into()));
            }
            limits.connections_per_ip = n;
        }
        // A test's slow disk: honoured only in debug builds (the tests'), so that no
        // release relay can be slowed by a stray line in its config file.
        if let Some(ms) = file.test_commit_delay_ms {
            if cfg!(debug_assertions) {
                limits.commit_delay = Duration::from_millis(ms);
            } else {
                tracing::warn!("test_commit_delay_ms is for tests and ignored in release builds");
            }
        }
        for (slot, v) in [
            (&mut limits.register_per_ip, file.register_per_ip),
            (&mut limits.login_per_ip, file.login_per_ip),
            (&mut limits.login_per_account, file.login_per_account),
            (&mut limits.directory_per_account, file.directory_per_account),
            (&mut limits.reports_per_account_rate, file.reports_per_account_rate),
            (&mut limits.link_rendezvous, file.link_rendezvous),
        ] {
            if let Some(v) = v {
                if v.burst == 0 {
                    return Err(ConfigError::Invalid(
                        "a rate limit's burst must be at least 1".into(),
                    ));
                }
                *slot = v;
            }
        }
        if node_id.is_empty() || node_id.len() > 128 || node_id.chars().any(char::is_control) {
            return Err(ConfigError::Invalid(
                "--node-id must be 1 to 128 printable characters".into(),
            ));
        }
        Ok(Self { listen, data_dir, tls, node_id, cluster, log, limits })
    }
}

/// Checks `--cluster`: one or more `nats://HOST:PORT` (or `tls://`), comma-separated.
fn check_cluster(raw: &str) -> Result<String, ConfigError> {
    let bad = || {
        ConfigError::Invalid(format!(
            "--cluster {:?}: expected nats://HOST:PORT (several separated by commas)",
            crate::storage::nats::redact_url(raw)
        ))
    };
    let urls: Vec<&str> = raw.split(',').map(str::trim).collect();
    for url in &urls {
        let rest =
            url.strip_prefix("nats://").or_else(|| url.strip_prefix("tls://")).ok_or_else(bad)?;
        let host_port = rest.rsplit('@').next().unwrap_or_default();
        let (host, port) = host_port.rsplit_once(':').ok_or_else(bad)?;
        if host.is_empty() || host.contains('/') || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(bad());
        }
    }
    Ok(urls.join(","))
}

/// The machine's host name, or `localhost` when it cannot be read: the default node id
/// and a name of the generated certificate.
pub(crate) fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
