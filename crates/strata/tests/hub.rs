//! `strata serve org/name`: models from a Hugging Face hub (a loopback
//! mock of its HTTP layout, `common/hub_mock.rs`) into the Hugging Face
//! cache, then loaded as a local checkpoint directory.

#![allow(clippy::unwrap_used)]

mod common;
#[path = "common/hub_mock.rs"]
mod hub_mock;

use std::path::{Path, PathBuf};
use std::time::Duration;

use hub_mock::{fixture_dir, fixture_repo, run, serve, strata_cmd, tree, Access, MockHub};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(120);
const QWEN: &str = "strata-test/tiny-qwen3";
const LLAMA: &str = "strata-test/tiny-llama";

fn repo_dir(home: &Path, id: &str) -> PathBuf {
    home.join("hub").join(format!("models--{}", id.replace('/', "--")))
}

fn greedy_generate<'a>(model: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "generate",
        model,
        "--prompt",
        "The cat sat",
        "--max-tokens",
        "8",
        "--temperature",
        "0",
        "--ignore-eos",
        "--show-token-ids",
    ];
    args.extend_from_slice(extra);
    args
}

/// The greedy completion (text, tokens, usage) a server gives.
fn completion(url: &str, model: &str) -> Value {
    let body = json!({
        "model": model, "prompt": "The cat sat", "max_tokens": 12, "temperature": 0,
        "ignore_eos": true, "logprobs": 1,
    });
    let v = common::post_json(&format!("{url}/v1/completions"), &body);
    let choice = &v["choices"][0];
    assert!(choice["text"].as_str().is_some_and(|t| !t.is_empty()), "{v}");
    json!({
        "text": choice["text"], "tokens": choice["logprobs"]["tokens"],
        "finish_reason": choice["finish_reason"], "usage": v["usage"],
    })
}

/// The fixture's own answer, served from its directory.
fn local_completion(name: &str) -> Value {
    let dir = fixture_dir(name);
    let dir = dir.to_str().unwrap();
    let home = tempfile::tempdir().unwrap();
    let s = serve(
        &mut strata_cmd(
            &["serve", "--model", dir, "--port", "0"],
            "http://127.0.0.1:9",
            home.path(),
        ),
        LIMIT,
    );
    completion(&s.url, dir)
}

fn resolve_paths(hub: &MockHub) -> Vec<String> {
    hub.requests().into_iter().filter(|r| r.path.contains("/resolve/")).map(|r| r.path).collect()
}

#[test]
fn cold_download_serves_the_tokens_of_the_local_directory() {
    let hub = MockHub::start();
    let repo = fixture_repo(QWEN, "tiny-qwen3");
    hub.add(QWEN, repo.clone());
    let home = tempfile::tempdir().unwrap();

    let s = serve(&mut strata_cmd(&["serve", QWEN, "--port", "0"], &hub.url, home.path()), LIMIT);
    let from_hub = completion(&s.url, QWEN);
    drop(s);
    assert_eq!(from_hub, local_completion("tiny-qwen3"), "identical tokens from hub and directory");

    // The standard cache layout, and only the files a load reads.
    let dir = repo_dir(home.path(), QWEN);
    assert_eq!(std::fs::read_to_string(dir.join("refs/main")).unwrap(), repo.commit);
    let snapshot = dir.join("snapshots").join(&repo.commit);
    let mut files: Vec<String> = tree(&snapshot);
    files.sort();
    assert_eq!(
        files,
        [
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json"
        ]
    );
    for f in &files {
        let link = std::fs::read_link(snapshot.join(f)).unwrap();
        assert!(link.starts_with("../../blobs"), "{f} -> {}", link.display());
        assert_eq!(std::fs::read(snapshot.join(f)).unwrap(), repo.file(f), "{f}");
    }
    let weights_blob = dir.join("blobs").join(hub_mock::sha256_hex(repo.file("model.safetensors")));
    assert!(weights_blob.is_file(), "LFS blobs are named by their sha256");
    let everything = tree(&dir);
    assert!(!everything.iter().any(|f| f.ends_with(".part")), "{everything:?}");
    assert_eq!(tree(&dir.join("refs")), ["main"], "no ref besides the branch asked for");
    let fetched = resolve_paths(&hub);
    for skipped in ["README.md", "pytorch_model.bin", "special_tokens_map.json"] {
        assert!(!fetched.iter().any(|p| p.ends_with(skipped)), "{skipped} fetched: {fetched:?}");
    }
    assert!(
        fetched.iter().all(|p| p.contains(&format!("/resolve/{}/", repo.commit))),
        "every file from the one commit `main` named: {fetched:?}"
    );
}

