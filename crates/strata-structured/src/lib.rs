//! strata-structured: structured outputs with llguidance, the grammar
//! engine behind vLLM's `guidance` backend.
//!
//! A [`GrammarCompiler`] is made once per model from its tokenizer (the
//! token trie llguidance walks to compute masks); [`GrammarCompiler::compile`]
//! turns a [`Constraint`] (a JSON schema, a regex, a choice, a Lark grammar)
//! into a [`strata_core::structured::CompiledGrammar`], cached by its text
//! so a schema sent again is not compiled again, and each request gets its
//! own matcher from it (strata-core drives the matchers: masks before
//! sampling, sampled tokens after).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{self, TokRxInfo, TokTrie, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::Value;
use strata_core::structured::{CompiledGrammar, GrammarMatcher, SharedGrammar, TokenMask};
use strata_core::TokenId;
use strata_tokenizer::Tokenizer;

/// Compiled grammars kept for reuse; past this many the cache starts over.
const CACHE_ENTRIES: usize = 256;

/// What a request constrains its output to.
#[derive(Clone, Debug, PartialEq)]
pub enum Constraint {
    /// A JSON schema (`{"type": "object"}` for `json_object`).
    JsonSchema(Value),
    /// A regular expression the whole output matches.
    Regex(String),
    /// Exactly one of these strings.
    Choice(Vec<String>),
    /// A Lark grammar (llguidance's dialect, which also takes GBNF-style
    /// rules written in Lark syntax).
    Lark(String),
}

impl Constraint {
    /// The grammar llguidance compiles.
    fn grammar(&self) -> TopLevelGrammar {
        match self {
            Constraint::JsonSchema(schema) => TopLevelGrammar::from_json_schema(schema.clone()),
            Constraint::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Constraint::Choice(choices) => {
                let alternatives: Vec<String> = choices
                    .iter()
                    .map(|c| serde_json::to_string(c).expect("invariant: strings serialize"))
                    .collect();
                TopLevelGrammar::from_lark(format!("start: {}", alternatives.join(" | ")))
            }
            Constraint::Lark(lark) => TopLevelGrammar::from_lark(lark.clone()),
        }
    }

    /// The kind, as the metrics label it.
    pub fn kind(&self) -> &'static str {
        match self {
            Constraint::JsonSchema(_) => "json",
            Constraint::Regex(_) => "regex",
            Constraint::Choice(_) => "choice",
            Constraint::Lark(_) => "grammar",
        }
    }

    /// The cache key: the constraint's kind and text.
    fn key(&self) -> String {
        match self {
            Constraint::JsonSchema(s) => format!("json:{s}"),
            Constraint::Regex(r) => format!("regex:{r}"),
            Constraint::Choice(c) => format!("choice:{}", Value::from(c.clone())),
            Constraint::Lark(l) => format!("lark:{l}"),
        }
    }
}

/// The model's tokens as llguidance sees them: the token trie, and the
/// model's tokenizer for the few strings the grammar engine tokenizes.
struct TokEnv {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for TokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<u32> {
        // Grammars are text; invalid UTF-8 cannot occur in one.
        self.tokenizer.encode(&String::from_utf8_lossy(s), false).unwrap_or_default()
    }
}

/// Where the compiler reports: each constrained request by kind, and each
/// mask's computation time in seconds.
#[derive(Clone)]
pub struct Observer {
    pub request: Arc<dyn Fn(&str) + Send + Sync>,
    pub mask_seconds: Arc<dyn Fn(f64) + Send + Sync>,
}

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

impl Default for Observer {
    fn default() -> Self {
        Self { request: Arc::new(|_| {}), mask_seconds: Arc::new(|_| {}) }
    }
}

/// Compiles constraints for one model.
pub struct GrammarCompiler {
    observer: Observer,
    factory: Arc<ParserFactory>,
    /// The model's end-of-sequence ids: the first is llguidance's, the
    /// others are allowed wherever it is.
    eos_token_ids: Vec<TokenId>,
    vocab_size: usize,
    cache: Mutex<HashMap<String, Arc<LlgGrammar>>>,
}

impl std::fmt::Debug for GrammarCompiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrammarCompiler")
            .field("vocab_size", &self.vocab_size)
            .field("eos_token_ids", &self.eos_token_ids)
            .finish()
    }
}

impl GrammarCompiler {
    /// The compiler for a model whose tokenizer is `tokenizer` and whose
    /// vocabulary (the logits' width, at least the tokenizer's) is
    /// `vocab_size`. Fails for a tokenizer that is neither byte-level nor
    /// byte-fallback BPE (the token bytes cannot be known).
    pub fn new(tokenizer: Arc<Tokenizer>, vocab_size: usize) -> Result<Self, String> {
        let json = tokenizer.to_json().map_err(|e| e.to_string())?;
        let mut words = llguidance::token_bytes_from_tokenizer_json(&json)
            .map_err(|e| format!("the tokenizer's token bytes: {e}"))?;
        if words.len() > vocab_size {
            return Err(format!(
                "the tokenizer has {} tokens, more than the model's vocabulary of {vocab_size}",
                words.len()
            ));
        }
        // Ids the tokenizer does not name (padding of the embedding) are
        // never allowed: they have no bytes.
        words.resize(vocab_size, Vec::new());
        let eos_token_ids = tokenizer.eos_token_ids().to_vec();
        let eos = *eos_token_ids.first().ok_or("the model has no end-of-sequence token")?;
        let mut info = TokRxInfo::new(vocab_size as u32, eos);
        info.tok_bos = tokenizer.bos_token_id();
        let trie = TokTrie::from(&info, &words);
        Self::with_env(Arc::new(TokEnv { trie, tokenizer }), eos_token_ids)
    }

