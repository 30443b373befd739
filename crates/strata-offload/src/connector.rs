//! The offload connector: both halves, sharing one state.
//!
//! Scheduler side ([`OffloadScheduler`]):
//! - lookup walks the request's blocks after its local hit, host first
//!   then disk, stopping at the first block in neither, and never covers
//!   the last prompt token; a match that needed the disk is booked under
//!   `disk` (docs/accounting.md, A14);
//! - at admission the matched blocks are pinned in their tier (so nothing
//!   evicts them before the load reads them) and a load is planned; the
//!   per-tier query and hit counters are committed then, once;
//! - prompt blocks that become full and computed are offered for storing
//!   (vLLM's `offload_prompt_only` default); blocks already in the host
//!   tier are only touched.
//!
//! Worker side ([`OffloadWorker`]), once per step before the model runs:
//! - stores copy device blocks into host slots (evicting the least
//!   recently used) and queue a copy of each for the disk writer thread
//!   (write-through, so blocks survive a restart); the scheduler holds each
//!   stored device block until its store is reported (A17);
//! - host loads copy slots into the request's device blocks at once; disk
//!   loads go to the reader thread and finish in a later step, the step
//!   loop never waits for them. A block read from disk is promoted into the
//!   host tier on its way to the device;
//! - a disk file that fails verification is deleted and its block reported
//!   invalid: the scheduler's load-failure policy does the rest.
//!
//! Transfer times are measured around each job's copies (one job per
//! step for stores, per request for host loads, per block for disk I/O).
//!
//! With events enabled, every block entering or leaving a tier is told to
//! [`TierEvents`] where it happens (see `events` for the rules).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use rustc_hash::FxHashMap;
use strata_core::connector::{
    ConnectorMeta, ConnectorOutput, ConnectorScheduler, ConnectorStats, ConnectorWorker, LoadSpec,
    RequestFinished, StoreSpec,
};
use strata_core::kv::{BlockHash, KvEventBatch, KvMedium};
use strata_core::request::Request;
use strata_core::{BlockId, KvBlockIo, RequestId, TokenSource};

use crate::stats::{
    OffloadFailure, OffloadOp, OffloadStats, OffloadTier, TierUsage, TransferRecord, TransferType,
};

use crate::disk;
use crate::events::{BlockInfo, TierEvents};
use crate::host::HostTier;
use disk_io::{DiskThreads, DiskTier, Done, Read, Write};

/// Disk writes queued beyond this many are skipped (and counted): the
/// writer is behind, and RAM must not fill with copies waiting for it.
const MAX_QUEUED_WRITES: usize = 4096;

#[derive(Clone, Debug)]
pub struct DiskConfig {
    pub dir: PathBuf,
    pub capacity_bytes: u64,
    /// Read with `O_DIRECT` (bypassing the page cache), where the file
    /// system supports it.
    pub direct_io: bool,
}

#[derive(Clone, Debug)]
pub struct OffloadConfig {
    pub host_bytes: u64,
    pub disk: Option<DiskConfig>,
    /// Identifies the model and KV layout (see the crate header).
    pub fingerprint: u64,
    pub bytes_per_block: usize,
    pub block_size: usize,
}

#[derive(Clone, Copy, Debug)]
enum Source {
    Host(u32),
    /// The block's slot in the slab.
    Disk(u32),
}

/// What a lookup found for a request not yet admitted.
#[derive(Clone, Copy, Debug, Default)]
struct Lookup {
    num_tokens: usize,
    uses_disk: bool,
    host_queried: u32,
    host_hits: u32,
    disk_queried: u32,
    disk_hits: u32,
}

#[derive(Debug, Default)]
struct InflightLoad {
    remaining: usize,
    cancelled: bool,
}

#[derive(Debug)]
struct Shared {
    block_size: usize,
    bytes_per_block: usize,
    host: HostTier,
    disk: Option<DiskTier>,
    stats: OffloadStats,
    lookups: FxHashMap<RequestId, Lookup>,
    plans: FxHashMap<RequestId, Vec<(BlockId, BlockHash, Source)>>,
    pending: ConnectorMeta,
    inflight: FxHashMap<RequestId, InflightLoad>,
    /// Store and load results of this step, reported by `get_finished`.
    out: ConnectorOutput,
    events: TierEvents,
}

