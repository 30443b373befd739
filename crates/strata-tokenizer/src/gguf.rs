//! A [`Tokenizer`] built from the tokenizer metadata of a GGUF file, so that
//! a `.gguf` model tokenizes as llama.cpp (`src/llama-vocab.cpp`) tokenizes
//! it.
//!
//! Supported: byte-level BPE vocabularies (`tokenizer.ggml.model = "gpt2"`)
//! whose `tokenizer.ggml.pre` is "default" (or absent), "llama-bpe" and the
//! other names llama.cpp gives Llama 3's regex, "qwen2" and its aliases, or
//! "gpt-2" and its aliases (the full list is in the error for any other
//! name). The vocabulary becomes a `tokenizers` BPE model (ids are
//! positions in `tokenizer.ggml.tokens`,
//! merge ranks are positions in `tokenizer.ggml.merges`; llama.cpp's
//! rank-ordered, leftmost-first bigram merging is the same algorithm),
//! llama.cpp's split regexes become `Split` pre-tokenizers (each regex splits
//! the pieces of the one before, keeping matches and the text between them,
//! as `unicode_regex_split` does), then byte-level encoding. Control,
//! unknown and user-defined tokens are added tokens matched in the text
//! before the model runs, as llama.cpp's `tokenizer_st_partition` matches
//! them when special tokens are parsed (strata always parses them).
//!
//! SentencePiece vocabularies (`"llama"`: Llama 2, Mistral, TinyLlama...)
//! become a BPE with byte fallback whose merges come from the scores, as
//! transformers' `LlamaTokenizerFast` is built (`spm_tokenizer`).
//!
//! Refused: every other model and pre-tokenizer name, as llama.cpp refuses
//! names it does not know.
//!
//! Known differences from llama.cpp, none of which arises for the
//! vocabularies llama.cpp's converter writes for common models:
//! - Special tokens that overlap in the text are matched leftmost-longest
//!   (`tokenizers`) rather than longest-token-first over the whole text.
//! - Absent `bos`/`eos` ids stay absent; llama.cpp falls back to id 11 for
//!   BPE vocabularies. Out-of-range ids are errors here, warnings there.
//! - llama.cpp's name-based attribute tweaks (`lstrip`/`rstrip` for Phi-3 and
//!   Jina models) are not applied; those pre-tokenizer names are refused.
//! - Decoding does not apply llama.cpp's `clean_spaces` (strata decodes
//!   incrementally, token by token, as llama.cpp's server streams pieces).
//!
//! Like llama.cpp, and unlike some `tokenizer.json` files (Qwen2's has an
//! NFC normalizer), the text is not normalized before it is split.

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{Merges, Vocab, BPE};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::{SpecialToken as TemplateToken, TemplateProcessing};
use tokenizers::NormalizerWrapper;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use crate::{ChatConfig, ChatTemplates, Result, SpecialToken, Tokenizer, TokenizerError};

/// The `tokenizer.*` metadata of a GGUF file (llama.cpp's key names in the
/// docs of each field).
#[derive(Clone, Debug, Default)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: "gpt2" (byte-level BPE) or "llama"
    /// (SentencePiece); others are refused with a clear error.
    pub model: String,
    /// `tokenizer.ggml.pre`: "qwen2", "llama-bpe", "default", "gpt-2", ...
    /// (llama.cpp's pre-tokenizer names).
    pub pre: Option<String>,
    /// `tokenizer.ggml.tokens`.
    pub tokens: Vec<String>,
    /// `tokenizer.ggml.token_type` (empty if absent): 1 normal, 2 unknown,
    /// 3 control, 4 user-defined, 5 unused, 6 byte.
    pub token_types: Vec<i32>,
    /// `tokenizer.ggml.scores` (empty if absent).
    pub scores: Vec<f32>,
    /// `tokenizer.ggml.merges` (empty if absent), "a b" strings.
    pub merges: Vec<String>,
    /// `tokenizer.ggml.bos_token_id`.
    pub bos_token_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`.
    pub eos_token_id: Option<u32>,
    /// `tokenizer.ggml.eot_token_id`.
    pub eot_token_id: Option<u32>,
    /// `tokenizer.ggml.eom_token_id`.
    pub eom_token_id: Option<u32>,
    /// `tokenizer.ggml.unknown_token_id`.
    pub unknown_token_id: Option<u32>,
    /// `tokenizer.ggml.padding_token_id`.
    pub padding_token_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`.
    pub add_bos_token: Option<bool>,
    /// `tokenizer.ggml.add_eos_token`.
    pub add_eos_token: Option<bool>,
    /// `tokenizer.ggml.add_space_prefix` (SentencePiece: a space before
    /// the text and after each special token; llama.cpp's default true).
    pub add_space_prefix: Option<bool>,
    /// `tokenizer.chat_template`.
    pub chat_template: Option<String>,
}

