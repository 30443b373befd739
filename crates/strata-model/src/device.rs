//! Which backend a model runs on (`--device cpu|cuda[:N]`), and an
//! executor over either, so the CLI and the server stay one code path.

use strata_core::connector::ConnectorWorker;
use strata_core::executor::{Executor, KvCacheSpec, ModelBatch, ModelOutput};

use crate::backend::cpu::CpuBackend;
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::executor::ModelExecutor;
#[cfg(feature = "cuda")]
use crate::loader::load_executor_with_kv;
use crate::loader::{load_executor, LoadOptions, ModelSource};

/// A compute device, as `--device` spells it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    #[default]
    Cpu,
    /// CUDA device by ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| format!("unknown device `{s}` (cpu, cuda, cuda:N)")),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// How a model runs on a GPU (ignored on the CPU).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GpuOptions {
    /// Share of the device's memory strata may use (vLLM's
    /// `--gpu-memory-utilization`).
    pub memory_utilization: f64,
    /// No CUDA graphs: every step op by op (vLLM's `--enforce-eager`).
    pub enforce_eager: bool,
}

impl Default for GpuOptions {
    fn default() -> Self {
        Self { memory_utilization: 0.9, enforce_eager: false }
    }
}

/// Free device memory kept for activations, cuBLAS workspaces and the
/// CUDA context's own use when the KV pool is sized from
/// `--gpu-memory-utilization`.
pub const ACTIVATION_RESERVE: u64 = 1 << 30;

/// The KV pool's share of a GPU, as vLLM sizes it: of `utilization` of the
/// device's memory, what is left after what is in use once the weights
/// are loaded (`total - free`: the weights, the context, other processes)
/// and [`ACTIVATION_RESERVE`].
pub fn gpu_kv_pool_bytes(
    total: u64,
    free: u64,
    utilization: f64,
) -> std::result::Result<u64, String> {
    if !(utilization > 0.0 && utilization <= 1.0) {
        return Err(format!("--gpu-memory-utilization must be in (0, 1], got {utilization}"));
    }
    let budget = (total as f64 * utilization) as u64;
    let used = total.saturating_sub(free) + ACTIVATION_RESERVE;
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    match budget.checked_sub(used) {
        Some(kv) if kv > 0 => Ok(kv),
        _ => Err(format!(
            "no GPU memory left for the KV cache: {:.2} GiB allowed by \
             --gpu-memory-utilization {utilization}, {:.2} GiB in use with the weights loaded, \
             {:.2} GiB kept for activations",
            gib(budget),
            gib(total.saturating_sub(free)),
            gib(ACTIVATION_RESERVE),
        )),
    }
}

/// A model executor on whichever device it was loaded on.
#[derive(Debug)]
pub enum DeviceExecutor {
    Cpu(Box<ModelExecutor<CpuBackend>>),
    #[cfg(feature = "cuda")]
    Cuda(Box<ModelExecutor<crate::backend::cuda::CudaBackend>>),
}

macro_rules! each {
    ($self:expr, $e:ident => $body:expr) => {
        match $self {
            DeviceExecutor::Cpu($e) => $body,
            #[cfg(feature = "cuda")]
            DeviceExecutor::Cuda($e) => $body,
        }
    };
}

impl DeviceExecutor {
    pub fn device(&self) -> Device {
        match self {
            Self::Cpu(_) => Device::Cpu,
            #[cfg(feature = "cuda")]
            Self::Cuda(e) => Device::Cuda(e.backend().info().ordinal),
        }
    }

    pub fn config(&self) -> &ModelConfig {
        each!(self, e => e.model().config())
    }

    pub fn weight_bytes(&self) -> u64 {
        each!(self, e => e.model().weight_bytes())
    }

    pub fn kv_fingerprint(&self) -> u64 {
        each!(self, e => e.kv_fingerprint())
    }

    pub fn set_connector(&mut self, worker: Box<dyn ConnectorWorker>) {
        each!(self, e => e.set_connector(worker))
    }

    /// The device memory's measured read bandwidth in bytes/s (a kernel
    /// streaming up to 2 GiB, at most half of what is free, ten times), or
    /// `None` on the CPU.
    pub fn device_read_bandwidth(&self) -> Option<Result<f64>> {
        match self {
            Self::Cpu(_) => None,
            #[cfg(feature = "cuda")]
            Self::Cuda(e) => Some(e.backend().memory().and_then(|(free, _)| {
                let bytes = (free / 2).min(2 << 30) / 16 * 16;
                e.backend().measure_read_bandwidth(bytes, 10)
            })),
        }
    }

    /// GPU time per op since the last call (`STRATA_CUDA_PROFILE=1` on a
    /// GPU), most first: `(op, calls, milliseconds)`.
    pub fn take_profile(&self) -> Option<Vec<(&'static str, u64, f64)>> {
        match self {
            Self::Cpu(_) => None,
            #[cfg(feature = "cuda")]
            Self::Cuda(e) => e.backend().take_profile(),
        }
    }

    /// The labels of `strata:device_info`.
    pub fn device_labels(&self) -> Vec<(String, String)> {
        let device = ("device".to_owned(), self.device().to_string());
        match self {
            Self::Cpu(_) => vec![device],
            #[cfg(feature = "cuda")]
            Self::Cuda(e) => {
                let i = e.backend().info();
                let pair = |(a, b): (i32, i32)| format!("{a}.{b}");
                vec![
                    device,
                    ("device_name".to_owned(), i.name.clone()),
                    ("compute_capability".to_owned(), pair(i.compute_capability)),
                    ("cuda_driver".to_owned(), pair(i.driver_version)),
                    ("nvrtc".to_owned(), pair(i.nvrtc_version)),
                    ("cublas".to_owned(), i.cublas_version.to_string()),
                ]
            }
        }
    }

