//! Times one Double Ratchet step: an encrypt by one side and the decrypt by the other, with
//! the sides alternating so every step includes a DH ratchet turn.
//!
//! Run with `cargo run --release -p letstalk-crypto --example ratchet_step`.

use std::time::Instant;

use letstalk_crypto::{Envelope, IdentityKeyPair, PreKeyBundle, PreKeySecret, Session};
use rand_core::OsRng;

fn main() -> Result<(), letstalk_crypto::Error> {
    let iterations: u32 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2000);
    let ns = ratchet_step_ns(iterations)?;
    #[expect(clippy::print_stdout, reason = "an example's whole job is to print the timing")]
    {
        println!("ratchet_step: {ns:.0} ns per encrypt+decrypt step ({iterations} steps)");
    }
    Ok(())
}

/// Nanoseconds per encrypt+decrypt step with alternating senders (a ratchet turn each step).
fn ratchet_step_ns(iterations: u32) -> Result<f64, letstalk_crypto::Error> {
    let alice_id = IdentityKeyPair::generate(&mut OsRng);
    let bob_id = IdentityKeyPair::generate(&mut OsRng);
    let spk = PreKeySecret::generate_signed(1, &bob_id, &mut OsRng);
    let bundle = PreKeyBundle {
        identity: bob_id.public(),
        signed_prekey: spk.signed_public().ok_or(letstalk_crypto::Error::InvalidState)?,
        one_time_prekey: None,
    };
    let mut alice = Session::initiate(&alice_id, &bundle, &mut OsRng)?;
    let first = alice.encrypt(b"hello", &mut OsRng)?;
    let Envelope::PreKey(msg) = Envelope::decode(&first)? else {
        return Err(letstalk_crypto::Error::InvalidState);
    };
    let (mut bob, _) = Session::accept_prekey_message(&bob_id, &msg, &spk, None)?;
    let payload = [0x55u8; 256];
    let start = Instant::now();
    for i in 0..iterations {
        let (from, to) = if i % 2 == 0 { (&mut bob, &mut alice) } else { (&mut alice, &mut bob) };
        let bytes = from.encrypt(&payload, &mut OsRng)?;
        to.decrypt(&bytes)?;
    }
    Ok(start.elapsed().as_nanos() as f64 / f64::from(iterations.max(1)))
}
