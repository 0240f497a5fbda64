//! The app state: a pure model that daemon events, daemon replies and keys update. It
//! does no I/O: what it needs from the daemon it returns as [`Request`]s, which the
//! binary carries out and answers with a [`Reply`].
//!
//! Nothing is shown twice: events at or below the last `seq` seen are ignored (a replay
//! with `since` after a reconnect may overlap what was already applied), and messages
//! are kept by `message_id`, so a message that comes both in a list and in an event is
//! one line.

use std::collections::HashMap;

use letstalk_ipc::types::{
    Contact, ConversationSummary, Direction, Event, EventBody, FileTransfer, Message, MessageState,
    Presence,
};

/// How many messages of a conversation are loaded when it is opened.
pub const HISTORY: u32 = 200;

/// A key, as the model sees it (the binary maps the terminal's keys to these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Enter,
    Backspace,
    Up,
    Down,
    Tab,
    BackTab,
    PageUp,
    PageDown,
    Esc,
    /// Ctrl-C or Ctrl-D.
    Quit,
}

/// Something the model needs the daemon to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `conversations.list`.
    Conversations,
    /// `contacts.list`.
    Contacts,
    /// `messages.list` of one conversation (the newest [`HISTORY`]).
    Messages { conversation: String },
    /// `messages.mark_read`, then `conversations.list` for the new unread counts.
    MarkRead { conversation: String },
    /// `messages.send`.
    Send { conversation: String, text: String, client_msg_id: String },
    /// `files.send`; a relative `path` is taken from the working directory.
    SendFile { conversation: String, path: String },
    /// `contacts.verify`.
    Verify { user_id: String },
}

/// The daemon's answer to a [`Request`].
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Conversations(Vec<ConversationSummary>),
    Contacts(Vec<Contact>),
    Messages {
        conversation: String,
        messages: Vec<Message>,
    },
    /// A message this frontend sent (a text or a file).
    Sent(Box<Message>),
    Verified {
        user_id: String,
        safety_number: String,
        verified: bool,
    },
    /// A request failed; `unsent` is the text of a message that was not sent, to give
    /// back to the input line.
    Failed {
        what: &'static str,
        error: String,
        unsent: Option<String>,
    },
}

/// The state of the connection to the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    Connecting,
    Connected,
    /// Lost or refused, with why; the binary keeps retrying.
    Down(String),
}

/// One conversation in the left pane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub conversation: String,
    pub title: String,
    pub unread: u64,
    pub muted: bool,
}

/// A file transfer under way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub bytes: u64,
    pub total: u64,
}

impl Progress {
    /// Whole percent, 0 to 100.
    pub fn percent(self) -> u64 {
        self.bytes.saturating_mul(100).checked_div(self.total).unwrap_or(100).min(100)
    }
}

/// The whole UI state.
#[derive(Debug)]
pub struct App {
    /// Conversations, most recent first (the daemon's order).
    pub rows: Vec<Row>,
    /// The open conversation, if any.
    pub open: Option<String>,
    /// The open conversation's messages, oldest first, one per `message_id`.
    pub messages: Vec<Message>,
    /// Contacts' presence by user ID.
    pub presence: HashMap<String, Presence>,
    /// Contacts' display names (alias, else nickname) by user ID.
    pub names: HashMap<String, String>,
    /// Transfers under way, by message ID.
    pub transfers: HashMap<String, Progress>,
    /// The input line.
    pub input: String,
    /// A one-line notice at the bottom (errors, typing, transfers).
    pub status: String,
    /// A popup's title and lines (the safety number, help), closed by any key.
    pub popup: Option<(String, Vec<String>)>,
    /// How many lines the message pane is scrolled up from the newest.
    pub scroll: usize,
    pub link: Link,
    /// The relay link's state as the daemon last reported it.
    pub relay: Option<String>,
    /// The `seq` of the last event applied; a reconnect resumes after it.
    pub last_seq: Option<u64>,
    pub quit: bool,
    /// Prefix of this run's `client_msg_id`s, and the counter after it.
    msg_prefix: String,
    sent: u64,
}

