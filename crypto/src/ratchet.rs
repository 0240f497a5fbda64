//! The Double Ratchet (Signal's specification) over X3DH's shared secret.
//!
//! One deliberate scheduling difference: the spec generates the next sending key pair while
//! *receiving*. Here it is generated lazily by the next `encrypt`, so decryption needs no
//! randomness; the keys, PN and N that go on the wire are exactly the spec's.

use std::collections::VecDeque;
use std::fmt;

use rand_core::{CryptoRng, RngCore};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, Zeroizing};

use crate::codec::Reader;
use crate::error::{Error, Result};
use crate::kdf::{KdfLabels, SymmetricKey, chain_step, message_keys, root_step};
use crate::primitives::{aead_open, aead_seal, dh};
use crate::x3dh::AD_LEN;

/// Most message keys skipped in one step, and most stored in total.
pub const MAX_SKIP: u32 = 2000;

/// How many earlier receiving ratchet keys are remembered to recognise replays.
const MAX_PREVIOUS_CHAINS: usize = 64;

/// Version of the encoding written by [`RatchetState::write`].
const STATE_VERSION: u8 = 1;

/// The message header: sender's current ratchet key, previous chain length, message number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Sender's ratchet public key.
    pub ratchet_key: [u8; 32],
    /// Number of messages in the sender's previous sending chain (PN).
    pub previous_chain_length: u32,
    /// Message number in the current sending chain (N).
    pub message_number: u32,
}

impl Header {
    /// Encoded length.
    pub const LEN: usize = 40;

    /// ratchet key || PN (u32 BE) || N (u32 BE).
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..32].copy_from_slice(&self.ratchet_key);
        out[32..36].copy_from_slice(&self.previous_chain_length.to_be_bytes());
        out[36..].copy_from_slice(&self.message_number.to_be_bytes());
        out
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self> {
        Ok(Self {
            ratchet_key: r.array()?,
            previous_chain_length: r.u32()?,
            message_number: r.u32()?,
        })
    }
}

/// Double Ratchet state. Zeroized on drop (its fields are); `Debug` is redacted.
#[derive(Clone)]
pub(crate) struct RatchetState {
    dhs: StaticSecret,
    /// The public half of `dhs`, derived by the first `encrypt` that needs it and kept
    /// (never stored): it is a base-point multiplication, several times the cost of the
    /// rest of an `encrypt`. A state read only to decrypt never derives it.
    dhs_public: Option<[u8; 32]>,
    dhr: Option<[u8; 32]>,
    rk: SymmetricKey,
    cks: Option<SymmetricKey>,
    ckr: Option<SymmetricKey>,
    ns: u32,
    nr: u32,
    pn: u32,
    ad: [u8; AD_LEN],
    /// Receiving ratchet keys of finished chains, newest last, to tell replays from forgeries.
    previous_dhr: VecDeque<[u8; 32]>,
    /// Skipped message keys, oldest first so eviction drops the oldest.
    skipped: VecDeque<SkippedKey>,
}

#[derive(Clone)]
struct SkippedKey {
    ratchet_key: [u8; 32],
    n: u32,
    key: SymmetricKey,
}

