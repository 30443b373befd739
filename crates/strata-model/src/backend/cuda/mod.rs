//! The CUDA backend: the [`Backend`] operations on an NVIDIA GPU through
//! cudarc (driver, NVRTC, cuBLAS), with no CUDA toolkit at build time.
//!
//! - Libraries are found and opened by [`locate`] before cudarc is asked
//!   for anything, so a missing one is an error naming it, not a panic.
//! - Kernels are CUDA C ([`kernels`]) compiled by NVRTC ([`nvrtc`]) at
//!   start-up for the device's architecture and cached on disk; attention
//!   is specialised to each head dimension on first use.
//! - Weights stay in their stored dtype (f32, f16, bf16) in device memory;
//!   1-D tensors are widened to f32, as the trait says. Quantized GGUF
//!   matrices are refused: their kernels are CPU-only.
//! - Activations are f32 `[rows, cols]` with a row stride, so
//!   `split_cols` is a view (no copy, no launch) and in-place ops work on
//!   views. Each is a stream-ordered allocation (`cuMemAllocAsync`) freed
//!   when dropped.
//! - `linear` is a GEMV kernel (one warp per output feature, exact f32
//!   dot products like the CPU backend) up to [`kernels::GEMV_MAX_M`]
//!   rows, and cuBLAS `GemmEx` above (activations cast to the weight's
//!   16-bit type, f32 output and accumulation; f32 weights in f32).
//! - The KV pool is f32, `[slots, kv_width]` per layer: the CPU backend's
//!   bytes, so KV connectors (offload tiers, P/D) move the same payloads
//!   between a GPU engine and a CPU engine.
//! - Step metadata is packed into one host buffer and uploaded with one
//!   copy per step.
//!
//! - Decode steps of up to 256 sequences are padded to a bucket
//!   ([`plan::GRAPH_BUCKETS`]) and, from a bucket's second step on,
//!   captured once as a CUDA graph and replayed (`graph`): one launch per
//!   step instead of one per op, which is what bounds small models'
//!   decode. The graph's activations are captured stream-ordered
//!   allocations, so they get the same addresses on every replay; the
//!   step's metadata goes into the bucket's fixed buffer before each
//!   launch. `CudaOptions::enforce_eager` turns this off (vLLM's
//!   `--enforce-eager`).
//! - Greedy steps take each row's argmax on the device and copy token ids
//!   instead of logits (`Backend::argmax_rows`).
//!
//! The trait's operations cannot return errors (the CPU backend has none
//! to return). A device error here (a failed launch, an allocation the
//! device cannot satisfy) is kept, the operations after it do nothing, and
//! the step's read (`to_host` or `argmax_rows`) returns it and clears it:
//! that step fails with the device's message and the next one runs.
//!
//! Split by concern: `device` opens the device and compiles the kernels,
//! `memory` holds device buffers and host copies, `graph` captures and
//! replays decode steps, `profile` times ops (`STRATA_CUDA_PROFILE=1`);
//! this file holds the types and the `Backend` operations.
//!
//! Not here yet: bf16 KV, tensor-core attention for long prefills,
//! sampling other than greedy on the device.

mod device;
mod graph;
pub mod kernels;
pub mod locate;
mod memory;
pub mod nvrtc;
pub mod plan;
mod profile;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub use device::{CudaOptions, DeviceInfo};
use graph::GraphSlot;
use memory::DevBuf;
use profile::Profile;

use cudarc::cublas::{result as blas_result, sys as blas_sys, CudaBlas};
use cudarc::driver::{result as drv, CudaContext, CudaFunction, CudaStream};
use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::{AttentionShape, Backend, StepMetadata};
use crate::error::{ModelError, Result};
use crate::weights::{DType, HostData, HostTensor};

/// An f32 activation: `rows` rows of `cols` values, `stride` floats apart.
#[derive(Debug)]
pub struct CudaTensor {
    buf: Arc<DevBuf>,
    /// Device address of element (0, 0).
    ptr: u64,
    rows: usize,
    cols: usize,
    stride: usize,
}

