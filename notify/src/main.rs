//! `letstalk-notify`: turns the daemon's `notification`, `call.incoming` and `call.state`
//! events into freedesktop notifications (`org.freedesktop.Notifications.Notify` on the
//! session bus), one per conversation: a new message replaces the conversation's previous
//! notification. The daemon raises no `notification` for a muted conversation; a call in
//! a muted conversation is skipped here. When a conversation is read (on any device), its
//! notification is closed.
//!
//! It reconnects when the daemon goes away and resumes the event stream with `since`, so a
//! restart neither loses nor repeats a notification. Message content is never logged.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use zbus::zvariant;

use letstalk_ipc::types::{
    Call, CallEndReason, CallMedia, CallState, ContactsList, ConversationsList, Direction, Event,
    EventBody, MessageResult, MessageState, SubscribeResult,
};
use letstalk_ipc::{Client, ClientError, ErrorKind};
use letstalk_notify::args::{Cli, VERSION};
use letstalk_notify::{Groups, Settings, Shown, call_text, message_text};

/// The event kinds this service acts on.
const KINDS: &[&str] = &["notification", "call.incoming", "call.state", "message.state"];
/// How long to wait before trying a lost daemon again.
const RETRY: Duration = Duration::from_secs(1);
/// How long the notification server may take to answer.
const BUS_TIMEOUT: Duration = Duration::from_secs(10);

#[zbus::proxy(
    interface = "org.freedesktop.Notifications",
    default_service = "org.freedesktop.Notifications",
    default_path = "/org/freedesktop/Notifications"
)]
trait Notifications {
    #[allow(clippy::too_many_arguments, reason = "the D-Bus method's signature")]
    fn notify(
        &self,
        app_name: &str,
        replaces_id: u32,
        app_icon: &str,
        summary: &str,
        body: &str,
        actions: &[&str],
        hints: HashMap<&str, zvariant::Value<'_>>,
        expire_timeout: i32,
    ) -> zbus::Result<u32>;

    fn close_notification(&self, id: u32) -> zbus::Result<()>;

    #[zbus(signal)]
    fn notification_closed(&self, id: u32, reason: u32) -> zbus::Result<()>;
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).context("--log")?)
        .with_writer(std::io::stderr)
        .init();
    let settings = Settings::resolve(&cli)?;
    let bus = zbus::Connection::session().await.context("connecting to the session bus")?;
    let proxy = NotificationsProxy::new(&bus).await?;
    // Closed notifications (dismissed, expired) start afresh; a task forwards them.
    let (closed_tx, mut closed_rx) = mpsc::unbounded_channel();
    let mut closed = proxy.receive_notification_closed().await?;
    tokio::spawn(async move {
        use futures::StreamExt as _;
        while let Some(signal) = closed.next().await {
            if let Ok(args) = signal.args()
                && closed_tx.send(args.id).is_err()
            {
                break;
            }
        }
    });
    // Ready: on the session bus; the daemon is found (or waited for) from here on.
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        debug!("sd_notify: {e}");
    }
    let mut service = Service { settings, proxy, groups: Groups::default(), last_seq: None };
    info!(socket = %service.settings.socket.display(), no_text = service.settings.no_text, "starting");
    loop {
        match service.session(&mut closed_rx).await {
            Ok(()) => info!("the daemon closed the connection; reconnecting"),
            Err(e) => debug!("daemon not reachable: {e:#}"),
        }
        tokio::time::sleep(RETRY).await;
    }
}

struct Service {
    settings: Settings,
    proxy: NotificationsProxy<'static>,
    groups: Groups,
    /// The last event handled; a reconnect resumes after it.
    last_seq: Option<u64>,
}

impl Service {
    /// One connection to the daemon: subscribes (from the last event handled, or from
    /// now at the first start: old messages are not announced again) and handles events
    /// until the daemon goes away.
    async fn session(&mut self, closed: &mut mpsc::UnboundedReceiver<u32>) -> Result<()> {
        let client = Client::connect(&self.settings.socket).await?;
        let mut events = client.take_events().context("the event stream")?;
        self.subscribe(&client).await?;
        // Introduced after subscribing, so that a frontend listed by `device.info` as
        // letstalk-notify is one that already receives events.
        client
            .call_value(
                "system.hello",
                json!({"client": format!("letstalk-notify {VERSION}"), "protocol": 1}),
            )
            .await?;
        info!("subscribed to the daemon's events");
        loop {
            tokio::select! {
                event = events.recv() => match event {
                    Some(value) => self.on_event(&client, value).await?,
                    None => return Ok(()),
                },
                Some(id) = closed.recv() => self.groups.closed(id),
            }
        }
    }

    async fn subscribe(&mut self, client: &Client) -> Result<()> {
        let params = json!({"since": self.last_seq, "kinds": KINDS});
        let result = match client.call_value("events.subscribe", params).await {
            Err(ClientError::Rpc(e)) if e.kind() == Some(ErrorKind::ResyncRequired) => {
                // The events missed are gone: announce from now on.
                warn!("the daemon no longer keeps the events missed; resuming from now");
                self.last_seq = None;
                client.call_value("events.subscribe", json!({"kinds": KINDS})).await?
            }
            other => other?,
        };
        let sub: SubscribeResult = serde_json::from_value(result)?;
        self.last_seq.get_or_insert(sub.last_seq);
        Ok(())
    }

