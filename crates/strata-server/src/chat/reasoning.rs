//! Reasoning output (`--reasoning-parser`): a thinking model's
//! `<think>…</think>` span is taken out of the chat answer and served as
//! `message.reasoning` (streamed as `delta.reasoning`), as vLLM does.
//!
//! Followed: vLLM `main` as of 2026 (the `reasoning_content` field was
//! removed from responses by vLLM PR #33402, so only `reasoning` is
//! written; the input side still reads both spellings, see [`super`]).
//!
//! * `deepseek_r1` (vLLM's `DeepSeekR1ReasoningParser`): the output starts
//!   in reasoning whether or not the model opens it (R1's template opens
//!   `<think>` in the prompt, #12999); an opening `<think>` is dropped; the
//!   first `</think>` ends it; what follows is the answer. No `</think>`
//!   at all (the output was cut short): everything is reasoning.
//! * `qwen3` (vLLM's `Qwen3ReasoningParser` after PRs #34937 and #35230;
//!   before those it needed both tags): the same, except that with
//!   `chat_template_kwargs.enable_thinking` false the whole output is
//!   the answer, and, while thinking, a `<tool_call>` ends the reasoning
//!   too (Qwen3.5 may call a tool without closing `</think>`); the tag
//!   stays in the answer.
//!
//! Invariants: the tags are matched as text (the incremental detokenizer
//! hands over text, and a tag may arrive split across pieces: a suffix
//! that could still grow into a tag is held back until it can't); the
//! pieces [`ReasoningStream::push`] returns, concatenated with
//! [`ReasoningStream::finish`]'s, always equal the non-streamed
//! [`ReasoningParser::parse`] (which runs the same machine), so a
//! streamed answer equals the non-streamed one.
//!
//! Where vLLM's two paths disagree with each other (text before the
//! opening `<think>`, a second `<think>`, `</think>` in a disabled-thinking
//! answer), strata follows vLLM's streaming path for both: text before
//! `<think>` is reasoning, only the first `<think>` is dropped, and with
//! thinking disabled nothing is parsed.
//!
//! The completions endpoint is never parsed (vLLM's isn't).

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::{json, Value};

use super::ChatCompletionRequest;

const THINK_START: &str = "<think>";
const THINK_END: &str = "</think>";
const TOOL_CALL: &str = "<tool_call>";

/// A `--reasoning-parser` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningParser {
    DeepSeekR1,
    Qwen3,
}

impl ReasoningParser {
    /// Every parser, by its vLLM name.
    pub const ALL: [(&'static str, Self); 2] =
        [("deepseek_r1", Self::DeepSeekR1), ("qwen3", Self::Qwen3)];

    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(_, p)| *p == self).map_or("", |(n, _)| n)
    }

    /// The tags a tokenizer must hold as tokens (vLLM refuses to start
    /// without them).
    pub fn required_tokens(self) -> [&'static str; 2] {
        [THINK_START, THINK_END]
    }

    /// A parser for one choice. `thinking` is false when the request set
    /// `chat_template_kwargs.enable_thinking` to false (only `qwen3`
    /// heeds it).
    pub fn stream(self, thinking: bool) -> ReasoningStream {
        let (phase, tool_call_ends) = match self {
            Self::DeepSeekR1 => (Phase::Reasoning { opened: false }, false),
            Self::Qwen3 if thinking => (Phase::Reasoning { opened: false }, true),
            Self::Qwen3 => (Phase::Answer, false),
        };
        ReasoningStream {
            phase,
            starts_thinking: phase != Phase::Answer,
            tool_call_ends,
            held: String::new(),
        }
    }

    /// The reasoning and the answer of a whole output: the reasoning is
    /// `None` only when the output is not parsed (thinking disabled); the
    /// answer is `None` when empty after the reasoning ended, or when the
    /// reasoning never ended (as vLLM).
    pub fn parse(self, text: &str, thinking: bool) -> (Option<String>, Option<String>) {
        let mut stream = self.stream(thinking);
        let mut all = stream.push(text);
        all.append(stream.finish());
        if !stream.starts_thinking {
            return (None, Some(all.content));
        }
        let content =
            (stream.phase == Phase::Answer && !all.content.is_empty()).then_some(all.content);
        (Some(all.reasoning), content)
    }
}

impl std::str::FromStr for ReasoningParser {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, p)| *p).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|(n, _)| *n).collect();
            format!("unknown reasoning parser `{s}`; known: {}", known.join(", "))
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Inside the thinking span; `opened` once its `<think>` was dropped.
    Reasoning { opened: bool },
    /// After the thinking span (or with none): everything is answer.
    Answer,
}

/// Text split into reasoning and answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Split {
    pub reasoning: String,
    pub content: String,
}

impl Split {
    fn append(&mut self, other: Split) {
        self.reasoning.push_str(&other.reasoning);
        self.content.push_str(&other.content);
    }
}

/// One choice's incremental parser (see the module's invariants).
#[derive(Debug, Clone)]
pub struct ReasoningStream {
    phase: Phase,
    starts_thinking: bool,
    tool_call_ends: bool,
    /// The end of the text so far that may be the start of a tag.
    held: String,
}

