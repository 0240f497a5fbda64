//! The wire format of a pairwise message: version, type, optional X3DH data, header,
//! ciphertext.
//!
//! ```text
//! version   u8     = 1
//! type      u8     1 = prekey message, 2 = ratchet message
//! -- prekey message only --
//! sender    128    Ed25519 key || X25519 key || signature (PublicIdentity)
//! ephemeral 32     initiator's X3DH ephemeral key
//! spk_id    u32    signed prekey id
//! has_otk   u8     0 or 1
//! otk_id    u32    one-time / last-resort prekey id, present iff has_otk = 1
//! -- both --
//! ratchet   32     header: sender's ratchet key
//! pn        u32    header: previous chain length
//! n         u32    header: message number
//! ct_len    u32    16 ..= MAX_CIPHERTEXT
//! ct        ct_len ChaCha20-Poly1305 ciphertext || tag
//! ```
//!
//! Integers are big-endian. Decoding is canonical: every accepted input re-encodes to the same
//! bytes, and trailing bytes are rejected.

use crate::codec::{Reader, put_bytes};
use crate::error::{Error, Result};
use crate::identity::PublicIdentity;
use crate::primitives::TAG_LEN;
use crate::ratchet::Header;

/// Current envelope version.
pub const ENVELOPE_VERSION: u8 = 1;

/// Largest ciphertext an envelope may carry (plaintext plus tag). Big content (files) travels
/// as age STREAM payloads referenced from a message, not inline.
pub const MAX_CIPHERTEXT: usize = 1 << 20;

const TYPE_PREKEY: u8 = 1;
const TYPE_MESSAGE: u8 = 2;

/// A decoded pairwise envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Envelope {
    /// First messages of a session, carrying what the responder needs to run X3DH.
    PreKey(PreKeyMessage),
    /// Every other message.
    Message(RatchetMessage),
}

/// A ratchet message: header and ciphertext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RatchetMessage {
    /// Double Ratchet header (authenticated as associated data).
    pub header: Header,
    /// ChaCha20-Poly1305 ciphertext with tag.
    pub ciphertext: Vec<u8>,
}

/// A prekey message: X3DH initiator data and the first ratchet message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreKeyMessage {
    /// The initiator's identity (its signature is verified while decoding).
    pub sender: PublicIdentity,
    /// The initiator's ephemeral key.
    pub ephemeral: [u8; 32],
    /// Which signed prekey the initiator used.
    pub signed_prekey_id: u32,
    /// Which one-time or last-resort prekey, if any.
    pub one_time_prekey_id: Option<u32>,
    /// The ratchet message.
    pub message: RatchetMessage,
}

impl Envelope {
    /// Encodes to bytes (see the module documentation for the layout).
    pub fn encode(&self) -> Vec<u8> {
        let message = match self {
            Self::PreKey(p) => &p.message,
            Self::Message(m) => m,
        };
        let mut out = Vec::with_capacity(256 + message.ciphertext.len());
        out.push(ENVELOPE_VERSION);
        match self {
            Self::PreKey(p) => {
                out.push(TYPE_PREKEY);
                put_x3dh_fields(
                    &mut out,
                    &p.sender,
                    &p.ephemeral,
                    p.signed_prekey_id,
                    p.one_time_prekey_id,
                );
            }
            Self::Message(_) => out.push(TYPE_MESSAGE),
        }
        out.extend_from_slice(&message.header.encode());
        put_bytes(&mut out, &message.ciphertext);
        out
    }

    /// Decodes untrusted bytes; never panics, rejects trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, "envelope");
        let version = r.u8()?;
        if version != ENVELOPE_VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let envelope = match r.u8()? {
            TYPE_PREKEY => {
                let sender = PublicIdentity::from_bytes(r.take(PublicIdentity::BYTES)?)?;
                let ephemeral = r.array()?;
                let signed_prekey_id = r.u32()?;
                let one_time_prekey_id = if r.bool()? { Some(r.u32()?) } else { None };
                let message = read_message(&mut r)?;
                Self::PreKey(PreKeyMessage {
                    sender,
                    ephemeral,
                    signed_prekey_id,
                    one_time_prekey_id,
                    message,
                })
            }
            TYPE_MESSAGE => Self::Message(read_message(&mut r)?),
            _ => return Err(Error::Malformed("envelope type")),
        };
        r.finish()?;
        Ok(envelope)
    }

    /// The ratchet message inside either kind.
    pub fn message(&self) -> &RatchetMessage {
        match self {
            Self::PreKey(p) => &p.message,
            Self::Message(m) => m,
        }
    }
}

/// The X3DH fields of a prekey message (sender identity, ephemeral key, prekey ids), as
/// both the envelope and the stored session state lay them out.
pub(crate) fn put_x3dh_fields(
    out: &mut Vec<u8>,
    sender: &PublicIdentity,
    ephemeral: &[u8; 32],
    signed_prekey_id: u32,
    one_time_prekey_id: Option<u32>,
) {
    out.extend_from_slice(&sender.to_bytes());
    out.extend_from_slice(ephemeral);
    out.extend_from_slice(&signed_prekey_id.to_be_bytes());
    match one_time_prekey_id {
        Some(id) => {
            out.push(1);
            out.extend_from_slice(&id.to_be_bytes());
        }
        None => out.push(0),
    }
}

fn read_message(r: &mut Reader<'_>) -> Result<RatchetMessage> {
    let header = Header::read(r)?;
    let ciphertext = r.bytes(MAX_CIPHERTEXT)?;
    if ciphertext.len() < TAG_LEN {
        return Err(Error::Malformed("ciphertext"));
    }
    Ok(RatchetMessage { header, ciphertext: ciphertext.to_vec() })
}
