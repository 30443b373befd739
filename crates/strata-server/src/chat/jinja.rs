//! The Jinja environment transformers renders chat templates in, rebuilt
//! on minijinja: `trim_blocks` and `lstrip_blocks`, loop controls, the
//! globals `raise_exception` and `strftime_now`, transformers' `tojson`
//! (Python's `json.dumps` with `ensure_ascii=False`), and Python's ways of
//! turning values into text where minijinja's differ from Jinja2's
//! (`None`, `True`, a dict's repr, a float's repr), Python's string methods
//! and whitespace, and Jinja2's `sequence`, `iterable` and `number` tests.
//!
//! transformers' `{% generation %}...{% endgeneration %}` blocks (which
//! only mark assistant text for its token masks) render their body
//! unchanged; [`preprocess`] turns them into an always-true `if` with the
//! same whitespace control.

use std::fmt::Write as _;
use std::sync::{Arc, OnceLock};

use minijinja::value::{Enumerator, Kwargs, Object, ObjectRepr, Rest, ValueKind};
use minijinja::{Environment, Error, ErrorKind, State, Value};

/// The message a template gave `raise_exception`, when it did.
pub type Raised = Arc<OnceLock<String>>;

/// A fresh environment with transformers' settings; a call to
/// `raise_exception` leaves its message in `raised`.
pub fn environment(raised: Raised) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_unknown_method_callback(py_method);
    env.set_formatter(|out, _state, value| {
        if value.is_undefined() {
            return Ok(());
        }
        let text = py_str(value);
        out.write_str(&text).map_err(|e| Error::new(ErrorKind::WriteFailure, e.to_string()))
    });
    env.add_function("raise_exception", move |msg: Value| -> Result<Value, Error> {
        let msg = py_str(&msg);
        let _ = raised.set(msg.clone());
        Err(Error::new(ErrorKind::InvalidOperation, msg))
    });
    env.add_function("strftime_now", |format: &str| strftime_now(format));
    env.add_filter("tojson", tojson_filter);
    env.add_filter("string", |v: &Value| Value::from(py_str(v)));
    env.add_filter("trim", |v: &Value, chars: Option<Value>| -> Result<Value, Error> {
        let s = py_str(v);
        let chars = chars.filter(|c| !c.is_none()).map(|c| py_str(&c));
        Ok(Value::from(py_strip(&s, chars.as_deref(), true, true)))
    });
    env.add_filter("join", join_filter);
    env.add_filter("items", |v: &Value| -> Result<Value, Error> {
        if v.is_undefined() {
            return Ok(Value::from(Vec::<Value>::new()));
        }
        dict_items(v)
    });
    env.add_filter("dictsort", |v: &Value, kwargs: Kwargs| -> Result<Value, Error> {
        let sorted = minijinja::filters::dictsort(v, kwargs)?;
        Ok(sorted
            .try_iter()?
            .map(|pair| tuple(pair.try_iter().map(|i| i.collect()).unwrap_or_default()))
            .collect())
    });
    env.add_test("sequence", |v: &Value| {
        matches!(
            v.kind(),
            ValueKind::String | ValueKind::Seq | ValueKind::Map | ValueKind::Undefined
        )
    });
    env.add_test("iterable", |v: &Value| {
        matches!(
            v.kind(),
            ValueKind::String
                | ValueKind::Seq
                | ValueKind::Map
                | ValueKind::Iterable
                | ValueKind::Undefined
        )
    });
    env.add_test("number", |v: &Value| matches!(v.kind(), ValueKind::Number | ValueKind::Bool));
    env
}

