//! Sampling parameters and their validation.
//!
//! Semantics follow vLLM's `SamplingParams` so that OpenAI-style requests
//! map one to one: a temperature of 0 means greedy; `top_k == 0` disables
//! top-k; `top_p == 1` and `min_p == 0` disable their filters. Penalties
//! apply to tokens generated so far (not the prompt), as in vLLM and the
//! OpenAI API. Validation happens once, at admission; the sampler may then
//! rely on every field being in range.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ids::TokenId;

/// The largest `logprobs` (top-N alternatives) a request may ask for.
pub const MAX_LOGPROBS: u32 = 20;

/// Below this, a temperature is treated as greedy decoding (vLLM's rule).
pub const GREEDY_TEMPERATURE: f32 = 1e-5;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
}

impl SamplingParams {
    /// Greedy decoding with the given token limit.
    pub fn greedy(max_tokens: u32) -> Self {
        Self { temperature: 0.0, max_tokens, ..Self::default() }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature < GREEDY_TEMPERATURE
    }

    pub fn has_penalties(&self) -> bool {
        self.presence_penalty != 0.0 || self.frequency_penalty != 0.0
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
    }
}
