//! Call media frame sealing, SFrame-style.
//!
//! A fresh [`CallKey`] per call travels in the encrypted call offer. Each participant has a
//! distinct 32-bit sender id in the call; its frame key is HKDF(call key, info = label ||
//! sender id), and each frame's nonce is sender id (4 bytes) || frame counter (8 bytes), so
//! no (key, nonce) pair ever repeats. Frame layout: `sender u32 | counter u64 | ct`, the
//! first 12 bytes authenticated as associated data.

use std::collections::BTreeMap;
use std::fmt;

use rand_core::{CryptoRng, RngCore};
use zeroize::{ZeroizeOnDrop, Zeroizing};

use crate::codec::Reader;
use crate::error::{Error, Result};
use crate::primitives::{TAG_LEN, aead_open, aead_seal, hkdf_sha256};

/// Frames older than this many counters behind the newest are rejected as replays.
pub const REPLAY_WINDOW: u64 = 128;
/// Most distinct senders an opener tracks (bounds memory against forged sender ids, although
/// only authenticated frames create entries).
pub const MAX_SENDERS: usize = 1024;
/// Length of the cleartext frame header.
pub const FRAME_HEADER_LEN: usize = 12;

const FRAME_KEY_LABEL: &[u8] = b"Letstalk call frame key v1";

/// The per-call secret. Zeroized on drop; `Debug` redacted.
#[derive(Clone, ZeroizeOnDrop)]
pub struct CallKey([u8; 32]);

impl CallKey {
    /// A fresh call key.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut key = [0u8; 32];
        rng.fill_bytes(&mut key);
        Self(key)
    }

    /// From the bytes carried in the call offer.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The bytes to put in the (end-to-end encrypted) call offer.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0)
    }

    fn sender_key(&self, sender: u32) -> Result<Zeroizing<[u8; 32]>> {
        let mut key = Zeroizing::new([0u8; 32]);
        let info = [FRAME_KEY_LABEL, &sender.to_be_bytes()].concat();
        hkdf_sha256(None, &self.0, &info, key.as_mut_slice())?;
        Ok(key)
    }
}

/// Seals this participant's outgoing frames.
pub struct FrameSealer {
    key: Zeroizing<[u8; 32]>,
    sender: u32,
    counter: u64,
}

/// Opens frames from every participant, rejecting replays.
pub struct FrameOpener {
    call_key: CallKey,
    senders: BTreeMap<u32, ReplayWindow>,
}

/// An opened frame.
#[derive(Clone, PartialEq, Eq)]
pub struct OpenedFrame {
    /// Who sent it.
    pub sender: u32,
    /// Its counter, for reordering.
    pub counter: u64,
    /// The media payload.
    pub payload: Vec<u8>,
}

struct ReplayWindow {
    key: Zeroizing<[u8; 32]>,
    /// Highest counter accepted so far.
    top: u64,
    /// Bit i set = counter `top - i` was accepted.
    seen: u128,
}

impl FrameSealer {
    /// A sealer for `sender` (unique within the call) starting at counter 0.
    pub fn new(call_key: &CallKey, sender: u32) -> Result<Self> {
        Ok(Self { key: call_key.sender_key(sender)?, sender, counter: 0 })
    }

    /// Seals one frame.
    pub fn seal(&mut self, payload: &[u8]) -> Result<Vec<u8>> {
        let counter = self.counter;
        self.counter = counter.checked_add(1).ok_or(Error::CounterExhausted)?;
        let header = header(self.sender, counter);
        let ct = aead_seal(self.key.as_slice(), &header, &header, payload)?;
        Ok([header.as_slice(), &ct].concat())
    }
}

impl FrameOpener {
    /// An opener for frames sealed under `call_key`.
    pub fn new(call_key: &CallKey) -> Self {
        Self { call_key: call_key.clone(), senders: BTreeMap::new() }
    }

