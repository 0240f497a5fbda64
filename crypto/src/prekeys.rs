//! Prekeys: the signed prekey, one-time prekeys, the last-resort prekey and the bundle a
//! relay hands out.
//!
//! The signed prekey and the last-resort prekey are signed by the Ed25519 identity key with a
//! domain-separated message. Ordinary one-time prekeys are not signed (as in Signal): a relay
//! that swaps one can only deny service, because DH1..DH3 still bind the identity keys.

use std::fmt;

use rand_core::{CryptoRng, RngCore};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{ZeroizeOnDrop, Zeroizing};

use crate::codec::Reader;
use crate::error::{Error, Result};
use crate::identity::{IdentityKeyPair, PublicIdentity};
use crate::primitives::ed25519_verify;

const SIGNED_PREKEY_CONTEXT: &[u8] = b"Letstalk signed prekey v1";
const LAST_RESORT_CONTEXT: &[u8] = b"Letstalk last-resort prekey v1";

/// A secret X25519 prekey with its id; the signed, last-resort and one-time prekeys all use
/// it. Zeroized on drop; `Debug` shows only the id.
#[derive(Clone)]
pub struct PreKeySecret {
    id: u32,
    kind: PreKeyKind,
    secret: StaticSecret,
    signature: Option<[u8; 64]>,
}

/// Which role a prekey plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreKeyKind {
    /// The medium-term signed prekey, rotated every few weeks.
    Signed,
    /// Handed out once, then deleted by the responder after use.
    OneTime,
    /// Signed and handed out when one-time prekeys run out; never deleted on use.
    LastResort,
}

/// A signed prekey (the secret half).
pub type SignedPreKey = PreKeySecret;
/// A one-time or last-resort prekey (the secret half).
pub type OneTimePreKey = PreKeySecret;

/// The public half of the signed prekey.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignedPreKeyPublic {
    /// Id the responder looks the secret up by.
    pub id: u32,
    /// X25519 public key.
    pub key: [u8; 32],
    /// Ed25519 signature by the identity key.
    pub signature: [u8; 64],
}

/// The public half of a one-time prekey, or of the last-resort prekey (then signed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OneTimePreKeyPublic {
    /// Id the responder looks the secret up by.
    pub id: u32,
    /// X25519 public key.
    pub key: [u8; 32],
    /// `Some` exactly for the last-resort prekey.
    pub last_resort_signature: Option<[u8; 64]>,
}

/// What a relay hands out for starting a session with a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreKeyBundle {
    /// The responder's identity.
    pub identity: PublicIdentity,
    /// The responder's current signed prekey.
    pub signed_prekey: SignedPreKeyPublic,
    /// A one-time prekey, the last-resort prekey, or none.
    pub one_time_prekey: Option<OneTimePreKeyPublic>,
}

impl PreKeySecret {
    /// A new signed prekey, signed by `identity`.
    pub fn generate_signed(
        id: u32,
        identity: &IdentityKeyPair,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Self {
        Self::generate_with(id, PreKeyKind::Signed, Some(identity), rng)
    }

    /// A new unsigned one-time prekey.
    pub fn generate_one_time(id: u32, rng: &mut (impl RngCore + CryptoRng)) -> Self {
        Self::generate_with(id, PreKeyKind::OneTime, None, rng)
    }

    /// A new last-resort prekey, signed by `identity`.
    pub fn generate_last_resort(
        id: u32,
        identity: &IdentityKeyPair,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Self {
        Self::generate_with(id, PreKeyKind::LastResort, Some(identity), rng)
    }

    fn generate_with(
        id: u32,
        kind: PreKeyKind,
        identity: Option<&IdentityKeyPair>,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Self {
        let secret = StaticSecret::random_from_rng(rng);
        let public = PublicKey::from(&secret).to_bytes();
        let signature = identity.map(|i| i.sign(&signed_message(kind, id, &public)));
        Self { id, kind, secret, signature }
    }

    /// The id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The role.
    pub fn kind(&self) -> PreKeyKind {
        self.kind
    }

    /// The X25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        PublicKey::from(&self.secret).to_bytes()
    }

    /// Public half of a signed prekey; `None` for other kinds.
    pub fn signed_public(&self) -> Option<SignedPreKeyPublic> {
        match (self.kind, self.signature) {
            (PreKeyKind::Signed, Some(signature)) => {
                Some(SignedPreKeyPublic { id: self.id, key: self.public_key(), signature })
            }
            _ => None,
        }
    }

    /// Public half of a one-time or last-resort prekey; `None` for the signed prekey.
    pub fn one_time_public(&self) -> Option<OneTimePreKeyPublic> {
        match self.kind {
            PreKeyKind::Signed => None,
            PreKeyKind::OneTime | PreKeyKind::LastResort => Some(OneTimePreKeyPublic {
                id: self.id,
                key: self.public_key(),
                last_resort_signature: self.signature,
            }),
        }
    }

    /// Storage form: version, kind, id, secret, optional signature.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(104));
        out.push(1);
        out.push(match self.kind {
            PreKeyKind::Signed => 0,
            PreKeyKind::OneTime => 1,
            PreKeyKind::LastResort => 2,
        });
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(self.secret.as_bytes());
        if let Some(sig) = &self.signature {
            out.extend_from_slice(sig);
        }
        out
    }

    /// Inverse of [`PreKeySecret::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, "prekey");
        let version = r.u8()?;
        if version != 1 {
            return Err(Error::UnsupportedVersion(version));
        }
        let kind = match r.u8()? {
            0 => PreKeyKind::Signed,
            1 => PreKeyKind::OneTime,
            2 => PreKeyKind::LastResort,
            _ => return Err(Error::Malformed("prekey")),
        };
        let id = r.u32()?;
        let secret = StaticSecret::from(*Zeroizing::new(r.array::<32>()?));
        let signature = match kind {
            PreKeyKind::OneTime => None,
            PreKeyKind::Signed | PreKeyKind::LastResort => Some(r.array::<64>()?),
        };
        r.finish()?;
        Ok(Self { id, kind, secret, signature })
    }

