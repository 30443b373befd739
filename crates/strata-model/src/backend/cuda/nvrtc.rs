//! Kernel compilation with NVRTC, and the on-disk cache of its output.
//!
//! A module is compiled for the device's exact architecture to a CUBIN
//! (`--gpu-architecture=sm_XY`), which the driver loads without its own
//! JIT (and without the driver-version check that PTX from a newer NVRTC
//! fails). When NVRTC cannot produce a CUBIN for the architecture, PTX for
//! `compute_XY` is the fallback. Results are cached under
//! `STRATA_KERNEL_CACHE` (default `$XDG_CACHE_HOME/strata/kernels` or
//! `~/.cache/strata/kernels`), keyed by a hash of the source, options,
//! NVRTC version and architecture; a hit skips NVRTC.

use std::ffi::{CStr, CString};
use std::path::PathBuf;

use cudarc::nvrtc::{result, sys};

/// What NVRTC produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Image {
    Cubin(Vec<u8>),
    /// PTX text, without the terminating NUL.
    Ptx(String),
}

impl Image {
    fn tag(&self) -> &'static str {
        match self {
            Self::Cubin(_) => "cubin",
            Self::Ptx(_) => "ptx",
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Self::Cubin(b) => b,
            Self::Ptx(s) => s.as_bytes(),
        }
    }
}

/// NVRTC's version, `(major, minor)`.
pub fn version() -> Result<(i32, i32), String> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two out-pointers to live integers.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| format!("nvrtcVersion: {e:?}"))?;
    Ok((major, minor))
}

/// The options every kernel is compiled with (precise math: the CPU
/// backend is the oracle).
pub fn options(arch: &str) -> Vec<String> {
    vec![format!("--gpu-architecture={arch}"), "--std=c++17".into(), "-default-device".into()]
}

/// Compiles `src` for `sm_XY` (`cc = (X, Y)`): a CUBIN, or PTX for
/// `compute_XY` if NVRTC rejects the real architecture. The error carries
/// NVRTC's log.
pub fn compile(name: &str, src: &str, cc: (i32, i32)) -> Result<Image, String> {
    let (major, minor) = cc;
    match compile_for(name, src, &format!("sm_{major}{minor}"), true) {
        Ok(img) => Ok(img),
        Err(cubin_err) => compile_for(name, src, &format!("compute_{major}{minor}"), false)
            .map_err(|ptx_err| format!("{cubin_err}; PTX fallback: {ptx_err}")),
    }
}

fn compile_for(name: &str, src: &str, arch: &str, cubin: bool) -> Result<Image, String> {
    let csrc = CString::new(src).map_err(|_| format!("{name}: NUL in kernel source"))?;
    let cname = CString::new(format!("{name}.cu")).expect("invariant: module names have no NUL");
    let prog = result::create_program(&csrc, Some(&cname))
        .map_err(|e| format!("{name}: nvrtcCreateProgram: {e:?}"))?;
    let out = (|| {
        let opts = options(arch);
        // SAFETY: `prog` is a live program; options are NUL-free strings.
        if let Err(e) = unsafe { result::compile_program(prog, &opts) } {
            // SAFETY: as above.
            let log = unsafe { result::get_program_log(prog) }
                .map(|l| {
                    // SAFETY: NVRTC's log is NUL-terminated.
                    unsafe { CStr::from_ptr(l.as_ptr()) }.to_string_lossy().into_owned()
                })
                .unwrap_or_default();
            return Err(format!("{name} for {arch}: {e:?}\n{log}"));
        }
        if cubin {
            let mut size = 0usize;
            // SAFETY: `prog` compiled; `size` is a live out-pointer.
            unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) }
                .result()
                .map_err(|e| format!("{name}: nvrtcGetCUBINSize: {e:?}"))?;
            if size == 0 {
                return Err(format!("{name}: NVRTC made no CUBIN for {arch}"));
            }
            let mut buf = vec![0u8; size];
            // SAFETY: `buf` holds `size` bytes, as NVRTC asked.
            unsafe { sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast()) }
                .result()
                .map_err(|e| format!("{name}: nvrtcGetCUBIN: {e:?}"))?;
            Ok(Image::Cubin(buf))
        } else {
            // SAFETY: `prog` compiled.
            let ptx = unsafe { result::get_ptx(prog) }
                .map_err(|e| format!("{name}: nvrtcGetPTX: {e:?}"))?;
            // SAFETY: NVRTC's PTX is NUL-terminated.
            let text = unsafe { CStr::from_ptr(ptx.as_ptr()) }.to_string_lossy().into_owned();
            Ok(Image::Ptx(text))
        }
    })();
    // SAFETY: `prog` is destroyed once, after its last use.
    let _ = unsafe { result::destroy_program(prog) };
    out
}

/// FNV-1a over the parts that decide a module's image.
pub fn cache_key(src: &str, cc: (i32, i32), nvrtc: (i32, i32)) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let opts = options(&format!("sm_{}{}", cc.0, cc.1)).join(" ");
    for part in [src, &opts, &format!("nvrtc {}.{}", nvrtc.0, nvrtc.1)] {
        for &b in part.as_bytes().iter().chain(&[0u8]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("sm{}{}-{h:016x}", cc.0, cc.1)
}

/// Where compiled modules are kept.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("STRATA_KERNEL_CACHE") {
        return Some(PathBuf::from(d));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("strata").join("kernels"))
}

