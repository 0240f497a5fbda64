//! Token buckets keyed by source address or account (register, login, directory
//! lookups, reports), and the per-address cap on concurrent connections. Addresses are
//! keyed by [`ip_key`]: an IPv6 host usually holds a whole /64, so one key per /64.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::RateLimit;

/// The rate-limit key of an address: IPv4 as is (also when mapped into IPv6), IPv6 by
/// its /64 prefix.
pub(crate) fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Concurrent connections per address key; a slot is given back when its guard drops.
#[derive(Debug)]
pub(crate) struct ConnSlots {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection's slot.
#[derive(Debug)]
pub(crate) struct ConnSlot {
    key: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl ConnSlots {
    pub(crate) fn new(max: usize) -> Self {
        Self { max, open: Arc::default() }
    }

    /// A slot for a connection from `ip`, or `None` when its key has `max` open.
    pub(crate) fn take(&self, ip: IpAddr) -> Option<ConnSlot> {
        let key = ip_key(ip);
        let mut open = self.open.lock().ok()?;
        let n = open.entry(key).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ConnSlot { key, open: self.open.clone() })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.open.lock()
            && let Some(n) = open.get_mut(&self.key)
        {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Buckets beyond this many are pruned (full ones first, then the longest unused) so
/// the map stays bounded; state is never dropped wholesale, which would hand every
/// limited client a fresh burst.
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
            while map.len() >= MAX_KEYS {
                let Some(oldest) =
                    map.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| k.clone())
                else {
                    break;
                };
                map.remove(&oldest);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_is_keyed_by_its_64_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(ip_key(a), ip_key(b));
        assert_ne!(ip_key(a), ip_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(ip_key(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn a_second_address_in_the_same_64_shares_the_first_ones_bucket() {
        let l = Limiter::new(RateLimit { burst: 2, per_minute: 0 });
        let a = ip_key("2001:db8::1".parse().unwrap());
        let b = ip_key("2001:db8::2".parse().unwrap());
        assert!(l.check(&a).is_ok());
        assert!(l.check(&b).is_ok());
        assert!(l.check(&a).is_err());
        assert!(l.check(&b).is_err());
    }

    #[test]
    fn a_full_map_evicts_the_longest_unused_key_never_a_limited_one_wholesale() {
        let l = Limiter::new(RateLimit { burst: 1, per_minute: 0 });
        // The limited key is used last, so it is never the oldest.
        for k in 0..MAX_KEYS as u64 {
            let _ = l.check(&k);
        }
        assert!(l.check(&0).is_err(), "key 0 is limited");
        for k in MAX_KEYS as u64..MAX_KEYS as u64 + 10 {
            assert!(l.check(&k).is_ok());
        }
        assert!(l.check(&0).is_err(), "a full map did not reset key 0");
        assert!(l.buckets.lock().unwrap().len() <= MAX_KEYS);
    }

    #[test]
    fn connection_slots_are_capped_per_key_and_given_back() {
        let slots = ConnSlots::new(2);
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let other: IpAddr = "2001:db8::2".parse().unwrap();
        let a = slots.take(ip).unwrap();
        let _b = slots.take(other).unwrap();
        assert!(slots.take(ip).is_none(), "the /64 has two open");
        drop(a);
        assert!(slots.take(ip).is_some());
    }
}
