//! JSON as Python's `json` module reads and writes it, so that argument
//! text equals vLLM's `json.dumps(json.loads(...), ensure_ascii=False)`
//! byte for byte.
//!
//! Reading (`json.loads`, `JSONDecoder.raw_decode`, strict): `NaN`,
//! `Infinity` and `-Infinity` are accepted; integers keep every digit
//! (Python's `int` is unbounded; `-0` reads as `0`); a number with a
//! fraction or exponent is a float; a repeated key keeps its first place
//! and takes the last value (a `dict`); control characters inside strings
//! are refused. Departure: a lone UTF-16 surrogate escape (`"\ud800"`)
//! is refused (Python keeps it in the `str`; Rust strings cannot hold it),
//! so such an output falls back to content.
//!
//! Writing (`json.dumps(ensure_ascii=False)`): separators `", "` and
//! `": "`; non-ASCII written as is; `"`, `\`, and control characters
//! escaped (`\n`, `\r`, `\t`, `\b`, `\f`, else `\u00xx`); floats as
//! Python's `repr` (`1.0`, `1e+16`, `1.5e-05`, `NaN`, `Infinity`).

/// A value as Python holds what `json.loads` (or `ast`) produced.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum PyValue {
    Null,
    Bool(bool),
    /// Decimal digits, with `-` when negative.
    Int(String),
    Float(f64),
    Str(String),
    List(Vec<PyValue>),
    /// Keys in insertion order, each once.
    Dict(Vec<(String, PyValue)>),
}

impl PyValue {
    /// `d[key]` of a dict.
    pub(super) fn get(&self, key: &str) -> Option<&PyValue> {
        match self {
            Self::Dict(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// `json.dumps(self, ensure_ascii=False)`.
    pub(super) fn dumps(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            Self::Null => out.push_str("null"),
            Self::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Self::Int(digits) => out.push_str(digits),
            Self::Float(x) => out.push_str(&float_repr(*x)),
            Self::Str(s) => write_str(s, out),
            Self::List(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    item.write(out);
                }
                out.push(']');
            }
            Self::Dict(entries) => {
                out.push('{');
                for (i, (k, v)) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write_str(k, out);
                    out.push_str(": ");
                    v.write(out);
                }
                out.push('}');
            }
        }
    }
}

/// `d[key] = value`: a key already there keeps its place.
pub(super) fn dict_insert(entries: &mut Vec<(String, PyValue)>, key: String, value: PyValue) {
    match entries.iter_mut().find(|(k, _)| *k == key) {
        Some(entry) => entry.1 = value,
        None => entries.push((key, value)),
    }
}

/// `json.dumps` of a string (`ensure_ascii=False`, as vLLM writes
/// arguments): the chat templates' encoder.
pub(super) fn write_str(s: &str, out: &mut String) {
    crate::chat::jinja::json_string(s, false, out);
}

/// Python's `repr(float)` as `json.dumps` writes it.
pub(super) fn float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Rust's `{:e}` is the shortest round-trip form, as `repr`'s digits.
    let sci = format!("{x:e}");
    let (mantissa, exp) = sci.split_once('e').expect("invariant: {:e} has an exponent");
    let exp: i32 = exp.parse().expect("invariant: {:e} exponent is an integer");
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        if exp >= 0 {
            let point = exp as usize + 1;
            let mut int = digits.get(..point.min(digits.len())).unwrap_or(&digits).to_owned();
            while int.len() < point {
                int.push('0');
            }
            let frac = digits.get(point..).filter(|f| !f.is_empty()).unwrap_or("0");
            format!("{sign}{int}.{frac}")
        } else {
            format!("{sign}0.{}{digits}", "0".repeat((-exp - 1) as usize))
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let dot = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{dot}e{esign}{:02}", exp.abs())
    }
}

/// `json.loads(s)`: one value, whitespace around it.
pub(super) fn loads(s: &str) -> Option<PyValue> {
    let start = skip_ws(s.as_bytes(), 0);
    let (value, end) = Reader { s, depth: 0 }.value(start)?;
    (skip_ws(s.as_bytes(), end) == s.len()).then_some(value)
}

