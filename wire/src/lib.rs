//! Frames between the Letstalk daemon and the relay, and their codec: bytes in, typed
//! frames out, no I/O (no tokio, no quinn), so every case is testable and fuzzable.
//!
//! # Layout
//!
//! - `codec.rs`: primitive big-endian encoding, the length prefix, [`split_frame`].
//! - `frames.rs`: [`Request`], [`Response`], [`Push`] and the value types they carry.
//! - `datagram.rs`: [`MediaDatagram`], the call media datagrams the relay forwards.
//!
//! # How the frames travel (QUIC, ALPN `letstalk/1`)
//!
//! - **Request/response**: the client opens one bidirectional stream per request, writes
//!   one [`Request`] frame and finishes its side; the relay answers with one [`Response`]
//!   frame and finishes. Requests in flight are independent streams, so a slow one blocks
//!   none of the others, and the stream itself matches an answer to its request (no ids).
//! - **Connection start**: the first request is [`Request::Hello`] with the versions the
//!   client speaks; [`Response::HelloOk`] names the chosen one and carries a fresh random
//!   32-byte challenge for this connection. The device proves itself with
//!   [`Request::Auth`] (or binds with `Register`/`Login`), signing [`auth_message`] with its
//!   Ed25519 key; until then only Hello, Auth, Register, Login, Ping and the link
//!   rendezvous reads and writes (`LinkGet`, `LinkPut`) are served.
//! - **Devices**: an account has up to [`MAX_DEVICES`] devices, each with its own key,
//!   prekeys and mailbox, numbered from 1 and never renumbered (`Authenticated` names
//!   the connection's device; `Register` makes device 1). The identity key is the
//!   account's. `ListDevices` tells one's own devices with their sealed names and times,
//!   another account's ids only (what a sender needs); `AddDevice`, `RemoveDevice` and
//!   `RenameDevice` change the list, and the account's other connected devices get
//!   `DevicesChanged`.
//!   A removed device, or every other device on a password `Login` (which moves the
//!   account to the logging-in device), gets `LoggedOut`, loses its mailbox and
//!   prekeys, and its key no longer authenticates.
//! - **Link rendezvous**: a new device joins an account through a slot named after a
//!   link code: the account's device opens it with its first message (`LinkOpen`), the
//!   joining device (with no account yet, after `Hello` only) reads it (`LinkGet`) and
//!   puts its answer (`LinkPut`, the `joined` cell), the account puts its reply (the
//!   `reply` cell). Each cell is written once; the slot ends after
//!   [`LINK_SLOT_TTL_MS`]. What travels there is end-to-end encrypted under a key from the
//!   code: the relay only stores it. Unauthenticated reads and writes are rate limited
//!   per address, so slot names (and the codes behind them) cannot be scanned.
//! - **Sending**: `SendCopies` hands one message to every *target device* of the
//!   recipient (its devices; for one's own account, its other devices), one ciphertext
//!   each (`FetchBundles` gives a session with each), stored in one transaction. Copies
//!   that do not name exactly the target devices are answered `Mismatch` (which are
//!   missing, which are extra) and nothing is stored: the sender learns of a linked or
//!   removed device and sends again. `SendCopiesBatch` hands several such messages for
//!   one recipient, stored in order in one transaction (`Mismatch` and nothing stored
//!   when any of them does not match). The legacy `Send` hands one message for an account
//!   with one target device (`Mismatch` when it has more); `SendBatch` hands several,
//!   stored in order in one transaction, so a device with a backlog pays one
//!   round trip and one disk sync per batch instead of per message; `SendGroup` one
//!   sender-key ciphertext to every device of each member. All are answered `Sent` only
//!   once everything is persisted, and all deduplicate by (sender, recipient, msg id).
//! - **Pushes**: after authentication the relay opens one unidirectional stream to the
//!   client and writes [`Push`] frames on it, in order: the device's queued messages
//!   oldest first (each naming the sending device), presence and profile changes of
//!   watched users, `DevicesChanged` and `LoggedOut`. A message stays on the relay until
//!   the device sends [`Request::Ack`] with its delivery id (only its own device's
//!   acknowledgement deletes it); a message pushed but not acknowledged is pushed again
//!   on the next connection.
//! - **File blobs** travel on their own bidirectional streams, never through the message
//!   path: `BlobPut` is a frame followed by the raw (already end-to-end encrypted) bytes
//!   on the same stream, answered `Blob` once durable; `BlobGet` is answered by a `Blob`
//!   frame followed by the raw bytes. Both take an offset, so transfers resume.
//!   `BlobRelease` from every device the blob waits for deletes it, `BlobCancel` from
//!   the owner deletes it at once; so does expiry.
//! - **Call media** travels as QUIC datagrams ([`MediaDatagram`]): unreliable, never
//!   retransmitted or queued. The relay forwards a datagram only along a route both
//!   devices asked for with `CallRoute`.
//!
//! # Frame layout
//!
//! `len: u32 BE` then `len` bytes of body; the body is `tag: u8` then the fields in
//! order. Integers are big-endian; `bytes` are `u32` length + data; strings are `u16`
//! length + UTF-8; an option is `0` or `1` + value; a list is `u16` count + items;
//! fixed arrays (keys, signatures, hashes) are raw. Tags: requests `0x01..`, responses
//! `0x80..`, pushes `0xC0..`. Decoding is strict and canonical: every length is checked
//! against its field's limit and the bytes left, booleans and option tags are 0 or 1,
//! unknown tags and trailing bytes are errors, so decode-then-encode gives back the input.
//! A length prefix over [`MAX_FRAME_LEN`] is refused before anything is allocated (file
//! blobs will travel on their own streams, outside this limit).
//!
//! # Versioning
//!
//! [`PROTOCOL_VERSION`] is negotiated by `Hello`. A new frame or field means a new version;
//! a peer never receives a tag its negotiated version does not define.

