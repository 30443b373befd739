//! The GGUF file format (llama.cpp's model files), read from a memory map.
//!
//! Layout (little-endian, versions 2 and 3): the magic `GGUF`, a version,
//! the tensor and metadata counts, the metadata key/value pairs, one info
//! record per tensor (name, dimensions, ggml type, offset), then the tensor
//! data, starting at the next multiple of `general.alignment` (32 unless
//! the file says otherwise), each tensor at its offset from there.
//!
//! Everything is bounds-checked while parsing: a truncated or corrupt file
//! is an error naming the file and what is wrong, never a panic or a read
//! past the map. Tensor data is not copied: [`GgufFile::tensor_bytes`]
//! hands out slices of the map, so a quantized model costs its file size
//! in page cache, once.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use crate::error::{ModelError, Result};
use crate::quant::QuantType;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// How a tensor's elements are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TensorType {
    F32,
    F16,
    BF16,
    Quant(QuantType),
}

/// ggml's name for a type id (`ggml_type_name`), for errors about types
/// strata does not compute with.
fn ggml_type_name(id: u32) -> &'static str {
    // ggml's `enum ggml_type`, ten names a line (ids 0-9, 10-19, ...).
    #[rustfmt::skip]
    const NAMES: [&str; 40] = [
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1",
        "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S",
        "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M",
        "BF16", "Q4_0_4_4", "Q4_0_4_8", "Q4_0_8_8", "TQ1_0", "TQ2_0", "IQ4_NL_4_4", "IQ4_NL_4_8",
        "IQ4_NL_8_8", "MXFP4",
    ];
    NAMES.get(id as usize).copied().unwrap_or("unknown")
}

impl TensorType {
    /// ggml's type ids (`enum ggml_type`).
    pub fn from_ggml(id: u32) -> Option<Self> {
        match id {
            0 => Some(Self::F32),
            1 => Some(Self::F16),
            30 => Some(Self::BF16),
            other => QuantType::from_ggml_type(other).map(Self::Quant),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Quant(q) => q.name(),
        }
    }

    /// Bytes of one row of `cols` elements, or `None` when `cols` does not
    /// fill whole blocks.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        match self {
            Self::F32 => cols.checked_mul(4),
            Self::F16 | Self::BF16 => cols.checked_mul(2),
            Self::Quant(q) => q.row_bytes(cols),
        }
    }
}

/// Where one tensor lies in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub ty: TensorType,
    /// ggml's `ne`: the fastest-varying dimension first, so a matrix of
    /// `rows x cols` is `[cols, rows]`.
    pub dims: Vec<usize>,
    /// Absolute offset of the first byte in the file.
    pub offset: usize,
    pub len: usize,
}

impl TensorInfo {
    /// The shape in the row-major order the rest of strata uses
    /// (`[rows, cols]` for a matrix).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().copied().collect()
    }

    pub fn num_elements(&self) -> usize {
        self.dims.iter().product()
    }
}

