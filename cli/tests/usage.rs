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