    /// The compiler for a vocabulary given as each token's bytes (special
    /// tokens prefixed with `0xFF`, as llguidance marks them; empty for
    /// ids that are never allowed), without a tokenizer: the few strings
    /// llguidance tokenizes are split by greedy longest match over the
    /// same tokens. For benchmarks and tests of vocabularies strata has no
    /// `tokenizer.json` for; a served model uses [`GrammarCompiler::new`].
    pub fn from_token_bytes(
        words: &[Vec<u8>],
        eos_token_ids: Vec<TokenId>,
    ) -> Result<Self, String> {
        let eos = *eos_token_ids.first().ok_or("the vocabulary has no end-of-sequence token")?;
        if let Some(e) = eos_token_ids.iter().find(|&&e| e as usize >= words.len()) {
            return Err(format!("end-of-sequence token {e} is outside the {} tokens", words.len()));
        }
        let info = TokRxInfo::new(words.len() as u32, eos);
        let trie = TokTrie::from(&info, words);
        Self::with_env(Arc::new(toktrie::ApproximateTokEnv::new(trie)), eos_token_ids)
    }

    fn with_env(env: toktrie::TokEnv, eos_token_ids: Vec<TokenId>) -> Result<Self, String> {
        let vocab_size = env.tok_trie().vocab_size();
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.quiet();
        Ok(Self {
            observer: Observer::default(),
            factory: Arc::new(factory),
            eos_token_ids,
            vocab_size,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Reports requests and mask times to `observer` (the metrics).
    pub fn observed(mut self, observer: Observer) -> Self {
        self.observer = observer;
        self
    }

    /// The grammar of `constraint` for one request (counted), compiled or
    /// from the cache; an error says why llguidance refuses it (for the
    /// client's 400).
    pub fn compile(&self, constraint: &Constraint) -> Result<SharedGrammar, String> {
        let grammar = self.compile_uncounted(constraint)?;
        (self.observer.request)(constraint.kind());
        Ok(grammar)
    }

    fn compile_uncounted(&self, constraint: &Constraint) -> Result<SharedGrammar, String> {
        let key = constraint.key();
        if let Some(g) = self.cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(g);
        }
        let parser = self.factory.create_parser(constraint.grammar()).map_err(|e| e.to_string())?;
        let template = Matcher::new(Ok(parser));
        if let Some(e) = template.get_error() {
            return Err(e);
        }
        let grammar = Arc::new(LlgGrammar {
            template,
            eos_token_ids: self.eos_token_ids.clone(),
            vocab_size: self.vocab_size,
            mask_seconds: self.observer.mask_seconds.clone(),
        });
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
            cache.insert(key, grammar.clone());
        }
        Ok(grammar)
    }
}

/// A compiled constraint: a matcher at its start, cloned per request.
struct LlgGrammar {
    template: Matcher,
    eos_token_ids: Vec<TokenId>,
    vocab_size: usize,
    mask_seconds: Arc<dyn Fn(f64) + Send + Sync>,
}

impl std::fmt::Debug for LlgGrammar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlgGrammar").field("vocab_size", &self.vocab_size).finish()
    }
}

impl CompiledGrammar for LlgGrammar {
    fn matcher(&self) -> Box<dyn GrammarMatcher> {
        Box::new(LlgMatcher {
            matcher: self.template.deep_clone(),
            eos_token_ids: self.eos_token_ids.clone(),
            mask_seconds: self.mask_seconds.clone(),
        })
    }
}

struct LlgMatcher {
    matcher: Matcher,
    eos_token_ids: Vec<TokenId>,
    mask_seconds: Arc<dyn Fn(f64) + Send + Sync>,
}

impl std::fmt::Debug for LlgMatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlgMatcher").field("stopped", &self.matcher.is_stopped()).finish()
    }
}

impl GrammarMatcher for LlgMatcher {
    fn fill_next_token_mask(&mut self, mask: &mut TokenMask) -> Result<(), String> {
        let start = std::time::Instant::now();
        let allowed = self.matcher.compute_mask_or_eos().map_err(|e| e.to_string())?;
        (self.mask_seconds)(start.elapsed().as_secs_f64());
        let words = mask.words_mut();
        for (w, &a) in words.iter_mut().zip(allowed.as_slice()) {
            *w = a;
        }
        // Where llguidance allows its end of sequence, every one of the
        // model's end-of-sequence ids ends the output.
        if self.eos_token_ids.first().is_some_and(|&e| mask.is_allowed(e)) {
            for &e in &self.eos_token_ids[1..] {
                mask.allow(e);
            }
        }
        Ok(())
    }

    fn accept_token(&mut self, token: TokenId) -> Result<(), String> {
        // Any of the model's end-of-sequence ids is llguidance's one.
        let token = if self.eos_token_ids.contains(&token) { self.eos_token_ids[0] } else { token };
        self.matcher.consume_token(token).map_err(|e| e.to_string())
    }

    fn is_terminated(&self) -> bool {
        self.matcher.is_stopped()
    }
}
