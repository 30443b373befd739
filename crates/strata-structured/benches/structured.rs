//! What structured outputs cost (issue 13), two figures printed:
//!
//! - masks: the time of each `fill_next_token_mask` (llguidance's mask and
//!   its copy into strata's `TokenMask`) while random walks go through a
//!   tool-parameters JSON schema, median and p99 over every mask, for a
//!   synthetic 150k-token byte-level BPE vocabulary (Qwen2.5-sized: no
//!   real tokenizer can be downloaded here) and for the built-in
//!   512-token tokenizer;
//! - decode: generated tokens per second of 32 requests at once on the
//!   built-in model (CPU executor, temperature 1, seeded), every request
//!   constrained to the schema against none, in the same run, rounds
//!   interleaved. Each unconstrained request generates as many tokens as
//!   its constrained twin did (`ignore_eos`, `max_tokens` = that length),
//!   so both arms run the same batch shapes and only the masks differ.
//!
//! The walks are a "random model": each step picks an allowed token at
//! random, and one time in eight a random allowed token holding a JSON
//! structural byte (`"`, `,`, `:`, brackets), as a model closes what it
//! opens; a uniform pick would almost never close a string among 150k
//! tokens. Every walk's text must parse as JSON.
//!
//! `cargo bench -p strata-structured --bench structured [-- masks|decode]`

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use strata_core::offline::offline_config;
use strata_core::structured::{CompiledGrammar, GrammarMatcher, SharedGrammar, TokenMask};
use strata_core::{EngineCore, FinishReason, NewRequest, RequestId, SamplingParams, TokenId};
use strata_model::backend::cpu::CpuBackend;
use strata_model::{builtin, load_cpu_executor, LoadOptions, ModelExecutor, ModelSource};
use strata_structured::{Constraint, GrammarCompiler};
use strata_tokenizer::Tokenizer;

/// Regular tokens of the synthetic vocabulary, and its padded width
/// (Qwen2.5's: 151,643 regular tokens, 22 special, logits of 151,936).
const NUM_REGULAR_TOKENS: usize = 150_000;
const NUM_SPECIAL_TOKENS: usize = 22;
const PADDED_VOCAB_SIZE: usize = 151_936;
/// A walk that has not ended by then is cut (none should be).
const MAX_WALK_TOKENS: usize = 2_000;
const NUM_SEQS: usize = 32;
const PROMPT_LEN: usize = 24;
/// `max_tokens` of a constrained request: the grammar ends it well before.
const MAX_CONSTRAINED_TOKENS: u32 = 2_048;

/// A tool's parameters, as a function-calling request sends them, with
/// vLLM's `disable_any_whitespace` (no whitespace between JSON tokens).
fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "location": {"type": "string", "description": "City and country"},
            "unit": {"enum": ["celsius", "fahrenheit", "kelvin"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 14},
            "include_hourly": {"type": "boolean"},
            "fields": {
                "type": "array",
                "items": {"enum": ["temperature", "humidity", "wind", "pressure", "uv_index"]},
                "maxItems": 5
            },
            "note": {"type": "string"}
        },
        "required": ["location", "unit", "days"],
        "additionalProperties": false,
        "x-guidance": {"whitespace_flexible": false}
    })
}

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

// ---------------------------------------------------------------------------
// The synthetic vocabulary.

/// Unique token byte strings in id order.
#[derive(Default)]
struct VocabBuilder {
    words: Vec<Vec<u8>>,
    seen: HashSet<Vec<u8>>,
}

impl VocabBuilder {
    fn push(&mut self, word: impl Into<Vec<u8>>) {
        let word = word.into();
        if self.words.len() < NUM_REGULAR_TOKENS
            && !word.is_empty()
            && self.seen.insert(word.clone())
        {
            self.words.push(word);
        }
    }

    fn full(&self) -> bool {
        self.words.len() >= NUM_REGULAR_TOKENS
    }
}

