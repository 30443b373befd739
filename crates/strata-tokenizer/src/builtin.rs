//! The built-in byte-level BPE tokenizer, built in code.
//!
//! Layout of the vocabulary: ids 0-3 are the special tokens, 4-259 the 256
//! bytes (in GPT-2's byte-to-character mapping, as every byte-level BPE
//! tokenizer.json writes them), and the rest are merges learnt from
//! [`CORPUS`] by a small deterministic BPE trainer (most frequent pair
//! first, ties broken by the pair's text), until [`VOCAB_SIZE`] entries.
//! Any byte string encodes, so any UTF-8 text round-trips.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use crate::{file_err, Result};

pub const VOCAB_SIZE: usize = 512;
pub const SPECIAL_TOKENS: [&str; 4] =
    ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"];
pub const BOS_TOKEN_ID: u32 = 0;
pub const EOS_TOKEN_IDS: [u32; 2] = [1, 3];
const FIRST_BYTE_ID: usize = SPECIAL_TOKENS.len();

/// ChatML, the template of the Qwen family.
pub const CHAT_TEMPLATE: &str = "{% for message in messages %}<|im_start|>{{ message['role'] }}\n\
{{ message['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

/// Text the merges are learnt from: plain English about what the engine
/// does, so common words and word pieces become single tokens.
pub const CORPUS: &str = "The engine serves language models over an HTTP interface. \
Every prompt token is attributed to exactly one source: computed here, found in the device \
prefix cache, loaded from the host memory tier, read from the disk tier, or received from a \
remote peer. The sources always sum to the prompt, and the numbers appear in the metrics, in \
the usage of each response, and in the periodic log line. The scheduler runs one step at a \
time: it chooses the requests to run, the model computes their tokens, and the outputs are \
checked for stop conditions. A request that cannot get memory waits; a running request may be \
preempted and recomputed later. The key and value cache is stored in blocks of sixteen tokens, \
and a block that is full can be shared by every request with the same prefix. When the device \
pool is full, blocks move to the host and then to the disk, and they come back when the same \
prompt is seen again. In a prefill and decode pair, one engine computes the prompt and the \
other engine pulls the cache over the network and generates the answer. Transfers are measured \
in bytes and seconds, and failures are counted with the tokens they cost. The quick brown fox \
jumps over the lazy dog. What is the capital of France? The capital of France is Paris. \
Hello, how are you today? I am fine, thank you. This is a test of the tokenizer, and these \
are the words that it should learn to encode with fewer tokens than bytes.";

/// GPT-2's reversible byte-to-character map: printable bytes map to
/// themselves, the others to characters from U+0100 upwards.
pub fn byte_to_char() -> [char; 256] {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut map = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        map[b as usize] = if printable(b) {
            char::from_u32(b).expect("invariant: Latin-1 code point")
        } else {
            next += 1;
            char::from_u32(next - 1).expect("invariant: code point below U+0200")
        };
    }
    map
}

/// Splits text into words the way byte-level pre-tokenizers roughly do: a
/// run of letters/digits or of punctuation, with at most one leading space.
fn words(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let class = |c: char| {
        if c.is_alphanumeric() {
            0
        } else if c.is_whitespace() {
            1
        } else {
            2
        }
    };
    for i in 1..=chars.len() {
        let boundary = match (chars.get(i - 1), chars.get(i)) {
            (Some(&(_, a)), Some(&(_, b))) => class(a) != class(b) && !(a == ' ' && class(b) != 1),
            _ => true,
        };
        if boundary {
            let end = chars.get(i).map_or(text.len(), |&(p, _)| p);
            out.push(&text[start..end]);
            start = end;
        }
    }
    out
}

