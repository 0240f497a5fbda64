//! The database key: 256 random bits, kept in the OS keyring (a freedesktop Secret
//! Service on the session D-Bus: gnome-keyring, KWallet, KeePassXC…) when one is usable,
//! else in the 0600 file `db.key` in the data directory.
//!
//! Where a data directory's key lives is decided once, when the key is made, and read
//! back from the data directory's own files afterwards ([`Found`], [`plan`]):
//! - `db.key` exists: the key is that file (64 hex digits).
//! - `db.key.location` exists: the key is an item in the Secret Service. This small
//!   non-secret TOML file records which one: a random `id` attribute (so a data directory
//!   that is moved keeps finding its key, and a new one made where it was never replaces
//!   it) and, for people and `secret-tool`, the absolute data directory.
//! - neither, and no database yet: a new data directory. With `keyring = "auto"` the key
//!   goes into the Secret Service's default collection when a service answers on the
//!   session bus and that collection is unlocked (a daemon cannot answer an unlock
//!   prompt), and no key file is written; otherwise, or with `keyring = "off"`, into
//!   `db.key`.
//! - neither, but a database: the key is gone. Start fails; a new key is never made over
//!   existing data.
//! - both: start fails rather than guess which one is the database's.
//!
//! `keyring = "off"` changes only where a *new* key goes; an existing data directory
//! always reads its key from where it is. A keyring that is missing, locked or no longer
//! holds the item fails the start with one line saying so.
//!
//! D-Bus is touched only here, at start and in [`destroy_key`]: each operation opens its
//! own connection and drops it, so the idle daemon keeps no D-Bus state. The key is held
//! in zeroizing buffers and never logged.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::keyring::{self, KeyringError};
use super::{DB_FILE, KEY_FILE, StoreError, io, sync_dir};
use crate::config::Keyring;

/// The non-secret file saying that the key is in the Secret Service, and which item.
pub const LOCATION_FILE: &str = "db.key.location";

/// The value of the marker's `store` field for the freedesktop Secret Service.
const SECRET_SERVICE: &str = "secret-service";

/// A database key: 32 random bytes, zeroed when dropped, never printed.
pub struct DbKey(Zeroizing<[u8; 32]>);

impl DbKey {
    fn random() -> Self {
        Self(Zeroizing::new(rand::random()))
    }

    /// Parses the stored form, 64 hex digits (surrounding whitespace ignored).
    fn from_hex(text: &[u8]) -> Option<Self> {
        let text = text.trim_ascii();
        let mut key = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text, key.as_mut_slice()).ok()?;
        Some(Self(key))
    }

    /// The stored form: 64 lowercase hex digits.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0.as_slice()))
    }
}

impl std::fmt::Debug for DbKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DbKey(<redacted>)")
    }
}

/// Where a key lives, as [`load_or_create`] found or made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyLocation {
    /// The 0600 file `db.key` in the data directory.
    File,
    /// An item in the Secret Service, with the `id` recorded in `db.key.location`.
    SecretService { id: String },
}

/// What [`destroy_key`] destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destroyed {
    /// `db.key` was overwritten, synced and unlinked.
    KeyFile,
    /// The Secret Service item was deleted (or was already gone) and `db.key.location`
    /// removed.
    SecretService,
    /// There was no key to destroy.
    Nothing,
}

/// What the data directory holds, read without touching anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub key_file: bool,
    pub location: Option<Location>,
    pub database: bool,
}

/// The parsed `db.key.location` file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Location {
    /// Which keyring holds the key: `"secret-service"` (the only one so far).
    pub store: String,
    /// The item's random `letstalk-key-id` attribute: 32 hex digits.
    pub id: String,
    /// The data directory the key was made for (informational: lookups use `id`).
    pub data_dir: PathBuf,
}

/// Where the key is to come from, decided from [`Found`] and the configuration alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Read `db.key`.
    ReadFile,
    /// Read the Secret Service item named by `db.key.location`.
    ReadKeyring(Location),
    /// A new data directory: a new key, in the keyring if `try_keyring` and one is
    /// usable, else in `db.key`.
    Create { try_keyring: bool },
    /// A database without a key: refuse.
    Missing,
    /// Both a key file and a keyring location: refuse.
    Conflict,
}

