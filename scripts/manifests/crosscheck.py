"""Cross-checks between the objects of one rendered overlay."""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema
import yaml

from .common import LLMD_ROLES, SECRET_ENV, Pod, Problems, container_ports, image_name, selects, sidecar_flag
from .engine import check_engine
from .render import validate_documents
from .schemas import EPP_CONFIG


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
