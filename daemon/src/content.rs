//! What travels inside an end-to-end envelope between two devices: a message, a
//! receipt, a group update or a sender key (and, encrypted with a sender key, a group
//! message's text). This is a boundary format (the peer may run another
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
    },
    /// The sender left the group.
    #[serde(rename = "group_leave")]
    GroupLeave { gid: String },
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
    /// The sender is typing: in the one-to-one conversation, or in group `gid` (sent
    /// pairwise to each member). `at` lets the receiver drop one that arrives stale.
    #[serde(rename = "typing")]
    Typing {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        gid: Option<String>,
        at: i64,
    },
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
            },
            Content::GroupLeave { gid: "g".into() },
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