impl CudaTensor {
    pub fn rows(&self) -> usize {
        self.rows
    }
    pub fn cols(&self) -> usize {
        self.cols
    }
    fn is_dense(&self) -> bool {
        self.stride == self.cols
    }
}

/// A weight in its stored dtype: `rows x cols`, row-major.
#[derive(Debug)]
pub struct CudaWeight {
    buf: DevBuf,
    rows: usize,
    cols: usize,
    dtype: DType,
}

/// One layer's K and V stores, `[num_slots, kv_width]` f32 each.
#[derive(Debug)]
pub struct CudaKvLayer {
    k: DevBuf,
    v: DevBuf,
    kv_width: usize,
    num_slots: usize,
}

/// One step's metadata on the device: one buffer, sections by offset.
/// A step padded for a graph uses its bucket's buffer, whose address the
/// graph was captured with.
#[derive(Debug)]
pub struct CudaStep {
    /// Owned for an eager step; `None` when in the bucket's buffer.
    _owned: Option<DevBuf>,
    base: u64,
    layout: plan::StepLayout,
    block_size: usize,
    /// The longest key range of any query (for split-KV).
    max_keys: usize,
    /// The graph bucket of a padded decode step.
    graph_bucket: Option<usize>,
}

impl CudaStep {
    fn at(&self, offset: usize) -> u64 {
        self.base + 4 * offset as u64
    }
}

/// A kernel to launch, with its name for the profile.
#[derive(Clone, Copy)]
struct Kernel<'a> {
    name: &'static str,
    f: &'a CudaFunction,
}

/// A kernel argument: device pointers and sizes as the kernels declare
/// them.
#[derive(Clone, Copy, Debug)]
enum Arg {
    Ptr(u64),
    I32(i32),
    F32(f32),
}

fn int(v: usize) -> Arg {
    Arg::I32(i32::try_from(v).expect("invariant: kernel sizes fit in i32 (checked at load)"))
}

pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    pooled: bool,
    common: HashMap<&'static str, CudaFunction>,
    /// `paged_attention` and `attention_reduce` per head dimension.
    attention: Mutex<HashMap<usize, (CudaFunction, CudaFunction)>>,
    kernel_cache: Option<std::path::PathBuf>,
    error: Mutex<Option<String>>,
    info: DeviceInfo,
    /// CUDA graphs per decode bucket; `None` with `enforce_eager` or on a
    /// device without stream-ordered allocation (graphs capture the
    /// activations' allocations).
    graphs: Option<Mutex<HashMap<usize, GraphSlot>>>,
    /// cuBLAS's workspace, set once so that its address is fixed (what a
    /// GEMM captured in a graph needs; cuBLAS would otherwise allocate).
    _blas_workspace: DevBuf,
    /// `STRATA_CUDA_PROFILE=1`: per-op GPU time (graphs are then off, so
    /// that every op is timed).
    profile: Option<Mutex<Profile>>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend").field("info", &self.info).finish_non_exhaustive()
    }
}

fn dev_err(what: &str, e: impl std::fmt::Debug) -> ModelError {
    ModelError::Device(format!("{what}: {e:?}"))
}

impl CudaBackend {
    /// Waits for queued work and returns the first device error, if any.
    pub fn synchronize(&self) -> Result<()> {
        match self.stream.synchronize() {
            Err(e) => self.fail(format!("stream: {e:?}")),
            // Every event recorded so far is done: the profile can read them.
            Ok(()) => self.resolve_profile(),
        }
        self.check()
    }

