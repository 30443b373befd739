//! Models from the Hugging Face hub: `strata serve org/name`, as `vllm serve`.
//!
//! The [`hf_hub`] crate (its sync API over `ureq`) does the transfers and
//! the cache layout: `GET /api/models/{repo}/revision/{rev}` for the file
//! list, `GET /{repo}/resolve/{commit}/{file}` (a `Range: bytes=0-0` probe
//! for the ETag, `X-Repo-Commit` and size, following the hub's redirects),
//! then the body into `blobs/{etag}.part`, resumed with `Range` when the
//! part is there, renamed to `blobs/{etag}` once complete, and only then
//! linked from `snapshots/{commit}/{file}`. So a download cut in the middle
//! never leaves a half file in a snapshot, and the cache is the one
//! `huggingface-cli` and vLLM share: a model they fetched is used as is.
//!
//! Around it, this module adds what hf-hub 0.5 lacks: the environment
//! (`HF_HUB_CACHE`, `HF_HOME`, `HF_TOKEN`, `HF_HUB_OFFLINE`), choosing the
//! files a strata load reads (config, tokenizer, safetensors: nothing
//! else), pinning them all to the commit the revision names, reuse of
//! files and blobs already in the cache, retries that resume, a size check
//! of every finished blob, the cache-only path (offline, or the hub out of
//! reach), and errors that say what went wrong in the user's terms.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use hf_hub::api::sync::{Api, ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};
use indicatif::ProgressBar;
use serde_json::Value;

mod cache;

use cache::{index_shards, is_commit, missing_files, CachedRepo};

/// The hub the `HF_ENDPOINT` variable overrides.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Attempts per file; each one resumes what the last one left.
const ATTEMPTS: u32 = 4;

/// Files a model directory may carry besides its weights, in fetch order;
/// `true` when a load cannot do without it.
const MODEL_CONFIG_FILES: &[(&str, bool)] =
    &[("config.json", true), ("generation_config.json", false)];
const TOKENIZER_FILES: &[(&str, bool)] = &[
    ("tokenizer.json", true),
    ("tokenizer_config.json", false),
    ("special_tokens_map.json", false),
    ("chat_template.jinja", false),
];
const INDEX: &str = "model.safetensors.index.json";
const SINGLE: &str = "model.safetensors";

/// How the environment configures hub access (the variables
/// `huggingface_hub` and vLLM read).
#[derive(Clone, Debug)]
pub struct HubEnv {
    /// `HF_ENDPOINT`, without a trailing slash.
    pub endpoint: String,
    /// `HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
    pub cache_dir: PathBuf,
    /// `HF_TOKEN`, else the file `HF_TOKEN_PATH` or `$HF_HOME/token` names.
    pub token: Option<String>,
    /// `HF_HUB_OFFLINE`: the cache only, no network at all.
    pub offline: bool,
    /// Progress bars (stderr is a terminal, `HF_HUB_DISABLE_PROGRESS_BARS` unset).
    pub progress: bool,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

fn truthy(name: &str) -> bool {
    var(name)
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "on" | "yes" | "true"))
}

impl HubEnv {
    pub fn from_env() -> Result<Self> {
        let home = || -> Result<PathBuf> {
            if let Some(h) = var("HF_HOME") {
                return Ok(PathBuf::from(h));
            }
            if let Some(x) = var("XDG_CACHE_HOME") {
                return Ok(Path::new(&x).join("huggingface"));
            }
            var("HOME")
                .map(|h| Path::new(&h).join(".cache/huggingface"))
                .context("cannot place the Hugging Face cache: set HF_HUB_CACHE or HF_HOME")
        };
        let cache_dir = match var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")) {
            Some(dir) => PathBuf::from(dir),
            None => home()?.join("hub"),
        };
        let token_file = var("HF_TOKEN_PATH")
            .map(PathBuf::from)
            .or_else(|| home().ok().map(|h| h.join("token")));
        let token = var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN")).or_else(|| {
            let text = std::fs::read_to_string(token_file?).ok()?;
            Some(text.trim().to_owned()).filter(|t| !t.is_empty())
        });
        Ok(Self {
            endpoint: var("HF_ENDPOINT")
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned())
                .trim_end_matches('/')
                .to_owned(),
            cache_dir,
            token,
            offline: truthy("HF_HUB_OFFLINE"),
            progress: std::io::stderr().is_terminal() && !truthy("HF_HUB_DISABLE_PROGRESS_BARS"),
        })
    }
}

