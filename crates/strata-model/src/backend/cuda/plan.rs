//! The host-side arithmetic of the CUDA backend, kept apart from launches
//! so it is tested on every CI run: how a step's metadata is packed for
//! its one upload, launch shapes, and how attention splits long contexts.

use super::kernels;
use super::DeviceInfo;
use crate::backend::StepMetadata;

/// Offsets (in u32s) of each section of a packed step buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepLayout {
    pub num_tokens: usize,
    pub num_seqs: usize,
    pub token_ids: usize,
    pub positions: usize,
    pub slot_mapping: usize,
    pub token_seq: usize,
    /// Five u32 per sequence: token start, tokens, context length, block
    /// table start, blocks (the kernels' `SEQ_*` indices).
    pub seqs: usize,
    pub block_tables: usize,
    pub len: usize,
}

/// Sections start on 16-u32 (64-byte) boundaries.
const ALIGN: usize = 16;

/// Packs a step into one buffer (one host-to-device copy per step).
pub fn pack_step(meta: &StepMetadata) -> (StepLayout, Vec<u32>) {
    let mut out: Vec<u32> = Vec::new();
    let mut section = |values: &mut dyn Iterator<Item = u32>| {
        out.resize(out.len().div_ceil(ALIGN) * ALIGN, 0);
        let at = out.len();
        out.extend(values);
        at
    };
    let token_ids = section(&mut meta.token_ids.iter().copied());
    let positions = section(&mut meta.positions.iter().copied());
    let slot_mapping = section(&mut meta.slot_mapping.iter().copied());
    let token_seq = section(&mut meta.token_seq.iter().copied());
    let seqs = section(&mut meta.seqs.iter().flat_map(|s| {
        [s.token_start, s.num_tokens, s.context_len, s.block_table_start, s.num_blocks]
            .map(|v| u32::try_from(v).expect("invariant: step sizes fit in u32"))
    }));
    let block_tables = section(&mut meta.block_tables.iter().copied());
    let len = out.len();
    let layout = StepLayout {
        num_tokens: meta.num_tokens(),
        num_seqs: meta.seqs.len(),
        token_ids,
        positions,
        slot_mapping,
        token_seq,
        seqs,
        block_tables,
        len,
    };
    (layout, out)
}

/// Blocks of the GEMV kernel for `n` output features.
pub fn gemv_blocks(n: usize) -> u32 {
    n.div_ceil(kernels::GEMV_ROWS_PER_BLOCK as usize) as u32
}

/// Kernels index with `int`: every dimension and element count of a
/// weight must fit.
pub fn check_dims(rows: usize, cols: usize) -> Result<(), String> {
    let fits = |v: usize| i32::try_from(v).is_ok();
    if fits(rows) && fits(cols) && rows.checked_mul(cols).is_some_and(fits) {
        Ok(())
    } else {
        Err(format!("a {rows} x {cols} weight is too large for the CUDA kernels (2^31 elements)"))
    }
}

/// The decode batch sizes graphs are captured for, as vLLM spaces them
/// (1, 2, 4, 8, then wider steps): a step is padded to the next one, so
/// under half of a padded batch is padding, at most a third above 16. Up to 16 every linear
/// layer is the GEMV kernel; above, cuBLAS runs inside the graph on its
/// fixed workspace. Larger decode batches run op by op.
pub const GRAPH_BUCKETS: [usize; 13] = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256];

/// The bucket a decode step of `num_tokens` sequences is padded to.
pub fn graph_bucket(num_tokens: usize) -> Option<usize> {
    GRAPH_BUCKETS.iter().copied().find(|&b| b >= num_tokens.max(1))
}

/// Keys per split-KV segment, at least.
pub const MIN_KEYS_PER_SEGMENT: usize = 256;
/// Most segments a query's keys are split into.
pub const MAX_SEGMENTS: usize = 32;

