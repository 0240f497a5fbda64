//! Letstalk's end-to-end cryptography: identities, X3DH, the Double Ratchet, sender keys,
//! safety numbers, age STREAM file encryption and call media frames.
//!
//! **Architecture Invariant:** this crate does no I/O: no files, sockets, clocks or threads.
//! Randomness comes in as `&mut (impl RngCore + CryptoRng)` parameters and everything else as
//! bytes, so every function is deterministic given its inputs and testable in isolation.
//!
//! **Architecture Invariant:** secret types zeroize on drop and their `Debug` prints a
//! redaction, never key bytes.
//!
//! # Layout
//!
//! - `error`: the single [`Error`] enum.
//! - `primitives`: wrappers over X25519, Ed25519, HKDF, HMAC and ChaCha20-Poly1305 (the only
//!   place they are called; public-but-hidden for the Wycheproof tests).
//! - `codec`: bounds-checked reader used by every parser.
//! - `identity`: [`IdentityKeyPair`], [`PublicIdentity`].
//! - `prekeys`: signed, one-time and last-resort prekeys, [`PreKeyBundle`].
//! - `kdf`: [`KdfLabels`] and the chain/root/message-key derivations.
//! - `x3dh`: the X3DH key agreement.
//! - `ratchet`: the Double Ratchet state machine.
//! - `envelope`: the pairwise wire format, [`Envelope`].
//! - `session`: [`Session`], what the daemon calls.
//! - `record`: [`SessionRecord`], a peer's current session and up to 40 previous ones.
//! - `safety`: [`SafetyNumber`].
//! - `sender_keys`: group messaging with Signal-style sender keys.
//! - `stream`: age STREAM file encryption, [`StreamEncryptor`] / [`StreamDecryptor`].
//! - `media`: call media frame sealing.
//! - `link`: linking a device by a one-time code (SPAKE2, then one sealed message each way).
//! - `fuzz`: the fuzz target bodies, shared by `fuzz/` and the proptests.

#![forbid(unsafe_code)]

mod codec;
mod envelope;
mod error;
#[doc(hidden)]
pub mod fuzz;
mod identity;
pub mod kdf;
pub mod link;
pub mod media;
mod prekeys;
#[doc(hidden)]
pub mod primitives;
mod ratchet;
mod record;
mod safety;
pub mod sender_keys;
mod session;
pub mod stream;
pub mod x3dh;

pub use envelope::{ENVELOPE_VERSION, Envelope, MAX_CIPHERTEXT, PreKeyMessage, RatchetMessage};
pub use error::{Error, Result};
pub use identity::{IdentityKeyPair, PublicIdentity};
pub use kdf::{KdfLabels, SymmetricKey};
pub use prekeys::{
    OneTimePreKey, OneTimePreKeyPublic, PreKeyBundle, PreKeyKind, PreKeySecret, SignedPreKey,
    SignedPreKeyPublic,
};
pub use ratchet::{Header, MAX_SKIP};
pub use record::{ARCHIVED_SESSIONS_MAX, SessionRecord};
pub use safety::SafetyNumber;
pub use sender_keys::{SenderKey, SenderKeyDistribution, SenderKeyReceiver};
pub use session::Session;
pub use stream::{StreamDecryptor, StreamEncryptor};
