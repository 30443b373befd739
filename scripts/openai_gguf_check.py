"""The official OpenAI Python client against `strata serve FILE.gguf`.

Usage: python openai_gguf_check.py BASE_URL MODEL_NAME
Checks, on a quantized GGUF model: chat with the file's own chat template
(tokenizer.chat_template), streaming equal to non-streaming, completions with
logprobs, the prompt's sources summing to prompt_tokens, and a repeated prompt
served from the prefix cache (cached_tokens). Exits non-zero on any mismatch;
prints {"ok": true} at the end. Run by crates/strata/tests/gguf.rs.
"""
import json
import sys

from openai import OpenAI

base, model = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
SOURCES = ("local_compute", "local_cache_hit", "host", "disk", "remote")
MESSAGES = [
    {"role": "system", "content": "You are terse, and you answer every question in one short line."},
    {"role": "user", "content": "Name a colour, café ☕, 日本."},
]


def sources(usage):
    d = usage.prompt_tokens_details
    s = (d.model_extra or {})["sources"]
    assert sum(s[k] for k in SOURCES) == usage.prompt_tokens, usage
    assert d.cached_tokens == s["local_cache_hit"] + s["host"] + s["disk"], usage
    return s


assert [m.id for m in client.models.list().data] == [model]

first = client.chat.completions.create(model=model, messages=MESSAGES, temperature=0, max_tokens=12,
                                       extra_body={"ignore_eos": True})
assert first.usage.completion_tokens == 12, first.usage
assert first.choices[0].message.content, first
s1 = sources(first.usage)
assert s1["local_compute"] == first.usage.prompt_tokens, s1

stream = client.chat.completions.create(model=model, messages=MESSAGES, temperature=0, max_tokens=12,
                                        extra_body={"ignore_eos": True}, stream=True,
                                        stream_options={"include_usage": True})
chunks = list(stream)
text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
assert text == first.choices[0].message.content, (text, first.choices[0].message.content)
s2 = sources(chunks[-1].usage)
assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0, "the repeated prompt hit the prefix cache"
assert s2["local_cache_hit"] > 0, s2

comp = client.completions.create(model=model, prompt="The cat sat", max_tokens=8, temperature=0, logprobs=2,
                                 extra_body={"ignore_eos": True})
lp = comp.choices[0].logprobs
assert len(lp.tokens) == 8 and len(lp.token_logprobs) == 8, lp
assert all(v <= 0 for v in lp.token_logprobs), lp.token_logprobs
assert all(len(t) >= 1 for t in lp.top_logprobs), lp.top_logprobs
print(json.dumps({"ok": True, "chat": first.choices[0].message.content, "completion": comp.choices[0].text}))
