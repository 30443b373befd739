//! Where a model directory's chat template and special tokens come from,
//! as transformers' `AutoTokenizer` finds them
//! (fixtures/chat_templates/dirs, made by scripts/make_chat_fixtures.py),
//! and vLLM's `--chat-template` argument.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use serde_json::Value;
use strata_tokenizer::{load_chat_template_arg, ChatTemplates, SpecialToken, Tokenizer};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/chat_templates")
}

#[test]
fn template_sources_and_special_tokens_match_transformers() {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("dirs.json")).unwrap())
            .unwrap();
    let dirs = expected["dirs"].as_object().unwrap();
    assert!(dirs.len() >= 8);
    for (name, want) in dirs {
        let tok = Tokenizer::from_dir(&fixtures().join("dirs").join(name)).unwrap();
        let chat = tok.chat_config();
        assert_eq!(chat.template(false), want["without_tools"].as_str(), "{name}: without tools");
        assert_eq!(chat.template(true), want["with_tools"].as_str(), "{name}: with tools");
        let mut got: Vec<(String, Value)> = chat
            .special_tokens
            .iter()
            .map(|(k, t)| {
                let v = match t {
                    SpecialToken::One(s) => Value::from(s.as_str()),
                    SpecialToken::Many(v) => Value::from(v.clone()),
                };
                (k.clone(), v)
            })
            .collect();
        got.sort_by(|a, b| a.0.cmp(&b.0));
        let mut want: Vec<(String, Value)> = want["special_tokens"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(got, want, "{name}: special tokens");
    }
}

#[test]
fn chat_template_jinja_is_read_with_universal_newlines() {
    let tok = Tokenizer::from_dir(&fixtures().join("dirs/jinja_file_only")).unwrap();
    let ChatTemplates::Single(t) = &tok.chat_config().templates else { panic!("one template") };
    assert!(!t.contains('\r'), "{t:?}");
}

#[test]
fn set_chat_template_overrides_every_model_template() {
    let mut tok = Tokenizer::from_dir(&fixtures().join("dirs/config_list")).unwrap();
    tok.set_chat_template("{{ 'mine' }}".to_owned());
    assert_eq!(tok.chat_config().template(false), Some("{{ 'mine' }}"));
    assert_eq!(tok.chat_config().template(true), Some("{{ 'mine' }}"));
    // A request may still name one of the model's templates.
    assert!(tok.chat_config().request_template("tool_use").contains("tool_use"));
}

#[test]
fn chat_template_argument_is_a_file_or_a_template_as_in_vllm() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.jinja");
    std::fs::write(&path, "{{ messages }}\r\n").unwrap();
    assert_eq!(load_chat_template_arg(path.to_str().unwrap()).unwrap(), "{{ messages }}\n");
    // Not a file, but a template.
    assert_eq!(load_chat_template_arg("{{ bos_token }}").unwrap(), "{{ bos_token }}");
    assert_eq!(load_chat_template_arg("line one\nline two").unwrap(), "line one\nline two");
    // Looks like a path, and is none.
    let missing = dir.path().join("missing.jinja");
    let e = load_chat_template_arg(missing.to_str().unwrap()).unwrap_err().to_string();
    assert!(e.contains("looks like a file path") && e.contains("missing.jinja"), "{e}");
    assert!(load_chat_template_arg("template_chatml.jinja").is_err());
}
