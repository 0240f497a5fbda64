//! The database key in the OS keyring: daemons in a private D-Bus session with
//! gnome-keyring's Secret Service keep their key there and no key file; `--keyring off`
//! keeps it in the file; a data directory whose keyring is gone, locked or no longer
//! holds the key refuses to start and writes nothing; `destroy_key` deletes the item.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;

use letstalk_tests::{DaemonSpec, SecretService, World, files_containing};

/// The attributes that find a data directory's item with `secret-tool`.
fn attrs(dir: &Path) -> [(&'static str, &str); 2] {
    [("application", "letstalk"), ("data-dir", dir.to_str().unwrap())]
}

/// Starts `spec`, stores a setting, stops it cleanly; returns the canonical data
/// directory and the key the keyring holds for it.
async fn first_run(spec: &DaemonSpec, session: &SecretService) -> (PathBuf, String) {
    let mut d = spec.start().unwrap();
    d.call("settings.set", json!({"read_receipts": false})).await.unwrap();
    let dir = std::fs::canonicalize(d.data_dir()).unwrap();
    let key = session.lookup(&attrs(&dir)).unwrap().expect("the key is in the keyring");
    let logs = d.logs();
    d.stop(Duration::from_secs(5)).unwrap();
    assert!(!logs.contains(&key), "the database key reached a log");
    (dir, key)
}

/// Every file in `dir` with its contents, to prove a failed start wrote nothing.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect()
}

