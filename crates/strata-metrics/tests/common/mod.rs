//! Helpers shared by the metrics tests: reading the text exposition.

#![allow(dead_code, clippy::unwrap_used)]

/// `name{labels} value` lines of the exposition, as (series, value).
pub fn series(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' ').map(|(k, v)| (k.to_string(), v.parse().unwrap())))
        .collect()
}

/// Sum of the series whose name and labels start with `prefix`.
pub fn value(text: &str, prefix: &str) -> f64 {
    series(text).into_iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v).sum()
}
