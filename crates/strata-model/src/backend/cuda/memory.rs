//! Device memory: buffers freed on drop, and the copies between host and
//! device.

use std::sync::Arc;

use cudarc::driver::{result as drv, CudaStream};

use super::{dev_err, CudaBackend, CudaTensor};
use crate::error::Result;

/// Device memory from a stream-ordered allocation, freed on drop.
#[derive(Debug)]
pub(super) struct DevBuf {
    pub(super) ptr: u64,
    pub(super) stream: Arc<CudaStream>,
    /// From `cuMemAllocAsync` (freed with `cuMemFreeAsync`), else from
    /// `cuMemAlloc`.
    pub(super) pooled: bool,
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

impl CudaBackend {
    pub(super) fn alloc(&self, bytes: usize) -> Result<DevBuf> {
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
    pub(super) fn tensor(&self, rows: usize, cols: usize) -> CudaTensor {
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

    pub(super) fn upload_bytes(&self, bytes: &[u8]) -> Result<DevBuf> {
        let buf = self.alloc(bytes.len())?;
        self.copy_from_host_bytes(buf.ptr, bytes)?;
        Ok(buf)
    }

    pub(super) fn copy_to_host_bytes(&self, src: u64, out: &mut [u8]) -> Result<()> {
        self.copy_to_host_parts(&mut [(src, out)])
    }

    /// Device-to-host copies, queued together, then one wait.
    pub(super) fn copy_to_host_parts(&self, parts: &mut [(u64, &mut [u8])]) -> Result<()> {
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

    pub(super) fn copy_from_host_bytes(&self, dst: u64, data: &[u8]) -> Result<()> {
        self.copy_from_host_parts(&[(dst, data)])
    }

    /// Host-to-device copies, queued together, then one wait.
    pub(super) fn copy_from_host_parts(&self, parts: &[(u64, &[u8])]) -> Result<()> {
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
