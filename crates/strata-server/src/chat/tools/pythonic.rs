//! `pythonic` (vLLM's `PythonicToolParser`; Llama 3.2 / 4 pythonic
//! templates, ToolACE): the whole output is a Python list of calls with
//! keyword arguments:
//!
//! ```text
//! [get_weather(city='San Francisco', metric='celsius'), get_time(tz="PST")]
//! ```
//!
//! As vLLM: the output must match vLLM's `TOOL_CALL_REGEX` at its start
//! (see [`regex_matches`]) and then parse as Python whose first statement
//! is a list of calls `name(kw=literal, ...)`; each keyword value must be
//! a literal `ast.Constant` (string, number, `True`/`False`/`None`), a
//! list, or a dict with constant keys, nested the same way, and be JSON
//! serialisable. Positional arguments are ignored. Arguments are
//! `json.dumps` of the keyword dict. Anything else (a negative number,
//! which Python parses as `-(1)`; a tuple; a call; bytes; an f-string;
//! `a = 1` with spaces, which the regex refuses) leaves the whole output
//! as content. With calls, content is `None`.
//!
//! Departures, where this reads less than Python does: after the list only
//! whitespace and comments may follow (vLLM accepts any valid Python
//! after it); a positional argument must be a literal or a name; `\N{...}`
//! escapes, lone surrogates, `*args` / `**kwargs` and integers in base
//! 2/8/16 past 128 bits are refused; identifiers are not NFKC-normalised.
//!
//! [`literal_eval`] reads the same subset as `ast.literal_eval` does for
//! the Qwen3 parsers' schema fallbacks: a sign on a number, tuples (as
//! lists) and a bare tuple are also taken there.

use super::pyjson::{dict_insert, float_repr, PyValue};
use super::{Format, Gate, Parsed, ToolCall};

#[derive(Clone, Copy, Debug)]
pub(super) struct Pythonic;

impl Format for Pythonic {
    const GATE: Gate = Gate::Starts(&["["]);

    fn parse(&self, output: &str, _tools: &[super::ToolSchema]) -> Parsed {
        if !regex_matches(output) || output.contains('\0') {
            return Parsed::content(output);
        }
        match (Py { s: output, i: 0, literal: false }).module() {
            Some(tool_calls) => Parsed { content: None, tool_calls },
            None => Parsed::content(output),
        }
    }
}

/// Python's `\s` on `str`.
fn is_space(c: char) -> bool {
    c.is_whitespace() || ('\x1c'..='\x1f').contains(&c)
}

fn skip_space(t: &str, i: usize) -> usize {
    t[i..].find(|c: char| !is_space(c)).map_or(t.len(), |n| i + n)
}

/// `[a-zA-Z]+\w*` at `i`: where it ends.
fn regex_ident(t: &str, i: usize) -> Option<usize> {
    if !t[i..].starts_with(|c: char| c.is_ascii_alphabetic()) {
        return None;
    }
    Some(t[i..].find(|c: char| !(c.is_alphanumeric() || c == '_')).map_or(t.len(), |n| i + n))
}

/// Whether `re.match` of vLLM's pattern succeeds:
///
/// ```text
/// \[(ID\((ID=.*,\s*)*(ID=.*\s)?\),\s*)*(ID\((ID=.*,\s*)*(ID=.*\s*)?\)\s*)+\]
/// ```
///
/// with `ID = [a-zA-Z]+\w*`, DOTALL. Since `.*` takes anything, this
/// holds exactly when, walking the calls from `[`: a call is `ID(`
/// followed either by `ID=` and, somewhere later, `)`, spaces and `]`
/// (the `.*` can swallow any further calls), or by `)` and then `]`
/// after spaces, or `,` and another call (only before the first call
/// that was not followed by a comma), or spaces and another call.
fn regex_matches(t: &str) -> bool {
    if !t.starts_with('[') {
        return false;
    }
    let (mut i, mut commas_allowed) = (1, true);
    loop {
        let Some(open) = regex_ident(t, i).filter(|&j| t[j..].starts_with('(')) else {
            return false;
        };
        let args = open + 1;
        if let Some(eq) = regex_ident(t, args).filter(|&j| t[j..].starts_with('=')) {
            return t[eq + 1..]
                .match_indices(')')
                .any(|(p, _)| t[skip_space(t, eq + 1 + p + 1)..].starts_with(']'));
        }
        if !t[args..].starts_with(')') {
            return false;
        }
        let after = args + 1;
        if commas_allowed && t[after..].starts_with(',') {
            i = skip_space(t, after + 1);
            continue;
        }
        let next = skip_space(t, after);
        if t[next..].starts_with(']') {
            return true;
        }
        (i, commas_allowed) = (next, false);
    }
}

