//! The typed requests: one method per relay request, each checking its answer.

use std::time::{Duration, Instant};

use ed25519_dalek::Signer;
use letstalk_wire::{ErrorKind, MAX_AVATAR_LEN, MAX_MESSAGE_LEN, Request, Response, auth_message};

use crate::{
    Avatar, AvatarUpdate, Bundle, Identity, KeyUpload, Link, LinkError, PresenceInfo, Profile,
    Registration, Sent, SigningKey, authed_as, conn,
};

impl Link {
    /// Sends a request and turns an error response into [`LinkError::Relay`].
    async fn call_on(&self, conn: &quinn::Connection, req: Request) -> Result<Response, LinkError> {
        match conn::exchange(conn, &req, self.shared.request_timing()).await? {
            Response::Error { kind, retry_after_ms, message } => {
                if matches!(kind, ErrorKind::UnknownDevice) {
                    self.shared.set_identity(None);
                    self.shared.set_user(None);
                }
                Err(LinkError::Relay { kind, message, retry_after_ms })
            }
            r => Ok(r),
        }
    }

    async fn call(&self, req: Request) -> Result<Response, LinkError> {
        let current = self.live().await?;
        self.call_on(&current.conn, req).await
    }

    /// Register or login on the current connection; on success the link keeps the
    /// identity and authenticates every later connection with it.
    async fn bind_with(
        &self,
        key: SigningKey,
        user_id: &str,
        make: impl FnOnce([u8; 32], [u8; 64]) -> Request,
    ) -> Result<String, LinkError> {
        let current = self.live().await?;
        let user = user_id.to_ascii_lowercase();
        let signature =
            key.sign(&auth_message(&current.challenge, &current.exporter, &user)).to_bytes();
        let req = make(key.verifying_key().to_bytes(), signature);
        match self.call_on(&current.conn, req).await? {
            Response::Authenticated { user_id, device_id } => {
                self.shared.set_device(device_id);
                let identity = Identity { user_id: user_id.clone(), key };
                let authed = authed_as(&identity);
                self.shared.set_identity(Some(identity));
                // The live connection now acts for this identity: no reconnect needed.
                let id = current.conn.stable_id();
                self.shared.current.send_modify(|c| {
                    if let Some(c) = c.as_mut().filter(|c| c.conn.stable_id() == id) {
                        c.authed = Some(authed);
                    }
                });
                self.shared.set_user(Some(user_id.clone()));
                Ok(user_id)
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Authenticates as `user_id`'s device `key`, which another device of the account has
    /// just added (linking): from now on the link authenticates every connection with it.
    pub async fn authenticate(&self, user_id: &str, key: SigningKey) -> Result<String, LinkError> {
        let user = user_id.to_ascii_lowercase();
        self.bind_with(key, &user.clone(), |device_key, signature| Request::Auth {
            user_id: user,
            device_key,
            signature,
        })
        .await
    }

    /// Creates an account and binds this device's `key` to it; the link then
    /// authenticates with it on every reconnect. Returns the lowercased user id.
    pub async fn register(&self, reg: Registration, key: SigningKey) -> Result<String, LinkError> {
        let user = reg.user_id.to_ascii_lowercase();
        self.bind_with(key, &user.clone(), |device_key, signature| Request::Register {
            user_id: user,
            password: reg.password,
            email: reg.email,
            nickname: reg.nickname,
            device_key,
            signature,
            identity: reg.identity,
        })
        .await
    }

    /// Binds this device's `key` to an existing account (the account moves here; its old
    /// device gets `LoggedOut`).
    pub async fn login(
        &self,
        user_id: &str,
        password: &str,
        key: SigningKey,
    ) -> Result<String, LinkError> {
        let user = user_id.to_ascii_lowercase();
        let password = password.to_owned();
        self.bind_with(key, &user.clone(), |device_key, signature| Request::Login {
            user_id: user,
            password,
            device_key,
            signature,
        })
        .await
    }

    /// Unbinds this device from the account and forgets the identity.
    pub async fn logout(&self) -> Result<(), LinkError> {
        expect_ok(self.call(Request::Logout).await?)?;
        self.shared.set_identity(None);
        self.shared.set_user(None);
        Ok(())
    }

    /// Deletes the account on the relay and forgets the identity.
    pub async fn delete_account(&self) -> Result<(), LinkError> {
        expect_ok(self.call(Request::DeleteAccount).await?)?;
        self.shared.set_identity(None);
        self.shared.set_user(None);
        Ok(())
    }

    /// Changes the password.
    pub async fn change_password(
        &self,
        old_password: &str,
        new_password: &str,
    ) -> Result<(), LinkError> {
        expect_ok(
            self.call(Request::ChangePassword {
                old_password: old_password.to_owned(),
                new_password: new_password.to_owned(),
            })
            .await?,
        )
    }

    /// One's own profile (with email).
    pub async fn profile(&self) -> Result<Profile, LinkError> {
        match self.call(Request::GetProfile).await? {
            Response::Profile(p) => Ok(p),
            other => Err(unexpected(&other)),
        }
    }

    /// Changes one's own profile; watchers get a `ProfileChanged` push.
    pub async fn update_profile(
        &self,
        nickname: Option<String>,
        email: Option<String>,
        avatar: AvatarUpdate,
    ) -> Result<Profile, LinkError> {
        if let AvatarUpdate::Set(a) = &avatar
            && a.data.len() > MAX_AVATAR_LEN
        {
            return Err(LinkError::TooLarge("avatar"));
        }
        match self.call(Request::UpdateProfile { nickname, email, avatar }).await? {
            Response::Profile(p) => Ok(p),
            other => Err(unexpected(&other)),
        }
    }

    /// Another user's public profile; `not_found` if no such account.
    pub async fn lookup_user(&self, user_id: &str) -> Result<Profile, LinkError> {
        match self.call(Request::LookupUser { user_id: user_id.to_owned() }).await? {
            Response::Profile(p) => Ok(p),
            other => Err(unexpected(&other)),
        }
    }

    /// A user's avatar.
    pub async fn fetch_avatar(&self, user_id: &str) -> Result<Avatar, LinkError> {
        match self.call(Request::FetchAvatar { user_id: user_id.to_owned() }).await? {
            Response::Avatar(a) => Ok(a),
            other => Err(unexpected(&other)),
        }
    }

    /// Uploads identity bytes and prekeys; returns how many one-time prekeys the relay
    /// now holds.
    pub async fn upload_keys(&self, keys: KeyUpload) -> Result<u32, LinkError> {
        let req = Request::UploadKeys {
            identity: keys.identity,
            signed_prekey: keys.signed_prekey,
            one_time_prekeys: keys.one_time_prekeys,
            last_resort: keys.last_resort,
        };
        match self.call(req).await? {
            Response::KeyCount { one_time_remaining } => Ok(one_time_remaining),
            other => Err(unexpected(&other)),
        }
    }

    /// How many one-time prekeys the relay still holds for this account.
    pub async fn key_count(&self) -> Result<u32, LinkError> {
        match self.call(Request::KeyCount).await? {
            Response::KeyCount { one_time_remaining } => Ok(one_time_remaining),
            other => Err(unexpected(&other)),
        }
    }

    /// A user's prekey bundle (takes one of their one-time prekeys).
    pub async fn fetch_bundle(&self, user_id: &str) -> Result<Bundle, LinkError> {
        match self.call(Request::FetchBundle { user_id: user_id.to_owned() }).await? {
            Response::Bundle(b) => Ok(b),
            other => Err(unexpected(&other)),
        }
    }

    /// Adds and removes watched users; returns the presence of the added ones that exist.
    pub async fn watch(
        &self,
        add: Vec<String>,
        remove: Vec<String>,
    ) -> Result<Vec<PresenceInfo>, LinkError> {
        match self.call(Request::Watch { add, remove }).await? {
            Response::Presence { users } => Ok(users),
            other => Err(unexpected(&other)),
        }
    }

    /// Replaces this account's contact list and whether it shares its presence: the
    /// relay shows this account's presence only to contacts it does not block.
    pub async fn set_contacts(
        &self,
        share_presence: bool,
        users: Vec<String>,
    ) -> Result<(), LinkError> {
        expect_ok(self.call(Request::SetContacts { share_presence, users }).await?)
    }

    /// Hands a message to the relay; returns once the relay has persisted it. Retrying
    /// with the same `msg_id` never stores it twice.
    pub async fn send(&self, to: &str, msg_id: &str, body: Vec<u8>) -> Result<Sent, LinkError> {
        if body.len() > MAX_MESSAGE_LEN {
            return Err(LinkError::TooLarge("message"));
        }
        match self
            .call(Request::Send { to: to.to_owned(), msg_id: msg_id.to_owned(), body })
            .await?
        {
            Response::Sent { server_ts, duplicate } => Ok(Sent { server_ts, duplicate }),
            other => Err(unexpected(&other)),
        }
    }

    /// Tells the relay these pushed messages are stored on the device (it deletes them).
    pub async fn ack(&self, delivery_ids: &[u64]) -> Result<(), LinkError> {
        for chunk in delivery_ids.chunks(letstalk_wire::MAX_LIST) {
            expect_ok(self.call(Request::Ack { delivery_ids: chunk.to_vec() }).await?)?;
        }
        Ok(())
    }

    /// Measures one request round trip.
    pub async fn ping(&self) -> Result<Duration, LinkError> {
        let nonce: u64 = rand::random();
        let started = Instant::now();
        match self.call(Request::Ping { nonce }).await? {
            Response::Pong { nonce: n } if n == nonce => Ok(started.elapsed()),
            other => Err(unexpected(&other)),
        }
    }
}

fn expect_ok(r: Response) -> Result<(), LinkError> {
    match r {
        Response::Ok => Ok(()),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(r: &Response) -> LinkError {
    LinkError::Protocol(format!("unexpected response {r:?}"))
}

/// An answer that is not the one expected: the relay's refusal, or a protocol error.
pub(crate) fn refusal(r: Response) -> LinkError {
    match r {
        Response::Error { kind, retry_after_ms, message } => {
            LinkError::Relay { kind, message, retry_after_ms }
        }
        other => unexpected(&other),
    }
}
