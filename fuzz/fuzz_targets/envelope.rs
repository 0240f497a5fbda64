//! Fuzz target: arbitrary bytes decoded as a pairwise `Envelope`; what decodes must
//! re-encode to the same bytes. The body lives in `letstalk_crypto::fuzz` so the crate's
//! proptests run it on stable too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| letstalk_crypto::fuzz::envelope(data));
