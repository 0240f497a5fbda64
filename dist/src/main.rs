//! `letstalk-dist`: what a package needs besides the binaries, generated from the
//! programs' own clap definitions so it can never drift from them: a man page for each
//! program and bash, zsh and fish completions.
//!
//! `letstalk-dist assets DIR` writes `DIR/man/*.1` and `DIR/completions/{bash,zsh,fish}/*`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::CommandFactory;
use clap_complete::Shell;

/// The programs as clap sees them.
fn programs() -> Vec<clap::Command> {
    vec![
        letstalk_cli::command(),
        letstalkd::config::Args::command(),
        letstalk_relay::Args::command(),
        letstalk_tui::command(),
        letstalk_notify::command(),
    ]
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn assets(out: &Path) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for cmd in programs() {
        let name = cmd.get_name().to_owned();
        let mut page = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut page).context("rendering a man page")?;
        let path = out.join("man").join(format!("{name}.1"));
        write(&path, &page)?;
        written.push(path);
        for (shell, dir, file) in [
            (Shell::Bash, "bash", name.clone()),
            (Shell::Zsh, "zsh", format!("_{name}")),
            (Shell::Fish, "fish", format!("{name}.fish")),
        ] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd.clone(), name.as_str(), &mut script);
            let path = out.join("completions").join(dir).join(file);
            write(&path, &script)?;
            written.push(path);
        }
    }
    Ok(written)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [cmd, dir] if cmd == "assets" => {
            for path in assets(Path::new(dir))? {
                println!("{}", path.display());
            }
            Ok(())
        }
        _ => bail!("usage: letstalk-dist assets DIR"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_gets_a_man_page_and_three_completions() {
        let dir = std::env::temp_dir().join(format!("letstalk-dist-{}", std::process::id()));
        let written = assets(&dir).unwrap();
        assert_eq!(written.len(), 5 * 4);
        let page = std::fs::read_to_string(dir.join("man/letstalkd.1")).unwrap();
        // The flags come from the definition itself.
        assert!(page.contains("relay") && page.contains(".TH"), "{page}");
        let bash = std::fs::read_to_string(dir.join("completions/bash/letstalk")).unwrap();
        assert!(bash.contains("restore-defaults") && bash.contains("completions"));
        let page = std::fs::read_to_string(dir.join("man/letstalk-notify.1")).unwrap();
        assert!(page.contains("no\\-text"), "{page}");
        let page = std::fs::read_to_string(dir.join("man/letstalk-tui.1")).unwrap();
        assert!(page.contains("open"), "{page}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
