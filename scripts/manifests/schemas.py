"""JSON schemas of the custom kinds the manifests use.

Written for this check from the documented APIs (GIE api/v1 types, Gateway API
v1 HTTPRoute, prometheus-operator PodMonitor, llm-d-router
apix/config/v1alpha1) and covering the fields these manifests use; an unlisted
field fails, so a typo cannot pass.
"""

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
