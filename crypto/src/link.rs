//! Linking a new device to an account: a channel keyed by a short one-time code, through
//! a relay that must learn nothing from it.
//!
//! The code is 16 characters of Crockford base32 (80 bits), shown as `XXXX-XXXX-XXXX-XXXX`
//! and fit for a QR code. Its first [`SLOT_CHARS`] characters name the rendezvous on the
//! relay ([`LinkCode::slot`]); the other ten (50 bits) are the password of SPAKE2 over
//! Ed25519 (the PAKE magic-wormhole uses), which the relay never sees. A PAKE, rather
//! than a key hashed from the code, because the code is short and typed by hand: what
//! the relay holds (the slot, the SPAKE2 messages, ciphertext) lets it test no guess
//! offline. An active relay that plays the new device gets one online guess per code,
//! a chance of 2^-50, and a wrong guess only makes the link fail.
//!
//! The exchange (O the logged-in device that opened the link, J the new device):
//! 1. O: `hello` (its SPAKE2 message), put in the slot with `LinkOpen`.
//! 2. J: its SPAKE2 message and, sealed under the agreed key, its `claim` (the new
//!    device's public key and name): `joined`. A relay that swapped the device key would
//!    have to forge this seal.
//! 3. O: opens the claim (proving J knew the code), adds J's device to the account, and
//!    seals the account's state for J: `reply`.
//!
//! Each direction has its own key from HKDF over the SPAKE2 key, used for exactly one
//! message, so a fixed nonce is safe.

use rand_core::{CryptoRng, RngCore};
use spake2::{Ed25519Group, Identity, Password, Spake2};
use zeroize::Zeroizing;

use crate::primitives::{aead_open, aead_seal, hkdf_sha256};
use crate::{Error, Result};

/// Characters in a link code.
pub const CODE_CHARS: usize = 16;
/// The leading characters that name the rendezvous (30 bits): the relay sees these.
pub const SLOT_CHARS: usize = 6;
/// Crockford's base32: no I, L, O or U, so a code read aloud or typed is unambiguous.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Length of a SPAKE2 Ed25519 message (a side byte and a point).
const SPAKE_MSG_LEN: usize = 33;
const NONCE: [u8; 12] = [0; 12];

/// A one-time link code. Its `Debug` is redacted: the code is a secret until it expires.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkCode(Zeroizing<String>);

impl std::fmt::Debug for LinkCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkCode(..)")
    }
}

impl LinkCode {
    /// A fresh random code.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        let mut bytes = Zeroizing::new([0u8; CODE_CHARS]);
        rng.fill_bytes(bytes.as_mut());
        let code: String =
            bytes.iter().map(|b| char::from(ALPHABET[usize::from(b & 31)])).collect();
        Self(Zeroizing::new(code))
    }

    /// Reads a code as a person typed it: case, spaces and dashes do not matter, and the
    /// letters Crockford reads as digits (O as 0, I and L as 1) are taken as those.
    pub fn parse(text: &str) -> Result<Self> {
        let mut code = Zeroizing::new(String::with_capacity(CODE_CHARS));
        for c in text.chars() {
            let c = match c.to_ascii_uppercase() {
                '-' | ' ' | '\t' => continue,
                'O' => '0',
                'I' | 'L' => '1',
                c => c,
            };
            if !c.is_ascii() || !ALPHABET.contains(&(c as u8)) || code.len() == CODE_CHARS {
                return Err(Error::Malformed("link code"));
            }
            code.push(c);
        }
        if code.len() != CODE_CHARS {
            return Err(Error::Malformed("link code"));
        }
        Ok(Self(code))
    }

    /// The code as shown: four groups of four, joined by dashes.
    pub fn display(&self) -> String {
        let chars: Vec<char> = self.0.chars().collect();
        chars.chunks(4).map(|g| g.iter().collect::<String>()).collect::<Vec<_>>().join("-")
    }

    /// The rendezvous id on the relay, from the code's first [`SLOT_CHARS`] characters.
    pub fn slot(&self) -> [u8; 16] {
        let mut slot = [0u8; 16];
        // HKDF cannot fail for a 16-byte output.
        let _ = hkdf_sha256(
            None,
            &self.0.as_bytes()[..SLOT_CHARS],
            b"letstalk link slot v1",
            &mut slot,
        );
        slot
    }

    fn password(&self) -> Password {
        Password::new(&self.0.as_bytes()[SLOT_CHARS..])
    }

    fn identities(&self) -> (Identity, Identity) {
        // The slot is bound into the transcript: a key agreed in one rendezvous is not
        // the key of another.
        let slot = self.slot();
        let mut a = b"letstalk link opener ".to_vec();
        a.extend_from_slice(&slot);
        let mut b = b"letstalk link joiner ".to_vec();
        b.extend_from_slice(&slot);
        (Identity::new(&a), Identity::new(&b))
    }
}