#[test]
fn second_start_uses_the_cache_with_the_hub_gone() {
    let hub = MockHub::start();
    hub.add(QWEN, fixture_repo(QWEN, "tiny-qwen3"));
    let home = tempfile::tempdir().unwrap();
    let first = run(&mut strata_cmd(&greedy_generate(QWEN, &[]), &hub.url, home.path()), LIMIT);
    let first = first.ok().to_string();
    let url = hub.url.clone();
    hub.shutdown();

    let s = serve(&mut strata_cmd(&["serve", QWEN, "--port", "0"], &url, home.path()), LIMIT);
    assert_eq!(completion(&s.url, QWEN), local_completion("tiny-qwen3"));
    let log = s.stderr();
    assert!(
        log.contains("could not reach the Hugging Face hub at")
            && log.contains("using the cached copy"),
        "{log}"
    );
    drop(s);
    let again = run(&mut strata_cmd(&greedy_generate(QWEN, &[]), &url, home.path()), LIMIT);
    assert_eq!(again.ok(), first);
}

#[test]
fn offline_mode_reads_the_cache_only() {
    let hub = MockHub::start();
    hub.add(QWEN, fixture_repo(QWEN, "tiny-qwen3"));
    let home = tempfile::tempdir().unwrap();

    // Not cached: a clear error, and not one request.
    let mut cmd = strata_cmd(&greedy_generate(QWEN, &[]), &hub.url, home.path());
    let o = run(cmd.env("HF_HUB_OFFLINE", "1"), LIMIT);
    let err = o.err();
    let cache = home.path().join("hub");
    assert!(err.contains(&format!("model `{QWEN}`")), "{err}");
    assert!(
        err.contains("is not in the Hugging Face cache") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    assert!(err.contains(&cache.display().to_string()), "names the cache dir: {err}");
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());

    // Cached: served without a request.
    let online = run(&mut strata_cmd(&greedy_generate(QWEN, &[]), &hub.url, home.path()), LIMIT);
    hub.clear_log();
    let mut cmd = strata_cmd(&greedy_generate(QWEN, &[]), &hub.url, home.path());
    let offline = run(cmd.env("HF_HUB_OFFLINE", "1"), LIMIT);
    assert_eq!(offline.ok(), online.ok());
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());

    // A snapshot missing a weight file is reported, not loaded.
    let snapshot =
        repo_dir(home.path(), QWEN).join("snapshots").join(fixture_repo(QWEN, "tiny-qwen3").commit);
    std::fs::remove_file(snapshot.join("model.safetensors")).unwrap();
    let mut cmd = strata_cmd(&greedy_generate(QWEN, &[]), &hub.url, home.path());
    let o = run(cmd.env("HF_HUB_OFFLINE", "1"), LIMIT);
    assert!(
        o.err().contains("only partly in the Hugging Face cache")
            && o.err().contains("model.safetensors"),
        "{}",
        o.err()
    );
}

#[test]
fn gated_and_private_repos_ask_for_a_token() {
    let hub = MockHub::start();
    let gated = "strata-test/gated";
    let mut repo = fixture_repo(gated, "tiny-qwen3");
    repo.access = Access::Gated { token: "hf_good".into() };
    hub.add(gated, repo);
    let private = "strata-test/private";
    let mut repo = fixture_repo(private, "tiny-qwen3");
    repo.access = Access::Private { token: "hf_good".into() };
    hub.add(private, repo);
    let home = tempfile::tempdir().unwrap();

    let o = run(&mut strata_cmd(&greedy_generate(gated, &[]), &hub.url, home.path()), LIMIT);
    let err = o.err();
    assert!(err.contains(&format!("model `{gated}` is gated or private")), "{err}");
    assert!(err.contains("set HF_TOKEN") && err.contains("accept"), "{err}");
    assert!(err.contains(&format!("{}/{gated}", hub.url)), "names the model page: {err}");

    let mut cmd = strata_cmd(&greedy_generate(gated, &[]), &hub.url, home.path());
    let o = run(cmd.env("HF_TOKEN", "hf_wrong"), LIMIT);
    assert!(
        o.err().contains("is gated or private (HTTP 403") && o.err().contains("has no access"),
        "{}",
        o.err()
    );

    let o = run(&mut strata_cmd(&greedy_generate(private, &[]), &hub.url, home.path()), LIMIT);
    assert!(
        o.err().contains(&format!("model `{private}` is gated or private"))
            && o.err().contains("HF_TOKEN"),
        "{}",
        o.err()
    );

    // With the token, both load; it went as a bearer token.
    for id in [gated, private] {
        hub.clear_log();
        let mut cmd = strata_cmd(&greedy_generate(id, &[]), &hub.url, home.path());
        run(cmd.env("HF_TOKEN", "hf_good"), LIMIT).ok();
        let log = hub.requests();
        assert!(!log.is_empty());
        for r in log.iter().filter(|r| !r.path.starts_with("/cdn/")) {
            assert_eq!(r.auth.as_deref(), Some("Bearer hf_good"), "{r:?}");
        }
    }
    // The token can also come from $HF_HOME/token, as `huggingface-cli login` leaves it.
    let home2 = tempfile::tempdir().unwrap();
    std::fs::write(home2.path().join("token"), "hf_good\n").unwrap();
    run(&mut strata_cmd(&greedy_generate(gated, &[]), &hub.url, home2.path()), LIMIT).ok();
}

