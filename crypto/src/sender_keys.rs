//! Group messaging with Signal-style sender keys.
//!
//! Each sender has, per group and generation, a chain key (stepped with the same HMAC
//! 0x01/0x02 KDF as the Double Ratchet) and an Ed25519 signing key. The sender hands a
//! [`SenderKeyDistribution`] to every member over the pairwise sessions; group messages are
//! encrypted once and signed. Membership changes call [`SenderKey::rotate`], which starts a
//! new generation with fresh keys, so a removed member cannot read what follows.
//!
//! Group message layout (big-endian):
//! `version u8 = 1 | generation u32 | iteration u32 | ct_len u32 | ct | signature 64`,
//! where the signature covers everything before it and the AEAD associated data is the
//! group id and the version, generation and iteration.

use std::collections::VecDeque;
use std::fmt;

use ed25519_dalek::SigningKey;
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::codec::{Reader, put_bytes};
use crate::envelope::MAX_CIPHERTEXT;
use crate::error::{Error, Result};
use crate::kdf::{KdfLabels, SymmetricKey, chain_step, message_keys};
use crate::primitives::{TAG_LEN, aead_open, aead_seal, ed25519_sign, ed25519_verify};

/// Most message keys a receiver skips in one step and stores in total.
pub const MAX_SENDER_SKIP: u32 = 2000;
/// Longest group id accepted.
pub const MAX_GROUP_ID: usize = 64;

const VERSION: u8 = 1;

/// The sending side of one (group, sender) sender key. Zeroized on drop; `Debug` redacted.
#[derive(Clone)]
pub struct SenderKey {
    group_id: Vec<u8>,
    generation: u32,
    iteration: u32,
    chain_key: SymmetricKey,
    signing_key: SigningKey,
    labels: KdfLabels,
}

/// What a sender gives each member so they can read its group messages. Secret: carried
/// only inside pairwise sessions. `Debug` redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct SenderKeyDistribution {
    group_id: Vec<u8>,
    generation: u32,
    iteration: u32,
    chain_key: SymmetricKey,
    signing_public: [u8; 32],
}

/// The receiving side of one (group, sender, generation). Zeroized on drop; `Debug` redacted.
#[derive(Clone)]
pub struct SenderKeyReceiver {
    group_id: Vec<u8>,
    generation: u32,
    iteration: u32,
    chain_key: SymmetricKey,
    signing_public: [u8; 32],
    skipped: VecDeque<(u32, SymmetricKey)>,
    labels: KdfLabels,
}

impl SenderKey {
    /// A new sender key (generation 0) for `group_id` (at most [`MAX_GROUP_ID`] bytes).
    pub fn generate(group_id: &[u8], rng: &mut (impl RngCore + CryptoRng)) -> Result<Self> {
        Self::generate_with_labels(group_id, 0, KdfLabels::default(), rng)
    }

