//! The CUDA backend against the CPU backend, op by op and end to end.
//!
//! These need an NVIDIA GPU. Without one each test says so and returns,
//! unless `STRATA_REQUIRE_GPU=1` (set by `scripts/gpu_check.sh`, the
//! script run on GPU machines), where a missing device fails the test.
//! Everything here goes through the `Backend` trait only: inputs reach the
//! device as embedding rows of an uploaded table, so both backends see the
//! same values.

#![cfg(feature = "cuda")]
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::OnceLock;

use common::seq;
use strata_core::executor::KvBlockIo;
use strata_core::{BlockId, Executor, ModelBatch, SeqInput};
use strata_model::backend::cpu::CpuBackend;
use strata_model::backend::cuda::{CudaBackend, CudaOptions};
use strata_model::backend::{AttentionShape, Backend, SeqAttention, StepMetadata};
use strata_model::config::{Architecture, ModelConfig, RopeScaling};
use strata_model::loader::load_executor;
use strata_model::weights::{DType, HostData, HostTensor};
use strata_model::{builtin, KvPoolConfig, LoadOptions, LogitRows, ModelSource};

fn gpu() -> Option<&'static CudaBackend> {
    static GPU: OnceLock<Option<CudaBackend>> = OnceLock::new();
    GPU.get_or_init(|| match CudaBackend::new(0) {
        Ok(b) => {
            eprintln!("device: {:?}", b.info());
            Some(b)
        }
        Err(e) if std::env::var_os("STRATA_REQUIRE_GPU").is_some() => {
            panic!("STRATA_REQUIRE_GPU is set but the CUDA backend did not start: {e}")
        }
        Err(e) => {
            eprintln!("skipped (no GPU): {e}");
            None
        }
    })
    .as_ref()
}

fn host(name: &str, shape: &[usize], values: Vec<f32>, dtype: DType) -> HostTensor {
    HostTensor {
        name: name.into(),
        shape: shape.to_vec(),
        data: HostData::F32(values).convert(dtype),
    }
}

/// Both backends' tensors holding the same values.
struct Pair {
    cpu: <CpuBackend as Backend>::Tensor,
    gpu: <CudaBackend as Backend>::Tensor,
}

fn step_for(tokens: usize) -> StepMetadata {
    StepMetadata {
        token_ids: (0..tokens as u32).collect(),
        positions: (0..tokens as u32).map(|p| p * 7 % 1000).collect(),
        slot_mapping: (0..tokens as u32).collect(),
        token_seq: vec![0; tokens],
        seqs: vec![SeqAttention {
            token_start: 0,
            num_tokens: tokens,
            context_len: tokens,
            block_table_start: 0,
            num_blocks: tokens.div_ceil(16),
        }],
        block_tables: (0..tokens.div_ceil(16) as u32).collect(),
        block_size: 16,
        graph: false,
    }
}

/// Random `rows x cols` values on both backends, as embedding rows of an
/// f32 table.
fn tensors(g: &CudaBackend, seed: u64, rows: usize, cols: usize) -> Pair {
    let values = common::values(seed, rows * cols);
    let table = host("table", &[rows, cols], values, DType::F32);
    let step = step_for(rows);
    let (ct, gt) = (CpuBackend.upload(table.clone()).unwrap(), g.upload(table).unwrap());
    let cs = CpuBackend.prepare_step(&step).unwrap();
    let gs = g.prepare_step(&step).unwrap();
    Pair { cpu: CpuBackend.embedding(&ct, &cs), gpu: g.embedding(&gt, &gs) }
}

