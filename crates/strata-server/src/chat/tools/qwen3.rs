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
//! Both convert each value by the request's tool schema, as vLLM does
//! (see [`schema`]: `qwen3_coder`'s `_convert_param_value`, `qwen3_xml`'s
//! deferred parse); a value without a schema stays a string. The schema's
//! parameter names also steer the structural walk, as vLLM's
//! `valid_param_names`: inside a value, a `</parameter>` followed by
//! `<parameter=NAME>` closes it only for a NAME of the schema, and a
//! missing `</parameter>` ends at the next such `<parameter=NAME>` (in
//! the walk to `</function>`, one not seen yet).

use std::collections::BTreeSet;

use super::pyjson::{dict_insert, PyValue};
use super::schema::{self, Raises};
use super::{Format, Gate, Parsed, ToolCall, ToolSchema};

/// The schema's parameter names of a call (`None`: no schema).
type Names<'a> = Option<BTreeSet<&'a str>>;

/// How values are converted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    Coder,
    Xml,
}

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

    fn parse(&self, output: &str, tools: &[ToolSchema]) -> Parsed {
        if !output.contains(FN_START) {
            return Parsed::content(output);
        }
        let blocks = blocks(output);
        let Some(Ok(tool_calls)) = calls(output, &blocks, tools, Style::Coder) else {
            return Parsed::content(output);
        };
        let content = &output[..content_index(output)];
        Parsed {
            content: (!content.is_empty()).then(|| content.to_owned()),
            tool_calls: tool_calls.into_iter().flatten().collect(),
        }
    }
}

impl Format for Qwen3Xml {
    const GATE: Gate = Gate::Markers(&[TC_START, FN_START]);

