//! A pairwise session: X3DH to start, the Double Ratchet after, envelopes on the wire.
//!
//! This is the type the daemon stores (via [`Session::to_bytes`]) and calls for every
//! message. The daemon must persist the state returned by `encrypt` together with the
//! ciphertext, and retransmit that ciphertext instead of re-encrypting.

use std::fmt;

use rand_core::{CryptoRng, RngCore};

use crate::codec::Reader;
use crate::envelope::{ENVELOPE_VERSION, Envelope, MAX_CIPHERTEXT, PreKeyMessage, RatchetMessage};
use crate::error::{Error, Result};
use crate::identity::{IdentityKeyPair, PublicIdentity};
use crate::kdf::KdfLabels;
use crate::prekeys::{PreKeyBundle, PreKeySecret};
use crate::primitives::TAG_LEN;
use crate::ratchet::RatchetState;
use crate::x3dh;

/// Version of [`Session::to_bytes`].
const SESSION_VERSION: u8 = 1;

/// X3DH data the initiator repeats on every message until the responder answers.
#[derive(Clone, Copy, PartialEq, Eq)]
struct PendingPreKey {
    sender: PublicIdentity,
    ephemeral: [u8; 32],
    signed_prekey_id: u32,
    one_time_prekey_id: Option<u32>,
}

/// An end-to-end encrypted pairwise session with one remote device.
#[derive(Clone)]
pub struct Session {
    remote: PublicIdentity,
    /// Initiator: X3DH data to attach to outgoing messages until the first reply.
    pending: Option<PendingPreKey>,
    /// Responder: the X3DH data this session was created from. Later prekey messages must
    /// carry exactly this, so no byte of them goes unauthenticated.
    accepted: Option<PendingPreKey>,
    state: RatchetState,
    labels: KdfLabels,
}

impl Session {
    /// Starts a session as initiator from a relay's bundle (verified here) with the default
    /// labels. Messages are prekey messages until the responder's first reply arrives.
    pub fn initiate(
        identity: &IdentityKeyPair,
        bundle: &PreKeyBundle,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Self> {
        Self::initiate_with_labels(identity, bundle, KdfLabels::default(), rng)
    }

    /// [`Session::initiate`] with explicit labels.
    pub fn initiate_with_labels(
        identity: &IdentityKeyPair,
        bundle: &PreKeyBundle,
        labels: KdfLabels,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Self> {
        let out = x3dh::initiate(identity, bundle, labels.x3dh, rng)?;
        let pending = PendingPreKey {
            sender: identity.public(),
            ephemeral: out.ephemeral,
            signed_prekey_id: out.signed_prekey_id,
            one_time_prekey_id: out.one_time_prekey_id,
        };
        let state = RatchetState::new_initiator(
            out.shared_secret,
            bundle.signed_prekey.key,
            out.associated_data,
            rng,
        );
        Ok(Self { remote: bundle.identity, pending: Some(pending), accepted: None, state, labels })
    }

    /// Responder side: runs X3DH with the prekeys the message names (the daemon looks them up
    /// by `message.signed_prekey_id` / `one_time_prekey_id`) and decrypts the first message.
    ///
    /// The daemon deletes the one-time prekey once the returned session is stored.
    pub fn accept_prekey_message(
        identity: &IdentityKeyPair,
        message: &PreKeyMessage,
        signed_prekey: &PreKeySecret,
        one_time_prekey: Option<&PreKeySecret>,
    ) -> Result<(Self, Vec<u8>)> {
        Self::accept_prekey_message_with_labels(
            identity,
            message,
            signed_prekey,
            one_time_prekey,
            KdfLabels::default(),
        )
    }

    /// [`Session::accept_prekey_message`] with explicit labels.
    pub fn accept_prekey_message_with_labels(
        identity: &IdentityKeyPair,
        message: &PreKeyMessage,
        signed_prekey: &PreKeySecret,
        one_time_prekey: Option<&PreKeySecret>,
        labels: KdfLabels,
    ) -> Result<(Self, Vec<u8>)> {
        if signed_prekey.id() != message.signed_prekey_id
            || one_time_prekey.map(PreKeySecret::id) != message.one_time_prekey_id
        {
            return Err(Error::PreKeyMismatch);
        }
        let (sk, ad) = x3dh::respond(
            identity,
            signed_prekey,
            one_time_prekey,
            &message.sender,
            &message.ephemeral,
            labels.x3dh,
        )?;
        let state = RatchetState::new_responder(sk, signed_prekey.secret().clone(), ad);
        let accepted = Some(prekey_data(message));
        let mut session = Self { remote: message.sender, pending: None, accepted, state, labels };
        let plaintext = session.decrypt_message(&message.message)?;
        Ok((session, plaintext))
    }

    /// The remote device's identity.
    pub fn remote_identity(&self) -> &PublicIdentity {
        &self.remote
    }

    /// Whether this session was created (as responder) from exactly this prekey
    /// message's X3DH data, i.e. `message` repeats the initiator's first message.
    pub fn was_created_by(&self, message: &PreKeyMessage) -> bool {
        self.accepted == Some(prekey_data(message))
    }

    /// Decrypts an already decoded envelope (see [`Session::decrypt`]).
    pub(crate) fn decrypt_envelope(&mut self, envelope: &Envelope) -> Result<Vec<u8>> {
        match envelope {
            Envelope::PreKey(p) if !self.was_created_by(p) => Err(Error::PreKeyMismatch),
            Envelope::PreKey(p) => self.decrypt_message(&p.message),
            Envelope::Message(m) => self.decrypt_message(m),
        }
    }

    /// Encrypts `plaintext` into envelope bytes and advances the sending chain.
    pub fn encrypt(
        &mut self,
        plaintext: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Vec<u8>> {
        if plaintext.len() > MAX_CIPHERTEXT - TAG_LEN {
            return Err(Error::Malformed("plaintext too long"));
        }
        let (header, ciphertext) =
            self.state.encrypt(plaintext, &[ENVELOPE_VERSION], &self.labels, rng)?;
        let message = RatchetMessage { header, ciphertext };
        let envelope = match &self.pending {
            Some(p) => Envelope::PreKey(PreKeyMessage {
                sender: p.sender,
                ephemeral: p.ephemeral,
                signed_prekey_id: p.signed_prekey_id,
                one_time_prekey_id: p.one_time_prekey_id,
                message,
            }),
            None => Envelope::Message(message),
        };
        Ok(envelope.encode())
    }

    /// Decrypts envelope bytes. On any error the session is unchanged.
    ///
    /// A prekey message is accepted here only if it repeats the X3DH data this session was
    /// created from (the initiator keeps sending those until it hears back). Any other prekey
    /// message gives [`Error::PreKeyMismatch`]: the peer started a new session, which the
    /// daemon sets up with [`Session::accept_prekey_message`].
    pub fn decrypt(&mut self, bytes: &[u8]) -> Result<Vec<u8>> {
        self.decrypt_envelope(&Envelope::decode(bytes)?)
    }

    fn decrypt_message(&mut self, message: &RatchetMessage) -> Result<Vec<u8>> {
        // Work on a copy so that a forged, garbled or replayed message cannot advance or
        // corrupt the real state.
        let mut next = self.state.clone();
        let plaintext =
            next.decrypt(&message.header, &message.ciphertext, &[ENVELOPE_VERSION], &self.labels)?;
        self.state = next;
        // An authenticated message from the responder proves it has the session.
        self.pending = None;
        Ok(plaintext)
    }

    /// Number of skipped message keys currently stored.
    pub fn skipped_keys(&self) -> usize {
        self.state.skipped_len()
    }

    /// Serialized state for storage (keep it encrypted at rest). Labels are not stored:
    /// [`Session::from_bytes`] assumes the defaults.
    pub fn to_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(512));
        out.push(SESSION_VERSION);
        out.extend_from_slice(&self.remote.to_bytes());
        write_prekey_data(&mut out, self.pending.as_ref());
        write_prekey_data(&mut out, self.accepted.as_ref());
        self.state.write(&mut out);
        out
    }

    /// Restores a session stored with [`Session::to_bytes`], with the default labels.
    /// Only for bytes this device stored itself: the identities in it were checked when
    /// the session began and are not checked again ([`PublicIdentity::from_stored_bytes`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::from_bytes_with_labels(bytes, KdfLabels::default())
    }

