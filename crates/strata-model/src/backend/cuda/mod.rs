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
//! The trait's operations cannot return errors (the CPU backend has none
//! to return). A device error here (a failed launch, an allocation the
//! device cannot satisfy) is kept, the operations after it do nothing, and
//! the first one is returned by the next [`Backend::to_host`]: the step
//! fails with the device's message, as a CUDA context's sticky errors would
//! make it fail anyway.
//!
//! - Decode steps of up to 256 sequences are padded to a bucket
//!   ([`plan::GRAPH_BUCKETS`]) and, from a bucket's second step on,
//!   captured once as a CUDA graph and replayed: one launch per step instead of one per op, which
//!   is what bounds small models' decode. The graph's activations are
//!   captured stream-ordered allocations, so they get the same addresses
//!   on every replay; the step's metadata goes into the bucket's fixed
//!   buffer before each launch. `CudaOptions::enforce_eager` turns this
//!   off (vLLM's `--enforce-eager`).
//!
//! Not here yet: bf16 KV, tensor-core attention for long prefills, device-side
//! sampling.

pub mod kernels;
pub mod locate;
pub mod nvrtc;
pub mod plan;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublas::{result as blas_result, sys as blas_sys, CudaBlas};
use cudarc::driver::{result as drv, sys as drv_sys, CudaContext, CudaFunction, CudaStream};
use cudarc::driver::{LaunchConfig, PushKernelArg};

use super::{AttentionShape, Backend, StepMetadata};
use crate::error::{ModelError, Result};
use crate::weights::{DType, HostData, HostTensor};

/// What the start-up log and `/metrics` say about the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub compute_capability: (i32, i32),
    pub multiprocessors: u32,
    pub total_memory: usize,
    /// `(major, minor)` of the CUDA version the driver supports.
    pub driver_version: (i32, i32),
    pub nvrtc_version: (i32, i32),
    pub cublas_version: i32,
    /// Libraries opened by path, for the log.
    pub libraries: Vec<String>,
}

/// Device memory from a stream-ordered allocation, freed on drop.
#[derive(Debug)]
struct DevBuf {
    ptr: u64,
    stream: Arc<CudaStream>,
    pooled: bool,
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        if self.ptr == 0 {
            return;
        }
        let _ = self.stream.context().bind_to_thread();
        // SAFETY: `ptr` came from the matching allocation call and is
        // freed once; stream order keeps it alive for queued kernels.
        unsafe {
            let _ = if self.pooled {
                drv::free_async(self.ptr, self.stream.cu_stream())
            } else {
                drv::free_sync(self.ptr)
            };
        }
    }
}

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
struct GraphSlot {
    meta: DevBuf,
    /// Capacity of `meta` in u32s.
    capacity: usize,
    state: GraphState,
}

/// A kernel to launch, with its name for the profile.
#[derive(Clone, Copy)]
struct Kernel<'a> {
    name: &'static str,
    f: &'a CudaFunction,
}

