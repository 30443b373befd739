//! `qwen3_coder` (vLLM's `Qwen3CoderToolParser`) and `qwen3_xml`
//! (`Qwen3XMLToolParser`): Qwen3-Coder, Qwen3.5 / 3.6 and Nemotron 3
//! write calls as XML-ish blocks:
//!
//! ```text
//! content<tool_call>
//! <function=get_weather>
//! <parameter=city>
//! Paris
//! </parameter>
//! </function>
//! </tool_call>
//! ```
//!
//! `qwen3_coder`, as vLLM's non-streamed path (its structural-delimiter
//! walk, transcribed): no `<function=` → all content. A `</tool_call>` is
//! real only when followed (past whitespace) by `<tool_call>` or the end;
//! a block without one runs to the end; no block at all → the whole
//! output is one. In each block, the function runs from `<function=` to
//! its structural `</function>` (found by walking the parameters, each of
//! which ends at a `</parameter>` followed by `<parameter=`,
//! `</function>` or `</tool_call>`, nested literal `<parameter=` at line
//! starts counted as depth; else the legacy `</function>`-then-
//! `</tool_call>` heuristic; else the end). A parameter opens at a line
//! start; its value loses one leading and one trailing `\n`. A name must
//! be non-empty without `{}<>"'` or whitespace, else the call is dropped.
//! Content is the text before the first `<tool_call>` that holds a
//! `<function=` (else before the first `<function=`), `None` when empty;
//! text between and after the calls is dropped.
//!
//! `qwen3_xml`: vLLM runs an expat-based streaming state machine (76k of
//! Python) over the whole output. Not transcribed: strata reads each
//! `<tool_call>` block as its own document (as vLLM resets its XML
//! parser per call), the function inside as `qwen3_coder` does (vLLM's
//! shared tests hold both parsers to the same calls on well-formed
//! output), the block ending after the `</tool_call>` that follows the
//! function's `</function>`; the text outside the blocks is content
//! (before, between and after them: `"\n"` between two calls in vLLM's
//! shared test); with no valid call, all content. Malformed-XML edge
//! cases may differ from vLLM.
//!
//! Departure for both: vLLM converts each value by the request's tool
//! schema (`integer` → int, `object` → JSON, ...). The parser interface
//! here has no tools, so every value stays a string, which is what vLLM
//! does for a function or parameter missing from the schema.

use super::pyjson::{dict_insert, PyValue};
use super::{Format, Gate, Parsed, ToolCall};

const TC_START: &str = "<tool_call>";
const TC_END: &str = "</tool_call>";
const FN_START: &str = "<function=";
const FN_END: &str = "</function>";
const P_START: &str = "<parameter=";
const P_END: &str = "</parameter>";

#[derive(Clone, Copy, Debug)]
pub(super) struct Qwen3Coder;

#[derive(Clone, Copy, Debug)]
pub(super) struct Qwen3Xml;

impl Format for Qwen3Coder {
    const GATE: Gate = Gate::Markers(&[TC_START, FN_START]);

    fn parse(&self, output: &str) -> Parsed {
        if !output.contains(FN_START) {
            return Parsed::content(output);
        }
        let blocks = blocks(output);
        let tool_calls = calls(output, &blocks);
        if tool_calls.is_none() {
            return Parsed::content(output);
        }
        let content = &output[..content_index(output)];
        Parsed {
            content: (!content.is_empty()).then(|| content.to_owned()),
            tool_calls: tool_calls.into_iter().flatten().flatten().collect(),
        }
    }
}

impl Format for Qwen3Xml {
    const GATE: Gate = Gate::Markers(&[TC_START, FN_START]);

    fn parse(&self, output: &str) -> Parsed {
        if !output.contains(FN_START) {
            return Parsed::content(output);
        }
        let blocks = xml_blocks(output);
        let (tool_calls, content): (Vec<ToolCall>, String) = if blocks.is_empty() {
            let calls = calls(output, &[]).into_iter().flatten().flatten().collect();
            (calls, output[..content_index(output)].to_owned())
        } else {
            let calls =
                blocks.iter().filter_map(|b| parse_function(&output[b.body.clone()])).collect();
            let mut content = String::new();
            let mut pos = 0;
            for block in &blocks {
                content.push_str(&output[pos..block.start]);
                pos = block.end;
            }
            content.push_str(&output[pos..]);
            (calls, content)
        };
        if tool_calls.is_empty() {
            return Parsed::content(output);
        }
        Parsed { content: (!content.is_empty()).then_some(content), tool_calls }
    }
}

