//! The engines of one role and how the router picks among them.
//!
//! Load is what this router has in flight to an engine, counted by an
//! [`InFlight`] guard that lives as long as the upstream request (for a
//! streamed answer, as long as the stream): the router cannot see other
//! routers' load or the engine's queue, and it needs no engine endpoint to
//! know its own. Picking and counting are two atomic steps, not one, so two
//! requests arriving together may pick the same idle engine; the policy is
//! a balance, not a reservation.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus_client::metrics::gauge::Gauge;

use super::metrics::RouterMetrics;
use super::Policy;

/// An engine's role in the P/D pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Prefill,
    Decode,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Prefill => "prefill",
            Self::Decode => "decode",
        }
    }
}

/// One engine: its base URL and this router's requests in flight to it.
#[derive(Debug)]
pub struct Engine {
    /// Base URL without a trailing slash (`http://host:port`).
    pub url: String,
    in_flight: AtomicUsize,
    gauge: Gauge,
}

impl Engine {
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Counts one upstream request against its engine until dropped.
#[derive(Debug)]
pub struct InFlight(Arc<Engine>);

impl InFlight {
    pub fn new(engine: Arc<Engine>) -> Self {
        engine.in_flight.fetch_add(1, Ordering::Relaxed);
        engine.gauge.inc();
        Self(engine)
    }

    pub fn engine(&self) -> &Engine {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.gauge.dec();
    }
}

/// The engines of one role.
#[derive(Debug)]
pub struct Pool {
    pub role: Role,
    pub engines: Vec<Arc<Engine>>,
    /// Round-robin cursor: where the next scan starts.
    next: AtomicUsize,
}

impl Pool {
    /// `urls` must be non-empty (the config checks it).
    pub fn new(role: Role, urls: &[String], metrics: &RouterMetrics) -> Self {
        let engines = urls
            .iter()
            .map(|url| {
                Arc::new(Engine {
                    url: url.clone(),
                    in_flight: AtomicUsize::new(0),
                    gauge: metrics.in_flight_gauge(role.as_str(), url),
                })
            })
            .collect();
        Self { role, engines, next: AtomicUsize::new(0) }
    }

    /// Picks an engine and counts a request against it.
    pub fn acquire(&self, policy: Policy) -> InFlight {
        InFlight::new(self.engines[self.pick(policy)].clone())
    }

    /// Round-robin: the engine at the cursor. Least-loaded: the engine
    /// with the fewest requests in flight, the first such from the cursor,
    /// so ties rotate instead of always landing on the first engine.
    pub fn pick(&self, policy: Policy) -> usize {
        let len = self.engines.len();
        match policy {
            Policy::RoundRobin => self.next.fetch_add(1, Ordering::Relaxed) % len,
            Policy::LeastLoaded => {
                let start = self.next.load(Ordering::Relaxed) % len;
                let chosen = (0..len)
                    .map(|k| (start + k) % len)
                    .min_by_key(|&i| self.engines[i].in_flight())
                    .unwrap_or(start);
                // The next tie starts after this pick (a racing store only
                // shifts where a later scan starts).
                self.next.store(chosen + 1, Ordering::Relaxed);
                chosen
            }
        }
    }

    /// Engines in the order a fallback scan should try them: starting at
    /// the round-robin cursor, each once.
    pub fn rotation(&self) -> impl Iterator<Item = &Arc<Engine>> {
        let len = self.engines.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % len;
        (0..len).map(move |k| &self.engines[(start + k) % len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Pool {
        let urls: Vec<String> = (0..n).map(|i| format!("http://127.0.0.1:{}", 9000 + i)).collect();
        Pool::new(Role::Decode, &urls, &RouterMetrics::new())
    }

    #[test]
    fn round_robin_rotates() {
        let p = pool(3);
        let picks: Vec<usize> = (0..6).map(|_| p.pick(Policy::RoundRobin)).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn least_loaded_prefers_idle_and_rotates_ties() {
        let p = pool(3);
        let busy = p.acquire(Policy::LeastLoaded);
        assert_eq!(busy.engine().url, "http://127.0.0.1:9000");
        // Engine 0 is busy: the idle ones alternate.
        let picks: Vec<usize> = (0..4).map(|_| p.pick(Policy::LeastLoaded)).collect();
        assert_eq!(picks, [1, 2, 1, 2]);
        drop(busy);
        assert_eq!(p.engines[0].in_flight(), 0);
    }
}