/// Largest |a - b| over the largest |a|, and the exact equality count.
fn rel_err(cpu: &[f32], gpu: &[f32]) -> f32 {
    assert_eq!(cpu.len(), gpu.len());
    assert!(gpu.iter().all(|v| v.is_finite()), "non-finite GPU output");
    let scale = cpu.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    cpu.iter().zip(gpu).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

fn assert_close(what: &str, cpu: &[f32], gpu: &[f32], tol: f32) {
    let e = rel_err(cpu, gpu);
    eprintln!("{what}: relative error {e:.2e} (tolerance {tol:.0e})");
    assert!(e <= tol, "{what}: relative error {e:e} > {tol:e}");
}

#[test]
fn elementwise_ops_match_the_cpu() {
    let Some(g) = gpu() else { return };
    let c = CpuBackend;
    let (rows, cols) = (37, 896);
    let x = tensors(g, 1, rows, cols);
    assert_eq!(c.to_host(&x.cpu).unwrap(), g.to_host(&x.gpu).unwrap(), "embedding is a copy");

    let w = host("w", &[cols], common::values(2, cols), DType::F32);
    let (cw, gw) = (c.upload(w.clone()).unwrap(), g.upload(w).unwrap());
    let (cn, gn) = (c.rms_norm(&x.cpu, &cw, 1e-6), g.rms_norm(&x.gpu, &gw, 1e-6));
    assert_close("rms_norm", &c.to_host(&cn).unwrap(), &g.to_host(&gn).unwrap(), 1e-6);

    // q/k norm and RoPE in place, on a column view of a wider tensor
    // (as after split_cols).
    let wide = tensors(g, 3, rows, 3 * 128);
    let mut cparts = c.split_cols(&wide.cpu, &[256, 128]);
    let mut gparts = g.split_cols(&wide.gpu, &[256, 128]);
    let hw = host("hw", &[128], common::values(4, 128), DType::F32);
    let (chw, ghw) = (c.upload(hw.clone()).unwrap(), g.upload(hw).unwrap());
    c.rms_norm_heads(&mut cparts[0], &chw, 128, 1e-6);
    g.rms_norm_heads(&mut gparts[0], &ghw, 128, 1e-6);
    assert_close(
        "rms_norm_heads",
        &c.to_host(&cparts[0]).unwrap(),
        &g.to_host(&gparts[0]).unwrap(),
        1e-6,
    );
    let mut rc = builtin::config();
    rc.head_dim = 128;
    rc.rope_scaling = RopeScaling::None;
    let table = strata_model::rope::rope_table(&rc, 1024);
    let table = host("rope", &[1024, 128], table, DType::F32);
    let (ctab, gtab) = (c.upload(table.clone()).unwrap(), g.upload(table).unwrap());
    let step = step_for(rows);
    let (cs, gs) = (c.prepare_step(&step).unwrap(), g.prepare_step(&step).unwrap());
    for interleaved in [false, true] {
        c.rope(&mut cparts[1], 128, &ctab, &cs, interleaved);
        g.rope(&mut gparts[1], 128, &gtab, &gs, interleaved);
        assert_close(
            &format!("rope interleaved={interleaved}"),
            &c.to_host(&cparts[1]).unwrap(),
            &g.to_host(&gparts[1]).unwrap(),
            1e-5,
        );
    }

    let gu = tensors(g, 5, rows, 2 * 4864);
    let (cs2, gs2) = (c.silu_mul(&gu.cpu), g.silu_mul(&gu.gpu));
    assert_close("silu_mul", &c.to_host(&cs2).unwrap(), &g.to_host(&gs2).unwrap(), 1e-6);

    let mut a = tensors(g, 6, rows, cols);
    let b = tensors(g, 7, rows, cols);
    c.add_assign(&mut a.cpu, &b.cpu);
    g.add_assign(&mut a.gpu, &b.gpu);
    assert_eq!(c.to_host(&a.cpu).unwrap(), g.to_host(&a.gpu).unwrap(), "add_assign");

    let pick = [36, 0, 5, 5];
    assert_eq!(
        c.to_host(&c.select_rows(&x.cpu, &pick)).unwrap(),
        g.to_host(&g.select_rows(&x.gpu, &pick)).unwrap()
    );
}

#[test]
fn argmax_rows_finds_the_first_largest_value_as_the_sampler_does() {
    let Some(g) = gpu() else { return };
    let (rows, cols) = (6, 151_936);
    // Coarse values, so most rows hold the maximum more than once.
    let mut v: Vec<f32> =
        common::values(60, rows * cols).into_iter().map(|x| (x * 8.0).round()).collect();
    v[2 * cols] = f32::NAN; // row 2: NaN first -> 0
    v[3 * cols + 7] = f32::NAN; // row 3: a NaN later is never the answer
    v[4 * cols..5 * cols].fill(f32::NEG_INFINITY); // row 4: nothing beats index 0
    v[5 * cols + cols - 1] = 100.0; // row 5: the last column
    let table = host("t", &[rows, cols], v.clone(), DType::F32);
    let gt = g.upload(table).unwrap();
    let x = g.embedding(&gt, &g.prepare_step(&step_for(rows)).unwrap());
    let first_max = |r: &[f32]| {
        r.iter().enumerate().fold(0, |best, (i, &x)| if x > r[best] { i } else { best }) as u32
    };
    let want: Vec<u32> = v.chunks(cols).map(first_max).collect();
    assert_eq!(want[2], 0);
    assert_eq!(want[4], 0);
    assert_eq!(want[5], cols as u32 - 1);
    assert_eq!(g.argmax_rows(&x).unwrap().unwrap(), want);
}

#[test]
fn linear_matches_the_cpu_for_every_dtype_and_batch() {
    let Some(g) = gpu() else { return };
    let c = CpuBackend;
    let (n, k) = (1000, 896);
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        let w = host("w", &[n, k], common::values(10, n * k), dtype);
        let b = host("b", &[n], common::values(11, n), DType::F32);
        let (cw, gw) = (c.upload(w.clone()).unwrap(), g.upload(w).unwrap());
        let (cb, gb) = (c.upload(b.clone()).unwrap(), g.upload(b).unwrap());
        for m in [1, 7, 16, 17, 300] {
            let x = tensors(g, 12 + m as u64, m, k);
            for bias in [false, true] {
                let (cy, gy) = if bias {
                    (c.linear(&x.cpu, &cw, Some(&cb)), g.linear(&x.gpu, &gw, Some(&gb)))
                } else {
                    (c.linear(&x.cpu, &cw, None), g.linear(&x.gpu, &gw, None))
                };
                // The GEMV (m <= 16) does exact f32 products like the CPU;
                // cuBLAS takes 16-bit activations for 16-bit weights.
                let tol = match (m <= 16, dtype) {
                    (true, _) | (false, DType::F32) => 1e-5,
                    (false, _) => 1e-2,
                };
                assert_close(
                    &format!("linear {dtype:?} m={m} bias={bias}"),
                    &c.to_host(&cy).unwrap(),
                    &g.to_host(&gy).unwrap(),
                    tol,
                );
            }
        }
    }
}