const KEYWORDS: &[&str] = &[
    "False", "None", "True", "and", "as", "assert", "async", "await", "break", "class", "continue",
    "def", "del", "elif", "else", "except", "finally", "for", "from", "global", "if", "import",
    "in", "is", "lambda", "nonlocal", "not", "or", "pass", "raise", "return", "try", "while",
    "with", "yield",
];

/// A reader of the subset of Python source the parser takes.
struct Py<'a> {
    s: &'a str,
    i: usize,
    /// `ast.literal_eval`'s reading: also a sign before a number, and
    /// tuples (read as lists, as `json.dumps` writes them).
    literal: bool,
}

/// `ast.literal_eval(s)` for what `json.dumps` can then write (`None`
/// also for a value it cannot write: a set, bytes, a complex number).
/// Departures as the module header's.
pub(super) fn literal_eval(s: &str) -> Option<PyValue> {
    let s = s.trim_start_matches([' ', '\t']);
    // Eval mode: after blank lines, an indented first line is an
    // `IndentationError`.
    let first_line = s.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    if s.starts_with(['\n', '\r']) && first_line.starts_with([' ', '\t']) {
        return None;
    }
    let mut py = Py { s, i: 0, literal: true };
    let first = py.value()?;
    let value = if py.eat(",") {
        // A bare tuple: `1, 2`.
        let mut items = vec![first];
        loop {
            py.skip();
            if py.rest().is_empty() {
                break;
            }
            items.push(py.value()?);
            if !py.eat(",") {
                break;
            }
        }
        PyValue::List(items)
    } else {
        first
    };
    py.skip();
    py.rest().is_empty().then_some(value)
}