/// llama.cpp's `LLAMA_TOKEN_TYPE_*` values that matter for tokenizing.
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_USER_DEFINED: i32 = 4;

/// A pre-tokenizer of llama.cpp's `llm_tokenizer_bpe`.
struct PreTokenizer {
    /// The `tokenizer.ggml.pre` names llama.cpp maps to it.
    names: &'static [&'static str],
    /// Split regexes, applied in order (llama.cpp's `regex_exprs`).
    regexes: &'static [&'static str],
    /// A word that is itself a token is not merged (llama.cpp's
    /// `ignore_merges`).
    ignore_merges: bool,
    /// `add_bos` when `tokenizer.ggml.add_bos_token` is absent.
    add_bos: bool,
}

/// GPT-2's regex (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_GPT2`).
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// Llama 3's regex as llama.cpp adapts it: the contractions spelled out in
/// ASCII cases instead of `(?i:...)`, which would also match Unicode case
/// variants such as `ſ`.
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's regex, adapted as [`LLAMA3_REGEX`]: single digits.
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizers strata reproduces, with every name llama.cpp gives
/// each (`llama_vocab::impl::load`) except those with other special
/// handling (separator tokens, name-based token attributes).
const PRE_TOKENIZERS: [PreTokenizer; 5] = [
    PreTokenizer {
        // Also what llama.cpp uses, with a warning, when the key is absent.
        names: &["default"],
        regexes: &[r"[\p{P}\$\+<=>\^~\|]+", GPT2_REGEX, r"\p{N}+", r"[0-9][0-9][0-9]"],
        ignore_merges: false,
        add_bos: false,
    },
    PreTokenizer {
        names: &[
            "llama3",
            "llama-v3",
            "llama-bpe",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
            "jina-v5-nano",
        ],
        regexes: &[LLAMA3_REGEX],
        ignore_merges: true,
        add_bos: true,
    },
    PreTokenizer {
        // Llama 3's regex without llama3's flags.
        names: &["dbrx", "smaug-bpe", "glm4", "chatglm-bpe"],
        regexes: &[LLAMA3_REGEX],
        ignore_merges: false,
        add_bos: false,
    },
    PreTokenizer {
        names: &[
            "qwen2",
            "deepseek-r1-qwen",
            "kormo",
            "f2llmv2",
            "megrez",
            "stablelm2",
            "hunyuan",
            "solar-open",
        ],
        regexes: &[QWEN2_REGEX],
        ignore_merges: false,
        add_bos: false,
    },
    PreTokenizer {
        names: &[
            "gpt-2",
            "phi-2",
            "gigachat",
            "a.x-4.0",
            "mellum",
            "exaone4",
            "mpt",
            "olmo",
            "jais",
            "trillion",
            "granite-docling",
        ],
        regexes: &[GPT2_REGEX],
        ignore_merges: false,
        add_bos: false,
    },
];