/// Makes transformers' `{% generation %}` / `{% endgeneration %}` tags
/// something minijinja parses: `{% if true %}` / `{% endif %}`, keeping
/// each tag's whitespace-control marks.
pub fn preprocess(template: &str) -> std::borrow::Cow<'_, str> {
    if !template.contains("generation") {
        return std::borrow::Cow::Borrowed(template);
    }
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(at) = rest.find("{%") {
        out.push_str(&rest[..at]);
        let tag = &rest[at..];
        let Some(end) = tag.find("%}") else {
            out.push_str(tag);
            return std::borrow::Cow::Owned(out);
        };
        let inner = &tag[2..end];
        let (open, body) = match inner.strip_prefix(['-', '+']) {
            Some(b) => (&inner[..1], b),
            None => ("", inner),
        };
        let (body, close) = match body.strip_suffix(['-', '+']) {
            Some(b) => (b, &body[b.len()..]),
            None => (body, ""),
        };
        let replacement = match body.trim() {
            "generation" => Some("if true"),
            "endgeneration" => Some("endif"),
            _ => None,
        };
        match replacement {
            Some(r) => {
                let _ = write!(out, "{{%{open} {r} {close}%}}");
            }
            None => out.push_str(&tag[..end + 2]),
        }
        rest = &tag[end + 2..];
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

/// `strftime_now(format)`: the local time now, formatted as Python's
/// `datetime.now().strftime(format)` (chrono's strftime directives, which
/// agree with glibc's for the usual ones: `%d %b %Y`, `%B`, `%A`, `%H:%M`,
/// `%-d`, ...).
pub fn strftime_now(format: &str) -> Result<String, Error> {
    use chrono::format::{Item, StrftimeItems};
    let items: Vec<Item<'_>> = StrftimeItems::new(format).collect();
    if items.iter().any(|i| matches!(i, Item::Error)) {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: unsupported format {format:?}"),
        ));
    }
    let now = chrono::Local::now();
    let mut s = String::new();
    write!(s, "{}", now.format_with_items(items.into_iter())).map_err(|_| {
        Error::new(ErrorKind::InvalidOperation, format!("strftime_now: cannot format {format:?}"))
    })?;
    Ok(s)
}

// ---------------------------------------------------------------------------
// Python's str() and repr()

/// A Python tuple (what `dict.items()` and `dictsort` yield): a sequence
/// to the template, `(a, b)` when printed.
#[derive(Debug)]
struct PyTuple(Vec<Value>);

impl Object for PyTuple {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Seq
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.0.get(key.as_usize()?).cloned()
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Seq(self.0.len())
    }
}

fn tuple(items: Vec<Value>) -> Value {
    Value::from_object(PyTuple(items))
}

/// `dict.items()`: `(key, value)` tuples in the dict's order.
fn dict_items(v: &Value) -> Result<Value, Error> {
    if v.kind() != ValueKind::Map {
        return Err(Error::new(ErrorKind::InvalidOperation, "cannot convert value into pairs"));
    }
    let mut out = Vec::new();
    for key in v.try_iter()? {
        let value = v.get_item(&key)?;
        out.push(tuple(vec![key, value]));
    }
    Ok(Value::from(out))
}

/// Python's `str(value)`: a string as it is, anything else as its repr
/// (`None`, `True`, `1.0`, `{'a': [1, 2]}`); undefined is empty.
pub fn py_str(v: &Value) -> String {
    match v.kind() {
        ValueKind::String => v.as_str().unwrap_or_default().to_owned(),
        ValueKind::Undefined => String::new(),
        _ => {
            let mut s = String::new();
            py_repr(v, &mut s);
            s
        }
    }
}

/// Python's `repr(value)`.
pub fn py_repr(v: &Value, out: &mut String) {
    match v.kind() {
        ValueKind::Undefined => {}
        ValueKind::None => out.push_str("None"),
        ValueKind::Bool => out.push_str(if v.is_true() { "True" } else { "False" }),
        ValueKind::Number => out.push_str(&py_number(v, false)),
        ValueKind::String => py_str_repr(v.as_str().unwrap_or_default(), out),
        ValueKind::Seq if v.downcast_object_ref::<PyTuple>().is_some() => {
            let items =
                v.downcast_object_ref::<PyTuple>().map(|t| t.0.as_slice()).unwrap_or_default();
            out.push('(');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                py_repr(item, out);
            }
            if items.len() == 1 {
                out.push(',');
            }
            out.push(')');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            if let Ok(iter) = v.try_iter() {
                for (i, item) in iter.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py_repr(&item, out);
                }
            }
            out.push(']');
        }
        ValueKind::Map => {
            out.push('{');
            if let Ok(iter) = v.try_iter() {
                for (i, key) in iter.enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    py_repr(&key, out);
                    out.push_str(": ");
                    py_repr(&v.get_item(&key).unwrap_or_default(), out);
                }
            }
            out.push('}');
        }
        _ => {
            let _ = write!(out, "{v}");
        }
    }
}

