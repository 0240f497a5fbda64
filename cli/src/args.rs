//! The command line of `letstalk`, as clap types: parsed by the binary, and read by the
//! packaging tool (`letstalk-dist`) to generate the man page and shell completions, so
//! neither is ever written by hand.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// `--version`: the crate version and the commit it was built from.
pub const VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION"), " (", env!("LETSTALK_GIT_COMMIT"), ")");

#[derive(Debug, Parser)]
#[command(
    name = "letstalk",
    version = VERSION,
    about = "Talk to letstalkd, the Letstalk daemon, over its local socket."
)]
pub struct Cli {
    /// The daemon's socket (default: $LETSTALK_SOCKET, then
    /// $XDG_RUNTIME_DIR/letstalk/letstalkd.sock, then /run/letstalk/letstalkd.sock).
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Prints the shell completion script: `letstalk completions bash > letstalk.bash`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// One raw JSON-RPC call: prints the result as JSON, or the error on stderr (exit 1).
    Rpc {
        /// The method, e.g. system.status.
        method: String,
        /// The params as a JSON object (default {}).
        params: Option<String>,
    },
    /// Prints each event as one JSON line until interrupted.
    Listen {
        /// Replay the events after this sequence number first.
        #[arg(long)]
        since: Option<u64>,
        /// Only these event kinds (comma-separated), e.g. message.received,message.state.
        #[arg(long, value_delimiter = ',')]
        kinds: Option<Vec<String>>,
    },
    /// The daemon's state: account, relay link, network, queue.
    Status {
        /// Print the raw JSON result.
        #[arg(long)]
        json: bool,
    },
    /// Shows the settings, or changes them: `letstalk settings read_receipts=false`.
    Settings {
        /// KEY=VALUE pairs to set; nested keys with a dot (auto_download.cellular=true).
        changes: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// What the daemon knows about this device.
    Device {
        #[arg(long)]
        json: bool,
    },
    /// Creates an account on the relay and logs this device in. The password is read
    /// from $LETSTALK_PASSWORD or the first line of standard input.
    Register {
        user_id: String,
        #[arg(long)]
        email: String,
        #[arg(long)]
        nickname: String,
        /// A PNG, JPEG or WebP image of at most 1 MiB.
        #[arg(long)]
        avatar: Option<PathBuf>,
        /// This device's name in `letstalk devices` (default: the host name).
        #[arg(long)]
        device_name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Logs this device in (the account moves here). Password as for `register`.
    Login {
        user_id: String,
        /// This device's name in `letstalk devices` (default: a name it already has, else
        /// the host name).
        #[arg(long)]
        device_name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Logs this device out (history stays).
    Logout,
    /// Without CODE: prints a one-time code (and, on a terminal, a QR code) that links
    /// another device to this account for 10 minutes. With CODE, on a device without an
    /// account: joins the account that made it.
    Link {
        code: Option<String>,
        /// This device's name in `letstalk devices` (default: the host name).
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The account's devices; `--remove ID` removes one (it is logged out);
    /// `devices rename ID NAME` renames one.
    #[command(args_conflicts_with_subcommands = true)]
    Devices {
        #[command(subcommand)]
        action: Option<DevicesCommand>,
        #[arg(long, value_name = "ID")]
        remove: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Adds a contact.
    Add {
        user_id: String,
        #[arg(long)]
        alias: Option<String>,
    },
    /// Blocks a user: their messages and calls never reach you, and they see no presence.
    Block { user_id: String },
    /// Unblocks a user.
    Unblock { user_id: String },
    /// Accepts a contact's new identity key: as verified when SAFETY_NUMBER (the current
    /// one; its groups of five may be separate arguments) is given, otherwise as
    /// unverified.
    Trust { user_id: String, safety_number: Vec<String> },
    /// Groups: create, list, info, add, remove, rename, leave.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Deletes every unsent and every unread message, for good (needs --yes).
    ClearHistory {
        /// Confirm: this cannot be undone.
        #[arg(long)]
        yes: bool,
    },
    /// Deletes the account (also on the relay), contacts, groups, messages, keys and
    /// settings; the daemon is then as freshly installed (needs --yes).
    RestoreDefaults {
        /// Confirm: this cannot be undone.
        #[arg(long)]
        yes: bool,
    },
    /// Lists contacts with their presence.
    Contacts {
        #[arg(long)]
        json: bool,
    },
    /// Sends a text message to a user.
    Send {
        /// The user ID (or a conversation such as user:bob).
        to: String,
        text: String,
        #[arg(long)]
        json: bool,
    },
    /// Sends a file (at most 2 GiB) to a user; shows the upload's progress on a terminal.
    SendFile {
        /// The user ID (or a conversation such as user:bob).
        to: String,
        path: PathBuf,
        /// Text shown with the file.
        #[arg(long)]
        caption: Option<String>,
        /// Return once the file is encrypted and queued, without waiting for the upload.
        #[arg(long)]
        no_wait: bool,
        #[arg(long)]
        json: bool,
    },
    /// Downloads a received file (resuming) and writes it out; shows progress on a
    /// terminal.
    Download {
        message_id: String,
        /// Where to write it (default: the daemon's directory of opened files).
        #[arg(long)]
        dest: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Cancels a file transfer (on both sides).
    CancelFile { message_id: String },
    /// Lists conversations, most recent first, with unread counts.
    Chats {
        #[arg(long)]
        json: bool,
    },
    /// Shows a conversation's messages, oldest first.
    History {
        /// The user ID (or a conversation such as user:bob).
        with: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Also mark them read.
        #[arg(long)]
        read: bool,
        #[arg(long)]
        json: bool,
    },
}

/// `letstalk devices …`: what can be done to one of the account's devices.
#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// Renames a device of the account, this one or another (1 to 64 characters):
    /// every device lists the new name.
    Rename {
        device_id: u32,
        name: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Creates a group with these members; you are its admin.
    Create {
        name: String,
        #[arg(required = true)]
        members: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Lists your groups.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Shows one group.
    Info {
        group_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Adds members (admins only).
    Add {
        group_id: String,
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Removes members (admins only); they cannot read what follows.
    Remove {
        group_id: String,
        #[arg(required = true)]
        members: Vec<String>,
    },
    /// Renames a group (admins only).
    Rename { group_id: String, name: String },
    /// Leaves a group; its history stays on this device.
    Leave { group_id: String },
}