impl Shared {
    fn has_disk(&self) -> bool {
        self.disk.is_some()
    }

    fn usage(&self) -> Vec<TierUsage> {
        let frac = |n: usize, of: usize| if of == 0 { 0.0 } else { n as f64 / of as f64 };
        let mut usage = vec![TierUsage {
            tier: OffloadTier::Host,
            residency: frac(self.host.num_used(), self.host.num_slots()),
            inflight: frac(
                self.host.num_pinned() + self.host.num_reserved(),
                self.host.num_slots(),
            ),
        }];
        if let Some(d) = &self.disk {
            usage.push(TierUsage {
                tier: OffloadTier::Disk,
                residency: frac(d.index.len(), d.index.capacity()),
                inflight: frac(d.index.num_busy(), d.index.capacity()),
            });
        }
        usage
    }

    /// Puts `data` in a host slot under `hash` (LRU eviction); `false`
    /// when every slot is pinned.
    fn host_insert(
        &mut self,
        hash: BlockHash,
        info: Option<BlockInfo>,
        fill: impl FnOnce(&mut [u8]),
    ) -> bool {
        let Some(a) = self.host.allocate(hash) else {
            self.stats.allocation_failures += 1;
            return false;
        };
        if let Some(old) = a.evicted {
            self.stats.evictions.push((OffloadTier::Host, 1));
            self.events.left(KvMedium::Host, old);
        }
        fill(self.host.slot_mut(a.slot));
        self.events.present(KvMedium::Host, hash, info);
        true
    }

    /// Queues a write-through of a host-resident block to disk.
    fn queue_disk_write(&mut self, hash: BlockHash, info: &Option<BlockInfo>, disk: &DiskThreads) {
        let Some(d) = &mut self.disk else { return };
        if d.index.contains(hash) {
            d.index.touch(hash);
            if d.index.is_ready(hash) {
                // A block from start-up: its tokens are known now.
                self.events.present(KvMedium::Disk, hash, info.clone());
            }
            return;
        }
        if d.queued_writes >= MAX_QUEUED_WRITES {
            self.stats.allocation_failures += 1;
            return;
        }
        // Shared, not copied: the slot is copied only if it is refilled
        // before the writer is done with it.
        let Some(data) = self.host.shared(hash) else { return };
        let Some(disk::Reserved { slot, fresh, evicted }) = d.index.begin_write(hash) else {
            self.stats.allocation_failures += 1;
            return;
        };
        if !evicted.is_empty() {
            self.stats.evictions.push((OffloadTier::Disk, evicted.len() as u32));
        }
        for victim in evicted {
            // Its slot is overwritten by a later write; nothing to delete.
            self.events.left(KvMedium::Disk, victim);
        }
        d.queued_writes += 1;
        let seq = d.next_seq;
        d.next_seq += 1;
        if disk.write(Write { hash, slot, fresh, seq, data }).is_err() {
            d.queued_writes -= 1;
            d.index.finish_write(hash, Err(OffloadFailure::Io));
        } else {
            self.events.write_queued(hash, info);
        }
    }

    /// Records the removal of a disk block if it is no longer indexed.
    fn disk_maybe_left(&mut self, hash: BlockHash) {
        if !self.events.is_enabled() {
            return;
        }
        if self.disk.as_ref().is_some_and(|d| !d.index.contains(hash)) {
            self.events.left(KvMedium::Disk, hash);
        }
    }
}

fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    // A panic while holding the lock is a bug elsewhere; the state itself
    // stays consistent between calls, so carry on with it.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Scheduler side.
#[derive(Debug)]
pub struct OffloadScheduler {
    shared: Arc<Mutex<Shared>>,
}

/// Worker side; owns the disk threads (joined on drop, after the queued
/// writes are done).
pub struct OffloadWorker {
    shared: Arc<Mutex<Shared>>,
    /// The disk threads and their queues (joined on drop).
    disk: Option<DiskThreads>,
    /// Read buffers of loads the host tier had no slot for, kept for the
    /// next ones (a fresh block-sized buffer costs a page fault per page).
    spare: Vec<Vec<u8>>,
    /// Completions taken while waiting for progress, handled by the next
    /// `get_finished`.
    early: Vec<Done>,
}