    /// One line on the device for the start-up log and `/metrics` info:
    /// name, compute capability, memory, driver, NVRTC and cuBLAS versions.
    pub fn device_description(&self) -> String {
        match self {
            Self::Cpu(_) => "cpu".into(),
            #[cfg(feature = "cuda")]
            Self::Cuda(e) => {
                let i = e.backend().info();
                format!(
                    "cuda:{} {} (sm_{}{}, {} SMs, {:.1} GiB; driver CUDA {}.{}, NVRTC {}.{}, \
                     cuBLAS {})",
                    i.ordinal,
                    i.name,
                    i.compute_capability.0,
                    i.compute_capability.1,
                    i.multiprocessors,
                    i.total_memory as f64 / (1u64 << 30) as f64,
                    i.driver_version.0,
                    i.driver_version.1,
                    i.nvrtc_version.0,
                    i.nvrtc_version.1,
                    i.cublas_version
                )
            }
        }
    }
}

impl Executor for DeviceExecutor {
    type Error = ModelError;

    fn kv_cache_spec(&self) -> KvCacheSpec {
        each!(self, e => e.kv_cache_spec())
    }

    fn vocab_size(&self) -> usize {
        each!(self, e => e.vocab_size())
    }

    fn wait_for_connector(&mut self, timeout: std::time::Duration) {
        each!(self, e => e.wait_for_connector(timeout))
    }

    fn execute(&mut self, batch: &ModelBatch<'_>) -> Result<ModelOutput> {
        each!(self, e => e.execute(batch))
    }
}

/// Loads a model on `device`. On a GPU, unless `opts.kv.num_blocks` is
/// set, the KV pool takes what `gpu.memory_utilization` leaves after the
/// weights ([`gpu_kv_pool_bytes`]); `opts.kv.memory_bytes` is the CPU's.
pub fn load_on_device(
    device: Device,
    source: &ModelSource,
    opts: &LoadOptions,
    gpu: GpuOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<DeviceExecutor> {
    match device {
        Device::Cpu => {
            Ok(DeviceExecutor::Cpu(Box::new(load_executor(CpuBackend, source, opts, progress)?)))
        }
        #[cfg(feature = "cuda")]
        Device::Cuda(ordinal) => {
            let options = crate::backend::cuda::CudaOptions { enforce_eager: gpu.enforce_eager };
            let backend = crate::backend::cuda::CudaBackend::with_options(ordinal, options)?;
            let mut kv = |b: &crate::backend::cuda::CudaBackend| {
                let mut pool = opts.kv;
                if pool.num_blocks.is_none() {
                    let (free, total) = b.memory()?;
                    pool.memory_bytes =
                        gpu_kv_pool_bytes(total as u64, free as u64, gpu.memory_utilization)
                            .map_err(ModelError::Device)?;
                }
                Ok(pool)
            };
            let exec = load_executor_with_kv(backend, source, opts, progress, &mut kv)?;
            Ok(DeviceExecutor::Cuda(Box::new(exec)))
        }
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => {
            let _ = gpu;
            Err(ModelError::Device(
                "this strata was built without the `cuda` feature (cargo build --features cuda)"
                    .into(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_as_vllm_spells_them() {
        assert_eq!("cpu".parse(), Ok(Device::Cpu));
        assert_eq!("cuda".parse(), Ok(Device::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(Device::Cuda(3)));
        assert!("cuda:".parse::<Device>().is_err());
        assert!("gpu".parse::<Device>().is_err());
        assert_eq!(Device::Cuda(1).to_string(), "cuda:1");
    }

    #[test]
    fn the_kv_pool_takes_what_the_utilization_leaves() {
        let gib = 1u64 << 30;
        // 140 GiB device, 2 GiB in use with the weights loaded, 0.9:
        // 126 - 2 - 1 (reserve) = 123 GiB.
        let kv = gpu_kv_pool_bytes(140 * gib, 138 * gib, 0.9).unwrap();
        assert_eq!(kv, 123 * gib);
        let err = gpu_kv_pool_bytes(16 * gib, 0, 0.9).unwrap_err();
        assert!(err.contains("no GPU memory left"), "{err}");
        assert!(gpu_kv_pool_bytes(16 * gib, 16 * gib, 0.0).is_err());
        assert!(gpu_kv_pool_bytes(16 * gib, 16 * gib, 1.5).is_err());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        let err = load_on_device(
            Device::Cuda(0),
            &ModelSource::Builtin,
            &LoadOptions::default(),
            GpuOptions::default(),
            &mut |_, _| {},
        )
        .unwrap_err();
        assert!(err.to_string().contains("without the `cuda` feature"), "{err}");
    }

    #[cfg(feature = "cuda")]
    #[test]
    fn cuda_without_a_gpu_is_a_clear_error_not_a_panic() {
        // On machines with a GPU this loads the built-in model instead.
        match load_on_device(
            Device::Cuda(0),
            &ModelSource::Builtin,
            &LoadOptions::default(),
            GpuOptions::default(),
            &mut |_, _| {},
        ) {
            Ok(e) => assert_eq!(e.device(), Device::Cuda(0)),
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.starts_with("CUDA: "), "{msg}");
            }
        }
    }
}
