//! How a group's admins prove themselves to a device that has not seen the group: the
//! group id hashed from its creator, and grants signed from one admin to the next.

use std::collections::BTreeMap;

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use letstalk_crypto::{IdentityKeyPair, PublicIdentity};

use super::MAX_MEMBERS;
use crate::content::{Grant, Origin};
use crate::validate;

/// Domain labels of the group id hash and of admin grants.
const GID_LABEL: &[u8] = b"letstalk group id v1";
const GRANT_LABEL: &[u8] = b"letstalk group admin v1";

/// How a group's admins prove themselves to a device that has not seen the group: the
/// group id's preimage (creator, its identity key, nonce; hex) and, per admin, the
/// grants from the creator to it (the creator's chain is empty). Kept verified: a chain
/// is stored only after it was checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    pub creator: String,
    pub key: String,
    pub nonce: String,
    pub chains: BTreeMap<String, Vec<Grant>>,
}

impl Proof {
    /// The origin `admin` sends, if it holds a chain.
    pub(super) fn origin_for(&self, admin: &str) -> Option<Origin> {
        Some(Origin {
            creator: self.creator.clone(),
            key: self.key.clone(),
            nonce: self.nonce.clone(),
            grants: self.chains.get(admin)?.clone(),
        })
    }

    pub(super) fn same_root(&self, o: &Origin) -> bool {
        self.creator == o.creator && self.key == o.key && self.nonce == o.nonce
    }
}

/// The group id of a group `creator` (with identity `key`) makes with `nonce`: 32 hex
/// digits of SHA-256 over all three, so nobody else can claim to have created it.
pub fn derive_id(creator: &str, key: &PublicIdentity, nonce: &[u8; 16]) -> String {
    let mut h = Sha256::new();
    h.update(GID_LABEL);
    h.update([u8::try_from(creator.len()).unwrap_or(u8::MAX)]);
    h.update(creator.as_bytes());
    h.update(key.to_bytes());
    h.update(nonce);
    hex::encode(h.finalize().get(..16).unwrap_or_default())
}

/// A new group's id and proof, made by `creator`.
pub fn new_origin(
    creator: &str,
    identity: &IdentityKeyPair,
    rng: &mut (impl RngCore + CryptoRng),
) -> (String, Proof) {
    let mut nonce = [0u8; 16];
    rng.fill_bytes(&mut nonce);
    let key = identity.public();
    let gid = derive_id(creator, &key, &nonce);
    let proof = Proof {
        creator: creator.to_owned(),
        key: hex::encode(key.to_bytes()),
        nonce: hex::encode(nonce),
        chains: BTreeMap::from([(creator.to_owned(), Vec::new())]),
    };
    (gid, proof)
}

fn grant_message(gid: &str, admin: &str, key: &PublicIdentity) -> Vec<u8> {
    let mut m = GRANT_LABEL.to_vec();
    m.push(u8::try_from(gid.len()).unwrap_or(u8::MAX));
    m.extend_from_slice(gid.as_bytes());
    m.push(u8::try_from(admin.len()).unwrap_or(u8::MAX));
    m.extend_from_slice(admin.as_bytes());
    m.extend_from_slice(&key.to_bytes());
    m
}

/// `admin` (identity `key`) is an admin of `gid`: signed by an admin's `identity`.
pub fn sign_grant(
    gid: &str,
    identity: &IdentityKeyPair,
    admin: &str,
    key: &PublicIdentity,
) -> Grant {
    Grant {
        admin: admin.to_owned(),
        key: hex::encode(key.to_bytes()),
        sig: hex::encode(identity.sign(&grant_message(gid, admin, key))),
    }
}

fn public_identity(hex_key: &str) -> Option<PublicIdentity> {
    PublicIdentity::from_bytes(&hex::decode(hex_key).ok()?).ok()
}

/// The admin (and its identity key) that `origin`'s chain ends at, if `origin` is sound
/// for `gid`: the id hashes from the creator, its key and the nonce, and each grant is
/// signed by the key before it.
pub(super) fn chain_end(gid: &str, origin: &Origin) -> Option<(String, PublicIdentity)> {
    if validate::user_id("creator", &origin.creator).ok()? != origin.creator
        || origin.grants.len() > MAX_MEMBERS
    {
        return None;
    }
    let key = public_identity(&origin.key)?;
    let nonce: [u8; 16] = hex::decode(&origin.nonce).ok()?.try_into().ok()?;
    if derive_id(&origin.creator, &key, &nonce) != gid {
        return None;
    }
    let mut end = (origin.creator.clone(), key);
    for g in &origin.grants {
        let next = public_identity(&g.key)?;
        let sig = hex::decode(&g.sig).ok()?;
        end.1.verify_signature(&grant_message(gid, &g.admin, &next), &sig).ok()?;
        end = (g.admin.clone(), next);
    }
    Some(end)
}

/// Whether `origin` proves that `sender`, whose pairwise session has identity
/// `sender_key`, is an admin of group `gid`.
pub fn proves_admin(gid: &str, origin: &Origin, sender: &str, sender_key: &PublicIdentity) -> bool {
    chain_end(gid, origin)
        .is_some_and(|(admin, key)| admin == sender && key.to_bytes() == sender_key.to_bytes())
}
