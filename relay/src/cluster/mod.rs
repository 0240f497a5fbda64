//! The bus between the nodes of a cluster relay: core NATS (no JetStream, nothing
//! stored), one subject per connected device, `letstalk.dev.<user>`.
//!
//! The node where a device is connected subscribes to its subject for as long as the
//! session lasts (`follow.rs`). Any node then reaches that device by publishing there
//! (`bus.rs`: the signals and this node's end of the bus). `bus` knows nothing of the
//! relay's state, so the hub can use it; `follow` applies signals to the state.
//!
//! Everything here is a hint that may be lost (core NATS is at most once); what must not
//! be lost is in JetStream. A lost wake only delays delivery until the delivery task's
//! next look at the mailbox (`Storage::poll_interval`).

pub(crate) mod bus;
pub(crate) mod follow;