    fn parse(&self, output: &str, tools: &[ToolSchema]) -> Parsed {
        if !output.contains(FN_START) {
            return Parsed::content(output);
        }
        let blocks = xml_blocks(output, tools);
        let (tool_calls, content): (Vec<ToolCall>, String) = if blocks.is_empty() {
            let calls = match calls(output, &[], tools, Style::Xml) {
                Some(Ok(calls)) => calls.into_iter().flatten().collect(),
                _ => Vec::new(),
            };
            (calls, output[..content_index(output)].to_owned())
        } else {
            let calls = blocks
                .iter()
                .filter_map(|b| {
                    parse_function(&output[b.body.clone()], tools, Style::Xml).ok().flatten()
                })
                .collect();
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
fn xml_blocks(output: &str, tools: &[ToolSchema]) -> Vec<Block> {
    let mut out = Vec::new();
    let mut search = 0;
    while let Some(at) = output[search..].find(TC_START) {
        let start = search + at;
        let rest = &output[start + TC_START.len()..];
        let Some(function) = function_text(rest, tools) else {
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
/// holds a `<function=` (vLLM: no calls, all content); `Raises` when a
/// value's conversion raised (vLLM: all content).
fn calls(
    output: &str,
    blocks: &[Block],
    tools: &[ToolSchema],
    style: Style,
) -> Option<Result<Vec<Option<ToolCall>>, Raises>> {
    let bodies: Vec<&str> = if blocks.is_empty() {
        vec![output]
    } else {
        blocks.iter().map(|b| &output[b.body.clone()]).collect()
    };
    let functions: Vec<&str> = bodies.into_iter().filter_map(|b| function_text(b, tools)).collect();
    (!functions.is_empty())
        .then(|| functions.into_iter().map(|f| parse_function(f, tools, style)).collect())
}

/// The text after `<function=` up to its structural `</function>`.
fn function_text<'a>(block: &'a str, tools: &[ToolSchema]) -> Option<&'a str> {
    let after = &block[block.find(FN_START)? + FN_START.len()..];
    let name_end = after.find('>');
    let names = name_end.and_then(|i| schema::param_names(tools, &after[..i]));
    let body_start = name_end.map_or(0, |i| i + 1);
    if let Some(end) = scan_to_function_end(&after[body_start..], names.as_ref()) {
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

/// The next `<parameter=` at a line start, from `from` (with `names`,
/// one whose name is among them).
fn next_param_start(text: &str, from: usize, names: Option<&BTreeSet<&str>>) -> Option<usize> {
    text[from..].match_indices(P_START).map(|(i, _)| from + i).find(|&i| {
        (i == 0 || text.as_bytes()[i - 1] == b'\n')
            && names.is_none_or(|names| {
                let name_start = i + P_START.len();
                text[name_start..]
                    .find('>')
                    .is_some_and(|n| names.contains(&text[name_start..name_start + n]))
            })
    })
}

/// Walks a function body parameter by parameter to its `</function>`.
fn scan_to_function_end(body: &str, names: Option<&BTreeSet<&str>>) -> Option<usize> {
    let mut pos = 0;
    let mut seen = BTreeSet::new();
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
        let name = &body[pos + P_START.len()..name_end];
        let mut value_start = name_end + 1;
        if body.as_bytes().get(value_start) == Some(&b'\n') {
            value_start += 1;
        }
        pos = match find_true_param_end(&body[value_start..], names, true) {
            Some(end) => value_start + end + P_END.len(),
            // A missing `</parameter>`: the next parameter (with a schema,
            // one not seen yet) ends this one.
            None => {
                let unseen: Names<'_> = names.map(|names| {
                    names.iter().copied().filter(|n| *n != name && !seen.contains(n)).collect()
                });
                value_start + next_param_start(&body[value_start..], 0, unseen.as_ref())?
            }
        };
        seen.insert(name);
    }
    None
}

/// The `</parameter>` that really closes a value: followed by
/// `<parameter=` (with `names`, of one of them), `</function>`,
/// `</tool_call>` or (unless `require_lookahead`) the end; literal
/// `<parameter=` inside the value nest, whatever their name.
fn find_true_param_end(
    value: &str,
    names: Option<&BTreeSet<&str>>,
    require_lookahead: bool,
) -> Option<usize> {
    let mut depth = 0usize;
    let mut pos = 0;
    while pos < value.len() {
        let open = next_param_start(value, pos, None);
        let close = pos + value[pos..].find(P_END)?;
        if open.is_some_and(|open| open < close) {
            depth += 1;
            pos = open.map_or(pos, |open| open + P_START.len());
        } else if depth == 0 {
            let rest = lstrip(&value[close + P_END.len()..]);
            let next_param = rest.strip_prefix(P_START).is_some_and(|after| match names {
                Some(names) => after.find('>').is_some_and(|n| names.contains(&after[..n])),
                None => true,
            });
            if (rest.is_empty() && !require_lookahead)
                || next_param
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
fn parse_function(
    text: &str,
    tools: &[ToolSchema],
    style: Style,
) -> Result<Option<ToolCall>, Raises> {
    let Some(name_end) = text.find('>') else { return Ok(None) };
    let name = &text[..name_end];
    if !valid_name(name) {
        return Ok(None);
    }
    let props = schema::properties(tools, name);
    let names = schema::param_names(tools, name);
    let params = &text[name_end + 1..];
    let mut args = Vec::new();
    let mut pos = 0;
    while let Some(start) = next_param_start(params, pos, None) {
        let name_start = start + P_START.len();
        let Some(len) = params[name_start..].find('>') else {
            break;
        };
        let value_at = name_start + len + 1;
        let value_text = &params[value_at..];
        let value = match find_true_param_end(value_text, names.as_ref(), false) {
            Some(end) => {
                pos = value_at + end + P_END.len();
                &value_text[..end]
            }
            None => match next_param_start(value_text, 0, names.as_ref()) {
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
        let key = &params[name_start..name_start + len];
        let param_schema = props.and_then(|p| p.get(key));
        let value = match style {
            Style::Coder => {
                let value = value.strip_prefix('\n').unwrap_or(value);
                let value = value.strip_suffix('\n').unwrap_or(value);
                schema::coder_value(value, param_schema)?
            }
            Style::Xml => schema::xml_value(value, param_schema),
        };
        dict_insert(&mut args, key.to_owned(), value);
    }
    Ok(Some(ToolCall { name: name.to_owned(), arguments: PyValue::Dict(args).dumps() }))
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