/// Token texts llama.cpp treats as end of generation whatever the metadata
/// says (`special_eog_ids`, found by text), including the FIM pad, repo and
/// file-separator tokens it finds by text.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
    // FIM pad
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<PAD>",
    "[PAD]",
    // FIM repo
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
    // FIM file separator
    "<|file_sep|>",
];

/// FIM prefix, suffix and middle tokens: llama.cpp finds them by text and
/// makes them control tokens, without ending generation on them.
const FIM_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
];

/// gpt-oss tokens llama.cpp always renders (user-defined, whatever their
/// type).
const RENDERED_TEXTS: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

/// How llama.cpp treats a token when tokenizing and decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Produced only by the model (BPE merges).
    Normal,
    /// Control or unknown: matched in the text, skipped when decoding
    /// without special tokens.
    Special,
    /// User-defined: matched in the text, always rendered.
    UserDefined,
}

fn gguf_err(message: impl Into<String>) -> TokenizerError {
    TokenizerError::Gguf(message.into())
}

/// Checks that a `tokenizer.ggml.*` id names a token.
fn checked_id(id: Option<u32>, key: &str, n_tokens: usize) -> Result<Option<u32>> {
    match id {
        Some(id) if id as usize >= n_tokens => Err(gguf_err(format!(
            "tokenizer.ggml.{key} = {id} is out of range (the vocabulary has {n_tokens} tokens)"
        ))),
        _ => Ok(id),
    }
}

/// The token texts as llama.cpp keys them: an empty token becomes
/// `[EMPTY_<id>]`, and a repeated token is an error.
fn token_texts(tokens: &[String]) -> Result<Vec<String>> {
    let mut seen = std::collections::HashMap::with_capacity(tokens.len());
    let mut texts = Vec::with_capacity(tokens.len());
    for (id, token) in tokens.iter().enumerate() {
        let text = if token.is_empty() { format!("[EMPTY_{id}]") } else { token.clone() };
        if let Some(first) = seen.insert(text.clone(), id) {
            return Err(gguf_err(format!(
                "duplicate token in tokenizer.ggml.tokens: {text:?} has ids {first} and {id}"
            )));
        }
        texts.push(text);
    }
    Ok(texts)
}

/// A SentencePiece vocabulary as a `tokenizers` BPE with byte fallback,
/// the layout of transformers' `LlamaTokenizerFast`: merges derived from
/// the scores (every split of a token into two tokens, ranked by the
/// token's score, highest first, as transformers' `SentencePieceExtractor`
/// orders them), spaces as `▁`, a `▁` before each piece of text when
/// `add_space_prefix`, and characters without a token as `<0xXX>` byte
/// tokens. llama.cpp merges the adjacent pair whose token scores highest,
/// the leftmost on ties: the same result wherever scores are distinct, as
/// they are in the vocabularies SentencePiece trains.
fn spm_tokenizer(
    model_vocab: Vocab,
    texts: &[String],
    scores: &[f32],
    unknown: Option<u32>,
    add_space_prefix: bool,
) -> Result<tokenizers::Tokenizer> {
    let mut merges: Vec<(f32, u32, u32)> = Vec::new();
    for (id, piece) in texts.iter().enumerate() {
        let score = scores.get(id).copied().unwrap_or(0.0);
        let mut local: Vec<(u32, u32)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (l, r) = piece.split_at(at);
                Some((*model_vocab.get(l)?, *model_vocab.get(r)?))
            })
            .collect();
        local.sort_unstable();
        merges.extend(local.into_iter().map(|(l, r)| (score, l, r)));
    }
    // Stable: equal scores keep token order, then the parts' ids.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0));
    let merges: Merges = merges
        .into_iter()
        .map(|(_, l, r)| (texts[l as usize].clone(), texts[r as usize].clone()))
        .collect();
    let mut builder = BPE::builder().vocab_and_merges(model_vocab, merges).byte_fallback(true);
    if let Some(unk) = unknown {
        builder = builder.unk_token(texts[unk as usize].clone());
    }
    let bpe = builder.build().map_err(|e| gguf_err(format!("SentencePiece vocabulary: {e}")))?;
    let mut inner = tokenizers::Tokenizer::new(bpe);
    let space = Replace::new(" ", "\u{2581}").map_err(|e| gguf_err(e.to_string()))?;
    let normalizer: NormalizerWrapper = if add_space_prefix {
        NormalizerSequence::new(vec![Prepend::new("\u{2581}".into()).into(), space.into()]).into()
    } else {
        space.into()
    };
    inner.with_normalizer(Some(normalizer));
    let unspace = Replace::new("\u{2581}", " ").map_err(|e| gguf_err(e.to_string()))?;
    let mut decoders: Vec<DecoderWrapper> =
        vec![unspace.into(), ByteFallback::new().into(), Fuse::new().into()];
    if add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    inner.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(inner)
}