    async fn on_event(&mut self, client: &Client, value: Value) -> Result<()> {
        let Ok(event) = serde_json::from_value::<Event>(value) else { return Ok(()) };
        if let EventBody::Overflow {} = event.body {
            return self.subscribe(client).await;
        }
        if self.last_seq.is_some_and(|l| event.seq <= l) {
            return Ok(());
        }
        self.last_seq = Some(event.seq);
        match event.body {
            EventBody::Notification { conversation, message_id, from } => {
                self.message(client, &conversation, &message_id, &from).await
            }
            EventBody::CallIncoming { call } => self.call(client, &call).await,
            EventBody::CallState { call } => self.call(client, &call).await,
            EventBody::MessageState { message_id, conversation, state: MessageState::Read } => {
                self.read(client, &conversation, &message_id).await
            }
            _ => Ok(()),
        }
    }

    async fn message(
        &mut self,
        client: &Client,
        conversation: &str,
        message_id: &str,
        from: &str,
    ) -> Result<()> {
        let sender = display_name(client, from).await?;
        let group = match conversation.starts_with("group:") {
            true => Some(title_of(client, conversation).await?.0),
            false => None,
        };
        let content = match self.settings.no_text {
            true => None,
            false => {
                let got: MessageResult =
                    client.call("messages.get", &json!({"message_id": message_id})).await?;
                let m = got.message;
                m.text.filter(|t| !t.is_empty()).or(m.file.map(|f| format!("File: {}", f.name)))
            }
        };
        let (replaces, count) = self.groups.next(conversation);
        let shown = message_text(
            &sender,
            group.as_deref(),
            content.as_deref(),
            count,
            self.settings.no_text,
        );
        if let Some(id) = self.show(replaces, &shown, "im.received", 1, "mail-message-new").await {
            self.groups.shown(conversation, id, count);
        }
        debug!(conversation, count, "message notification");
        Ok(())
    }

    /// A call rings (a notification), or stops ringing (closed, or replaced by a missed
    /// call notice).
    async fn call(&mut self, client: &Client, call: &Call) -> Result<()> {
        let key = format!("call:{}", call.call_id);
        let conversation = format!("user:{}", call.peer);
        let video = call.media == CallMedia::Video;
        match (call.state, call.direction) {
            (CallState::Ringing, Direction::In) => {
                if title_of(client, &conversation).await?.1 {
                    debug!(conversation, "muted: no call notification");
                    return Ok(());
                }
                let caller = display_name(client, &call.peer).await?;
                let shown = call_text(&caller, video, false);
                if let Some(id) = self.show(0, &shown, "call.incoming", 2, "call-start").await {
                    self.groups.shown(&key, id, 1);
                }
            }
            (CallState::Ended, _) if call.end_reason == Some(CallEndReason::Missed) => {
                // Only a call that rang here (not muted) turns into a missed call notice.
                if let Some(id) = self.groups.forget(&key) {
                    let caller = display_name(client, &call.peer).await?;
                    self.show(
                        id,
                        &call_text(&caller, video, true),
                        "call.unanswered",
                        1,
                        "call-missed",
                    )
                    .await;
                }
            }
            (CallState::Active | CallState::Ended, _) => {
                if let Some(id) = self.groups.forget(&key) {
                    self.close(id).await;
                }
            }
            (CallState::Ringing, Direction::Out) => {}
        }
        Ok(())
    }

    /// A message was read: when it is an incoming one of a conversation with a
    /// notification, the conversation was read (here or on another device).
    async fn read(&mut self, client: &Client, conversation: &str, message_id: &str) -> Result<()> {
        if self.groups.id(conversation).is_none() {
            return Ok(());
        }
        let got = client
            .call::<_, MessageResult>("messages.get", &json!({"message_id": message_id}))
            .await;
        if got.is_ok_and(|m| m.message.direction == Direction::In)
            && let Some(id) = self.groups.forget(conversation)
        {
            self.close(id).await;
        }
        Ok(())
    }

    /// Shows (or replaces) a notification; its ID, or `None` when the server failed.
    async fn show(
        &self,
        replaces: u32,
        shown: &Shown,
        category: &str,
        urgency: u8,
        icon: &str,
    ) -> Option<u32> {
        let hints = HashMap::from([
            ("category", zvariant::Value::from(category)),
            ("urgency", zvariant::Value::from(urgency)),
        ]);
        let call = self.proxy.notify(
            "Letstalk",
            replaces,
            icon,
            &shown.summary,
            &shown.body,
            &[],
            hints,
            -1,
        );
        match tokio::time::timeout(BUS_TIMEOUT, call).await {
            Ok(Ok(id)) => Some(id),
            Ok(Err(e)) => {
                warn!("the notification server refused a notification: {e}");
                None
            }
            Err(_) => {
                warn!("the notification server did not answer");
                None
            }
        }
    }

    async fn close(&self, id: u32) {
        if let Err(e) = self.proxy.close_notification(id).await {
            debug!("closing notification {id}: {e}");
        }
    }
}

/// A user's display name: the contact's alias, else nickname, else the user ID.
async fn display_name(client: &Client, user_id: &str) -> Result<String> {
    let list: ContactsList = client.call("contacts.list", &json!({})).await?;
    let name = list.contacts.into_iter().find(|c| c.user_id == user_id).and_then(|c| {
        c.alias.filter(|a| !a.is_empty()).or(Some(c.nickname)).filter(|n| !n.is_empty())
    });
    Ok(name.unwrap_or_else(|| user_id.to_owned()))
}

/// A conversation's title and whether it is muted.
async fn title_of(client: &Client, conversation: &str) -> Result<(String, bool)> {
    let list: ConversationsList = client.call("conversations.list", &json!({})).await?;
    Ok(list
        .conversations
        .into_iter()
        .find(|c| c.conversation == conversation)
        .map(|c| (c.title, c.muted))
        .unwrap_or_else(|| (conversation.to_owned(), false)))
}
