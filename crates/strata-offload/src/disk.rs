//! The disk tier: one slab file of fixed-size block slots per model,
//! `<dir>/<fingerprint>/blocks.slab`.
//!
//! A slot is the block's payload (one device block in the executor's
//! layout) followed by a header, padded to a multiple of 4 KiB so that
//! every slot starts on a page (and `O_DIRECT` can read it whole):
//!
//! ```text
//! slot i at offset i * stride, stride = round_up(payload + 52, 4096)
//!
//! offset        size field
//!      0     payload block bytes
//! payload         8 magic "STRATAKV"            \
//!   +8            4 format version (2)           |
//!  +12            8 model/layout fingerprint     |
//!  +20            8 block hash (prefix-cache     | the header
//!                   chain hash, cache salt in)   | (little-endian)
//!  +28            8 payload length               |
//!  +36            8 sequence number (write order)|
//!  +44            4 CRC-32 of the payload        |
//!  +48            4 CRC-32 of header bytes 0..48 /
//! ```
//!
//! One file instead of one file per block: a store is two or three
//! `pwrite`s into the page cache, with no file created, renamed or
//! deleted, which is what kept the per-file format at about half of a
//! sequential write (`cargo bench -p strata-offload --bench tiers`).
//! Eviction is in memory only: the slot is overwritten by the next store.
//!
//! **Crash safety.** A store into a slot that may hold a block first
//! zeroes its header and padding, then writes the payload, then the header
//! with the padding (so a complete slab is whole slots). A process killed
//! at any point leaves the slot either with its old block whole, with no
//! header (never trusted), or with the new block whole. Every load checks
//! all of it anyway: a header that fails its CRC, or whose fingerprint,
//! hash or length differ from what was asked, or a payload that fails its
//! CRC, is never served; the reader zeroes that header, and the caller
//! treats the load as failed.
//!
//! **Start-up** reads only the headers (52 bytes per slot), rebuilds the
//! index with the oldest write evicted first (the sequence number), frees
//! slots without a valid header, and truncates a partial slot at the end
//! (a store cut short while extending the file). The file is locked
//! (`flock`), so two engines cannot share a slab.
//!
//! [`DiskIndex`] is the in-memory side (pure: which blocks exist in which
//! slot, which are being written or read, LRU order, capacity); [`Slab`]
//! does the I/O, from any thread (positional reads and writes).

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::stats::OffloadFailure;
use rustc_hash::FxHashMap;
use strata_core::kv::BlockHash;

const MAGIC: &[u8; 8] = b"STRATAKV";
const VERSION: u32 = 2;
pub const HEADER_LEN: usize = 52;
/// Slot alignment: a page, and the logical block size `O_DIRECT` needs on
/// common devices.
pub const ALIGN: usize = 4096;
const SLAB_NAME: &str = "blocks.slab";
/// Reads and writes move a block in pieces of at most this size, each
/// checksummed right after the kernel copied it, while it is still in the
/// core's cache: the checksum costs no second pass over memory (from
/// memory, a single core checksums at about the speed of the copy itself;
/// from cache, over ten times faster). Half a MiB fits a core's L2 cache
/// on current server CPUs, and is few enough system calls.
const PIECE: usize = 512 << 10;

/// The directory holding this model's slab.
pub fn model_dir(root: &Path, fingerprint: u64) -> PathBuf {
    root.join(format!("{fingerprint:016x}"))
}

pub fn slab_path(dir: &Path) -> PathBuf {
    dir.join(SLAB_NAME)
}

/// Bytes per slot for a payload of `payload_len` bytes.
pub fn stride(payload_len: usize) -> usize {
    (payload_len + HEADER_LEN).div_ceil(ALIGN) * ALIGN
}

