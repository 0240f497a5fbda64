//! Diagnostics the privacy policy names, kept on the device: network-type history,
//! relay connection events, the frontends that introduced themselves, call log entries;
//! the report built from them ([`report`]) is what `diagnostics.preview` shows and
//! `diagnostics.upload` sends, byte for byte. Nothing here ever holds message content.
//!
//! Also the queue of feedback (and reports) waiting for the relay: a row per note,
//! removed once the relay has stored it.

use rusqlite::{Connection, params};

use letstalk_ipc::types::{
    CallEntry, CellularTechnology, ConnectionEntry, DeviceInfo, DiagnosticsReport, FrontendSeen,
    Network, NetworkEntry, NetworkType,
};
use letstalk_wire::ReportKind;

use crate::store::StoreError;

/// Rows kept per history table.
const KEEP: i64 = 500;

fn network_type_str(t: NetworkType) -> &'static str {
    match t {
        NetworkType::Wifi => "wifi",
        NetworkType::Cellular => "cellular",
        NetworkType::Ethernet => "ethernet",
        NetworkType::None => "none",
        NetworkType::Unknown => "unknown",
    }
}

fn parse_network_type(s: &str) -> NetworkType {
    match s {
        "wifi" => NetworkType::Wifi,
        "cellular" => NetworkType::Cellular,
        "ethernet" => NetworkType::Ethernet,
        "none" => NetworkType::None,
        _ => NetworkType::Unknown,
    }
}

fn technology_str(t: CellularTechnology) -> &'static str {
    match t {
        CellularTechnology::G2 => "2g",
        CellularTechnology::G3 => "3g",
        CellularTechnology::G4 => "4g",
        CellularTechnology::G5 => "5g",
    }
}

fn parse_technology(s: &str) -> Option<CellularTechnology> {
    Some(match s {
        "2g" => CellularTechnology::G2,
        "3g" => CellularTechnology::G3,
        "4g" => CellularTechnology::G4,
        "5g" => CellularTechnology::G5,
        _ => return None,
    })
}

/// Records the network the device is on now (with its cellular generation, the
/// policy's "wireless type", when known), if it differs from the last one recorded.
pub fn record_network(conn: &Connection, network: &Network, now: i64) -> Result<bool, StoreError> {
    let kind = network_type_str(network.kind);
    let technology = network.cellular.as_ref().and_then(|c| c.technology).map(technology_str);
    let last: Option<(String, Option<String>, Option<String>)> = conn
        .prepare_cached(
            "SELECT type, interface, technology FROM network_history ORDER BY id DESC LIMIT 1",
        )?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .ok();
    if last
        .as_ref()
        .is_some_and(|(t, i, g)| t == kind && *i == network.interface && g.as_deref() == technology)
    {
        return Ok(false);
    }
    conn.prepare_cached(
        "INSERT INTO network_history (at, type, interface, technology) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![now, kind, network.interface, technology])?;
    prune(conn, "network_history")?;
    Ok(true)
}

/// Records a relay connection event (state change or error), without message content.
pub fn record_connection(
    conn: &Connection,
    event: &str,
    detail: Option<&str>,
    now: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT INTO connection_log (at, event, detail) VALUES (?1, ?2, ?3)")?
        .execute(params![now, event, detail])?;
    prune(conn, "connection_log")
}

/// Records a frontend's `system.hello` identity.
pub fn record_frontend(conn: &Connection, client: &str, now: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO frontends_seen (client, first_seen, last_seen) VALUES (?1, ?2, ?2)
         ON CONFLICT (client) DO UPDATE SET last_seen = excluded.last_seen",
    )?
    .execute(params![client, now])?;
    Ok(())
}

fn prune(conn: &Connection, table: &str) -> Result<(), StoreError> {
    conn.execute(
        &format!("DELETE FROM {table} WHERE id <= (SELECT max(id) FROM {table}) - {KEEP}"),
        [],
    )?;
    Ok(())
}

