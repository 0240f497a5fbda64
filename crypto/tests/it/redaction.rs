//! `Debug` of every secret type must not show key bytes.

use letstalk_crypto::kdf::{SymmetricKey, chain_step, message_keys};
use letstalk_crypto::media::{CallKey, FrameSealer};
use letstalk_crypto::sender_keys::SenderKey;
use letstalk_crypto::{IdentityKeyPair, KdfLabels, PreKeySecret, StreamDecryptor, StreamEncryptor};
use rand_core::OsRng;

/// Fails if `debug` contains any 4-byte window of `secret` in lowercase or uppercase hex, or
/// as a decimal byte list.
fn assert_redacted(debug: &str, secret: &[u8]) {
    for w in secret.windows(4) {
        let lower: String = w.iter().map(|b| format!("{b:02x}")).collect();
        assert!(
            !debug.contains(&lower) && !debug.contains(&lower.to_uppercase()),
            "{debug} leaks key bytes"
        );
    }
    let list = format!("{:?}", &secret[..4]);
    assert!(!debug.contains(list.trim_matches(&['[', ']'][..])), "{debug} leaks key bytes");
}

#[test]
fn secret_types_debug_is_redacted() {
    let id = IdentityKeyPair::generate(&mut OsRng);
    assert_redacted(&format!("{id:?}"), &*id.to_bytes());
    assert_eq!(format!("{id:?}"), "IdentityKeyPair(..)");

    let spk = PreKeySecret::generate_signed(3, &id, &mut OsRng);
    let spk_bytes = spk.to_bytes();
    assert_redacted(&format!("{spk:?}"), &spk_bytes[6..38]);

    let ck = SymmetricKey::from_bytes([0xAB; 32]);
    assert_eq!(format!("{ck:?}"), "SymmetricKey(..)");
    let (mk, _) = chain_step(&ck);
    let keys = message_keys(&mk, KdfLabels::default().message_keys).unwrap();
    assert_redacted(&format!("{keys:?}"), &keys.cipher_key);

    let sender = SenderKey::generate(b"group", &mut OsRng).unwrap();
    let sender_bytes = sender.to_bytes();
    assert_redacted(&format!("{sender:?}"), &sender_bytes);
    let dist = sender.distribution();
    assert_redacted(&format!("{dist:?}"), &dist.encode()[10..]);
    let receiver = dist.receiver();
    assert_redacted(&format!("{receiver:?}"), &receiver.to_bytes()[10..]);

    let call = CallKey::generate(&mut OsRng);
    assert_redacted(&format!("{call:?}"), &*call.to_bytes());
    let sealer = FrameSealer::new(&call, 1).unwrap();
    assert!(format!("{sealer:?}").starts_with("FrameSealer("));

    let pair = crate::util::pair(true);
    let session_bytes = pair.alice.to_bytes();
    let debug = format!("{:?}", pair.alice);
    // The ratchet secret, root key and chain keys follow the 128-byte identity and the
    // pending prekey data; checking the whole blob also covers them.
    assert_redacted(&debug, &session_bytes[session_bytes.len() - 300..]);

    let (enc, _) = StreamEncryptor::new(&[7; 16], &mut OsRng).unwrap();
    assert!(!format!("{enc:?}").contains("07070707"));
    assert!(!format!("{:?}", StreamDecryptor::new(&[7; 16])).contains("07070707"));
}
