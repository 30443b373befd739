//! OpenAI request and response bodies (the subset strata serves), and the
//! usage block with strata's prompt-token sources (docs/accounting.md).

use serde::{Deserialize, Serialize};
use strata_core::PrefillRecord;

/// `prompt` of `/v1/completions`: a string, a list of token ids, or a list
/// of either (a batch: one set of `n` choices per prompt).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
    Texts(Vec<String>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

impl Stop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Stop::One(s) => vec![s],
            Stop::Many(v) => v,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields shared by completions and chat completions.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SamplingFields {
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    /// P/D disaggregation (vLLM's field): see `KvTransferParams`.
    pub kv_transfer_params: Option<strata_core::KvTransferParams>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub n: Option<u32>,
    pub stop: Option<Stop>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub ignore_eos: Option<bool>,
    pub min_tokens: Option<u32>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// vLLM's extra parameters.
    pub include_stop_str_in_output: Option<bool>,
    pub skip_special_tokens: Option<bool>,
    /// Accepted as vLLM accepts it: with a fast tokenizer (`tokenizer.json`,
    /// the only kind strata loads) it changes nothing, in vLLM as here.
    pub spaces_between_special_tokens: Option<bool>,
    /// Keep only the last N prompt tokens (`-1`: as many as the context
    /// holds).
    pub truncate_prompt_tokens: Option<i64>,
    /// Under `--scheduling-policy priority`, lower runs first.
    pub priority: Option<i32>,
    /// Separates this request's prefix-cache entries from other tenants'.
    pub cache_salt: Option<String>,
    /// HF/vLLM's: > 1 discourages tokens already in the prompt or output.
    pub repetition_penalty: Option<f32>,
    /// OpenAI's: token id (as a string key) to a bias added to its logit,
    /// -100 to 100.
    pub logit_bias: Option<std::collections::HashMap<String, f32>>,
    /// Only these token ids may be sampled.
    pub allowed_token_ids: Option<Vec<u32>>,
    /// Words never generated (vLLM's `bad_words`, tokenized here).
    pub bad_words: Option<Vec<String>>,
    /// The log-probability of each prompt token (and this many
    /// alternatives), as vLLM returns them.
    pub prompt_logprobs: Option<u32>,
    /// OpenAI's structured output (`text`, `json_object`, `json_schema`).
    pub response_format: Option<serde_json::Value>,
    /// vLLM's structured outputs (`json`, `regex`, `choice`, `grammar`,
    /// `json_object`); see `crate::structured`.
    pub structured_outputs: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: Prompt,
    pub logprobs: Option<u32>,
    /// Return the prompt before the generated text.
    #[serde(default)]
    pub echo: bool,
    #[serde(flatten)]
    pub sampling: SamplingFields,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Sources {
    pub local_compute: u64,
    pub local_cache_hit: u64,
    pub host: u64,
    pub disk: u64,
    pub remote: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PromptTokensDetails {
    pub cached_tokens: u64,
    pub sources: Sources,
    pub recomputed_tokens: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub prompt_tokens_details: PromptTokensDetails,
}

impl Usage {
    /// Adds one engine request (one choice): its prompt record, if it got
    /// as far as a first token, and its generated tokens. With `n > 1`
    /// each choice is its own request with its own record (rule 5), so the
    /// prompt counts once per choice and the sources still sum to it.
    pub fn add(&mut self, record: Option<&PrefillRecord>, completion_tokens: u64) {
        if let Some(r) = record {
            self.prompt_tokens += u64::from(r.prompt_tokens);
            let s = &mut self.prompt_tokens_details.sources;
            s.local_compute += u64::from(r.local_compute);
            s.local_cache_hit += u64::from(r.local_cache_hit);
            s.host += u64::from(r.host);
            s.disk += u64::from(r.disk);
            s.remote += u64::from(r.remote);
            self.prompt_tokens_details.cached_tokens += u64::from(r.cached_tokens());
            self.prompt_tokens_details.recomputed_tokens += u64::from(r.recomputed_tokens());
        }
        self.completion_tokens += completion_tokens;
        self.total_tokens = self.prompt_tokens + self.completion_tokens;
    }
}
