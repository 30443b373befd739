//! The KV offload tiers end to end: a real server on the built-in model
//! with a small device pool, a host tier and a disk tier in a temporary
//! directory; repeated prompts come back from host, then from disk, then
//! from disk after a restart, and a damaged block file is never served.
//! Outputs are compared with the cold run (greedy).

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{metric, post_json, serve_with, Server};
use serde_json::{json, Value};

/// Bytes of one KV block of the built-in model (4 layers, K and V, 16
/// slots of 2 heads x 64, f32).
const BLOCK_BYTES: f64 = (4 * 2 * 16 * 128 * 4) as f64;

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

fn block_files(disk: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for model in std::fs::read_dir(disk).unwrap().flatten() {
        for f in std::fs::read_dir(model.path()).unwrap().flatten() {
            if f.path().extension().is_some_and(|x| x == "kv") {
                files.push(f.path());
            }
        }
    }
    files
}

/// Waits (bounded) until the writer has put at least `n` blocks on disk.
fn wait_for_files(disk: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while block_files(disk).len() < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(block_files(disk).len() >= n, "{} block files, wanted {n}", block_files(disk).len());
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
    wait_for_files(disk.path(), 9 * 17);
    drop(server);

    // A restart rebuilds the disk index: the first request hits disk.
    let (_server, url) = start(disk.path(), "fail");
    let (text, usage) = complete(&url, &a);
    assert_eq!(text, cold);
    assert_eq!(source(&usage, "disk"), full, "{usage}");
    assert_eq!(source(&usage, "local_compute"), p - full);
}

#[test]
fn damaged_block_files_are_never_served_and_output_stays_correct() {
    let disk = tempfile::tempdir().unwrap();
    let a = prompt(20);
    let (server, url) = start(disk.path(), "recompute");
    let (cold, usage) = complete(&url, &a);
    let p = usage["prompt_tokens"].as_u64().unwrap();
    wait_for_files(disk.path(), (p as usize) / 16);
    drop(server);

    // Damage every file in a different way: flip a byte in some, cut
    // others short, swap in another block's file for the rest.
    let files = block_files(disk.path());
    let donor = std::fs::read(&files[0]).unwrap();
    for (i, f) in files.iter().enumerate().skip(1) {
        let mut bytes = std::fs::read(f).unwrap();
        match i % 3 {
            0 => bytes[100] ^= 0x5a,
            1 => bytes.truncate(bytes.len() - 7),
            _ => bytes = donor.clone(),
        }
        std::fs::write(f, &bytes).unwrap();
    }
    let (server, url) = start(disk.path(), "recompute");
    let (text, usage) = complete(&url, &a);
    assert_eq!(text, cold, "correct output with every block but one damaged");
    let loaded = source(&usage, "disk");
    assert!(loaded <= 16, "at most the one intact block is served: {usage}");
    assert_eq!(source(&usage, "local_compute") + loaded, p);
    drop(server);
}

#[test]
fn an_unwritable_disk_directory_is_counted_and_serving_goes_on() {
    let parent = tempfile::tempdir().unwrap();
    // A file where the directory should be: nothing can be created in it.
    let blocked = parent.path().join("not-a-dir");
    std::fs::write(&blocked, b"x").unwrap();
    let (_server, url) = start(&blocked, "fail");
    let a = prompt(30);
    let (cold, _) = complete(&url, &a);
    let (again, _) = complete(&url, &a);
    assert_eq!(cold, again);
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&url, "strata:kv_offload_failures_total{") == 0.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(metric(&url, "strata:kv_offload_failures_total{") > 0.0, "failed stores are counted");
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

/// The disk tier on a real full device (a 2 MiB tmpfs holds about 30
/// block files; the tier is told it has 1 GB): stores that hit ENOSPC are
/// skipped and counted as `no_space`, the tier then holds what fits and
/// evicts old blocks to make room for new ones, every answer stays the cold
/// run's, no half-written file is left, and a restart on the same device
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
    // Nothing half-written: only whole block files.
    for model in std::fs::read_dir(disk.0.path()).unwrap().flatten() {
        for f in std::fs::read_dir(model.path()).unwrap().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            assert!(name.ends_with(".kv"), "stray file {name}");
        }
    }
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
    wait_for_files(disk.path(), 17);
    server.kill();
    busy.join().unwrap();

    let model_dir = std::fs::read_dir(disk.path()).unwrap().flatten().next().unwrap().path();
    let stray = model_dir.join("00000000deadbeef.kv.tmp");
    std::fs::write(&stray, vec![0u8; 1000]).unwrap();

    let (_server, url) = start(disk.path(), "fail");
    assert!(!stray.exists(), "start-up removes temporary files of interrupted writes");
    for (p, w) in prompts.iter().zip(&want) {
        assert_eq!(&complete(&url, p).0, w);
    }
    let failed = metric_with(&url, "strata:kv_offload_failures_total", "op=\"load\"");
    assert_eq!(failed, 0.0, "no block the killed engine left failed verification");
    let loaded = metric_with(&url, "vllm:kv_offload_total_bytes_total", "disk_to_host");
    assert!(loaded > 0.0, "the restarted engine loaded blocks the killed one wrote");
}
