//! What the system D-Bus says about the device: NetworkManager's primary connection type
//! and metered state, ModemManager's first modem (access technologies, signal quality,
//! operator) and hostnamed's chassis.
//!
//! One connection is opened per call and dropped when it returns, all within [`TIMEOUT`]:
//! the idle daemon holds no D-Bus connection, and `device.info` never waits on a bus
//! that hangs. Each question is asked on its own; whatever fails (no bus, a service that
//! is not running, a property of an unexpected type, the deadline) is left unknown and
//! the caller keeps its sysfs and file answers. The values are never logged: failures
//! are logged at debug level, without the answers.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use zbus::Connection;
use zbus::proxy::{CacheProperties, MethodFlags};
use zbus::zvariant::{OwnedObjectPath, OwnedValue};

/// The longest a whole query may take, connection included.
pub(super) const TIMEOUT: Duration = Duration::from_secs(1);

const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
const NM: &str = "org.freedesktop.NetworkManager";
const NM_PATH: &str = "/org/freedesktop/NetworkManager";
const MM: &str = "org.freedesktop.ModemManager1";
const MM_PATH: &str = "/org/freedesktop/ModemManager1";
const MM_MODEM: &str = "org.freedesktop.ModemManager1.Modem";
const MM_MODEM_3GPP: &str = "org.freedesktop.ModemManager1.Modem.Modem3gpp";
const HOSTNAME: &str = "org.freedesktop.hostname1";
const HOSTNAME_PATH: &str = "/org/freedesktop/hostname1";

/// The answers as the services gave them, before they are mapped onto the IPC types
/// (`device.rs`); `None` where a service did not answer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Facts {
    /// NetworkManager's `PrimaryConnectionType` ("802-11-wireless", "gsm", "" …).
    pub(super) primary_connection_type: Option<String>,
    /// NetworkManager's `Metered`, an `NMMetered` value.
    pub(super) metered: Option<u32>,
    /// ModemManager's first modem (by object path).
    pub(super) modem: Option<Modem>,
    /// hostnamed's `Chassis` ("handset", "laptop", "" …).
    pub(super) chassis: Option<String>,
}

/// One modem's properties, each `None` when absent or of an unexpected type.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Modem {
    /// `AccessTechnologies`, an `MMModemAccessTechnology` bit mask.
    pub(super) access_technologies: Option<u32>,
    /// The percentage of `SignalQuality` (whether it is recent does not matter here).
    pub(super) signal_percent: Option<u32>,
    /// `Modem3gpp.OperatorName`.
    pub(super) operator: Option<String>,
}

/// Asks the system bus, if there is one; [`Facts::default`] when there is none.
pub(super) async fn query() -> Facts {
    if !crate::bus::system_bus_may_exist() {
        return Facts::default();
    }
    let deadline = Instant::now() + TIMEOUT;
    let builder = match zbus::connection::Builder::system() {
        Ok(builder) => builder,
        Err(e) => return unknown("the system bus address", &e),
    };
    let conn = match tokio::time::timeout_at(deadline, builder.build()).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return unknown("connecting to the system bus", &e),
        Err(_) => return unknown("connecting to the system bus", &"timed out"),
    };
    // NetworkManager and ModemManager are asked without D-Bus activation: device.info
    // must not start a network or modem manager the system left stopped. hostnamed is
    // activated on demand by design.
    let (primary_connection_type, metered, modem, chassis) = tokio::join!(
        bounded(
            deadline,
            "NetworkManager",
            get(&conn, NM, NM_PATH, NM, "PrimaryConnectionType", false)
        ),
        bounded(deadline, "NetworkManager", get(&conn, NM, NM_PATH, NM, "Metered", false)),
        bounded(deadline, "ModemManager", first_modem(&conn)),
        bounded(
            deadline,
            "hostnamed",
            get(&conn, HOSTNAME, HOSTNAME_PATH, HOSTNAME, "Chassis", true)
        ),
    );
    // `conn` is dropped here, which closes it.
    Facts { primary_connection_type, metered, modem: modem.flatten(), chassis }
}

fn unknown(step: &str, e: &dyn std::fmt::Display) -> Facts {
    tracing::debug!(error = %e, "{step}: the system bus adds nothing to device.info");
    Facts::default()
}

/// Runs one question until the shared deadline; `None` on error or timeout.
async fn bounded<T>(
    deadline: Instant,
    service: &str,
    question: impl Future<Output = zbus::Result<T>>,
) -> Option<T> {
    match tokio::time::timeout_at(deadline, question).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            tracing::debug!(service, error = %e, "no answer from the system bus");
            None
        }
        Err(_) => {
            tracing::debug!(service, "no answer from the system bus in time");
            None
        }
    }
}

/// One method call; `auto_start` lets the bus activate the service.
async fn call<B, R>(
    conn: &Connection,
    (destination, path, interface): (&str, &str, &str),
    method: &str,
    body: &B,
    auto_start: bool,
) -> zbus::Result<R>
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
    R: for<'d> zbus::zvariant::DynamicDeserialize<'d>,
{
    let proxy: zbus::Proxy<'_> = zbus::proxy::Builder::new(conn)
        .destination(destination)?
        .path(path)?
        .interface(interface)?
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let flags = if auto_start { Default::default() } else { MethodFlags::NoAutoStart.into() };
    proxy
        .call_with_flags(method, flags, body)
        .await?
        .ok_or_else(|| zbus::Error::Failure(format!("no reply to {method}")))
}

/// One property, which must have type `T`.
async fn get<T>(
    conn: &Connection,
    destination: &str,
    path: &str,
    interface: &str,
    name: &str,
    auto_start: bool,
) -> zbus::Result<T>
where
    T: TryFrom<OwnedValue, Error = zbus::zvariant::Error>,
{
    let value: OwnedValue =
        call(conn, (destination, path, PROPERTIES), "Get", &(interface, name), auto_start).await?;
    Ok(T::try_from(value)?)
}

type ManagedObjects = HashMap<OwnedObjectPath, HashMap<String, HashMap<String, OwnedValue>>>;

/// The first modem ModemManager manages (by object path), from one `GetManagedObjects`.
async fn first_modem(conn: &Connection) -> zbus::Result<Option<Modem>> {
    let objects: ManagedObjects = call(
        conn,
        (MM, MM_PATH, "org.freedesktop.DBus.ObjectManager"),
        "GetManagedObjects",
        &(),
        false,
    )
    .await?;
    let first = objects
        .into_iter()
        .filter(|(_, interfaces)| interfaces.contains_key(MM_MODEM))
        .min_by(|(a, _), (b, _)| a.as_str().cmp(b.as_str()));
    let Some((_, mut interfaces)) = first else { return Ok(None) };
    let mut modem = interfaces.remove(MM_MODEM).unwrap_or_default();
    let mut gpp = interfaces.remove(MM_MODEM_3GPP).unwrap_or_default();
    Ok(Some(Modem {
        access_technologies: take(&mut modem, "AccessTechnologies"),
        signal_percent: take::<(u32, bool)>(&mut modem, "SignalQuality").map(|(p, _)| p),
        operator: take(&mut gpp, "OperatorName"),
    }))
}

fn take<T: TryFrom<OwnedValue>>(
    properties: &mut HashMap<String, OwnedValue>,
    name: &str,
) -> Option<T> {
    properties.remove(name).and_then(|v| T::try_from(v).ok())
}