/// Whether `s` is a hub repo id: `name` or `org/name`, each part of ASCII
/// letters, digits, `-`, `_` and `.`, not starting or ending with `-` or
/// `.`, without `--` or `..` (the hub's own rule), at most 96 characters.
pub fn is_repo_id(s: &str) -> bool {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.'])
            && !p.contains("--")
            && !p.contains("..")
    };
    let parts: Vec<&str> = s.split('/').collect();
    s.len() <= 96 && (1..=2).contains(&parts.len()) && parts.iter().all(|p| part_ok(p))
}

/// What a resolution must provide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Want {
    /// Config and safetensors weights, and the tokenizer files unless the
    /// tokenizer comes from elsewhere (`--tokenizer`).
    Model { tokenizer: bool },
    /// The tokenizer files only.
    Tokenizer,
    /// One GGUF file of the repo (`--gguf-file`); it carries its config
    /// and tokenizer.
    Gguf(String),
}

impl Want {
    fn small_files(&self) -> Vec<(&'static str, bool)> {
        match *self {
            Want::Gguf(_) => Vec::new(),
            Want::Model { tokenizer } => {
                let mut files = MODEL_CONFIG_FILES.to_vec();
                if tokenizer {
                    files.extend_from_slice(TOKENIZER_FILES);
                }
                files
            }
            // `Tokenizer::from_dir` reads the EOS ids from the configs beside it.
            Want::Tokenizer => {
                let mut files = TOKENIZER_FILES.to_vec();
                files.extend(MODEL_CONFIG_FILES.iter().map(|(f, _)| (*f, false)));
                files
            }
        }
    }
}

/// Resolves `repo_id` at `revision` to a snapshot directory of the cache
/// holding what `want` asks for, downloading what is missing (unless
/// offline).
pub fn resolve(env: &HubEnv, repo_id: &str, revision: &str, want: Want) -> Result<PathBuf> {
    let cache = CachedRepo::new(&env.cache_dir, repo_id);
    if env.offline {
        let Some(snapshot) = cache.snapshot(revision) else {
            bail!(
                "model `{repo_id}` (revision `{revision}`) is not in the Hugging Face cache at {}, \
                 and HF_HUB_OFFLINE is set, so it cannot be downloaded: unset HF_HUB_OFFLINE \
                 (or fetch it first, e.g. `huggingface-cli download {repo_id}`)",
                env.cache_dir.display()
            );
        };
        let missing = missing_files(&snapshot, &want);
        if !missing.is_empty() {
            bail!(
                "model `{repo_id}` (revision `{revision}`) is only partly in the Hugging Face \
                 cache ({}): missing {}, and HF_HUB_OFFLINE is set, so it cannot be downloaded",
                snapshot.display(),
                missing.join(", ")
            );
        }
        tracing::info!(
            model = repo_id,
            snapshot = %snapshot.display(),
            "offline: using the cached model"
        );
        return Ok(snapshot);
    }
    // A commit never changes: its complete snapshot needs no hub (a branch
    // or tag is looked up, as vLLM does, to find a newer commit).
    if is_commit(revision) {
        if let Some(snapshot) = cache.snapshot(revision) {
            if missing_files(&snapshot, &want).is_empty() {
                return Ok(snapshot);
            }
        }
    }
    let hub = Hub::new(env, repo_id, revision)?;
    match hub.listing() {
        Ok(listing) => hub.fetch(&cache, &listing, &want),
        Err(failure) => {
            // As huggingface_hub: when the hub cannot answer (down, out of
            // reach, or refusing a token that once worked), a complete
            // cached copy is used; an unknown revision is not "cached".
            if !failure.is_revision_not_found() {
                if let Some(snapshot) = cache.snapshot(revision) {
                    if missing_files(&snapshot, &want).is_empty() {
                        tracing::warn!(
                            "{}; using the cached copy in {}",
                            hub.describe(&failure, None),
                            snapshot.display()
                        );
                        return Ok(snapshot);
                    }
                }
            }
            Err(anyhow!(hub.describe(&failure, None)))
        }
    }
}

