//! Opening a device: the libraries, the context and stream, cuBLAS, the
//! kernels (compiled or taken from the cache), and what the start-up log
//! says about it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cublas::{sys as blas_sys, CudaBlas};
use cudarc::driver::{result as drv, sys as drv_sys, CudaContext, CudaFunction};

use super::memory::DevBuf;
use super::profile::Profile;
use super::{dev_err, kernels, locate, nvrtc, Arg, CudaBackend};
use crate::error::{ModelError, Result};

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

/// Bytes of cuBLAS workspace (what PyTorch gives it on Hopper).
pub(super) const BLAS_WORKSPACE: usize = 32 << 20;

/// How the CUDA backend runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CudaOptions {
    /// Run every step op by op, never through a captured graph (vLLM's
    /// `--enforce-eager`).
    pub enforce_eager: bool,
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

    pub(super) fn attention_fns(&self, head_dim: usize) -> Result<(CudaFunction, CudaFunction)> {
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