#[tokio::test]
async fn a_new_data_directory_keeps_its_key_in_the_keyring() {
    let world = World::new();
    let session = world.secret_service().unwrap();
    let spec = world.daemon("alice").in_session(&session).env("LETSTALK_LOG", "trace");
    let (dir, key) = first_run(&spec, &session).await;
    assert_eq!(key.len(), 64, "{key:?}");
    assert!(key.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(!dir.join("db.key").exists(), "a key file was written beside the keyring");
    let location = std::fs::read_to_string(dir.join("db.key.location")).unwrap();
    assert!(location.contains("secret-service"), "{location}");
    assert!(files_containing(world.path(), key.as_bytes()).is_empty(), "the key is on disk");

    // The restarted daemon opens the same database; --keyring off changes nothing for a
    // data directory whose key is already in the keyring.
    let d = spec.clone().arg("--keyring").arg("off").start().unwrap();
    let settings = d.call("settings.get", json!({})).await.unwrap();
    assert_eq!(settings["read_receipts"], false, "{settings}");
    assert!(!d.logs().contains(&key), "the database key reached a log");
    drop(d);

    // A second data directory gets a key of its own.
    let (_, bob_key) = first_run(&world.daemon("bob").in_session(&session), &session).await;
    assert_ne!(bob_key, key);

    // keyring = off from each source puts a new key in the file, with the service right
    // there; the flag beats the environment.
    let carol = world.daemon("carol").in_session(&session).env("LETSTALK_KEYRING", "off");
    let dave = world.daemon("dave").in_session(&session);
    let config = dave.home.join("config").join("letstalk").join("letstalkd.toml");
    std::fs::create_dir_all(config.parent().unwrap()).unwrap();
    std::fs::write(&config, "keyring = \"off\"\n").unwrap();
    let mut file_daemons = Vec::new();
    for spec in [carol, dave] {
        let d = spec.start().unwrap();
        let dir = std::fs::canonicalize(d.data_dir()).unwrap();
        assert!(dir.join("db.key").exists(), "{}", spec.name);
        assert!(!dir.join("db.key.location").exists(), "{}", spec.name);
        assert_eq!(session.lookup(&attrs(&dir)).unwrap(), None, "{}", spec.name);
        file_daemons.push(d);
    }
    let erin = world.daemon("erin").in_session(&session).env("LETSTALK_KEYRING", "off");
    let d = erin.arg("--keyring").arg("auto").start().unwrap();
    assert!(!d.data_dir().join("db.key").exists());
    assert!(d.data_dir().join("db.key.location").exists());

    // The D-Bus connection is gone once the daemon runs: it holds as many sockets as one
    // that never talked to D-Bus.
    let never = sockets(file_daemons[0].pid());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while sockets(d.pid()) != never {
        assert!(std::time::Instant::now() < deadline, "a D-Bus connection stays open");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How many sockets process `pid` has open.
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

#[tokio::test]
async fn without_its_keyring_a_data_directory_refuses_to_start_and_writes_nothing() {
    let world = World::new();
    let mut session = world.secret_service().unwrap();
    let alice = world.daemon("alice").in_session(&session);
    let bob = world.daemon("bob").in_session(&session);
    let (alice_dir, _) = first_run(&alice, &session).await;
    let (bob_dir, _) = first_run(&bob, &session).await;

    let refused = |spec: &DaemonSpec, dir: &Path, expect: &str| {
        let before = snapshot(dir);
        let (status, stderr) = spec.start_failing().unwrap();
        assert_eq!(status.code(), Some(2), "{expect}: {stderr}");
        assert!(stderr.contains(expect), "{expect}: {stderr}");
        assert!(stderr.contains("OS keyring"), "{stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "one-line error: {stderr}");
        assert!(snapshot(dir) == before, "{expect}: the failed start changed {}", dir.display());
        assert!(!dir.join("db.key").exists());
    };

    // No session bus at all (the harness keeps daemons off the caller's).
    refused(&world.daemon("alice"), &alice_dir, "no Secret Service is reachable");
    // The item is gone.
    session.clear(&attrs(&bob_dir)).unwrap();
    refused(&bob, &bob_dir, "no longer holds it");
    // The collection is locked; a new data directory then gets a key file.
    session.lock().unwrap();
    refused(&alice, &alice_dir, "locked");
    let carol = world.daemon("carol").in_session(&session).start().unwrap();
    assert!(carol.data_dir().join("db.key").exists());
    drop(carol);
    // The service has left the bus.
    session.stop_keyring().unwrap();
    refused(&alice, &alice_dir, "no Secret Service is reachable");
    let dave = world.daemon("dave").in_session(&session).start().unwrap();
    assert!(dave.data_dir().join("db.key").exists());
}

#[tokio::test]
async fn destroy_key_deletes_the_keyring_item() {
    let world = World::new();
    let session = world.secret_service().unwrap();
    let alice = world.daemon("alice").in_session(&session);
    let (dir, _) = first_run(&alice, &session).await;

    // The library call runs in a child process whose environment names the private
    // session (this process's environment is the caller's and stays untouched).
    let out = session
        .command(&std::env::current_exe().unwrap().to_string_lossy())
        .args(["--exact", "keyring::destroy_key_child", "--nocapture", "--ignored"])
        .env(CHILD_DIR, &dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(String::from_utf8_lossy(&out.stdout).contains("destroyed: SecretService"));

    assert_eq!(session.lookup(&attrs(&dir)).unwrap(), None, "the item is still there");
    assert!(!dir.join("db.key.location").exists());
    assert!(dir.join("letstalk.db").exists(), "destroy_key removes the key, not the data");
    let (status, stderr) = alice.start_failing().unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("key file is missing"), "{stderr}");
}

#[tokio::test]
async fn restore_defaults_destroys_the_keyring_key_and_makes_a_new_one() {
    let world = World::new();
    let session = world.secret_service().unwrap();
    let spec = world.daemon("alice").in_session(&session);
    let (dir, old_key) = first_run(&spec, &session).await;
    let old_location = std::fs::read_to_string(dir.join("db.key.location")).unwrap();

    let mut d = spec.start().unwrap();
    d.call("privacy.restore_defaults", json!({"confirm": true})).await.unwrap();
    let settings = d.call("settings.get", json!({})).await.unwrap();
    assert_eq!(settings["read_receipts"], true, "the defaults are back: {settings}");
    let new_key = session.lookup(&attrs(&dir)).unwrap().expect("a new key in the keyring");
    assert_ne!(new_key, old_key);
    assert_eq!(session.count(&[("application", "letstalk")]).unwrap(), 1, "the old item is gone");
    assert_ne!(std::fs::read_to_string(dir.join("db.key.location")).unwrap(), old_location);
    assert!(!dir.join("db.key").exists());
    d.stop(Duration::from_secs(5)).unwrap();
    // The fresh database opens with the new key.
    let d = spec.start().unwrap();
    assert_eq!(d.call("settings.get", json!({})).await.unwrap()["read_receipts"], true);
}

const CHILD_DIR: &str = "LETSTALK_TEST_DESTROY_DIR";

/// The child half of `destroy_key_deletes_the_keyring_item`, which runs it in the
/// private session; ignored in a normal run (it would have no keyring to act on).
#[test]
#[ignore = "the child process of destroy_key_deletes_the_keyring_item"]
fn destroy_key_child() {
    let dir = std::env::var_os(CHILD_DIR).expect("run by destroy_key_deletes_the_keyring_item");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let destroyed = rt.block_on(letstalkd::store::destroy_key(Path::new(&dir))).unwrap();
    println!("destroyed: {destroyed:?}");
}