/// A number as Python prints it (`json`: as `json.dumps` does, `NaN` and
/// `Infinity` for the non-finite floats).
fn py_number(v: &Value, json: bool) -> String {
    if v.is_integer() {
        if let Ok(i) = i128::try_from(v.clone()) {
            return i.to_string();
        }
    }
    match f64::try_from(v.clone()) {
        Ok(f) => py_float_repr(f, json),
        Err(_) => v.to_string(),
    }
}

/// Python's `repr(float)`: the shortest digits that round-trip, in fixed
/// notation for exponents -4..16 (always with a fractional part), else in
/// scientific notation with a two-digit (at least) signed exponent.
pub fn py_float_repr(f: f64, json: bool) -> String {
    if f.is_nan() {
        return if json { "NaN" } else { "nan" }.to_owned();
    }
    if f.is_infinite() {
        let s = if json { "Infinity" } else { "inf" };
        return if f < 0.0 { format!("-{s}") } else { s.to_owned() };
    }
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1; // digits before the decimal point
        let (int_part, frac_part) = if point <= 0 {
            ("0".to_owned(), format!("{}{digits}", "0".repeat((-point) as usize)))
        } else if point as usize >= digits.len() {
            (format!("{digits}{}", "0".repeat(point as usize - digits.len())), String::new())
        } else {
            (digits[..point as usize].to_owned(), digits[point as usize..].to_owned())
        };
        let frac = if frac_part.is_empty() { "0".to_owned() } else { frac_part };
        format!("{sign}{int_part}.{frac}")
    } else {
        let (first, rest) = digits.split_at(1);
        let rest = if rest.is_empty() { String::new() } else { format!(".{rest}") };
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{rest}e{exp_sign}{:02}", exp.abs())
    }
}

/// Python's `repr(str)`.
fn py_str_repr(s: &str, out: &mut String) {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if py_printable(c) => out.push(c),
            c if (c as u32) <= 0xff => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if (c as u32) <= 0xffff => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let _ = write!(out, "\\U{:08x}", c as u32);
            }
        }
    }
    out.push(quote);
}

/// Python's `str.isprintable` for one character: not a control, format,
/// separator (other than the space), private-use or unassigned character.
/// The format and separator characters are listed; unassigned code points
/// are not known here and count as printable.
fn py_printable(c: char) -> bool {
    let u = c as u32;
    !matches!(u,
        0x00..=0x1f | 0x7f..=0xa0 | 0xad
        | 0x600..=0x605 | 0x61c | 0x6dd | 0x70f | 0x890..=0x891 | 0x8e2
        | 0x1680 | 0x180e | 0x2000..=0x200f | 0x2028..=0x202f | 0x205f..=0x2064
        | 0x2066..=0x206f | 0x3000 | 0xd800..=0xf8ff | 0xfeff | 0xfff9..=0xfffb
        | 0x110bd | 0x110cd | 0x13430..=0x1343f | 0x1bca0..=0x1bca3 | 0x1d173..=0x1d17a
        | 0xe0001 | 0xe0020..=0xe007f | 0xf0000..=0x10ffff)
}

// ---------------------------------------------------------------------------
// tojson: Python's json.dumps

/// Options of `json.dumps` that transformers' `tojson` exposes.
#[derive(Debug, Clone)]
pub struct JsonOptions {
    pub ensure_ascii: bool,
    pub indent: Option<String>,
    pub item_separator: String,
    pub key_separator: String,
    pub sort_keys: bool,
}