    fn generate_with_labels(
        group_id: &[u8],
        generation: u32,
        labels: KdfLabels,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Self> {
        if group_id.len() > MAX_GROUP_ID {
            return Err(Error::Malformed("group id"));
        }
        let mut chain_key = SymmetricKey([0; 32]);
        rng.fill_bytes(&mut chain_key.0);
        Ok(Self {
            group_id: group_id.to_vec(),
            generation,
            iteration: 0,
            chain_key,
            signing_key: SigningKey::generate(rng),
            labels,
        })
    }

    /// Starts the next generation with fresh chain and signing keys (on membership change).
    /// Distribute the new [`SenderKey::distribution`] to the remaining members.
    pub fn rotate(&self, rng: &mut (impl RngCore + CryptoRng)) -> Result<Self> {
        let generation = self.generation.checked_add(1).ok_or(Error::CounterExhausted)?;
        Self::generate_with_labels(&self.group_id, generation, self.labels, rng)
    }

    /// The current generation.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The distribution message for the current state (new members start reading here).
    pub fn distribution(&self) -> SenderKeyDistribution {
        SenderKeyDistribution {
            group_id: self.group_id.clone(),
            generation: self.generation,
            iteration: self.iteration,
            chain_key: self.chain_key.clone(),
            signing_public: self.signing_key.verifying_key().to_bytes(),
        }
    }

    /// Encrypts and signs one group message, advancing the chain.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<Vec<u8>> {
        if plaintext.len() > MAX_CIPHERTEXT - TAG_LEN {
            return Err(Error::Malformed("plaintext too long"));
        }
        let (mk, next) = chain_step(&self.chain_key);
        let next_iteration = self.iteration.checked_add(1).ok_or(Error::CounterExhausted)?;
        let keys = message_keys(&mk, self.labels.sender_message_keys)?;
        let ad = group_ad(&self.group_id, self.generation, self.iteration);
        let ciphertext = aead_seal(&keys.cipher_key, &keys.nonce, &ad, plaintext)?;
        let mut out = Vec::with_capacity(13 + ciphertext.len() + 64);
        out.push(VERSION);
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&self.iteration.to_be_bytes());
        put_bytes(&mut out, &ciphertext);
        let signature = ed25519_sign(&self.signing_key, &out);
        out.extend_from_slice(&signature);
        self.chain_key = next;
        self.iteration = next_iteration;
        Ok(out)
    }

    /// Storage form.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(128));
        out.push(VERSION);
        put_bytes(&mut out, &self.group_id);
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&self.iteration.to_be_bytes());
        out.extend_from_slice(&self.chain_key.0);
        out.extend_from_slice(self.signing_key.as_bytes());
        out
    }

    /// Inverse of [`SenderKey::to_bytes`] (default labels).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, "sender key");
        check_version(&mut r)?;
        let group_id = r.bytes(MAX_GROUP_ID)?.to_vec();
        let generation = r.u32()?;
        let iteration = r.u32()?;
        let chain_key = SymmetricKey(r.array()?);
        let signing_key = SigningKey::from_bytes(&Zeroizing::new(r.array::<32>()?));
        r.finish()?;
        Ok(Self {
            group_id,
            generation,
            iteration,
            chain_key,
            signing_key,
            labels: KdfLabels::default(),
        })
    }
}

impl SenderKeyDistribution {
    /// Wire form: version, group id, generation, iteration, chain key, signing key.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(128));
        out.push(VERSION);
        put_bytes(&mut out, &self.group_id);
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&self.iteration.to_be_bytes());
        out.extend_from_slice(&self.chain_key.0);
        out.extend_from_slice(&self.signing_public);
        out
    }

    /// Parses a distribution message (after the pairwise session decrypted it).
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, "sender key distribution");
        check_version(&mut r)?;
        let group_id = r.bytes(MAX_GROUP_ID)?.to_vec();
        let generation = r.u32()?;
        let iteration = r.u32()?;
        let chain_key = SymmetricKey(r.array()?);
        let signing_public = r.array()?;
        r.finish()?;
        Ok(Self { group_id, generation, iteration, chain_key, signing_public })
    }

    /// The group this key is for.
    pub fn group_id(&self) -> &[u8] {
        &self.group_id
    }

    /// The generation.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The public key that signs this chain's messages (not secret): two distributions
    /// with the same one are the same chain, at the same or different iterations.
    pub fn signing_public(&self) -> [u8; 32] {
        self.signing_public
    }

    /// A receiver starting at this distribution's iteration.
    pub fn receiver(&self) -> SenderKeyReceiver {
        SenderKeyReceiver {
            group_id: self.group_id.clone(),
            generation: self.generation,
            iteration: self.iteration,
            chain_key: self.chain_key.clone(),
            signing_public: self.signing_public,
            skipped: VecDeque::new(),
            labels: KdfLabels::default(),
        }
    }
}

impl SenderKeyReceiver {
    /// Uses `labels` instead of the defaults.
    pub fn with_labels(mut self, labels: KdfLabels) -> Self {
        self.labels = labels;
        self
    }

