//! Paged causal attention on the CPU.
//!
//! Each query token attends to keys `0..=position` of its own sequence,
//! read through the sequence's block table, so blocks may lie anywhere in
//! the pool. The query heads of one KV group share each key and value row
//! as it is read (grouped-query attention).
//!
//! The work is split into items of (a tile of query tokens of one
//! sequence, a KV group, a range of keys), spread across rayon. A tile
//! holds up to 32 query rows (tokens x the group's heads), so a prefill
//! chunk reads each key and value row once per tile instead of once per
//! token. A long context at a small batch (batch-1 decode: one token, one
//! or two KV groups) is cut into key ranges so that every core works on
//! it, as flash-decoding does on GPUs; a large batch or a prefill chunk
//! has enough items without cutting. Each item runs an online softmax over
//! its keys, one paged block at a time: the scores of the block (keys past
//! a query's position masked), then one rescale of each row's running sum
//! and output, then the block's values. The partial results of one tile
//! and group are merged at the end (the maximum subtracted before
//! exponentiation throughout; exact up to rounding).
//!
//! On CPUs with AVX2 and FMA (head sizes a multiple of 16), `avx2` runs
//! the items: softmax updates every 64 keys, query rows in pairs against
//! each key and value vector, a vector `exp`. Measured with `cargo bench
//! -p strata-model --bench attention` (2 threads), against this file's
//! portable kernel in the same build: a 512-token chunk after 3584 tokens
//! 171 -> 70 ms (Qwen2.5-0.5B shape) and 412 -> 196 ms (Llama-3.2-1B),
//! batch-1 decode after 8192 tokens 0.79 -> 0.45 ms and 2.2 -> 1.6 ms.
//!
//! [`reference`] is the plain two-pass kernel this replaced: the tests'
//! oracle and the bench's baseline.

use rayon::prelude::*;

use super::{CpuKvLayer, CpuTensor};
use crate::backend::{AttentionShape, StepMetadata};

/// `a * b + c`, fused in the variants compiled with FMA (one instruction,
/// one rounding); Rust never fuses a plain `a * b + c` by itself.
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent partial sums let the compiler vectorise.
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] = madd::<FMA>(x[i], y[i], acc[i]);
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// `out[j] = scale * (query . keys[j * stride..][..query.len()])`.
#[inline(always)]
fn score_row<const FMA: bool>(
    query: &[f32],
    keys: &[f32],
    stride: usize,
    scale: f32,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: the FMA variant runs only inside `run_item_avx2_fma`,
        // called once the CPU was found to have AVX2 and FMA.
        unsafe { score_row_avx2(query, keys, stride, scale, out) };
        return;
    }
    for (j, o) in out.iter_mut().enumerate() {
        *o = dot::<FMA>(query, &keys[j * stride..][..query.len()]) * scale;
    }
}

/// [`score_row`] with AVX2 and FMA: four keys at a time, so each load of
/// the query serves four multiply-adds and four independent sums keep
/// both FMA units busy.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn score_row_avx2(query: &[f32], keys: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
    use std::arch::x86_64::*;

    use crate::simd::hsum;
    let hd = query.len();
    let n = out.len();
    if n == 0 {
        return;
    }
    // Every row read below lies within `keys`.
    assert!(keys.len() >= (n - 1) * stride + hd, "keys too short");
    let body = hd / 8 * 8;
    let (q, k) = (query.as_ptr(), keys.as_ptr());
    let tail = |row: usize| -> f32 {
        query[body..]
            .iter()
            .zip(&keys[row * stride + body..][..hd - body])
            .map(|(a, b)| a * b)
            .sum()
    };
    let mut j = 0;
    while j + 4 <= n {
        let rows = [j * stride, (j + 1) * stride, (j + 2) * stride, (j + 3) * stride];
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut d = 0;
        while d < body {
            // SAFETY: d + 8 <= hd, so the query load and each key row's
            // load (row start + d + 8 <= row start + hd) are in bounds
            // (checked above).
            unsafe {
                let qv = _mm256_loadu_ps(q.add(d));
                for m in 0..4 {
                    acc[m] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k.add(rows[m] + d)), acc[m]);
                }
            }
            d += 8;
        }
        for m in 0..4 {
            out[j + m] = (hsum(acc[m]) + tail(j + m)) * scale;
        }
        j += 4;
    }
    while j < n {
        let mut acc = _mm256_setzero_ps();
        let mut d = 0;
        while d < body {
            // SAFETY: as above, for one row.
            unsafe {
                acc = _mm256_fmadd_ps(
                    _mm256_loadu_ps(q.add(d)),
                    _mm256_loadu_ps(k.add(j * stride + d)),
                    acc,
                );
            }
            d += 8;
        }
        out[j] = (hsum(acc) + tail(j)) * scale;
        j += 1;
    }
}

