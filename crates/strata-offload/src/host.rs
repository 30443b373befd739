//! The host tier: a fixed pool of block slots in RAM.
//!
//! One buffer per slot, allocated when the slot is first filled (an idle
//! tier costs no memory) and shared by reference with the disk writer (a
//! write-through costs no copy; refilling a slot whose write is still
//! queued copies it first), an index from block hash
//! to slot, and LRU eviction among slots nobody is reading. A slot pinned
//! by a load in flight is never evicted or overwritten.
//!
//! A block coming from disk is read straight into a slot: the load
//! [`HostTier::reserve`]s one (not findable, not evictable), the reader
//! fills the buffer taken from it, and [`HostTier::fill_reserved`] indexes
//! it (or [`HostTier::release`] frees it).
//!
//! Invariants (checked by `check_invariants` in tests): every slot is free,
//! reserved, or indexed under exactly one hash; a pinned slot is indexed;
//! the LRU set holds exactly the indexed, unpinned slots.

use std::collections::BTreeSet;

use rustc_hash::FxHashMap;
use strata_core::kv::BlockHash;

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    hash: Option<BlockHash>,
    /// Reserved for a block being read from disk.
    reserved: bool,
    pins: u32,
    /// Recency tick of the last store or hit.
    last_use: u64,
}

/// Where a block now lives after [`HostTier::allocate`], and what had to
/// leave to make room.
#[derive(Debug, PartialEq, Eq)]
pub struct Allocation {
    pub slot: u32,
    pub evicted: Option<BlockHash>,
}

pub struct HostTier {
    bytes_per_block: usize,
    data: Vec<std::sync::Arc<Vec<u8>>>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    index: FxHashMap<BlockHash, u32>,
    /// Evictable slots by recency: (last_use, slot).
    lru: BTreeSet<(u64, u32)>,
    tick: u64,
    num_reserved: usize,
}

impl std::fmt::Debug for HostTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostTier")
            .field("num_slots", &self.slots.len())
            .field("num_used", &self.index.len())
            .field("bytes_per_block", &self.bytes_per_block)
            .finish()
    }
}

impl HostTier {
    /// A tier of `num_slots` blocks of `bytes_per_block` bytes.
    pub fn new(num_slots: usize, bytes_per_block: usize) -> Self {
        let slots = vec![Slot::default(); num_slots];
        // Highest slot popped last, so slots fill from 0.
        let free = (0..num_slots as u32).rev().collect();
        Self {
            bytes_per_block,
            data: (0..num_slots).map(|_| std::sync::Arc::new(Vec::new())).collect(),
            slots,
            free,
            index: FxHashMap::default(),
            lru: BTreeSet::new(),
            tick: 0,
            num_reserved: 0,
        }
    }

    pub fn num_slots(&self) -> usize {
        self.slots.len()
    }

    pub fn num_used(&self) -> usize {
        self.index.len()
    }

    /// Slots a load is reading: the indexed ones not in the LRU set (the
    /// module's invariant), without a scan (this is read every step).
    pub fn num_pinned(&self) -> usize {
        self.index.len() - self.lru.len()
    }

    /// Slots reserved for blocks being read from disk.
    pub fn num_reserved(&self) -> usize {
        self.num_reserved
    }

    pub fn bytes_per_block(&self) -> usize {
        self.bytes_per_block
    }

    pub fn contains(&self, hash: BlockHash) -> bool {
        self.index.contains_key(&hash)
    }

