"""Tool calling through the official OpenAI client against a live
`strata serve` (built-in random-weight model, `--enable-auto-tool-choice
--tool-call-parser hermes`): only the grammar can make its calls valid.

- `tool_choice: "required"` and a named function: every call names a tool
  and its arguments validate against that tool's parameters (jsonschema);
  `parallel_tool_calls: false` gives one call;
- streamed tool-call deltas (index, id, type and name first, arguments in
  pieces) reassemble into the non-streamed answer (same seed);
- a multi-turn exchange with the calls and `tool` results sent back is
  served (rendered through the model's template);
- `auto` answers (the random model writes no call) come back as content.

Usage: python tool_calls_check.py BASE_URL
Run by crates/strata/tests/tool_calls.rs; prints {"ok": true, ...}.
"""
import json
import sys

import jsonschema
from openai import OpenAI

client = OpenAI(base_url=sys.argv[1] + "/v1", api_key="x", max_retries=0, timeout=300)
MODEL = "builtin"
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 12},
            "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {
        "name": "search", "description": "Search the web",
        "parameters": {"type": "object", "properties": {
            "query": {"type": "string", "maxLength": 16},
            "limit": {"type": "integer", "minimum": 1, "maximum": 10}},
            "required": ["query"], "additionalProperties": False}}},
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"}]


def check_calls(calls):
    assert calls, "no tool call"
    for c in calls:
        assert c.type == "function" and c.id.startswith("chatcmpl-tool-"), c
        args = json.loads(c.function.arguments)
        jsonschema.validate(args, SCHEMAS[c.function.name])
    return [(c.function.name, json.loads(c.function.arguments)) for c in calls]


def create(max_tokens=3500, **kw):
    return client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=TOOLS,
                                          max_tokens=max_tokens, temperature=1.0, **kw)


def streamed(**kw):
    calls, content = {}, ""
    for chunk in create(stream=True, **kw):
        for ch in chunk.choices:
            delta = ch.delta
            content += delta.content or ""
            for tc in delta.tool_calls or []:
                call = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
                if tc.id:
                    assert call["id"] is None, "an id is sent once"
                    call["id"] = tc.id
                if tc.function and tc.function.name:
                    assert call["name"] is None, "a name is sent once, first"
                    call["name"] = tc.function.name
                if tc.function and tc.function.arguments:
                    assert call["name"] is not None, "arguments after the name"
                    call["arguments"] += tc.function.arguments
    return [(calls[i]["name"], json.loads(calls[i]["arguments"])) for i in sorted(calls)]


checked = 0
for seed in range(12):
    r = create(tool_choice="required", seed=seed)
    got = check_calls(r.choices[0].message.tool_calls)
    assert streamed(tool_choice="required", seed=seed) == got, seed
    one = create(tool_choice="required", seed=seed, parallel_tool_calls=False).choices[0].message.tool_calls
    assert len(check_calls(one)) == 1
    named = {"type": "function", "function": {"name": "search"}}
    r = create(tool_choice=named, seed=seed)
    calls = check_calls(r.choices[0].message.tool_calls)
    assert [n for n, _ in calls] == ["search"], calls
    assert streamed(tool_choice=named, seed=seed) == calls, seed
    checked += 1

# The calls and their results go back; the template renders them.
r = create(tool_choice="required", seed=1)
msg = r.choices[0].message
history = MESSAGES + [
    {"role": "assistant", "content": msg.content or "",
     "tool_calls": [c.model_dump() for c in msg.tool_calls]},
    *[{"role": "tool", "tool_call_id": c.id, "content": json.dumps({"temperature": 21})}
      for c in msg.tool_calls],
]
follow = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS, max_tokens=8,
                                        tool_choice="none")
assert follow.choices[0].message.content is not None

auto = create(tool_choice="auto", seed=0, max_tokens=24)
assert auto.choices[0].finish_reason in ("stop", "length", "tool_calls"), auto

print(json.dumps({"ok": True, "checked": checked}))
