//! Shared test helpers: locating the public vectors and building sessions.

use std::path::PathBuf;

use letstalk_crypto::{IdentityKeyPair, PreKeyBundle, PreKeySecret, Session};
use rand_core::OsRng;

/// Path of a file under `shared/vectors/`. A missing vector fails the test, never skips it.
pub(crate) fn vector_path(rel: &str) -> PathBuf {
    let path =
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/vectors/")).join(rel);
    assert!(
        path.exists(),
        "test vectors missing at {}: shared/ must sit beside the checkout",
        path.display()
    );
    path
}

pub(crate) fn read_vector(rel: &str) -> Vec<u8> {
    std::fs::read(vector_path(rel)).unwrap()
}

pub(crate) fn hex(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

/// Alice and Bob with a session where Bob has received Alice's first (prekey) message.
pub(crate) struct Pair {
    pub(crate) alice: Session,
    pub(crate) bob: Session,
}

pub(crate) fn pair(use_one_time: bool) -> Pair {
    let alice_id = IdentityKeyPair::generate(&mut OsRng);
    let bob_id = IdentityKeyPair::generate(&mut OsRng);
    let spk = PreKeySecret::generate_signed(1, &bob_id, &mut OsRng);
    let otk = PreKeySecret::generate_one_time(2, &mut OsRng);
    let bundle = PreKeyBundle {
        identity: bob_id.public(),
        signed_prekey: spk.signed_public().unwrap(),
        one_time_prekey: if use_one_time { otk.one_time_public() } else { None },
    };
    let mut alice = Session::initiate(&alice_id, &bundle, &mut OsRng).unwrap();
    let first = alice.encrypt(b"hello bob", &mut OsRng).unwrap();
    let letstalk_crypto::Envelope::PreKey(msg) = letstalk_crypto::Envelope::decode(&first).unwrap()
    else {
        panic!("first message must be a prekey message");
    };
    let (bob, plaintext) =
        Session::accept_prekey_message(&bob_id, &msg, &spk, use_one_time.then_some(&otk)).unwrap();
    assert_eq!(plaintext, b"hello bob");
    Pair { alice, bob }
}