/// A mixed step: a prefill chunk that starts at context 64, and decodes at
/// contexts 300 and 4000, over shuffled physical blocks of 16 slots.
fn mixed_step() -> StepMetadata {
    let bs = 16;
    let mut meta = StepMetadata { block_size: bs, ..StepMetadata::default() };
    let mut next_block = 0u32;
    // A deterministic shuffle of physical blocks.
    let mut block = || {
        next_block += 1;
        (next_block * 97) % 509
    };
    for (s, (start, len)) in [(64usize, 20usize), (299, 1), (3999, 1)].into_iter().enumerate() {
        let ctx = start + len;
        let blocks: Vec<u32> = (0..ctx.div_ceil(bs)).map(|_| block()).collect();
        meta.seqs.push(SeqAttention {
            token_start: meta.token_ids.len(),
            num_tokens: len,
            context_len: ctx,
            block_table_start: meta.block_tables.len(),
            num_blocks: blocks.len(),
        });
        for p in start..ctx {
            meta.token_ids.push(0);
            meta.positions.push(p as u32);
            meta.slot_mapping.push(blocks[p / bs] * bs as u32 + (p % bs) as u32);
            meta.token_seq.push(s as u32);
        }
        meta.block_tables.extend(blocks);
    }
    meta
}

#[test]
fn paged_attention_matches_the_cpu_on_mixed_batches_and_long_contexts() {
    let Some(g) = gpu() else { return };
    let c = CpuBackend;
    let slots = 509 * 16;
    for (heads, kv_heads, head_dim) in [(4, 4, 64), (8, 4, 128), (14, 2, 64), (28, 4, 128)] {
        let kvw = kv_heads * head_dim;
        let mut ck = c.alloc_kv_layer(slots, kvw).unwrap();
        let mut gk = g.alloc_kv_layer(slots, kvw).unwrap();
        // Random K and V in every slot, byte-identical on both.
        let kv: Vec<f32> = common::values(20 + heads as u64, 2 * slots * kvw)
            .into_iter()
            .map(|v| v * 2.0)
            .collect();
        let bytes: &[u8] = bytemuck::cast_slice(&kv);
        c.write_kv_slots(&mut ck, 0..slots, bytes);
        g.write_kv_slots(&mut gk, 0..slots, bytes);
        let mut back = vec![0u8; bytes.len()];
        g.read_kv_slots(&gk, 0..slots, &mut back);
        assert!(back == bytes, "KV slots round-trip byte for byte");
        let shape =
            AttentionShape { num_heads: heads, num_kv_heads: kv_heads, head_dim, scale: 0.125 };
        let mixed = mixed_step();
        let mut decode_only = mixed.clone();
        // The 4k decode alone: one sequence, so split-KV.
        decode_only.token_ids = vec![0];
        decode_only.positions = vec![3999];
        decode_only.slot_mapping = vec![*mixed.slot_mapping.last().unwrap()];
        decode_only.token_seq = vec![0];
        let last = mixed.seqs[2];
        decode_only.seqs = vec![SeqAttention { token_start: 0, block_table_start: 0, ..last }];
        decode_only.block_tables = mixed.block_tables[last.block_table_start..].to_vec();
        for (name, step) in [("mixed", mixed), ("4k decode", decode_only)] {
            let q = tensors(g, 30, step.num_tokens(), heads * head_dim);
            let (cs, gs) = (c.prepare_step(&step).unwrap(), g.prepare_step(&step).unwrap());
            let co = c.paged_attention(&q.cpu, &ck, shape, &cs);
            let go = g.paged_attention(&q.gpu, &gk, shape, &gs);
            assert_close(
                &format!("attention {name} {heads}/{kv_heads} heads, head_dim {head_dim}"),
                &c.to_host(&co).unwrap(),
                &g.to_host(&go).unwrap(),
                1e-4,
            );
        }
        // write_kv puts the same bytes where the CPU puts them.
        let step = mixed_step();
        let k = tensors(g, 40, step.num_tokens(), kvw);
        let v = tensors(g, 41, step.num_tokens(), kvw);
        let (cs, gs) = (c.prepare_step(&step).unwrap(), g.prepare_step(&step).unwrap());
        c.write_kv(&mut ck, &k.cpu, &v.cpu, &cs);
        g.write_kv(&mut gk, &k.gpu, &v.gpu, &gs);
        let (mut a, mut b) = (vec![0u8; bytes.len()], vec![0u8; bytes.len()]);
        c.read_kv_slots(&ck, 0..slots, &mut a);
        g.read_kv_slots(&gk, 0..slots, &mut b);
        assert!(a == b, "write_kv: same KV bytes on both backends");
    }
}

