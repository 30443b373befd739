//! Which request fields strata reads, which it refuses, and what happens
//! to the rest (vLLM's behaviour): a field strata knows but does not
//! implement (guided decoding, beam search, `suffix`, ...) is refused with
//! a 400 naming it, never silently ignored; an unknown field is ignored
//! with one warning per request, as vLLM logs "fields were present in the
//! request but ignored". A refused field sent as `null`, `false` or empty
//! asks for nothing and is accepted (SDKs send their defaults).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::ApiError;

/// What one endpoint reads and refuses.
#[derive(Debug)]
pub struct Fields {
    pub endpoint: &'static str,
    pub known: &'static [&'static [&'static str]],
    pub refused: &'static [&'static [&'static str]],
}

/// Fields of [`crate::openai::SamplingFields`], shared by both endpoints.
pub const SAMPLING: &[&str] = &[
    "max_tokens",
    "max_completion_tokens",
    "kv_transfer_params",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "n",
    "stop",
    "stop_token_ids",
    "ignore_eos",
    "min_tokens",
    "stream",
    "stream_options",
    "include_stop_str_in_output",
    "skip_special_tokens",
    "spaces_between_special_tokens",
    "truncate_prompt_tokens",
    "priority",
    "cache_salt",
    "repetition_penalty",
    "logit_bias",
    "allowed_token_ids",
    "bad_words",
    "prompt_logprobs",
    "response_format",
    "structured_outputs",
    // OpenAI's end-user id: recorded nowhere, changes nothing (as vLLM).
    "user",
];

pub const COMPLETIONS: Fields = Fields {
    endpoint: "/v1/completions",
    known: &[&["model", "prompt", "logprobs", "echo", "add_special_tokens"], SAMPLING],
    refused: &[&["suffix"], REFUSED],
};

/// Chat's own fields are in [`crate::chat::CHAT_FIELDS`]; tool calling is
/// among them and refused by the chat handler.
pub const CHAT: Fields = Fields {
    endpoint: "/v1/chat/completions",
    known: &[crate::chat::CHAT_FIELDS, SAMPLING],
    refused: &[REFUSED],
};

/// Known to OpenAI or vLLM, not implemented by strata.
const REFUSED: &[&str] = &[
    "best_of",
    "use_beam_search",
    "length_penalty",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "guided_decoding_backend",
    "guided_whitespace_pattern",
    "logits_processors",
    "return_tokens_as_token_ids",
    "return_token_ids",
    "prompt_embeds",
    "lora_request",
    "mm_processor_kwargs",
];

/// Whether a value asks for nothing (what SDKs send for an unset field).
fn asks_for_nothing(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Number(_) | Value::Bool(true) => false,
    }
}

impl Fields {
    /// Checks a body's fields, then reads it as `T` (from the text, so
    /// JSON objects keep the order the client wrote them in).
    pub fn parse<T: DeserializeOwned>(
        &self,
        body: Result<Bytes, BytesRejection>,
    ) -> Result<T, ApiError> {
        let body = body?;
        let text = std::str::from_utf8(&body)
            .map_err(|_| ApiError::bad_request("the body is not valid UTF-8"))?;
        let value: Value = serde_json::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?;
        self.check(&value)?;
        serde_json::from_str(text)
            .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))
    }

    fn check(&self, body: &Value) -> Result<(), ApiError> {
        let Value::Object(map) = body else {
            return Err(ApiError::bad_request("the request body must be a JSON object"));
        };
        let mut ignored = Vec::new();
        for (key, value) in map {
            if self.known.iter().any(|list| list.contains(&key.as_str())) {
                continue;
            }
            if let Some(name) = self.refused.iter().flat_map(|l| l.iter()).find(|k| **k == key) {
                if asks_for_nothing(value) {
                    continue;
                }
                return Err(ApiError::invalid(name, format!("`{key}` is not supported by strata")));
            }
            ignored.push(key.as_str());
        }
        if !ignored.is_empty() {
            tracing::warn!(
                endpoint = self.endpoint,
                "the following fields were present in the request but ignored: {ignored:?}"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::openai::CompletionRequest;

    #[test]
    fn refused_fields_name_themselves_and_defaults_pass() {
        let body = |v: serde_json::Value| Ok(Bytes::from(v.to_string()));
        let err = COMPLETIONS
            .parse::<CompletionRequest>(body(json!({"prompt": "a", "suffix": "b"})))
            .unwrap_err();
        assert!(err.to_string().contains("`suffix` is not supported"), "{err}");
        let ok = COMPLETIONS.parse::<CompletionRequest>(body(
            json!({"prompt": "a", "suffix": null, "best_of": null, "use_beam_search": false, "unknown_thing": 3}),
        ));
        assert!(ok.is_ok());
        let err = CHAT
            .parse::<crate::chat::ChatCompletionRequest>(body(
                json!({"messages": [{"role": "user", "content": "x"}], "guided_regex": "a+"}),
            ))
            .unwrap_err();
        assert!(err.to_string().contains("`guided_regex` is not supported"), "{err}");
    }

    /// llm-d's routing sidecar (nixlv2) sends its prefill leg with every
    /// remote field `null`; vLLM's decode-side fields may be `null` too.
    #[test]
    fn kv_transfer_params_take_null_as_absent_and_ignore_unknown_fields() {
        let body = |v: serde_json::Value| Ok(Bytes::from(v.to_string()));
        let req = COMPLETIONS
            .parse::<CompletionRequest>(body(json!({"prompt": "a", "n": 2, "cache_salt": "t1",
                "kv_transfer_params": {"do_remote_decode": true, "do_remote_prefill": false,
                    "remote_engine_id": null, "remote_block_ids": null, "remote_host": null,
                    "remote_port": null, "transfer_id": null, "num_pulls": null,
                    "remote_prefill_cached_tokens": null, "remote_prefill_sources": null,
                    "tp_size": 1, "remote_notify_port": null}})))
            .unwrap();
        let kv = req.sampling.kv_transfer_params.unwrap();
        let want = strata_core::KvTransferParams { do_remote_decode: true, ..Default::default() };
        assert_eq!(kv, want);
        assert_eq!(req.sampling.cache_salt.as_deref(), Some("t1"));
        let all_null = json!({"prompt": "a", "kv_transfer_params": {"do_remote_decode": null,
            "do_remote_prefill": null, "remote_prefill_sources": {"local_compute": null, "remote": 3}}});
        let kv = COMPLETIONS.parse::<CompletionRequest>(body(all_null)).unwrap();
        let kv = kv.sampling.kv_transfer_params.unwrap();
        assert!(!kv.do_remote_decode && !kv.do_remote_prefill);
        assert_eq!(kv.remote_prefill_sources.map(|s| (s.local_compute, s.remote)), Some((0, 3)));
        // A wrong type is still a 400 that names what is wrong.
        let err = COMPLETIONS
            .parse::<CompletionRequest>(body(
                json!({"prompt": "a", "kv_transfer_params": {"remote_block_ids": "x"}}),
            ))
            .unwrap_err();
        assert_eq!(err.status().as_u16(), 400);
        assert!(err.to_string().contains("invalid type"), "{err}");
    }
}