/// The two one-message keys of a link: joiner → opener and opener → joiner.
struct Keys {
    joined: Zeroizing<[u8; 32]>,
    reply: Zeroizing<[u8; 32]>,
}

fn keys(spake_key: &[u8]) -> Result<Keys> {
    let mut joined = Zeroizing::new([0u8; 32]);
    let mut reply = Zeroizing::new([0u8; 32]);
    hkdf_sha256(None, spake_key, b"letstalk link v1 joined", joined.as_mut())?;
    hkdf_sha256(None, spake_key, b"letstalk link v1 reply", reply.as_mut())?;
    Ok(Keys { joined, reply })
}

/// The logged-in device's side, between `hello` and the joiner's message.
pub struct LinkOpener {
    spake: Spake2<Ed25519Group>,
}

impl std::fmt::Debug for LinkOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkOpener(..)")
    }
}

impl LinkOpener {
    /// Starts a link with `code`: the opener and the `hello` to put in the slot.
    pub fn start(code: &LinkCode, rng: &mut (impl RngCore + CryptoRng)) -> (Self, Vec<u8>) {
        let (a, b) = code.identities();
        let (spake, hello) =
            Spake2::<Ed25519Group>::start_a_with_rng(&code.password(), &a, &b, rng);
        (Self { spake }, hello)
    }

    /// Opens the joiner's message: its claim (what the new device says it is), and the
    /// means to seal the reply. [`Error::Decrypt`] when the joiner did not know the code
    /// (or anything was altered on the way): the link must then be abandoned, since each
    /// attempt is a guess at the code.
    pub fn accept(self, joined: &[u8]) -> Result<(Vec<u8>, LinkReply)> {
        if joined.len() < SPAKE_MSG_LEN {
            return Err(Error::Malformed("link message"));
        }
        let (msg, sealed) = joined.split_at(SPAKE_MSG_LEN);
        let key =
            Zeroizing::new(self.spake.finish(msg).map_err(|_| Error::Malformed("link message"))?);
        let keys = keys(&key)?;
        let claim = aead_open(keys.joined.as_ref(), &NONCE, b"joined", sealed)?;
        Ok((claim, LinkReply { key: keys.reply }))
    }
}

/// The opener's last step: seals the account's state for the new device, once.
pub struct LinkReply {
    key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for LinkReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkReply(..)")
    }
}

impl LinkReply {
    /// The `reply` to put in the slot.
    pub fn seal(self, payload: &[u8]) -> Result<Vec<u8>> {
        aead_seal(self.key.as_ref(), &NONCE, b"reply", payload)
    }
}

/// The new device's side, between its message and the opener's reply.
pub struct LinkJoiner {
    reply: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for LinkJoiner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkJoiner(..)")
    }
}