    pub(crate) fn secret(&self) -> &StaticSecret {
        &self.secret
    }
}

// `StaticSecret` zeroizes itself on drop.
impl ZeroizeOnDrop for PreKeySecret {}

impl fmt::Debug for PreKeySecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PreKeySecret({:?} #{}, ..)", self.kind, self.id)
    }
}

impl SignedPreKeyPublic {
    /// Checks the signature by `identity`.
    pub fn verify(&self, identity: &PublicIdentity) -> Result<()> {
        let msg = signed_message(PreKeyKind::Signed, self.id, &self.key);
        ed25519_verify(identity.ed25519(), &msg, &self.signature)
    }
}

impl OneTimePreKeyPublic {
    /// Checks the last-resort signature, if this is the last-resort prekey.
    pub fn verify(&self, identity: &PublicIdentity) -> Result<()> {
        match &self.last_resort_signature {
            None => Ok(()),
            Some(sig) => {
                let msg = signed_message(PreKeyKind::LastResort, self.id, &self.key);
                ed25519_verify(identity.ed25519(), &msg, sig)
            }
        }
    }
}

impl PreKeyBundle {
    /// Checks every signature in the bundle: identity, signed prekey, last-resort prekey.
    pub fn verify(&self) -> Result<()> {
        self.identity.verify()?;
        self.signed_prekey.verify(&self.identity)?;
        if let Some(otk) = &self.one_time_prekey {
            otk.verify(&self.identity)?;
        }
        Ok(())
    }
}

fn signed_message(kind: PreKeyKind, id: u32, key: &[u8; 32]) -> Vec<u8> {
    let context = match kind {
        PreKeyKind::LastResort => LAST_RESORT_CONTEXT,
        PreKeyKind::Signed | PreKeyKind::OneTime => SIGNED_PREKEY_CONTEXT,
    };
    [context, &id.to_be_bytes(), key.as_slice()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    #[test]
    fn bundle_signatures() {
        let id = IdentityKeyPair::generate(&mut OsRng);
        let spk = PreKeySecret::generate_signed(7, &id, &mut OsRng);
        let lr = PreKeySecret::generate_last_resort(9, &id, &mut OsRng);
        let mut bundle = PreKeyBundle {
            identity: id.public(),
            signed_prekey: spk.signed_public().unwrap(),
            one_time_prekey: lr.one_time_public(),
        };
        bundle.verify().unwrap();
        bundle.signed_prekey.key[0] ^= 1;
        assert_eq!(bundle.verify(), Err(Error::BadSignature));
        bundle.signed_prekey.key[0] ^= 1;
        bundle.one_time_prekey.as_mut().unwrap().id += 1;
        assert_eq!(bundle.verify(), Err(Error::BadSignature));
    }

    #[test]
    fn storage_round_trip() {
        let id = IdentityKeyPair::generate(&mut OsRng);
        for k in [
            PreKeySecret::generate_signed(1, &id, &mut OsRng),
            PreKeySecret::generate_one_time(2, &mut OsRng),
            PreKeySecret::generate_last_resort(3, &id, &mut OsRng),
        ] {
            let again = PreKeySecret::from_bytes(&k.to_bytes()).unwrap();
            assert_eq!(again.public_key(), k.public_key());
            assert_eq!(again.kind(), k.kind());
            assert_eq!(again.one_time_public(), k.one_time_public());
        }
    }
}