fn header(fingerprint: u64, hash: BlockHash, seq: u64, len: usize, crc: u32) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&fingerprint.to_le_bytes());
    h[20..28].copy_from_slice(&hash.0.to_le_bytes());
    h[28..36].copy_from_slice(&(len as u64).to_le_bytes());
    h[36..44].copy_from_slice(&seq.to_le_bytes());
    h[44..48].copy_from_slice(&crc.to_le_bytes());
    let crc = crc32fast::hash(&h[0..48]);
    h[48..52].copy_from_slice(&crc.to_le_bytes());
    h
}

/// A header's fields, once its magic, version and CRC are checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub fingerprint: u64,
    pub hash: BlockHash,
    pub payload_len: u64,
    pub seq: u64,
    pub payload_crc: u32,
}

/// `None` for an empty (all-zero) header; `Err` for one that is damaged
/// or of another format.
fn parse_header(h: &[u8]) -> Result<Option<Header>, OffloadFailure> {
    if h.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let u32_at = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    let u64_at = |i: usize| (u64::from(u32_at(i + 4)) << 32) | u64::from(u32_at(i));
    if &h[0..8] != MAGIC || u32_at(8) != VERSION {
        return Err(OffloadFailure::Foreign);
    }
    if crc32fast::hash(&h[0..48]) != u32_at(48) {
        return Err(OffloadFailure::Corrupt);
    }
    Ok(Some(Header {
        fingerprint: u64_at(12),
        hash: BlockHash(u64_at(20)),
        payload_len: u64_at(28),
        seq: u64_at(36),
        payload_crc: u32_at(44),
    }))
}

fn io_failure(e: &io::Error) -> OffloadFailure {
    // ENOSPC and EDQUOT: the device or the quota is full.
    match e.raw_os_error() {
        Some(28) | Some(122) => OffloadFailure::NoSpace,
        _ => match e.kind() {
            io::ErrorKind::UnexpectedEof => OffloadFailure::Truncated,
            _ => OffloadFailure::Io,
        },
    }
}

/// What start-up found in the slab.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// `(block, slot)`, oldest write first. A block found twice keeps its
    /// newer slot.
    pub blocks: Vec<(BlockHash, u32)>,
    /// Slots inside the file holding no block (free).
    pub free: Vec<u32>,
    /// Slots the file spans (after truncation to the capacity).
    pub num_slots: u32,
    /// Slots whose header was damaged or of another model or layout.
    pub num_removed: usize,
    /// The next sequence number to write.
    pub next_seq: u64,
    /// Files of the previous one-file-per-block format removed.
    pub num_legacy_removed: usize,
}

