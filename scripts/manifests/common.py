"""The problem list, shared constants, pod templates and small helpers."""

from __future__ import annotations

import re

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


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []
        self.where = ""

    def add(self, msg: str) -> None:
        self.items.append(f"{self.where}: {msg}" if self.where else msg)



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
