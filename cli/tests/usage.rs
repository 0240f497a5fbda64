//! `letstalk` usage errors exit 2 (programs.md). (Also makes `cargo test --workspace`
//! build the binary that the end-to-end tests in `tests/` run.)

use std::process::Command;

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let run =
        |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_letstalk")).args(args).output().unwrap();
    assert_eq!(run(&[]).status.code(), Some(2));
    assert_eq!(run(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(run(&["rpc", "a.b", "{bad"]).status.code(), Some(2));
    assert_eq!(run(&["--help"]).status.code(), Some(0));
}

/// `--version` names the commit the binary was built from; `completions` prints a script
/// for each shell without a daemon (bash's is checked by bash itself in .ci/run).
#[test]
fn version_names_the_commit_and_completions_need_no_daemon() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_letstalk"))
            .args(args)
            .env("LETSTALK_SOCKET", "/nonexistent/letstalkd.sock")
            .output()
            .unwrap()
    };
    let out = run(&["--version"]);
    let version = String::from_utf8(out.stdout).unwrap();
    let expected = format!("letstalk {} (", env!("CARGO_PKG_VERSION"));
    assert!(version.starts_with(&expected), "{version}");
    let commit = version.trim().trim_start_matches(&expected).trim_end_matches(')');
    assert!(
        commit == "unknown" || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{version}"
    );
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = String::from_utf8(out.stdout).unwrap();
        assert!(script.contains("send-file") && script.contains("restore-defaults"), "{shell}");
    }
    assert_eq!(run(&["completions", "tcsh"]).status.code(), Some(2));
}
