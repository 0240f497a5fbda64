//! `letstalk`: the command-line client of `letstalkd`, for people and scripts.
//!
//! Exit codes (a public contract, see programs.md): 0 success, 1 the daemon answered
//! with an error, 2 bad usage, 3 the daemon is not running or not reachable.

use std::process::ExitCode;

use clap::Parser;
use serde_json::{Value, json};

use letstalk_cli::args::{Cli, Command, DevicesCommand, GroupCommand};
use letstalk_ipc::{Client, ClientError};

/// A failure, with the exit code it maps to.
#[derive(Debug)]
enum Failure {
    Usage(String),
    Daemon(letstalk_ipc::RpcError),
    Unreachable(String),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Rpc(e) => Self::Daemon(e),
            ClientError::Connect { path, source } => Self::Unreachable(format!(
                "cannot reach letstalkd at {path}: {source}\n\
                 Is it running? Start it with `letstalkd` (or `systemctl --user start letstalkd`), \
                 or point --socket / LETSTALK_SOCKET at its socket."
            )),
            other => Self::Unreachable(format!("lost the connection to letstalkd: {other}")),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Needs no daemon: answered before anything connects.
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(
            shell,
            &mut letstalk_cli::command(),
            "letstalk",
            &mut std::io::stdout(),
        );
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("letstalk: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(m)) => {
            eprintln!("letstalk: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Daemon(e)) => {
            let kind = e.kind().map(|k| format!(" [{}]", k.as_str())).unwrap_or_default();
            eprintln!("letstalk: error {}{kind}: {}", e.code, e.message);
            if let Some(data) = &e.data {
                eprintln!("{data}");
            }
            ExitCode::from(1)
        }
        Err(Failure::Unreachable(m)) => {
            eprintln!("letstalk: {m}");
            ExitCode::from(3)
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let path = letstalk_ipc::socket::client_socket(cli.socket);
    // Check usage before connecting, so a typo is exit 2 even with no daemon running.
    let request = match &cli.command {
        Command::Rpc { method, params } => {
            let params = match params.as_deref() {
                None => json!({}),
                Some(text) => serde_json::from_str::<Value>(text)
                    .map_err(|e| Failure::Usage(format!("PARAMS_JSON is not JSON: {e}")))?,
            };
            Some((method.clone(), params))
        }
        Command::Settings { changes, .. } if !changes.is_empty() => {
            Some(("settings.set".to_owned(), settings_patch(changes)?))
        }
        Command::Register { user_id, email, nickname, avatar, device_name, .. } => {
            let mut p = json!({"user_id": user_id, "email": email, "nickname": nickname, "password": password()?});
            if let Some(name) = device_name {
                p["device_name"] = json!(name);
            }
            if let Some(a) = avatar {
                let abs =
                    std::path::absolute(a).map_err(|e| Failure::Usage(format!("--avatar: {e}")))?;
                p["avatar"] = json!(abs);
            }
            Some(("account.register".to_owned(), p))
        }
        Command::Login { user_id, device_name, .. } => {
            let mut p = json!({"user_id": user_id, "password": password()?});
            if let Some(name) = device_name {
                p["device_name"] = json!(name);
            }
            Some(("account.login".to_owned(), p))
        }
        _ => None,
    };
    let client = Client::connect(&path).await?;
    client
        .call_value(
            "system.hello",
            json!({"client": format!("letstalk-cli {}", env!("CARGO_PKG_VERSION"))}),
        )
        .await?;
    match cli.command {
        // Answered in `main`, before anything connects.
        Command::Completions { .. } => {}
        Command::Rpc { .. } | Command::Settings { .. } if request.is_some() => {
            let (method, params) = request.unwrap_or_default();
            let result = client.call_value(&method, params).await?;
            print_json(&result);
        }
        Command::Settings { json, .. } => {
            let result = client.call_value("settings.get", json!({})).await?;
            if json { print_json(&result) } else { print_flat("", &result) }
        }
        Command::Listen { since, kinds } => {
            let mut events =
                client.take_events().ok_or_else(|| Failure::Usage("no event stream".into()))?;
            let mut params = json!({});
            if let Some(since) = since {
                params["since"] = json!(since);
            }
            if let Some(kinds) = kinds {
                params["kinds"] = json!(kinds);
            }
            client.call_value("events.subscribe", params).await?;
            while let Some(event) = events.recv().await {
                println!("{event}");
            }
            return Err(Failure::Unreachable("letstalkd closed the connection".into()));
        }
        Command::Status { json } => {
            let s = client.call_value("system.status", json!({})).await?;
            if json {
                print_json(&s);
            } else {
                println!("letstalkd {}  up {} s", text(&s["version"]), s["uptime_s"]);
                println!("account   {}", s["user_id"].as_str().unwrap_or("(not logged in)"));
                let relay = &s["relay"];
                let rtt =
                    relay["rtt_ms"].as_u64().map(|r| format!(", rtt {r} ms")).unwrap_or_default();
                println!(
                    "relay     {} {}{rtt}",
                    text(&relay["state"]),
                    relay["address"].as_str().unwrap_or("")
                );
                let net = &s["network"];
                println!(
                    "network   {} {}",
                    text(&net["type"]),
                    net["interface"].as_str().unwrap_or("")
                );
                println!("queued    {}", s["queued_out"]);
            }
        }
        Command::Device { json } => {
            let d = client.call_value("device.info", json!({})).await?;
            if json { print_json(&d) } else { print_flat("", &d) }
        }
        Command::Register { json, .. } | Command::Login { json, .. } => {
            let (method, params) = request.unwrap_or_default();
            let account = client.call_value(&method, params).await?;
            if json {
                print_json(&account);
            } else {
                println!(
                    "logged in as {} ({})",
                    text(&account["user_id"]),
                    text(&account["nickname"])
                );
                println!("fingerprint {}", text(&account["fingerprint"]));
            }
        }
        Command::Logout => {
            client.call_value("account.logout", json!({})).await?;
            println!("logged out");
        }
        Command::Link { code: None, json, .. } => {
            let started = client.call_value("devices.link_start", json!({})).await?;
            if json {
                print_json(&started);
            } else {
                let code = text(&started["code"]);
                println!("On the new device, run:  letstalk link {code}");
                println!("The code works once, for 10 minutes.");
                use std::io::IsTerminal;
                if std::io::stdout().is_terminal()
                    && let Ok(qr) = qrcode::QrCode::new(code.as_bytes())
                {
                    println!("{}", qr.render::<qrcode::render::unicode::Dense1x2>().build());
                }
            }
        }
        Command::Link { code: Some(code), name, json } => {
            let name = name.unwrap_or_else(default_device_name);
            let account = client
                .call_value("account.link", json!({"code": code, "device_name": name}))
                .await?;
            if json {
                print_json(&account);
            } else {
                println!("linked: this device is now {}", text(&account["user_id"]));
                println!("fingerprint {}", text(&account["fingerprint"]));
            }
        }
        Command::Devices {
            action: Some(DevicesCommand::Rename { device_id, name, json }), ..
        } => {
            let device = client
                .call_value("devices.rename", json!({"device_id": device_id, "name": name}))
                .await?;
            if json {
                print_json(&device);
            } else {
                println!("device {device_id} is now {}", text(&device["name"]));
            }
        }
        Command::Devices { remove: Some(device_id), .. } => {
            client.call_value("devices.remove", json!({"device_id": device_id})).await?;
            println!("removed device {device_id}");
        }
        Command::Devices { remove: None, json, .. } => {
            let list = client.call_value("devices.list", json!({})).await?;
            if json {
                print_json(&list);
            } else {
                for d in list["devices"].as_array().into_iter().flatten() {
                    let this = if d["this_device"] == true { "  (this device)" } else { "" };
                    println!("{:>3}  {}{this}", d["device_id"], text(&d["name"]));
                }
            }
        }
        Command::Add { user_id, alias } => {
            let mut p = json!({"user_id": user_id});
            if let Some(a) = alias {
                p["alias"] = json!(a);
            }
            let c = client.call_value("contacts.add", p).await?;
            println!("added {} ({})", text(&c["user_id"]), text(&c["presence"]));
        }
        Command::Contacts { json } => {
            let list = client.call_value("contacts.list", json!({})).await?;
            if json {
                print_json(&list);
            } else {
                for c in list["contacts"].as_array().into_iter().flatten() {
                    let name = c["alias"].as_str().or(c["nickname"].as_str()).unwrap_or("");
                    let mut blocked = if c["blocked"] == true { "  [blocked]" } else { "" };
                    if c["verified"] == true {
                        blocked = if blocked.is_empty() {
                            "  [verified]"
                        } else {
                            "  [blocked, verified]"
                        };
                    } else if c["identity_changed_at"].is_number() {
                        blocked = if blocked.is_empty() {
                            "  [identity key changed]"
                        } else {
                            "  [blocked, identity key changed]"
                        };
                    }
                    println!(
                        "{:<24} {:<24} {}{blocked}",
                        text(&c["user_id"]),
                        name,
                        text(&c["presence"])
                    );
                }
            }
        }
        Command::Send { to, text: body, json } => {
            let m = client
                .call_value("messages.send", json!({"to": conversation(&to), "text": body}))
                .await?;
            if json {
                print_json(&m)
            } else {
                println!("{} {}", text(&m["message"]["message_id"]), text(&m["message"]["state"]))
            }
        }
        Command::Chats { json } => {
            let list = client.call_value("conversations.list", json!({})).await?;
            if json {
                print_json(&list);
            } else {
                for c in list["conversations"].as_array().into_iter().flatten() {
                    let last = c["last_message"]["text"].as_str().unwrap_or("");
                    println!("{:<28} {:>4} unread  {last}", text(&c["title"]), c["unread"]);
                }
            }
        }
        Command::History { with, limit, read, json } => {
            let conv = conversation(&with);
            let page = client
                .call_value("messages.list", json!({"conversation": conv, "limit": limit}))
                .await?;
            if read {
                client.call_value("messages.mark_read", json!({"conversation": conv})).await?;
            }
            if json {
                print_json(&page);
            } else {
                for m in page["messages"].as_array().into_iter().flatten() {
                    let who =
                        if m["direction"] == "out" { "me".to_owned() } else { text(&m["from"]) };
                    let state = if m["direction"] == "out" {
                        format!("  [{}]", text(&m["state"]))
                    } else {
                        String::new()
                    };
                    println!("{:<16} {}{state}", who, m["text"].as_str().unwrap_or(""));
                }
            }
        }
        Command::Block { user_id } => block(&client, "contacts.block", &user_id).await?,
        Command::Unblock { user_id } => block(&client, "contacts.unblock", &user_id).await?,
        Command::Trust { user_id, safety_number } => {
            let mut p = json!({"user_id": user_id});
            if !safety_number.is_empty() {
                p["safety_number"] = json!(safety_number.concat());
            }
            let c = client.call_value("contacts.trust", p).await?;
            let state = if c["verified"] == true { "verified" } else { "accepted (unverified)" };
            println!("{}'s identity key {state}", text(&c["user_id"]));
        }
        Command::Group(g) => group(&client, g).await?,
        Command::ClearHistory { yes } => {
            let r = client.call_value("privacy.clear_history", json!({"confirm": yes})).await?;
            println!("deleted {} unsent or unread messages", r["deleted"]);
        }
        Command::RestoreDefaults { yes } => {
            let r = client.call_value("privacy.restore_defaults", json!({"confirm": yes})).await?;
            let relay = if r["relay_account_deleted"] == true {
                "the account was deleted on the relay"
            } else {
                "the relay could not be reached: the account there was not deleted"
            };
            println!("restored defaults: everything on this device is deleted; {relay}");
        }
        Command::SendFile { to, path, caption, no_wait, json } => {
            let abs = std::path::absolute(&path)
                .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
            let mut events =
                client.take_events().ok_or_else(|| Failure::Usage("no event stream".into()))?;
            if !no_wait {
                client
                    .call_value(
                        "events.subscribe",
                        json!({"kinds": ["file.progress", "file.state"]}),
                    )
                    .await?;
            }
            let mut p = json!({"to": conversation(&to), "path": abs});
            if let Some(c) = caption {
                p["caption"] = json!(c);
            }
            let m = client.call_value("files.send", p).await?;
            let id = text(&m["message"]["message_id"]);
            if !no_wait {
                let total = m["message"]["file"]["size"].as_u64().unwrap_or(0);
                let bar = progress_bar(total, "up");
                while let Some(e) = events.recv().await {
                    if e["message_id"] != id.as_str() {
                        continue;
                    }
                    if e["kind"] == "file.state" && e["transfer"] == "cancelled" {
                        bar.abandon();
                        return Err(Failure::Usage("the transfer was cancelled".into()));
                    }
                    if let Some(b) = e["bytes"].as_u64() {
                        bar.set_position(b);
                        if e["bytes"] == e["total"] {
                            break;
                        }
                    }
                }
                bar.finish_and_clear();
            }
            if json { print_json(&m) } else { println!("{id} sent") }
        }
        Command::Download { message_id, dest, json } => {
            let mut p = json!({"message_id": message_id});
            if let Some(d) = dest {
                let abs = std::path::absolute(&d)
                    .map_err(|e| Failure::Usage(format!("{}: {e}", d.display())))?;
                p["dest"] = json!(abs);
            }
            let mut events =
                client.take_events().ok_or_else(|| Failure::Usage("no event stream".into()))?;
            client.call_value("events.subscribe", json!({"kinds": ["file.progress"]})).await?;
            let m = client.call_value("messages.get", json!({"message_id": message_id})).await?;
            let bar = progress_bar(m["message"]["file"]["size"].as_u64().unwrap_or(0), "down");
            let call = client.call_value("files.download", p);
            tokio::pin!(call);
            let result = loop {
                tokio::select! {
                    r = &mut call => break r,
                    Some(e) = events.recv() => {
                        if e["message_id"] == message_id.as_str()
                            && let Some(b) = e["bytes"].as_u64()
                        {
                            bar.set_position(b);
                        }
                    }
                }
            };
            bar.finish_and_clear();
            let r = result?;
            if json { print_json(&r) } else { println!("{}", text(&r["path"])) }
        }
        Command::CancelFile { message_id } => {
            client.call_value("files.cancel", json!({"message_id": message_id})).await?;
            println!("cancelled");
        }
        Command::Rpc { .. } => {}
    }
    Ok(())
}

async fn block(client: &Client, method: &str, user_id: &str) -> Result<(), Failure> {
    let c = client.call_value(method, json!({"user_id": user_id})).await?;
    let state = if c["blocked"] == true { "blocked" } else { "unblocked" };
    println!("{} {state}", text(&c["user_id"]));
    Ok(())
}

async fn group(client: &Client, command: GroupCommand) -> Result<(), Failure> {
    let (method, params, json) = match command {
        GroupCommand::Create { name, members, json } => {
            ("groups.create", json!({"name": name, "members": members}), json)
        }
        GroupCommand::List { json } => ("groups.list", json!({}), json),
        GroupCommand::Info { group_id, json } => {
            ("groups.info", json!({"group_id": group_id}), json)
        }
        GroupCommand::Add { group_id, members } => {
            ("groups.add_members", json!({"group_id": group_id, "members": members}), false)
        }
        GroupCommand::Remove { group_id, members } => {
            ("groups.remove_members", json!({"group_id": group_id, "members": members}), false)
        }
        GroupCommand::Rename { group_id, name } => {
            ("groups.rename", json!({"group_id": group_id, "name": name}), false)
        }
        GroupCommand::Leave { group_id } => ("groups.leave", json!({"group_id": group_id}), false),
    };
    let result = client.call_value(method, params).await?;
    if json {
        print_json(&result);
        return Ok(());
    }
    let groups = match result.get("groups").and_then(Value::as_array) {
        Some(list) => list.clone(),
        None if result.get("group_id").is_some() => vec![result],
        None => {
            println!("left the group");
            return Ok(());
        }
    };
    for g in groups {
        let members: Vec<String> = g["members"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                let admin = g["admins"].as_array().is_some_and(|a| a.contains(m));
                format!("{}{}", text(m), if admin { "*" } else { "" })
            })
            .collect();
        println!(
            "{}  {:<24} {}  (chat: letstalk send group:{} TEXT)",
            text(&g["group_id"]),
            text(&g["name"]),
            members.join(", "),
            text(&g["group_id"])
        );
    }
    Ok(())
}

/// A progress bar on standard error when it is a terminal; hidden otherwise (scripts
/// get no control characters).
fn progress_bar(total: u64, direction: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    let style = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(direction.to_owned());
    bar
}

/// `bob` → `user:bob`; a full conversation name is kept.
fn conversation(to: &str) -> String {
    if to.contains(':') { to.to_owned() } else { format!("user:{to}") }
}

/// The password from $LETSTALK_PASSWORD or the first line of standard input, so it never
/// shows in the process list.
fn password() -> Result<String, Failure> {
    if let Ok(p) = std::env::var("LETSTALK_PASSWORD") {
        return Ok(p);
    }
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Failure::Usage(format!("reading the password: {e}")))?;
    let p = line.trim_end_matches(['\r', '\n']).to_owned();
    if p.is_empty() {
        return Err(Failure::Usage(
            "no password: set LETSTALK_PASSWORD or pipe it on standard input".into(),
        ));
    }
    Ok(p)
}

fn text(v: &Value) -> String {
    v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
}

/// Prints nested objects as `a.b = value` lines, for people.
fn print_flat(prefix: &str, v: &Value) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                print_flat(&key, v);
            }
        }
        other => println!("{prefix} = {other}"),
    }
}

/// Turns `a=1 b.c=true` into `{"a": 1, "b": {"c": true}}`.
fn settings_patch(changes: &[String]) -> Result<Value, Failure> {
    let mut patch = json!({});
    for change in changes {
        let (key, value) = change
            .split_once('=')
            .ok_or_else(|| Failure::Usage(format!("{change:?}: expected KEY=VALUE")))?;
        let value: Value =
            serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
        let mut slot = &mut patch;
        let parts: Vec<&str> = key.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            if i + 1 == parts.len() {
                slot[*part] = value.clone();
            } else {
                if !slot[*part].is_object() {
                    slot[*part] = json!({});
                }
                slot = &mut slot[*part];
            }
        }
    }
    Ok(patch)
}

/// A linked device's default name: the host's name, as people know the machine.
fn default_device_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "device".to_owned())
}
