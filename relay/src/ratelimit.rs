//! Token buckets keyed by source IP or account, for register and login.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::RateLimit;

/// Buckets beyond this many are pruned (full ones first) so the map stays bounded.
const MAX_KEYS: usize = 100_000;

/// A set of token buckets with one limit.
#[derive(Debug)]
pub(crate) struct Limiter<K> {
    limit: RateLimit,
    buckets: Mutex<HashMap<K, (f64, Instant)>>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    pub(crate) fn new(limit: RateLimit) -> Self {
        Self { limit, buckets: Mutex::new(HashMap::new()) }
    }

    /// Takes one token for `key`, or says how long until one is available.
    pub(crate) fn check(&self, key: &K) -> Result<(), Duration> {
        let now = Instant::now();
        let burst = f64::from(self.limit.burst.max(1));
        let per_sec = f64::from(self.limit.per_minute) / 60.0;
        let Ok(mut map) = self.buckets.lock() else { return Ok(()) };
        if map.len() >= MAX_KEYS && !map.contains_key(key) {
            map.retain(|_, (tokens, at)| {
                *tokens + per_sec * now.duration_since(*at).as_secs_f64() < burst
            });
            if map.len() >= MAX_KEYS {
                map.clear();
            }
        }
        let entry = map.entry(key.clone()).or_insert((burst, now));
        let tokens = (entry.0 + per_sec * now.duration_since(entry.1).as_secs_f64()).min(burst);
        if tokens >= 1.0 {
            *entry = (tokens - 1.0, now);
            Ok(())
        } else {
            *entry = (tokens, now);
            let wait = if per_sec > 0.0 { (1.0 - tokens) / per_sec } else { 3600.0 };
            Err(Duration::from_secs_f64(wait.max(0.001)))
        }
    }
}
