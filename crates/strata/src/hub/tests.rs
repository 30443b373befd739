use super::*;

#[test]
fn repo_ids() {
    for ok in ["Qwen/Qwen2.5-0.5B-Instruct", "gpt2", "org/model_v1.5", "a/b"] {
        assert!(is_repo_id(ok), "{ok}");
    }
    for bad in [
        "/abs/path",
        "./rel",
        "a/b/c",
        "org/",
        "/name",
        "org/-x",
        "org/x.",
        "org/a--b",
        "org/a..b",
        "~/models/x",
        "org/na me",
        "",
    ] {
        assert!(!is_repo_id(bad), "{bad}");
    }
}

#[test]
fn ref_handle_names_the_repo() {
    let c = CachedRepo::new(Path::new("/c"), "org/na-me");
    assert_eq!(c.dir, Path::new("/c/models--org--na-me"));
    assert_eq!(c.ref_path("main"), Path::new("/c/models--org--na-me/refs/main"));
    assert_eq!(c.snapshot_dir("abc"), Path::new("/c/models--org--na-me/snapshots/abc"));
}

#[test]
fn offline_snapshot_lookup_and_completeness() {
    let dir = tempfile::tempdir().unwrap();
    let c = CachedRepo::new(dir.path(), "org/name");
    assert!(c.snapshot("main").is_none());
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snap = c.snapshot_dir(commit);
    std::fs::create_dir_all(&snap).unwrap();
    assert_eq!(c.snapshot(commit), Some(snap.clone()), "a commit names its snapshot");
    assert!(c.snapshot("main").is_none());
    std::fs::create_dir_all(dir.path().join("models--org--name/refs")).unwrap();
    std::fs::write(c.ref_path("main"), commit).unwrap();
    assert_eq!(c.snapshot("main"), Some(snap.clone()));
    let want = Want::Model { tokenizer: true };
    assert_eq!(
        missing_files(&snap, &want),
        ["config.json", "tokenizer.json", "model.safetensors or model.safetensors.index.json"]
    );
    std::fs::write(snap.join("config.json"), "{}").unwrap();
    std::fs::write(
        snap.join(INDEX),
        r#"{"weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors",
            "c": "m-1.safetensors"}}"#,
    )
    .unwrap();
    std::fs::write(snap.join("m-1.safetensors"), "x").unwrap();
    assert_eq!(missing_files(&snap, &Want::Model { tokenizer: false }), ["m-2.safetensors"]);
    assert_eq!(missing_files(&snap, &Want::Tokenizer), ["tokenizer.json"]);
}

#[test]
fn index_with_a_path_outside_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join(INDEX);
    std::fs::write(&index, r#"{"weight_map": {"a": "../../etc/passwd"}}"#).unwrap();
    assert!(index_shards(&index).is_err());
}