    /// The generation this receiver reads.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// The public key that signs the chain this receiver reads (not secret).
    pub fn signing_public(&self) -> [u8; 32] {
        self.signing_public
    }

    /// Generation of a group message, so the daemon can pick the receiver to use.
    pub fn message_generation(message: &[u8]) -> Result<u32> {
        let mut r = Reader::new(message, "group message");
        check_version(&mut r)?;
        r.u32()
    }

    /// Verifies and decrypts one group message. On error the state is unchanged.
    pub fn decrypt(&mut self, message: &[u8]) -> Result<Vec<u8>> {
        let signed_len = message.len().checked_sub(64).ok_or(Error::Malformed("group message"))?;
        let (signed, signature) = message.split_at(signed_len);
        let mut r = Reader::new(signed, "group message");
        check_version(&mut r)?;
        let generation = r.u32()?;
        let iteration = r.u32()?;
        let ciphertext = r.bytes(MAX_CIPHERTEXT)?;
        r.finish()?;
        if generation != self.generation {
            return Err(Error::UnknownGeneration);
        }
        ed25519_verify(&self.signing_public, signed, signature)?;
        // Work on a copy: only an authenticated message may change the state.
        let mut next = self.clone();
        let mk = next.message_key(iteration)?;
        let keys = message_keys(&mk, self.labels.sender_message_keys)?;
        let ad = group_ad(&self.group_id, generation, iteration);
        let plaintext = aead_open(&keys.cipher_key, &keys.nonce, &ad, ciphertext)?;
        *self = next;
        Ok(plaintext)
    }

    fn message_key(&mut self, iteration: u32) -> Result<SymmetricKey> {
        if iteration < self.iteration {
            let i =
                self.skipped.iter().position(|(n, _)| *n == iteration).ok_or(Error::Duplicate)?;
            let (_, key) = self.skipped.remove(i).ok_or(Error::Duplicate)?;
            return Ok(key);
        }
        if iteration - self.iteration > MAX_SENDER_SKIP {
            return Err(Error::TooManySkipped);
        }
        while self.iteration < iteration {
            let (mk, next) = chain_step(&self.chain_key);
            self.skipped.push_back((self.iteration, mk));
            self.chain_key = next;
            self.iteration += 1;
        }
        // Oldest keys go first over the total bound, as in the pairwise ratchet.
        while self.skipped.len() > MAX_SENDER_SKIP as usize {
            self.skipped.pop_front();
        }
        let (mk, next) = chain_step(&self.chain_key);
        self.chain_key = next;
        self.iteration = self.iteration.checked_add(1).ok_or(Error::CounterExhausted)?;
        Ok(mk)
    }

    /// Storage form.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(128 + self.skipped.len() * 36));
        out.push(VERSION);
        put_bytes(&mut out, &self.group_id);
        out.extend_from_slice(&self.generation.to_be_bytes());
        out.extend_from_slice(&self.iteration.to_be_bytes());
        out.extend_from_slice(&self.chain_key.0);
        out.extend_from_slice(&self.signing_public);
        out.extend_from_slice(&crate::codec::len_u32(self.skipped.len()).to_be_bytes());
        for (n, k) in &self.skipped {
            out.extend_from_slice(&n.to_be_bytes());
            out.extend_from_slice(&k.0);
        }
        out
    }

    /// Inverse of [`SenderKeyReceiver::to_bytes`] (default labels).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, "sender key receiver");
        check_version(&mut r)?;
        let group_id = r.bytes(MAX_GROUP_ID)?.to_vec();
        let generation = r.u32()?;
        let iteration = r.u32()?;
        let chain_key = SymmetricKey(r.array()?);
        let signing_public = r.array()?;
        let n = r.count(MAX_SENDER_SKIP as usize)?;
        let mut skipped = VecDeque::with_capacity(n);
        for _ in 0..n {
            skipped.push_back((r.u32()?, SymmetricKey(r.array()?)));
        }
        r.finish()?;
        Ok(Self {
            group_id,
            generation,
            iteration,
            chain_key,
            signing_public,
            skipped,
            labels: KdfLabels::default(),
        })
    }
}

