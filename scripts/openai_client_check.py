"""Drives a running `strata serve` with the official OpenAI Python client.

Usage: python openai_client_check.py BASE_URL API_KEY
Exits non-zero (with the failing assertion) on any mismatch. Run by
crates/strata/tests/openai_client.rs, which starts the server, with the
venv that scripts/test makes (scripts/requirements-test.txt).
"""
import json
import sys
import urllib.request

import openai
from openai import OpenAI

base, key = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=60)
PROMPT = "The quick brown fox jumps over the lazy dog, and then the engine computes the prompt. Hello, my name is"
SOURCES = ("local_compute", "local_cache_hit", "host", "disk", "remote")


def metric(prefix):
    """Sum of the series whose line starts with `prefix`."""
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(prefix))


def tier(source):
    return metric(f'strata:prompt_tokens_by_tier_total{{model_name="builtin",engine="0",source="{source}"}}')


def details(usage):
    d = usage.prompt_tokens_details
    extra = d.model_extra or {}
    sources = extra["sources"]
    assert sum(sources[s] for s in SOURCES) == usage.prompt_tokens, usage
    assert d.cached_tokens == sources["local_cache_hit"] + sources["host"] + sources["disk"], usage
    return sources


before_prompt = metric("vllm:prompt_tokens_total{")
before_tiers = {s: tier(s) for s in SOURCES}
seen = {s: 0 for s in SOURCES}
seen_prompt = 0


def account(usage):
    global seen_prompt
    for k, v in details(usage).items():
        seen[k] += v
    seen_prompt += usage.prompt_tokens


assert [m.id for m in client.models.list().data] == ["builtin"]

# Completions, greedy: streamed text equals the full text.
full = client.completions.create(model="builtin", prompt=PROMPT, max_tokens=12, temperature=0)
account(full.usage)
assert full.usage.completion_tokens == len(full.choices) * 12 or full.choices[0].finish_reason == "stop"
chunks = list(client.completions.create(model="builtin", prompt=PROMPT, max_tokens=12, temperature=0,
                                        stream=True, stream_options={"include_usage": True}))
streamed = "".join(c.choices[0].text for c in chunks if c.choices)
assert streamed == full.choices[0].text, (streamed, full.choices[0].text)
account(chunks[-1].usage)
assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0, "the repeated prompt hit the prefix cache"

# n > 1 with a seed: distinct, reproducible choices.
a = client.completions.create(model="builtin", prompt="Once upon a time", max_tokens=8, n=3, seed=7, temperature=1.0)
b = client.completions.create(model="builtin", prompt="Once upon a time", max_tokens=8, n=3, seed=7, temperature=1.0)
account(a.usage)
account(b.usage)
assert [c.text for c in a.choices] == [c.text for c in b.choices]
assert len({c.text for c in a.choices}) > 1

# Stop strings end the choice.
text = full.choices[0].text
stop = text[3:5]
if stop:
    s = client.completions.create(model="builtin", prompt=PROMPT, max_tokens=12, temperature=0, stop=[stop])
    account(s.usage)
    assert s.choices[0].text == text[: text.find(stop)] and s.choices[0].finish_reason == "stop"

# Chat, streaming and not.
chat = client.chat.completions.create(model="builtin", messages=[{"role": "user", "content": "Tell me a story."}],
                                      max_tokens=6, temperature=0)
account(chat.usage)
assert chat.choices[0].message.role == "assistant"
pieces = list(client.chat.completions.create(model="builtin", messages=[{"role": "user", "content": "Tell me a story."}],
                                             max_tokens=6, temperature=0, stream=True,
                                             stream_options={"include_usage": True}))
assert "".join(p.choices[0].delta.content or "" for p in pieces if p.choices) == chat.choices[0].message.content
account(pieces[-1].usage)

# Errors are OpenAI errors with the right status.
for kwargs, exc in [
    (dict(model="builtin", prompt="x", max_tokens=100000), openai.BadRequestError),
    (dict(model="builtin", prompt="x", temperature=-1), openai.BadRequestError),
    (dict(model="nope", prompt="x"), openai.NotFoundError),
]:
    try:
        client.completions.create(**kwargs)
        raise AssertionError(f"{kwargs} was accepted")
    except exc:
        pass
try:
    OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).models.list()
    raise AssertionError("a wrong key was accepted")
except openai.AuthenticationError:
    pass

# The responses' usage reconciles with the server's counters.
assert metric("vllm:prompt_tokens_total{") - before_prompt == seen_prompt
for s in SOURCES:
    delta = tier(s) - before_tiers[s]
    assert delta == seen[s], (s, delta, seen[s])
print(json.dumps({"ok": True, "prompt_tokens": seen_prompt, "sources": seen}))
