//! The key derivation functions of X3DH, the Double Ratchet and sender keys, with their labels
//! as parameters.
//!
//! Keeping every HKDF info string in [`KdfLabels`] lets tests plug in libsignal's labels and
//! reproduce its published values through the very functions the ratchet calls.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::Result;
use crate::primitives::{NONCE_LEN, hkdf_sha256, hmac_sha256};

/// HKDF info strings used by the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfLabels {
    /// X3DH: info for the shared secret.
    pub x3dh: &'static [u8],
    /// Double Ratchet root step: info for (root key, chain key).
    pub root: &'static [u8],
    /// Message key expansion into (cipher key, nonce).
    pub message_keys: &'static [u8],
    /// Sender-key (group) message key expansion.
    pub sender_message_keys: &'static [u8],
}

impl KdfLabels {
    /// The labels libsignal uses, for reproducing its test values.
    pub const LIBSIGNAL: Self = Self {
        x3dh: b"WhisperText",
        root: b"WhisperRatchet",
        message_keys: b"WhisperMessageKeys",
        sender_message_keys: b"WhisperGroup",
    };

    /// Letstalk's own labels, versioned so a future change cannot collide.
    pub const LETSTALK: Self = Self {
        x3dh: b"Letstalk X3DH v1",
        root: b"Letstalk ratchet root v1",
        message_keys: b"Letstalk message keys v1",
        sender_message_keys: b"Letstalk sender message keys v1",
    };
}

impl Default for KdfLabels {
    fn default() -> Self {
        Self::LETSTALK
    }
}

/// A 32-byte chain or message key. Zeroized on drop; `Debug` is redacted.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct SymmetricKey(pub(crate) [u8; 32]);

impl SymmetricKey {
    /// Wraps raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw bytes (for tests and storage).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SymmetricKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SymmetricKey(..)")
    }
}

/// AEAD key and nonce derived from a message key.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct MessageKeys {
    /// ChaCha20-Poly1305 key.
    pub cipher_key: [u8; 32],
    /// ChaCha20-Poly1305 nonce.
    pub nonce: [u8; NONCE_LEN],
}

impl fmt::Debug for MessageKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MessageKeys(..)")
    }
}

/// Symmetric-key ratchet step: (message key, next chain key) =
/// (HMAC-SHA256(ck, 0x01), HMAC-SHA256(ck, 0x02)), as in Signal's specification.
pub fn chain_step(chain_key: &SymmetricKey) -> (SymmetricKey, SymmetricKey) {
    let message_key = SymmetricKey(hmac_sha256(&chain_key.0, &[0x01]));
    let next = SymmetricKey(hmac_sha256(&chain_key.0, &[0x02]));
    (message_key, next)
}

/// Expands a message key into a ChaCha20-Poly1305 key and nonce:
/// HKDF-SHA256(salt = none, ikm = message key, info = `label`), first 44 bytes.
///
/// HKDF output is a prefix-stable stream, so the key equals libsignal's cipher key and the
/// nonce the first 12 bytes of its MAC key for the same label.
pub fn message_keys(message_key: &SymmetricKey, label: &[u8]) -> Result<MessageKeys> {
    let mut okm = Zeroizing::new([0u8; 32 + NONCE_LEN]);
    hkdf_sha256(None, &message_key.0, label, okm.as_mut_slice())?;
    let mut keys = MessageKeys { cipher_key: [0; 32], nonce: [0; NONCE_LEN] };
    keys.cipher_key.copy_from_slice(&okm[..32]);
    keys.nonce.copy_from_slice(&okm[32..]);
    Ok(keys)
}

/// Root step: (root key, chain key) = HKDF-SHA256(salt = root key, ikm = DH output,
/// info = `label`), 64 bytes.
pub fn root_step(
    root_key: &SymmetricKey,
    dh_out: &[u8; 32],
    label: &[u8],
) -> Result<(SymmetricKey, SymmetricKey)> {
    let mut okm = Zeroizing::new([0u8; 64]);
    hkdf_sha256(Some(&root_key.0), dh_out, label, okm.as_mut_slice())?;
    let mut rk = SymmetricKey([0; 32]);
    let mut ck = SymmetricKey([0; 32]);
    rk.0.copy_from_slice(&okm[..32]);
    ck.0.copy_from_slice(&okm[32..]);
    Ok((rk, ck))
}
