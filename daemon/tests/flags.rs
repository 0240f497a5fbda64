//! The `letstalkd` binary's flags as programs.md lists them. (Also makes `cargo test
//! --workspace` build the binary that the end-to-end tests in `tests/` start.)

use std::process::Command;

#[test]
fn help_lists_every_documented_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_letstalkd")).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in ["--config", "--data-dir", "--socket", "--relay", "--relay-cert", "--log"] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn unknown_flags_are_usage_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_letstalkd")).arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
