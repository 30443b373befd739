//! The router's own Prometheus families (`strata:router_*`).
//!
//! The router computes no tokens, so it exports no token families: the
//! engines behind it own those, and a dashboard that summed the router's
//! view with theirs would count each prompt twice. What the router adds is
//! what only it sees: requests and failures by kind, the time of each hop,
//! and how many requests it has in flight to each engine (what
//! `least-loaded` picks by).
//!
//! Every label value the router can produce is created at start-up, so a
//! series reads 0 before its first event instead of being absent.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use strata_metrics::names::{label, router};

type Labels = Vec<(String, String)>;

fn hop_histogram() -> Histogram {
    // Hop durations: vLLM's TTFT buckets, since the decode hop is measured
    // to its first byte and the prefill hop is a TTFT of one token.
    Histogram::new(strata_metrics::buckets::TTFT.iter().copied())
}

/// `endpoint` values of `strata:router_requests_total`.
pub const ENDPOINTS: [&str; 3] = ["/v1/completions", "/v1/chat/completions", "/v1/models"];

/// `kind` values of `strata:router_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The client's body was unreadable or not a request (400, 413).
    BadRequest,
    /// `/v1/*` without the router's API key.
    Unauthorized,
    /// The prefill engine answered an error, or an answer that is not JSON.
    PrefillError,
    /// The decode engine answered an error, or an answer that is not JSON.
    DecodeError,
    /// The prefill engine's answer had no `kv_transfer_params`.
    NoKvTransferParams,
    /// An engine could not be reached (or its connection broke).
    UpstreamUnreachable,
    /// The client went away before its answer was complete.
    ClientDisconnected,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 7] = [
        Self::BadRequest,
        Self::Unauthorized,
        Self::PrefillError,
        Self::DecodeError,
        Self::NoKvTransferParams,
        Self::UpstreamUnreachable,
        Self::ClientDisconnected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadRequest => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::PrefillError => "prefill_error",
            Self::DecodeError => "decode_error",
            Self::NoKvTransferParams => "no_kv_transfer_params",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::ClientDisconnected => "client_disconnected",
        }
    }
}

/// The two hops of a P/D request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hop {
    Prefill,
    Decode,
}

impl Hop {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prefill => "prefill",
            Self::Decode => "decode",
        }
    }
}

/// The families and their registry. Families are internally shared
/// (`Arc`), so updates need no lock and handles may be cloned out.
#[derive(Debug)]
pub struct RouterMetrics {
    registry: Registry,
    requests: Family<Labels, Counter>,
    errors: Family<Labels, Counter>,
    hop_seconds: Family<Labels, Histogram, fn() -> Histogram>,
    in_flight: Family<Labels, Gauge>,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

impl Default for RouterMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RouterMetrics {
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::default(),
            requests: Family::default(),
            errors: Family::default(),
            hop_seconds: Family::new_with_constructor(hop_histogram as fn() -> Histogram),
            in_flight: Family::default(),
        };
        let r = &mut m.registry;
        r.register(
            router::ROUTER_REQUESTS,
            "Requests the router received, by endpoint",
            m.requests.clone(),
        );
        r.register(
            router::ROUTER_ERRORS,
            "Requests the router answered with an error or lost, by kind",
            m.errors.clone(),
        );
        r.register(
            router::ROUTER_HOP_SECONDS,
            "Time of each hop: prefill to its whole answer, decode to its response headers",
            m.hop_seconds.clone(),
        );
        r.register(
            router::ROUTER_ENGINE_IN_FLIGHT,
            "Requests this router has in flight to each engine",
            m.in_flight.clone(),
        );
        for endpoint in ENDPOINTS {
            let _ = m.requests.get_or_create(&labels(&[(label::ENDPOINT, endpoint)]));
        }
        for kind in ErrorKind::ALL {
            let _ = m.errors.get_or_create(&labels(&[(label::KIND, kind.as_str())]));
        }
        for hop in [Hop::Prefill, Hop::Decode] {
            let _ = m.hop_seconds.get_or_create(&labels(&[(label::HOP, hop.as_str())]));
        }
        m
    }

    pub fn request(&self, endpoint: &str) {
        self.requests.get_or_create(&labels(&[(label::ENDPOINT, endpoint)])).inc();
    }

    pub fn error(&self, kind: ErrorKind) {
        self.errors.get_or_create(&labels(&[(label::KIND, kind.as_str())])).inc();
    }

    pub fn hop(&self, hop: Hop, seconds: f64) {
        // A clock that stepped back must not produce a negative sample.
        let seconds = if seconds.is_finite() { seconds.max(0.0) } else { 0.0 };
        self.hop_seconds.get_or_create(&labels(&[(label::HOP, hop.as_str())])).observe(seconds);
    }

    /// The in-flight gauge of one engine (a shared handle, created at 0).
    pub fn in_flight_gauge(&self, role: &str, url: &str) -> Gauge {
        self.in_flight.get_or_create(&labels(&[(label::ROLE, role), (label::URL, url)])).clone()
    }

    /// Prometheus text 0.0.4, as the engines serve it (`_total` counter
    /// names, sorted series, no `# EOF`).
    pub fn encode_prometheus(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        strata_metrics::to_prometheus_text(&out)
    }
}
