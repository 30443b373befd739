//! Broken checkpoints and invalid batches give clear errors naming the file
//! and the problem, never a panic.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use strata_core::{BlockId, ModelBatch, RequestId, SeqInput};
use strata_model::loader::write_checkpoint;
use strata_model::{
    builtin, load_cpu_executor, KvPoolConfig, LoadOptions, ModelError, ModelSource,
};

fn opts() -> LoadOptions {
    LoadOptions {
        kv: KvPoolConfig { block_size: 16, num_blocks: Some(8), memory_bytes: 0 },
        ..LoadOptions::default()
    }
}

fn load(dir: &Path) -> Result<(), String> {
    load_cpu_executor(&ModelSource::Dir(dir.to_path_buf()), &opts(), &mut |_, _| {})
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn builtin_checkpoint() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(dir.path(), &builtin::config(), &builtin::weights()).unwrap();
    dir
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

#[test]
fn a_valid_checkpoint_loads() {
    let dir = builtin_checkpoint();
    assert_eq!(load(dir.path()), Ok(()));
}

#[test]
fn missing_directory_or_config_names_the_file() {
    let e = load(Path::new("/nonexistent/model")).unwrap_err();
    assert!(e.contains("/nonexistent/model/config.json"), "{e}");
}

#[test]
fn missing_weights_file_is_named() {
    let dir = builtin_checkpoint();
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let e = load(dir.path()).unwrap_err();
    assert!(e.contains("model.safetensors") && e.contains("no model.safetensors"), "{e}");
}

#[test]
fn truncated_weights_file_is_named() {
    let dir = builtin_checkpoint();
    let path = dir.path().join("model.safetensors");
    let len = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len - 1000).unwrap();
    let e = load(dir.path()).unwrap_err();
    assert!(e.contains("model.safetensors") && e.contains("not a valid safetensors"), "{e}");
    // A file too short to hold even the header length.
    std::fs::write(&path, [1u8, 2, 3]).unwrap();
    let e = load(dir.path()).unwrap_err();
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn garbage_weights_file_is_named() {
    let dir = builtin_checkpoint();
    let mut bytes = 40u64.to_le_bytes().to_vec();
    bytes.extend(b"this is not a JSON header at all.........");
    std::fs::write(dir.path().join("model.safetensors"), bytes).unwrap();
    let e = load(dir.path()).unwrap_err();
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn wrong_tensor_shape_names_tensor_file_and_shapes() {
    let dir = builtin_checkpoint();
    // The weights were written for intermediate_size 768.
    edit_config(dir.path(), |v| v["intermediate_size"] = 512.into());
    let e = load(dir.path()).unwrap_err();
    assert!(e.contains("model.safetensors") && e.contains("mlp.gate_proj.weight"), "{e}");
    assert!(e.contains("[768, 256]") && e.contains("[512, 256]"), "{e}");
}

#[test]
fn unsupported_tensor_dtype_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = builtin::config();
    write_checkpoint(dir.path(), &config, &builtin::weights()).unwrap();
    // Rewrite the file with the embedding as int32.
    let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let views: Vec<(String, TensorView<'_>)> = st
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            if name == "model.embed_tokens.weight" {
                (name, TensorView::new(Dtype::I32, view.shape().to_vec(), view.data()).unwrap())
            } else {
                (name, view)
            }
        })
        .collect();
    let path = dir.path().join("model.safetensors");
    let rewritten = safetensors::serialize(views, None).unwrap();
    std::fs::write(&path, rewritten).unwrap();
    let e = load(dir.path()).unwrap_err();
    assert!(e.contains("embed_tokens") && e.contains("I32") && e.contains("supported"), "{e}");
}

#[test]
fn missing_tensor_is_named() {
    let dir = builtin_checkpoint();
    // Claiming q/k/v biases that the checkpoint does not have.
    edit_config(dir.path(), |v| v["attention_bias"] = true.into());
    let e = load(dir.path()).unwrap_err();
    assert!(e.contains("model.layers.0.self_attn.q_proj.bias") && e.contains("not found"), "{e}");
}

#[test]
fn unsupported_architecture_lists_the_supported_ones() {
    let dir = builtin_checkpoint();
    edit_config(dir.path(), |v| v["architectures"] = serde_json::json!(["MixtralForCausalLM"]));
    let e = load(dir.path()).unwrap_err();
    assert!(e.contains("config.json") && e.contains("MixtralForCausalLM"), "{e}");
    assert!(
        e.contains("LlamaForCausalLM")
            && e.contains("Qwen2ForCausalLM")
            && e.contains("Qwen3ForCausalLM"),
        "{e}"
    );
}

#[test]
fn config_missing_a_field_names_it() {
    let dir = builtin_checkpoint();
    edit_config(dir.path(), |v| {
        v.as_object_mut().unwrap().remove("num_hidden_layers");
    });
    let e = load(dir.path()).unwrap_err();
    assert!(e.contains("config.json") && e.contains("num_hidden_layers"), "{e}");
    std::fs::write(dir.path().join("config.json"), "{ truncated").unwrap();
    let e = load(dir.path()).unwrap_err();
    assert!(e.contains("config.json") && e.contains("invalid JSON"), "{e}");
}

#[test]
fn invalid_batches_are_errors_not_panics() {
    let mut exec = load_cpu_executor(&ModelSource::Builtin, &opts(), &mut |_, _| {}).unwrap();
    let table = [BlockId(0)];
    let far = [BlockId(99)];
    let id = RequestId::new(1).unwrap();
    let seq = |tokens: &'static [u32], computed, table| SeqInput {
        request_id: id,
        token_ids: tokens,
        num_computed_tokens: computed,
        block_table: table,
        sample: None,
        prompt_logprobs: None,
    };
    let run = |exec: &mut strata_model::ModelExecutor<_>, s| {
        strata_core::Executor::execute(
            exec,
            &ModelBatch { seqs: vec![s], kv_connector_metadata: None },
        )
        .map(|_| ())
    };
    assert!(matches!(run(&mut exec, seq(&[5_000], 0, &table)), Err(ModelError::InvalidInput(_))));
    assert!(matches!(run(&mut exec, seq(&[1, 2], 15, &table)), Err(ModelError::Batch(_))));
    assert!(matches!(run(&mut exec, seq(&[1], 0, &far)), Err(ModelError::Batch(_))));
    // The executor still works afterwards.
    assert!(run(&mut exec, seq(&[1, 2, 3], 0, &table)).is_ok());
}
