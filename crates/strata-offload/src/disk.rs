//! The disk tier: one file per block under `<dir>/<fingerprint>/`.
//!
//! File format (version 1, little-endian, documented for operators in
//! `docs/kv-offload.md`):
//!
//! ```text
//! offset size field
//!      0    8 magic "STRATAKV"
//!      8    4 format version (1)
//!     12    4 model/layout fingerprint, low half   \ u64 split so the
//!     16    4 model/layout fingerprint, high half  / header is 4-aligned
//!     20    8 block hash (the prefix-cache chain hash, cache salt included)
//!     28    8 payload length in bytes
//!     36    4 CRC-32 of the payload
//!     40    4 CRC-32 of bytes 0..40
//!     44    . payload (one device block in the executor's layout)
//! ```
//!
//! Every load checks all of it: a file that is short is `truncated`, one
//! whose fingerprint, hash or length differs from what was asked for is
//! `foreign`, one whose checksums fail is `corrupt`. A failed file is never
//! served; the caller deletes it and treats the load as failed.
//!
//! Writes go to `<name>.tmp` and are renamed into place, so a crash leaves
//! either the whole file or a `.tmp` that start-up removes. The file name
//! is the block hash in hex, so start-up rebuilds the index from a
//! directory listing (sizes and modification times, oldest evicted first)
//! without reading any block.
//!
//! [`DiskIndex`] is the in-memory side (pure: which blocks exist, which are
//! being written or read, LRU order, capacity); the I/O functions below do
//! not touch it, so they run on background threads.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::stats::OffloadFailure;
use rustc_hash::FxHashMap;
use strata_core::kv::BlockHash;

const MAGIC: &[u8; 8] = b"STRATAKV";
const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 44;

/// The directory holding this model's block files.
pub fn model_dir(root: &Path, fingerprint: u64) -> PathBuf {
    root.join(format!("{fingerprint:016x}"))
}

pub fn block_path(dir: &Path, hash: BlockHash) -> PathBuf {
    dir.join(format!("{:016x}.kv", hash.0))
}

fn header(fingerprint: u64, hash: BlockHash, payload: &[u8]) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&fingerprint.to_le_bytes());
    h[20..28].copy_from_slice(&hash.0.to_le_bytes());
    h[28..36].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    h[36..40].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let crc = crc32fast::hash(&h[0..40]);
    h[40..44].copy_from_slice(&crc.to_le_bytes());
    h
}

fn io_failure(e: &io::Error) -> OffloadFailure {
    // ENOSPC and EDQUOT: the device or the quota is full.
    match e.raw_os_error() {
        Some(28) | Some(122) => OffloadFailure::NoSpace,
        _ => OffloadFailure::Io,
    }
}

/// Writes one block file (header and payload) atomically.
pub fn write_block(
    dir: &Path,
    fingerprint: u64,
    hash: BlockHash,
    payload: &[u8],
) -> Result<(), OffloadFailure> {
    let path = block_path(dir, hash);
    let tmp = path.with_extension("kv.tmp");
    let write = || -> io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&header(fingerprint, hash, payload))?;
        f.write_all(payload)?;
        fs::rename(&tmp, &path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_failure(&e)
    })
}

/// Reads and verifies one block file into `out` (the payload length
/// expected).
pub fn read_block(
    dir: &Path,
    fingerprint: u64,
    hash: BlockHash,
    out: &mut [u8],
) -> Result<(), OffloadFailure> {
    let mut f = fs::File::open(block_path(dir, hash)).map_err(|e| io_failure(&e))?;
    let mut h = [0u8; HEADER_LEN];
    f.read_exact(&mut h).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => OffloadFailure::Truncated,
        _ => io_failure(&e),
    })?;
    let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
    let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
    if &h[0..8] != MAGIC || u32_at(8) != VERSION {
        return Err(OffloadFailure::Foreign);
    }
    if crc32fast::hash(&h[0..40]) != u32_at(40) {
        return Err(OffloadFailure::Corrupt);
    }
    if u64_at(12) != fingerprint || u64_at(20) != hash.0 || u64_at(28) != out.len() as u64 {
        return Err(OffloadFailure::Foreign);
    }
    f.read_exact(out).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => OffloadFailure::Truncated,
        _ => io_failure(&e),
    })?;
    if crc32fast::hash(out) != u32_at(36) {
        return Err(OffloadFailure::Corrupt);
    }
    // Anything after the payload means the file is not what it claims.
    let mut extra = [0u8; 1];
    match f.read(&mut extra) {
        Ok(0) => Ok(()),
        Ok(_) => Err(OffloadFailure::Foreign),
        Err(e) => Err(io_failure(&e)),
    }
}