fn tiny(arch: Architecture) -> ModelConfig {
    let mut c = builtin::config();
    c.architecture = arch;
    c.attention_bias = arch == Architecture::Qwen2;
    c.qk_norm = arch == Architecture::Qwen3;
    c.num_heads = 8;
    c.num_kv_heads = 2;
    c.head_dim = 32;
    c
}

fn pool() -> LoadOptions {
    LoadOptions {
        kv: KvPoolConfig { block_size: 16, num_blocks: Some(64), memory_bytes: 0 },
        ..LoadOptions::default()
    }
}

fn logits<B: Backend>(
    e: &mut strata_model::ModelExecutor<B>,
    toks: &[u32],
    done: usize,
    table: &[BlockId],
) -> Vec<f32> {
    let batch = ModelBatch { seqs: vec![seq(1, toks, done, table)], kv_connector_metadata: None };
    e.logits(&batch, LogitRows::All).unwrap()
}

/// Several continuous-batching steps (a prompt in two chunks beside a
/// decoding sequence), logits of every row from both backends.
#[test]
fn model_logits_match_the_cpu_over_continuous_batching_steps() {
    let Some(_) = gpu() else { return };
    for arch in [Architecture::Llama, Architecture::Qwen2, Architecture::Qwen3] {
        for dtype in [DType::F32, DType::BF16] {
            let source = ModelSource::Dummy { config: Box::new(tiny(arch)), seed: 7, dtype };
            let mut cpu = load_executor(CpuBackend, &source, &pool(), &mut |_, _| {}).unwrap();
            let mut cuda =
                load_executor(CudaBackend::new(0).unwrap(), &source, &pool(), &mut |_, _| {})
                    .unwrap();
            let a: Vec<u32> = (0..40).map(|i| (i * 37 + 5) % 500).collect();
            let b: Vec<u32> = (0..9).map(|i| (i * 11 + 3) % 500).collect();
            let ta: Vec<BlockId> = (0..4).map(|i| BlockId(40 - i)).collect();
            let tb: Vec<BlockId> = (0..4).map(|i| BlockId(3 + 5 * i)).collect();
            let steps = [
                vec![seq(1, &a[..25], 0, &ta), seq(2, &b, 0, &tb)],
                vec![seq(1, &a[25..], 25, &ta), seq(2, &a[..1], 9, &tb)],
                vec![seq(1, &b[..1], 40, &ta), seq(2, &a[1..2], 10, &tb)],
            ];
            for (i, seqs) in steps.into_iter().enumerate() {
                let batch = ModelBatch { seqs, kv_connector_metadata: None };
                let cl = cpu.logits(&batch, LogitRows::All).unwrap();
                let gl = cuda.logits(&batch, LogitRows::All).unwrap();
                // bf16 prefill rows go through cuBLAS with bf16 activations.
                let tol = if dtype == DType::F32 { 1e-4 } else { 3e-2 };
                assert_close(&format!("{arch:?} {dtype:?} step {i}"), &cl, &gl, tol);
            }
        }
    }
}