impl App {
    /// A fresh state; `open` is the conversation to open first (`--open`), and
    /// `msg_prefix` makes this run's `client_msg_id`s unique (e.g. pid and start time).
    pub fn new(open: Option<&str>, msg_prefix: impl Into<String>) -> Self {
        Self {
            rows: Vec::new(),
            open: open.map(normalize),
            messages: Vec::new(),
            presence: HashMap::new(),
            names: HashMap::new(),
            transfers: HashMap::new(),
            input: String::new(),
            status: String::new(),
            popup: None,
            scroll: 0,
            link: Link::Connecting,
            relay: None,
            last_seq: None,
            quit: false,
            msg_prefix: msg_prefix.into(),
            sent: 0,
        }
    }

    /// Everything to load after (re)connecting: lists, and the open conversation.
    pub fn reload(&self) -> Vec<Request> {
        let mut out = vec![Request::Conversations, Request::Contacts];
        if let Some(c) = &self.open {
            out.push(Request::Messages { conversation: c.clone() });
        }
        out
    }

    /// The daemon's events were lost for good (`resync_required`): forget the event
    /// position and the shown messages; [`App::reload`] fills them again.
    pub fn resync(&mut self) {
        self.last_seq = None;
        self.messages.clear();
        self.transfers.clear();
    }

    /// The connection to the daemon was lost.
    pub fn disconnected(&mut self, why: impl Into<String>) {
        self.link = Link::Down(why.into());
    }

    /// The connection is up and subscribed; `last_seq` is where the event stream
    /// starts (the subscription's `last_seq`, when it was made without `since`).
    pub fn connected(&mut self, last_seq: u64) {
        self.link = Link::Connected;
        if self.last_seq.is_none() {
            self.last_seq = Some(last_seq);
        }
    }

    /// A request could not be made because there is no connection.
    pub fn offline(&mut self, requests: Vec<Request>) {
        for r in requests {
            match r {
                Request::Send { text, .. } => {
                    self.give_back(text);
                    self.status =
                        "not connected to the daemon: the message is kept in the input line".into();
                }
                Request::SendFile { .. } | Request::Verify { .. } => {
                    self.status = "not connected to the daemon".into();
                }
                _ => {}
            }
        }
    }

    /// An event whose body this version does not know: only its position counts.
    pub fn skip(&mut self, seq: u64) {
        if self.last_seq.is_none_or(|l| seq > l) {
            self.last_seq = Some(seq);
        }
    }

    /// Applies one daemon event.
    pub fn apply_event(&mut self, event: Event) -> Vec<Request> {
        if self.last_seq.is_some_and(|l| event.seq <= l) {
            return Vec::new();
        }
        self.last_seq = Some(event.seq);
        match event.body {
            EventBody::MessageReceived { message } => {
                let mut out = Vec::new();
                if self.open.as_deref() == Some(message.conversation.as_str()) {
                    if message.direction == Direction::In {
                        out.push(Request::MarkRead { conversation: message.conversation.clone() });
                    }
                    self.upsert(message);
                }
                // Unread counts and the order come from the daemon, never counted here.
                if out.is_empty() {
                    out.push(Request::Conversations);
                }
                out
            }
            EventBody::MessageState { message_id, state, .. } => {
                if let Some(m) = self.messages.iter_mut().find(|m| m.message_id == message_id) {
                    m.state = state;
                }
                Vec::new()
            }
            EventBody::ContactPresence { user_id, presence } => {
                self.presence.insert(user_id, presence);
                Vec::new()
            }
            EventBody::ContactChanged { contact } => {
                self.learn(&contact);
                Vec::new()
            }
            EventBody::GroupChanged { .. } => vec![Request::Conversations],
            EventBody::FileProgress { message_id, bytes, total, .. } => {
                let p = Progress { bytes, total };
                if bytes >= total {
                    self.transfers.remove(&message_id);
                } else {
                    self.transfers.insert(message_id.clone(), p);
                }
                if let Some(name) = self.file_name(&message_id) {
                    self.status = format!("{name}: {}%", p.percent());
                }
                Vec::new()
            }
            EventBody::FileState { message_id, transfer, .. } => {
                if matches!(
                    transfer,
                    FileTransfer::Done
                        | FileTransfer::Uploaded
                        | FileTransfer::Cancelled
                        | FileTransfer::Failed
                ) {
                    self.transfers.remove(&message_id);
                }
                if let Some(m) = self.messages.iter_mut().find(|m| m.message_id == message_id)
                    && let Some(f) = m.file.as_mut()
                {
                    f.transfer = Some(transfer);
                    if matches!(transfer, FileTransfer::Failed | FileTransfer::Cancelled) {
                        self.status = format!("{}: {}", f.name, transfer_word(transfer));
                    }
                }
                Vec::new()
            }
            EventBody::Typing { conversation, user_id } => {
                if self.open.as_deref() == Some(conversation.as_str()) {
                    self.status = format!("{} is typing…", self.name_of(&user_id));
                }
                Vec::new()
            }
            EventBody::ConnectionState { state, .. } => {
                self.relay =
                    serde_json::to_value(state).ok().and_then(|v| v.as_str().map(str::to_owned));
                Vec::new()
            }
            EventBody::HistoryCleared { .. } => {
                self.messages.clear();
                self.reload()
            }
            EventBody::AccountLoggedOut {} => {
                self.status = "this device was logged out".into();
                Vec::new()
            }
            EventBody::SettingsChanged { .. }
            | EventBody::NetworkChanged { .. }
            | EventBody::AccountChanged { .. }
            | EventBody::DeviceLinked { .. }
            | EventBody::CallIncoming { .. }
            | EventBody::CallState { .. }
            | EventBody::Notification { .. }
            | EventBody::Overflow {} => Vec::new(),
        }
    }