/// `tokenizer.ggml.merges` as pairs: each entry splits at its first space
/// after the first byte (llama.cpp's `word.find(' ', 1)`), and a repeated
/// pair keeps its first rank, as llama.cpp's `bpe_ranks.emplace` does.
fn merge_pairs(merges: &[String]) -> Result<Merges> {
    let mut seen = std::collections::HashSet::with_capacity(merges.len());
    let mut pairs = Vec::with_capacity(merges.len());
    for (rank, merge) in merges.iter().enumerate() {
        let split = merge.bytes().skip(1).position(|b| b == b' ').map(|i| i + 1);
        let Some(at) = split else {
            return Err(gguf_err(format!(
                "tokenizer.ggml.merges[{rank}] = {merge:?} is not two tokens separated by a space"
            )));
        };
        let pair = (merge[..at].to_owned(), merge[at + 1..].to_owned());
        if seen.insert(pair.clone()) {
            pairs.push(pair);
        }
    }
    Ok(pairs)
}

/// Each token's [`Kind`] from `tokenizer.ggml.token_type`, then llama.cpp's
/// corrections by token text (in `llama_vocab::impl::load`'s order), and
/// the end-of-generation ids: `eos`, `eot` and `eom` plus the tokens
/// llama.cpp ends generation on by their text.
fn kinds_and_eog(
    texts: &[String],
    token_types: &[i32],
    explicit_eog: &[u32],
) -> (Vec<Kind>, Vec<u32>) {
    let mut kinds: Vec<Kind> = (0..texts.len())
        .map(|i| match token_types.get(i) {
            Some(&TYPE_CONTROL | &TYPE_UNKNOWN) => Kind::Special,
            Some(&TYPE_USER_DEFINED) => Kind::UserDefined,
            _ => Kind::Normal,
        })
        .collect();
    let mut eog: Vec<u32> = Vec::new();
    for (id, text) in texts.iter().enumerate() {
        let is_eog = EOG_TEXTS.contains(&text.as_str());
        if is_eog || FIM_TEXTS.contains(&text.as_str()) {
            // llama.cpp adds the control attribute to these ("control-looking
            // token ... its type will be overridden").
            kinds[id] = Kind::Special;
        }
        if is_eog {
            eog.push(id as u32);
        }
    }
    for (id, text) in texts.iter().enumerate() {
        if RENDERED_TEXTS.contains(&text.as_str()) {
            kinds[id] = Kind::UserDefined;
        }
    }
    eog.extend_from_slice(explicit_eog);
    eog.sort_unstable();
    eog.dedup();
    let find = |eog: &[u32], wanted: &[&str]| {
        eog.iter().copied().find(|&id| wanted.contains(&texts[id as usize].as_str()))
    };
    // o200k_harmony and solar-open: "<|end|>" ends a message, not generation.
    let has_call = find(&eog, &["<|call|>", "<|calls|>"]).is_some();
    let has_return_or_flush = find(&eog, &["<|return|>", "<|flush|>"]).is_some();
    if let (true, Some(end)) = (has_call && has_return_or_flush, find(&eog, &["<|end|>"])) {
        eog.retain(|&id| id != end);
        kinds[end as usize] = Kind::UserDefined;
    }
    // Gemma 4 and PaddleOCR: "</s>" is ordinary text.
    if let (Some(_), Some(s)) = (find(&eog, &["<|tool_response>"]), find(&eog, &["</s>"])) {
        eog.retain(|&id| id != s);
        kinds[s as usize] = Kind::Normal;
    }
    (kinds, eog)
}