impl RatchetState {
    /// Initiator (Alice): the responder's signed prekey is the first receiving ratchet key.
    pub(crate) fn new_initiator(
        sk: SymmetricKey,
        remote_ratchet: [u8; 32],
        ad: [u8; AD_LEN],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Self {
        Self {
            // Replaced by the first `encrypt`, which sees `cks == None`.
            dhs: StaticSecret::random_from_rng(rng),
            dhs_public: None,
            dhr: Some(remote_ratchet),
            rk: sk,
            cks: None,
            ckr: None,
            ns: 0,
            nr: 0,
            pn: 0,
            ad,
            previous_dhr: VecDeque::new(),
            skipped: VecDeque::new(),
        }
    }

    /// Responder (Bob): the signed prekey is the first sending ratchet key pair.
    pub(crate) fn new_responder(
        sk: SymmetricKey,
        signed_prekey: StaticSecret,
        ad: [u8; AD_LEN],
    ) -> Self {
        Self {
            dhs: signed_prekey,
            dhs_public: None,
            dhr: None,
            rk: sk,
            cks: None,
            ckr: None,
            ns: 0,
            nr: 0,
            pn: 0,
            ad,
            previous_dhr: VecDeque::new(),
            skipped: VecDeque::new(),
        }
    }

    /// Encrypts one message; `aad` (the envelope version) is bound along with AD and header.
    pub(crate) fn encrypt(
        &mut self,
        plaintext: &[u8],
        aad: &[u8],
        labels: &KdfLabels,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(Header, Vec<u8>)> {
        let cks = match &self.cks {
            Some(ck) => ck.clone(),
            None => self.ratchet_sending(labels, rng)?,
        };
        let (mk, next) = chain_step(&cks);
        let header = Header {
            ratchet_key: *self
                .dhs_public
                .get_or_insert_with(|| PublicKey::from(&self.dhs).to_bytes()),
            previous_chain_length: self.pn,
            message_number: self.ns,
        };
        let ns = self.ns.checked_add(1).ok_or(Error::CounterExhausted)?;
        let ciphertext = seal(&mk, &header, &self.ad, aad, plaintext, labels)?;
        self.cks = Some(next);
        self.ns = ns;
        Ok((header, ciphertext))
    }

    /// The sending half of a DH ratchet step, deferred from the last receiving step.
    fn ratchet_sending(
        &mut self,
        labels: &KdfLabels,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<SymmetricKey> {
        let dhr = self.dhr.ok_or(Error::InvalidState)?;
        let dhs = StaticSecret::random_from_rng(rng);
        let (rk, cks) = root_step(&self.rk, &*dh(&dhs, &dhr)?, labels.root)?;
        self.dhs_public = None;
        self.dhs = dhs;
        self.rk = rk;
        self.pn = self.ns;
        self.ns = 0;
        self.cks = Some(cks.clone());
        Ok(cks)
    }

    /// Decrypts one message in place. Callers run this on a copy and keep the copy only on
    /// success, so a failure leaves the real state untouched.
    pub(crate) fn decrypt(
        &mut self,
        header: &Header,
        ciphertext: &[u8],
        aad: &[u8],
        labels: &KdfLabels,
    ) -> Result<Vec<u8>> {
        if let Some(i) = self
            .skipped
            .iter()
            .position(|s| s.ratchet_key == header.ratchet_key && s.n == header.message_number)
        {
            let plaintext = {
                let entry = self.skipped.get(i).ok_or(Error::InvalidState)?;
                open(&entry.key, header, &self.ad, aad, ciphertext, labels)?
            };
            self.skipped.remove(i);
            return Ok(plaintext);
        }
        if self.dhr == Some(header.ratchet_key) {
            if header.message_number < self.nr {
                return Err(Error::Duplicate);
            }
        } else {
            if self.previous_dhr.contains(&header.ratchet_key) {
                return Err(Error::Duplicate);
            }
            self.skip(header.previous_chain_length)?;
            self.ratchet_receiving(header.ratchet_key, labels)?;
        }
        self.skip(header.message_number)?;
        let ckr = self.ckr.as_ref().ok_or(Error::InvalidState)?;
        let (mk, next) = chain_step(ckr);
        let plaintext = open(&mk, header, &self.ad, aad, ciphertext, labels)?;
        self.ckr = Some(next);
        self.nr = self.nr.checked_add(1).ok_or(Error::CounterExhausted)?;
        Ok(plaintext)
    }

    fn ratchet_receiving(&mut self, remote: [u8; 32], labels: &KdfLabels) -> Result<()> {
        let (rk, ckr) = root_step(&self.rk, &*dh(&self.dhs, &remote)?, labels.root)?;
        if let Some(old) = self.dhr.replace(remote) {
            self.previous_dhr.push_back(old);
            if self.previous_dhr.len() > MAX_PREVIOUS_CHAINS {
                self.previous_dhr.pop_front();
            }
        }
        self.rk = rk;
        self.ckr = Some(ckr);
        self.nr = 0;
        // The next `encrypt` performs the sending half with a fresh key pair.
        self.cks = None;
        Ok(())
    }

    /// Stores message keys of the current receiving chain up to (excluding) `until`.
    fn skip(&mut self, until: u32) -> Result<()> {
        let (Some(mut ck), Some(dhr)) = (self.ckr.clone(), self.dhr) else {
            return Ok(());
        };
        if until <= self.nr {
            return Ok(());
        }
        if until - self.nr > MAX_SKIP {
            return Err(Error::TooManySkipped);
        }
        while self.nr < until {
            let (mk, next) = chain_step(&ck);
            self.skipped.push_back(SkippedKey { ratchet_key: dhr, n: self.nr, key: mk });
            ck = next;
            self.nr += 1;
        }
        // Over the total bound the oldest keys go, as in libsignal: refusing instead would let
        // old losses block the session forever. A single step over the bound is refused above.
        while self.skipped.len() > MAX_SKIP as usize {
            self.skipped.pop_front();
        }
        self.ckr = Some(ck);
        Ok(())
    }

    /// Number of stored skipped message keys.
    pub(crate) fn skipped_len(&self) -> usize {
        self.skipped.len()
    }

    /// Compact versioned encoding; the caller stores it encrypted.
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        out.push(STATE_VERSION);
        out.extend_from_slice(self.dhs.as_bytes());
        put_opt(out, self.dhr.as_ref());
        out.extend_from_slice(&self.rk.0);
        put_opt(out, self.cks.as_ref().map(|k| &k.0));
        put_opt(out, self.ckr.as_ref().map(|k| &k.0));
        for n in [self.ns, self.nr, self.pn] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        out.extend_from_slice(&self.ad);
        out.extend_from_slice(&crate::codec::len_u32(self.previous_dhr.len()).to_be_bytes());
        for k in &self.previous_dhr {
            out.extend_from_slice(k);
        }
        out.extend_from_slice(&crate::codec::len_u32(self.skipped.len()).to_be_bytes());
        for s in &self.skipped {
            out.extend_from_slice(&s.ratchet_key);
            out.extend_from_slice(&s.n.to_be_bytes());
            out.extend_from_slice(&s.key.0);
        }
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self> {
        let version = r.u8()?;
        if version != STATE_VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let dhs = StaticSecret::from(*Zeroizing::new(r.array::<32>()?));
        let dhr = get_opt(r)?;
        let rk = SymmetricKey(r.array()?);
        let cks = get_opt(r)?.map(SymmetricKey);
        let ckr = get_opt(r)?.map(SymmetricKey);
        let (ns, nr, pn) = (r.u32()?, r.u32()?, r.u32()?);
        let ad = r.array()?;
        let n_prev = r.count(MAX_PREVIOUS_CHAINS)?;
        let mut previous_dhr = VecDeque::with_capacity(n_prev);
        for _ in 0..n_prev {
            previous_dhr.push_back(r.array()?);
        }
        let n_skipped = r.count(MAX_SKIP as usize)?;
        let mut skipped = VecDeque::with_capacity(n_skipped);
        for _ in 0..n_skipped {
            skipped.push_back(SkippedKey {
                ratchet_key: r.array()?,
                n: r.u32()?,
                key: SymmetricKey(r.array()?),
            });
        }
        Ok(Self { dhs, dhs_public: None, dhr, rk, cks, ckr, ns, nr, pn, ad, previous_dhr, skipped })
    }
}

impl Drop for RatchetState {
    fn drop(&mut self) {
        // Keys zeroize themselves; these are not secret but reveal conversation shape.
        self.ad.zeroize();
        if let Some(k) = self.dhr.as_mut() {
            k.zeroize();
        }
    }
}

impl Drop for SkippedKey {
    fn drop(&mut self) {
        self.ratchet_key.zeroize();
    }
}

impl fmt::Debug for RatchetState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RatchetState")
            .field("ns", &self.ns)
            .field("nr", &self.nr)
            .field("pn", &self.pn)
            .field("skipped", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

fn put_opt(out: &mut Vec<u8>, v: Option<&[u8; 32]>) {
    match v {
        Some(v) => {
            out.push(1);
            out.extend_from_slice(v);
        }
        None => out.push(0),
    }
}

fn get_opt(r: &mut Reader<'_>) -> Result<Option<[u8; 32]>> {
    if r.bool()? { Ok(Some(r.array()?)) } else { Ok(None) }
}

/// AEAD associated data: X3DH AD || caller's bytes (envelope version) || header.
fn full_ad(ad: &[u8; AD_LEN], aad: &[u8], header: &Header) -> Vec<u8> {
    [ad.as_slice(), aad, &header.encode()].concat()
}

fn seal(
    mk: &SymmetricKey,
    header: &Header,
    ad: &[u8; AD_LEN],
    aad: &[u8],
    plaintext: &[u8],
    labels: &KdfLabels,
) -> Result<Vec<u8>> {
    let keys = message_keys(mk, labels.message_keys)?;
    aead_seal(&keys.cipher_key, &keys.nonce, &full_ad(ad, aad, header), plaintext)
}

fn open(
    mk: &SymmetricKey,
    header: &Header,
    ad: &[u8; AD_LEN],
    aad: &[u8],
    ciphertext: &[u8],
    labels: &KdfLabels,
) -> Result<Vec<u8>> {
    let keys = message_keys(mk, labels.message_keys)?;
    aead_open(&keys.cipher_key, &keys.nonce, &full_ad(ad, aad, header), ciphertext)
}