mod codec;
mod datagram;
mod frames;

pub use codec::{LEN_PREFIX, frame_len, split_frame};
pub use datagram::{
    CALL_ID_LEN, MAX_DATAGRAM_LEN, MAX_MEDIA_FRAME, MAX_SEALED_FRAME, MediaDatagram, fuzz_datagram,
};
pub use frames::{
    Avatar, AvatarMeta, AvatarUpdate, Bundle, Copy, DeviceInfo, ErrorKind, LinkSlot, Outbound,
    OutboundCopies, PreKey, PresenceInfo, Profile, Push, Refusal, ReportKind, Request, Response,
};

/// The protocol version this crate speaks. Version 2: devices (an account has up to
/// [`MAX_DEVICES`], each with its own mailbox and prekeys), link rendezvous, copies.
pub const PROTOCOL_VERSION: u16 = 2;
/// Most devices an account may have.
pub const MAX_DEVICES: usize = 5;
/// Largest sealed device name.
pub const MAX_DEVICE_NAME_LEN: usize = 256;
/// Largest message in a link rendezvous (the last one carries the account's state:
/// identity key, contacts, groups, settings).
pub const MAX_LINK_LEN: usize = 512 * 1024;
/// How long a link rendezvous lasts: a link code is good for 10 minutes.
pub const LINK_SLOT_TTL_MS: u64 = 10 * 60 * 1000;
/// The QUIC ALPN of the daemon-relay protocol.
pub const ALPN: &[u8] = b"letstalk/1";
/// Largest UDP payload either end accepts and probes for (path MTU discovery starts at
/// 1,200 bytes and climbs only as far as the path carries): a jumbo-frame Ethernet MTU
/// of 9,000 minus IPv6 and UDP headers. quinn's default stops at 1,452, which on
/// loopback and jumbo-frame LANs costs six times the packets for a file.
pub const MAX_UDP_PAYLOAD: u16 = 8952;
/// Largest frame body: 1 MiB plus room for the fields around an avatar of 1 MiB.
pub const MAX_FRAME_LEN: usize = 1024 * 1024 + 64 * 1024;
/// Largest message ciphertext in a `Send` or `Push::Message`.
pub const MAX_MESSAGE_LEN: usize = 256 * 1024;
/// Largest avatar image.
pub const MAX_AVATAR_LEN: usize = 1024 * 1024;
/// Largest file blob: a 2 GiB file in the age STREAM format (16-byte nonce, 64 KiB
/// chunks with a 16-byte tag each), rounded up to 2 GiB + 1 MiB.
pub const MAX_BLOB_LEN: u64 = 2 * 1024 * 1024 * 1024 + 1024 * 1024;
/// Largest identity-key blob.
pub const MAX_IDENTITY_LEN: usize = 4096;
/// Largest prekey blob.
pub const MAX_PREKEY_LEN: usize = 1024;
/// Largest user id, msg id or MIME type on the wire (the relay checks the stricter rules).
pub const MAX_SHORT_STR: usize = 128;
/// Largest other string (nickname, email, password, error message).
pub const MAX_TEXT_STR: usize = 1024;
/// Most items in a list (prekeys, watched users, acks).
pub const MAX_LIST: usize = 1000;
/// Domain separation for the device-auth signature.
pub const AUTH_CONTEXT: &[u8] = b"letstalk-auth-v2";
/// The TLS exporter label (RFC 5705 / RFC 8446 section 7.5) both ends use to derive
/// [`AUTH_EXPORTER_LEN`] bytes of keying material for [`auth_message`].
pub const AUTH_EXPORTER_LABEL: &[u8] = b"EXPORTER-letstalk-device-auth";
/// Length of the exported keying material signed in [`auth_message`].
pub const AUTH_EXPORTER_LEN: usize = 32;

