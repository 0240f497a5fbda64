//! The account writes that take more than one step: creating an account (its record,
//! `blocks.<user>` and directory entry), binding a device (its keys and one-time
//! prekeys go with the old one), deleting an account (everything naming it, in every
//! bucket and stream), changing a profile (avatar object and record) and storing a
//! device's keys. The `Storage` impl in `mod.rs` calls these.

use super::*;

impl NatsStorage {
    pub(super) async fn insert_account(&self, a: NewAccount) -> Result<(), StorageError> {
        let key = token(&a.user_id);
        let device = hex::encode(a.device_key);
        let rec = AccountRec {
            password_hash: a.password_hash,
            email: a.email,
            nickname: a.nickname,
            device_key: Some(device.clone()),
            created_at: a.now,
            updated_at: a.now,
            avatar: None,
        };
        let mut rec = Some(rec);
        modify(&self.inner.accounts, &key, |cur: Option<AccountRec>| match (cur, rec.take()) {
            (Some(_), _) => Err(StorageError::Conflict),
            (None, Some(r)) => Ok(Change::Put(r, ())),
            (None, None) => Err(StorageError::Backend("account record retried".into())),
        })
        .await?;
        let dir = DirectoryRec {
            device_key: Some(device),
            identity: hex::encode(&a.identity),
            ..DirectoryRec::default()
        };
        put(&self.inner.directory, &key, &dir).await?;
        put(&self.inner.accounts, &blocks_key(&a.user_id), &BlocksRec::default()).await?;
        Ok(())
    }

    pub(super) async fn rebind_device(
        &self,
        user_id: &str,
        device_key: Option<[u8; 32]>,
    ) -> Result<(), StorageError> {
        let key = token(user_id);
        let wanted = device_key.map(hex::encode);
        let changed = modify(&self.inner.accounts, &key, |cur: Option<AccountRec>| {
            let mut a = cur.ok_or(StorageError::NotFound)?;
            if a.device_key == wanted {
                return Ok(Change::Keep(false));
            }
            a.device_key.clone_from(&wanted);
            Ok(Change::Put(a, true))
        })
        .await?;
        if changed {
            // The old device's keys go with it. The record names its device, so a reader
            // in between sees the old device's complete bundle, never a mixture.
            self.purge_one_time(user_id).await?;
            put(&self.inner.directory, &key, &DirectoryRec::for_device(wanted.as_ref())).await?;
        }
        Ok(())
    }

    pub(super) async fn erase_account(&self, user_id: &str) -> Result<(), StorageError> {
        let key = token(user_id);
        let inner = &self.inner;
        // Erased, not just purged: a purge leaves a marker whose subject names the key.
        erase(&inner.accounts, &key).await?;
        erase(&inner.accounts, &blocks_key(user_id)).await?;
        erase(&inner.accounts, &seen_key(user_id)).await?;
        erase(&inner.directory, &key).await?;
        self.purge_one_time(user_id).await?;
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
        k: KeyUpload,
    ) -> Result<u32, StorageError> {
        let account = self.account(user_id).await?.ok_or(StorageError::NotFound)?;
        let device = account.device_key;
        let key = token(user_id);
        // The record is written by the account's own device only (and by a login that
        // replaces it): a plain read and put.
        let current: Option<(DirectoryRec, u64)> = read(&self.inner.directory, &key).await?;
        let mut d = match current {
            Some((d, _)) if d.device_key == device => d,
            _ => DirectoryRec::for_device(device.as_ref()),
        };
        if let Some(identity) = &k.identity {
            d.identity = hex::encode(identity);
        }
        if let Some(p) = &k.signed_prekey {
            d.signed_prekey = Some((p.id, hex::encode(&p.key)));
        }
        if let Some(p) = &k.last_resort {
            d.last_resort = Some((p.id, hex::encode(&p.key)));
        }
        put(&self.inner.directory, &key, &d).await?;
        let device = device.unwrap_or_default();
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
                .send_publish(prekeys_subject(user_id), publish)
                .await
                .map_err(|e| backend("storing a prekey", e))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(|e| backend("storing a prekey", e))?;
        }
        self.one_time_count(user_id).await
    }
}
