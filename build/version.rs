// The build script of the three programs (included by `daemon/build.rs`, `cli/build.rs`
// and `relay/build.rs`): sets `LETSTALK_GIT_COMMIT` for `--version`, so a binary names
// the commit it was built from. `$LETSTALK_GIT_COMMIT` wins (a source tarball has no
// .git; a package build passes it); else `git rev-parse`; else "unknown".
//
// It also packs the programs' relative relocations (DT_RELR) on x86-64 GNU/Linux: a
// PIE keeps one 24-byte RELA entry per pointer to fix up at start (40,000 in letstalkd,
// 0.9 MiB the dynamic loader reads, and which then stays resident), RELR a bitmap of a
// few KiB. Needs glibc 2.36 (the binary then requires `GLIBC_ABI_DT_RELR`, so an older
// glibc refuses it by name instead of crashing) and GNU ld 2.38 or lld; Android,
// ChromeOS and Fedora ship their systems this way. Not yet for ARM: Debian 12's cross
// linkers (binutils 2.40) ignore the option there with a warning.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    let cfg = |key: &str| std::env::var(key).unwrap_or_default();
    if cfg("CARGO_CFG_TARGET_OS") == "linux"
        && cfg("CARGO_CFG_TARGET_ENV") == "gnu"
        && cfg("CARGO_CFG_TARGET_ARCH") == "x86_64"
    {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo:rerun-if-env-changed=LETSTALK_GIT_COMMIT");
    let commit = match std::env::var("LETSTALK_GIT_COMMIT") {
        Ok(c) if !c.trim().is_empty() => c.trim().to_owned(),
        _ => {
            // Rebuild when HEAD moves (a commit, a checkout): HEAD itself and the ref it
            // names, wherever this checkout (or worktree) keeps them.
            for rel in ["HEAD", "packed-refs"] {
                if let Some(p) = git(&["rev-parse", "--git-path", rel]) {
                    println!("cargo:rerun-if-changed={}", PathBuf::from(p).display());
                }
            }
            if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"])
                && let Some(p) = git(&["rev-parse", "--git-path", &head_ref])
            {
                println!("cargo:rerun-if-changed={}", PathBuf::from(p).display());
            }
            git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".to_owned())
        }
    };
    println!("cargo:rustc-env=LETSTALK_GIT_COMMIT={commit}");
}