    /// Authenticates and decrypts a frame; rejects replays and frames older than the window.
    pub fn open(&mut self, frame: &[u8]) -> Result<OpenedFrame> {
        let mut r = Reader::new(frame, "media frame");
        let sender = r.u32()?;
        let counter = r.u64()?;
        let ct = r.take(frame.len().saturating_sub(FRAME_HEADER_LEN))?;
        r.finish()?;
        if ct.len() < TAG_LEN {
            return Err(Error::Malformed("media frame"));
        }
        let fresh;
        let window = match self.senders.get(&sender) {
            Some(w) => w,
            None => {
                if self.senders.len() >= MAX_SENDERS {
                    return Err(Error::Malformed("too many senders"));
                }
                fresh = ReplayWindow { key: self.call_key.sender_key(sender)?, top: 0, seen: 0 };
                &fresh
            }
        };
        window.check(counter)?;
        let header = header(sender, counter);
        let payload = aead_open(window.key.as_slice(), &header, &header, ct)?;
        // Only an authenticated frame moves the window (or creates a sender entry).
        let window = match self.senders.entry(sender) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(ReplayWindow { key: self.call_key.sender_key(sender)?, top: 0, seen: 0 })
            }
        };
        window.accept(counter);
        Ok(OpenedFrame { sender, counter, payload })
    }
}

impl ReplayWindow {
    fn check(&self, counter: u64) -> Result<()> {
        if self.seen == 0 || counter > self.top {
            return Ok(());
        }
        let age = self.top - counter;
        if age >= REPLAY_WINDOW || self.seen & (1u128 << age) != 0 {
            return Err(Error::Replay);
        }
        Ok(())
    }

    fn accept(&mut self, counter: u64) {
        if self.seen == 0 {
            self.top = counter;
            self.seen = 1;
        } else if counter > self.top {
            let shift = counter - self.top;
            self.seen = if shift >= REPLAY_WINDOW { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.top = counter;
        } else {
            self.seen |= 1u128 << (self.top - counter);
        }
    }
}

fn header(sender: u32, counter: u64) -> [u8; FRAME_HEADER_LEN] {
    let mut h = [0u8; FRAME_HEADER_LEN];
    h[..4].copy_from_slice(&sender.to_be_bytes());
    h[4..].copy_from_slice(&counter.to_be_bytes());
    h
}

impl fmt::Debug for CallKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CallKey(..)")
    }
}

impl fmt::Debug for FrameSealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FrameSealer(sender {}, counter {}, ..)", self.sender, self.counter)
    }
}

impl fmt::Debug for FrameOpener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FrameOpener({} senders, ..)", self.senders.len())
    }
}

impl fmt::Debug for OpenedFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "OpenedFrame(sender {}, counter {}, {} bytes)",
            self.sender,
            self.counter,
            self.payload.len()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    #[test]
    fn replay_window_and_order() {
        let key = CallKey::generate(&mut OsRng);
        let mut alice = FrameSealer::new(&key, 1).unwrap();
        let mut bob = FrameSealer::new(&key, 2).unwrap();
        let mut opener = FrameOpener::new(&key);
        let frames: Vec<_> = (0..200u8).map(|i| alice.seal(&[i]).unwrap()).collect();
        let b0 = bob.seal(b"bob").unwrap();
        assert_eq!(opener.open(&frames[5]).unwrap().counter, 5);
        assert_eq!(opener.open(&frames[2]).unwrap().payload, [2]);
        assert_eq!(opener.open(&frames[2]), Err(Error::Replay));
        assert_eq!(opener.open(&frames[5]), Err(Error::Replay));
        assert_eq!(opener.open(&frames[199]).unwrap().counter, 199);
        assert_eq!(opener.open(&frames[3]), Err(Error::Replay), "too old");
        assert_eq!(opener.open(&frames[150]).unwrap().counter, 150);
        let bob_frame = opener.open(&b0).unwrap();
        assert_eq!((bob_frame.sender, bob_frame.counter), (2, 0));
        let mut bad = frames[198].clone();
        bad[FRAME_HEADER_LEN] ^= 1;
        assert_eq!(opener.open(&bad), Err(Error::Decrypt));
        assert_eq!(opener.open(&frames[198]).unwrap().counter, 198);
        assert!(opener.open(&frames[198][..20]).is_err());
    }
}
