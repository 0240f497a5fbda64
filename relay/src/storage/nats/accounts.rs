//! The account writes that take more than one step: creating an account (its record,
//! `blocks.<user>`, directory entry and device key index), the devices (a login that
//! moves the account, an added device, a renamed one, a removed one: its mailbox, keys
//! and prekeys go with it), deleting an account (everything naming it, in every bucket
//! and stream), changing a profile (avatar object and record) and storing a device's
//! keys. The `Storage` impl in `mod.rs` calls these.

use super::*;

impl NatsStorage {
    pub(super) async fn insert_account(&self, a: NewAccount) -> Result<(), StorageError> {
        let key = token(&a.user_id);
        let device = hex::encode(a.device_key);
        let rec = AccountRec {
            password_hash: a.password_hash,
            email: a.email,
            nickname: a.nickname,
            device_key: None,
            created_at: a.now,
            updated_at: a.now,
            avatar: None,
            devices: [(
                1,
                DeviceRec { key: device.clone(), name: String::new(), linked_at: a.now },
            )]
            .into(),
            next_device: 2,
        };
        let mut rec = Some(rec);
        modify(&self.inner.accounts, &key, |cur: Option<AccountRec>| match (cur, rec.take()) {
            (Some(_), _) => Err(StorageError::Conflict),
            (None, Some(r)) => Ok(Change::Put(r, ())),
            (None, None) => Err(StorageError::Backend("account record retried".into())),
        })
        .await?;
        let dir = DirectoryRec { identity: hex::encode(&a.identity), ..DirectoryRec::default() };
        put(&self.inner.directory, &key, &dir).await?;
        put(
            &self.inner.directory,
            &dir_key(&a.user_id, 1),
            &DirectoryRec::for_device(Some(&device)),
        )
        .await?;
        put(&self.inner.accounts, &blocks_key(&a.user_id), &BlocksRec::default()).await?;
        set_member(&self.inner.accounts, &key_index(&device), &a.user_id, true).await?;
        Ok(())
    }

    /// A password login: every device but the one with `device_key` goes; that key
    /// keeps its device or becomes a new one.
    pub(super) async fn move_account(
        &self,
        user_id: &str,
        device_key: [u8; 32],
        now: u64,
    ) -> Result<LoggedIn, StorageError> {
        let wanted = hex::encode(device_key);
        let (moved, gone) =
            modify(&self.inner.accounts, &token(user_id), |cur: Option<AccountRec>| {
                let mut a = cur.ok_or(StorageError::NotFound)?.normalize();
                let kept = a.device_with_key(&wanted);
                let removed: Vec<(u32, DeviceRec)> = a
                    .devices
                    .iter()
                    .filter(|(id, _)| Some(**id) != kept)
                    .map(|(id, d)| (*id, d.clone()))
                    .collect();
                let device_id = match kept {
                    Some(id) => id,
                    None => {
                        let id = a.next_device;
                        let rec =
                            DeviceRec { key: wanted.clone(), name: String::new(), linked_at: now };
                        a.devices.insert(id, rec);
                        a.next_device = id.saturating_add(1);
                        id
                    }
                };
                a.devices.retain(|id, _| *id == device_id);
                let ids = removed.iter().map(|(id, _)| *id).collect();
                Ok(Change::Put(a, (LoggedIn { device_id, removed: ids }, removed)))
            })
            .await?;
        for (id, d) in gone {
            self.purge_device(user_id, id, &d.key).await?;
        }
        put(
            &self.inner.directory,
            &dir_key(user_id, moved.device_id),
            &self.device_directory(user_id, moved.device_id, &wanted).await?,
        )
        .await?;
        set_member(&self.inner.accounts, &key_index(&wanted), user_id, true).await?;
        Ok(moved)
    }