/// An open GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: Arc<Mmap>,
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: BTreeMap<String, TensorInfo>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// Largest metadata array or string accepted (a guard against a corrupt
/// count making the parser allocate the machine away; real vocabularies
/// have a few hundred thousand entries).
const MAX_ITEMS: u64 = 1 << 26;
const MAX_DIMS: u32 = 4;

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            format!("truncated: needs {n} bytes at offset {} of {}", self.pos, self.bytes.len())
        })?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u32(&mut self) -> std::result::Result<u32, String> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> std::result::Result<u64, String> {
        self.array().map(u64::from_le_bytes)
    }

    fn count(&mut self, what: &str) -> std::result::Result<usize, String> {
        let n = self.u64()?;
        if n > MAX_ITEMS {
            return Err(format!("{what} count {n} is implausibly large (corrupt file?)"));
        }
        Ok(n as usize)
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        let n = self.count("string length")?;
        let bytes = self.take(n)?;
        // llama.cpp does not check UTF-8 either; a vocabulary with a stray
        // byte should still load, so replace rather than refuse.
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn value(&mut self, ty: u32, depth: usize) -> std::result::Result<GgufValue, String> {
        Ok(match ty {
            0 => GgufValue::U8(self.array::<1>()?[0]),
            1 => GgufValue::I8(i8::from_le_bytes(self.array()?)),
            2 => GgufValue::U16(u16::from_le_bytes(self.array()?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array()?)),
            4 => GgufValue::U32(self.u32()?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array()?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(format!("invalid bool byte {b}")),
            },
            8 => GgufValue::String(self.string()?),
            9 => {
                if depth > 0 {
                    return Err("nested arrays are not part of GGUF".into());
                }
                let item_ty = self.u32()?;
                let n = self.count("array length")?;
                let mut items = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    items.push(self.value(item_ty, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64()?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array()?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array()?)),
            other => return Err(format!("unknown metadata value type {other}")),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: a read-only private map of a model file; a concurrent
        // truncation by another process is outside what any loader can
        // defend against (llama.cpp maps GGUF files the same way).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        Self::parse(path, Arc::new(map))
    }

    fn parse(path: &Path, map: Arc<Mmap>) -> Result<Self> {
        let err = |message: String| ModelError::Gguf { path: path.to_path_buf(), message };
        let mut c = Cursor { bytes: &map, pos: 0 };
        let magic = c.array::<4>().map_err(err)?;
        if &magic != b"GGUF" {
            return Err(err(format!("not a GGUF file (magic {magic:02x?}, expected \"GGUF\")")));
        }
        let version = c.u32().map_err(err)?;
        match version {
            2 | 3 => {}
            1 => return Err(err("GGUF version 1 is not supported (re-convert the file)".into())),
            v if v.swap_bytes() <= 3 => {
                return Err(err("big-endian GGUF files are not supported".into()))
            }
            v => return Err(err(format!("unknown GGUF version {v}"))),
        }
        let num_tensors = c.count("tensor").map_err(err)?;
        let num_kv = c.count("metadata").map_err(err)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..num_kv {
            let key = c.string().map_err(err)?;
            let ty = c.u32().map_err(err)?;
            let value = c.value(ty, 0).map_err(|m| err(format!("metadata `{key}`: {m}")))?;
            metadata.insert(key, value);
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a as usize,
                _ => return Err(err(format!("general.alignment {v:?} is not a power of two"))),
            },
        };
        let mut infos = Vec::with_capacity(num_tensors.min(1 << 16));
        for _ in 0..num_tensors {
            let name = c.string().map_err(err)?;
            let tensor_err = |m: String| err(format!("tensor `{name}`: {m}"));
            let n_dims = c.u32().map_err(tensor_err)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(tensor_err(format!("{n_dims} dimensions (1 to {MAX_DIMS} allowed)")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                let d = c.u64().map_err(tensor_err)?;
                dims.push(usize::try_from(d).map_err(|_| tensor_err(format!("dimension {d}")))?);
            }
            let ty_id = c.u32().map_err(tensor_err)?;
            let ty = TensorType::from_ggml(ty_id).ok_or_else(|| {
                tensor_err(format!(
                    "ggml type {ty_id} ({}) is not supported (F32, F16, BF16, Q4_0, Q4_1, \
                     Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K)",
                    ggml_type_name(ty_id)
                ))
            })?;
            let offset = c.u64().map_err(tensor_err)?;
            infos.push((name, ty, dims, offset));
        }
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let mut tensors = BTreeMap::new();
        for (name, ty, dims, offset) in infos {
            let tensor_err = |m: String| err(format!("tensor `{name}`: {m}"));
            let rows: usize = dims[1..]
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| tensor_err(format!("dimensions {dims:?} overflow")))?;
            let len =
                ty.row_bytes(dims[0]).and_then(|rb| rb.checked_mul(rows)).ok_or_else(|| {
                    tensor_err(format!(
                        "{} rows of {} elements do not fit whole {} blocks",
                        rows,
                        dims[0],
                        ty.name()
                    ))
                })?;
            let start = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(data_start))
                .filter(|s| s % alignment == 0)
                .ok_or_else(|| tensor_err(format!("offset {offset} is not aligned")))?;
            if start.checked_add(len).is_none_or(|end| end > map.len()) {
                return Err(tensor_err(format!(
                    "data ({len} bytes at {start}) runs past the end of the file ({} bytes): \
                     truncated download?",
                    map.len()
                )));
            }
            if tensors.insert(name.clone(), TensorInfo { ty, dims, offset: start, len }).is_some() {
                return Err(tensor_err("appears twice".into()));
            }
        }
        Ok(Self { path: path.to_path_buf(), map, version, metadata, tensors })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The map itself, for tensors that keep pointing into it.
    pub fn map(&self) -> &Arc<Mmap> {
        &self.map
    }

    /// A tensor's bytes (bounds were checked at open).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        &self.map[info.offset..info.offset + info.len]
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// Total bytes of tensor data.
    pub fn data_bytes(&self) -> u64 {
        self.tensors.values().map(|t| t.len as u64).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal writer for the tests' hand-made files.
    struct Writer(Vec<u8>);

    impl Writer {
        fn string(&mut self, s: &str) {
            self.0.extend((s.len() as u64).to_le_bytes());
            self.0.extend(s.as_bytes());
        }
    }

    fn file(tensor_data_len: usize, claimed_dims: [u64; 2], ty: u32) -> Vec<u8> {
        let mut w = Writer(b"GGUF".to_vec());
        w.0.extend(3u32.to_le_bytes());
        w.0.extend(1u64.to_le_bytes());
        w.0.extend(2u64.to_le_bytes());
        w.string("general.architecture");
        w.0.extend(8u32.to_le_bytes());
        w.string("llama");
        w.string("tokenizer.ggml.scores");
        w.0.extend(9u32.to_le_bytes());
        w.0.extend(6u32.to_le_bytes());
        w.0.extend(2u64.to_le_bytes());
        w.0.extend(0.5f32.to_le_bytes());
        w.0.extend((-1.0f32).to_le_bytes());
        w.string("w");
        w.0.extend(2u32.to_le_bytes());
        for d in claimed_dims {
            w.0.extend(d.to_le_bytes());
        }
        w.0.extend(ty.to_le_bytes());
        w.0.extend(0u64.to_le_bytes());
        while !w.0.len().is_multiple_of(32) {
            w.0.push(0);
        }
        w.0.extend(std::iter::repeat_n(7u8, tensor_data_len));
        w.0
    }

    fn parse(bytes: Vec<u8>) -> Result<GgufFile> {
        let mut f = tempfile::tempfile().expect("tempfile");
        std::io::Write::write_all(&mut f, &bytes).expect("write");
        // SAFETY: a private temporary file nobody else writes.
        let map = unsafe { Mmap::map(&f) }.expect("map");
        GgufFile::parse(Path::new("t.gguf"), Arc::new(map))
    }

    #[test]
    fn reads_metadata_and_tensor_infos() {
        let g = parse(file(2 * 3 * 4, [3, 2], 0)).expect("valid");
        assert_eq!(g.version, 3);
        assert_eq!(g.get("general.architecture").and_then(GgufValue::as_str), Some("llama"));
        let scores = g.get("tokenizer.ggml.scores").and_then(GgufValue::as_array).expect("array");
        assert_eq!(scores, &[GgufValue::F32(0.5), GgufValue::F32(-1.0)]);
        let t = &g.tensors["w"];
        assert_eq!((t.ty, t.shape(), t.len), (TensorType::F32, vec![2, 3], 24));
        assert!(g.tensor_bytes(t).iter().all(|&b| b == 7));
    }

    #[test]
    fn corrupt_files_are_errors_naming_the_problem() {
        let e = |bytes: Vec<u8>| parse(bytes).unwrap_err().to_string();
        assert!(e(file(23, [3, 2], 0)).contains("truncated download"));
        assert!(e(file(64, [3, 2], 99)).contains("ggml type 99 (unknown)"));
        assert!(e(file(64, [256, 1], 10)).contains("ggml type 10 (Q2_K) is not supported"));
        // 33 columns do not fill Q8_0 blocks of 32.
        assert!(e(file(64, [33, 1], 8)).contains("whole Q8_0 blocks"));
        let mut bad = file(24, [3, 2], 0);
        bad[0] = b'X';
        assert!(e(bad).contains("not a GGUF file"));
        let good = file(24, [3, 2], 0);
        for cut in [3, 10, 30, 60, 100] {
            assert!(e(good[..cut].to_vec()).contains("truncated"), "cut at {cut}");
        }
        let mut v1 = file(24, [3, 2], 0);
        v1[4] = 1;
        assert!(e(v1).contains("version 1"));
    }
}
