//! What travels inside an end-to-end envelope between two devices: a message, a
//! receipt, a group update or a sender key (and, encrypted with a sender key, a group
//! message's text); between the devices of one account, what one of them sent or read,
//! and the contacts and settings they keep in step. This is a boundary format (the peer may run another
//! version), so it is versioned JSON with explicit, optional-friendly fields; only the
//! two devices ever see it, encrypted everywhere else.

use serde::{Deserialize, Serialize};

/// One payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t")]
pub enum Content {
    /// A text message; `id` is the sender's message ID, the same on both devices.
    #[serde(rename = "text")]
    Text {
        id: String,
        at: i64,
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<String>,
    },
    /// Delivery or read receipts for messages the receiver got from us.
    #[serde(rename = "receipt")]
    Receipt { state: ReceiptKind, ids: Vec<String> },
    /// A group's name and membership as an admin set it; `ver` orders the updates.
    #[serde(rename = "group")]
    Group {
        gid: String,
        name: String,
        members: Vec<String>,
        admins: Vec<String>,
        ver: u64,
        created: i64,
        /// Proof that the sender is an admin, for a device that has not seen the group
        /// (see `groups.rs`): the group id is bound to its creator, and each admin
        /// after the creator holds a grant signed by the one before.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<Origin>,
    },
    /// The sender left the group; the last admin leaving signs `grant` for the member
    /// who becomes admin after it.
    #[serde(rename = "group_leave")]
    GroupLeave {
        gid: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grant: Option<Grant>,
    },
    /// The sender's sender key for a group, hex (secret: it only ever travels inside a
    /// pairwise session).
    #[serde(rename = "sender_key")]
    SenderKey { gid: String, key: String },
    /// A file: what it is, where its encrypted bytes wait on the relay (`blob`, owned by
    /// the sender), and the key and hash that open and check them.
    #[serde(rename = "file")]
    File {
        id: String,
        at: i64,
        name: String,
        size: u64,
        mime: String,
        /// SHA-256 of the plaintext, hex.
        sha256: String,
        /// The 16-byte age file key, hex.
        key: Secret,
        /// The 16-byte blob id, hex.
        blob: String,
        /// Bytes of the blob (the age payload).
        blob_size: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caption: Option<String>,
    },
    /// The sender cancelled file message `id`: its blob is gone.
    #[serde(rename = "file_cancel")]
    FileCancel { id: String },
    /// A call: `media` is `audio` or `video`, `key` the call's fresh 32-byte media key
    /// (hex) that seals every frame.
    #[serde(rename = "call_offer")]
    CallOffer { call_id: String, at: i64, media: String, key: Secret },
    /// The callee answered.
    #[serde(rename = "call_answer")]
    CallAnswer { call_id: String },
    /// The call ended on the sender's side: `hangup`, `rejected`, `busy` or `missed`.
    #[serde(rename = "call_end")]
    CallEnd { call_id: String, reason: String },
    /// A retry receipt: the sender of this could not open our messages with these relay
    /// ids; we encrypt their kept plaintext afresh under a new session and send it again.
    #[serde(rename = "retry")]
    Retry { ids: Vec<String> },
    /// What another device of our own account sent to a user or a group: shown here as
    /// an outgoing message of conversation `to` (`user:<id>` or `group:<gid>`), `id` the
    /// same message id. (A group text reaches our other devices this way, pairwise: they
    /// never need our own sender key.)
    #[serde(rename = "sent")]
    Sent {
        to: String,
        id: String,
        at: i64,
        text: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<String>,
    },
    /// A file another device of our own account sent to conversation `to` (`user:<id>`
    /// or `group:<gid>`): `file` is the `file` content it sent, whose blob waits for our
    /// other devices too. Shown here as an outgoing file and fetched like an incoming
    /// one; never uploaded, cancelled or deleted from here.
    #[serde(rename = "sent_file")]
    SentFile { to: String, file: Box<Content> },
    /// Another device of our own account read these messages of `conversation`: they
    /// are read here too (and no second read receipt goes to their sender).
    #[serde(rename = "read_sync")]
    ReadSync { conversation: String, ids: Vec<String> },
    /// Another device of our own account changed contact `user_id`: the contact as it
    /// holds it now, or `removed`. `verified` is the identity key (hex) it verified, if
    /// any; this device takes it only for the same key it knows itself.
    #[serde(rename = "contact_sync")]
    ContactSync {
        user_id: String,
        #[serde(default)]
        nickname: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        alias: Option<String>,
        blocked: bool,
        #[serde(default)]
        removed: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        verified: Option<String>,
    },
    /// Another device of our own account changed the account's settings (those the same
    /// on every device).
    #[serde(rename = "settings_sync")]
    SettingsSync { block_all: bool, read_receipts: bool, typing: bool, share_presence: bool },
    /// The sender cannot read our group messages `ids` (their relay ids) in group
    /// `gid`: it lacks the sender key of the device that sent them (it was linked after
    /// we handed the key out). We send our current key and those messages again,
    /// pairwise (bounded, see `groups::on_key_request`).
    #[serde(rename = "sender_key_request")]
    SenderKeyRequest { gid: String, ids: Vec<String> },
    /// One of our group messages in group `gid`, sent again pairwise to a member that
    /// could not read it: `content` is what the group message carried (a text, a file
    /// or a file cancel).
    #[serde(rename = "group_resend")]
    GroupResend { gid: String, content: Box<Content> },
    /// The sender is typing: in the one-to-one conversation, or in group `gid` (sent
    /// pairwise to each member). `at` lets the receiver drop one that arrives stale.
    #[serde(rename = "typing")]
    Typing {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gid: Option<String>,
        at: i64,
    },
}

