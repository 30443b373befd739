#!/usr/bin/env bash
# Regenerate fixtures/lm_eval/reference-*.json: lm-evaluation-harness
# (`--model hf`, transformers on torch, float32) on the committed strata_tiny
# task for each fixture checkpoint, keeping every request's loglikelihood and
# the task accuracy. crates/strata/tests/lm_eval.rs runs the same task
# against `strata serve` (`--model local-completions`) and compares.
# Creates/reuses a pinned venv at .venv-lm-eval-fixtures (CPU torch).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LM_EVAL_FIXTURES_VENV:-$ROOT/.venv-lm-eval-fixtures}"
PY="${PYTHON:-python3}"
TORCH="torch==2.9.1"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
if ! "$VPY" -c "import lm_eval, transformers" 2>/dev/null; then
  "$VPY" -m pip install --disable-pip-version-check -q -r "$ROOT/scripts/requirements-test.txt" "lm-eval[hf]==0.4.13"
fi
# torch, as scripts/make_fixtures.sh installs it: first the PyPI Linux wheel
# alone (its nvidia-* CUDA dependencies are ~3 GB a CPU run never needs),
# then, if that does not import, the normal (large) install.
if ! "$VPY" -c "import torch; torch.zeros(1)" 2>/dev/null; then
  "$VPY" -m pip install --disable-pip-version-check -q sympy networkx
  "$VPY" -m pip install --disable-pip-version-check -q --no-deps "$TORCH"
  if ! "$VPY" -c "import torch; torch.zeros(1)" 2>/dev/null; then
    echo "make_lm_eval_fixtures.sh: torch without its CUDA deps does not import; installing normally (large download)" >&2
    "$VPY" -m pip install --disable-pip-version-check -q "$TORCH"
  fi
fi
"$VPY" "$ROOT/scripts/make_lm_eval_fixtures.py"
