//! Fuzz target: arbitrary bytes through the IPC line framer and request decoder (the
//! same body runs as a property test in `ipc/src/framing.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    letstalk_ipc::jsonrpc::fuzz_decode(data);
});
