//! A hostile peer for the attacker tests: an account on a real relay driven directly
//! through the project's own crates (`letstalk-link`, `letstalk-crypto` and the daemon's
//! key layouts), with no daemon in between. It can send whatever a modified client
//! could: any JSON as end-to-end content, raw envelopes, group frames, any relay request,
//! and blobs of its own. It also reads what daemons send it, so a test can see the
//! receipts and answers its attack provoked.
//!
//! It speaks the protocol honestly where that is needed to reach the victim (a real
//! X3DH session from the victim's published bundle, so the victim's daemon decrypts what
//! it sends); everything inside is the test's choice.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use letstalk_crypto::{Envelope, IdentityKeyPair, PreKeyKind, PreKeySecret, Session};
use letstalk_link::{KeyUpload, Link, LinkConfig, Push, Registration, SigningKey};
use letstalk_wire::{Request, Response};
use rand_core::{OsRng, RngCore};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::Relay;

/// How long a request to the relay may take in a test.
const WAIT: Duration = Duration::from_secs(15);

/// The version byte the daemon puts in front of an envelope's JSON content.
const CONTENT_VERSION: u8 = 1;

/// An attacker's account and device.
pub struct Peer {
    /// The (lowercased) user id.
    pub user_id: String,
    /// The relay link, for requests the helpers below do not wrap.
    pub link: Link,
    pushes: mpsc::Receiver<Push>,
    identity: IdentityKeyPair,
    prekeys: Vec<PreKeySecret>,
    sessions: HashMap<String, Session>,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer").field("user_id", &self.user_id).finish_non_exhaustive()
    }
}

/// A file the peer uploaded: what a `file` content needs to name it.
#[derive(Debug, Clone)]
pub struct UploadedFile {
    /// The blob id, hex (the `blob` field).
    pub blob: String,
    /// The file key, hex (the `key` field).
    pub key: String,
    /// SHA-256 of the plaintext, hex.
    pub sha256: String,
    /// Plaintext size.
    pub size: u64,
    /// Blob size (the age payload).
    pub blob_size: u64,
}

impl Peer {
    /// Registers `user_id` on `relay` (password "correct horse battery") and publishes
    /// an identity and prekeys in the shapes the daemon uses, so daemons can start
    /// sessions with it.
    pub async fn register(relay: &Relay, user_id: &str) -> Result<Peer> {
        let config = LinkConfig::new(relay.address(), Some(relay.cert.clone()));
        let (link, pushes) = Link::start(config, None).context("starting the peer's link")?;
        link.wait_connected(WAIT).await.context("peer connecting to the relay")?;
        let identity = IdentityKeyPair::generate(&mut OsRng);
        let device_key = SigningKey::generate(&mut OsRng);
        let registration = Registration {
            user_id: user_id.to_owned(),
            password: "correct horse battery".into(),
            email: format!("{user_id}@example.org"),
            nickname: user_id.to_owned(),
            identity: identity.public().to_bytes().to_vec(),
        };
        let user_id = link.register(registration, device_key).await.context("registering")?;
        let prekeys = letstalkd::account::generate_prekeys(&identity, &mut OsRng);
        let mut upload = KeyUpload::default();
        for k in &prekeys {
            let wire = letstalkd::keys::to_wire(k);
            match k.kind() {
                PreKeyKind::Signed => upload.signed_prekey = Some(wire),
                PreKeyKind::LastResort => upload.last_resort = Some(wire),
                PreKeyKind::OneTime => upload.one_time_prekeys.push(wire),
            }
        }
        link.upload_keys(upload).await.context("uploading the peer's keys")?;
        Ok(Peer { user_id, link, pushes, identity, prekeys, sessions: HashMap::new() })
    }

    /// The session with `to`, started from `to`'s published bundle on first use.
    async fn session(&mut self, to: &str) -> Result<&mut Session> {
        if !self.sessions.contains_key(to) {
            let bundle = self.link.fetch_bundle(to).await.context("fetching a bundle")?;
            let bundle = letstalkd::keys::bundle_from_wire(&bundle).map_err(|e| anyhow!(e))?;
            let session = Session::initiate(&self.identity, &bundle, &mut OsRng)?;
            self.sessions.insert(to.to_owned(), session);
        }
        self.sessions.get_mut(to).ok_or_else(|| anyhow!("no session"))
    }

    /// Forgets the session with `to`: the next content starts a fresh one (as a
    /// reinstalled or desynchronised client would).
    pub fn forget_session(&mut self, to: &str) {
        self.sessions.remove(to);
    }

    /// `content` (any JSON, e.g. a crafted `content.rs` value such as
    /// `{"t": "text", "id": "..", "at": 0, "text": ".."}`) as the bytes a daemon encrypts.
    pub fn encode_content(content: &Value) -> Vec<u8> {
        let mut out = vec![CONTENT_VERSION];
        out.extend(serde_json::to_vec(content).unwrap_or_default());
        out
    }

    /// Encrypts `plaintext` for `to` in the pairwise session (without sending it).
    pub async fn seal(&mut self, to: &str, plaintext: &[u8]) -> Result<Vec<u8>> {
        let session = self.session(to).await?;
        Ok(session.encrypt(plaintext, &mut OsRng)?)
    }

