//! Starting and stopping: one daemon per data directory and socket, private files,
//! stale sockets, signals, configuration precedence and bad configuration.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use serde_json::json;

use letstalk_tests::World;

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn private_files_and_a_second_daemon_is_refused() {
    let world = World::new();
    let a = world.daemon("alice").start().unwrap();
    assert_eq!(mode(a.socket()), 0o600);
    assert_eq!(mode(a.socket().parent().unwrap()), 0o700);
    assert_eq!(mode(a.data_dir()), 0o700);
    for f in ["letstalk.db", "db.key"] {
        assert_eq!(mode(&a.data_dir().join(f)), 0o600, "{f}");
    }

    // Same data directory, another socket: refused by the lock.
    let mut second = world.daemon("alice");
    second.socket = world.path().join("other.sock");
    let (status, stderr) = second.start_failing().unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("already using data directory"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one-line error: {stderr}");
    assert!(!second.socket.exists());

    // Another data directory, the same live socket: never taken over.
    let mut third = world.daemon("bob");
    third.socket = a.socket().to_path_buf();
    let (status, stderr) = third.start_failing().unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("another letstalkd is serving"), "{stderr}");
    // The first daemon is untouched.
    assert!(a.call("system.status", json!({})).await.is_ok());
}

#[tokio::test]
async fn a_stale_socket_is_replaced_and_sigterm_stops_cleanly() {
    let world = World::new();
    let spec = world.daemon("alice");
    std::fs::create_dir_all(spec.socket.parent().unwrap()).unwrap();
    // A socket file nobody listens on, as a crashed daemon leaves behind.
    drop(std::os::unix::net::UnixListener::bind(&spec.socket).unwrap());
    assert!(spec.socket.exists());
    let mut d = spec.start().unwrap();
    assert!(d.call("system.status", json!({})).await.is_ok());
    // A file that is not a socket is never deleted.
    let mut other = world.daemon("bob");
    std::fs::create_dir_all(other.socket.parent().unwrap()).unwrap();
    std::fs::write(&other.socket, "precious").unwrap();
    other.args.clear();
    let (status, stderr) = other.start_failing().unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert_eq!(std::fs::read_to_string(&other.socket).unwrap(), "precious");

    // SIGHUP re-reads the config file: a new log filter takes effect, a bad one is
    // refused with a warning, and the daemon serves on either way.
    let config = spec.home.join("config").join("letstalk").join("letstalkd.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(&config, "log = \"letstalkd=trace\"\n").unwrap();
    d.signal("HUP");
    letstalk_tests::eventually(Duration::from_secs(10), "the new log level", || async {
        d.logs().contains("reloaded the log level").then_some(())
    })
    .await
    .unwrap();
    std::fs::write(&config, "log = \"[not a filter\"\n").unwrap();
    d.signal("HUP");
    letstalk_tests::eventually(Duration::from_secs(10), "the bad filter refused", || async {
        d.logs().contains("config reload failed").then_some(())
    })
    .await
    .unwrap();
    assert!(d.call("system.status", json!({})).await.is_ok());
    assert!(d.is_running());

    let (status, took) = d.stop(Duration::from_secs(5)).unwrap();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(5));
    assert!(!spec.socket.exists(), "socket file left behind");
    assert!(d.logs().contains("stopped"));
}