impl Default for JsonOptions {
    fn default() -> Self {
        Self {
            ensure_ascii: false,
            indent: None,
            item_separator: ", ".into(),
            key_separator: ": ".into(),
            sort_keys: false,
        }
    }
}

/// transformers' `tojson(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`, positionally or by keyword.
fn tojson_filter(value: &Value, args: Rest<Value>) -> Result<Value, Error> {
    let mut positional: Vec<Value> = args.0;
    let kwargs = match positional.last() {
        Some(last) if last.is_kwargs() => Kwargs::try_from(positional.pop().unwrap_or_default())?,
        _ => Kwargs::from_iter(std::iter::empty::<(String, Value)>()),
    };
    if positional.len() > 4 {
        return Err(Error::from(ErrorKind::TooManyArguments));
    }
    let mut positional = positional.into_iter();
    let (ensure_ascii, indent, separators, sort_keys) =
        (positional.next(), positional.next(), positional.next(), positional.next());
    let pick = |positional: Option<Value>, name: &str| -> Result<Option<Value>, Error> {
        let keyword: Option<Value> = kwargs.get(name)?;
        Ok(keyword.or(positional))
    };
    let ensure_ascii = pick(ensure_ascii, "ensure_ascii")?;
    let indent = pick(indent, "indent")?;
    let separators = pick(separators, "separators")?;
    let sort_keys = pick(sort_keys, "sort_keys")?;
    kwargs.assert_all_used()?;
    let mut opts = JsonOptions {
        ensure_ascii: ensure_ascii.is_some_and(|v| v.is_true()),
        sort_keys: sort_keys.is_some_and(|v| v.is_true()),
        ..JsonOptions::default()
    };
    match indent {
        Some(v) if v.is_none() => {}
        None => {}
        Some(v) if v.kind() == ValueKind::String => {
            opts.indent = Some(v.as_str().unwrap_or_default().to_owned());
        }
        Some(v) => {
            let n = i64::try_from(v.clone()).map_err(|_| {
                Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                )
            })?;
            opts.indent = Some(" ".repeat(n.max(0) as usize));
            opts.item_separator = ",".into();
        }
    }
    if opts.indent.is_some() {
        opts.item_separator = ",".into();
    }
    if let Some(seps) = separators.filter(|v| !v.is_none()) {
        let parts: Vec<Value> = seps.try_iter()?.collect();
        match parts.as_slice() {
            [item, key] => {
                opts.item_separator = py_str(item);
                opts.key_separator = py_str(key);
            }
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: separators must be an (item_separator, key_separator) pair",
                ))
            }
        }
    }
    let mut out = String::new();
    write_json(value, &opts, 0, &mut out)?;
    Ok(Value::from(out))
}

/// Writes `v` as Python's `json.dumps(v, ...)` does.
pub fn write_json(
    v: &Value,
    opts: &JsonOptions,
    level: usize,
    out: &mut String,
) -> Result<(), Error> {
    match v.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&py_number(v, true)),
        ValueKind::String => json_string(v.as_str().unwrap_or_default(), opts.ensure_ascii, out),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_separator);
                }
                newline_indent(opts, level + 1, out);
                write_json(item, opts, level + 1, out)?;
            }
            newline_indent(opts, level, out);
            out.push(']');
        }
        ValueKind::Map => {
            let mut entries = Vec::new();
            for key in v.try_iter()? {
                let value = v.get_item(&key)?;
                entries.push((json_key(&key)?, key, value));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if opts.sort_keys {
                sort_entries(&mut entries)?;
            }
            out.push('{');
            for (i, (key, _, value)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_separator);
                }
                newline_indent(opts, level + 1, out);
                json_string(key, opts.ensure_ascii, out);
                out.push_str(&opts.key_separator);
                write_json(value, opts, level + 1, out)?;
            }
            newline_indent(opts, level, out);
            out.push('}');
        }
        kind => {
            let name = match kind {
                ValueKind::Undefined => "Undefined".to_owned(),
                other => other.to_string(),
            };
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("Object of type {name} is not JSON serializable"),
            ));
        }
    }
    Ok(())
}

