#![allow(clippy::unwrap_used)]

use minijinja::context;

use super::*;

fn render(t: &str) -> String {
    render_str(t, Value::from(())).unwrap()
}

#[test]
fn floats_print_as_python_repr() {
    for (f, s) in [
        (1.0, "1.0"),
        (0.1, "0.1"),
        (1e16, "1e+16"),
        (1.5e16, "1.5e+16"),
        (1e15, "1000000000000000.0"),
        (1e-5, "1e-05"),
        (0.0001, "0.0001"),
        (-0.0, "-0.0"),
        (123456789012345678.0, "1.2345678901234568e+17"),
        (0.30000000000000004, "0.30000000000000004"),
        (2.5e-7, "2.5e-07"),
    ] {
        assert_eq!(py_float_repr(f, false), s, "{f}");
    }
}

#[test]
fn values_print_as_python_does() {
    assert_eq!(
        render("{{ none }}|{{ true }}|{{ false }}|{{ 1.5 }}|{{ 3 }}"),
        "None|True|False|1.5|3"
    );
    assert_eq!(
        render(r#"{{ {"a": [1, none, true], "b": "it's"} }}"#),
        r#"{'a': [1, None, True], 'b': "it's"}"#
    );
    assert_eq!(render("{{ false | string }}"), "False");
    assert_eq!(render("{{ [1, none] | join(', ') }}"), "1, None");
    assert_eq!(
        render("{{ {'b': 1, 'a': 2} | items | list }} {{ {'b': 1}.items() | list }}"),
        "[('b', 1), ('a', 2)] [('b', 1)]"
    );
    assert_eq!(render("{{ {'b': 1, 'a': 2} | dictsort }}{% for k, v in {'x': 1}.items() %}{{ k }}{{ v }}{% endfor %}"), "[('a', 2), ('b', 1)]x1");
}

#[test]
fn tojson_is_python_json_dumps() {
    let ctx =
        context! { v => Value::from_serialize(serde_json::json!({"b": [1, 2.0, "é\n"], "a": {}})) };
    let env = environment(Raised::default());
    let r = |t: &str| env.render_str(t, ctx.clone()).unwrap();
    // Keys in the order written, as Python's dicts keep them.
    assert_eq!(r("{{ v | tojson }}"), r#"{"b": [1, 2.0, "é\n"], "a": {}}"#);
    assert_eq!(r("{{ v.b | tojson(indent=2) }}"), "[\n  1,\n  2.0,\n  \"é\\n\"\n]");
    assert_eq!(r("{{ v.b | tojson(ensure_ascii=true) }}"), r#"[1, 2.0, "\u00e9\n"]"#);
    assert_eq!(r("{{ v.b | tojson(separators=(',', ':')) }}"), r#"[1,2.0,"é\n"]"#);
    assert_eq!(r("{{ 'x' | tojson }}"), r#""x""#);
}

#[test]
fn string_methods_follow_python() {
    assert_eq!(render("{{ '\u{1c} a b \n'.strip() }}|{{ 'xxaxx'.lstrip('x') }}"), "a b|axx");
    assert_eq!(
        render("{{ ' a  b c '.split() }}|{{ 'a b c'.split(none, 1) }}"),
        "['a', 'b', 'c']|['a', 'b c']"
    );
    assert_eq!(render("{{ 'a\r\nb\rc'.splitlines() }}"), "['a', 'b', 'c']");
    assert_eq!(render("{{ 'éa'.find('a') }}|{{ 'abc'.rfind('z') }}"), "1|-1");
    assert_eq!(render("{{ 'a,b'.split(',')[-1] }}|{{ 'aXb'.replace('X', '-') }}"), "b|a-b");
}

#[test]
fn jinja2_tests_where_minijinja_differs() {
    assert_eq!(
        render("{{ 'a' is sequence }}{{ {} is sequence }}{{ 1 is sequence }}"),
        "TrueTrueFalse"
    );
    assert_eq!(render("{{ 'a' is iterable }}{{ none is iterable }}"), "TrueFalse");
    assert_eq!(render("{{ true is number }}"), "True");
}

#[test]
fn generation_tags_keep_their_whitespace_control() {
    assert_eq!(
        preprocess("a{%- generation -%}b{% endgeneration %}c{% if x %}{% endif %}"),
        "a{%- if true -%}b{% endif %}c{% if x %}{% endif %}"
    );
    let t = "a\n  {% generation %}\nb\n  {% endgeneration %}\nc";
    assert_eq!(render(&preprocess(t)), "a\nb\nc");
}

#[test]
fn strftime_now_formats_local_time() {
    let s = strftime_now("%Y").unwrap();
    assert_eq!(s.len(), 4);
    assert!(strftime_now("%Q %").is_err());
}
