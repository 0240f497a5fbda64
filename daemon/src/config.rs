//! Configuration: flags, `LETSTALK_*` environment variables and the TOML config file,
//! resolved in that order of precedence into one validated [`Config`].
//!
//! Everything is checked before anything is written, so a bad configuration ends the
//! daemon with a one-line error and exit code 2 and leaves the disk untouched.

use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;

/// `--version`: the crate version and the commit it was built from (`build.rs`).
pub const VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (", env!("LETSTALK_GIT_COMMIT"), ")");

/// Command-line flags; each has a `LETSTALK_…` environment variable (clap reads it when
/// the flag is absent, which gives "flag > environment" for free).
#[derive(Debug, Parser)]
#[command(
    name = "letstalkd",
    version = VERSION,
    about = "The Letstalk daemon: end-to-end encrypted messaging on this device, served to UIs over a local JSON-RPC socket."
)]
pub struct Args {
    /// Config file (TOML). Default: $XDG_CONFIG_HOME/letstalk/letstalkd.toml; a missing
    /// default file is fine, a missing named one is an error.
    #[arg(long, env = "LETSTALK_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory (database, keys, attachments). Default: $STATE_DIRECTORY under
    /// systemd, else $XDG_DATA_HOME/letstalk.
    #[arg(long, env = "LETSTALK_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// The IPC socket. Default: a socket passed by systemd, else
    /// $XDG_RUNTIME_DIR/letstalk/letstalkd.sock, else /run/letstalk/letstalkd.sock.
    #[arg(long, env = "LETSTALK_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The relay, HOST:PORT. Repeat it (or separate addresses with commas) to name
    /// several nodes of one relay: the daemon fails over between them. Without one the
    /// daemon runs offline.
    #[arg(long, env = "LETSTALK_RELAY", value_name = "HOST:PORT", value_delimiter = ',')]
    pub relay: Vec<String>,
    /// A PEM file with the relay's certificate or its CA, trusted in addition to the
    /// platform's roots.
    #[arg(long, env = "LETSTALK_RELAY_CERT", value_name = "PEM_FILE")]
    pub relay_cert: Option<PathBuf>,
    /// Log level or filter directive (error, warn, info, debug, trace, or e.g.
    /// "letstalkd=debug,info").
    #[arg(long, env = "LETSTALK_LOG", value_name = "LEVEL")]
    pub log: Option<String>,
    /// Seconds an unanswered call rings before it is missed (5 to 600; default 45).
    #[arg(long, env = "LETSTALK_RING_TIMEOUT_S", value_name = "SECONDS")]
    pub ring_timeout_s: Option<u64>,
    /// Where a new data directory's database key goes: "auto" puts it in the OS keyring
    /// (a Secret Service such as gnome-keyring or KWallet on the session D-Bus) when one
    /// is reachable and unlocked, else in the 0600 file db.key; "off" always uses the
    /// file. An existing data directory keeps its key where it is. Default: auto.
    #[arg(long, env = "LETSTALK_KEYRING", value_name = "auto|off")]
    pub keyring: Option<Keyring>,
}

/// Whether a new database key may go into the OS keyring (`--keyring`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Keyring {
    /// The Secret Service when one is reachable and unlocked, else the key file.
    #[default]
    Auto,
    /// Always the key file; the daemon never talks to D-Bus for a new key.
    Off,
}

/// The config file's keys: the same as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    socket: Option<PathBuf>,
    relay: Option<RelayList>,
    relay_cert: Option<PathBuf>,
    log: Option<String>,
    keyring: Option<Keyring>,
    ring_timeout_s: Option<u64>,
}

/// `relay` in the config file: one address, or a list of a relay's nodes.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RelayList {
    One(String),
    Many(Vec<String>),
}

/// Where the IPC socket comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketSource {
    /// A path to bind (from a flag, the environment, the config file or the defaults).
    Path(PathBuf),
    /// The first socket passed by systemd socket activation.
    Activated,
}

/// The relay to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayAddr {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for RelayAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Seconds an unanswered call rings by default.
pub const DEFAULT_RING_TIMEOUT_S: u64 = 45;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub config_file: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub socket: SocketSource,
    /// The relay's addresses, preferred first; empty: offline. Several name nodes of one
    /// relay (sharing its cluster storage), and the link fails over between them.
    pub relays: Vec<RelayAddr>,
    pub relay_cert: Option<PathBuf>,
    pub log: String,
    pub keyring: Keyring,
    /// How long an unanswered call rings.
    pub ring_timeout: std::time::Duration,
}

