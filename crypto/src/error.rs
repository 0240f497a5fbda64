//! The crate's single error type.

/// Everything that can go wrong in `letstalk-crypto`.
///
/// Variants are deliberately coarse where detail would help an attacker (every AEAD or
/// MAC failure is [`Error::Decrypt`]) and precise where the caller must react
/// differently (a [`Error::Duplicate`] message is dropped silently, a
/// [`Error::Malformed`] one is reported).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Bytes that should be a key, nonce or tag have the wrong length or encoding.
    #[error("invalid key, nonce or tag")]
    InvalidKey,
    /// An X25519 result was all zero: the peer sent a low-order point.
    #[error("non-contributory X25519 result")]
    NonContributory,
    /// An Ed25519 signature did not verify.
    #[error("signature verification failed")]
    BadSignature,
    /// AEAD authentication failed (wrong key, tampered or forged data).
    #[error("decryption failed")]
    Decrypt,
    /// A structure could not be parsed; the string names the field.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// A format version this build does not understand.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    /// The message was already decrypted once (a replay or a duplicate delivery).
    #[error("duplicate message")]
    Duplicate,
    /// Decrypting would require skipping more message keys than allowed.
    #[error("too many skipped messages")]
    TooManySkipped,
    /// The message belongs to a sender-key generation this state does not hold.
    #[error("unknown sender key generation")]
    UnknownGeneration,
    /// The prekey handed in does not match the one the message names.
    #[error("prekey mismatch")]
    PreKeyMismatch,
    /// No session (current or previous) with the peer could open the message.
    #[error("no session")]
    NoSession,
    /// A counter (message number, chunk, frame) would overflow.
    #[error("counter exhausted")]
    CounterExhausted,
    /// A STREAM payload ended before its final chunk.
    #[error("truncated stream")]
    Truncated,
    /// Data followed the final STREAM chunk.
    #[error("trailing data after final chunk")]
    TrailingData,
    /// A final STREAM chunk was empty although it was not the first chunk.
    #[error("empty final chunk")]
    EmptyLastChunk,
    /// The object was used after it finished or failed.
    #[error("used after finish or failure")]
    InvalidState,
    /// A call media frame arrived again or too late for the replay window.
    #[error("replayed or too old frame")]
    Replay,
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
