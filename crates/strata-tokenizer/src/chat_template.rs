//! Where a model's chat template and the special tokens it sees come from,
//! as Hugging Face transformers (4.57) finds them when it loads a
//! tokenizer directory, and vLLM's `--chat-template` argument.
//!
//! Sources, in transformers' order:
//!
//! 1. Template files: `chat_template.jinja` (the template named
//!    "default") and `additional_chat_templates/NAME.jinja` (named templates). When
//!    any exists they replace whatever `tokenizer_config.json` says.
//! 2. `tokenizer_config.json`'s `chat_template`: a string (the one
//!    template), or a list of `{"name", "template"}` (named templates).
//!
//! Which template a request gets (transformers' `get_chat_template`): a
//! single template always; of named ones, "tool_use" when the request
//! passes tools and the model has one, else "default"; a model with named
//! templates and no "default" has no template for such a request
//! (transformers raises, vLLM answers that there is no chat template).
//! `--chat-template` ([`crate::Tokenizer::set_chat_template`]) wins over
//! all of them, as vLLM passes it to every request.
//!
//! `.jinja` files are read as Python reads text files (universal newlines:
//! `\r\n` and `\r` become `\n`), so a template saved on Windows renders as
//! it does under transformers.

use std::path::Path;

use serde_json::Value;

use crate::{file_err, read_json, Result, TokenizerError};

/// A model's own chat template(s).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ChatTemplates {
    /// The model ships none.
    #[default]
    Missing,
    /// One template (a `chat_template` string, or `chat_template.jinja`
    /// alone).
    Single(String),
    /// Named templates, by name ("default", "tool_use", ...), sorted.
    Named(Vec<(String, String)>),
}

/// A special token as a chat template sees it: one string, or a list
/// (`additional_special_tokens`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpecialToken {
    One(String),
    Many(Vec<String>),
}

/// What a chat template needs from a model directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChatConfig {
    pub templates: ChatTemplates,
    /// `--chat-template`: replaces the model's template for every request.
    pub override_template: Option<String>,
    /// transformers' `special_tokens_map`: each special token that is set
    /// (`bos_token`, `eos_token`, `unk_token`, `sep_token`, `pad_token`,
    /// `cls_token`, `mask_token`, `additional_special_tokens`, then any
    /// `extra_special_tokens`), by the variable name the template sees.
    pub special_tokens: Vec<(String, SpecialToken)>,
}

/// transformers' `SPECIAL_TOKENS_ATTRIBUTES` that hold one token.
const SINGLE_TOKENS: [&str; 7] =
    ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

impl ChatConfig {
    /// A config with one template and the given BOS and EOS tokens.
    pub fn single(template: &str, bos_token: &str, eos_token: &str) -> Self {
        Self {
            templates: ChatTemplates::Single(template.to_owned()),
            override_template: None,
            special_tokens: vec![
                ("bos_token".into(), SpecialToken::One(bos_token.into())),
                ("eos_token".into(), SpecialToken::One(eos_token.into())),
            ],
        }
    }

    /// The template a request renders with (`with_tools`: the request
    /// passes tools): `--chat-template`, else the model's one template,
    /// else its "tool_use" template when there are tools and it has one,
    /// else its "default" template.
    pub fn template(&self, with_tools: bool) -> Option<&str> {
        if let Some(t) = &self.override_template {
            return Some(t);
        }
        match &self.templates {
            ChatTemplates::Missing => None,
            ChatTemplates::Single(t) => Some(t),
            ChatTemplates::Named(named) => {
                let find =
                    |name: &str| named.iter().find(|(n, _)| n == name).map(|(_, t)| t.as_str());
                with_tools.then(|| find("tool_use")).flatten().or_else(|| find("default"))
            }
        }
    }

    /// The template for a request's own `chat_template`: the name of one of
    /// the model's named templates picks that template (transformers looks
    /// the string up among the names first), anything else is the template
    /// itself.
    pub fn request_template<'a>(&'a self, given: &'a str) -> &'a str {
        match &self.templates {
            ChatTemplates::Named(named) => {
                named.iter().find(|(n, _)| n == given).map_or(given, |(_, t)| t.as_str())
            }
            _ => given,
        }
    }