impl std::fmt::Debug for OffloadWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OffloadWorker").field("disk", &self.disk.is_some()).finish()
    }
}

/// Opens the tiers (rebuilding the disk index from the slab under `dir`)
/// and returns the connector's two halves. Fails if the disk tier's
/// directory or slab cannot be opened, or another process holds the slab.
pub fn open(config: OffloadConfig) -> std::io::Result<(OffloadScheduler, OffloadWorker)> {
    let bpb = config.bytes_per_block.max(1);
    let num_slots = (config.host_bytes / bpb as u64) as usize;
    let mut shared = Shared {
        block_size: config.block_size.max(1),
        bytes_per_block: bpb,
        host: HostTier::new(num_slots, bpb),
        disk: None,
        stats: OffloadStats::default(),
        lookups: FxHashMap::default(),
        plans: FxHashMap::default(),
        pending: ConnectorMeta::default(),
        inflight: FxHashMap::default(),
        out: ConnectorOutput::default(),
        events: TierEvents::new(config.block_size.max(1)),
    };
    let disk = match &config.disk {
        None => None,
        Some(d) => {
            let (tier, threads) = disk_io::open(d, config.fingerprint, bpb, &mut shared.stats)?;
            shared.disk = Some(tier);
            Some(threads)
        }
    };
    let shared = Arc::new(Mutex::new(shared));
    Ok((
        OffloadScheduler { shared: shared.clone() },
        OffloadWorker { shared, disk, spare: Vec::new(), early: Vec::new() },
    ))
}

impl ConnectorScheduler for OffloadScheduler {
    fn source(&self) -> TokenSource {
        TokenSource::Host
    }

    fn get_num_new_matched_tokens(&mut self, req: &Request, num_local_hit_tokens: usize) -> usize {
        let mut s = lock(&self.shared);
        let bs = s.block_size;
        let prompt = req.num_tokens();
        // Rule 3: the last token is always computed.
        let max_blocks = prompt.saturating_sub(1) / bs;
        let first = num_local_hit_tokens / bs;
        let mut look = Lookup {
            host_queried: prompt.saturating_sub(num_local_hit_tokens) as u32,
            ..Lookup::default()
        };
        let mut blocks = 0;
        for &h in req.block_hashes.iter().take(max_blocks).skip(first) {
            if s.host.contains(h) {
                look.host_hits += bs as u32;
            } else if s.disk.as_ref().is_some_and(|d| d.index.is_ready(h)) {
                look.disk_hits += bs as u32;
                look.uses_disk = true;
            } else {
                break;
            }
            blocks += 1;
        }
        if s.has_disk() {
            look.disk_queried = look.host_queried - look.host_hits;
        }
        look.num_tokens = blocks * bs;
        s.lookups.insert(req.id, look);
        look.num_tokens
    }

    fn source_for(&self, req: &Request) -> TokenSource {
        let s = lock(&self.shared);
        match s.lookups.get(&req.id) {
            Some(l) if l.uses_disk => TokenSource::Disk,
            _ => TokenSource::Host,
        }
    }

    fn update_state_after_alloc(
        &mut self,
        req: &Request,
        block_ids: &[BlockId],
        block_hashes: &[BlockHash],
    ) {
        let mut s = lock(&self.shared);
        if let Some(l) = s.lookups.remove(&req.id) {
            // Counted for the admission that happened (A4, A13).
            s.stats.tier_queries.push((OffloadTier::Host, l.host_queried));
            s.stats.tier_hits.push((OffloadTier::Host, l.host_hits));
            if s.has_disk() {
                s.stats.tier_queries.push((OffloadTier::Disk, l.disk_queried));
                s.stats.tier_hits.push((OffloadTier::Disk, l.disk_hits));
            }
        }
        if block_ids.is_empty() {
            return;
        }
        let mut plan = Vec::with_capacity(block_ids.len());
        // The request's index of the first external block (its local hit).
        let first = req.num_computed_tokens / s.block_size;
        let known = s.events.is_enabled()
            && req.block_hashes.get(first..first + block_hashes.len()) == Some(block_hashes);
        for (i, (&b, &h)) in block_ids.iter().zip(block_hashes).enumerate() {
            let source = if let Some(slot) = s.host.pin(h) {
                Some(Source::Host(slot))
            } else {
                s.disk.as_mut().and_then(|d| d.index.pin(h)).map(Source::Disk)
            };
            if known && source.is_some() {
                // The request's tokens: a block from start-up (or from
                // before events were on) can be announced now, and a disk
                // block will be once promoted into host.
                let info = s.events.info(req, first + i);
                let medium = match source {
                    Some(Source::Disk(_)) => {
                        s.events.load_planned(h, info.clone());
                        KvMedium::Disk
                    }
                    _ => KvMedium::Host,
                };
                s.events.present(medium, h, info);
            }
            match source {
                Some(src) => plan.push((b, h, src)),
                // Gone since the lookup (cannot happen within one step);
                // reported as a failed block, handled by policy.
                None => s.out.invalid_block_ids.push(b),
            }
        }
        s.pending.loads.push(LoadSpec {
            request_id: req.id,
            block_ids: block_ids.to_vec(),
            block_hashes: block_hashes.to_vec(),
        });
        s.plans.insert(req.id, plan);
    }