    /// Applies the daemon's answer to a request.
    pub fn apply_reply(&mut self, reply: Reply) -> Vec<Request> {
        match reply {
            Reply::Conversations(list) => {
                self.rows = list
                    .into_iter()
                    .map(|c| Row {
                        conversation: c.conversation,
                        title: c.title,
                        unread: c.unread,
                        muted: c.muted,
                    })
                    .collect();
                // A conversation opened by name before it has any message still shows.
                if let Some(open) = &self.open
                    && !self.rows.iter().any(|r| &r.conversation == open)
                {
                    let title = bare(open).to_owned();
                    self.rows.insert(
                        0,
                        Row { conversation: open.clone(), title, unread: 0, muted: false },
                    );
                }
                match (&self.open, self.rows.first()) {
                    (None, Some(first)) => {
                        let c = first.conversation.clone();
                        self.open_conversation(c)
                    }
                    _ => Vec::new(),
                }
            }
            Reply::Contacts(list) => {
                for c in &list {
                    self.learn(c);
                }
                Vec::new()
            }
            Reply::Messages { conversation, messages } => {
                if self.open.as_deref() != Some(conversation.as_str()) {
                    return Vec::new();
                }
                let unread = messages.iter().any(|m| m.direction == Direction::In && !m.read);
                for m in messages {
                    self.upsert(m);
                }
                if unread { vec![Request::MarkRead { conversation }] } else { Vec::new() }
            }
            Reply::Sent(message) => {
                if self.open.as_deref() == Some(message.conversation.as_str()) {
                    self.upsert(*message);
                }
                vec![Request::Conversations]
            }
            Reply::Verified { user_id, safety_number, verified } => {
                let mut lines = vec![format!("Safety number with {}:", self.name_of(&user_id))];
                lines.push(String::new());
                let groups: Vec<&str> = safety_number.split_whitespace().collect();
                for chunk in groups.chunks(4) {
                    lines.push(chunk.join(" "));
                }
                lines.push(String::new());
                lines.push(
                    if verified { "Verified." } else { "Not verified: compare it in person." }
                        .to_owned(),
                );
                self.popup = Some(("Verify".to_owned(), lines));
                Vec::new()
            }
            Reply::Failed { what, error, unsent } => {
                if let Some(text) = unsent {
                    self.give_back(text);
                }
                self.status = format!("{what} failed: {error}");
                Vec::new()
            }
        }
    }

