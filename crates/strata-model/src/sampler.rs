//! Token sampling from one row of logits.
//!
//! Order of operations, as in vLLM v1's `Sampler`: on the raw logits, the
//! `allowed_token_ids` mask (every other token to -inf), the bad words
//! (vLLM's `apply_bad_words`: the last token of a word whose prefix ends
//! the output so far to -inf), the logit bias (clamped to [-100, 100]),
//! the penalties (repetition over prompt and output tokens: a positive
//! logit divided by it, a negative one multiplied; then frequency and
//! presence over output tokens); then temperature, min-p, top-k, top-p,
//! and a draw. Greedy picks the first maximum of the processed logits (as
//! `torch.argmax`), so it respects every processor. Log-probabilities are
//! those of the raw distribution (vLLM's default `raw_logprobs`).
//!
//! If the allowed-ids mask and the bad words together would leave no token
//! at all (vLLM would sample from an all -inf row), the bad words are
//! dropped for that step and the allowed-ids mask kept.
//!
//! Randomness is stateless: the draw for a request's `i`-th output token is
//! a hash of (request key, i), where the key is the request's seed if it
//! has one. So a seeded request gets the same tokens whatever shares its
//! batch, and after a preemption and recompute.

use std::collections::BTreeMap;

use strata_core::sampling::MAX_LOGIT_BIAS;
use strata_core::{RequestId, SampleRequest, SampledToken, TokenId, TokenLogprob, TopLogprobs};

use crate::weights::splitmix64;

#[derive(Clone, Debug)]
pub struct Sampler {
    /// Mixed into the key of requests without a seed.
    base_seed: u64,
}

fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// `log(sum(exp(values)))`, stable.
fn log_sum_exp(values: &[f32]) -> f32 {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = values.iter().map(|&v| ((v - max) as f64).exp()).sum();
    max + sum.ln() as f32
}

/// The `n` largest entries, largest first (ties: lower id first).
fn top_n(values: &[f32], n: usize) -> Vec<(usize, f32)> {
    let mut best: Vec<(usize, f32)> = Vec::with_capacity(n + 1);
    for (i, &v) in values.iter().enumerate() {
        if best.len() == n && best.last().is_some_and(|&(_, w)| v <= w) {
            continue;
        }
        let at = best.partition_point(|&(_, w)| w >= v);
        best.insert(at, (i, v));
        best.truncate(n);
    }
    best
}

/// Log-probabilities of `token` and of the `n` most likely tokens under
/// the distribution of the raw logits `row` (a sampled token's logprobs,
/// and a prompt token's, where `token` is the prompt token).
pub fn top_logprobs(row: &[f32], token: TokenId, n: u32) -> TopLogprobs {
    let lse = log_sum_exp(row);
    let entry = |(i, v): (usize, f32)| TokenLogprob { token_id: i as TokenId, logprob: v - lse };
    TopLogprobs {
        sampled: entry((token as usize, row[token as usize])),
        top: top_n(row, n as usize).into_iter().map(entry).collect(),
    }
}

/// A grammar's mask (structured outputs), first, as vLLM applies its
/// bitmask to the logits before the sampler: every token it does not
/// allow gets -inf. An empty mask (a matcher that failed) imposes nothing;
/// the scheduler ends that request when its matcher refuses the token.
fn apply_token_mask(logits: &mut [f32], mask: &strata_core::structured::TokenMask) {
    if mask.is_empty() {
        return;
    }
    for (chunk, &word) in logits.chunks_mut(32).zip(mask.words()) {
        if word == u32::MAX {
            continue;
        }
        for (bit, l) in chunk.iter_mut().enumerate() {
            if word & (1 << bit) == 0 {
                *l = f32::NEG_INFINITY;
            }
        }
    }
    // Logits past the mask's words (a mask shorter than the vocabulary)
    // are not allowed either.
    let covered = mask.words().len() * 32;
    if logits.len() > covered {
        logits[covered..].iter_mut().for_each(|l| *l = f32::NEG_INFINITY);
    }
}