/// The pre-tokenizer: llama.cpp's regex splits, then byte-level encoding
/// of each piece.
fn pre_tokenizer(pre: &PreTokenizer) -> Result<Sequence> {
    let mut steps: Vec<PreTokenizerWrapper> = Vec::with_capacity(pre.regexes.len() + 1);
    for regex in pre.regexes {
        let split = Split::new(
            SplitPattern::Regex((*regex).to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| gguf_err(format!("pre-tokenizer regex {regex:?}: {e}")))?;
        steps.push(split.into());
    }
    steps.push(ByteLevel::new(false, false, false).into());
    Ok(Sequence::new(steps))
}

/// A post-processor adding `bos` before and `eos` after the text, as
/// llama.cpp's `tokenize(add_special = true)` does when the GGUF asks.
fn post_processor(
    texts: &[String],
    bos: Option<u32>,
    eos: Option<u32>,
) -> Result<Option<TemplateProcessing>> {
    if bos.is_none() && eos.is_none() {
        return Ok(None);
    }
    let mut single = Vec::new();
    let mut specials = Vec::new();
    for (name, id) in [("bos", bos), ("$A", None), ("eos", eos)] {
        match id {
            None if name == "$A" => single.push(name),
            None => {}
            Some(id) => {
                single.push(name);
                let text = texts[id as usize].clone();
                let token = TemplateToken::new(name.to_owned(), vec![id], vec![text])
                    .map_err(|e| gguf_err(e.to_string()))?;
                specials.push(token);
            }
        }
    }
    TemplateProcessing::builder()
        .try_single(single)
        .map_err(gguf_err)?
        .special_tokens(specials)
        .build()
        .map(Some)
        .map_err(|e| gguf_err(e.to_string()))
}

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.*`
    /// metadata, tokenizing as llama.cpp does (see the [module
    /// docs](crate::gguf) for what is supported and refused).
    ///
    /// `encode(text, true)` adds BOS (and EOS) as the GGUF's
    /// `add_bos_token` (`add_eos_token`) says, with llama.cpp's defaults
    /// when absent; the EOS ids are every token llama.cpp ends generation
    /// on; the chat template sees `bos_token` and `eos_token` as the texts
    /// of those tokens, as llama.cpp renders templates.
    pub fn from_gguf(vocab: &GgufVocab) -> Result<Self> {
        let spm = match vocab.model.as_str() {
            "gpt2" => false,
            "llama" => true,
            other => {
                return Err(gguf_err(format!(
                    "unsupported tokenizer.ggml.model {other:?} (strata supports \"gpt2\", \
                     byte-level BPE, and \"llama\", SentencePiece)"
                )))
            }
        };
        let pre = if spm {
            None
        } else {
            let pre_name = vocab.pre.as_deref().filter(|p| !p.is_empty()).unwrap_or("default");
            Some(PRE_TOKENIZERS.iter().find(|p| p.names.contains(&pre_name)).ok_or_else(|| {
                let known: Vec<&str> =
                    PRE_TOKENIZERS.iter().flat_map(|p| p.names.iter().copied()).collect();
                gguf_err(format!(
                    "unsupported tokenizer.ggml.pre {pre_name:?} (supported: {})",
                    known.join(", ")
                ))
            })?)
        };

        let n = vocab.tokens.len();
        if n == 0 {
            return Err(gguf_err("tokenizer.ggml.tokens is empty"));
        }
        for (key, len) in [("token_type", vocab.token_types.len()), ("scores", vocab.scores.len())]
        {
            if len != 0 && len != n {
                return Err(gguf_err(format!(
                    "tokenizer.ggml.{key} has {len} entries for {n} tokens"
                )));
            }
        }
        if !spm && vocab.merges.is_empty() {
            return Err(gguf_err(
                "tokenizer.ggml.merges is missing (a gpt2 vocabulary needs merges)",
            ));
        }
        let bos = checked_id(vocab.bos_token_id, "bos_token_id", n)?;
        let eos = checked_id(vocab.eos_token_id, "eos_token_id", n)?;
        let eot = checked_id(vocab.eot_token_id, "eot_token_id", n)?;
        let eom = checked_id(vocab.eom_token_id, "eom_token_id", n)?;
        let unknown = checked_id(vocab.unknown_token_id, "unknown_token_id", n)?;
        checked_id(vocab.padding_token_id, "padding_token_id", n)?;
        // llama.cpp's defaults: SentencePiece vocabularies add BOS.
        let add_bos = vocab.add_bos_token.unwrap_or(pre.is_none_or(|p| p.add_bos));
        let add_eos = vocab.add_eos_token.unwrap_or(false);
        if add_bos && bos.is_none() {
            return Err(gguf_err(
                "tokenizer.ggml.add_bos_token is true, but bos_token_id is not set",
            ));
        }
        if add_eos && eos.is_none() {
            return Err(gguf_err(
                "tokenizer.ggml.add_eos_token is true, but eos_token_id is not set",
            ));
        }

        let texts = token_texts(&vocab.tokens)?;
        let explicit_eog: Vec<u32> = [eos, eot, eom].into_iter().flatten().collect();
        let (kinds, eos_token_ids) = kinds_and_eog(&texts, &vocab.token_types, &explicit_eog);

        let model_vocab: Vocab =
            texts.iter().enumerate().map(|(id, t)| (t.clone(), id as u32)).collect();
        let mut inner = match pre {
            Some(pre) => {
                let bpe = BPE::builder()
                    .vocab_and_merges(model_vocab, merge_pairs(&vocab.merges)?)
                    .ignore_merges(pre.ignore_merges)
                    .build()
                    .map_err(|e| gguf_err(format!("tokenizer.ggml.merges: {e}")))?;
                let mut inner = tokenizers::Tokenizer::new(bpe);
                inner.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
                inner.with_decoder(Some(ByteLevelDecoder::new(false, false, false)));
                inner
            }
            None => spm_tokenizer(
                model_vocab,
                &texts,
                &vocab.scores,
                unknown,
                vocab.add_space_prefix.unwrap_or(true),
            )?,
        };
        inner.with_post_processor(post_processor(
            &texts,
            bos.filter(|_| add_bos),
            eos.filter(|_| add_eos),
        )?);
        let added: Vec<AddedToken> = texts
            .iter()
            .zip(&kinds)
            .filter(|(_, kind)| **kind != Kind::Normal)
            .map(|(text, kind)| {
                AddedToken::from(text.clone(), *kind == Kind::Special).normalized(false)
            })
            .collect();
        inner.add_tokens(&added);

        let mut special_tokens = Vec::new();
        for (name, id) in [("bos_token", bos), ("eos_token", eos)] {
            if let Some(id) = id {
                special_tokens
                    .push((name.to_owned(), SpecialToken::One(texts[id as usize].clone())));
            }
        }
        let chat = ChatConfig {
            templates: vocab
                .chat_template
                .clone()
                .map_or(ChatTemplates::Missing, ChatTemplates::Single),
            override_template: None,
            special_tokens,
        };
        Ok(Self { inner, eos_token_ids, bos_token_id: bos, chat })
    }
}

#[cfg(test)]
mod tests;
