//! Offload tier throughput and time to first token, as ratios against
//! baselines measured in the same run (best of several repetitions):
//!
//! - host store (device -> host) and host load (host -> device) of 256
//!   blocks of a Qwen2.5-0.5B-shaped KV (384 KiB each) against a plain
//!   memcpy of the same bytes;
//! - disk store of those blocks (write-through into the slab, until the
//!   writer reports them written) against a sequential write of the same
//!   bytes to a new file;
//! - disk load of those blocks (reader threads, verification included,
//!   into warm host slots) against a sequential read of one file of the
//!   same size, both from the page cache (the figure is the tier's
//!   overhead, not the device's), then both with the page cache dropped
//!   (`posix_fadvise(DONTNEED)`) before each repetition, and the tier with
//!   `O_DIRECT` against the same cold read;
//! - the disk rows run on a device whose copies cost nothing (a GPU's DMA
//!   costs the CPU nothing): they measure the tier's hop. Two more rows
//!   add a CPU backend's pool copies (device -> host -> disk and back),
//!   which move twice the bytes of their baseline;
//! - time to first token of an 8k-token prompt on a builtin-shaped model
//!   (8192-token context) served from host, from disk, and recomputed.
//!
//! `cargo bench -p strata-offload --bench tiers` (`-- tiers` or `-- ttft`
//! for one part)

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use strata_core::connector::{ConnectorMeta, ConnectorScheduler, ConnectorWorker, StoreSpec};
use strata_core::kv::hash::extend_block_hashes;
use strata_core::kv::BlockHash;
use strata_core::request::Request;
use strata_core::scheduler::SchedulerConfig;
use strata_core::testing::VecKv;
use strata_core::{
    BlockId, EngineCore, Executor, KvBlockIo, NewRequest, RequestId, SamplingParams,
};
use strata_model::weights::DType;
use strata_model::{load_cpu_executor, KvPoolConfig, LoadOptions, ModelSource};
use strata_offload::{open, DiskConfig, OffloadConfig, TransferType};

const BPB: usize = 24 * 2 * 16 * 128 * 4;
const N: usize = 256;
const REPS: usize = 5;
/// How long the bench waits for the connector between polls, woken early
/// by a completion, as the engine's driver does between steps when only
/// loads are in flight (a spinning waiter would take a core from the disk
/// threads).
const POLL: Duration = Duration::from_micros(200);

/// A device whose copies cost the CPU nothing, as an accelerator's DMA
/// does: the disk rows measured with it are the tier's own hop (the host
/// rows measure the copies to and from a CPU backend's pool).
struct NullKv;

impl KvBlockIo for NullKv {
    fn bytes_per_block(&self) -> usize {
        BPB
    }

    fn read_block(&self, _: BlockId, _: &mut [u8]) {}

    fn write_block(&mut self, _: BlockId, _: &[u8]) {}
}

/// A device pool of `BPB`-byte blocks.
fn pool(data: Vec<u8>) -> VecKv {
    VecKv { bytes_per_block: BPB, data }
}

fn best(mut f: impl FnMut() -> Duration) -> Duration {
    (0..REPS).map(|_| f()).min().unwrap()
}

fn gbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e9
}

fn request(id: u64, tokens: &[u32], bs: usize) -> Request {
    let new = NewRequest::new(tokens.to_vec(), SamplingParams::greedy(1));
    Request::new(RequestId::new(id).unwrap(), new, 0.0, bs)
}

