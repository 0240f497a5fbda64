//! What the daemon knows about the device: hardware, OS, network and the
//! application-specific device ID.
//!
//! Without D-Bus (embedded devices, containers, CI) the network comes from
//! `/sys/class/net` and the kernel's routing tables: the interface carrying the default
//! route, Wi-Fi if it has `wireless` or `phy80211`, cellular if its uevent says
//! `DEVTYPE=wwan`, Ethernet otherwise. That answer ([`network`]) is what the network
//! watcher and the hot paths use. `device.info` and diagnostics reports go further
//! ([`hardware_and_network`]): they also ask the system D-Bus (`device/system_bus.rs`)
//! for NetworkManager's view of the primary connection and whether it is metered,
//! ModemManager's access technology, operator and signal, and hostnamed's chassis, and
//! fall back to the sysfs and file answers for whatever it does not say.

mod system_bus;

use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use letstalk_ipc::types::{
    Cellular, CellularTechnology, Chassis, Hardware, Network, NetworkType, Os,
};

/// The `device_id`: systemd's application-specific machine ID, HMAC-SHA256 keyed with the
/// machine ID over our application ID, truncated to 128 bits and marked as a UUID v4 (as
/// `sd_id128_get_machine_app_specific` does). The raw machine ID never leaves the device.
pub const APP_ID: [u8; 16] = [
    0xf6, 0x93, 0x4a, 0x78, 0xea, 0x79, 0x4d, 0x5d, 0x90, 0xff, 0xb5, 0xf1, 0xb3, 0xcb, 0x3c, 0xcc,
];

/// Derives the device ID from a machine ID (32 hex digits).
pub fn app_specific_id(machine_id: &[u8; 16], app_id: &[u8; 16]) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(machine_id) else {
        // HMAC accepts keys of any length; this branch cannot run.
        return String::new();
    };
    mac.update(app_id);
    let digest = mac.finalize().into_bytes();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    hex::encode(id)
}

/// The device ID of this installation: [`app_specific_id`] of the machine ID
/// (`/etc/machine-id` or D-Bus's copy; the seed itself on a machine without one) over
/// our application ID mixed with `install_seed`, a random value kept in the encrypted
/// database. "Restore defaults" replaces the database, so a reset device gets a new
/// device ID, and nothing about the old one survives.
pub fn device_id(install_seed: &[u8; 16]) -> String {
    let machine = ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .and_then(|s| parse_id(s.trim()))
        .unwrap_or(*install_seed);
    app_specific_id(&machine, &install_app_id(install_seed))
}

/// Our application ID for one installation: HMAC-SHA256 keyed with [`APP_ID`] over the
/// installation's seed, truncated to 128 bits.
fn install_app_id(install_seed: &[u8; 16]) -> [u8; 16] {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&APP_ID) else {
        // HMAC accepts keys of any length; this branch cannot run.
        return APP_ID;
    };
    mac.update(install_seed);
    let digest = mac.finalize().into_bytes();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

/// The installation's seed for the device ID, made on first use (in the `meta` table of
/// the encrypted database).
pub fn install_seed(conn: &rusqlite::Connection) -> Result<[u8; 16], crate::store::StoreError> {
    use rusqlite::OptionalExtension;
    let stored: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'device_seed'", [], |r| r.get(0))
        .optional()?;
    if let Some(seed) = stored.as_deref().and_then(parse_id) {
        return Ok(seed);
    }
    let seed: [u8; 16] = rand::random();
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('device_seed', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [hex::encode(seed)],
    )?;
    Ok(seed)
}

fn parse_id(s: &str) -> Option<[u8; 16]> {
    let bytes = hex::decode(s).ok()?;
    bytes.try_into().ok()
}

fn read_trimmed(path: impl AsRef<Path>) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim_matches(|c: char| c.is_whitespace() || c == '\0').to_owned();
    (!s.is_empty()).then_some(s)
}

/// Hardware model, vendor and chassis, from files only.
pub fn hardware() -> Hardware {
    hardware_with(None)
}