/// `out += sum_j weights[j] * values[j * stride..][..out.len()]`, 32
/// lanes of `out` at a time held in registers across all the rows (one
/// load per multiply-add instead of three; 32 measured faster than 16 and
/// as fast as 64 in `cargo bench -p strata-model --bench attention`).
#[inline(always)]
fn weighted_sum<const FMA: bool>(out: &mut [f32], weights: &[f32], values: &[f32], stride: usize) {
    const LANE: usize = 32;
    let (len, done) = (out.len(), out.len() / LANE * LANE);
    let (full, rest) = out.split_at_mut(done);
    for (c, o) in full.chunks_exact_mut(LANE).enumerate() {
        let mut acc = [0.0f32; LANE];
        for (j, &w) in weights.iter().enumerate() {
            let v = &values[j * stride + c * LANE..][..LANE];
            for i in 0..LANE {
                acc[i] = madd::<FMA>(w, v[i], acc[i]);
            }
        }
        for i in 0..LANE {
            o[i] += acc[i];
        }
    }
    for (j, &w) in weights.iter().enumerate() {
        axpy::<FMA>(rest, w, &values[j * stride + done..][..len - done]);
    }
}

/// `acc += p * v`.
#[inline(always)]
fn axpy<const FMA: bool>(acc: &mut [f32], p: f32, v: &[f32]) {
    for (a, &x) in acc.iter_mut().zip(v) {
        *a = madd::<FMA>(p, x, *a);
    }
}

/// Keys below this are never cut into ranges (the merge would cost more
/// than the parallelism gives).
const MIN_KEYS_PER_ITEM: usize = 128;

/// Query rows (tokens x heads of a group) of one item: each key and value
/// row read from the pool serves all of them while it is in the cache;
/// the tile's queries, outputs and scores stay within a core's L1.
const TILE_ROWS: usize = 32;

/// One unit of work: query tokens `tokens` (consecutive, of one
/// sequence), KV group `g`, keys `keys`.
#[derive(Clone, Copy, Debug)]
struct Item {
    tokens: (usize, usize),
    g: usize,
    keys: (usize, usize),
}

/// An item's online-softmax state for each query row (token-major, then
/// head of the group): running maximum, running sum of
/// `exp(score - max)`, and the output rows weighted by those (not yet
/// divided by the sum).
#[derive(Debug)]
struct Partial {
    max: Vec<f32>,
    sum: Vec<f32>,
    out: Vec<f32>,
}

/// The items of a step: each sequence's tokens in tiles, every (tile,
/// group) cut into key ranges if there are fewer such pairs than four per
/// thread.
fn plan(step: &StepMetadata, num_kv_heads: usize, group: usize, threads: usize) -> Vec<Item> {
    let tile = (TILE_ROWS / group.max(1)).max(1);
    let tiles: Vec<(usize, usize)> = step
        .seqs
        .iter()
        .flat_map(|s| {
            (s.token_start..s.token_start + s.num_tokens)
                .step_by(tile)
                .map(move |t| (t, (t + tile).min(s.token_start + s.num_tokens)))
        })
        .collect();
    let pairs = tiles.len() * num_kv_heads;
    let splits = (4 * threads.max(1)).div_ceil(pairs.max(1));
    let mut items = Vec::with_capacity(pairs * splits);
    for &(t0, t1) in &tiles {
        let num_keys = step.positions[t0..t1].iter().max().map_or(0, |&p| p as usize + 1);
        let per = num_keys.div_ceil(splits).max(MIN_KEYS_PER_ITEM);
        for g in 0..num_kv_heads {
            let mut start = 0;
            while start < num_keys {
                let end = (start + per).min(num_keys);
                items.push(Item { tokens: (t0, t1), g, keys: (start, end) });
                start = end;
            }
        }
    }
    items
}

