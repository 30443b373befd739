//! Request defaults that come from the model, as vLLM applies them: the
//! sampling parameters in the checkpoint's `generation_config.json`
//! (`--generation-config auto`, vLLM's default) fill in what a request
//! leaves unset; `--generation-config vllm` ignores the file; a directory
//! reads that directory's file instead.

use std::path::Path;

use serde_json::Value;

/// Sampling defaults from a `generation_config.json` (each `None` when the
/// file does not set it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerationDefaults {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    /// `max_new_tokens`: caps the default `max_tokens` of a request that
    /// sets none.
    pub max_new_tokens: Option<u32>,
}

impl GenerationDefaults {
    /// Reads `dir/generation_config.json`; no file means no defaults. A file
    /// that does not parse is an error (a user asked for its values).
    pub fn from_dir(dir: &Path) -> Result<Self, String> {
        let path = dir.join("generation_config.json");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(format!("reading {}: {e}", path.display())),
        };
        let v: Value =
            serde_json::from_str(&text).map_err(|e| format!("parsing {}: {e}", path.display()))?;
        let f = |k: &str| v.get(k).and_then(Value::as_f64);
        Ok(Self {
            temperature: f("temperature").map(|x| x as f32),
            top_p: f("top_p").map(|x| x as f32),
            top_k: v.get("top_k").and_then(Value::as_i64),
            min_p: f("min_p").map(|x| x as f32),
            repetition_penalty: f("repetition_penalty").map(|x| x as f32),
            max_new_tokens: v
                .get("max_new_tokens")
                .and_then(Value::as_u64)
                .map(|x| x.min(u32::MAX as u64) as u32),
        })
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_sampling_keys_and_nothing_without_a_file() {
        let dir = tempfile::tempdir().unwrap();
        assert!(GenerationDefaults::from_dir(dir.path()).unwrap().is_empty());
        std::fs::write(
            dir.path().join("generation_config.json"),
            r#"{"do_sample": true, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05, "eos_token_id": [1, 2]}"#,
        )
        .unwrap();
        let d = GenerationDefaults::from_dir(dir.path()).unwrap();
        assert_eq!(
            d,
            GenerationDefaults {
                temperature: Some(0.7),
                top_p: Some(0.8),
                top_k: Some(20),
                repetition_penalty: Some(1.05),
                ..GenerationDefaults::default()
            }
        );
        std::fs::write(dir.path().join("generation_config.json"), "{").unwrap();
        assert!(GenerationDefaults::from_dir(dir.path()).is_err());
    }
}
