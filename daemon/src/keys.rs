//! Our public keys in the relay directory's shape and back: the relay stores identity
//! and prekeys as opaque bytes (`wire::PreKey`), the daemon gives them meaning.
//!
//! Layouts: identity = `PublicIdentity::to_bytes` (128 bytes); signed and last-resort
//! prekeys = X25519 key (32) ‖ Ed25519 signature by the identity (64); one-time prekeys
//! = X25519 key (32).

use letstalk_crypto::{
    OneTimePreKeyPublic, PreKeyBundle, PreKeySecret, PublicIdentity, SignedPreKeyPublic,
};
use letstalk_wire::{Bundle, PreKey};

/// A prekey's public half for the directory.
pub fn to_wire(key: &PreKeySecret) -> PreKey {
    let mut bytes = key.public_key().to_vec();
    if let Some(signed) = key.signed_public() {
        bytes.extend_from_slice(&signed.signature);
    } else if let Some(sig) = key.one_time_public().and_then(|p| p.last_resort_signature) {
        bytes.extend_from_slice(&sig);
    }
    PreKey { id: key.id(), key: bytes }
}

fn split_signed(p: &PreKey) -> Option<([u8; 32], [u8; 64])> {
    let key: [u8; 32] = p.key.get(..32)?.try_into().ok()?;
    let sig: [u8; 64] = p.key.get(32..96)?.try_into().ok()?;
    (p.key.len() == 96).then_some((key, sig))
}

/// A directory bundle as the crypto crate's verified `PreKeyBundle`, or why not.
pub fn bundle_from_wire(b: &Bundle) -> Result<PreKeyBundle, String> {
    let identity = PublicIdentity::from_bytes(&b.identity).map_err(|e| format!("identity: {e}"))?;
    let signed = b.signed_prekey.as_ref().ok_or("no signed prekey")?;
    let (key, signature) = split_signed(signed).ok_or("malformed signed prekey")?;
    let signed_prekey = SignedPreKeyPublic { id: signed.id, key, signature };
    let one_time_prekey = match &b.one_time_prekey {
        None => None,
        Some(p) if b.last_resort => {
            let (key, sig) = split_signed(p).ok_or("malformed last-resort prekey")?;
            Some(OneTimePreKeyPublic { id: p.id, key, last_resort_signature: Some(sig) })
        }
        Some(p) => {
            let key: [u8; 32] =
                p.key.as_slice().try_into().map_err(|_| "malformed one-time prekey")?;
            Some(OneTimePreKeyPublic { id: p.id, key, last_resort_signature: None })
        }
    };
    let bundle = PreKeyBundle { identity, signed_prekey, one_time_prekey };
    bundle.verify().map_err(|e| format!("bundle: {e}"))?;
    Ok(bundle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::account::generate_prekeys;
    use letstalk_crypto::IdentityKeyPair;
    use rand_core::OsRng;

    #[test]
    fn bundles_round_trip_through_the_directory_shape() {
        let id = IdentityKeyPair::generate(&mut OsRng);
        let keys = generate_prekeys(&id, &mut OsRng);
        for (one_time, last_resort) in
            [(Some(&keys[5]), false), (Some(&keys[1]), true), (None, false)]
        {
            let wire = Bundle {
                device_id: 1,
                user_id: "bob".into(),
                device_key: [0; 32],
                identity: id.public().to_bytes().to_vec(),
                signed_prekey: Some(to_wire(&keys[0])),
                one_time_prekey: one_time.map(to_wire),
                last_resort,
            };
            let b = bundle_from_wire(&wire).unwrap();
            assert_eq!(b.identity, id.public());
            assert_eq!(b.one_time_prekey.map(|p| p.id), one_time.map(|k| k.id()));
        }
        let mut bad = Bundle {
            device_id: 1,
            user_id: "bob".into(),
            device_key: [0; 32],
            identity: id.public().to_bytes().to_vec(),
            signed_prekey: Some(to_wire(&keys[0])),
            one_time_prekey: None,
            last_resort: false,
        };
        if let Some(p) = bad.signed_prekey.as_mut() {
            p.key[40] ^= 1;
        }
        assert!(bundle_from_wire(&bad).is_err());
    }
}