/// Learns `num_merges` merges from `corpus`, deterministically.
pub fn learn_merges(corpus: &str, num_merges: usize) -> Vec<(String, String)> {
    let map = byte_to_char();
    let mut counts: BTreeMap<Vec<String>, u64> = BTreeMap::new();
    for w in words(corpus) {
        let symbols = w.bytes().map(|b| map[b as usize].to_string()).collect();
        *counts.entry(symbols).or_default() += 1;
    }
    let mut merges = Vec::with_capacity(num_merges);
    while merges.len() < num_merges {
        let mut pairs: BTreeMap<(String, String), u64> = BTreeMap::new();
        for (symbols, &n) in &counts {
            for pair in symbols.windows(2) {
                *pairs.entry((pair[0].clone(), pair[1].clone())).or_default() += n;
            }
        }
        // Highest count wins; BTreeMap order makes ties go to the smallest pair.
        let Some((best, _)) = pairs.into_iter().fold(
            None,
            |acc: Option<((String, String), u64)>, (p, n)| match acc {
                Some((_, m)) if m >= n => acc,
                _ => Some((p, n)),
            },
        ) else {
            break;
        };
        let joined = format!("{}{}", best.0, best.1);
        counts = counts
            .into_iter()
            .map(|(symbols, n)| {
                let mut out = Vec::with_capacity(symbols.len());
                let mut i = 0;
                while i < symbols.len() {
                    if i + 1 < symbols.len() && symbols[i] == best.0 && symbols[i + 1] == best.1 {
                        out.push(joined.clone());
                        i += 2;
                    } else {
                        out.push(symbols[i].clone());
                        i += 1;
                    }
                }
                (out, n)
            })
            .fold(BTreeMap::new(), |mut m, (s, n)| {
                *m.entry(s).or_default() += n;
                m
            });
        merges.push(best);
    }
    merges
}

/// The complete `tokenizer.json` of the built-in tokenizer.
pub fn tokenizer_json() -> Value {
    let map = byte_to_char();
    let mut vocab = serde_json::Map::new();
    for (i, s) in SPECIAL_TOKENS.iter().enumerate() {
        vocab.insert((*s).to_owned(), json!(i));
    }
    for (b, c) in map.iter().enumerate() {
        vocab.insert(c.to_string(), json!(FIRST_BYTE_ID + b));
    }
    let merges = learn_merges(CORPUS, VOCAB_SIZE - FIRST_BYTE_ID - 256);
    for (a, b) in &merges {
        let next = vocab.len();
        vocab.entry(format!("{a}{b}")).or_insert(json!(next));
    }
    let added: Vec<Value> = SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let bos = SPECIAL_TOKENS[BOS_TOKEN_ID as usize];
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [BOS_TOKEN_ID], "tokens": [bos]}}
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab,
            "merges": merges.iter().map(|(a, b)| json!([a, b])).collect::<Vec<_>>(),
        }
    })
}

/// Writes `tokenizer.json`, `tokenizer_config.json` and
/// `generation_config.json` of the built-in tokenizer into `dir`.
pub fn write_files(dir: &Path) -> Result<()> {
    let files = [
        ("tokenizer.json", tokenizer_json()),
        (
            "tokenizer_config.json",
            json!({
                "bos_token": SPECIAL_TOKENS[0], "eos_token": SPECIAL_TOKENS[3],
                "chat_template": CHAT_TEMPLATE, "model_max_length": 4096,
                "tokenizer_class": "PreTrainedTokenizerFast"
            }),
        ),
        (
            "generation_config.json",
            json!({"bos_token_id": BOS_TOKEN_ID, "eos_token_id": EOS_TOKEN_IDS}),
        ),
    ];
    for (name, value) in files {
        let path = dir.join(name);
        let text = serde_json::to_string_pretty(&value).map_err(|e| file_err(&path, e))?;
        std::fs::write(&path, text).map_err(|e| file_err(&path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_bijection() {
        let mut chars = byte_to_char().to_vec();
        chars.sort_unstable();
        chars.dedup();
        assert_eq!(chars.len(), 256);
    }

    #[test]
    fn merges_are_deterministic_and_fill_the_vocabulary() {
        let a = learn_merges(CORPUS, 252);
        assert_eq!(a, learn_merges(CORPUS, 252));
        assert_eq!(a.len(), 252);
        assert_eq!(
            tokenizer_json()["model"]["vocab"].as_object().map(|m| m.len()),
            Some(VOCAB_SIZE)
        );
    }

    #[test]
    fn words_keep_one_leading_space() {
        assert_eq!(words("the cat, sat"), vec!["the", " cat", ",", " sat"]);
    }
}
