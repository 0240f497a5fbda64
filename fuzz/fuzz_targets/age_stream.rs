//! Fuzz target: arbitrary bytes fed to the age STREAM decryptor, which must never panic.
//! The body lives in `letstalk_crypto::fuzz` so the crate's proptests run it on stable too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| letstalk_crypto::fuzz::age_stream(data));