/// The decision table of the module documentation.
pub fn plan(found: &Found, mode: Keyring) -> Plan {
    match (found.key_file, &found.location, found.database) {
        (true, Some(_), _) => Plan::Conflict,
        (true, None, _) => Plan::ReadFile,
        (false, Some(location), _) => Plan::ReadKeyring(location.clone()),
        (false, None, true) => Plan::Missing,
        (false, None, false) => Plan::Create { try_keyring: mode == Keyring::Auto },
    }
}

impl Found {
    /// Looks at `data_dir`'s key file, location file and database.
    pub fn scan(data_dir: &Path) -> Result<Self, StoreError> {
        let exists = |name: &str| {
            let path = data_dir.join(name);
            path.try_exists().map_err(io(format!("checking {}", path.display())))
        };
        let location_path = data_dir.join(LOCATION_FILE);
        let location = match std::fs::read_to_string(&location_path) {
            Ok(text) => Some(parse_location(&text).ok_or(StoreError::BadLocation(location_path))?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(format!("reading {}", location_path.display()))(e)),
        };
        Ok(Self { key_file: exists(KEY_FILE)?, location, database: exists(DB_FILE)? })
    }
}

/// Finds the key of the database in `data_dir`, or makes one for a new data directory
/// (in the OS keyring when `mode` allows and one is usable). Talks to D-Bus only when the
/// key is, or may go, in the keyring.
pub async fn load_or_create(
    data_dir: &Path,
    mode: Keyring,
) -> Result<(DbKey, KeyLocation), StoreError> {
    match plan(&Found::scan(data_dir)?, mode) {
        Plan::ReadFile => Ok((read_key_file(data_dir)?, KeyLocation::File)),
        Plan::ReadKeyring(location) => {
            if location.store != SECRET_SERVICE {
                return Err(StoreError::BadLocation(data_dir.join(LOCATION_FILE)));
            }
            let secret = keyring::load(&location.id).await.map_err(|reason| {
                StoreError::Keyring { data_dir: data_dir.to_path_buf(), reason }
            })?;
            let key = DbKey::from_hex(&secret).ok_or_else(|| StoreError::Keyring {
                data_dir: data_dir.to_path_buf(),
                reason: KeyringError::Malformed,
            })?;
            Ok((key, KeyLocation::SecretService { id: location.id }))
        }
        Plan::Missing => Err(StoreError::MissingKey(data_dir.join(DB_FILE))),
        Plan::Conflict => Err(StoreError::KeyConflict(data_dir.to_path_buf())),
        Plan::Create { try_keyring } => {
            let key = DbKey::random();
            if try_keyring && !crate::bus::session_bus_may_exist() {
                tracing::info!("no session D-Bus; the new database key goes into {KEY_FILE}");
            } else if try_keyring {
                match create_in_keyring(data_dir, &key).await {
                    Ok(id) => {
                        tracing::info!(
                            data_dir = %data_dir.display(),
                            "new database key stored in the OS keyring (Secret Service)"
                        );
                        return Ok((key, KeyLocation::SecretService { id }));
                    }
                    Err(CreateError::Keyring(e)) => tracing::info!(
                        reason = %e,
                        "no usable OS keyring; the new database key goes into {KEY_FILE}"
                    ),
                    Err(CreateError::Store(e)) => return Err(e),
                }
            }
            write_key_file(data_dir, &key)?;
            Ok((key, KeyLocation::File))
        }
    }
}

/// The key file only, never D-Bus: for tests and tools. A new data directory gets a key
/// file; one whose key is in the keyring is refused.
pub fn load_or_create_file(data_dir: &Path) -> Result<DbKey, StoreError> {
    match plan(&Found::scan(data_dir)?, Keyring::Off) {
        Plan::ReadFile => read_key_file(data_dir),
        Plan::ReadKeyring(_) => Err(StoreError::KeyInKeyring(data_dir.to_path_buf())),
        Plan::Missing => Err(StoreError::MissingKey(data_dir.join(DB_FILE))),
        Plan::Conflict => Err(StoreError::KeyConflict(data_dir.to_path_buf())),
        Plan::Create { .. } => {
            let key = DbKey::random();
            write_key_file(data_dir, &key)?;
            Ok(key)
        }
    }
}

