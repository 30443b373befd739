//! The offload connector's disk threads: readers (loads wait on them) and
//! a writer (stores never delay loads), each taking from its own queue,
//! and what they send back.

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use strata_core::kv::BlockHash;
use strata_core::{BlockId, RequestId};

use super::DiskConfig;
use crate::disk::{self, DiskIndex};
use crate::stats::{OffloadFailure, OffloadOp, OffloadStats, OffloadTier};

/// A disk read: into `buf`, the buffer of the reserved host slot
/// `host_slot` (promotion without a copy), or a spare one (either may be
/// empty: the reader sizes it).
pub(super) struct Read {
    pub(super) req: RequestId,
    pub(super) block: BlockId,
    pub(super) hash: BlockHash,
    pub(super) slot: u32,
    pub(super) host_slot: Option<u32>,
    pub(super) buf: Vec<u8>,
}

/// A disk write: the block `hash` into `slot` (`fresh`: never written by
/// this run and past the slab's end at start-up).
pub(super) struct Write {
    pub(super) hash: BlockHash,
    pub(super) slot: u32,
    pub(super) fresh: bool,
    pub(super) seq: u64,
    pub(super) data: Arc<Vec<u8>>,
}

pub(super) enum Done {
    Read { read: Read, result: Result<(), OffloadFailure>, seconds: f64 },
    Write { hash: BlockHash, result: Result<(), OffloadFailure>, seconds: f64 },
}

#[derive(Debug)]
pub(super) struct DiskTier {
    pub(super) index: DiskIndex,
    pub(super) queued_writes: usize,
    /// Sequence number of the next write (start-up's LRU order).
    pub(super) next_seq: u64,
}

/// Threads reading blocks from the slab: reads are independent, so several run at
/// once (page-cache copies and checksums use more than one core; a cold
/// device sees several requests in flight).
const NUM_READERS: usize = 4;
/// Threads writing blocks into the slab. Writes to one file serialize on
/// its inode lock, so a second writer only overlaps the checksums: no gain
/// measured (`cargo bench -p strata-offload --bench tiers`, 1 against 2
/// writers, four runs interleaved).
const NUM_WRITERS: usize = 1;

/// `n` threads named `name` running the job handler `make()` builds for
/// each, on jobs from one queue, until it closes or a handler says stop.
fn spawn_pool<T: Send + 'static, F: FnMut(T) -> bool>(
    name: &str,
    n: usize,
    jobs: mpsc::Receiver<T>,
    make: impl Fn() -> F + Send + Clone + 'static,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    let jobs = Arc::new(Mutex::new(jobs));
    (0..n)
        .map(|i| {
            let (jobs, make) = (jobs.clone(), make.clone());
            std::thread::Builder::new().name(format!("{name}-{i}")).spawn(move || {
                let mut handle = make();
                loop {
                    // Hold the queue's lock only to take the next job.
                    let job = jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok(job) = job else { break };
                    if !handle(job) {
                        break;
                    }
                }
            })
        })
        .collect()
}

/// The disk threads, their queues, and what they send back (completed
/// reads and writes apart: the engine waits for reads only, as a store
/// never holds a request up). Dropping it closes the queues and joins the
/// threads once they have done what was queued (so blocks written through
/// reach the disk).
pub(super) struct DiskThreads {
    /// The readers' and the writer's queues; `None` once closed.
    queues: Option<(mpsc::Sender<Read>, mpsc::Sender<Write>)>,
    read_done: mpsc::Receiver<Done>,
    write_done: mpsc::Receiver<Done>,
    threads: Vec<JoinHandle<()>>,
}

impl DiskThreads {
    /// Queues a read; gives it back if the readers are gone.
    pub(super) fn read(&self, read: Read) -> Result<(), Read> {
        match &self.queues {
            Some((reads, _)) => reads.send(read).map_err(|e| e.0),
            None => Err(read),
        }
    }

    /// Queues a write; gives it back if the writer is gone.
    pub(super) fn write(&self, write: Write) -> Result<(), Write> {
        match &self.queues {
            Some((_, writes)) => writes.send(write).map_err(|e| e.0),
            None => Err(write),
        }
    }