const PUNCT: &[u8] = b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
const COMMON_WORDS: &[&str] = &[
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "was",
    "on",
    "be",
    "by",
    "this",
    "are",
    "or",
    "from",
    "at",
    "an",
    "not",
    "have",
    "which",
    "you",
    "but",
    "all",
    "one",
    "can",
    "their",
    "has",
    "more",
    "will",
    "would",
    "new",
    "there",
    "been",
    "other",
    "we",
    "when",
    "what",
    "time",
    "about",
    "some",
    "if",
    "they",
    "into",
    "your",
    "name",
    "type",
    "value",
    "data",
    "string",
    "number",
    "list",
    "return",
    "function",
    "const",
    "self",
    "true",
    "false",
    "null",
    "none",
    "None",
    "True",
    "False",
    "id",
    "key",
    "error",
    "result",
    "user",
    "city",
    "weather",
    "temperature",
    "unit",
    "location",
    "days",
    "description",
    "properties",
    "required",
];
const ONSETS: &[&str] = &[
    "", "", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "qu", "r", "s", "t", "v",
    "w", "y", "z", "bl", "br", "ch", "cl", "cr", "dr", "fl", "fr", "gl", "gr", "pl", "pr", "sc",
    "sh", "sk", "sl", "sm", "sn", "sp", "st", "str", "sw", "th", "tr", "tw", "wh", "wr",
];
const NUCLEI: &[&str] =
    &["a", "e", "i", "o", "u", "a", "e", "i", "o", "y", "ai", "ea", "ee", "io", "oo", "ou", "ie"];
const CODAS: &[&str] = &[
    "", "", "", "b", "ck", "d", "ff", "g", "k", "l", "ll", "m", "n", "nd", "ng", "nt", "p", "r",
    "rd", "rs", "rt", "s", "ss", "st", "t", "th", "x",
];
const SUFFIXES: &[&str] = &[
    "", "", "", "", "ing", "ed", "er", "tion", "ly", "ment", "ness", "able", "al", "ic", "ous",
    "ive", "ize", "es", "s", "est", "ity", "ers",
];

fn syllable_word(rng: &mut Rng) -> String {
    let mut w = String::new();
    for _ in 0..1 + rng.below(3) {
        w.push_str(rng.pick::<&str>(ONSETS));
        w.push_str(rng.pick::<&str>(NUCLEI));
        w.push_str(rng.pick::<&str>(CODAS));
    }
    w.push_str(rng.pick::<&str>(SUFFIXES));
    w
}

fn capitalized(w: &str) -> String {
    let mut c = w.chars();
    c.next().map_or_else(String::new, |f| f.to_uppercase().chain(c).collect())
}

