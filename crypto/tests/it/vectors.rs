//! Values published by other projects, reproduced through the crate's own code paths.

use letstalk_crypto::kdf::{KdfLabels, SymmetricKey, chain_step, message_keys};
use letstalk_crypto::primitives::hkdf_sha256;

use crate::util::hex;

/// libsignal `rust/protocol/src/ratchet/keys.rs`, `test_chain_key_derivation`.
#[test]
fn libsignal_chain_key_derivation() {
    let ck = SymmetricKey::from_bytes(
        hex("8ab72d6f4cc5ac0d387eaf463378ddb28edd07385b1cb01250c715982e7ad48f").try_into().unwrap(),
    );
    let (mk, next) = chain_step(&ck);
    assert_eq!(
        next.as_bytes().as_slice(),
        hex("28e8f8fee54b801eef7c5cfb2f17f32c7b334485bbb70fac6ec10342a246d15d")
    );

    // libsignal expands the message key to 80 bytes: cipher key, MAC key, IV.
    let mut okm = [0u8; 80];
    hkdf_sha256(None, mk.as_bytes(), KdfLabels::LIBSIGNAL.message_keys, &mut okm).unwrap();
    let cipher_key = hex("bf51e9d75e0e31031051f82a2491ffc084fa298b7793bd9db620056febf45217");
    let mac_key = hex("c6c77d6a73a354337a56435e34607dfe48e3ace14e77314dc6abc172e7a7030b");
    assert_eq!(&okm[..32], cipher_key.as_slice());
    assert_eq!(&okm[32..64], mac_key.as_slice());

    // The ratchet's own expansion (key + 12-byte nonce) is a prefix of the same HKDF stream.
    let keys = message_keys(&mk, KdfLabels::LIBSIGNAL.message_keys).unwrap();
    assert_eq!(keys.cipher_key.as_slice(), cipher_key.as_slice());
    assert_eq!(keys.nonce.as_slice(), &mac_key[..12]);
}
