//! `--config FILE.yaml`, as vLLM's: a YAML mapping whose keys are the
//! long flags of the command (`max-num-seqs: 128` or `max_num_seqs: 128`
//! is `--max-num-seqs 128`). `true` turns a switch on, `false` turns on
//! its `--no-` form where the flag has one (`enable-prefix-caching:
//! false`), a list gives the flag several values. Flags on the command
//! line win over the file's; so does a positional MODEL over the file's
//! `model:` (the caller parses again without it, [`expand_without`]).

use std::ffi::OsString;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The arguments with `--config FILE` replaced by the file's flags (those
/// not also given on the command line), placed after the subcommand.
pub fn expand(args: Vec<OsString>) -> Result<Vec<OsString>> {
    expand_without(args, &[])
}

/// As [`expand`], leaving out the file's keys named in `skip`.
pub fn expand_without(args: Vec<OsString>, skip: &[&str]) -> Result<Vec<OsString>> {
    let strings: Vec<String> = args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let Some(at) = strings.iter().position(|a| a == "--config" || a.starts_with("--config="))
    else {
        return Ok(args);
    };
    let (path, taken) = match strings[at].strip_prefix("--config=") {
        Some(p) => (p.to_string(), 1),
        None => (strings.get(at + 1).cloned().context("--config needs a file")?, 2),
    };
    let given: Vec<&str> = strings
        .iter()
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| a.split('=').next().unwrap_or(a))
        .collect();
    let mut given = given;
    given.extend_from_slice(skip);
    let from_file = flags(Path::new(&path), &given)?;
    let mut out: Vec<OsString> = args[..at].to_vec();
    out.extend(args[at + taken..].iter().cloned());
    // After the subcommand (the first argument that is not the program).
    let insert_at = out.len().min(2);
    out.splice(insert_at..insert_at, from_file.into_iter().map(OsString::from));
    Ok(out)
}

/// The file's flags, minus those in `given` (or their `--no-` forms).
fn flags(path: &Path, given: &[&str]) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    let doc: serde_norway::Value = serde_norway::from_str(&text)
        .with_context(|| format!("parsing the config file {}", path.display()))?;
    let serde_norway::Value::Mapping(map) = doc else {
        bail!("the config file {} must be a mapping of flag names to values", path.display());
    };
    let mut out = Vec::new();
    for (key, value) in map {
        let Some(key) = key.as_str() else {
            bail!("a key of the config file {} is not a flag name", path.display());
        };
        let name = key.replace('_', "-");
        let negated = format!("no-{name}");
        if given.iter().any(|g| *g == name || *g == negated) {
            continue;
        }
        let scalar = |v: &serde_norway::Value| -> Result<String> {
            Ok(match v {
                serde_norway::Value::String(s) => s.clone(),
                serde_norway::Value::Number(n) => n.to_string(),
                serde_norway::Value::Bool(b) => b.to_string(),
                _ => bail!("`{key}` in the config file must be a string, number or list"),
            })
        };
        match &value {
            serde_norway::Value::Bool(true) => out.push(format!("--{name}")),
            serde_norway::Value::Bool(false) => out.push(format!("--{negated}")),
            serde_norway::Value::Null => {}
            serde_norway::Value::Sequence(items) => {
                out.push(format!("--{name}"));
                for v in items {
                    out.push(scalar(v)?);
                }
            }
            v => {
                out.push(format!("--{name}"));
                out.push(scalar(v)?);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn file_flags_go_after_the_subcommand_and_the_command_line_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(
            &path,
            "max_num_seqs: 8\nport: 9000\nenable-prefix-caching: false\nserved-model-name: [a, b]\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let got = expand(os(&["strata", "serve", "--config", p, "--port", "7000"])).unwrap();
        let got: Vec<String> = got.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        assert_eq!(
            got,
            [
                "strata",
                "serve",
                "--max-num-seqs",
                "8",
                "--no-enable-prefix-caching",
                "--served-model-name",
                "a",
                "b",
                "--port",
                "7000"
            ]
        );
    }
}
