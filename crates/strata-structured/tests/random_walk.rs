//! Matchers driven by a random "model": at each step any token the mask
//! allows, chosen at random. Whatever the choices, the output must follow
//! the constraint, which is what a random-weight model relies on.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use serde_json::json;
use strata_core::structured::TokenMask;
use strata_structured::{Constraint, GrammarCompiler};
use strata_tokenizer::Tokenizer;

fn compiler() -> (GrammarCompiler, Arc<Tokenizer>) {
    let tok = Arc::new(Tokenizer::builtin());
    let vocab = tok.vocab_size();
    (GrammarCompiler::new(tok.clone(), vocab).unwrap(), tok)
}

/// Walks `constraint` with tokens drawn by `seed`; returns the text.
fn walk(c: &GrammarCompiler, tok: &Tokenizer, constraint: &Constraint, seed: u64) -> String {
    let grammar = c.compile(constraint).unwrap();
    let mut m = grammar.matcher();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::new();
    for _ in 0..400 {
        if m.is_terminated() {
            break;
        }
        let mut mask = TokenMask::new(tok.vocab_size());
        m.fill_next_token_mask(&mut mask).unwrap();
        let allowed: Vec<u32> =
            (0..tok.vocab_size() as u32).filter(|&t| mask.is_allowed(t)).collect();
        assert!(!allowed.is_empty(), "a live matcher allows some token");
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let t = allowed[(state % allowed.len() as u64) as usize];
        m.accept_token(t).unwrap();
        if !tok.eos_token_ids().contains(&t) {
            out.push(t);
        }
    }
    assert!(m.is_terminated(), "the walk ended within 400 tokens");
    tok.decode(&out, true).unwrap()
}

#[test]
fn random_walks_produce_json_that_follows_the_schema() {
    let (c, tok) = compiler();
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 8},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}
        },
        "required": ["name", "age"],
        "additionalProperties": false
    });
    for seed in 0..20 {
        let text = walk(&c, &tok, &Constraint::JsonSchema(schema.clone()), seed);
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        let age = v["age"].as_i64().unwrap();
        assert!((0..=120).contains(&age), "{text}");
        assert!(v["name"].as_str().unwrap().chars().count() <= 8, "{text}");
        assert!(v
            .as_object()
            .unwrap()
            .keys()
            .all(|k| ["name", "age", "tags"].contains(&k.as_str())));
    }
}

#[test]
fn regex_choice_and_lark_walks_match() {
    let (c, tok) = compiler();
    for seed in 0..10 {
        let ip = walk(&c, &tok, &Constraint::Regex(r"([0-9]{1,3}\.){3}[0-9]{1,3}".into()), seed);
        assert_eq!(ip.split('.').count(), 4, "{ip}");
        assert!(
            ip.split('.')
                .all(|p| !p.is_empty() && p.len() <= 3 && p.chars().all(|c| c.is_ascii_digit())),
            "{ip:?}"
        );
        let choices = vec!["red".to_string(), "green".into(), "blue sky".into()];
        let pick = walk(&c, &tok, &Constraint::Choice(choices.clone()), seed);
        assert!(choices.contains(&pick), "{pick}");
        let lark = "start: \"SELECT \" col (\", \" col)* \" FROM t\"\ncol: /[a-z]{1,5}/";
        let sql = walk(&c, &tok, &Constraint::Lark(lark.into()), seed);
        assert!(sql.starts_with("SELECT ") && sql.ends_with(" FROM t"), "{sql}");
    }
}

#[test]
fn a_schema_llguidance_refuses_is_an_error_and_repeats_hit_the_cache() {
    let (c, _) = compiler();
    let bad =
        Constraint::JsonSchema(json!({"type": "object", "properties": {"x": {"$ref": "#/nope"}}}));
    assert!(c.compile(&bad).is_err());
    assert!(c.compile(&Constraint::Lark("start: (".into())).is_err());
    let s = Constraint::JsonSchema(json!({"type": "integer"}));
    let a = c.compile(&s).unwrap();
    let b = c.compile(&s).unwrap();
    assert!(Arc::ptr_eq(&a, &b), "the second compile comes from the cache");
}

#[test]
fn a_compiler_from_token_bytes_masks_by_those_bytes() {
    // The 256 bytes, two longer tokens, an end-of-sequence special and a
    // padding id without bytes.
    let mut words: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    words.extend([b"ab".to_vec(), b"abc".to_vec(), b"\xFF<|end|>".to_vec(), Vec::new()]);
    let c = GrammarCompiler::from_token_bytes(&words, vec![258]).unwrap();
    let mut m = c.compile(&Constraint::Regex("abc".into())).unwrap().matcher();
    let mut mask = TokenMask::new(words.len());
    m.fill_next_token_mask(&mut mask).unwrap();
    let allowed: Vec<u32> = (0..words.len() as u32).filter(|&t| mask.is_allowed(t)).collect();
    assert_eq!(allowed, [u32::from(b'a'), 256, 257]);
    m.accept_token(257).unwrap();
    let mut mask = TokenMask::new(words.len());
    m.fill_next_token_mask(&mut mask).unwrap();
    assert!(mask.is_allowed(258) && !mask.is_allowed(259));
    assert!(GrammarCompiler::from_token_bytes(&words, vec![300]).is_err());
    assert!(GrammarCompiler::from_token_bytes(&words, vec![]).is_err());
}