    /// A single special token by its name (`bos_token`, ...).
    pub fn special_token(&self, name: &str) -> Option<&str> {
        self.special_tokens.iter().find_map(|(n, t)| match t {
            SpecialToken::One(s) if n == name => Some(s.as_str()),
            _ => None,
        })
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.special_token("bos_token")
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.special_token("eos_token")
    }
}

/// A special token given as a string or as `{"content": ...}` (an
/// `AddedToken`).
pub(crate) fn token_string(value: Option<&Value>) -> Option<&str> {
    match value? {
        Value::String(s) => Some(s),
        Value::Object(m) => m.get("content").and_then(Value::as_str),
        _ => None,
    }
}

fn token_list(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::Array(items)) => {
            items.iter().filter_map(|v| token_string(Some(v))).map(str::to_owned).collect()
        }
        _ => Vec::new(),
    }
}

/// Text of a `.jinja` file as Python's `open(path, encoding="utf-8")`
/// reads it (universal newlines).
pub(crate) fn read_template_file(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| file_err(path, e))?;
    let text = String::from_utf8(bytes).map_err(|e| file_err(path, e))?;
    Ok(universal_newlines(&text))
}

fn universal_newlines(text: &str) -> String {
    if !text.contains('\r') {
        return text.to_owned();
    }
    text.replace("\r\n", "\n").replace('\r', "\n")
}

/// The template files of a directory: `chat_template.jinja` as "default",
/// `additional_chat_templates/NAME.jinja` by name.
fn template_files(dir: &Path) -> Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    let single = dir.join("chat_template.jinja");
    if single.is_file() {
        found.push(("default".to_owned(), read_template_file(&single)?));
    }
    let named_dir = dir.join("additional_chat_templates");
    if named_dir.is_dir() {
        let entries = std::fs::read_dir(&named_dir).map_err(|e| file_err(&named_dir, e))?;
        let mut named = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| file_err(&named_dir, e))?.path();
            let name =
                path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".jinja"));
            if let (Some(name), true) = (name, path.is_file()) {
                named.push((name.to_owned(), read_template_file(&path)?));
            }
        }
        found.extend(named);
    }
    // A named file wins over chat_template.jinja for the same name, as a
    // later dict entry does in transformers.
    let mut by_name: Vec<(String, String)> = Vec::new();
    for (name, text) in found {
        match by_name.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = text,
            None => by_name.push((name, text)),
        }
    }
    by_name.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(by_name)
}

fn config_templates(tok_config: Option<&Value>) -> ChatTemplates {
    match tok_config.and_then(|v| v.get("chat_template")) {
        Some(Value::String(t)) => ChatTemplates::Single(t.clone()),
        Some(Value::Array(items)) => {
            let mut named: Vec<(String, String)> = Vec::new();
            for item in items {
                let name = item.get("name").and_then(Value::as_str);
                let text = item.get("template").and_then(Value::as_str);
                if let (Some(name), Some(text)) = (name, text) {
                    match named.iter_mut().find(|(n, _)| n == name) {
                        Some(slot) => slot.1 = text.to_owned(),
                        None => named.push((name.to_owned(), text.to_owned())),
                    }
                }
            }
            named.sort_by(|a, b| a.0.cmp(&b.0));
            if named.is_empty() {
                ChatTemplates::Missing
            } else {
                ChatTemplates::Named(named)
            }
        }
        _ => ChatTemplates::Missing,
    }
}

