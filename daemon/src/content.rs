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
        ] {
            assert_eq!(Content::decode(&c.encode()), Some(c));
        }
        assert_eq!(Content::decode(b""), None);
        assert_eq!(Content::decode(b"\x02{}"), None);
        assert_eq!(Content::decode(b"\x01{\"t\":\"nope\"}"), None);
    }
}
