"""Drives `strata router` (in front of a prefill and a decode engine) and a
single `strata serve` with the official OpenAI Python client: P/D answers
must equal the single engine's, token for token (greedy, or seeded), for
prompts from 1 token to thousands, with and without shared prefixes,
streaming and not, n > 1; usage composes as docs/accounting.md (A18) says.

Usage: python pd_router_check.py ROUTER_URL SINGLE_URL PREFILL_URL DECODE_URL
Run by crates/strata/tests/pd_router.rs, which starts the processes, with
the venv that scripts/test makes (scripts/requirements-test.txt).
"""
import json
import sys
import time
import urllib.request

from openai import OpenAI

router, single, prefill, decode = sys.argv[1:5]
via = OpenAI(base_url=router + "/v1", api_key="x", max_retries=0, timeout=120)
one = OpenAI(base_url=single + "/v1", api_key="x", max_retries=0, timeout=120)
SOURCES = ("local_compute", "local_cache_hit", "host", "disk", "remote")


def metric(base, prefix):
    text = urllib.request.urlopen(base + "/metrics", timeout=10).read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(prefix))


def details(usage):
    d = usage.prompt_tokens_details
    d = d if isinstance(d, dict) else d.model_dump()
    extra = getattr(usage.prompt_tokens_details, "model_extra", None) or {}
    d = {**d, **extra}
    return d


def complete(client, prompt, **kw):
    return client.completions.create(model="builtin", prompt=prompt, max_tokens=8, temperature=0, **kw)


def stream_text(client, **kw):
    chunks = list(client.completions.create(model="builtin", max_tokens=8, stream=True,
                                            stream_options={"include_usage": True}, **kw))
    text = {}
    for c in chunks:
        for ch in c.choices:
            text[ch.index] = text.get(ch.index, "") + ch.text
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1, usage
    return text, usage[0]


checked = 0
# Prompts from 1 token to thousands (token-id prompts give exact lengths).
for n_tokens in (1, 2, 15, 16, 17, 100, 1000, 3000):
    prompt = [(i * 37 + 11) % 500 + 4 for i in range(n_tokens)]
    a, b = complete(via, prompt), complete(one, prompt)
    assert a.choices[0].text == b.choices[0].text, (n_tokens, a.choices[0].text, b.choices[0].text)
    assert a.usage.prompt_tokens == n_tokens == b.usage.prompt_tokens, (a.usage, n_tokens)
    d = details(a.usage)
    assert sum(d["sources"][s] for s in SOURCES) == n_tokens, d
    assert d["sources"]["remote"] == 0, "the client sees the prefill engine's record, not the transfer"
    checked += 1

# Streaming, and a shared prefix: the second prompt hits the prefill
# engine's cache; the client's cached_tokens are those hits (A18), never
# the decode side's transferred P - 1.
shared = "Once upon a time in a land of many engines, " * 12
for suffix in ("the prefill engine computed it.", "the decode engine pulled it."):
    text, usage = stream_text(via, prompt=shared + suffix, temperature=0)
    ref, _ = stream_text(one, prompt=shared + suffix, temperature=0)
    assert text == ref, (text, ref)
    d = details(usage)
    assert sum(d["sources"][s] for s in SOURCES) == usage.prompt_tokens, d
    assert d["cached_tokens"] == d["sources"]["local_cache_hit"], d
    assert d["cached_tokens"] < usage.prompt_tokens - 1 or usage.prompt_tokens < 3, d
    checked += 1
assert d["cached_tokens"] > 0, "the second prompt hit the prefill engine's prefix cache"

# n > 1 with seeded sampling: each choice equals the single engine's.
a = via.completions.create(model="builtin", prompt=shared, max_tokens=6, n=3, temperature=0.9, seed=7)
b = one.completions.create(model="builtin", prompt=shared, max_tokens=6, n=3, temperature=0.9, seed=7)
assert [c.text for c in sorted(a.choices, key=lambda c: c.index)] == [c.text for c in sorted(b.choices, key=lambda c: c.index)]
assert a.usage.prompt_tokens == b.usage.prompt_tokens, (a.usage, b.usage)
d = details(a.usage)
assert sum(d["sources"][s] for s in SOURCES) == a.usage.prompt_tokens, d
checked += 1

# Chat, streaming and not.
messages = [{"role": "user", "content": "Tell me about prefill and decode."}]
a = via.chat.completions.create(model="builtin", messages=messages, max_tokens=8, temperature=0)
b = one.chat.completions.create(model="builtin", messages=messages, max_tokens=8, temperature=0)
assert a.choices[0].message.content == b.choices[0].message.content
parts = [c.choices[0].delta.content or "" for c in via.chat.completions.create(
    model="builtin", messages=messages, max_tokens=8, temperature=0, stream=True) if c.choices]
assert "".join(parts) == b.choices[0].message.content
checked += 2

# Both engines free every block once the transfers are done.
deadline = time.time() + 10
while time.time() < deadline and (metric(prefill, "vllm:kv_cache_usage_perc{") > 0 or metric(decode, "vllm:kv_cache_usage_perc{") > 0):
    time.sleep(0.1)
assert metric(prefill, "vllm:kv_cache_usage_perc{") == 0
assert metric(decode, "vllm:kv_cache_usage_perc{") == 0
assert metric(decode, 'vllm:prompt_tokens_by_source_total{model_name="builtin",engine="0",source="external_kv_transfer"}') > 0
assert metric(prefill, "strata:kv_leases_held_tokens{") == 0
assert metric(router, "strata:router_requests_total{") >= checked
assert json.loads(urllib.request.urlopen(router + "/health", timeout=10).read())["status"]
print(json.dumps({"ok": True, "checked": checked}))
