"""strata's flags, and the checks of one strata engine container."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from .common import (
    LOOPBACK,
    SECRET_ENV,
    Problems,
    as_int,
    container_ports,
    first,
    quantity_bytes,
    sidecar_flag,
)


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