#[test]
fn missing_repo_and_revision_are_not_found() {
    let hub = MockHub::start();
    hub.add(QWEN, fixture_repo(QWEN, "tiny-qwen3"));
    let home = tempfile::tempdir().unwrap();
    let o = run(
        &mut strata_cmd(&greedy_generate("strata-test/nope", &[]), &hub.url, home.path()),
        LIMIT,
    );
    assert!(o.err().contains("model `strata-test/nope` was not found on the hub"), "{}", o.err());
    assert!(o.err().contains(&hub.url), "names the endpoint: {}", o.err());

    let o = run(
        &mut strata_cmd(&greedy_generate(QWEN, &["--revision", "v9"]), &hub.url, home.path()),
        LIMIT,
    );
    assert!(
        o.err().contains(&format!("revision `v9` of model `{QWEN}` was not found")),
        "{}",
        o.err()
    );

    // A commit hash pins the snapshot (and leaves no ref behind).
    let commit = fixture_repo(QWEN, "tiny-qwen3").commit;
    let o = run(
        &mut strata_cmd(&greedy_generate(QWEN, &["--revision", &commit]), &hub.url, home.path()),
        LIMIT,
    );
    o.ok();
    let dir = repo_dir(home.path(), QWEN);
    assert!(dir.join("snapshots").join(&commit).join("config.json").is_file());
    assert!(tree(&dir.join("refs")).is_empty(), "{:?}", tree(&dir.join("refs")));
    // And once there, a commit is loaded without asking the hub.
    hub.clear_log();
    let o = run(
        &mut strata_cmd(&greedy_generate(QWEN, &["--revision", &commit]), &hub.url, home.path()),
        LIMIT,
    );
    o.ok();
    assert!(hub.requests().is_empty(), "{:?}", hub.requests());
    assert!(!repo_dir(home.path(), "strata-test/nope").exists());
}

#[test]
fn repo_without_safetensors_is_refused_before_downloading() {
    let hub = MockHub::start();
    let id = "strata-test/pytorch-only";
    let repo = fixture_repo(id, "tiny-qwen3").without(&["model.safetensors"]);
    hub.add(id, repo);
    let home = tempfile::tempdir().unwrap();
    let o = run(&mut strata_cmd(&greedy_generate(id, &[]), &hub.url, home.path()), LIMIT);
    let err = o.err();
    assert!(
        err.contains(&format!("model `{id}`")) && err.contains("has no safetensors weights"),
        "{err}"
    );
    assert!(
        err.contains("strata loads only safetensors") && err.contains("pytorch_model.bin"),
        "{err}"
    );
    assert!(resolve_paths(&hub).is_empty(), "nothing downloaded: {:?}", resolve_paths(&hub));
}

