//! Paged attention equals dense causal attention over random block
//! layouts, chunk splits and batch mixes.

#![allow(clippy::unwrap_used)]

mod common;

use common::values;
use proptest::prelude::*;
use strata_model::backend::cpu::{CpuBackend, CpuTensor};
use strata_model::backend::{AttentionShape, Backend, SeqAttention, StepMetadata};

#[derive(Debug, Clone)]
struct Case {
    kv_heads: usize,
    group: usize,
    head_dim: usize,
    block_size: usize,
    /// (context length, query length) per sequence.
    seqs: Vec<(usize, usize)>,
    seed: u64,
}

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..3,
        1usize..4,
        prop::sample::select(vec![2usize, 4, 8, 16]),
        prop::sample::select(vec![1usize, 2, 4, 16]),
    )
        .prop_flat_map(|(kv_heads, group, head_dim, block_size)| {
            let seq = (1usize..40).prop_flat_map(|ctx| (Just(ctx), 1..=ctx));
            (prop::collection::vec(seq, 1..5), any::<u64>()).prop_map(move |(seqs, seed)| Case {
                kv_heads,
                group,
                head_dim,
                block_size,
                seqs,
                seed,
            })
        })
}

/// Dense causal attention in f64 for one sequence's queries.
fn dense(q: &[f32], k: &[f32], v: &[f32], ctx: usize, qlen: usize, c: &Case) -> Vec<f32> {
    let (hd, kvh, heads) = (c.head_dim, c.kv_heads, c.kv_heads * c.group);
    let (qw, kvw) = (heads * hd, kvh * hd);
    let scale = 1.0 / (hd as f64).sqrt();
    let mut out = vec![0.0f32; qlen * qw];
    for i in 0..qlen {
        let pos = ctx - qlen + i;
        for h in 0..heads {
            let g = h / c.group;
            let qv = &q[i * qw + h * hd..][..hd];
            let scores: Vec<f64> = (0..=pos)
                .map(|j| {
                    (0..hd).map(|d| qv[d] as f64 * k[j * kvw + g * hd + d] as f64).sum::<f64>()
                        * scale
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let exps: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let sum: f64 = exps.iter().sum();
            for d in 0..hd {
                let o: f64 =
                    (0..=pos).map(|j| exps[j] / sum * v[j * kvw + g * hd + d] as f64).sum();
                out[i * qw + h * hd + d] = o as f32;
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn paged_equals_dense(c in case()) {
        let backend = CpuBackend;
        let (hd, heads) = (c.head_dim, c.kv_heads * c.group);
        let (qw, kvw, bs) = (heads * hd, c.kv_heads * hd, c.block_size);
        let blocks_needed: Vec<usize> = c.seqs.iter().map(|&(ctx, _)| ctx.div_ceil(bs)).collect();
        let pool = blocks_needed.iter().sum::<usize>() + 3;
        // A random permutation of the pool: sequences get scattered blocks.
        let mut order: Vec<usize> = (0..pool).collect();
        let keys = values(c.seed ^ 1, pool);
        order.sort_by(|&a, &b| keys[a].total_cmp(&keys[b]));
        let mut layer = backend.alloc_kv_layer(pool * bs, kvw).expect("alloc");
        let mut meta = StepMetadata { block_size: bs, ..StepMetadata::default() };
        let (mut q_all, mut expected) = (Vec::new(), Vec::new());
        let mut next_block = 0;
        for (s, &(ctx, qlen)) in c.seqs.iter().enumerate() {
            let table: Vec<u32> = order[next_block..next_block + blocks_needed[s]].iter().map(|&b| b as u32).collect();
            next_block += blocks_needed[s];
            let seed = c.seed.wrapping_add(s as u64 * 1000);
            let (k, v, q) = (values(seed ^ 2, ctx * kvw), values(seed ^ 3, ctx * kvw), values(seed ^ 4, qlen * qw));
            // Earlier chunks were written in previous steps: put them in place directly.
            let slot = |j: usize| table[j / bs] as usize * bs + j % bs;
            for j in 0..ctx - qlen {
                layer.k[slot(j) * kvw..][..kvw].copy_from_slice(&k[j * kvw..][..kvw]);
                layer.v[slot(j) * kvw..][..kvw].copy_from_slice(&v[j * kvw..][..kvw]);
            }
            meta.seqs.push(SeqAttention {
                token_start: meta.token_ids.len(),
                num_tokens: qlen,
                context_len: ctx,
                block_table_start: meta.block_tables.len(),
                num_blocks: table.len(),
            });
            for i in 0..qlen {
                let pos = ctx - qlen + i;
                meta.token_ids.push(0);
                meta.positions.push(pos as u32);
                meta.slot_mapping.push(slot(pos) as u32);
                meta.token_seq.push(s as u32);
            }
            meta.block_tables.extend(&table);
            q_all.extend(q.iter().copied());
            expected.extend(dense(&q, &k, &v, ctx, qlen, &c));
            // This step's K/V rows, written through write_kv below.
            let rows = |x: &[f32]| x[(ctx - qlen) * kvw..].to_vec();
            let (kn, vn) = (CpuTensor::from_vec(rows(&k), qlen, kvw), CpuTensor::from_vec(rows(&v), qlen, kvw));
            let sub = StepMetadata { slot_mapping: meta.slot_mapping[meta.slot_mapping.len() - qlen..].to_vec(), ..StepMetadata::default() };
            backend.write_kv(&mut layer, &kn, &vn, &sub);
        }
        let n = meta.token_ids.len();
        let q = CpuTensor::from_vec(q_all, n, qw);
        let shape = AttentionShape { num_heads: heads, num_kv_heads: c.kv_heads, head_dim: hd, scale: 1.0 / (hd as f32).sqrt() };
        let step = backend.prepare_step(&meta).expect("step");
        let out = backend.paged_attention(&q, &layer, shape, &step);
        for (i, (a, b)) in out.data.iter().zip(&expected).enumerate() {
            prop_assert!((a - b).abs() < 1e-5, "element {i}: paged {a} dense {b}");
        }
    }
}
