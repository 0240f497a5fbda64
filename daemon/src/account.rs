//! This device's account as the daemon keeps it: profile, the Ed25519 device key that
//! authenticates it to the relay, the end-to-end identity key pair and our prekeys.

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use letstalk_crypto::{IdentityKeyPair, PreKeySecret};
use letstalk_ipc::types as ipc;

use crate::store::StoreError;

/// How many one-time prekeys are published at a time.
pub const ONE_TIME_PREKEYS: u32 = 100;
/// Prekey ids: the signed prekey, the last-resort prekey, then the one-time ones.
pub const SIGNED_PREKEY_ID: u32 = 1;
pub const LAST_RESORT_ID: u32 = 2;
pub const FIRST_ONE_TIME_ID: u32 = 16;

/// The tables whose rows belong to the account on the device: everything it said,
/// received, knows and queued. Another account logging in on the device empties them
/// all ([`forget_previous`]). Every table is in this list or in [`DEVICE_TABLES`]; a
/// test fails for a table in neither, so a new table is classified when it is made.
pub const ACCOUNT_TABLES: &[&str] = &[
    "files",
    "message_members",
    "messages",
    "outbox",
    "received",
    "sessions",
    "contacts",
    "prekeys",
    "group_members",
    "groups",
    "group_receivers",
    "group_pending",
    "group_keys_held",
    "group_key_requests",
    "calls",
    "reports_out",
    "events",
    "identities",
    "resend",
    "held",
    "blob_releases",
    "muted",
    "device_lists",
];

/// The tables that describe the device, not the account: kept across accounts. The
/// `account` row itself is replaced by the new account's.
pub const DEVICE_TABLES: &[&str] = &[
    "meta",
    "settings",
    "account",
    "network_history",
    "connection_log",
    "frontends_seen",
    // An earlier account's relay deletion still owed survives a later login.
    "relay_deletions",
];

/// Deletes everything of the account that was on the device (inside the caller's
/// transaction, before the new account is saved). With `secure_delete` the freed pages
/// are zeroed; the caller truncates the WAL after the commit.
pub fn forget_previous(conn: &Connection) -> Result<(), StoreError> {
    let (last, _) = crate::events::bounds(conn)?;
    for table in ACCOUNT_TABLES {
        conn.execute(&format!("DELETE FROM {table}"), [])?;
    }
    // Every earlier event is gone: a UI replaying from before now must reload its state
    // (`resync_required`), and seqs keep counting up (AUTOINCREMENT).
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('events_pruned_through', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![last.to_string()],
    )?;
    Ok(())
}

/// The account row.
pub struct Account {
    pub user_id: String,
    pub email: String,
    pub nickname: String,
    pub avatar: Option<(Vec<u8>, String)>,
    pub created_at: i64,
    /// The Ed25519 seed that authenticates this device to the relay.
    pub device_key: zeroize::Zeroizing<[u8; 32]>,
    pub identity: IdentityKeyPair,
    pub logged_in: bool,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account").field("user_id", &self.user_id).finish_non_exhaustive()
    }
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Io {
        context: format!("account {what}"),
        source: std::io::Error::other("malformed"),
    }
}