    fn build_connector_meta(&mut self) -> ConnectorMeta {
        std::mem::take(&mut lock(&self.shared).pending)
    }

    fn request_finished(&mut self, req: &Request, _block_ids: &[BlockId]) -> RequestFinished {
        let mut s = lock(&self.shared);
        s.lookups.remove(&req.id);
        if let Some(plan) = s.plans.remove(&req.id) {
            // Planned but not started: unpin and forget.
            s.pending.loads.retain(|l| l.request_id != req.id);
            for (_, h, src) in plan {
                match src {
                    Source::Host(slot) => s.host.unpin(slot),
                    Source::Disk(_) => {
                        if let Some(d) = &mut s.disk {
                            d.index.unpin(h, true);
                        }
                        s.events.load_ends(h);
                    }
                }
            }
        }
        match s.inflight.get_mut(&req.id) {
            Some(load) => {
                // Its disk reads still target its blocks: free them later.
                load.cancelled = true;
                RequestFinished::delay(true)
            }
            None => RequestFinished::free_now(),
        }
    }

    fn on_blocks_computed(
        &mut self,
        req: &Request,
        first_block: usize,
        block_ids: &[BlockId],
        block_hashes: &[BlockHash],
    ) -> Vec<BlockId> {
        let mut s = lock(&self.shared);
        if s.host.num_slots() == 0 {
            return Vec::new();
        }
        let bs = s.block_size;
        let prompt_blocks = req.num_prompt_tokens() / bs;
        let mut stored = Vec::new();
        for (i, (&b, &h)) in block_ids.iter().zip(block_hashes).enumerate() {
            if first_block + i >= prompt_blocks {
                break;
            }
            if s.host.contains(h) {
                s.host.touch(h);
                continue;
            }
            if s.pending.stores.iter().any(|st| st.block_hash == h) {
                continue;
            }
            s.pending.stores.push(StoreSpec { block_id: b, block_hash: h });
            let info = s.events.info(req, first_block + i);
            s.events.offered(h, info);
            stored.push(b);
        }
        stored
    }

    /// `CPU` and `DISK` events from now on (rules in `crate::events`).
    fn enable_events(&mut self) {
        lock(&self.shared).events.enable();
    }

    fn take_events(&mut self) -> KvEventBatch {
        lock(&self.shared).events.take()
    }
}

impl OffloadWorker {
    fn run_stores(&mut self, stores: &[StoreSpec], kv: &mut dyn KvBlockIo) {
        let mut s = lock(&self.shared);
        let mut copied = 0u32;
        let mut seconds = 0.0;
        for st in stores {
            s.out.finished_storing.push(st.block_id);
            let info = s.events.store_runs(st.block_hash);
            if s.host.contains(st.block_hash) {
                s.host.touch(st.block_hash);
                s.events.present(KvMedium::Host, st.block_hash, info);
                continue;
            }
            let start = Instant::now();
            let for_disk = if self.disk.is_some() { info.clone() } else { None };
            if s.host_insert(st.block_hash, info, |slot| kv.read_block(st.block_id, slot)) {
                seconds += start.elapsed().as_secs_f64();
                copied += 1;
                // Written through now: the block may leave the host tier
                // before this loop ends.
                if let Some(d) = &self.disk {
                    s.queue_disk_write(st.block_hash, &for_disk, d);
                }
            }
        }
        if copied > 0 {
            let bytes = u64::from(copied) * s.bytes_per_block as u64;
            s.stats.transfers.push(TransferRecord {
                transfer_type: TransferType::DeviceToHost,
                bytes,
                seconds,
                num_blocks: copied,
            });
        }
    }

