//! A peer's sessions: the current one and up to [`ARCHIVED_SESSIONS_MAX`] previous ones,
//! most recent first, as libsignal keeps them (`SessionRecord`, `previous_sessions`).
//!
//! Two devices that start sessions with each other at the same moment, a peer that
//! restarts its session, or messages still in flight under a session that was just
//! replaced all produce envelopes for a session that is no longer the current one. The
//! record tries the current session, then the previous ones in order, and promotes the
//! one that opened the message, so both sides converge on the session that is in use
//! and nothing in flight is lost. A failed attempt changes nothing.
//!
//! ```text
//! version  u8   = 2        (a version-1 Session's bytes are read as a record of one)
//! current  u8   0 or 1, then u32 length ‖ Session::to_bytes
//! count    u32  ≤ ARCHIVED_SESSIONS_MAX, then each: u32 length ‖ Session::to_bytes
//! ```

use std::collections::VecDeque;

use crate::codec::{Reader, put_bytes};
use crate::envelope::{Envelope, PreKeyMessage};
use crate::error::{Error, Result};
use crate::identity::PublicIdentity;
use crate::session::Session;

/// Previous sessions kept per peer (libsignal's `ARCHIVED_STATES_MAX_LENGTH`).
pub const ARCHIVED_SESSIONS_MAX: usize = 40;

const RECORD_VERSION: u8 = 2;
/// The stored form of a bare [`Session`] (see `session.rs`).
const SESSION_VERSION: u8 = 1;
/// Bound on one stored session (skipped keys included) when reading.
const MAX_SESSION_BYTES: usize = 1 << 20;

/// The current session with a peer and the previous ones, most recent first.
#[derive(Clone, Debug, Default)]
pub struct SessionRecord {
    current: Option<Session>,
    previous: VecDeque<Session>,
}

impl SessionRecord {
    /// A record with no session.
    pub fn new() -> Self {
        Self::default()
    }

    /// The session new messages are encrypted with, if any.
    pub fn current(&self) -> Option<&Session> {
        self.current.as_ref()
    }

    /// Mutable access to the current session (to encrypt).
    pub fn current_mut(&mut self) -> Option<&mut Session> {
        self.current.as_mut()
    }

    /// Previous sessions, most recent first.
    pub fn previous(&self) -> impl ExactSizeIterator<Item = &Session> {
        self.previous.iter()
    }

    /// Whether the record holds no session at all.
    pub fn is_empty(&self) -> bool {
        self.current.is_none() && self.previous.is_empty()
    }

    /// The identity the current session talks to.
    pub fn remote_identity(&self) -> Option<&PublicIdentity> {
        self.current.as_ref().map(Session::remote_identity)
    }

    /// Makes `session` the current one; the old current one becomes the most recent
    /// previous session (the oldest beyond [`ARCHIVED_SESSIONS_MAX`] is forgotten).
    pub fn promote_new(&mut self, session: Session) {
        self.archive_current();
        self.current = Some(session);
    }

    /// Moves the current session to the previous ones: the next message to the peer
    /// starts a fresh session, while late messages under this one still open.
    pub fn archive_current(&mut self) {
        if let Some(old) = self.current.take() {
            self.previous.push_front(old);
            self.previous.truncate(ARCHIVED_SESSIONS_MAX);
        }
    }

