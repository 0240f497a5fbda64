//! Call media routes: which peer each device asked to reach for a call. The requests
//! that change them are in `handlers/calls.rs`; the datagrams that follow them in
//! `media.rs`.
//!
//! A route is `(user, device, call id) → peer user`. A datagram from a device for a call
//! goes to a device of `peer` only when that device asked for the same call naming the
//! sender's account: nobody can aim datagrams at a device that did not accept the call,
//! and of an account's devices only the one that took the call gets them. Routes live in
//! memory only, while the call lasts.

use std::collections::HashMap;
use std::sync::Mutex;

/// Most routes one device may hold at once (a second call is `busy` anyway).
const MAX_ROUTES_PER_DEVICE: usize = 4;

/// A route's key: the device and the call.
type Key = (String, u32, [u8; 16]);

/// The routes of this relay node.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    map: Mutex<HashMap<Key, String>>,
}

/// The device already holds [`MAX_ROUTES_PER_DEVICE`] other routes.
#[derive(Debug)]
pub(crate) struct TooManyCalls;

impl Routes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, String>> {
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Routes the device's `call` to `peer` (both validated, distinct users), replacing
    /// the call's route if it had one.
    pub(crate) fn insert(
        &self,
        (user, device): (&str, u32),
        call: [u8; 16],
        peer: String,
    ) -> Result<(), TooManyCalls> {
        let mut map = self.lock();
        let held = map.keys().filter(|(u, d, c)| u == user && *d == device && *c != call).count();
        if held >= MAX_ROUTES_PER_DEVICE {
            return Err(TooManyCalls);
        }
        map.insert((user.to_owned(), device, call), peer);
        Ok(())
    }

    /// The device's route for `call` goes, if it had one.
    pub(crate) fn remove(&self, (user, device): (&str, u32), call: [u8; 16]) {
        self.lock().remove(&(user.to_owned(), device, call));
    }

    /// The peer the device asked to reach for `call`.
    pub(crate) fn target(&self, (user, device): (&str, u32), call: [u8; 16]) -> Option<String> {
        self.lock().get(&(user.to_owned(), device, call)).cloned()
    }

    /// Whether the device (connected here) routed `call` naming `from`.
    pub(crate) fn accepts(&self, (user, device): (&str, u32), call: [u8; 16], from: &str) -> bool {
        self.lock().get(&(user.to_owned(), device, call)).is_some_and(|p| p == from)
    }

    /// Every route of the device goes (its connection ended, or it was removed).
    pub(crate) fn drop_device(&self, (user, device): (&str, u32)) {
        self.lock().retain(|(u, d, _), _| u != user || *d != device);
    }

    /// Every route of every device of the account goes (it was deleted).
    pub(crate) fn drop_user(&self, user: &str) {
        self.lock().retain(|(u, _, _), _| u != user);
    }
}
