//! Checkpoint weights from safetensors files, memory-mapped.
//!
//! A directory holds either `model.safetensors.index.json` (sharded: the
//! index maps each tensor to its shard) or a single `model.safetensors`.
//! Headers are parsed once at open, and every file is checked to be exactly
//! as long as its header says, so a truncated download is reported at open
//! with the file's name rather than as garbage values later.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, UncheckedAdvice};
use safetensors::tensor::{Dtype, Metadata, SafeTensors, TensorInfo};
use serde_json::Value;

use super::{HostData, HostTensor, WeightSource};
use crate::error::{ModelError, Result};

struct Shard {
    path: PathBuf,
    mmap: Mmap,
    /// Offset of the first data byte (after the length prefix and header).
    data_start: usize,
}

pub struct SafetensorsWeights {
    dir: PathBuf,
    shards: Vec<Shard>,
    tensors: BTreeMap<String, (usize, TensorInfo)>,
    total_bytes: u64,
}

impl std::fmt::Debug for SafetensorsWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetensorsWeights")
            .field("dir", &self.dir)
            .field("shards", &self.shards.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

fn shard_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|source| ModelError::Json { path: index.clone(), source })?;
        let map = value
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| ModelError::config(&index, "missing `weight_map` object"))?;
        let mut files: Vec<PathBuf> = Vec::new();
        for file in map.values() {
            let name = file.as_str().ok_or_else(|| {
                ModelError::config(&index, "`weight_map` values must be file names")
            })?;
            let path = dir.join(name);
            if !files.contains(&path) {
                files.push(path);
            }
        }
        files.sort();
        return Ok(files);
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(ModelError::io(
        &single,
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no model.safetensors or model.safetensors.index.json in the model directory",
        ),
    ))
}

impl SafetensorsWeights {
    pub fn open(dir: &Path) -> Result<Self> {
        let mut shards = Vec::new();
        let mut tensors = BTreeMap::new();
        let mut total_bytes = 0u64;
        for path in shard_files(dir)? {
            let file = File::open(&path).map_err(|e| ModelError::io(&path, e))?;
            // SAFETY: the map is read-only and private to this process; a
            // concurrent truncation of the file by another process is outside
            // what any loader can defend against (the same holds for
            // transformers and vLLM, which map checkpoints the same way).
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(&path, e))?;
            let (header_len, metadata): (usize, Metadata) = SafeTensors::read_metadata(&mmap)
                .map_err(|e| ModelError::Safetensors {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            let shard_index = shards.len();
            for (name, info) in metadata.tensors() {
                total_bytes += (info.data_offsets.1 - info.data_offsets.0) as u64;
                tensors.insert(name, (shard_index, info.clone()));
            }
            shards.push(Shard { path, mmap, data_start: 8 + header_len });
        }
        Ok(Self { dir: dir.to_path_buf(), shards, tensors, total_bytes })
    }

    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }
}

fn words<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    bytes.chunks_exact(N).map(|c| {
        let mut w = [0u8; N];
        w.copy_from_slice(c);
        w
    })
}

impl WeightSource for SafetensorsWeights {
    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn load(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let (shard_index, info) =
            self.tensors.get(name).ok_or_else(|| ModelError::MissingTensor {
                name: name.to_owned(),
                location: self.dir.display().to_string(),
            })?;
        let shard = &self.shards[*shard_index];
        if info.shape != shape {
            return Err(ModelError::TensorShape {
                path: shard.path.clone(),
                name: name.to_owned(),
                expected: shape.to_vec(),
                found: info.shape.clone(),
            });
        }
        let (start, end) = info.data_offsets;
        // read_metadata checked that the offsets lie inside the file.
        let bytes = &shard.mmap[shard.data_start + start..shard.data_start + end];
        let data = match info.dtype {
            Dtype::F32 => HostData::F32(words::<4>(bytes).map(f32::from_le_bytes).collect()),
            Dtype::F16 => HostData::F16(words::<2>(bytes).map(u16::from_le_bytes).collect()),
            Dtype::BF16 => HostData::BF16(words::<2>(bytes).map(u16::from_le_bytes).collect()),
            other => {
                return Err(ModelError::TensorDtype {
                    path: shard.path.clone(),
                    name: name.to_owned(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        // The values are copied out: drop the mapped pages from this
        // process so that loading peaks at the weights plus one tensor, not
        // twice the checkpoint. Failure only costs memory, so it is ignored.
        // SAFETY: the mapping is a read-only map of a file; after
        // MADV_DONTNEED a later read faults the same file contents back in,
        // and no slice into the range is alive here.
        let _ = unsafe {
            shard.mmap.unchecked_advise_range(
                UncheckedAdvice::DontNeed,
                shard.data_start + start,
                end - start,
            )
        };
        Ok(HostTensor { name: name.to_owned(), shape: shape.to_vec(), data })
    }

    fn total_bytes(&self) -> u64 {
        self.total_bytes
    }
}
