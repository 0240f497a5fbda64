//! `device.info` from the system D-Bus: fake NetworkManager, ModemManager and hostnamed
//! served from this process on a private bus, a real daemon pointed at it. The daemon
//! follows what the services say, keeps no connection to the bus between calls, and
//! answers from sysfs and files once the services or the bus are gone.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use zbus::zvariant::OwnedObjectPath;

use letstalk_tests::{Bus, Daemon, World, eventually};

/// What the fake services report; the test changes it between calls.
#[derive(Debug, Clone)]
struct State {
    primary_connection_type: String,
    metered: u32,
    access_technologies: u32,
    signal: (u32, bool),
    operator: String,
    chassis: String,
}

type Shared = Arc<Mutex<State>>;

fn read<T>(state: &Shared, f: impl FnOnce(&State) -> T) -> T {
    f(&state.lock().unwrap())
}

struct NetworkManager(Shared);

#[zbus::interface(name = "org.freedesktop.NetworkManager")]
impl NetworkManager {
    #[zbus(property)]
    fn primary_connection_type(&self) -> String {
        read(&self.0, |s| s.primary_connection_type.clone())
    }

    #[zbus(property)]
    fn metered(&self) -> u32 {
        read(&self.0, |s| s.metered)
    }
}

struct Modem(Shared);

#[zbus::interface(name = "org.freedesktop.ModemManager1.Modem")]
impl Modem {
    #[zbus(property)]
    fn access_technologies(&self) -> u32 {
        read(&self.0, |s| s.access_technologies)
    }

    #[zbus(property)]
    fn signal_quality(&self) -> (u32, bool) {
        read(&self.0, |s| s.signal)
    }
}

struct Modem3gpp(Shared);

#[zbus::interface(name = "org.freedesktop.ModemManager1.Modem.Modem3gpp")]
impl Modem3gpp {
    #[zbus(property)]
    fn operator_name(&self) -> String {
        read(&self.0, |s| s.operator.clone())
    }
}

struct Hostname(Shared);

#[zbus::interface(name = "org.freedesktop.hostname1")]
impl Hostname {
    #[zbus(property)]
    fn chassis(&self) -> String {
        read(&self.0, |s| s.chassis.clone())
    }
}

const MODEM: &str = "/org/freedesktop/ModemManager1/Modem/0";
const OPERATOR: &str = "Letstalk Test Mobile";
const LTE: u32 = 1 << 14;
const UMTS: u32 = 1 << 5;
const NR5G: u32 = 1 << 15;

/// The three services on `bus`, on one connection (dropping it takes them all away).
async fn serve(bus: &Bus, state: &Shared) -> zbus::Connection {
    zbus::connection::Builder::address(bus.address())
        .unwrap()
        .name("org.freedesktop.NetworkManager")
        .unwrap()
        .name("org.freedesktop.ModemManager1")
        .unwrap()
        .name("org.freedesktop.hostname1")
        .unwrap()
        .serve_at("/org/freedesktop/NetworkManager", NetworkManager(state.clone()))
        .unwrap()
        .serve_at("/org/freedesktop/ModemManager1", zbus::fdo::ObjectManager)
        .unwrap()
        .serve_at(MODEM, Modem(state.clone()))
        .unwrap()
        .serve_at(MODEM, Modem3gpp(state.clone()))
        .unwrap()
        .serve_at("/org/freedesktop/hostname1", Hostname(state.clone()))
        .unwrap()
        .build()
        .await
        .unwrap()
}

/// `device.info`, which must answer within two seconds whatever the bus does.
async fn info(d: &Daemon) -> Value {
    let started = Instant::now();
    let info = d.call("device.info", json!({})).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2), "device.info took {:?}", started.elapsed());
    info
}