/// The report, from what the device kept and `device` (read by the caller).
pub fn report(
    conn: &Connection,
    device: DeviceInfo,
    calls: Vec<CallEntry>,
    now: i64,
) -> Result<DiagnosticsReport, StoreError> {
    let frontends = conn
        .prepare_cached(
            "SELECT client, first_seen, last_seen FROM frontends_seen ORDER BY last_seen DESC",
        )?
        .query_map([], |r| {
            Ok(FrontendSeen { client: r.get(0)?, first_seen: r.get(1)?, last_seen: r.get(2)? })
        })?
        .collect::<Result<_, _>>()?;
    let network_history = conn
        .prepare_cached("SELECT at, type, interface, technology FROM network_history ORDER BY id")?
        .query_map([], |r| {
            Ok(NetworkEntry {
                at: r.get(0)?,
                kind: parse_network_type(&r.get::<_, String>(1)?),
                interface: r.get(2)?,
                technology: r.get::<_, Option<String>>(3)?.as_deref().and_then(parse_technology),
            })
        })?
        .collect::<Result<_, _>>()?;
    let connection_log = conn
        .prepare_cached("SELECT at, event, detail FROM connection_log ORDER BY id")?
        .query_map([], |r| {
            Ok(ConnectionEntry { at: r.get(0)?, event: r.get(1)?, detail: r.get(2)? })
        })?
        .collect::<Result<_, _>>()?;
    Ok(DiagnosticsReport {
        generated_at: now,
        daemon: format!("letstalkd {}", crate::VERSION),
        device,
        frontends,
        network_history,
        calls,
        connection_log,
    })
}

fn kind_str(kind: ReportKind) -> &'static str {
    match kind {
        ReportKind::Diagnostics => "diagnostics",
        ReportKind::Feedback => "feedback",
    }
}

/// Queues a report or feedback note for the relay.
pub fn enqueue(
    conn: &Connection,
    id: &str,
    kind: ReportKind,
    body: &[u8],
    now: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO reports_out (id, kind, body, created_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![id, kind_str(kind), body, now])?;
    Ok(())
}

/// A queued note: id, kind, body.
pub type Pending = (String, ReportKind, Vec<u8>);

/// Notes waiting for the relay, oldest first.
pub fn pending(conn: &Connection) -> Result<Vec<Pending>, StoreError> {
    let rows = conn
        .prepare_cached("SELECT id, kind, body FROM reports_out ORDER BY created_at, id")?
        .query_map([], |r| {
            let kind: String = r.get(1)?;
            let kind =
                if kind == "feedback" { ReportKind::Feedback } else { ReportKind::Diagnostics };
            Ok((r.get(0)?, kind, r.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    Ok(rows)
}

/// The relay stored note `id`.
pub fn delivered(conn: &Connection, id: &str) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM reports_out WHERE id = ?1")?.execute(params![id])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_is_deduplicated_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        store
            .with(|c| {
                let wifi = Network {
                    kind: NetworkType::Wifi,
                    interface: Some("wlan0".into()),
                    cellular: None,
                    metered: None,
                };
                assert!(record_network(c, &wifi, 1)?);
                assert!(!record_network(c, &wifi, 2)?, "no change, no row");
                let cell = Network {
                    kind: NetworkType::Cellular,
                    interface: Some("wwan0".into()),
                    ..wifi.clone()
                };
                assert!(record_network(c, &cell, 3)?);
                // The generation changing is a change too, and it is kept.
                let lte = letstalk_ipc::types::Cellular {
                    technology: Some(CellularTechnology::G4),
                    operator: None,
                    signal_percent: None,
                };
                let on_4g = Network { cellular: Some(lte.clone()), ..cell.clone() };
                assert!(record_network(c, &on_4g, 4)?);
                assert!(!record_network(c, &on_4g, 5)?);
                let on_5g = Network {
                    cellular: Some(letstalk_ipc::types::Cellular {
                        technology: Some(CellularTechnology::G5),
                        ..lte
                    }),
                    ..cell.clone()
                };
                assert!(record_network(c, &on_5g, 6)?);
                let generations: Vec<Option<String>> = c
                    .prepare("SELECT technology FROM network_history ORDER BY id")?
                    .query_map([], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                let parsed: Vec<_> =
                    generations.iter().map(|g| g.as_deref().and_then(parse_technology)).collect();
                assert_eq!(
                    parsed,
                    [None, None, Some(CellularTechnology::G4), Some(CellularTechnology::G5)]
                );
                for i in 0..600 {
                    record_connection(c, "connecting", Some("x"), i)?;
                }
                let n: i64 =
                    c.query_row("SELECT count(*) FROM connection_log", [], |r| r.get(0))?;
                assert_eq!(n, KEEP);
                Ok(())
            })
            .unwrap();
    }
}