    /// Decrypts envelope bytes with the current session or, failing that, a previous
    /// one, which then becomes current. A prekey message opens only in the session it
    /// created (a repeat from the initiator, or a duplicate delivery); one that matches
    /// no session gives [`Error::PreKeyMismatch`] and the caller sets up the new
    /// session with [`Session::accept_prekey_message`] and [`SessionRecord::promote_new`].
    /// On any error the record is unchanged; the error is the current session's (for
    /// example [`Error::Duplicate`]), or [`Error::NoSession`] when there is none.
    pub fn decrypt(&mut self, bytes: &[u8]) -> Result<Vec<u8>> {
        let envelope = Envelope::decode(bytes)?;
        if let Envelope::PreKey(p) = &envelope {
            return self.decrypt_prekey(p, &envelope);
        }
        let mut first_error = None;
        if let Some(current) = self.current.as_mut() {
            match current.decrypt_envelope(&envelope) {
                Ok(plaintext) => return Ok(plaintext),
                Err(e) => first_error = Some(e),
            }
        }
        for i in 0..self.previous.len() {
            let Some(session) = self.previous.get_mut(i) else { break };
            if let Ok(plaintext) = session.decrypt_envelope(&envelope) {
                self.promote_previous(i);
                return Ok(plaintext);
            }
        }
        Err(first_error.unwrap_or(Error::NoSession))
    }

    fn decrypt_prekey(&mut self, p: &PreKeyMessage, envelope: &Envelope) -> Result<Vec<u8>> {
        if let Some(current) = self.current.as_mut()
            && current.was_created_by(p)
        {
            return current.decrypt_envelope(envelope);
        }
        let Some(i) = self.previous.iter().position(|s| s.was_created_by(p)) else {
            return Err(Error::PreKeyMismatch);
        };
        let session = self.previous.get_mut(i).ok_or(Error::NoSession)?;
        let plaintext = session.decrypt_envelope(envelope)?;
        self.promote_previous(i);
        Ok(plaintext)
    }

    /// The previous session at `i` opened a message: the peer uses it, so it becomes
    /// current again (libsignal's `promote_old_session`).
    fn promote_previous(&mut self, i: usize) {
        if let Some(session) = self.previous.remove(i) {
            self.promote_new(session);
        }
    }

    /// Serialized record for storage (keep it encrypted at rest).
    pub fn to_bytes(&self) -> zeroize::Zeroizing<Vec<u8>> {
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(512));
        out.push(RECORD_VERSION);
        match &self.current {
            Some(s) => {
                out.push(1);
                put_bytes(&mut out, &s.to_bytes());
            }
            None => out.push(0),
        }
        out.extend_from_slice(&crate::codec::len_u32(self.previous.len()).to_be_bytes());
        for s in &self.previous {
            put_bytes(&mut out, &s.to_bytes());
        }
        out
    }

    /// Restores a record stored with [`SessionRecord::to_bytes`], or a single session
    /// stored with [`Session::to_bytes`] (which becomes the current one).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        match bytes.first() {
            Some(&SESSION_VERSION) => {
                return Ok(Self { current: Some(Session::from_bytes(bytes)?), ..Self::default() });
            }
            Some(&RECORD_VERSION) => {}
            Some(&v) => return Err(Error::UnsupportedVersion(v)),
            None => return Err(Error::Malformed("session record")),
        }
        let mut r = Reader::new(bytes, "session record");
        r.u8()?;
        let current =
            if r.bool()? { Some(Session::from_bytes(r.bytes(MAX_SESSION_BYTES)?)?) } else { None };
        let n = r.count(ARCHIVED_SESSIONS_MAX)?;
        let mut previous = VecDeque::with_capacity(n);
        for _ in 0..n {
            previous.push_back(Session::from_bytes(r.bytes(MAX_SESSION_BYTES)?)?);
        }
        r.finish()?;
        Ok(Self { current, previous })
    }
}

#[cfg(test)]
mod tests {
    use rand_core::OsRng;

    use super::*;
    use crate::identity::IdentityKeyPair;
    use crate::prekeys::{PreKeyBundle, PreKeySecret};

    struct Peer {
        id: IdentityKeyPair,
        spk: PreKeySecret,
    }

    fn peer() -> Peer {
        let id = IdentityKeyPair::generate(&mut OsRng);
        let spk = PreKeySecret::generate_signed(1, &id, &mut OsRng);
        Peer { id, spk }
    }