/// How many segments attention splits each query's keys into. One block
/// serves one (token, KV head); when those are too few to fill the device
/// (fewer than two blocks per SM), long contexts are split so that every
/// SM works ("flash decoding"), with at least [`MIN_KEYS_PER_SEGMENT`]
/// keys per segment so the merge stays cheap.
pub fn attention_segments(
    tokens: usize,
    kv_heads: usize,
    max_keys: usize,
    info: &DeviceInfo,
) -> usize {
    let blocks = tokens * kv_heads;
    let want = 2 * info.multiprocessors as usize;
    if blocks == 0 || blocks >= want {
        return 1;
    }
    let by_keys = max_keys / MIN_KEYS_PER_SEGMENT;
    let by_device = want.div_ceil(blocks);
    by_keys.min(by_device).clamp(1, MAX_SEGMENTS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::SeqAttention;

    fn info(sms: u32) -> DeviceInfo {
        DeviceInfo {
            ordinal: 0,
            name: "test".into(),
            compute_capability: (9, 0),
            multiprocessors: sms,
            total_memory: 0,
            driver_version: (13, 0),
            nvrtc_version: (13, 0),
            cublas_version: 0,
            libraries: vec![],
        }
    }

    #[test]
    fn a_packed_step_holds_every_section_where_the_layout_says() {
        let meta = StepMetadata {
            token_ids: vec![5, 6, 7],
            positions: vec![64, 65, 9],
            slot_mapping: vec![100, 101, 7],
            token_seq: vec![0, 0, 1],
            seqs: vec![
                SeqAttention {
                    token_start: 0,
                    num_tokens: 2,
                    context_len: 66,
                    block_table_start: 0,
                    num_blocks: 5,
                },
                SeqAttention {
                    token_start: 2,
                    num_tokens: 1,
                    context_len: 10,
                    block_table_start: 5,
                    num_blocks: 1,
                },
            ],
            block_tables: vec![3, 9, 1, 4, 6, 0],
            block_size: 16,
            graph: false,
        };
        let (l, buf) = pack_step(&meta);
        assert_eq!(buf.len(), l.len);
        assert_eq!((l.num_tokens, l.num_seqs), (3, 2));
        assert_eq!(&buf[l.token_ids..l.token_ids + 3], &[5, 6, 7]);
        assert_eq!(&buf[l.positions..l.positions + 3], &[64, 65, 9]);
        assert_eq!(&buf[l.slot_mapping..l.slot_mapping + 3], &[100, 101, 7]);
        assert_eq!(&buf[l.token_seq..l.token_seq + 3], &[0, 0, 1]);
        assert_eq!(&buf[l.seqs..l.seqs + 10], &[0, 2, 66, 0, 5, 2, 1, 10, 5, 1]);
        assert_eq!(&buf[l.block_tables..l.block_tables + 6], &[3, 9, 1, 4, 6, 0]);
        for at in [l.token_ids, l.positions, l.slot_mapping, l.token_seq, l.seqs, l.block_tables] {
            assert_eq!(at % ALIGN, 0);
        }
    }

    #[test]
    fn an_empty_step_packs_to_nothing() {
        let (l, buf) = pack_step(&StepMetadata::default());
        assert!(buf.is_empty());
        assert_eq!(l.num_tokens, 0);
    }

    #[test]
    fn gemv_blocks_cover_every_output() {
        assert_eq!(gemv_blocks(1), 1);
        assert_eq!(gemv_blocks(8), 1);
        assert_eq!(gemv_blocks(9), 2);
        assert_eq!(gemv_blocks(151_936), 18_992);
    }

    #[test]
    fn decode_steps_pad_to_the_next_bucket_up_to_256() {
        assert_eq!(graph_bucket(1), Some(1));
        assert_eq!(graph_bucket(3), Some(4));
        assert_eq!(graph_bucket(9), Some(16));
        assert_eq!(graph_bucket(16), Some(16));
        assert_eq!(graph_bucket(17), Some(24));
        assert_eq!(graph_bucket(129), Some(192));
        assert_eq!(graph_bucket(256), Some(256));
        assert_eq!(graph_bucket(257), None);
        // Padding is under half of a padded batch, and at most a third
        // above 16.
        for n in 1..=256 {
            let b = graph_bucket(n).unwrap();
            assert!(2 * (b - n) < b, "{n} -> {b}");
            assert!(n <= 16 || 3 * (b - n) <= b, "{n} -> {b}");
        }
        // The GEMV/cuBLAS boundary is a bucket edge: a bucket's linear
        // layers all take one path.
        assert!(GRAPH_BUCKETS.contains(&super::kernels::GEMV_MAX_M));
    }

    #[test]
    fn a_padded_step_has_sections_fixed_by_its_bucket() {
        // Two decode steps of one bucket with different contexts and batch
        // sizes: every section but the block tables' length is at the same
        // offset, so one buffer address serves both.
        let decode = |n: usize, ctx: u32| {
            let mut m = StepMetadata { block_size: 16, ..StepMetadata::default() };
            for s in 0..n {
                let blocks = ctx.div_ceil(16);
                m.seqs.push(SeqAttention {
                    token_start: s,
                    num_tokens: 1,
                    context_len: ctx as usize,
                    block_table_start: m.block_tables.len(),
                    num_blocks: blocks as usize,
                });
                m.block_tables.extend(0..blocks);
                m.token_ids.push(5);
                m.positions.push(ctx - 1);
                m.slot_mapping.push(ctx - 1);
                m.token_seq.push(s as u32);
            }
            m.pad_for_graph(8);
            m
        };
        let (a, b) = (decode(3, 40), decode(7, 900));
        assert!(a.graph && b.graph);
        assert_eq!(a.num_tokens(), 8);
        assert_eq!(a.seqs.len(), 9);
        assert_eq!(a.slot_mapping[3..], [crate::backend::PAD_SLOT; 5]);
        // The padding's one key is block 0's first slot.
        let pad = a.seqs[a.token_seq[7] as usize];
        assert_eq!(
            (a.positions[7], pad.context_len, a.block_tables[pad.block_table_start]),
            (0, 1, 0)
        );
        let (la, _) = pack_step(&a);
        let (lb, _) = pack_step(&b);
        assert_eq!(
            (la.token_ids, la.positions, la.slot_mapping, la.token_seq, la.seqs, la.block_tables),
            (lb.token_ids, lb.positions, lb.slot_mapping, lb.token_seq, lb.seqs, lb.block_tables)
        );
    }

    #[test]
    fn weights_must_fit_int_indexing() {
        assert!(check_dims(151_936, 4096).is_ok());
        assert!(check_dims(1 << 20, 1 << 12).is_err());
        assert!(check_dims(usize::MAX, 2).is_err());
    }

    #[test]
    fn long_decodes_are_split_and_busy_or_short_ones_are_not() {
        let h200 = info(132);
        // Batch-1 decode of a 2-KV-head model at 8k context: 2 blocks, so
        // split as far as keys allow, capped.
        assert_eq!(attention_segments(1, 2, 8192, &h200), MAX_SEGMENTS);
        // At 1k context only 4 segments of 256 keys.
        assert_eq!(attention_segments(1, 2, 1024, &h200), 4);
        // Short contexts are never split.
        assert_eq!(attention_segments(1, 2, 300, &h200), 1);
        // 64 sequences x 8 KV heads fill the device already.
        assert_eq!(attention_segments(64, 8, 8192, &h200), 1);
        // 16 x 8 = 128 blocks of the 264 wanted: three segments each.
        assert_eq!(attention_segments(16, 8, 8192, &h200), 3);
        assert_eq!(attention_segments(0, 8, 8192, &h200), 1);
    }
}
