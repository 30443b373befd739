//! The KV offload tiers end to end: a real server on the built-in model
//! with a small device pool, a host tier and a disk tier in a temporary
//! directory; repeated prompts come back from host, then from disk, then
//! from disk after a restart, and a damaged block is never served.
//! Outputs are compared with the cold run (greedy).

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{metric, post_json, serve_with, Server};
use serde_json::{json, Value};

/// Bytes of one KV block of the built-in model (4 layers, K and V, 16
/// slots of 2 heads x 64, f32).
const BLOCK_BYTES: f64 = (4 * 2 * 16 * 128 * 4) as f64;
const BPB: usize = BLOCK_BYTES as usize;

fn start(disk: &Path, policy: &str) -> (Server, String) {
    let host_gb = format!("{}", 100.0 * BLOCK_BYTES / 1e9);
    let dir = disk.to_str().unwrap().to_owned();
    serve_with(vec![
        "--num-kv-blocks",
        "48",
        "--kv-offload-host-gb",
        &host_gb,
        "--kv-offload-disk-dir",
        &dir,
        "--kv-offload-disk-gb",
        "1",
        "--kv-load-failure-policy",
        policy,
    ])
}

/// A distinct prompt of about 280 tokens (18 blocks).
fn prompt(seed: u32) -> String {
    (0..70).map(|i| format!("w{}x{} ", seed, (i * 7 + seed) % 97)).collect()
}

fn complete(url: &str, prompt: &str) -> (String, Value) {
    let r = post_json(
        &format!("{url}/v1/completions"),
        &json!({"model": "builtin", "prompt": prompt, "max_tokens": 8, "temperature": 0}),
    );
    (r["choices"][0]["text"].as_str().unwrap().to_owned(), r["usage"].clone())
}

fn source(usage: &Value, name: &str) -> u64 {
    usage["prompt_tokens_details"]["sources"][name].as_u64().unwrap()
}

/// The slab of the (one) model under the disk tier's directory.
fn slab(disk: &Path) -> PathBuf {
    let model = std::fs::read_dir(disk).unwrap().flatten().next().expect("a model directory");
    strata_offload::disk::slab_path(&model.path())
}

/// Offsets of the slots holding a block (a header with the magic: the
/// header is written last), read as an operator would, while the server
/// holds the slab.
fn block_slots(disk: &Path) -> Vec<u64> {
    let Ok(bytes) = std::fs::read(slab(disk)) else { return Vec::new() };
    let stride = strata_offload::disk::stride(BPB);
    (0..bytes.len() / stride)
        .map(|i| i * stride)
        .filter(|&o| &bytes[o + BPB..o + BPB + 8] == b"STRATAKV")
        .map(|o| o as u64)
        .collect()
}

/// Waits (bounded) until the writer has put at least `n` blocks on disk.
fn wait_for_blocks(disk: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while block_slots(disk).len() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(block_slots(disk).len() >= n, "{} blocks on disk, wanted {n}", block_slots(disk).len());
}

/// Every block the slab's headers vouch for passes verification (what a
/// start-up would trust is whole). Needs the slab unlocked (no server).
fn every_trusted_block_verifies(disk: &Path) -> usize {
    use strata_offload::disk::{ReadScratch, Slab};
    let model = slab(disk).parent().unwrap().to_path_buf();
    let fp = u64::from_str_radix(model.file_name().unwrap().to_str().unwrap(), 16).unwrap();
    let (slab, scan) = Slab::open(&model, fp, BPB, u32::MAX, false).unwrap();
    assert_eq!(scan.num_removed, 0, "no damaged header");
    for &(hash, slot) in &scan.blocks {
        let mut out = vec![0u8; BPB];
        slab.read(slot, hash, &mut out, &mut ReadScratch::default())
            .unwrap_or_else(|f| panic!("slot {slot} fails verification: {f:?}"));
    }
    scan.blocks.len()
}

#[test]
fn repeated_prompts_come_back_from_host_then_disk_then_disk_after_a_restart() {
    let disk = tempfile::tempdir().unwrap();
    let a = prompt(1);
    let (server, url) = start(disk.path(), "fail");
    let (cold, usage) = complete(&url, &a);
    let p = usage["prompt_tokens"].as_u64().unwrap();
    assert!(p > 200, "the prompt spans many blocks ({p} tokens)");
    assert_eq!(source(&usage, "local_compute"), p);

    // Three other prompts push A out of the 48-block device pool; the
    // 100-block host tier still has it.
    for seed in 2..5 {
        complete(&url, &prompt(seed));
    }
    let (text, usage) = complete(&url, &a);
    assert_eq!(text, cold, "a host hit gives the cold run's output");
    let full = (p - 1) / 16 * 16;
    assert_eq!(source(&usage, "host"), full, "{usage}");
    assert_eq!(source(&usage, "local_compute"), p - full);
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap(), full);

    // Five more prompts overflow the host tier too; A is on disk (every
    // block is written through).
    for seed in 5..10 {
        complete(&url, &prompt(seed));
    }
    let (text, usage) = complete(&url, &a);
    assert_eq!(text, cold, "a disk hit gives the cold run's output");
    assert_eq!(source(&usage, "disk"), full, "{usage}");
    assert!(metric(&url, "vllm:kv_offload_total_bytes_total{") > 0.0);
    wait_for_blocks(disk.path(), 9 * 17);
    drop(server);

    // A restart rebuilds the disk index: the first request hits disk.
    let (_server, url) = start(disk.path(), "fail");
    let (text, usage) = complete(&url, &a);
    assert_eq!(text, cold);
    assert_eq!(source(&usage, "disk"), full, "{usage}");
    assert_eq!(source(&usage, "local_compute"), p - full);
}

