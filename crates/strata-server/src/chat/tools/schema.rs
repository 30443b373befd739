//! Parameter values by the request's tool schema, for `qwen3_coder` and
//! `qwen3_xml`: vLLM `main` @00d0a333, `Qwen3CoderToolParser.
//! _convert_param_value` and, for `qwen3_xml`, `StreamingXMLToolCallParser`
//! `_get_param_type` / `repair_param_type` / `_param_allows_null` and the
//! deferred branch of its `_end_element` (the one its non-streamed path
//! takes for every non-string value). The schema is the parameter's entry
//! in `parameters.properties` of the first tool with the call's name
//! (`find_tool_properties`); a parameter without one stays a string.
//!
//! Departures (Python that strata does not run): `ast.literal_eval`
//! results `json.dumps` cannot write (a set, bytes, a complex number) and
//! an `anyOf` or `properties` that is not a list / dict are read as
//! "no value" / "no schema" (vLLM raises: for `qwen3_coder` the whole
//! output becomes content); `int()` / `float()` take ASCII digits only.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::pyjson::{self, PyValue};
use super::pythonic::literal_eval;
use super::ToolSchema;

const STRING_TYPES: &[&str] = &["string", "str", "text", "varchar", "char", "enum"];
const INT_PREFIXES: &[&str] = &["int", "uint", "long", "short", "unsigned"];
const BOOL_TYPES: &[&str] = &["boolean", "bool", "binary"];

/// vLLM raised while converting: `qwen3_coder` then returns the whole
/// output as content (a `number` of `inf`: `int(inf)` overflows).
#[derive(Debug)]
pub(super) struct Raises;

/// `find_tool_properties(tools, name)`.
pub(super) fn properties<'a>(
    tools: &'a [ToolSchema],
    name: &str,
) -> Option<&'a Map<String, Value>> {
    tools.iter().find(|t| t.name == name)?.parameters.get("properties")?.as_object()
}

/// vLLM's `valid_param_names`: the schema's names, `None` without any.
pub(super) fn param_names<'a>(tools: &'a [ToolSchema], name: &str) -> Option<BTreeSet<&'a str>> {
    properties(tools, name)
        .filter(|p| !p.is_empty())
        .map(|p| p.keys().map(String::as_str).collect())
}

/// Python's `str.strip()`.
fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\x1c'..='\x1f').contains(&c))
}

fn is_null_word(s: &str) -> bool {
    matches!(s.to_lowercase().as_str(), "null" | "none")
}

/// The options of an `anyOf` that are dicts (`None`: iterating it raises).
fn any_of(v: &Value) -> Option<Vec<&Map<String, Value>>> {
    match v {
        Value::Array(items) => Some(items.iter().filter_map(Value::as_object).collect()),
        // A dict iterates its keys, a string its characters: no dicts.
        Value::Object(_) | Value::String(_) => Some(Vec::new()),
        _ => None,
    }
}

/// `str(t).strip().lower()`; a non-string type matches no known type.
fn coder_type(t: &Value) -> String {
    t.as_str().map(|s| py_strip(s).to_lowercase()).unwrap_or_default()
}

/// `Qwen3CoderToolParser._convert_param_value` (the value already lost
/// one leading and one trailing `\n`).
pub(super) fn coder_value(value: &str, schema: Option<&Value>) -> Result<PyValue, Raises> {
    let Some(schema) = schema else { return Ok(PyValue::Str(value.to_owned())) };
    let (ty, allows_null) = match schema.as_object() {
        Some(o) if o.contains_key("type") => {
            let ty = coder_type(&o["type"]);
            let null = ty == "null";
            (ty, null)
        }
        Some(o) if o.contains_key("anyOf") => {
            let (mut ty, mut picked, mut null) = ("string".to_owned(), false, false);
            for option in any_of(&o["anyOf"]).ok_or(Raises)? {
                let Some(t) = option.get("type") else { continue };
                match coder_type(t) {
                    t if t == "null" => null = true,
                    t if !picked => (ty, picked) = (t, true),
                    _ => {}
                }
            }
            (ty, null)
        }
        _ => ("string".to_owned(), false),
    };
    let ty = ty.as_str();
    let str_value = || PyValue::Str(value.to_owned());
    if allows_null && is_null_word(value) {
        return Ok(PyValue::Null);
    }
    if STRING_TYPES.contains(&ty) {
        return Ok(str_value());
    }
    if is_null_word(value) {
        return Ok(PyValue::Null);
    }
    if INT_PREFIXES.iter().any(|p| ty.starts_with(p)) {
        return Ok(py_int(value).map_or_else(str_value, PyValue::Int));
    }
    if ty.starts_with("num") || ty.starts_with("float") {
        return match py_float(value) {
            None => Ok(str_value()),
            Some(x) if x.is_nan() => Ok(str_value()), // int(nan): ValueError
            Some(x) if x.is_infinite() => Err(Raises), // int(inf): OverflowError
            Some(x) if x.fract() != 0.0 => Ok(PyValue::Float(x)),
            Some(x) => Ok(PyValue::Int(int_of_float(x))),
        };
    }
    if BOOL_TYPES.contains(&ty) {
        return Ok(PyValue::Bool(value.to_lowercase() == "true"));
    }
    let container = ["object", "array", "arr"].contains(&ty)
        || ty.starts_with("dict")
        || ty.starts_with("list");
    if container {
        if let Some(parsed) = pyjson::loads(value) {
            return Ok(match parsed {
                PyValue::Str(s) => literal_eval(&s).unwrap_or(PyValue::Str(s)),
                other => other,
            });
        }
    }
    Ok(match literal_eval(value) {
        Some(PyValue::Str(s)) if container => literal_eval(&s).unwrap_or(PyValue::Str(s)),
        Some(v) => v,
        None => str_value(),
    })
}

