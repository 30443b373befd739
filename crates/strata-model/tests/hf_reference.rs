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
//!
//! Prompt logprobs (vLLM's `prompt_logprobs`) are checked against the
//! log-softmax of the reference prefill logits, through a real
//! `EngineCore` over the executor, in one chunk and in chunks of a few
//! tokens.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use safetensors::SafeTensors;
use strata_core::offline::{run_offline, OfflineRequest};
use strata_core::scheduler::RequestOutput;
use strata_core::{
    BlockId, EngineCore, ModelBatch, NewRequest, RequestId, SamplingParams, SchedulerConfig,
    SeqInput, TopLogprobs,
};
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
                prompt_logprobs: None,
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
                    prompt_logprobs: None,
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

/// Prompt logprobs differ from the reference's log-softmax by at most
/// this (the logits agree within `TOLERANCE`; a log-softmax adds the
/// error of the normaliser).
const LOGPROB_TOLERANCE: f64 = 1e-3;

/// `log_softmax(row)`, in f64.
fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = max + row.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
    row.iter().map(|&v| v as f64 - lse).collect()
}

/// Runs `phases` on one engine over `exec` with a token budget of
/// `budget` (each phase's requests are added together and run to
/// completion before the next phase's, so a later phase finds the
/// earlier ones' blocks in the prefix cache) and returns each request's
/// outputs, in order.
fn run_engine(
    exec: &mut ModelExecutor<strata_model::backend::cpu::CpuBackend>,
    phases: Vec<Vec<NewRequest>>,
    budget: usize,
) -> Vec<Vec<RequestOutput>> {
    let config = SchedulerConfig {
        max_num_batched_tokens: budget,
        max_model_len: 256,
        ..SchedulerConfig::default()
    };
    let mut engine = EngineCore::new(exec, config);
    let mut ids: Vec<RequestId> = Vec::new();
    let mut outs: Vec<Vec<RequestOutput>> = Vec::new();
    let mut t = 0.0;
    for phase in phases {
        for n in phase {
            ids.push(engine.add_request(n, t).expect("admitted"));
            outs.push(Vec::new());
        }
        while engine.has_unfinished() {
            t += 1.0;
            let r = engine.step(t);
            assert!(r.executor_error.is_none(), "{:?}", r.executor_error);
            for o in r.outputs {
                let i = ids.iter().position(|&id| id == o.request_id).expect("known request");
                outs[i].push(o);
            }
            assert!(t < 1000.0, "the engine did not finish");
        }
    }
    outs
}

/// Checks one position's entry against the reference row that predicts
/// it: the prompt token's logprob, and the top `n` as the reference's
/// best `n` values (ids may swap only between values closer than the
/// tolerance).
fn check_entry(what: &str, entry: &TopLogprobs, token: u32, reference: &[f64], n: usize) {
    assert_eq!(entry.sampled.token_id, token, "{what}: the prompt token");
    let diff = (entry.sampled.logprob as f64 - reference[token as usize]).abs();
    assert!(diff < LOGPROB_TOLERANCE, "{what}: prompt token logprob differs by {diff}");
    assert_eq!(entry.top.len(), n, "{what}: top-n length");
    let mut best: Vec<f64> = reference.to_vec();
    best.sort_by(|a, b| b.total_cmp(a));
    for (k, t) in entry.top.iter().enumerate() {
        let own = (t.logprob as f64 - reference[t.token_id as usize]).abs();
        assert!(own < LOGPROB_TOLERANCE, "{what}: top {k} (token {}) differs by {own}", t.token_id);
        let rank = (t.logprob as f64 - best[k]).abs();
        assert!(rank < LOGPROB_TOLERANCE, "{what}: top {k} is not the {k}-th best ({rank})");
    }
}

