//! Wycheproof vectors through the crate's own primitive wrappers, every case.

use letstalk_crypto::Error;
use letstalk_crypto::primitives::{
    aead_open, aead_seal, ed25519_verify, hkdf_sha256, hmac_sha256_verify, x25519,
};
use serde_json::Value;

use crate::util::{hex, read_vector};

/// Calls `check(group, test)` for every test and returns how many ran.
fn for_each_test(file: &str, mut check: impl FnMut(&Value, &Value)) -> usize {
    let json: Value = serde_json::from_slice(&read_vector(&format!("wycheproof/{file}"))).unwrap();
    let mut n = 0;
    for group in json["testGroups"].as_array().unwrap() {
        for test in group["tests"].as_array().unwrap() {
            check(group, test);
            n += 1;
        }
    }
    assert_eq!(n as u64, json["numberOfTests"].as_u64().unwrap(), "{file}: not every case ran");
    assert!(n > 0);
    n
}

fn field(test: &Value, name: &str) -> Vec<u8> {
    hex(test[name].as_str().unwrap())
}

fn tc(test: &Value) -> String {
    format!("tcId {} ({})", test["tcId"], test["comment"])
}

#[test]
fn x25519_all_cases() {
    let mut rejected = 0;
    for_each_test("x25519_test.json", |_, test| {
        let private: [u8; 32] = field(test, "private").try_into().unwrap();
        let public: [u8; 32] = field(test, "public").try_into().unwrap();
        let shared = field(test, "shared");
        let result = x25519(&private, &public);
        if shared.iter().all(|b| *b == 0) {
            // Low-order points: the crate must refuse them as non-contributory.
            assert_eq!(result.unwrap_err(), Error::NonContributory, "{}", tc(test));
            rejected += 1;
        } else {
            // valid and acceptable (twist, non-canonical) cases compute the RFC 7748 value.
            assert_eq!(result.unwrap().as_slice(), shared.as_slice(), "{}", tc(test));
        }
    });
    assert!(rejected > 0, "no low-order case exercised");
}

#[test]
fn chacha20_poly1305_all_cases() {
    for_each_test("chacha20_poly1305_test.json", |_, test| {
        let (key, iv, aad, msg) =
            (field(test, "key"), field(test, "iv"), field(test, "aad"), field(test, "msg"));
        let ct_tag = [field(test, "ct"), field(test, "tag")].concat();
        let opened = aead_open(&key, &iv, &aad, &ct_tag);
        match test["result"].as_str().unwrap() {
            "valid" => {
                assert_eq!(opened.unwrap(), msg, "{}", tc(test));
                assert_eq!(aead_seal(&key, &iv, &aad, &msg).unwrap(), ct_tag, "{}", tc(test));
            }
            "invalid" => assert!(opened.is_err(), "{}", tc(test)),
            other => panic!("unexpected result {other}"),
        }
    });
}

#[test]
fn hkdf_sha256_all_cases() {
    for_each_test("hkdf_sha256_test.json", |_, test| {
        let size = usize::try_from(test["size"].as_u64().unwrap()).unwrap();
        let mut okm = vec![0u8; size];
        let salt = field(test, "salt");
        let result = hkdf_sha256(Some(&salt), &field(test, "ikm"), &field(test, "info"), &mut okm);
        match test["result"].as_str().unwrap() {
            "valid" => {
                result.unwrap();
                assert_eq!(okm, field(test, "okm"), "{}", tc(test));
            }
            "invalid" => assert!(result.is_err(), "{}", tc(test)),
            other => panic!("unexpected result {other}"),
        }
    });
}

#[test]
fn hmac_sha256_all_cases() {
    for_each_test("hmac_sha256_test.json", |_, test| {
        let result =
            hmac_sha256_verify(&field(test, "key"), &field(test, "msg"), &field(test, "tag"));
        match test["result"].as_str().unwrap() {
            "valid" => result.unwrap(),
            "invalid" => assert!(result.is_err(), "{}", tc(test)),
            other => panic!("unexpected result {other}"),
        }
    });
}

#[test]
fn ed25519_all_cases() {
    for_each_test("ed25519_test.json", |group, test| {
        let public = hex(group["publicKey"]["pk"].as_str().unwrap());
        let result = ed25519_verify(&public, &field(test, "msg"), &field(test, "sig"));
        match test["result"].as_str().unwrap() {
            "valid" => result.unwrap(),
            "invalid" => assert!(result.is_err(), "{}", tc(test)),
            other => panic!("unexpected result {other}"),
        }
    });
}