    pub(super) async fn insert_device(
        &self,
        user_id: &str,
        device_key: [u8; 32],
        name: Vec<u8>,
        now: u64,
    ) -> Result<u32, StorageError> {
        let wanted = hex::encode(device_key);
        // Any account holding the key (the index may name accounts that dropped it since).
        let holders: BTreeSet<String> = read(&self.inner.accounts, &key_index(&wanted))
            .await?
            .map(|(s, _)| s)
            .unwrap_or_default();
        for holder in &holders {
            if self.account(holder).await?.is_some_and(|a| a.device_with_key(&wanted).is_some()) {
                return Err(StorageError::Conflict);
            }
        }
        let name = hex::encode(name);
        let id = modify(&self.inner.accounts, &token(user_id), |cur: Option<AccountRec>| {
            let mut a = cur.ok_or(StorageError::NotFound)?.normalize();
            if a.device_with_key(&wanted).is_some() {
                return Err(StorageError::Conflict);
            }
            if a.devices.len() >= MAX_DEVICES {
                return Err(StorageError::QuotaExceeded);
            }
            let id = a.next_device;
            a.devices
                .insert(id, DeviceRec { key: wanted.clone(), name: name.clone(), linked_at: now });
            a.next_device = id.saturating_add(1);
            Ok(Change::Put(a, id))
        })
        .await?;
        put(&self.inner.directory, &dir_key(user_id, id), &DirectoryRec::for_device(Some(&wanted)))
            .await?;
        set_member(&self.inner.accounts, &key_index(&wanted), user_id, true).await?;
        Ok(id)
    }

    pub(super) async fn delete_device(
        &self,
        user_id: &str,
        device_id: u32,
    ) -> Result<bool, StorageError> {
        let gone = modify(&self.inner.accounts, &token(user_id), |cur: Option<AccountRec>| {
            let Some(a) = cur else { return Ok(Change::Keep(None)) };
            let mut a = a.normalize();
            match a.devices.remove(&device_id) {
                Some(d) => Ok(Change::Put(a, Some(d))),
                None => Ok(Change::Keep(None)),
            }
        })
        .await?;
        let Some(d) = gone else { return Ok(false) };
        self.purge_device(user_id, device_id, &d.key).await?;
        Ok(true)
    }

    /// Replaces a device's sealed name in the account record (compare-and-set, so a
    /// concurrent add or removal is never lost); false for no such device or account.
    pub(super) async fn set_device_name(
        &self,
        user_id: &str,
        device_id: u32,
        name: Vec<u8>,
    ) -> Result<bool, StorageError> {
        let name = hex::encode(name);
        modify(&self.inner.accounts, &token(user_id), |cur: Option<AccountRec>| {
            let Some(a) = cur else { return Ok(Change::Keep(false)) };
            let mut a = a.normalize();
            match a.devices.get_mut(&device_id) {
                Some(d) => {
                    d.name.clone_from(&name);
                    Ok(Change::Put(a, true))
                }
                None => Ok(Change::Keep(false)),
            }
        })
        .await
    }

    /// Everything of a device that is gone: its mailbox, its one-time prekeys, its
    /// directory entry and last-seen, its place in the key index.
    pub(super) async fn purge_device(
        &self,
        user_id: &str,
        device_id: u32,
        key: &str,
    ) -> Result<(), StorageError> {
        for filter in device_mailbox_filters(user_id, device_id) {
            self.inner
                .mailbox
                .purge()
                .filter(filter)
                .await
                .map_err(|e| backend("purging a mailbox", e))?;
        }
        self.purge_one_time(user_id, device_id).await?;
        erase(&self.inner.directory, &dir_key(user_id, device_id)).await?;
        erase(&self.inner.accounts, &device_seen_key(user_id, device_id)).await?;
        if device_id == 1 {
            // A record written before devices kept device 1's keys with the identity.
            let legacy: Option<(DirectoryRec, u64)> =
                read(&self.inner.directory, &token(user_id)).await?;
            if let Some((d, _)) = legacy.filter(|(d, _)| d.device_key.is_some()) {
                let only_identity =
                    DirectoryRec { identity: d.identity, ..DirectoryRec::default() };
                put(&self.inner.directory, &token(user_id), &only_identity).await?;
            }
        }
        set_member(&self.inner.accounts, &key_index(key), user_id, false).await
    }

