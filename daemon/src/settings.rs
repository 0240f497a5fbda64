//! The settings as the daemon keeps them: one row per key in the `settings` table,
//! defaults for absent keys (`settings.get` and `settings.set` are in `methods`).

use rusqlite::{Connection, OptionalExtension};

use letstalk_ipc::RpcError;
use letstalk_ipc::types::{self as ipc, SettingsPatch};

use crate::store::StoreError;

/// The settings (domain type; converted to the IPC shape at the boundary).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub block_all: bool,
    pub read_receipts: bool,
    pub typing: bool,
    pub share_presence: bool,
    pub diagnostics_upload: bool,
    pub auto_download_wifi: bool,
    pub auto_download_cellular: bool,
    pub keepalive_wifi_s: u32,
    pub keepalive_cellular_s: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            block_all: false,
            read_receipts: true,
            typing: true,
            share_presence: true,
            diagnostics_upload: false,
            auto_download_wifi: true,
            auto_download_cellular: false,
            // Cellular NAT bindings for UDP can expire in about 30 s; 20 s keeps them. Wi-Fi
            // routers keep them longer (RFC 9000 §10.1.2: a packet every 30 s keeps most
            // middleboxes' state); 25 s keeps a margin and wakes the phone less (issue 22).
            keepalive_wifi_s: 25,
            keepalive_cellular_s: 20,
        }
    }
}

const KEEPALIVE_RANGE: std::ops::RangeInclusive<u32> = 5..=3600;

impl Settings {
    /// Reads the settings, defaults for keys never set.
    pub fn load(conn: &Connection) -> Result<Self, StoreError> {
        let mut s = Self::default();
        let mut stmt = conn.prepare_cached("SELECT key, value FROM settings")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (key, v) = row?;
            let flag = v != 0;
            let secs = u32::try_from(v).unwrap_or(20);
            match key.as_str() {
                "block_all" => s.block_all = flag,
                "read_receipts" => s.read_receipts = flag,
                "typing" => s.typing = flag,
                "share_presence" => s.share_presence = flag,
                "diagnostics_upload" => s.diagnostics_upload = flag,
                "auto_download.wifi" => s.auto_download_wifi = flag,
                "auto_download.cellular" => s.auto_download_cellular = flag,
                "keepalive_s.wifi" => s.keepalive_wifi_s = secs,
                "keepalive_s.cellular" => s.keepalive_cellular_s = secs,
                // A key from a newer version: ignored, kept.
                _ => {}
            }
        }
        Ok(s)
    }

    pub(crate) fn rows(&self) -> [(&'static str, i64); 9] {
        [
            ("block_all", self.block_all.into()),
            ("read_receipts", self.read_receipts.into()),
            ("typing", self.typing.into()),
            ("share_presence", self.share_presence.into()),
            ("diagnostics_upload", self.diagnostics_upload.into()),
            ("auto_download.wifi", self.auto_download_wifi.into()),
            ("auto_download.cellular", self.auto_download_cellular.into()),
            ("keepalive_s.wifi", self.keepalive_wifi_s.into()),
            ("keepalive_s.cellular", self.keepalive_cellular_s.into()),
        ]
    }

    /// Writes every setting (inside the caller's transaction).
    pub fn store(&self, conn: &Connection) -> Result<(), StoreError> {
        let mut stmt = conn.prepare_cached(
            "INSERT INTO settings (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )?;
        for (key, value) in self.rows() {
            stmt.execute(rusqlite::params![key, value])?;
        }
        Ok(())
    }

    /// Applies a patch, checking every value first (all or nothing).
    pub fn apply(&self, p: &SettingsPatch) -> Result<Self, RpcError> {
        let mut s = *self;
        if let Some(v) = p.block_all {
            s.block_all = v;
        }
        if let Some(v) = p.read_receipts {
            s.read_receipts = v;
        }
        if let Some(v) = p.typing {
            s.typing = v;
        }
        if let Some(v) = p.share_presence {
            s.share_presence = v;
        }
        if let Some(v) = p.diagnostics_upload {
            s.diagnostics_upload = v;
        }
        if let Some(a) = &p.auto_download {
            s.auto_download_wifi = a.wifi.unwrap_or(s.auto_download_wifi);
            s.auto_download_cellular = a.cellular.unwrap_or(s.auto_download_cellular);
        }
        if let Some(k) = &p.keepalive_s {
            for (field, value) in
                [("keepalive_s.wifi", k.wifi), ("keepalive_s.cellular", k.cellular)]
            {
                if let Some(v) = value
                    && !KEEPALIVE_RANGE.contains(&v)
                {
                    return Err(RpcError::invalid_params(
                        field,
                        format!(
                            "{field} must be {} to {} seconds",
                            KEEPALIVE_RANGE.start(),
                            KEEPALIVE_RANGE.end()
                        ),
                    ));
                }
            }
            s.keepalive_wifi_s = k.wifi.unwrap_or(s.keepalive_wifi_s);
            s.keepalive_cellular_s = k.cellular.unwrap_or(s.keepalive_cellular_s);
        }
        Ok(s)
    }

    /// The keep-alive interval for a network type: cellular NAT bindings need the
    /// cellular one; anything else uses the Wi-Fi one.
    pub fn keepalive_for(&self, kind: ipc::NetworkType) -> std::time::Duration {
        let secs = match kind {
            ipc::NetworkType::Cellular => self.keepalive_cellular_s,
            _ => self.keepalive_wifi_s,
        };
        std::time::Duration::from_secs(u64::from(secs))
    }

    pub fn to_ipc(self) -> ipc::Settings {
        ipc::Settings {
            block_all: self.block_all,
            read_receipts: self.read_receipts,
            typing: self.typing,
            share_presence: self.share_presence,
            diagnostics_upload: self.diagnostics_upload,
            auto_download: ipc::AutoDownload {
                wifi: self.auto_download_wifi,
                cellular: self.auto_download_cellular,
            },
            keepalive_s: ipc::KeepaliveS {
                wifi: self.keepalive_wifi_s,
                cellular: self.keepalive_cellular_s,
            },
        }
    }
}

/// Whether "block everyone" is on.
pub fn blocks_everyone(conn: &Connection) -> Result<bool, StoreError> {
    Ok(conn
        .prepare_cached("SELECT value FROM settings WHERE key = 'block_all'")?
        .query_row([], |r| r.get::<_, i64>(0))
        .optional()?
        .is_some_and(|v| v != 0))
}