    fn run_load(&mut self, load: &LoadSpec, kv: &mut dyn KvBlockIo) {
        let mut s = lock(&self.shared);
        let Some(plan) = s.plans.remove(&load.request_id) else { return };
        let start = Instant::now();
        let mut from_host = 0u32;
        let mut from_disk = 0usize;
        for &(b, h, src) in &plan {
            match src {
                Source::Host(slot) => {
                    kv.write_block(b, s.host.slot(slot));
                    s.host.unpin(slot);
                    s.host.touch(h);
                    from_host += 1;
                }
                Source::Disk(slot) => {
                    // Read straight into a host slot (the promotion), or
                    // into a spare buffer if every slot is busy.
                    let (host_slot, buf) = match s.host.reserve() {
                        Some((a, buf)) => {
                            if let Some(old) = a.evicted {
                                s.stats.evictions.push((OffloadTier::Host, 1));
                                s.events.left(KvMedium::Host, old);
                            }
                            (Some(a.slot), buf)
                        }
                        None => {
                            if s.host.num_slots() > 0 {
                                s.stats.allocation_failures += 1;
                            }
                            (None, self.spare.pop().unwrap_or_default())
                        }
                    };
                    let read =
                        Read { req: load.request_id, block: b, hash: h, slot, host_slot, buf };
                    let sent = match &self.disk {
                        Some(d) => d.read(read),
                        None => Err(read),
                    };
                    if let Err(read) = sent {
                        give_back(&mut s, &mut self.spare, read);
                        if let Some(d) = &mut s.disk {
                            d.index.unpin(h, true);
                        }
                        s.events.load_ends(h);
                        s.stats.failures.push((
                            OffloadTier::Disk,
                            OffloadOp::Load,
                            OffloadFailure::Io,
                        ));
                        s.out.invalid_block_ids.push(b);
                    } else {
                        from_disk += 1;
                    }
                }
            }
        }
        if from_host > 0 {
            let bytes = u64::from(from_host) * s.bytes_per_block as u64;
            s.stats.transfers.push(TransferRecord {
                transfer_type: TransferType::HostToDevice,
                bytes,
                seconds: start.elapsed().as_secs_f64(),
                num_blocks: from_host,
            });
        }
        if from_disk == 0 {
            s.out.finished_recving.push(load.request_id);
        } else {
            s.inflight
                .insert(load.request_id, InflightLoad { remaining: from_disk, cancelled: false });
        }
    }

