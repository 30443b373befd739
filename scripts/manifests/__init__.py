"""The checks behind scripts/check_manifests.py, in modules:

- common: the problem list, shared constants, pod templates and small helpers;
- schemas: the hand-written JSON schemas of the custom kinds;
- render: `kubectl kustomize` of each overlay, and validation of every document
  against the Kubernetes schemas or the custom-kind schemas;
- crosscheck: what must agree between the objects of one overlay;
- engine: strata's flags from `serve --help`, and the checks of one strata
  engine container against them, the pool and the EPP config.
"""
