//! The programs built for a phone's CPU (aarch64), run under qemu-user against a native
//! relay and a native daemon (issue 22): register, messages both ways through the
//! emulated daemon and its emulated CLI, a restart, nothing lost. `.ci/run` cross-builds
//! them and runs this with `LETSTALK_FOREIGN_BIN_DIR` and `LETSTALK_FOREIGN_RUNNER` (see
//! `letstalk_tests::Foreign`); elsewhere it is ignored, and fails if run without them.

use std::time::Duration;

use serde_json::json;

use letstalk_tests::{Foreign, World, registered, registered_with, wait_connected, wait_texts};

/// Emulation is slow: every wait is generous.
const LIMIT: Duration = Duration::from_secs(120);

/// The ELF machine of `path` (`e_machine`, little-endian at offset 18).
fn elf_machine(path: &std::path::Path) -> u16 {
    let head = std::fs::read(path).unwrap();
    assert_eq!(&head[..4], b"\x7fELF", "{} is not an ELF binary", path.display());
    u16::from_le_bytes([head[18], head[19]])
}

#[tokio::test]
#[ignore = "needs the cross-built programs and qemu-user: run by .ci/run"]
async fn emulated_aarch64_daemon_and_cli_talk_with_native_ones_and_lose_nothing_across_a_restart() {
    let foreign = Foreign::from_env().unwrap();
    // EM_AARCH64: the programs under test really are the phone's, not this machine's.
    for program in ["letstalkd", "letstalk"] {
        assert_eq!(elf_machine(&foreign.bin_dir.join(program)), 183, "{program}");
    }
    let world = World::new();
    let relay = world.relay("relay").unwrap();
    let desk = registered(&world, &relay, "desk").await;
    let mut phone = registered_with(world.daemon("phone").foreign(&foreign), &relay).await;
    let system = phone.call("system.status", json!({})).await.unwrap();
    assert_eq!(system["relay"]["state"], "connected", "{system}");

    // The emulated CLI sends through the emulated daemon; the native one answers.
    let (code, out, err) = foreign.cli(phone.socket(), &["send", "desk", "from the phone"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(wait_texts(&desk, "user:phone", 1, LIMIT).await, ["from the phone"]);
    desk.call("messages.send", json!({"to": "user:phone", "text": "to the phone"})).await.unwrap();
    wait_texts(&phone, "user:desk", 2, LIMIT).await;

    // Stopped, messages wait at the relay; restarted, it has them all and its own history.
    phone.stop(LIMIT).unwrap();
    for i in 0..3 {
        desk.call("messages.send", json!({"to": "user:phone", "text": format!("while off {i}")}))
            .await
            .unwrap();
    }
    let phone = world.daemon("phone").foreign(&foreign).with_relay(&relay).start().unwrap();
    wait_connected(&phone).await;
    let texts = wait_texts(&phone, "user:desk", 5, LIMIT).await;
    assert_eq!(
        texts,
        ["from the phone", "to the phone", "while off 0", "while off 1", "while off 2"]
    );
    let (code, out, err) = foreign.cli(phone.socket(), &["history", "desk"], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("while off 2"), "{out}");
    let (code, out, err) = foreign.cli(phone.socket(), &["send", "desk", "back again"], &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(wait_texts(&desk, "user:phone", 6, LIMIT).await[5], "back again");
}