#[test]
fn damaged_blocks_are_never_served_and_output_stays_correct() {
    let disk = tempfile::tempdir().unwrap();
    let a = prompt(20);
    let (server, url) = start(disk.path(), "recompute");
    let (cold, usage) = complete(&url, &a);
    let p = usage["prompt_tokens"].as_u64().unwrap();
    wait_for_blocks(disk.path(), (p as usize) / 16);
    drop(server);

    // Damage every block but one in a different way: flip a payload
    // byte in some, clear the header of others (a store cut short), copy
    // another block's slot over the rest.
    let slots = block_slots(disk.path());
    let f = std::fs::File::options().read(true).write(true).open(slab(disk.path())).unwrap();
    let stride = strata_offload::disk::stride(BPB);
    let mut donor = vec![0u8; stride];
    f.read_exact_at(&mut donor, slots[0]).unwrap();
    for (i, &at) in slots.iter().enumerate().skip(1) {
        match i % 3 {
            0 => {
                let mut b = [0u8; 1];
                f.read_exact_at(&mut b, at + 100).unwrap();
                f.write_all_at(&[b[0] ^ 0x5a], at + 100).unwrap();
            }
            1 => f.write_all_at(&[0u8; strata_offload::disk::HEADER_LEN], at + BPB as u64).unwrap(),
            _ => f.write_all_at(&donor, at).unwrap(),
        }
    }
    let (server, url) = start(disk.path(), "recompute");
    let (text, usage) = complete(&url, &a);
    assert_eq!(text, cold, "correct output with every block but one damaged");
    let loaded = source(&usage, "disk");
    assert!(loaded <= 16, "at most the one intact block is served: {usage}");
    assert_eq!(source(&usage, "local_compute") + loaded, p);
    drop(server);
}

/// Runs `strata serve` with a disk tier at `disk`, expecting it to refuse
/// to start; its stderr.
fn refused_start(disk: &Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--port", "0", "--kv-offload-host-gb", "0.01", "--kv-offload-disk-dir"])
        .arg(disk)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the server started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A disk tier that cannot be opened is a configuration error, said at
/// start-up: a directory that cannot be created, a slab another engine
/// holds.
#[test]
fn an_unusable_disk_directory_or_a_slab_in_use_refuses_to_start() {
    let parent = tempfile::tempdir().unwrap();
    // A file where the directory should be: nothing can be created in it.
    let blocked = parent.path().join("not-a-dir");
    std::fs::write(&blocked, b"x").unwrap();
    let err = refused_start(&blocked);
    assert!(err.contains("KV disk tier at") && err.contains("not-a-dir"), "{err}");

    let shared = tempfile::tempdir().unwrap();
    let (_first, url) = start(shared.path(), "fail");
    complete(&url, &prompt(30));
    let err = refused_start(shared.path());
    assert!(err.contains("in use by another process"), "{err}");
}

/// A tmpfs of `bytes` mounted on a fresh directory, unmounted when dropped.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    /// Needs root (as CI runs); fails, saying so, otherwise.
    fn mount(bytes: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0.path()).status();
    }
}