    /// The directory entry a device starts with: empty, or for device 1 of a record
    /// written before devices, the keys kept with the identity.
    pub(super) async fn device_directory(
        &self,
        user_id: &str,
        device_id: u32,
        key: &str,
    ) -> Result<DirectoryRec, StorageError> {
        let own: Option<(DirectoryRec, u64)> =
            read(&self.inner.directory, &dir_key(user_id, device_id)).await?;
        if let Some((d, _)) = own.filter(|(d, _)| d.device_key.as_deref() == Some(key)) {
            return Ok(d);
        }
        if device_id == 1 {
            let legacy: Option<(DirectoryRec, u64)> =
                read(&self.inner.directory, &token(user_id)).await?;
            if let Some((d, _)) = legacy.filter(|(d, _)| d.device_key.as_deref() == Some(key)) {
                return Ok(DirectoryRec { identity: String::new(), ..d });
            }
        }
        Ok(DirectoryRec::for_device(Some(&key.to_owned())))
    }

    pub(super) async fn erase_account(&self, user_id: &str) -> Result<(), StorageError> {
        let key = token(user_id);
        let inner = &self.inner;
        // The key index names the account: its devices leave it first.
        if let Some(a) = self.account(user_id).await? {
            for d in a.devices.values() {
                set_member(&inner.accounts, &key_index(&d.key), user_id, false).await?;
            }
        }
        self.close_link(user_id).await?;
        // Erased, not just purged: a purge leaves a marker whose subject names the key.
        erase(&inner.accounts, &key).await?;
        erase(&inner.accounts, &blocks_key(user_id)).await?;
        erase(&inner.accounts, &seen_key(user_id)).await?;
        erase(&inner.accounts, &format!("{}.>", seen_key(user_id))).await?;
        erase(&inner.directory, &key).await?;
        erase(&inner.directory, &format!("{key}.>")).await?;
        for filter in [legacy_prekeys_subject(user_id), format!("{PREKEYS_PREFIX}.{key}.>")] {
            inner
                .prekeys
                .purge()
                .filter(filter)
                .await
                .map_err(|e| backend("purging prekeys", e))?;
        }
        // Watches both ways, like the embedded back end's cascades.
        let watched: BTreeSet<String> =
            read(&inner.watches, &format!("by.{key}")).await?.map(|(s, _)| s).unwrap_or_default();
        for w in &watched {
            set_member(&inner.watches, &format!("of.{}", token(w)), user_id, false).await?;
        }
        let watchers: BTreeSet<String> =
            read(&inner.watches, &format!("of.{key}")).await?.map(|(s, _)| s).unwrap_or_default();
        for w in &watchers {
            set_member(&inner.watches, &format!("by.{}", token(w)), user_id, false).await?;
        }
        erase(&inner.watches, &format!("by.{key}")).await?;
        erase(&inner.watches, &format!("of.{key}")).await?;
        // Its mailbox, and what it sent that is still queued for others (it names the
        // account); then its reports.
        let t = token(user_id);
        for filter in [
            mailbox_filter(user_id),
            legacy_mailbox_subject(user_id),
            format!("{MAILBOX_PREFIX}.*.c.{t}"),
            format!("{MAILBOX_PREFIX}.*.s.{t}"),
            format!("{MAILBOX_PREFIX}.*.*.c.{t}"),
            format!("{MAILBOX_PREFIX}.*.*.s.{t}"),
        ] {
            inner
                .mailbox
                .purge()
                .filter(filter)
                .await
                .map_err(|e| backend("purging a mailbox", e))?;
        }
        inner
            .reports
            .purge()
            .filter(format!("{REPORTS_PREFIX}.*.{t}"))
            .await
            .map_err(|e| backend("purging reports", e))?;
        let _ = inner.avatars.delete(key.as_str()).await;
        self.erase_object_meta(AVATARS, &key).await?;
        // Its file blobs (`<blob id hex>-<owner>`, the owner compared whole).
        let mut owned = Vec::new();
        {
            let mut list = inner.blobs.list().await.map_err(|e| backend("listing blobs", e))?;
            while let Some(info) = futures::StreamExt::next(&mut list).await {
                let info = info.map_err(|e| backend("listing blobs", e))?;
                if info.name.split_once('-').is_some_and(|(_, o)| o == user_id) {
                    owned.push(info.name);
                }
            }
        }
        for name in owned {
            let _ = inner.blobs.delete(name.as_str()).await;
            self.erase_object_meta(BLOBS, &name).await?;
        }
        Ok(())
    }