    /// Applies one key.
    pub fn handle_key(&mut self, key: Key) -> Vec<Request> {
        if self.popup.is_some() {
            self.popup = None;
            return match key {
                Key::Quit => {
                    self.quit = true;
                    Vec::new()
                }
                _ => Vec::new(),
            };
        }
        match key {
            Key::Char(c) => {
                self.input.push(c);
                Vec::new()
            }
            Key::Backspace => {
                self.input.pop();
                Vec::new()
            }
            Key::Enter => {
                let line = std::mem::take(&mut self.input);
                self.submit(line.trim_end())
            }
            Key::Up | Key::BackTab => self.step(-1, key == Key::BackTab),
            Key::Down | Key::Tab => self.step(1, key == Key::Tab),
            Key::PageUp => {
                self.scroll = self.scroll.saturating_add(10);
                Vec::new()
            }
            Key::PageDown => {
                self.scroll = self.scroll.saturating_sub(10);
                Vec::new()
            }
            Key::Esc => {
                self.input.clear();
                self.status.clear();
                Vec::new()
            }
            Key::Quit => {
                self.quit = true;
                Vec::new()
            }
        }
    }

    /// The display name of a user: alias, else nickname, else the ID.
    pub fn name_of(&self, user_id: &str) -> String {
        self.names.get(user_id).cloned().unwrap_or_else(|| user_id.to_owned())
    }

    /// The title of a conversation as the list shows it.
    pub fn title_of(&self, conversation: &str) -> String {
        self.rows
            .iter()
            .find(|r| r.conversation == conversation)
            .map(|r| r.title.clone())
            .unwrap_or_else(|| bare(conversation).to_owned())
    }

    /// The presence of a one-to-one conversation's peer (none for groups).
    pub fn presence_of(&self, conversation: &str) -> Option<Presence> {
        conversation.strip_prefix("user:").and_then(|u| self.presence.get(u).copied())
    }

    /// The index of the open conversation in the list.
    pub fn selected(&self) -> Option<usize> {
        let open = self.open.as_deref()?;
        self.rows.iter().position(|r| r.conversation == open)
    }

    fn submit(&mut self, line: &str) -> Vec<Request> {
        if line.is_empty() {
            return Vec::new();
        }
        self.status.clear();
        let (command, rest) = match line.strip_prefix('/') {
            // `//text` sends `/text`.
            Some(cmd) if !cmd.starts_with('/') => {
                cmd.split_once(' ').map_or((cmd, ""), |(c, r)| (c, r.trim()))
            }
            _ => ("", line.strip_prefix('/').unwrap_or(line)),
        };
        match command {
            "" => {
                let Some(conversation) = self.open.clone() else {
                    self.give_back(rest.to_owned());
                    self.status = "no conversation is open: /open USER".into();
                    return Vec::new();
                };
                self.sent += 1;
                let client_msg_id = format!("{}-{}", self.msg_prefix, self.sent);
                self.scroll = 0;
                vec![Request::Send { conversation, text: rest.to_owned(), client_msg_id }]
            }
            "open" if !rest.is_empty() => self.open_conversation(normalize(rest)),
            "file" if !rest.is_empty() => match self.open.clone() {
                Some(conversation) => {
                    self.status = format!("sending {rest}…");
                    vec![Request::SendFile { conversation, path: rest.to_owned() }]
                }
                None => {
                    self.status = "no conversation is open: /open USER".into();
                    Vec::new()
                }
            },
            "verify" => match self.open.as_deref().and_then(|c| c.strip_prefix("user:")) {
                Some(user) => vec![Request::Verify { user_id: user.to_owned() }],
                None => {
                    self.status = "/verify works in a conversation with one contact".into();
                    Vec::new()
                }
            },
            "quit" | "q" => {
                self.quit = true;
                Vec::new()
            }
            "help" => {
                self.popup = Some(("Help".to_owned(), help()));
                Vec::new()
            }
            _ => {
                self.status = format!("unknown command /{command} (try /help)");
                Vec::new()
            }
        }
    }

    /// Moves the selection `by` rows and opens that conversation; `wrap` goes round.
    fn step(&mut self, by: isize, wrap: bool) -> Vec<Request> {
        let n = self.rows.len();
        if n == 0 {
            return Vec::new();
        }
        let next = match self.selected() {
            None => 0,
            Some(i) => {
                let j = i as isize + by;
                match (j, wrap) {
                    (j, true) => j.rem_euclid(n as isize) as usize,
                    (j, false) => j.clamp(0, n as isize - 1) as usize,
                }
            }
        };
        let c = self.rows[next].conversation.clone();
        self.open_conversation(c)
    }

