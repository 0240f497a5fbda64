//! Sender keys: ours, made or rotated before a message when the membership changed, and
//! the other members', stored when they come from a member as we know them and held,
//! within bounds, until a snapshot names their sender.

use rand_core::{CryptoRng, RngCore};
use rusqlite::{Connection, params};

use letstalk_crypto::{SenderKey, SenderKeyDistribution};

use super::incoming::retry_pending;
use super::{GroupState, MAX_HELD_KEYS, MAX_HELD_KEYS_PER_SENDER, load, valid_id};
use crate::content::Content;
use crate::events::Effects;
use crate::store::StoreError;

pub(super) fn crypto(context: &str, e: letstalk_crypto::Error) -> StoreError {
    StoreError::Io { context: context.to_owned(), source: std::io::Error::other(e.to_string()) }
}

/// Our sender key for the group, made or rotated first if needed; a new generation is
/// queued (pairwise) to every other member before anything encrypted with it.
pub(super) fn sender_key(
    conn: &Connection,
    me: &str,
    g: &GroupState,
    rng: &mut (impl RngCore + CryptoRng),
    now: i64,
) -> Result<SenderKey, StoreError> {
    let (stored, stale): (Option<Vec<u8>>, bool) = conn
        .prepare_cached("SELECT sender_key, key_stale FROM groups WHERE group_id = ?1")?
        .query_row(params![g.id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let stored = stored.map(zeroize::Zeroizing::new);
    let key = match (&stored, stale) {
        (Some(bytes), false) => {
            return SenderKey::from_bytes(bytes).map_err(|e| crypto("sender key", e));
        }
        (Some(bytes), true) => SenderKey::from_bytes(bytes)
            .and_then(|k| k.rotate(rng))
            .map_err(|e| crypto("rotating the sender key", e))?,
        (None, _) => SenderKey::generate(g.id.as_bytes(), rng)
            .map_err(|e| crypto("making a sender key", e))?,
    };
    let distribution = hex::encode(key.distribution().encode().as_slice());
    let content = Content::SenderKey { gid: g.id.clone(), key: distribution };
    for member in g.members.iter().filter(|m| *m != me) {
        crate::outbox::enqueue(conn, member, None, &content, now)?;
    }
    Ok(key)
}

/// Stores a member's sender key, then reads what waited for it. A key is stored only
/// for a group we are in, from one of its members as we know them; from anyone else (a
/// group we have not seen yet, a member not yet named by a snapshot) it is held, within
/// bounds, until a snapshot names its sender ([`release_held_keys`]).
pub fn on_sender_key(
    conn: &Connection,
    me: &str,
    sender: &str,
    gid: &str,
    key_hex: &str,
    now: i64,
) -> Result<Result<Effects, String>, StoreError> {
    let Ok(bytes) = hex::decode(key_hex).map(zeroize::Zeroizing::new) else {
        return Ok(Err("malformed sender key".into()));
    };
    let Ok(distribution) = SenderKeyDistribution::decode(&bytes) else {
        return Ok(Err("malformed sender key".into()));
    };
    if distribution.group_id() != gid.as_bytes() || !valid_id(gid) {
        return Ok(Err("sender key for another group".into()));
    }
    match load(conn, gid)? {
        Some((_, false)) => return Ok(Err("sender key for a group we left".into())),
        Some((g, true)) if g.members.contains(sender) => {}
        _ => {
            let (mine, all): (i64, i64) = conn
                .prepare_cached(
                    "SELECT count(*) FILTER (WHERE sender = ?1), count(*) FROM group_keys_held",
                )?
                .query_row(params![sender], |r| Ok((r.get(0)?, r.get(1)?)))?;
            if mine >= MAX_HELD_KEYS_PER_SENDER || all >= MAX_HELD_KEYS {
                return Ok(Err("sender key from a non-member: too many held".into()));
            }
            conn.prepare_cached(
                "INSERT INTO group_keys_held (group_id, sender, generation, distribution, at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT DO UPDATE SET distribution = excluded.distribution, at = excluded.at",
            )?
            .execute(params![
                gid,
                sender,
                distribution.generation(),
                bytes.as_slice(),
                now
            ])?;
            return Ok(Ok(Effects::default()));
        }
    }
    store_key(conn, gid, sender, &distribution)?;
    retry_pending(conn, me, gid, Some(sender), now).map(Ok)
}

fn store_key(
    conn: &Connection,
    gid: &str,
    sender: &str,
    distribution: &SenderKeyDistribution,
) -> Result<(), StoreError> {
    let generation = distribution.generation();
    conn.prepare_cached(
        "INSERT INTO group_receivers (group_id, sender, generation, state) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (group_id, sender, generation) DO UPDATE SET state = excluded.state",
    )?
    .execute(params![
        gid,
        sender,
        generation,
        distribution.receiver().to_bytes().as_slice()
    ])?;
    // Older generations are kept one step back, for messages still on their way.
    conn.prepare_cached(
        "DELETE FROM group_receivers WHERE group_id = ?1 AND sender = ?2 AND generation < ?3",
    )?
    .execute(params![gid, sender, i64::from(generation) - 1])?;
    Ok(())
}

/// After a snapshot: the held keys of senders it names become keys (when we are a
/// member); the held keys of a group we are not in are forgotten.
pub(super) fn release_held_keys(
    conn: &Connection,
    g: &GroupState,
    member: bool,
) -> Result<(), StoreError> {
    let held: Vec<(String, i64, Vec<u8>)> = conn
        .prepare_cached(
            "SELECT sender, generation, distribution FROM group_keys_held
             WHERE group_id = ?1 ORDER BY generation",
        )?
        .query_map(params![g.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (sender, generation, bytes) in held {
        let bytes = zeroize::Zeroizing::new(bytes);
        if member && !g.members.contains(&sender) {
            continue;
        }
        if member && let Ok(distribution) = SenderKeyDistribution::decode(&bytes) {
            store_key(conn, &g.id, &sender, &distribution)?;
        }
        conn.prepare_cached(
            "DELETE FROM group_keys_held WHERE group_id = ?1 AND sender = ?2 AND generation = ?3",
        )?
        .execute(params![g.id, sender, generation])?;
    }
    Ok(())
}
