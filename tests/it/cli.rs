//! The `letstalk` command-line client: output and exit codes as programs.md gives them.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;

use letstalk_tests::{World, bin, cli};

#[test]
fn exit_codes_and_output() {
    let world = World::new();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let d = world.daemon("alice").start().unwrap();
    let socket = d.socket();

    let (code, out, _) = cli(socket, &["rpc", "system.status"]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["version"].is_string());

    let (code, out, _) = cli(socket, &["rpc", "settings.set", r#"{"typing": false}"#]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["typing"], false);

    let (code, out, err) = cli(socket, &["rpc", "no.such.method"]);
    assert_eq!((code, out.as_str()), (1, ""));
    assert!(err.contains("-32601"), "{err}");
    let (code, _, err) = cli(socket, &["rpc", "settings.set", r#"{"typing": 3}"#]);
    assert_eq!(code, 1);
    assert!(err.contains("typing"), "{err}");

    // Bad usage: exit 2, also without a daemon.
    assert_eq!(cli(socket, &["rpc", "settings.set", "{not json"]).0, 2);
    assert_eq!(cli(socket, &["no-such-command"]).0, 2);
    let missing = world.path().join("missing.sock");
    assert_eq!(cli(&missing, &["rpc"]).0, 2);
    // No daemon: exit 3 with advice.
    let (code, _, err) = cli(&missing, &["status"]);
    assert_eq!(code, 3);
    assert!(err.contains("letstalkd"), "{err}");

    // People's commands.
    let (code, out, _) = cli(socket, &["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("relay") && out.contains("disabled"), "{out}");
    let (code, out, _) =
        cli(socket, &["settings", "auto_download.cellular=true", "keepalive_s.wifi=30"]);
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["auto_download"]["cellular"].as_bool(), v["keepalive_s"]["wifi"].as_u64()),
        (Some(true), Some(30))
    );
    let (code, out, _) = cli(socket, &["settings"]);
    assert_eq!(code, 0);
    assert!(out.contains("keepalive_s.wifi = 30"), "{out}");
    let (code, out, _) = cli(socket, &["device", "--json"]);
    assert_eq!(code, 0);
    assert!(serde_json::from_str::<Value>(&out).unwrap()["device_id"].is_string());

    // --help everywhere.
    for args in [
        vec!["--help"],
        vec!["rpc", "--help"],
        vec!["listen", "--help"],
        vec!["status", "--help"],
        vec!["settings", "--help"],
        vec!["device", "--help"],
    ] {
        let (code, out, _) = cli(socket, &args);
        assert_eq!(code, 0, "{args:?}");
        assert!(out.contains("Usage"), "{args:?}: {out}");
    }
    drop(runtime);
}

#[test]
fn listen_prints_events_as_json_lines() {
    let world = World::new();
    let d = world.daemon("alice").start().unwrap();
    assert_eq!(cli(d.socket(), &["rpc", "settings.set", r#"{"typing": false}"#]).0, 0);
    let mut child = Command::new(bin("letstalk"))
        .arg("--socket")
        .arg(d.socket())
        .args(["listen", "--since", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(
        (first["seq"].as_u64(), &first["kind"]),
        (Some(1), &Value::from("settings.changed"))
    );
    assert_eq!(cli(d.socket(), &["rpc", "settings.set", r#"{"typing": true}"#]).0, 0);
    let second: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(second["seq"], 2);
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test]
async fn people_commands_register_send_and_read_history() {
    use letstalk_tests::{cli_env, eventually};
    use std::time::Duration;
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let alice = world.daemon("alice").with_relay(&relay).start().unwrap();
    let bob = world.daemon("bob").with_relay(&relay).start().unwrap();
    for d in [&alice, &bob] {
        eventually(Duration::from_secs(20), "connected", || async {
            let st = d.call("system.status", serde_json::json!({})).await.ok()?;
            (st["relay"]["state"] == "connected").then_some(())
        })
        .await
        .unwrap();
    }
    let pw = [("LETSTALK_PASSWORD", "a long enough password")];
    for (d, name) in [(&alice, "alice"), (&bob, "bob")] {
        let (code, out, err) = cli_env(
            d.socket(),
            &["register", name, "--email", &format!("{name}@example.org"), "--nickname", name],
            &pw,
        );
        assert_eq!(code, 0, "{out}{err}\n--- daemon:\n{}\n--- relay:\n{}", d.logs(), relay.logs());
        assert!(out.contains(&format!("logged in as {name}")), "{out}");
    }
    let (code, out, _) = cli(alice.socket(), &["add", "bob"]);
    assert_eq!(code, 0, "{out}");
    let (code, out, _) = cli(alice.socket(), &["send", "bob", "hello from the command line"]);
    assert_eq!(code, 0, "{out}");
    let history = eventually(Duration::from_secs(20), "bob has it", || async {
        let (_, out, _) = cli(bob.socket(), &["history", "alice", "--read"]);
        out.contains("hello from the command line").then_some(out)
    })
    .await
    .unwrap();
    assert!(history.starts_with("alice"), "{history}");

    // Groups, blocking and the privacy controls from the command line.
    let (code, out, err) = cli(alice.socket(), &["group", "create", "Friends", "bob", "--json"]);
    assert_eq!(code, 0, "{err}");
    let group: Value = serde_json::from_str(&out).unwrap();
    let gid = group["group_id"].as_str().unwrap();
    let (code, out, _) = cli(alice.socket(), &["group", "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("Friends") && out.contains("alice*, bob"), "{out}");
    let (code, _, err) = cli(alice.socket(), &["send", &format!("group:{gid}"), "hi friends"]);
    assert_eq!(code, 0, "{err}");
    eventually(Duration::from_secs(20), "bob has the group message", || async {
        let (_, out, _) = cli(bob.socket(), &["history", &format!("group:{gid}")]);
        out.contains("hi friends").then_some(())
    })
    .await
    .unwrap();
    let (code, out, _) = cli(bob.socket(), &["block", "alice"]);
    assert_eq!((code, out.trim()), (0, "alice blocked"));
    let (code, out, _) = cli(bob.socket(), &["unblock", "alice"]);
    assert_eq!((code, out.trim()), (0, "alice unblocked"));
    let (code, _, err) = cli(bob.socket(), &["clear-history"]);
    assert_eq!(code, 1);
    assert!(err.contains("confirm_required"), "{err}");
    let (code, out, _) = cli(bob.socket(), &["clear-history", "--yes"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("deleted "), "{out}");
    let (code, out, _) = cli(alice.socket(), &["contacts"]);
    assert_eq!(code, 0);
    assert!(out.contains("bob"), "{out}");
    let (code, out, _) = cli(bob.socket(), &["chats"]);
    assert_eq!(code, 0);
    assert!(out.contains("alice") && out.contains("0 unread"), "{out}");
    // A wrong password is the daemon's error: exit 1.
    let (code, _, err) = cli_env(bob.socket(), &["logout"], &[]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) =
        cli_env(bob.socket(), &["login", "bob"], &[("LETSTALK_PASSWORD", "wrong password!")]);
    assert_eq!(code, 1);
    assert!(err.contains("auth_failed"), "{err}");
}