/// The file list of one commit.
#[derive(Debug)]
struct Listing {
    commit: String,
    files: Vec<String>,
}

impl Listing {
    fn has(&self, file: &str) -> bool {
        self.files.iter().any(|f| f == file)
    }
}

/// Why a hub request failed.
#[derive(Debug)]
enum Failure {
    /// The hub answered with an error status.
    Status { code: u16, error_code: Option<String>, message: Option<String>, url: String },
    /// No answer: connection refused, DNS, TLS, timeout.
    Network(String),
    /// A transfer that broke off (or a file that arrived short).
    Interrupted(String),
    /// Another process is downloading the same file.
    Busy(PathBuf),
    /// An answer that is not what a hub gives.
    Protocol(String),
    /// The local disk.
    Local(String),
}

impl Failure {
    fn is_revision_not_found(&self) -> bool {
        matches!(self, Failure::Status { error_code: Some(c), .. } if c == "RevisionNotFound")
    }

    /// Worth another attempt: the network, or the hub's own trouble.
    fn is_transient(&self) -> bool {
        match self {
            Failure::Network(_) | Failure::Interrupted(_) | Failure::Busy(_) => true,
            Failure::Status { code, .. } => *code >= 500 || *code == 429,
            Failure::Protocol(_) | Failure::Local(_) => false,
        }
    }

    fn from_ureq(e: &ureq::Error, url: &str) -> Self {
        match e {
            ureq::Error::StatusCode(code) => Failure::Status {
                code: *code,
                error_code: None,
                message: None,
                url: url.to_owned(),
            },
            ureq::Error::BadUri(_) | ureq::Error::Http(_) => {
                Failure::Protocol(format!("bad URL {url}: {e}"))
            }
            other => Failure::Network(other.to_string()),
        }
    }

    fn from_api(e: ApiError, url: &str) -> Self {
        match e {
            ApiError::RequestError(e) => Failure::from_ureq(&e, url),
            ApiError::MissingHeader(h) | ApiError::InvalidHeader(h) => Failure::Protocol(format!(
                "the answer for {url} lacks a valid `{h}` header (is HF_ENDPOINT a Hugging Face \
                 hub?)"
            )),
            // A body cut short surfaces as an I/O error of the copy.
            ApiError::IoError(e) => Failure::Interrupted(e.to_string()),
            ApiError::LockAcquisition(path) => Failure::Busy(path),
            ApiError::InvalidResume => {
                Failure::Interrupted("a .part file longer than the file".into())
            }
            other => Failure::Protocol(format!("{url}: {other}")),
        }
    }
}

/// The hub, for one repo at one revision.
struct Hub<'a> {
    env: &'a HubEnv,
    api: Api,
    repo_id: &'a str,
    revision: &'a str,
}

impl<'a> Hub<'a> {
    fn new(env: &'a HubEnv, repo_id: &'a str, revision: &'a str) -> Result<Self> {
        let api = ApiBuilder::from_cache(Cache::new(env.cache_dir.clone()))
            .with_endpoint(env.endpoint.clone())
            .with_token(env.token.clone())
            .with_progress(false)
            .with_retries(0)
            .with_user_agent("strata", env!("CARGO_PKG_VERSION"))
            .build()
            .map_err(|e| anyhow!("setting up the hub client: {e}"))?;
        Ok(Self { env, api, repo_id, revision })
    }

    fn repo(&self, revision: &str) -> ApiRepo {
        self.api.repo(Repo::with_revision(
            self.repo_id.to_owned(),
            RepoType::Model,
            revision.to_owned(),
        ))
    }

    /// The model's page, where gated models are accepted.
    fn page(&self) -> String {
        format!("{}/{}", self.env.endpoint, self.repo_id)
    }