#[test]
fn cut_download_leaves_no_partial_file_and_resumes_on_the_next_start() {
    let hub = MockHub::start();
    let repo = fixture_repo(LLAMA, "tiny-llama");
    hub.add(LLAMA, repo.clone());
    let shard = "model-00002-of-00003.safetensors";
    // More cuts than one start's attempts.
    hub.cut(shard, 100);
    let home = tempfile::tempdir().unwrap();
    let o = run(&mut strata_cmd(&greedy_generate(LLAMA, &[]), &hub.url, home.path()), LIMIT);
    let err = o.err();
    assert!(
        err.contains(&format!("downloading `{shard}` of model `{LLAMA}` from {}", hub.url)),
        "{err}"
    );
    assert!(err.contains("the next start resumes it"), "{err}");

    let dir = repo_dir(home.path(), LLAMA);
    let snapshot = dir.join("snapshots").join(&repo.commit);
    assert!(snapshot.join("model-00001-of-00003.safetensors").is_file(), "{:?}", tree(&dir));
    assert!(
        snapshot.join(shard).symlink_metadata().is_err(),
        "no half file in the snapshot: {:?}",
        tree(&dir)
    );
    let sha = hub_mock::sha256_hex(repo.file(shard));
    let part = dir.join("blobs").join(format!("{sha}.part"));
    let partial = std::fs::metadata(&part).unwrap().len();
    assert!(partial > 0 && partial < repo.file(shard).len() as u64, "{partial}");
    assert!(!dir.join("blobs").join(&sha).exists());

    hub.cut(shard, 0);
    hub.clear_log();
    let o = run(&mut strata_cmd(&greedy_generate(LLAMA, &[]), &hub.url, home.path()), LIMIT);
    let tokens = o.ok().to_string();
    let resumed = hub
        .requests()
        .into_iter()
        .filter(|r| r.path == format!("/cdn/{sha}"))
        .filter_map(|r| r.range)
        .any(|r| r == format!("bytes={partial}-"));
    assert!(resumed, "resumed from byte {partial}: {:?}", hub.requests());
    assert_eq!(std::fs::read(snapshot.join(shard)).unwrap(), repo.file(shard));
    assert!(!part.exists());
    let fetched = resolve_paths(&hub);
    assert!(
        !fetched.iter().any(|p| p.ends_with("00001-of-00003.safetensors")),
        "kept files are not fetched again: {fetched:?}"
    );

    let local = fixture_dir("tiny-llama");
    let o = run(
        &mut strata_cmd(&greedy_generate(local.to_str().unwrap(), &[]), &hub.url, home.path()),
        LIMIT,
    );
    assert_eq!(tokens, o.ok(), "identical tokens from hub and directory");
}

#[test]
fn a_download_cut_once_resumes_within_the_same_start() {
    let hub = MockHub::start();
    hub.add(QWEN, fixture_repo(QWEN, "tiny-qwen3"));
    hub.cut("model.safetensors", 1);
    let home = tempfile::tempdir().unwrap();
    let o = run(&mut strata_cmd(&greedy_generate(QWEN, &[]), &hub.url, home.path()), LIMIT);
    o.ok();
    assert!(o.stderr.contains("retrying"), "{}", o.stderr);
    let ranges: Vec<String> = hub
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/cdn/"))
        .filter_map(|r| r.range)
        .collect();
    assert!(
        ranges.iter().any(|r| r != "bytes=0-0" && r != "bytes=0-"),
        "a resumed range: {ranges:?}"
    );
}

#[test]
fn tokenizer_from_another_repo() {
    let hub = MockHub::start();
    let weights = "strata-test/weights-only";
    let tok = "strata-test/tokenizer";
    let tok_files =
        ["tokenizer.json", "tokenizer_config.json", "generation_config.json", "config.json"];
    hub.add(
        weights,
        fixture_repo(weights, "tiny-qwen3").without(&["tokenizer.json", "tokenizer_config.json"]),
    );
    hub.add(tok, fixture_repo(tok, "tiny-qwen3").only(&tok_files));
    let home = tempfile::tempdir().unwrap();

    let o = run(&mut strata_cmd(&greedy_generate(weights, &[]), &hub.url, home.path()), LIMIT);
    assert!(
        o.err().contains("has no tokenizer.json") && o.err().contains("--tokenizer"),
        "{}",
        o.err()
    );

    let with_tok = run(
        &mut strata_cmd(&greedy_generate(weights, &["--tokenizer", tok]), &hub.url, home.path()),
        LIMIT,
    );
    let local = fixture_dir("tiny-qwen3");
    let o = run(
        &mut strata_cmd(&greedy_generate(local.to_str().unwrap(), &[]), &hub.url, home.path()),
        LIMIT,
    );
    assert_eq!(with_tok.ok(), o.ok());
    // A tokenizer directory works the same.
    let o = run(
        &mut strata_cmd(
            &greedy_generate(weights, &["--tokenizer", local.to_str().unwrap()]),
            &hub.url,
            home.path(),
        ),
        LIMIT,
    );
    assert_eq!(with_tok.ok(), o.ok());
}