fn newline_indent(opts: &JsonOptions, level: usize, out: &mut String) {
    if let Some(indent) = &opts.indent {
        out.push('\n');
        for _ in 0..level {
            out.push_str(indent);
        }
    }
}

/// A dict key as `json.dumps` writes it: strings as they are, numbers,
/// booleans and `None` as their JSON text.
fn json_key(key: &Value) -> Result<String, Error> {
    match key.kind() {
        ValueKind::String => Ok(key.as_str().unwrap_or_default().to_owned()),
        ValueKind::Number => Ok(py_number(key, true)),
        ValueKind::Bool => Ok(if key.is_true() { "true" } else { "false" }.to_owned()),
        ValueKind::None => Ok("null".to_owned()),
        kind => Err(Error::new(
            ErrorKind::InvalidOperation,
            format!("keys must be str, int, float, bool or None, not {kind}"),
        )),
    }
}

/// `sort_keys=True`: Python sorts the original keys (strings with strings,
/// numbers with numbers; a mix is a TypeError).
fn sort_entries(entries: &mut [(String, Value, Value)]) -> Result<(), Error> {
    let all_strings = entries.iter().all(|(_, k, _)| k.kind() == ValueKind::String);
    let all_numbers =
        entries.iter().all(|(_, k, _)| matches!(k.kind(), ValueKind::Number | ValueKind::Bool));
    if all_strings {
        entries.sort_by(|a, b| a.0.cmp(&b.0));
    } else if all_numbers {
        let num =
            |v: &Value| f64::try_from(v.clone()).unwrap_or(if v.is_true() { 1.0 } else { 0.0 });
        entries.sort_by(|a, b| num(&a.1).total_cmp(&num(&b.1)));
    } else {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "'<' not supported between the key types of this dict",
        ));
    }
    Ok(())
}

/// A JSON string as Python's encoder writes it (`ensure_ascii`: every
/// character outside printable ASCII as `\uXXXX`, surrogate pairs above
/// the BMP).
pub(crate) fn json_string(s: &str, ensure_ascii: bool, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c if ensure_ascii && !(' '..='~').contains(&c) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

// ---------------------------------------------------------------------------
// Python's string methods where pycompat's differ

/// Python's `str.isspace` for one character.
fn py_space(c: char) -> bool {
    matches!(c,
        '\t' | '\n' | '\u{b}' | '\u{c}' | '\r' | '\u{1c}'..='\u{1f}' | ' ' | '\u{85}' | '\u{a0}'
        | '\u{1680}' | '\u{2000}'..='\u{200a}' | '\u{2028}' | '\u{2029}' | '\u{202f}'
        | '\u{205f}' | '\u{3000}')
}

/// `str.strip(chars)`, `lstrip`, `rstrip`: Python's whitespace when
/// `chars` is `None`.
fn py_strip<'a>(s: &'a str, chars: Option<&str>, left: bool, right: bool) -> &'a str {
    let strip = |c: char| match chars {
        Some(set) => set.contains(c),
        None => py_space(c),
    };
    let s = if left { s.trim_start_matches(strip) } else { s };
    if right {
        s.trim_end_matches(strip)
    } else {
        s
    }
}

/// Python's `s.strip()`.
pub(crate) fn py_strip_both(s: &str) -> &str {
    py_strip(s, None, true, true)
}

/// Python's `s.rstrip()`.
pub(crate) fn py_rstrip(s: &str) -> &str {
    py_strip(s, None, false, true)
}

/// `str.split()` without a separator: runs of Python whitespace, at most
/// `maxsplit` splits.
fn py_split_whitespace(s: &str, maxsplit: i64) -> Vec<Value> {
    let mut parts = Vec::new();
    let mut rest = s.trim_start_matches(py_space);
    while !rest.is_empty() {
        if maxsplit >= 0 && parts.len() as i64 >= maxsplit {
            parts.push(Value::from(rest));
            break;
        }
        match rest.find(py_space) {
            Some(end) => {
                parts.push(Value::from(&rest[..end]));
                rest = rest[end..].trim_start_matches(py_space);
            }
            None => {
                parts.push(Value::from(rest));
                rest = "";
            }
        }
    }
    parts
}

