//! Helpers shared by the model crate's integration tests.

// Each test crate that includes this module uses only some of it.
#![allow(dead_code)]

/// Deterministic pseudo-random values in [-1, 1) (xorshift), so failures
/// reproduce from the proptest seed alone.
pub fn values(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// One sequence of a batch, with no sampling and no prompt logprobs.
pub fn seq<'a>(
    id: u64,
    toks: &'a [u32],
    done: usize,
    table: &'a [strata_core::BlockId],
) -> strata_core::SeqInput<'a> {
    strata_core::SeqInput {
        request_id: strata_core::RequestId::new(id).unwrap(),
        token_ids: toks,
        num_computed_tokens: done,
        block_table: table,
        sample: None,
        prompt_logprobs: None,
    }
}
