#!/usr/bin/env python3
"""Checks strata's Kubernetes manifests (deploy/kubernetes) without a cluster.

    check_manifests.py DEPLOY_DIR STRATA_BINARY [--kubectl PATH]

For every overlay in DEPLOY_DIR/overlays/*:
1. renders it with `kubectl kustomize`;
2. validates each core-kind document (apps/v1, v1, rbac, autoscaling ...)
   with kubernetes-validate in strict mode (unknown fields fail) against the
   newest Kubernetes version it ships;
3. validates the custom kinds (InferencePool, HTTPRoute, PodMonitor, and the
   llm-d EndpointPickerConfig inside the EPP's ConfigMap) against the small
   JSON schemas in manifests/schemas.py, written from the documented APIs
   and covering the fields these manifests use; an unlisted field fails, so
   a typo cannot pass;
4. cross-checks what must agree: ports named by probes, Services, the
   InferencePool and PodMonitors exist on the pods; selectors select pods;
   llm-d labels; POD_IP from status.podIP; the transfer secret only from a
   Secret (never a flag); the events topic's port equals the pool's target
   port; the routing sidecar's model-server port equals the decode engine's
   --port; strata's flags are all listed by `STRATA_BINARY serve --help`;
   EPP block size, model name and event ports equal the engines'.

Prints one line per problem and exits 1 if there is any; 0 and "ok" if not.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# The checks live in the manifests package next to this file; importing it
# leaves no __pycache__ in the source tree.
sys.dont_write_bytecode = True

from kubernetes_validate import utils as kv  # noqa: E402

from manifests.common import Problems  # noqa: E402
from manifests.crosscheck import adapter_rule_metrics, check_overlay  # noqa: E402
from manifests.engine import strata_flags  # noqa: E402
from manifests.render import find_kubectl, find_overlays, render  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("deploy_dir", type=Path, help="deploy/kubernetes")
    ap.add_argument("strata", help="the strata binary, for `strata serve --help`")
    ap.add_argument("--kubectl", help="kubectl (default: next to this Python, else on PATH)")
    args = ap.parse_args()

    kubectl = find_kubectl(args.kubectl)
    overlays = find_overlays(args.deploy_dir)
    flags = strata_flags(args.strata)
    version = kv.latest_version()
    p = Problems()
    adapter = adapter_rule_metrics(args.deploy_dir / "autoscaling" / "prometheus-adapter-values.yaml", p)
    for overlay in overlays:
        p.where = f"overlays/{overlay.name}"
        docs = render(kubectl, overlay, p)
        if docs is None:
            continue
        print(f"overlays/{overlay.name}: {len(docs)} objects: "
              + ", ".join(sorted(f"{d['kind']}/{d['metadata']['name']}" for d in docs)))
        check_overlay(docs, flags, adapter, version, p)
    p.where = ""
    if p.items:
        print(f"\n{len(p.items)} problem(s):")
        for item in p.items:
            print(f"FAIL {item}")
        return 1
    print(f"ok: {len(overlays)} overlays render, validate against Kubernetes {version} "
          f"(strict) and the custom-kind schemas, and agree with `strata serve --help`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
