//! Call media datagrams (QUIC datagrams, unreliable): `call_id: [u8; 16]` then one
//! sealed media frame, opaque to the relay. The relay reads only the call id, to find
//! the route, and forwards the datagram unchanged.

use crate::WireError;

/// Bytes of the call id in front of every media datagram.
pub const CALL_ID_LEN: usize = 16;
/// Largest plaintext media frame: the track byte and at most 1,100 bytes of codec payload
/// (the IPC contract's limit for one media-socket packet).
pub const MAX_MEDIA_FRAME: usize = 1 + 1100;
/// Largest sealed frame: the 12-byte frame header, the frame and the 16-byte tag.
pub const MAX_SEALED_FRAME: usize = 12 + MAX_MEDIA_FRAME + 16;
/// Largest media datagram; fits QUIC's minimum 1,200-byte packets with room for headers.
pub const MAX_DATAGRAM_LEN: usize = CALL_ID_LEN + MAX_SEALED_FRAME;

/// A media datagram, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaDatagram<'a> {
    /// The call's id (the route at the relay).
    pub call_id: [u8; CALL_ID_LEN],
    /// One sealed frame.
    pub sealed: &'a [u8],
}

impl<'a> MediaDatagram<'a> {
    /// The datagram's bytes; refuses a sealed frame that is empty or over the limit.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        if self.sealed.is_empty() {
            return Err(WireError::Truncated);
        }
        if self.sealed.len() > MAX_SEALED_FRAME {
            return Err(WireError::FrameTooLarge { len: self.sealed.len(), max: MAX_SEALED_FRAME });
        }
        let mut out = Vec::with_capacity(CALL_ID_LEN + self.sealed.len());
        out.extend_from_slice(&self.call_id);
        out.extend_from_slice(self.sealed);
        Ok(out)
    }

    /// Parses a datagram; never panics, whatever the bytes.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, WireError> {
        if bytes.len() > MAX_DATAGRAM_LEN {
            return Err(WireError::FrameTooLarge { len: bytes.len(), max: MAX_DATAGRAM_LEN });
        }
        let Some((call_id, sealed)) = bytes.split_first_chunk::<CALL_ID_LEN>() else {
            return Err(WireError::Truncated);
        };
        if sealed.is_empty() {
            return Err(WireError::Truncated);
        }
        Ok(Self { call_id: *call_id, sealed })
    }
}

/// What the fuzz target runs: decoding never panics, and what decodes encodes back to
/// the same bytes.
pub fn fuzz_datagram(data: &[u8]) {
    if let Ok(d) = MediaDatagram::decode(data) {
        assert_eq!(d.encode().ok().as_deref(), Some(data), "datagram not canonical");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_limits() {
        let sealed = vec![7u8; MAX_SEALED_FRAME];
        let d = MediaDatagram { call_id: [1; 16], sealed: &sealed };
        let bytes = d.encode().unwrap();
        assert_eq!(bytes.len(), MAX_DATAGRAM_LEN);
        assert_eq!(MediaDatagram::decode(&bytes).unwrap(), d);
        let too_big = vec![7u8; MAX_SEALED_FRAME + 1];
        assert!(MediaDatagram { call_id: [1; 16], sealed: &too_big }.encode().is_err());
        assert!(MediaDatagram::decode(&[0; 16]).is_err());
        assert!(MediaDatagram::decode(&[0; 3]).is_err());
        assert!(MediaDatagram::decode(&vec![0; MAX_DATAGRAM_LEN + 1]).is_err());
        // 1,200-byte QUIC packets leave at least 1,160 bytes for a datagram frame.
        const { assert!(MAX_DATAGRAM_LEN <= 1160) };
    }

    proptest::proptest! {
        #[test]
        fn fuzz_body_holds(data in proptest::collection::vec(proptest::num::u8::ANY, 0..1300)) {
            fuzz_datagram(&data);
        }
    }
}
