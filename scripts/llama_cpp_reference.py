#!/usr/bin/env python3
"""Record llama.cpp's reference behaviour on the fixture GGUF files.

Writes fixtures/gguf/llama_cpp_reference.json with
  * tokenize: for each distinct tokenizer (grouped by the tokenizer.ggml.* metadata; every
    file of a group is run and must agree), the ids `llama-tokenize --ids` prints for a
    fixed corpus, with and without special-token parsing;
  * generate: for each model file, 3 prompts, the first 16 greedy ids from llama-server's
    /completion (EOS ignored), the prompt ids and the top-2 pre-sampling probabilities.
Only the standard library is used. Run via scripts/llama_cpp_reference.sh, which builds
llama.cpp first (scripts/build_llama_cpp.sh).
"""
import argparse
import hashlib
import json
import math
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Tokenizer corpus: the same strings for every tokenizer (special-token text of the other
# family is then plain text). The first seven are fixtures/models/*/reference.json
# "tokenizer_checks" texts.
TOKENIZE_PROMPTS = [
    "Hello, world!",
    "  leading spaces and\ttabs\nnewlines\n\n",
    "Numbers: 1234567 and 3.14159, 42%",
    "café naïve 日本 🙂 €",
    "<|im_start|>user\nhi<|im_end|>",
    "<|begin_of_text|>text<|eot_id|>",
    "I'm sure they'll say it's DON'T",
    "The cat sat on the mat.",
    " hello world",
    "hello   world\t\tend",
    "a\n\n\nb",
    "\n",
    "line one\r\nline two\r\n",
    "1234567",
    "12 345 6789 0",
    "I'm don't we've you'll she'd they're",
    "日本語のテキストです。中文测试。한국어",
    "Emoji: 😀👍🏽🇯🇵 and ZWJ 👨‍👩‍👧",
    "Accents: Ünïcödé façade São Paulo Ångström",
    "Arabic: مرحبا بالعالم",
    "def f(x):\n    return x ** 2  # square\n",
    'if (a && b) { printf("%d\\n", a[0]); }',
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
    "<|end_of_text|> and <|im_start",
    # SentencePiece-relevant (tiny-spm-llama): runs of spaces (no extra-whitespace removal, dummy
    # prefix), newlines (byte pieces), characters missing from the vocab (byte fallback),
    # single digits (split_digits), its own special tokens.
    "  double  spaces",
    "\n\n",
    " ",
    "ꙮ and 🦀: byte fallback",
    "12345",
    "<s>[INST] hi [/INST]</s>",
]

# The first three fixtures/models reference prompts (raw text, tokenizer defaults).
GENERATE_PROMPTS = [
    "The cat sat",
    "Once upon a time, there was a little robot who loved to read books about the sea.",
    "café naïve 日本 — über straße",
]
N_PREDICT = 16
N_PROBS = 2

TOKENIZE_BASE_FLAGS = ["--ids", "--no-escape", "--log-disable"]
SERVER_FLAGS = ["-t", "2", "-c", "512", "-np", "1", "--no-warmup", "--offline",
                "--seed", "0", "--no-webui"]
REQUEST = {
    "n_predict": N_PREDICT,
    "temperature": 0,
    "top_k": 1,
    "top_p": 1.0,
    "min_p": 0.0,
    "typical_p": 1.0,
    "repeat_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "dry_multiplier": 0.0,
    "xtc_probability": 0.0,
    "seed": 0,
    "ignore_eos": False,
    "cache_prompt": False,
    "n_probs": N_PROBS,
    "return_tokens": True,
    "stream": False,
}


def log(msg):
    print(f"llama_cpp_reference.py: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# minimal GGUF metadata reader

def read_gguf_kv(path):
    with open(path, "rb") as f:
        data = f.read()
    off = 0

    def take(fmt):
        nonlocal off
        v = struct.unpack_from("<" + fmt, data, off)
        off += struct.calcsize("<" + fmt)
        return v[0]

    def read_str():
        nonlocal off
        n = take("Q")
        s = data[off:off + n].decode("utf-8", errors="surrogateescape")
        off += n
        return s

    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def read_val(t):
        if t in scalar:
            return take(scalar[t])
        if t == 8:
            return read_str()
        if t == 9:
            it = take("I")
            n = take("Q")
            return [read_val(it) for _ in range(n)]
        raise ValueError(f"{path}: unknown GGUF value type {t}")

    if data[:4] != b"GGUF":
        raise ValueError(f"{path}: not a GGUF file")
    off = 4
    take("I")  # version
    take("Q")  # n_tensors
    n_kv = take("Q")
    kv = {}
    for _ in range(n_kv):
        k = read_str()
        kv[k] = read_val(take("I"))
    return kv


def tokenizer_fingerprint(kv):
    tok = {k: v for k, v in kv.items() if k.startswith("tokenizer.") and k != "tokenizer.chat_template"}
    blob = json.dumps(tok, sort_keys=True, ensure_ascii=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16], tok


# ---------------------------------------------------------------------------------------
# llama-tokenize

def run_tokenize(bin_dir, gguf, prompt_file, parse_special):
    flags = list(TOKENIZE_BASE_FLAGS) + ([] if parse_special else ["--no-parse-special"])
    cmd = [os.path.join(bin_dir, "llama-tokenize"), "-m", gguf, "--file", prompt_file] + flags
    p = subprocess.run(cmd, capture_output=True, timeout=60)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.decode(errors='replace')[-2000:]}")
    stdout = p.stdout.decode("utf-8")
    ids = json.loads(stdout)
    return flags, stdout, ids


# ---------------------------------------------------------------------------------------
# llama-server

def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url, body=None, timeout=60):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.loads(r.read().decode())