/// `JSONDecoder().raw_decode(s)`: a value at the very start, and where it
/// ends.
pub(super) fn raw_decode(s: &str) -> Option<(PyValue, usize)> {
    Reader { s, depth: 0 }.value(0)
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Nesting past this is refused (Python's recursion limit refuses too).
const MAX_DEPTH: usize = 512;

struct Reader<'a> {
    s: &'a str,
    depth: usize,
}

impl Reader<'_> {
    fn value(&mut self, i: usize) -> Option<(PyValue, usize)> {
        let rest = &self.s[i..];
        let word = |w: &str, v: PyValue| rest.starts_with(w).then(|| (v, i + w.len()));
        match rest.as_bytes().first()? {
            b'"' => self.string(i + 1).map(|(s, end)| (PyValue::Str(s), end)),
            b'{' => self.nested(|r| r.object(i + 1)),
            b'[' => self.nested(|r| r.array(i + 1)),
            b'n' => word("null", PyValue::Null),
            b't' => word("true", PyValue::Bool(true)),
            b'f' => word("false", PyValue::Bool(false)),
            b'N' => word("NaN", PyValue::Float(f64::NAN)),
            b'I' => word("Infinity", PyValue::Float(f64::INFINITY)),
            b'-' if rest.starts_with("-Infinity") => {
                word("-Infinity", PyValue::Float(f64::NEG_INFINITY))
            }
            _ => self.number(i),
        }
    }

    fn nested(
        &mut self,
        f: impl FnOnce(&mut Self) -> Option<(PyValue, usize)>,
    ) -> Option<(PyValue, usize)> {
        if self.depth >= MAX_DEPTH {
            return None;
        }
        self.depth += 1;
        let out = f(self);
        self.depth -= 1;
        out
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?`
    fn number(&self, start: usize) -> Option<(PyValue, usize)> {
        let b = self.s.as_bytes();
        let digits = |mut i: usize| {
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            i
        };
        let mut i = start + usize::from(b.get(start) == Some(&b'-'));
        match b.get(i)? {
            b'0' => i += 1,
            b'1'..=b'9' => i = digits(i),
            _ => return None,
        }
        let int_end = i;
        if b.get(i) == Some(&b'.') && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
            i = digits(i + 1);
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            let j = i + 1 + usize::from(matches!(b.get(i + 1), Some(b'+' | b'-')));
            if b.get(j).is_some_and(u8::is_ascii_digit) {
                i = digits(j);
            }
        }
        let text = &self.s[start..i];
        if i == int_end {
            let digits = if text == "-0" { "0" } else { text };
            Some((PyValue::Int(digits.to_owned()), i))
        } else {
            Some((PyValue::Float(text.parse().ok()?), i))
        }
    }

    /// A string's body from `i` (after the opening quote) to its end.
    fn string(&self, mut i: usize) -> Option<(String, usize)> {
        let s = self.s;
        let mut out = String::new();
        loop {
            let c = s[i..].chars().next()?;
            i += c.len_utf8();
            match c {
                '"' => return Some((out, i)),
                '\\' => {
                    let e = *s.as_bytes().get(i)?;
                    i += 1;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = hex4(s, i)?;
                            i += 4;
                            let code = if (0xd800..0xdc00).contains(&hi)
                                && s[i..].starts_with("\\u")
                                && hex4(s, i + 2).is_some_and(|lo| (0xdc00..0xe000).contains(&lo))
                            {
                                let lo = hex4(s, i + 2)?;
                                i += 6;
                                0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00)
                            } else {
                                hi
                            };
                            out.push(char::from_u32(code)?);
                        }
                        _ => return None,
                    }
                }
                c if (c as u32) < 0x20 => return None,
                c => out.push(c),
            }
        }
    }

    fn object(&mut self, i: usize) -> Option<(PyValue, usize)> {
        let b = self.s.as_bytes();
        let mut entries = Vec::new();
        let mut i = skip_ws(b, i);
        if b.get(i) == Some(&b'}') {
            return Some((PyValue::Dict(entries), i + 1));
        }
        loop {
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let (key, end) = self.string(i + 1)?;
            i = skip_ws(b, end);
            if b.get(i) != Some(&b':') {
                return None;
            }
            let (value, end) = self.value(skip_ws(b, i + 1))?;
            dict_insert(&mut entries, key, value);
            i = skip_ws(b, end);
            match b.get(i)? {
                b'}' => return Some((PyValue::Dict(entries), i + 1)),
                b',' => i = skip_ws(b, i + 1),
                _ => return None,
            }
        }
    }

    fn array(&mut self, i: usize) -> Option<(PyValue, usize)> {
        let b = self.s.as_bytes();
        let mut items = Vec::new();
        let mut i = skip_ws(b, i);
        if b.get(i) == Some(&b']') {
            return Some((PyValue::List(items), i + 1));
        }
        loop {
            let (value, end) = self.value(i)?;
            items.push(value);
            i = skip_ws(b, end);
            match b.get(i)? {
                b']' => return Some((PyValue::List(items), i + 1)),
                b',' => i = skip_ws(b, i + 1),
                _ => return None,
            }
        }
    }
}

fn hex4(s: &str, i: usize) -> Option<u32> {
    let h = s.get(i..i + 4)?;
    if !h.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(h, 16).ok()
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn round_trips_as_python_writes_it() {
        let cases = [
            (r#"{"a":1,"b":[true,null,"x"]}"#, r#"{"a": 1, "b": [true, null, "x"]}"#),
            (
                r#"{"a": 1.0, "b": 1E2, "c": -0, "d": 1.5e-7}"#,
                r#"{"a": 1.0, "b": 100.0, "c": 0, "d": 1.5e-07}"#,
            ),
            (
                r#"{"big": 123456789012345678901234567890, "f": 1e16, "g": 0.0001}"#,
                r#"{"big": 123456789012345678901234567890, "f": 1e+16, "g": 0.0001}"#,
            ),
            (r#"{"k": 1, "k": 2, "j": 3}"#, r#"{"k": 2, "j": 3}"#),
            (
                r#"{"s": "caf\u00e9 \ud83d\ude80 \/ \"q\" \u0001"}"#,
                r#"{"s": "café 🚀 / \"q\" \u0001"}"#,
            ),
            (
                "[NaN, Infinity, -Infinity, 12345678.9, -0.0]",
                "[NaN, Infinity, -Infinity, 12345678.9, -0.0]",
            ),
            ("{}", "{}"),
        ];
        for (input, want) in cases {
            assert_eq!(loads(input).map(|v| v.dumps()).as_deref(), Some(want), "{input}");
        }
        for bad in [r#"{"a": 1,}"#, "[1,]", r#"{"a" 1}"#, "01", "\"\u{1}\"", r#""\ud800""#, "{} x"]
        {
            assert_eq!(loads(bad), None, "{bad}");
        }
        assert_eq!(raw_decode(r#"{"a": 1} tail"#).map(|(_, n)| n), Some(8));
    }
}