/// Waits until no connection of `pid` remains on the bus `conn` is connected to.
async fn no_connection_of(conn: &zbus::Connection, pid: u32) {
    let dbus = zbus::fdo::DBusProxy::new(conn).await.unwrap();
    eventually(Duration::from_secs(2), "the daemon to leave the bus", || {
        let dbus = dbus.clone();
        async move {
            for name in dbus.list_names().await.ok()? {
                if name.starts_with(':')
                    && dbus.get_connection_unix_process_id(name.inner().clone()).await.ok()
                        == Some(pid)
                {
                    return None;
                }
            }
            Some(())
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn device_info_follows_network_manager_modem_manager_and_hostnamed() {
    let world = World::new();
    let mut bus = world.bus("system-bus").unwrap();
    let alice = world.daemon("alice").with_system_bus(&bus).start().unwrap();

    // A bus without the services: the sysfs and file answer.
    let baseline = info(&alice).await;
    assert_eq!(baseline["network"]["cellular"], Value::Null);

    let state = Arc::new(Mutex::new(State {
        primary_connection_type: "gsm".into(),
        metered: 0,
        access_technologies: LTE | UMTS,
        signal: (71, true),
        operator: OPERATOR.into(),
        chassis: "handset".into(),
    }));
    let services = serve(&bus, &state).await;
    // The ObjectManager lists the modem the way ModemManager does.
    let managed = zbus::fdo::ObjectManagerProxy::builder(&services)
        .destination("org.freedesktop.ModemManager1")
        .unwrap()
        .path("/org/freedesktop/ModemManager1")
        .unwrap()
        .build()
        .await
        .unwrap()
        .get_managed_objects()
        .await
        .unwrap();
    assert!(managed.contains_key(&OwnedObjectPath::try_from(MODEM).unwrap()));

    let on_lte = info(&alice).await;
    let network = &on_lte["network"];
    assert_eq!(network["type"], "cellular", "{on_lte}");
    assert_eq!(network["cellular"]["technology"], "4g", "{on_lte}");
    assert_eq!(network["cellular"]["operator"], OPERATOR, "{on_lte}");
    assert_eq!(network["cellular"]["signal_percent"], 71, "{on_lte}");
    assert_eq!(network["metered"], true, "unknown metering on cellular is a guess: {on_lte}");
    assert_eq!(on_lte["hardware"]["chassis"], "handset", "{on_lte}");
    assert_eq!(on_lte["online"], true);
    no_connection_of(&services, alice.pid()).await;

    // NetworkManager's metered state wins over the guess; a 5G NR leg makes it 5G.
    {
        let mut s = state.lock().unwrap();
        s.metered = 1;
        s.signal = (40, false);
    }
    assert_eq!(info(&alice).await["network"]["metered"], true);
    {
        let mut s = state.lock().unwrap();
        s.access_technologies = NR5G | LTE;
        s.metered = 4;
        s.chassis = "tablet".into();
    }
    let on_5g = info(&alice).await;
    assert_eq!(on_5g["network"]["cellular"]["technology"], "5g", "{on_5g}");
    assert_eq!(on_5g["network"]["cellular"]["signal_percent"], 40, "{on_5g}");
    assert_eq!(on_5g["network"]["metered"], false, "{on_5g}");
    assert_eq!(on_5g["hardware"]["chassis"], "tablet", "{on_5g}");

    // Diagnostics reports carry the same device info.
    let report = alice.call("diagnostics.preview", json!({})).await.unwrap();
    assert_eq!(report["report"]["device"]["network"]["cellular"]["technology"], "5g");
    no_connection_of(&services, alice.pid()).await;

    // Wi-Fi: no cellular details even though a modem is there.
    state.lock().unwrap().primary_connection_type = "802-11-wireless".into();
    let on_wifi = info(&alice).await;
    assert_eq!(on_wifi["network"]["type"], "wifi", "{on_wifi}");
    assert_eq!(on_wifi["network"]["cellular"], Value::Null, "{on_wifi}");

    // The values are not logged.
    assert!(!alice.logs().contains(OPERATOR), "the operator name is in the daemon's log");

    // The services leave: sysfs and files again.
    drop(services);
    let gone = info(&alice).await;
    assert_eq!(gone["network"], baseline["network"], "{gone}");
    assert_eq!(gone["hardware"], baseline["hardware"], "{gone}");

    // The bus itself goes away: still the sysfs and file answer, as quickly.
    bus.stop();
    let no_bus = info(&alice).await;
    assert_eq!(no_bus["network"], baseline["network"], "{no_bus}");
    assert_eq!(no_bus["hardware"], baseline["hardware"], "{no_bus}");
}
