//! Call media routes: which peer each device asked to reach for a call. The requests
//! that change them are in `handlers/calls.rs`; the datagrams that follow them in
//! `media.rs`.
//!
//! A route is `(user, call id) → peer`. A datagram from `user` for a call goes to `peer`
//! only when `peer` asked for the same call naming `user`: nobody can aim datagrams at a
//! device that did not accept the call. Routes live in memory only, while the call lasts.

use std::collections::HashMap;
use std::sync::Mutex;

/// Most routes one account may hold at once (a second call is `busy` anyway).
const MAX_ROUTES_PER_USER: usize = 4;

/// The routes of this relay node.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    map: Mutex<HashMap<(String, [u8; 16]), String>>,
}

/// `user` already holds [`MAX_ROUTES_PER_USER`] other routes.
#[derive(Debug)]
pub(crate) struct TooManyCalls;

impl Routes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, [u8; 16]), String>> {
        self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Routes `user`'s `call` to `peer` (both validated, distinct users), replacing the
    /// call's route if it had one.
    pub(crate) fn insert(
        &self,
        user: &str,
        call: [u8; 16],
        peer: String,
    ) -> Result<(), TooManyCalls> {
        let mut map = self.lock();
        let held = map.keys().filter(|(u, c)| u == user && *c != call).count();
        if held >= MAX_ROUTES_PER_USER {
            return Err(TooManyCalls);
        }
        map.insert((user.to_owned(), call), peer);
        Ok(())
    }

    /// `user`'s route for `call` goes, if it had one.
    pub(crate) fn remove(&self, user: &str, call: [u8; 16]) {
        self.lock().remove(&(user.to_owned(), call));
    }

    /// The peer `user` asked to reach for `call`.
    pub(crate) fn target(&self, user: &str, call: [u8; 16]) -> Option<String> {
        self.lock().get(&(user.to_owned(), call)).cloned()
    }

    /// Whether `user` (connected here) routed `call` naming `from`.
    pub(crate) fn accepts(&self, user: &str, call: [u8; 16], from: &str) -> bool {
        self.lock().get(&(user.to_owned(), call)).is_some_and(|p| p == from)
    }

    /// Every route of `user` goes (its connection ended).
    pub(crate) fn drop_user(&self, user: &str) {
        self.lock().retain(|(u, _), _| u != user);
    }
}
