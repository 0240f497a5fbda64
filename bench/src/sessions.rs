//! `letstalk-bench sessions`: what keeping previous sessions and topping up prekeys cost.
//!
//! Decrypt cost (letstalk-crypto, in process): one message opened by a `SessionRecord`
//! holding one session, and by one holding a current session and 40 previous ones, for
//! a message of the current session, of the oldest previous one (every other session is
//! tried first), and of no session at all (every one is tried and fails: what a forged
//! envelope costs the receiver).
//!
//! Prekey top-up traffic: the bytes of the relay frames the daemon's upkeep sends and
//! receives per day (`KeyCount` checks, `UploadKeys` refills, the weekly signed prekey)
//! at a given rate of bundle fetches by others, computed from the real frame encodings
//! (`letstalk-wire`) and the daemon's policy (low-water mark, target, check interval;
//! `daemon/src/prekeys.rs`). QUIC, UDP and IP headers are not counted.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use letstalk_crypto::{
    ARCHIVED_SESSIONS_MAX, Envelope, IdentityKeyPair, PreKeyBundle, PreKeySecret, Session,
    SessionRecord,
};
use letstalk_wire::{PreKey, Request, Response};
use rand_core::OsRng;

use crate::SessionsArgs;
use crate::stats::Latencies;
use crate::sys;

pub(crate) fn run(args: &SessionsArgs) -> Result<()> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    println!("letstalk-bench sessions: {}", sys::host());
    println!();
    decrypt_cost(args.rounds)?;
    println!();
    topup_traffic(args);
    Ok(())
}

struct Party {
    id: IdentityKeyPair,
    spk: PreKeySecret,
}

fn party() -> Party {
    let id = IdentityKeyPair::generate(&mut OsRng);
    let spk = PreKeySecret::generate_signed(1, &id, &mut OsRng);
    Party { id, spk }
}

/// alice starts a session to bob, bob accepts it into `record` and answers once; returns
/// alice's side (which now sends plain ratchet messages).
fn session_into(alice: &Party, bob: &Party, record: &mut SessionRecord) -> Result<Session> {
    let bundle = PreKeyBundle {
        identity: bob.id.public(),
        signed_prekey: bob.spk.signed_public().ok_or_else(|| anyhow::anyhow!("no spk"))?,
        one_time_prekey: None,
    };
    let mut a = Session::initiate(&alice.id, &bundle, &mut OsRng)?;
    let first = a.encrypt(b"hello", &mut OsRng)?;
    let Envelope::PreKey(p) = Envelope::decode(&first)? else { bail!("not a prekey message") };
    let (accepted, _) = Session::accept_prekey_message(&bob.id, &p, &bob.spk, None)?;
    record.promote_new(accepted);
    let reply = record
        .current_mut()
        .ok_or_else(|| anyhow::anyhow!("no current session"))?
        .encrypt(b"ack", &mut OsRng)?;
    a.decrypt(&reply)?;
    Ok(a)
}