/// `qwen3_xml`'s blocks, each a document of its own: `<tool_call>`, its
/// function (`body`: from after `<function=` to its `</function>`), and
/// the `</tool_call>` right after (past whitespace) if there is one.
fn xml_blocks(output: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut search = 0;
    while let Some(at) = output[search..].find(TC_START) {
        let start = search + at;
        let rest = &output[start + TC_START.len()..];
        let Some(function) = function_text(rest) else {
            break;
        };
        let body_start = function.as_ptr() as usize - output.as_ptr() as usize;
        let body_end = body_start + function.len();
        let mut end = body_end;
        if let Some(after) = output[body_end..].strip_prefix(FN_END) {
            let after = lstrip(after);
            end = output.len() - after.len();
            end += if after.starts_with(TC_END) { TC_END.len() } else { 0 };
        }
        out.push(Block { start, body: body_start..body_end, end });
        search = end.max(start + TC_START.len());
    }
    out
}

/// One `<tool_call>` block: `start..end` whole, `body` inside the tags.
#[derive(Debug)]
struct Block {
    start: usize,
    body: std::ops::Range<usize>,
    end: usize,
}

/// Python's `str.lstrip()`.
fn lstrip(s: &str) -> &str {
    s.trim_start_matches(|c: char| c.is_whitespace() || ('\x1c'..='\x1f').contains(&c))
}

/// The blocks, each closed by a `</tool_call>` followed by `<tool_call>`
/// or the end (the last may be open).
fn blocks(output: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut search = 0;
    while let Some(at) = output[search..].find(TC_START) {
        let start = search + at;
        let body_start = start + TC_START.len();
        let after_open = &output[body_start..];
        let close = after_open.match_indices(TC_END).map(|(i, _)| i).find(|&i| {
            let rest = lstrip(&after_open[i + TC_END.len()..]);
            rest.is_empty() || rest.starts_with(TC_START)
        });
        match close {
            Some(i) => {
                let end = body_start + i + TC_END.len();
                out.push(Block { start, body: body_start..body_start + i, end });
                search = end;
            }
            None => {
                out.push(Block { start, body: body_start..output.len(), end: output.len() });
                break;
            }
        }
    }
    out
}

/// Each block's call (`None` for a dropped one); `None` when no block
/// holds a `<function=` (vLLM: no calls, all content).
fn calls(output: &str, blocks: &[Block]) -> Option<Vec<Option<ToolCall>>> {
    let bodies: Vec<&str> = if blocks.is_empty() {
        vec![output]
    } else {
        blocks.iter().map(|b| &output[b.body.clone()]).collect()
    };
    let functions: Vec<&str> = bodies.into_iter().filter_map(function_text).collect();
    (!functions.is_empty()).then(|| functions.into_iter().map(parse_function).collect())
}

/// The text after `<function=` up to its structural `</function>`.
fn function_text(block: &str) -> Option<&str> {
    let after = &block[block.find(FN_START)? + FN_START.len()..];
    let body_start = after.find('>').map_or(0, |i| i + 1);
    if let Some(end) = scan_to_function_end(&after[body_start..]) {
        return Some(&after[..body_start + end]);
    }
    Some(find_true_function_end(after).map_or(after, |end| &after[..end]))
}

/// A `</function>` followed (past whitespace) by `</tool_call>` or the end.
fn find_true_function_end(text: &str) -> Option<usize> {
    text.match_indices(FN_END).map(|(i, _)| i).find(|&i| {
        let rest = lstrip(&text[i + FN_END.len()..]);
        rest.is_empty() || rest.starts_with(TC_END)
    })
}

/// The next `<parameter=` at a line start, from `from`.
fn next_param_start(text: &str, from: usize) -> Option<usize> {
    text[from..]
        .match_indices(P_START)
        .map(|(i, _)| from + i)
        .find(|&i| i == 0 || text.as_bytes()[i - 1] == b'\n')
}