/// The logits processors that run before temperature, in vLLM v1's order
/// (see the module header), in place on one row.
fn apply_logits_processors(logits: &mut [f32], req: &SampleRequest<'_>) {
    let params = req.params;
    let vocab = logits.len();
    if let Some(allowed) = &params.allowed_token_ids {
        let mut keep = vec![false; vocab];
        for &t in allowed {
            if let Some(k) = keep.get_mut(t as usize) {
                *k = true;
            }
        }
        // Ids are checked at admission; a list with none inside the
        // vocabulary is ignored rather than masking every token.
        if keep.contains(&true) {
            for (l, k) in logits.iter_mut().zip(&keep) {
                if !k {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
    }
    let banned = banned_tokens(&params.bad_words_token_ids, req.output_token_ids, vocab);
    if !banned.is_empty() {
        let saved: Vec<(usize, f32)> = banned.iter().map(|&t| (t, logits[t])).collect();
        for &t in &banned {
            logits[t] = f32::NEG_INFINITY;
        }
        if logits.iter().all(|&l| l == f32::NEG_INFINITY) {
            for (t, l) in saved {
                logits[t] = l;
            }
        }
    }
    if !params.logit_bias.is_empty() {
        // The last value of a token listed twice wins: reverse, then a
        // stable sort keeps it first among equal ids.
        let mut bias = params.logit_bias.clone();
        bias.reverse();
        bias.sort_by_key(|&(t, _)| t);
        bias.dedup_by_key(|&mut (t, _)| t);
        for (t, b) in bias {
            if let Some(l) = logits.get_mut(t as usize) {
                *l += b.clamp(-MAX_LOGIT_BIAS, MAX_LOGIT_BIAS);
            }
        }
    }
    let rp = params.repetition_penalty;
    if rp != 1.0 {
        let mut seen = vec![false; vocab];
        for &t in req.prompt_token_ids.iter().chain(req.output_token_ids) {
            if let Some(s) = seen.get_mut(t as usize) {
                *s = true;
            }
        }
        for (l, _) in logits.iter_mut().zip(&seen).filter(|(_, &s)| s) {
            *l = if *l > 0.0 { *l / rp } else { *l * rp };
        }
    }
    if params.frequency_penalty != 0.0 || params.presence_penalty != 0.0 {
        let mut counts: BTreeMap<TokenId, u32> = BTreeMap::new();
        for &t in req.output_token_ids {
            *counts.entry(t).or_default() += 1;
        }
        for (t, c) in counts {
            if let Some(l) = logits.get_mut(t as usize) {
                *l -= params.frequency_penalty * c as f32 + params.presence_penalty;
            }
        }
    }
}

/// The tokens the bad words ban after `output` (vLLM's
/// `_apply_bad_words_single_batch`): the last token of every word whose
/// other tokens end `output` (a one-token word: always). Ids outside the
/// vocabulary are skipped.
fn banned_tokens(bad_words: &[Vec<TokenId>], output: &[TokenId], vocab: usize) -> Vec<usize> {
    bad_words
        .iter()
        .filter_map(|word| {
            let (&last, prefix) = word.split_last()?;
            (output.ends_with(prefix) && (last as usize) < vocab).then_some(last as usize)
        })
        .collect()
}

impl Sampler {
    pub fn new(base_seed: u64) -> Self {
        Self { base_seed }
    }

    fn uniform(&self, request_id: RequestId, req: &SampleRequest<'_>) -> f64 {
        let key = match req.params.seed {
            Some(seed) => splitmix64(seed),
            None => splitmix64(self.base_seed ^ request_id.get().wrapping_mul(0x9E37_79B9)),
        };
        let bits = splitmix64(key ^ splitmix64(req.output_token_ids.len() as u64));
        (bits >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Whether [`Self::sample`] returns the raw logits' first largest
    /// value and no logprobs for `req` (greedy, nothing that changes the
    /// logits, no token mask, no logprobs): then the argmax can be taken
    /// where the logits are ([`crate::backend::Backend::argmax_rows`]).
    pub fn is_plain_greedy(req: &SampleRequest<'_>) -> bool {
        let p = req.params;
        p.is_greedy()
            && !p.has_logits_processors()
            && req.token_mask.is_none()
            && p.logprobs.is_none()
    }

    pub fn sample(
        &self,
        request_id: RequestId,
        raw: &[f32],
        req: &SampleRequest<'_>,
    ) -> SampledToken {
        let params = req.params;
        let mut logits = raw.to_vec();
        if let Some(mask) = req.token_mask {
            apply_token_mask(&mut logits, mask);
        }
        if params.has_logits_processors() {
            apply_logits_processors(&mut logits, req);
        }
        let token = if params.is_greedy() {
            argmax(&logits)
        } else {
            self.draw(&mut logits, self.uniform(request_id, req), params)
        };
        let logprobs = params.logprobs.map(|n| top_logprobs(raw, token as TokenId, n));
        SampledToken { request_id, token_id: token as TokenId, logprobs }
    }

    fn draw(&self, logits: &mut [f32], u: f64, params: &strata_core::SamplingParams) -> usize {
        let inv_t = 1.0 / params.temperature;
        logits.iter_mut().for_each(|l| *l *= inv_t);
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // Candidates as (token, unnormalised probability).
        // Tokens of probability 0 (masked to -inf, or underflowing) are
        // never candidates, so no rounding in the draw can reach them.
        let mut cands: Vec<(usize, f64)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| (i, ((l - max) as f64).exp()))
            .filter(|&(_, p)| p > 0.0)
            .collect();
        if params.min_p > 0.0 {
            // The largest candidate has probability weight 1 after the shift.
            let floor = params.min_p as f64;
            cands.retain(|&(_, p)| p >= floor);
        }
        let k = params.top_k as usize;
        let by_prob_desc =
            |a: &(usize, f64), b: &(usize, f64)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if k > 0 && k < cands.len() {
            cands.select_nth_unstable_by(k - 1, by_prob_desc);
            cands.truncate(k);
        }
        if params.top_p < 1.0 {
            cands.sort_unstable_by(by_prob_desc);
            let total: f64 = cands.iter().map(|c| c.1).sum();
            let target = params.top_p as f64 * total;
            let mut cum = 0.0;
            let mut keep = cands.len();
            for (i, c) in cands.iter().enumerate() {
                cum += c.1;
                if cum >= target {
                    keep = i + 1;
                    break;
                }
            }
            cands.truncate(keep.max(1));
        }
        let total: f64 = cands.iter().map(|c| c.1).sum();
        let mut threshold = u * total;
        for &(i, p) in &cands {
            if threshold < p {
                return i;
            }
            threshold -= p;
        }
        cands.last().map(|c| c.0).expect("invariant: the maximum always survives the filters")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_core::SamplingParams;

    fn rid(n: u64) -> RequestId {
        RequestId::new(n).expect("non-zero")
    }

    fn sample_n(params: &SamplingParams, logits: &[f32], n: usize) -> Vec<u32> {
        sample_after(params, &[], logits, n)
    }

    /// `n` tokens of one request with `prompt`, each appended to its
    /// output before the next is drawn.
    fn sample_after(params: &SamplingParams, prompt: &[u32], logits: &[f32], n: usize) -> Vec<u32> {
        let s = Sampler::new(1);
        let mut out = Vec::new();
        for _ in 0..n {
            let req = SampleRequest {
                params,
                prompt_token_ids: prompt,
                output_token_ids: &out,
                token_mask: None,
            };
            let t = s.sample(rid(1), logits, &req).token_id;
            out.push(t);
        }
        out
    }

    /// The logits after the processors that run before temperature.
    fn processed(params: &SamplingParams, prompt: &[u32], output: &[u32], raw: &[f32]) -> Vec<f32> {
        let mut logits = raw.to_vec();
        let req = SampleRequest {
            params,
            prompt_token_ids: prompt,
            output_token_ids: output,
            token_mask: None,
        };
        apply_logits_processors(&mut logits, &req);
        logits
    }

    fn seeded(seed: u64) -> SamplingParams {
        SamplingParams { seed: Some(seed), temperature: 1.0, ..SamplingParams::default() }
    }

    /// Logits under which every one of `n` tokens is likely.
    fn flat(n: usize) -> Vec<f32> {
        (0..n).map(|i| (i % 3) as f32 * 0.1).collect()
    }

    #[test]
    fn logit_bias_of_100_forces_a_token_and_minus_100_bans_it() {
        let logits = [0.0, 5.0, 2.0, 4.0];
        let force = |p: SamplingParams| SamplingParams { logit_bias: vec![(2, 100.0)], ..p };
        assert_eq!(sample_n(&SamplingParams::greedy(1), &logits, 1), vec![1]);
        assert_eq!(sample_n(&force(SamplingParams::greedy(1)), &logits, 5), vec![2; 5]);
        assert!(sample_n(&force(seeded(7)), &logits, 500).iter().all(|&t| t == 2));
        // Without the bias token 1 is drawn most; banned, never.
        let ban = SamplingParams { logit_bias: vec![(1, -100.0)], ..seeded(7) };
        assert!(sample_n(&seeded(7), &logits, 500).contains(&1));
        let seen = sample_n(&ban, &logits, 500);
        assert!(!seen.contains(&1) && seen.contains(&3), "{seen:?}");
        let ban = SamplingParams { logit_bias: vec![(1, -100.0)], ..SamplingParams::greedy(1) };
        assert_eq!(sample_n(&ban, &logits, 1), vec![3]);
    }

    #[test]
    fn logit_bias_is_clamped_and_the_last_value_of_a_token_wins() {
        let logits = [0.0, -250.0];
        // 1000 is clamped to 100: -150 still loses.
        let p = SamplingParams { logit_bias: vec![(1, 1000.0)], ..SamplingParams::greedy(1) };
        assert_eq!(sample_n(&p, &logits, 1), vec![0]);
        assert_eq!(processed(&p, &[], &[], &logits), vec![0.0, -150.0]);
        let logits = [0.0, -1.0];
        let p =
            SamplingParams { logit_bias: vec![(1, 100.0), (1, 0.0)], ..SamplingParams::greedy(1) };
        assert_eq!(processed(&p, &[], &[], &logits), logits.to_vec());
        let p =
            SamplingParams { logit_bias: vec![(1, 0.0), (1, 100.0)], ..SamplingParams::greedy(1) };
        assert_eq!(sample_n(&p, &logits, 1), vec![1]);
    }

    #[test]
    fn allowed_token_ids_restrict_greedy_and_random_sampling() {
        let logits = flat(10);
        let allowed = vec![3, 5, 8];
        for seed in 0..5 {
            let p = SamplingParams { allowed_token_ids: Some(allowed.clone()), ..seeded(seed) };
            let seen = sample_n(&p, &logits, 300);
            assert!(seen.iter().all(|t| allowed.contains(t)), "{seen:?}");
            assert!(allowed.iter().all(|t| seen.contains(t)), "every allowed id is drawn");
            assert!(sample_n(&seeded(seed), &logits, 300).iter().any(|t| !allowed.contains(t)));
        }
        // Greedy: the best allowed token, not the global maximum (id 2).
        let p = SamplingParams { allowed_token_ids: Some(allowed), ..SamplingParams::greedy(1) };
        assert_eq!(sample_n(&p, &logits, 3), vec![5, 5, 5]);
    }

    #[test]
    fn single_token_bad_words_are_never_sampled() {
        let logits = flat(6);
        for seed in 0..5 {
            assert!(sample_n(&seeded(seed), &logits, 300).contains(&4));
            let p = SamplingParams { bad_words_token_ids: vec![vec![4], vec![2]], ..seeded(seed) };
            let seen = sample_n(&p, &logits, 300);
            assert!(!seen.contains(&4) && !seen.contains(&2), "{seen:?}");
        }
        // Greedy's favourite (id 2) banned: the first of the next best.
        let p = SamplingParams { bad_words_token_ids: vec![vec![2]], ..SamplingParams::greedy(1) };
        assert_eq!(sample_n(&p, &logits, 1), vec![5]);
    }

    #[test]
    fn multi_token_bad_words_never_appear_in_the_output() {
        let logits = flat(4);
        let contains = |seq: &[u32], word: &[u32]| seq.windows(word.len()).any(|w| w == word);
        let words = vec![vec![1, 2], vec![3, 3, 0]];
        for seed in 0..10 {
            let free = sample_n(&seeded(seed), &logits, 1000);
            assert!(words.iter().all(|w| contains(&free, w)), "unbanned, each word occurs");
            let p = SamplingParams { bad_words_token_ids: words.clone(), ..seeded(seed) };
            let seen = sample_n(&p, &logits, 1000);
            for w in &words {
                assert!(!contains(&seen, w), "seed {seed}: {w:?} in {seen:?}");
            }
            // Only the completions are banned: each token still occurs.
            assert!((0..4).all(|t| seen.contains(&t)), "{seen:?}");
        }
        // Greedy: after [.., 1] token 2 (the favourite) is banned.
        let p =
            SamplingParams { bad_words_token_ids: vec![vec![1, 2]], ..SamplingParams::greedy(1) };
        let req = SampleRequest {
            params: &p,
            prompt_token_ids: &[],
            output_token_ids: &[0, 1],
            token_mask: None,
        };
        assert_eq!(Sampler::new(0).sample(rid(1), &logits, &req).token_id, 1);
        let req = SampleRequest {
            params: &p,
            prompt_token_ids: &[1],
            output_token_ids: &[0],
            token_mask: None,
        };
        assert_eq!(Sampler::new(0).sample(rid(1), &logits, &req).token_id, 2, "prompt not matched");
    }

    #[test]
    fn masks_that_leave_nothing_drop_the_bad_words_and_keep_the_allowed_ids() {
        let p = SamplingParams {
            allowed_token_ids: Some(vec![1]),
            bad_words_token_ids: vec![vec![1]],
            ..seeded(3)
        };
        assert_eq!(sample_n(&p, &flat(4), 20), vec![1; 20]);
    }

    #[test]
    fn repetition_penalty_follows_the_hugging_face_formula() {
        // Token 0 (prompt) and 2 (output) are penalised; 1 and 3 are not.
        let raw = [2.0, 1.5, -0.5, -0.4];
        let p = SamplingParams { repetition_penalty: 1.5, ..SamplingParams::greedy(1) };
        let got = processed(&p, &[0, 0], &[2], &raw);
        assert_eq!(got, vec![2.0 / 1.5, 1.5, -0.5 * 1.5, -0.4]);
        // Greedy moves from 0 to 1 because 0 is in the prompt.
        assert_eq!(sample_after(&SamplingParams::greedy(1), &[0], &raw, 1), vec![0]);
        assert_eq!(sample_after(&p, &[0], &raw, 1), vec![1]);
        // A negative logit moves further down: -0.45 beats -0.5 * 1.5.
        let neg = [-0.5, -10.0, -0.45];
        let p = SamplingParams { repetition_penalty: 1.5, ..SamplingParams::greedy(2) };
        assert_eq!(sample_after(&SamplingParams::greedy(1), &[0], &neg, 1), vec![2]);
        assert_eq!(sample_after(&p, &[2], &neg, 1), vec![0]);
        // Below 1 it rewards repeats.
        let p = SamplingParams { repetition_penalty: 0.5, ..SamplingParams::greedy(1) };
        assert_eq!(sample_after(&p, &[1], &raw, 1), vec![1]);
    }

    #[test]
    fn processors_run_in_vllms_order() {
        // Bias before penalties: (1 + 1) / 2 = 1, not 1 / 2 + 1.
        let p = SamplingParams {
            logit_bias: vec![(0, 1.0)],
            repetition_penalty: 2.0,
            frequency_penalty: 0.25,
            presence_penalty: 0.5,
            ..SamplingParams::greedy(1)
        };
        // Token 0: bias, then repetition; token 1 (output twice):
        // repetition, then frequency (2 x 0.25) and presence (0.5).
        let got = processed(&p, &[0], &[1, 1], &[1.0, 3.0, 0.0]);
        assert_eq!(got, vec![1.0, 3.0 / 2.0 - 0.5 - 0.5, 0.0]);
        // A masked token stays masked whatever its bias.
        let p = SamplingParams {
            allowed_token_ids: Some(vec![1]),
            logit_bias: vec![(0, 100.0)],
            ..SamplingParams::greedy(1)
        };
        assert_eq!(sample_n(&p, &[0.0, 0.0], 1), vec![1]);
    }

    #[test]
    fn greedy_takes_the_first_maximum() {
        let p = SamplingParams::greedy(1);
        assert_eq!(sample_n(&p, &[0.0, 3.0, 3.0, 1.0], 2), vec![1, 1]);
    }

    #[test]
    fn penalties_move_greedy_away_from_repeats() {
        let p = SamplingParams { presence_penalty: 2.0, ..SamplingParams::greedy(1) };
        // 3.0 -> 1.0 once used: 2.0 wins, then 1.5.
        assert_eq!(sample_n(&p, &[0.0, 3.0, 2.0, 1.5], 3), vec![1, 2, 3]);
        let p = SamplingParams { frequency_penalty: 0.6, ..SamplingParams::greedy(1) };
        // 3.0 -> 2.4 -> 1.8 after two uses; 2.0 then wins, then alternates.
        assert_eq!(sample_n(&p, &[0.0, 3.0, 2.0, 1.0], 3), vec![1, 1, 2]);
    }

    #[test]
    fn seeded_sampling_is_reproducible_and_seed_dependent() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let p = SamplingParams { seed: Some(42), temperature: 1.0, ..SamplingParams::default() };
        let a = sample_n(&p, &logits, 40);
        assert_eq!(a, sample_n(&p, &logits, 40));
        let q = SamplingParams { seed: Some(43), ..p.clone() };
        assert_ne!(a, sample_n(&q, &logits, 40));
    }

    #[test]
    fn filters_restrict_the_support() {
        let logits = [5.0, 4.9, 4.8, 0.0, -1.0];
        let base = SamplingParams { seed: Some(3), temperature: 1.0, ..SamplingParams::default() };
        let k2 = SamplingParams { top_k: 2, ..base.clone() };
        assert!(sample_n(&k2, &logits, 200).iter().all(|&t| t < 2));
        let p = SamplingParams { top_p: 0.3, ..base.clone() };
        assert!(sample_n(&p, &logits, 200).iter().all(|&t| t == 0));
        let m = SamplingParams { min_p: 0.5, ..base.clone() };
        let seen = sample_n(&m, &logits, 300);
        assert!(seen.iter().all(|&t| t < 3) && seen.contains(&2));
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // p = softmax([ln 1, ln 3]) = [0.25, 0.75].
        let logits = [0.0, 3f32.ln()];
        let p = SamplingParams { seed: Some(9), ..SamplingParams::default() };
        let seen = sample_n(&p, &logits, 4000);
        let ones = seen.iter().filter(|&&t| t == 1).count() as f64 / 4000.0;
        assert!((ones - 0.75).abs() < 0.03, "{ones}");
    }

    #[test]
    fn logprobs_are_raw_and_ordered() {
        let logits = [1.0, 3.0, 2.0];
        let p = SamplingParams { logprobs: Some(2), ..SamplingParams::greedy(1) };
        let out = Sampler::new(0).sample(
            rid(1),
            &logits,
            &SampleRequest {
                params: &p,
                prompt_token_ids: &[],
                output_token_ids: &[],
                token_mask: None,
            },
        );
        let lp = out.logprobs.expect("requested");
        assert_eq!(lp.top.iter().map(|t| t.token_id).collect::<Vec<_>>(), vec![1, 2]);
        let total: f32 = logits.iter().map(|l| l.exp()).sum();
        assert!((lp.sampled.logprob - (3f32.exp() / total).ln()).abs() < 1e-6);
    }
}
