//! `letstalk-tui`: a terminal chat UI for `letstalkd`, over the public socket protocol
//! only. The state lives in [`letstalk_tui::model`]; this file owns the terminal, the
//! connection (with reconnects that resume the event stream with `since`) and the calls.
//!
//! It writes no log: message content never leaves the screen.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use clap::Parser;
use crossterm::event::{
    Event as TermEvent, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers,
};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use letstalk_ipc::types::{
    ContactsList, ConversationsList, Event, EventBody, ListResult, MessageResult, SubscribeResult,
    VerifyResult,
};
use letstalk_ipc::{Client, ClientError, ErrorKind};
use letstalk_tui::args::{Cli, VERSION};
use letstalk_tui::model::{App, HISTORY, Key, Reply, Request};
use letstalk_tui::view;

/// How often a lost daemon is tried again.
const RETRY: Duration = Duration::from_millis(500);

/// A live, subscribed connection.
struct Conn {
    client: Arc<Client>,
    events: mpsc::UnboundedReceiver<Value>,
}

/// What woke the loop up.
enum Step {
    Key(Option<std::io::Result<TermEvent>>),
    Event(Option<Value>),
    Reply(Reply),
    Retry,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let socket = letstalk_ipc::socket::client_socket(cli.socket);
    let started = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
    let app = App::new(cli.open.as_deref(), format!("tui-{}-{started}", std::process::id()));
    let mut terminal = ratatui::init();
    let result = run(&mut terminal, &socket, app).await;
    ratatui::restore();
    result
}

async fn run(terminal: &mut ratatui::DefaultTerminal, socket: &Path, mut app: App) -> Result<()> {
    let (reply_tx, mut reply_rx) = mpsc::unbounded_channel::<Reply>();
    let mut keys = EventStream::new();
    let mut conn: Option<Conn> = None;
    let mut retry = tokio::time::interval(RETRY);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        terminal.draw(|f| view::draw(f, &app)).context("drawing")?;
        if app.quit {
            return Ok(());
        }
        let step = tokio::select! {
            k = keys.next() => Step::Key(k),
            e = next_event(&mut conn) => Step::Event(e),
            Some(r) = reply_rx.recv() => Step::Reply(r),
            _ = retry.tick(), if conn.is_none() => Step::Retry,
        };
        let requests = match step {
            Step::Key(None) => return Ok(()),
            Step::Key(Some(k)) => match key_of(k.context("reading the terminal")?) {
                Some(k) => app.handle_key(k),
                None => Vec::new(),
            },
            Step::Event(None) => {
                conn = None;
                app.disconnected("the daemon closed the connection");
                Vec::new()
            }
            Step::Event(Some(value)) => on_event(&mut app, conn.as_ref(), value).await,
            Step::Reply(r) => app.apply_reply(r),
            Step::Retry => match connect(socket, &mut app).await {
                Ok((c, requests)) => {
                    conn = Some(c);
                    requests
                }
                Err(e) => {
                    app.disconnected(short(&e));
                    Vec::new()
                }
            },
        };
        match &conn {
            Some(c) => {
                for r in requests {
                    let (client, tx) = (c.client.clone(), reply_tx.clone());
                    tokio::spawn(async move {
                        if let Some(reply) = execute(&client, r).await {
                            let _ = tx.send(reply);
                        }
                    });
                }
            }
            None => app.offline(requests),
        }
    }
}

async fn next_event(conn: &mut Option<Conn>) -> Option<Value> {
    match conn {
        Some(c) => c.events.recv().await,
        None => std::future::pending().await,
    }
}

/// One event notification: applied to the model, or, for `events.overflow`, answered by
/// subscribing again from the last event applied.
async fn on_event(app: &mut App, conn: Option<&Conn>, value: Value) -> Vec<Request> {
    match serde_json::from_value::<Event>(value.clone()) {
        Ok(Event { body: EventBody::Overflow {}, .. }) => {
            if let Some(c) = conn {
                let _ =
                    c.client.call_value("events.subscribe", json!({"since": app.last_seq})).await;
            }
            Vec::new()
        }
        Ok(event) => app.apply_event(event),
        Err(_) => {
            // A kind this version does not know: keep the position only.
            if let Some(seq) = value.get("seq").and_then(Value::as_u64) {
                app.skip(seq);
            }
            Vec::new()
        }
    }
}

