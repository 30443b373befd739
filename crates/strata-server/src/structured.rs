//! Structured outputs on the API, as vLLM reads them: OpenAI's
//! `response_format` (`text`, `json_object`, `json_schema`) and vLLM's
//! `structured_outputs` (`json`, `regex`, `choice`, `grammar`,
//! `json_object`), on completions and chat. The constraint is compiled
//! (or found in the cache) by strata-structured; a constraint llguidance
//! refuses is a 400 that says why.

use serde_json::{json, Value};
use strata_core::structured::SharedGrammar;
use strata_structured::Constraint;

use crate::error::ApiError;
use crate::openai::SamplingFields;
use crate::AppState;

/// `structured_outputs`' keys that choose the constraint (exactly one).
const KINDS: [&str; 5] = ["json", "regex", "choice", "grammar", "json_object"];

/// The request's grammar, if it asks for one.
pub fn grammar(state: &AppState, f: &SamplingFields) -> Result<Option<SharedGrammar>, ApiError> {
    let from_format = f.response_format.as_ref().map(response_format).transpose()?.flatten();
    let from_vllm = f.structured_outputs.as_ref().map(structured_outputs).transpose()?.flatten();
    let constraint = match (from_format, from_vllm) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "structured_outputs",
                "give either `response_format` or `structured_outputs`, not both",
            ))
        }
        (Some((c, field)), None) | (None, Some((c, field))) => (c, field),
    };
    let (constraint, field) = constraint;
    let compiler = state.grammars.as_ref().map_err(|why| {
        ApiError::invalid(
            field,
            format!("structured outputs are not available for this model: {why}"),
        )
    })?;
    compiler
        .compile(&constraint)
        .map(Some)
        .map_err(|e| ApiError::invalid(field, format!("the constraint cannot be compiled: {e}")))
}

fn object<'a>(
    v: &'a Value,
    field: &'static str,
) -> Result<&'a serde_json::Map<String, Value>, ApiError> {
    v.as_object().ok_or_else(|| ApiError::invalid(field, format!("`{field}` must be an object")))
}

/// OpenAI's `response_format`.
fn response_format(v: &Value) -> Result<Option<(Constraint, &'static str)>, ApiError> {
    const FIELD: &str = "response_format";
    if v.is_null() {
        return Ok(None);
    }
    let o = object(v, FIELD)?;
    match o.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some((Constraint::JsonSchema(json!({"type": "object"})), FIELD))),
        Some("json_schema") => {
            let spec = o.get("json_schema").ok_or_else(|| {
                ApiError::invalid(
                    FIELD,
                    "`response_format.json_schema` is required with type json_schema",
                )
            })?;
            let spec = object(spec, "response_format.json_schema")?;
            // OpenAI's name is `schema`; vLLM also reads `json_schema`.
            let schema =
                spec.get("schema").or_else(|| spec.get("json_schema")).ok_or_else(|| {
                    ApiError::invalid(FIELD, "`response_format.json_schema.schema` is required")
                })?;
            Ok(Some((Constraint::JsonSchema(schema_value(schema, FIELD)?), FIELD)))
        }
        Some("structural_tag") => Err(ApiError::invalid(
            FIELD,
            "response_format type `structural_tag` is not supported by strata",
        )),
        Some(other) => Err(ApiError::invalid(
            FIELD,
            format!("unknown response_format type {other:?} (text, json_object or json_schema)"),
        )),
        None => Err(ApiError::invalid(FIELD, "`response_format.type` is required")),
    }
}

/// A schema given as an object, or as a JSON string of one (vLLM accepts
/// both).
fn schema_value(v: &Value, field: &'static str) -> Result<Value, ApiError> {
    match v {
        Value::Object(_) | Value::Bool(_) => Ok(v.clone()),
        Value::String(s) => serde_json::from_str(s)
            .map_err(|e| ApiError::invalid(field, format!("the schema is not valid JSON: {e}"))),
        _ => Err(ApiError::invalid(field, "a JSON schema is an object")),
    }
}

