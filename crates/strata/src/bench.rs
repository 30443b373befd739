//! `strata bench`: prefill and decode throughput of the executor at
//! several batch sizes, with the machine's memory-bandwidth limit and the
//! process's peak memory next to them.
//!
//! For each batch size `b`: one step prefills `b` prompts of `--prompt-len`
//! random tokens, then `--decode-steps` steps decode one token for each of
//! the `b` sequences. Throughput is tokens over wall time of those steps.
//! With `--device cuda` and `STRATA_CUDA_PROFILE=1` it also prints where
//! each batch size's prefill and decode steps spend their time, op by op
//! (CUDA graphs are then off, so that every op is timed).
//!
//! The bandwidth limit is the weight bytes a decode step streams over the
//! read bandwidth measured here, in the same run: of host memory on the
//! CPU, of device memory (a streaming kernel) with `--device cuda`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Result};
use clap::Args;
use rayon::prelude::*;
use serde_json::json;
use strata_core::{
    BlockId, Executor, ModelBatch, RequestId, SampleRequest, SamplingParams, SeqInput,
};

use crate::model_ref::ModelArgs;

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Batch sizes to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = vec![1, 8, 32])]
    pub batch_sizes: Vec<usize>,
    /// Prompt length of each sequence in the prefill step.
    #[arg(long, default_value_t = 128)]
    pub prompt_len: usize,
    /// Decode steps measured per batch size.
    #[arg(long, default_value_t = 16)]
    pub decode_steps: usize,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Skip the untimed warm-up prefill (of the same size, as
    /// llama-bench's warm-up run) that precedes each batch size's timed
    /// one: the first forward pass maps the weights and grows the
    /// allocator's pools.
    #[arg(long)]
    pub no_warmup: bool,
}

/// Peak and current resident memory of this process, in bytes.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Best of three parallel passes summing a 512 MiB buffer, in bytes/s.
fn read_bandwidth() -> f64 {
    let buf: Vec<f32> = (0..(128usize << 20)).map(|i| (i & 7) as f32).collect();
    let bytes = (buf.len() * 4) as f64;
    let mut best = f64::INFINITY;
    let mut checksum = 0.0f32;
    for _ in 0..3 {
        let t = Instant::now();
        checksum += buf
            .par_chunks(1 << 16)
            .map(|c| {
                let mut acc = [0.0f32; 8];
                for w in c.chunks_exact(8) {
                    for i in 0..8 {
                        acc[i] += w[i];
                    }
                }
                acc.iter().sum::<f32>()
            })
            .sum::<f32>();
        best = best.min(t.elapsed().as_secs_f64());
    }
    std::hint::black_box(checksum);
    bytes / best
}