impl fmt::Debug for SenderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SenderKey(generation {}, iteration {}, ..)", self.generation, self.iteration)
    }
}

impl fmt::Debug for SenderKeyDistribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SenderKeyDistribution(generation {}, ..)", self.generation)
    }
}

impl fmt::Debug for SenderKeyReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SenderKeyReceiver(generation {}, iteration {}, ..)",
            self.generation, self.iteration
        )
    }
}

fn check_version(r: &mut Reader<'_>) -> Result<()> {
    match r.u8()? {
        VERSION => Ok(()),
        v => Err(Error::UnsupportedVersion(v)),
    }
}

fn group_ad(group_id: &[u8], generation: u32, iteration: u32) -> Vec<u8> {
    let mut ad = Vec::with_capacity(group_id.len() + 13);
    put_bytes(&mut ad, group_id);
    ad.push(VERSION);
    ad.extend_from_slice(&generation.to_be_bytes());
    ad.extend_from_slice(&iteration.to_be_bytes());
    ad
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    #[test]
    fn out_of_order_and_duplicates() {
        let mut alice = SenderKey::generate(b"group", &mut OsRng).unwrap();
        let mut bob =
            SenderKeyDistribution::decode(&alice.distribution().encode()).unwrap().receiver();
        let msgs: Vec<_> = (0..5u8).map(|i| alice.encrypt(&[i]).unwrap()).collect();
        assert_eq!(bob.decrypt(&msgs[3]).unwrap(), [3]);
        assert_eq!(bob.decrypt(&msgs[0]).unwrap(), [0]);
        assert_eq!(bob.decrypt(&msgs[0]), Err(Error::Duplicate));
        assert_eq!(bob.decrypt(&msgs[3]), Err(Error::Duplicate));
        let mut bob = SenderKeyReceiver::from_bytes(&bob.to_bytes()).unwrap();
        assert_eq!(bob.decrypt(&msgs[4]).unwrap(), [4]);
        assert_eq!(bob.decrypt(&msgs[1]).unwrap(), [1]);
    }

    #[test]
    fn old_generation_cannot_read_new_generation() {
        let alice = SenderKey::generate(b"group", &mut OsRng).unwrap();
        let mut removed = alice.distribution().receiver();
        let mut alice = alice.rotate(&mut OsRng).unwrap();
        let mut kept = alice.distribution().receiver();
        let msg = alice.encrypt(b"after removal").unwrap();
        assert_eq!(removed.decrypt(&msg), Err(Error::UnknownGeneration));
        // Even pretending to be the new generation does not help: the keys are fresh.
        let mut forged = removed.clone();
        forged.generation = alice.generation();
        assert!(forged.decrypt(&msg).is_err());
        assert_eq!(kept.decrypt(&msg).unwrap(), b"after removal");
        assert_eq!(SenderKeyReceiver::message_generation(&msg).unwrap(), 1);
    }

    #[test]
    fn tampering_fails_and_state_survives() {
        let mut alice = SenderKey::generate(b"g", &mut OsRng).unwrap();
        let alice_again = SenderKey::from_bytes(&alice.to_bytes()).unwrap();
        assert_eq!(alice_again.distribution(), alice.distribution());
        let mut bob = alice.distribution().receiver();
        let msg = alice.encrypt(b"hi").unwrap();
        for i in 0..msg.len() {
            let mut bad = msg.clone();
            bad[i] ^= 0x40;
            assert!(bob.decrypt(&bad).is_err());
        }
        assert_eq!(bob.decrypt(&msg).unwrap(), b"hi");
        let far = {
            let mut a = alice.clone();
            for _ in 0..=MAX_SENDER_SKIP {
                a.encrypt(b"").unwrap();
            }
            a.encrypt(b"far").unwrap()
        };
        assert_eq!(bob.decrypt(&far), Err(Error::TooManySkipped));
        assert_eq!(bob.decrypt(&alice.encrypt(b"next").unwrap()).unwrap(), b"next");
    }
}
