"""The official OpenAI Python client against `strata serve DIR`, where DIR
is a checkpoint whose chat template lives only in `chat_template.jinja`
(as transformers 4.57's save_pretrained writes it), served with a short
--max-model-len.

Usage: python openai_chat_check.py BASE_URL MAX_MODEL_LEN
Checks chat (streaming and not), a chat without max_tokens running to the
end of the context, and that each vLLM parameter sent through the SDK
changes the output as it should. Exits non-zero on any mismatch. Run by
crates/strata/tests/openai_client.rs with the venv scripts/test makes.
"""
import json
import sys
import urllib.request

from openai import OpenAI

base, max_model_len = sys.argv[1], int(sys.argv[2])
client = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name a colour."},
]


def chat(**kw):
    args = dict(model="m", messages=MESSAGES, temperature=0, max_tokens=12)
    args.update(kw)
    return client.chat.completions.create(**args)


def tokenize(text):
    req = urllib.request.Request(
        base + "/tokenize",
        data=json.dumps({"prompt": text, "add_special_tokens": False}).encode(),
        headers={"content-type": "application/json"},
    )
    return json.load(urllib.request.urlopen(req, timeout=10))["tokens"]


# Chat renders through chat_template.jinja; streaming gives the same text.
plain = chat(extra_body={"ignore_eos": True})
text = plain.choices[0].message.content
assert plain.choices[0].finish_reason == "length", plain
assert plain.usage.completion_tokens == 12, plain.usage
streamed = "".join(
    c.choices[0].delta.content or ""
    for c in chat(stream=True, extra_body={"ignore_eos": True})
    if c.choices
)
assert streamed == text, (streamed, text)

# No max_tokens (the SDK's default): the chat may run to the end of the
# context, as in vLLM, not 16 tokens.
free = client.chat.completions.create(
    model="m", messages=MESSAGES, temperature=0, extra_body={"ignore_eos": True}
)
assert free.choices[0].finish_reason == "length", free
assert free.usage.prompt_tokens + free.usage.completion_tokens == max_model_len, free.usage

# logit_bias +100 forces its token.
forced = tokenize(" zebra")[0]
biased = chat(logit_bias={str(forced): 100}, extra_body={"ignore_eos": True})
assert biased.usage.completion_tokens == 12
assert tokenize(biased.choices[0].message.content) == [forced] * 12 or \
    biased.choices[0].message.content == " zebra" * 12, biased.choices[0].message.content

# allowed_token_ids: only those.
a, b = tokenize("a")[0], tokenize("b")[0]
only = chat(extra_body={"allowed_token_ids": [a, b], "ignore_eos": True}).choices[0].message.content
assert only and set(only) <= {"a", "b"}, only

# bad_words: a one-token word of the plain answer never comes back.
lp = chat(logprobs=True, extra_body={"ignore_eos": True}).choices[0].logprobs.content
word = next(t.token for t in lp if len(t.token) > 2 and t.token.isalpha() and len(tokenize(t.token)) == 1)
banned = chat(logprobs=True, extra_body={"bad_words": [word], "ignore_eos": True}).choices[0].logprobs.content
assert word not in [t.token for t in banned], (word, [t.token for t in banned])

# stop: ends at the string, booked as stop, with vLLM's stop_reason.
stop = text[len(text) // 2 : len(text) // 2 + 2]
if stop.strip() and "\ufffd" not in stop:
    s = chat(stop=[stop], extra_body={"ignore_eos": True})
    assert s.choices[0].finish_reason == "stop", s
    assert s.choices[0].message.content == text[: text.index(stop)], s
    assert (s.choices[0].model_extra or {}).get("stop_reason") == stop, s

# seed: reproducible sampling.
r1 = chat(temperature=1.0, seed=5).choices[0].message.content
r2 = chat(temperature=1.0, seed=5).choices[0].message.content
assert r1 == r2, (r1, r2)

# A field strata does not implement is refused by name.
try:
    chat(extra_body={"functions": [{"name": "f", "parameters": {"type": "object"}}]})
    raise AssertionError("functions was accepted")
except Exception as e:  # openai.BadRequestError
    assert getattr(e, "status_code", None) == 400 and "functions" in str(e), e

print(json.dumps({"ok": True}))