/// Where a step's time goes on a GPU (`STRATA_CUDA_PROFILE=1`): GPU time
/// per op and step, and what is left of the wall time (launches, the
/// host's own work, copies).
fn print_profile(what: &str, ops: &[(&'static str, u64, f64)], steps: usize, wall_secs: f64) {
    let steps = steps.max(1) as f64;
    let wall_ms = wall_secs * 1e3 / steps;
    let gpu_ms: f64 = ops.iter().map(|o| o.2).sum::<f64>() / steps;
    println!("{what}: {wall_ms:.3} ms/step wall, {gpu_ms:.3} ms/step in GPU ops");
    println!("| op | calls/step | ms/step | share of wall |");
    println!("|---|---:|---:|---:|");
    for (name, calls, ms) in ops {
        let ms = ms / steps;
        println!("| {name} | {:.0} | {ms:.3} | {:.3} |", *calls as f64 / steps, ms / wall_ms);
    }
    println!(
        "| (not in GPU ops: launches, host, copies) | | {:.3} | {:.3} |",
        wall_ms - gpu_ms,
        (wall_ms - gpu_ms) / wall_ms
    );
}

/// Decode steps run untimed after the prefill: the first warms caches,
/// the second is where a GPU captures the batch's CUDA graph.
const WARMUP_DECODE_STEPS: usize = 2;

struct Row {
    batch: usize,
    prefill_tok_s: f64,
    decode_tok_s: f64,
    decode_step_ms: f64,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let mut loaded = args.model.load()?;
    let exec = &mut loaded.executor;
    let spec = exec.kv_cache_spec();
    let config = exec.config().clone();
    let weight_bytes = exec.weight_bytes();
    // The prompt, the token the prefill samples, the untimed decode steps
    // and the timed ones.
    let per_seq_blocks =
        spec.num_blocks_for_tokens(args.prompt_len + 1 + WARMUP_DECODE_STEPS + args.decode_steps);
    let max_batch = args.batch_sizes.iter().copied().max().unwrap_or(1);
    ensure!(
        per_seq_blocks * max_batch <= spec.num_blocks,
        "the KV pool ({} blocks) cannot hold {max_batch} sequences of {} tokens; raise --kv-cache-memory",
        spec.num_blocks,
        args.prompt_len + args.decode_steps
    );
    let params = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(u32::MAX) };
    let mut rows = Vec::new();
    for &b in &args.batch_sizes {
        let tables: Vec<Vec<BlockId>> = (0..b)
            .map(|s| {
                (0..per_seq_blocks).map(|i| BlockId((s * per_seq_blocks + i) as u32)).collect()
            })
            .collect();
        let mut seqs: Vec<Vec<u32>> = (0..b)
            .map(|s| {
                (0..args.prompt_len)
                    .map(|i| ((s * 7919 + i * 104_729) % config.vocab_size) as u32)
                    .collect()
            })
            .collect();
        let mut outputs: Vec<Vec<u32>> = vec![Vec::new(); b];
        let id = |s: usize| RequestId::new(s as u64 + 1).expect("invariant: non-zero");
        let step = |exec: &mut strata_model::DeviceExecutor,
                    seqs: &mut Vec<Vec<u32>>,
                    outputs: &mut Vec<Vec<u32>>,
                    prefill: bool|
         -> Result<f64> {
            let batch = ModelBatch {
                kv_connector_metadata: None,
                seqs: (0..b)
                    .map(|s| {
                        let start = if prefill { 0 } else { seqs[s].len() - 1 };
                        SeqInput {
                            request_id: id(s),
                            token_ids: &seqs[s][start..],
                            num_computed_tokens: start,
                            block_table: &tables[s],
                            sample: Some(SampleRequest {
                                params: &params,
                                prompt_token_ids: &seqs[s][..args.prompt_len],
                                output_token_ids: &outputs[s],
                                token_mask: None,
                            }),
                            prompt_logprobs: None,
                        }
                    })
                    .collect(),
            };
            let t = Instant::now();
            let out = exec.execute(&batch)?;
            let secs = t.elapsed().as_secs_f64();
            drop(batch);
            for (s, tok) in out.sampled.iter().enumerate() {
                seqs[s].push(tok.token_id);
                outputs[s].push(tok.token_id);
            }
            Ok(secs)
        };
        if !args.no_warmup {
            // The same prefill, untimed, its tokens dropped: the timed one
            // rewrites the same KV slots.
            let (mut s, mut o) = (seqs.clone(), outputs.clone());
            step(exec, &mut s, &mut o, true)?;
        }
        let _ = exec.take_profile();
        let prefill_secs = step(exec, &mut seqs, &mut outputs, true)?;
        let prefill_profile = exec.take_profile();
        // The first two decode steps warm caches after the large prefill
        // and, on a GPU, capture the batch's CUDA graph; they are not
        // counted.
        for _ in 0..WARMUP_DECODE_STEPS {
            step(exec, &mut seqs, &mut outputs, false)?;
        }
        let _ = exec.take_profile();
        let mut decode_secs = 0.0;
        for _ in 0..args.decode_steps {
            decode_secs += step(exec, &mut seqs, &mut outputs, false)?;
        }
        let decode_profile = exec.take_profile();
        let row = Row {
            batch: b,
            prefill_tok_s: (b * args.prompt_len) as f64 / prefill_secs,
            decode_tok_s: (b * args.decode_steps) as f64 / decode_secs,
            decode_step_ms: decode_secs * 1e3 / args.decode_steps as f64,
        };
        eprintln!(
            "batch {:>3}: prefill {:>9.1} tok/s  decode {:>9.1} tok/s ({:.1} ms/step)",
            row.batch, row.prefill_tok_s, row.decode_tok_s, row.decode_step_ms
        );
        for (what, profile, steps, wall) in [
            ("prefill", prefill_profile, 1, prefill_secs),
            ("decode", decode_profile, args.decode_steps, decode_secs),
        ] {
            if let Some(ops) = profile {
                print_profile(&format!("batch {b} {what}"), &ops, steps, wall);
            }
        }
        rows.push(row);
    }
    // Peak memory is taken before the bandwidth probe allocates its buffer.
    let (peak, _) = memory();
    // The memory the weights stream from: host RAM, or the GPU's.
    let bandwidth = match exec.device_read_bandwidth() {
        Some(measured) => measured?,
        None => read_bandwidth(),
    };
    let kv_pool_bytes = (spec.num_blocks * spec.bytes_per_block) as u64;
    let limit_tok_s = bandwidth / weight_bytes as f64;
    let device = exec.device_description();
    // On the CPU, which instruction sets the quantized kernels use
    // (`STRATA_CPU_ISA=avx2` or `avxvnni` caps them, for comparisons).
    let kernels = if device.starts_with("cpu") {
        format!(", quantized kernels {}", strata_model::quant::kernel_isa())
    } else {
        String::new()
    };
    println!(
        "model {} ({:?}), dtype {}, weights {:.1} MiB, device {device}, threads {}{kernels}",
        args.model.model,
        config.architecture,
        args.model.dtype,
        weight_bytes as f64 / (1 << 20) as f64,
        rayon::current_num_threads()
    );
    println!("prompt length {}, decode steps {}", args.prompt_len, args.decode_steps);
    println!("| batch | prefill tok/s | decode tok/s | decode ms/step |");
    println!("|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} |",
            r.batch, r.prefill_tok_s, r.decode_tok_s, r.decode_step_ms
        );
    }
    println!(
        "read bandwidth {:.1} GB/s -> batch-1 decode limit {:.1} tok/s (weight bytes per step / bandwidth)",
        bandwidth / 1e9,
        limit_tok_s
    );
    if let Some(one) = rows.iter().find(|r| r.batch == 1) {
        println!("batch-1 decode: {:.3} of the limit", one.decode_tok_s / limit_tok_s);
    }
    println!(
        "peak RSS {:.1} MiB; weights + configured KV pool {:.1} MiB; ratio {:.3}",
        peak as f64 / (1 << 20) as f64,
        (weight_bytes + kv_pool_bytes) as f64 / (1 << 20) as f64,
        peak as f64 / (weight_bytes + kv_pool_bytes) as f64
    );
    if let Some(path) = &args.json {
        let value = json!({
            "model": args.model.model, "dtype": args.model.dtype, "weight_bytes": weight_bytes,
            "device": device,
            "quantized_kernels": strata_model::quant::kernel_isa(),
            "kv_pool_bytes": kv_pool_bytes, "peak_rss_bytes": peak, "read_bandwidth_bytes_per_s": bandwidth,
            "decode_limit_tok_s": limit_tok_s, "prompt_len": args.prompt_len, "decode_steps": args.decode_steps,
            "threads": rayon::current_num_threads(),
            "rows": rows.iter().map(|r| json!({"batch": r.batch, "prefill_tok_s": r.prefill_tok_s,
                "decode_tok_s": r.decode_tok_s, "decode_step_ms": r.decode_step_ms})).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&value)?)?;
    }
    Ok(())
}
