//! What llm-d's Endpoint Picker, its autoscaler and Kubernetes see of a
//! live `strata serve` (built-in model, loopback) under load: `/metrics`
//! scraped at the EPP's 20 Hz while clients run concurrent completions,
//! each scrape checked by a strict Prometheus text-format parser (every
//! sample's family typed before it, families contiguous, histograms
//! well-formed), the families the EPP reads typed and in range,
//! `vllm:cache_config_info` carrying the engine's block size and block
//! count under vLLM's label names, and no counter or histogram series ever
//! lower than in the scrape before. `/health` and `/ping` answer 200
//! throughout. Every wait is bounded; nothing asserts on speed.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

mod common;
use common::{post_json, serve_with};

const BLOCK_SIZE: &str = "8";
const NUM_KV_BLOCKS: &str = "300";
const CLIENTS: usize = 4;
const REQUESTS_PER_CLIENT: usize = 20;
const MAX_TOKENS: u64 = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

type Labels = Vec<(String, String)>;

/// A histogram series: its (le, cumulative count) buckets and its count.
type HistogramSeries = (Vec<(f64, f64)>, Option<f64>);

#[derive(Debug)]
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
}

impl Sample {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The series key: name and labels in their order.
    fn key(&self) -> String {
        let labels: Vec<String> = self.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        format!("{}{{{}}}", self.name, labels.join(","))
    }
}

#[derive(Debug)]
struct Family {
    kind: Kind,
    samples: Vec<Sample>,
}

fn is_name(s: &str, colons: bool) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || (colons && c == ':'))
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || (colons && c == ':'))
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse().map_err(|e| format!("value {s:?}: {e}")),
    }
}

/// `{k="v",...}` (after the name) into pairs; returns them and the rest.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let Some(mut rest) = s.strip_prefix('{') else { return Ok((Vec::new(), s)) };
    let mut labels: Labels = Vec::new();
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let (name, r) = rest.split_once("=\"").ok_or("label without =\"")?;
        if !is_name(name, false) || labels.iter().any(|(k, _)| k == name) {
            return Err(format!("bad or repeated label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    c => return Err(format!("bad escape \\{c}")),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((name.to_string(), value));
        rest = &r[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// A strict reading of Prometheus text format 0.0.4.
fn parse(text: &str) -> Result<BTreeMap<String, Family>, String> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut helps: Vec<String> = Vec::new();
    let mut current: Option<String> = None;
    let mut closed: Vec<String> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("TYPE"), Some(name), Some(kind)) => {
                    let kind = match kind {
                        "counter" => Kind::Counter,
                        "gauge" => Kind::Gauge,
                        "histogram" => Kind::Histogram,
                        "summary" => Kind::Summary,
                        "untyped" => Kind::Untyped,
                        k => return Err(at(format!("unknown type {k}"))),
                    };
                    if !is_name(name, true) || families.contains_key(name) {
                        return Err(at("bad or second TYPE".into()));
                    }
                    families.insert(name.to_string(), Family { kind, samples: Vec::new() });
                }
                (Some("HELP"), Some(name), _) => {
                    if helps.iter().any(|h| h == name)
                        || families.get(name).is_some_and(|f| !f.samples.is_empty())
                    {
                        return Err(at("second HELP, or HELP after samples".into()));
                    }
                    helps.push(name.to_string());
                }
                _ => {}
            }
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        let (labels, rest) = parse_labels(&line[name_end..]).map_err(at)?;
        let mut fields = rest.split(' ').filter(|f| !f.is_empty());
        let value = parse_value(fields.next().ok_or_else(|| at("no value".into()))?).map_err(at)?;
        if fields.nth(1).is_some() {
            return Err(at("trailing fields".into()));
        }
        let family =
            [("", None), ("_bucket", Some(Kind::Histogram)), ("_sum", None), ("_count", None)]
                .iter()
                .find_map(|(suffix, only)| {
                    let stem = name.strip_suffix(suffix)?;
                    let f = families.get(stem)?;
                    let fits = match (suffix.is_empty(), f.kind) {
                        (true, Kind::Histogram | Kind::Summary) => false,
                        (true, _) => true,
                        (false, Kind::Histogram) => true,
                        (false, Kind::Summary) => only.is_none(),
                        (false, _) => false,
                    };
                    fits.then(|| stem.to_string())
                })
                .ok_or_else(|| at("a sample with no # TYPE before it".into()))?;
        if current.as_deref() != Some(family.as_str()) {
            if closed.contains(&family) {
                return Err(at(format!("family {family} is split")));
            }
            closed.extend(current.replace(family.clone()));
        }
        let f = families.get_mut(&family).expect("found above");
        f.samples.push(Sample { name: name.to_string(), labels, value });
    }
    for (name, f) in &families {
        check_family(name, f)?;
    }
    Ok(families)
}

