//! Fuzzes the call media datagram parser (what the relay and the daemon read from any
//! peer): no input may panic, and whatever decodes must encode back to the same bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    letstalk_wire::fuzz_datagram(data);
});
