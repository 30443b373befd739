//! The GGUF tokenizer against the `tokenizer.json` it was converted from,
//! and its refusals.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

use super::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/models").join(name)
}

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("read fixture");
    serde_json::from_str(&text).expect("fixture JSON")
}

/// The GGUF vocabulary llama.cpp's `convert_hf_to_gguf.py` writes for a
/// Hugging Face model directory with a byte-level BPE `tokenizer.json`
/// (`_set_vocab_gpt2`: `get_vocab_base`, then `gguf.SpecialVocab` with
/// merges): tokens by id up to `config.json`'s `vocab_size` (gaps become
/// unused `[PAD<id>]`), added tokens typed control when special and
/// user-defined otherwise, special ids from `tokenizer_config.json`'s token
/// strings and then `config.json`'s `*_token_id`, `add_*_token` and the
/// chat template from `tokenizer_config.json`.
fn vocab_from_hf_dir(dir: &Path, pre: &str) -> GgufVocab {
    let tokenizer = json(&dir.join("tokenizer.json"));
    let config = json(&dir.join("config.json"));
    let tok_config = json(&dir.join("tokenizer_config.json"));
    let added = tokenizer["added_tokens"].as_array().expect("added_tokens");
    let mut by_id: Vec<(u32, String)> = tokenizer["model"]["vocab"]
        .as_object()
        .expect("vocab")
        .iter()
        .map(|(t, id)| (id.as_u64().expect("id") as u32, t.clone()))
        .collect();
    by_id.extend(added.iter().map(|t| (t["id"].as_u64().expect("id") as u32, content(t))));
    let vocab_size = config["vocab_size"].as_u64().map_or(by_id.len(), |n| n as usize);
    let (mut tokens, mut token_types) = (Vec::new(), Vec::new());
    for id in 0..vocab_size as u32 {
        let added_token = added.iter().find(|t| t["id"] == id);
        match (by_id.iter().find(|(i, _)| *i == id), added_token) {
            (None, _) => {
                tokens.push(format!("[PAD{id}]"));
                token_types.push(5);
            }
            (Some((_, text)), Some(t)) => {
                tokens.push(text.clone());
                token_types.push(if t["special"] == true {
                    TYPE_CONTROL
                } else {
                    TYPE_USER_DEFINED
                });
            }
            (Some((_, text)), None) => {
                tokens.push(text.clone());
                token_types.push(1);
            }
        }
    }
    let merges = tokenizer["model"]["merges"]
        .as_array()
        .expect("merges")
        .iter()
        .map(|m| match m {
            Value::String(s) => s.clone(),
            pair => format!("{} {}", pair[0].as_str().expect("a"), pair[1].as_str().expect("b")),
        })
        .collect();
    let special_id = |kind: &str| {
        let from_tokenizer =
            crate::chat_template::token_string(tok_config.get(format!("{kind}_token")))
                .and_then(|s| added.iter().find(|t| t["content"] == s))
                .and_then(|t| t["id"].as_u64());
        from_tokenizer.or_else(|| config[format!("{kind}_token_id")].as_u64()).map(|id| id as u32)
    };
    GgufVocab {
        model: "gpt2".into(),
        pre: Some(pre.into()),
        tokens,
        token_types,
        scores: Vec::new(),
        merges,
        bos_token_id: special_id("bos"),
        eos_token_id: special_id("eos"),
        eot_token_id: None,
        eom_token_id: None,
        unknown_token_id: special_id("unk"),
        padding_token_id: special_id("pad"),
        add_bos_token: tok_config["add_bos_token"].as_bool(),
        add_eos_token: tok_config["add_eos_token"].as_bool(),
        add_space_prefix: None,
        chat_template: tok_config["chat_template"].as_str().map(str::to_owned),
    }
}

fn content(token: &Value) -> String {
    token["content"].as_str().expect("content").to_owned()
}

const CORPUS: &[&str] = &[
    "Hello, world! The engine computes the prompt.",
    "café naïve é 日本語 🚀 Ünïcödé",
    "a  b\n\n\tc   ",
    "   leading and trailing  \r\n",
    "12345 6789 3.14159",
    "don't I'LL we've SHE'S they'd",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
    "x<|endoftext|>y <|im_end|>",
    "fn main() { println!(\"{}\", 1 + 2); }",
    "",
];

