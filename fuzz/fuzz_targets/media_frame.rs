//! Fuzz target: arbitrary bytes opened as sealed call media frames, which must never
//! panic. The body lives in `letstalk_crypto::fuzz` so proptests run it on stable too.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| letstalk_crypto::fuzz::media_frame(data));
