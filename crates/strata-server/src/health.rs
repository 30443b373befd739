//! Engine liveness for `/health` and `/ping`: a heartbeat the engine
//! thread writes every loop iteration, read by the probes.
//!
//! Invariants:
//! - The engine thread beats at the top of every loop iteration; an idle
//!   thread wakes at least every [`IDLE_WAKE`] to beat, so a healthy
//!   thread is never silent longer than one step or one idle wait.
//! - The engine is *stalled* when it has been silent longer than the stall
//!   timeout. The timeout must exceed the longest legitimate step (a full
//!   `max_num_batched_tokens` prefill chunk on a CPU device can take tens
//!   of seconds), so a long step does not flap the probe; it is checked to
//!   be well above [`IDLE_WAKE`].
//! - Once the thread ends (a shutdown, a closed channel or a panic), the
//!   [`ExitGuard`] it holds marks the heartbeat for good, unwinding
//!   included: an exited engine never reads as healthy again.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The longest an idle engine thread waits before it beats again.
pub const IDLE_WAKE: Duration = Duration::from_millis(250);

/// Default stall timeout: longer than any legitimate step (a full prefill
/// chunk of a large model on a CPU device), and vLLM's own per-iteration
/// watchdog default (`VLLM_ENGINE_ITERATION_TIMEOUT_S`, 60 s).
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The shortest stall timeout accepted: four idle waits, so an idle
/// engine never reads as stalled.
pub const MIN_STALL_TIMEOUT: Duration = Duration::from_secs(1);

const RUNNING: u8 = 0;
const EXITED: u8 = 1;
const PANICKED: u8 = 2;

/// What the probes report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineHealth {
    Healthy,
    /// No beat for `silent_for`, longer than `limit`.
    Stalled {
        silent_for: Duration,
        limit: Duration,
    },
    /// The engine thread returned (shutdown or its channel closed).
    Exited,
    /// The engine thread panicked.
    Panicked,
}

impl EngineHealth {
    pub fn is_healthy(self) -> bool {
        self == Self::Healthy
    }
}

impl std::fmt::Display for EngineHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Healthy => write!(f, "healthy"),
            Self::Stalled { silent_for, limit } => write!(
                f,
                "engine stalled: no progress for {:.1} s (limit {:.1} s, --health-stall-timeout)",
                silent_for.as_secs_f64(),
                limit.as_secs_f64()
            ),
            Self::Exited => write!(f, "engine thread has stopped"),
            Self::Panicked => write!(f, "engine thread panicked"),
        }
    }
}

/// Written by the engine thread, read by the probes (atomics only).
#[derive(Debug)]
pub struct Heartbeat {
    origin: Instant,
    /// Milliseconds since `origin` of the latest beat.
    last_beat_ms: AtomicU64,
    stall_timeout_ms: AtomicU64,
    state: AtomicU8,
}

impl Heartbeat {
    pub fn new(stall_timeout: Duration) -> Self {
        let h = Self {
            origin: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
            stall_timeout_ms: AtomicU64::new(0),
            state: AtomicU8::new(RUNNING),
        };
        h.set_stall_timeout(stall_timeout);
        h
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The engine thread made progress.
    pub fn beat(&self) {
        self.last_beat_ms.store(self.now_ms(), Ordering::Release);
    }

    /// Sets the stall timeout, raised to [`MIN_STALL_TIMEOUT`].
    pub fn set_stall_timeout(&self, timeout: Duration) {
        let ms = timeout.max(MIN_STALL_TIMEOUT).as_millis();
        self.stall_timeout_ms.store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn stall_timeout(&self) -> Duration {
        Duration::from_millis(self.stall_timeout_ms.load(Ordering::Relaxed))
    }

    pub fn check(&self) -> EngineHealth {
        self.check_at(self.now_ms())
    }

    /// The health at `now_ms` (milliseconds since `origin`).
    fn check_at(&self, now_ms: u64) -> EngineHealth {
        match self.state.load(Ordering::Acquire) {
            EXITED => return EngineHealth::Exited,
            PANICKED => return EngineHealth::Panicked,
            _ => {}
        }
        let silent_ms = now_ms.saturating_sub(self.last_beat_ms.load(Ordering::Acquire));
        let limit = self.stall_timeout();
        let silent_for = Duration::from_millis(silent_ms);
        if silent_for > limit {
            EngineHealth::Stalled { silent_for, limit }
        } else {
            EngineHealth::Healthy
        }
    }
}

/// Held by the engine thread: marks the heartbeat when the thread ends,
/// by returning or by unwinding.
#[derive(Debug)]
pub struct ExitGuard(pub Arc<Heartbeat>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let state = if std::thread::panicking() { PANICKED } else { EXITED };
        self.0.state.store(state, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_past_the_limit_is_a_stall_until_the_next_beat() {
        let h = Heartbeat::new(Duration::from_secs(2));
        h.last_beat_ms.store(10_000, Ordering::Release);
        assert_eq!(h.check_at(10_000), EngineHealth::Healthy);
        assert_eq!(h.check_at(12_000), EngineHealth::Healthy, "the limit itself is not a stall");
        assert_eq!(
            h.check_at(12_001),
            EngineHealth::Stalled {
                silent_for: Duration::from_millis(2_001),
                limit: Duration::from_secs(2)
            }
        );
        h.beat();
        assert_eq!(h.check(), EngineHealth::Healthy);
    }

    #[test]
    fn the_stall_timeout_has_a_floor() {
        let h = Heartbeat::new(Duration::from_millis(10));
        assert_eq!(h.stall_timeout(), MIN_STALL_TIMEOUT);
        h.set_stall_timeout(Duration::from_secs(90));
        assert_eq!(h.stall_timeout(), Duration::from_secs(90));
    }

    #[test]
    fn the_guard_marks_a_return_and_a_panic() {
        let h = Arc::new(Heartbeat::new(DEFAULT_STALL_TIMEOUT));
        drop(ExitGuard(h.clone()));
        assert_eq!(h.check(), EngineHealth::Exited);
        let h = Arc::new(Heartbeat::new(DEFAULT_STALL_TIMEOUT));
        let g = h.clone();
        let joined = std::thread::spawn(move || {
            let _guard = ExitGuard(g);
            panic!("a step failed");
        })
        .join();
        assert!(joined.is_err());
        assert_eq!(h.check(), EngineHealth::Panicked);
    }
}