    /// [`Session::from_bytes`] with explicit labels.
    pub fn from_bytes_with_labels(bytes: &[u8], labels: KdfLabels) -> Result<Self> {
        let mut r = Reader::new(bytes, "session");
        let version = r.u8()?;
        if version != SESSION_VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let remote = PublicIdentity::from_stored_bytes(r.take(PublicIdentity::BYTES)?)?;
        let pending = read_prekey_data(&mut r)?;
        let accepted = read_prekey_data(&mut r)?;
        let state = RatchetState::read(&mut r)?;
        r.finish()?;
        Ok(Self { remote, pending, accepted, state, labels })
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("remote", &self.remote)
            .field("pending_prekey", &self.pending.is_some())
            .field("state", &self.state)
            .finish()
    }
}

fn prekey_data(message: &PreKeyMessage) -> PendingPreKey {
    PendingPreKey {
        sender: message.sender,
        ephemeral: message.ephemeral,
        signed_prekey_id: message.signed_prekey_id,
        one_time_prekey_id: message.one_time_prekey_id,
    }
}

fn write_prekey_data(out: &mut Vec<u8>, data: Option<&PendingPreKey>) {
    let Some(p) = data else {
        out.push(0);
        return;
    };
    out.push(1);
    crate::envelope::put_x3dh_fields(
        out,
        &p.sender,
        &p.ephemeral,
        p.signed_prekey_id,
        p.one_time_prekey_id,
    );
}

fn read_prekey_data(r: &mut Reader<'_>) -> Result<Option<PendingPreKey>> {
    if !r.bool()? {
        return Ok(None);
    }
    Ok(Some(PendingPreKey {
        sender: PublicIdentity::from_stored_bytes(r.take(PublicIdentity::BYTES)?)?,
        ephemeral: r.array()?,
        signed_prekey_id: r.u32()?,
        one_time_prekey_id: if r.bool()? { Some(r.u32()?) } else { None },
    }))
}