/// Connects, introduces itself and subscribes: from the last event applied when there
/// is one (the replay fills what happened while away), else from now. The lists are
/// loaded again either way; messages are kept by ID, so nothing shows twice.
async fn connect(socket: &Path, app: &mut App) -> Result<(Conn, Vec<Request>), ClientError> {
    let client = Client::connect(socket).await?;
    let events = client.take_events().ok_or(ClientError::Closed)?;
    client
        .call_value(
            "system.hello",
            json!({"client": format!("letstalk-tui {VERSION}"), "protocol": 1}),
        )
        .await?;
    let sub = match client.call_value("events.subscribe", json!({"since": app.last_seq})).await {
        Err(ClientError::Rpc(e)) if e.kind() == Some(ErrorKind::ResyncRequired) => {
            app.resync();
            client.call_value("events.subscribe", json!({})).await?
        }
        other => other?,
    };
    let sub: SubscribeResult = serde_json::from_value(sub)?;
    app.connected(sub.last_seq);
    Ok((Conn { client: Arc::new(client), events }, app.reload()))
}

/// Carries out one request; `None` when there is nothing to tell the model.
async fn execute(client: &Client, request: Request) -> Option<Reply> {
    let failed = |what: &'static str, e: ClientError, unsent: Option<String>| Reply::Failed {
        what,
        error: short(&e),
        unsent,
    };
    let conversations = async || -> Result<Reply, ClientError> {
        let list: ConversationsList = client.call("conversations.list", &json!({})).await?;
        Ok(Reply::Conversations(list.conversations))
    };
    let reply = match request {
        Request::Conversations => {
            conversations().await.unwrap_or_else(|e| failed("loading the chats", e, None))
        }
        Request::Contacts => client
            .call::<_, ContactsList>("contacts.list", &json!({}))
            .await
            .map(|l| Reply::Contacts(l.contacts))
            .unwrap_or_else(|e| failed("loading the contacts", e, None)),
        Request::Messages { conversation } => client
            .call::<_, ListResult>(
                "messages.list",
                &json!({"conversation": conversation, "limit": HISTORY}),
            )
            .await
            .map(|l| Reply::Messages { conversation, messages: l.messages })
            .unwrap_or_else(|e| failed("loading the messages", e, None)),
        Request::MarkRead { conversation } => {
            let marked = client
                .call_value("messages.mark_read", json!({"conversation": conversation}))
                .await;
            match marked {
                Ok(_) => {
                    conversations().await.unwrap_or_else(|e| failed("loading the chats", e, None))
                }
                Err(e) => failed("marking read", e, None),
            }
        }
        Request::Send { conversation, text, client_msg_id } => client
            .call::<_, MessageResult>(
                "messages.send",
                &json!({"to": conversation, "text": text, "client_msg_id": client_msg_id}),
            )
            .await
            .map(|r| Reply::Sent(Box::new(r.message)))
            .unwrap_or_else(|e| failed("sending", e, Some(text))),
        Request::SendFile { conversation, path } => {
            let path = match std::path::absolute(PathBuf::from(&path)) {
                Ok(p) => p,
                Err(e) => return Some(failed("sending the file", e.into(), None)),
            };
            client
                .call::<_, MessageResult>("files.send", &json!({"to": conversation, "path": path}))
                .await
                .map(|r| Reply::Sent(Box::new(r.message)))
                .unwrap_or_else(|e| failed("sending the file", e, None))
        }
        Request::Verify { user_id } => client
            .call::<_, VerifyResult>("contacts.verify", &json!({"user_id": user_id}))
            .await
            .map(|r| Reply::Verified {
                user_id,
                safety_number: r.safety_number,
                verified: r.verified,
            })
            .unwrap_or_else(|e| failed("verifying", e, None)),
    };
    Some(reply)
}

/// An error in a few words for the status line.
fn short(e: &ClientError) -> String {
    match e {
        ClientError::Connect { source, .. } => source.to_string(),
        ClientError::Rpc(e) => e.message.clone(),
        other => other.to_string(),
    }
}

/// The model's key for a terminal event, if it is one the UI uses.
fn key_of(event: TermEvent) -> Option<Key> {
    let TermEvent::Key(KeyEvent { code, modifiers, kind, .. }) = event else {
        return None;
    };
    if kind == KeyEventKind::Release {
        return None;
    }
    let ctrl = modifiers.contains(KeyModifiers::CONTROL);
    Some(match code {
        KeyCode::Char('c' | 'd') if ctrl => Key::Quit,
        KeyCode::Char(_) if ctrl => return None,
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Enter => Key::Enter,
        KeyCode::Backspace => Key::Backspace,
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::Tab => Key::Tab,
        KeyCode::BackTab => Key::BackTab,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Esc => Key::Esc,
        _ => return None,
    })
}
