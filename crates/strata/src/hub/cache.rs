//! The Hugging Face cache side of the hub: one repo's folder
//! (`models--org--name/{blobs,refs,snapshots}`), what a snapshot holds
//! and what it lacks.

use super::*;

/// Whether a revision is a full commit hash.
pub(super) fn is_commit(revision: &str) -> bool {
    revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit())
}

/// One repo's folder in the cache (`models--org--name`).
#[derive(Debug)]
pub(super) struct CachedRepo {
    pub(super) cache_dir: PathBuf,
    pub(super) repo_id: String,
    pub(super) dir: PathBuf,
    pub(super) hf: hf_hub::CacheRepo,
}

impl CachedRepo {
    pub(super) fn new(cache_dir: &Path, repo_id: &str) -> Self {
        let repo = Repo::new(repo_id.to_owned(), RepoType::Model);
        Self {
            cache_dir: cache_dir.to_path_buf(),
            repo_id: repo_id.to_owned(),
            dir: cache_dir.join(repo.folder_name()),
            hf: Cache::new(cache_dir.to_path_buf()).repo(repo),
        }
    }

    /// hf-hub's handle on `refs/{revision}`.
    pub(super) fn hf_ref(&self, revision: &str) -> hf_hub::CacheRepo {
        let repo = Repo::with_revision(self.repo_id.clone(), RepoType::Model, revision.to_owned());
        Cache::new(self.cache_dir.clone()).repo(repo)
    }

    pub(super) fn ref_path(&self, revision: &str) -> PathBuf {
        self.dir.join("refs").join(revision)
    }

    pub(super) fn snapshot_dir(&self, commit: &str) -> PathBuf {
        self.hf.pointer_path(commit)
    }

    /// The snapshot `revision` names: a commit hash with its snapshot, or
    /// a branch or tag through `refs/`.
    pub(super) fn snapshot(&self, revision: &str) -> Option<PathBuf> {
        if is_commit(revision) {
            let dir = self.snapshot_dir(revision);
            if dir.is_dir() {
                return Some(dir);
            }
        }
        let commit = std::fs::read_to_string(self.ref_path(revision)).ok()?;
        let dir = self.snapshot_dir(commit.trim());
        (!commit.trim().is_empty() && dir.is_dir()).then_some(dir)
    }
}

/// The weight shards a sharded checkpoint's index names.
pub(super) fn index_shards(index: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(index).with_context(|| format!("reading {}", index.display()))?;
    let value: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", index.display()))?;
    let map = value
        .get("weight_map")
        .and_then(Value::as_object)
        .with_context(|| format!("{}: no `weight_map` object", index.display()))?;
    let mut shards: Vec<String> = Vec::new();
    for file in map.values() {
        let name = file
            .as_str()
            .filter(|n| {
                !n.is_empty()
                    && !n.starts_with('/')
                    && Path::new(n)
                        .components()
                        .all(|c| matches!(c, std::path::Component::Normal(_)))
            })
            .with_context(|| format!("{}: `{file}` is not a file name", index.display()))?;
        if !shards.iter().any(|s| s == name) {
            shards.push(name.to_owned());
        }
    }
    shards.sort();
    Ok(shards)
}

/// What a cached snapshot lacks for `want` (empty: complete).
pub(super) fn missing_files(snapshot: &Path, want: &Want) -> Vec<String> {
    let mut missing: Vec<String> = want
        .small_files()
        .into_iter()
        .filter(|(f, required)| *required && !snapshot.join(f).is_file())
        .map(|(f, _)| f.to_owned())
        .collect();
    if let Want::Gguf(name) = want {
        if !snapshot.join(name).is_file() {
            missing.push(name.clone());
        }
    }
    if let Want::Model { .. } = want {
        let index = snapshot.join(INDEX);
        if index.is_file() {
            match index_shards(&index) {
                Ok(shards) => {
                    missing.extend(shards.into_iter().filter(|s| !snapshot.join(s).is_file()))
                }
                Err(e) => missing.push(format!("{INDEX} ({e:#})")),
            }
        } else if !snapshot.join(SINGLE).is_file() {
            missing.push(format!("{SINGLE} or {INDEX}"));
        }
    }
    missing
}