/// `StreamingXMLToolCallParser._get_param_type` (with `repair_param_type`).
fn xml_type(schema: Option<&Value>) -> String {
    let Some(prop) = schema.and_then(Value::as_object) else { return "string".into() };
    let ty = prop.get("type").filter(|t| !t.is_null());
    if ty.is_none() && prop.contains_key("anyOf") {
        for option in any_of(&prop["anyOf"]).unwrap_or_default() {
            match option.get("type") {
                Some(Value::String(t)) if t == "null" => {}
                Some(t) => return repair(t.as_str().unwrap_or("")),
                None => {}
            }
        }
        return "string".into();
    }
    // `str(t or "string")`: a falsy or non-string type repairs to string.
    repair(ty.and_then(Value::as_str).filter(|t| !t.is_empty()).unwrap_or("string"))
}

/// `repair_param_type`: a type it does not know is a string.
fn repair(t: &str) -> String {
    let known = STRING_TYPES.contains(&t)
        || INT_PREFIXES.iter().any(|p| t.starts_with(p))
        || t.starts_with("num")
        || t.starts_with("float")
        || BOOL_TYPES.contains(&t)
        || ["object", "array", "arr", "sequence"].contains(&t)
        || t.starts_with("dict")
        || t.starts_with("list");
    if known {
        t.to_owned()
    } else {
        "string".into()
    }
}

/// `_param_allows_null`.
fn xml_allows_null(schema: Option<&Value>) -> bool {
    let Some(prop) = schema.and_then(Value::as_object) else { return false };
    let null =
        |t: Option<&Value>| t.and_then(Value::as_str).is_some_and(|t| t.to_lowercase() == "null");
    null(prop.get("type"))
        || prop
            .get("anyOf")
            .and_then(any_of)
            .unwrap_or_default()
            .iter()
            .any(|o| null(o.get("type")))
}

/// A `qwen3_xml` value from its raw text between `<parameter=…>` and
/// `</parameter>`. A non-nullable string type streams through the SAX
/// handlers (one leading and one trailing `\n` dropped); any other is
/// deferred and read whole at `</parameter>`, from the raw text plus a
/// `\n` when it ends with one (vLLM's `should_emit_end_newline`), which
/// a nullable string keeps in its value; an empty value is `""` either
/// way.
pub(super) fn xml_value(raw: &str, schema: Option<&Value>) -> PyValue {
    let ty = xml_type(schema);
    let nullable = xml_allows_null(schema);
    let string = STRING_TYPES.contains(&ty.as_str());
    if raw.is_empty() || (string && !nullable) {
        let value = raw.strip_prefix('\n').unwrap_or(raw);
        return PyValue::Str(value.strip_suffix('\n').unwrap_or(value).to_owned());
    }
    let for_parse = if raw.ends_with(['\n', '\r']) { format!("{raw}\n") } else { raw.to_owned() };
    let stripped = py_strip(&for_parse);
    if string {
        return if is_null_word(stripped) { PyValue::Null } else { PyValue::Str(for_parse) };
    }
    match stripped.to_lowercase().as_str() {
        "null" => return PyValue::Null,
        "true" => return PyValue::Bool(true),
        "false" => return PyValue::Bool(false),
        _ => {}
    }
    let again =
        |s: String| literal_eval(&s).or_else(|| pyjson::loads(&s)).unwrap_or(PyValue::Str(s));
    match pyjson::loads(&for_parse).or_else(|| literal_eval(&for_parse)) {
        Some(PyValue::Str(s)) => again(s),
        Some(v) => v,
        None => PyValue::Str(raw.to_owned()),
    }
}

