//! Sampling parameters and their validation.
//!
//! Semantics follow vLLM's `SamplingParams` so that OpenAI-style requests
//! map one to one: a temperature of 0 means greedy; `top_k == 0` disables
//! top-k; `top_p == 1` and `min_p == 0` disable their filters. Presence
//! and frequency penalties apply to tokens generated so far (not the
//! prompt), as in vLLM and the OpenAI API; the repetition penalty applies
//! to tokens of the prompt and of the output (vLLM's and Hugging Face's
//! definition). Validation happens once, at admission; the sampler may then
//! rely on every field being in range. Token ids inside `logit_bias`,
//! `allowed_token_ids` and `bad_words_token_ids` are checked against the
//! vocabulary by `EngineCore::add_request` (only the executor knows its
//! size).
//!
//! The sampler applies the logits processors in vLLM v1's order
//! (`vllm/v1/sample/sampler.py`): the `allowed_token_ids` mask, the bad
//! words, the logit bias, the penalties (repetition, then frequency, then
//! presence), and then temperature, min-p, top-k and top-p. Greedy decoding
//! sees everything before the temperature.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ids::TokenId;

/// The largest `logprobs` (top-N alternatives) a request may ask for.
pub const MAX_LOGPROBS: u32 = 20;

/// Below this, a temperature is treated as greedy decoding (vLLM's rule).
pub const GREEDY_TEMPERATURE: f32 = 1e-5;

/// `logit_bias` values are clamped to `[-MAX_LOGIT_BIAS, MAX_LOGIT_BIAS]`
/// when applied (the OpenAI API's range; vLLM's OpenAI server clamps the
/// same way).
pub const MAX_LOGIT_BIAS: f32 = 100.0;

/// A field missing from serialized parameters takes its default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_p: f32,
    /// 0 disables top-k.
    pub top_k: u32,
    pub min_p: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// Per-request seed: the same seed, prompt and parameters give the same
    /// tokens, whatever else shares the batch.
    pub seed: Option<u64>,
    /// Number of top alternatives to return with each sampled token.
    pub logprobs: Option<u32>,
    pub max_tokens: u32,
    /// EOS and stop tokens do not end the request before this many tokens.
    pub min_tokens: u32,
    /// Keep generating past end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Extra token ids that end the sequence (besides the model's EOS).
    pub stop_token_ids: Vec<TokenId>,
    /// Scales the logits of every token present in the prompt or the
    /// output so far: a positive logit is divided by it, a negative one
    /// multiplied (vLLM / Hugging Face). 1 disables it; must be > 0.
    pub repetition_penalty: f32,
    /// Added to the logits of the given tokens before sampling (OpenAI's
    /// `logit_bias`), after the allowed-ids mask and bad words and before
    /// the penalties. Values are clamped to `[-100, 100]`; a token listed
    /// twice takes its last value (as a JSON object's last key wins).
    pub logit_bias: Vec<(TokenId, f32)>,
    /// Only these tokens may be sampled (`None`: all). Must not be empty.
    pub allowed_token_ids: Option<Vec<TokenId>>,
    /// vLLM's `bad_words`, already tokenized: a one-token word is never
    /// sampled; for a longer one, its last token is banned whenever the
    /// output so far ends with the rest of it (vLLM's
    /// `NoBadWordsLogitsProcessor`; only output tokens are looked at, not
    /// the prompt). No word may be empty.
    pub bad_words_token_ids: Vec<Vec<TokenId>>,
    /// vLLM's `prompt_logprobs`: for every prompt token after the first,
    /// its log-probability given the tokens before it and the N most likely
    /// alternatives (raw distribution). Delivered once, with the request's
    /// first sampled token (`RequestOutput::prompt_logprobs`). A request
    /// that asks for them skips the prefix cache and connector matches, so
    /// every prompt position is computed. At most [`MAX_LOGPROBS`].
    pub prompt_logprobs: Option<u32>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            logprobs: None,
            max_tokens: 16,
            min_tokens: 0,
            ignore_eos: false,
            stop_token_ids: Vec::new(),
            repetition_penalty: 1.0,
            logit_bias: Vec::new(),
            allowed_token_ids: None,
            bad_words_token_ids: Vec::new(),
            prompt_logprobs: None,
        }
    }
}