    fn bundle(p: &Peer) -> PreKeyBundle {
        PreKeyBundle {
            identity: p.id.public(),
            signed_prekey: p.spk.signed_public().unwrap(),
            one_time_prekey: None,
        }
    }

    fn prekey(bytes: &[u8]) -> PreKeyMessage {
        let Envelope::PreKey(p) = Envelope::decode(bytes).unwrap() else { panic!("not prekey") };
        p
    }

    /// `alice` starts a new session to `bob` and `bob` accepts it into his record.
    /// Returns alice's session, already answered once so it sends plain messages.
    fn new_session(alice: &Peer, bob: &Peer, record: &mut SessionRecord, tag: &[u8]) -> Session {
        let mut s = Session::initiate(&alice.id, &bundle(bob), &mut OsRng).unwrap();
        let first = s.encrypt(tag, &mut OsRng).unwrap();
        assert_eq!(record.decrypt(&first), Err(Error::PreKeyMismatch));
        let (accepted, plaintext) =
            Session::accept_prekey_message(&bob.id, &prekey(&first), &bob.spk, None).unwrap();
        assert_eq!(plaintext, tag);
        record.promote_new(accepted);
        let reply = record.current_mut().unwrap().encrypt(b"ack", &mut OsRng).unwrap();
        assert_eq!(s.decrypt(&reply).unwrap(), b"ack");
        s
    }

    #[test]
    fn previous_sessions_are_kept_newest_first_and_capped_at_40() {
        let (alice, bob) = (peer(), peer());
        let mut record = SessionRecord::new();
        let mut senders = Vec::new();
        for i in 0..45u32 {
            senders.push(new_session(&alice, &bob, &mut record, &i.to_be_bytes()));
        }
        assert_eq!(record.previous().len(), ARCHIVED_SESSIONS_MAX);
        // Round trip through storage keeps order and count.
        let mut record = SessionRecord::from_bytes(&record.to_bytes()).unwrap();
        assert_eq!(record.previous().len(), ARCHIVED_SESSIONS_MAX);

        // The session made 4 sessions ago (index 40) is the 4th previous one (newest
        // first): a message under it opens and makes it current.
        let m = senders[40].encrypt(b"late", &mut OsRng).unwrap();
        let before = record.to_bytes();
        assert_eq!(record.decrypt(&m).unwrap(), b"late");
        assert_ne!(before.as_slice(), record.to_bytes().as_slice());
        // It is now the current one: it opens the next message on its own.
        let m2 = senders[40].encrypt(b"again", &mut OsRng).unwrap();
        let mut only_current = SessionRecord::new();
        only_current.current = record.current.clone();
        assert_eq!(only_current.decrypt(&m2).unwrap(), b"again");

        // The oldest kept previous session (index 4: 45 made, 1 current + 40 kept) still
        // opens; anything older is gone, and failing changes nothing.
        let oldest = senders[4].encrypt(b"oldest", &mut OsRng).unwrap();
        assert_eq!(record.clone().decrypt(&oldest).unwrap(), b"oldest");
        let forgotten = senders[3].encrypt(b"gone", &mut OsRng).unwrap();
        let before = record.to_bytes();
        assert!(record.decrypt(&forgotten).is_err());
        assert_eq!(before.as_slice(), record.to_bytes().as_slice());
    }