class Server:
    def __init__(self, bin_dir, gguf, log_path, start_timeout=120):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.cmd = [os.path.join(bin_dir, "llama-server"), "-m", gguf, "--host", "127.0.0.1",
                    "--port", str(self.port)] + SERVER_FLAGS
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + start_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-server exited with {self.proc.returncode} while loading")
            try:
                status, _ = http_json(self.base + "/health", timeout=5)
                if status == 200:
                    return
            except (urllib.error.URLError, ConnectionError, OSError, json.JSONDecodeError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"llama-server not healthy after {start_timeout}s")
            time.sleep(0.2)

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.log.close()


def bytes_to_unicode():
    """GPT-2 byte-level BPE byte <-> unicode table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) \
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def token_pieces(kv):
    """Bytes llama-server appends to its generated text per token (special=false: CONTROL -> b'')."""
    if kv["tokenizer.ggml.model"] == "llama":  # SentencePiece (llama_vocab::impl::token_to_piece)
        pieces = []
        for text, ttype in zip(kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]):
            if ttype == 1:  # NORMAL: U+2581 -> space
                pieces.append(text.replace("\u2581", " ").encode("utf-8"))
            elif ttype == 6:  # BYTE: <0xXX>
                pieces.append(bytes([int(text[3:5], 16)]))
            elif ttype == 4:  # USER_DEFINED: verbatim
                pieces.append(text.encode("utf-8"))
            else:  # CONTROL / UNKNOWN / UNUSED: not rendered without --special
                pieces.append(b"")
        return pieces
    assert kv["tokenizer.ggml.model"] == "gpt2", kv["tokenizer.ggml.model"]
    u2b = {u: b for b, u in bytes_to_unicode().items()}
    pieces = []
    for text, ttype in zip(kv["tokenizer.ggml.tokens"], kv["tokenizer.ggml.token_type"]):
        if ttype == 1:  # NORMAL: byte-level decode
            pieces.append(bytes(u2b[c] for c in text))
        elif ttype == 4:  # USER_DEFINED: verbatim
            pieces.append(text.encode("utf-8"))
        else:  # CONTROL / UNKNOWN / UNUSED: not rendered without --special
            pieces.append(b"")
    return pieces


def utf8_cut(text):
    """True when `text` ends in a cut-off multi-byte character (llama-server's validate_utf8)."""
    n = len(text)
    for i in range(1, min(4, n) + 1):
        c = text[n - i]
        if (c & 0xE0) == 0xC0 and i < 2:
            return True
        if (c & 0xF0) == 0xE0 and i < 3:
            return True
        if (c & 0xF8) == 0xF0 and i < 4:
            return True
    return False


def top_n(step):
    return [[int(t["id"]), t["logprob"]] for t in step["top_logprobs"][:N_PROBS]]


def generate_one(srv, pieces, prompt):
    """Greedy ids for `prompt`, EOS not honoured (as in fixtures/models reference.json).

    A /completion run stops at an end-of-generation token; generation then continues with a new
    run whose prompt is the token array prompt_ids + ids so far. llama-server omits the
    probabilities of tokens that leave its generated text ending in a cut-off UTF-8 character;
    for those steps a separate n_predict=1 request over prompt_ids + ids[:i] (a prefill) with
    the sampled token(s) banned via logit_bias gives the top-N of the raw logits (logit_bias only
    affects sampling).
    """
    _, tok = http_json(srv.base + "/tokenize", {"content": prompt, "add_special": True, "parse_special": True})
    prompt_ids = tok["tokens"]
    ids, top, recovered, run_starts, stop_types = [], [], [], [], []
    while len(ids) < N_PREDICT:
        first = not ids
        body = dict(REQUEST, prompt=prompt if first else prompt_ids + ids, n_predict=N_PREDICT - len(ids))
        _, res = http_json(srv.base + "/completion", body, timeout=120)
        if res["tokens_evaluated"] != len(prompt_ids) + len(ids):
            raise RuntimeError(f"tokens_evaluated {res['tokens_evaluated']} != {len(prompt_ids) + len(ids)}")
        toks = [int(t) for t in res["tokens"]]
        probs = list(res.get("completion_probabilities", []))
        if not toks:
            raise RuntimeError(f"empty run: {res.get('stop_type')}")
        run_starts.append(len(ids))
        stop_types.append(res.get("stop_type"))
        text = b""
        for t in toks:
            text += pieces[t]
            if utf8_cut(text):
                top.append(None)
            else:
                step = probs.pop(0)
                if int(step["id"]) != t:
                    raise RuntimeError(f"probs id {step['id']} != token {t}")
                top.append(top_n(step))
            ids.append(t)
        if probs:
            raise RuntimeError(f"{len(probs)} unaligned probability entries left")
    ids, top = ids[:N_PREDICT], top[:N_PREDICT]
    for i in range(N_PREDICT):
        if top[i] is not None:
            continue
        banned = [ids[i]]
        for _ in range(8):
            body = dict(REQUEST, prompt=prompt_ids + ids[:i], n_predict=1,
                        logit_bias=[[b, False] for b in banned])
            _, res = http_json(srv.base + "/completion", body, timeout=120)
            probs = res.get("completion_probabilities", [])
            if probs:
                top[i] = top_n(probs[0])
                break
            banned.append(int(res["tokens"][0]))
        else:
            raise RuntimeError(f"step {i}: could not recover probabilities")
        recovered.append(i)
    for i, t in enumerate(top):
        if t[0][0] != ids[i]:
            raise RuntimeError(f"step {i}: greedy id {ids[i]} is not the top-1 {t[0][0]} ({t})")
    return {
        "prompt": prompt,
        "prompt_ids": prompt_ids,
        "ids": ids,
        "top2": [[[i, round(math.exp(lp), 9)] for i, lp in t] for t in top],
        "top2_logprob": top,
        "runs": [{"start": s_, "stop_type": st} for s_, st in zip(run_starts, stop_types)],
        "top2_recovered_steps": recovered,
    }


def generate_file(bin_dir, gguf, log_path):
    pieces = token_pieces(read_gguf_kv(gguf))
    srv = Server(bin_dir, gguf, log_path)
    try:
        return [dict({"file": os.path.basename(gguf)}, **generate_one(srv, pieces, p)) for p in GENERATE_PROMPTS]
    finally:
        srv.close()


# ---------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "llama.cpp", "bin"))
    ap.add_argument("--gguf-dir", default=os.path.join(ROOT, "fixtures", "gguf"))
    ap.add_argument("--out", default=None, help="default: <gguf-dir>/llama_cpp_reference.json")
    args = ap.parse_args()
    out_path = args.out or os.path.join(args.gguf_dir, "llama_cpp_reference.json")
    bin_dir = os.path.abspath(args.bin_dir)

    build_info_path = os.path.join(os.path.dirname(bin_dir), "BUILD_INFO.txt")
    build_info = {}
    if os.path.exists(build_info_path):
        for line in open(build_info_path, encoding="utf-8"):
            if line.startswith("sdist "):
                parts = line.split()
                build_info["sdist"] = parts[1]
                build_info["sdist_sha256"] = parts[3]
            elif line.startswith("llama.cpp commit "):
                build_info["commit"] = line.split()[2]
            elif line.startswith("llama.cpp git HEAD "):
                build_info["git_head"] = line.split()[3]
            elif line.startswith("cmake flags: "):
                build_info["cmake_flags"] = line[len("cmake flags: "):].split()
    v = subprocess.run([os.path.join(bin_dir, "llama-server"), "--version"], capture_output=True, timeout=60)
    version_lines = [l.strip() for l in (v.stdout + v.stderr).decode().splitlines() if l.strip()]

    manifest = json.load(open(os.path.join(args.gguf_dir, "manifest.json")))
    files = sorted(manifest)
    model_files, skipped = [], {}
    groups = {}  # fingerprint -> {"files": [...], "meta": {...}}
    for name in files:
        kv = read_gguf_kv(os.path.join(args.gguf_dir, name))
        if "tokenizer.ggml.model" not in kv:
            skipped[name] = f"no tokenizer (general.architecture={kv.get('general.architecture')!r}); not a model"
            continue
        model_files.append(name)
        fp, tok = tokenizer_fingerprint(kv)
        g = groups.setdefault(fp, {"files": [], "meta": {
            "architecture_of_first_file": kv.get("general.architecture"),
            "tokenizer.ggml.model": tok.get("tokenizer.ggml.model"),
            "tokenizer.ggml.pre": tok.get("tokenizer.ggml.pre"),
            "n_tokens": len(tok.get("tokenizer.ggml.tokens", [])),
            "bos_token_id": tok.get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": tok.get("tokenizer.ggml.eos_token_id"),
            "add_bos_token": tok.get("tokenizer.ggml.add_bos_token"),
            "add_eos_token": tok.get("tokenizer.ggml.add_eos_token"),
        }})
        g["files"].append(name)
    # representative = first file, preferring the non-K (tiny-llama / tiny-qwen2) files
    for g in groups.values():
        g["files"].sort(key=lambda n: (n.startswith("tiny-k-"), n))

    # ---- tokenization ----
    tokenize = []
    load_errors = {}
    with tempfile.TemporaryDirectory(prefix="llama_cpp_ref_") as tmp:
        prompt_files = []
        for i, prompt in enumerate(TOKENIZE_PROMPTS):
            pf = os.path.join(tmp, f"prompt{i:02d}.txt")
            with open(pf, "wb") as f:
                f.write(prompt.encode("utf-8"))
            prompt_files.append(pf)
        for fp in sorted(groups, key=lambda k: groups[k]["files"][0]):
            g = groups[fp]
            rep = g["files"][0]
            log(f"tokenize: group {fp} ({', '.join(g['files'])})")
            bos = g["meta"]["bos_token_id"]
            for prompt, pf in zip(TOKENIZE_PROMPTS, prompt_files):
                for parse_special in (True, False):
                    results = {}
                    for name in g["files"]:
                        try:
                            results[name] = run_tokenize(bin_dir, os.path.join(args.gguf_dir, name), pf, parse_special)
                        except RuntimeError as e:
                            load_errors.setdefault(name, str(e))
                    if rep not in results:
                        continue
                    flags, stdout, ids = results[rep]
                    for name, (_, _, other) in results.items():
                        if other != ids:
                            raise RuntimeError(f"{name} tokenizes {prompt!r} as {other}, {rep} as {ids}")
                    tokenize.append({
                        "file": rep,
                        "same_tokenizer_files": g["files"],
                        "tokenizer": fp,
                        "prompt": prompt,
                        "parse_special": parse_special,
                        "flags": flags,
                        "stdout": stdout,
                        "ids": ids,
                        "bos_added": bool(g["meta"]["add_bos_token"]) and len(ids) > 0 and ids[0] == bos,
                    })

    # ---- generation ----
    generate = []
    with tempfile.TemporaryDirectory(prefix="llama_cpp_srv_") as tmp:
        for name in model_files:
            log(f"generate: {name}")
            log_path = os.path.join(tmp, name + ".log")
            try:
                generate.extend(generate_file(bin_dir, os.path.join(args.gguf_dir, name), log_path))
            except (RuntimeError, urllib.error.URLError, OSError, KeyError) as e:
                tail = open(log_path, "rb").read()[-3000:].decode(errors="replace") if os.path.exists(log_path) else ""
                log(f"generate: {name} failed: {e}\n{tail}")
                load_errors.setdefault(name, f"llama-server: {e}")

    result = {
        "llama_cpp": {
            "version": version_lines,
            "commit": build_info.get("commit"),
            "git_head": build_info.get("git_head"),
            "sdist": build_info.get("sdist"),
            "sdist_sha256": build_info.get("sdist_sha256"),
            "cmake_flags": build_info.get("cmake_flags"),
        },
        "note": ("Generated by scripts/llama_cpp_reference.sh. tokenize: `llama-tokenize -m FILE --file "
                 "PROMPT_FILE <flags>` (prompt file holds the exact UTF-8 bytes; --no-escape; "
                 "llama-tokenize parses special tokens by default and adds BOS iff the vocab's "
                 "add_bos_token); ids are from the first file of each tokenizer group, all files of the "
                 "group were checked to agree. generate: llama-server /completion with `request`, text "
                 "prompt (BOS added per the vocab, special tokens parsed); prompt_ids from /tokenize "
                 "with add_special and parse_special true (checked against tokens_evaluated); top2 "
                 "are [id, p] with p = exp(logprob) of the pre-sampling softmax over the raw logits "
                 "(top2_logprob: the logprobs as returned). EOS is not honoured, as in fixtures/models "
                 "reference.json: ignore_eos is false (it would ban EOG tokens) and after an "
                 "end-of-generation token a new run continues from the token array prompt_ids + ids "
                 "(`runs`: step where each run starts, with its prefill, and why it stopped). "
                 "llama-server drops the probabilities of tokens that leave the text ending in a cut-off "
                 "UTF-8 character; for those steps (`top2_recovered_steps`) top2 comes from a separate "
                 "n_predict=1 request over prompt_ids + ids[:step] (prefill) with the sampled token banned "
                 "by logit_bias, which does not change the reported raw-logit probabilities."),
        "tokenizer_groups": {fp: dict(g["meta"], files=g["files"]) for fp, g in
                             sorted(groups.items(), key=lambda kv: kv[1]["files"][0])},
        "skipped_files": skipped,
        "load_errors": load_errors,
        "server_flags": SERVER_FLAGS,
        "request": REQUEST,
        "tokenize": tokenize,
        "generate": generate,
    }
    tmp_out = out_path + ".tmp"
    with open(tmp_out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp_out, out_path)
    log(f"wrote {out_path}: {len(tokenize)} tokenize, {len(generate)} generate entries"
        + (f"; load errors: {sorted(load_errors)}" if load_errors else ""))
    return 1 if load_errors else 0


if __name__ == "__main__":
    sys.exit(main())