/// vLLM's `structured_outputs`.
fn structured_outputs(v: &Value) -> Result<Option<(Constraint, &'static str)>, ApiError> {
    const FIELD: &str = "structured_outputs";
    if v.is_null() {
        return Ok(None);
    }
    let o = object(v, FIELD)?;
    for key in o.keys() {
        let known = KINDS.contains(&key.as_str())
            || matches!(
                key.as_str(),
                "disable_fallback" | "disable_any_whitespace" | "whitespace_pattern"
            );
        if !known {
            let why = match key.as_str() {
                "structural_tag" | "disable_additional_properties" => "is not supported by strata",
                _ => "is not a structured_outputs field",
            };
            return Err(ApiError::invalid(FIELD, format!("`structured_outputs.{key}` {why}")));
        }
    }
    let set: Vec<&str> = KINDS
        .iter()
        .copied()
        .filter(|k| o.get(*k).is_some_and(|v| !v.is_null() && v != &Value::Bool(false)))
        .collect();
    let kind = match set.as_slice() {
        [] => return Ok(None),
        [one] => *one,
        _ => {
            return Err(ApiError::invalid(
                FIELD,
                format!(
                    "give one of json, regex, choice, grammar, json_object (got {})",
                    set.join(", ")
                ),
            ))
        }
    };
    let value = &o[kind];
    let text = |what: &str| {
        value.as_str().map(str::to_owned).ok_or_else(|| {
            ApiError::invalid(
                FIELD,
                format!("`structured_outputs.{kind}` must be a string ({what})"),
            )
        })
    };
    let constraint = match kind {
        "json" => Constraint::JsonSchema(whitespace(schema_value(value, FIELD)?, o)?),
        "json_object" => Constraint::JsonSchema(whitespace(json!({"type": "object"}), o)?),
        "regex" => Constraint::Regex(text("a regular expression")?),
        "grammar" => Constraint::Lark(text("a Lark grammar")?),
        _ => {
            let choices = value
                .as_array()
                .filter(|a| !a.is_empty())
                .and_then(|a| {
                    a.iter().map(|c| c.as_str().map(str::to_owned)).collect::<Option<Vec<_>>>()
                })
                .ok_or_else(|| {
                    ApiError::invalid(
                        FIELD,
                        "`structured_outputs.choice` must be a non-empty list of strings",
                    )
                })?;
            Constraint::Choice(choices)
        }
    };
    Ok(Some((constraint, FIELD)))
}

/// vLLM's whitespace options, as llguidance's `x-guidance` settings of a
/// JSON schema.
fn whitespace(mut schema: Value, o: &serde_json::Map<String, Value>) -> Result<Value, ApiError> {
    let strict = o.get("disable_any_whitespace").and_then(Value::as_bool).unwrap_or(false);
    let pattern = o.get("whitespace_pattern").and_then(Value::as_str);
    if !strict && pattern.is_none() {
        return Ok(schema);
    }
    let Some(obj) = schema.as_object_mut() else {
        return Err(ApiError::invalid(
            "structured_outputs",
            "whitespace options need the schema to be an object",
        ));
    };
    let mut guidance = serde_json::Map::new();
    guidance.insert("whitespace_flexible".into(), Value::Bool(!strict));
    if let Some(p) = pattern {
        guidance.insert("whitespace_pattern".into(), Value::String(p.into()));
    }
    obj.insert("x-guidance".into(), Value::Object(guidance));
    Ok(schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(v: Value) -> Result<Option<Constraint>, ApiError> {
        structured_outputs(&v).map(|o| o.map(|(c, _)| c))
    }

    #[test]
    fn vllm_fields_choose_one_constraint() {
        assert_eq!(kind(json!({"regex": "a+"})).unwrap(), Some(Constraint::Regex("a+".into())));
        assert_eq!(
            kind(json!({"choice": ["x", "y"]})).unwrap(),
            Some(Constraint::Choice(vec!["x".into(), "y".into()]))
        );
        assert_eq!(
            kind(json!({"json": "{\"type\": \"integer\"}"})).unwrap(),
            Some(Constraint::JsonSchema(json!({"type": "integer"})))
        );
        assert_eq!(kind(json!({})).unwrap(), None);
        for bad in [
            json!({"regex": "a", "choice": ["a"]}),
            json!({"choice": []}),
            json!({"choice": [1]}),
            json!({"grammar": 3}),
            json!({"structural_tag": "x"}),
            json!({"whatever": 1}),
            json!([1]),
        ] {
            assert!(kind(bad.clone()).is_err(), "{bad}");
        }
        let strict = kind(json!({"json": {"type": "object"}, "disable_any_whitespace": true}));
        assert_eq!(
            strict.unwrap(),
            Some(Constraint::JsonSchema(
                json!({"type": "object", "x-guidance": {"whitespace_flexible": false}})
            ))
        );
    }

    #[test]
    fn response_format_types() {
        let rf = |v: Value| response_format(&v).map(|o| o.map(|(c, _)| c));
        assert_eq!(rf(json!({"type": "text"})).unwrap(), None);
        assert_eq!(
            rf(json!({"type": "json_object"})).unwrap(),
            Some(Constraint::JsonSchema(json!({"type": "object"})))
        );
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        assert_eq!(
            rf(json!({"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": true}}))
                .unwrap(),
            Some(Constraint::JsonSchema(schema))
        );
        for bad in [
            json!({"type": "json_schema"}),
            json!({"type": "json_schema", "json_schema": {"name": "x"}}),
            json!({"type": "structural_tag"}),
            json!({"type": "yaml"}),
            json!({}),
        ] {
            assert!(rf(bad.clone()).is_err(), "{bad}");
        }
    }
}