impl Account {
    pub fn load(conn: &Connection) -> Result<Option<Self>, StoreError> {
        let row = conn
            .prepare_cached(
                "SELECT user_id, email, nickname, avatar, avatar_mime, created_at, device_key, identity, logged_in
                 FROM account WHERE id = 1",
            )?
            .query_row([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<Vec<u8>>>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, Vec<u8>>(6)?,
                    zeroize::Zeroizing::new(r.get::<_, Vec<u8>>(7)?),
                    r.get::<_, bool>(8)?,
                ))
            })
            .optional()?;
        let Some((
            user_id,
            email,
            nickname,
            avatar,
            mime,
            created_at,
            device_key,
            identity,
            logged_in,
        )) = row
        else {
            return Ok(None);
        };
        let device_key: [u8; 32] =
            device_key.as_slice().try_into().map_err(|_| corrupt("device key"))?;
        let identity = IdentityKeyPair::from_bytes(&identity).map_err(|_| corrupt("identity"))?;
        Ok(Some(Self {
            user_id,
            email,
            nickname,
            avatar: avatar.zip(mime),
            created_at,
            device_key: zeroize::Zeroizing::new(device_key),
            identity,
            logged_in,
        }))
    }

    /// Writes (replaces) the account row.
    pub fn save(&self, conn: &Connection) -> Result<(), StoreError> {
        let (avatar, mime, sha) = match &self.avatar {
            Some((bytes, mime)) => {
                (Some(bytes.as_slice()), Some(mime.as_str()), Some(sha256_hex(bytes)))
            }
            None => (None, None, None),
        };
        conn.execute(
            "INSERT INTO account (id, user_id, email, nickname, avatar, avatar_mime, avatar_sha256, created_at,
                                  device_key, identity, logged_in)
             VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (id) DO UPDATE SET user_id = excluded.user_id, email = excluded.email,
                nickname = excluded.nickname, avatar = excluded.avatar, avatar_mime = excluded.avatar_mime,
                avatar_sha256 = excluded.avatar_sha256, created_at = excluded.created_at,
                device_key = excluded.device_key, identity = excluded.identity, logged_in = excluded.logged_in",
            params![
                self.user_id,
                self.email,
                self.nickname,
                avatar,
                mime,
                sha,
                self.created_at,
                self.device_key.as_slice(),
                self.identity.to_bytes().as_slice(),
                self.logged_in,
            ],
        )?;
        Ok(())
    }

    /// The IPC object.
    pub fn to_ipc(&self) -> ipc::Account {
        ipc::Account {
            user_id: self.user_id.clone(),
            email: self.email.clone(),
            nickname: self.nickname.clone(),
            avatar: self.avatar.as_ref().map(|(bytes, mime)| ipc::AvatarMeta {
                sha256: sha256_hex(bytes),
                size: bytes.len() as u64,
                mime: mime.clone(),
            }),
            created_at: self.created_at,
            fingerprint: self.identity.public().fingerprint(),
        }
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Stores a prekey's secret.
pub fn save_prekey(conn: &Connection, key: &PreKeySecret, now: i64) -> Result<(), StoreError> {
    let kind = match key.kind() {
        letstalk_crypto::PreKeyKind::Signed => "signed",
        letstalk_crypto::PreKeyKind::LastResort => "last_resort",
        _ => "one_time",
    };
    conn.prepare_cached(
        "INSERT INTO prekeys (id, kind, secret, created_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, secret = excluded.secret, created_at = excluded.created_at",
    )?
    .execute(params![key.id(), kind, key.to_bytes().as_slice(), now])?;
    Ok(())
}

/// One of our prekeys by id.
pub fn load_prekey(conn: &Connection, id: u32) -> Result<Option<PreKeySecret>, StoreError> {
    let bytes: Option<Vec<u8>> = conn
        .prepare_cached("SELECT secret FROM prekeys WHERE id = ?1")?
        .query_row(params![id], |r| r.get(0))
        .optional()?;
    let Some(bytes) = bytes.map(zeroize::Zeroizing::new) else { return Ok(None) };
    PreKeySecret::from_bytes(&bytes).map(Some).map_err(|_| corrupt("prekey"))
}

/// Deletes a used one-time prekey (never the signed or last-resort ones).
pub fn delete_one_time_prekey(conn: &Connection, id: u32) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM prekeys WHERE id = ?1 AND kind = 'one_time'")?
        .execute(params![id])?;
    Ok(())
}

impl Account {
    /// A new account's keys: a device key, an identity key pair.
    pub fn generate(
        user_id: String,
        email: String,
        nickname: String,
        avatar: Option<(Vec<u8>, String)>,
        now: i64,
        rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng),
    ) -> Self {
        let mut seed = [0u8; 32];
        rng.fill_bytes(&mut seed);
        Self {
            user_id,
            email,
            nickname,
            avatar,
            created_at: now,
            device_key: zeroize::Zeroizing::new(seed),
            identity: IdentityKeyPair::generate(rng),
            logged_in: true,
        }
    }
}

/// The prekeys a new device publishes: a signed prekey, a last-resort prekey and
/// [`ONE_TIME_PREKEYS`] one-time prekeys.
pub fn generate_prekeys(
    identity: &IdentityKeyPair,
    rng: &mut (impl rand_core::RngCore + rand_core::CryptoRng),
) -> Vec<PreKeySecret> {
    let mut keys = vec![
        PreKeySecret::generate_signed(SIGNED_PREKEY_ID, identity, rng),
        PreKeySecret::generate_last_resort(LAST_RESORT_ID, identity, rng),
    ];
    for i in 0..ONE_TIME_PREKEYS {
        keys.push(PreKeySecret::generate_one_time(FIRST_ONE_TIME_ID + i, rng));
    }
    keys
}

#[cfg(test)]
mod tables {
    use super::*;

    #[test]
    fn every_table_is_the_accounts_or_the_devices() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let tables: Vec<String> = store
            .with(|c| {
                Ok(c.prepare(
                    "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
                )?
                .query_map([], |r| r.get(0))?
                .collect::<Result<_, _>>()?)
            })
            .unwrap();
        for t in &tables {
            let account = ACCOUNT_TABLES.contains(&t.as_str());
            let device = DEVICE_TABLES.contains(&t.as_str());
            assert!(account ^ device, "table {t}: in exactly one of ACCOUNT_TABLES, DEVICE_TABLES");
        }
        for t in ACCOUNT_TABLES.iter().chain(DEVICE_TABLES) {
            assert!(tables.iter().any(|x| x == t), "no table {t}");
        }
        store.with(|c| forget_previous(c)).unwrap();
    }
}
