// The build script of the three programs (included by `daemon/build.rs`, `cli/build.rs`
// and `relay/build.rs`): sets `LETSTALK_GIT_COMMIT` for `--version`, so a binary names
// the commit it was built from. `$LETSTALK_GIT_COMMIT` wins (a source tarball has no
// .git; a package build passes it); else `git rev-parse`; else "unknown".

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
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