/// Destroys the database key of `data_dir` wherever it lives, so the database can never
/// be decrypted again ("restore defaults" calls this first, then deletes the files).
///
/// A key file is overwritten with random digits, synced and unlinked; a keyring key has its
/// Secret Service item deleted, then `db.key.location` is removed. An item that is
/// already gone counts as destroyed; a Secret Service that cannot be reached (or is
/// locked) is an error and leaves `db.key.location` in place, so the caller can retry
/// rather than lose track of a key that still exists.
pub async fn destroy_key(data_dir: &Path) -> Result<Destroyed, StoreError> {
    let found = Found::scan(data_dir)?;
    let mut destroyed = Destroyed::Nothing;
    if let Some(location) = &found.location {
        if location.store != SECRET_SERVICE {
            return Err(StoreError::BadLocation(data_dir.join(LOCATION_FILE)));
        }
        keyring::delete(&location.id)
            .await
            .map_err(|reason| StoreError::Keyring { data_dir: data_dir.to_path_buf(), reason })?;
        let path = data_dir.join(LOCATION_FILE);
        std::fs::remove_file(&path).map_err(io(format!("removing {}", path.display())))?;
        destroyed = Destroyed::SecretService;
    }
    if found.key_file {
        shred(&data_dir.join(KEY_FILE))?;
        destroyed = Destroyed::KeyFile;
    }
    if destroyed != Destroyed::Nothing {
        sync_dir(data_dir)?;
    }
    Ok(destroyed)
}

/// Why a new key could not go into the keyring.
#[derive(Debug)]
enum CreateError {
    /// No usable keyring: fall back to the key file.
    Keyring(KeyringError),
    /// The keyring took the key but the data directory could not record it: fail.
    Store(StoreError),
}

/// Stores a new key in the Secret Service, then records its location. The item goes in
/// first: a crash in between leaves an orphan item that nothing points to (harmless: its
/// database was never written, and the next try makes a new id), but never a location
/// without its item.
async fn create_in_keyring(data_dir: &Path, key: &DbKey) -> Result<String, CreateError> {
    let absolute = std::fs::canonicalize(data_dir)
        .map_err(io(format!("resolving {}", data_dir.display())))
        .map_err(CreateError::Store)?;
    let id = hex::encode(rand::random::<[u8; 16]>());
    keyring::store(&id, &absolute, key.to_hex().as_bytes()).await.map_err(CreateError::Keyring)?;
    if let Err(e) = write_location(data_dir, &id, &absolute) {
        // Best effort: do not leave an item that nothing points to.
        let _ = keyring::delete(&id).await;
        return Err(CreateError::Store(e));
    }
    Ok(id)
}

fn parse_location(text: &str) -> Option<Location> {
    let location: Location = toml::from_str(text).ok()?;
    let id_ok = location.id.len() == 32 && location.id.bytes().all(|b| b.is_ascii_hexdigit());
    id_ok.then_some(location)
}

/// Writes `db.key.location` atomically (a temporary file renamed into place).
fn write_location(data_dir: &Path, id: &str, absolute: &Path) -> Result<(), StoreError> {
    let path = data_dir.join(LOCATION_FILE);
    let tmp = data_dir.join(format!("{LOCATION_FILE}.tmp"));
    // TOML basic strings escape like JSON strings; the path is informational, so a
    // non-UTF-8 one is written lossily.
    let dir = serde_json::to_string(&absolute.to_string_lossy())
        .map_err(|e| io("encoding the data directory")(std::io::Error::other(e)))?;
    let text = format!(
        "# letstalkd: the key of {DB_FILE} is in the OS keyring (Secret Service), in the item\n\
         # with the attributes application = \"letstalk\" and letstalk-key-id = id below.\n\
         # This file is not secret. Without that item the database cannot be read.\n\
         store = \"{SECRET_SERVICE}\"\nid = \"{id}\"\ndata-dir = {dir}\n"
    );
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io(format!("creating {}", tmp.display())))?;
    file.write_all(text.as_bytes()).map_err(io(format!("writing {}", tmp.display())))?;
    file.sync_all().map_err(io(format!("syncing {}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(io(format!("renaming to {}", path.display())))?;
    sync_dir(data_dir)
}

fn read_key_file(data_dir: &Path) -> Result<DbKey, StoreError> {
    let path = data_dir.join(KEY_FILE);
    let text =
        Zeroizing::new(std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?);
    DbKey::from_hex(&text).ok_or(StoreError::BadKey(path))
}

fn write_key_file(data_dir: &Path, key: &DbKey) -> Result<(), StoreError> {
    let path = data_dir.join(KEY_FILE);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(io(format!("creating {}", path.display())))?;
    file.write_all(key.to_hex().as_bytes()).map_err(io("writing the database key"))?;
    file.sync_all().map_err(io("syncing the database key"))?;
    sync_dir(data_dir)
}

/// Overwrites a key file with random digits, syncs it and unlinks it. On flash the old
/// blocks may survive the overwrite; that is why the key, not the database, is what gets
/// destroyed, and why the keyring is preferred where there is one.
fn shred(path: &Path) -> Result<(), StoreError> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io(format!("opening {}", path.display())))?;
    let noise: [u8; 64] = rand::random();
    file.write_all(hex::encode(noise).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io("overwriting the database key"))?;
    std::fs::remove_file(path).map_err(io(format!("removing {}", path.display())))
}