/// Median and p99 of opening `message` with a fresh copy of `record` (the copy is made
/// outside the timed part), over `rounds`.
fn time_open(record: &SessionRecord, message: &[u8], rounds: usize, expect_ok: bool) -> Latencies {
    let mut samples = Vec::with_capacity(rounds);
    let wall = Instant::now();
    for _ in 0..rounds {
        let mut r = record.clone();
        let t = Instant::now();
        let outcome = r.decrypt(message);
        samples.push(t.elapsed());
        assert_eq!(outcome.is_ok(), expect_ok, "unexpected decrypt outcome");
    }
    Latencies::new(samples, wall.elapsed(), rounds)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn decrypt_cost(rounds: usize) -> Result<()> {
    let (alice, bob) = (party(), party());
    let text = [0x61u8; 120];

    let mut one = SessionRecord::new();
    let mut a1 = session_into(&alice, &bob, &mut one)?;
    let m1 = a1.encrypt(&text, &mut OsRng)?;

    let mut full = SessionRecord::new();
    let mut senders = Vec::new();
    for _ in 0..=ARCHIVED_SESSIONS_MAX {
        senders.push(session_into(&alice, &bob, &mut full)?);
    }
    let previous = full.previous().len();
    let oldest = senders[0].encrypt(&text, &mut OsRng)?;
    let current = senders[ARCHIVED_SESSIONS_MAX].encrypt(&text, &mut OsRng)?;
    let mut stranger = SessionRecord::new();
    let forged = session_into(&alice, &bob, &mut stranger)?.encrypt(&text, &mut OsRng)?;

    let stored_one = one.to_bytes().len();
    let stored_full = full.to_bytes().len();
    let base = time_open(&one, &m1, rounds, true);
    let cur = time_open(&full, &current, rounds, true);
    let old = time_open(&full, &oldest, rounds, true);
    let none = time_open(&full, &forged, rounds, false);

    println!("== Decrypt with previous sessions (letstalk-crypto, in process, {rounds} rounds) ==");
    println!("  a {}-byte text; p50 / p99 per message", text.len());
    let row = |what: &str, l: &Latencies| {
        println!(
            "  {what:<58} {:>9} / {:>9}  ({:.1}× one session)",
            us(l.p50()),
            us(l.p99()),
            l.p50().as_secs_f64() / base.p50().as_secs_f64()
        );
    };
    row("1 session, message for it", &base);
    row(&format!("1 + {previous} previous, message for the current one"), &cur);
    row(&format!("1 + {previous} previous, message for the oldest previous one"), &old);
    row(&format!("1 + {previous} previous, message for no session (forged)"), &none);
    println!(
        "  stored record: {stored_one} bytes with one session, {stored_full} bytes with 1 + {previous}"
    );
    Ok(())
}

/// Daemon policy (see daemon/src/prekeys.rs), overridable by flags.
fn topup_traffic(args: &SessionsArgs) {
    let frame = |r: &Request| r.encode().map_or(0, |b| b.len());
    let answer = |r: &Response| r.encode().map_or(0, |b| b.len());
    let count_req = frame(&Request::KeyCount);
    let count_resp = answer(&Response::KeyCount { one_time_remaining: 0 });
    let one_time = |id: u32| PreKey { id, key: vec![0x11; 32] };
    let upload = |n: u32| {
        frame(&Request::UploadKeys {
            identity: None,
            signed_prekey: None,
            one_time_prekeys: (0..n).map(one_time).collect(),
            last_resort: None,
        })
    };
    let signed = frame(&Request::UploadKeys {
        identity: None,
        signed_prekey: Some(PreKey { id: 1, key: vec![0x22; 96] }),
        one_time_prekeys: Vec::new(),
        last_resort: None,
    });
    let (low, target) = (args.low_water, args.target);
    let checks_per_day = 86_400 / args.check_every_s.max(1);
    let batch = target - low + 1;
    let per_key = upload(2) - upload(1);

    println!("== Prekey top-up traffic per day (relay frames, no QUIC/UDP/IP headers) ==");
    println!(
        "  policy: refill to {target} when the relay holds < {low}; a KeyCount every {} s \
         ({checks_per_day}/day) and at each connection; signed prekey weekly",
        args.check_every_s
    );
    println!(
        "  frames: KeyCount {count_req} + {count_resp} bytes; UploadKeys of {batch} one-time \
         prekeys {} bytes ({per_key} per key) + {count_resp} answer; signed prekey {signed} bytes",
        upload(batch)
    );
    let checks = checks_per_day * (count_req + count_resp) as u64;
    let weekly = (signed + count_resp) as f64 / 7.0;
    println!(
        "  {:>14}  {:>10}  {:>12}  {:>12}",
        "fetches/day", "refills", "bytes/day", "of which checks"
    );
    for &rate in &args.fetch_rates {
        // Each refill replaces `batch` taken keys; a check can refill at most
        // `target` keys, so beyond checks × target a day the last-resort key serves.
        let served = rate.min(checks_per_day * u64::from(target));
        let refills = served.div_ceil(u64::from(batch)).min(checks_per_day);
        let bytes = checks as f64
            + weekly
            + refills as f64 * (upload(0) + count_resp) as f64
            + served as f64 * per_key as f64;
        println!("  {rate:>14}  {refills:>10}  {:>12.0}  {checks:>12}", bytes);
    }
}