impl ReasoningStream {
    /// Takes the next piece of text; returns what became final.
    pub fn push(&mut self, text: &str) -> Split {
        let mut out = Split::default();
        let mut buf = std::mem::take(&mut self.held);
        buf.push_str(text);
        let mut rest = buf.as_str();
        while let Phase::Reasoning { opened } = self.phase {
            let mut tags = vec![THINK_END];
            if !opened {
                tags.push(THINK_START);
            }
            if self.tool_call_ends {
                tags.push(TOOL_CALL);
            }
            let first = tags.iter().filter_map(|t| rest.find(t).map(|at| (at, *t))).min();
            match first {
                Some((at, THINK_START)) => {
                    out.reasoning.push_str(&rest[..at]);
                    rest = &rest[at + THINK_START.len()..];
                    self.phase = Phase::Reasoning { opened: true };
                }
                Some((at, tag)) => {
                    out.reasoning.push_str(&rest[..at]);
                    // `</think>` is dropped; a tool call is the answer's.
                    rest = if tag == THINK_END { &rest[at + tag.len()..] } else { &rest[at..] };
                    self.phase = Phase::Answer;
                }
                None => {
                    let keep = held_suffix(rest, &tags);
                    out.reasoning.push_str(&rest[..rest.len() - keep]);
                    self.held = rest[rest.len() - keep..].to_owned();
                    return out;
                }
            }
        }
        out.content.push_str(rest);
        out
    }

    /// The end of the output: text held back as a possible tag was not one.
    pub fn finish(&mut self) -> Split {
        let held = std::mem::take(&mut self.held);
        match self.phase {
            Phase::Reasoning { .. } => Split { reasoning: held, content: String::new() },
            Phase::Answer => Split { reasoning: String::new(), content: held },
        }
    }
}

/// The length of the longest suffix of `text` that is a proper prefix of
/// one of `tags` (the tags are ASCII and start with `<`, so the cut is on
/// a character boundary).
fn held_suffix(text: &str, tags: &[&str]) -> usize {
    let bytes = text.as_bytes();
    tags.iter()
        .flat_map(|tag| {
            (1..tag.len().min(bytes.len() + 1))
                .filter(move |&n| bytes[bytes.len() - n..] == tag.as_bytes()[..n])
        })
        .max()
        .unwrap_or(0)
}

/// What one chat request asks of the server's parser.
#[derive(Debug, Clone, Copy)]
pub struct RequestReasoning {
    parser: ReasoningParser,
    /// `chat_template_kwargs.enable_thinking` (default true; any false
    /// value in Python's sense turns it off, as vLLM reads it).
    thinking: bool,
    /// vLLM's `include_reasoning` (default true): false drops the
    /// reasoning from the answer (the answer itself is unchanged).
    include: bool,
}

impl RequestReasoning {
    /// `None` without a server parser: the answer is served untouched.
    pub fn new(parser: Option<ReasoningParser>, req: &ChatCompletionRequest) -> Option<Self> {
        let thinking = req.chat_template_kwargs.as_ref().is_none_or(|kw| {
            kw.get_attr("enable_thinking")
                .ok()
                .filter(|v| !v.is_undefined())
                .is_none_or(|v| v.is_true())
        });
        parser.map(|parser| Self {
            parser,
            thinking,
            include: req.include_reasoning.unwrap_or(true),
        })
    }

    /// Whether the model thinks first (then a grammar starts after its
    /// end-of-thinking token).
    pub fn thinking(&self) -> bool {
        self.thinking
    }

    /// The token that ends the thinking.
    pub fn end_tag(&self) -> &'static str {
        self.parser.required_tokens()[1]
    }

    /// A non-streamed choice's `message`.
    pub fn message(&self, text: &str) -> Value {
        let (reasoning, content) = self.parser.parse(text, self.thinking);
        let reasoning = reasoning.filter(|_| self.include);
        json!({"role": "assistant", "content": content, "reasoning": reasoning})
    }

    /// The per-choice parsers of a streamed request.
    pub fn stream(&self) -> StreamDeltas {
        StreamDeltas { request: *self, choices: Mutex::new(BTreeMap::new()) }
    }
}

/// The parsers of a streamed request's choices, by choice index (the SSE
/// chunk builder is a shared `Fn`, hence the lock; it is never contended).
#[derive(Debug)]
pub struct StreamDeltas {
    request: RequestReasoning,
    choices: Mutex<BTreeMap<usize, ReasoningStream>>,
}

impl StreamDeltas {
    /// The `delta` of a chunk carrying `text` for choice `index`; on the
    /// choice's last chunk (`last`), what was held back goes too. A delta
    /// may carry neither field (the piece was all tag).
    pub fn delta(&self, index: usize, text: &str, last: bool) -> Value {
        let mut choices = self.choices.lock().unwrap_or_else(|e| e.into_inner());
        let RequestReasoning { parser, thinking, include } = self.request;
        let stream = choices.entry(index).or_insert_with(|| parser.stream(thinking));
        let mut split = stream.push(text);
        if last {
            split.append(stream.finish());
            choices.remove(&index);
        }
        let mut delta = json!({"role": "assistant"});
        if include && !split.reasoning.is_empty() {
            delta["reasoning"] = Value::String(split.reasoning);
        }
        if !split.content.is_empty() {
            delta["content"] = Value::String(split.content);
        }
        delta
    }
}

#[cfg(test)]
mod tests;
