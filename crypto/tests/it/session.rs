//! Pairwise sessions: conversations with loss, reordering, duplication and replay; the
//! skipped-key bound; tampering; encode/decode round trips.

use letstalk_crypto::{Envelope, Error, MAX_SKIP, Session};
use proptest::prelude::*;
use rand_core::OsRng;

use crate::util::{Pair, pair};

#[derive(Debug, Clone)]
enum Op {
    /// Alice (true) or Bob (false) sends a message.
    Send(bool),
    /// Deliver the in-flight message at this index (modulo) to its recipient.
    Deliver(bool, usize),
    /// Lose an in-flight message.
    Lose(bool, usize),
    /// Deliver an already delivered message again.
    Replay(bool, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => any::<bool>().prop_map(Op::Send),
        3 => (any::<bool>(), any::<usize>()).prop_map(|(w, i)| Op::Deliver(w, i)),
        1 => (any::<bool>(), any::<usize>()).prop_map(|(w, i)| Op::Lose(w, i)),
        1 => (any::<bool>(), any::<usize>()).prop_map(|(w, i)| Op::Replay(w, i)),
    ]
}

/// Messages in flight to, and delivered to, one side.
#[derive(Default)]
struct Mailbox {
    in_flight: Vec<(Vec<u8>, Vec<u8>)>,
    delivered: Vec<Vec<u8>>,
}

fn side(pair: &mut Pair, alice: bool) -> &mut Session {
    if alice { &mut pair.alice } else { &mut pair.bob }
}

/// Decrypting `bytes` must fail with `expected` and leave the session byte-for-byte unchanged.
fn assert_rejected(session: &mut Session, bytes: &[u8], expected: Option<Error>) {
    let before = session.to_bytes();
    let err = session.decrypt(bytes).unwrap_err();
    if let Some(expected) = expected {
        assert_eq!(err, expected);
    }
    assert_eq!(*session.to_bytes(), *before, "a failed decrypt changed the state");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn conversation_with_loss_reordering_and_replay(ops in prop::collection::vec(op(), 1..80), otk: bool) {
        let mut pair = pair(otk);
        // Index 0: messages to Bob, 1: messages to Alice.
        let mut boxes = [Mailbox::default(), Mailbox::default()];
        let mut counter = 0u32;
        for op in ops {
            match op {
                Op::Send(from_alice) => {
                    counter += 1;
                    let plaintext = counter.to_be_bytes().to_vec();
                    let bytes = side(&mut pair, from_alice).encrypt(&plaintext, &mut OsRng).unwrap();
                    boxes[usize::from(!from_alice)].in_flight.push((bytes, plaintext));
                }
                Op::Deliver(to_alice, i) => {
                    let mailbox = &mut boxes[usize::from(to_alice)];
                    if mailbox.in_flight.is_empty() { continue; }
                    let (bytes, plaintext) = mailbox.in_flight.remove(i % mailbox.in_flight.len());
                    let got = side(&mut pair, to_alice).decrypt(&bytes).unwrap();
                    prop_assert_eq!(got, plaintext);
                    mailbox.delivered.push(bytes);
                }
                Op::Lose(to_alice, i) => {
                    let mailbox = &mut boxes[usize::from(to_alice)];
                    if !mailbox.in_flight.is_empty() {
                        mailbox.in_flight.remove(i % mailbox.in_flight.len());
                    }
                }
                Op::Replay(to_alice, i) => {
                    let mailbox = &boxes[usize::from(to_alice)];
                    if mailbox.delivered.is_empty() { continue; }
                    let bytes = mailbox.delivered[i % mailbox.delivered.len()].clone();
                    assert_rejected(side(&mut pair, to_alice), &bytes, Some(Error::Duplicate));
                }
            }
        }
        // Both sides still work after whatever happened, including through a storage round trip.
        let mut alice = Session::from_bytes(&pair.alice.to_bytes()).unwrap();
        let mut bob = Session::from_bytes(&pair.bob.to_bytes()).unwrap();
        let m = alice.encrypt(b"still there?", &mut OsRng).unwrap();
        prop_assert_eq!(bob.decrypt(&m).unwrap(), b"still there?");
        let m = bob.encrypt(b"yes", &mut OsRng).unwrap();
        prop_assert_eq!(alice.decrypt(&m).unwrap(), b"yes");
        prop_assert!(alice.skipped_keys() <= MAX_SKIP as usize && bob.skipped_keys() <= MAX_SKIP as usize);
    }

    #[test]
    fn tampering_any_byte_fails_and_state_survives(
        byte in any::<prop::sample::Index>(),
        mask in 1u8..,
        prekey: bool,
    ) {
        let mut pair = pair(true);
        if !prekey {
            // Make Alice's next message an ordinary ratchet message.
            let reply = pair.bob.encrypt(b"reply", &mut OsRng).unwrap();
            pair.alice.decrypt(&reply).unwrap();
        }
        let bytes = pair.alice.encrypt(b"attack at dawn", &mut OsRng).unwrap();
        prop_assert_eq!(matches!(Envelope::decode(&bytes).unwrap(), Envelope::PreKey(_)), prekey);
        let mut bad = bytes.clone();
        bad[byte.index(bytes.len())] ^= mask;
        assert_rejected(&mut pair.bob, &bad, None);
        prop_assert_eq!(pair.bob.decrypt(&bytes).unwrap(), b"attack at dawn");
    }

    #[test]
    fn envelope_round_trip(prekey: bool, otk in any::<Option<u32>>(), ct in prop::collection::vec(any::<u8>(), 16..300),
                           key: [u8; 32], pn: u32, n: u32, eph: [u8; 32], spk: u32) {
        use letstalk_crypto::{Header, PreKeyMessage, RatchetMessage};
        let message = RatchetMessage { header: Header { ratchet_key: key, previous_chain_length: pn, message_number: n }, ciphertext: ct };
        let envelope = if prekey {
            let sender = identity().public();
            Envelope::PreKey(PreKeyMessage { sender, ephemeral: eph, signed_prekey_id: spk, one_time_prekey_id: otk, message })
        } else {
            Envelope::Message(message)
        };
        let bytes = envelope.encode();
        prop_assert_eq!(Envelope::decode(&bytes).unwrap(), envelope);
        let mut longer = bytes.clone();
        longer.push(0);
        prop_assert!(Envelope::decode(&longer).is_err(), "trailing byte accepted");
        prop_assert!(Envelope::decode(&bytes[..bytes.len() - 1]).is_err(), "truncation accepted");
    }
}