pub fn remove_block(dir: &Path, hash: BlockHash) {
    let _ = fs::remove_file(block_path(dir, hash));
}

/// What start-up found: block files oldest first, and how many files of
/// the wrong size (cut short, or another layout) it deleted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    pub blocks: Vec<BlockHash>,
    pub num_removed: usize,
}

pub fn scan(dir: &Path, payload_len: usize) -> io::Result<Scan> {
    let mut found: Vec<(SystemTime, BlockHash)> = Vec::new();
    let mut num_removed = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = entry.path();
        if name.ends_with(".tmp") {
            // An interrupted write.
            let _ = fs::remove_file(&path);
            continue;
        }
        let Some(stem) = name.strip_suffix(".kv") else { continue };
        let Ok(hash) = u64::from_str_radix(stem, 16) else { continue };
        let meta = entry.metadata()?;
        if meta.len() != (HEADER_LEN + payload_len) as u64 {
            // Another layout, or cut short: never servable.
            let _ = fs::remove_file(&path);
            num_removed += 1;
            continue;
        }
        found.push((meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), BlockHash(hash)));
    }
    found.sort();
    Ok(Scan { blocks: found.into_iter().map(|(_, h)| h).collect(), num_removed })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Being written: not loadable yet.
    Writing,
    Ready,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    state: State,
    /// Loads in flight.
    pins: u32,
    last_use: u64,
}

/// What the disk tier holds, by block hash, within a capacity in blocks.
#[derive(Debug)]
pub struct DiskIndex {
    capacity: usize,
    entries: FxHashMap<BlockHash, Entry>,
    /// Ready, unpinned blocks by recency: (last_use, hash).
    lru: BTreeSet<(u64, BlockHash)>,
    tick: u64,
}