/// Tokens of a byte-level BPE vocabulary as a Qwen2.5 or Llama-3 one holds
/// them: the 256 bytes, whitespace runs, numbers up to 999, JSON and code
/// punctuation, CJK, Cyrillic and accented pieces (with partial UTF-8
/// sequences), then English-like words and pieces with and without a
/// leading space and capital; then 22 special tokens and padding to
/// 151,936 ids. Returns the token bytes and the end-of-sequence ids.
fn synthetic_vocab() -> (Vec<Vec<u8>>, Vec<TokenId>) {
    let mut rng = Rng::new(0x5EED);
    let mut v = VocabBuilder::default();
    for b in 0..=255u8 {
        v.push(vec![b]);
    }
    for n in 1..=32 {
        v.push(" ".repeat(n));
        v.push(format!("\n{}", " ".repeat(n)));
        v.push(format!("\n\n{}", " ".repeat(n)));
    }
    for n in 1..=8 {
        v.push("\t".repeat(n));
        v.push("\n".repeat(n));
        v.push(format!("\n{}", "\t".repeat(n)));
        v.push(format!("{}\n", " ".repeat(n)));
    }
    v.push("\r\n");
    v.push("\r\n\r\n");
    for n in 0..1000 {
        v.push(n.to_string());
    }
    for p in [
        "\":", "\": ", "{\"", "{\n", "\"}", "\",", "\",\"", "\":\"", "\": \"", "\", \"", "\":[",
        "\":{", "\"},", "\"]", "[\"", "\"],", "},", "}}", "]}", "});", "();", "()", "[]", "{}",
        "=>", "->", "::", "==", "!=", "<=", ">=", "&&", "||", "//", "/*", "*/", "\\\"", "\\\\",
        "\\n", "...", "--", "**", "__", "\"\n", "\",\n", "},\n", "}\n", "\"}\n", " {\n", " }\n",
        " \"", " {", " }", " [", " ]", " (", " )", " =", " +", " -", " *", " /", " <", " >", " :",
        "\":\"\"", "\"\"", "''", "\"\",", ": {", ": [", "\n}", "\n]", "\n}\n",
    ] {
        v.push(p);
    }
    for &a in PUNCT {
        for &b in PUNCT {
            v.push(vec![a, b]);
            v.push(vec![b' ', a, b]);
        }
    }
    let structural = b"\"{}[](),:;.";
    for &a in structural {
        for &b in structural {
            for &c in structural {
                v.push(vec![a, b, c]);
            }
        }
    }
    // Partial UTF-8: the first two bytes of three-byte characters.
    for lead in 0xE3..=0xE9u8 {
        for cont in 0x80..=0xBFu8 {
            v.push(vec![lead, cont]);
        }
    }
    let cjk = |i: u32| char::from_u32(0x4E00 + i).expect("invariant: CJK ideographs");
    for i in 0..14_000 {
        v.push(cjk(i).to_string());
    }
    for _ in 0..8_000 {
        let (a, b) = (cjk(rng.below(3_000) as u32), cjk(rng.below(3_000) as u32));
        v.push(format!("{a}{b}"));
    }
    for i in 0..400 {
        v.push(char::from_u32(0x1F300 + i).expect("invariant: emoji").to_string());
    }
    let cyrillic: Vec<char> = (0x430..0x450).filter_map(char::from_u32).collect();
    for _ in 0..5_000 {
        let w: String = (0..2 + rng.below(6)).map(|_| *rng.pick(&cyrillic)).collect();
        v.push(if rng.below(2) == 0 { format!(" {w}") } else { w });
    }
    for _ in 0..3_000 {
        let w = syllable_word(&mut rng).replacen('e', "é", 1).replacen('u', "ü", 1);
        v.push(if rng.below(2) == 0 { format!(" {w}") } else { w });
    }
    for w in COMMON_WORDS {
        for form in [w.to_string(), format!(" {w}"), capitalized(w), format!(" {}", capitalized(w))]
        {
            v.push(form);
        }
    }
    while !v.full() {
        let w = syllable_word(&mut rng);
        let form = match rng.below(100) {
            0..=44 => format!(" {w}"),
            45..=74 => w,
            75..=86 => format!(" {}", capitalized(&w)),
            87..=94 => capitalized(&w),
            95..=96 => format!("_{w}"),
            _ => w.to_uppercase(),
        };
        v.push(form);
    }
    let mut words = v.words;
    let first_special = words.len() as TokenId;
    let names = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    for i in 0..NUM_SPECIAL_TOKENS {
        let name = names.get(i).map_or_else(|| format!("<|extra_{i}|>"), |n| n.to_string());
        words.push([&[0xFF], name.as_bytes()].concat());
    }
    words.resize(PADDED_VOCAB_SIZE, Vec::new());
    (words, vec![first_special, first_special + 2])
}

// ---------------------------------------------------------------------------
// Masks.

/// Median, p99 and the rest of a set of durations.
struct Summary {
    count: usize,
    median: Duration,
    p99: Duration,
    mean: Duration,
    max: Duration,
}