fn identity() -> &'static letstalk_crypto::IdentityKeyPair {
    static ID: std::sync::OnceLock<letstalk_crypto::IdentityKeyPair> = std::sync::OnceLock::new();
    ID.get_or_init(|| letstalk_crypto::IdentityKeyPair::generate(&mut OsRng))
}

#[test]
fn skipped_key_bound_is_enforced_without_changing_state() {
    let mut pair = pair(false);
    let reply = pair.bob.encrypt(b"r", &mut OsRng).unwrap();
    pair.alice.decrypt(&reply).unwrap();
    // MAX_SKIP messages lost: the next one is still readable.
    for _ in 0..MAX_SKIP {
        pair.alice.encrypt(b"lost", &mut OsRng).unwrap();
    }
    let ok = pair.alice.encrypt(b"after exactly MAX_SKIP", &mut OsRng).unwrap();
    let mut bob = pair.bob.clone();
    assert_eq!(bob.decrypt(&ok).unwrap(), b"after exactly MAX_SKIP");
    assert_eq!(bob.skipped_keys(), MAX_SKIP as usize);
    // One more lost: over the per-step bound, refused, and the state is unchanged.
    pair.alice.encrypt(b"lost", &mut OsRng).unwrap();
    let too_far = pair.alice.encrypt(b"too far", &mut OsRng).unwrap();
    let mut fresh = pair.bob.clone();
    assert_rejected(&mut fresh, &too_far, Some(Error::TooManySkipped));
    // Stored keys never exceed the bound: new skips evict the oldest.
    for _ in 0..10 {
        pair.alice.encrypt(b"lost", &mut OsRng).unwrap();
    }
    let later = pair.alice.encrypt(b"later", &mut OsRng).unwrap();
    assert_eq!(bob.decrypt(&later).unwrap(), b"later");
    assert_eq!(bob.skipped_keys(), MAX_SKIP as usize);
}

#[test]
fn session_state_round_trip_and_garbage() {
    let mut pair = pair(true);
    let m = pair.alice.encrypt(b"one", &mut OsRng).unwrap();
    let _lost = pair.alice.encrypt(b"two", &mut OsRng).unwrap();
    let m3 = pair.alice.encrypt(b"three", &mut OsRng).unwrap();
    pair.bob.decrypt(&m3).unwrap();
    let bytes = pair.bob.to_bytes();
    let mut restored = Session::from_bytes(&bytes).unwrap();
    assert_eq!(*restored.to_bytes(), *bytes);
    assert_eq!(restored.decrypt(&m).unwrap(), b"one");
    for cut in 0..bytes.len() {
        assert!(Session::from_bytes(&bytes[..cut]).is_err());
    }
    let mut longer = bytes.to_vec();
    longer.push(0);
    assert!(Session::from_bytes(&longer).is_err());

    // A restored sender goes on in its chain: the header names its current ratchet key
    // (the public half is derived again on restore, never stored).
    let mut alice = Session::from_bytes(&pair.alice.to_bytes()).unwrap();
    let m4 = alice.encrypt(b"four", &mut OsRng).unwrap();
    assert_eq!(restored.decrypt(&m4).unwrap(), b"four");
    // And a restored receiver's reply turns the ratchet with a fresh key pair.
    let reply = restored.encrypt(b"five", &mut OsRng).unwrap();
    assert_eq!(alice.decrypt(&reply).unwrap(), b"five");
    let m6 = alice.encrypt(b"six", &mut OsRng).unwrap();
    assert_eq!(restored.decrypt(&m6).unwrap(), b"six");
}