#[derive(Debug, Error, Clone, PartialEq)]
pub enum SamplingError {
    #[error("temperature must be a finite number >= 0, got {0}")]
    Temperature(f32),
    #[error("top_p must be in (0, 1], got {0}")]
    TopP(f32),
    #[error("min_p must be in [0, 1], got {0}")]
    MinP(f32),
    #[error("{name} must be in [-2, 2], got {value}")]
    Penalty { name: &'static str, value: f32 },
    #[error("logprobs must be at most {MAX_LOGPROBS}, got {0}")]
    Logprobs(u32),
    #[error("max_tokens must be at least 1, got {0}")]
    MaxTokens(u32),
    #[error("min_tokens ({min}) must not exceed max_tokens ({max})")]
    MinTokens { min: u32, max: u32 },
    #[error("repetition_penalty must be a finite number > 0, got {0}")]
    RepetitionPenalty(f32),
    #[error("logit_bias for token {token} must be a finite number, got {value}")]
    LogitBias { token: TokenId, value: f32 },
    #[error("allowed_token_ids must not be empty")]
    AllowedTokenIdsEmpty,
    #[error("bad_words_token_ids must not contain an empty word (word {index})")]
    BadWordEmpty { index: usize },
    #[error("prompt_logprobs must be at most {MAX_LOGPROBS}, got {0}")]
    PromptLogprobs(u32),
}

impl SamplingParams {
    /// Greedy decoding with the given token limit.
    pub fn greedy(max_tokens: u32) -> Self {
        Self { temperature: 0.0, max_tokens, ..Self::default() }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature < GREEDY_TEMPERATURE
    }

    /// Whether any of presence, frequency or repetition penalty is set.
    pub fn has_penalties(&self) -> bool {
        self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
            || self.repetition_penalty != 1.0
    }

    /// Whether anything changes the logits before temperature (penalties,
    /// logit bias, allowed ids, bad words): the sampler's fast path skips
    /// copying the logits otherwise.
    pub fn has_logits_processors(&self) -> bool {
        self.has_penalties()
            || !self.logit_bias.is_empty()
            || self.allowed_token_ids.is_some()
            || !self.bad_words_token_ids.is_empty()
    }