/// Compiles through the cache: a hit returns the stored image, a miss
/// compiles and stores it (a cache that cannot be written is skipped).
/// Returns the image and whether it came from the cache.
pub fn compile_cached(
    name: &str,
    src: &str,
    cc: (i32, i32),
    dir: Option<&std::path::Path>,
) -> Result<(Image, bool), String> {
    let key = cache_key(src, cc, version()?);
    if let Some(dir) = dir {
        for (ext, cubin) in [("cubin", true), ("ptx", false)] {
            let path = dir.join(format!("{name}-{key}.{ext}"));
            if let Ok(bytes) = std::fs::read(&path) {
                let img = if cubin {
                    Image::Cubin(bytes)
                } else {
                    Image::Ptx(String::from_utf8_lossy(&bytes).into_owned())
                };
                return Ok((img, true));
            }
        }
    }
    let img = compile(name, src, cc)?;
    if let Some(dir) = dir {
        let path = dir.join(format!("{name}-{key}.{}", img.tag()));
        // Written whole under a temporary name, then renamed, so a
        // concurrent reader never sees half a file.
        let tmp = dir.join(format!(".{name}-{key}.{}.{}", img.tag(), std::process::id()));
        if std::fs::create_dir_all(dir).is_ok() && std::fs::write(&tmp, img.bytes()).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    Ok((img, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_change_with_every_input() {
        let k = cache_key("a", (9, 0), (13, 0));
        assert_eq!(k, cache_key("a", (9, 0), (13, 0)));
        assert!(k.starts_with("sm90-"));
        assert_ne!(k, cache_key("b", (9, 0), (13, 0)));
        assert_ne!(k, cache_key("a", (8, 0), (13, 0)));
        assert_ne!(k, cache_key("a", (9, 0), (13, 1)));
    }
}

/// Every kernel variant through the real NVRTC, for the architectures of
/// the GPUs strata is run on (A100, H100/H200). Needs libnvrtc, not a GPU:
/// `scripts/test` installs the PyPI wheel `nvidia-cuda-nvrtc` and points
/// `STRATA_CUDA_LIB_DIR` at it, and sets `STRATA_REQUIRE_NVRTC=1` so that a
/// missing NVRTC fails there instead of skipping.
#[cfg(test)]
mod compile_tests {
    use super::*;
    use crate::backend::cuda::{kernels, locate};

    fn nvrtc_or_skip() -> bool {
        match locate::load_libraries(false) {
            Ok(_) => true,
            Err(e) if std::env::var_os("STRATA_REQUIRE_NVRTC").is_some() => {
                panic!("STRATA_REQUIRE_NVRTC is set but NVRTC cannot be loaded: {e}")
            }
            Err(e) => {
                eprintln!("skipped: {e}");
                false
            }
        }
    }

    #[test]
    fn every_kernel_compiles_to_a_cubin_for_sm80_and_sm90() {
        if !nvrtc_or_skip() {
            return;
        }
        let (major, _) = version().unwrap();
        assert!(major >= 12, "NVRTC {major}");
        let mut sources = vec![("common".to_owned(), kernels::common_source())];
        // 34: a head dimension that is no multiple of 4 (scalar key loads).
        for hd in [34, 64, 80, 96, 128, 256] {
            sources.push((format!("attention_hd{hd}"), kernels::attention_source(hd)));
        }
        for cc in [(8, 0), (9, 0)] {
            for (name, src) in &sources {
                match compile(name, src, cc) {
                    Ok(Image::Cubin(bytes)) => {
                        // An ELF image, not text.
                        assert_eq!(&bytes[..4], b"\x7fELF", "{name} for {cc:?}");
                    }
                    Ok(Image::Ptx(_)) => panic!("{name}: NVRTC gave PTX, not a CUBIN, for {cc:?}"),
                    Err(e) => panic!("{e}"),
                }
            }
        }
    }

    #[test]
    fn entry_points_are_in_the_ptx() {
        if !nvrtc_or_skip() {
            return;
        }
        for (src, entries) in [
            (kernels::common_source(), kernels::COMMON_ENTRIES),
            (kernels::attention_source(128), kernels::ATTENTION_ENTRIES),
        ] {
            let Ok(Image::Ptx(ptx)) = compile_for("entries", &src, "compute_90", false) else {
                panic!("no PTX");
            };
            for e in entries {
                assert!(ptx.contains(&format!(".entry {e}(")), "{e} missing from the PTX");
            }
        }
    }

    #[test]
    fn a_compile_error_carries_nvrtc_s_log() {
        if !nvrtc_or_skip() {
            return;
        }
        let err = compile("broken", "extern \"C\" __global__ void f() { undefined_name; }", (9, 0))
            .unwrap_err();
        assert!(err.contains("undefined_name"), "{err}");
    }

    #[test]
    fn the_cache_returns_what_was_compiled() {
        if !nvrtc_or_skip() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let src = "extern \"C\" __global__ void f(float* x) { x[threadIdx.x] = 1.0f; }";
        let (first, hit) = compile_cached("tiny", src, (9, 0), Some(dir.path())).unwrap();
        assert!(!hit);
        let (second, hit) = compile_cached("tiny", src, (9, 0), Some(dir.path())).unwrap();
        assert!(hit);
        assert_eq!(first, second);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
