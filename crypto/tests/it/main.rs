//! The crate's integration tests, in one binary: public vectors, protocol properties and
//! the fuzz bodies run as proptests.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers outside #[test] fns; a panic is the failure report"
)]

mod age_stream;
mod fuzz_bodies;
mod redaction;
mod session;
mod util;
mod vectors;
mod wycheproof;
