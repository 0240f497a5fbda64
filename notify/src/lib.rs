//! `letstalk-notify` as a library: its command line and settings ([`args`], [`Settings`]),
//! what a notification says ([`message_text`], [`call_text`]) and the grouping of
//! notifications per conversation ([`Groups`]). The binary adds the daemon's socket and
//! the session bus; everything here is pure and tested without either.

pub mod args;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// What went wrong reading the settings.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("bad config file {path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
}

/// The config file's keys (all optional).
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// The daemon's socket.
    pub socket: Option<PathBuf>,
    /// Show who wrote, never what.
    pub no_text: Option<bool>,
}

/// The settings in force: flag > environment (clap reads both) > config file > default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub socket: PathBuf,
    pub no_text: bool,
}

impl Settings {
    /// Resolves the settings from the parsed command line and the config file (`--config`,
    /// else `$XDG_CONFIG_HOME/letstalk/letstalk-notify.toml`; a missing default file is
    /// fine, a missing named one is an error).
    pub fn resolve(cli: &args::Cli) -> Result<Self, SettingsError> {
        let file = match &cli.config {
            Some(path) => Some(read_config(path)?),
            None => match default_config() {
                Some(path) if path.exists() => Some(read_config(&path)?),
                _ => None,
            },
        }
        .unwrap_or_default();
        let env = std::env::var_os(letstalk_ipc::socket::SOCKET_ENV).filter(|s| !s.is_empty());
        let socket = cli
            .socket
            .clone()
            .or_else(|| env.map(PathBuf::from))
            .or(file.socket)
            .unwrap_or_else(letstalk_ipc::socket::default_socket);
        Ok(Self { socket, no_text: cli.no_text || file.no_text.unwrap_or(false) })
    }
}

/// `$XDG_CONFIG_HOME/letstalk/letstalk-notify.toml`, else under `~/.config`.
pub fn default_config() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("letstalk").join("letstalk-notify.toml"))
}

fn read_config(path: &Path) -> Result<ConfigFile, SettingsError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| SettingsError::Read { path: path.to_owned(), source })?;
    toml::from_str(&text)
        .map_err(|source| SettingsError::Parse { path: path.to_owned(), source: Box::new(source) })
}

/// The summary and body of one notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub summary: String,
    pub body: String,
}

/// What a message notification says. `sender` is the sender's display name, `group` the
/// group's title for a group conversation, `content` the message's text (or a file's
/// name), `count` how many messages this conversation's notification now stands for.
/// With `no_text` the body never holds content, only how many messages there are.
pub fn message_text(
    sender: &str,
    group: Option<&str>,
    content: Option<&str>,
    count: u32,
    no_text: bool,
) -> Shown {
    let summary = match group {
        Some(g) => format!("{sender} in {g}"),
        None => sender.to_owned(),
    };
    let body = match (no_text, content) {
        (false, Some(c)) if !c.is_empty() => c.to_owned(),
        _ if count > 1 => format!("{count} new messages"),
        _ => "New message".to_owned(),
    };
    Shown { summary, body }
}

/// What a call notification says: ringing, or missed.
pub fn call_text(caller: &str, video: bool, missed: bool) -> Shown {
    let kind = if video { "video call" } else { "call" };
    match missed {
        false => Shown { summary: format!("Incoming {kind}"), body: format!("from {caller}") },
        true => Shown { summary: format!("Missed {kind}"), body: format!("from {caller}") },
    }
}

/// One notification per key (a conversation, or a call): the server's ID of the shown
/// one, to replace it, and how many messages it stands for.
#[derive(Debug, Default)]
pub struct Groups {
    shown: HashMap<String, (u32, u32)>,
}

impl Groups {
    /// The ID to replace (0: a new notification) and the count including this one.
    pub fn next(&self, key: &str) -> (u32, u32) {
        match self.shown.get(key) {
            Some((id, count)) => (*id, count + 1),
            None => (0, 1),
        }
    }

    /// Records what the server answered for `key`.
    pub fn shown(&mut self, key: &str, id: u32, count: u32) {
        self.shown.insert(key.to_owned(), (id, count));
    }

    /// The shown notification's ID for `key`, if any.
    pub fn id(&self, key: &str) -> Option<u32> {
        self.shown.get(key).map(|(id, _)| *id)
    }

    /// Forgets `key` (it was read, or the call was answered); returns its ID.
    pub fn forget(&mut self, key: &str) -> Option<u32> {
        self.shown.remove(key).map(|(id, _)| id)
    }

    /// The server closed notification `id` (dismissed or expired): the next message
    /// starts a fresh one.
    pub fn closed(&mut self, id: u32) {
        self.shown.retain(|_, (shown, _)| *shown != id);
    }
}

/// The whole command line, as clap sees it (for the man page and completions).
pub fn command() -> clap::Command {
    <args::Cli as clap::CommandFactory>::command()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use clap::Parser;

    use super::*;

    #[test]
    fn notify_groups_replace_per_conversation_until_closed() {
        let mut g = Groups::default();
        assert_eq!(g.next("user:bob"), (0, 1));
        g.shown("user:bob", 7, 1);
        assert_eq!(g.next("user:bob"), (7, 2));
        g.shown("user:bob", 7, 2);
        assert_eq!(g.next("user:carol"), (0, 1), "another conversation is its own");
        g.shown("user:carol", 8, 1);
        g.closed(7);
        assert_eq!(g.next("user:bob"), (0, 1));
        assert_eq!(g.id("user:carol"), Some(8));
        assert_eq!(g.forget("user:carol"), Some(8));
        assert_eq!(g.id("user:carol"), None);
    }

    #[test]
    fn notify_texts_name_the_sender_and_hide_content_when_asked() {
        let shown = message_text("Bob", None, Some("see you at 5"), 1, false);
        assert_eq!(shown, Shown { summary: "Bob".into(), body: "see you at 5".into() });
        let hidden = message_text("Bob", Some("Climbing"), Some("see you at 5"), 3, true);
        assert_eq!(
            hidden,
            Shown { summary: "Bob in Climbing".into(), body: "3 new messages".into() }
        );
        assert_eq!(message_text("Bob", None, None, 1, false).body, "New message");
        assert_eq!(call_text("Bob", true, false).summary, "Incoming video call");
        assert_eq!(
            call_text("Bob", false, true),
            Shown { summary: "Missed call".into(), body: "from Bob".into() }
        );
    }

    #[test]
    fn notify_settings_flag_beats_config_file() {
        let dir = std::env::temp_dir().join(format!("letstalk-notify-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("n.toml");
        std::fs::write(&file, "no_text = true\nsocket = \"/tmp/from-config.sock\"\n").unwrap();
        let cli = args::Cli::try_parse_from([
            "letstalk-notify",
            "--config",
            file.to_str().unwrap(),
            "--socket",
            "/tmp/flag.sock",
        ])
        .unwrap();
        let s = Settings::resolve(&cli).unwrap();
        assert_eq!((s.socket.as_path(), s.no_text), (Path::new("/tmp/flag.sock"), true));
        std::fs::write(&file, "no_text = \"yes\"\n").unwrap();
        assert!(matches!(Settings::resolve(&cli), Err(SettingsError::Parse { .. })));
        let missing =
            args::Cli::try_parse_from(["letstalk-notify", "--config", "/nonexistent/n.toml"])
                .unwrap();
        assert!(matches!(Settings::resolve(&missing), Err(SettingsError::Read { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