#[tokio::test]
async fn configuration_precedence_flag_env_file() {
    let world = World::new();
    let base = world.daemon("alice");
    let config = base.home.join("config").join("letstalk").join("letstalkd.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    let file_socket = base.home.join("from-file.sock");
    let env_socket = base.home.join("from-env.sock");
    std::fs::write(
        &config,
        format!("socket = {:?}\nlog = \"info\"\n", file_socket.to_str().unwrap()),
    )
    .unwrap();

    // The harness passes --socket; build commands by hand to vary the sources.
    let start = |env: Option<&std::path::Path>, flag: Option<&std::path::Path>| {
        let mut spec = base.clone();
        spec.socket = flag.map(|p| p.to_path_buf()).unwrap_or_default();
        spec.env.clear();
        if let Some(e) = env {
            spec.env.push(("LETSTALK_SOCKET".into(), e.to_str().unwrap().into()));
        }
        spec
    };
    // File only.
    let mut cmd_spec = start(None, None);
    cmd_spec.socket = std::path::PathBuf::new();
    let d = start_without_socket_flag(&cmd_spec);
    wait_for(&file_socket).await;
    drop(d);
    // Env beats file.
    let d = start_without_socket_flag(&start(Some(&env_socket), None));
    wait_for(&env_socket).await;
    drop(d);
    // Flag beats env.
    let flag_socket = base.home.join("from-flag.sock");
    let mut spec = start(Some(&env_socket), None);
    spec.socket = flag_socket.clone();
    let d = spec.start().unwrap();
    assert!(d.call("system.status", json!({})).await.is_ok());
}

/// Starts letstalkd without --socket (the harness always passes one).
fn start_without_socket_flag(spec: &letstalk_tests::DaemonSpec) -> KillOnDrop {
    let mut cmd = std::process::Command::new(letstalk_tests::bin("letstalkd"));
    cmd.arg("--data-dir").arg(&spec.data_dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("LETSTALK_") || k == "NOTIFY_SOCKET" {
            cmd.env_remove(k);
        }
    }
    cmd.env("XDG_CONFIG_HOME", spec.home.join("config")).env("HOME", &spec.home);
    letstalk_tests::no_dbus(&mut cmd, &spec.home);
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    KillOnDrop(cmd.spawn().unwrap())
}

struct KillOnDrop(std::process::Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_for(socket: &std::path::Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(c) = letstalk_tests::Client::connect(socket).await
            && c.call_value("system.status", json!({})).await.is_ok()
        {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "no daemon on {}", socket.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn bad_configuration_is_one_line_exit_2_and_writes_nothing() {
    let world = World::new();
    let cases: Vec<(Vec<String>, Option<&str>, &str)> = vec![
        (
            vec!["--config".into(), "/nonexistent/letstalkd.toml".into()],
            None,
            "cannot read config file",
        ),
        (vec![], Some("no_such_key = 1\n"), "invalid config file"),
        (vec![], Some("relay = 5\n"), "invalid config file"),
        (vec!["--relay".into(), "no-port".into()], None, "invalid relay address"),
        (vec!["--relay-cert".into(), "/nonexistent.pem".into()], None, "relay certificate"),
        (vec!["--log".into(), "[[[".into()], None, "invalid log level"),
    ];
    for (i, (args, file, expect)) in cases.into_iter().enumerate() {
        let mut spec = world.daemon(&format!("case{i}"));
        spec.args = args;
        if let Some(text) = file {
            let path = spec.home.join("config").join("letstalk").join("letstalkd.toml");
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let (status, stderr) = spec.start_failing().unwrap();
        assert_eq!(status.code(), Some(2), "case {i}: {stderr}");
        assert!(stderr.contains(expect), "case {i}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "case {i}: {stderr}");
        assert!(!spec.data_dir.exists(), "case {i} wrote its data directory");
        assert!(!spec.socket.exists(), "case {i} created its socket");
    }
    // A data directory that is a file is refused too.
    let spec = world.daemon("file");
    std::fs::create_dir_all(&spec.home).unwrap();
    std::fs::write(&spec.data_dir, "x").unwrap();
    let (status, stderr) = spec.start_failing().unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("not a directory"), "{stderr}");
}

#[tokio::test]
async fn socket_activation_and_readiness() {
    // systemd-socket-activate passes a listening socket exactly as systemd does
    // (LISTEN_FDS, LISTEN_PID); the daemon serves on it without binding its own.
    let Some(activate) = ["/usr/bin/systemd-socket-activate", "/bin/systemd-socket-activate"]
        .into_iter()
        .map(std::path::Path::new)
        .find(|p| p.exists())
    else {
        panic!("systemd-socket-activate is required (Debian package systemd)");
    };
    let world = World::new();
    let spec = world.daemon("alice");
    std::fs::create_dir_all(&spec.home).unwrap();
    let socket = spec.home.join("activated.sock");
    let mut cmd = std::process::Command::new(activate);
    cmd.arg("-l")
        .arg(&socket)
        .arg(letstalk_tests::bin("letstalkd"))
        .arg("--data-dir")
        .arg(&spec.data_dir);
    for (k, _) in std::env::vars() {
        if k.starts_with("LETSTALK_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("XDG_CONFIG_HOME", spec.home.join("config"));
    letstalk_tests::no_dbus(&mut cmd, &spec.home);
    cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
    let _child = KillOnDrop(cmd.spawn().unwrap());
    // The socket exists as soon as the activator listens; the first connection starts
    // the daemon, which must then answer on it.
    wait_for(&socket).await;
    let info = letstalk_tests::Client::connect(&socket).await.unwrap();
    assert!(info.call_value("settings.get", json!({})).await.is_ok());
}
