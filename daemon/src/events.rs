//! The persisted event log and its fan-out to subscribers.
//!
//! An event is a row in `events`, inserted in the same transaction as the change it
//! describes ([`append`]), so a UI that was away can always catch up with `since`. After
//! the commit the writer calls [`EventBus::published`]; each subscription task then reads
//! the new rows from the database at its own pace. Nothing is held in memory per event,
//! so a slow subscriber costs only its own bounded queue (see `server::subscription`).

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Map, Value};
use tokio::sync::watch;

use letstalk_ipc::types::EventBody;

use crate::store::StoreError;

/// Events are kept for at least this long...
pub const KEEP_MS: i64 = 7 * 24 * 60 * 60 * 1000;
/// ...and at least this many, whichever keeps more.
pub const KEEP_COUNT: u64 = 10_000;

/// Wakes subscribers when events were committed.
#[derive(Debug)]
pub struct EventBus {
    last: watch::Sender<u64>,
}

impl EventBus {
    pub fn new(last_seq: u64) -> Self {
        Self { last: watch::Sender::new(last_seq) }
    }

    /// Call after committing a transaction that appended events up to `seq`.
    pub fn published(&self, seq: u64) {
        self.last.send_if_modified(|last| {
            if seq > *last {
                *last = seq;
                true
            } else {
                false
            }
        });
    }

    pub fn watch(&self) -> watch::Receiver<u64> {
        self.last.subscribe()
    }
}

/// A persisted event ready to send: `{seq, kind, at, ...fields}`.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub seq: u64,
    pub kind: String,
    pub params: Value,
}

/// Appends an event; call it inside the transaction of the change it describes (a
/// `Transaction` derefs to the connection). Returns its seq.
pub fn append(tx: &Connection, body: &EventBody, at: i64) -> Result<u64, StoreError> {
    let json = serde_json::to_string(body).map_err(|e| StoreError::Io {
        context: "encoding an event".into(),
        source: std::io::Error::other(e),
    })?;
    tx.prepare_cached("INSERT INTO events (kind, at, body) VALUES (?1, ?2, ?3)")?
        .execute(params![body.kind(), at, json])?;
    Ok(u64::try_from(tx.last_insert_rowid()).unwrap_or(0))
}

/// Up to `limit` events with seq greater than `after`, oldest first.
pub fn read_after(
    conn: &Connection,
    after: u64,
    limit: usize,
) -> Result<Vec<StoredEvent>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT seq, kind, at, body FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after as i64, limit as i64], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, kind, at, body) = row?;
        let seq = u64::try_from(seq).unwrap_or(0);
        // The body is the event's own fields (with `kind`); seq and at are added here.
        let mut params = match serde_json::from_str::<Value>(&body) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        params.insert("seq".into(), Value::from(seq));
        params.insert("at".into(), Value::from(at));
        params.insert("kind".into(), Value::from(kind.clone()));
        out.push(StoredEvent { seq, kind, params: Value::Object(params) });
    }
    Ok(out)
}

/// The newest seq ever assigned (0 when none) and the newest seq pruned away (0 when
/// nothing was pruned). A `since` below the latter cannot be replayed without gaps.
pub fn bounds(conn: &Connection) -> Result<(u64, u64), StoreError> {
    let last: Option<i64> = conn
        .query_row("SELECT seq FROM sqlite_sequence WHERE name = 'events'", [], |r| r.get(0))
        .optional()?;
    let pruned: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'events_pruned_through'", [], |r| r.get(0))
        .optional()?;
    let last = last.and_then(|v| u64::try_from(v).ok()).unwrap_or(0);
    let pruned = pruned.and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok((last, pruned))
}

/// Deletes events that are both older than [`KEEP_MS`] and beyond the newest
/// [`KEEP_COUNT`]; records how far it went.
pub fn prune(conn: &mut Connection, now: i64) -> Result<u64, StoreError> {
    let (last, _) = bounds(conn)?;
    let Some(count_floor) = last.checked_sub(KEEP_COUNT) else { return Ok(0) };
    let tx = conn.transaction()?;
    let through: Option<i64> = tx.query_row(
        "SELECT max(seq) FROM events WHERE seq <= ?1 AND at < ?2",
        params![count_floor as i64, now - KEEP_MS],
        |r| r.get(0),
    )?;
    let Some(through) = through else { return Ok(0) };
    let deleted = tx.execute("DELETE FROM events WHERE seq <= ?1", params![through])?;
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('events_pruned_through', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![through.to_string()],
    )?;
    tx.commit()?;
    Ok(deleted as u64)
}

/// What applying a delivery changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Effects {
    /// The last event seq written.
    pub last_event: Option<u64>,
    /// Whether the outbox got a new row.
    pub queued: bool,
}

impl Effects {
    pub fn merge(&mut self, other: Effects) {
        self.last_event = self.last_event.max(other.last_event);
        self.queued |= other.queued;
    }
}