/// Python's `int(s)` (base 10), as decimal digits.
fn py_int(s: &str) -> Option<String> {
    let s = py_strip(s);
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let digits = without_underscores(body)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits = digits.trim_start_matches('0');
    Some(match (digits, neg) {
        ("", _) => "0".into(),
        (d, true) => format!("-{d}"),
        (d, false) => d.to_owned(),
    })
}

/// Python's `float(s)`.
fn py_float(s: &str) -> Option<f64> {
    let clean = without_underscores(py_strip(s))?;
    let body = clean.trim_start_matches(['+', '-']);
    let word = ["inf", "infinity", "nan"].contains(&body.to_lowercase().as_str());
    let numeric =
        body.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    if clean.len() - body.len() > 1 || !(word || numeric) {
        return None;
    }
    clean.parse().ok()
}

/// The text without its underscores, each of which must sit between two
/// digits (PEP 515); `None` otherwise.
fn without_underscores(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let ok = b.iter().enumerate().all(|(k, &c)| {
        c != b'_'
            || (k > 0 && b[k - 1].is_ascii_digit() && b.get(k + 1).is_some_and(u8::is_ascii_digit))
    });
    ok.then(|| s.replace('_', ""))
}

/// `int(x)` of a finite, integral float, every digit.
fn int_of_float(x: f64) -> String {
    if x.abs() < 9.0e15 {
        return format!("{}", x as i64);
    }
    // |x| >= 2^53: x = mantissa * 2^exp exactly, exp >= 0.
    let bits = x.abs().to_bits();
    let mantissa = (bits & ((1 << 52) - 1)) | (1 << 52);
    let exp = ((bits >> 52) & 0x7ff) as i64 - 1075;
    // Little-endian base-10^9 limbs.
    let mut limbs = vec![
        (mantissa % 1_000_000_000) as u32,
        (mantissa / 1_000_000_000 % 1_000_000_000) as u32,
        (mantissa / 1_000_000_000_000_000_000) as u32,
    ];
    for _ in 0..exp {
        let mut carry = 0u64;
        for limb in &mut limbs {
            let v = u64::from(*limb) * 2 + carry;
            *limb = (v % 1_000_000_000) as u32;
            carry = v / 1_000_000_000;
        }
        if carry > 0 {
            limbs.push(carry as u32);
        }
    }
    while limbs.len() > 1 && limbs.last() == Some(&0) {
        limbs.pop();
    }
    let mut out = if x < 0.0 { "-".to_owned() } else { String::new() };
    let mut iter = limbs.iter().rev();
    if let Some(top) = iter.next() {
        out.push_str(&top.to_string());
    }
    for limb in iter {
        out.push_str(&format!("{limb:09}"));
    }
    out
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn numbers_as_python_reads_them() {
        assert_eq!(py_int(" -0_7 ").as_deref(), Some("-7"));
        assert_eq!(py_int("+0").as_deref(), Some("0"));
        assert_eq!(py_int("1__0"), None);
        assert_eq!(py_int("1e5"), None);
        assert_eq!(py_float(" 1_0.5 "), Some(10.5));
        assert_eq!(py_float("1_"), None);
        assert_eq!(py_float("0x10"), None);
        assert!(py_float("-Infinity").is_some_and(|x| x == f64::NEG_INFINITY));
        assert!(py_float("nan").is_some_and(f64::is_nan));
        assert_eq!(py_float("+-1"), None);
        assert_eq!(int_of_float(1e16), "10000000000000000");
        assert_eq!(int_of_float(-1e22), "-10000000000000000000000");
        assert_eq!(int_of_float(1e23), "99999999999999991611392");
        assert_eq!(int_of_float(-0.0), "0");
    }

    #[test]
    fn literal_eval_as_python_reads_it() {
        let cases = [
            ("\n1\n\n", Some("1")),
            ("\n 1", None), // IndentationError
            ("1,", Some("[1]")),
            ("-(1)", Some("-1")),
            ("- -1", None),
            ("(1, -2.5)", Some("[1, -2.5]")),
            ("()", Some("[]")),
            ("{'k': (1,)}", Some(r#"{"k": [1]}"#)),
            ("-True", None),
            ("{1, 2}", None),
        ];
        for (src, want) in cases {
            assert_eq!(literal_eval(src).map(|v| v.dumps()).as_deref(), want, "{src:?}");
        }
    }
}
