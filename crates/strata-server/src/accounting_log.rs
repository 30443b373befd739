//! `--accounting-log PATH`: one JSON line per finished request, for billing
//! and audits, written by its own thread so a slow or failing disk never
//! blocks a step or fails a request. A write error is counted and logged
//! once; serving goes on.

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use serde_json::json;
use strata_core::{FinishRecord, PrefillRecord};

#[derive(Debug, Clone)]
pub struct AccountingLog {
    tx: mpsc::Sender<String>,
    /// Lines that could not be written.
    pub write_errors: Arc<AtomicU64>,
}

impl AccountingLog {
    /// Opens (appends to) `path` and starts the writer thread.
    pub fn open(path: PathBuf) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let (tx, rx) = mpsc::channel::<String>();
        let write_errors = Arc::new(AtomicU64::new(0));
        let errors = write_errors.clone();
        std::thread::Builder::new().name("strata-accounting".into()).spawn(move || {
            let mut out = BufWriter::new(file);
            let mut reported = false;
            for line in rx {
                let result = writeln!(out, "{line}").and_then(|()| out.flush());
                if let Err(e) = result {
                    errors.fetch_add(1, Ordering::Relaxed);
                    if !reported {
                        tracing::error!(
                            "accounting log {}: {e} (counting further failures silently)",
                            path.display()
                        );
                        reported = true;
                    }
                }
            }
        })?;
        Ok(Self { tx, write_errors })
    }

    /// Queues the line for a finished request (never blocks).
    /// `external_id` is the client's `X-Request-Id`, when it sent one
    /// (`x_request_id`, `null` otherwise): several engine requests (the
    /// `n` choices) may share it.
    pub fn record(
        &self,
        model: &str,
        finish: &FinishRecord,
        prefill: Option<&PrefillRecord>,
        external_id: Option<&str>,
    ) {
        let since = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => json!((b - a).max(0.0)),
            _ => json!(null),
        };
        let sources = prefill.map(|p| {
            json!({"local_compute": p.local_compute, "local_cache_hit": p.local_cache_hit,
                   "host": p.host, "disk": p.disk, "remote": p.remote})
        });
        let line = json!({
            "request_id": finish.request_id.get(),
            "x_request_id": external_id,
            "model": model,
            "finish_reason": finish.reason.as_str(),
            "prompt_tokens": finish.num_prompt_tokens,
            "completion_tokens": finish.num_generation_tokens,
            "sources": sources,
            "recomputed": prefill.map(|p| json!({"kv_load_failure": p.recomputed.kv_load_failure,
                                                 "preemption": p.recomputed.preemption})),
            "queue_time_s": since(Some(finish.arrival_time), finish.first_scheduled_time),
            "prefill_time_s": since(finish.first_scheduled_time, finish.first_token_time),
            "decode_time_s": since(finish.first_token_time, Some(finish.finished_time)),
        });
        let _ = self.tx.send(line.to_string());
    }
}
