//! age STREAM: the C2SP/CCTV vectors (every `stream_*` file) and round-trip properties.

use std::io::Read;

use letstalk_crypto::stream::{CHUNK_SIZE, ENCRYPTED_CHUNK_SIZE, decrypt_payload, encrypt_payload};
use letstalk_crypto::{Error, StreamDecryptor, StreamEncryptor};
use proptest::prelude::*;
use rand_core::OsRng;
use sha2::{Digest, Sha256};

use crate::util::{hex, vector_path};

struct Vector {
    name: String,
    expect: String,
    payload_sha256: Option<Vec<u8>>,
    file_key: [u8; 16],
    /// Everything after the header's `---` line: nonce then chunks.
    payload: Vec<u8>,
}

fn load(path: &std::path::Path) -> Vector {
    let raw = std::fs::read(path).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let split = raw.windows(2).position(|w| w == b"\n\n").unwrap();
    let (meta, body) = (std::str::from_utf8(&raw[..split]).unwrap(), &raw[split + 2..]);
    let (mut expect, mut payload_sha256, mut file_key, mut compressed) = (None, None, None, false);
    for line in meta.lines() {
        let (k, v) = line.split_once(": ").unwrap();
        match k {
            "expect" => expect = Some(v.to_owned()),
            "payload" => payload_sha256 = Some(hex(v)),
            "file key" => file_key = Some(<[u8; 16]>::try_from(hex(v)).unwrap()),
            "compressed" => {
                assert_eq!(v, "zlib");
                compressed = true;
            }
            "armored" | "passphrase" => panic!("{name}: unexpected key {k}"),
            _ => {}
        }
    }
    let age = if compressed {
        let mut out = Vec::new();
        flate2::read::ZlibDecoder::new(body).read_to_end(&mut out).unwrap();
        out
    } else {
        body.to_vec()
    };
    assert!(age.starts_with(b"age-encryption.org/v1\n"), "{name}: not an age file");
    // The header ends with the MAC line `--- <mac>\n`; the payload follows it.
    let mac_line = age.windows(4).position(|w| w == b"\n---").unwrap() + 1;
    let end = mac_line + age[mac_line..].iter().position(|b| *b == b'\n').unwrap() + 1;
    Vector {
        name,
        expect: expect.unwrap(),
        payload_sha256,
        file_key: file_key.unwrap(),
        payload: age[end..].to_vec(),
    }
}

fn all_vectors() -> Vec<Vector> {
    let dir = vector_path("age-stream");
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("stream_"))
        .collect();
    paths.sort();
    paths.iter().map(|p| load(p)).collect()
}

/// Checks one vector's outcome: `released` is all plaintext handed out, `result` the end.
fn check(v: &Vector, released: &[u8], result: &Result<(), Error>, how: &str) {
    let name = &v.name;
    match v.expect.as_str() {
        "success" => assert!(result.is_ok(), "{name} ({how}): {result:?}"),
        // `stream_no_nonce` / `stream_short_nonce`: age reads the nonce as part of the header;
        // here it is the first thing the payload decryptor consumes, and must fail there.
        "payload failure" | "header failure" => {
            assert!(result.is_err(), "{name} ({how}) decrypted")
        }
        other => panic!("{name}: expectation {other} is not about STREAM"),
    }
    let want = v.payload_sha256.clone().unwrap_or_else(|| Sha256::digest(b"").to_vec());
    assert_eq!(
        Sha256::digest(released).to_vec(),
        want,
        "{name} ({how}): released plaintext differs"
    );
}

#[test]
fn cctv_age_stream_vectors() {
    let vectors = all_vectors();
    assert_eq!(vectors.len(), 28, "every stream_* vector must be exercised");
    for v in &vectors {
        // Whole payload at once.
        let (released, result) = decrypt_payload(&v.file_key, &v.payload);
        check(v, &released, &result, "whole");

        // Pushed in uneven pieces, as a file read from disk or the network would be.
        for piece in [1, 7, 1000, ENCRYPTED_CHUNK_SIZE, ENCRYPTED_CHUNK_SIZE + 1] {
            let mut d = StreamDecryptor::new(&v.file_key);
            let mut out = Vec::new();
            let mut result = Ok(());
            for p in v.payload.chunks(piece) {
                result = d.push(p, &mut out);
                if result.is_err() {
                    break;
                }
            }
            if result.is_ok() {
                result = d.finish(&mut out);
            }
            check(v, &out, &result, &format!("pieces of {piece}"));
        }

        // Success vectors re-encrypt to the very same bytes with the same nonce.
        if v.expect == "success" {
            let nonce: [u8; 16] = v.payload[..16].try_into().unwrap();
            let mut e = StreamEncryptor::resume(&v.file_key, &nonce, 0).unwrap();
            let mut out = nonce.to_vec();
            e.push(&released, &mut out).unwrap();
            e.finish(&mut out).unwrap();
            assert!(out == v.payload, "{}: re-encryption differs", v.name);
        }
    }
}