impl<'a> Py<'a> {
    fn rest(&self) -> &'a str {
        &self.s[self.i..]
    }

    /// Whitespace, comments and line continuations (inside brackets,
    /// where newlines do not end a statement).
    fn skip(&mut self) {
        loop {
            let rest = self.rest();
            let trimmed = rest.trim_start_matches([' ', '\t', '\x0c', '\n', '\r']);
            self.i += rest.len() - trimmed.len();
            if trimmed.starts_with('#') {
                self.i += trimmed.find('\n').unwrap_or(trimmed.len());
            } else if let Some(n) = ["\\\n", "\\\r\n"].iter().find(|c| trimmed.starts_with(**c)) {
                self.i += n.len();
            } else {
                return;
            }
        }
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip();
        let hit = self.rest().starts_with(token);
        if hit {
            self.i += token.len();
        }
        hit
    }

    fn ident(&mut self) -> Option<&'a str> {
        self.skip();
        let rest = self.rest();
        if !rest.starts_with(|c: char| c.is_alphabetic() || c == '_') {
            return None;
        }
        let len = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
        self.i += len;
        Some(&self.s[self.i - len..self.i])
    }

    /// The module: the list of calls, then nothing but blanks.
    fn module(mut self) -> Option<Vec<ToolCall>> {
        if !self.eat("[") {
            return None;
        }
        let mut calls = vec![self.call()?];
        while self.eat(",") {
            if self.eat("]") {
                return self.end(calls);
            }
            calls.push(self.call()?);
        }
        if !self.eat("]") {
            return None;
        }
        self.end(calls)
    }

    fn end(mut self, calls: Vec<ToolCall>) -> Option<Vec<ToolCall>> {
        self.skip();
        self.rest().is_empty().then_some(calls)
    }

    /// `name(args)`: keyword arguments become the arguments object.
    fn call(&mut self) -> Option<ToolCall> {
        let name = self.ident().filter(|n| !KEYWORDS.contains(n))?.to_owned();
        if !self.eat("(") {
            return None;
        }
        let mut arguments: Vec<(String, PyValue)> = Vec::new();
        let mut keywords_started = false;
        loop {
            if self.eat(")") {
                break;
            }
            let before = self.i;
            match self.ident() {
                Some(kw)
                    if !KEYWORDS.contains(&kw)
                        && self.rest().starts_with('=')
                        && !self.rest().starts_with("==") =>
                {
                    let kw = kw.to_owned();
                    self.i += 1;
                    if arguments.iter().any(|(k, _)| *k == kw) {
                        return None; // SyntaxError: keyword argument repeated
                    }
                    let value = self.value()?;
                    arguments.push((kw, value));
                    keywords_started = true;
                }
                Some(word) if !keywords_started && !KEYWORDS.contains(&word) => {} // positional name, ignored
                _ if !keywords_started => {
                    self.i = before;
                    self.value()?; // positional literal, ignored
                }
                _ => return None,
            }
            if !self.eat(",") {
                if !self.eat(")") {
                    return None;
                }
                break;
            }
        }
        Some(ToolCall { name, arguments: PyValue::Dict(arguments).dumps() })
    }

    /// A literal, list or dict, as `_get_parameter_value` takes it.
    fn value(&mut self) -> Option<PyValue> {
        self.skip();
        let rest = self.rest();
        let c = rest.chars().next()?;
        if c == '"' || c == '\'' {
            return self.strings("");
        }
        if c.is_ascii_digit() || (c == '.' && rest[1..].starts_with(|d: char| d.is_ascii_digit())) {
            return self.number();
        }
        if c == '[' {
            self.i += 1;
            let mut items = Vec::new();
            while !self.eat("]") {
                items.push(self.value()?);
                if !self.eat(",") && !self.rest().starts_with(']') {
                    return None;
                }
            }
            return Some(PyValue::List(items));
        }
        if c == '{' {
            self.i += 1;
            let mut entries = Vec::new();
            while !self.eat("}") {
                let key = dict_key(self.value()?)?;
                if !self.eat(":") {
                    return None; // a set, or not Python
                }
                dict_insert(&mut entries, key, self.value()?);
                if !self.eat(",") && !self.rest().starts_with('}') {
                    return None;
                }
            }
            return Some(PyValue::Dict(entries));
        }
        if c == '(' {
            self.i += 1;
            if self.literal {
                return self.tuple();
            }
            let inner = self.value()?;
            return self.eat(")").then_some(inner);
        }
        if self.literal && (c == '-' || c == '+') {
            // `ast.literal_eval`'s `_convert_signed_num`: one sign on a
            // number constant.
            self.i += 1;
            self.skip();
            let next = self.rest().chars().next()?;
            if !(next.is_ascii_digit() || next == '.' || next == '(') {
                return None;
            }
            return match (c, self.value()?) {
                ('+', v @ (PyValue::Int(_) | PyValue::Float(_))) => Some(v),
                (_, PyValue::Int(d)) if d == "0" => Some(PyValue::Int(d)),
                (_, PyValue::Int(d)) => Some(PyValue::Int(
                    d.strip_prefix('-').map_or_else(|| format!("-{d}"), str::to_owned),
                )),
                (_, PyValue::Float(x)) => Some(PyValue::Float(-x)),
                _ => None,
            };
        }
        let word = self.ident()?;
        if matches!(self.rest().chars().next(), Some('"' | '\'')) {
            let prefix = word.to_ascii_lowercase();
            return self.strings(&prefix);
        }
        match word {
            "True" => Some(PyValue::Bool(true)),
            "False" => Some(PyValue::Bool(false)),
            "None" => Some(PyValue::Null),
            _ => None, // a name: not a literal
        }
    }

    /// After `(` in literal mode: a parenthesised value, or a tuple.
    fn tuple(&mut self) -> Option<PyValue> {
        if self.eat(")") {
            return Some(PyValue::List(Vec::new()));
        }
        let first = self.value()?;
        if self.eat(")") {
            return Some(first);
        }
        let mut items = vec![first];
        while self.eat(",") {
            if self.eat(")") {
                return Some(PyValue::List(items));
            }
            items.push(self.value()?);
        }
        self.eat(")").then_some(PyValue::List(items))
    }

    /// Adjacent string literals, concatenated; the first one's prefix
    /// was read already.
    fn strings(&mut self, first_prefix: &str) -> Option<PyValue> {
        let mut out = String::new();
        let mut prefix = first_prefix.to_owned();
        loop {
            // Bytes are not JSON serialisable; f-strings are not constants.
            if !matches!(prefix.as_str(), "" | "r" | "u") {
                return None;
            }
            self.string(prefix == "r", &mut out)?;
            let save = self.i;
            self.skip();
            let rest = self.rest();
            let plen = rest
                .find(['"', '\''])
                .filter(|&n| rest[..n].chars().all(|c| c.is_ascii_alphabetic()) && n <= 2);
            match plen {
                Some(n) => {
                    prefix = rest[..n].to_ascii_lowercase();
                    self.i += n;
                }
                None => {
                    self.i = save;
                    return Some(PyValue::Str(out));
                }
            }
        }
    }

    /// One quoted string at `self.i`, appended to `out`.
    fn string(&mut self, raw: bool, out: &mut String) -> Option<()> {
        let rest = self.rest();
        let quote = if rest.starts_with("'''") || rest.starts_with("\"\"\"") {
            &rest[..3]
        } else {
            &rest[..1]
        };
        let triple = quote.len() == 3;
        let body = &rest[quote.len()..];
        let mut chars = body.char_indices().peekable();
        while let Some((at, c)) = chars.next() {
            if body[at..].starts_with(quote) {
                self.i += quote.len() + at + quote.len();
                return Some(());
            }
            match c {
                '\n' | '\r' if !triple => return None,
                '\\' => {
                    let (_, e) = chars.next()?;
                    if raw {
                        out.push('\\');
                        out.push(e);
                        continue;
                    }
                    match e {
                        '\n' => {}
                        '\r' => {
                            chars.next_if(|(_, c)| *c == '\n');
                        }
                        '\\' | '\'' | '"' => out.push(e),
                        'a' => out.push('\u{7}'),
                        'b' => out.push('\u{8}'),
                        'f' => out.push('\u{c}'),
                        'n' => out.push('\n'),
                        'r' => out.push('\r'),
                        't' => out.push('\t'),
                        'v' => out.push('\u{b}'),
                        '0'..='7' => {
                            let mut code = e.to_digit(8)?;
                            for _ in 0..2 {
                                match chars.next_if(|(_, c)| c.is_digit(8)) {
                                    Some((_, d)) => code = code * 8 + d.to_digit(8)?,
                                    None => break,
                                }
                            }
                            out.push(char::from_u32(code)?);
                        }
                        'x' | 'u' | 'U' => {
                            let n = match e {
                                'x' => 2,
                                'u' => 4,
                                _ => 8,
                            };
                            let mut code = 0u32;
                            for _ in 0..n {
                                let (_, d) = chars.next()?;
                                code = code.checked_mul(16)? + d.to_digit(16)?;
                            }
                            out.push(char::from_u32(code)?);
                        }
                        'N' => return None,
                        other => {
                            out.push('\\');
                            out.push(other);
                        }
                    }
                }
                c => out.push(c),
            }
        }
        None
    }

    /// An int or float literal (an imaginary one is not serialisable).
    fn number(&mut self) -> Option<PyValue> {
        let rest = self.rest();
        let b = rest.as_bytes();
        let radix = match (b.first(), b.get(1).map(u8::to_ascii_lowercase)) {
            (Some(b'0'), Some(b'x')) => 16,
            (Some(b'0'), Some(b'o')) => 8,
            (Some(b'0'), Some(b'b')) => 2,
            _ => 10,
        };
        let mut len = 0;
        while let Some(&c) = b.get(len) {
            let sign_ok =
                radix == 10 && matches!(c, b'+' | b'-') && matches!(b[len - 1], b'e' | b'E');
            if !(c.is_ascii_alphanumeric() || c == b'_' || (c == b'.' && radix == 10) || sign_ok) {
                break;
            }
            len += 1;
        }
        let token = &rest[..len];
        self.i += len;
        if rest[len..].starts_with(|c: char| c.is_alphanumeric() || c == '_') {
            return None;
        }
        let body =
            if radix == 10 { token } else { token[2..].strip_prefix('_').unwrap_or(&token[2..]) };
        let bytes = body.as_bytes();
        let digit = |c: &u8| c.is_ascii_hexdigit();
        // An underscore only between two digits.
        if bytes.iter().enumerate().any(|(k, c)| {
            *c == b'_' && !(k > 0 && digit(&bytes[k - 1]) && bytes.get(k + 1).is_some_and(digit))
        }) || body.is_empty()
        {
            return None;
        }
        let clean: String = body.chars().filter(|c| *c != '_').collect();
        if radix != 10 {
            let n = u128::from_str_radix(&clean, radix).ok()?;
            return Some(PyValue::Int(n.to_string()));
        }
        if clean.contains(['.', 'e', 'E']) {
            if !clean
                .bytes()
                .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-'))
            {
                return None;
            }
            return clean.parse::<f64>().ok().map(PyValue::Float);
        }
        if !clean.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        match clean.trim_start_matches('0') {
            "" => Some(PyValue::Int("0".into())),
            _ if clean.starts_with('0') => None, // SyntaxError: leading zeros
            _ => Some(PyValue::Int(clean)),
        }
    }
}