impl DiskIndex {
    pub fn new(capacity_blocks: usize) -> Self {
        Self {
            capacity: capacity_blocks,
            entries: FxHashMap::default(),
            lru: BTreeSet::new(),
            tick: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Blocks held or being written.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Blocks being written or read: those not in the LRU set of ready,
    /// unpinned blocks (checked by `check_invariants`), without a scan
    /// (this is read every step).
    pub fn num_busy(&self) -> usize {
        self.entries.len() - self.lru.len()
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// Whether a load can be served (written completely).
    pub fn is_ready(&self, hash: BlockHash) -> bool {
        self.entries.get(&hash).is_some_and(|e| e.state == State::Ready)
    }

    /// The loadable blocks, sorted (for checks: the KV events' `DISK` set).
    pub fn hashes(&self) -> Vec<BlockHash> {
        let mut v: Vec<BlockHash> =
            self.entries.iter().filter(|(_, e)| e.state == State::Ready).map(|(&h, _)| h).collect();
        v.sort_unstable();
        v
    }

    /// Whether the block is here or on its way.
    pub fn contains(&self, hash: BlockHash) -> bool {
        self.entries.contains_key(&hash)
    }

    /// Adds a block found at start-up (call oldest first).
    pub fn insert_ready(&mut self, hash: BlockHash) {
        let tick = self.next_tick();
        if let Some(old) =
            self.entries.insert(hash, Entry { state: State::Ready, pins: 0, last_use: tick })
        {
            self.lru.remove(&(old.last_use, hash));
        }
        self.lru.insert((tick, hash));
    }

    /// Reserves room for a new block: the blocks to delete first (least
    /// recently used), or `None` if everything is busy. The block is then
    /// `Writing` until [`Self::finish_write`].
    pub fn begin_write(&mut self, hash: BlockHash) -> Option<Vec<BlockHash>> {
        debug_assert!(!self.contains(hash));
        if self.capacity == 0 {
            return None;
        }
        let mut evicted = Vec::new();
        while self.entries.len() >= self.capacity {
            let &(t, victim) = self.lru.iter().next()?;
            self.lru.remove(&(t, victim));
            self.entries.remove(&victim);
            evicted.push(victim);
        }
        let tick = self.next_tick();
        self.entries.insert(hash, Entry { state: State::Writing, pins: 0, last_use: tick });
        Some(evicted)
    }

    /// A write ended: the block becomes loadable, or is forgotten.
    pub fn finish_write(&mut self, hash: BlockHash, ok: bool) {
        let Some(e) = self.entries.get_mut(&hash) else { return };
        if !ok {
            self.entries.remove(&hash);
            return;
        }
        e.state = State::Ready;
        if e.pins == 0 {
            self.lru.insert((e.last_use, hash));
        }
    }

    /// The device is full (a write failed with ENOSPC or EDQUOT): the
    /// tier holds at most what is on it now, so later writes evict the
    /// least recently used blocks to make room instead of failing again.
    /// The capacity only ever shrinks (to at least one block).
    pub fn shrink_to_fit(&mut self) {
        let ready = self.entries.values().filter(|e| e.state == State::Ready).count();
        self.capacity = self.capacity.min(ready.max(1));
    }

    pub fn touch(&mut self, hash: BlockHash) {
        let tick = self.next_tick();
        let Some(e) = self.entries.get_mut(&hash) else { return };
        if e.state == State::Ready && e.pins == 0 {
            self.lru.remove(&(e.last_use, hash));
            self.lru.insert((tick, hash));
        }
        e.last_use = tick;
    }

    /// Pins a ready block for a load (it cannot be evicted meanwhile).
    pub fn pin(&mut self, hash: BlockHash) -> bool {
        let Some(e) = self.entries.get_mut(&hash) else { return false };
        if e.state != State::Ready {
            return false;
        }
        if e.pins == 0 {
            self.lru.remove(&(e.last_use, hash));
        }
        e.pins += 1;
        true
    }

    /// A load ended; a failed one drops the block (its file is bad).
    pub fn unpin(&mut self, hash: BlockHash, ok: bool) {
        let tick = self.next_tick();
        let Some(e) = self.entries.get_mut(&hash) else { return };
        e.pins = e.pins.saturating_sub(1);
        if !ok {
            if e.pins == 0 {
                self.entries.remove(&hash);
            }
            return;
        }
        e.last_use = tick;
        if e.pins == 0 && e.state == State::Ready {
            self.lru.insert((tick, hash));
        }
    }

    pub fn check_invariants(&self) -> Result<(), String> {
        if self.entries.len() > self.capacity {
            return Err(format!(
                "{} blocks over a capacity of {}",
                self.entries.len(),
                self.capacity
            ));
        }
        let evictable =
            self.entries.values().filter(|e| e.state == State::Ready && e.pins == 0).count();
        if evictable != self.lru.len() {
            return Err(format!("{evictable} evictable blocks, {} in the LRU set", self.lru.len()));
        }
        for &(t, h) in &self.lru {
            match self.entries.get(&h) {
                Some(e) if e.last_use == t => {}
                _ => return Err(format!("stale LRU entry for {h:?}")),
            }
        }
        let busy =
            self.entries.values().filter(|e| e.pins > 0 || e.state == State::Writing).count();
        if busy != self.num_busy() {
            return Err(format!("{busy} blocks busy, {} counted", self.num_busy()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