/// Runs one item with the widest vector instructions the CPU has: the
/// kernel below compiled for AVX2 and FMA where the CPU has them (checked
/// at run time, once), for the build's baseline otherwise.
fn run_item(
    item: Item,
    q: &CpuTensor,
    layer: &CpuKvLayer,
    shape: AttentionShape,
    step: &StepMetadata,
) -> Partial {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::available() {
        // SAFETY: the CPU has AVX2 and FMA, checked just above.
        return unsafe {
            if avx2::supports(shape.head_dim) {
                avx2::run_item(item, q, layer, shape, step)
            } else {
                run_item_avx2_fma(item, q, layer, shape, step)
            }
        };
    }
    run_item_with::<false>(item, q, layer, shape, step)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_item_avx2_fma(
    item: Item,
    q: &CpuTensor,
    layer: &CpuKvLayer,
    shape: AttentionShape,
    step: &StepMetadata,
) -> Partial {
    run_item_with::<true>(item, q, layer, shape, step)
}

/// What both item kernels start from: the sequence's block table, each
/// query row (token-major, then head of the group: row r is token
/// t0 + r / group, head g * group + r % group) and how many keys it sees,
/// the group's column in the KV rows, and the empty online-softmax state.
struct ItemRows<'a> {
    table: &'a [u32],
    queries: Vec<&'a [f32]>,
    seen: Vec<usize>,
    col: usize,
    p: Partial,
}

impl<'a> ItemRows<'a> {
    fn new(item: Item, q: &'a CpuTensor, shape: AttentionShape, step: &'a StepMetadata) -> Self {
        let AttentionShape { num_heads, num_kv_heads, head_dim, .. } = shape;
        let group = num_heads / num_kv_heads;
        let (t0, t1) = item.tokens;
        let seq = &step.seqs[step.token_seq[t0] as usize];
        let table =
            &step.block_tables[seq.block_table_start..seq.block_table_start + seq.num_blocks];
        let rows = (t1 - t0) * group;
        let queries = (0..rows)
            .map(|r| &q.row(t0 + r / group)[(item.g * group + r % group) * head_dim..][..head_dim])
            .collect();
        let seen = (0..rows).map(|r| step.positions[t0 + r / group] as usize + 1).collect();
        let p = Partial {
            max: vec![f32::NEG_INFINITY; rows],
            sum: vec![0.0; rows],
            out: vec![0.0; rows * head_dim],
        };
        Self { table, queries, seen, col: item.g * head_dim, p }
    }
}

