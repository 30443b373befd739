//! `STRATA_CUDA_PROFILE=1`: GPU time per op, from CUDA events around
//! every launch and GEMM.

use std::collections::HashMap;

use cudarc::driver::{sys as drv_sys, CudaEvent};

use super::CudaBackend;

/// Per-op GPU time, with `STRATA_CUDA_PROFILE=1`: CUDA events around every
/// launch and GEMM, resolved when a step's result is read.
#[derive(Default)]
pub(super) struct Profile {
    pending: Vec<(&'static str, CudaEvent, CudaEvent)>,
    /// Calls and milliseconds per op.
    totals: HashMap<&'static str, (u64, f64)>,
}

impl CudaBackend {
    /// With profiling on, the start and end events of an op, both created
    /// before the start is recorded (creating one inside the timed span
    /// would count host time when the GPU waits for the host).
    pub(super) fn start_timer(&self) -> Option<(CudaEvent, CudaEvent)> {
        self.profile.as_ref()?;
        let flags = Some(drv_sys::CUevent_flags::CU_EVENT_DEFAULT);
        let (start, end) = (self.ctx.new_event(flags).ok()?, self.ctx.new_event(flags).ok()?);
        start.record(&self.stream).ok()?;
        Some((start, end))
    }

    pub(super) fn stop_timer(&self, name: &'static str, timer: Option<(CudaEvent, CudaEvent)>) {
        let (Some(profile), Some((start, end))) = (&self.profile, timer) else { return };
        if end.record(&self.stream).is_ok() {
            profile.lock().unwrap_or_else(|p| p.into_inner()).pending.push((name, start, end));
        }
    }

    /// Per-op GPU time since the last call, `(op, calls, milliseconds)`,
    /// most time first; `None` unless `STRATA_CUDA_PROFILE=1`.
    pub fn take_profile(&self) -> Option<Vec<(&'static str, u64, f64)>> {
        let profile = self.profile.as_ref()?;
        let _ = self.stream.synchronize();
        self.resolve_profile();
        let mut p = profile.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<_> = p.totals.drain().map(|(k, (n, ms))| (k, n, ms)).collect();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        Some(rows)
    }

    /// Adds the elapsed time of the recorded event pairs: called once the
    /// stream is synchronised, when they are all done.
    pub(super) fn resolve_profile(&self) {
        let Some(profile) = &self.profile else { return };
        let p = &mut *profile.lock().unwrap_or_else(|p| p.into_inner());
        for (name, start, end) in std::mem::take(&mut p.pending) {
            if let Ok(ms) = start.elapsed_ms(&end) {
                let t = p.totals.entry(name).or_default();
                t.0 += 1;
                t.1 += f64::from(ms);
            }
        }
    }
}
