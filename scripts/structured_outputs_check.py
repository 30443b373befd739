"""Structured outputs through the official OpenAI client, against a live
`strata serve` on the built-in random-weight model: nothing but the
constraint can make its answers valid.

- 200 generated JSON schemas (nested objects, arrays with bounds, enums,
  numbers and integers with ranges, required fields,
  `additionalProperties: false`, `anyOf`, string lengths, formats and
  patterns), sent as `response_format` json_schema, half to chat and half
  to completions; every answer parses and validates (`jsonschema`, with
  its format checker);
- vLLM's `structured_outputs`: regex, choice, a Lark grammar, json_object;
- `client.chat.completions.parse(..., response_format=PydanticModel)`;
- a schema llguidance refuses, and conflicting fields: 400 with a reason.

Usage: python structured_outputs_check.py BASE_URL
Run by crates/strata/tests/structured_outputs.rs; prints {"ok": true, ...}.
"""
import json
import random
import re
import sys
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
from openai import OpenAI
from pydantic import BaseModel, Field

BASE = sys.argv[1]
client = OpenAI(base_url=BASE + "/v1", api_key="x", max_retries=0, timeout=300)
MODEL = "builtin"
MAX_TOKENS = 3000


def gen_schema(rng, depth=0):
    """A random schema, small enough that a random walk finishes it."""
    kinds = ["string", "integer", "number", "boolean", "enum", "pattern", "format"]
    if depth < 2:
        kinds += ["object", "array", "anyOf"]
    kind = rng.choice(kinds)
    if kind == "string":
        lo = rng.randint(0, 3)
        return {"type": "string", "minLength": lo, "maxLength": lo + rng.randint(0, 8)}
    if kind == "integer":
        lo = rng.randint(-50, 50)
        return {"type": "integer", "minimum": lo, "maximum": lo + rng.randint(0, 500)}
    if kind == "number":
        lo = rng.uniform(-10, 10)
        return {"type": "number", "minimum": round(lo, 2), "maximum": round(lo + rng.uniform(0, 100), 2)}
    if kind == "boolean":
        return {"type": "boolean"}
    if kind == "enum":
        return {"enum": rng.sample(["red", "green", "blue", "x y", "42", "ok"], rng.randint(1, 4))}
    if kind == "pattern":
        return {"type": "string", "pattern": rng.choice([r"^[a-f0-9]{4}$", r"^[A-Z][a-z]{1,5}$", r"^(yes|no)$"])}
    if kind == "format":
        return {"type": "string", "format": rng.choice(["date", "date-time", "email", "uuid"])}
    if kind == "array":
        lo = rng.randint(0, 2)
        return {"type": "array", "items": gen_schema(rng, depth + 1), "minItems": lo,
                "maxItems": lo + rng.randint(0, 2)}
    if kind == "anyOf":
        return {"anyOf": [gen_schema(rng, depth + 1) for _ in range(rng.randint(2, 3))]}
    props = {f"f{i}": gen_schema(rng, depth + 1) for i in range(rng.randint(1, 4))}
    required = [k for k in props if rng.random() < 0.7]
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def top_schema(rng):
    s = gen_schema(rng)
    if s.get("type") != "object":  # OpenAI's json_schema answers are objects
        s = {"type": "object", "properties": {"value": s}, "required": ["value"],
             "additionalProperties": False}
    return s


def check_schema(i):
    rng = random.Random(i)
    schema = top_schema(rng)
    rf = {"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema, "strict": True}}
    if i % 2 == 0:
        r = client.chat.completions.create(model=MODEL, max_tokens=MAX_TOKENS, temperature=1.0, seed=i,
                                           messages=[{"role": "user", "content": "Answer in JSON."}],
                                           response_format=rf)
        text, reason = r.choices[0].message.content, r.choices[0].finish_reason
    else:
        r = client.completions.create(model=MODEL, prompt="JSON:", max_tokens=MAX_TOKENS, temperature=1.0,
                                      seed=i, extra_body={"response_format": rf})
        text, reason = r.choices[0].text, r.choices[0].finish_reason
    assert reason == "stop", (i, reason, text[-200:])
    value = json.loads(text)
    jsonschema.validate(value, schema, format_checker=jsonschema.FormatChecker())
    return len(text)


def extra(kind, value, **kw):
    r = client.completions.create(model=MODEL, prompt="Say:", max_tokens=400, temperature=1.0,
                                  extra_body={"structured_outputs": {kind: value}}, **kw)
    assert r.choices[0].finish_reason == "stop", r
    return r.choices[0].text


class Step(BaseModel):
    explanation: str = Field(max_length=20)
    output: int = Field(ge=0, le=9)


class Math(BaseModel):
    steps: list[Step] = Field(max_length=3)
    final_answer: bool


with ThreadPoolExecutor(16) as pool:
    sizes = list(pool.map(check_schema, range(200)))

for seed in range(5):
    ip = extra("regex", r"([0-9]{1,3}\.){3}[0-9]{1,3}", seed=seed)
    assert re.fullmatch(r"([0-9]{1,3}\.){3}[0-9]{1,3}", ip), ip
    pick = extra("choice", ["Positive", "Negative", "Not sure"], seed=seed)
    assert pick in ("Positive", "Negative", "Not sure"), pick
    sql = extra("grammar", 'start: "SELECT " col ("," col)* " FROM " table\ncol: /[a-z]{1,6}/\ntable: "users" | "orders"',
                seed=seed)
    assert re.fullmatch(r"SELECT [a-z]{1,6}(,[a-z]{1,6})* FROM (users|orders)", sql), sql
    obj = json.loads(extra("json_object", True, seed=seed))
    assert isinstance(obj, dict), obj

parsed = client.chat.completions.parse(model=MODEL, max_tokens=MAX_TOKENS, temperature=1.0, seed=3,
                                       messages=[{"role": "user", "content": "Solve 8x + 7 = -23"}],
                                       response_format=Math)
answer = parsed.choices[0].message.parsed
assert isinstance(answer, Math), parsed

refused = 0
for body in ({"structured_outputs": {"json": {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}}},
             {"structured_outputs": {"regex": "a", "choice": ["a"]}},
             {"structured_outputs": {"grammar": "start: ("}},
             {"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}}):
    try:
        client.completions.create(model=MODEL, prompt="x", max_tokens=5, extra_body=body)
    except openai.BadRequestError as e:
        assert e.body and e.body.get("message"), e
        refused += 1
assert refused == 4, refused

# The engine counted what it constrained and timed every mask.
metrics = __import__("urllib.request").request.urlopen(BASE + "/metrics", timeout=10).read().decode()
def metric(name):
    return sum(float(l.rsplit(" ", 1)[1]) for l in metrics.splitlines() if l.startswith(name))
assert metric('strata:structured_output_requests_total{model_name="builtin",engine="0",kind="json"}') >= 206
assert metric('strata:structured_output_requests_total{model_name="builtin",engine="0",kind="regex"}') == 5
assert metric('strata:structured_output_requests_total{model_name="builtin",engine="0",kind="choice"}') == 5
assert metric('strata:structured_output_requests_total{model_name="builtin",engine="0",kind="grammar"}') == 5
assert metric("strata:structured_output_mask_seconds_count") > 1000

print(json.dumps({"ok": True, "schemas": len(sizes), "mean_chars": sum(sizes) / len(sizes),
                  "parsed_steps": len(answer.steps)}))