#[test]
fn model_given_twice_or_revision_without_a_hub_model_is_an_error() {
    let home = tempfile::tempdir().unwrap();
    let url = "http://127.0.0.1:9";
    let o = run(
        &mut strata_cmd(&["generate", "a/b", "--model", "c/d", "--prompt", "x"], url, home.path()),
        LIMIT,
    );
    assert_eq!(o.status.code(), Some(2), "a usage error");
    assert!(o.stderr.contains("given twice"), "{}", o.stderr);
    // The same model both ways is fine.
    let o = run(
        &mut strata_cmd(
            &["generate", "builtin", "--model", "builtin", "--prompt", "x", "--max-tokens", "1"],
            url,
            home.path(),
        ),
        LIMIT,
    );
    o.ok();
    let o = run(
        &mut strata_cmd(
            &["generate", "builtin", "--revision", "v1", "--prompt", "x"],
            url,
            home.path(),
        ),
        LIMIT,
    );
    assert!(o.err().contains("--revision applies to hub models"), "{}", o.stderr);
}

/// A cache as `huggingface-cli download` (or vLLM) leaves it: blobs named
/// by their ETag, relative links from the snapshot, `refs/main`.
#[cfg(unix)]
#[test]
fn cache_written_by_huggingface_cli_is_used_as_is() {
    let hub = MockHub::start();
    let repo = fixture_repo(QWEN, "tiny-qwen3");
    hub.add(QWEN, repo.clone());
    let home = tempfile::tempdir().unwrap();
    let dir = repo_dir(home.path(), QWEN);
    let snapshot = dir.join("snapshots").join(&repo.commit);
    std::fs::create_dir_all(dir.join("blobs")).unwrap();
    std::fs::create_dir_all(dir.join("refs")).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::write(dir.join("refs/main"), &repo.commit).unwrap();
    // Everything, README and the PyTorch copy included, as a full download has it.
    for (name, bytes) in &repo.files {
        let etag = hub_mock::sha256_hex(bytes);
        std::fs::write(dir.join("blobs").join(&etag), bytes).unwrap();
        std::os::unix::fs::symlink(Path::new("../../blobs").join(&etag), snapshot.join(name))
            .unwrap();
    }
    let before = tree(&dir);

    let mut cmd = strata_cmd(&greedy_generate(QWEN, &[]), &hub.url, home.path());
    let offline = run(cmd.env("HF_HUB_OFFLINE", "1"), LIMIT);
    assert!(hub.requests().is_empty());
    let online = run(&mut strata_cmd(&greedy_generate(QWEN, &[]), &hub.url, home.path()), LIMIT);
    assert_eq!(offline.ok(), online.ok());
    let paths: Vec<String> = hub.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, [format!("/api/models/{QWEN}/revision/main")], "only the commit lookup");
    assert_eq!(tree(&dir), before, "the cache is left as it was");
    let local = fixture_dir("tiny-qwen3");
    let o = run(
        &mut strata_cmd(&greedy_generate(local.to_str().unwrap(), &[]), &hub.url, home.path()),
        LIMIT,
    );
    assert_eq!(online.ok(), o.ok());
}

/// A repo saved by current transformers: the template in
/// `chat_template.jinja`, a named one in `additional_chat_templates/`.
/// Both arrive in the snapshot and the chat endpoint renders with them.
#[test]
fn chat_templates_beside_the_tokenizer_are_fetched() {
    let hub = MockHub::start();
    let mut repo = fixture_repo(QWEN, "tiny-qwen3");
    repo.files.push((
        "chat_template.jinja".into(),
        b"{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}".to_vec(),
    ));
    repo.files.push((
        "additional_chat_templates/tool_use.jinja".into(),
        b"{{ tools | length }} tools\n".to_vec(),
    ));
    hub.add(QWEN, repo.clone());
    let home = tempfile::tempdir().unwrap();
    let s = serve(&mut strata_cmd(&["serve", QWEN, "--port", "0"], &hub.url, home.path()), LIMIT);
    let snapshot = repo_dir(home.path(), QWEN).join("snapshots").join(&repo.commit);
    for f in ["chat_template.jinja", "additional_chat_templates/tool_use.jinja"] {
        assert_eq!(std::fs::read(snapshot.join(f)).unwrap(), repo.file(f), "{f}");
    }
    let v = common::post_json(
        &format!("{}/v1/chat/completions", s.url),
        &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}),
    );
    // `<user>hi\n<assistant>`, as the jinja file renders it.
    let tokenized = common::post_json(
        &format!("{}/tokenize", s.url),
        &json!({"prompt": "<user>hi\n<assistant>", "add_special_tokens": false}),
    );
    assert_eq!(v["usage"]["prompt_tokens"], tokenized["count"], "{v}");
}