/// The special tokens a template sees, from `tokenizer_config.json` (and
/// the legacy `special_tokens_map.json`, which transformers reads only
/// when the config has no `added_tokens_decoder`, and then lets win).
fn special_tokens(dir: &Path, tok_config: Option<&Value>) -> Result<Vec<(String, SpecialToken)>> {
    let legacy = match tok_config {
        Some(c) if c.get("added_tokens_decoder").is_some() => None,
        _ => read_json(&dir.join("special_tokens_map.json"))?,
    };
    let field = |k: &str| {
        let from_map = legacy.as_ref().and_then(|m| token_string(m.get(k)));
        from_map.or_else(|| token_string(tok_config.and_then(|c| c.get(k))))
    };
    let mut out = Vec::new();
    for name in SINGLE_TOKENS {
        if let Some(t) = field(name).filter(|t| !t.is_empty()) {
            out.push((name.to_owned(), SpecialToken::One(t.to_owned())));
        }
    }
    let mut additional = token_list(tok_config.and_then(|c| c.get("additional_special_tokens")));
    for t in token_list(legacy.as_ref().and_then(|m| m.get("additional_special_tokens"))) {
        if !additional.contains(&t) {
            additional.push(t);
        }
    }
    if !additional.is_empty() {
        out.push(("additional_special_tokens".to_owned(), SpecialToken::Many(additional)));
    }
    if let Some(Value::Object(extra)) = tok_config.and_then(|c| c.get("extra_special_tokens")) {
        for (name, value) in extra {
            let Some(t) = token_string(Some(value)).filter(|t| !t.is_empty()) else { continue };
            match out.iter_mut().find(|(n, _)| n == name) {
                Some(slot) => slot.1 = SpecialToken::One(t.to_owned()),
                None => out.push((name.clone(), SpecialToken::One(t.to_owned()))),
            }
        }
    }
    Ok(out)
}

/// Reads the chat config of a model directory whose
/// `tokenizer_config.json` (if any) is `tok_config`.
pub(crate) fn load(dir: &Path, tok_config: Option<&Value>) -> Result<ChatConfig> {
    let files = template_files(dir)?;
    let templates = if files.is_empty() {
        config_templates(tok_config)
    } else if files.len() == 1 && files[0].0 == "default" {
        ChatTemplates::Single(files.into_iter().next().map(|(_, t)| t).unwrap_or_default())
    } else {
        ChatTemplates::Named(files)
    };
    Ok(ChatConfig {
        templates,
        override_template: None,
        special_tokens: special_tokens(dir, tok_config)?,
    })
}

/// vLLM's `--chat-template` argument: the contents of the file it names,
/// if that file can be read; otherwise, when it holds any of `{`, `}` or a
/// newline, the argument itself is the template; otherwise it looks like a
/// path that does not exist, an error (vLLM's `load_chat_template`, less
/// its directory of built-in templates, which strata does not ship).
///
/// The file is read as Python reads it (universal newlines); a template
/// given inline is used as it is.
pub fn load_chat_template_arg(arg: &str) -> Result<String> {
    let path = Path::new(arg);
    let err = match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8(bytes).map_err(|e| file_err(path, e))?;
            return Ok(universal_newlines(&text));
        }
        Err(e) => e,
    };
    if arg.contains(['{', '}', '\n']) {
        return Ok(arg.to_owned());
    }
    Err(TokenizerError::ChatTemplate(format!(
        "the supplied chat template ({arg}) looks like a file path, but it failed to be opened: {err}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn universal_newlines_match_python_text_mode() {
        assert_eq!(universal_newlines("a\r\nb\rc\n"), "a\nb\nc\n");
        assert_eq!(universal_newlines("plain"), "plain");
    }

    #[test]
    fn named_templates_pick_tool_use_with_tools_and_default_without() {
        let c = ChatConfig {
            templates: ChatTemplates::Named(vec![
                ("default".into(), "D".into()),
                ("tool_use".into(), "T".into()),
            ]),
            ..ChatConfig::default()
        };
        assert_eq!(c.template(false), Some("D"));
        assert_eq!(c.template(true), Some("T"));
        assert_eq!(c.request_template("tool_use"), "T");
        assert_eq!(c.request_template("{{ x }}"), "{{ x }}");
        let no_default = ChatConfig {
            templates: ChatTemplates::Named(vec![("tool_use".into(), "T".into())]),
            ..ChatConfig::default()
        };
        assert_eq!(no_default.template(false), None);
        assert_eq!(no_default.template(true), Some("T"));
        let overridden = ChatConfig { override_template: Some("O".into()), ..c };
        assert_eq!(overridden.template(true), Some("O"));
        assert_eq!(overridden.request_template("default"), "D");
    }

    #[test]
    fn single_templates_do_not_treat_the_request_string_as_a_name() {
        let c = ChatConfig::single("S", "<s>", "</s>");
        assert_eq!(c.template(true), Some("S"));
        assert_eq!(c.request_template("default"), "default");
        assert_eq!(c.bos_token(), Some("<s>"));
        assert_eq!(c.eos_token(), Some("</s>"));
    }
}
