//! The CPU paged-attention kernel against the plain two-pass kernel it
//! replaced (`reference_attention`), both measured in this run, best of
//! several repetitions, on the machine's thread pool:
//!
//! - batch-1 decode after 512, 2048 and 8192 tokens of context;
//! - a 512-token prefill chunk after 0 and after 3584 tokens (the last
//!   chunk of a 4096-token prompt);
//!
//! for a Qwen2.5-0.5B-shaped layer (14 query heads, 2 KV heads of 64) and a
//! Llama-3.2-1B-shaped one (32 query heads, 8 KV heads of 64), one layer,
//! blocks of 16 spread over the pool in a scattered order.
//!
//! `cargo bench -p strata-model --bench attention`

#![allow(clippy::unwrap_used)]

use std::time::Instant;

use strata_model::backend::cpu::{reference_attention, CpuBackend, CpuKvLayer, CpuTensor};
use strata_model::backend::{AttentionShape, Backend, SeqAttention, StepMetadata};

const BS: usize = 16;

/// One sequence of `context` tokens of which the last `n` are queries.
fn step(context: usize, n: usize) -> StepMetadata {
    let blocks = context.div_ceil(BS) as u32;
    // A scattered order, as a busy pool hands blocks out (7919 is prime,
    // so this is a permutation for the sizes here).
    let table = (0..blocks).map(|i| (i * 7919) % blocks).collect();
    StepMetadata {
        token_ids: vec![0; n],
        positions: (context - n..context).map(|p| p as u32).collect(),
        slot_mapping: vec![0; n],
        token_seq: vec![0; n],
        seqs: vec![SeqAttention {
            token_start: 0,
            num_tokens: n,
            context_len: context,
            block_table_start: 0,
            num_blocks: blocks as usize,
        }],
        block_tables: table,
        block_size: BS,
        graph: false,
    }
}

mod common;
use common::{best, fill};

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!(
        "CPU paged attention, one layer, {} threads: this kernel against the two-pass one",
        rayon::current_num_threads()
    );
    println!("| shape | work | ms (two-pass) | ms (this) | speed-up |");
    println!("|---|---|---|---|---|");
    for (name, num_heads, num_kv_heads) in [("Qwen2.5-0.5B", 14, 2), ("Llama-3.2-1B", 32, 8)] {
        let head_dim = 64;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let shape = AttentionShape { num_heads, num_kv_heads, head_dim, scale };
        let kvw = num_kv_heads * head_dim;
        for (label, context, n) in [
            ("decode after 512", 513usize, 1usize),
            ("decode after 2048", 2049, 1),
            ("decode after 8192", 8193, 1),
            ("prefill 512 after 0", 512, 512),
            ("prefill 512 after 3584", 4096, 512),
        ] {
            let slots = context.div_ceil(BS) * BS;
            let layer = CpuBackend.alloc_kv_layer(slots, kvw).unwrap();
            let layer =
                CpuKvLayer { k: fill(layer.k.len(), 1), v: fill(layer.v.len(), 2), ..layer };
            let q = CpuTensor::from_vec(fill(n * num_heads * head_dim, 3), n, num_heads * head_dim);
            let meta = step(context, n);
            let reps = if n == 1 { 200 } else { 5 };
            let base = best(reps, || {
                let t = Instant::now();
                std::hint::black_box(reference_attention(&q, &layer, shape, &meta));
                t.elapsed()
            });
            let this = best(reps, || {
                let t = Instant::now();
                std::hint::black_box(CpuBackend.paged_attention(&q, &layer, shape, &meta));
                t.elapsed()
            });
            let a = CpuBackend.paged_attention(&q, &layer, shape, &meta);
            let b = reference_attention(&q, &layer, shape, &meta);
            let diff =
                a.data.iter().zip(&b.data).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(diff < 1e-3, "{name} {label}: outputs differ by {diff}");
            println!(
                "| {name} | {label} | {:.3} | {:.3} | {:.2}x |",
                base.as_secs_f64() * 1e3,
                this.as_secs_f64() * 1e3,
                base.as_secs_f64() / this.as_secs_f64()
            );
        }
    }
}