/// A buffer with a page-aligned window of `len` bytes (for `O_DIRECT`).
#[derive(Debug)]
struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let raw = vec![0u8; len + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        Self { raw, start, len }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// Per-reader scratch: the bounce buffer of `O_DIRECT` reads.
#[derive(Debug, Default)]
pub struct ReadScratch(Option<AlignedBuf>);

/// The open slab: positional I/O from any thread.
#[derive(Debug)]
pub struct Slab {
    file: File,
    /// A second handle opened with `O_DIRECT`, when asked for and
    /// supported by the file system.
    direct: Option<File>,
    fingerprint: u64,
    payload_len: usize,
    stride: u64,
    path: PathBuf,
}

impl Slab {
    /// Opens (or creates) the slab under `dir`, locks it, and reads its
    /// headers. Slots past `max_slots` are cut off.
    pub fn open(
        dir: &Path,
        fingerprint: u64,
        payload_len: usize,
        max_slots: u32,
        direct_io: bool,
    ) -> io::Result<(Slab, Scan)> {
        fs::create_dir_all(dir)?;
        let num_legacy_removed = remove_legacy_files(dir)?;
        let path = slab_path(dir);
        let file =
            File::options().read(true).write(true).create(true).truncate(false).open(&path)?;
        lock_exclusive(&file).map_err(|e| match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!("{} is in use by another process", path.display()),
            ),
            _ => e,
        })?;
        let direct = if direct_io {
            match File::options().read(true).custom_flags(libc::O_DIRECT).open(&path) {
                Ok(f) => Some(f),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "KV disk tier: O_DIRECT is not supported here ({e}); reading through the page cache");
                    None
                }
            }
        } else {
            None
        };
        let slab = Slab {
            file,
            direct,
            fingerprint,
            payload_len,
            stride: stride(payload_len) as u64,
            path,
        };
        let mut scan = slab.scan(max_slots)?;
        scan.num_legacy_removed = num_legacy_removed;
        Ok((slab, scan))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn uses_direct_io(&self) -> bool {
        self.direct.is_some()
    }

    fn offset(&self, slot: u32) -> u64 {
        u64::from(slot) * self.stride
    }

    fn header_offset(&self, slot: u32) -> u64 {
        self.offset(slot) + self.payload_len as u64
    }

    fn scan(&self, max_slots: u32) -> io::Result<Scan> {
        let len = self.file.metadata()?.len();
        let mut num_slots = len / self.stride;
        // A partial slot at the end (an extension cut short), and slots
        // past the capacity, are cut off.
        let keep = num_slots.min(u64::from(max_slots));
        if len != keep * self.stride {
            self.file.set_len(keep * self.stride)?;
        }
        num_slots = keep;
        let headers = self.read_headers(num_slots as u32)?;
        let mut newest: FxHashMap<BlockHash, (u64, u32)> = FxHashMap::default();
        let mut free = Vec::new();
        let mut num_removed = 0;
        let mut next_seq = 0;
        for (slot, h) in headers.iter().enumerate() {
            let slot = slot as u32;
            match parse_header(h) {
                Ok(Some(hd))
                    if hd.fingerprint == self.fingerprint
                        && hd.payload_len == self.payload_len as u64 =>
                {
                    next_seq = next_seq.max(hd.seq + 1);
                    match newest.insert(hd.hash, (hd.seq, slot)) {
                        Some((seq, old)) if seq > hd.seq => {
                            newest.insert(hd.hash, (seq, old));
                            free.push(slot);
                        }
                        Some((_, old)) => free.push(old),
                        None => {}
                    }
                }
                Ok(None) => free.push(slot),
                Ok(Some(_)) | Err(_) => {
                    self.invalidate(slot);
                    num_removed += 1;
                    free.push(slot);
                }
            }
        }
        let mut blocks: Vec<(u64, BlockHash, u32)> =
            newest.into_iter().map(|(h, (seq, slot))| (seq, h, slot)).collect();
        blocks.sort_unstable();
        // Lowest slots reused first.
        free.sort_unstable_by(|a, b| b.cmp(a));
        Ok(Scan {
            blocks: blocks.into_iter().map(|(_, h, s)| (h, s)).collect(),
            free,
            num_slots: num_slots as u32,
            num_removed,
            next_seq,
            num_legacy_removed: 0,
        })
    }

    /// The headers of slots `0..num_slots`, read by several threads: on a
    /// cold device each is a random read, and a queue of several keeps an
    /// SSD busy (a 50 GB tier of 384 KiB blocks has about 130,000).
    fn read_headers(&self, num_slots: u32) -> io::Result<Vec<[u8; HEADER_LEN]>> {
        const READERS: u32 = 8;
        let mut headers = vec![[0u8; HEADER_LEN]; num_slots as usize];
        let per = num_slots.div_ceil(READERS).max(1) as usize;
        std::thread::scope(|scope| {
            let parts: Vec<_> = headers
                .chunks_mut(per)
                .enumerate()
                .map(|(i, part)| {
                    scope.spawn(move || -> io::Result<()> {
                        for (j, h) in part.iter_mut().enumerate() {
                            let slot = (i * per + j) as u32;
                            self.file.read_exact_at(h, self.header_offset(slot))?;
                        }
                        Ok(())
                    })
                })
                .collect();
            parts.into_iter().try_for_each(|p| {
                p.join().unwrap_or_else(|_| Err(io::Error::other("a header reader panicked")))
            })
        })?;
        Ok(headers)
    }

    /// Writes one block into `slot`: its old header is zeroed first (unless
    /// the slot is `fresh`: past the file's end at start-up and not written
    /// since) and the new one written last (see the module header).
    pub fn write(
        &self,
        slot: u32,
        fresh: bool,
        hash: BlockHash,
        seq: u64,
        payload: &[u8],
    ) -> Result<(), OffloadFailure> {
        debug_assert_eq!(payload.len(), self.payload_len);
        let at = self.header_offset(slot);
        let write = || -> io::Result<()> {
            if !fresh {
                self.file.write_all_at(&self.empty_tail(), at)?;
            }
            let mut crc = crc32fast::Hasher::new();
            let mut offset = self.offset(slot);
            for piece in payload.chunks(PIECE) {
                self.file.write_all_at(piece, offset)?;
                crc.update(piece);
                offset += piece.len() as u64;
            }
            // The header and the slot's padding: a whole slot ends the
            // file once written, so a partial slot at the end is a
            // cut-short store.
            let mut tail = self.empty_tail();
            tail[..HEADER_LEN].copy_from_slice(&header(
                self.fingerprint,
                hash,
                seq,
                payload.len(),
                crc.finalize(),
            ));
            self.file.write_all_at(&tail, at)
        };
        write().map_err(|e| {
            // Whatever part was written is not trusted: no valid header.
            self.invalidate(slot);
            io_failure(&e)
        })
    }

    /// Reads and verifies the block `hash` from `slot` into `out` (the
    /// payload length).
    pub fn read(
        &self,
        slot: u32,
        hash: BlockHash,
        out: &mut [u8],
        scratch: &mut ReadScratch,
    ) -> Result<(), OffloadFailure> {
        if out.len() != self.payload_len {
            return Err(OffloadFailure::Foreign);
        }
        let mut h = [0u8; HEADER_LEN];
        let mut crc = crc32fast::Hasher::new();
        match &self.direct {
            Some(direct) => {
                let buf = scratch.0.get_or_insert_with(|| AlignedBuf::new(self.stride as usize));
                let buf = buf.as_mut();
                direct.read_exact_at(buf, self.offset(slot)).map_err(|e| io_failure(&e))?;
                h.copy_from_slice(&buf[self.payload_len..self.payload_len + HEADER_LEN]);
                for (to, from) in out.chunks_mut(PIECE).zip(buf.chunks(PIECE)) {
                    to.copy_from_slice(&from[..to.len()]);
                    crc.update(to);
                }
            }
            None => {
                self.file
                    .read_exact_at(&mut h, self.header_offset(slot))
                    .map_err(|e| io_failure(&e))?;
                let mut offset = self.offset(slot);
                for piece in out.chunks_mut(PIECE) {
                    self.file.read_exact_at(piece, offset).map_err(|e| io_failure(&e))?;
                    crc.update(piece);
                    offset += piece.len() as u64;
                }
            }
        }
        let hd = parse_header(&h)?.ok_or(OffloadFailure::Truncated)?;
        if hd.fingerprint != self.fingerprint
            || hd.hash != hash
            || hd.payload_len != out.len() as u64
        {
            return Err(OffloadFailure::Foreign);
        }
        if crc.finalize() != hd.payload_crc {
            return Err(OffloadFailure::Corrupt);
        }
        Ok(())
    }

    /// Zeroes a slot's header: whatever it held is never served again.
    pub fn invalidate(&self, slot: u32) {
        let at = self.header_offset(slot);
        if self.file.metadata().is_ok_and(|m| at < m.len()) {
            let _ = self.file.write_all_at(&self.empty_tail(), at);
        }
    }

    /// A slot's tail (header and padding) holding no header. Written
    /// whole: with a page-multiple payload it is whole pages, so the kernel
    /// never reads a page back from the device to change part of it.
    fn empty_tail(&self) -> Vec<u8> {
        vec![0u8; self.stride as usize - self.payload_len]
    }
}