    /// The blocks held, sorted (for checks: the KV events' `CPU` set).
    pub fn hashes(&self) -> Vec<BlockHash> {
        let mut v: Vec<BlockHash> = self.index.keys().copied().collect();
        v.sort_unstable();
        v
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// Marks a block recently used (a hit, or a store of a block already
    /// here).
    pub fn touch(&mut self, hash: BlockHash) {
        let Some(&slot) = self.index.get(&hash) else { return };
        let tick = self.next_tick();
        let s = &mut self.slots[slot as usize];
        if s.pins == 0 {
            self.lru.remove(&(s.last_use, slot));
            self.lru.insert((tick, slot));
        }
        s.last_use = tick;
    }

    /// Pins the block's slot for a load; `None` if it is not here.
    pub fn pin(&mut self, hash: BlockHash) -> Option<u32> {
        let &slot = self.index.get(&hash)?;
        let s = &mut self.slots[slot as usize];
        if s.pins == 0 {
            self.lru.remove(&(s.last_use, slot));
        }
        s.pins += 1;
        Some(slot)
    }

    pub fn unpin(&mut self, slot: u32) {
        let tick = self.next_tick();
        let s = &mut self.slots[slot as usize];
        debug_assert!(s.pins > 0, "unpin of an unpinned slot");
        s.pins = s.pins.saturating_sub(1);
        if s.pins == 0 && s.hash.is_some() {
            s.last_use = tick;
            self.lru.insert((tick, slot));
        }
    }

    /// A free slot, or the least recently used unpinned one with the block
    /// it evicts; `None` when every slot is pinned or reserved.
    fn take_slot(&mut self) -> Option<Allocation> {
        if let Some(slot) = self.free.pop() {
            return Some(Allocation { slot, evicted: None });
        }
        let &(last_use, slot) = self.lru.iter().next()?;
        self.lru.remove(&(last_use, slot));
        let old = self.slots[slot as usize].hash.take();
        if let Some(old) = old {
            self.index.remove(&old);
        }
        Some(Allocation { slot, evicted: old })
    }

    /// A slot for a new block, evicting the least recently used unpinned
    /// block if the tier is full. `None` when every slot is pinned or
    /// reserved (the store is skipped and counted). The slot is indexed
    /// under `hash` at once; the caller fills it with [`Self::slot_mut`].
    pub fn allocate(&mut self, hash: BlockHash) -> Option<Allocation> {
        debug_assert!(!self.contains(hash), "allocate of a block already here");
        let a = self.take_slot()?;
        self.index_slot(a.slot, hash);
        Some(a)
    }

    fn index_slot(&mut self, slot: u32, hash: BlockHash) {
        let tick = self.next_tick();
        self.slots[slot as usize] =
            Slot { hash: Some(hash), reserved: false, pins: 0, last_use: tick };
        self.index.insert(hash, slot);
        self.lru.insert((tick, slot));
    }

    /// Reserves a slot for a block to be read from disk (evicting like
    /// [`Self::allocate`]), and takes its buffer out for the reader: the
    /// slot is neither findable nor evictable until
    /// [`Self::fill_reserved`] or [`Self::release`] gives the buffer back.
    /// A slot never filled gives an empty buffer: the reader sizes it (off
    /// the step's thread, where first-touch page faults cost most).
    pub fn reserve(&mut self) -> Option<(Allocation, Vec<u8>)> {
        let a = self.take_slot()?;
        self.slots[a.slot as usize] = Slot { reserved: true, ..Slot::default() };
        self.num_reserved += 1;
        // A buffer still shared with the disk writer stays with it; the
        // reader gets a new one.
        let shared = std::mem::take(&mut self.data[a.slot as usize]);
        Some((a, std::sync::Arc::try_unwrap(shared).unwrap_or_default()))
    }

    /// A reserved slot's block arrived in `buf`: the slot holds `hash`
    /// from now on. `false` (and the slot freed) if `hash` is already in
    /// another slot (another load promoted it first).
    pub fn fill_reserved(&mut self, slot: u32, hash: BlockHash, buf: Vec<u8>) -> bool {
        if self.contains(hash) {
            self.release(slot, buf);
            return false;
        }
        debug_assert!(self.slots[slot as usize].reserved);
        self.num_reserved -= 1;
        self.data[slot as usize] = std::sync::Arc::new(buf);
        self.index_slot(slot, hash);
        true
    }

    /// A reserved slot is not needed (its read failed): free again, with
    /// its buffer.
    pub fn release(&mut self, slot: u32, buf: Vec<u8>) {
        debug_assert!(self.slots[slot as usize].reserved);
        self.num_reserved -= 1;
        self.data[slot as usize] = std::sync::Arc::new(buf);
        self.slots[slot as usize] = Slot::default();
        self.free.push(slot);
    }

    /// Forgets a block (its contents are no longer wanted). Pinned blocks
    /// stay until unpinned.
    pub fn remove(&mut self, hash: BlockHash) -> bool {
        let Some(&slot) = self.index.get(&hash) else { return false };
        let s = self.slots[slot as usize];
        if s.pins > 0 {
            return false;
        }
        self.lru.remove(&(s.last_use, slot));
        self.index.remove(&hash);
        self.slots[slot as usize] = Slot::default();
        self.free.push(slot);
        true
    }

    pub fn slot(&self, slot: u32) -> &[u8] {
        &self.data[slot as usize]
    }

    /// A block's buffer, shared (for the disk writer); its recency is
    /// left as it is.
    pub fn shared(&self, hash: BlockHash) -> Option<std::sync::Arc<Vec<u8>>> {
        self.index.get(&hash).map(|&slot| self.data[slot as usize].clone())
    }

    pub fn slot_mut(&mut self, slot: u32) -> &mut [u8] {
        let bpb = self.bytes_per_block;
        let v = std::sync::Arc::make_mut(&mut self.data[slot as usize]);
        v.resize(bpb, 0);
        v
    }

    /// Checks the module header's invariants.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (&hash, &slot) in &self.index {
            if self.slots[slot as usize].hash != Some(hash) {
                return Err(format!("slot {slot} indexed under {hash:?} holds another block"));
            }
        }
        let used = self.slots.iter().filter(|s| s.hash.is_some()).count();
        let reserved = self.slots.iter().filter(|s| s.reserved).count();
        if used != self.index.len()
            || reserved != self.num_reserved
            || used + reserved + self.free.len() != self.slots.len()
        {
            return Err(format!(
                "{used} slots used, {} indexed, {reserved} reserved ({} counted), {} free of {}",
                self.index.len(),
                self.num_reserved,
                self.free.len(),
                self.slots.len()
            ));
        }
        for (i, s) in self.slots.iter().enumerate() {
            let in_lru = self.lru.contains(&(s.last_use, i as u32));
            if s.pins > 0 && s.hash.is_none() {
                return Err(format!("slot {i} is pinned but holds nothing"));
            }
            if s.reserved && s.hash.is_some() {
                return Err(format!("slot {i} is reserved but holds a block"));
            }
            if in_lru != (s.hash.is_some() && s.pins == 0) {
                return Err(format!("slot {i}: evictable = {in_lru}, pins = {}", s.pins));
            }
        }
        if self.lru.len() != self.slots.iter().filter(|s| s.hash.is_some() && s.pins == 0).count() {
            return Err("stale entries in the LRU set".into());
        }
        let pinned = self.slots.iter().filter(|s| s.pins > 0).count();
        if pinned != self.num_pinned() {
            return Err(format!("{pinned} slots pinned, {} counted", self.num_pinned()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn evicts_the_least_recently_used_unpinned_block() {
        let mut t = HostTier::new(2, 4);
        let (a, b, c) = (BlockHash(1), BlockHash(2), BlockHash(3));
        t.allocate(a).unwrap();
        t.allocate(b).unwrap();
        t.touch(a);
        assert_eq!(t.allocate(c).unwrap().evicted, Some(b));
        let slot = t.pin(a).unwrap();
        // `a` is pinned and `c` the only candidate.
        let d = t.allocate(BlockHash(4)).unwrap();
        assert_eq!(d.evicted, Some(c));
        let pinned_d = t.pin(BlockHash(4)).unwrap();
        assert_eq!(t.allocate(BlockHash(5)), None, "nothing evictable: every slot pinned");
        t.unpin(slot);
        t.unpin(pinned_d);
        assert_eq!(t.allocate(BlockHash(5)).unwrap().evicted, Some(BlockHash(1)));
        t.check_invariants().unwrap();
    }

    #[derive(Clone, Debug)]
    enum Op {
        Store(u8),
        Pin(u8),
        Unpin(u8),
        Touch(u8),
        Remove(u8),
        Reserve,
        /// Fills the oldest reservation with block `k`.
        Fill(u8),
        Release,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..12).prop_map(Op::Store),
            (0u8..12).prop_map(Op::Pin),
            (0u8..12).prop_map(Op::Unpin),
            (0u8..12).prop_map(Op::Touch),
            (0u8..12).prop_map(Op::Remove),
            Just(Op::Reserve),
            (0u8..12).prop_map(Op::Fill),
            Just(Op::Release),
        ]
    }

    proptest! {
        /// Random store / pin / unpin / touch / remove / reserve / fill /
        /// release: no slot leaks, a block is only ever served under its
        /// own key, pinned blocks are never evicted, reserved slots are
        /// never handed out twice.
        #[test]
        fn never_leaks_or_serves_a_block_under_a_wrong_key(ops in proptest::collection::vec(op(), 1..200)) {
            let mut t = HostTier::new(4, 8);
            let mut pins: Vec<(u8, u32)> = Vec::new();
            let mut reserved: Vec<(u32, Vec<u8>)> = Vec::new();
            for op in ops {
                match op {
                    Op::Store(k) => {
                        let h = BlockHash(k as u64);
                        if !t.contains(h) {
                            if let Some(a) = t.allocate(h) {
                                t.slot_mut(a.slot).fill(k);
                                if let Some(e) = a.evicted {
                                    prop_assert!(pins.iter().all(|(p, _)| *p as u64 != e.0), "a pinned block was evicted");
                                }
                            }
                        }
                    }
                    Op::Pin(k) => {
                        if let Some(slot) = t.pin(BlockHash(k as u64)) {
                            pins.push((k, slot));
                        }
                    }
                    Op::Unpin(k) => {
                        if let Some(i) = pins.iter().position(|(p, _)| *p == k) {
                            let (_, slot) = pins.remove(i);
                            t.unpin(slot);
                        }
                    }
                    Op::Touch(k) => t.touch(BlockHash(k as u64)),
                    Op::Remove(k) => {
                        t.remove(BlockHash(k as u64));
                    }
                    Op::Reserve => {
                        if let Some((a, mut buf)) = t.reserve() {
                            prop_assert!(buf.is_empty() || buf.len() == 8);
                            buf.resize(8, 0);
                            prop_assert!(reserved.iter().all(|(s, _)| *s != a.slot), "a reserved slot handed out twice");
                            if let Some(e) = a.evicted {
                                prop_assert!(pins.iter().all(|(p, _)| *p as u64 != e.0), "a pinned block was evicted");
                            }
                            reserved.push((a.slot, buf));
                        }
                    }
                    Op::Fill(k) => {
                        if !reserved.is_empty() {
                            let (slot, mut buf) = reserved.remove(0);
                            buf.fill(k);
                            let h = BlockHash(k as u64);
                            let was_here = t.contains(h);
                            prop_assert_eq!(t.fill_reserved(slot, h, buf), !was_here);
                        }
                    }
                    Op::Release => {
                        if let Some((slot, buf)) = reserved.pop() {
                            t.release(slot, buf);
                        }
                    }
                }
                t.check_invariants().map_err(TestCaseError::fail)?;
                for k in 0u8..12 {
                    if let Some(slot) = t.pin(BlockHash(k as u64)) {
                        prop_assert!(t.slot(slot).iter().all(|&b| b == k), "block {} served another's bytes", k);
                        t.unpin(slot);
                    }
                }
                for (k, slot) in &pins {
                    prop_assert!(t.slot(*slot).iter().all(|b| b == k));
                }
            }
            for (_, slot) in pins.drain(..) {
                t.unpin(slot);
            }
            for (slot, buf) in reserved.drain(..) {
                t.release(slot, buf);
            }
            prop_assert_eq!(t.num_reserved(), 0);
            prop_assert_eq!(t.num_pinned(), 0);
            t.check_invariants().map_err(TestCaseError::fail)?;
        }
    }
}