impl Summary {
    fn of(mut times: Vec<Duration>) -> Self {
        times.sort();
        let n = times.len().max(1);
        let at = |q: usize| times.get((n * q / 100).min(n - 1)).copied().unwrap_or_default();
        Self {
            count: times.len(),
            median: at(50),
            p99: at(99),
            mean: times.iter().sum::<Duration>() / n as u32,
            max: times.last().copied().unwrap_or_default(),
        }
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Walks the schema `num_walks` times; returns every mask's time and how
/// many tokens it allowed.
fn mask_walks(
    compiler: &GrammarCompiler,
    words: &[Vec<u8>],
    eos_token_ids: &[TokenId],
    num_walks: u64,
) -> Vec<(Duration, usize)> {
    let vocab_size = words.len();
    let structural: Vec<bool> = words
        .iter()
        .map(|w| w.first() != Some(&0xFF) && w.iter().any(|b| b"\",:{}[]".contains(b)))
        .collect();
    let grammar = compiler.compile(&Constraint::JsonSchema(schema())).unwrap();
    let mut times = Vec::new();
    let mut allowed = Vec::with_capacity(vocab_size);
    let mut closing = Vec::new();
    for seed in 0..num_walks {
        let mut rng = Rng::new(seed + 1);
        let mut m = grammar.matcher();
        let mut text = Vec::new();
        for _ in 0..MAX_WALK_TOKENS {
            if m.is_terminated() {
                break;
            }
            let mut mask = TokenMask::new(vocab_size);
            let start = Instant::now();
            m.fill_next_token_mask(&mut mask).unwrap();
            let elapsed = start.elapsed();
            allowed.clear();
            closing.clear();
            for (i, &w) in mask.words().iter().enumerate() {
                let mut bits = w;
                while bits != 0 {
                    let t = i * 32 + bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    allowed.push(t as TokenId);
                    if structural.get(t).copied().unwrap_or(false) {
                        closing.push(t as TokenId);
                    }
                }
            }
            assert!(!allowed.is_empty(), "a live matcher allows some token");
            times.push((elapsed, allowed.len()));
            let t = if !closing.is_empty() && rng.below(8) == 0 {
                *rng.pick(&closing)
            } else {
                *rng.pick(&allowed)
            };
            m.accept_token(t).unwrap();
            if !eos_token_ids.contains(&t) {
                text.extend_from_slice(&words[t as usize]);
            }
        }
        assert!(m.is_terminated(), "walk {seed} did not end in {MAX_WALK_TOKENS} tokens");
        let text = String::from_utf8_lossy(&text);
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(v.get("location").is_some_and(Value::is_string), "{text}");
    }
    times
}

/// A row of the table: every mask, then the wide ones alone (free text,
/// at least 1% of the vocabulary allowed).
fn print_masks(
    label: &str,
    vocab_size: usize,
    build: Duration,
    compile: Duration,
    times: &[(Duration, usize)],
) {
    let s = Summary::of(times.iter().map(|t| t.0).collect());
    let wide = Summary::of(times.iter().filter(|t| t.1 * 100 >= vocab_size).map(|t| t.0).collect());
    println!(
        "| {label} | {vocab_size} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} |",
        s.count,
        us(s.median),
        us(s.p99),
        us(s.mean),
        us(s.max),
        build.as_secs_f64() * 1e3,
        compile.as_secs_f64() * 1e3,
    );
    println!(
        "| {label}, wide masks only | {vocab_size} | {} | {:.1} | {:.1} | {:.1} | {:.1} | | |",
        wide.count,
        us(wide.median),
        us(wide.p99),
        us(wide.mean),
        us(wide.max),
    );
}

fn masks() {
    println!("## Masks: `fill_next_token_mask` per token, random walks through the schema");
    println!();
    println!(
        "| vocabulary | ids | masks | median µs | p99 µs | mean µs | max µs | compiler build ms | schema compile ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");

    let start = Instant::now();
    let (words, eos) = synthetic_vocab();
    let vocab_time = start.elapsed();
    let start = Instant::now();
    let compiler = GrammarCompiler::from_token_bytes(&words, eos.clone()).unwrap();
    let build = start.elapsed();
    let start = Instant::now();
    compiler.compile(&Constraint::JsonSchema(schema())).unwrap();
    let compile = start.elapsed();
    let times = mask_walks(&compiler, &words, &eos, 200);
    print_masks("synthetic byte-level BPE, 150k", words.len(), build, compile, &times);

    let tokenizer = Arc::new(Tokenizer::builtin());
    let builtin_words =
        llguidance::token_bytes_from_tokenizer_json(&tokenizer.to_json().unwrap()).unwrap();
    let start = Instant::now();
    let compiler = GrammarCompiler::new(tokenizer.clone(), tokenizer.vocab_size()).unwrap();
    let build = start.elapsed();
    let start = Instant::now();
    compiler.compile(&Constraint::JsonSchema(schema())).unwrap();
    let compile = start.elapsed();
    let times = mask_walks(&compiler, &builtin_words, tokenizer.eos_token_ids(), 1_000);
    print_masks("built-in, 512", builtin_words.len(), build, compile, &times);
    println!();
    println!(
        "(synthetic vocabulary built in {:.0} ms: {NUM_REGULAR_TOKENS} regular tokens, \
         {NUM_SPECIAL_TOKENS} special, padded to {PADDED_VOCAB_SIZE} ids)",
        vocab_time.as_secs_f64() * 1e3
    );
    println!();
}

// ---------------------------------------------------------------------------
// Decode throughput.

type CpuEngine = EngineCore<ModelExecutor<CpuBackend>>;

/// Time spent in the matchers, summed over the scheduler's threads.
#[derive(Debug, Default)]
struct MatcherTime {
    mask_nanos: AtomicU64,
    accept_nanos: AtomicU64,
    num_masks: AtomicU64,
}

/// `inner`, with each matcher's calls timed into `time`.
#[derive(Debug)]
struct Timed {
    inner: SharedGrammar,
    time: Arc<MatcherTime>,
}

impl CompiledGrammar for Timed {
    fn matcher(&self) -> Box<dyn GrammarMatcher> {
        Box::new(TimedMatcher { inner: self.inner.matcher(), time: self.time.clone() })
    }
}

#[derive(Debug)]
struct TimedMatcher {
    inner: Box<dyn GrammarMatcher>,
    time: Arc<MatcherTime>,
}

impl GrammarMatcher for TimedMatcher {
    fn fill_next_token_mask(&mut self, mask: &mut TokenMask) -> Result<(), String> {
        let start = Instant::now();
        let r = self.inner.fill_next_token_mask(mask);
        self.time.mask_nanos.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        self.time.num_masks.fetch_add(1, Ordering::Relaxed);
        r
    }

    fn accept_token(&mut self, token: TokenId) -> Result<(), String> {
        let start = Instant::now();
        let r = self.inner.accept_token(token);
        self.time.accept_nanos.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        r
    }

    fn is_terminated(&self) -> bool {
        self.inner.is_terminated()
    }
}

/// One engine's round: 32 requests, their outputs, the time of its steps.
struct Round {
    index_of: BTreeMap<RequestId, usize>,
    outputs: Vec<(Vec<TokenId>, FinishReason)>,
    secs: f64,
    num_steps: usize,
}

impl Round {
    /// Queues the requests; `max_tokens[i]` caps request `i`, which
    /// follows `grammar` if given and otherwise ignores end-of-sequence.
    fn start(
        engine: &mut CpuEngine,
        prompts: &[Vec<TokenId>],
        grammar: Option<&SharedGrammar>,
        max_tokens: &[u32],
    ) -> Self {
        let mut index_of = BTreeMap::new();
        for (i, prompt) in prompts.iter().enumerate() {
            let params = SamplingParams {
                temperature: 1.0,
                seed: Some(i as u64 + 1),
                max_tokens: max_tokens[i],
                ignore_eos: grammar.is_none(),
                ..SamplingParams::default()
            };
            let mut new =
                NewRequest::new(prompt.clone(), params).with_eos(builtin::EOS_TOKEN_IDS.to_vec());
            if let Some(g) = grammar {
                new = new.with_structured(g.clone());
            }
            index_of.insert(engine.add_request(new, 0.0).unwrap(), i);
        }
        let outputs = vec![(Vec::new(), FinishReason::Abort); prompts.len()];
        Self { index_of, outputs, secs: 0.0, num_steps: 0 }
    }

    /// One step of `engine`, timed.
    fn step(&mut self, engine: &mut CpuEngine) {
        self.num_steps += 1;
        let start = Instant::now();
        let result = engine.step(self.num_steps as f64);
        self.secs += start.elapsed().as_secs_f64();
        for o in result.outputs {
            let out = &mut self.outputs[self.index_of[&o.request_id]];
            out.0.extend(o.new_token_id);
            if let Some(reason) = o.finish_reason {
                out.1 = reason;
            }
        }
    }

    fn num_tokens(&self) -> usize {
        self.outputs.iter().map(|o| o.0.len()).sum()
    }

    fn tokens_per_sec(&self) -> f64 {
        self.num_tokens() as f64 / self.secs
    }
}

fn builtin_engine() -> CpuEngine {
    let exec =
        load_cpu_executor(&ModelSource::Builtin, &LoadOptions::default(), &mut |_, _| {}).unwrap();
    EngineCore::new(exec, offline_config(8192, NUM_SEQS))
}

fn decode() {
    const ROUNDS: usize = 4;
    let tokenizer = Arc::new(Tokenizer::builtin());
    let compiler = GrammarCompiler::new(tokenizer.clone(), builtin::VOCAB_SIZE).unwrap();
    let time = Arc::new(MatcherTime::default());
    let grammar: SharedGrammar = Arc::new(Timed {
        inner: compiler.compile(&Constraint::JsonSchema(schema())).unwrap(),
        time: time.clone(),
    });
    // One engine per arm, stepped in turn, so the load of the machine
    // (shared, two cores) falls on both alike.
    let (mut constrained, mut free) = (builtin_engine(), builtin_engine());
    let mut rng = Rng::new(7);
    let prompts: Vec<Vec<TokenId>> = (0..NUM_SEQS)
        .map(|_| {
            (0..PROMPT_LEN).map(|_| 4 + rng.below(builtin::VOCAB_SIZE - 4) as TokenId).collect()
        })
        .collect();

    // The warm-up round gives each constrained request's length; the
    // unconstrained twin generates as many tokens.
    let caps = [MAX_CONSTRAINED_TOKENS; NUM_SEQS];
    let mut warm = Round::start(&mut constrained, &prompts, Some(&grammar), &caps);
    while constrained.has_unfinished() {
        warm.step(&mut constrained);
    }
    let lengths: Vec<u32> = warm.outputs.iter().map(|o| o.0.len() as u32).collect();
    let num_stopped = warm.outputs.iter().filter(|o| o.1 == FinishReason::Stop).count();
    for (tokens, _) in &warm.outputs {
        let text = tokenizer.decode(tokens, true).unwrap();
        serde_json::from_str::<Value>(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    }
    for field in [&time.mask_nanos, &time.accept_nanos, &time.num_masks] {
        field.store(0, Ordering::Relaxed);
    }

    let (mut c_rounds, mut f_rounds) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let mut c = Round::start(&mut constrained, &prompts, Some(&grammar), &caps);
        let mut f = Round::start(&mut free, &prompts, None, &lengths);
        while constrained.has_unfinished() || free.has_unfinished() {
            // Alternate which arm goes first.
            if c.num_steps.is_multiple_of(2) {
                c.step(&mut constrained);
                f.step(&mut free);
            } else {
                f.step(&mut free);
                c.step(&mut constrained);
            }
        }
        // Seeded sampling: the constrained outputs are the warm-up's.
        assert!(c.outputs.iter().zip(&lengths).all(|(o, &n)| o.0.len() == n as usize));
        assert_eq!((c.num_tokens(), c.num_steps), (f.num_tokens(), f.num_steps));
        c_rounds.push(c);
        f_rounds.push(f);
    }
    print_decode(&c_rounds, &f_rounds, &lengths, num_stopped, &time);
}

fn print_decode(
    constrained: &[Round],
    free: &[Round],
    lengths: &[u32],
    num_stopped: usize,
    time: &MatcherTime,
) {
    let total = |rounds: &[Round]| {
        let tokens: usize = rounds.iter().map(Round::num_tokens).sum();
        let secs: f64 = rounds.iter().map(|r| r.secs).sum();
        let steps: usize = rounds.iter().map(|r| r.num_steps).sum();
        (tokens, secs, steps)
    };
    let (c_tokens, c_secs, c_steps) = total(constrained);
    let (f_tokens, f_secs, f_steps) = total(free);
    let ratios: Vec<f64> = constrained
        .iter()
        .zip(free)
        .map(|(c, f)| c.tokens_per_sec() / f.tokens_per_sec())
        .collect();
    let secs = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 / 1e9;
    let num_masks = time.num_masks.load(Ordering::Relaxed).max(1) as f64;
    let full_batch_steps = lengths.iter().min().copied().unwrap_or(0);

    println!("## Decode: {NUM_SEQS} requests at once, built-in model (CPU), temperature 1, seeded");
    println!();
    println!(
        "{} rounds per arm, stepped in turn; outputs of {}..{} tokens (mean {:.0}; all {NUM_SEQS} \
         sequences decode for the first {full_batch_steps} steps); {num_stopped}/{NUM_SEQS} \
         constrained requests ended by the grammar; {} threads",
        constrained.len(),
        lengths.iter().min().unwrap_or(&0),
        lengths.iter().max().unwrap_or(&0),
        lengths.iter().sum::<u32>() as f64 / NUM_SEQS as f64,
        std::thread::available_parallelism().map_or(1, |n| n.get()),
    );
    println!();
    println!("| arm | tokens | seconds | steps | tokens/s | ms/step |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (arm, tokens, secs, steps) in
        [("unconstrained", f_tokens, f_secs, f_steps), ("constrained", c_tokens, c_secs, c_steps)]
    {
        println!(
            "| {arm} | {tokens} | {secs:.2} | {steps} | {:.0} | {:.3} |",
            tokens as f64 / secs,
            secs * 1e3 / steps as f64
        );
    }
    println!();
    println!(
        "constrained / unconstrained: {:.3} (per round {:.3}..{:.3})",
        (c_tokens as f64 / c_secs) / (f_tokens as f64 / f_secs),
        ratios.iter().copied().fold(f64::INFINITY, f64::min),
        ratios.iter().copied().fold(0.0, f64::max),
    );
    println!(
        "in the matchers, summed over the scheduler's threads: masks {:.2} s ({:.1} µs each), \
         accepting tokens {:.2} s ({:.1} µs each); extra wall time of the constrained arm {:.2} s",
        secs(&time.mask_nanos),
        secs(&time.mask_nanos) * 1e6 / num_masks,
        secs(&time.accept_nanos),
        secs(&time.accept_nanos) * 1e6 / num_masks,
        c_secs - f_secs,
    );
    println!(
        "(the synthetic 150k vocabulary cannot run here: the built-in model's logits are {} wide)",
        builtin::VOCAB_SIZE
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a bare word selects one part.
    let parts: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wants = |p: &str| parts.is_empty() || parts.iter().any(|a| a == p);
    if wants("masks") {
        masks();
    }
    if wants("decode") {
        decode();
    }
}