fn chunks_of(payload: &[u8]) -> Vec<Vec<u8>> {
    payload[16..].chunks(ENCRYPTED_CHUNK_SIZE).map(<[u8]>::to_vec).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn round_trip_random_sizes(
        size in prop_oneof![Just(0usize), Just(1), Just(CHUNK_SIZE), Just(2 * CHUNK_SIZE), Just(3 * CHUNK_SIZE),
                            CHUNK_SIZE - 1..=CHUNK_SIZE + 1, 0usize..4 * CHUNK_SIZE],
        piece in 1usize..100_000,
        key: [u8; 16],
    ) {
        let plaintext: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        // Encrypt in pieces.
        let (mut e, nonce) = StreamEncryptor::new(&key, &mut OsRng).unwrap();
        let mut payload = nonce.to_vec();
        for p in plaintext.chunks(piece) {
            e.push(p, &mut payload).unwrap();
        }
        e.finish(&mut payload).unwrap();
        let chunks = size.div_ceil(CHUNK_SIZE).max(1);
        prop_assert_eq!(payload.len(), 16 + size + 16 * chunks);

        let (out, result) = decrypt_payload(&key, &payload);
        prop_assert!(result.is_ok());
        prop_assert_eq!(&out, &plaintext);

        // Wrong key fails.
        let mut other = key;
        other[0] ^= 1;
        prop_assert!(decrypt_payload(&other, &payload).1.is_err());

        // Truncation at a chunk boundary, and dropping the last byte, fail.
        let parts = chunks_of(&payload);
        if parts.len() > 1 {
            let truncated = [&payload[..16], &parts[..parts.len() - 1].concat()].concat();
            prop_assert!(decrypt_payload(&key, &truncated).1.is_err());
            // Swapping two chunks fails.
            let mut swapped = parts.clone();
            swapped.swap(0, 1);
            let reordered = [&payload[..16], &swapped.concat()].concat();
            prop_assert!(decrypt_payload(&key, &reordered).1.is_err());
            // Resuming at chunk 1 yields the rest.
            let nonce: [u8; 16] = payload[..16].try_into().unwrap();
            let mut d = StreamDecryptor::resume(&key, &nonce, 1).unwrap();
            let mut rest = Vec::new();
            d.push(&parts[1..].concat(), &mut rest).unwrap();
            d.finish(&mut rest).unwrap();
            prop_assert_eq!(&rest[..], &plaintext[CHUNK_SIZE..]);
        }
        prop_assert!(decrypt_payload(&key, &payload[..payload.len() - 1]).1.is_err());
        let mut trailing = payload.clone();
        trailing.push(0);
        prop_assert!(decrypt_payload(&key, &trailing).1.is_err());
    }
}

#[test]
fn resumed_encryption_matches_and_empty_final_is_refused() {
    let key = [9u8; 16];
    let plaintext = vec![5u8; 2 * CHUNK_SIZE + 10];
    let payload = encrypt_payload(&key, &plaintext, &mut OsRng).unwrap();
    let nonce: [u8; 16] = payload[..16].try_into().unwrap();
    // Resume after one chunk was written.
    let mut e = StreamEncryptor::resume(&key, &nonce, 1).unwrap();
    let mut out = Vec::new();
    e.push(&plaintext[CHUNK_SIZE..], &mut out).unwrap();
    e.finish(&mut out).unwrap();
    assert!(out == payload[16 + ENCRYPTED_CHUNK_SIZE..]);
    // A resumed encryptor with nothing more to write would need an empty non-first final chunk.
    let e = StreamEncryptor::resume(&key, &nonce, 3).unwrap();
    assert_eq!(e.finish(&mut Vec::new()), Err(Error::EmptyLastChunk));
}