    /// A failure in the user's terms.
    fn describe(&self, failure: &Failure, file: Option<&str>) -> String {
        let (repo, rev, endpoint) = (self.repo_id, self.revision, &self.env.endpoint);
        match failure {
            Failure::Network(detail) => format!(
                "could not reach the Hugging Face hub at {endpoint} ({detail}); check the network \
                 and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use cached models only"
            ),
            Failure::Protocol(detail) => {
                format!("unexpected answer from the hub at {endpoint}: {detail}")
            }
            Failure::Local(detail) => detail.clone(),
            Failure::Interrupted(detail) => {
                format!("the transfer from {endpoint} broke off ({detail})")
            }
            Failure::Busy(lock) => {
                format!(
                    "another process is downloading the same file (it holds {})",
                    lock.display()
                )
            }
            Failure::Status { code, error_code, message, url } => {
                let code_is = |c: &str| error_code.as_deref() == Some(c);
                let detail = message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
                let token_advice = if self.env.token.is_some() {
                    "the token in HF_TOKEN (or the saved token) has no access to it: use a token \
                     of an account that has access"
                        .to_owned()
                } else {
                    "set HF_TOKEN to a Hugging Face access token of an account that has access"
                        .to_owned()
                };
                if code_is("RevisionNotFound") {
                    format!(
                        "revision `{rev}` of model `{repo}` was not found on the hub ({endpoint})"
                    )
                } else if code_is("GatedRepo")
                    || *code == 403
                    || (*code == 401 && !code_is("RepoNotFound"))
                {
                    format!(
                        "model `{repo}` is gated or private (HTTP {code} from {url}{detail}): \
                         {token_advice}, and accept the model's terms on its page, {}",
                        self.page()
                    )
                } else if *code == 401 {
                    // The hub answers 401 for a repo it will not show this
                    // caller: private, gated, or absent.
                    format!(
                        "model `{repo}` is gated or private, or does not exist (HTTP 401 from \
                         {url}): if it exists, {token_advice}, and accept the model's terms on \
                         its page, {}",
                        self.page()
                    )
                } else if *code == 404 {
                    match file {
                        Some(f) if !code_is("RepoNotFound") => format!(
                            "file `{f}` of model `{repo}` (revision `{rev}`) was not found on \
                             the hub ({url})"
                        ),
                        _ => {
                            format!(
                                "model `{repo}` was not found on the hub at {endpoint} (nor is \
                                 it a local directory)"
                            )
                        }
                    }
                } else {
                    format!("the hub at {endpoint} answered HTTP {code} for {url}{detail}")
                }
            }
        }
    }