/// A configuration problem, reported on one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid relay address {0:?}: expected HOST:PORT")]
    Relay(String),
    #[error("relay certificate {path}: {message}")]
    RelayCert { path: PathBuf, message: String },
    #[error("invalid log level {0:?}")]
    Log(String),
    #[error("ring timeout {0} s: expected 5 to 600 seconds")]
    RingTimeout(u64),
    #[error("no data directory: set --data-dir, $XDG_DATA_HOME or $HOME")]
    NoDataDir,
    #[error("data directory {path}: {message}")]
    DataDir { path: PathBuf, message: String },
}

impl Config {
    /// Resolves flags (already merged with the environment by clap), the config file and
    /// the defaults, then validates the result without writing anything.
    pub fn resolve(args: Args) -> Result<Self, ConfigError> {
        let (config_file, file) = load_file(args.config.as_deref())?;
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .or_else(default_data_dir)
            .ok_or(ConfigError::NoDataDir)?;
        check_data_dir(&data_dir)?;
        let socket = match args.socket.or(file.socket) {
            Some(p) => SocketSource::Path(p),
            None if activated_socket_present() => SocketSource::Activated,
            None => SocketSource::Path(letstalk_ipc::socket::default_socket()),
        };
        let relay_strings = if args.relay.is_empty() {
            match file.relay {
                None => Vec::new(),
                Some(RelayList::One(r)) => vec![r],
                Some(RelayList::Many(rs)) => rs,
            }
        } else {
            args.relay
        };
        let mut relays = Vec::new();
        for r in relay_strings.iter().map(|r| r.trim()).filter(|r| !r.is_empty()) {
            let addr = parse_relay(r)?;
            if !relays.contains(&addr) {
                relays.push(addr);
            }
        }
        let relay_cert = args.relay_cert.or(file.relay_cert);
        if let Some(path) = &relay_cert {
            check_pem(path)?;
        }
        let log = args.log.or(file.log).unwrap_or_else(|| "info".to_owned());
        if tracing_subscriber::EnvFilter::try_new(&log).is_err() {
            return Err(ConfigError::Log(log));
        }
        let ring = args.ring_timeout_s.or(file.ring_timeout_s).unwrap_or(DEFAULT_RING_TIMEOUT_S);
        if !(5..=600).contains(&ring) {
            return Err(ConfigError::RingTimeout(ring));
        }
        let ring_timeout = std::time::Duration::from_secs(ring);
        let keyring = args.keyring.or(file.keyring).unwrap_or_default();
        Ok(Self { config_file, data_dir, socket, relays, relay_cert, log, keyring, ring_timeout })
    }

    /// Re-reads the config file for SIGHUP; only the log filter takes effect at once.
    pub fn reload_log_level(&self) -> Result<Option<String>, ConfigError> {
        let (_, file) = load_file(self.config_file.as_deref())?;
        match file.log {
            Some(log) if tracing_subscriber::EnvFilter::try_new(&log).is_err() => {
                Err(ConfigError::Log(log))
            }
            other => Ok(other),
        }
    }
}

fn load_file(named: Option<&Path>) -> Result<(Option<PathBuf>, FileConfig), ConfigError> {
    let (path, required) = match named {
        Some(p) => (p.to_path_buf(), true),
        None => match default_config_file() {
            Some(p) => (p, false),
            None => return Ok((None, FileConfig::default())),
        },
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
            return Ok((None, FileConfig::default()));
        }
        Err(source) => return Err(ConfigError::Read { path, source }),
    };
    let file = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.clone(),
        message: e.message().replace('\n', " "),
    })?;
    Ok((Some(path), file))
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

fn default_config_file() -> Option<PathBuf> {
    env_path("XDG_CONFIG_HOME")
        .or_else(|| env_path("HOME").map(|h| h.join(".config")))
        .map(|d| d.join("letstalk").join("letstalkd.toml"))
}

