//! Fuzzes the daemon-relay frame decoders: no input may panic, and whatever decodes must
//! encode back to the same bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    letstalk_wire::fuzz_frame(data);
});