    pub(super) async fn change_profile(
        &self,
        user_id: &str,
        u: ProfileUpdate,
    ) -> Result<Profile, StorageError> {
        let key = token(user_id);
        let avatar = match &u.avatar {
            AvatarUpdate::Keep => None,
            AvatarUpdate::Remove => Some(None),
            AvatarUpdate::Set(a) => {
                if self.account(user_id).await?.is_none() {
                    return Err(StorageError::NotFound);
                }
                // The bytes first: a record never names an avatar that is not stored.
                self.inner
                    .avatars
                    .put(key.as_str(), &mut a.data.as_slice())
                    .await
                    .map_err(|e| backend("storing the avatar", e))?;
                Some(Some(AvatarRec {
                    mime: a.mime.clone(),
                    sha256: hex::encode(Sha256::digest(&a.data)),
                    size: u32::try_from(a.data.len()).unwrap_or(u32::MAX),
                }))
            }
        };
        let profile = modify(&self.inner.accounts, &key, |cur: Option<AccountRec>| {
            let mut a = cur.ok_or(StorageError::NotFound)?;
            if let Some(n) = &u.nickname {
                a.nickname.clone_from(n);
            }
            if let Some(e) = &u.email {
                a.email.clone_from(e);
            }
            if let Some(av) = &avatar {
                a.avatar.clone_from(av);
            }
            a.updated_at = u.now;
            let p = a.profile(user_id)?;
            Ok(Change::Put(a, p))
        })
        .await?;
        if matches!(u.avatar, AvatarUpdate::Remove) {
            let _ = self.inner.avatars.delete(key.as_str()).await;
        }
        Ok(profile)
    }

    pub(super) async fn store_keys(
        &self,
        user_id: &str,
        device_id: u32,
        k: KeyUpload,
    ) -> Result<u32, StorageError> {
        let account = self.account(user_id).await?.ok_or(StorageError::NotFound)?;
        let device = account.devices.get(&device_id).ok_or(StorageError::NotFound)?.key.clone();
        // The records are written by the account's own devices only (each its own; the
        // identity by whichever uploads it): a plain read and put.
        if let Some(identity) = &k.identity {
            let key = token(user_id);
            let current: Option<(DirectoryRec, u64)> = read(&self.inner.directory, &key).await?;
            let mut d = current.map(|(d, _)| d).unwrap_or_default();
            d.identity = hex::encode(identity);
            put(&self.inner.directory, &key, &d).await?;
        }
        let mut d = self.device_directory(user_id, device_id, &device).await?;
        if let Some(p) = &k.signed_prekey {
            d.signed_prekey = Some((p.id, hex::encode(&p.key)));
        }
        if let Some(p) = &k.last_resort {
            d.last_resort = Some((p.id, hex::encode(&p.key)));
        }
        put(&self.inner.directory, &dir_key(user_id, device_id), &d).await?;
        let mut acks = Vec::with_capacity(k.one_time.len());
        for p in &k.one_time {
            let mut h = Sha256::new();
            h.update(user_id.as_bytes());
            h.update([0]);
            h.update(device.as_bytes());
            h.update(p.id.to_be_bytes());
            let publish = jetstream::message::PublishMessage::build()
                .payload(Bytes::from(p.key.clone()))
                .message_id(hex::encode(&h.finalize()[..16]))
                .header(H_KEY_ID, p.id.to_string().as_str())
                .header(H_DEVICE, device.as_str());
            let ack = self
                .inner
                .js
                .send_publish(prekeys_subject(user_id, device_id), publish)
                .await
                .map_err(|e| backend("storing a prekey", e))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(|e| backend("storing a prekey", e))?;
        }
        self.count_one_time(user_id, device_id).await
    }
}