fn default_data_dir() -> Option<PathBuf> {
    // systemd's StateDirectory= may list several directories separated by colons.
    if let Some(state) = std::env::var_os("STATE_DIRECTORY").filter(|v| !v.is_empty()) {
        let state = state.to_string_lossy().into_owned();
        return state.split(':').next().map(PathBuf::from);
    }
    env_path("XDG_DATA_HOME")
        .or_else(|| env_path("HOME").map(|h| h.join(".local").join("share")))
        .map(|d| d.join("letstalk"))
}

fn check_data_dir(path: &Path) -> Result<(), ConfigError> {
    let err = |message: String| ConfigError::DataDir { path: path.to_path_buf(), message };
    match std::fs::metadata(path) {
        Ok(m) if !m.is_dir() => Err(err("exists and is not a directory".into())),
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // It will be created; its nearest existing ancestor must be a directory.
            let mut ancestor = path.parent();
            while let Some(a) = ancestor {
                match std::fs::metadata(a) {
                    Ok(m) if m.is_dir() => return Ok(()),
                    Ok(_) => return Err(err(format!("{} is not a directory", a.display()))),
                    Err(_) => ancestor = a.parent(),
                }
            }
            Ok(())
        }
        Err(e) => Err(err(e.to_string())),
    }
}

fn activated_socket_present() -> bool {
    let pid_matches = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    let fds = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse::<u32>().ok()).unwrap_or(0);
    pid_matches && fds > 0
}

/// Parses `HOST:PORT`, with `[v6]:PORT` for IPv6 literals.
pub fn parse_relay(s: &str) -> Result<RelayAddr, ConfigError> {
    let bad = || ConfigError::Relay(s.to_owned());
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or_else(bad)?;
        (h, p)
    } else {
        let (h, p) = s.rsplit_once(':').ok_or_else(bad)?;
        if h.contains(':') {
            return Err(bad());
        }
        (h, p)
    };
    let port: u16 = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 || host.chars().any(|c| c.is_whitespace() || c == '/') {
        return Err(bad());
    }
    Ok(RelayAddr { host: host.to_owned(), port })
}

fn check_pem(path: &Path) -> Result<(), ConfigError> {
    let err = |message: &str| ConfigError::RelayCert {
        path: path.to_path_buf(),
        message: message.into(),
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(&e.to_string()))?;
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(err("no PEM certificate in it"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_addresses() {
        assert_eq!(parse_relay("relay.example:4433").unwrap().to_string(), "relay.example:4433");
        assert_eq!(parse_relay("[::1]:4433").unwrap().host, "::1");
        assert_eq!(parse_relay("[::1]:4433").unwrap().to_string(), "[::1]:4433");
        for bad in ["", "host", "host:", ":1", "host:0", "host:99999", "::1:4433", "a b:1"] {
            assert!(parse_relay(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn several_relays_from_flags_or_the_config_file_in_order_without_repeats() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let data = data.to_str().unwrap();
        let resolve = |args: &[&str]| {
            let mut argv = vec!["letstalkd", "--data-dir", data];
            argv.extend_from_slice(args);
            Config::resolve(Args::try_parse_from(argv).unwrap())
        };
        let shown = |c: Config| c.relays.iter().map(ToString::to_string).collect::<Vec<_>>();
        let c = resolve(&["--relay", "a.example:1", "--relay", "b.example:2,a.example:1"]).unwrap();
        assert_eq!(shown(c), ["a.example:1", "b.example:2"]);
        let file = dir.path().join("d.toml");
        std::fs::write(&file, "relay = [\"n1.example:4433\", \"[::1]:4433\"]\n").unwrap();
        let c = resolve(&["--config", file.to_str().unwrap()]).unwrap();
        assert_eq!(shown(c), ["n1.example:4433", "[::1]:4433"]);
        // The flag wins over the file; one bad address refuses the whole configuration.
        let c = resolve(&["--config", file.to_str().unwrap(), "--relay", "x.example:9"]).unwrap();
        assert_eq!(shown(c), ["x.example:9"]);
        assert!(matches!(
            resolve(&["--relay", "good.example:1", "--relay", "bad"]),
            Err(ConfigError::Relay(r)) if r == "bad"
        ));
        std::fs::write(&file, "relay = \"one.example:7\"\n").unwrap();
        let c = resolve(&["--config", file.to_str().unwrap()]).unwrap();
        assert_eq!(shown(c), ["one.example:7"]);
    }
}
