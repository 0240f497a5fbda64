//! `letstalk-tui` usage: errors exit 2, `--help` and `--version` exit 0 without a
//! daemon. (Also makes `cargo test --workspace` build the binary that the pseudo-terminal
//! test in `tests/it/tui.rs` runs.)

use std::process::Command;

#[test]
fn usage_errors_exit_2_and_help_and_version_exit_0() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_letstalk-tui"))
            .args(args)
            .env("LETSTALK_SOCKET", "/nonexistent/letstalkd.sock")
            .output()
            .unwrap()
    };
    for bad in [&["--frobnicate"][..], &["--open"]] {
        assert_eq!(run(bad).status.code(), Some(2), "{bad:?}");
    }
    assert_eq!(run(&["--help"]).status.code(), Some(0));
    let out = run(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    let version = String::from_utf8(out.stdout).unwrap();
    assert!(
        version.starts_with(&format!("letstalk-tui {} (", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
}
