//! Prekey upkeep: one-time prekeys topped up when the relay holds fewer than
//! [`LOW_WATER`], and the signed prekey rotated every [`ROTATE_SIGNED_MS`] (the previous
//! one kept for prekey messages still in flight, older ones deleted).
//!
//! The relay has no push for a low count, so the daemon asks (`KeyCount`, 6 bytes out)
//! at every connection, when woken, and every [`CHECK_EVERY`] while connected: a device
//! drained of one-time prekeys (by a peer fetching its bundle again and again) is
//! refilled when it comes online and within [`CHECK_EVERY`] while online. Secrets are
//! committed before their public halves leave the device, so a prekey message can
//! never name a key we do not have; an upload that fails deletes them again.

use std::sync::Arc;
use std::time::Duration;

use rand_core::{CryptoRng, RngCore};
use rusqlite::{Connection, OptionalExtension, params};
use tokio_util::sync::CancellationToken;

use letstalk_crypto::PreKeySecret;
use letstalk_wire::{PreKey, Request, Response};

use crate::account::{self, Account};
use crate::relay::{RelayApi, check};
use crate::store::StoreError;
use crate::{Daemon, keys, now_ms};

/// Refill when the relay holds fewer one-time prekeys than this.
pub const LOW_WATER: u32 = 25;
/// A refill brings the relay back up to this many.
pub const TARGET: u32 = account::ONE_TIME_PREKEYS;
/// The signed prekey's lifetime.
pub const ROTATE_SIGNED_MS: i64 = 7 * 24 * 3600 * 1000;
/// How often a connected daemon asks the relay for its count.
pub const CHECK_EVERY: Duration = Duration::from_secs(15 * 60);

const META_NEXT_ONE_TIME: &str = "next_one_time_prekey_id";
const META_NEXT_SIGNED: &str = "next_signed_prekey_id";
/// Rotated signed prekeys get ids from here, apart from the one-time ones.
const FIRST_ROTATED_SIGNED_ID: u32 = 0x8000_0000;

/// What one upkeep round publishes.
#[derive(Debug, Default)]
pub struct Upload {
    pub signed: Option<PreKey>,
    pub one_time: Vec<PreKey>,
    /// Ids to delete again if the relay never gets them.
    pub ids: Vec<u32>,
}

impl Upload {
    pub fn is_empty(&self) -> bool {
        self.signed.is_none() && self.one_time.is_empty()
    }

    pub fn request(&self) -> Request {
        Request::UploadKeys {
            identity: None,
            signed_prekey: self.signed.clone(),
            one_time_prekeys: self.one_time.clone(),
            last_resort: None,
        }
    }
}

/// Takes `n` consecutive ids from the counter `key` (first use starts after every id
/// already stored, and after `floor`).
fn take_ids(tx: &Connection, key: &str, floor: u32, n: u32) -> Result<u32, StoreError> {
    let stored: Option<String> = tx
        .prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row(params![key], |r| r.get(0))
        .optional()?;
    let start = match stored.and_then(|v| v.parse::<u32>().ok()) {
        Some(v) => v,
        None => {
            let max: Option<u32> = tx
                .prepare_cached("SELECT max(id) FROM prekeys WHERE id >= ?1")?
                .query_row(params![floor], |r| r.get(0))?;
            max.map_or(floor, |m| m.saturating_add(1)).max(floor)
        }
    };
    let next = start.checked_add(n).ok_or_else(|| StoreError::Io {
        context: "prekey ids".into(),
        source: std::io::Error::other("exhausted"),
    })?;
    tx.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![key, next.to_string()])?;
    Ok(start)
}