/// `from_gguf` on the converted vocabulary encodes and decodes as the
/// fixture's own `tokenizer.json` does (the fixtures' NFC normalizer, which
/// llama.cpp lacks, changes none of the corpus).
fn assert_matches_tokenizer_json(name: &str, pre: &str) {
    let dir = fixture(name);
    let reference = Tokenizer::from_dir(&dir).expect("from_dir");
    let gguf = Tokenizer::from_gguf(&vocab_from_hf_dir(&dir, pre)).expect("from_gguf");
    assert_eq!(gguf.vocab_size(), reference.vocab_size());
    for text in CORPUS {
        for add_special in [true, false] {
            let ids = gguf.encode(text, add_special).expect("encode");
            assert_eq!(
                ids,
                reference.encode(text, add_special).expect("encode"),
                "{name}: {text:?}"
            );
            for skip_special in [true, false] {
                assert_eq!(
                    gguf.decode(&ids, skip_special).expect("decode"),
                    reference.decode(&ids, skip_special).expect("decode"),
                    "{name}: {text:?}"
                );
            }
        }
        let ids = gguf.encode(text, false).expect("encode");
        assert_eq!(gguf.decode(&ids, false).expect("decode"), *text, "{name}: round trip");
    }
}

#[test]
fn gguf_qwen2_vocab_encodes_as_its_tokenizer_json() {
    assert_matches_tokenizer_json("tiny-qwen2", "qwen2");
    assert_matches_tokenizer_json("tiny-qwen3", "qwen2");
}

#[test]
fn gguf_llama3_vocab_encodes_as_its_tokenizer_json() {
    assert_matches_tokenizer_json("tiny-llama", "llama-bpe");
}

#[test]
fn gguf_special_ids_and_chat_config_match_the_model_directory() {
    for (name, pre, bos, eos) in [
        ("tiny-qwen2", "qwen2", "<|endoftext|>", "<|im_end|>"),
        ("tiny-llama", "llama-bpe", "<|begin_of_text|>", "<|eot_id|>"),
    ] {
        let dir = fixture(name);
        let reference = Tokenizer::from_dir(&dir).expect("from_dir");
        let gguf = Tokenizer::from_gguf(&vocab_from_hf_dir(&dir, pre)).expect("from_gguf");
        // llama.cpp's end-of-generation tokens by text find what
        // generation_config.json lists beside the GGUF's single eos id.
        assert_eq!(gguf.eos_token_ids(), reference.eos_token_ids(), "{name}");
        assert_eq!(gguf.bos_token_id(), reference.bos_token_id(), "{name}");
        let chat = gguf.chat_config();
        assert_eq!(chat.template(false), reference.chat_config().template(false), "{name}");
        assert!(chat.template(false).is_some(), "{name}");
        assert_eq!(chat.bos_token(), Some(bos), "{name}");
        assert_eq!(chat.eos_token(), Some(eos), "{name}");
    }
}

#[test]
fn gguf_add_bos_follows_the_key_then_llama_cpp_defaults() {
    let dir = fixture("tiny-llama");
    let mut vocab = vocab_from_hf_dir(&dir, "llama-bpe");
    vocab.add_bos_token = None;
    let ids = Tokenizer::from_gguf(&vocab).expect("from_gguf").encode("hi", true).expect("encode");
    assert_eq!(ids[0], 448, "llama-bpe adds BOS by default");
    vocab.pre = Some("qwen2".into());
    let ids = Tokenizer::from_gguf(&vocab).expect("from_gguf").encode("hi", true).expect("encode");
    assert_ne!(ids[0], 448, "other BPE pre-tokenizers do not");
    vocab.add_bos_token = Some(true);
    vocab.add_eos_token = Some(true);
    let t = Tokenizer::from_gguf(&vocab).expect("from_gguf");
    let ids = t.encode("hi", true).expect("encode");
    assert_eq!((ids[0], ids[ids.len() - 1]), (448, 452));
    assert_eq!(&ids[1..ids.len() - 1], &t.encode("hi", false).expect("encode")[..]);
    vocab.chat_template = None;
    let t = Tokenizer::from_gguf(&vocab).expect("from_gguf");
    assert_eq!(t.chat_config().templates, ChatTemplates::Missing);
}

fn splits(t: &Tokenizer, text: &str) -> Vec<String> {
    let mut pre = PreTokenizedString::from(text);
    t.inner.get_pre_tokenizer().expect("pre-tokenizer").pre_tokenize(&mut pre).expect("split");
    pre.get_splits(OffsetReferential::Original, OffsetType::Byte)
        .into_iter()
        .map(|(s, _, _)| s.to_owned())
        .collect()
}

#[test]
fn gguf_pre_tokenizers_split_as_llama_cpp_regex_lists() {
    let mut vocab = vocab_from_hf_dir(&fixture("tiny-qwen2"), "default");
    let t = Tokenizer::from_gguf(&vocab).expect("default");
    // Punctuation first, then GPT-2's regex, then digit runs, then groups
    // of three ASCII digits, each splitting the pieces of the one before.
    assert_eq!(splits(&t, "Hello, world 12345!"), ["Hello", ",", "Ġworld", "Ġ", "123", "45", "!"]);
    vocab.pre = None;
    let t = Tokenizer::from_gguf(&vocab).expect("absent pre is default");
    assert_eq!(splits(&t, "a, b"), ["a", ",", "Ġb"]);
    vocab.pre = Some("gpt-2".into());
    let t = Tokenizer::from_gguf(&vocab).expect("gpt-2");
    assert_eq!(splits(&t, "I'LL  go 12345"), ["I", "'", "LL", "Ġ", "Ġgo", "Ġ12345"]);
    vocab.pre = Some("qwen2".into());
    let t = Tokenizer::from_gguf(&vocab).expect("qwen2");
    assert_eq!(splits(&t, "I'LL 123"), ["I", "'LL", "Ġ", "1", "2", "3"]);
    vocab.pre = Some("llama-bpe".into());
    let t = Tokenizer::from_gguf(&vocab).expect("llama-bpe");
    assert_eq!(splits(&t, "I'LL 12345"), ["I", "'LL", "Ġ", "123", "45"]);
    // llama.cpp spells the contractions in ASCII cases: `'ſ` (`ſ`
    // case-folds to `s`) is no contraction, so it stays with its word.
    assert_eq!(splits(&t, "'ſa"), [byte_level("'ſa")]);
}

