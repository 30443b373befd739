use proptest::prelude::*;

use super::*;
use crate::backend::SeqAttention;

/// A step over `seqs` of (context length, query tokens), blocks of the
/// pool handed out in a shuffled order, K and V random.
struct Case {
    q: CpuTensor,
    layer: CpuKvLayer,
    shape: AttentionShape,
    step: StepMetadata,
}

fn case(
    seqs: &[(usize, usize)],
    num_kv_heads: usize,
    group: usize,
    head_dim: usize,
    bs: usize,
    seed: u64,
) -> Case {
    let mut rng = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let num_heads = num_kv_heads * group;
    let kvw = num_kv_heads * head_dim;
    let num_blocks: usize = seqs.iter().map(|&(ctx, _)| ctx.div_ceil(bs)).sum();
    // A shuffled block order: sequences' blocks interleave in the pool.
    let mut order: Vec<u32> = (0..num_blocks as u32).collect();
    for i in (1..order.len()).rev() {
        let j = ((next() + 1.0) / 2.0 * (i + 1) as f32) as usize % (i + 1);
        order.swap(i, j);
    }
    let mut step = StepMetadata { block_size: bs, ..StepMetadata::default() };
    let mut used = 0;
    for (s, &(ctx, n)) in seqs.iter().enumerate() {
        let blocks = ctx.div_ceil(bs);
        step.seqs.push(SeqAttention {
            token_start: step.positions.len(),
            num_tokens: n,
            context_len: ctx,
            block_table_start: step.block_tables.len(),
            num_blocks: blocks,
        });
        step.block_tables.extend(&order[used..used + blocks]);
        used += blocks;
        for pos in ctx - n..ctx {
            step.positions.push(pos as u32);
            step.token_seq.push(s as u32);
            step.token_ids.push(0);
        }
    }
    let slots = num_blocks * bs;
    let layer = CpuKvLayer {
        k: (0..slots * kvw).map(|_| next() * 2.0).collect(),
        v: (0..slots * kvw).map(|_| next()).collect(),
        kv_width: kvw,
    };
    let t = step.positions.len();
    let q = CpuTensor::from_vec(
        (0..t * num_heads * head_dim).map(|_| next() * 2.0).collect(),
        t,
        num_heads * head_dim,
    );
    let scale = 1.0 / (head_dim as f32).sqrt();
    Case { q, layer, shape: AttentionShape { num_heads, num_kv_heads, head_dim, scale }, step }
}

fn assert_close(got: &CpuTensor, want: &CpuTensor) -> Result<(), TestCaseError> {
    prop_assert_eq!((got.rows, got.cols), (want.rows, want.cols));
    for (i, (a, b)) in got.data.iter().zip(&want.data).enumerate() {
        prop_assert!((a - b).abs() <= 1e-5 + 1e-4 * b.abs(), "element {}: {} against {}", i, a, b);
    }
    Ok(())
}

#[test]
fn every_token_is_in_one_tile_and_every_key_range_planned_once_in_order() {
    let c = case(&[(1000, 1), (40, 25), (130, 2)], 2, 3, 8, 16, 1);
    for threads in [1, 2, 8, 64] {
        let items = plan(&c.step, 2, 3, threads);
        let mut tiles: Vec<(usize, usize)> = items.iter().map(|i| i.tokens).collect();
        tiles.dedup();
        let tokens: Vec<usize> = tiles.iter().flat_map(|&(a, b)| a..b).collect();
        assert_eq!(tokens, (0..c.step.positions.len()).collect::<Vec<_>>());
        for &(t0, t1) in &tiles {
            assert!(t1 - t0 <= TILE_ROWS / 3, "at most 32 rows of 3 heads");
            let seq = c.step.token_seq[t0];
            assert!(c.step.token_seq[t0..t1].iter().all(|&s| s == seq), "one sequence a tile");
            let last = c.step.positions[t0..t1].iter().max().map(|&p| p as usize + 1);
            for g in 0..2 {
                let ranges: Vec<(usize, usize)> = items
                    .iter()
                    .filter(|i| i.tokens == (t0, t1) && i.g == g)
                    .map(|i| i.keys)
                    .collect();
                assert_eq!(ranges.first().map(|r| r.0), Some(0));
                assert_eq!(ranges.last().map(|r| r.1), last);
                assert!(ranges.windows(2).all(|w| w[0].1 == w[1].0), "{ranges:?}");
                // Every range but the last holds at least the minimum.
                let cut = &ranges[..ranges.len() - 1];
                assert!(cut.iter().all(|r| r.1 - r.0 >= MIN_KEYS_PER_ITEM), "{ranges:?}");
            }
        }
    }
    // A batch-1 decode over a long context is cut so that every thread
    // has work; a short one is not.
    let long = case(&[(1000, 1)], 2, 3, 8, 16, 2);
    assert_eq!(plan(&long.step, 2, 3, 1).len(), 4, "two ranges per group: four items a thread");
    assert_eq!(plan(&long.step, 2, 3, 2).len(), 8, "four ranges of 250 per group");
    assert_eq!(plan(&long.step, 2, 3, 64).len(), 16, "ranges of 128 keys at the least");
    let short = case(&[(100, 1)], 2, 3, 8, 16, 3);
    assert_eq!(plan(&short.step, 2, 3, 8).len(), 2, "under 128 keys: not cut");
}

#[test]
fn a_long_decode_matches_the_reference() {
    let c = case(&[(4096, 1)], 2, 7, 64, 16, 7);
    let got = paged_attention(&c.q, &c.layer, c.shape, &c.step);
    let want = reference(&c.q, &c.layer, c.shape, &c.step);
    assert_close(&got, &want).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Mixed batches (prefill chunks and decodes), GQA ratios, head sizes
    /// that are and are not multiples of eight, block sizes, shuffled
    /// blocks: the same output as the reference kernel.
    #[test]
    fn matches_the_reference(
        seqs in proptest::collection::vec((1usize..700, 1usize..40), 1..4),
        num_kv_heads in 1usize..4,
        group in prop_oneof![Just(1usize), Just(2), Just(7)],
        head_dim in prop_oneof![Just(8usize), Just(20), Just(32), Just(64), Just(128)],
        bs in prop_oneof![Just(1usize), Just(4), Just(16)],
        seed in any::<u64>(),
    ) {
        let seqs: Vec<(usize, usize)> = seqs.into_iter().map(|(ctx, n)| (ctx, n.min(ctx))).collect();
        let c = case(&seqs, num_kv_heads, group, head_dim, bs, seed);
        let got = paged_attention(&c.q, &c.layer, c.shape, &c.step);
        let want = reference(&c.q, &c.layer, c.shape, &c.step);
        assert_close(&got, &want)?;
    }
}