/// The bytes a device signs to authenticate a connection: the context, the connection's
/// challenge, the connection's TLS exporter value (keying material only the two ends of
/// this TLS session know: a relay in the middle, or anyone replaying the signature on
/// another connection, has a different one) and the user id, so a signature is good for
/// one account on one connection.
pub fn auth_message(
    challenge: &[u8; 32],
    exporter: &[u8; AUTH_EXPORTER_LEN],
    user_id: &str,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(AUTH_CONTEXT.len() + 32 + AUTH_EXPORTER_LEN + user_id.len());
    m.extend_from_slice(AUTH_CONTEXT);
    m.extend_from_slice(challenge);
    m.extend_from_slice(exporter);
    m.extend_from_slice(user_id.as_bytes());
    m
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The length prefix (or an encoded frame) exceeds the maximum.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge { len: usize, max: usize },
    /// The body ends inside a field.
    #[error("truncated frame")]
    Truncated,
    /// Bytes left after the last field.
    #[error("{0} trailing bytes")]
    TrailingBytes(usize),
    /// An unknown frame tag.
    #[error("unknown frame tag {0:#04x}")]
    UnknownTag(u8),
    /// A field over its limit.
    #[error("field {0} too long")]
    FieldTooLong(&'static str),
    /// A field with an impossible value (bad UTF-8, a bool that is not 0 or 1, ...).
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// What the fuzz target runs: decode as each frame kind, and wherever decoding succeeds
/// check that encoding gives the same bytes back. Public so tests run it as a property.
pub fn fuzz_frame(data: &[u8]) {
    let Ok(Some((body, _))) = split_frame(data, MAX_FRAME_LEN) else { return };
    let prefixed = |enc: Result<Vec<u8>, WireError>| -> Option<Vec<u8>> { enc.ok() };
    if let Ok(req) = Request::decode(body) {
        let again = prefixed(req.encode());
        assert_eq!(
            again.as_deref().and_then(|f| f.get(LEN_PREFIX..)),
            Some(body),
            "request not canonical"
        );
    }
    if let Ok(resp) = Response::decode(body) {
        let again = prefixed(resp.encode());
        assert_eq!(
            again.as_deref().and_then(|f| f.get(LEN_PREFIX..)),
            Some(body),
            "response not canonical"
        );
    }
    if let Ok(push) = Push::decode(body) {
        let again = prefixed(push.encode());
        assert_eq!(
            again.as_deref().and_then(|f| f.get(LEN_PREFIX..)),
            Some(body),
            "push not canonical"
        );
    }
}
