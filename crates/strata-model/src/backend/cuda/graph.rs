//! CUDA graphs for decode steps: one capture per batch-size bucket, then
//! a replay per step (see the module header of `backend::cuda`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::driver::sys as drv_sys;

use super::memory::DevBuf;
use super::{plan, CudaBackend, CudaStep, CudaTensor};
use crate::error::Result;

/// A captured graph. cudarc's `CudaGraph` is neither `Send` nor `Sync`:
/// graph objects must not be used from two threads at once, which the
/// `Mutex` around every [`GraphSlot`] guarantees.
struct SendGraph(cudarc::driver::CudaGraph);
// SAFETY: only used under the backend's `graphs` mutex (see above).
unsafe impl Send for SendGraph {}

enum GraphState {
    /// Not run yet: the first step of a bucket runs eagerly, which also
    /// loads every kernel it needs (module loading cannot be captured).
    Cold,
    /// Run once: the next step of the bucket is captured.
    Warm,
    /// Captured: replayed for every later step; the logits are `rows x
    /// cols` at `out`, allocated by the graph on each launch.
    Captured { graph: SendGraph, out: u64, rows: usize, cols: usize },
    /// Capture failed: this bucket runs eagerly.
    Eager,
}

/// A graph bucket's step buffer and graph.
pub(super) struct GraphSlot {
    meta: DevBuf,
    /// Capacity of `meta` in u32s.
    capacity: usize,
    state: GraphState,
}

/// Drops a tensor whose memory a graph that never ran would have
/// allocated: it must not be freed.
fn forget(t: CudaTensor) {
    if let Ok(buf) = Arc::try_unwrap(t.buf) {
        std::mem::forget(buf);
    }
}

impl CudaBackend {
    /// The decode batch sizes whose graph is captured and replayed (for
    /// tests: a bucket whose capture failed runs eagerly and is not here).
    pub fn captured_buckets(&self) -> Vec<usize> {
        let Some(graphs) = &self.graphs else { return Vec::new() };
        let graphs = graphs.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<usize> = graphs
            .iter()
            .filter(|(_, slot)| matches!(slot.state, GraphState::Captured { .. }))
            .map(|(&b, _)| b)
            .collect();
        out.sort_unstable();
        out
    }

    /// [`Backend::prepare_step`] for a padded decode step: its metadata
    /// goes into its bucket's buffer, whose address a captured graph
    /// holds. A step that outgrows the buffer (longer block tables) gets a
    /// new one, twice as large, and a new graph.
    pub(super) fn graph_step(
        &self,
        graphs: &Mutex<HashMap<usize, GraphSlot>>,
        bucket: usize,
        packed: &[u8],
        layout: plan::StepLayout,
        block_size: usize,
        max_keys: usize,
    ) -> Result<CudaStep> {
        let words = packed.len() / 4;
        let mut graphs = graphs.lock().unwrap_or_else(|p| p.into_inner());
        if graphs.get(&bucket).is_none_or(|g| g.capacity < words) {
            let capacity = (2 * words).max(4096);
            let slot =
                GraphSlot { meta: self.alloc(4 * capacity)?, capacity, state: GraphState::Cold };
            graphs.insert(bucket, slot);
        }
        let slot = graphs.get(&bucket).expect("invariant: inserted above");
        self.copy_from_host_bytes(slot.meta.ptr, packed)?;
        Ok(CudaStep {
            _owned: None,
            base: slot.meta.ptr,
            layout,
            block_size,
            max_keys,
            graph_bucket: Some(bucket),
        })
    }

    /// [`Backend::run_forward`]: eager, or through the bucket's graph.
    pub(super) fn run_graphed(
        &self,
        step: &CudaStep,
        forward: &mut dyn FnMut() -> CudaTensor,
    ) -> CudaTensor {
        let (Some(bucket), Some(graphs)) = (step.graph_bucket, &self.graphs) else {
            return forward();
        };
        let mut graphs = graphs.lock().unwrap_or_else(|p| p.into_inner());
        let Some(slot) = graphs.get_mut(&bucket) else { return forward() };
        match &slot.state {
            GraphState::Cold => {
                let out = forward();
                slot.state = GraphState::Warm;
                out
            }
            GraphState::Eager => forward(),
            GraphState::Warm => match self.capture(forward) {
                Ok((graph, out)) => {
                    slot.state = GraphState::Captured {
                        graph,
                        out: out.ptr,
                        rows: out.rows,
                        cols: out.cols,
                    };
                    out
                }
                Err(e) => {
                    tracing::warn!(
                        target: "strata::cuda",
                        bucket,
                        "CUDA graph capture failed, this batch size runs eagerly: {e}"
                    );
                    slot.state = GraphState::Eager;
                    forward()
                }
            },
            GraphState::Captured { graph, out, rows, cols } => {
                if let Err(e) = graph.0.launch() {
                    // Nothing ran (the graph's allocations may not fit now,
                    // say): this bucket runs eagerly from here on.
                    tracing::warn!(
                        target: "strata::cuda",
                        bucket,
                        "CUDA graph launch failed, this batch size runs eagerly: {e:?}"
                    );
                    slot.state = GraphState::Eager;
                    return forward();
                }
                // The graph allocated the logits at the address it was
                // captured with; the tensor frees them, in stream order,
                // before the next launch.
                let buf = DevBuf { ptr: *out, stream: self.stream.clone(), pooled: true };
                CudaTensor {
                    buf: Arc::new(buf),
                    ptr: *out,
                    rows: *rows,
                    cols: *cols,
                    stride: *cols,
                }
            }
        }
    }

    /// Captures `forward` into a graph and launches it once: the returned
    /// tensor holds this step's logits. On failure nothing ran and the
    /// device error state is as before the capture.
    fn capture(
        &self,
        forward: &mut dyn FnMut() -> CudaTensor,
    ) -> std::result::Result<(SendGraph, CudaTensor), String> {
        if self.failed() {
            return Err("the device is in an error state".into());
        }
        self.stream
            .begin_capture(drv_sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| format!("cuStreamBeginCapture: {e:?}"))?;
        let out = forward();
        let ended = self.stream.end_capture(drv_sys::CUgraphInstantiate_flags(0));
        let failed_inside = self.error.lock().unwrap_or_else(|p| p.into_inner()).take();
        let graph = match (ended, failed_inside) {
            (Ok(Some(g)), None) if out.ptr != 0 => g,
            (ended, inside) => {
                forget(out);
                return Err(match (ended, inside) {
                    (Err(e), _) => format!("cuStreamEndCapture: {e:?}"),
                    (_, Some(e)) => e,
                    _ => "the capture produced no graph".into(),
                });
            }
        };
        if let Err(e) = graph.launch() {
            forget(out);
            return Err(format!("graph launch: {e:?}"));
        }
        Ok((SendGraph(graph), out))
    }
}