/// Per-op GPU time, with `STRATA_CUDA_PROFILE=1`: CUDA events around every
/// launch and GEMM, resolved when a step's result is read.
#[derive(Default)]
struct Profile {
    pending: Vec<(&'static str, cudarc::driver::CudaEvent, cudarc::driver::CudaEvent)>,
    /// Calls and milliseconds per op.
    totals: HashMap<&'static str, (u64, f64)>,
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

/// Bytes of cuBLAS workspace (what PyTorch gives it on Hopper).
const BLAS_WORKSPACE: usize = 32 << 20;

/// How the CUDA backend runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CudaOptions {
    /// Run every step op by op, never through a captured graph (vLLM's
    /// `--enforce-eager`).
    pub enforce_eager: bool,
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
    /// Opens device `ordinal` with CUDA graphs for decode steps.
    pub fn new(ordinal: usize) -> Result<Self> {
        Self::with_options(ordinal, CudaOptions::default())
    }

    /// Opens device `ordinal`: finds the libraries, creates the context
    /// and stream, compiles (or loads from the cache) the common kernels.
    pub fn with_options(ordinal: usize, options: CudaOptions) -> Result<Self> {
        let located = locate::load_libraries(true).map_err(ModelError::Device)?;
        let count = CudaContext::device_count().map_err(|e| dev_err("cuDeviceGetCount", e))?;
        if ordinal >= count.max(0) as usize {
            return Err(ModelError::Device(format!(
                "no CUDA device {ordinal}: the driver reports {count} device(s)"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| dev_err("cuCtxCreate", e))?;
        // SAFETY: nothing has been allocated on this context yet; strata
        // orders its work on one stream and needs no per-slice events.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|e| dev_err("cuStreamCreate", e))?;
        let blas = CudaBlas::new(stream.clone()).map_err(|e| dev_err("cublasCreate", e))?;
        let cc = ctx.compute_capability().map_err(|e| dev_err("compute capability", e))?;
        let mut cublas_version = 0;
        // SAFETY: a live handle and an out-pointer.
        unsafe { blas_sys::cublasGetVersion_v2(*blas.handle(), &mut cublas_version) };
        let mut driver = 0;
        // SAFETY: an out-pointer.
        unsafe { drv_sys::cuDriverGetVersion(&mut driver) };
        let info = DeviceInfo {
            ordinal,
            name: ctx.name().map_err(|e| dev_err("device name", e))?,
            compute_capability: cc,
            multiprocessors: ctx
                .attribute(drv_sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .map_err(|e| dev_err("SM count", e))? as u32,
            total_memory: ctx.total_mem().map_err(|e| dev_err("total memory", e))?,
            driver_version: (driver / 1000, driver % 1000 / 10),
            nvrtc_version: nvrtc::version().map_err(ModelError::Device)?,
            cublas_version,
            libraries: located.loaded.iter().map(|(_, p)| p.display().to_string()).collect(),
        };
        let kernel_cache = nvrtc::cache_dir();
        let common = load_module(&ctx, "common", &kernels::common_source(), cc, &kernel_cache)?;
        let common = kernels::COMMON_ENTRIES
            .iter()
            .map(|&name| {
                common.load_function(name).map(|f| (name, f)).map_err(|e| dev_err(name, e))
            })
            .collect::<Result<HashMap<_, _>>>()?;
        let pooled = ctx.has_async_alloc();
        let profile = std::env::var_os("STRATA_CUDA_PROFILE").is_some_and(|v| v != "0");
        // SAFETY: a plain allocation on this context, owned by the backend
        // for as long as the cuBLAS handle that uses it.
        let workspace = unsafe { drv::malloc_sync(BLAS_WORKSPACE) }
            .map_err(|e| dev_err("allocating cuBLAS's workspace", e))?;
        let workspace = DevBuf { ptr: workspace, stream: stream.clone(), pooled: false };
        // SAFETY: a live handle and `BLAS_WORKSPACE` bytes of device memory
        // that outlive it (dropped after `blas`: fields drop in order).
        unsafe {
            blas_sys::cublasSetWorkspace_v2(*blas.handle(), workspace.ptr as *mut _, BLAS_WORKSPACE)
        }
        .result()
        .map_err(|e| dev_err("cublasSetWorkspace", e))?;
        if pooled {
            // Keep freed activation memory in the pool across the
            // synchronisation at every step's end (the default threshold,
            // 0, hands it back to the OS each time, and the next step maps
            // it again).
            let mut pool = std::ptr::null_mut();
            let mut keep = u64::MAX;
            // SAFETY: out-pointer and attribute value are live locals; the
            // pool is the device's default one.
            unsafe {
                drv_sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()).result().and_then(
                    |()| {
                        drv_sys::cuMemPoolSetAttribute(
                            pool,
                            drv_sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                            (&mut keep as *mut u64).cast(),
                        )
                        .result()
                    },
                )
            }
            .map_err(|e| dev_err("memory pool release threshold", e))?;
        }
        Ok(Self {
            pooled,
            graphs: (pooled && !options.enforce_eager && !profile)
                .then(|| Mutex::new(HashMap::new())),
            _blas_workspace: workspace,
            profile: profile.then(|| Mutex::new(Profile::default())),
            ctx,
            stream,
            blas,
            common,
            attention: Mutex::new(HashMap::new()),
            kernel_cache,
            error: Mutex::new(None),
            info,
        })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Bytes of device memory free and in total.
    pub fn memory(&self) -> Result<(usize, usize)> {
        self.ctx.mem_get_info().map_err(|e| dev_err("cuMemGetInfo", e))
    }

    /// Waits for queued work and returns the first device error, if any.
    pub fn synchronize(&self) -> Result<()> {
        if let Err(e) = self.stream.synchronize() {
            self.fail(format!("stream: {e:?}"));
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

    fn alloc(&self, bytes: usize) -> Result<DevBuf> {
        let bytes = bytes.max(4);
        self.ctx.bind_to_thread().map_err(|e| dev_err("bind context", e))?;
        // SAFETY: plain allocations on this context; freed by `DevBuf`.
        let ptr = unsafe {
            if self.pooled {
                drv::malloc_async(self.stream.cu_stream(), bytes)
            } else {
                drv::malloc_sync(bytes)
            }
        }
        .map_err(|e| dev_err(&format!("allocating {bytes} bytes of device memory"), e))?;
        Ok(DevBuf { ptr, stream: self.stream.clone(), pooled: self.pooled })
    }

    /// An uninitialised dense tensor, or (after a device error) an empty
    /// one that no kernel will touch.
    fn tensor(&self, rows: usize, cols: usize) -> CudaTensor {
        let buf = if self.failed() {
            None
        } else {
            match self.alloc(rows * cols * 4) {
                Ok(b) => Some(b),
                Err(e) => {
                    self.fail(e.to_string());
                    None
                }
            }
        };
        let buf =
            buf.unwrap_or(DevBuf { ptr: 0, stream: self.stream.clone(), pooled: self.pooled });
        let ptr = buf.ptr;
        CudaTensor { buf: Arc::new(buf), ptr, rows, cols, stride: cols }
    }

    fn upload_bytes(&self, bytes: &[u8]) -> Result<DevBuf> {
        let buf = self.alloc(bytes.len())?;
        // SAFETY: `buf` holds `bytes.len()` bytes; the copy is waited for
        // before `bytes` can go away.
        unsafe { drv::memcpy_htod_async(buf.ptr, bytes, self.stream.cu_stream()) }
            .map_err(|e| dev_err("host-to-device copy", e))?;
        self.stream.synchronize().map_err(|e| dev_err("host-to-device copy", e))?;
        Ok(buf)
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

    fn common(&self, name: &'static str) -> Kernel<'_> {
        Kernel { name, f: &self.common[name] }
    }

    /// With profiling on, the start and end events of an op, both created
    /// before the start is recorded (creating one inside the timed span
    /// would count host time when the GPU waits for the host).
    fn start_timer(&self) -> Option<(cudarc::driver::CudaEvent, cudarc::driver::CudaEvent)> {
        self.profile.as_ref()?;
        let flags = Some(drv_sys::CUevent_flags::CU_EVENT_DEFAULT);
        let (start, end) = (self.ctx.new_event(flags).ok()?, self.ctx.new_event(flags).ok()?);
        start.record(&self.stream).ok()?;
        Some((start, end))
    }

    fn stop_timer(
        &self,
        name: &'static str,
        timer: Option<(cudarc::driver::CudaEvent, cudarc::driver::CudaEvent)>,
    ) {
        let (Some(profile), Some((start, end))) = (&self.profile, timer) else { return };
        if end.record(&self.stream).is_ok() {
            profile.lock().unwrap_or_else(|p| p.into_inner()).pending.push((name, start, end));
        }
    }

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

    /// Per-op GPU time since the last call, `(op, calls, milliseconds)`,
    /// most time first; `None` unless `STRATA_CUDA_PROFILE=1`.
    pub fn take_profile(&self) -> Option<Vec<(&'static str, u64, f64)>> {
        let profile = self.profile.as_ref()?;
        let _ = self.stream.synchronize();
        let mut p = profile.lock().unwrap_or_else(|p| p.into_inner());
        Self::resolve(&mut p);
        let mut rows: Vec<_> = p.totals.drain().map(|(k, (n, ms))| (k, n, ms)).collect();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        Some(rows)
    }

    /// Adds the elapsed time of recorded event pairs (after a sync).
    fn resolve(p: &mut Profile) {
        for (name, start, end) in std::mem::take(&mut p.pending) {
            if let Ok(ms) = start.elapsed_ms(&end) {
                let t = p.totals.entry(name).or_default();
                t.0 += 1;
                t.1 += f64::from(ms);
            }
        }
    }

    fn attention_fns(&self, head_dim: usize) -> Result<(CudaFunction, CudaFunction)> {
        let mut fns = self.attention.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = fns.get(&head_dim) {
            return Ok(f.clone());
        }
        let m = load_module(
            &self.ctx,
            &format!("attention_hd{head_dim}"),
            &kernels::attention_source(head_dim),
            self.info.compute_capability,
            &self.kernel_cache,
        )?;
        let pair = (
            m.load_function("paged_attention").map_err(|e| dev_err("paged_attention", e))?,
            m.load_function("attention_reduce").map_err(|e| dev_err("attention_reduce", e))?,
        );
        fns.insert(head_dim, pair.clone());
        Ok(pair)
    }

    /// The device's sustained read bandwidth in bytes per second: one
    /// kernel streams `bytes` of device memory `reps` times.
    pub fn measure_read_bandwidth(&self, bytes: usize, reps: u32) -> Result<f64> {
        let buf = self.alloc(bytes)?;
        let sink = self.alloc(4)?;
        let n = (bytes / 16) as i64;
        let blocks = self.info.multiprocessors * 8;
        // `long n` is 8 bytes: passed as a pointer-sized value.
        let args = [Arg::Ptr(buf.ptr), Arg::Ptr(n as u64), Arg::Ptr(sink.ptr)];
        self.launch(self.common("read_bandwidth"), (blocks, 1, 1), 256, &args);
        self.synchronize()?;
        let start = std::time::Instant::now();
        for _ in 0..reps {
            self.launch(self.common("read_bandwidth"), (blocks, 1, 1), 256, &args);
        }
        self.synchronize()?;
        Ok(bytes as f64 * f64::from(reps) / start.elapsed().as_secs_f64())
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
                self.launch(
                    self.common(kernel),
                    (m as u32, 1, 1),
                    kernels::ROW_THREADS,
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

    fn copy_to_host_bytes(&self, src: u64, out: &mut [u8]) -> Result<()> {
        self.copy_to_host_parts(&mut [(src, out)])
    }

    /// Device-to-host copies, queued together, then one wait.
    fn copy_to_host_parts(&self, parts: &mut [(u64, &mut [u8])]) -> Result<()> {
        self.check()?;
        self.ctx.bind_to_thread().map_err(|e| dev_err("bind context", e))?;
        for (src, out) in parts.iter_mut().filter(|(_, o)| !o.is_empty()) {
            // SAFETY: `src` holds at least `out.len()` bytes (callers'
            // ranges are within their buffers); waited for below, before
            // `out` can be read or go away.
            unsafe { drv::memcpy_dtoh_async(out, *src, self.stream.cu_stream()) }
                .map_err(|e| dev_err("device-to-host copy", e))?;
        }
        self.synchronize()
    }

    fn copy_from_host_bytes(&self, dst: u64, data: &[u8]) -> Result<()> {
        self.copy_from_host_parts(&[(dst, data)])
    }

    /// Host-to-device copies, queued together, then one wait.
    fn copy_from_host_parts(&self, parts: &[(u64, &[u8])]) -> Result<()> {
        self.check()?;
        self.ctx.bind_to_thread().map_err(|e| dev_err("bind context", e))?;
        for (dst, data) in parts.iter().filter(|(_, d)| !d.is_empty()) {
            // SAFETY: `dst` holds at least `data.len()` bytes; waited for
            // below, before `data` can go away.
            unsafe { drv::memcpy_htod_async(*dst, data, self.stream.cu_stream()) }
                .map_err(|e| dev_err("host-to-device copy", e))?;
        }
        self.synchronize()
    }
}

fn load_module(
    ctx: &Arc<CudaContext>,
    name: &str,
    src: &str,
    cc: (i32, i32),
    cache: &Option<std::path::PathBuf>,
) -> Result<Arc<cudarc::driver::CudaModule>> {
    let (image, cached) =
        nvrtc::compile_cached(name, src, cc, cache.as_deref()).map_err(ModelError::Device)?;
    tracing::debug!(target: "strata::cuda", module = name, cached, "kernels ready");
    let ptx = match image {
        nvrtc::Image::Cubin(b) => cudarc::nvrtc::Ptx::from_binary(b),
        nvrtc::Image::Ptx(s) => cudarc::nvrtc::Ptx::from_src(s),
    };
    ctx.load_module(ptx).map_err(|e| {
        let mut driver = 0;
        // SAFETY: an out-pointer.
        unsafe { drv_sys::cuDriverGetVersion(&mut driver) };
        let nvrtc = nvrtc::version().unwrap_or((0, 0));
        ModelError::Device(format!(
            "loading kernels `{name}` (compiled by NVRTC {}.{} for sm_{}{}) failed: {e:?}; the \
             driver supports CUDA {}.{}: an NVRTC newer than the driver makes code it cannot \
             load (point STRATA_CUDA_LIB_DIR at an NVRTC no newer than the driver)",
            nvrtc.0,
            nvrtc.1,
            cc.0,
            cc.1,
            driver / 1000,
            driver % 1000 / 10
        ))
    })
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
        // A padded decode step: into its bucket's buffer, whose address a
        // captured graph holds. A step that outgrows the buffer (longer
        // block tables) gets a new one, twice as large, and a new graph.
        let bucket = meta.num_tokens();
        let mut graphs = graphs.lock().unwrap_or_else(|p| p.into_inner());
        if graphs.get(&bucket).is_none_or(|g| g.capacity < packed.len()) {
            let capacity = (2 * packed.len()).max(4096);
            let slot =
                GraphSlot { meta: self.alloc(4 * capacity)?, capacity, state: GraphState::Cold };
            graphs.insert(bucket, slot);
        }
        let slot = graphs.get(&bucket).expect("invariant: inserted above");
        self.copy_from_host_bytes(slot.meta.ptr, bytes)?;
        Ok(CudaStep {
            _owned: None,
            base: slot.meta.ptr,
            layout,
            block_size: meta.block_size,
            max_keys,
            graph_bucket: Some(bucket),
        })
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
        self.launch(
            self.common(name),
            (rows as u32, 1, 1),
            kernels::ROW_THREADS,
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
        self.launch(
            self.common("rms_norm"),
            (x.rows as u32, 1, 1),
            kernels::ROW_THREADS,
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
                self.launch(
                    self.common("add_bias"),
                    (x.rows as u32, 1, 1),
                    kernels::ROW_THREADS,
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
        self.launch(
            self.common("rope"),
            (x.rows as u32, 1, 1),
            kernels::ROW_THREADS,
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
        self.launch(
            self.common("silu_mul"),
            (gate_up.rows as u32, 1, 1),
            kernels::ROW_THREADS,
            &[Arg::Ptr(gate_up.ptr), int(gate_up.stride), Arg::Ptr(out.ptr), int(inter)],
        );
        out
    }

    fn add_assign(&self, x: &mut CudaTensor, y: &CudaTensor) {
        self.launch(
            self.common("add_assign"),
            (x.rows as u32, 1, 1),
            kernels::ROW_THREADS,
            &[Arg::Ptr(x.ptr), int(x.stride), Arg::Ptr(y.ptr), int(y.stride), int(x.cols)],
        );
    }

    fn write_kv(&self, layer: &mut CudaKvLayer, k: &CudaTensor, v: &CudaTensor, step: &CudaStep) {
        self.launch(
            self.common("write_kv"),
            (k.rows as u32, 1, 1),
            kernels::ROW_THREADS,
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
            || shape.num_heads % shape.num_kv_heads.max(1) != 0
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
            Ok(ibuf) => self.launch(
                self.common("select_rows"),
                (rows.len() as u32, 1, 1),
                kernels::ROW_THREADS,
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
            if let Some(p) = &self.profile {
                Self::resolve(&mut p.lock().unwrap_or_else(|p| p.into_inner()));
            }
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
            self.launch(
                self.common("copy_rows"),
                (x.rows as u32, 1, 1),
                kernels::ROW_THREADS,
                &[Arg::Ptr(x.ptr), int(x.stride), Arg::Ptr(dense.ptr), int(x.cols)],
            );
            &dense
        };
        let mut out = vec![0.0f32; x.rows * x.cols];
        self.copy_to_host_bytes(src.ptr, bytemuck::cast_slice_mut(&mut out))?;
        if let Some(p) = &self.profile {
            // Synchronised by the copy: every event of the step is done.
            Self::resolve(&mut p.lock().unwrap_or_else(|p| p.into_inner()));
        }
        Ok(out)
    }

    /// [`Backend::run_forward`]: eager, or through the bucket's graph.
    fn run_graphed(&self, step: &CudaStep, forward: &mut dyn FnMut() -> CudaTensor) -> CudaTensor {
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
}

impl CudaBackend {
    /// Captures `forward` into a graph and launches it once: the returned
    /// tensor holds this step's logits. On failure nothing ran and the
    /// device error state is as before the capture.
    fn capture(
        &self,
        forward: &mut dyn FnMut() -> CudaTensor,
    ) -> std::result::Result<(SendGraph, CudaTensor), String> {
        let before = self.error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if before.is_some() {
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
                // `out` points into a graph that never ran: forget it
                // rather than free it.
                if let Ok(buf) = Arc::try_unwrap(out.buf) {
                    std::mem::forget(buf);
                }
                return Err(match (ended, inside) {
                    (Err(e), _) => format!("cuStreamEndCapture: {e:?}"),
                    (_, Some(e)) => e,
                    _ => "the capture produced no graph".into(),
                });
            }
        };
        if let Err(e) = graph.launch() {
            if let Ok(buf) = Arc::try_unwrap(out.buf) {
                std::mem::forget(buf);
            }
            return Err(format!("graph launch: {e:?}"));
        }
        Ok((SendGraph(graph), out))
    }
}
