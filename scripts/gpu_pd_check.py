#!/usr/bin/env python3
"""P/D and the host tier between real strata servers on chosen devices.

    scripts/gpu_pd_check.py --strata BIN --prefill-device cuda --decode-device cpu

Starts three `strata serve` processes on loopback (the built-in model): a
reference engine on the CPU, a prefill engine (PD connector, a 48-block
device pool and a host tier) and a decode engine, on the devices named.
Then, as a vLLM P/D proxy would:

1. hop 1 on the prefill engine (`do_remote_decode`), hop 2 on the decode
   engine with the returned `kv_transfer_params`: the answer equals the
   reference engine's, and the decode engine's usage says every prompt
   token but the last came from the remote peer;
2. three other prompts push the first out of the prefill engine's device
   pool; the repeat is served from the host tier (usage `sources.host`),
   then pulled by the decode engine with the same answer.

KV crosses between the engines as bytes, so a GPU engine and a CPU engine
exchange it the same way two CPU engines do. Standard library only; exits
non-zero on the first failed check. The GPU script (scripts/gpu_check.sh)
runs it for cuda->cpu, cpu->cuda and cuda->cuda; with cpu->cpu it checks
the script itself on any machine.
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

PROMPT = " ".join(f"m{(i * 7 + 1) % 97}" for i in range(70))


def serve(strata, device, extra, log):
    """Starts `strata serve` and returns (process, base URL)."""
    args = [strata, "serve", "--port", "0", "--device", device, *extra]
    env = dict(os.environ, NO_COLOR="1")
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
    found = []
    ready = threading.Event()

    def read():
        for line in proc.stderr:
            log.write(f"[{device} {' '.join(extra[:4])}] {line}")
            if not found and "http://127.0.0.1:" in line:
                url = line[line.index("http://127.0.0.1:"):].split()[0].rstrip("\x1b")
                found.append(url)
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(180) or not found:
        proc.kill()
        sys.exit(f"strata serve --device {device} did not start (see the log)")
    return proc, found[0]


def post(url, body):
    req = urllib.request.Request(
        url + "/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def check(ok, what, detail):
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        print("      " + json.dumps(detail)[:2000])
        sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--strata", required=True)
    ap.add_argument("--prefill-device", required=True)
    ap.add_argument("--decode-device", required=True)
    ap.add_argument("--log", default="/dev/stderr")
    a = ap.parse_args()
    # 100 blocks of the built-in model's KV in the host tier.
    host_gb = str(100 * 4 * 2 * 16 * 128 * 4 / 1e9)
    procs = []
    with open(a.log, "a") as log:
        try:
            p, reference = serve(a.strata, "cpu", [], log)
            procs.append(p)
            p, prefill = serve(
                a.strata,
                a.prefill_device,
                ["--kv-connector", "pd", "--kv-role", "prefill", "--kv-transfer-port", "0",
                 "--num-kv-blocks", "48", "--kv-offload-host-gb", host_gb],
                log,
            )
            procs.append(p)
            p, decode = serve(a.strata, a.decode_device, ["--kv-connector", "pd", "--kv-role", "decode"], log)
            procs.append(p)
            run(reference, prefill, decode, a)
        finally:
            for p in procs:
                p.kill()


def run(reference, prefill, decode, a):
    pair = f"{a.prefill_device} -> {a.decode_device}"
    body = {"model": "builtin", "prompt": PROMPT, "max_tokens": 12, "temperature": 0}
    expected = post(reference, body)["choices"][0]["text"]

    first = post(prefill, body | {"max_tokens": 1, "kv_transfer_params": {"do_remote_decode": True}})
    params = first.get("kv_transfer_params") or {}
    check(params.get("do_remote_prefill") is True, f"{pair}: hop 1 hands off", first)
    n = first["usage"]["prompt_tokens"]
    second = post(decode, body | {"kv_transfer_params": params})
    check(second["choices"][0]["text"] == expected, f"{pair}: P/D answer equals one engine's",
          {"pd": second["choices"][0]["text"], "reference": expected})
    det = second["usage"]["prompt_tokens_details"]
    total = sum(det["sources"].values())
    check(total == n, f"{pair}: usage sources sum to the prompt ({n})", det)

    for seed in range(3):
        other = " ".join(f"o{seed}x{i * 3 % 89}" for i in range(70))
        post(prefill, {"model": "builtin", "prompt": other, "max_tokens": 1})
    first = post(prefill, body | {"max_tokens": 1, "kv_transfer_params": {"do_remote_decode": True}})
    det = first["usage"]["prompt_tokens_details"]
    check(det["sources"].get("host", 0) > 0, f"{pair}: the repeat comes from the host tier", det)
    check(sum(det["sources"].values()) == n, f"{pair}: host-tier usage sums to the prompt", det)
    second = post(decode, body | {"kv_transfer_params": first["kv_transfer_params"]})
    check(second["choices"][0]["text"] == expected, f"{pair}: host tier, then P/D, same answer",
          {"pd": second["choices"][0]["text"], "reference": expected})


if __name__ == "__main__":
    main()