fn tiers() {
    let bytes = N * BPB;
    let mut pool = pool((0..bytes).map(|i| (i % 251) as u8).collect());
    let mut dst = vec![0u8; bytes];
    let memcpy = best(|| {
        let t = Instant::now();
        dst.copy_from_slice(std::hint::black_box(&pool.data));
        t.elapsed()
    });

    let dir = tempfile::tempdir().unwrap();
    // The baseline's file, written (and flushed) long before it is read,
    // as the tier's slab is.
    let file = dir.path().join("sequential.bin");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&file).unwrap();
        f.write_all(&pool.data).unwrap();
        f.sync_all().unwrap();
    }
    let cfg = OffloadConfig {
        host_bytes: (2 * N * BPB) as u64,
        disk: Some(DiskConfig {
            dir: dir.path().to_path_buf(),
            capacity_bytes: 1 << 40,
            direct_io: false,
        }),
        fingerprint: 1,
        bytes_per_block: BPB,
        block_size: 16,
    };
    // Host store: N fresh blocks per repetition (distinct hashes), first
    // without a disk tier, then with write-through to disk (the writer
    // thread shares the host slot; the step copies nothing more).
    let mut round = 0u64;
    let mut store_into = |worker: &mut strata_offload::OffloadWorker, pool: &mut VecKv| {
        best(|| {
            round += 1;
            let stores = (0..N)
                .map(|i| StoreSpec {
                    block_id: BlockId(i as u32),
                    block_hash: BlockHash(round << 32 | i as u64),
                })
                .collect();
            let meta = ConnectorMeta { loads: vec![], stores };
            let t = Instant::now();
            worker.start_load_kv(&meta, pool);
            let d = t.elapsed();
            std::thread::sleep(Duration::from_millis(100)); // let writes land
            worker.get_finished(pool);
            d
        })
    };
    // Disk store: a fresh slab behind a host tier of N slots that already
    // holds N earlier blocks (written, so its buffers are warm and the
    // writer holds none of them); from the step that hands it N new blocks
    // until the writer reports all N on disk (the slab grows by N slots),
    // against a sequential write of the same bytes in block-sized chunks to
    // a new file (both into the page cache; sync before each repetition so
    // neither competes with old writeback).
    let mut store_round = 0u64;
    // With `overwrite`, the tier holds only N blocks: the new ones evict
    // the earlier ones and overwrite their slots (a full tier's steady
    // state).
    let mut disk_store = |kv: &mut dyn KvBlockIo, overwrite: bool| {
        best(|| {
            store_round += 1;
            let sub = dir.path().join(format!("store-{store_round}"));
            let capacity_bytes =
                if overwrite { (N * strata_offload::disk::stride(BPB)) as u64 } else { 1 << 40 };
            let (_, mut w) = open(OffloadConfig {
                host_bytes: (N * BPB) as u64,
                disk: Some(DiskConfig { dir: sub.clone(), capacity_bytes, direct_io: false }),
                ..cfg.clone()
            })
            .unwrap();
            let stores = |base: u64| ConnectorMeta {
                loads: vec![],
                stores: (0..N)
                    .map(|i| StoreSpec {
                        block_id: BlockId(i as u32),
                        block_hash: BlockHash(base + i as u64),
                    })
                    .collect(),
            };
            let written = |w: &mut strata_offload::OffloadWorker, kv: &mut dyn KvBlockIo| {
                let mut n = 0;
                while n < N {
                    n += transfers(&w.get_finished(kv), TransferType::HostToDisk);
                    w.wait_for_progress(POLL);
                }
            };
            w.start_load_kv(&stores(0), kv);
            written(&mut w, kv);
            let _ = std::process::Command::new("sync").status();
            let t = Instant::now();
            w.start_load_kv(&stores(1 << 32), kv);
            written(&mut w, kv);
            let d = t.elapsed();
            drop(w);
            let _ = std::fs::remove_dir_all(&sub);
            d
        })
    };
    let disk_store_hop = disk_store(&mut NullKv, false);
    let disk_store_full = disk_store(&mut NullKv, true);
    let disk_store_e2e = disk_store(&mut pool, false);
    let seq_write = best(|| {
        use std::io::Write;
        let _ = std::process::Command::new("sync").status();
        let path = dir.path().join("sequential-write.bin");
        let t = Instant::now();
        let mut f = std::fs::File::create(&path).unwrap();
        for chunk in pool.data.chunks(BPB) {
            f.write_all(chunk).unwrap();
        }
        drop(f);
        let d = t.elapsed();
        std::fs::remove_file(&path).unwrap();
        d
    });
    let (_, mut host_only) = open(OffloadConfig { disk: None, ..cfg.clone() }).unwrap();
    let store_host_only = store_into(&mut host_only, &mut pool);
    drop(host_only);
    let (mut sched, mut worker) = open(cfg.clone()).unwrap();
    let store = store_into(&mut worker, &mut pool);
    // Two prompts of N blocks each, A and B, stored (and written through).
    let prompt_of = |base: u32| -> (Vec<u32>, Vec<BlockHash>) {
        let tokens: Vec<u32> = (base..base + (N * 16 + 1) as u32).collect();
        let mut hashes = Vec::new();
        extend_block_hashes(&mut hashes, &tokens, 16, None);
        (tokens, hashes)
    };
    let prompts = [prompt_of(0), prompt_of(1 << 20)];
    for (_, hashes) in &prompts {
        let stores = hashes
            .iter()
            .enumerate()
            .map(|(i, &h)| StoreSpec { block_id: BlockId(i as u32), block_hash: h })
            .collect();
        worker.start_load_kv(&ConnectorMeta { loads: vec![], stores }, &mut pool);
        worker.get_finished(&mut pool);
    }
    let blocks: Vec<BlockId> = (0..N as u32).map(BlockId).collect();
    let mut id = 0;
    // Host load: a request whose prompt's blocks are all in the host tier.
    let (tokens, hashes) = &prompts[1];
    let load = best(|| {
        id += 1;
        let req = request(id, tokens, 16);
        let n = sched.get_num_new_matched_tokens(&req, 0);
        assert_eq!(n, N * 16);
        sched.update_state_after_alloc(&req, &blocks, hashes);
        let meta = sched.build_connector_meta();
        let t = Instant::now();
        worker.start_load_kv(&meta, &mut pool);
        let d = t.elapsed();
        assert_eq!(worker.get_finished(&mut pool).finished_recving.len(), 1);
        d
    });

    // Disk load: a fresh connector on the same directory (joining the old
    // one's writer first) whose host tier holds one prompt: loading A from
    // disk promotes it and evicts B, and the other way round, so every
    // repetition reads all N blocks from disk into warm host slots, as a
    // server's full host tier does.
    drop((sched, worker));
    // Let the kernel finish writing back what the stores wrote, so neither
    // the tier nor the baseline competes with writeback.
    let _ = std::process::Command::new("sync").status();
    let disk_cfg = |direct_io: bool| OffloadConfig {
        host_bytes: (N * BPB) as u64,
        disk: Some(DiskConfig {
            dir: dir.path().to_path_buf(),
            capacity_bytes: 1 << 40,
            direct_io,
        }),
        ..cfg.clone()
    };
    let mut k = 0;
    let mut from_disk = |sched: &mut strata_offload::OffloadScheduler,
                         worker: &mut strata_offload::OffloadWorker,
                         kv: &mut dyn KvBlockIo,
                         id: &mut u64,
                         drop_cache: bool| {
        best(|| {
            k += 1;
            if drop_cache {
                evict_from_page_cache(dir.path());
            }
            *id += 1;
            let (tokens, hashes) = &prompts[k % 2];
            let req = request(*id, tokens, 16);
            assert_eq!(sched.get_num_new_matched_tokens(&req, 0), N * 16, "all blocks on disk");
            sched.update_state_after_alloc(&req, &blocks, hashes);
            let meta = sched.build_connector_meta();
            let t = Instant::now();
            worker.start_load_kv(&meta, kv);
            let mut read = 0;
            loop {
                let out = worker.get_finished(kv);
                read += transfers(&out, TransferType::DiskToHost);
                if !out.finished_recving.is_empty() {
                    break;
                }
                worker.wait_for_progress(POLL);
            }
            let d = t.elapsed();
            assert_eq!(read, N, "every block came from disk");
            d
        })
    };
    let (mut sched, mut worker) = open(disk_cfg(false)).unwrap();
    let disk_hop = from_disk(&mut sched, &mut worker, &mut NullKv, &mut id, false);
    let disk_e2e = from_disk(&mut sched, &mut worker, &mut pool, &mut id, false);
    let mut sequential_read = || {
        use std::io::Read;
        // A sequential read in block-sized chunks into one buffer.
        let t = Instant::now();
        let mut f = std::fs::File::open(&file).unwrap();
        for chunk in dst.chunks_mut(BPB) {
            f.read_exact(chunk).unwrap();
        }
        std::hint::black_box(&dst);
        t.elapsed()
    };
    let seq = best(&mut sequential_read);
    // The same with the page cache dropped before each repetition (the
    // slab was synced above, so its pages can be dropped): what a
    // restarted server reading a real device sees.
    let disk_cold = from_disk(&mut sched, &mut worker, &mut NullKv, &mut id, true);
    drop((sched, worker));
    let (mut sched, mut worker) = open(disk_cfg(true)).unwrap();
    let disk_direct = from_disk(&mut sched, &mut worker, &mut NullKv, &mut id, true);
    drop((sched, worker));
    let seq_cold = best(|| {
        evict_from_page_cache(&file);
        sequential_read()
    });
    // Start-up: opening the slab reads every slot's header.
    let start_up = |drop_cache: bool| {
        best(|| {
            if drop_cache {
                evict_from_page_cache(dir.path());
            }
            let t = Instant::now();
            let (sched, worker) = open(disk_cfg(false)).unwrap();
            let d = t.elapsed();
            drop((sched, worker));
            d
        })
    };
    let (start_warm, start_cold) = (start_up(false), start_up(true));
    let slots = std::fs::metadata(strata_offload::disk::slab_path(
        &strata_offload::disk::model_dir(dir.path(), cfg.fingerprint),
    ))
    .unwrap()
    .len() as usize
        / strata_offload::disk::stride(BPB);

    println!(
        "| transfer ({N} blocks x {} KiB = {} MiB) | GB/s | baseline GB/s | ratio |",
        BPB / 1024,
        bytes >> 20
    );
    println!("|---|---|---|---|");
    for (name, d, base) in [
        ("host store (device -> host), no disk tier", store_host_only, memcpy),
        ("host store (device -> host), disk tier on (write-through queued)", store, memcpy),
        ("host load (host -> device)", load, memcpy),
        ("disk store (host -> disk, written through until reported)", disk_store_hop, seq_write),
        ("disk store, a full tier (overwriting evicted slots)", disk_store_full, seq_write),
        ("disk load (disk -> host)", disk_hop, seq),
        ("disk load, page cache dropped (disk -> host)", disk_cold, seq_cold),
        ("disk load, O_DIRECT (disk -> host)", disk_direct, seq_cold),
        ("CPU backend: disk store (device -> host -> disk)", disk_store_e2e, seq_write),
        ("CPU backend: disk load (disk -> host -> device)", disk_e2e, seq),
    ] {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} |",
            gbps(bytes, d),
            gbps(bytes, base),
            base.as_secs_f64() / d.as_secs_f64()
        );
    }
    println!(
        "(baselines: memcpy of the same bytes; sequential write and read of one {} MiB file, from the page cache or, for the cold rows, from the device)",
        bytes >> 20
    );
    println!(
        "start-up, opening a slab of {slots} slots: {:.1} ms from the page cache, {:.1} ms with it dropped",
        start_warm.as_secs_f64() * 1e3,
        start_cold.as_secs_f64() * 1e3
    );
}

