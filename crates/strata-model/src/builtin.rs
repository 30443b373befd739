//! The built-in default model: Llama-shaped, about 3.4 million parameters,
//! deterministic random weights, and a 512-token byte-level BPE vocabulary
//! (the tokenizer is built in code by `strata-tokenizer`, whose special
//! tokens take ids 0-3). Nothing is downloaded; the text it writes is
//! random, but every path of the engine runs real model math.

use crate::config::{Architecture, ModelConfig, RopeScaling};
use crate::weights::{DType, DummyWeights};

/// Seed of the built-in weights ("STRATA").
pub const SEED: u64 = 0x5354_5241_5441;
pub const VOCAB_SIZE: usize = 512;
pub const BOS_TOKEN_ID: u32 = 0;
/// `<|end_of_text|>` and `<|im_end|>`.
pub const EOS_TOKEN_IDS: [u32; 2] = [1, 3];

pub fn config() -> ModelConfig {
    ModelConfig {
        architecture: Architecture::Llama,
        vocab_size: VOCAB_SIZE,
        hidden_size: 256,
        intermediate_size: 768,
        num_layers: 4,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: RopeScaling::None,
        rope_interleaved: false,
        max_position_embeddings: 4096,
        tie_word_embeddings: false,
        attention_bias: false,
        qk_norm: false,
        dtype: Some(DType::F32),
        bos_token_id: Some(BOS_TOKEN_ID),
        eos_token_ids: EOS_TOKEN_IDS.to_vec(),
    }
}

pub fn weights() -> DummyWeights {
    DummyWeights::new(SEED, DType::F32, 0)
}
