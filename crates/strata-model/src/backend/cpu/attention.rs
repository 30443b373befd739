//! Paged causal attention on the CPU.
//!
//! Each query token attends to keys `0..=position` of its own sequence,
//! read slot by slot through the sequence's block table, so blocks may lie
//! anywhere in the pool. The query heads of one KV group share each key
//! and value row as it is read (grouped-query attention). Work is split
//! across rayon by query token; scores are kept in f32 with the maximum
//! subtracted before exponentiation (a two-pass softmax, exact up to
//! rounding).

use rayon::prelude::*;

use super::{CpuKvLayer, CpuTensor};
use crate::backend::{AttentionShape, StepMetadata};

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent partial sums let the compiler vectorise.
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

pub(super) fn paged_attention(
    q: &CpuTensor,
    layer: &CpuKvLayer,
    shape: AttentionShape,
    step: &StepMetadata,
) -> CpuTensor {
    let AttentionShape { num_heads, num_kv_heads, head_dim, scale } = shape;
    let group = num_heads / num_kv_heads;
    let kvw = layer.kv_width;
    let bs = step.block_size;
    let mut out = CpuTensor::zeros(q.rows, q.cols);
    out.data.par_chunks_mut(q.cols).enumerate().for_each(|(t, orow)| {
        let seq = &step.seqs[step.token_seq[t] as usize];
        let table =
            &step.block_tables[seq.block_table_start..seq.block_table_start + seq.num_blocks];
        let num_keys = step.positions[t] as usize + 1;
        let qrow = q.row(t);
        let mut scores = vec![0.0f32; group * num_keys];
        for g in 0..num_kv_heads {
            let heads = g * group..(g + 1) * group;
            // Pass 1: scores of every head of the group against every key.
            for j in 0..num_keys {
                let slot = table[j / bs] as usize * bs + j % bs;
                let key = &layer.k[slot * kvw + g * head_dim..][..head_dim];
                for (hi, h) in heads.clone().enumerate() {
                    scores[hi * num_keys + j] = dot(&qrow[h * head_dim..][..head_dim], key) * scale;
                }
            }
            // Softmax per head.
            for hi in 0..group {
                let s = &mut scores[hi * num_keys..(hi + 1) * num_keys];
                let max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0;
                for v in s.iter_mut() {
                    *v = (*v - max).exp();
                    sum += *v;
                }
                let inv = 1.0 / sum;
                s.iter_mut().for_each(|v| *v *= inv);
            }
            // Pass 2: weighted sum of values.
            for j in 0..num_keys {
                let slot = table[j / bs] as usize * bs + j % bs;
                let value = &layer.v[slot * kvw + g * head_dim..][..head_dim];
                for (hi, h) in heads.clone().enumerate() {
                    let p = scores[hi * num_keys + j];
                    let o = &mut orow[h * head_dim..][..head_dim];
                    for (o, &v) in o.iter_mut().zip(value) {
                        *o += p * v;
                    }
                }
            }
        }
    });
    out
}