/// `str.splitlines(keepends)` with Python's line boundaries.
fn py_splitlines(s: &str, keepends: bool) -> Vec<Value> {
    let mut lines = Vec::new();
    let mut start = 0;
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let boundary = matches!(
            c,
            '\n' | '\r'
                | '\u{b}'
                | '\u{c}'
                | '\u{1c}'
                | '\u{1d}'
                | '\u{1e}'
                | '\u{85}'
                | '\u{2028}'
                | '\u{2029}'
        );
        if !boundary {
            continue;
        }
        let mut end = i + c.len_utf8();
        if c == '\r' && chars.peek().is_some_and(|(_, n)| *n == '\n') {
            chars.next();
            end += 1;
        }
        lines.push(Value::from(if keepends { &s[start..end] } else { &s[start..i] }));
        start = end;
    }
    if start < s.len() {
        lines.push(Value::from(&s[start..]));
    }
    lines
}

/// Python's string methods for the cases where pycompat's differ from
/// Python (whitespace, character offsets), else pycompat's.
fn py_method(
    state: &State<'_, '_>,
    value: &Value,
    method: &str,
    args: &[Value],
) -> Result<Value, Error> {
    if method == "items" && args.is_empty() && value.kind() == ValueKind::Map {
        return dict_items(value);
    }
    if let Some(s) = value.as_str() {
        let arg = |i: usize| args.get(i).filter(|v| !v.is_none());
        let chars = |i: usize| arg(i).map(py_str);
        match method {
            "strip" | "lstrip" | "rstrip" if args.len() <= 1 => {
                let set = chars(0);
                let (l, r) = (method != "rstrip", method != "lstrip");
                return Ok(Value::from(py_strip(s, set.as_deref(), l, r)));
            }
            "split" if arg(0).is_none() && args.len() <= 2 => {
                let maxsplit = arg(1).and_then(|v| i64::try_from(v.clone()).ok()).unwrap_or(-1);
                return Ok(Value::from(py_split_whitespace(s, maxsplit)));
            }
            "splitlines" if args.len() <= 1 => {
                return Ok(Value::from(py_splitlines(s, arg(0).is_some_and(Value::is_true))));
            }
            "find" | "rfind" | "index" | "rindex" if args.len() == 1 => {
                let needle = py_str(&args[0]);
                let at = if method.starts_with('r') { s.rfind(&needle) } else { s.find(&needle) };
                return match at {
                    Some(byte) => Ok(Value::from(s[..byte].chars().count() as i64)),
                    None if method.ends_with("find") => Ok(Value::from(-1)),
                    None => Err(Error::new(ErrorKind::InvalidOperation, "substring not found")),
                };
            }
            _ => {}
        }
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

/// Jinja2's `join(d='', attribute=None)`: each item as Python's `str()`.
fn join_filter(value: &Value, sep: Option<Value>, kwargs: Kwargs) -> Result<Value, Error> {
    let attribute: Option<Value> = kwargs.get("attribute")?;
    let sep = match kwargs.get::<Option<Value>>("d")? {
        Some(d) => Some(d),
        None => sep,
    };
    kwargs.assert_all_used()?;
    let sep = sep.map(|s| py_str(&s)).unwrap_or_default();
    let mut out = String::new();
    for (i, item) in value.try_iter()?.enumerate() {
        if i > 0 {
            out.push_str(&sep);
        }
        let item = match &attribute {
            Some(a) => item.get_item(a)?,
            None => item,
        };
        out.push_str(&py_str(&item));
    }
    Ok(Value::from(out))
}

/// For tests of the filters outside a template.
#[cfg(test)]
fn render_str(template: &str, ctx: Value) -> Result<String, Error> {
    let env = environment(Raised::default());
    env.render_str(template, ctx)
}

#[cfg(test)]
mod tests;