/// Hardware and network as `device.info` reports them: `sysfs_network` (what [`network`]
/// said) refined by the system bus, and the chassis from hostnamed before the files. One
/// short D-Bus connection, dropped before this returns; without a bus, or when it does
/// not answer within a second, the result is the sysfs and file answer.
pub async fn hardware_and_network(sysfs_network: Network) -> (Hardware, Network) {
    let facts = system_bus::query().await;
    let chassis = facts.chassis.as_deref().and_then(parse_chassis);
    (hardware_with(chassis), refine_network(sysfs_network, &facts))
}

/// [`hardware`], with `chassis` (hostnamed's) taking precedence over the files.
fn hardware_with(chassis: Option<Chassis>) -> Hardware {
    let model = read_trimmed("/proc/device-tree/model")
        .or_else(|| read_trimmed("/sys/firmware/devicetree/base/model"))
        .or_else(|| read_trimmed("/sys/class/dmi/id/product_name"));
    let vendor = read_trimmed("/sys/class/dmi/id/sys_vendor");
    let chassis = chassis
        .or_else(chassis_from_machine_info)
        .or_else(|| {
            let vendor = vendor.as_deref().unwrap_or("");
            let product = model.as_deref().unwrap_or("");
            is_vm(vendor, product).then_some(Chassis::Vm)
        })
        .or_else(|| {
            read_trimmed("/sys/class/dmi/id/chassis_type").and_then(|t| chassis_from_dmi(&t))
        })
        .or_else(|| read_trimmed("/proc/device-tree/compatible").map(|_| Chassis::Embedded))
        .unwrap_or(Chassis::Unknown);
    Hardware { model, vendor, chassis }
}

fn chassis_from_machine_info() -> Option<Chassis> {
    let text = std::fs::read_to_string("/etc/machine-info").ok()?;
    let value = text.lines().find_map(|l| l.strip_prefix("CHASSIS="))?;
    parse_chassis(value.trim_matches('"'))
}

fn parse_chassis(s: &str) -> Option<Chassis> {
    Some(match s {
        "handset" | "watch" => Chassis::Handset,
        "tablet" => Chassis::Tablet,
        "laptop" | "convertible" => Chassis::Laptop,
        "desktop" => Chassis::Desktop,
        "server" => Chassis::Server,
        "embedded" => Chassis::Embedded,
        "vm" | "container" => Chassis::Vm,
        _ => return None,
    })
}

fn is_vm(vendor: &str, product: &str) -> bool {
    ["QEMU", "KVM", "VMware", "VirtualBox", "Xen", "Microsoft Corporation", "Amazon EC2", "Google"]
        .iter()
        .any(|v| vendor.contains(v) || product.contains(v))
}

/// SMBIOS chassis types (DMTF DSP0134, table 17).
fn chassis_from_dmi(t: &str) -> Option<Chassis> {
    Some(match t.parse::<u8>().ok()? {
        3..=7 | 13 | 15 | 16 | 24 => Chassis::Desktop,
        8..=10 | 14 | 31 | 32 => Chassis::Laptop,
        11 => Chassis::Handset,
        30 => Chassis::Tablet,
        17 | 23 | 25 | 28 | 29 => Chassis::Server,
        33..=36 => Chassis::Embedded,
        _ => return None,
    })
}

/// The name a device gives itself when its user chose none: the host name, else the
/// hardware model, else the OS name; never empty, at most 64 characters, no control
/// characters (as `devices.rename` takes a name).
pub fn default_name() -> String {
    let host = sysinfo::System::host_name()
        .or_else(|| read_trimmed("/proc/sys/kernel/hostname"))
        .filter(|h| h != "localhost");
    name_from([host, hardware().model, sysinfo::System::name()])
}

