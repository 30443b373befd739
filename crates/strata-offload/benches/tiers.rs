//! Offload tier throughput and time to first token, as ratios against
//! baselines measured in the same run (best of several repetitions):
//!
//! - host store (device -> host) and host load (host -> device) of 256
//!   blocks of a Qwen2.5-0.5B-shaped KV (393 KiB each) against a plain
//!   memcpy of the same bytes;
//! - disk load of those blocks (reader thread, verification included)
//!   against a sequential read of one file of the same size (both from the
//!   page cache: the figure is the tier's overhead, not the device's);
//! - time to first token of an 8k-token prompt on a builtin-shaped model
//!   (8192-token context) served from host, from disk, and recomputed.
//!
//! `cargo bench -p strata-offload --bench tiers`

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use strata_core::connector::{ConnectorMeta, ConnectorScheduler, ConnectorWorker, StoreSpec};
use strata_core::kv::hash::extend_block_hashes;
use strata_core::kv::BlockHash;
use strata_core::request::Request;
use strata_core::scheduler::SchedulerConfig;
use strata_core::testing::VecKv;
use strata_core::{BlockId, EngineCore, Executor, NewRequest, RequestId, SamplingParams};
use strata_model::weights::DType;
use strata_model::{load_cpu_executor, KvPoolConfig, LoadOptions, ModelSource};
use strata_offload::{open, DiskConfig, OffloadConfig};

const BPB: usize = 24 * 2 * 16 * 128 * 4;
const N: usize = 256;
const REPS: usize = 5;

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
    // as the tier's block files are.
    let file = dir.path().join("sequential.bin");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&file).unwrap();
        f.write_all(&pool.data).unwrap();
        f.sync_all().unwrap();
    }
    let cfg = OffloadConfig {
        host_bytes: (2 * N * BPB) as u64,
        disk: Some(DiskConfig { dir: dir.path().to_path_buf(), capacity_bytes: 1 << 40 }),
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
    // Disk store: from the step that hands N blocks to a fresh connector
    // until the writer reports all N on disk, against a sequential write of
    // the same bytes in block-sized chunks (both into the page cache; sync
    // before each repetition so neither competes with old writeback).
    let mut store_round = 0u64;
    let disk_store = best(|| {
        store_round += 1;
        let _ = std::process::Command::new("sync").status();
        let sub = dir.path().join(format!("store-{store_round}"));
        let (_, mut w) = open(OffloadConfig {
            disk: Some(DiskConfig { dir: sub.clone(), capacity_bytes: 1 << 40 }),
            ..cfg.clone()
        });
        let stores = (0..N)
            .map(|i| StoreSpec { block_id: BlockId(i as u32), block_hash: BlockHash(i as u64) })
            .collect();
        let t = Instant::now();
        w.start_load_kv(&ConnectorMeta { loads: vec![], stores }, &mut pool);
        let mut written = 0;
        while written < N {
            let out = w.get_finished(&mut pool);
            written += out
                .stats
                .merged::<strata_offload::OffloadStats>()
                .transfers
                .iter()
                .filter(|x| x.transfer_type == strata_offload::TransferType::HostToDisk)
                .count();
            std::thread::yield_now();
        }
        let d = t.elapsed();
        drop(w);
        let _ = std::fs::remove_dir_all(&sub);
        d
    });
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
    let (_, mut host_only) = open(OffloadConfig { disk: None, ..cfg.clone() });
    let store_host_only = store_into(&mut host_only, &mut pool);
    drop(host_only);
    let (mut sched, mut worker) = open(cfg.clone());
    let store = store_into(&mut worker, &mut pool);
    // Host load: a request whose prompt's blocks are all in the host tier.
    let tokens: Vec<u32> = (0..(N * 16 + 1) as u32).collect();
    let mut hashes = Vec::new();
    extend_block_hashes(&mut hashes, &tokens, 16, None);
    let stores = hashes
        .iter()
        .enumerate()
        .map(|(i, &h)| StoreSpec { block_id: BlockId(i as u32), block_hash: h })
        .collect();
    worker.start_load_kv(&ConnectorMeta { loads: vec![], stores }, &mut pool);
    worker.get_finished(&mut pool);
    let blocks: Vec<BlockId> = (0..N as u32).map(BlockId).collect();
    let mut id = 0;
    let load = best(|| {
        id += 1;
        let req = request(id, &tokens, 16);
        let n = sched.get_num_new_matched_tokens(&req, 0);
        assert_eq!(n, N * 16);
        sched.update_state_after_alloc(&req, &blocks, &hashes);
        let meta = sched.build_connector_meta();
        let t = Instant::now();
        worker.start_load_kv(&meta, &mut pool);
        let d = t.elapsed();
        assert_eq!(worker.get_finished(&mut pool).finished_recving.len(), 1);
        d
    });

    // Disk load: a fresh connector (empty host tier) on the same
    // directory; wait for the writer to finish first.
    drop((sched, worker));
    // Let the kernel finish writing back what the stores wrote, so neither
    // the tier nor the baseline competes with writeback.
    let _ = std::process::Command::new("sync").status();
    let (mut sched, mut worker) = open(OffloadConfig { host_bytes: BPB as u64, ..cfg });
    let disk = best(|| {
        id += 1;
        let req = request(id, &tokens, 16);
        let n = sched.get_num_new_matched_tokens(&req, 0);
        assert_eq!(n, N * 16, "all blocks on disk");
        sched.update_state_after_alloc(&req, &blocks, &hashes);
        let meta = sched.build_connector_meta();
        let t = Instant::now();
        worker.start_load_kv(&meta, &mut pool);
        loop {
            if !worker.get_finished(&mut pool).finished_recving.is_empty() {
                break;
            }
            std::thread::yield_now();
        }
        t.elapsed()
    });
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
    // files were synced above, so their pages can be dropped): what a
    // restarted server reading a real device sees.
    let tier_dir = dir.path().to_path_buf();
    let disk_cold = best(|| {
        evict_from_page_cache(&tier_dir);
        id += 1;
        let req = request(id, &tokens, 16);
        assert_eq!(sched.get_num_new_matched_tokens(&req, 0), N * 16);
        sched.update_state_after_alloc(&req, &blocks, &hashes);
        let meta = sched.build_connector_meta();
        let t = Instant::now();
        worker.start_load_kv(&meta, &mut pool);
        while worker.get_finished(&mut pool).finished_recving.is_empty() {
            std::thread::yield_now();
        }
        t.elapsed()
    });
    let seq_cold = best(|| {
        evict_from_page_cache(&file);
        sequential_read()
    });

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
        ("disk store (host -> disk, write-through until written)", disk_store, seq_write),
        ("disk load (disk -> host -> device)", disk, seq),
        ("disk load, page cache dropped", disk_cold, seq_cold),
    ] {
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} |",
            gbps(bytes, d),
            gbps(bytes, base),
            base.as_secs_f64() / d.as_secs_f64()
        );
    }
    println!(
        "(baselines: memcpy of the same bytes; sequential write and read of one {} MiB file, from the page cache or, for the cold row, from the device)",
        bytes >> 20
    );
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
            disk: Some(DiskConfig { dir: dir.path().to_path_buf(), capacity_bytes: 1 << 36 }),
            fingerprint: exec.kv_fingerprint(),
            bytes_per_block: spec.bytes_per_block,
            block_size: spec.block_size,
        });
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
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    tiers();
    ttft();
}
