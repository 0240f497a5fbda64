//! `letstalk-tui` in a pseudo-terminal (80×24) against a real relay and daemon pair: what
//! the peer sends shows on the screen, what is typed reaches the peer, receipts and
//! presence show live, and a restart of the TUI's daemon loses nothing and doubles
//! nothing on the screen.

use std::io::{Read, Write};
use std::num::NonZeroU16;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use portable_pty::{Child, CommandBuilder, MasterPty, PtySize, native_pty_system};
use serde_json::json;

use letstalk_tests::{Daemon, bin, eventually, registered, wait_presence, wait_texts};

const LIMIT: Duration = Duration::from_secs(30);
const ROWS: NonZeroU16 = NonZeroU16::new(24).unwrap();
const COLS: NonZeroU16 = NonZeroU16::new(80).unwrap();

/// A running `letstalk-tui` and the screen it drew, as a VT100 emulator parsed it.
struct Tui {
    screen: Arc<Mutex<vt100::Parser>>,
    writer: Box<dyn Write + Send>,
    child: Box<dyn Child + Send + Sync>,
    _master: Box<dyn MasterPty + Send>,
}

impl Tui {
    fn start(daemon: &Daemon, open: &str) -> Tui {
        let pty = native_pty_system()
            .openpty(PtySize {
                rows: ROWS.get(),
                cols: COLS.get(),
                pixel_width: 0,
                pixel_height: 0,
            })
            .unwrap();
        let mut cmd = CommandBuilder::new(bin("letstalk-tui"));
        cmd.arg("--socket");
        cmd.arg(daemon.socket());
        cmd.args(["--open", open]);
        cmd.env("TERM", "xterm-256color");
        cmd.env_remove("LETSTALK_SOCKET");
        let child = pty.slave.spawn_command(cmd).unwrap();
        drop(pty.slave);
        let screen = Arc::new(Mutex::new(vt100::Parser::new(ROWS, COLS, 0)));
        let mut reader = pty.master.try_clone_reader().unwrap();
        let parser = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                parser.lock().unwrap().process(&buf[..n]);
            }
        });
        let writer = pty.master.take_writer().unwrap();
        Tui { screen, writer, child, _master: pty.master }
    }

    fn contents(&self) -> String {
        self.screen.lock().unwrap().screen().contents()
    }

    fn keys(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
        self.writer.flush().unwrap();
    }

    /// Waits until the screen satisfies `check`; the error shows the screen.
    async fn wait(&self, what: &str, check: impl Fn(&str) -> bool) {
        let found =
            eventually(LIMIT, what, || async { check(&self.contents()).then_some(()) }).await;
        if let Err(e) = found {
            panic!("{e}; the screen:\n{}", self.contents());
        }
    }

    async fn wait_for(&self, text: &str) {
        self.wait(text, |s| s.contains(text)).await;
    }
}

impl Drop for Tui {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

async fn send(from: &Daemon, to: &str, text: &str) {
    from.call("messages.send", json!({"to": to, "text": text})).await.unwrap();
}

#[tokio::test]
async fn tui_shows_what_arrives_sends_what_is_typed_and_survives_a_daemon_restart() {
    let world = letstalk_tests::World::new();
    let relay = world.relay("relay").unwrap();
    let mut alice = registered(&world, &relay, "alice").await;
    let bob = registered(&world, &relay, "bob").await;
    alice.call("contacts.add", json!({"user_id": "bob"})).await.unwrap();
    bob.call("contacts.add", json!({"user_id": "alice"})).await.unwrap();
    wait_presence(&alice, "bob", "online").await;

    send(&bob, "user:alice", "first-from-bob").await;
    wait_texts(&alice, "user:bob", 1, LIMIT).await;

    let mut tui = Tui::start(&alice, "user:bob");
    tui.wait_for("bob nick: first-from-bob").await;
    tui.wait_for("bob nick · online").await;
    tui.wait_for("[connected]").await;

    // Typed text reaches the peer, and its receipt comes back live.
    tui.keys(b"typed-in-the-tui\r");
    let got = wait_texts(&bob, "user:alice", 2, LIMIT).await;
    assert_eq!(got.last().map(String::as_str), Some("typed-in-the-tui"));
    tui.wait("the delivered receipt", |s| s.lines().any(|l| l.contains("me: typed-in-the-tui ✓✓")))
        .await;

    send(&bob, "user:alice", "second-live").await;
    tui.wait_for("bob nick: second-live").await;

    // The TUI's daemon restarts mid-conversation; the peer writes meanwhile and after.
    alice.stop(Duration::from_secs(10)).unwrap();
    tui.wait_for("daemon unreachable").await;
    send(&bob, "user:alice", "while-you-were-away").await;
    alice = alice.spec.start().unwrap();
    tui.wait_for("bob nick: while-you-were-away").await;
    tui.wait_for("[connected]").await;
    send(&bob, "user:alice", "after-the-restart").await;
    tui.wait_for("bob nick: after-the-restart").await;
    // Typing still reaches the peer over the new connection; once its receipt shows,
    // the replay and the reloaded history were applied well before (events come in
    // order, and the reload was asked for on reconnecting).
    tui.keys(b"typed-after-restart\r");
    tui.wait("the receipt after the restart", |s| {
        s.lines().any(|l| l.contains("me: typed-after-restart ✓✓"))
    })
    .await;
    let got = wait_texts(&bob, "user:alice", 6, LIMIT).await;
    assert_eq!(got.last().map(String::as_str), Some("typed-after-restart"), "{got:?}");
    // The restarted daemon's own view agrees (it has every message once).
    let all = wait_texts(&alice, "user:bob", 6, LIMIT).await;
    assert_eq!(all.len(), 6, "{all:?}");

    let screen = tui.contents();
    for text in [
        "first-from-bob",
        "typed-in-the-tui",
        "second-live",
        "while-you-were-away",
        "after-the-restart",
        "typed-after-restart",
    ] {
        assert_eq!(screen.matches(text).count(), 1, "{text} once on the screen:\n{screen}");
    }

    // Ctrl-C quits cleanly.
    tui.keys(b"\x03");
    let status = eventually(LIMIT, "letstalk-tui to exit", || {
        let exited = tui.child.try_wait().unwrap();
        async move { exited }
    })
    .await
    .unwrap();
    assert!(status.success(), "letstalk-tui exited with {status:?}");
}
