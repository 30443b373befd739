//! Admission checks: a request that could never run is rejected when it
//! arrives, with a message a client can act on, instead of waiting forever.

use thiserror::Error;

use super::SchedulerConfig;
use crate::ids::RequestId;
use crate::request::NewRequest;
use crate::sampling::SamplingError;

#[derive(Debug, Error, Clone, PartialEq)]
pub enum AdmissionError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("invalid sampling parameters: {0}")]
    Sampling(#[from] SamplingError),
    #[error("this model's maximum context length is {max_model_len} tokens, but the prompt has {prompt} tokens")]
    PromptTooLong { prompt: usize, max_model_len: usize },
    #[error(
        "this model's maximum context length is {max_model_len} tokens, but {total} were requested \
         ({prompt} in the prompt, {max_tokens} in the completion)"
    )]
    ContextExceeded { prompt: usize, max_tokens: u32, total: usize, max_model_len: usize },
    #[error(
        "the request needs {needed} KV blocks for {tokens} tokens but the cache has {num_blocks}"
    )]
    NeverFits { needed: usize, tokens: usize, num_blocks: usize },
    #[error("token id {token} is outside the vocabulary of {vocab_size}")]
    TokenOutOfVocabulary { token: u32, vocab_size: usize },
    /// A token id named by a sampling parameter (`logit_bias`,
    /// `allowed_token_ids`, `bad_words_token_ids`) is outside the
    /// vocabulary; `field` names the parameter.
    #[error("{field} contains token id {token}, outside the vocabulary of {vocab_size}")]
    ParamTokenOutOfVocabulary { field: &'static str, token: u32, vocab_size: usize },
    #[error("{0} is already in the engine")]
    DuplicateId(RequestId),
}

pub(super) fn check(
    config: &SchedulerConfig,
    id: RequestId,
    new: &NewRequest,
    duplicate: bool,
) -> Result<(), AdmissionError> {
    if duplicate {
        return Err(AdmissionError::DuplicateId(id));
    }
    let prompt = new.prompt_token_ids.len();
    if prompt == 0 {
        return Err(AdmissionError::EmptyPrompt);
    }
    new.params.validate()?;
    if prompt >= config.max_model_len {
        return Err(AdmissionError::PromptTooLong { prompt, max_model_len: config.max_model_len });
    }
    let total = prompt + new.params.max_tokens as usize;
    if total > config.max_model_len {
        return Err(AdmissionError::ContextExceeded {
            prompt,
            max_tokens: new.params.max_tokens,
            total,
            max_model_len: config.max_model_len,
        });
    }
    // The last sampled token is never written to the cache.
    let tokens = total - 1;
    let needed = tokens.div_ceil(config.block_size);
    if needed > config.num_blocks {
        return Err(AdmissionError::NeverFits { needed, tokens, num_blocks: config.num_blocks });
    }
    Ok(())
}