/// The sum of the samples of `family` whose labels contain `labels`.
fn metric_with(url: &str, family: &str, labels: &str) -> f64 {
    let text =
        ureq::get(&format!("{url}/metrics")).call().unwrap().body_mut().read_to_string().unwrap();
    text.lines()
        .filter(|l| l.starts_with(family) && l.contains(labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The disk tier on a real full device (a 2 MiB tmpfs holds about 15
/// blocks; the tier is told it has 1 GB): stores that hit ENOSPC are
/// skipped and counted as `no_space`, the tier then holds what fits and
/// evicts old blocks to make room for new ones, every answer stays the cold
/// run's, nothing half-written is trusted, and a restart on the same device
/// serves its blocks.
#[test]
fn root_tmpfs_a_full_disk_is_counted_makes_room_and_serving_goes_on() {
    let disk = Tmpfs::mount(2 << 20);
    let (server, url) = start(disk.0.path(), "fail");
    let prompts: Vec<String> = (40..46).map(prompt).collect();
    let cold: Vec<String> = prompts.iter().map(|p| complete(&url, p).0).collect();
    // The writer thread works in the background: wait (bounded) for the
    // full device to be hit and for later stores to evict.
    let deadline = Instant::now() + Duration::from_secs(20);
    let no_space = || metric_with(&url, "strata:kv_offload_failures_total", "reason=\"no_space\"");
    let evictions = || metric_with(&url, "strata:kv_offload_evictions_total", "tier=\"disk\"");
    while (no_space() == 0.0 || evictions() == 0.0) && Instant::now() < deadline {
        // Stores after the first ENOSPC make room by evicting.
        complete(&url, &prompt(50));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(no_space() > 0.0, "ENOSPC stores are counted as no_space");
    assert!(evictions() > 0.0, "later stores evict old blocks to make room");
    let to_disk =
        || metric_with(&url, "vllm:kv_offload_total_bytes_total", "transfer_type=\"host_to_disk\"");
    let written = to_disk();
    assert!(written > 0.0);
    // Serving is unaffected: every prompt gives its cold answer.
    for (p, want) in prompts.iter().zip(&cold) {
        assert_eq!(&complete(&url, p).0, want);
    }
    // A new prompt is still written through (room was made for it).
    let fresh = prompt(60);
    let (fresh_cold, _) = complete(&url, &fresh);
    let deadline = Instant::now() + Duration::from_secs(10);
    while to_disk() <= written && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(to_disk() > written, "stores succeed again after the tier shrank");
    std::thread::sleep(Duration::from_millis(300));
    drop(server);
    // Nothing half-written that a start-up would trust: every slot with
    // a header verifies.
    assert!(every_trusted_block_verifies(disk.0.path()) > 0);
    // A restart on the same device: the freshest prompt comes from disk,
    // with the cold answer.
    let (_server, url) = start(disk.0.path(), "fail");
    let (text, usage) = complete(&url, &fresh);
    assert_eq!(text, fresh_cold);
    assert!(source(&usage, "disk") > 0, "{usage}");
}

/// The engine killed (SIGKILL) while its write-through is busy and loads
/// run, then restarted on the same directory, with a stray temporary file
/// from an interrupted write added: every answer equals a plain engine's
/// (no offloading), start-up removes the stray file, and every block the
/// restarted engine loads passes verification.
#[test]
fn killed_mid_write_then_restarted_serves_only_verified_blocks() {
    let disk = tempfile::tempdir().unwrap();
    let prompts: Vec<String> = (70..78).map(prompt).collect();
    let (_plain_server, plain) = serve_with(vec!["--num-kv-blocks", "48"]);
    let want: Vec<String> = prompts.iter().map(|p| complete(&plain, p).0).collect();

    let (mut server, url) = start(disk.path(), "fail");
    // Requests from another thread keep stores queued and loads running
    // (repeats of earlier prompts come back from the tiers) while the
    // process is killed.
    let busy = {
        let (url, prompts) = (url.clone(), prompts.clone());
        std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(5)))
                .build()
                .into();
            for p in prompts.iter().chain(prompts.iter()) {
                let body = json!({"prompt": p, "max_tokens": 8, "temperature": 0});
                if agent.post(&format!("{url}/v1/completions")).send_json(&body).is_err() {
                    return;
                }
            }
        })
    };
    wait_for_blocks(disk.path(), 17);
    server.kill();
    busy.join().unwrap();

    // What the kill left, looked at on a copy (opening the slab repairs
    // it): every slot a start-up would trust verifies.
    let slab_file = slab(disk.path());
    let copy = tempfile::tempdir().unwrap();
    let model_name = slab_file.parent().unwrap().file_name().unwrap();
    std::fs::create_dir(copy.path().join(model_name)).unwrap();
    std::fs::copy(&slab_file, copy.path().join(model_name).join("blocks.slab")).unwrap();
    assert!(every_trusted_block_verifies(copy.path()) >= 17);

    // Leftovers of interrupted writes: a store cut short while extending
    // the slab (half a slot at its end), and a temporary file of the
    // previous one-file-per-block format.
    let stride = strata_offload::disk::stride(BPB) as u64;
    let f = std::fs::File::options().write(true).open(&slab_file).unwrap();
    // (The kill may have left one already.)
    let len = f.metadata().unwrap().len();
    f.write_all_at(&vec![0x5a; BPB / 2], len).unwrap();
    drop(f);
    let stray = slab_file.with_file_name("00000000deadbeef.kv.tmp");
    std::fs::write(&stray, vec![0u8; 1000]).unwrap();

    let (_server, url) = start(disk.path(), "fail");
    assert!(!stray.exists(), "start-up removes temporary files of interrupted writes");
    let len = std::fs::metadata(&slab_file).unwrap().len();
    assert_eq!(len % stride, 0, "start-up cuts off the partial slot");
    for (p, w) in prompts.iter().zip(&want) {
        assert_eq!(&complete(&url, p).0, w);
    }
    let failed = metric_with(&url, "strata:kv_offload_failures_total", "op=\"load\"");
    assert_eq!(failed, 0.0, "no block the killed engine left failed verification");
    let loaded = metric_with(&url, "vllm:kv_offload_total_bytes_total", "disk_to_host");
    assert!(loaded > 0.0, "the restarted engine loaded blocks the killed one wrote");
}
