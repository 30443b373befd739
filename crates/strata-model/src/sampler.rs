//! Token sampling from one row of logits.
//!
//! Order of operations, as in vLLM: penalties on the raw logits, then
//! temperature, min-p, top-k, top-p, and a draw. Greedy picks the first
//! maximum (as `torch.argmax`). Log-probabilities are those of the raw
//! distribution (vLLM's default `raw_logprobs`).
//!
//! Randomness is stateless: the draw for a request's `i`-th output token is
//! a hash of (request key, i), where the key is the request's seed if it
//! has one. So a seeded request gets the same tokens whatever shares its
//! batch, and after a preemption and recompute.

use std::collections::BTreeMap;

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

    pub fn sample(
        &self,
        request_id: RequestId,
        raw: &[f32],
        req: &SampleRequest<'_>,
    ) -> SampledToken {
        let params = req.params;
        let mut logits = raw.to_vec();
        if params.has_penalties() {
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
        let token = if params.is_greedy() {
            argmax(&logits)
        } else {
            self.draw(&mut logits, self.uniform(request_id, req), params)
        };
        let logprobs = params.logprobs.map(|n| {
            let lse = log_sum_exp(raw);
            let entry =
                |(i, v): (usize, f32)| TokenLogprob { token_id: i as TokenId, logprob: v - lse };
            TopLogprobs {
                sampled: entry((token, raw[token])),
                top: top_n(raw, n as usize).into_iter().map(entry).collect(),
            }
        });
        SampledToken { request_id, token_id: token as TokenId, logprobs }
    }

    fn draw(&self, logits: &mut [f32], u: f64, params: &strata_core::SamplingParams) -> usize {
        let inv_t = 1.0 / params.temperature;
        logits.iter_mut().for_each(|l| *l *= inv_t);
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // Candidates as (token, unnormalised probability).
        let mut cands: Vec<(usize, f64)> =
            logits.iter().enumerate().map(|(i, &l)| (i, ((l - max) as f64).exp())).collect();
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
        let s = Sampler::new(1);
        let mut out = Vec::new();
        for _ in 0..n {
            let req = SampleRequest { params, output_token_ids: &out };
            let t = s.sample(rid(1), logits, &req).token_id;
            out.push(t);
        }
        out
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
            &SampleRequest { params: &p, output_token_ids: &[] },
        );
        let lp = out.logprobs.expect("requested");
        assert_eq!(lp.top.iter().map(|t| t.token_id).collect::<Vec<_>>(), vec![1, 2]);
        let total: f32 = logits.iter().map(|l| l.exp()).sum();
        assert!((lp.sampled.logprob - (3f32.exp() / total).ln()).abs() < 1e-6);
    }
}