/// Counters are finite and not negative; each histogram series has
/// ascending `le` bounds ending at `+Inf`, cumulative counts, and `+Inf`
/// equal to its `_count`.
fn check_family(name: &str, f: &Family) -> Result<(), String> {
    if f.kind == Kind::Counter {
        for s in &f.samples {
            if !(s.value.is_finite() && s.value >= 0.0) {
                return Err(format!("{} = {}", s.key(), s.value));
            }
        }
    }
    if f.kind != Kind::Histogram {
        return Ok(());
    }
    let mut series: BTreeMap<String, HistogramSeries> = BTreeMap::new();
    for s in &f.samples {
        let others: Vec<String> =
            s.labels.iter().filter(|(k, _)| k != "le").map(|(k, v)| format!("{k}={v}")).collect();
        let entry = series.entry(others.join(",")).or_default();
        if s.name.ends_with("_bucket") {
            let le = parse_value(s.label("le").ok_or(format!("{} has no le", s.key()))?)?;
            entry.0.push((le, s.value));
        } else if s.name.ends_with("_count") {
            entry.1 = Some(s.value);
        }
    }
    for (labels, (buckets, count)) in series {
        let ascending = buckets.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1);
        let inf = buckets.last().filter(|(le, _)| le.is_infinite()).map(|(_, v)| *v);
        if !ascending || inf.is_none() || inf != count {
            return Err(format!("histogram {name}{{{labels}}} malformed: {buckets:?} {count:?}"));
        }
    }
    Ok(())
}

/// The one sample of a family (gauges without extra labels).
fn only(families: &BTreeMap<String, Family>, name: &str, kind: Kind) -> f64 {
    let f = families.get(name).unwrap_or_else(|| panic!("{name} is missing"));
    assert_eq!(f.kind, kind, "{name}");
    assert_eq!(f.samples.len(), 1, "{name}: {:?}", f.samples);
    f.samples[0].value
}

fn sum(families: &BTreeMap<String, Family>, sample: &str) -> f64 {
    families.values().flat_map(|f| &f.samples).filter(|s| s.name == sample).map(|s| s.value).sum()
}

/// Checks one scrape; returns the monotone series (counters, histogram
/// buckets, sums and counts) and whether a request was running or waiting.
fn check_scrape(text: &str) -> (HashMap<String, f64>, bool) {
    let families = parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let running = only(&families, "vllm:num_requests_running", Kind::Gauge);
    let waiting = only(&families, "vllm:num_requests_waiting", Kind::Gauge);
    let usage = only(&families, "vllm:kv_cache_usage_perc", Kind::Gauge);
    assert!(running >= 0.0 && waiting >= 0.0, "running {running}, waiting {waiting}");
    assert!((0.0..=1.0).contains(&usage), "vllm:kv_cache_usage_perc = {usage}");
    let info = &families["vllm:cache_config_info"];
    assert_eq!(info.kind, Kind::Gauge);
    assert_eq!(info.samples.len(), 1);
    let info = &info.samples[0];
    assert_eq!(info.value, 1.0);
    let int = |k: &str| info.label(k).unwrap_or_else(|| panic!("no {k}")).parse::<u64>().unwrap();
    assert_eq!(int("block_size"), BLOCK_SIZE.parse::<u64>().unwrap());
    assert_eq!(int("num_gpu_blocks"), NUM_KV_BLOCKS.parse::<u64>().unwrap());
    assert_eq!(int("num_cpu_blocks"), 0);
    assert_eq!(info.label("cache_dtype"), Some("auto"));
    assert_eq!(info.label("enable_prefix_caching"), Some("True"));
    for (name, kind) in [
        ("vllm:prefix_cache_queries_total", Kind::Counter),
        ("vllm:prefix_cache_hits_total", Kind::Counter),
        ("vllm:request_success_total", Kind::Counter),
        ("vllm:time_to_first_token_seconds", Kind::Histogram),
        ("vllm:time_per_output_token_seconds", Kind::Histogram),
        ("vllm:inter_token_latency_seconds", Kind::Histogram),
        ("vllm:request_prompt_tokens", Kind::Histogram),
        ("vllm:request_generation_tokens", Kind::Histogram),
    ] {
        assert_eq!(families.get(name).map(|f| f.kind), Some(kind), "{name}");
    }
    let monotone = families
        .values()
        .filter(|f| matches!(f.kind, Kind::Counter | Kind::Histogram))
        .flat_map(|f| &f.samples)
        .map(|s| (s.key(), s.value))
        .collect();
    (monotone, running > 0.0 || waiting > 0.0)
}

