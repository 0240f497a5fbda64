//! The systemd units in `systemd/`: every unit passes `systemd-analyze verify`, and every
//! service stays under its exposure budget in `systemd-analyze security --offline=true`
//! (system services at most 1.5, the user service at most 2.0). CI installs systemd; a
//! missing `systemd-analyze` is a failure, never a skip.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

/// Units loaded by the system manager, verified together (they name each other).
const SYSTEM_UNITS: &[&str] =
    &["letstalk-relay.service", "letstalkd-system.service", "letstalkd-system.socket"];
/// Units loaded by a user manager (`systemd --user`), verified together with `--user`.
const USER_UNITS: &[&str] = &["letstalkd.service", "letstalkd.socket", "letstalk-notify.service"];
/// Services and their `--threshold` (ten times the highest allowed exposure).
const SYSTEM_SERVICES: &[(&str, u32)] =
    &[("letstalk-relay.service", 15), ("letstalkd-system.service", 15)];
const USER_SERVICES: &[(&str, u32)] = &[("letstalkd.service", 20), ("letstalk-notify.service", 20)];

/// The directives every service sets; `systemd-analyze security` scores most of them, the
/// rest (UMask, SystemCallErrorNumber, ...) are checked here so that they stay.
const HARDENING: &[&str] = &[
    "Type=notify",
    "NotifyAccess=main",
    "UMask=0077",
    "ProtectSystem=strict",
    "PrivateTmp=yes",
    "PrivateDevices=yes",
    "DevicePolicy=closed",
    "ProtectProc=invisible",
    "ProcSubset=pid",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "ProtectHostname=yes",
    "NoNewPrivileges=yes",
    "CapabilityBoundingSet=",
    "AmbientCapabilities=",
    "PrivateUsers=yes",
    "RestrictSUIDSGID=yes",
    "RemoveIPC=yes",
    "KeyringMode=private",
    "LockPersonality=yes",
    "RestrictRealtime=yes",
    "RestrictNamespaces=yes",
    "MemoryDenyWriteExecute=yes",
    "SystemCallArchitectures=native",
    "SystemCallFilter=@system-service",
    "SystemCallFilter=~@privileged @resources",
];

fn units_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("systemd")
}

/// A built program to stand in for `/usr/bin/NAME` (verify checks that `ExecStart=`
/// exists): the one next to this test binary (same profile and target dir), else the
/// workspace's `target/debug`, else `/bin/true` when it is not built: the checks are
/// about the unit files, not the program.
fn program(name: &str) -> PathBuf {
    let beside_test = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(|dir| dir.join(name)));
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug").join(name);
    beside_test
        .into_iter()
        .chain([workspace])
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("/bin/true"))
}

/// Copies `units` into `dir`, pointing `ExecStart=` at programs that exist on this host.
fn stage(units: &[&str], dir: &Path) -> Result<()> {
    let relay = program("letstalk-relay");
    let daemon = program("letstalkd");
    let notify = program("letstalk-notify");
    for unit in units {
        let source = units_dir().join(unit);
        let text = std::fs::read_to_string(&source)
            .with_context(|| format!("reading {}", source.display()))?;
        let text = text
            .replace("/usr/bin/letstalk-relay", &relay.to_string_lossy())
            .replace("/usr/bin/letstalkd", &daemon.to_string_lossy())
            .replace("/usr/bin/letstalk-notify", &notify.to_string_lossy());
        std::fs::write(dir.join(unit), text)?;
    }
    Ok(())
}

