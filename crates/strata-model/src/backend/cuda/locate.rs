//! Finds and loads the CUDA libraries before cudarc touches them.
//!
//! cudarc opens libraries by bare name (so only `LD_LIBRARY_PATH`, the
//! ld.so cache and the system directories count) and panics when one is
//! missing. A GPU machine often has them elsewhere: a pip install of torch
//! or of NVIDIA's wheels keeps CUDA 13 under
//! `site-packages/nvidia/cu13/lib` (CUDA 12 wheels under
//! `nvidia/<component>/lib`). This module searches, in order,
//!
//! 1. `STRATA_CUDA_LIB_DIR` (a `:`-separated list),
//! 2. `LD_LIBRARY_PATH`,
//! 3. the `nvidia` directories of every Python `site-packages` it can see
//!    (`VIRTUAL_ENV`, `CONDA_PREFIX`, `sys.path` of `python3`),
//! 4. where drivers and toolkits are installed ([`KNOWN_DIRS`]: NVIDIA's
//!    container runtime mounts the driver under `/usr/local/nvidia`, which
//!    is not always in the loader's path),
//!
//! opens each library it finds there by absolute path (NVRTC's builtins
//! first: libnvrtc opens it by name itself, and fails to compile without
//! it) and keeps it loaded for the process, so cudarc's later open by bare
//! name finds the loaded object by its soname. Then it asks cudarc whether
//! each library is present and returns an error naming what is missing,
//! where cudarc would panic.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A library strata needs: its file-name prefixes, newest ABI first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CudaLib {
    /// The driver (`libcuda.so.1`), installed with the NVIDIA driver.
    Driver,
    /// NVRTC's builtins, opened by libnvrtc itself.
    NvrtcBuiltins,
    Nvrtc,
    CublasLt,
    Cublas,
}

impl CudaLib {
    /// In load order: dependencies before their users.
    pub const ALL: [Self; 5] =
        [Self::Driver, Self::NvrtcBuiltins, Self::Nvrtc, Self::CublasLt, Self::Cublas];

    pub fn name(self) -> &'static str {
        match self {
            Self::Driver => "libcuda",
            Self::NvrtcBuiltins => "libnvrtc-builtins",
            Self::Nvrtc => "libnvrtc",
            Self::CublasLt => "libcublasLt",
            Self::Cublas => "libcublas",
        }
    }

    /// Whether a file name is a build of this library strata can use:
    /// `libX.so.13*` (CUDA 13) or `libX.so.12*`; the driver is
    /// `libcuda.so.1`. NVIDIA's `.alt` builds are skipped.
    pub fn matches(self, file_name: &str) -> bool {
        let Some(rest) = file_name.strip_prefix(self.name()) else { return false };
        match self {
            Self::Driver => rest == ".so.1" || rest.starts_with(".so.1."),
            _ => ["13", "12"].iter().any(|major| {
                let v = format!(".so.{major}");
                rest == v || rest.starts_with(&format!("{v}."))
            }),
        }
    }

    /// Whether cudarc can open it now (after [`load_libraries`]).
    fn present(self) -> bool {
        // SAFETY: these only try to dlopen the library by name.
        unsafe {
            match self {
                Self::Driver => cudarc::driver::sys::is_culib_present(),
                Self::Nvrtc => cudarc::nvrtc::sys::is_culib_present(),
                Self::Cublas => cudarc::cublas::sys::is_culib_present(),
                // Checked through the library that opens them.
                Self::NvrtcBuiltins | Self::CublasLt => true,
            }
        }
    }
}

/// Where the driver and a CUDA toolkit are usually installed, searched
/// last.
pub const KNOWN_DIRS: &[&str] = &[
    "/usr/local/nvidia/lib64",
    "/usr/local/nvidia/lib",
    "/usr/local/cuda/lib64",
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib64",
];

/// Directories to search, in order, from the environment.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for var in ["STRATA_CUDA_LIB_DIR", "LD_LIBRARY_PATH"] {
        if let Some(v) = std::env::var_os(var) {
            dirs.extend(std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()));
        }
    }
    for site in site_packages() {
        dirs.extend(nvidia_dirs(&site));
    }
    dirs.extend(KNOWN_DIRS.iter().map(PathBuf::from).filter(|p| p.is_dir()));
    dirs
}