    fn on_done(&mut self, done: Done, kv: &mut dyn KvBlockIo) {
        let mut s = lock(&self.shared);
        let bpb = s.bytes_per_block as u64;
        match done {
            Done::Write { hash, result, seconds } => {
                let info = s.events.write_ends(hash);
                if let Some(d) = &mut s.disk {
                    d.queued_writes = d.queued_writes.saturating_sub(1);
                    d.index.finish_write(hash, result);
                    if d.index.is_ready(hash) {
                        s.events.present(KvMedium::Disk, hash, info);
                    }
                }
                match result {
                    Ok(()) => s.stats.transfers.push(TransferRecord {
                        transfer_type: TransferType::HostToDisk,
                        bytes: bpb,
                        seconds,
                        num_blocks: 1,
                    }),
                    Err(f) => {
                        if f == OffloadFailure::NoSpace {
                            if let Some(d) = &mut s.disk {
                                let before = d.index.capacity();
                                d.index.shrink_to_fit();
                                if d.index.capacity() < before {
                                    tracing::warn!(
                                        "the disk tier's device is full: holding at most {} blocks \
                                         (was {before}); older blocks make room for new ones",
                                        d.index.capacity()
                                    );
                                }
                            }
                        }
                        s.stats.failures.push((OffloadTier::Disk, OffloadOp::Store, f));
                    }
                }
            }
            Done::Read { read, result, seconds } => {
                let (req, block, hash) = (read.req, read.block, read.hash);
                if let Some(d) = &mut s.disk {
                    d.index.unpin(hash, result.is_ok());
                }
                // A slot that failed verification is gone from the tier.
                s.disk_maybe_left(hash);
                let info = s.events.load_ends(hash);
                let cancelled = s.inflight.get(&req).is_none_or(|l| l.cancelled);
                match result {
                    Ok(()) => {
                        s.stats.transfers.push(TransferRecord {
                            transfer_type: TransferType::DiskToHost,
                            bytes: bpb,
                            seconds,
                            num_blocks: 1,
                        });
                        if !cancelled {
                            to_device(&mut s, block, &read.buf, kv);
                        }
                        // Promotion: the block was read into its host slot,
                        // so the next hit is served from RAM.
                        match read.host_slot {
                            Some(slot) => {
                                s.host.fill_reserved(slot, hash, read.buf);
                            }
                            None => keep_spare(&mut self.spare, read.buf),
                        }
                        if s.host.contains(hash) {
                            s.events.present(KvMedium::Host, hash, info);
                        }
                    }
                    Err(f) => {
                        give_back(&mut s, &mut self.spare, read);
                        tracing::warn!(
                            block_hash = hash.0,
                            reason = f.as_str(),
                            "KV disk tier: a block failed to load; its slot is cleared"
                        );
                        s.stats.failures.push((OffloadTier::Disk, OffloadOp::Load, f));
                        s.out.invalid_block_ids.push(block);
                    }
                }
                if let Some(load) = s.inflight.get_mut(&req) {
                    load.remaining -= 1;
                    if load.remaining == 0 {
                        s.inflight.remove(&req);
                        s.out.finished_recving.push(req);
                    }
                }
            }
        }
    }
}

/// Copies a block read from disk into its device block.
fn to_device(s: &mut Shared, block: BlockId, data: &[u8], kv: &mut dyn KvBlockIo) {
    let start = Instant::now();
    kv.write_block(block, data);
    s.stats.transfers.push(TransferRecord {
        transfer_type: TransferType::HostToDevice,
        bytes: s.bytes_per_block as u64,
        seconds: start.elapsed().as_secs_f64(),
        num_blocks: 1,
    });
}

/// Spare read buffers kept at most (beyond, they are freed).
const MAX_SPARE: usize = 64;

fn keep_spare(spare: &mut Vec<Vec<u8>>, buf: Vec<u8>) {
    if spare.len() < MAX_SPARE {
        spare.push(buf);
    }
}

/// A read that will not complete: its buffer goes back where it came from.
fn give_back(s: &mut Shared, spare: &mut Vec<Vec<u8>>, read: Read) {
    match read.host_slot {
        Some(slot) => s.host.release(slot, read.buf),
        None => keep_spare(spare, read.buf),
    }
}

impl ConnectorWorker for OffloadWorker {
    fn start_load_kv(&mut self, meta: &ConnectorMeta, kv: &mut dyn KvBlockIo) {
        // Stores first: they read blocks computed in earlier steps, and a
        // load never targets a block being stored (the scheduler holds it).
        if !meta.stores.is_empty() {
            self.run_stores(&meta.stores, kv);
        }
        for load in &meta.loads {
            self.run_load(load, kv);
        }
    }

    fn get_finished(&mut self, kv: &mut dyn KvBlockIo) -> ConnectorOutput {
        let mut done = std::mem::take(&mut self.early);
        if let Some(d) = &self.disk {
            done.extend(d.completed());
        }
        for d in done {
            self.on_done(d, kv);
        }
        let mut s = lock(&self.shared);
        let mut out = std::mem::take(&mut s.out);
        let mut stats = std::mem::take(&mut s.stats);
        stats.usage = s.usage();
        out.stats = ConnectorStats::of(stats);
        out
    }

    /// Wakes as soon as a disk read completes (writes hold no request up).
    fn wait_for_progress(&mut self, timeout: std::time::Duration) {
        match &self.disk {
            Some(disk) => {
                if let Some(d) = disk.wait_for_read(timeout) {
                    self.early.push(d);
                }
            }
            None => std::thread::sleep(timeout),
        }
    }
}

mod disk_io;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod event_tests;
