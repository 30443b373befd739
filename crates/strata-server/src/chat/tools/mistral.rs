//! `mistral` (vLLM's `MistralToolParser`). Two formats, by the model's
//! tokenizer version:
//!
//! ```text
//! v11+:   content[TOOL_CALLS]get_weather{"city": "Paris"}[TOOL_CALLS]other{...}
//!         (Hugging Face tokenizers may show `name[ARGS]{...}`)
//! pre-v11: content[TOOL_CALLS] [{"name": "get_weather", "arguments": {...}}, ...]
//! ```
//!
//! vLLM picks the format from the tokenizer (`[ARGS]` in the vocabulary
//! or a mistral-common version ≥ 11); the parser here has no tokenizer,
//! so it reads the format from the text: after the first `[TOOL_CALLS]`,
//! a `[` (past whitespace) is the pre-v11 list, anything else a v11 name.
//!
//! As vLLM: no `[TOOL_CALLS]` → all content. Content is the text before
//! the first `[TOOL_CALLS]` (`None` when empty).
//!
//! * v11+: each piece after a `[TOOL_CALLS]` with a `{` is a call: the
//!   name is the text before the `{` less any `[ARGS]` (not trimmed), the
//!   arguments the rest of the piece *as the model wrote it* (vLLM does
//!   not parse them: a malformed call stays a call). Pieces without `{`
//!   are dropped.
//! * pre-v11: the text after the marker, stripped, is read with
//!   `raw_decode` (trailing text ignored), or else the greedy
//!   `\[{.*}\]` span with `json.loads`; each item's `name` (a string) and
//!   `json.dumps` of its `arguments` (`{}` when absent).
//!
//! Departures (vLLM raises, answering 500, or drops the content before
//! the marker): two `[TOOL_CALLS]` in a pre-v11 output, a list that does
//! not decode, or items that are not `{"name": str, ...}` make the whole
//! output content here.

use super::pyjson::{self, PyValue};
use super::{Format, Gate, Parsed, ToolCall};

const BOT: &str = "[TOOL_CALLS]";

#[derive(Clone, Copy, Debug)]
pub(super) struct Mistral;

impl Format for Mistral {
    const GATE: Gate = Gate::Markers(&[BOT]);

    fn parse(&self, output: &str, _tools: &[super::ToolSchema]) -> Parsed {
        let mut pieces = output.split(BOT);
        let content = pieces.next().unwrap_or_default();
        let raw: Vec<&str> = pieces.collect();
        let Some(first) = raw.first() else {
            return Parsed::content(output);
        };
        let tool_calls = if first.trim_start().starts_with('[') {
            match pre_v11(&raw) {
                Some(calls) => calls,
                None => return Parsed::content(output),
            }
        } else {
            raw.iter().filter_map(|piece| v11(piece)).collect()
        };
        Parsed { content: (!content.is_empty()).then(|| content.to_owned()), tool_calls }
    }
}

fn v11(piece: &str) -> Option<ToolCall> {
    let brace = piece.find('{')?;
    Some(ToolCall {
        name: piece[..brace].replace("[ARGS]", ""),
        arguments: piece[brace..].to_owned(),
    })
}

fn pre_v11(raw: &[&str]) -> Option<Vec<ToolCall>> {
    let [only] = raw else {
        return None;
    };
    let text = only.trim();
    let list = match pyjson::raw_decode(text) {
        Some((list, _)) => list,
        None => pyjson::loads(greedy_list(text)?)?,
    };
    let PyValue::List(items) = list else {
        return None;
    };
    items
        .iter()
        .map(|item| {
            let PyValue::Str(name) = item.get("name")? else {
                return None;
            };
            let arguments = item.get("arguments").map_or_else(|| "{}".to_owned(), PyValue::dumps);
            Some(ToolCall { name: name.clone(), arguments })
        })
        .collect()
}

/// The first match of `re.findall(r"\[{.*}\]", text, DOTALL)`: from the
/// first `[{` to the last `}]` after it.
fn greedy_list(text: &str) -> Option<&str> {
    let start = text.find("[{")?;
    let end = text.rfind("}]").filter(|&end| end >= start + 2)?;
    Some(&text[start..end + 2])
}