    fn open_conversation(&mut self, conversation: String) -> Vec<Request> {
        if self.open.as_deref() == Some(conversation.as_str()) {
            return Vec::new();
        }
        self.messages.clear();
        self.scroll = 0;
        self.status.clear();
        if !self.rows.iter().any(|r| r.conversation == conversation) {
            let title = bare(&conversation).to_owned();
            self.rows.insert(
                0,
                Row { conversation: conversation.clone(), title, unread: 0, muted: false },
            );
        }
        self.open = Some(conversation.clone());
        vec![Request::Messages { conversation }]
    }

    fn upsert(&mut self, message: Message) {
        match self.messages.iter_mut().find(|m| m.message_id == message.message_id) {
            Some(old) => {
                // A list answered before a receipt arrived must not move the state back.
                let state = if message.state == MessageState::Failed {
                    message.state
                } else {
                    message.state.max(old.state)
                };
                *old = message;
                old.state = state;
            }
            None => {
                self.messages.push(message);
                self.messages.sort_by(|a, b| {
                    (a.created_at, &a.message_id).cmp(&(b.created_at, &b.message_id))
                });
            }
        }
    }

    fn learn(&mut self, c: &Contact) {
        self.presence.insert(c.user_id.clone(), c.presence);
        let name = c.alias.clone().filter(|a| !a.is_empty()).unwrap_or_else(|| c.nickname.clone());
        if !name.is_empty() {
            self.names.insert(c.user_id.clone(), name);
        }
    }

    fn give_back(&mut self, text: String) {
        if self.input.is_empty() {
            self.input = text;
        }
    }

    fn file_name(&self, message_id: &str) -> Option<String> {
        self.messages
            .iter()
            .find(|m| m.message_id == message_id)
            .and_then(|m| m.file.as_ref())
            .map(|f| f.name.clone())
    }
}

/// `bob` → `user:bob`; a conversation name is kept as it is.
pub fn normalize(name: &str) -> String {
    let name = name.trim();
    if name.starts_with("user:") || name.starts_with("group:") {
        name.to_owned()
    } else {
        format!("user:{}", name.to_lowercase())
    }
}

/// A conversation's name without its `user:` or `group:` prefix.
pub fn bare(conversation: &str) -> &str {
    conversation.split_once(':').map_or(conversation, |(_, rest)| rest)
}

/// A transfer state in words: its name in the protocol ("uploading", "done", ...).
pub fn transfer_word(t: FileTransfer) -> String {
    serde_json::to_value(t).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}