    /// Sends `content` to `to`, end-to-end encrypted. Returns the relay message id used.
    pub async fn send_content(&mut self, to: &str, content: Value) -> Result<String> {
        let envelope = self.seal(to, &Self::encode_content(&content)).await?;
        self.send_envelope(to, envelope).await
    }

    /// Sends raw envelope bytes to `to`. Returns the relay message id used.
    pub async fn send_envelope(&mut self, to: &str, envelope: Vec<u8>) -> Result<String> {
        let msg_id = uuid::Uuid::now_v7().to_string();
        self.link.send(to, &msg_id, envelope).await.context("sending")?;
        Ok(msg_id)
    }

    /// One `SendGroup` request: `body` fanned out by the relay to every user in `to`.
    /// Returns the relay's answer (error responses included).
    pub async fn send_group(&mut self, to: &[&str], body: Vec<u8>) -> Result<Response> {
        let to = to.iter().map(|s| (*s).to_owned()).collect();
        let msg_id = uuid::Uuid::now_v7().to_string();
        Ok(self.link.request(Request::SendGroup { to, msg_id, body }).await?)
    }

    /// Encrypts `plaintext` as a file blob (age STREAM under a fresh key) readable by
    /// `recipients` and uploads it; returns what a `file` content names.
    pub async fn upload_file(
        &mut self,
        recipients: &[&str],
        plaintext: &[u8],
    ) -> Result<UploadedFile> {
        use sha2::Digest;
        let mut key = [0u8; 16];
        OsRng.fill_bytes(&mut key);
        let payload = letstalk_crypto::stream::encrypt_payload(&key, plaintext, &mut OsRng)?;
        let mut blob_id = [0u8; 16];
        OsRng.fill_bytes(&mut blob_id);
        let header = Request::BlobPut {
            blob_id,
            size: payload.len() as u64,
            offset: 0,
            recipients: recipients.iter().map(|s| (*s).to_owned()).collect(),
        };
        let (mut send, mut recv) = self.link.open_stream(header).await?;
        send.write_all(&payload).await.context("uploading the blob")?;
        send.shutdown().await.context("finishing the blob")?;
        match Link::read_response(&mut recv).await? {
            Response::Blob { size, stored } if size == stored => {}
            other => bail!("the relay did not take the blob: {other:?}"),
        }
        Ok(UploadedFile {
            blob: hex::encode(blob_id),
            key: hex::encode(key),
            sha256: hex::encode(sha2::Sha256::digest(plaintext)),
            size: plaintext.len() as u64,
            blob_size: payload.len() as u64,
        })
    }

    /// The next content a daemon sent this peer, decrypted (sessions the daemons start
    /// are accepted with the peer's prekeys), as `(sender, content JSON)`; acknowledges
    /// it. `None` when nothing arrives within `limit`. Deliveries that do not decrypt
    /// (or group frames) are acknowledged and returned as `{"undecryptable": len}`.
    pub async fn recv(&mut self, limit: Duration) -> Result<Option<(String, Value)>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let push = match tokio::time::timeout_at(deadline, self.pushes.recv()).await {
                Err(_) => return Ok(None),
                Ok(None) => bail!("the peer's link stopped"),
                Ok(Some(p)) => p,
            };
            let Push::Message(m) = push else { continue };
            self.link.ack(&[m.delivery_id]).await.context("acknowledging")?;
            let plaintext = self.open(&m.from, &m.body);
            let content = plaintext
                .as_deref()
                .and_then(|p| p.split_first())
                .filter(|(v, _)| **v == CONTENT_VERSION)
                .and_then(|(_, json)| serde_json::from_slice(json).ok())
                .unwrap_or_else(|| serde_json::json!({ "undecryptable": m.body.len() }));
            return Ok(Some((m.from, content)));
        }
    }

    /// Waits for a content from `from` that `pick` accepts, dropping the others.
    pub async fn recv_matching(
        &mut self,
        limit: Duration,
        mut pick: impl FnMut(&str, &Value) -> bool,
    ) -> Result<Option<Value>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await? {
                None => return Ok(None),
                Some((from, content)) if pick(&from, &content) => return Ok(Some(content)),
                Some(_) => {}
            }
        }
    }

    fn open(&mut self, from: &str, body: &[u8]) -> Option<Vec<u8>> {
        if let Some(session) = self.sessions.get_mut(from) {
            let mut attempt = session.clone();
            if let Ok(p) = attempt.decrypt(body) {
                *session = attempt;
                return Some(p);
            }
        }
        let Ok(Envelope::PreKey(pm)) = Envelope::decode(body) else { return None };
        let signed = self
            .prekeys
            .iter()
            .find(|k| k.kind() == PreKeyKind::Signed && k.id() == pm.signed_prekey_id)?;
        let one_time = match pm.one_time_prekey_id {
            None => None,
            Some(id) => Some(self.prekeys.iter().find(|k| k.id() == id)?),
        };
        let (session, plaintext) =
            Session::accept_prekey_message(&self.identity, &pm, signed, one_time).ok()?;
        self.sessions.insert(from.to_owned(), session);
        Some(plaintext)
    }
}
