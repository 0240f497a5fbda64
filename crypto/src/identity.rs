//! Device identity: an Ed25519 key that signs the device's X25519 identity key.
//!
//! This follows vodozemac's model rather than XEdDSA: the Ed25519 key is the identity that
//! users verify, and the X25519 key it signs is what X3DH uses.

use std::fmt;

use ed25519_dalek::SigningKey;
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::codec::Reader;
use crate::error::Result;
use crate::primitives::{ed25519_sign, ed25519_verify};

/// Domain separation for the identity signature, so it can never be confused with a prekey
/// signature or anything else the Ed25519 key signs.
const IDENTITY_SIG_CONTEXT: &[u8] = b"Letstalk identity x25519 v1";

/// The secret half of a device identity. Zeroized on drop; `Debug` shows nothing secret.
#[derive(Clone)]
pub struct IdentityKeyPair {
    ed25519: SigningKey,
    x25519: StaticSecret,
}

/// The public half of a device identity, as other devices see it.
///
/// A value of this type has always had its signature checked: the constructors are
/// [`IdentityKeyPair::public`], [`PublicIdentity::from_bytes`], which verifies, and
/// [`PublicIdentity::from_stored_bytes`], for a value checked before and kept.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicIdentity {
    ed25519: [u8; 32],
    x25519: [u8; 32],
    signature: [u8; 64],
}

impl IdentityKeyPair {
    /// Length of [`IdentityKeyPair::to_bytes`].
    pub const BYTES: usize = 64;

    /// A fresh identity.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        Self { ed25519: SigningKey::generate(rng), x25519: StaticSecret::random_from_rng(rng) }
    }

    /// Storage form: Ed25519 seed || X25519 secret, 64 bytes. Keep it encrypted at rest.
    pub fn to_bytes(&self) -> Zeroizing<[u8; 64]> {
        let mut out = Zeroizing::new([0u8; 64]);
        out[..32].copy_from_slice(self.ed25519.as_bytes());
        out[32..].copy_from_slice(self.x25519.as_bytes());
        out
    }

    /// Inverse of [`IdentityKeyPair::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, "identity key pair");
        let mut ed = Zeroizing::new(r.array::<32>()?);
        let mut x = Zeroizing::new(r.array::<32>()?);
        r.finish()?;
        let pair = Self { ed25519: SigningKey::from_bytes(&ed), x25519: StaticSecret::from(*x) };
        ed.zeroize();
        x.zeroize();
        Ok(pair)
    }

    /// The public identity, with the X25519 key signed by the Ed25519 key.
    pub fn public(&self) -> PublicIdentity {
        let ed25519 = self.ed25519.verifying_key().to_bytes();
        let x25519 = PublicKey::from(&self.x25519).to_bytes();
        let signature = ed25519_sign(&self.ed25519, &identity_message(&x25519));
        PublicIdentity { ed25519, x25519, signature }
    }

    /// Signs `msg` with the Ed25519 identity key (relay challenges, prekeys).
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        ed25519_sign(&self.ed25519, msg)
    }

    pub(crate) fn x25519_secret(&self) -> &StaticSecret {
        &self.x25519
    }
}

impl PublicIdentity {
    /// Length of [`PublicIdentity::to_bytes`].
    pub const BYTES: usize = 128;

    /// Wire form: Ed25519 key || X25519 key || signature.
    pub fn to_bytes(&self) -> [u8; 128] {
        let mut out = [0u8; 128];
        out[..32].copy_from_slice(&self.ed25519);
        out[32..64].copy_from_slice(&self.x25519);
        out[64..].copy_from_slice(&self.signature);
        out
    }

