//! [`DenseMap`]: per-request state in one contiguous slab.
//!
//! The scheduler touches every running request several times a step. With
//! the values inside a hash map, each touch is a probe into a table spread
//! over hundreds of kilobytes at 1024 requests, and the step's cost grew
//! faster than the number of requests (cache misses). Here the values sit
//! in a `Vec` indexed by a slot number handed out at insertion (freed slots
//! are reused, lowest first is not promised); only the small id -> slot
//! index is hashed. Requests admitted together sit next to each other, so a
//! pass over the running list walks memory mostly in order.

use std::hash::Hash;

use rustc_hash::FxHashMap;

#[derive(Debug)]
pub struct DenseMap<K, V> {
    slots: Vec<Option<(K, V)>>,
    free: Vec<u32>,
    index: FxHashMap<K, u32>,
}

impl<K, V> Default for DenseMap<K, V> {
    fn default() -> Self {
        Self { slots: Vec::new(), free: Vec::new(), index: FxHashMap::default() }
    }
}

impl<K: Copy + Eq + Hash, V> DenseMap<K, V> {
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.index.contains_key(key)
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        let &slot = self.index.get(key)?;
        self.slots[slot as usize].as_ref().map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        let &slot = self.index.get(key)?;
        self.slots[slot as usize].as_mut().map(|(_, v)| v)
    }

    /// Where `key` lives, for [`Self::at`] lookups without hashing.
    pub fn slot(&self, key: &K) -> Option<u32> {
        self.index.get(key).copied()
    }

    /// The value in `slot`, if that slot still holds `key`.
    pub fn at(&self, slot: u32, key: &K) -> Option<&V> {
        match self.slots.get(slot as usize)? {
            Some((k, v)) if k == key => Some(v),
            _ => None,
        }
    }

    pub fn at_mut(&mut self, slot: u32, key: &K) -> Option<&mut V> {
        match self.slots.get_mut(slot as usize)? {
            Some((k, v)) if k == key => Some(v),
            _ => None,
        }
    }

    /// Inserts or replaces; returns the value replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        if let Some(v) = self.get_mut(&key) {
            return Some(std::mem::replace(v, value));
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = Some((key, value));
                slot
            }
            None => {
                self.slots.push(Some((key, value)));
                u32::try_from(self.slots.len() - 1).expect("invariant: fewer than 2^32 entries")
            }
        };
        self.index.insert(key, slot);
        None
    }

    /// The value for `key`, inserted with `make` if absent.
    pub fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        if !self.contains_key(&key) {
            self.insert(key, make());
        }
        self.get_mut(&key).expect("invariant: inserted above")
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let slot = self.index.remove(key)?;
        self.free.push(slot);
        self.slots[slot as usize].take().map(|(_, v)| v)
    }

    /// Entries in slot order (not insertion order).
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.slots.iter().filter_map(|s| s.as_ref().map(|(k, v)| (k, v)))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.iter().map(|(_, v)| v)
    }
}

impl<K: Copy + Eq + Hash, V> std::ops::Index<&K> for DenseMap<K, V> {
    type Output = V;

    fn index(&self, key: &K) -> &V {
        self.get(key).expect("invariant: DenseMap index with a present key")
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Behaves as a hash map under any sequence of inserts and removes.
        #[test]
        fn matches_a_hash_map(ops in proptest::collection::vec((any::<bool>(), 0u8..16, any::<u16>()), 0..200)) {
            let mut dense = DenseMap::default();
            let mut model = std::collections::HashMap::new();
            for (insert, k, v) in ops {
                if insert {
                    prop_assert_eq!(dense.insert(k, v), model.insert(k, v));
                } else {
                    prop_assert_eq!(dense.remove(&k), model.remove(&k));
                }
                prop_assert_eq!(dense.len(), model.len());
                for (k, v) in &model {
                    prop_assert_eq!(dense.get(k), Some(v));
                    let slot = dense.slot(k).unwrap();
                    prop_assert_eq!(dense.at(slot, k), Some(v));
                }
                prop_assert_eq!(dense.iter().count(), model.len());
            }
        }
    }
}