    /// Everything completed so far, reads first.
    pub(super) fn completed(&self) -> impl Iterator<Item = Done> + '_ {
        self.read_done.try_iter().chain(self.write_done.try_iter())
    }

    /// Waits at most `timeout` for a read to complete.
    pub(super) fn wait_for_read(&self, timeout: std::time::Duration) -> Option<Done> {
        self.read_done.recv_timeout(timeout).ok()
    }
}

impl Drop for DiskThreads {
    fn drop(&mut self) {
        // Closing the queues ends the threads' loops after the queued jobs.
        self.queues = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Opens the slab under the configured directory (rebuilding the index
/// from it) and starts the disk threads. Damaged slots found are counted
/// in `stats`.
pub(super) fn open(
    d: &DiskConfig,
    fingerprint: u64,
    bpb: usize,
    stats: &mut OffloadStats,
) -> std::io::Result<(DiskTier, DiskThreads)> {
    let mut threads = Vec::new();
    let dir = disk::model_dir(&d.dir, fingerprint);
    let capacity = (d.capacity_bytes / disk::stride(bpb) as u64) as usize;
    let max_slots = u32::try_from(capacity).unwrap_or(u32::MAX);
    let (slab, scan) =
        disk::Slab::open(&dir, fingerprint, bpb, max_slots, d.direct_io).map_err(|e| {
            std::io::Error::new(e.kind(), format!("KV disk tier at {}: {e}", dir.display()))
        })?;
    for _ in 0..scan.num_removed {
        stats.failures.push((OffloadTier::Disk, OffloadOp::Load, OffloadFailure::Corrupt));
    }
    let index = DiskIndex::from_scan(capacity, &scan);
    tracing::info!(
        slab = %slab.path().display(),
        blocks = index.len(),
        capacity,
        damaged = scan.num_removed,
        old_format_files_removed = scan.num_legacy_removed,
        direct_io = slab.uses_direct_io(),
        "KV disk tier opened"
    );
    let slab = Arc::new(slab);
    let (reads_tx, reads_rx) = mpsc::channel::<Read>();
    let (writes_tx, writes_rx) = mpsc::channel::<Write>();
    let (read_done_tx, read_done_rx) = mpsc::channel::<Done>();
    let (write_done_tx, write_done_rx) = mpsc::channel::<Done>();
    // Readers (loads wait on them) and writers (stores never delay
    // loads) each take from their own queue.
    let (read_slab, read_done) = (slab.clone(), read_done_tx);
    threads.extend(spawn_pool("strata-kv-read", NUM_READERS, reads_rx, move || {
        let (slab, done) = (read_slab.clone(), read_done.clone());
        let mut scratch = disk::ReadScratch::default();
        move |mut read: Read| {
            let start = Instant::now();
            read.buf.resize(bpb, 0);
            let result = slab.read(read.slot, read.hash, &mut read.buf, &mut scratch);
            if result.is_err() {
                // Never trusted again, by this run or the next.
                slab.invalidate(read.slot);
            }
            let seconds = start.elapsed().as_secs_f64();
            done.send(Done::Read { read, result, seconds }).is_ok()
        }
    })?);
    threads.extend(spawn_pool("strata-kv-write", NUM_WRITERS, writes_rx, move || {
        let (slab, done) = (slab.clone(), write_done_tx.clone());
        move |w: Write| {
            let start = Instant::now();
            let result = slab.write(w.slot, w.fresh, w.hash, w.seq, &w.data);
            let hash = w.hash;
            let seconds = start.elapsed().as_secs_f64();
            done.send(Done::Write { hash, result, seconds }).is_ok()
        }
    })?);
    let tier = DiskTier { index, queued_writes: 0, next_seq: scan.next_seq };
    let threads = DiskThreads {
        queues: Some((reads_tx, writes_tx)),
        read_done: read_done_rx,
        write_done: write_done_rx,
        threads,
    };
    Ok((tier, threads))
}