/// The library directories of NVIDIA's wheels under one `site-packages`:
/// `nvidia/cu13/lib` (CUDA 13), then `nvidia/*/lib` (CUDA 12 wheels, one
/// directory per component).
pub fn nvidia_dirs(site_packages: &Path) -> Vec<PathBuf> {
    let root = site_packages.join("nvidia");
    let mut out = vec![root.join("cu13").join("lib")];
    if let Ok(entries) = std::fs::read_dir(&root) {
        let mut more: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("lib"))
            .filter(|p| !out.contains(p))
            .collect();
        more.sort();
        out.extend(more);
    }
    out.retain(|p| p.is_dir());
    out
}

/// `site-packages` directories of the active Python environments.
fn site_packages() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for var in ["VIRTUAL_ENV", "CONDA_PREFIX"] {
        if let Some(prefix) = std::env::var_os(var) {
            if let Ok(libs) = std::fs::read_dir(Path::new(&prefix).join("lib")) {
                out.extend(libs.filter_map(|e| e.ok()).map(|e| e.path().join("site-packages")));
            }
        }
    }
    // The interpreter on PATH knows its own (a system torch install).
    if let Ok(o) = std::process::Command::new("python3")
        .args(["-c", "import sys; print('\\n'.join(p for p in sys.path if p))"])
        .stderr(std::process::Stdio::null())
        .output()
    {
        out.extend(String::from_utf8_lossy(&o.stdout).lines().map(PathBuf::from));
    }
    out.retain(|p| p.is_dir());
    out.dedup();
    out
}

/// The first file in `dirs` that is a build of `lib`. Within a directory,
/// the longest name wins (`libcublas.so.13.1.0.3` over `libcublas.so.13`:
/// the same file, most often, but the full name is never a dangling
/// development link).
pub fn find(lib: CudaLib, dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter().find_map(|dir| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| lib.matches(n))
            .collect();
        // CUDA 13 before 12, then the longest name.
        names.sort_by_key(|n| (!n.contains(".so.13"), std::cmp::Reverse(n.len())));
        names.first().map(|n| dir.join(n))
    })
}

/// What [`load_libraries`] found.
#[derive(Debug, Clone, Default)]
pub struct Located {
    /// Each library opened by absolute path.
    pub loaded: Vec<(CudaLib, PathBuf)>,
}

static LOADED: OnceLock<std::result::Result<Located, String>> = OnceLock::new();
static HANDLES: OnceLock<Vec<libloading::Library>> = OnceLock::new();