impl Content {
    /// Whether a peer that could not open this may ask for it again: everything but
    /// receipts (their loss costs a tick, and a receipt for a receipt would never end),
    /// typing notifications and call signalling (only useful for a moment).
    pub fn resendable(&self) -> bool {
        !matches!(
            self,
            Self::Receipt { .. }
                | Self::Retry { .. }
                | Self::SenderKeyRequest { .. }
                | Self::Typing { .. }
                | Self::CallOffer { .. }
                | Self::CallAnswer { .. }
                | Self::CallEnd { .. }
        )
    }
}

/// Where a group comes from: its creator, the creator's identity key (hex of the 128-byte
/// public identity) and a 16-byte nonce (hex) that, hashed together, are the group id;
/// and the chain of admin grants from the creator to the sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub creator: String,
    pub key: String,
    pub nonce: String,
    #[serde(default)]
    pub grants: Vec<Grant>,
}

/// `admin` (whose identity key is `key`, hex) is an admin of the group: signed (`sig`,
/// hex) by the identity key of the admin before it in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub admin: String,
    pub key: String,
    pub sig: String,
}

/// A secret string (hex key material): serialised as is, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    Delivered,
    Read,
}

/// The version byte in front of the JSON, so a later format can be told apart.
const VERSION: u8 = 1;

impl Content {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![VERSION];
        // Serializing these plain structs cannot fail.
        out.extend(serde_json::to_vec(self).unwrap_or_default());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        match bytes.split_first() {
            Some((&VERSION, json)) => serde_json::from_slice(json).ok(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        for c in [
            Content::Text { id: "m1".into(), at: 5, text: "hi".into(), reply_to: None },
            Content::Receipt { state: ReceiptKind::Read, ids: vec!["a".into(), "b".into()] },
            Content::Typing { gid: None, at: 7 },
            Content::Typing { gid: Some("g".into()), at: 7 },
            Content::Group {
                gid: "g".into(),
                name: "n".into(),
                members: vec!["a".into()],
                admins: vec!["a".into()],
                ver: 2,
                created: 1,
                origin: Some(Origin {
                    creator: "a".into(),
                    key: "00".into(),
                    nonce: "11".into(),
                    grants: vec![Grant { admin: "b".into(), key: "22".into(), sig: "33".into() }],
                }),
            },
            Content::GroupLeave { gid: "g".into(), grant: None },
            Content::Retry { ids: vec!["r1".into()] },
            Content::SenderKey { gid: "g".into(), key: "00".into() },
            Content::File {
                id: "f".into(),
                at: 1,
                name: "a.txt".into(),
                size: 3,
                mime: "text/plain".into(),
                sha256: "00".into(),
                key: Secret("k".into()),
                blob: "b".into(),
                blob_size: 40,
                caption: None,
            },
            Content::FileCancel { id: "f".into() },
            Content::CallOffer {
                call_id: "c".into(),
                at: 2,
                media: "audio".into(),
                key: Secret("k".into()),
            },
            Content::CallAnswer { call_id: "c".into() },
            Content::CallEnd { call_id: "c".into(), reason: "hangup".into() },
            Content::Sent {
                to: "user:bob".into(),
                id: "m".into(),
                at: 3,
                text: "hi".into(),
                reply_to: Some("r".into()),
            },
            Content::SentFile {
                to: "group:g".into(),
                file: Box::new(Content::FileCancel { id: "f".into() }),
            },
            Content::ReadSync { conversation: "user:bob".into(), ids: vec!["m".into()] },
            Content::SenderKeyRequest { gid: "g".into(), ids: vec!["r".into()] },
            Content::GroupResend {
                gid: "g".into(),
                content: Box::new(Content::Text {
                    id: "m".into(),
                    at: 3,
                    text: "hi".into(),
                    reply_to: None,
                }),
            },
        ] {
            assert_eq!(Content::decode(&c.encode()), Some(c));
        }
        assert_eq!(Content::decode(b""), None);
        assert_eq!(Content::decode(b"\x02{}"), None);
        assert_eq!(Content::decode(b"\x01{\"t\":\"nope\"}"), None);
    }
}

#[cfg(test)]
mod redaction {
    use super::*;

    #[test]
    fn debug_never_shows_a_file_key() {
        let c = Content::File {
            id: "f".into(),
            at: 1,
            name: "a".into(),
            size: 1,
            mime: "x".into(),
            sha256: "s".into(),
            key: Secret("00112233445566778899aabbccddeeff".into()),
            blob: "b".into(),
            blob_size: 1,
            caption: None,
        };
        assert!(!format!("{c:?}").contains("00112233"));
        assert!(String::from_utf8_lossy(&c.encode()).contains("00112233"));
    }
}