/// Prompt logprobs through the engine, for every case: one chunk (budget
/// 64) and chunked prefill (budgets 3 and 5), with the prefix cache warm
/// (an identical prompt ran first, without prompt logprobs, so a lookup
/// would have hit). Each request gets them exactly once, with its first
/// token, one entry per prompt token (`None` first), equal to the
/// reference's log-softmax; the greedy tokens still match the reference
/// (the sampled rows are the right ones).
fn check_prompt_logprobs(name: &str) {
    const N: u32 = 5;
    let mut exec = load(name);
    let vocab = exec.model().config().vocab_size;
    for (i, case) in cases(&fixture(name)).iter().enumerate() {
        let greedy = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(2) };
        let plain = NewRequest::new(case.prompt.clone(), greedy.clone());
        let asking = NewRequest::new(
            case.prompt.clone(),
            SamplingParams { prompt_logprobs: Some(N), ..greedy },
        );
        for budget in [64, 3, 5] {
            let what = format!("{name} case {i} budget {budget}");
            let outs =
                run_engine(&mut exec, vec![vec![plain.clone()], vec![asking.clone()]], budget);
            assert!(outs[0].iter().all(|o| o.prompt_logprobs.is_none()), "{what}: not asked");
            let outs = &outs[1];
            let tokens: Vec<u32> = outs.iter().filter_map(|o| o.new_token_id).collect();
            assert_eq!(tokens, case.greedy[..2], "{what}: greedy tokens");
            let with: Vec<_> = outs.iter().filter(|o| o.prompt_logprobs.is_some()).collect();
            assert_eq!(with.len(), 1, "{what}: delivered once");
            assert_eq!(with[0].new_token_id, Some(case.greedy[0]), "{what}: with the first token");
            let got = with[0].prompt_logprobs.as_ref().unwrap();
            assert_eq!(got.len(), case.prompt.len(), "{what}: one entry per prompt token");
            assert!(got[0].is_none(), "{what}: the first token has none");
            for (pos, entry) in got.iter().enumerate().skip(1) {
                let entry = entry.as_ref().unwrap_or_else(|| panic!("{what}: position {pos}"));
                let row = &case.prefill_logits[(pos - 1) * vocab..pos * vocab];
                let what = format!("{what} position {pos}");
                check_entry(&what, entry, case.prompt[pos], &log_softmax(row), N as usize);
            }
        }
    }
}

/// Several requests in one batch, some asking for prompt logprobs and
/// some not, chunked: each gets its own positions.
fn check_prompt_logprobs_batched(name: &str) {
    let mut exec = load(name);
    let vocab = exec.model().config().vocab_size;
    let cases = cases(&fixture(name));
    let news: Vec<NewRequest> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let p = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(1) };
            let p = SamplingParams { prompt_logprobs: (i % 2 == 0).then_some(i as u32), ..p };
            NewRequest::new(c.prompt.clone(), p)
        })
        .collect();
    let outs = run_engine(&mut exec, vec![news], 7);
    for (i, (outs, case)) in outs.iter().zip(&cases).enumerate() {
        let what = format!("{name} batched case {i}");
        let delivered: Vec<_> = outs.iter().filter_map(|o| o.prompt_logprobs.as_ref()).collect();
        if i % 2 == 1 {
            assert!(delivered.is_empty(), "{what}: not asked");
            continue;
        }
        assert_eq!(delivered.len(), 1, "{what}");
        assert_eq!(delivered[0].len(), case.prompt.len(), "{what}");
        for (pos, entry) in delivered[0].iter().enumerate().skip(1) {
            let row = &case.prefill_logits[(pos - 1) * vocab..pos * vocab];
            let what = format!("{what} position {pos}");
            check_entry(&what, entry.as_ref().unwrap(), case.prompt[pos], &log_softmax(row), i);
        }
    }
}

#[test]
fn llama_prompt_logprobs_match_transformers() {
    check_prompt_logprobs("tiny-llama");
    check_prompt_logprobs_batched("tiny-llama");
}

#[test]
fn qwen2_prompt_logprobs_match_transformers() {
    check_prompt_logprobs("tiny-qwen2");
    check_prompt_logprobs_batched("tiny-qwen2");
}

#[test]
fn qwen3_prompt_logprobs_match_transformers() {
    check_prompt_logprobs("tiny-qwen3");
    check_prompt_logprobs_batched("tiny-qwen3");
}