fn get(agent: &ureq::Agent, url: &str) -> (u16, String) {
    let mut r = agent.get(url).call().unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

#[test]
fn metrics_scraped_at_20_hz_under_load_stay_well_formed_and_monotone() {
    // A short stall timeout: busy steps under load must not trip it.
    let (_server, url) = serve_with(vec![
        "--block-size",
        BLOCK_SIZE,
        "--num-kv-blocks",
        NUM_KV_BLOCKS,
        "--health-stall-timeout",
        "2",
    ]);
    let done = Arc::new(AtomicBool::new(false));
    let scraper = {
        let (url, done) = (url.clone(), done.clone());
        std::thread::spawn(move || {
            let agent: ureq::Agent =
                ureq::Agent::config_builder().http_status_as_error(false).build().into();
            let deadline = Instant::now() + Duration::from_secs(300);
            let (mut scrapes, mut busy) = (0usize, 0usize);
            let mut previous: HashMap<String, f64> = HashMap::new();
            // Until the load is over and at least 20 scrapes were made.
            while !(done.load(Ordering::SeqCst) && scrapes >= 20) {
                assert!(Instant::now() < deadline, "the load did not finish in 300 s");
                let tick = Instant::now();
                let (status, text) = get(&agent, &format!("{url}/metrics"));
                assert_eq!(status, 200, "scrape {scrapes}: {text}");
                for probe in ["/health", "/ping"] {
                    assert_eq!(get(&agent, &format!("{url}{probe}")), (200, String::new()));
                }
                let (now, active) = check_scrape(&text);
                for (k, old) in &previous {
                    let new = now.get(k).unwrap_or_else(|| panic!("{k} disappeared"));
                    assert!(new >= old, "{k} went from {old} to {new}");
                }
                previous = now;
                scrapes += 1;
                busy += usize::from(active);
                std::thread::sleep(Duration::from_millis(50).saturating_sub(tick.elapsed()));
            }
            (scrapes, busy)
        })
    };
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut tokens = 0;
                for i in 0..REQUESTS_PER_CLIENT {
                    let body = json!({
                        "prompt": format!("A preamble every client shares, then client {c} request {i}"),
                        "max_tokens": MAX_TOKENS, "ignore_eos": true,
                    });
                    let v = post_json(&format!("{url}/v1/completions"), &body);
                    tokens += v["usage"]["completion_tokens"].as_u64().unwrap();
                }
                tokens
            })
        })
        .collect();
    let generated: u64 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    done.store(true, Ordering::SeqCst);
    let (scrapes, busy) = scraper.join().unwrap();
    eprintln!("{scrapes} scrapes, {busy} with requests in the engine");
    assert!(busy > 0, "none of {scrapes} scrapes saw a request in the engine");

    let requests = (CLIENTS * REQUESTS_PER_CLIENT) as u64;
    assert_eq!(generated, requests * MAX_TOKENS);
    let text = ureq::get(&format!("{url}/metrics")).call().unwrap().body_mut().read_to_string();
    let families = parse(&text.unwrap()).unwrap();
    assert_eq!(sum(&families, "vllm:request_success_total"), requests as f64);
    assert_eq!(sum(&families, "vllm:generation_tokens_total"), generated as f64);
    // Inter-token latency, under both names: one sample per gap between a
    // request's consecutive tokens.
    let gaps = (requests * (MAX_TOKENS - 1)) as f64;
    for name in ["vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"] {
        assert_eq!(sum(&families, &format!("{name}_count")), gaps, "{name}");
    }
    assert_eq!(
        sum(&families, "vllm:time_per_output_token_seconds_sum"),
        sum(&families, "vllm:inter_token_latency_seconds_sum")
    );
}

#[test]
fn a_stall_timeout_under_a_second_is_refused() {
    for bad in ["0.5", "0", "-3", "inf", "NaN"] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["serve", "--port", "0", &format!("--health-stall-timeout={bad}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Bounded: a server that accepted the value would run until killed.
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("--health-stall-timeout={bad} was accepted: the server started");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "--health-stall-timeout={bad} was accepted");
        assert!(stderr.contains("--health-stall-timeout"), "{stderr}");
    }
}

/// The parser is strict: each malformation the test relies on it to catch
/// is an error.
#[test]
fn the_parser_rejects_what_prometheus_rejects() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 2\n\
              # TYPE h histogram\nh_bucket{le=\"1.0\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n";
    assert!(parse(ok).is_ok(), "{:?}", parse(ok));
    for bad in [
        "a_total 1\n",                                             // no TYPE
        "a_total 1\n# TYPE a_total counter\n",                     // TYPE after
        "# TYPE a counter\n# TYPE a counter\na 1\n",               // second TYPE
        "# TYPE a gauge\n# TYPE b gauge\na 1\nb 1\na 2\n",         // split family
        "# TYPE a counter\na -1\n",                                // negative counter
        "# TYPE a gauge\na{x=\"1} 1\n",                            // unterminated
        "# TYPE a gauge\na{x=\"1\",x=\"2\"} 1\n",                  // repeated label
        "# TYPE a gauge\na one\n",                                 // not a number
        "# TYPE h histogram\nh_bucket{le=\"1.0\"} 1\nh_count 1\n", // no +Inf
        "# TYPE h histogram\nh_bucket{le=\"1.0\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 3\n", // +Inf != count
        "# TYPE h gauge\nh_bucket{le=\"+Inf\"} 2\n",                // untyped suffix
    ] {
        assert!(parse(bad).is_err(), "accepted: {bad:?}");
    }
}
