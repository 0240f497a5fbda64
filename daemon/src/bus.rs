//! Where the D-Bus buses are, judged without running any zbus code.
//!
//! On a device with no bus (embedded, a system service, containers, CI) the daemon then
//! never pages in the D-Bus code, which would stay resident for nothing (about 1 MiB).
//! The session bus holds the OS keyring (`store/keyring.rs`); the system bus holds
//! NetworkManager, ModemManager and hostnamed (`device/system_bus.rs`).

use std::path::{Path, PathBuf};

/// Where zbus looks for the system bus when `DBUS_SYSTEM_BUS_ADDRESS` is unset.
const SYSTEM_BUS_SOCKET: &str = "/run/dbus/system_bus_socket";

/// Whether a session bus may be there, judged as zbus finds it (`DBUS_SESSION_BUS_ADDRESS`,
/// else `$XDG_RUNTIME_DIR/bus`, else `/run/user/UID/bus`).
pub(crate) fn session_bus_may_exist() -> bool {
    let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(format!("/run/user/{}", rustix::process::geteuid().as_raw()))
    });
    bus_may_exist(
        std::env::var("DBUS_SESSION_BUS_ADDRESS").ok().as_deref(),
        &runtime_dir.join("bus"),
    )
}

/// Whether a system bus may be there, judged as zbus finds it (`DBUS_SYSTEM_BUS_ADDRESS`,
/// else `/run/dbus/system_bus_socket`).
pub(crate) fn system_bus_may_exist() -> bool {
    bus_may_exist(
        std::env::var("DBUS_SYSTEM_BUS_ADDRESS").ok().as_deref(),
        Path::new(SYSTEM_BUS_SOCKET),
    )
}

/// Whether the bus at `address` (or, without one, the socket at `default_socket`) may be
/// there. An address that cannot be checked on the file system (an abstract socket, TCP,
/// an escaped path) counts as present.
fn bus_may_exist(address: Option<&str>, default_socket: &Path) -> bool {
    let Some(address) = address else { return default_socket.exists() };
    address.split(';').filter(|a| !a.trim().is_empty()).any(|a| {
        let path = a
            .strip_prefix("unix:")
            .and_then(|params| params.split(',').find_map(|kv| kv.strip_prefix("path=")));
        match path {
            Some(p) if !p.contains('%') => Path::new(p).exists(),
            _ => true,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bus_is_looked_for_where_zbus_looks() {
        let dir = tempfile::tempdir().unwrap();
        let bus = dir.path().join("bus");
        let at = |p: &Path| format!("unix:path={},guid=0123", p.display());
        // No address: the default socket decides.
        assert!(!bus_may_exist(None, &bus));
        assert!(!bus_may_exist(Some(&at(&bus)), &bus));
        assert!(!bus_may_exist(Some(""), &bus));
        std::fs::write(&bus, "").unwrap();
        assert!(bus_may_exist(None, &bus));
        assert!(bus_may_exist(Some(&at(&bus)), Path::new("/nonexistent")));
        assert!(bus_may_exist(Some(&format!("unix:path=/nonexistent;{}", at(&bus))), &bus));
        // What cannot be checked is left to zbus.
        assert!(bus_may_exist(Some("unix:abstract=/tmp/dbus-x"), Path::new("/nonexistent")));
        assert!(bus_may_exist(Some("tcp:host=localhost,port=1"), Path::new("/nonexistent")));
    }
}