/// Finds and opens the libraries once per process. `need_driver: false`
/// is for compiling kernels only (NVRTC needs no driver or GPU).
pub fn load_libraries(need_driver: bool) -> std::result::Result<Located, String> {
    let located = LOADED
        .get_or_init(|| {
            let dirs = search_dirs();
            let mut located = Located::default();
            let mut handles = Vec::new();
            for lib in CudaLib::ALL {
                if let Some(path) = find(lib, &dirs) {
                    // SAFETY: loading a CUDA library runs its initialisers,
                    // which are sound to run once per process.
                    match unsafe {
                        libloading::os::unix::Library::open(
                            Some(&path),
                            libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
                        )
                    } {
                        Ok(h) => {
                            handles.push(h.into());
                            located.loaded.push((lib, path));
                        }
                        Err(e) => return Err(format!("cannot load {}: {e}", path.display())),
                    }
                }
            }
            let _ = HANDLES.set(handles);
            Ok(located)
        })
        .clone()?;
    let needed: &[CudaLib] = if need_driver {
        &[CudaLib::Driver, CudaLib::Nvrtc, CudaLib::Cublas]
    } else {
        &[CudaLib::Nvrtc]
    };
    let missing: Vec<&str> = needed.iter().filter(|l| !l.present()).map(|l| l.name()).collect();
    if missing.is_empty() {
        Ok(located)
    } else {
        Err(format!(
            "CUDA libraries not found: {} (searched STRATA_CUDA_LIB_DIR, LD_LIBRARY_PATH, \
             the nvidia/ directories of Python's site-packages, /usr/local/nvidia/lib64, \
             /usr/local/cuda/lib64 and the system library path; the driver comes with the \
             NVIDIA driver, the others with CUDA 13 or the PyPI wheels nvidia-cuda-nvrtc and \
             nvidia-cublas)",
            missing.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_cuda_13_and_12_builds_only() {
        assert!(CudaLib::Nvrtc.matches("libnvrtc.so.13"));
        assert!(CudaLib::Nvrtc.matches("libnvrtc.so.12.8.93"));
        assert!(!CudaLib::Nvrtc.matches("libnvrtc.so.11.2"));
        assert!(!CudaLib::Nvrtc.matches("libnvrtc.alt.so.13"));
        assert!(!CudaLib::Nvrtc.matches("libnvrtc-builtins.so.13.0"));
        assert!(CudaLib::NvrtcBuiltins.matches("libnvrtc-builtins.so.13.0"));
        assert!(!CudaLib::NvrtcBuiltins.matches("libnvrtc-builtins.alt.so.13.0"));
        assert!(CudaLib::Cublas.matches("libcublas.so.13"));
        assert!(!CudaLib::Cublas.matches("libcublasLt.so.13"));
        assert!(CudaLib::CublasLt.matches("libcublasLt.so.13.1.0.3"));
        assert!(CudaLib::Driver.matches("libcuda.so.1"));
        assert!(CudaLib::Driver.matches("libcuda.so.1.580.65"));
        assert!(!CudaLib::Driver.matches("libcudart.so.13"));
        assert!(!CudaLib::Driver.matches("libcuda.so"));
    }

    fn touch(dir: &Path, names: &[&str]) {
        std::fs::create_dir_all(dir).unwrap();
        for n in names {
            std::fs::write(dir.join(n), b"").unwrap();
        }
    }

    #[test]
    fn the_first_directory_wins_and_13_beats_12() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        touch(&a, &["libcublas.so.12", "libcublas.so.12.8.4.1"]);
        touch(&b, &["libcublas.so.13", "libcublas.so.13.1.0.3", "libnvrtc.so.13"]);
        let dirs = vec![a.clone(), b.clone()];
        assert_eq!(find(CudaLib::Cublas, &dirs), Some(a.join("libcublas.so.12.8.4.1")));
        assert_eq!(find(CudaLib::Nvrtc, &dirs), Some(b.join("libnvrtc.so.13")));
        assert_eq!(find(CudaLib::CublasLt, &dirs), None);
        touch(&a, &["libcublas.so.13"]);
        assert_eq!(find(CudaLib::Cublas, &dirs), Some(a.join("libcublas.so.13")));
    }

    #[test]
    fn driver_and_toolkit_directories_come_last() {
        let known: Vec<PathBuf> =
            KNOWN_DIRS.iter().map(PathBuf::from).filter(|p| p.is_dir()).collect();
        assert!(search_dirs().ends_with(&known));
    }

    #[test]
    fn wheel_layouts_are_found() {
        let tmp = tempfile::tempdir().unwrap();
        let site = tmp.path();
        touch(&site.join("nvidia/cu13/lib"), &["libnvrtc.so.13"]);
        touch(&site.join("nvidia/cublas/lib"), &["libcublas.so.12"]);
        touch(&site.join("nvidia/cuda_nvrtc/lib"), &["libnvrtc.so.12"]);
        let dirs = nvidia_dirs(site);
        assert_eq!(
            dirs,
            vec![
                site.join("nvidia/cu13/lib"),
                site.join("nvidia/cublas/lib"),
                site.join("nvidia/cuda_nvrtc/lib"),
            ]
        );
        assert_eq!(find(CudaLib::Nvrtc, &dirs), Some(site.join("nvidia/cu13/lib/libnvrtc.so.13")));
        assert!(nvidia_dirs(&site.join("nowhere")).is_empty());
    }
}