/// `flock(LOCK_EX | LOCK_NB)`: held until the file is closed (also when
/// the process dies).
fn lock_exclusive(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: the descriptor is open for the whole call; flock only
    // changes the lock state of the open file description.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Removes the files of the previous format (`<hash>.kv` per block and
/// their `.kv.tmp` leftovers): never read again.
fn remove_legacy_files(dir: &Path) -> io::Result<usize> {
    let mut n = 0;
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let stem = name.strip_suffix(".kv.tmp").or_else(|| name.strip_suffix(".kv"));
        if stem.is_some_and(|s| s.len() == 16 && u64::from_str_radix(s, 16).is_ok()) {
            fs::remove_file(entry.path())?;
            n += 1;
        }
    }
    Ok(n)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Being written: not loadable yet.
    Writing,
    Ready,
    /// A load found it damaged: never served again; its slot is freed
    /// when the last load holding it ends.
    Failed,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    state: State,
    /// Loads in flight.
    pins: u32,
    last_use: u64,
    slot: u32,
}

/// Room made for a new block by [`DiskIndex::begin_write`].
#[derive(Debug, PartialEq, Eq)]
pub struct Reserved {
    pub slot: u32,
    /// Past the slab's end at start-up and never written since: no old
    /// header to clear.
    pub fresh: bool,
    /// Blocks evicted to make room (least recently used first).
    pub evicted: Vec<BlockHash>,
}