/// The first of `candidates` that is a usable name once cleaned, else "Letstalk device".
fn name_from(candidates: impl IntoIterator<Item = Option<String>>) -> String {
    candidates
        .into_iter()
        .flatten()
        .map(|c| {
            let clean: String = c.chars().filter(|ch| !ch.is_control()).take(64).collect();
            clean.trim().to_owned()
        })
        .find(|c| !c.is_empty())
        .unwrap_or_else(|| "Letstalk device".to_owned())
}

/// OS name and version, kernel and architecture.
pub fn os() -> Os {
    Os {
        name: sysinfo::System::name(),
        version: sysinfo::System::os_version(),
        kernel: sysinfo::System::kernel_version(),
        arch: std::env::consts::ARCH.to_owned(),
    }
}

/// The network as seen from sysfs and the routing table.
pub fn network() -> Network {
    network_from(Path::new("/sys/class/net"), &default_route_interfaces())
}

fn network_from(sys_net: &Path, defaults: &[String]) -> Network {
    let Some(iface) = defaults.first() else {
        return Network { kind: NetworkType::None, interface: None, cellular: None, metered: None };
    };
    let dir = sys_net.join(iface);
    let uevent = std::fs::read_to_string(dir.join("uevent")).unwrap_or_default();
    let kind = if dir.join("wireless").exists() || dir.join("phy80211").exists() {
        NetworkType::Wifi
    } else if uevent.lines().any(|l| l == "DEVTYPE=wwan") {
        NetworkType::Cellular
    } else if read_trimmed(dir.join("type")).as_deref() == Some("1") {
        NetworkType::Ethernet
    } else {
        NetworkType::Unknown
    };
    Network { kind, interface: Some(iface.clone()), cellular: None, metered: metered_guess(kind) }
}

/// Without a better source, a cellular network is taken to be metered.
fn metered_guess(kind: NetworkType) -> Option<bool> {
    (kind == NetworkType::Cellular).then_some(true)
}

/// The sysfs network refined by what the system bus said: NetworkManager's type and
/// metered state where it knows them, and the first modem's details when the network is
/// cellular. Whatever the bus left unknown keeps the sysfs answer.
fn refine_network(mut network: Network, facts: &system_bus::Facts) -> Network {
    if let Some(kind) = facts.primary_connection_type.as_deref().and_then(nm_connection_type) {
        network.kind = kind;
    }
    network.metered = facts.metered.and_then(nm_metered).or_else(|| metered_guess(network.kind));
    if network.kind == NetworkType::Cellular
        && let Some(modem) = &facts.modem
    {
        network.cellular = Some(Cellular {
            technology: modem.access_technologies.and_then(cellular_generation),
            operator: modem.operator.clone().filter(|o| !o.trim().is_empty()),
            signal_percent: modem.signal_percent.and_then(|p| u8::try_from(p.min(100)).ok()),
        });
    }
    network
}

/// NetworkManager's `PrimaryConnectionType` (a connection setting's name) as a network
/// type; `None` for what says nothing about the link (no primary connection, VPNs,
/// bridges, tunnels…), where the sysfs answer stands.
fn nm_connection_type(setting: &str) -> Option<NetworkType> {
    Some(match setting {
        "802-11-wireless" | "wifi-p2p" => NetworkType::Wifi,
        "gsm" | "cdma" => NetworkType::Cellular,
        "802-3-ethernet" => NetworkType::Ethernet,
        _ => return None,
    })
}

/// NetworkManager's `NMMetered`: 1 yes, 2 no, 3 guessed yes, 4 guessed no, 0 unknown.
fn nm_metered(value: u32) -> Option<bool> {
    match value {
        1 | 3 => Some(true),
        2 | 4 => Some(false),
        _ => None,
    }
}

/// `MMModemAccessTechnology` bits of each generation.
const ACCESS_2G: u32 = 1 << 1 | 1 << 2 | 1 << 3 | 1 << 4; // GSM, GSM compact, GPRS, EDGE
const ACCESS_3G: u32 = 0x1ff << 5; // UMTS, HSDPA, HSUPA, HSPA, HSPA+, 1xRTT, EV-DO 0/A/B
const ACCESS_4G: u32 = 1 << 14 | 1 << 16 | 1 << 17; // LTE, LTE Cat-M, LTE NB-IoT
const ACCESS_5G: u32 = 1 << 15; // 5G NR

