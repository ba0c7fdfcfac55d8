//! A cap on concurrent holders per key (per source address, per identity).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use crate::util::lock;

/// At most `max` live [`Slot`]s per key; a key with no slot takes no memory.
pub(super) struct KeyedLimit<K> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
    max: usize,
}

impl<K: Hash + Eq + Clone> KeyedLimit<K> {
    pub(super) fn new(max: usize) -> Self {
        Self {
            counts: Arc::new(Mutex::new(HashMap::new())),
            max,
        }
    }

    /// Takes a slot for `key`, or `None` if `key` already holds `max`.
    pub(super) fn try_take(&self, key: K) -> Option<Slot<K>> {
        let mut counts = lock(&self.counts);
        let n = counts.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            counts: self.counts.clone(),
            key,
        })
    }
}

/// One held slot, given back on drop.
pub(super) struct Slot<K: Hash + Eq> {
    counts: Arc<Mutex<HashMap<K, usize>>>,
    key: K,
}

impl<K: Hash + Eq> Drop for Slot<K> {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_key_and_given_back_on_drop() {
        let limit = KeyedLimit::new(2);
        let a1 = limit.try_take("a").unwrap();
        let _a2 = limit.try_take("a").unwrap();
        assert!(limit.try_take("a").is_none());
        let _b = limit.try_take("b").unwrap();
        drop(a1);
        assert!(limit.try_take("a").is_some());
        drop(_b);
        assert!(
            !lock(&limit.counts).contains_key("b"),
            "an idle key is forgotten"
        );
    }
}