/// A decode step replayed from a CUDA graph gives the bits of the same
/// step run op by op, and matches an engine without graphs: 3 sequences
/// (bucket 4, GEMV) and 20 (bucket 24, cuBLAS inside the graph).
#[test]
fn graph_replay_equals_eager() {
    let Some(_) = gpu() else { return };
    let source = ModelSource::Dummy {
        config: Box::new(tiny(Architecture::Qwen2)),
        seed: 9,
        dtype: DType::BF16,
    };
    let eager = CudaBackend::with_options(0, CudaOptions { enforce_eager: true }).unwrap();
    let mut graphed =
        load_executor(CudaBackend::new(0).unwrap(), &source, &pool(), &mut |_, _| {}).unwrap();
    let mut eager = load_executor(eager, &source, &pool(), &mut |_, _| {}).unwrap();
    let vocab = tiny(Architecture::Qwen2).vocab_size;
    for (n, first_id, tol) in [(3u32, 1u64, 1e-5), (20, 100, 3e-2)] {
        // Sequence s: 10 + s tokens in two blocks of its own.
        let prompts: Vec<Vec<u32>> =
            (0..n).map(|s| (0..10 + s).map(|i| (i * 31 + s) % 500).collect()).collect();
        let tables: Vec<Vec<BlockId>> =
            (0..n).map(|s| (0..2).map(|i| BlockId(1 + 2 * s + i)).collect()).collect();
        // Each prompt but its last token is prefilled (op by op on both:
        // several tokens per sequence); the last token is the decode step.
        let seqs = |decode: bool| -> Vec<SeqInput<'_>> {
            prompts
                .iter()
                .zip(&tables)
                .enumerate()
                .map(|(i, (t, tb))| {
                    let (id, last) = (first_id + i as u64, t.len() - 1);
                    if decode {
                        seq(id, &t[last..], last, tb)
                    } else {
                        seq(id, &t[..last], 0, tb)
                    }
                })
                .collect()
        };
        let prefill = ModelBatch { seqs: seqs(false), kv_connector_metadata: None };
        graphed.logits(&prefill, LogitRows::All).unwrap();
        eager.logits(&prefill, LogitRows::All).unwrap();
        // The same decode step three times (it rewrites the same KV
        // slots): op by op (the bucket's first step), captured, replayed.
        let decode = ModelBatch { seqs: seqs(true), kv_connector_metadata: None };
        let runs: Vec<Vec<f32>> =
            (0..3).map(|_| graphed.logits(&decode, LogitRows::All).unwrap()).collect();
        assert_eq!(runs[0].len(), n as usize * vocab);
        assert!(runs[0] == runs[1], "{n} seqs: the captured launch gives the eager step's bits");
        assert!(runs[1] == runs[2], "{n} seqs: replay gives the captured launch's bits");
        // And the graph was captured (a failed capture would run eagerly
        // and give the same bits).
        let bucket = if n == 3 { 4 } else { 24 };
        let captured = graphed.backend().captured_buckets();
        assert!(captured.contains(&bucket), "bucket {bucket} captured: {captured:?}");
        let reference = eager.logits(&decode, LogitRows::All).unwrap();
        assert_close(
            &format!("{n} seqs: graph against --enforce-eager"),
            &reference,
            &runs[2],
            tol,
        );
    }
}