impl LinkJoiner {
    /// Answers the opener's `hello` with `claim` sealed: the joiner and the `joined`
    /// message to put in the slot.
    pub fn join(
        code: &LinkCode,
        hello: &[u8],
        claim: &[u8],
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<(Self, Vec<u8>)> {
        let (a, b) = code.identities();
        let (spake, mut joined) =
            Spake2::<Ed25519Group>::start_b_with_rng(&code.password(), &a, &b, rng);
        let key = Zeroizing::new(spake.finish(hello).map_err(|_| Error::Malformed("link hello"))?);
        let keys = keys(&key)?;
        joined.extend_from_slice(&aead_seal(keys.joined.as_ref(), &NONCE, b"joined", claim)?);
        Ok((Self { reply: keys.reply }, joined))
    }

    /// Opens the opener's reply. [`Error::Decrypt`] if it was not sealed by a device that
    /// knew the code.
    pub fn open_reply(self, reply: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        aead_open(self.reply.as_ref(), &NONCE, b"reply", reply).map(Zeroizing::new)
    }
}

/// Seals a device's name for the relay's device list: only the account's devices (which
/// all hold the identity key) can read it. A random nonce, since a name is sealed anew on
/// every link.
pub fn seal_device_name(
    identity: &crate::IdentityKeyPair,
    name: &str,
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Vec<u8>> {
    let key = name_key(identity)?;
    let mut nonce = [0u8; 12];
    rng.fill_bytes(&mut nonce);
    let mut out = nonce.to_vec();
    out.extend_from_slice(&aead_seal(key.as_ref(), &nonce, b"device name", name.as_bytes())?);
    Ok(out)
}

/// Opens a name sealed by [`seal_device_name`].
pub fn open_device_name(identity: &crate::IdentityKeyPair, sealed: &[u8]) -> Result<String> {
    if sealed.len() < 12 {
        return Err(Error::Malformed("device name"));
    }
    let key = name_key(identity)?;
    let (nonce, ct) = sealed.split_at(12);
    let plain = aead_open(key.as_ref(), nonce, b"device name", ct)?;
    String::from_utf8(plain).map_err(|_| Error::Malformed("device name"))
}

fn name_key(identity: &crate::IdentityKeyPair) -> Result<Zeroizing<[u8; 32]>> {
    let mut key = Zeroizing::new([0u8; 32]);
    hkdf_sha256(None, identity.to_bytes().as_ref(), b"letstalk device name v1", key.as_mut())?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use rand_core::OsRng;

    use super::*;

    #[test]
    fn a_link_carries_the_claim_and_the_reply() {
        let code = LinkCode::generate(&mut OsRng);
        let (opener, hello) = LinkOpener::start(&code, &mut OsRng);
        let typed = LinkCode::parse(&code.display().to_lowercase()).unwrap();
        assert_eq!(typed.slot(), code.slot());
        let (joiner, joined) = LinkJoiner::join(&typed, &hello, b"device key", &mut OsRng).unwrap();
        let (claim, reply) = opener.accept(&joined).unwrap();
        assert_eq!(claim, b"device key");
        let sealed = reply.seal(b"identity and contacts").unwrap();
        assert_eq!(joiner.open_reply(&sealed).unwrap().as_slice(), b"identity and contacts");
    }

    #[test]
    fn a_wrong_code_with_the_right_slot_fails_on_both_sides() {
        let code = LinkCode::generate(&mut OsRng);
        let text = code.display().replace('-', "");
        // Same slot characters, one password character changed.
        let last = text.chars().last().unwrap();
        let other = if last == '0' { '1' } else { '0' };
        let wrong = LinkCode::parse(&format!("{}{other}", &text[..CODE_CHARS - 1])).unwrap();
        assert_eq!(wrong.slot(), code.slot());
        let (opener, hello) = LinkOpener::start(&code, &mut OsRng);
        let (joiner, joined) = LinkJoiner::join(&wrong, &hello, b"claim", &mut OsRng).unwrap();
        assert_eq!(opener.accept(&joined).unwrap_err(), Error::Decrypt);
        // And a reply sealed by someone without the code does not open for the joiner.
        let (forger, _) = LinkOpener::start(&wrong, &mut OsRng);
        let _ = forger;
        assert!(joiner.open_reply(&[0u8; 40]).is_err());
    }

    #[test]
    fn a_swapped_claim_is_refused() {
        let code = LinkCode::generate(&mut OsRng);
        let (opener, hello) = LinkOpener::start(&code, &mut OsRng);
        let (_, mut joined) = LinkJoiner::join(&code, &hello, b"device key", &mut OsRng).unwrap();
        let n = joined.len();
        joined[n - 1] ^= 1;
        assert_eq!(opener.accept(&joined).unwrap_err(), Error::Decrypt);
    }

    #[test]
    fn device_names_open_only_with_the_identity() {
        let id = crate::IdentityKeyPair::generate(&mut OsRng);
        let sealed = seal_device_name(&id, "desktop", &mut OsRng).unwrap();
        assert_eq!(open_device_name(&id, &sealed).unwrap(), "desktop");
        let other = crate::IdentityKeyPair::generate(&mut OsRng);
        assert!(open_device_name(&other, &sealed).is_err());
        assert!(open_device_name(&id, &sealed[..5]).is_err());
    }

    #[test]
    fn codes_parse_strictly() {
        for bad in
            ["", "ABCD", "ABCD-EFGH-JKMN-PQRSX", "ABCD-EFGH-JKMN-PQR!", "ÀBCD-EFGH-JKMN-PQRS"]
        {
            assert!(LinkCode::parse(bad).is_err(), "{bad}");
        }
        let c = LinkCode::parse("abcd efgh-jkmn-pqoi").unwrap();
        assert_eq!(c.display(), "ABCD-EFGH-JKMN-PQ01");
        assert_eq!(format!("{c:?}"), "LinkCode(..)");
        // Truncated or garbage messages are errors, not panics.
        let (opener, _) = LinkOpener::start(&c, &mut OsRng);
        assert!(opener.accept(&[1, 2, 3]).is_err());
        assert!(LinkJoiner::join(&c, &[0u8; 5], b"x", &mut OsRng).is_err());
    }
}