    /// The revision's commit and files (`/api/models/{repo}/revision/{rev}`).
    fn listing(&self) -> Result<Listing, Failure> {
        let url = format!(
            "{}/api/models/{}/revision/{}",
            self.env.endpoint,
            self.repo_id,
            self.revision.replace('/', "%2F")
        );
        let mut response = self
            .repo(self.revision)
            .info_request()
            .config()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .call()
            .map_err(|e| Failure::from_ureq(&e, &url))?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
        };
        if status != 200 {
            return Err(Failure::Status {
                code: status,
                error_code: header("x-error-code"),
                message: header("x-error-message"),
                url,
            });
        }
        let body = response
            .body_mut()
            .read_to_string()
            .map_err(|e| Failure::Interrupted(format!("reading {url}: {e}")))?;
        let value: Value = serde_json::from_str(&body)
            .map_err(|e| Failure::Protocol(format!("{url} did not answer JSON: {e}")))?;
        let commit =
            value.get("sha").and_then(Value::as_str).filter(|s| !s.is_empty()).ok_or_else(
                || Failure::Protocol(format!("{url}: no commit `sha` in the answer")),
            )?;
        let files = value
            .get("siblings")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                Failure::Protocol(format!("{url}: no `siblings` file list in the answer"))
            })?
            .iter()
            .filter_map(|s| s.get("rfilename").and_then(Value::as_str).map(str::to_owned))
            .collect();
        Ok(Listing { commit: commit.to_owned(), files })
    }

    /// Brings the files `want` needs from the listed commit into its
    /// snapshot; returns the snapshot directory.
    fn fetch(&self, cache: &CachedRepo, listing: &Listing, want: &Want) -> Result<PathBuf> {
        let (repo, rev, commit) = (self.repo_id, self.revision, listing.commit.as_str());
        let at = if rev == commit {
            format!("commit {commit}")
        } else {
            format!("revision `{rev}`, commit {commit}")
        };
        let mut files: Vec<String> = Vec::new();
        for (file, required) in want.small_files() {
            if listing.has(file) {
                files.push(file.to_owned());
            } else if required {
                bail!(match file {
                    "config.json" => format!(
                        "model `{repo}` ({at}) has no config.json: it is not a transformers \
                         checkpoint that strata can load"
                    ),
                    "tokenizer.json" if *want == Want::Tokenizer => format!(
                        "`{repo}` ({at}) has no tokenizer.json, the only tokenizer format \
                         strata reads"
                    ),
                    _ => format!(
                        "model `{repo}` ({at}) has no {file} (strata reads tokenizers only from \
                         tokenizer.json): give a tokenizer with --tokenizer ID_OR_DIR"
                    ),
                });
            }
        }
        // Named chat templates beside chat_template.jinja (transformers'
        // `additional_chat_templates/NAME.jinja`), with the tokenizer.
        if matches!(want, Want::Tokenizer | Want::Model { tokenizer: true }) {
            files.extend(
                listing
                    .files
                    .iter()
                    .filter(|f| {
                        f.strip_prefix("additional_chat_templates/").is_some_and(|name| {
                            name.ends_with(".jinja") && !name.contains('/') && !name.contains("..")
                        })
                    })
                    .cloned(),
            );
        }
        let weights = match want {
            Want::Tokenizer => None,
            Want::Gguf(name) if listing.has(name) => Some(name.as_str()),
            Want::Gguf(name) => {
                let ggufs: Vec<&str> = listing
                    .files
                    .iter()
                    .map(String::as_str)
                    .filter(|f| f.to_ascii_lowercase().ends_with(".gguf"))
                    .collect();
                bail!(
                    "model `{repo}` ({at}) has no file `{name}`; its GGUF files: {}",
                    if ggufs.is_empty() { "none".to_owned() } else { ggufs.join(", ") }
                );
            }
            Want::Model { .. } if listing.has(INDEX) => Some(INDEX),
            Want::Model { .. } if listing.has(SINGLE) => Some(SINGLE),
            Want::Model { .. } => {
                let mut present: Vec<&str> =
                    listing.files.iter().map(String::as_str).take(12).collect();
                if listing.files.len() > present.len() {
                    present.push("…");
                }
                bail!(
                    "model `{repo}` ({at}) has no safetensors weights ({SINGLE} or {INDEX}); \
                     strata loads only safetensors checkpoints (the repo holds: {})",
                    present.join(", ")
                );
            }
        };
        files.extend(weights.map(str::to_owned));

        let snapshot = cache.snapshot_dir(commit);
        // hf-hub records the ref of the revision it was given, here the
        // commit: `refs/{commit}`, which no other tool writes. It goes,
        // whatever happens below.
        let _stray_ref = RemoveOnDrop(cache.ref_path(commit));
        let pinned = self.repo(commit);
        let mut fetched = 0usize;
        for file in &files {
            fetched += usize::from(self.fetch_file(cache, &pinned, commit, file)?);
        }
        if weights == Some(INDEX) {
            for shard in index_shards(&snapshot.join(INDEX))? {
                if !listing.has(&shard) {
                    bail!(
                        "model `{repo}` ({at}): {INDEX} names `{shard}`, which the repo does not \
                         hold"
                    );
                }
                fetched += usize::from(self.fetch_file(cache, &pinned, commit, &shard)?);
            }
        }
        // The branch or tag that was asked for now names this commit.
        if rev != commit {
            cache
                .hf_ref(rev)
                .create_ref(commit)
                .with_context(|| format!("writing {}", cache.ref_path(rev).display()))?;
        }
        let missing = missing_files(&snapshot, want);
        if !missing.is_empty() {
            bail!("model `{repo}` ({at}): {} still missing after the download", missing.join(", "));
        }
        if fetched == 0 {
            tracing::info!(model = repo, commit, "model is up to date in the cache");
        } else {
            tracing::info!(
                model = repo,
                commit,
                files = fetched,
                snapshot = %snapshot.display(),
                "downloaded"
            );
        }
        Ok(snapshot)
    }

    /// One file into the snapshot, unless it is there; `true` when it
    /// was fetched.
    fn fetch_file(
        &self,
        cache: &CachedRepo,
        pinned: &ApiRepo,
        commit: &str,
        file: &str,
    ) -> Result<bool> {
        let dst = cache.snapshot_dir(commit).join(file);
        if dst.is_file() {
            return Ok(false);
        }
        if dst.symlink_metadata().is_ok() {
            // A link to a blob that is gone: fetch again.
            std::fs::remove_file(&dst).with_context(|| format!("removing {}", dst.display()))?;
        }
        let url = pinned.url(file);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_fetch_file(cache, pinned, &url, file, &dst) {
                Ok(()) => return Ok(true),
                Err(failure) if failure.is_transient() && attempt < ATTEMPTS => {
                    let wait = Duration::from_millis(250 << attempt);
                    tracing::warn!(
                        "downloading `{file}` of `{}`: {}; retrying in {:.1} s \
                         (attempt {}/{ATTEMPTS})",
                        self.repo_id,
                        self.describe(&failure, Some(file)),
                        wait.as_secs_f64(),
                        attempt + 1
                    );
                    std::thread::sleep(wait);
                }
                Err(failure) => {
                    let what = self.describe(&failure, Some(file));
                    let resume = match failure {
                        Failure::Interrupted(_) => format!(
                            "; what arrived is kept (as a .part file) in {} and the next start \
                             resumes it",
                            cache.dir.join("blobs").display()
                        ),
                        _ => String::new(),
                    };
                    return Err(if failure.is_transient() {
                        anyhow!(
                            "downloading `{file}` of model `{}` from {} failed after {attempt} \
                             attempts: {what}{resume}",
                            self.repo_id,
                            self.env.endpoint,
                        )
                    } else {
                        anyhow!(what)
                    });
                }
            }
        }
    }

    fn try_fetch_file(
        &self,
        cache: &CachedRepo,
        pinned: &ApiRepo,
        url: &str,
        file: &str,
        dst: &Path,
    ) -> Result<(), Failure> {
        let io = |what: &str, path: &Path, e: std::io::Error| {
            Failure::Local(format!("{what} {}: {e}", path.display()))
        };
        let meta = self.api.metadata(url).map_err(|e| Failure::from_api(e, url))?;
        let size = meta.size() as u64;
        let blob = cache.hf.blob_path(meta.etag());
        // A blob another commit already brought (hf-hub would fetch it again).
        if std::fs::metadata(&blob).is_ok_and(|m| m.len() == size) && link_blob(&blob, dst, file) {
            return Ok(());
        }
        // hf-hub resumes `blobs/{etag}.part` from its length; a part that is
        // already whole (a crash before the rename) or too long cannot be
        // resumed (the hub answers 416), so it starts over.
        let mut part = blob.clone();
        part.set_extension("part");
        if std::fs::metadata(&part).is_ok_and(|m| m.len() >= size) {
            std::fs::remove_file(&part).map_err(|e| io("removing", &part, e))?;
        }
        let path = if self.env.progress {
            pinned.download_with_progress(file, ProgressBar::new(0))
        } else {
            pinned.download_with_progress(file, ())
        }
        .map_err(|e| Failure::from_api(e, url))?;
        let got = std::fs::metadata(&path).map_err(|e| io("reading", &path, e))?.len();
        if got != size {
            // Not a whole file: out of the snapshot, and start over next time.
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(&blob);
            return Err(Failure::Interrupted(format!(
                "`{file}` arrived with {got} of {size} bytes"
            )));
        }
        Ok(())
    }
}

/// Removes a file when dropped.
#[derive(Debug)]
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Links `dst` to an existing blob the way hf-hub does (a relative
/// symlink); `false` where that is not possible.
fn link_blob(blob: &Path, dst: &Path, file: &str) -> bool {
    #[cfg(unix)]
    {
        let Some(parent) = dst.parent() else { return false };
        if std::fs::create_dir_all(parent).is_err() {
            return false;
        }
        let Some(etag) = blob.file_name() else { return false };
        // snapshots/{commit}/{file}: up past the file's folders and the commit.
        let mut target = PathBuf::new();
        for _ in 0..Path::new(file).components().count() + 1 {
            target.push("..");
        }
        target.push("blobs");
        target.push(etag);
        std::os::unix::fs::symlink(target, dst).is_ok() && dst.is_file()
    }
    #[cfg(not(unix))]
    {
        let _ = (blob, dst, file);
        false
    }
}

#[cfg(test)]
mod tests;
