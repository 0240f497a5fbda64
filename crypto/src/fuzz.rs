//! Fuzz target bodies, shared by the cargo-fuzz targets in `fuzz/` and by proptests so CI
//! exercises them on stable.
//!
//! Each body panics only when an invariant is broken, which is what the fuzzer looks for.

use crate::envelope::Envelope;
use crate::stream::StreamDecryptor;

/// Decodes arbitrary bytes as an [`Envelope`]; whatever decodes must re-encode identically.
pub fn envelope(data: &[u8]) {
    if let Ok(envelope) = Envelope::decode(data) {
        assert_eq!(envelope.encode(), data, "envelope decoding is not canonical");
    }
}

/// Feeds arbitrary bytes to the STREAM decryptor, split at a point taken from the input so
/// the incremental paths are exercised too. Must never panic.
pub fn age_stream(data: &[u8]) {
    let split = data.first().map_or(0, |b| usize::from(*b) * 257).min(data.len());
    let (a, b) = data.split_at(split);
    let mut out = Vec::new();
    let mut d = StreamDecryptor::new(&[0x42; 16]);
    if d.push(a, &mut out).is_ok() && d.push(b, &mut out).is_ok() {
        // Random bytes essentially never authenticate; only check finish does not panic.
        let _ = d.finish(&mut out);
    }
}

/// Opens arbitrary bytes as call media frames (what a daemon reads from the relay, sent
/// by anyone): split into frames by lengths taken from the input, each opened in turn
/// with one opener (so the replay window sees many senders and counters). Must never
/// panic; nothing random may authenticate.
pub fn media_frame(data: &[u8]) {
    let key = crate::media::CallKey::from_bytes([0x42; 32]);
    let mut opener = crate::media::FrameOpener::new(&key);
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let (frame, after) = tail.split_at(n);
        assert!(opener.open(frame).is_err(), "a random frame authenticated");
        rest = after;
    }
}