/// Runs a keyring operation from blocking code: on the caller's runtime when called on
/// one of its blocking threads (`spawn_blocking`), else on a small runtime of its own.
/// Never call it on an async task (tokio panics: blocking there would stall the runtime).
pub fn block_on<T>(op: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => handle.block_on(op),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io("starting a runtime for the keyring"))?
            .block_on(op),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location() -> Location {
        Location { store: SECRET_SERVICE.into(), id: "ab".repeat(16), data_dir: "/d".into() }
    }

    #[test]
    fn the_decision_table() {
        let found =
            |key_file, location: Option<Location>, database| Found { key_file, location, database };
        for mode in [Keyring::Auto, Keyring::Off] {
            // An existing key stays where it is, whatever the mode.
            assert_eq!(plan(&found(true, None, true), mode), Plan::ReadFile);
            assert_eq!(plan(&found(true, None, false), mode), Plan::ReadFile);
            assert_eq!(
                plan(&found(false, Some(location()), true), mode),
                Plan::ReadKeyring(location())
            );
            assert_eq!(
                plan(&found(false, Some(location()), false), mode),
                Plan::ReadKeyring(location())
            );
            // Never a new key over existing data, never a guess between two keys.
            assert_eq!(plan(&found(false, None, true), mode), Plan::Missing);
            assert_eq!(plan(&found(true, Some(location()), true), mode), Plan::Conflict);
        }
        // Only a new data directory follows the mode.
        assert_eq!(
            plan(&found(false, None, false), Keyring::Auto),
            Plan::Create { try_keyring: true }
        );
        assert_eq!(
            plan(&found(false, None, false), Keyring::Off),
            Plan::Create { try_keyring: false }
        );
    }

    #[test]
    fn the_location_file_round_trips_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("a \"quoted\" dir");
        std::fs::create_dir(&odd).unwrap();
        write_location(&odd, &"0f".repeat(16), &odd).unwrap();
        let found = Found::scan(&odd).unwrap();
        assert_eq!(
            found.location,
            Some(Location {
                store: SECRET_SERVICE.into(),
                id: "0f".repeat(16),
                data_dir: odd.clone()
            })
        );
        assert!(!odd.join(format!("{LOCATION_FILE}.tmp")).exists());
        for bad in
            ["", "store = \"secret-service\"\n", "store = \"x\"\nid = \"zz\"\ndata-dir = \"/\"\n"]
        {
            assert!(parse_location(bad).is_none(), "{bad:?}");
        }
        std::fs::write(odd.join(LOCATION_FILE), "garbage").unwrap();
        assert!(matches!(Found::scan(&odd), Err(StoreError::BadLocation(_))));
    }

    #[test]
    fn file_keys_are_made_once_read_back_and_shredded() {
        let dir = tempfile::tempdir().unwrap();
        let key = load_or_create_file(dir.path()).unwrap();
        assert_eq!(load_or_create_file(dir.path()).unwrap().to_hex(), key.to_hex());
        assert_eq!(format!("{key:?}"), "DbKey(<redacted>)");
        assert_eq!(block_on(destroy_key(dir.path())).unwrap(), Destroyed::KeyFile);
        assert!(!dir.path().join(KEY_FILE).exists());
        assert_eq!(block_on(destroy_key(dir.path())).unwrap(), Destroyed::Nothing);
        // A keyring data directory is never given a key file behind its back.
        write_location(dir.path(), &"0f".repeat(16), dir.path()).unwrap();
        assert!(matches!(load_or_create_file(dir.path()), Err(StoreError::KeyInKeyring(_))));
        assert!(!dir.path().join(KEY_FILE).exists());
    }
}
