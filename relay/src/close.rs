//! Application close codes, visible to the client.

/// The relay is shutting down.
pub const SHUTDOWN: u32 = 0;
/// A frame's length prefix exceeded the limit.
pub const FRAME_TOO_LARGE: u32 = 1;
/// Too many streams too fast.
pub const TOO_MANY_STREAMS: u32 = 2;
/// The account was logged in on another device.
pub const LOGGED_OUT: u32 = 3;
/// The same device connected again; this older connection is dropped.
pub const REPLACED: u32 = 4;