/// Walks a function body parameter by parameter to its `</function>`.
fn scan_to_function_end(body: &str) -> Option<usize> {
    let mut pos = 0;
    while pos < body.len() {
        pos += body[pos..].len() - body[pos..].trim_start_matches([' ', '\t', '\n', '\r']).len();
        if pos >= body.len() {
            return None;
        }
        let rest = &body[pos..];
        if rest.starts_with(FN_END) {
            return Some(pos);
        }
        if !rest.starts_with(P_START) {
            return find_true_function_end(rest).map(|off| pos + off);
        }
        let name_end = pos + P_START.len() + body[pos + P_START.len()..].find('>')?;
        let mut value_start = name_end + 1;
        if body.as_bytes().get(value_start) == Some(&b'\n') {
            value_start += 1;
        }
        pos = match find_true_param_end(&body[value_start..], true) {
            Some(end) => value_start + end + P_END.len(),
            // A missing `</parameter>`: the next parameter ends this one.
            None => value_start + next_param_start(&body[value_start..], 0)?,
        };
    }
    None
}

/// The `</parameter>` that really closes a value: followed by
/// `<parameter=`, `</function>`, `</tool_call>` or (unless
/// `require_lookahead`) the end; literal `<parameter=` inside the value
/// nest.
fn find_true_param_end(value: &str, require_lookahead: bool) -> Option<usize> {
    let mut depth = 0usize;
    let mut pos = 0;
    while pos < value.len() {
        let open = next_param_start(value, pos);
        let close = pos + value[pos..].find(P_END)?;
        if open.is_some_and(|open| open < close) {
            depth += 1;
            pos = open.map_or(pos, |open| open + P_START.len());
        } else if depth == 0 {
            let rest = lstrip(&value[close + P_END.len()..]);
            if (rest.is_empty() && !require_lookahead)
                || rest.starts_with(P_START)
                || rest.starts_with(FN_END)
                || rest.starts_with(TC_END)
            {
                return Some(close);
            }
            pos = close + P_END.len();
        } else {
            depth -= 1;
            pos = close + P_END.len();
        }
    }
    None
}

/// vLLM's `_is_valid_function_name`.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(['{', '}', '<', '>', '"', '\'', ' ', '\t', '\n', '\r'])
}

/// `name>` then parameters, as a call (`None`: dropped).
fn parse_function(text: &str) -> Option<ToolCall> {
    let name_end = text.find('>')?;
    let name = &text[..name_end];
    if !valid_name(name) {
        return None;
    }
    let params = &text[name_end + 1..];
    let mut args = Vec::new();
    let mut pos = 0;
    while let Some(start) = next_param_start(params, pos) {
        let name_start = start + P_START.len();
        let Some(len) = params[name_start..].find('>') else {
            break;
        };
        let value_at = name_start + len + 1;
        let value_text = &params[value_at..];
        let value = match find_true_param_end(value_text, false) {
            Some(end) => {
                pos = value_at + end + P_END.len();
                &value_text[..end]
            }
            None => match next_param_start(value_text, 0) {
                Some(next) => {
                    pos = value_at + next;
                    &value_text[..next]
                }
                None => {
                    pos = params.len();
                    find_true_function_end(value_text).map_or(value_text, |end| &value_text[..end])
                }
            },
        };
        let value = value.strip_prefix('\n').unwrap_or(value);
        let value = value.strip_suffix('\n').unwrap_or(value);
        let key = params[name_start..name_start + len].to_owned();
        dict_insert(&mut args, key, PyValue::Str(value.to_owned()));
    }
    Some(ToolCall { name: name.to_owned(), arguments: PyValue::Dict(args).dumps() })
}

/// Where `qwen3_coder`'s content ends: the first `<tool_call>` whose
/// block (to its first `</tool_call>`) holds a `<function=`, else the
/// first `<function=`.
fn content_index(output: &str) -> usize {
    let mut search = 0;
    while let Some(at) = output[search..].find(TC_START) {
        let tc = search + at;
        let inner = tc + TC_START.len();
        let limit = output[inner..].find(TC_END).map_or(output.len(), |i| inner + i);
        if output[inner..limit].contains(FN_START) {
            return tc;
        }
        search = if limit < output.len() { limit + TC_END.len() } else { limit };
    }
    output.find(FN_START).unwrap_or(0)
}