    /// Parses and verifies the signature over the X25519 key.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let id = Self::from_stored_bytes(bytes)?;
        id.verify()?;
        Ok(id)
    }

    /// Parses an identity this device checked before and kept in its own authenticated
    /// storage (a stored session, the keys it knows for its peers): the signature is not
    /// checked again. A stored session was loaded, and its signature verified, for every
    /// message sent or received (an Ed25519 verification each, and one per archived
    /// session: the largest share of a message's CPU). Never for bytes from the network:
    /// those go through [`PublicIdentity::from_bytes`].
    pub fn from_stored_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, "public identity");
        let id = Self { ed25519: r.array()?, x25519: r.array()?, signature: r.array()? };
        r.finish()?;
        Ok(id)
    }

    /// Checks the Ed25519 signature over the X25519 key.
    pub fn verify(&self) -> Result<()> {
        ed25519_verify(&self.ed25519, &identity_message(&self.x25519), &self.signature)
    }

    /// Checks a signature made with [`IdentityKeyPair::sign`].
    pub fn verify_signature(&self, msg: &[u8], signature: &[u8]) -> Result<()> {
        ed25519_verify(&self.ed25519, msg, signature)
    }

    /// The Ed25519 identity key.
    pub fn ed25519(&self) -> &[u8; 32] {
        &self.ed25519
    }

    /// The X25519 identity key used by X3DH.
    pub fn x25519(&self) -> &[u8; 32] {
        &self.x25519
    }

    /// The Ed25519 signature over the X25519 key.
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }

    /// The 64 bytes that identify the device: Ed25519 key || X25519 key.
    pub(crate) fn key_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&self.ed25519);
        out[32..].copy_from_slice(&self.x25519);
        out
    }

    /// SHA-256 of both public keys, as 64 lowercase hex digits in groups of four.
    ///
    /// For showing a device in lists; comparing two people uses [`crate::SafetyNumber`].
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.key_bytes());
        let hex: Vec<String> =
            digest.chunks(2).map(|c| c.iter().map(|b| format!("{b:02x}")).collect()).collect();
        hex.join(" ")
    }
}

// `SigningKey` and `StaticSecret` zeroize themselves on drop (the `zeroize` features are on
// in the workspace manifest), so the pair does too.
impl ZeroizeOnDrop for IdentityKeyPair {}

impl fmt::Debug for IdentityKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IdentityKeyPair(..)")
    }
}

impl fmt::Debug for PublicIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Public, but long: the fingerprint prefix is enough to tell devices apart in logs.
        let fp = self.fingerprint();
        write!(f, "PublicIdentity({})", fp.get(..19).unwrap_or(&fp))
    }
}

fn identity_message(x25519: &[u8; 32]) -> Vec<u8> {
    [IDENTITY_SIG_CONTEXT, x25519.as_slice()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;
    use rand_core::OsRng;

    #[test]
    fn round_trip_and_verify() {
        let pair = IdentityKeyPair::generate(&mut OsRng);
        let again = IdentityKeyPair::from_bytes(&*pair.to_bytes()).unwrap();
        assert_eq!(pair.public(), again.public());
        let public = PublicIdentity::from_bytes(&pair.public().to_bytes()).unwrap();
        assert_eq!(public, pair.public());
        assert_eq!(public.fingerprint().len(), 64 + 15);
    }

    #[test]
    fn tampered_identity_is_rejected() {
        let mut bytes = IdentityKeyPair::generate(&mut OsRng).public().to_bytes();
        bytes[40] ^= 1;
        assert_eq!(PublicIdentity::from_bytes(&bytes), Err(Error::BadSignature));
        assert!(PublicIdentity::from_bytes(&bytes[..127]).is_err());
    }

    #[test]
    fn a_stored_identity_is_parsed_without_checking_again() {
        let public = IdentityKeyPair::generate(&mut OsRng).public();
        assert_eq!(PublicIdentity::from_stored_bytes(&public.to_bytes()), Ok(public));
        let mut bytes = public.to_bytes();
        bytes[40] ^= 1;
        // Only the length is checked: the value was verified before it was stored.
        assert!(PublicIdentity::from_stored_bytes(&bytes).is_ok());
        assert!(PublicIdentity::from_stored_bytes(&bytes[..127]).is_err());
        assert!(PublicIdentity::from_stored_bytes(&[bytes.as_slice(), &[0]].concat()).is_err());
    }
}