/// A dict key as `json.dumps` writes it (a constant; others are refused).
fn dict_key(key: PyValue) -> Option<String> {
    Some(match key {
        PyValue::Str(s) | PyValue::Int(s) => s,
        PyValue::Float(x) => float_repr(x),
        PyValue::Bool(b) => b.to_string(),
        PyValue::Null => "null".into(),
        PyValue::List(_) | PyValue::Dict(_) => return None,
    })
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn the_regex_as_vllm_matches_it() {
        let yes = [
            "[f()]",
            "[f(a=1)]",
            "[f(), g(b=2)]",
            "[f() g()]",
            "[f(a=1), g(b='x)')]",
            "[f(a=1)\n]",
            "[f(x=[1, 2])]",
        ];
        let no = [
            "f()",
            "[]",
            "[f(1)]",
            "[f(a = 1)]",
            "[_f()]",
            "[f(),]",
            "[m.f()]",
            "[f() , g()]",
            "x[f()]",
            "[f() g(), h()]",
        ];
        for t in yes {
            assert!(regex_matches(t), "{t}");
        }
        for t in no {
            assert!(!regex_matches(t), "{t}");
        }
    }

    #[test]
    fn literals_as_python_reads_them() {
        let cases = [
            ("'a' \"b\" '''c\nd'''", Some(r#""abc\nd""#)),
            (r"'\x41\101\u00e9\n\q'", Some(r#""AAé\n\\q""#)),
            (r"r'\n'", Some(r#""\\n""#)),
            ("1_000", Some("1000")),
            ("0x1F", Some("31")),
            ("1.50", Some("1.5")),
            ("1e5", Some("100000.0")),
            ("{1: None, 'k': [True, 2.0]}", Some(r#"{"1": null, "k": [true, 2.0]}"#)),
            ("(3)", Some("3")),
            ("-1", None),
            ("007", None),
            ("b'x'", None),
            ("f'x'", None),
            ("(1, 2)", None),
            ("{1, 2}", None),
            ("x", None),
            ("1j", None),
        ];
        for (src, want) in cases {
            let got = Py { s: src, i: 0, literal: false }.value().map(|v| v.dumps());
            assert_eq!(got.as_deref(), want, "{src}");
        }
    }
}