/// How many transfers of this type an output reports (failures are not
/// expected here).
fn transfers(out: &strata_core::connector::ConnectorOutput, ty: TransferType) -> usize {
    let stats = out.stats.merged::<strata_offload::OffloadStats>();
    assert!(stats.failures.is_empty(), "{:?}", stats.failures);
    stats.transfers.iter().filter(|x| x.transfer_type == ty).count()
}

/// Drops the page-cache pages of a file, or of every file under a
/// directory (`posix_fadvise(DONTNEED)`; clean pages only, so sync first).
fn evict_from_page_cache(path: &std::path::Path) {
    use std::os::fd::AsRawFd;
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap().flatten() {
            evict_from_page_cache(&entry.path());
        }
        return;
    }
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: `f` is an open file for the whole call; the advice changes
    // only the kernel's caching.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise on {}", path.display());
}

/// TTFT of an 8k-token prompt: recomputed, from host, from disk. The
/// device prefix cache is off, so a repeat goes to the tiers.
fn ttft() {
    let mut config = strata_model::builtin::config();
    config.max_position_embeddings = 8192 + 64;
    let source = ModelSource::Dummy { config: Box::new(config), seed: 7, dtype: DType::F32 };
    let opts = LoadOptions {
        kv: KvPoolConfig { block_size: 16, num_blocks: Some(8192 / 16 + 32), memory_bytes: 0 },
        max_model_len: Some(8192 + 64),
        ..LoadOptions::default()
    };
    let prompt: Vec<u32> = (0..8192u32).map(|i| (i * 7 + 3) % 500 + 2).collect();
    let dir = tempfile::tempdir().unwrap();
    let engine = |host_bytes: u64| {
        let mut exec = load_cpu_executor(&source, &opts, &mut |_, _| {}).unwrap();
        let spec = exec.kv_cache_spec();
        let (sched, worker) = open(OffloadConfig {
            host_bytes,
            disk: Some(DiskConfig {
                dir: dir.path().to_path_buf(),
                capacity_bytes: 1 << 36,
                direct_io: false,
            }),
            fingerprint: exec.kv_fingerprint(),
            bytes_per_block: spec.bytes_per_block,
            block_size: spec.block_size,
        })
        .unwrap();
        exec.set_connector(Box::new(worker));
        let config = SchedulerConfig {
            max_num_seqs: 4,
            max_num_batched_tokens: 2048,
            block_size: 16,
            num_blocks: 0,
            max_model_len: 8192 + 64,
            enable_prefix_caching: false,
            ..SchedulerConfig::default()
        };
        (EngineCore::with_connector(exec, config, Some(Box::new(sched))), spec.bytes_per_block)
    };
    let first = |e: &mut EngineCore<_>, label: &str| -> Duration {
        let new = NewRequest::new(prompt.clone(), SamplingParams::greedy(1));
        let t = Instant::now();
        e.add_request(new, 0.0).unwrap();
        let mut now = 0.0;
        let mut ttft = None;
        for _ in 0..1_000_000 {
            if !e.has_unfinished() {
                break;
            }
            now += 1.0;
            let r = e.step(now);
            if let Some(rec) = r.prefill_records.first() {
                let d = t.elapsed();
                println!(
                    "  {label}: TTFT {:.1} ms (sources: compute {}, host {}, disk {})",
                    d.as_secs_f64() * 1e3,
                    rec.local_compute,
                    rec.host,
                    rec.disk
                );
                ttft = Some(d);
            }
        }
        ttft.expect("the request produced a token")
    };
    println!("TTFT of an 8192-token prompt (builtin-shaped model, 8k context):");
    let (mut e, bpb) = engine(1 << 30);
    let cold = first(&mut e, "recomputed");
    let host = first(&mut e, "from host");
    drop(e); // joins the writer: every block is on disk
    let (mut e, _) = engine(bpb as u64);
    let disk = first(&mut e, "from disk");
    println!(
        "  ratios: recompute/host {:.1}x, recompute/disk {:.1}x",
        cold.as_secs_f64() / host.as_secs_f64(),
        cold.as_secs_f64() / disk.as_secs_f64()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `cargo bench ... -- tiers` or `-- ttft` runs one part (for profiling).
    let part = |name: &str| args.is_empty() || args.iter().any(|a| a == name);
    if part("tiers") {
        tiers();
    }
    if part("ttft") {
        ttft();
    }
}