/// Runs one item: its keys, one paged block (or the part of it in range)
/// at a time; a query never sees keys past its own position. Inlined into
/// each instruction-set variant above.
#[inline(always)]
fn run_item_with<const FMA: bool>(
    item: Item,
    q: &CpuTensor,
    layer: &CpuKvLayer,
    shape: AttentionShape,
    step: &StepMetadata,
) -> Partial {
    let AttentionShape { head_dim, scale, .. } = shape;
    let (kvw, bs) = (layer.kv_width, step.block_size);
    let ItemRows { table, queries, seen, col, mut p } = ItemRows::new(item, q, shape, step);
    let rows = queries.len();
    let mut scores = vec![0.0f32; rows * bs];
    let (first, end) = item.keys;
    let mut j0 = first;
    while j0 < end {
        // Keys j0..j1 lie in one block: consecutive slots.
        let j1 = ((j0 / bs + 1) * bs).min(end);
        let n = j1 - j0;
        let base = table[j0 / bs] as usize * bs + j0 % bs;
        let keys = &layer.k[base * kvw..(base + n) * kvw];
        for (r, (&query, &seen)) in queries.iter().zip(&seen).enumerate() {
            // Keys past the query's position are masked.
            let visible = seen.saturating_sub(j0).min(n);
            let s = &mut scores[r * bs..r * bs + n];
            score_row::<FMA>(query, &keys[col..], kvw, scale, &mut s[..visible]);
            s[visible..].fill(f32::NEG_INFINITY);
        }
        for r in 0..rows {
            let s = &mut scores[r * bs..r * bs + n];
            let block_max = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            if block_max == f32::NEG_INFINITY {
                // Every key of the block is past this query.
                s.fill(0.0);
                continue;
            }
            let max = p.max[r].max(block_max);
            // The running sum and output were weighted by exp(-old max).
            let rescale = (p.max[r] - max).exp();
            p.max[r] = max;
            let mut sum = 0.0;
            for v in s.iter_mut() {
                *v = (*v - max).exp();
                sum += *v;
            }
            p.sum[r] = p.sum[r] * rescale + sum;
            if rescale != 1.0 {
                p.out[r * head_dim..][..head_dim].iter_mut().for_each(|o| *o *= rescale);
            }
        }
        let values = &layer.v[base * kvw + col..(base + n - 1) * kvw + col + head_dim];
        for r in 0..rows {
            let weights = &scores[r * bs..r * bs + n];
            weighted_sum::<FMA>(&mut p.out[r * head_dim..][..head_dim], weights, values, kvw);
        }
        j0 = j1;
    }
    p
}

pub(super) fn paged_attention(
    q: &CpuTensor,
    layer: &CpuKvLayer,
    shape: AttentionShape,
    step: &StepMetadata,
) -> CpuTensor {
    let AttentionShape { num_heads, num_kv_heads, head_dim, .. } = shape;
    let group = num_heads / num_kv_heads;
    let items = plan(step, num_kv_heads, group, rayon::current_num_threads());
    let partials: Vec<Partial> =
        items.par_iter().map(|&item| run_item(item, q, layer, shape, step)).collect();
    // Merge: the items of one (tile, group) are adjacent, in key order.
    let mut out = CpuTensor::zeros(q.rows, q.cols);
    let mut i = 0;
    while i < items.len() {
        let Item { tokens, g, .. } = items[i];
        let n = items[i..].iter().take_while(|it| it.tokens == tokens && it.g == g).count();
        let parts = &partials[i..i + n];
        for r in 0..(tokens.1 - tokens.0) * group {
            let (t, h) = (tokens.0 + r / group, g * group + r % group);
            let o = &mut out.data[t * q.cols + h * head_dim..][..head_dim];
            let max = parts.iter().map(|p| p.max[r]).fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0.0;
            for p in parts.iter().filter(|p| p.max[r] > f32::NEG_INFINITY) {
                let w = (p.max[r] - max).exp();
                sum += p.sum[r] * w;
                axpy::<false>(o, w, &p.out[r * head_dim..][..head_dim]);
            }
            let inv = 1.0 / sum;
            o.iter_mut().for_each(|x| *x *= inv);
        }
        i += n;
    }
    out
}

/// The plain kernel: per query token (across rayon), all scores of a
/// group's heads, a softmax, then the weighted values. The tests' oracle
/// and the bench's baseline (`cargo bench -p strata-model --bench
/// attention`).
pub fn reference(
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
            for j in 0..num_keys {
                let slot = table[j / bs] as usize * bs + j % bs;
                let key = &layer.k[slot * kvw + g * head_dim..][..head_dim];
                for (hi, h) in heads.clone().enumerate() {
                    scores[hi * num_keys + j] =
                        dot::<false>(&qrow[h * head_dim..][..head_dim], key) * scale;
                }
            }
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
            for j in 0..num_keys {
                let slot = table[j / bs] as usize * bs + j % bs;
                let value = &layer.v[slot * kvw + g * head_dim..][..head_dim];
                for (hi, h) in heads.clone().enumerate() {
                    axpy::<false>(
                        &mut orow[h * head_dim..][..head_dim],
                        scores[hi * num_keys + j],
                        value,
                    );
                }
            }
        }
    });
    out
}

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(test)]
mod tests;