/// The newest generation among ModemManager's access technologies (a modem on LTE with
/// a 5G NR leg reports both: that is 5G).
fn cellular_generation(access_technologies: u32) -> Option<CellularTechnology> {
    [
        (ACCESS_5G, CellularTechnology::G5),
        (ACCESS_4G, CellularTechnology::G4),
        (ACCESS_3G, CellularTechnology::G3),
        (ACCESS_2G, CellularTechnology::G2),
    ]
    .into_iter()
    .find_map(|(bits, generation)| (access_technologies & bits != 0).then_some(generation))
}

/// Interfaces carrying a default route (IPv4 first, then IPv6).
fn default_route_interfaces() -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(text) = std::fs::read_to_string("/proc/net/route") {
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if let [iface, dest, _gw, _flags, _, _, _, mask, ..] = cols.as_slice()
                && *dest == "00000000"
                && *mask == "00000000"
                && !out.iter().any(|o| o == iface)
            {
                out.push((*iface).to_owned());
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string("/proc/net/ipv6_route") {
        for line in text.lines() {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if let [dest, plen, .., iface] = cols.as_slice()
                && dest.bytes().all(|b| b == b'0')
                && *plen == "00"
                && *iface != "lo"
                && !out.iter().any(|o| o == iface)
            {
                out.push((*iface).to_owned());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_name_is_never_empty_nor_too_long() {
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(name_from([some("  pine64 "), some("x")]), "pine64");
        assert_eq!(name_from([None, some(" \t\u{7}"), some("ThinkPad X1")]), "ThinkPad X1");
        assert_eq!(name_from([some("a\nb")]), "ab");
        assert_eq!(name_from([None, None]), "Letstalk device");
        assert_eq!(name_from([Some("é".repeat(100))]).chars().count(), 64);
        let own = default_name();
        assert!(!own.is_empty() && own.chars().count() <= 64);
    }

    /// The vector from systemd's application-specific ID scheme, as given in the issue.
    #[test]
    fn device_id_vector() {
        let machine: [u8; 16] =
            hex::decode("0123456789abcdef0123456789abcdef").unwrap().try_into().unwrap();
        assert_eq!(app_specific_id(&machine, &APP_ID), "e4afc064c0c24eac9381390217f8c683");
        assert_eq!(hex::encode(APP_ID), "f6934a78ea794d5d90ffb5f1b3cb3ccc");
        // Another installation on the same machine has another ID.
        assert_ne!(install_app_id(&[1; 16]), install_app_id(&[2; 16]));
    }

    #[test]
    fn network_type_from_sysfs() {
        let dir = tempfile::tempdir().unwrap();
        let mk = |name: &str, files: &[(&str, &str)]| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            for (f, c) in files {
                if c.is_empty() {
                    std::fs::create_dir_all(d.join(f)).unwrap();
                } else {
                    std::fs::write(d.join(f), c).unwrap();
                }
            }
        };
        mk("wlan0", &[("wireless", ""), ("type", "1\n")]);
        mk("wwan0", &[("uevent", "DEVTYPE=wwan\nINTERFACE=wwan0\n"), ("type", "65534\n")]);
        mk("eth0", &[("type", "1\n"), ("uevent", "INTERFACE=eth0\n")]);
        let kind = |i: &str| network_from(dir.path(), &[i.to_owned()]).kind;
        assert_eq!(kind("wlan0"), NetworkType::Wifi);
        assert_eq!(kind("wwan0"), NetworkType::Cellular);
        assert_eq!(kind("eth0"), NetworkType::Ethernet);
        assert_eq!(network_from(dir.path(), &[]).kind, NetworkType::None);
    }

    #[test]
    fn access_technologies_map_to_the_newest_generation() {
        assert_eq!(cellular_generation(0), None);
        assert_eq!(cellular_generation(1), None); // POTS
        assert_eq!(cellular_generation(1 << 30), None); // ANY, or bits not yet known
        assert_eq!(cellular_generation(1 << 1), Some(CellularTechnology::G2));
        assert_eq!(cellular_generation(1 << 4), Some(CellularTechnology::G2));
        for bit in 5..=13 {
            assert_eq!(cellular_generation(1 << bit), Some(CellularTechnology::G3), "bit {bit}");
        }
        for bit in [14, 16, 17] {
            assert_eq!(cellular_generation(1 << bit), Some(CellularTechnology::G4), "bit {bit}");
        }
        assert_eq!(cellular_generation(1 << 15), Some(CellularTechnology::G5));
        assert_eq!(cellular_generation(1 << 14 | 1 << 5), Some(CellularTechnology::G4));
        assert_eq!(cellular_generation(1 << 15 | 1 << 14 | 1 << 1), Some(CellularTechnology::G5));
        assert_eq!(cellular_generation(1 << 4 | 1 << 8), Some(CellularTechnology::G3));
    }

    #[test]
    fn network_manager_values() {
        assert_eq!(nm_connection_type("802-11-wireless"), Some(NetworkType::Wifi));
        assert_eq!(nm_connection_type("gsm"), Some(NetworkType::Cellular));
        assert_eq!(nm_connection_type("cdma"), Some(NetworkType::Cellular));
        assert_eq!(nm_connection_type("802-3-ethernet"), Some(NetworkType::Ethernet));
        assert_eq!(nm_connection_type(""), None);
        assert_eq!(nm_connection_type("vpn"), None);
        assert_eq!(
            [0, 1, 2, 3, 4, 5].map(nm_metered),
            [None, Some(true), Some(false), Some(true), Some(false), None]
        );
    }

    #[test]
    fn the_bus_refines_the_sysfs_answer() {
        let eth = Network {
            kind: NetworkType::Ethernet,
            interface: Some("eth0".into()),
            cellular: None,
            metered: None,
        };
        // Nothing from the bus: sysfs stands.
        assert_eq!(refine_network(eth.clone(), &system_bus::Facts::default()), eth);
        // NetworkManager with no primary connection and unknown metering: sysfs stands.
        let nothing = system_bus::Facts {
            primary_connection_type: Some(String::new()),
            metered: Some(0),
            ..Default::default()
        };
        assert_eq!(refine_network(eth.clone(), &nothing), eth);
        // A modem is reported only on a cellular network.
        let modem = system_bus::Modem {
            access_technologies: Some(1 << 14 | 1 << 5),
            signal_percent: Some(140),
            operator: Some("Operator".into()),
        };
        let on_wifi = system_bus::Facts {
            primary_connection_type: Some("802-11-wireless".into()),
            metered: Some(4),
            modem: Some(modem.clone()),
            chassis: None,
        };
        let wifi = refine_network(eth.clone(), &on_wifi);
        assert_eq!(
            (wifi.kind, wifi.metered, wifi.cellular),
            (NetworkType::Wifi, Some(false), None)
        );
        let on_gsm = system_bus::Facts {
            primary_connection_type: Some("gsm".into()),
            metered: Some(0),
            modem: Some(modem),
            chassis: None,
        };
        let cellular = refine_network(eth, &on_gsm);
        assert_eq!(cellular.kind, NetworkType::Cellular);
        assert_eq!(cellular.metered, Some(true), "cellular with unknown metering is a guess");
        assert_eq!(
            cellular.cellular,
            Some(Cellular {
                technology: Some(CellularTechnology::G4),
                operator: Some("Operator".into()),
                signal_percent: Some(100),
            })
        );
    }

    #[test]
    fn dmi_chassis() {
        assert_eq!(chassis_from_dmi("10"), Some(Chassis::Laptop));
        assert_eq!(chassis_from_dmi("3"), Some(Chassis::Desktop));
        assert_eq!(chassis_from_dmi("x"), None);
    }
}