/// Decides and stores (in one transaction) what to publish, given the relay's count of
/// our one-time prekeys: new one-time prekeys below [`LOW_WATER`], a new signed prekey
/// when the newest is [`ROTATE_SIGNED_MS`] old (then signed prekeys older than the
/// previous one are deleted).
pub fn plan(
    conn: &mut Connection,
    me: &Account,
    relay_count: u32,
    now: i64,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Upload, StoreError> {
    let tx = conn.transaction()?;
    let mut upload = Upload::default();
    if relay_count < LOW_WATER {
        let n = TARGET - relay_count;
        let floor = account::FIRST_ONE_TIME_ID + account::ONE_TIME_PREKEYS;
        let start = take_ids(&tx, META_NEXT_ONE_TIME, floor, n)?;
        for id in start..start + n {
            let key = PreKeySecret::generate_one_time(id, rng);
            account::save_prekey(&tx, &key, now)?;
            upload.one_time.push(keys::to_wire(&key));
            upload.ids.push(id);
        }
    }
    let newest: Option<(u32, i64)> = tx
        .prepare_cached(
            "SELECT id, created_at FROM prekeys WHERE kind = 'signed' ORDER BY created_at DESC, id DESC LIMIT 1",
        )?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    if let Some((previous, created)) = newest
        && now - created >= ROTATE_SIGNED_MS
    {
        let id = take_ids(&tx, META_NEXT_SIGNED, FIRST_ROTATED_SIGNED_ID, 1)?;
        let key = PreKeySecret::generate_signed(id, &me.identity, rng);
        account::save_prekey(&tx, &key, now)?;
        upload.signed = Some(keys::to_wire(&key));
        upload.ids.push(id);
        // Keep the previous one for prekey messages already on their way.
        tx.prepare_cached("DELETE FROM prekeys WHERE kind = 'signed' AND id NOT IN (?1, ?2)")?
            .execute(params![id, previous])?;
    }
    tx.commit()?;
    Ok(upload)
}

/// The relay never got `upload`: its secrets go again.
fn forget(conn: &Connection, upload: &Upload) -> Result<(), StoreError> {
    for id in &upload.ids {
        conn.prepare_cached("DELETE FROM prekeys WHERE id = ?1")?.execute(params![id])?;
    }
    Ok(())
}

/// How long until the signed prekey is due for rotation.
fn rotation_due_in(conn: &Connection, now: i64) -> Result<Duration, StoreError> {
    let created: Option<i64> = conn
        .prepare_cached("SELECT max(created_at) FROM prekeys WHERE kind = 'signed'")?
        .query_row([], |r| r.get(0))?;
    let left = created.map_or(ROTATE_SIGNED_MS, |c| (c + ROTATE_SIGNED_MS - now).max(0));
    Ok(Duration::from_millis(u64::try_from(left).unwrap_or(0)))
}

/// One upkeep round against the relay. Returns the relay's count afterwards.
pub async fn upkeep(daemon: &Arc<Daemon>, relay: &dyn RelayApi) -> Result<u32, String> {
    if daemon.user().is_none() {
        return Err("not logged in".into());
    }
    let count = match relay.request(Request::KeyCount).await.and_then(check) {
        Ok(Response::KeyCount { one_time_remaining }) => one_time_remaining,
        Ok(_) => return Err("unexpected answer to KeyCount".into()),
        Err(e) => return Err(e.to_string()),
    };
    let upload = daemon
        .store
        .call(move |c| {
            let Some(me) = Account::load(c)? else { return Ok(Upload::default()) };
            plan(c, &me, count, now_ms(), &mut rand_core::OsRng)
        })
        .await
        .map_err(|e| e.to_string())?;
    if upload.is_empty() {
        return Ok(count);
    }
    match relay.request(upload.request()).await.and_then(check) {
        Ok(Response::KeyCount { one_time_remaining }) => {
            tracing::info!(
                before = count,
                after = one_time_remaining,
                signed_rotated = upload.signed.is_some(),
                "prekeys topped up"
            );
            Ok(one_time_remaining)
        }
        other => {
            let why = match other {
                Err(e) => e.to_string(),
                Ok(_) => "unexpected answer to UploadKeys".into(),
            };
            if let Err(e) = daemon.store.call(move |c| forget(c, &upload)).await {
                tracing::warn!(error = %e, "forgetting unpublished prekeys");
            }
            Err(why)
        }
    }
}

/// Runs until cancelled: an upkeep round when woken (every connection) and then every
/// [`CHECK_EVERY`], or sooner when the signed prekey is due.
pub async fn run(daemon: Arc<Daemon>, relay: Arc<dyn RelayApi>, cancel: CancellationToken) {
    let mut wait = CHECK_EVERY;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = daemon.prekey_wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
        if let Err(why) = upkeep(&daemon, relay.as_ref()).await {
            tracing::debug!(reason = %why, "prekey upkeep deferred");
        }
        let due = daemon.store.call(|c| rotation_due_in(c, now_ms())).await;
        // Never zero: a rotation that keeps failing waits for the next check.
        wait = due.map_or(CHECK_EVERY, |d| d.clamp(Duration::from_secs(60), CHECK_EVERY));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    fn device() -> (tempfile::TempDir, crate::store::Store, Account) {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let me = Account::generate("v".into(), "v@x.org".into(), "v".into(), None, 1, &mut OsRng);
        store
            .with(|c| {
                me.save(c)?;
                for k in account::generate_prekeys(&me.identity, &mut OsRng) {
                    account::save_prekey(c, &k, 0)?;
                }
                Ok(())
            })
            .unwrap();
        (dir, store, me)
    }

    fn ids(store: &crate::store::Store, kind: &str) -> Vec<u32> {
        store
            .with(|c| {
                let ids = c
                    .prepare("SELECT id FROM prekeys WHERE kind = ?1 ORDER BY id")?
                    .query_map([kind], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                Ok(ids)
            })
            .unwrap()
    }

    #[test]
    fn refills_below_the_low_water_mark_with_fresh_ids() {
        let (_d, store, me) = device();
        let day = 24 * 3600 * 1000;
        let up = store.with(|c| plan(c, &me, LOW_WATER, day, &mut OsRng)).unwrap();
        assert!(up.is_empty());
        let up = store.with(|c| plan(c, &me, 3, day, &mut OsRng)).unwrap();
        assert_eq!(up.one_time.len(), (TARGET - 3) as usize);
        let first = account::FIRST_ONE_TIME_ID + account::ONE_TIME_PREKEYS;
        assert_eq!(up.one_time[0].id, first);
        // The next refill never reuses an id, even after the keys were used up.
        store.with(|c| Ok(c.execute("DELETE FROM prekeys WHERE kind = 'one_time'", [])?)).unwrap();
        let again = store.with(|c| plan(c, &me, 0, day, &mut OsRng)).unwrap();
        assert_eq!(again.one_time[0].id, first + TARGET - 3);
        assert_eq!(ids(&store, "one_time").len(), TARGET as usize);
        // Every published key's secret is stored.
        for p in &again.one_time {
            assert!(store.with(|c| account::load_prekey(c, p.id)).unwrap().is_some());
        }
    }

    #[test]
    fn the_signed_prekey_rotates_weekly_keeping_the_previous_one() {
        let (_d, store, me) = device();
        let up = store.with(|c| plan(c, &me, TARGET, ROTATE_SIGNED_MS - 1, &mut OsRng)).unwrap();
        assert!(up.signed.is_none());
        let up = store.with(|c| plan(c, &me, TARGET, ROTATE_SIGNED_MS, &mut OsRng)).unwrap();
        let first = up.signed.unwrap().id;
        assert_eq!(ids(&store, "signed"), vec![account::SIGNED_PREKEY_ID, first]);
        let up = store.with(|c| plan(c, &me, TARGET, 2 * ROTATE_SIGNED_MS, &mut OsRng)).unwrap();
        let second = up.signed.unwrap().id;
        // The original is gone; the previous (first) stays for late prekey messages.
        assert_eq!(ids(&store, "signed"), vec![first, second]);
        assert!(second > first);
        // A failed upload forgets what it would have published.
        let up = store.with(|c| plan(c, &me, 0, 3 * ROTATE_SIGNED_MS, &mut OsRng)).unwrap();
        store.with(|c| forget(c, &up)).unwrap();
        assert_eq!(ids(&store, "signed"), vec![second]);
        assert!(ids(&store, "one_time").len() == account::ONE_TIME_PREKEYS as usize);
    }
}