    /// The end of a step: an error kept since an op failed is returned
    /// and cleared, so the next step runs (an allocation the device could
    /// not satisfy need not end the engine; a fault that breaks the
    /// context fails the next step again by itself).
    fn end_step(&self) -> Result<()> {
        match self.error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => Err(ModelError::Device(e)),
            None => Ok(()),
        }
    }

    fn check(&self) -> Result<()> {
        match &*self.error.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(ModelError::Device(e.clone())),
            None => Ok(()),
        }
    }

    fn failed(&self) -> bool {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    fn fail(&self, message: String) {
        let mut e = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if e.is_none() {
            tracing::error!(target: "strata::cuda", "device error: {message}");
            *e = Some(message);
        }
    }

    fn launch(&self, k: Kernel<'_>, grid: (u32, u32, u32), block: u32, args: &[Arg]) {
        if self.failed() || grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return;
        }
        let timer = self.start_timer();
        let mut b = self.stream.launch_builder(k.f);
        for a in args {
            match a {
                Arg::Ptr(p) => b.arg(p),
                Arg::I32(i) => b.arg(i),
                Arg::F32(x) => b.arg(x),
            };
        }
        let cfg = LaunchConfig { grid_dim: grid, block_dim: (block, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: every kernel's arguments are listed in its declared order
        // and types by the callers below; pointers are live device memory
        // of the sizes the grid covers.
        if let Err(e) = unsafe { b.launch(cfg) } {
            self.fail(format!("kernel launch `{}`: {e:?}", k.name));
        }
        self.stop_timer(k.name, timer);
    }

    /// A row kernel: one block of [`kernels::ROW_THREADS`] per row.
    fn launch_rows(&self, name: &'static str, rows: usize, args: &[Arg]) {
        self.launch(self.common(name), (rows as u32, 1, 1), kernels::ROW_THREADS, args);
    }

    fn common(&self, name: &'static str) -> Kernel<'_> {
        Kernel { name, f: &self.common[name] }
    }

    fn gemm(&self, x: &CudaTensor, w: &CudaWeight, out: &CudaTensor) -> Result<()> {
        let (m, k, n) = (x.rows, x.cols, w.rows);
        let (b_ptr, b_type, ldb, _staged) = match w.dtype {
            DType::F32 => (x.ptr, blas_sys::cudaDataType::CUDA_R_32F, x.stride, None),
            DType::BF16 | DType::F16 => {
                let (kernel, ty) = if w.dtype == DType::BF16 {
                    ("cast_bf16", blas_sys::cudaDataType::CUDA_R_16BF)
                } else {
                    ("cast_f16", blas_sys::cudaDataType::CUDA_R_16F)
                };
                let staged = self.alloc(m * k * 2)?;
                self.launch_rows(
                    kernel,
                    m,
                    &[Arg::Ptr(x.ptr), int(x.stride), Arg::Ptr(staged.ptr), int(k)],
                );
                (staged.ptr, ty, k, Some(staged))
            }
        };
        let a_type = match w.dtype {
            DType::F32 => blas_sys::cudaDataType::CUDA_R_32F,
            DType::F16 => blas_sys::cudaDataType::CUDA_R_16F,
            DType::BF16 => blas_sys::cudaDataType::CUDA_R_16BF,
        };
        let (alpha, beta) = (1.0f32, 0.0f32);
        let timer = self.start_timer();
        // Row-major out[m, n] = x[m, k] W[n, k]^T is, column-major,
        // out^T[n, m] = W^T · x^T: A = W (transposed), B = x.
        // SAFETY: pointers are live device buffers of these shapes; the
        // scalars live across the call (host pointer mode).
        unsafe {
            blas_result::gemm_ex(
                *self.blas.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                n as i32,
                m as i32,
                k as i32,
                (&alpha as *const f32).cast(),
                w.buf.ptr as *const _,
                a_type,
                k as i32,
                b_ptr as *const _,
                b_type,
                ldb as i32,
                (&beta as *const f32).cast(),
                out.ptr as *mut _,
                blas_sys::cudaDataType::CUDA_R_32F,
                out.stride as i32,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DFALT,
            )
        }
        .map_err(|e| dev_err("cublasGemmEx", e))?;
        self.stop_timer("cublas_gemm", timer);
        // The staged copy is freed in stream order after the GEMM.
        Ok(())
    }
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Weight = CudaWeight;
    type KvLayer = CudaKvLayer;
    type Step = CudaStep;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn upload(&self, tensor: HostTensor) -> Result<CudaWeight> {
        let (rows, cols) = (tensor.rows(), tensor.cols());
        let data =
            if tensor.shape.len() == 1 { tensor.data.convert(DType::F32) } else { tensor.data };
        plan::check_dims(rows, cols).map_err(ModelError::Device)?;
        let (dtype, buf) = match &data {
            HostData::F32(v) => (DType::F32, self.upload_bytes(bytemuck::cast_slice(v))?),
            HostData::F16(v) => (DType::F16, self.upload_bytes(bytemuck::cast_slice(v))?),
            HostData::BF16(v) => (DType::BF16, self.upload_bytes(bytemuck::cast_slice(v))?),
            HostData::Quant(q) => {
                return Err(ModelError::Device(format!(
                    "GGUF block-format weights ({q:?}) run on the CPU backend only \
                     (--device cpu); the CUDA backend takes F32, F16 and BF16 tensors"
                )))
            }
        };
        Ok(CudaWeight { buf, rows, cols, dtype })
    }

    fn alloc_kv_layer(&self, num_slots: usize, kv_width: usize) -> Result<CudaKvLayer> {
        let bytes = num_slots
            .checked_mul(kv_width)
            .and_then(|n| n.checked_mul(4))
            .ok_or_else(|| ModelError::KvCache("KV pool size overflows".into()))?;
        let k = self.alloc(bytes).map_err(|e| ModelError::KvCache(e.to_string()))?;
        let v = self.alloc(bytes).map_err(|e| ModelError::KvCache(e.to_string()))?;
        // Zeroed, as the CPU's pool is: the slots of a partly filled block
        // that KV connectors copy are then the same bytes on both.
        for buf in [&k, &v] {
            // SAFETY: `buf` holds `bytes` bytes, on this stream.
            unsafe { drv::memset_d8_async(buf.ptr, 0, bytes, self.stream.cu_stream()) }
                .map_err(|e| dev_err("zeroing the KV pool", e))?;
        }
        Ok(CudaKvLayer { k, v, kv_width, num_slots })
    }

    fn prepare_step(&self, meta: &StepMetadata) -> Result<CudaStep> {
        self.check()?;
        let (layout, packed) = plan::pack_step(meta);
        let max_keys = meta.positions.iter().map(|&p| p as usize + 1).max().unwrap_or(0);
        let bytes: &[u8] = bytemuck::cast_slice(&packed);
        let graphs = self.graphs.as_ref().filter(|_| meta.graph);
        let Some(graphs) = graphs else {
            let buf = self.upload_bytes(bytes)?;
            return Ok(CudaStep {
                base: buf.ptr,
                _owned: Some(buf),
                layout,
                block_size: meta.block_size,
                max_keys,
                graph_bucket: None,
            });
        };
        self.graph_step(graphs, meta.num_tokens(), bytes, layout, meta.block_size, max_keys)
    }

    fn rows(&self, x: &CudaTensor) -> usize {
        x.rows
    }

    fn cols(&self, x: &CudaTensor) -> usize {
        x.cols
    }

    fn embedding(&self, table: &CudaWeight, step: &CudaStep) -> CudaTensor {
        let rows = step.layout.num_tokens;
        let out = self.tensor(rows, table.cols);
        let name = match table.dtype {
            DType::F32 => "embedding_f32",
            DType::F16 => "embedding_f16",
            DType::BF16 => "embedding_bf16",
        };
        self.launch_rows(
            name,
            rows,
            &[
                Arg::Ptr(table.buf.ptr),
                Arg::Ptr(step.at(step.layout.token_ids)),
                Arg::Ptr(out.ptr),
                int(rows),
                int(table.cols),
            ],
        );
        out
    }

    fn rms_norm(&self, x: &CudaTensor, w: &CudaWeight, eps: f32) -> CudaTensor {
        let out = self.tensor(x.rows, x.cols);
        self.launch_rows(
            "rms_norm",
            x.rows,
            &[
                Arg::Ptr(x.ptr),
                int(x.stride),
                Arg::Ptr(w.buf.ptr),
                Arg::Ptr(out.ptr),
                int(out.stride),
                int(x.cols),
                Arg::F32(eps),
            ],
        );
        out
    }

    fn rms_norm_heads(&self, x: &mut CudaTensor, w: &CudaWeight, head_dim: usize, eps: f32) {
        self.launch(
            self.common("rms_norm_heads"),
            (x.rows as u32, (x.cols / head_dim) as u32, 1),
            32,
            &[Arg::Ptr(x.ptr), int(x.stride), Arg::Ptr(w.buf.ptr), int(head_dim), Arg::F32(eps)],
        );
    }

    fn linear(&self, x: &CudaTensor, w: &CudaWeight, bias: Option<&CudaWeight>) -> CudaTensor {
        let out = self.tensor(x.rows, w.rows);
        if x.rows <= kernels::GEMV_MAX_M {
            let name = match w.dtype {
                DType::F32 => "gemv_f32",
                DType::F16 => "gemv_f16",
                DType::BF16 => "gemv_bf16",
            };
            self.launch(
                self.common(name),
                (plan::gemv_blocks(w.rows), 1, 1),
                32 * kernels::GEMV_ROWS_PER_BLOCK,
                &[
                    Arg::Ptr(w.buf.ptr),
                    Arg::Ptr(x.ptr),
                    int(x.stride),
                    Arg::Ptr(bias.map_or(0, |b| b.buf.ptr)),
                    Arg::Ptr(out.ptr),
                    int(out.stride),
                    int(x.rows),
                    int(w.rows),
                    int(w.cols),
                ],
            );
        } else {
            if !self.failed() {
                if let Err(e) = self.gemm(x, w, &out) {
                    self.fail(e.to_string());
                }
            }
            if let Some(b) = bias {
                self.launch_rows(
                    "add_bias",
                    x.rows,
                    &[Arg::Ptr(out.ptr), int(out.stride), Arg::Ptr(b.buf.ptr), int(w.rows)],
                );
            }
        }
        out
    }

    fn split_cols(&self, x: &CudaTensor, widths: &[usize]) -> Vec<CudaTensor> {
        let mut start = 0;
        widths
            .iter()
            .map(|&w| {
                let view = CudaTensor {
                    buf: x.buf.clone(),
                    ptr: if x.ptr == 0 { 0 } else { x.ptr + 4 * start as u64 },
                    rows: x.rows,
                    cols: w,
                    stride: x.stride,
                };
                start += w;
                view
            })
            .collect()
    }

    fn rope(
        &self,
        x: &mut CudaTensor,
        head_dim: usize,
        table: &CudaWeight,
        step: &CudaStep,
        interleaved: bool,
    ) {
        self.launch_rows(
            "rope",
            x.rows,
            &[
                Arg::Ptr(x.ptr),
                int(x.stride),
                Arg::Ptr(table.buf.ptr),
                Arg::Ptr(step.at(step.layout.positions)),
                int(x.cols / head_dim),
                int(head_dim),
                Arg::I32(i32::from(interleaved)),
            ],
        );
    }

    fn silu_mul(&self, gate_up: &CudaTensor) -> CudaTensor {
        let inter = gate_up.cols / 2;
        let out = self.tensor(gate_up.rows, inter);
        self.launch_rows(
            "silu_mul",
            gate_up.rows,
            &[Arg::Ptr(gate_up.ptr), int(gate_up.stride), Arg::Ptr(out.ptr), int(inter)],
        );
        out
    }

    fn add_assign(&self, x: &mut CudaTensor, y: &CudaTensor) {
        self.launch_rows(
            "add_assign",
            x.rows,
            &[Arg::Ptr(x.ptr), int(x.stride), Arg::Ptr(y.ptr), int(y.stride), int(x.cols)],
        );
    }

    fn write_kv(&self, layer: &mut CudaKvLayer, k: &CudaTensor, v: &CudaTensor, step: &CudaStep) {
        self.launch_rows(
            "write_kv",
            k.rows,
            &[
                Arg::Ptr(layer.k.ptr),
                Arg::Ptr(layer.v.ptr),
                Arg::Ptr(k.ptr),
                int(k.stride),
                Arg::Ptr(v.ptr),
                int(v.stride),
                Arg::Ptr(step.at(step.layout.slot_mapping)),
                int(layer.kv_width),
            ],
        );
    }

    fn paged_attention(
        &self,
        q: &CudaTensor,
        layer: &CudaKvLayer,
        shape: AttentionShape,
        step: &CudaStep,
    ) -> CudaTensor {
        let out = self.tensor(q.rows, q.cols);
        if self.failed() {
            return out;
        }
        let group = shape.num_heads / shape.num_kv_heads.max(1);
        if group == 0
            || group > kernels::MAX_GROUP
            || !shape.num_heads.is_multiple_of(shape.num_kv_heads.max(1))
        {
            self.fail(format!(
                "attention with {} query heads over {} KV heads is not supported by the CUDA \
                 kernels (at most {} query heads per KV head)",
                shape.num_heads,
                shape.num_kv_heads,
                kernels::MAX_GROUP
            ));
            return out;
        }
        let (attn, reduce) = match self.attention_fns(shape.head_dim) {
            Ok(f) => f,
            Err(e) => {
                self.fail(e.to_string());
                return out;
            }
        };
        let tokens = q.rows;
        // A graph replays one launch shape for every context length: its
        // segment count is the one for the longest context.
        let keys = if step.graph_bucket.is_some() { usize::MAX } else { step.max_keys };
        let segments = plan::attention_segments(tokens, shape.num_kv_heads, keys, &self.info);
        let mut parts = None;
        if segments > 1 {
            let n = tokens * shape.num_heads * segments;
            match (self.alloc(n * shape.head_dim * 4), self.alloc(n * 2 * 4)) {
                (Ok(o), Ok(ml)) => parts = Some((o, ml)),
                (Err(e), _) | (_, Err(e)) => {
                    self.fail(e.to_string());
                    return out;
                }
            }
        }
        let (po, pml) = parts.as_ref().map_or((0, 0), |(o, ml)| (o.ptr, ml.ptr));
        self.launch(
            Kernel { name: "paged_attention", f: &attn },
            (tokens as u32, shape.num_kv_heads as u32, segments as u32),
            32 * group as u32,
            &[
                Arg::Ptr(q.ptr),
                int(q.stride),
                Arg::Ptr(layer.k.ptr),
                Arg::Ptr(layer.v.ptr),
                int(layer.kv_width),
                Arg::Ptr(step.at(step.layout.positions)),
                Arg::Ptr(step.at(step.layout.token_seq)),
                Arg::Ptr(step.at(step.layout.seqs)),
                Arg::Ptr(step.at(step.layout.block_tables)),
                int(step.block_size),
                int(group),
                Arg::F32(shape.scale),
                Arg::Ptr(out.ptr),
                int(out.stride),
                Arg::Ptr(po),
                Arg::Ptr(pml),
            ],
        );
        if segments > 1 {
            self.launch(
                Kernel { name: "attention_reduce", f: &reduce },
                (tokens as u32, shape.num_heads as u32, 1),
                32,
                &[Arg::Ptr(po), Arg::Ptr(pml), int(segments), Arg::Ptr(out.ptr), int(out.stride)],
            );
        }
        out
    }

    fn read_kv_slots(&self, layer: &CudaKvLayer, slots: std::ops::Range<usize>, out: &mut [u8]) {
        let row = layer.kv_width * 4;
        let half = slots.len() * row;
        assert!(slots.end <= layer.num_slots, "invariant: slots within the pool");
        let at = slots.start as u64 * row as u64;
        let (k, v) = out[..2 * half].split_at_mut(half);
        let r = self.copy_to_host_parts(&mut [(layer.k.ptr + at, k), (layer.v.ptr + at, v)]);
        if let Err(e) = r {
            self.fail(e.to_string());
        }
    }

    fn write_kv_slots(&self, layer: &mut CudaKvLayer, slots: std::ops::Range<usize>, data: &[u8]) {
        let row = layer.kv_width * 4;
        let half = slots.len() * row;
        assert!(slots.end <= layer.num_slots, "invariant: slots within the pool");
        let at = slots.start as u64 * row as u64;
        let (k, v) = data[..2 * half].split_at(half);
        let r = self.copy_from_host_parts(&[(layer.k.ptr + at, k), (layer.v.ptr + at, v)]);
        if let Err(e) = r {
            self.fail(e.to_string());
        }
    }

    fn select_rows(&self, x: &CudaTensor, rows: &[usize]) -> CudaTensor {
        // The first rows in order (every decode step): a view, so nothing
        // is uploaded inside a captured graph.
        if rows.iter().copied().eq(0..rows.len()) && rows.len() <= x.rows {
            return CudaTensor {
                buf: x.buf.clone(),
                ptr: x.ptr,
                rows: rows.len(),
                cols: x.cols,
                stride: x.stride,
            };
        }
        let out = self.tensor(rows.len(), x.cols);
        if self.failed() || rows.is_empty() {
            return out;
        }
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        match self.upload_bytes(bytemuck::cast_slice(&idx)) {
            Ok(ibuf) => self.launch_rows(
                "select_rows",
                rows.len(),
                &[
                    Arg::Ptr(x.ptr),
                    int(x.stride),
                    Arg::Ptr(ibuf.ptr),
                    Arg::Ptr(out.ptr),
                    int(x.cols),
                ],
            ),
            Err(e) => self.fail(e.to_string()),
        }
        out
    }

    fn to_host(&self, x: &CudaTensor) -> Result<Vec<f32>> {
        let out = self.read_logits(x);
        // An error while reading is this step's too: cleared with it.
        let _ = self.end_step();
        out
    }

    fn argmax_rows(&self, x: &CudaTensor) -> Option<Result<Vec<u32>>> {
        let ids = self.end_step().and_then(|()| {
            let out = self.alloc(4 * x.rows)?;
            self.launch(
                self.common("argmax_rows"),
                (x.rows as u32, 1, 1),
                1024,
                &[Arg::Ptr(x.ptr), int(x.stride), int(x.cols), Arg::Ptr(out.ptr)],
            );
            let mut ids = vec![0u32; x.rows];
            self.copy_to_host_bytes(out.ptr, bytemuck::cast_slice_mut(&mut ids))?;
            Ok(ids)
        });
        let _ = self.end_step();
        Some(ids)
    }

    fn graph_bucket(&self, num_tokens: usize) -> Option<usize> {
        self.graphs.as_ref().and(plan::graph_bucket(num_tokens))
    }

    fn run_forward(&self, step: &CudaStep, forward: &mut dyn FnMut() -> CudaTensor) -> CudaTensor {
        self.run_graphed(step, forward)
    }
}

impl CudaBackend {
    /// [`Backend::to_host`] before its error is cleared.
    fn read_logits(&self, x: &CudaTensor) -> Result<Vec<f32>> {
        self.end_step()?;
        let dense;
        let src = if x.is_dense() {
            x
        } else {
            dense = self.tensor(x.rows, x.cols);
            self.launch_rows(
                "copy_rows",
                x.rows,
                &[Arg::Ptr(x.ptr), int(x.stride), Arg::Ptr(dense.ptr), int(x.cols)],
            );
            &dense
        };
        let mut out = vec![0.0f32; x.rows * x.cols];
        self.copy_to_host_bytes(src.ptr, bytemuck::cast_slice_mut(&mut out))?;
        Ok(out)
    }
}