    /// Every token id the parameters name (`logit_bias`,
    /// `allowed_token_ids`, `bad_words_token_ids`), with the field's name,
    /// for the engine's vocabulary check.
    pub fn token_ids(&self) -> impl Iterator<Item = (&'static str, TokenId)> + '_ {
        let bias = self.logit_bias.iter().map(|&(t, _)| ("logit_bias", t));
        let allowed = self.allowed_token_ids.iter().flatten().map(|&t| ("allowed_token_ids", t));
        let bad = self.bad_words_token_ids.iter().flatten().map(|&t| ("bad_words_token_ids", t));
        bias.chain(allowed).chain(bad)
    }

    /// Checks every field's range; the first problem found is returned.
    pub fn validate(&self) -> Result<(), SamplingError> {
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(SamplingError::Temperature(self.temperature));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(SamplingError::TopP(self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return Err(SamplingError::MinP(self.min_p));
        }
        for (name, value) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&value) {
                return Err(SamplingError::Penalty { name, value });
            }
        }
        if let Some(n) = self.logprobs {
            if n > MAX_LOGPROBS {
                return Err(SamplingError::Logprobs(n));
            }
        }
        if self.max_tokens == 0 {
            return Err(SamplingError::MaxTokens(0));
        }
        if self.min_tokens > self.max_tokens {
            return Err(SamplingError::MinTokens { min: self.min_tokens, max: self.max_tokens });
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(SamplingError::RepetitionPenalty(self.repetition_penalty));
        }
        if let Some(&(token, value)) = self.logit_bias.iter().find(|(_, v)| !v.is_finite()) {
            return Err(SamplingError::LogitBias { token, value });
        }
        if self.allowed_token_ids.as_ref().is_some_and(Vec::is_empty) {
            return Err(SamplingError::AllowedTokenIdsEmpty);
        }
        if let Some(index) = self.bad_words_token_ids.iter().position(Vec::is_empty) {
            return Err(SamplingError::BadWordEmpty { index });
        }
        if let Some(n) = self.prompt_logprobs {
            if n > MAX_LOGPROBS {
                return Err(SamplingError::PromptLogprobs(n));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(SamplingParams::default().validate(), Ok(()));
        assert!(SamplingParams::greedy(4).is_greedy());
    }

    #[test]
    fn out_of_range_values_are_rejected_with_the_field_named() {
        let bad = |p: SamplingParams| p.validate().expect_err("must be rejected").to_string();
        let d = SamplingParams::default;
        assert!(bad(SamplingParams { temperature: -0.5, ..d() }).contains("temperature"));
        assert!(bad(SamplingParams { temperature: f32::NAN, ..d() }).contains("temperature"));
        assert!(bad(SamplingParams { top_p: 0.0, ..d() }).contains("top_p"));
        assert!(bad(SamplingParams { top_p: 1.5, ..d() }).contains("top_p"));
        assert!(bad(SamplingParams { min_p: -0.1, ..d() }).contains("min_p"));
        assert!(bad(SamplingParams { presence_penalty: 2.5, ..d() }).contains("presence_penalty"));
        assert!(bad(SamplingParams { frequency_penalty: -3.0, ..d() }).contains("frequency"));
        assert!(bad(SamplingParams { logprobs: Some(21), ..d() }).contains("logprobs"));
        assert!(bad(SamplingParams { max_tokens: 0, ..d() }).contains("max_tokens"));
        assert!(bad(SamplingParams { min_tokens: 17, ..d() }).contains("min_tokens"));
        for rp in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let e = bad(SamplingParams { repetition_penalty: rp, ..d() });
            assert!(e.contains("repetition_penalty"), "{e}");
        }
        let e = bad(SamplingParams { logit_bias: vec![(3, 1.0), (4, f32::NAN)], ..d() });
        assert!(e.contains("logit_bias") && e.contains("token 4"), "{e}");
        let e = bad(SamplingParams { allowed_token_ids: Some(vec![]), ..d() });
        assert!(e.contains("allowed_token_ids"), "{e}");
        let e = bad(SamplingParams { bad_words_token_ids: vec![vec![1, 2], vec![]], ..d() });
        assert!(e.contains("bad_words_token_ids") && e.contains("word 1"), "{e}");
        let e = bad(SamplingParams { prompt_logprobs: Some(21), ..d() });
        assert!(e.contains("prompt_logprobs"), "{e}");
    }

    #[test]
    fn new_fields_accept_their_valid_ranges() {
        let ok = SamplingParams {
            repetition_penalty: 0.5,
            // Out of [-100, 100] is clamped when applied, not refused.
            logit_bias: vec![(1, 250.0), (2, -100.0)],
            allowed_token_ids: Some(vec![1, 2, 3]),
            bad_words_token_ids: vec![vec![4], vec![5, 6]],
            prompt_logprobs: Some(MAX_LOGPROBS),
            ..SamplingParams::default()
        };
        assert_eq!(ok.validate(), Ok(()));
        assert!(ok.has_penalties() && ok.has_logits_processors());
        assert!(!SamplingParams::default().has_logits_processors());
        let named: Vec<_> = ok.token_ids().collect();
        assert_eq!(
            named,
            vec![
                ("logit_bias", 1),
                ("logit_bias", 2),
                ("allowed_token_ids", 1),
                ("allowed_token_ids", 2),
                ("allowed_token_ids", 3),
                ("bad_words_token_ids", 4),
                ("bad_words_token_ids", 5),
                ("bad_words_token_ids", 6),
            ]
        );
    }
}