/// Runs `systemd-analyze ARGS` in `dir`, with a private `XDG_RUNTIME_DIR` (a user manager
/// needs one, even offline, and `%t` expands to it).
fn analyze(dir: &Path, args: &[&str]) -> Result<Output> {
    let runtime = dir.join("runtime");
    std::fs::create_dir_all(&runtime)?;
    std::fs::set_permissions(&runtime, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let mut command = Command::new("systemd-analyze");
    command
        .args(args)
        .current_dir(dir)
        .env("XDG_RUNTIME_DIR", &runtime)
        .env("SYSTEMD_LOG_COLOR", "0")
        .env("SYSTEMD_PAGER", "cat");
    run(command)
}

/// Runs a systemd tool; a missing tool is a failure with a hint, never a skip.
fn run(mut command: Command) -> Result<Output> {
    let program = command.get_program().to_string_lossy().into_owned();
    match command.output() {
        Ok(out) => Ok(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "{program} is not installed (install systemd, e.g. `apt-get install systemd`): \
             the systemd unit tests need it and do not skip"
        ),
        Err(e) => Err(e).with_context(|| format!("running {program}")),
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `verify` exits 0 on warnings such as an unknown (misspelt) key: any line that names one
/// of our units counts as a failure too.
fn verify(units: &[&str], user: bool) -> Result<()> {
    let dir = tempfile::tempdir()?;
    stage(units, dir.path())?;
    let mut args = Vec::new();
    if user {
        args.push("--user");
    }
    args.push("verify");
    args.extend(units);
    let out = analyze(dir.path(), &args)?;
    let output = text(&out);
    let complaints: Vec<&str> =
        output.lines().filter(|l| units.iter().any(|u| l.contains(u))).collect();
    if !out.status.success() || !complaints.is_empty() {
        bail!("systemd-analyze {} failed ({}):\n{output}", args.join(" "), out.status);
    }
    Ok(())
}

/// Scores one service; fails above `threshold` (tenths) or on any warning about the unit.
fn security(unit: &str, threshold: u32, user: bool) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    stage(&[unit], dir.path())?;
    let threshold_arg = format!("--threshold={threshold}");
    let mut args = Vec::new();
    if user {
        args.push("--user");
    }
    args.extend(["security", "--offline=true", threshold_arg.as_str(), "--no-pager", unit]);
    let out = analyze(dir.path(), &args)?;
    let output = text(&out);
    let prefix = format!("Overall exposure level for {unit}:");
    let score = output
        .lines()
        .find_map(|l| l.split_once(prefix.as_str()))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse::<f64>().ok())
        .with_context(|| {
            format!("no exposure score in the output of {}:\n{output}", args.join(" "))
        })?;
    println!("{unit}: exposure {score} (allowed {:.1})", f64::from(threshold) / 10.0);
    let warnings: Vec<&str> = output
        .lines()
        .filter(|l| l.contains(&format!("{unit}:")) && !l.contains("Overall exposure"))
        .collect();
    if !out.status.success() || score * 10.0 > f64::from(threshold) + 1e-9 || !warnings.is_empty() {
        bail!(
            "systemd-analyze {} failed ({}), exposure {score}:\n{output}",
            args.join(" "),
            out.status
        );
    }
    Ok(score)
}

#[test]
fn system_units_verify() {
    verify(SYSTEM_UNITS, false).unwrap();
}

#[test]
fn user_units_verify() {
    verify(USER_UNITS, true).unwrap();
}

#[test]
fn system_services_are_hardened() {
    for (unit, threshold) in SYSTEM_SERVICES {
        security(unit, *threshold, false).unwrap();
    }
}

#[test]
fn user_service_is_hardened() {
    for (unit, threshold) in USER_SERVICES {
        security(unit, *threshold, true).unwrap();
    }
}

#[test]
fn services_keep_the_hardening_baseline() {
    for (unit, _) in SYSTEM_SERVICES.iter().chain(USER_SERVICES) {
        let text = std::fs::read_to_string(units_dir().join(unit)).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for directive in HARDENING {
            assert!(lines.contains(directive), "{unit} lacks `{directive}`");
        }
        // --socket would win over the socket systemd passes (ipc.md, Transport), and the
        // daemon would then refuse the path systemd already listens on.
        for exec in lines.iter().filter(|l| l.starts_with("ExecStart=")) {
            assert!(!exec.contains("--socket"), "{unit}: `{exec}` would defeat socket activation");
        }
    }
}

#[test]
fn sockets_listen_on_the_protocol_default_paths() {
    let cases = [
        ("letstalkd.socket", "ListenStream=%t/letstalk/letstalkd.sock", "SocketMode=0600"),
        ("letstalkd-system.socket", "ListenStream=/run/letstalk/letstalkd.sock", "SocketMode=0660"),
    ];
    for (unit, listen, mode) in cases {
        let text = std::fs::read_to_string(units_dir().join(unit)).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        assert!(lines.contains(&listen), "{unit} lacks `{listen}`");
        assert!(lines.contains(&mode), "{unit} lacks `{mode}`");
    }
}

#[test]
fn sysusers_creates_the_service_user() {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("etc")).unwrap();
    let mut command = Command::new("systemd-sysusers");
    command
        .arg(format!("--root={}", root.path().display()))
        .arg(units_dir().join("letstalk.sysusers"));
    let out = run(command).unwrap();
    assert!(out.status.success(), "systemd-sysusers failed:\n{}", text(&out));
    let passwd = std::fs::read_to_string(root.path().join("etc/passwd")).unwrap();
    let group = std::fs::read_to_string(root.path().join("etc/group")).unwrap();
    let user = passwd.lines().find(|l| l.starts_with("letstalk:")).expect("user letstalk");
    let gid = group.lines().find(|l| l.starts_with("letstalk:")).expect("group letstalk");
    let gid = gid.split(':').nth(2).unwrap();
    assert_eq!(user.split(':').nth(3), Some(gid), "letstalk's primary group is letstalk: {user}");
    assert!(user.ends_with(":/usr/sbin/nologin"), "no login shell: {user}");

    // The system units name exactly that user and group.
    let service = std::fs::read_to_string(units_dir().join("letstalkd-system.service")).unwrap();
    let socket = std::fs::read_to_string(units_dir().join("letstalkd-system.socket")).unwrap();
    for (text, line) in [
        (&service, "User=letstalk"),
        (&service, "Group=letstalk"),
        (&socket, "SocketGroup=letstalk"),
    ] {
        assert!(text.lines().any(|l| l.trim() == line), "missing `{line}`");
    }
}
