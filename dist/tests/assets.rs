//! `letstalk-dist assets DIR` as a packager runs it: every file it names exists, and bad
//! usage is a clear error. (Also makes `cargo nextest run --workspace` build the binary
//! that `dist/package.sh` uses.)

use std::process::Command;

#[test]
fn assets_writes_what_it_lists_and_refuses_bad_usage() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_letstalk-dist"))
        .arg("assets")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = String::from_utf8(out.stdout).unwrap();
    // Five programs, each a man page and bash, zsh and fish completions.
    assert_eq!(listed.lines().count(), 5 * 4, "{listed}");
    for path in listed.lines() {
        assert!(std::fs::metadata(path).unwrap().len() > 100, "{path} is (nearly) empty");
    }
    let bad = Command::new(env!("CARGO_BIN_EXE_letstalk-dist")).arg("frobnicate").output().unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("usage: letstalk-dist assets DIR"));
}
