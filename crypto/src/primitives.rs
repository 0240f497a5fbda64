//! Thin wrappers over the RustCrypto and dalek primitives: the only place the crate calls them.
//!
//! They are public (but hidden from the docs) so the Wycheproof tests exercise exactly the code
//! paths the protocol uses, rather than the underlying crates directly.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

type HmacSha256 = Hmac<Sha256>;

/// Length of a ChaCha20-Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Length of a ChaCha20-Poly1305 nonce.
pub const NONCE_LEN: usize = 12;

/// X25519 with our secret key, rejecting non-contributory results.
///
/// A low-order public key makes the shared secret all zero whatever our key is, which would
/// let an attacker force a known key; every DH in the crate goes through here.
pub fn dh(secret: &StaticSecret, public: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>> {
    let shared = secret.diffie_hellman(&PublicKey::from(*public));
    if !shared.was_contributory() {
        return Err(Error::NonContributory);
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

/// X25519 on raw bytes (the private key is clamped), through [`dh`].
#[doc(hidden)]
pub fn x25519(private: &[u8; 32], public: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>> {
    dh(&StaticSecret::from(*private), public)
}

/// HKDF-SHA256 filling `out`. `salt = None` means a zero salt as RFC 5869 specifies.
#[doc(hidden)]
pub fn hkdf_sha256(salt: Option<&[u8]>, ikm: &[u8], info: &[u8], out: &mut [u8]) -> Result<()> {
    Hkdf::<Sha256>::new(salt, ikm).expand(info, out).map_err(|_| Error::InvalidKey)
}

/// HMAC-SHA256 of `data` under `key`.
#[doc(hidden)]
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail; the fallback keeps
    // the function total without a panic path.
    match <HmacSha256 as Mac>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(data);
            mac.finalize().into_bytes().into()
        }
        Err(_) => [0; 32],
    }
}

/// Constant-time check of a (possibly truncated, at least 16-byte) HMAC-SHA256 tag.
#[doc(hidden)]
pub fn hmac_sha256_verify(key: &[u8], data: &[u8], tag: &[u8]) -> Result<()> {
    // Tags shorter than 128 bits are too easy to forge to accept anywhere.
    if !(16..=32).contains(&tag.len()) {
        return Err(Error::InvalidKey);
    }
    let full = hmac_sha256(key, data);
    let ok: bool = full.get(..tag.len()).map(|t| t.ct_eq(tag).into()).unwrap_or(false);
    if ok { Ok(()) } else { Err(Error::Decrypt) }
}

/// ChaCha20-Poly1305 encryption; returns ciphertext || tag.
#[doc(hidden)]
pub fn aead_seal(key: &[u8], nonce: &[u8], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
    let cipher = cipher(key, nonce)?;
    cipher
        .encrypt(Nonce::from_slice(nonce), Payload { msg: plaintext, aad })
        .map_err(|_| Error::InvalidKey)
}

/// ChaCha20-Poly1305 decryption of ciphertext || tag.
#[doc(hidden)]
pub fn aead_open(key: &[u8], nonce: &[u8], aad: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>> {
    let cipher = cipher(key, nonce)?;
    cipher
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad })
        .map_err(|_| Error::Decrypt)
}

fn cipher(key: &[u8], nonce: &[u8]) -> Result<ChaCha20Poly1305> {
    // Checked here because `from_slice` panics on a wrong length.
    if key.len() != 32 || nonce.len() != NONCE_LEN {
        return Err(Error::InvalidKey);
    }
    Ok(ChaCha20Poly1305::new(Key::from_slice(key)))
}

/// Ed25519 signature.
pub(crate) fn ed25519_sign(key: &SigningKey, msg: &[u8]) -> [u8; 64] {
    key.sign(msg).to_bytes()
}

/// Strict Ed25519 verification on raw bytes.
///
/// `verify_strict` rejects small-order keys and non-canonical encodings, so a signature
/// cannot be made to verify under several keys or be malleated.
#[doc(hidden)]
pub fn ed25519_verify(public: &[u8], msg: &[u8], signature: &[u8]) -> Result<()> {
    let public: &[u8; 32] = public.try_into().map_err(|_| Error::InvalidKey)?;
    let signature: &[u8; 64] = signature.try_into().map_err(|_| Error::BadSignature)?;
    let key = VerifyingKey::from_bytes(public).map_err(|_| Error::InvalidKey)?;
    key.verify_strict(msg, &Signature::from_bytes(signature)).map_err(|_| Error::BadSignature)
}