    #[test]
    fn a_duplicate_or_failing_prekey_message_never_replaces_the_working_session() {
        let (alice, bob) = (peer(), peer());
        let mut alice_s = Session::initiate(&alice.id, &bundle(&bob), &mut OsRng).unwrap();
        let first = alice_s.encrypt(b"one", &mut OsRng).unwrap();
        let (accepted, _) =
            Session::accept_prekey_message(&bob.id, &prekey(&first), &bob.spk, None).unwrap();
        let mut record = SessionRecord::new();
        record.promote_new(accepted);
        let second = alice_s.encrypt(b"two", &mut OsRng).unwrap();
        assert_eq!(record.decrypt(&second).unwrap(), b"two");

        // The relay delivers the first prekey message again: it matches the session it
        // created, is refused as a duplicate, and the record is unchanged.
        let before = record.to_bytes();
        assert_eq!(record.decrypt(&first), Err(Error::Duplicate));
        assert_eq!(before.as_slice(), record.to_bytes().as_slice());

        // A prekey message with a tampered ciphertext for the same X3DH data also fails
        // without touching anything.
        let mut tampered = alice_s.encrypt(b"three", &mut OsRng).unwrap();
        if let Some(b) = tampered.last_mut() {
            *b ^= 1;
        }
        assert!(record.decrypt(&tampered).is_err());
        assert_eq!(before.as_slice(), record.to_bytes().as_slice());

        // The session still works both ways.
        let reply = record.current_mut().unwrap().encrypt(b"back", &mut OsRng).unwrap();
        assert_eq!(alice_s.decrypt(&reply).unwrap(), b"back");
        let next = alice_s.encrypt(b"four", &mut OsRng).unwrap();
        assert_eq!(record.decrypt(&next).unwrap(), b"four");
    }

    #[test]
    fn crossing_first_messages_converge_on_one_session() {
        let (alice, bob) = (peer(), peer());
        let (mut a, mut b) = (SessionRecord::new(), SessionRecord::new());
        // Both start at once, each from the other's bundle.
        a.promote_new(Session::initiate(&alice.id, &bundle(&bob), &mut OsRng).unwrap());
        b.promote_new(Session::initiate(&bob.id, &bundle(&alice), &mut OsRng).unwrap());
        let a1: Vec<_> = (0..3u8)
            .map(|i| a.current_mut().unwrap().encrypt(&[b'a', i], &mut OsRng).unwrap())
            .collect();
        let b1: Vec<_> = (0..3u8)
            .map(|i| b.current_mut().unwrap().encrypt(&[b'b', i], &mut OsRng).unwrap())
            .collect();
        let accept = |record: &mut SessionRecord, me: &Peer, bytes: &[u8]| -> Vec<u8> {
            match record.decrypt(bytes) {
                Ok(p) => p,
                Err(Error::PreKeyMismatch) => {
                    let (s, p) =
                        Session::accept_prekey_message(&me.id, &prekey(bytes), &me.spk, None)
                            .unwrap();
                    record.promote_new(s);
                    p
                }
                Err(e) => panic!("{e}"),
            }
        };
        for (i, m) in a1.iter().enumerate() {
            assert_eq!(accept(&mut b, &bob, m), [b'a', i as u8]);
        }
        for (i, m) in b1.iter().enumerate() {
            assert_eq!(accept(&mut a, &alice, m), [b'b', i as u8]);
        }
        // Now each side's current session is the one the other started; messages in
        // both directions keep opening, and both settle on one pair.
        for round in 0..4u8 {
            let m = a.current_mut().unwrap().encrypt(&[round], &mut OsRng).unwrap();
            assert_eq!(b.decrypt(&m).unwrap(), [round]);
            let m = b.current_mut().unwrap().encrypt(&[round, 1], &mut OsRng).unwrap();
            assert_eq!(a.decrypt(&m).unwrap(), [round, 1]);
        }
    }

    #[test]
    fn a_stored_single_session_reads_as_a_record() {
        let (alice, bob) = (peer(), peer());
        let s = Session::initiate(&alice.id, &bundle(&bob), &mut OsRng).unwrap();
        let record = SessionRecord::from_bytes(&s.to_bytes()).unwrap();
        assert_eq!(record.remote_identity(), Some(&bob.id.public()));
        assert_eq!(record.previous().len(), 0);
        assert!(SessionRecord::from_bytes(&[9]).is_err());
        assert!(SessionRecord::from_bytes(&[]).is_err());
    }
}