/// GPT-2's byte-to-character mapping of `text`'s UTF-8.
fn byte_level(text: &str) -> String {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut shifted = 0u32;
    let mut table = [0u32; 256];
    for b in 0..=255u8 {
        table[b as usize] = if printable(b) {
            u32::from(b)
        } else {
            shifted += 1;
            255 + shifted
        };
    }
    text.bytes().map(|b| char::from_u32(table[b as usize]).expect("char")).collect()
}

#[test]
fn gguf_end_of_generation_and_special_tokens_follow_llama_cpp_text_rules() {
    let mut vocab = vocab_from_hf_dir(&fixture("tiny-qwen2"), "qwen2");
    let n = vocab.tokens.len() as u32;
    // A normal-typed "<|eot_id|>" becomes control and ends generation; a
    // user-defined token is matched in text and rendered when decoding;
    // with "<|return|>" and "<|call|>", "<|end|>" ends a message only.
    for (text, ty) in
        [("<|eot_id|>", 1), ("<tool>", 4), ("<|return|>", 3), ("<|call|>", 3), ("<|end|>", 3)]
    {
        vocab.tokens.push(text.into());
        vocab.token_types.push(ty);
    }
    let t = Tokenizer::from_gguf(&vocab).expect("from_gguf");
    assert_eq!(t.eos_token_ids(), &[448, 450, n, n + 2, n + 3]);
    let ids = t.encode("a<|eot_id|><tool><|end|>", false).expect("encode");
    assert_eq!(&ids[1..], &[n, n + 1, n + 4]);
    assert_eq!(t.decode(&ids, true).expect("decode"), "a<tool><|end|>");
    vocab.eot_token_id = Some(n + 4);
    let t = Tokenizer::from_gguf(&vocab).expect("from_gguf");
    assert_eq!(t.eos_token_ids(), &[448, 450, n, n + 2, n + 3], "<|end|> stays out");
}

fn refusal(vocab: &GgufVocab) -> String {
    Tokenizer::from_gguf(vocab).expect_err("refused").to_string()
}

#[test]
fn gguf_refuses_what_it_cannot_tokenize_exactly() {
    let good = vocab_from_hf_dir(&fixture("tiny-qwen2"), "qwen2");
    let e = refusal(&GgufVocab { model: "bert".into(), ..good.clone() });
    assert!(e.contains("\"bert\""), "{e}");
    let e = refusal(&GgufVocab { pre: Some("deepseek-llm".into()), ..good.clone() });
    assert!(e.contains("tokenizer.ggml.pre \"deepseek-llm\"") && e.contains("qwen2"), "{e}");
    let e = refusal(&GgufVocab { merges: Vec::new(), ..good.clone() });
    assert!(e.contains("merges is missing"), "{e}");
    let e = refusal(&GgufVocab { merges: vec!["Ġt".into()], ..good.clone() });
    assert!(e.contains("merges[0]"), "{e}");
    let e = refusal(&GgufVocab { merges: vec!["Ġ zzz".into()], ..good.clone() });
    assert!(e.contains("zzz"), "{e}");
    let e = refusal(&GgufVocab { token_types: vec![1; 3], ..good.clone() });
    assert!(e.contains("token_type has 3 entries for 451 tokens"), "{e}");
    let e = refusal(&GgufVocab { scores: vec![0.0; 452], ..good.clone() });
    assert!(e.contains("scores has 452 entries"), "{e}");
    let e = refusal(&GgufVocab { eos_token_id: Some(451), ..good.clone() });
    assert!(e.contains("eos_token_id = 451 is out of range"), "{e}");
    let e = refusal(&GgufVocab { bos_token_id: None, add_bos_token: Some(true), ..good.clone() });
    assert!(e.contains("add_bos_token is true, but bos_token_id is not set"), "{e}");
    let mut duplicate = good.clone();
    duplicate.tokens[1] = duplicate.tokens[0].clone();
    let e = refusal(&duplicate);
    assert!(e.contains("duplicate token") && e.contains("ids 0 and 1"), "{e}");
}