/// KV computed on the GPU, moved block by block (as the offload tiers and
/// P/D move it) into a CPU engine, continues there as if the CPU had
/// computed it; and the other way round.
#[test]
fn kv_blocks_move_between_a_gpu_and_a_cpu_engine() {
    let Some(_) = gpu() else { return };
    let source = ModelSource::Builtin;
    let mut cpu = load_executor(CpuBackend, &source, &pool(), &mut |_, _| {}).unwrap();
    let mut cuda =
        load_executor(CudaBackend::new(0).unwrap(), &source, &pool(), &mut |_, _| {}).unwrap();
    let prompt: Vec<u32> = (0..48).map(|i| (i * 13 + 2) % 500).collect();
    let table: Vec<BlockId> = (0..4).map(|i| BlockId(10 + i)).collect();
    // Reference: the CPU alone, the prompt then one decode token.
    logits(&mut cpu, &prompt, 0, &table);
    let reference = logits(&mut cpu, &[7], 48, &table);
    // Prefill on the GPU, decode on the CPU.
    logits(&mut cuda, &prompt, 0, &table);
    let mut buf = vec![0u8; cuda.kv_cache_spec().bytes_per_block];
    for b in &table[..3] {
        cuda.kv_block_io().read_block(*b, &mut buf);
        cpu.kv_block_io().write_block(*b, &buf);
    }
    let moved = logits(&mut cpu, &[7], 48, &table);
    assert_close("decode on the CPU after a GPU prefill", &reference, &moved, 1e-4);
    // And from the CPU to the GPU.
    for b in &table[..3] {
        cpu.kv_block_io().read_block(*b, &mut buf);
        cuda.kv_block_io().write_block(*b, &buf);
    }
    let back = logits(&mut cuda, &[7], 48, &table);
    assert_close("decode on the GPU after a CPU prefill", &reference, &back, 1e-4);
}

#[test]
fn a_gguf_block_format_weight_is_refused_with_a_clear_error() {
    let Some(g) = gpu() else { return };
    let q = strata_model::weights::QuantData::quantize(
        strata_model::quant::QuantType::Q8_0,
        &common::values(50, 64 * 32),
        64,
        32,
    );
    let t = HostTensor { name: "w".into(), shape: vec![64, 32], data: HostData::Quant(q) };
    let err = g.upload(t).unwrap_err().to_string();
    assert!(err.contains("CPU backend only"), "{err}");
}