fn help() -> Vec<String> {
    [
        "Enter            send the line",
        "Up/Down, Tab     switch conversation",
        "PgUp/PgDn        scroll",
        "Esc              clear the line",
        "Ctrl-C, /quit    quit",
        "/open USER       open a conversation",
        "/file PATH       send a file",
        "/verify          show the safety number",
        "//text           send a line starting with /",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use letstalk_ipc::types::MessageKind;

    pub(crate) fn message(id: &str, conversation: &str, dir: Direction, text: &str) -> Message {
        Message {
            message_id: id.to_owned(),
            conversation: conversation.to_owned(),
            from: if dir == Direction::In { bare(conversation).to_owned() } else { "me".into() },
            direction: dir,
            kind: MessageKind::Text,
            text: Some(text.to_owned()),
            reply_to: None,
            file: None,
            created_at: 1_764_380_000_000 + id.len() as i64,
            received_at: None,
            state: if dir == Direction::In {
                MessageState::Delivered
            } else {
                MessageState::Queued
            },
            read: false,
            error: None,
            states: None,
        }
    }

    fn summary(conversation: &str, unread: u64) -> ConversationSummary {
        ConversationSummary {
            conversation: conversation.to_owned(),
            title: bare(conversation).to_owned(),
            unread,
            last_message: None,
            muted: false,
        }
    }

    fn received(seq: u64, m: Message) -> Event {
        Event { seq, at: 0, body: EventBody::MessageReceived { message: m } }
    }

    fn texts(app: &App) -> Vec<&str> {
        app.messages.iter().filter_map(|m| m.text.as_deref()).collect()
    }

    #[test]
    fn tui_a_replayed_event_or_a_listed_message_is_shown_once() {
        let mut app = App::new(Some("bob"), "t");
        app.connected(10);
        let m = message("m1", "user:bob", Direction::In, "hello");
        assert_eq!(
            app.apply_event(received(11, m.clone())),
            vec![Request::MarkRead { conversation: "user:bob".into() }]
        );
        // The same event replayed after a reconnect, and the same message in a list.
        assert!(app.apply_event(received(11, m.clone())).is_empty());
        app.apply_reply(Reply::Messages { conversation: "user:bob".into(), messages: vec![m] });
        assert_eq!(texts(&app), ["hello"]);
        // A later event after the replay is applied.
        app.apply_event(received(12, message("m22", "user:bob", Direction::In, "again")));
        assert_eq!(texts(&app), ["hello", "again"]);
        assert_eq!(app.last_seq, Some(12));
    }

    #[test]
    fn tui_a_reconnect_keeps_the_event_position_and_a_resync_forgets_it() {
        let mut app = App::new(None, "t");
        app.connected(5);
        app.skip(7);
        app.disconnected("gone");
        app.connected(100);
        assert_eq!(app.last_seq, Some(7), "resumes after what it saw, not after the new head");
        app.resync();
        app.connected(100);
        assert_eq!(app.last_seq, Some(100));
    }

    #[test]
    fn tui_enter_sends_to_the_open_conversation_and_commands_parse() {
        let mut app = App::new(Some("user:bob"), "run");
        for c in "hi there".chars() {
            app.handle_key(Key::Char(c));
        }
        assert_eq!(
            app.handle_key(Key::Enter),
            vec![Request::Send {
                conversation: "user:bob".into(),
                text: "hi there".into(),
                client_msg_id: "run-1".into()
            }]
        );
        assert!(app.input.is_empty());
        let typed = |app: &mut App, line: &str| {
            app.input = line.to_owned();
            app.handle_key(Key::Enter)
        };
        assert_eq!(
            typed(&mut app, "/file /tmp/a b.txt"),
            vec![Request::SendFile {
                conversation: "user:bob".into(),
                path: "/tmp/a b.txt".into()
            }]
        );
        assert_eq!(typed(&mut app, "/verify"), vec![Request::Verify { user_id: "bob".into() }]);
        assert_eq!(
            typed(&mut app, "//etc"),
            vec![Request::Send {
                conversation: "user:bob".into(),
                text: "/etc".into(),
                client_msg_id: "run-2".into()
            }]
        );
        assert_eq!(
            typed(&mut app, "/open Carol"),
            vec![Request::Messages { conversation: "user:carol".into() }]
        );
        assert_eq!(app.open.as_deref(), Some("user:carol"));
        assert!(typed(&mut app, "/nope").is_empty());
        assert!(app.status.contains("unknown command"));
        app.open = Some("group:g1".into());
        assert!(typed(&mut app, "/verify").is_empty());
        typed(&mut app, "/quit");
        assert!(app.quit);
    }

    #[test]
    fn tui_a_send_that_fails_gives_the_text_back() {
        let mut app = App::new(None, "t");
        app.input = "lost?".into();
        assert!(app.handle_key(Key::Enter).is_empty(), "nothing is open");
        assert_eq!(app.input, "lost?");
        app.open = Some("user:bob".into());
        let sent = app.handle_key(Key::Enter);
        app.offline(sent);
        assert_eq!(app.input, "lost?");
        app.input.clear();
        app.apply_reply(Reply::Failed {
            what: "send",
            error: "blocked".into(),
            unsent: Some("again".into()),
        });
        assert_eq!(app.input, "again");
        assert!(app.status.contains("blocked"));
    }

    #[test]
    fn tui_keys_switch_conversations_and_the_first_opens_by_itself() {
        let mut app = App::new(None, "t");
        let first = app.apply_reply(Reply::Conversations(vec![
            summary("user:bob", 0),
            summary("user:carol", 2),
            summary("group:g", 0),
        ]));
        assert_eq!(first, vec![Request::Messages { conversation: "user:bob".into() }]);
        assert_eq!(
            app.handle_key(Key::Down),
            vec![Request::Messages { conversation: "user:carol".into() }]
        );
        app.handle_key(Key::Down);
        assert_eq!(app.open.as_deref(), Some("group:g"));
        assert!(app.handle_key(Key::Down).is_empty(), "Down stops at the end");
        app.handle_key(Key::Tab);
        assert_eq!(app.open.as_deref(), Some("user:bob"), "Tab goes round");
        app.handle_key(Key::BackTab);
        assert_eq!(app.open.as_deref(), Some("group:g"));
        app.handle_key(Key::Up);
        assert_eq!(app.selected(), Some(1));
    }

    #[test]
    fn tui_an_opened_conversation_without_messages_is_listed() {
        let mut app = App::new(Some("dave"), "t");
        app.apply_reply(Reply::Conversations(vec![summary("user:bob", 1)]));
        assert_eq!(app.rows[0].conversation, "user:dave");
        assert_eq!(app.selected(), Some(0));
    }

    #[test]
    fn tui_receipts_presence_and_unread_follow_the_daemon() {
        let mut app = App::new(Some("bob"), "t");
        app.connected(0);
        let sent = message("m1", "user:bob", Direction::Out, "yo");
        app.apply_reply(Reply::Sent(Box::new(sent.clone())));
        let state = |app: &App| app.messages[0].state;
        app.apply_event(Event {
            seq: 1,
            at: 0,
            body: EventBody::MessageState {
                message_id: "m1".into(),
                conversation: "user:bob".into(),
                state: MessageState::Delivered,
            },
        });
        assert_eq!(state(&app), MessageState::Delivered);
        // A list answered before the receipt does not move the state back.
        app.apply_reply(Reply::Messages { conversation: "user:bob".into(), messages: vec![sent] });
        assert_eq!(state(&app), MessageState::Delivered);
        app.apply_event(Event {
            seq: 2,
            at: 0,
            body: EventBody::ContactPresence { user_id: "bob".into(), presence: Presence::Online },
        });
        assert_eq!(app.presence_of("user:bob"), Some(Presence::Online));
        // A message in another conversation is not shown here; the list is refreshed.
        assert_eq!(
            app.apply_event(received(3, message("m2", "user:carol", Direction::In, "psst"))),
            vec![Request::Conversations]
        );
        assert_eq!(texts(&app), ["yo"]);
    }

    #[test]
    fn tui_file_progress_and_the_safety_number() {
        let mut app = App::new(Some("bob"), "t");
        let mut m = message("f1", "user:bob", Direction::Out, "");
        m.kind = MessageKind::File;
        m.file = Some(letstalk_ipc::types::FileInfo {
            name: "photo.jpg".into(),
            size: 400,
            mime: "image/jpeg".into(),
            sha256: String::new(),
            path: None,
            transfer: Some(FileTransfer::Uploading),
        });
        app.apply_reply(Reply::Sent(Box::new(m)));
        let progress = |seq, bytes| Event {
            seq,
            at: 0,
            body: EventBody::FileProgress {
                message_id: "f1".into(),
                direction: letstalk_ipc::types::TransferDirection::Up,
                bytes,
                total: 400,
            },
        };
        app.apply_event(progress(1, 100));
        assert_eq!(app.status, "photo.jpg: 25%");
        assert_eq!(app.transfers["f1"].percent(), 25);
        app.apply_event(progress(2, 400));
        assert!(app.transfers.is_empty());
        assert_eq!(transfer_word(FileTransfer::Downloading), "downloading");
        let number = "12345 67890 12345 67890 12345 67890 12345 67890 12345 67890 12345 67890";
        app.apply_reply(Reply::Verified {
            user_id: "bob".into(),
            safety_number: number.into(),
            verified: false,
        });
        let (_, lines) = app.popup.clone().unwrap();
        assert_eq!(lines.iter().filter(|l| *l == "12345 67890 12345 67890").count(), 3);
        app.handle_key(Key::Char('x'));
        assert!(app.popup.is_none() && app.input.is_empty(), "a key closes the popup");
    }
}