#[test]
fn prekey_mismatch_and_wrong_prekeys() {
    use letstalk_crypto::{IdentityKeyPair, PreKeyBundle, PreKeySecret};
    let alice_id = IdentityKeyPair::generate(&mut OsRng);
    let bob_id = IdentityKeyPair::generate(&mut OsRng);
    let spk = PreKeySecret::generate_signed(1, &bob_id, &mut OsRng);
    let otk = PreKeySecret::generate_one_time(2, &mut OsRng);
    let other = PreKeySecret::generate_one_time(3, &mut OsRng);
    let bundle = PreKeyBundle {
        identity: bob_id.public(),
        signed_prekey: spk.signed_public().unwrap(),
        one_time_prekey: otk.one_time_public(),
    };
    let mut alice = Session::initiate(&alice_id, &bundle, &mut OsRng).unwrap();
    let Envelope::PreKey(msg) =
        Envelope::decode(&alice.encrypt(b"hi", &mut OsRng).unwrap()).unwrap()
    else {
        panic!()
    };
    assert_eq!(
        Session::accept_prekey_message(&bob_id, &msg, &spk, None).unwrap_err(),
        Error::PreKeyMismatch
    );
    assert_eq!(
        Session::accept_prekey_message(&bob_id, &msg, &spk, Some(&other)).unwrap_err(),
        Error::PreKeyMismatch
    );
    // Right ids, wrong secret (e.g. a relay substituted the one-time key): decryption fails.
    let mut forged = msg.clone();
    forged.one_time_prekey_id = Some(3);
    assert_eq!(
        Session::accept_prekey_message(&bob_id, &forged, &spk, Some(&other)).unwrap_err(),
        Error::Decrypt
    );
    let (_, pt) = Session::accept_prekey_message(&bob_id, &msg, &spk, Some(&otk)).unwrap();
    assert_eq!(pt, b"hi");
    // A bundle with a low-order signed prekey cannot be signed for validly; a low-order
    // ephemeral is refused by the responder.
    let mut low = msg.clone();
    low.ephemeral = [0; 32];
    assert_eq!(
        Session::accept_prekey_message(&bob_id, &low, &spk, Some(&otk)).unwrap_err(),
        Error::NonContributory
    );
}

#[test]
fn libsignal_labels_work_end_to_end() {
    use letstalk_crypto::{IdentityKeyPair, KdfLabels, PreKeyBundle, PreKeySecret};
    let alice_id = IdentityKeyPair::generate(&mut OsRng);
    let bob_id = IdentityKeyPair::generate(&mut OsRng);
    let spk = PreKeySecret::generate_signed(1, &bob_id, &mut OsRng);
    let bundle = PreKeyBundle {
        identity: bob_id.public(),
        signed_prekey: spk.signed_public().unwrap(),
        one_time_prekey: None,
    };
    let mut alice =
        Session::initiate_with_labels(&alice_id, &bundle, KdfLabels::LIBSIGNAL, &mut OsRng)
            .unwrap();
    let Envelope::PreKey(msg) =
        Envelope::decode(&alice.encrypt(b"x", &mut OsRng).unwrap()).unwrap()
    else {
        panic!()
    };
    // Different labels derive different keys.
    assert_eq!(
        Session::accept_prekey_message(&bob_id, &msg, &spk, None).unwrap_err(),
        Error::Decrypt
    );
    let (_, pt) =
        Session::accept_prekey_message_with_labels(&bob_id, &msg, &spk, None, KdfLabels::LIBSIGNAL)
            .unwrap();
    assert_eq!(pt, b"x");
}

#[test]
fn safety_numbers_agree_and_change() {
    use letstalk_crypto::{IdentityKeyPair, SafetyNumber};
    let a = IdentityKeyPair::generate(&mut OsRng).public();
    let b = IdentityKeyPair::generate(&mut OsRng).public();
    let c = IdentityKeyPair::generate(&mut OsRng).public();
    let ab = SafetyNumber::new(&a, b"alice", &b, b"bob");
    let ba = SafetyNumber::new(&b, b"bob", &a, b"alice");
    assert_eq!(ab, ba);
    assert_eq!(ab.digits().len(), 60);
    assert!(ab.digits().bytes().all(|d| d.is_ascii_digit()));
    let shown = ab.to_string();
    assert_eq!(shown.split(' ').count(), 12);
    assert!(shown.split(' ').all(|g| g.len() == 5));
    assert_ne!(SafetyNumber::new(&a, b"alice", &c, b"bob"), ab);
    assert_ne!(SafetyNumber::new(&c, b"alice", &b, b"bob"), ab);
}
