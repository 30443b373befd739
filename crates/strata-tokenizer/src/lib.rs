//! Tokenizers for strata.
//!
//! [`Tokenizer`] wraps Hugging Face's `tokenizers` crate: any
//! `tokenizer.json` loads, with the end-of-sequence ids gathered from
//! `generation_config.json`, `config.json` and `tokenizer_config.json`
//! (their union, as vLLM stops on any of them). [`builtin`] builds the
//! default model's byte-level BPE in code, so nothing is downloaded.
//!
//! This is its own crate because both the CLI and the server need it, and
//! the server must not depend on the model crate (docs/architecture.md, "Crates").

pub mod builtin;
pub mod chat_template;
pub mod gguf;
pub mod incremental;

pub use chat_template::{load_chat_template_arg, ChatConfig, ChatTemplates, SpecialToken};
pub use incremental::IncrementalDetokenizer;

use std::path::{Path, PathBuf};

use serde_json::Value;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TokenizerError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("tokenizer: {0}")]
    Tokenize(String),
    /// A `--chat-template` argument that is neither a readable file nor a
    /// template.
    #[error("{0}")]
    ChatTemplate(String),
    /// GGUF tokenizer metadata that strata cannot build a tokenizer from.
    #[error("GGUF tokenizer: {0}")]
    Gguf(String),
}

pub type Result<T, E = TokenizerError> = std::result::Result<T, E>;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    eos_token_ids: Vec<u32>,
    bos_token_id: Option<u32>,
    chat: ChatConfig,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("eos_token_ids", &self.eos_token_ids)
            .finish()
    }
}

fn file_err(path: &Path, message: impl ToString) -> TokenizerError {
    TokenizerError::File { path: path.to_path_buf(), message: message.to_string() }
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text).map(Some).map_err(|e| file_err(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(file_err(path, e)),
    }
}

fn ids_of(value: Option<&Value>) -> Vec<u32> {
    match value {
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).map(|n| n as u32).collect(),
        _ => Vec::new(),
    }
}

use chat_template::token_string;

impl Tokenizer {
    /// The built-in model's tokenizer.
    pub fn builtin() -> Self {
        let inner = tokenizers::Tokenizer::from_bytes(builtin::tokenizer_json().to_string())
            .expect("invariant: the built-in tokenizer JSON is valid");
        Self {
            inner,
            eos_token_ids: builtin::EOS_TOKEN_IDS.to_vec(),
            bos_token_id: Some(builtin::BOS_TOKEN_ID),
            chat: ChatConfig::single(
                builtin::CHAT_TEMPLATE,
                builtin::SPECIAL_TOKENS[0],
                builtin::SPECIAL_TOKENS[3],
            ),
        }
    }

    /// Loads `tokenizer.json` from a model directory, the EOS ids from the
    /// configs beside it, and the chat template and special tokens
    /// ([`chat_template`]).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(file_err(&path, "not found (the model directory needs a tokenizer.json)"));
        }
        let inner = tokenizers::Tokenizer::from_file(&path).map_err(|e| file_err(&path, e))?;
        let generation = read_json(&dir.join("generation_config.json"))?;
        let config = read_json(&dir.join("config.json"))?;
        let tok_config = read_json(&dir.join("tokenizer_config.json"))?;
        let mut eos = Vec::new();
        for v in [&generation, &config] {
            eos.extend(ids_of(v.as_ref().and_then(|v| v.get("eos_token_id"))));
        }
        if let Some(s) = token_string(tok_config.as_ref().and_then(|v| v.get("eos_token"))) {
            eos.extend(inner.token_to_id(s));
        }
        eos.sort_unstable();
        eos.dedup();
        let bos_token_id = [&generation, &config]
            .iter()
            .find_map(|v| ids_of(v.as_ref().and_then(|v| v.get("bos_token_id"))).first().copied());
        let chat = chat_template::load(dir, tok_config.as_ref())?;
        Ok(Self { inner, eos_token_ids: eos, bos_token_id, chat })
    }

    /// Token ids of `text`; `add_special_tokens` applies the tokenizer's
    /// post-processor (e.g. a leading BOS), as transformers does by default.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.inner
            .encode(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Tokenize(e.to_string()))
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| TokenizerError::Tokenize(e.to_string()))
    }

    /// Size of the vocabulary including added tokens.
    /// The tokenizer as `tokenizer.json` would hold it (for tools that
    /// read that format, such as the structured-output grammar engine).
    pub fn to_json(&self) -> Result<Value> {
        let text =
            self.inner.to_string(false).map_err(|e| TokenizerError::Tokenize(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| TokenizerError::Tokenize(e.to_string()))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_token_ids
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    pub fn chat_config(&self) -> &ChatConfig {
        &self.chat
    }

    /// Replaces the model's chat template for every request (vLLM's
    /// `--chat-template`; see [`load_chat_template_arg`] for reading the
    /// argument).
    pub fn set_chat_template(&mut self, template: String) {
        self.chat.override_template = Some(template);
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_round_trips_text_including_multibyte_characters() {
        let t = Tokenizer::builtin();
        for text in ["Hello, world!", "The engine computes the prompt.", "café naïve 日本 🚀", ""]
        {
            let ids = t.encode(text, false).expect("encode");
            assert_eq!(t.decode(&ids, true).expect("decode"), text);
        }
    }

    #[test]
    fn builtin_merges_compress_english_and_prepends_bos() {
        let t = Tokenizer::builtin();
        let text = "the tokens of the prompt are computed by the engine";
        let ids = t.encode(text, false).expect("encode");
        assert!(ids.len() < text.len() / 2, "{} tokens for {} bytes", ids.len(), text.len());
        let with_bos = t.encode(text, true).expect("encode");
        assert_eq!(with_bos[0], builtin::BOS_TOKEN_ID);
        assert_eq!(&with_bos[1..], &ids[..]);
        assert!(t.vocab_size() <= builtin::VOCAB_SIZE);
    }

    #[test]
    fn from_dir_reports_missing_and_broken_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("tokenizer.json") && e.contains("not found"), "{e}");
        std::fs::write(dir.path().join("tokenizer.json"), "{ not json").expect("write");
        let e = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
        assert!(e.contains("tokenizer.json"), "{e}");
    }

    #[test]
    fn from_dir_collects_eos_ids_from_all_configs() {
        let dir = tempfile::tempdir().expect("tempdir");
        builtin::write_files(dir.path()).expect("write");
        std::fs::write(dir.path().join("generation_config.json"), r#"{"eos_token_id": [1, 2]}"#)
            .expect("write");
        let t = Tokenizer::from_dir(dir.path()).expect("load");
        assert_eq!(t.eos_token_ids(), &[1, 2, 3]);
        assert_eq!(
            t.encode("abc", true).expect("encode"),
            Tokenizer::builtin().encode("abc", true).expect("encode")
        );
    }
}