/// What the disk tier holds, by block hash and slot, within a capacity in
/// blocks.
#[derive(Debug)]
pub struct DiskIndex {
    capacity: usize,
    entries: FxHashMap<BlockHash, Entry>,
    /// Ready, unpinned blocks by recency: (last_use, hash).
    lru: BTreeSet<(u64, BlockHash)>,
    tick: u64,
    /// Slots inside the file holding nothing; the last one is used next.
    free: Vec<u32>,
    /// Slots in use by the file so far; new slots extend it up to
    /// `max_slots`.
    num_slots: u32,
    max_slots: u32,
    /// Slots a full device could not fill: not used again in this run.
    num_retired: u32,
}

impl DiskIndex {
    /// An empty index of `capacity_blocks` slots.
    pub fn new(capacity_blocks: usize) -> Self {
        let max_slots = u32::try_from(capacity_blocks).unwrap_or(u32::MAX);
        Self {
            capacity: max_slots as usize,
            entries: FxHashMap::default(),
            lru: BTreeSet::new(),
            tick: 0,
            free: Vec::new(),
            num_slots: 0,
            max_slots,
            num_retired: 0,
        }
    }

    /// The index of what start-up found.
    pub fn from_scan(capacity_blocks: usize, scan: &Scan) -> Self {
        let mut index = Self::new(capacity_blocks);
        index.num_slots = scan.num_slots.min(index.max_slots);
        index.free = scan.free.iter().copied().filter(|&s| s < index.num_slots).collect();
        for &(hash, slot) in &scan.blocks {
            if slot < index.num_slots {
                index.insert_ready(hash, slot);
            }
        }
        index
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

    /// Adds a block found at start-up in `slot` (call oldest first).
    pub fn insert_ready(&mut self, hash: BlockHash, slot: u32) {
        let tick = self.next_tick();
        let entry = Entry { state: State::Ready, pins: 0, last_use: tick, slot };
        if let Some(old) = self.entries.insert(hash, entry) {
            self.lru.remove(&(old.last_use, hash));
            self.free.push(old.slot);
        }
        self.lru.insert((tick, hash));
    }

    fn remove(&mut self, hash: BlockHash) {
        if let Some(e) = self.entries.remove(&hash) {
            self.lru.remove(&(e.last_use, hash));
            self.free.push(e.slot);
        }
    }

    /// Reserves a slot for a new block, evicting the least recently used
    /// ready blocks if the tier is full; `None` (and nothing evicted) if
    /// not enough of them are idle. The block is then `Writing` until
    /// [`Self::finish_write`].
    pub fn begin_write(&mut self, hash: BlockHash) -> Option<Reserved> {
        debug_assert!(!self.contains(hash));
        let over = (self.entries.len() + 1).saturating_sub(self.capacity);
        let fresh = self.num_slots < self.max_slots;
        if self.capacity == 0
            || self.lru.len() < over
            || (over == 0 && self.free.is_empty() && !fresh)
        {
            return None;
        }
        let victims: Vec<BlockHash> = self.lru.iter().take(over).map(|&(_, h)| h).collect();
        for &v in &victims {
            self.remove(v);
        }
        let (slot, fresh) = match self.free.pop() {
            Some(slot) => (slot, false),
            None if fresh => {
                self.num_slots += 1;
                (self.num_slots - 1, true)
            }
            None => return None,
        };
        let tick = self.next_tick();
        self.entries.insert(hash, Entry { state: State::Writing, pins: 0, last_use: tick, slot });
        Some(Reserved { slot, fresh, evicted: victims })
    }

    /// A write ended: the block becomes loadable, or is forgotten. A slot
    /// the device had no room for is retired (see [`Self::shrink_to_fit`]).
    pub fn finish_write(&mut self, hash: BlockHash, result: Result<(), OffloadFailure>) {
        let Some(e) = self.entries.get_mut(&hash) else { return };
        match result {
            Ok(()) => {
                e.state = State::Ready;
                if e.pins == 0 {
                    self.lru.insert((e.last_use, hash));
                }
            }
            Err(OffloadFailure::NoSpace) => {
                self.entries.remove(&hash);
                self.num_retired += 1;
            }
            Err(_) => self.remove(hash),
        }
    }

    /// The device is full (a write failed with ENOSPC or EDQUOT): the
    /// tier holds at most what is on it now, so later writes evict the
    /// least recently used blocks to make room (reusing their slots,
    /// whose space the device has) instead of failing again. The capacity
    /// only ever shrinks (to at least one block).
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

    /// Pins a ready block for a load (it cannot be evicted meanwhile);
    /// its slot.
    pub fn pin(&mut self, hash: BlockHash) -> Option<u32> {
        let e = self.entries.get_mut(&hash)?;
        if e.state != State::Ready {
            return None;
        }
        if e.pins == 0 {
            self.lru.remove(&(e.last_use, hash));
        }
        e.pins += 1;
        Some(e.slot)
    }

    /// A load ended; a failed one drops the block (its slot is bad).
    pub fn unpin(&mut self, hash: BlockHash, ok: bool) {
        let tick = self.next_tick();
        let Some(e) = self.entries.get_mut(&hash) else { return };
        e.pins = e.pins.saturating_sub(1);
        if !ok || e.state == State::Failed {
            e.state = State::Failed;
            if e.pins == 0 {
                let slot = e.slot;
                self.entries.remove(&hash);
                self.free.push(slot);
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
        let busy = self.entries.values().filter(|e| e.pins > 0 || e.state != State::Ready).count();
        if busy != self.num_busy() {
            return Err(format!("{busy} blocks busy, {} counted", self.num_busy()));
        }
        // Every slot of the file is held by one block, free, or retired.
        let mut seen = vec![false; self.num_slots as usize];
        for s in self.entries.values().map(|e| e.slot).chain(self.free.iter().copied()) {
            match seen.get_mut(s as usize) {
                Some(x) if !*x => *x = true,
                Some(_) => return Err(format!("slot {s} used twice")),
                None => return Err(format!("slot {s} past the file's {} slots", self.num_slots)),
            }
        }
        let unaccounted = seen.iter().filter(|&&x| !x).count();
        if unaccounted != self.num_retired as usize {
            return Err(format!("{unaccounted} slots unaccounted, {} retired", self.num_retired));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
