//! X3DH key agreement (Signal's specification), initiator and responder.
//!
//! The identity DH key is the X25519 key signed by the Ed25519 identity (see `identity`).
//! SK = HKDF-SHA256(salt = 32 zero bytes, ikm = 32 0xFF bytes || DH1 || DH2 || DH3 [|| DH4],
//! info = label); AD = initiator identity || responder identity.

use rand_core::{CryptoRng, RngCore};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::identity::{IdentityKeyPair, PublicIdentity};
use crate::kdf::SymmetricKey;
use crate::prekeys::{PreKeyBundle, PreKeyKind, PreKeySecret};
use crate::primitives::{dh, hkdf_sha256};

/// Length of the associated data: two 64-byte identities.
pub const AD_LEN: usize = 128;

/// What the initiator derives and must send along.
#[derive(Debug)]
pub struct InitiatorOutput {
    /// The shared secret SK.
    pub shared_secret: SymmetricKey,
    /// AD = initiator identity keys || responder identity keys.
    pub associated_data: [u8; AD_LEN],
    /// The initiator's ephemeral public key EK_A.
    pub ephemeral: [u8; 32],
    /// Id of the signed prekey used.
    pub signed_prekey_id: u32,
    /// Id of the one-time (or last-resort) prekey used, if any.
    pub one_time_prekey_id: Option<u32>,
}

/// Initiator side: verifies the bundle, then runs DH1..DH4 with a fresh ephemeral key.
pub fn initiate(
    identity: &IdentityKeyPair,
    bundle: &PreKeyBundle,
    label: &[u8],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<InitiatorOutput> {
    bundle.verify()?;
    let ephemeral = StaticSecret::random_from_rng(rng);
    let spk = &bundle.signed_prekey.key;
    let dh1 = dh(identity.x25519_secret(), spk)?;
    let dh2 = dh(&ephemeral, bundle.identity.x25519())?;
    let dh3 = dh(&ephemeral, spk)?;
    let dh4 = match &bundle.one_time_prekey {
        Some(otk) => Some(dh(&ephemeral, &otk.key)?),
        None => None,
    };
    let shared_secret = kdf(&dh1, &dh2, &dh3, dh4.as_deref(), label)?;
    Ok(InitiatorOutput {
        shared_secret,
        associated_data: associated_data(&identity.public(), &bundle.identity),
        ephemeral: PublicKey::from(&ephemeral).to_bytes(),
        signed_prekey_id: bundle.signed_prekey.id,
        one_time_prekey_id: bundle.one_time_prekey.map(|k| k.id),
    })
}

/// Responder side: recomputes SK from the initiator's identity and ephemeral key and the
/// prekeys it named. Returns (SK, AD).
pub fn respond(
    identity: &IdentityKeyPair,
    signed_prekey: &PreKeySecret,
    one_time_prekey: Option<&PreKeySecret>,
    initiator: &PublicIdentity,
    ephemeral: &[u8; 32],
    label: &[u8],
) -> Result<(SymmetricKey, [u8; AD_LEN])> {
    if signed_prekey.kind() != PreKeyKind::Signed {
        return Err(Error::PreKeyMismatch);
    }
    if one_time_prekey.is_some_and(|k| k.kind() == PreKeyKind::Signed) {
        return Err(Error::PreKeyMismatch);
    }
    initiator.verify()?;
    let dh1 = dh(signed_prekey.secret(), initiator.x25519())?;
    let dh2 = dh(identity.x25519_secret(), ephemeral)?;
    let dh3 = dh(signed_prekey.secret(), ephemeral)?;
    let dh4 = match one_time_prekey {
        Some(k) => Some(dh(k.secret(), ephemeral)?),
        None => None,
    };
    let sk = kdf(&dh1, &dh2, &dh3, dh4.as_deref(), label)?;
    Ok((sk, associated_data(initiator, &identity.public())))
}

fn kdf(
    dh1: &[u8; 32],
    dh2: &[u8; 32],
    dh3: &[u8; 32],
    dh4: Option<&[u8; 32]>,
    label: &[u8],
) -> Result<SymmetricKey> {
    // The 0xFF prefix is Signal's domain separation from XEdDSA signatures over the same
    // curve; kept so the construction matches the specification exactly.
    let mut ikm = Zeroizing::new(Vec::with_capacity(32 * 5));
    ikm.extend_from_slice(&[0xFF; 32]);
    ikm.extend_from_slice(dh1);
    ikm.extend_from_slice(dh2);
    ikm.extend_from_slice(dh3);
    if let Some(dh4) = dh4 {
        ikm.extend_from_slice(dh4);
    }
    let mut sk = SymmetricKey([0; 32]);
    hkdf_sha256(Some(&[0u8; 32]), &ikm, label, &mut sk.0)?;
    Ok(sk)
}

fn associated_data(initiator: &PublicIdentity, responder: &PublicIdentity) -> [u8; AD_LEN] {
    let mut ad = [0u8; AD_LEN];
    ad[..64].copy_from_slice(&initiator.key_bytes());
    ad[64..].copy_from_slice(&responder.key_bytes());
    ad
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kdf::KdfLabels;
    use rand_core::OsRng;

    #[test]
    fn both_sides_agree_with_and_without_one_time_key() {
        let alice = IdentityKeyPair::generate(&mut OsRng);
        let bob = IdentityKeyPair::generate(&mut OsRng);
        let spk = PreKeySecret::generate_signed(1, &bob, &mut OsRng);
        let otk = PreKeySecret::generate_one_time(2, &mut OsRng);
        for use_otk in [false, true] {
            let bundle = PreKeyBundle {
                identity: bob.public(),
                signed_prekey: spk.signed_public().unwrap(),
                one_time_prekey: if use_otk { otk.one_time_public() } else { None },
            };
            let label = KdfLabels::default().x3dh;
            let out = initiate(&alice, &bundle, label, &mut OsRng).unwrap();
            let (sk, ad) = respond(
                &bob,
                &spk,
                use_otk.then_some(&otk),
                &alice.public(),
                &out.ephemeral,
                label,
            )
            .unwrap();
            assert_eq!(sk, out.shared_secret);
            assert_eq!(ad, out.associated_data);
        }
    }

    #[test]
    fn low_order_ephemeral_is_rejected() {
        let bob = IdentityKeyPair::generate(&mut OsRng);
        let alice = IdentityKeyPair::generate(&mut OsRng);
        let spk = PreKeySecret::generate_signed(1, &bob, &mut OsRng);
        let err = respond(&bob, &spk, None, &alice.public(), &[0u8; 32], b"x").unwrap_err();
        assert_eq!(err, Error::NonContributory);
    }
}
