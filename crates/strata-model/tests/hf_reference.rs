//! Logits and greedy continuations of the tiny Llama, Qwen2 and Qwen3
//! checkpoints in `fixtures/models` against Hugging Face transformers.
//!
//! The references were computed in f32 from the very weights on disk (bf16,
//! f32 and f16 checkpoints, upcast), so the only difference left is the
//! order of floating-point summation (gemm blocking, SIMD lanes, softmax).
//! Observed differences are below 1e-5; the tolerance of 1e-4 absolute
//! leaves room for other CPUs' kernels while staying far below the
//! smallest gap between the top two logits in the references (0.0018), so
//! a real bug (a wrong RoPE frequency, a missing bias, a misread layout)
//! cannot hide under it.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use strata_core::offline::{run_offline, OfflineRequest};
use strata_core::{BlockId, ModelBatch, RequestId, SamplingParams, SeqInput};
use strata_model::{
    load_cpu_executor, KvPoolConfig, LoadOptions, LogitRows, ModelExecutor, ModelSource,
};

const TOLERANCE: f32 = 1e-4;
const BLOCK_SIZE: usize = 4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models").join(name)
}

struct Case {
    prompt: Vec<u32>,
    prefill_logits: Vec<f32>,
    greedy: Vec<u32>,
    decode_logits: Vec<f32>,
}

fn cases(dir: &Path) -> Vec<Case> {
    let bytes = std::fs::read(dir.join("reference.safetensors")).expect("reference file");
    let st = SafeTensors::deserialize(&bytes).expect("reference safetensors");
    let f32s = |name: &str| -> Vec<f32> {
        st.tensor(name)
            .expect(name)
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let ids = |name: &str| -> Vec<u32> {
        st.tensor(name)
            .expect(name)
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect()
    };
    (0..)
        .take_while(|i| st.tensor(&format!("case{i}.prompt_ids")).is_ok())
        .map(|i| Case {
            prompt: ids(&format!("case{i}.prompt_ids")),
            prefill_logits: f32s(&format!("case{i}.prefill_logits")),
            greedy: ids(&format!("case{i}.greedy_ids")),
            decode_logits: f32s(&format!("case{i}.decode_logits")),
        })
        .collect()
}

fn load(name: &str) -> ModelExecutor<strata_model::backend::cpu::CpuBackend> {
    let opts = LoadOptions {
        kv: KvPoolConfig { block_size: BLOCK_SIZE, num_blocks: Some(64), memory_bytes: 0 },
        ..LoadOptions::default()
    };
    load_cpu_executor(&ModelSource::Dir(fixture(name)), &opts, &mut |_, _| {})
        .expect("load fixture")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn argmax(row: &[f32]) -> u32 {
    (0..row.len()).fold(0, |best, i| if row[i] > row[best] { i } else { best }) as u32
}

/// Scattered, descending block ids: nothing relies on contiguity.
fn block_table(n: usize) -> Vec<BlockId> {
    (0..n).map(|i| BlockId((63 - 3 * i) as u32)).collect()
}

fn check_prefill(name: &str) {
    let mut exec = load(name);
    let vocab = exec.model().config().vocab_size;
    for (i, case) in cases(&fixture(name)).iter().enumerate() {
        let table = block_table(case.prompt.len().div_ceil(BLOCK_SIZE));
        let batch = ModelBatch {
            kv_connector_metadata: None,
            seqs: vec![SeqInput {
                request_id: RequestId::new(1).unwrap(),
                token_ids: &case.prompt,
                num_computed_tokens: 0,
                block_table: &table,
                sample: None,
            }],
        };
        let logits = exec.logits(&batch, LogitRows::All).expect("forward");
        assert_eq!(logits.len(), case.prompt.len() * vocab);
        let diff = max_abs_diff(&logits, &case.prefill_logits);
        assert!(diff < TOLERANCE, "{name} case {i}: prefill logits differ by {diff}");
    }
}

/// Prefill in chunks of 3 tokens, then decode the reference's greedy
/// tokens one at a time, comparing every step's logits.
fn check_decode(name: &str) {
    let mut exec = load(name);
    let vocab = exec.model().config().vocab_size;
    for (i, case) in cases(&fixture(name)).iter().enumerate() {
        let mut tokens = case.prompt.clone();
        tokens.extend(&case.greedy);
        let table = block_table(tokens.len().div_ceil(BLOCK_SIZE));
        let mut computed = 0;
        let mut step = 0;
        while step < case.greedy.len() {
            let end = if computed < case.prompt.len() {
                (computed + 3).min(case.prompt.len())
            } else {
                computed + 1
            };
            let batch = ModelBatch {
                kv_connector_metadata: None,
                seqs: vec![SeqInput {
                    request_id: RequestId::new(1).unwrap(),
                    token_ids: &tokens[computed..end],
                    num_computed_tokens: computed,
                    block_table: &table,
                    sample: None,
                }],
            };
            let logits = exec.logits(&batch, LogitRows::All).expect("forward");
            computed = end;
            if computed < case.prompt.len() {
                continue;
            }
            let last = &logits[logits.len() - vocab..];
            let reference = &case.decode_logits[step * vocab..(step + 1) * vocab];
            let diff = max_abs_diff(last, reference);
            assert!(diff < TOLERANCE, "{name} case {i} step {step}: logits differ by {diff}");
            assert_eq!(argmax(last), case.greedy[step], "{name} case {i} step {step}");
            step += 1;
        }
    }
}

/// All cases in one batch through the offline driver: greedy tokens equal
/// the reference token for token.
fn check_greedy_batch(name: &str) {
    let mut exec = load(name);
    let cases = cases(&fixture(name));
    let requests: Vec<OfflineRequest> = cases
        .iter()
        .map(|c| OfflineRequest {
            prompt_token_ids: c.prompt.clone(),
            params: SamplingParams {
                ignore_eos: true,
                ..SamplingParams::greedy(c.greedy.len() as u32)
            },
        })
        .collect();
    let outputs = run_offline(&mut exec, &requests, &[], 16).expect("generate");
    for (i, (out, case)) in outputs.iter().zip(&cases).enumerate() {
        assert_eq!(out.token_ids, case.greedy, "{name} case {i}");
    }
}

#[test]
fn llama_bf16_sharded_prefill_matches_transformers() {
    check_prefill("tiny-llama");
}

#[test]
fn llama_bf16_sharded_decode_matches_transformers() {
    check_decode("tiny-llama");
}

#[test]
fn llama_batched_greedy_matches_transformers() {
    check_greedy_batch("tiny-llama");
}

#[test]
fn qwen2_f32_tied_with_bias_prefill_matches_transformers() {
    check_prefill("tiny-qwen2");
}

#[test]
fn qwen2_decode_matches_transformers() {
    check_decode("tiny-qwen2");
}

#[test]
fn qwen2_batched_greedy_matches_transformers() {
    check_greedy_batch("tiny-qwen2");
}

#[test]
fn qwen3_f16_qk_norm_prefill_matches_transformers() {
    check_prefill("tiny-qwen3");
}

#[test]
fn qwen3_decode_matches_transformers() {
    check_decode("tiny-qwen3");
}

#[test]
fn qwen3_batched_greedy_matches_transformers() {
    check_greedy_batch("tiny-qwen3");
}
