//! The QUIC link to the relay (lands with the link crate).
